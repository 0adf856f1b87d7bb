"""Separating files of any length, one or many, with bounded memory and per-file error handling.

`separate_file` streams one recording through a `SeparationEngine`:

1. scan: one pass over the file in blocks finds non-finite samples (an error
   before anything is written), digital silence and clipping;
2. separate: blocks are read with soundfile, downmixed to mono, resampled to the
   model's rate (`StreamResampler`: per block, soxr's streaming resampler, so that
   the result equals resampling the whole file), cut into the
   engine's overlapping chunks, separated, speaker-aligned and cross-faded, then
   resampled back to the file's rate and appended to float32 temporary files;
3. level: the statistics of step 2 give the single gain that
   `inference.match_mixture_level` would apply to the whole output (least-squares
   fit of the estimates' sum to the mixture, lowered if a peak would exceed
   0.999); a last pass applies it block by block and writes ``<name>_s1.wav``,
   ``<name>_s2.wav``, ... (renamed into place only when complete).  The same pass
   reads the input again and tracks each output's activity against it
   (`activity.ActivityTracker`: active time, copies, a single talker) and, with
   ``gate_inactive``, sets each output to silence where it is inactive.

Memory depends on the chunk length, never on the file length.  Without chunking
(`chunk_seconds=None`) the whole file is separated at once, as papers evaluate.

`separate_many` runs `separate_file` over audio files, folders of audio files,
CSV / scp manifests and LibriMix trees.  Listed references (CSV / scp / LibriMix)
are scored with `metrics.separation_scores` (SI-SNR, SI-SNRi, SDR, SDRi; PESQ / STOI / ESTOI
when asked, `perceptual`); every
run writes ``report.csv`` (one row per file) and ``summary.json`` (counts, mean
metrics, failures).  A file that cannot be used (missing, unreadable, empty,
NaN/Inf samples, too short) is logged with the reason and the batch goes on.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .activity import (DEFAULT_SETTINGS, ActivityReport, ActivitySettings, ActivityTracker, MixtureLevel,
                       activity_columns, activity_row)
from .data.audio import (RESAMPLE_QUALITY, AudioError, _as_frames, _check_rates, _flush_padding, _to_tensor,
                         audio_info, read_audio, resampled_length, sample_problem)
from .data.manifest import AUDIO_SUFFIXES, LIST_SUFFIXES, MIX_COLUMN, ManifestError, load_manifest
from .inference import OUTPUT_PEAK, SILENCE_PEAK, SeparationEngine, level_gain, overlapping_chunks

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CLIP_LEVEL = 0.999  # |x| at or above this counts as a clipped sample
READ_BLOCK_SECONDS = 2.0  # file block size for scanning and streaming
LONG_FILE_SECONDS = 60.0  # files longer than this get their own progress bar
METRIC_KEYS = ('si-snr', 'si-snri', 'sdr', 'sdri')
OUTPUT_SUBTYPES = ('PCM_16', 'PCM_24', 'FLOAT')


# ---------------------------------------------------------------------------
# streaming resampling
# ---------------------------------------------------------------------------


class StreamResampler:
    """Resamples a signal that arrives in blocks; the output equals resampling it whole.

    A soxr stream (the same resampler and quality as `data.audio.resample`) keeps
    its own filter history between blocks, so the concatenated output is the
    whole-signal output sample for sample (no context to re-read, for any pair of
    rates).  `finish` flushes it with the same zero padding as `resample` and
    trims the total to `resampled_length(pushed, orig, new)` samples, so the
    streamed and the whole-signal results have the same length too.

    Args:
        orig_rate: rate of the pushed blocks.
        new_rate: rate of the returned blocks.

    Blocks are [..., n] floating-point tensors; leading dimensions (speakers)
    must not change between blocks.
    """

    def __init__(self, orig_rate: int, new_rate: int) -> None:
        self.identity = orig_rate == new_rate
        self.orig_rate, self.new_rate = (int(orig_rate), int(new_rate)) if self.identity else \
            _check_rates(orig_rate, new_rate)
        self._stream: Any = None
        self._shape: Optional[Tuple[int, ...]] = None  # leading dimensions of the first block
        self._like: Optional[torch.Tensor] = None  # an empty slice of the first block: dtype and device
        self._dtype: Any = None  # numpy dtype the stream runs in
        self.pushed = 0  # input samples per channel
        self.emitted = 0  # output samples per channel returned so far

    def _frames(self, block: torch.Tensor) -> np.ndarray:
        """[..., n] block -> [n, channels] array in the stream's dtype (C-contiguous, as soxr streams take)."""
        frames, _ = _as_frames(block)
        if self._stream is None:
            import soxr

            self._shape = tuple(block.shape[:-1])
            self._like = block[..., :0]
            self._stream = soxr.ResampleStream(self.orig_rate, self.new_rate, frames.shape[0],
                                               dtype=frames.dtype, quality=RESAMPLE_QUALITY)
            self._dtype = frames.dtype
        elif tuple(block.shape[:-1]) != self._shape:
            raise ValueError(f'StreamResampler: block of shape {tuple(block.shape)} after blocks of leading '
                             f'shape {self._shape}; the channels must not change')
        return np.ascontiguousarray(frames.T, dtype=self._dtype)

    def _emit(self, frames: np.ndarray, limit: Optional[int] = None) -> torch.Tensor:
        count = frames.shape[0] if limit is None else max(0, min(frames.shape[0], limit - self.emitted))
        self.emitted += count
        return _to_tensor(frames, self._like, self._like.dtype, count)

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Add input [..., n]; returns the output samples that are final now."""
        if self.identity:
            return block
        frames = self._frames(block)
        self.pushed += frames.shape[0]
        return self._emit(self._stream.resample_chunk(frames))

    def finish(self) -> Optional[torch.Tensor]:
        """The remaining output (None when nothing was pushed)."""
        if self.identity or self._stream is None:
            return None
        channels = int(np.prod(self._shape, dtype=np.int64))
        zeros = np.zeros((_flush_padding(self.orig_rate, self.new_rate), channels), self._dtype)
        tail = self._stream.resample_chunk(zeros, last=True)
        total = resampled_length(self.pushed, self.orig_rate, self.new_rate)
        if self.emitted > total:  # soxr returned more than the whole-signal length before the flush
            raise RuntimeError(f'StreamResampler: {self.emitted} samples returned for {self.pushed} inputs '
                               f'({self.orig_rate} -> {self.new_rate} Hz), more than the {total} expected')
        out = self._emit(tail, limit=total)
        self._stream = None
        return out


# ---------------------------------------------------------------------------
# reading a file in blocks
# ---------------------------------------------------------------------------


@dataclass
class AudioScan:
    """What one pass over a file found.

    Attributes:
        frames: samples per channel.
        sample_rate: the file's rate.
        channels: channel count.
        peak: largest |sample| over all channels.
        clipped: samples (over all channels) at or above CLIP_LEVEL.
    """

    frames: int
    sample_rate: int
    channels: int
    peak: float
    clipped: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def silent(self) -> bool:
        return self.peak < SILENCE_PEAK


def _file_blocks(path: Path, block_frames: int) -> Iterator[np.ndarray]:
    """[n, channels] float32 blocks of a file; AudioError when it cannot be read."""
    import soundfile

    try:
        handle = soundfile.SoundFile(str(path))
    except Exception as err:  # noqa: BLE001 - libsndfile's errors vary by format
        raise AudioError(path, f'unreadable audio ({err})') from err
    with handle:
        while True:
            try:
                block = handle.read(block_frames, dtype='float32', always_2d=True)
            except Exception as err:  # noqa: BLE001
                raise AudioError(path, f'read error after {handle.tell()} samples ({err})') from err
            if not len(block):
                return
            yield block


def scan_audio(path: PathLike) -> AudioScan:
    """One streaming pass over `path`.

    Raises:
        AudioError: missing, unreadable or empty file, or NaN / Inf samples (the
            message gives the first bad sample's position).
    """
    path = Path(path)
    frames, rate, channels = audio_info(path)
    if frames == 0:
        raise AudioError(path, 'empty audio (0 samples)')
    peak, clipped, position = 0.0, 0, 0
    for block in _file_blocks(path, int(READ_BLOCK_SECONDS * rate)):
        problem = sample_problem(block, position)
        if problem:
            raise AudioError(path, f'{problem} (in the block at {position / rate:.2f} s)')
        magnitude = np.abs(block)
        peak = max(peak, float(magnitude.max()))
        clipped += int((magnitude >= CLIP_LEVEL).sum())
        position += len(block)
    if position == 0:
        raise AudioError(path, 'empty audio (0 samples)')
    return AudioScan(frames=position, sample_rate=rate, channels=channels, peak=peak, clipped=clipped)


def _mono_blocks(path: Path, block_frames: int) -> Iterator[torch.Tensor]:
    for block in _file_blocks(path, block_frames):
        yield torch.from_numpy(np.ascontiguousarray(block.mean(axis=1)))


def _resampled(blocks: Iterable[torch.Tensor], resampler: StreamResampler) -> Iterator[torch.Tensor]:
    for block in blocks:
        out = resampler.push(block)
        if out.shape[-1]:
            yield out
    tail = resampler.finish()
    if tail is not None and tail.shape[-1]:
        yield tail


class _Fifo:
    """Mixture samples waiting for their separated counterparts."""

    def __init__(self) -> None:
        self.parts: List[torch.Tensor] = []

    def push(self, samples: torch.Tensor) -> None:
        if samples.shape[-1]:
            self.parts.append(samples)

    def pop(self, count: int) -> torch.Tensor:
        taken, have = [], 0
        while have < count and self.parts:
            part = self.parts.pop(0)
            need = count - have
            if part.shape[-1] > need:
                self.parts.insert(0, part[need:])
                part = part[:need]
            taken.append(part)
            have += part.shape[-1]
        return torch.cat(taken) if taken else torch.zeros(0)


# ---------------------------------------------------------------------------
# one file
# ---------------------------------------------------------------------------


@dataclass
class FileResult:
    """One separated file.

    Attributes:
        name: output base name (``<name>_s1.wav``...).
        input: the mixture file.
        outputs: one file per speaker.
        sample_rate: rate of the input and the outputs.
        seconds: input duration.
        elapsed: wall-clock seconds spent on the file.
        clipped: input samples at or above CLIP_LEVEL.
        silent: the input was digital silence (outputs are silent, the model did not run).
        gain: the level factor applied to the model output.
        warnings: what was noticed about the input.
        activity: per-output activity, copies, single-talker check (see `activity`).
    """

    name: str
    input: Path
    outputs: List[Path]
    sample_rate: int
    seconds: float
    elapsed: float
    clipped: int = 0
    silent: bool = False
    gain: float = 1.0
    warnings: List[str] = field(default_factory=list)
    activity: Optional[ActivityReport] = None

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time / audio duration."""
        return self.elapsed / self.seconds if self.seconds else float('nan')


def engine_of(engine_or_pipeline: Any) -> SeparationEngine:
    """The `SeparationEngine` of an engine or of a `MossFormerSeparationPipeline`."""
    if isinstance(engine_or_pipeline, SeparationEngine):
        return engine_or_pipeline
    engine = getattr(engine_or_pipeline, 'engine', None)
    if isinstance(engine, SeparationEngine):
        return engine
    raise TypeError(f'expected a SeparationEngine or a MossFormerSeparationPipeline, '
                    f'got {type(engine_or_pipeline).__name__}')


class _OutputSet:
    """Per-speaker float32 temporary files, then the final scaled files."""

    def __init__(self, out_dir: Path, name: str, sample_rate: int, subtype: str) -> None:
        self.out_dir = out_dir
        self.name = name
        self.sample_rate = sample_rate
        self.subtype = subtype
        self.handles: List[Any] = []
        self.written = 0

    def final_path(self, index: int) -> Path:
        return self.out_dir / f'{self.name}_s{index + 1}.wav'

    def partial_path(self, index: int) -> Path:
        return self.out_dir / f'.{self.name}_s{index + 1}.partial.wav'

    def scaled_path(self, index: int) -> Path:
        return self.out_dir / f'.{self.name}_s{index + 1}.scaled.wav'

    def write(self, block: torch.Tensor) -> None:
        """Append [C, n] at the output rate."""
        import soundfile

        if not self.handles:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.handles = [soundfile.SoundFile(str(self.partial_path(i)), 'w', samplerate=self.sample_rate,
                                                channels=1, subtype='FLOAT', format='WAV')
                            for i in range(block.shape[0])]
        data = block.numpy()
        for handle, samples in zip(self.handles, data):
            handle.write(samples)
        self.written += block.shape[-1]

    def finalise(self, factor: float, block_frames: int) -> List[Path]:
        """Scale the temporary files by `factor` into ``<name>_sN.wav``."""
        import soundfile

        self.close()
        finals = []
        for index in range(self.count):
            with soundfile.SoundFile(str(self.partial_path(index))) as source, \
                    soundfile.SoundFile(str(self.scaled_path(index)), 'w', samplerate=self.sample_rate, channels=1,
                                        subtype=self.subtype, format='WAV') as target:
                while True:
                    block = source.read(block_frames, dtype='float32')
                    if not len(block):
                        break
                    target.write(block * np.float32(factor))
            os.replace(self.scaled_path(index), self.final_path(index))
            self.partial_path(index).unlink()
            finals.append(self.final_path(index))
        return finals

    def finalise_tracked(self, factor: float, block_frames: int, mixture: Iterable[torch.Tensor],
                         tracker: ActivityTracker) -> List[Path]:
        """`finalise`, with every scaled block passed through `tracker` (activity; gating when it gates).

        `mixture` yields the input's mono samples at the output rate, as long as the outputs in total.
        """
        import soundfile

        self.close()
        sources = [soundfile.SoundFile(str(self.partial_path(i))) for i in range(self.count)]
        targets = [soundfile.SoundFile(str(self.scaled_path(i)), 'w', samplerate=self.sample_rate, channels=1,
                                       subtype=self.subtype, format='WAV') for i in range(self.count)]
        mix = _Fifo()
        mix_blocks = iter(mixture)

        def write(block: np.ndarray) -> None:
            for target, samples in zip(targets, block):
                target.write(samples)

        try:
            while True:
                blocks = [source.read(block_frames, dtype='float32') for source in sources]
                if not len(blocks[0]):
                    break
                while sum(p.shape[-1] for p in mix.parts) < len(blocks[0]):
                    more = next(mix_blocks, None)
                    if more is None:
                        raise RuntimeError(f'{self.name}: the mixture ended before the separated outputs')
                    mix.push(more)
                write(tracker.push(np.stack(blocks) * np.float32(factor), mix.pop(len(blocks[0])).numpy()))
            write(tracker.finish())
        finally:
            for handle in sources + targets:
                handle.close()
        finals = []
        for index in range(self.count):
            os.replace(self.scaled_path(index), self.final_path(index))
            self.partial_path(index).unlink()
            finals.append(self.final_path(index))
        return finals

    @property
    def count(self) -> int:
        return len(self.handles)

    def close(self) -> None:
        for handle in self.handles:
            if not handle.closed:
                handle.close()

    def discard(self) -> None:
        """Remove every file written so far (after an error)."""
        self.close()
        for index in range(self.count):
            for path in (self.partial_path(index), self.scaled_path(index)):
                if path.exists():
                    path.unlink()


def _write_silence(out: _OutputSet, num_spks: int, frames: int, block_frames: int) -> List[Path]:
    for start in range(0, frames, block_frames):
        out.write(torch.zeros(num_spks, min(block_frames, frames - start)))
    return out.finalise(0.0, block_frames)


def _progress_bar(enabled: bool, seconds: float, name: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=round(seconds, 1), desc=name, unit='s', leave=False,
                bar_format='{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]')


def separate_file(engine_or_pipeline: Any, in_path: PathLike, out_dir: PathLike, name: Optional[str] = None,
                  subtype: str = 'PCM_16', progress: bool = False, gate_inactive: Optional[bool] = None,
                  activity: Optional[ActivitySettings] = None) -> FileResult:
    """Separate one file into ``out_dir/<name>_s1.wav`` ... at the file's sample rate.

    Each output's activity is tracked on the final (level-matched) outputs against the
    input, in the same streaming pass that writes them (`activity.ActivityTracker`); the
    result holds it, and its warnings (copies, a single talker) are logged.

    Args:
        engine_or_pipeline: a `SeparationEngine` or the registered pipeline; its
            chunk settings apply (None: the whole file at once).
        in_path: any file libsndfile reads; channels are averaged.
        out_dir: output folder (created).
        name: output base name; the input's stem when None.
        subtype: output sample format, 'PCM_16', 'PCM_24' or 'FLOAT'.
        progress: show a progress bar over the audio.
        gate_inactive: set each output to silence (with 10 ms fades) where it is inactive; None: as
            the pipeline given was built (`gate_inactive=`), else False.
        activity: the activity rule's constants; None: the pipeline's, else the defaults.

    Returns:
        What was written and noticed.

    Raises:
        AudioError: the file is missing, unreadable, empty or holds NaN / Inf
            samples; nothing is written then.
        ValueError: the input is too short for the model.
    """
    if subtype not in OUTPUT_SUBTYPES:
        raise ValueError(f'subtype must be one of {OUTPUT_SUBTYPES}, got {subtype!r}')
    engine = engine_of(engine_or_pipeline)
    gate_inactive, activity = _activity_options(engine_or_pipeline, gate_inactive, activity)
    in_path = Path(in_path)
    name = name or in_path.stem
    started = time.perf_counter()
    scan = scan_audio(in_path)
    result = FileResult(name=name, input=in_path, outputs=[], sample_rate=scan.sample_rate, seconds=scan.seconds,
                        elapsed=0.0, clipped=scan.clipped, silent=scan.silent)
    block_frames = int(READ_BLOCK_SECONDS * scan.sample_rate)
    out = _OutputSet(Path(out_dir), name, scan.sample_rate, subtype)
    try:
        if scan.silent:
            result.warnings.append('silent input: the outputs are silent')
            logger.warning('%s: the input is silent (peak %.1e); writing silent outputs', in_path, scan.peak)
            result.outputs = _write_silence(out, engine.num_spks, scan.frames, block_frames)
            result.gain = 0.0
            result.activity = ActivityReport.silent(engine.num_spks, scan.sample_rate, scan.frames, activity)
            result.activity.gated = gate_inactive
        else:
            if scan.clipped:
                share = scan.clipped / (scan.frames * scan.channels)
                result.warnings.append(f'clipping: {scan.clipped} samples at |x| >= {CLIP_LEVEL}')
                logger.warning('%s: %d sample(s) (%.3f%%) at or above %.3f full scale: the input looks clipped; '
                               'separating it anyway', in_path, scan.clipped, 100 * share, CLIP_LEVEL)
            bar = _progress_bar(progress, scan.seconds, name)
            level = MixtureLevel(engine.sample_rate, activity)
            try:
                factor = _separate_stream(engine, in_path, scan, out, block_frames, bar, level)
            finally:
                if bar is not None:
                    bar.close()
            result.gain = factor
            tracker = ActivityTracker(out.count, scan.sample_rate, level.finish(), gate=gate_inactive,
                                      settings=activity)
            result.outputs = out.finalise_tracked(factor, block_frames, _mono_blocks(in_path, block_frames), tracker)
            result.activity = tracker.report()
            for warning in result.activity.warnings:
                result.warnings.append(warning)
                logger.warning('%s: %s', in_path, warning)
    except BaseException:
        out.discard()
        raise
    result.elapsed = time.perf_counter() - started
    logger.info('%s: %.1f s separated into %d file(s) in %.1f s (RTF %.3f)', in_path, result.seconds,
                len(result.outputs), result.elapsed, result.rtf)
    return result


def _activity_options(engine_or_pipeline: Any, gate_inactive: Optional[bool],
                      activity: Optional[ActivitySettings]) -> Tuple[bool, ActivitySettings]:
    """The gate and the activity constants: as given, else as the pipeline was built, else the defaults."""
    if gate_inactive is None:
        gate_inactive = bool(getattr(engine_or_pipeline, 'gate_inactive', False))
    if activity is None:
        activity = getattr(engine_or_pipeline, 'activity_settings', None) or DEFAULT_SETTINGS
    if not isinstance(activity, ActivitySettings):
        raise TypeError(f'activity must be an ActivitySettings, got {type(activity).__name__}')
    return gate_inactive, activity


def _separate_stream(engine: SeparationEngine, path: Path, scan: AudioScan, out: _OutputSet, block_frames: int,
                     bar: Any, level: Optional[MixtureLevel] = None) -> float:
    """Separate `path` into `out`'s temporary files; returns the level factor to apply.

    `level`, when given, receives the mixture at the model rate (its speech level, for the activity rule).
    """
    model_rate = engine.sample_rate
    mixture = _resampled(_mono_blocks(path, block_frames), StreamResampler(scan.sample_rate, model_rate))
    pending = _Fifo()
    if engine.plan is None:
        whole = torch.cat(list(mixture))
        pending.push(whole)
        separated: Iterable[torch.Tensor] = [engine.separate(whole)]
    else:
        chunks = overlapping_chunks(mixture, engine.plan.chunk, engine.plan.hop, pending.push)
        separated = engine.separate_stream(chunks)
    back = StreamResampler(model_rate, scan.sample_rate)
    dot = energy = 0.0
    top = 0.0

    def emit(block: torch.Tensor) -> None:
        nonlocal top
        block = block[..., :max(scan.frames - out.written, 0)]  # the round trip may add a sample
        if block.shape[-1]:
            top = max(top, float(block.abs().max()))
            out.write(block)

    done = 0
    for estimates in separated:
        if not torch.isfinite(estimates).all():
            raise AudioError(path, f'the model produced non-finite (NaN/Inf) output in the {done / model_rate:.2f}-'
                                   f'{(done + estimates.shape[-1]) / model_rate:.2f} s stretch; nothing was written '
                                   '(check the model weights, or try --precision fp32)')
        done += estimates.shape[-1]
        mix = pending.pop(estimates.shape[-1])
        if level is not None:
            level.push(mix)
        total = estimates.sum(0).double()
        dot += float((total * mix.double()).sum())
        energy += float(total.pow(2).sum())
        emit(back.push(estimates))
        if bar is not None:
            bar.update(estimates.shape[-1] / model_rate)
    tail = back.finish()
    if tail is not None:
        emit(tail)
    if out.written < scan.frames:  # cannot happen with a length-preserving model; keep the length anyway
        emit(torch.zeros(out.count, scan.frames - out.written))
    return level_gain(dot, energy, top, OUTPUT_PEAK)


# ---------------------------------------------------------------------------
# many files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One mixture to separate.

    Attributes:
        name: output base name.
        mix: mixture file.
        out_dir: where its outputs go.
        references: reference sources in speaker order, when known.
        origin: where it was listed, for messages.
    """

    name: str
    mix: Path
    out_dir: Path
    references: Optional[Tuple[Path, ...]] = None
    origin: str = ''


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES


def _mixture_only_list(path: Path) -> Optional[List[Path]]:
    """Mixture paths of a list without sources (CSV with only mix_wav, scp with one path per line)."""
    base = path.parent
    try:
        text = path.read_text(encoding='utf-8-sig')
    except UnicodeDecodeError as err:
        raise ManifestError(f'{path}: not a text list (byte {err.start} is not UTF-8); expected a CSV or scp '
                            'list of audio paths, or an audio file with a known suffix') from None
    if path.suffix.lower() == '.csv':
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return None
        header = [h.strip().split(':')[0] for h in rows[0]]
        if MIX_COLUMN not in header or 's1_wav' in header:
            return None
        at = header.index(MIX_COLUMN)
        return [base / row[at].strip() for row in rows[1:] if len(row) > at and row[at].strip()]
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.strip().startswith('#')]
    if lines and all(len(fields) == 1 for fields in lines):
        return [Path(fields[0]) if Path(fields[0]).is_absolute() else base / fields[0] for fields in lines]
    return None


def collect_jobs(inputs: Sequence[PathLike], out_dir: PathLike, split: Optional[str] = None,
                 sample_rate: Optional[int] = None, num_spks: Optional[int] = None) -> List[Job]:
    """Expand inputs into jobs.

    Args:
        inputs: audio files; folders (every audio file below them; the output
            mirrors the subfolders), or LibriMix trees when `split` is given;
            CSV / scp lists, with references (``mix s1 s2``) or mixtures only.
        out_dir: output root.
        split: LibriMix split for folder inputs ('test', 'validation', ...).
        sample_rate: picks a LibriMix tree's ``wav8k`` or ``wav16k``.
        num_spks: expected sources per manifest line.

    Raises:
        ManifestError: a list or LibriMix tree that cannot be parsed.
    """
    out_dir = Path(out_dir)
    jobs: List[Job] = []
    for item in map(Path, inputs):
        if item.is_dir() and split is not None:
            for example in load_manifest(item, split=split, num_spks=num_spks, sample_rate=sample_rate):
                jobs.append(Job(example.id, example.mix, out_dir, example.sources, example.origin))
        elif item.is_dir():
            files = sorted(p for p in item.rglob('*') if p.is_file() and _is_audio(p))
            if not files:
                logger.warning('%s: no audio files (%s) in this folder', item, ', '.join(AUDIO_SUFFIXES))
            for path in files:
                relative = path.relative_to(item)
                jobs.append(Job(path.stem, path, out_dir / relative.parent, None, str(path)))
        elif item.is_file() and item.suffix.lower() in LIST_SUFFIXES:
            mixtures = _mixture_only_list(item)
            if mixtures is not None:
                jobs.extend(Job(path.stem, path, out_dir, None, f'{item}') for path in mixtures)
            else:
                for example in load_manifest(item, num_spks=num_spks, sample_rate=sample_rate):
                    jobs.append(Job(example.id, example.mix, out_dir, example.sources, example.origin))
        else:  # an audio file, or a missing path that will be reported as such
            jobs.append(Job(item.stem, item, out_dir, None, str(item)))
    return _unique_names(jobs)


def _unique_names(jobs: List[Job]) -> List[Job]:
    seen: Dict[Tuple[Path, str], int] = {}
    unique = []
    for job in jobs:
        name = job.name.replace('/', '_').replace(os.sep, '_') or 'audio'
        key = (job.out_dir, name)
        count = seen.get(key, 0)
        seen[key] = count + 1
        if count:
            name = f'{name}-{count}'
            logger.warning('%s: another input has the output name %r; writing %s_s1.wav ...', job.mix, job.name, name)
        unique.append(Job(name, job.mix, job.out_dir, job.references, job.origin))
    return unique


def score_outputs(result: FileResult, references: Sequence[Path], perceptual: Sequence[str] = ()) -> Dict[str, float]:
    """SI-SNR, SI-SNRi, SDR, SDRi (dB) of written outputs against reference files, and the `perceptual`
    metrics (result keys of `perceptual.resolve_metrics`), at the file's rate."""
    from .metrics import separation_scores

    if len(references) != len(result.outputs):
        raise ValueError(f'{result.input}: {len(references)} reference source(s) listed but the model separates '
                         f'{len(result.outputs)} speakers')
    rate = result.sample_rate
    mix = read_audio(result.input)
    refs = [read_audio(path, sample_rate=rate) for path in references]
    ests = [read_audio(path) for path in result.outputs]
    length = min([mix.shape[-1]] + [r.shape[-1] for r in refs])
    if any(r.shape[-1] != mix.shape[-1] for r in refs):
        logger.warning('%s: references and mixture differ in length; scoring the first %d samples',
                       result.input, length)
    return separation_scores(torch.stack([e[:length] for e in ests]), torch.stack([r[:length] for r in refs]),
                             mix[:length], perceptual=perceptual, sample_rate=rate, name=str(result.input))


@dataclass
class BatchSummary:
    """What `separate_many` did.

    Attributes:
        total, ok, failed: file counts.
        means: mean metrics over the scored files (empty without references); a perceptual metric's
            mean leaves out the files it could not score.
        scored: files with metrics.
        failures: (input, message) per failed file.
        report_csv, summary_json: the written reports.
        unscored: per perceptual metric, the scored files it could not score (NaN in report.csv).
    """

    total: int
    ok: int
    failed: int
    means: Dict[str, float]
    scored: int
    failures: List[Tuple[str, str]]
    report_csv: Optional[Path] = None
    summary_json: Optional[Path] = None
    unscored: Dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out['failures'] = [{'input': path, 'error': message} for path, message in self.failures]
        out['report_csv'] = str(self.report_csv) if self.report_csv else None
        out['summary_json'] = str(self.summary_json) if self.summary_json else None
        out['means'] = {k: None if v != v else v for k, v in self.means.items()}  # NaN (nothing scored): null
        return out


REPORT_FIELDS = ('id', 'mix', 'status', 'seconds', 'rtf') + METRIC_KEYS + ('outputs', 'message')


def report_fields(num_spks: int) -> Tuple[str, ...]:
    """`REPORT_FIELDS` with the activity columns (``s1_active`` ..., ``copy_of``, ``single_talker``) before
    ``outputs``."""
    at = REPORT_FIELDS.index('outputs')
    return REPORT_FIELDS[:at] + tuple(activity_columns(num_spks)) + REPORT_FIELDS[at:]


def separate_many(engine_or_pipeline: Any, inputs: Sequence[PathLike], out_dir: PathLike,
                  split: Optional[str] = None, subtype: str = 'PCM_16', progress: bool = True,
                  score: bool = True, gate_inactive: Optional[bool] = None,
                  activity: Optional[ActivitySettings] = None, metrics: Sequence[str] = ()) -> BatchSummary:
    """Separate many files; score them when references are listed; never stop at a bad file.

    Args:
        engine_or_pipeline: a `SeparationEngine` or the registered pipeline.
        inputs: files, folders, CSV / scp lists, LibriMix trees (with `split`); see `collect_jobs`.
        out_dir: outputs, ``report.csv`` and ``summary.json`` go here.
        split: LibriMix split for folder inputs.
        subtype: output sample format.
        progress: show progress bars (files; audio of long files).
        score: compute metrics where references exist.
        gate_inactive: set each output to silence where it is inactive (see `separate_file`).
        activity: the activity rule's constants (see `separate_file`).
        metrics: perceptual metrics to add ('pesq', 'pesq-nb', 'pesq-wb', 'stoi', 'estoi'; see
            `perceptual`), PESQ's band chosen by the model's rate.

    Returns:
        Counts, mean metrics and failures.

    Raises:
        ManifestError: a list or LibriMix tree cannot be parsed (nothing is separated).
        ValueError, ImportError: a metric that is unknown, impossible at the model's rate, or whose package
            (the ``metrics`` extra) is missing (nothing is separated).
    """
    engine = engine_of(engine_or_pipeline)
    perceptual: Tuple[str, ...] = ()
    if metrics and score:
        from .perceptual import resolve_metrics

        perceptual = resolve_metrics(metrics, engine.sample_rate)
    out_dir = Path(out_dir)
    jobs = collect_jobs(inputs, out_dir, split=split, sample_rate=engine.sample_rate,
                        num_spks=engine.num_spks)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    rows: List[Dict[str, Any]] = []
    failures: List[Tuple[str, str]] = []
    bar = tqdm(jobs, desc='separate', unit='file', disable=not progress or not jobs)
    for job in bar:
        row: Dict[str, Any] = {'id': job.name, 'mix': str(job.mix)}
        try:
            long_file = progress and _duration(job.mix) > LONG_FILE_SECONDS
            result = separate_file(engine_or_pipeline, job.mix, job.out_dir, name=job.name, subtype=subtype,
                                   progress=long_file, gate_inactive=gate_inactive, activity=activity)
            row.update(status='ok', seconds=round(result.seconds, 3), rtf=round(result.rtf, 4),
                       outputs=' '.join(str(p) for p in result.outputs), message='; '.join(result.warnings))
            if result.activity is not None:
                row.update(activity_row(result.activity))
            if score and job.references is not None:
                row.update({k: round(v, 4) for k, v in score_outputs(result, job.references, perceptual).items()})
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the batch
            message = _failure_message(job, err)
            logger.error('failed: %s', message)
            logger.debug('traceback of the failure on %s', job.mix, exc_info=True)
            row.update(status='failed', message=message)
            failures.append((str(job.mix), message))
        rows.append(row)
        scored = [r for r in rows if 'si-snri' in r]
        if scored:
            bar.set_postfix(failed=len(failures), si_snri=f'{np.mean([r["si-snri"] for r in scored]):.2f}')
        elif failures:
            bar.set_postfix(failed=len(failures))
    return _write_reports(rows, failures, out_dir, report_fields(engine.num_spks), perceptual)


def _failure_message(job: Job, err: Exception) -> str:
    """'<mix>: <reason>' (plus where the list named it), whatever raised."""
    text = str(err) if isinstance(err, (AudioError, ValueError, OSError)) else f'{type(err).__name__}: {err}'
    if not text.startswith(str(job.mix)):
        text = f'{job.mix}: {text}'
    if job.origin and job.origin != str(job.mix):
        text += f' (listed at {job.origin})'
    return text


def _duration(path: Path) -> float:
    try:
        frames, rate, _ = audio_info(path)
    except AudioError:
        return 0.0
    return frames / rate


def _write_reports(rows: List[Dict[str, Any]], failures: List[Tuple[str, str]], out_dir: Path,
                   fields: Sequence[str] = REPORT_FIELDS, perceptual: Sequence[str] = ()) -> BatchSummary:
    from .perceptual import count_unscored, nan_mean, unscored_note

    scored = [r for r in rows if 'si-snri' in r]
    means = {k: float(np.mean([r[k] for r in scored])) for k in METRIC_KEYS} if scored else {}
    if scored:
        means.update({k: nan_mean(r[k] for r in scored) for k in perceptual})
    unscored = count_unscored(scored, perceptual) if scored else {}
    fields = tuple(fields)
    after_metrics = fields.index(METRIC_KEYS[-1]) + 1  # perceptual columns follow the SI-SNR ones
    fields = fields[:after_metrics] + tuple(perceptual) + fields[after_metrics:]
    ok = sum(r['status'] == 'ok' for r in rows)
    report = out_dir / 'report.csv'
    with open(report, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
        if scored:
            writer.writerow({'id': 'MEAN', 'status': f'{len(scored)} scored',
                             **{k: round(v, 4) for k, v in means.items()}})
    summary = BatchSummary(total=len(rows), ok=ok, failed=len(failures), means=means, scored=len(scored),
                           failures=failures, report_csv=report, summary_json=out_dir / 'summary.json',
                           unscored=unscored)
    summary.summary_json.write_text(json.dumps(summary.to_dict(), indent=2) + '\n')
    if means:
        logger.info('%d/%d file(s) separated; mean over %d scored: %s', ok, len(rows), len(scored),
                    ', '.join(f'{k} {v:.2f}{" dB" if k in METRIC_KEYS else ""}' for k, v in means.items()))
        note = unscored_note(unscored, len(scored))
        if note:
            logger.warning('%s', note)
    else:
        logger.info('%d/%d file(s) separated', ok, len(rows))
    if failures:
        logger.warning('%d file(s) failed; see %s', len(failures), report)
    return summary
