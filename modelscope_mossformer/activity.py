"""Which separated output carries a talker, and when: activity, gating, copy and single-talker checks.

A separation model always returns `num_spks` outputs, also for a recording with
fewer talkers: the "extra" output then holds low-level noise, or a leaked copy of
the voice in another output.  This module decides, frame by frame, where each
output carries speech energy of its own, reports it, and can gate an output to
silence where it does not.

The rule (all levels are mean squares of the final, level-matched outputs and of
the mixture as read, the channel mean at the input's rate):

1. frames of ``frame_seconds`` (20 ms), not overlapping, from the first sample;
2. each frame is judged on the centred window of ``window_seconds`` (0.2 s,
   +-5 frames; shorter at the file's ends) around it, so that the short pauses
   inside words and between syllables do not count as inactivity and a talker's
   quiet frames next to another talker's vowels are not mistaken for leakage;
3. output c is *raw-active* in frame n when, over that window,
   * its level is at least ``relative_db`` (-15 dB) of the mixture's level: it
     carries a real share of the mixture (two talkers within +-5 dB of each
     other each hold -1 to -6 dB of the mixture; a leak from a model that
     separates holds -20 dB or less), and
   * its level and the mixture's are above the floor: the higher of
     ``floor_dbfs`` (-70 dBFS) and the mixture's speech level minus
     ``dynamic_range_db`` (30 dB), where the speech level is the
     ``reference_percentile`` (95th) percentile of the mixture's 20 ms frame
     levels above ``floor_dbfs`` (`MixtureLevel`): where the mixture is silent,
     whatever an output holds (model noise) is not a talker;
4. *active* = raw-active dilated by ``hangover_seconds`` (0.1 s) on both sides, so
   that word onsets and decays are kept whole;
5. gating (optional) multiplies each inactive frame by zero, except for raised-cosine
   fades of ``fade_seconds`` (10 ms) on the inactive side of every boundary, so
   the kept speech is untouched and no click appears.

Checks, over the whole file:

* *copy*: two outputs active together for at least ``min_copy_seconds`` (0.5 s)
  whose normalised correlation over those frames is at least ``copy_correlation``
  (0.8; r^2 >= 0.64: a scaled version of one explains at least 64 % of the
  other's energy) - the weaker one is reported as a copy of the stronger one;
* *single talker*: an output whose normalised correlation with the mixture is at
  least ``whole_mixture_correlation`` (0.95: r^2 >= 90 % of the mixture's energy
  is a scaled version of it) and onto which the mixture projects with a
  coefficient <x, m> / |m|^2 of at least ``whole_mixture_share`` (0.5: it holds at
  least half the mixture's amplitude; a faint scaled copy does not count) carries
  the whole mixture, so the other outputs carry (almost) nothing else: the input
  most likely has fewer talkers than the model's outputs.

Everything is computed streaming (`ActivityTracker.push` per block) with a delay of
``1 + hangover + window / 2`` frames, so memory does not grow with the length of
the input; whole signals give the same result in one push.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

_TINY = 1e-30  # keeps log10 finite for digital silence
WHOLE_SIGNAL_BLOCK_SECONDS = 10.0  # `track_activity` feeds whole signals to the tracker in blocks of this length


@dataclass(frozen=True)
class ActivitySettings:
    """Constants of the activity rule (see the module docstring for what each does).

    Attributes:
        frame_seconds: frame length (decisions and gating happen per frame).
        window_seconds: length of the centred window each frame's levels are measured over.
        relative_db: an output below this level relative to the mixture (over the window) is inactive.
        dynamic_range_db: an output this far below the mixture's speech level is inactive.
        floor_dbfs: an output below this absolute level is inactive.
        reference_percentile: percentile of the mixture's frame levels taken as its speech level.
        hangover_seconds: activity is extended by this much before and after.
        fade_seconds: length of the gate's fades (at most half a frame).
        copy_correlation: |normalised correlation| from which an output is a copy of another.
        min_copy_seconds: outputs active together for less than this are not compared.
        whole_mixture_correlation: |correlation with the mixture| from which an output holds all of it...
        whole_mixture_share: ... if the mixture's projection coefficient onto it is at least this.
        silent_fraction: an output active for at most this share of the time is called nearly silent.
    """

    frame_seconds: float = 0.02
    window_seconds: float = 0.2
    relative_db: float = -15.0
    dynamic_range_db: float = 30.0
    floor_dbfs: float = -70.0
    reference_percentile: float = 95.0
    hangover_seconds: float = 0.1
    fade_seconds: float = 0.01
    copy_correlation: float = 0.8
    min_copy_seconds: float = 0.5
    whole_mixture_correlation: float = 0.95
    whole_mixture_share: float = 0.5
    silent_fraction: float = 0.02

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, expected: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not ok:
                raise ValueError(f'ActivitySettings.{name} must be {expected}, got {value!r}')

        for name in ('frame_seconds', 'window_seconds', 'relative_db', 'dynamic_range_db', 'floor_dbfs',
                     'reference_percentile', 'hangover_seconds', 'fade_seconds', 'copy_correlation',
                     'min_copy_seconds', 'whole_mixture_correlation', 'whole_mixture_share', 'silent_fraction'):
            check(name, True, 'a finite number')
        check('frame_seconds', 0 < self.frame_seconds <= 1.0, 'in (0, 1] s')
        check('window_seconds', self.window_seconds >= self.frame_seconds, 'at least frame_seconds')
        check('relative_db', self.relative_db <= 0, '<= 0 dB')
        check('dynamic_range_db', self.dynamic_range_db > 0, '> 0 dB')
        check('floor_dbfs', self.floor_dbfs < 0, '< 0 dBFS')
        check('reference_percentile', 0 < self.reference_percentile <= 100, 'in (0, 100]')
        check('hangover_seconds', self.hangover_seconds >= 0, '>= 0 s')
        check('fade_seconds', 0 <= self.fade_seconds <= self.frame_seconds / 2, 'in [0, frame_seconds / 2]')
        check('copy_correlation', 0 < self.copy_correlation <= 1, 'in (0, 1]')
        check('min_copy_seconds', self.min_copy_seconds >= 0, '>= 0 s')
        check('whole_mixture_correlation', 0 < self.whole_mixture_correlation <= 1, 'in (0, 1]')
        check('whole_mixture_share', self.whole_mixture_share > 0, '> 0')
        check('silent_fraction', 0 <= self.silent_fraction < 1, 'in [0, 1)')

    def frame_samples(self, sample_rate: int) -> int:
        """Samples per frame at `sample_rate`."""
        return max(1, int(round(self.frame_seconds * sample_rate)))


DEFAULT_SETTINGS = ActivitySettings()


def _mean_square_frames(samples: np.ndarray, frame: int) -> np.ndarray:
    """[..., n * frame] -> [..., n] mean squares (float64)."""
    shaped = samples.reshape(*samples.shape[:-1], -1, frame).astype(np.float64)
    return np.mean(shaped * shaped, axis=-1)


class MixtureLevel:
    """The mixture's speech level: a percentile of its frame levels, streamed (fixed-size histogram).

    Frames at or below `ActivitySettings.floor_dbfs` (silence) are not counted, so
    leading or trailing silence does not pull the level down.

    Args:
        sample_rate: rate of the pushed samples.
        settings: frame length, floor and percentile.
    """

    BIN_DB = 0.25
    LOW_DB, HIGH_DB = -160.0, 40.0

    def __init__(self, sample_rate: int, settings: ActivitySettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        self.frame = settings.frame_samples(sample_rate)
        self.rest = np.zeros(0, np.float32)
        self.counts = np.zeros(int((self.HIGH_DB - self.LOW_DB) / self.BIN_DB), np.int64)

    def _add(self, mean_squares: np.ndarray) -> None:
        levels = 10 * np.log10(mean_squares + _TINY)
        levels = levels[levels > self.settings.floor_dbfs]
        bins = np.clip(((levels - self.LOW_DB) / self.BIN_DB).astype(np.int64), 0, len(self.counts) - 1)
        np.add.at(self.counts, bins, 1)

    def push(self, samples: Any) -> None:
        """Add mixture samples [n] (numpy or torch)."""
        samples = np.concatenate((self.rest, np.asarray(samples, dtype=np.float32).reshape(-1)))
        whole = samples.shape[-1] // self.frame * self.frame
        if whole:
            self._add(_mean_square_frames(samples[:whole], self.frame))
        self.rest = samples[whole:]

    def finish(self) -> Optional[float]:
        """The speech level in dBFS (the centre of its histogram bin); None when nothing was above the floor."""
        if self.rest.size:
            self._add(np.array([float(np.mean(self.rest.astype(np.float64) ** 2))]))
            self.rest = self.rest[:0]
        total = int(self.counts.sum())
        if not total:
            return None
        rank = self.settings.reference_percentile / 100 * total
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side='left'))
        return self.LOW_DB + (min(index, len(self.counts) - 1) + 0.5) * self.BIN_DB


def mixture_level(mix: Any, sample_rate: int, settings: ActivitySettings = DEFAULT_SETTINGS) -> Optional[float]:
    """`MixtureLevel` of a whole signal [T]."""
    level = MixtureLevel(sample_rate, settings)
    level.push(mix)
    return level.finish()


@dataclass
class ActivityReport:
    """What the activity tracker found in one separated recording.

    Attributes:
        sample_rate: rate of the outputs.
        frame_seconds: the frame length actually used (whole samples).
        seconds: duration.
        active_seconds: per output, time judged active (after hangover; what the gate keeps).
        segments: per output, active stretches as (start, end) in seconds.
        copies: (copy, original, |correlation|) per output found to be a copy (0-based indices).
        mixture_correlation: per output, normalised correlation with the mixture over the whole file.
        single_talker: the output that carries the whole mixture, or None.
        reference_db: the mixture's speech level (dBFS) the floor was set from, or None.
        gated: whether inactive frames were set to silence.
        warnings: one sentence per problem found.
    """

    sample_rate: int
    frame_seconds: float
    seconds: float
    active_seconds: List[float]
    segments: List[List[Tuple[float, float]]]
    copies: List[Tuple[int, int, float]] = field(default_factory=list)
    mixture_correlation: List[float] = field(default_factory=list)
    single_talker: Optional[int] = None
    reference_db: Optional[float] = None
    gated: bool = False
    warnings: List[str] = field(default_factory=list)

    @property
    def active_fraction(self) -> List[float]:
        """Per output, the share of the time it is active (0 to 1)."""
        return [active / self.seconds if self.seconds else 0.0 for active in self.active_seconds]

    @property
    def copy_of(self) -> str:
        """The copies as text, e.g. ``'s2=s1'`` (s2 is a copy of s1); empty when there are none."""
        return ' '.join(f's{copy + 1}=s{original + 1}' for copy, original, _ in self.copies)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly form (outputs named s1, s2, ...)."""
        return {
            'frame_seconds': self.frame_seconds,
            'active_fraction': [round(value, 4) for value in self.active_fraction],
            'active_seconds': [round(value, 3) for value in self.active_seconds],
            'segments': [[(round(start, 3), round(end, 3)) for start, end in spans] for spans in self.segments],
            'copy_of': {f's{copy + 1}': f's{original + 1}' for copy, original, _ in self.copies},
            'single_talker': None if self.single_talker is None else f's{self.single_talker + 1}',
            'mixture_correlation': [round(value, 4) for value in self.mixture_correlation],
            'reference_db': self.reference_db,
            'gated': self.gated,
            'warnings': list(self.warnings),
        }

    @classmethod
    def silent(cls, num_outputs: int, sample_rate: int, num_samples: int,
               settings: ActivitySettings = DEFAULT_SETTINGS) -> 'ActivityReport':
        """The report of silent outputs (a silent input, where the model does not run)."""
        return cls(sample_rate=sample_rate, frame_seconds=settings.frame_samples(sample_rate) / sample_rate,
                   seconds=num_samples / sample_rate, active_seconds=[0.0] * num_outputs,
                   segments=[[] for _ in range(num_outputs)], mixture_correlation=[0.0] * num_outputs)


def _fade(length: int, rising: bool) -> np.ndarray:
    """Raised-cosine ramp of `length` samples, open at both ends (0 < values < 1)."""
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(length) + 0.5) / length) if length else np.zeros(0)
    return (ramp if rising else ramp[::-1]).astype(np.float32)


class ActivityTracker:
    """Streams separated outputs through the activity rule; gates them on request; collects the checks.

    Push blocks of outputs [C, n] and of the mixture [n] (same rate, aligned, any block
    sizes); each push returns the outputs that are final now, gated or exactly as
    pushed, ``1 + hangover + window / 2`` frames later; `finish` returns the rest and
    `report` what was found.

    Args:
        num_outputs: C.
        sample_rate: rate of the outputs and the mixture.
        reference_db: the mixture's speech level (`MixtureLevel`), or None for the absolute floor alone.
        gate: multiply inactive frames by zero (with fades).
        settings: the rule's constants.
    """

    def __init__(self, num_outputs: int, sample_rate: int, reference_db: Optional[float] = None,
                 gate: bool = False, settings: ActivitySettings = DEFAULT_SETTINGS) -> None:
        if num_outputs < 1:
            raise ValueError(f'num_outputs must be at least 1, got {num_outputs}')
        self.num_outputs = num_outputs
        self.sample_rate = int(sample_rate)
        self.settings = settings
        self.gate = gate
        self.reference_db = reference_db
        self.frame = settings.frame_samples(self.sample_rate)
        self.half_window = int(round(settings.window_seconds / settings.frame_seconds / 2))
        self.hangover = int(round(settings.hangover_seconds / settings.frame_seconds))
        self.fade = min(int(round(settings.fade_seconds * self.sample_rate)), self.frame // 2)
        self.relative = 10 ** (settings.relative_db / 10)
        floor_db = settings.floor_dbfs
        if reference_db is not None:
            floor_db = max(floor_db, reference_db - settings.dynamic_range_db)
        self.floor = 10 ** (floor_db / 10)
        self.fade_out, self.fade_in = _fade(self.fade, rising=False), _fade(self.fade, rising=True)
        # audio not yet emitted, from the first sample of frame `next_frame`
        self.audio = np.zeros((num_outputs, 0), np.float32)
        self.mix = np.zeros(0, np.float32)
        # sums of squares and sample counts of frames base .. framed - 1
        self.base = self.framed = self.next_frame = 0
        self.sq_out = np.zeros((num_outputs, 0))
        self.sq_mix = np.zeros(0)
        self.counts = np.zeros(0)
        self.finished = False
        # what was found
        pairs = num_outputs * (num_outputs - 1) // 2
        self.active_samples = np.zeros(num_outputs, np.int64)
        self.total_samples = 0
        self.segments: List[List[List[int]]] = [[] for _ in range(num_outputs)]  # [start, end) in frames
        self.previous_active = np.zeros(num_outputs, bool)
        self.pair_dot = np.zeros(pairs)
        self.pair_energy = np.zeros((pairs, 2))
        self.pair_samples = np.zeros(pairs, np.int64)
        self.mix_dot = np.zeros(num_outputs)
        self.out_energy = np.zeros(num_outputs)
        self.mix_energy = 0.0
        self.pairs = [(i, j) for i in range(num_outputs) for j in range(i + 1, num_outputs)]

    @property
    def delay_frames(self) -> int:
        """Frames a pushed sample waits before it is returned (at most)."""
        return 1 + self.hangover + self.half_window

    # -- frame statistics ------------------------------------------------------------------

    def _add_frames(self, out_sq: np.ndarray, mix_sq: np.ndarray, counts: np.ndarray) -> None:
        self.sq_out = np.concatenate((self.sq_out, out_sq), axis=1)
        self.sq_mix = np.concatenate((self.sq_mix, mix_sq))
        self.counts = np.concatenate((self.counts, counts))
        self.framed += counts.shape[0]

    def _frame_new_samples(self) -> None:
        """Statistics of every complete frame not yet counted (and of the partial last one at the end)."""
        offset = (self.framed - self.next_frame) * self.frame
        available = self.audio.shape[-1] - offset
        whole = available // self.frame * self.frame
        if whole:
            out = self.audio[:, offset:offset + whole]
            mix = self.mix[offset:offset + whole]
            count = whole // self.frame
            self._add_frames(_mean_square_frames(out, self.frame) * self.frame,
                             _mean_square_frames(mix, self.frame) * self.frame, np.full(count, float(self.frame)))
        if self.finished and available > whole:
            out = self.audio[:, offset + whole:].astype(np.float64)
            mix = self.mix[offset + whole:].astype(np.float64)
            self._add_frames((out * out).sum(-1, keepdims=True), np.array([float((mix * mix).sum())]),
                             np.array([float(available - whole)]))

    def _decisions(self, first: int, stop: int) -> np.ndarray:
        """[C, stop - first] activity (after hangover) of frames first .. stop - 1 (all inside the held frames)."""
        held = self.framed - self.base

        def window_sum(values: np.ndarray, half: int, lo: int, hi: int) -> np.ndarray:
            """Sums over [m - half, m + half] (clipped to the held frames) for m in lo .. hi - 1 (held-relative)."""
            cumulative = np.concatenate((np.zeros(values.shape[:-1] + (1,)), np.cumsum(values, axis=-1)), axis=-1)
            index = np.arange(lo, hi)
            return cumulative[..., np.minimum(index + half + 1, held)] - cumulative[..., np.maximum(index - half, 0)]

        lo = max(first - self.hangover, 0) - self.base
        hi = min(stop + self.hangover, self.framed) - self.base
        out = window_sum(self.sq_out, self.half_window, lo, hi)
        mix = window_sum(self.sq_mix, self.half_window, lo, hi)
        count = window_sum(self.counts, self.half_window, lo, hi)
        audible = (mix >= self.floor * count) & (out >= self.floor * count) & (out > 0)
        raw = audible & (out >= self.relative * mix)
        # dilate by the hangover: raw covers frames lo .. hi - 1 (held-relative)
        padded = np.zeros((self.num_outputs, held))
        padded[:, lo:hi] = raw
        wanted = np.arange(first, stop) - self.base
        cumulative = np.concatenate((np.zeros((self.num_outputs, 1)), np.cumsum(padded, axis=-1)), axis=-1)
        spread = (cumulative[:, np.minimum(wanted + self.hangover + 1, held)]
                  - cumulative[:, np.maximum(wanted - self.hangover, 0)])
        return spread > 0

    # -- emitting --------------------------------------------------------------------------

    def _emit(self, stop: int) -> np.ndarray:
        """Finalise frames next_frame .. stop - 1; returns their (gated) samples."""
        first = self.next_frame
        if stop <= first:
            return self.audio[:, :0]
        # activity of the frames and of one neighbour on each side (outside the signal: inactive)
        lo, hi = max(first - 1, 0), min(stop + 1, self.framed)
        active = np.zeros((self.num_outputs, stop - first + 2), bool)
        if hi > lo:  # index k of `active` is frame first - 1 + k
            active[:, lo - first + 1:hi - first + 1] = self._decisions(lo, hi)
        current, previous, following = active[:, 1:-1], active[:, :-2], active[:, 2:]
        counts = self.counts[first - self.base:stop - self.base].astype(np.int64)
        length = int(counts.sum())
        samples = self.audio[:, :length]
        mix = self.mix[:length]
        # sample-level activity (fades count as inactive) and gains
        mask = np.repeat(current, counts, axis=1)
        self._collect(samples, mix, mask, current, first)
        if self.gate:
            gains = mask.astype(np.float32)
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            for c, n in zip(*np.nonzero(~current & previous)):
                size = min(self.fade, int(counts[n]))
                gains[c, starts[n]:starts[n] + size] = self.fade_out[:size]
            for c, n in zip(*np.nonzero(~current & following)):
                size = min(self.fade, int(counts[n]))
                end = starts[n] + int(counts[n])
                gains[c, end - size:end] = np.maximum(gains[c, end - size:end], self.fade_in[self.fade - size:])
            emitted = samples * gains
        else:
            emitted = samples.copy()
        self.audio = self.audio[:, length:]
        self.mix = self.mix[length:]
        self.next_frame = stop
        # keep the statistics the next decisions need
        keep_from = max(self.next_frame - 1 - self.hangover - self.half_window, 0)
        drop = keep_from - self.base
        if drop > 0:
            self.sq_out, self.sq_mix, self.counts = self.sq_out[:, drop:], self.sq_mix[drop:], self.counts[drop:]
            self.base = keep_from
        return emitted

    def _collect(self, samples: np.ndarray, mix: np.ndarray, mask: np.ndarray, frames: np.ndarray,
                 first: int) -> None:
        """Accumulate activity time, segments, pair and mixture correlations."""
        x = samples.astype(np.float64)
        m = mix.astype(np.float64)
        self.total_samples += x.shape[-1]
        self.active_samples += mask.sum(axis=-1)
        self.mix_dot += x @ m
        self.out_energy += (x * x).sum(axis=-1)
        self.mix_energy += float(m @ m)
        for index, (i, j) in enumerate(self.pairs):
            both = mask[i] & mask[j]
            if both.any():
                xi, xj = x[i, both], x[j, both]
                self.pair_dot[index] += float(xi @ xj)
                self.pair_energy[index] += (float(xi @ xi), float(xj @ xj))
                self.pair_samples[index] += int(both.sum())
        for c in range(self.num_outputs):
            row = frames[c]
            edges = np.flatnonzero(np.diff(np.concatenate(([self.previous_active[c]], row)).astype(np.int8)))
            for edge in edges:
                if row[edge]:
                    self.segments[c].append([first + edge, first + edge + 1])
                else:
                    self.segments[c][-1][1] = first + edge
            if row.size and row[-1]:
                self.segments[c][-1][1] = first + row.size
            if row.size:
                self.previous_active[c] = row[-1]

    # -- public ----------------------------------------------------------------------------

    def push(self, outputs: Any, mix: Any) -> np.ndarray:
        """Add outputs [C, n] and the mixture [n]; returns the outputs that are final now [C, m] (float32)."""
        if self.finished:
            raise RuntimeError('ActivityTracker.push after finish')
        outputs = np.asarray(outputs, dtype=np.float32)
        mix = np.asarray(mix, dtype=np.float32).reshape(-1)
        if outputs.ndim != 2 or outputs.shape[0] != self.num_outputs or outputs.shape[-1] != mix.shape[-1]:
            raise ValueError(f'ActivityTracker.push: expected outputs [{self.num_outputs}, n] and a mixture [n], '
                             f'got {tuple(outputs.shape)} and {tuple(mix.shape)}')
        self.audio = np.concatenate((self.audio, outputs), axis=1)
        self.mix = np.concatenate((self.mix, mix))
        self._frame_new_samples()
        return self._emit(max(self.framed - self.delay_frames, self.next_frame))

    def finish(self) -> np.ndarray:
        """The remaining outputs [C, m]."""
        if self.finished:
            return self.audio[:, :0]
        self.finished = True
        self._frame_new_samples()
        return self._emit(self.framed)

    def report(self) -> ActivityReport:
        """What was found (call after `finish`)."""
        if not self.finished:
            raise RuntimeError('ActivityTracker.report before finish')
        rate, settings = self.sample_rate, self.settings
        frame_seconds = self.frame / rate
        seconds = self.total_samples / rate
        end = seconds
        segments = [[(float(start * frame_seconds), float(min(stop * frame_seconds, end))) for start, stop in spans]
                    for spans in self.segments]
        active = [float(n) / rate for n in self.active_samples]
        fraction = [a / seconds if seconds else 0.0 for a in active]
        mix_corr = [float(self.mix_dot[c] / math.sqrt(self.out_energy[c] * self.mix_energy))
                    if self.out_energy[c] > 0 and self.mix_energy > 0 else 0.0 for c in range(self.num_outputs)]
        copies: List[Tuple[int, int, float]] = []
        warnings: List[str] = []
        copied = set()
        for index, (i, j) in enumerate(self.pairs):
            energy_i, energy_j = self.pair_energy[index]
            if self.pair_samples[index] < settings.min_copy_seconds * rate or energy_i <= 0 or energy_j <= 0:
                continue
            corr = abs(self.pair_dot[index]) / math.sqrt(energy_i * energy_j)
            if corr >= settings.copy_correlation:
                copy, original = (j, i) if energy_j <= energy_i else (i, j)
                if copy in copied:
                    continue
                copied.add(copy)
                copies.append((copy, original, float(corr)))
                level = 10 * math.log10(min(energy_i, energy_j) / max(energy_i, energy_j))
                warnings.append(
                    f's{copy + 1} is essentially a copy of s{original + 1} (|correlation| {corr:.2f} over the '
                    f'{self.pair_samples[index] / rate:.1f} s where both are active, {level:.1f} dB weaker): '
                    'the model leaked one voice into two outputs; the input may hold fewer talkers than outputs')
        single = None
        share = [float(self.mix_dot[c] / self.mix_energy) if self.mix_energy > 0 else 0.0
                 for c in range(self.num_outputs)]
        holders = [c for c in range(self.num_outputs) if mix_corr[c] >= settings.whole_mixture_correlation
                   and share[c] >= settings.whole_mixture_share]
        if self.num_outputs > 1 and holders:
            strongest = single = max(holders, key=lambda c: self.out_energy[c])
            others = ', '.join(f's{c + 1} active {100 * fraction[c]:.0f} % of the time'
                               for c in range(self.num_outputs) if c != strongest)
            quiet = [c for c in range(self.num_outputs) if c != strongest and fraction[c] <= settings.silent_fraction]
            what = 'are nearly silent' if len(quiet) == self.num_outputs - 1 else 'hold little of it'
            warnings.append(
                f's{strongest + 1} carries the whole mixture (correlation {mix_corr[strongest]:.3f}); the other '
                f'output(s) {what} ({others}): the input seems to have fewer talkers than the model\'s '
                f'{self.num_outputs} outputs')
        return ActivityReport(sample_rate=rate, frame_seconds=frame_seconds, seconds=seconds, active_seconds=active,
                              segments=segments, copies=copies, mixture_correlation=mix_corr, single_talker=single,
                              reference_db=self.reference_db, gated=self.gate, warnings=warnings)


def track_activity(outputs: Any, mix: Any, sample_rate: int, gate: bool = False,
                   reference_db: Optional[float] = None,
                   settings: ActivitySettings = DEFAULT_SETTINGS) -> Tuple[np.ndarray, ActivityReport]:
    """Activity (and gating) of whole signals: outputs [C, T] and the mixture [T] at `sample_rate`.

    Args:
        outputs: the separated, level-matched outputs.
        mix: the mixture they came from.
        sample_rate: their rate.
        gate: set inactive frames to silence.
        reference_db: the mixture's speech level (`MixtureLevel`); when None it is measured on `mix`.
        settings: the rule's constants.

    Returns:
        The outputs (gated when `gate`, else exactly as given, float32) and the report.
    """
    outputs = np.asarray(outputs, dtype=np.float32)
    if reference_db is None:
        reference_db = mixture_level(mix, sample_rate, settings)
    mix = np.asarray(mix, dtype=np.float32).reshape(-1)
    tracker = ActivityTracker(outputs.shape[0], sample_rate, reference_db, gate=gate, settings=settings)
    block = int(WHOLE_SIGNAL_BLOCK_SECONDS * sample_rate)  # blocks keep the temporaries small; same result
    parts = [tracker.push(outputs[:, start:start + block], mix[start:start + block])
             for start in range(0, max(outputs.shape[-1], 1), block)]
    parts.append(tracker.finish())
    return np.concatenate(parts, axis=1), tracker.report()


def activity_columns(num_outputs: int) -> Sequence[str]:
    """Report columns: ``s1_active`` ... per output, then ``copy_of`` and ``single_talker``."""
    return tuple(f's{c + 1}_active' for c in range(num_outputs)) + ('copy_of', 'single_talker')


def activity_row(report: ActivityReport) -> Dict[str, Any]:
    """The report columns of one file."""
    row: Dict[str, Any] = {f's{c + 1}_active': round(value, 4) for c, value in enumerate(report.active_fraction)}
    row['copy_of'] = report.copy_of
    row['single_talker'] = '' if report.single_talker is None else f's{report.single_talker + 1}'
    return row
