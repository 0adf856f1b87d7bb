"""From examples (or ModelScope rows) to training batches.

`ManifestDataset` reads full utterances from a manifest; `RowDataset` adapts
ModelScope torch datasets whose preprocessors provide ``mix_sig`` / ``s1_sig``
... fields.  Both yield ``{'id', 'mix': [T], 'sources': [C, T]}``.

`SeparationDataset` turns either into training or evaluation items: random
segments of a configured length for training (full utterances otherwise),
on-the-fly augmentation (dynamic mixing, speed perturbation, random gain) and a
bad-example policy; `collate_separation` pads a batch and keeps the lengths.

Dynamic mixing draws distinct speakers when the base dataset knows each source's
speaker (`ManifestDataset.speaker_pool`, see `speakers`): speakers weighted by
their utterance counts, then one utterance of each, as SpeechBrain's recipes do.
Without speaker ids it draws random sources, which may share a speaker.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .audio import AudioError, read_audio, sample_problem, to_mono
from .manifest import Example
from .speakers import SpeakerError, SpeakerPool

logger = logging.getLogger(__name__)

BAD_EXAMPLE_POLICIES = ('raise', 'skip')
DM_LOUDNESS_MODES = ('lufs',)
# LibriMix draws each source's loudness uniformly in [-33, -25] LUFS (its create_librimix_from_metadata.py)
DM_LOUDNESS_LUFS = (-33.0, -25.0)
LOUDNESS_EXTRA = "pip install 'modelscope_mossformer[loudness]'"
MIX_FIELD = 'mix_sig'


def source_field(index: int) -> str:
    """Row field of speaker `index` (0-based) in ModelScope datasets: 's1_sig'."""
    return f's{index + 1}_sig'


class ExampleError(ValueError):
    """An example whose files are unusable; the message names where it was listed and why."""


def _check_lengths(mix: torch.Tensor, sources: Sequence[torch.Tensor], where: str) -> None:
    lengths = [int(s.shape[-1]) for s in sources]
    if any(n != mix.shape[-1] for n in lengths):
        raise ExampleError(f'{where}: source lengths {lengths} differ from the mixture length {mix.shape[-1]} '
                           '(mixture and sources must be sample-aligned and equally long)')


class ManifestDataset(Dataset):
    """Full utterances of a manifest, read (and resampled) on access.

    Args:
        examples: from `load_manifest` and friends.
        sample_rate: the model's rate; other rates are resampled.
        on_rate_mismatch: 'resample' or 'error'.
    """

    def __init__(self, examples: Sequence[Example], sample_rate: Optional[int],
                 on_rate_mismatch: str = 'resample') -> None:
        if not examples:
            raise ValueError('ManifestDataset needs at least one example')
        counts = {e.num_spks for e in examples}
        if len(counts) != 1:
            raise ValueError(f'examples mix different numbers of sources: {sorted(counts)}')
        self.examples = list(examples)
        self.num_spks = counts.pop()
        self.sample_rate = sample_rate
        self.on_rate_mismatch = on_rate_mismatch

    def __len__(self) -> int:
        return len(self.examples)

    def speaker_pool(self) -> Optional[SpeakerPool]:
        """The sources grouped by speaker id, or None when no id is known.

        Raises:
            ExampleError: only some sources have an id (naming the first without one).
        """
        try:
            return SpeakerPool.from_examples(self.examples)
        except SpeakerError as err:
            raise ExampleError(str(err)) from None

    def _where(self, example: Example) -> str:
        return example.origin or example.id

    def read_source(self, index: int, speaker: int) -> torch.Tensor:
        example = self.examples[index]
        try:
            return read_audio(example.sources[speaker], self.sample_rate, self.on_rate_mismatch)
        except AudioError as err:
            raise ExampleError(f'{self._where(example)}: {err}') from None

    def __getitem__(self, index: int) -> Dict[str, Any]:
        example = self.examples[index]
        try:
            mix = read_audio(example.mix, self.sample_rate, self.on_rate_mismatch)
            sources = [read_audio(p, self.sample_rate, self.on_rate_mismatch) for p in example.sources]
        except AudioError as err:
            raise ExampleError(f'{self._where(example)}: {err}') from None
        _check_lengths(mix, sources, self._where(example))
        return {'id': example.id, 'mix': mix, 'sources': torch.stack(sources),
                'origin': f'{self._where(example)} ({example.mix})'}


def _as_wave(value: Any, where: str) -> torch.Tensor:
    """A row field (tensor, numpy array or list; [T] or [T, channels]) -> float32 [T]."""
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().float().numpy()
    else:
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ExampleError(f'{where}: not a waveform ({type(value).__name__}: {err})') from None
    if array.ndim == 2:
        array = to_mono(array if array.shape[0] >= array.shape[1] else array.T)
    if array.ndim != 1 or array.size == 0:
        raise ExampleError(f'{where}: expected a non-empty 1-D waveform, got shape {array.shape}')
    problem = sample_problem(array)
    if problem:
        raise ExampleError(f'{where}: {problem}')
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class RowDataset(Dataset):
    """Adapts a dataset of row dicts with ``mix_sig`` and ``s1_sig`` ... fields.

    This is what `MsDataset.to_torch_dataset(preprocessors=[AudioBrainPreprocessor(...)])`
    yields, with this package's preprocessor or ModelScope's own.

    Args:
        rows: an indexable dataset of dicts.
        num_spks: number of ``sN_sig`` fields to read.
    """

    def __init__(self, rows: Any, num_spks: int) -> None:
        self.rows = rows
        self.num_spks = num_spks

    def __len__(self) -> int:
        return len(self.rows)

    def _row(self, index: int) -> Mapping[str, Any]:
        row = self.rows[index]
        if not isinstance(row, Mapping):
            raise ExampleError(f'row {index}: expected a dict of fields, got {type(row).__name__}')
        needed = [MIX_FIELD] + [source_field(i) for i in range(self.num_spks)]
        missing = [f for f in needed if f not in row]
        if missing:
            raise ExampleError(f'row {index}: missing field(s) {missing}; fields present: {sorted(row)}; '
                               'add AudioBrainPreprocessor(takes=..., provides=...) for each')
        return row

    def _row_id(self, row: Mapping[str, Any], index: int) -> str:
        for key in ('id', 'mix_wav:FILE', 'mix_wav'):
            if key in row and isinstance(row[key], str):
                return str(row[key]).rsplit('/', 1)[-1].rsplit('.', 1)[0] if key != 'id' else row[key]
        return f'row{index:06d}'

    def read_source(self, index: int, speaker: int) -> torch.Tensor:
        return _as_wave(self._row(index)[source_field(speaker)], f'row {index} field {source_field(speaker)}')

    def __getitem__(self, index: int) -> Dict[str, Any]:
        row = self._row(index)
        mix = _as_wave(row[MIX_FIELD], f'row {index} field {MIX_FIELD}')
        sources = [_as_wave(row[source_field(i)], f'row {index} field {source_field(i)}')
                   for i in range(self.num_spks)]
        _check_lengths(mix, sources, f'row {index}')
        return {'id': self._row_id(row, index), 'mix': mix, 'sources': torch.stack(sources)}


@dataclass
class AugmentConfig:
    """On-the-fly augmentation, each part switchable.

    Attributes:
        dynamic_mixing: build new mixtures from random sources of the pool each epoch.
        dm_gain_db: range of the random per-source gain (dB) in dynamic mixing.
        speed_perturb: apply SpeechBrain's SpeedPerturb (same speed for all sources).
        speeds: speeds in percent for speed perturbation.
        random_gain_db: range of one random gain (dB) for the whole example, or None.
        dm_loudness: None: dynamic-mixing sources get random `dm_gain_db` gains; 'lufs': each source is
            scaled to a random integrated loudness (ITU-R BS.1770, pyloudnorm) in `dm_loudness_lufs`.
        dm_loudness_lufs: target loudness range in LUFS for 'lufs'; None means LibriMix's [-33, -25].
    """

    dynamic_mixing: bool = False
    dm_gain_db: Tuple[float, float] = (-5.0, 5.0)
    speed_perturb: bool = False
    speeds: Tuple[float, ...] = (95.0, 100.0, 105.0)
    random_gain_db: Optional[Tuple[float, float]] = None
    dm_loudness: Optional[str] = None
    dm_loudness_lufs: Optional[Tuple[float, float]] = None

    def __post_init__(self) -> None:
        if self.dm_loudness is not None and self.dm_loudness not in DM_LOUDNESS_MODES:
            raise ValueError(f"dm_loudness must be null (random dm_gain_db gains) or one of {list(DM_LOUDNESS_MODES)}, "
                             f'got {self.dm_loudness!r}')
        if self.dm_loudness_lufs is not None:
            span = self.dm_loudness_lufs
            if not isinstance(span, (tuple, list)) or len(span) != 2 or any(
                    isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in span) \
                    or span[0] > span[1]:
                raise ValueError(f'dm_loudness_lufs must be [low, high] finite LUFS with low <= high (or null for '
                                 f'{list(DM_LOUDNESS_LUFS)}), got {list(span) if isinstance(span, tuple) else span!r}')

    @property
    def loudness_range(self) -> Tuple[float, float]:
        """The target loudness range of 'lufs' dynamic mixing."""
        return tuple(self.dm_loudness_lufs) if self.dm_loudness_lufs is not None else DM_LOUDNESS_LUFS

    @property
    def active(self) -> bool:
        return self.dynamic_mixing or self.speed_perturb or self.random_gain_db is not None

    def to_section(self) -> Dict[str, Any]:
        """The ``train.augment`` section (JSON types): the defaults of that section are this class's."""
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> 'AugmentConfig':
        """Back from a ``train.augment`` section (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})


def loudness_meter(sample_rate: int) -> Any:
    """A pyloudnorm ITU-R BS.1770-4 meter (K-weighting, 400 ms gated blocks).

    Raises:
        ImportError: pyloudnorm is missing, naming the extra that installs it.
    """
    try:
        import pyloudnorm
    except ImportError:
        raise ImportError("loudness-normalised dynamic mixing (train.augment.dm_loudness='lufs') needs the "
                          f"'pyloudnorm' package: {LOUDNESS_EXTRA}") from None
    return pyloudnorm.Meter(sample_rate)


def loudness_gain(wave: torch.Tensor, target_lufs: float, meter: Any, where: str = 'source') -> float:
    """The factor that brings `wave` [T] to an integrated loudness of `target_lufs` (1.0 for silence).

    Raises:
        ExampleError: `wave` is shorter than one 400 ms loudness block.
    """
    block = int(round(meter.block_size * meter.rate))
    if wave.shape[-1] <= block:
        raise ExampleError(f'{where}: {wave.shape[-1]} sample(s), too short to measure its loudness (needs more '
                           f'than one {meter.block_size:g} s block, {block} samples)')
    measured = meter.integrated_loudness(wave.detach().double().numpy())
    if not math.isfinite(measured):
        return 1.0
    return float(10 ** ((target_lufs - measured) / 20))


class SeparationDataset(Dataset):
    """Training / evaluation items from a `ManifestDataset` or `RowDataset`.

    Args:
        base: yields ``{'id', 'mix', 'sources'}`` with full utterances.
        sample_rate: the model's rate (for segment lengths and speed perturbation).
        segment_seconds: training crop length; full utterances when None.
        train: random crops and augmentation (evaluation items are full and untouched).
        augment: augmentation switches (training only).
        bad_example_policy: 'raise' stops on a bad example with its location;
            'skip' logs it, yields None (dropped by `collate_separation` and counted).
        seed: base seed; items are reproducible for a given (seed, epoch, index).
        min_samples: utterances shorter than this (the encoder kernel) are bad examples.

    Raises:
        ValueError: dynamic mixing on a pool with fewer distinct speakers than `base.num_spks`, or where
            only some sources have a speaker id.
        ImportError: ``augment.dm_loudness='lufs'`` without pyloudnorm.
    """

    def __init__(self, base: Dataset, sample_rate: int, segment_seconds: Optional[float] = None, train: bool = True,
                 augment: Optional[AugmentConfig] = None, bad_example_policy: str = 'raise', seed: int = 0,
                 min_samples: int = 0) -> None:
        if bad_example_policy not in BAD_EXAMPLE_POLICIES:
            raise ValueError(f'bad_example_policy must be one of {BAD_EXAMPLE_POLICIES}, got {bad_example_policy!r}')
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError(f'segment_seconds must be positive, got {segment_seconds}')
        self.base = base
        self.num_spks = base.num_spks
        self.sample_rate = sample_rate
        self.segment = int(round(segment_seconds * sample_rate)) if segment_seconds and train else None
        self.train = train
        self.augment = augment or AugmentConfig()
        self.policy = bad_example_policy
        self.seed = seed
        self.min_samples = int(min_samples)
        self.epoch = 0
        self._speed = None
        self._meter = None
        self.pool: Optional[SpeakerPool] = None  # speakers dynamic mixing draws from; None: ids unknown
        if train and self.augment.dynamic_mixing:
            self.pool = self._speaker_pool()
            if self.augment.dm_loudness == 'lufs':
                self._meter = loudness_meter(sample_rate)

    def _speaker_pool(self) -> Optional[SpeakerPool]:
        build = getattr(self.base, 'speaker_pool', None)
        pool = build() if build is not None else None
        if pool is None:
            logger.warning('dynamic mixing: the training data has no speaker ids (give sN_spk CSV columns, an '
                           'utt2spk file, or LibriMix / wsj0-mix file names), so two sources of one mixture may '
                           'come from the same speaker')
            return None
        pool.check_enough(self.num_spks, 'the training data')
        logger.info('dynamic mixing: %d distinct speakers per mixture from %d speakers (%d utterances), '
                    'weighted by their utterance counts', self.num_spks, len(pool), sum(pool.counts))
        return pool

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        """Give each epoch its own crops and mixtures (call before iterating; DataLoader workers copy it)."""
        self.epoch = epoch

    def _rng(self, index: int) -> random.Random:
        return random.Random(hash((self.seed, self.epoch, index)) & 0xFFFFFFFF)

    def _crop(self, waves: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if self.segment is None or waves.shape[-1] <= self.segment:
            return waves
        start = rng.randrange(0, waves.shape[-1] - self.segment + 1)
        return waves[..., start:start + self.segment]

    def draw_sources(self, index: int) -> List[Tuple[int, int]]:
        """The ``(example index, source index)`` of each source dynamic mixing puts in item `index` this epoch
        (reads no audio; the same draw `__getitem__` makes)."""
        if not (self.train and self.augment.dynamic_mixing):
            raise ValueError('draw_sources: dynamic mixing is off for this dataset')
        return self._draw(index, self._rng(index))

    def _draw(self, index: int, rng: random.Random) -> List[Tuple[int, int]]:
        if self.pool is not None:  # distinct speakers, weighted by utterance counts
            return self.pool.draw(rng, self.num_spks)
        rows = [rng.randrange(len(self.base)) for _ in range(self.num_spks - 1)]
        return [(index, 0)] + [(row, rng.randrange(self.num_spks)) for row in rows]

    def _dm_gains(self, waves: Sequence[torch.Tensor], picks: Sequence[Tuple[int, int]],
                  rng: random.Random) -> List[float]:
        if self.augment.dm_loudness != 'lufs':
            return [10 ** (rng.uniform(*self.augment.dm_gain_db) / 20) for _ in waves]
        low, high = self.augment.loudness_range
        return [loudness_gain(wave, rng.uniform(low, high), self._meter, f'example {example} source {source + 1}')
                for wave, (example, source) in zip(waves, picks)]

    def _dynamic_mix(self, index: int, rng: random.Random) -> Dict[str, Any]:
        picks = self._draw(index, rng)
        waves = [self._crop(self.base.read_source(example, source).unsqueeze(0), rng)[0]
                 for example, source in picks]
        length = min(w.shape[-1] for w in waves)
        waves = [w[:length] for w in waves]
        stacked = torch.stack([w * gain for w, gain in zip(waves, self._dm_gains(waves, picks, rng))])
        return {'id': f'dm{self.epoch}-' + '+'.join(f'{example}s{source + 1}' for example, source in picks),
                'sources': stacked, 'mix': stacked.sum(0), 'dm_sources': picks}

    def _speed_perturb(self, item: Dict[str, Any], seed: int) -> Dict[str, Any]:
        if self._speed is None:
            from speechbrain.augment.time_domain import SpeedPerturb

            self._speed = SpeedPerturb(self.sample_rate, speeds=list(self.augment.speeds))
        residual = item['mix'] - item['sources'].sum(0)  # noise or anything not in the sources
        stacked = torch.cat((item['sources'], residual.unsqueeze(0)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            perturbed = self._speed(stacked)  # one speed for every row
        sources = perturbed[:-1]
        return dict(item, sources=sources, mix=sources.sum(0) + perturbed[-1])

    def _load(self, index: int) -> Dict[str, Any]:
        rng = self._rng(index)
        if self.train and self.augment.dynamic_mixing:
            item = self._dynamic_mix(index, rng)
        else:
            item = self.base[index]
            if item['mix'].shape[-1] < self.min_samples:
                raise ExampleError(f"{item.get('origin', item['id'])}: {item['mix'].shape[-1]} sample(s), shorter "
                                   f'than the model\'s encoder kernel ({self.min_samples} samples)')
            both = self._crop(torch.cat((item['mix'].unsqueeze(0), item['sources'])), rng)
            item = dict(item, mix=both[0], sources=both[1:])
        if self.train and self.augment.speed_perturb:
            item = self._speed_perturb(item, rng.randrange(2 ** 31))
        if self.train and self.augment.random_gain_db is not None:
            gain = 10 ** (rng.uniform(*self.augment.random_gain_db) / 20)
            item = dict(item, mix=item['mix'] * gain, sources=item['sources'] * gain)
        if self.train and self.augment.active:
            peak = float(item['mix'].abs().max())
            if peak > 0.99:  # one factor for all: the mixture stays the sum of the targets
                item = dict(item, mix=item['mix'] * (0.99 / peak), sources=item['sources'] * (0.99 / peak))
        return item

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        try:
            return self._load(index)
        except ExampleError as err:
            if self.policy == 'raise':
                raise
            logger.warning('skipping example %d: %s', index, err)
            return None


def collate_separation(batch: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    """Pad a list of items to the longest one.

    Returns:
        ``{'ids': [B], 'mix': [B, T], 'sources': [B, C, T], 'lengths': [B] (int64),
        'skipped': number of None items dropped}``; B may be 0 when all were skipped.
    """
    items = [item for item in batch if item is not None]
    skipped = len(batch) - len(items)
    if not items:
        return {'ids': [], 'mix': torch.zeros(0, 0), 'sources': torch.zeros(0, 0, 0),
                'lengths': torch.zeros(0, dtype=torch.long), 'skipped': skipped}
    lengths = torch.tensor([item['mix'].shape[-1] for item in items], dtype=torch.long)
    longest = int(lengths.max())
    num_spks = items[0]['sources'].shape[0]
    mix = torch.zeros(len(items), longest)
    sources = torch.zeros(len(items), num_spks, longest)
    for row, item in enumerate(items):
        n = item['mix'].shape[-1]
        mix[row, :n] = item['mix']
        sources[row, :, :n] = item['sources']
    return {'ids': [item['id'] for item in items], 'mix': mix, 'sources': sources, 'lengths': lengths,
            'skipped': skipped, 'origins': [item.get('origin', str(item['id'])) for item in items]}


def length_mask(lengths: torch.Tensor, max_length: Optional[int] = None) -> torch.Tensor:
    """[B] lengths -> [B, T] boolean mask of valid samples."""
    max_length = int(lengths.max()) if max_length is None else max_length
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]

