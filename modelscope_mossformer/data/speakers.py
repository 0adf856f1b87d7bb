"""Speaker ids of every source of a manifest, and the speaker pool dynamic mixing draws from.

Dynamic mixing that knows who speaks in each source file can keep one speaker out of two sources of a
mixture (SpeechBrain's WSJ0-2mix recipes do this).  Where an id comes from, per source, first match wins:

1. an ``sN_spk`` column of a CSV manifest (``s1_spk``, ``s2_spk``[, ``s3_spk``]: all of them or none);
2. a Kaldi-style ``utt2spk`` file (``<utterance-id> <speaker-id>`` per line); a source is looked up by
   ``<folder>/<file stem>`` first (e.g. ``s1/103-1240-0000_1034-121119-0049``: for trees where the sources
   of one mixture share a file name) and then by its file stem, unless another source of the same mixture
   has that stem too (a mixture-level utt2spk, as in Kaldi / ESPnet wsj0-2mix data folders, names no source);
3. the mixture's file name, when every mixture of the manifest follows one of these namings:

   * LibriMix: ``<spk>-<chapter>-<utt>_<spk>-<chapter>-<utt>[_...]`` -> the part before the first ``-``
     of the i-th ``_``-separated part is source i's speaker;
   * wsj0-mix: ``<utt>_<gain>_<utt>_<gain>[_...]`` (``01aa010b_0.97482_209a010p_-0.97482``) -> the first
     three characters of each 8-character utterance id (WSJ0's speaker code);
   * this package's demo corpus: ``tr0007_v03-v11`` -> ``v03``, ``v11`` (the synthetic voices in source order).

An id where a higher rule already gave one is not consulted, except that a CSV column and an ``utt2spk`` entry
that disagree are an error (both are explicit statements).  One source file given two speakers, a malformed
``utt2spk`` line and an id with whitespace are errors naming the file and line.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Hashable, List, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # manifest.py imports this module
    from .manifest import Example

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

SPEAKER_SUFFIX = '_spk'
SPEAKER_COLUMN = re.compile(r'^s(\d+)_spk$')

_LIBRIMIX_PART = re.compile(r'^([A-Za-z0-9]+)-[A-Za-z0-9]+-[A-Za-z0-9]+$')
_WSJ0_UTTERANCE = re.compile(r'^[A-Za-z0-9]{8}$')
_DEMO_NAME = re.compile(r'^(?:tr|cv|tt)\d+_(v\d+(?:-v\d+)+)$')


class SpeakerError(ValueError):
    """A speaker id that is malformed or contradicts another; the message names the file and line."""


def speaker_column(index: int) -> str:
    """CSV column of the speaker of source `index` (0-based): 's1_spk'."""
    return f's{index + 1}{SPEAKER_SUFFIX}'


def check_speaker_id(text: str, where: str) -> str:
    """`text` stripped, or SpeakerError naming `where` when it is empty or holds whitespace."""
    speaker = text.strip()
    if not speaker:
        raise SpeakerError(f'{where}: empty speaker id')
    if any(ch.isspace() for ch in speaker):
        raise SpeakerError(f'{where}: speaker id {speaker!r} holds whitespace')
    return speaker


# ---------------------------------------------------------------------------
# file namings
# ---------------------------------------------------------------------------


def parse_librimix_name(stem: str, num_spks: int) -> Optional[Tuple[str, ...]]:
    """``'103-1240-0000_1034-121119-0049'`` -> ``('103', '1034')``; None when `stem` is not such a name."""
    parts = stem.split('_')
    if len(parts) != num_spks:
        return None
    matches = [_LIBRIMIX_PART.match(part) for part in parts]
    return tuple(m.group(1) for m in matches) if all(matches) else None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def parse_wsj0_name(stem: str, num_spks: int) -> Optional[Tuple[str, ...]]:
    """``'01aa010b_0.97482_209a010p_-0.97482'`` -> ``('01a', '209')``; None when `stem` is not such a name."""
    parts = stem.split('_')
    if len(parts) != 2 * num_spks:
        return None
    utterances, gains = parts[0::2], parts[1::2]
    if not all(_WSJ0_UTTERANCE.match(u) for u in utterances) or not all(_is_number(g) for g in gains):
        return None
    return tuple(u[:3] for u in utterances)


def parse_demo_name(stem: str, num_spks: int) -> Optional[Tuple[str, ...]]:
    """``'tr0007_v03-v11'`` (a demo-corpus mixture) -> ``('v03', 'v11')``; None otherwise."""
    match = _DEMO_NAME.match(stem)
    if not match:
        return None
    voices = tuple(match.group(1).split('-'))
    return voices if len(voices) == num_spks else None


NAMINGS: Tuple[Tuple[str, Callable[[str, int], Optional[Tuple[str, ...]]]], ...] = (
    ('LibriMix', parse_librimix_name), ('wsj0-mix', parse_wsj0_name), ('demo corpus', parse_demo_name))


def speakers_from_names(stems: Sequence[str], num_spks: int) -> Optional[Tuple[str, List[Tuple[str, ...]]]]:
    """(naming, speakers per stem) when every stem follows one naming of `NAMINGS`; None otherwise."""
    if not stems:
        return None
    for naming, parse in NAMINGS:
        parsed = []
        for stem in stems:
            speakers = parse(stem, num_spks)
            if speakers is None:
                break
            parsed.append(speakers)
        else:
            return naming, parsed
    return None


# ---------------------------------------------------------------------------
# utt2spk
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Utt2Spk:
    """A parsed utt2spk file.

    Attributes:
        path: the file.
        entries: utterance id -> (speaker id, line number).
    """

    path: Path
    entries: Dict[str, Tuple[str, int]]

    def lookup(self, source: Path, by_stem: bool = True) -> Optional[Tuple[str, str]]:
        """(speaker, 'file:line') of a source file, by ``<folder>/<stem>`` and then (if `by_stem`) ``<stem>``;
        None if absent."""
        for key in utterance_keys(source)[:2 if by_stem else 1]:
            if key in self.entries:
                speaker, line = self.entries[key]
                return speaker, f'{self.path}:{line}'
        return None


def utterance_keys(source: Path) -> Tuple[str, str]:
    """The utt2spk keys of a source file, most specific first: ``('s1/<stem>', '<stem>')``."""
    source = Path(source)
    return f'{source.parent.name}/{source.stem}', source.stem


def read_utt2spk(path: PathLike) -> Utt2Spk:
    """Parse ``<utterance-id> <speaker-id>`` lines (blank lines and ``#`` comments are skipped).

    Raises:
        SpeakerError: a line without exactly two fields, or one utterance given two speakers.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except FileNotFoundError:
        raise SpeakerError(f'{path}: utt2spk file not found') from None
    except UnicodeDecodeError as err:
        raise SpeakerError(f'{path}: not UTF-8 text ({err})') from None
    entries: Dict[str, Tuple[str, int]] = {}
    for line_no, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith('#'):
            continue
        fields = stripped.split()
        if len(fields) != 2:
            raise SpeakerError(f'{path}:{line_no}: {len(fields)} field(s) in {stripped!r}, expected '
                               '"<utterance-id> <speaker-id>"')
        utterance, speaker = fields
        if utterance in entries and entries[utterance][0] != speaker:
            before, before_line = entries[utterance]
            raise SpeakerError(f'{path}:{line_no}: utterance {utterance!r} is given speaker {speaker!r}, but '
                               f'{path}:{before_line} gives it {before!r}')
        entries.setdefault(utterance, (speaker, line_no))
    if not entries:
        raise SpeakerError(f'{path}: no entries (expected "<utterance-id> <speaker-id>" lines)')
    return Utt2Spk(path, entries)


def find_utt2spk(candidates: Sequence[Path]) -> Optional[Path]:
    """The first existing file of `candidates`."""
    return next((path for path in candidates if path.is_file()), None)


# ---------------------------------------------------------------------------
# putting the rules together
# ---------------------------------------------------------------------------


def assign_speakers(examples: Sequence['Example'], utt2spk: Optional[Union[PathLike, Utt2Spk]] = None,
                    ) -> List['Example']:
    """Examples with `speakers` filled in by the rules of this module's docstring, where any applies.

    Sources no rule names keep None (`SpeakerPool.from_examples` refuses a pool where only some are known).

    Raises:
        SpeakerError: a CSV id and an utt2spk entry that disagree, or one source file given two speakers.
    """
    examples = list(examples)
    if not examples:
        return examples
    table = utt2spk if isinstance(utt2spk, Utt2Spk) or utt2spk is None else read_utt2spk(utt2spk)
    num_spks = examples[0].num_spks
    named = speakers_from_names([e.mix.stem for e in examples], num_spks) \
        if len({e.num_spks for e in examples}) == 1 else None
    if named is not None:
        logger.debug('speaker ids from the %s file naming of %d mixture(s)', named[0], len(examples))
    seen: Dict[Path, Tuple[str, str]] = {}  # source file -> (speaker, where that was said)
    out = []
    matched = 0
    for number, example in enumerate(examples):
        where = example.origin or str(example.mix)
        speakers: List[Optional[str]] = []
        stems = [Path(source).stem for source in example.sources]
        by_stem = len(set(stems)) == len(stems)
        for index, source in enumerate(example.sources):
            given = example.speakers[index] if example.speakers else None
            listed = table.lookup(source, by_stem) if table is not None else None
            matched += listed is not None
            if given is not None and listed is not None and listed[0] != given:
                raise SpeakerError(f'{where}: {speaker_column(index)} is {given!r} but {listed[1]} gives '
                                   f'{Path(source).name} speaker {listed[0]!r}')
            if given is not None:
                speaker, said = given, f'{where} ({speaker_column(index)})'
            elif listed is not None:
                speaker, said = listed
            elif named is not None:
                speaker, said = named[1][number][index], f'{example.mix} ({named[0]} name)'
            else:
                speakers.append(None)
                continue
            key = Path(source)
            if key in seen and seen[key][0] != speaker:
                raise SpeakerError(f'{said}: source {source} is speaker {speaker!r}, but {seen[key][1]} makes it '
                                   f'{seen[key][0]!r}')
            seen.setdefault(key, (speaker, said))
            speakers.append(speaker)
        if all(s is None for s in speakers):
            out.append(dataclasses.replace(example, speakers=None))
        else:
            out.append(dataclasses.replace(example, speakers=tuple(speakers)))
    if table is not None and not matched:
        logger.warning('%s names none of the %d source(s) (keys: <folder>/<file stem>, or the file stem where the '
                       'sources of a mixture have distinct stems)', table.path, sum(e.num_spks for e in examples))
    return out


# ---------------------------------------------------------------------------
# the pool dynamic mixing draws from
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeakerPool:
    """Source utterances grouped by speaker.

    Attributes:
        speakers: distinct speaker ids, sorted (a fixed order keeps draws reproducible).
        utterances: per speaker, its ``(example index, source index)`` entries, in manifest order.
    """

    speakers: Tuple[str, ...]
    utterances: Tuple[Tuple[Tuple[int, int], ...], ...]

    @classmethod
    def build(cls, speakers: Sequence[Sequence[str]], keys: Optional[Sequence[Sequence[Hashable]]] = None,
              ) -> 'SpeakerPool':
        """A pool from the speaker ids of each example's sources.

        Args:
            speakers: per example, the speaker of each source.
            keys: per example, what identifies each source's utterance (its file): an utterance listed in
                several examples counts once, at its first place.
        """
        grouped: Dict[str, List[Tuple[int, int]]] = {}
        seen = set()
        for example, ids in enumerate(speakers):
            for source, speaker in enumerate(ids):
                key = keys[example][source] if keys is not None else (example, source)
                if key in seen:
                    continue
                seen.add(key)
                grouped.setdefault(speaker, []).append((example, source))
        order = tuple(sorted(grouped))
        return cls(order, tuple(tuple(grouped[s]) for s in order))

    @classmethod
    def from_examples(cls, examples: Sequence['Example']) -> Optional['SpeakerPool']:
        """The pool of a manifest's examples (files listed twice count once); None when no id is known.

        Raises:
            SpeakerError: only some sources have an id (naming the first without one).
        """
        def complete(example: 'Example') -> bool:
            return example.speakers is not None and all(s is not None for s in example.speakers)

        if not any(example.speakers for example in examples):
            return None
        missing = [e for e in examples if not complete(e)]
        if missing:
            first = missing[0]
            index = 0 if first.speakers is None else next(i for i, s in enumerate(first.speakers) if s is None)
            raise SpeakerError(
                f'{first.origin or first.mix}: source {index + 1} ({first.sources[index]}) has no speaker id while '
                f'other sources have one ({len(missing)} of {len(examples)} examples lack ids): give every source '
                f'an id ({speaker_column(index)} column, an utt2spk entry, or LibriMix / wsj0-mix file names) '
                'or none')
        return cls.build([e.speakers for e in examples], [e.sources for e in examples])

    @property
    def counts(self) -> Tuple[int, ...]:
        """Utterances per speaker (the draw weights)."""
        return tuple(len(u) for u in self.utterances)

    def __len__(self) -> int:
        return len(self.speakers)

    def check_enough(self, num_spks: int, where: str) -> None:
        """ValueError when fewer than `num_spks` distinct speakers are in the pool."""
        if len(self.speakers) < num_spks:
            shown = ', '.join(self.speakers[:10]) + (', ...' if len(self.speakers) > 10 else '')
            raise ValueError(f'{where}: dynamic mixing of {num_spks} distinct speakers needs at least {num_spks} '
                             f'speakers in the training pool, found {len(self.speakers)} ({shown})')

    def draw(self, rng: random.Random, num_spks: int) -> List[Tuple[int, int]]:
        """`num_spks` distinct speakers, each drawn with probability proportional to its utterance count
        among those not drawn yet (SpeechBrain's ``np.random.choice(..., replace=False, p=counts)``), then one
        utterance of each, uniformly.

        Returns:
            ``(example index, source index)`` per source of the new mixture.
        """
        remaining = list(range(len(self.speakers)))
        weights = list(self.counts)
        picks = []
        for _ in range(num_spks):
            at = rng.choices(range(len(remaining)), weights=[weights[s] for s in remaining])[0]
            speaker = remaining.pop(at)
            utterances = self.utterances[speaker]
            picks.append(utterances[rng.randrange(len(utterances))])
        return picks
