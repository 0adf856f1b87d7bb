"""Dataset manifests: CSV, ClearerVoice scp lists and LibriMix folder trees -> examples.

Every source gives the same `Example` list, so the datasets downstream do not
care where the list came from.

* CSV: header ``mix_wav:FILE,s1_wav:FILE,s2_wav:FILE[,s3_wav:FILE]`` (the
  ``:FILE`` suffix is optional, an ``id`` column is optional); relative paths
  are relative to the CSV's folder.
* scp: one mixture per line, ``mix s1 s2 [s3]`` separated by whitespace;
  blank lines and ``#`` comments are skipped; relative paths are relative to
  the list's folder.
* LibriMix: ``<root>/wav8k|wav16k/min|max/<split>/{mix_clean|mix_both|mix_single, s1, s2[, s3]}``.

Speaker ids (for dynamic mixing, see `speakers`): optional CSV columns ``s1_spk,s2_spk[,s3_spk]``, an
``utt2spk`` file, or the LibriMix / wsj0-mix / demo-corpus file naming; `load_manifest` applies them.

Errors (`ManifestError`) name the file, the line and what was expected.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .speakers import (SPEAKER_COLUMN, SpeakerError, assign_speakers, check_speaker_id, find_utt2spk, read_utt2spk,
                       speaker_column)

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

MIX_COLUMN = 'mix_wav'
FILE_SUFFIX = ':FILE'
SPLIT_ALIASES = {'train': ('train-360', 'train-100'), 'validation': ('dev',), 'valid': ('dev',), 'dev': ('dev',),
                 'test': ('test',)}
LIBRIMIX_MIXTURES = ('mix_clean', 'mix_both', 'mix_single')
AUDIO_SUFFIXES = ('.wav', '.flac', '.ogg', '.aiff', '.aif', '.au', '.mp3')
CSV_SUFFIXES = ('.csv',)
SCP_SUFFIXES = ('.scp', '.lst', '.txt')  # ClearerVoice-style lists: one mixture (and its sources) per line
LIST_SUFFIXES = CSV_SUFFIXES + SCP_SUFFIXES
UTT2SPK_NAME = 'utt2spk'


class ManifestError(ValueError):
    """A manifest that cannot be parsed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One mixture and its reference sources.

    Attributes:
        id: unique name, used for output files and per-utterance reports.
        mix: mixture file.
        sources: one file per speaker, in speaker order.
        origin: where the example was listed ("file:line"), for error messages.
        speakers: speaker id of each source (None where unknown), or None when none is known.
    """

    id: str
    mix: Path
    sources: Tuple[Path, ...]
    origin: str = ''
    speakers: Optional[Tuple[Optional[str], ...]] = None

    @property
    def num_spks(self) -> int:
        return len(self.sources)


def source_column(index: int) -> str:
    """CSV column of speaker `index` (0-based): 's1_wav'."""
    return f's{index + 1}_wav'


def _resolve(path_text: str, base: Path) -> Path:
    path = Path(os.path.expanduser(path_text))
    return path if path.is_absolute() else base / path


def _unique_ids(examples: List[Example]) -> List[Example]:
    seen: Dict[str, int] = {}
    out = []
    for example in examples:
        count = seen.get(example.id, 0)
        seen[example.id] = count + 1
        out.append(example if count == 0 else dataclasses.replace(example, id=f'{example.id}-{count}'))
    return out


def _check_num_spks(found: int, expected: Optional[int], where: str) -> None:
    if found < 1:
        raise ManifestError(f'{where}: no source columns, expected s1_wav..sN_wav')
    if expected is not None and found != expected:
        raise ManifestError(f'{where}: {found} source(s) per mixture, expected {expected}')


def _speaker_columns(bare: List[str], count: int, path: Path) -> List[int]:
    """Positions of the ``s1_spk..sN_spk`` columns (all `count` of them, or none)."""
    present = {int(m.group(1)): at for at, name in enumerate(bare) for m in [SPEAKER_COLUMN.match(name)] if m}
    if not present:
        return []
    wanted = list(range(1, count + 1))
    if sorted(present) != wanted:
        raise ManifestError(f'{path}:1: speaker columns must be {",".join(speaker_column(i) for i in range(count))} '
                            f'(one per source) or none; found {[bare[present[k]] for k in sorted(present)]}')
    return [present[k] for k in wanted]


def read_csv_manifest(path: PathLike, num_spks: Optional[int] = None) -> List[Example]:
    """Parse a ``mix_wav:FILE,s1_wav:FILE,...`` CSV (optional ``id`` and ``s1_spk,...`` columns) into examples."""
    path = Path(path)
    try:
        text = path.read_text(encoding='utf-8-sig')
    except FileNotFoundError:
        raise ManifestError(f'{path}: CSV manifest not found') from None
    except UnicodeDecodeError as err:
        raise ManifestError(f'{path}: not UTF-8 text ({err})') from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise ManifestError(f'{path}: empty CSV, expected a header like mix_wav:FILE,s1_wav:FILE,s2_wav:FILE')
    names = [h.strip() for h in header]
    bare = [n[:-len(FILE_SUFFIX)] if n.endswith(FILE_SUFFIX) else n for n in names]
    if MIX_COLUMN not in bare:
        raise ManifestError(f'{path}:1: missing column {MIX_COLUMN}{FILE_SUFFIX}; header is {names}')
    count = 0
    while source_column(count) in bare:
        count += 1
    extra = [n for n in bare if n.startswith('s') and n.endswith('_wav') and n not in
             [source_column(i) for i in range(count)]]
    if extra:
        raise ManifestError(f'{path}:1: source columns must be s1_wav..sN_wav without gaps; '
                            f'unexpected {extra} after {count} source(s)')
    _check_num_spks(count, num_spks, f'{path}:1')
    speaker_at = _speaker_columns(bare, count, path)
    mix_at = bare.index(MIX_COLUMN)
    source_at = [bare.index(source_column(i)) for i in range(count)]
    id_at = bare.index('id') if 'id' in bare else None
    examples = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f'{path}:{line_no}'
        if len(row) != len(names):
            raise ManifestError(f'{where}: {len(row)} field(s), expected {len(names)} ({",".join(names)})')
        for column, at in [(names[mix_at], mix_at)] + [(names[i], i) for i in source_at]:
            if not row[at].strip():
                raise ManifestError(f'{where}: empty {column}')
        mix = _resolve(row[mix_at].strip(), path.parent)
        sources = tuple(_resolve(row[i].strip(), path.parent) for i in source_at)
        example_id = row[id_at].strip() if id_at is not None and row[id_at].strip() else mix.stem
        try:
            speakers = tuple(check_speaker_id(row[at], f'{where}: {names[at]}') for at in speaker_at) \
                if speaker_at else None
        except SpeakerError as err:
            raise ManifestError(str(err)) from None
        examples.append(Example(example_id, mix, sources, where, speakers))
    if not examples:
        raise ManifestError(f'{path}: no rows after the header')
    return _unique_ids(examples)


def read_scp_manifest(path: PathLike, num_spks: Optional[int] = None) -> List[Example]:
    """Parse a ClearerVoice ``mix s1 s2 [s3]`` list into examples."""
    path = Path(path)
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except FileNotFoundError:
        raise ManifestError(f'{path}: scp list not found') from None
    except UnicodeDecodeError as err:
        raise ManifestError(f'{path}: not UTF-8 text ({err})') from None
    examples = []
    expected = num_spks
    for line_no, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith('#'):
            continue
        fields = stripped.split()
        where = f'{path}:{line_no}'
        if expected is None:
            if len(fields) < 3:
                raise ManifestError(f'{where}: {len(fields)} path(s) in {stripped!r}, expected "mix s1 s2 [s3]"')
            expected = len(fields) - 1
        if len(fields) != expected + 1:
            raise ManifestError(f'{where}: {len(fields)} path(s) in {stripped!r}, expected {expected + 1} '
                                f'(mix and {expected} sources, like the lines before)')
        mix = _resolve(fields[0], path.parent)
        examples.append(Example(mix.stem, mix, tuple(_resolve(f, path.parent) for f in fields[1:]), where))
    if not examples:
        raise ManifestError(f'{path}: no entries')
    return _unique_ids(examples)


def _rate_dir(root: Path, sample_rate: Optional[int]) -> str:
    """``wav8k`` / ``wav16k``: the model's rate's folder, or the only one present when no rate is given."""
    if sample_rate is not None:
        return f'wav{sample_rate // 1000}k'
    present = sorted(p.name for p in root.glob('wav*k') if p.is_dir())
    if len(present) > 1:
        raise ManifestError(f'{root}: holds {", ".join(present)}; give the model\'s sample rate to pick one')
    return present[0] if present else 'wav8k'


def _librimix_split_dir(root: Path, split: str, sample_rate: Optional[int], mode: str) -> Path:
    candidates = [root]
    rate_dir = _rate_dir(root, sample_rate)
    candidates += [root / rate_dir / mode, root / mode]
    for base in candidates:
        for name in (split,) + SPLIT_ALIASES.get(split, ()):
            if (base / name).is_dir():
                return base / name
    raise ManifestError(f'{root}: no LibriMix split {split!r} (looked for {rate_dir}/{mode}/'
                        f'{"|".join((split,) + SPLIT_ALIASES.get(split, ()))})')


def scan_librimix(root: PathLike, split: str, sample_rate: Optional[int] = None, mode: str = 'min',
                  mixture: str = 'mix_clean', num_spks: Optional[int] = None) -> List[Example]:
    """Examples of one split of a LibriMix folder tree.

    Args:
        root: the LibriMix folder (holding ``wav8k``), a ``wav8k/min`` folder, or a split folder.
        split: 'train', 'validation' / 'dev', 'test' or a LibriMix name like 'train-100'.
        sample_rate: the model's rate: picks ``wav8k`` or ``wav16k`` (when None, the only one present).
        mode: 'min' or 'max'.
        mixture: 'mix_clean', 'mix_both' or 'mix_single'.
        num_spks: number of source folders to use; all present ``s1..sN`` when None.
    """
    root = Path(root)
    if mixture not in LIBRIMIX_MIXTURES:
        raise ValueError(f'mixture must be one of {LIBRIMIX_MIXTURES}, got {mixture!r}')
    split_dir = root if (root / mixture).is_dir() else _librimix_split_dir(root, split, sample_rate, mode)
    mix_dir = split_dir / mixture
    if not mix_dir.is_dir():
        raise ManifestError(f'{split_dir}: no {mixture}/ folder')
    count = 0
    while (split_dir / f's{count + 1}').is_dir():
        count += 1
    _check_num_spks(count if num_spks is None else min(count, num_spks), num_spks, str(split_dir))
    count = num_spks or count
    mixes = sorted(p for p in mix_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not mixes:
        raise ManifestError(f'{mix_dir}: no audio files')
    examples = []
    for mix in mixes:
        sources = tuple(split_dir / f's{i + 1}' / mix.name for i in range(count))
        for source in sources:
            if not source.is_file():
                raise ManifestError(f'{mix}: missing source file {source}')
        examples.append(Example(mix.stem, mix, sources, str(mix)))
    return examples


def utt2spk_candidates(source: PathLike, examples: Sequence[Example] = ()) -> List[Path]:
    """Where `load_manifest` looks for an utt2spk file, first found wins: beside a CSV / scp list
    ``<list stem>.utt2spk`` then ``utt2spk``; for a LibriMix tree ``utt2spk`` in the split folder (the one
    holding the mixture folder) and then in the given folder."""
    source = Path(source)
    if source.is_dir():
        split_dirs = list(dict.fromkeys(e.mix.parent.parent for e in examples[:1]))
        return [d / UTT2SPK_NAME for d in split_dirs] + [source / UTT2SPK_NAME]
    return [source.with_suffix('.utt2spk'), source.parent / UTT2SPK_NAME]


def load_manifest(source: PathLike, split: Optional[str] = None, num_spks: Optional[int] = None,
                  sample_rate: Optional[int] = None, utt2spk: Optional[PathLike] = None,
                  **librimix_options: str) -> List[Example]:
    """Examples from a CSV, an scp list or a LibriMix tree (a folder; needs `split`), with speaker ids.

    Args:
        utt2spk: an utt2spk file for the speaker ids; when None, one found at `utt2spk_candidates` is used.

    Raises:
        ManifestError: an unreadable manifest, or a malformed / contradicting speaker id (naming file and line).
    """
    source = Path(source)
    if source.is_dir():
        if split is None:
            raise ValueError(f'{source}: a LibriMix folder needs a split (train, validation or test)')
        examples = scan_librimix(source, split, sample_rate=sample_rate, num_spks=num_spks, **librimix_options)
    elif source.suffix.lower() in CSV_SUFFIXES:
        examples = read_csv_manifest(source, num_spks)
    elif source.suffix.lower() in SCP_SUFFIXES:
        examples = read_scp_manifest(source, num_spks)
    elif not source.exists():
        raise ManifestError(f'{source}: no such manifest file or folder')
    else:
        raise ManifestError(f'{source}: unknown manifest type; expected a .csv, a .scp list or a LibriMix folder')
    table = Path(utt2spk) if utt2spk is not None else find_utt2spk(utt2spk_candidates(source, examples))
    try:
        if table is not None:
            logger.info('speaker ids of %s from %s', source, table)
        return assign_speakers(examples, read_utt2spk(table) if table is not None else None)
    except SpeakerError as err:
        raise ManifestError(str(err)) from None


def write_csv_manifest(examples: Sequence[Example], path: PathLike, relative: bool = True) -> Path:
    """Write examples as a ``mix_wav:FILE,s1_wav:FILE,...`` CSV (paths relative to it when possible), with
    ``s1_spk,...`` columns when every source has a speaker id."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num = {e.num_spks for e in examples}
    if len(num) != 1:
        raise ValueError(f'all examples need the same number of sources, found {sorted(num)}')
    count = num.pop()
    base = path.parent.resolve()

    def show(p: Path) -> str:
        if relative:
            try:
                return os.path.relpath(Path(p).resolve(), base)
            except ValueError:  # another drive on Windows
                pass
        return str(Path(p).resolve())

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    with_speakers = all(e.speakers is not None and None not in e.speakers for e in examples)
    writer.writerow(['id', MIX_COLUMN + FILE_SUFFIX] + [source_column(i) + FILE_SUFFIX for i in range(count)] +
                    ([speaker_column(i) for i in range(count)] if with_speakers else []))
    for example in examples:
        writer.writerow([example.id, show(example.mix)] + [show(s) for s in example.sources] +
                        (list(example.speakers) if with_speakers else []))
    path.write_text(buffer.getvalue(), encoding='utf-8')
    return path


def write_scp_manifest(examples: Sequence[Example], path: PathLike) -> Path:
    """Write examples as a ClearerVoice ``mix s1 s2`` list with absolute paths."""
    path = Path(path)
    lines = []
    for example in examples:
        fields = [str(Path(p).resolve()) for p in (example.mix,) + tuple(example.sources)]
        for field in fields:
            if any(ch.isspace() for ch in field):
                raise ValueError(f'{example.origin or example.id}: path {field!r} has whitespace, '
                                 'which an scp list cannot hold; use a CSV manifest')
        lines.append(' '.join(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return path
