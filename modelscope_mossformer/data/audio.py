"""Reading audio files into float32 mono tensors at the model's sample rate.

Rules:
* Any format libsndfile reads (wav, flac, ogg, ...), read with soundfile.
* Multi-channel audio becomes mono by averaging the channels (the standard
  downmix; it keeps a centred talker at full level).  `channel=i` picks one
  channel instead.
* A file at another rate is resampled with the SoX resampler (python-soxr,
  quality 'HQ': 20-bit precision, flat to 0.91 of the lower Nyquist rate,
  milliseconds for a minute of audio for any pair of rates, including rates
  without a common factor such as 44101 -> 8000 Hz); with
  `on_rate_mismatch='error'` it raises instead.  `resample` and
  `batch.StreamResampler` (block by block, for long files) give the same
  samples.
* Problems raise `AudioError` naming the file and what was wrong: missing,
  unreadable, empty, or containing NaN / Inf samples.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]
RATE_MISMATCH_POLICIES = ('resample', 'error')


# Float audio lives in [-1, 1] (integer PCM is read scaled to it); a sample 60 dB above full scale is not
# audio but a broken file (a value of 3e38, a conversion that multiplied by 1e30), and it would turn every
# activation and gradient of a training step into Inf/NaN.
MAX_ABS_SAMPLE = 1000.0


def sample_problem(samples: np.ndarray, start: int = 0) -> Optional[str]:
    """Why `samples` ([T] or [T, channels]) cannot be used as audio, or None: a non-finite sample or one
    whose magnitude exceeds `MAX_ABS_SAMPLE`; positions count from `start`."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(samples), -1).all(axis=1))
        return f'{int((~finite).sum())} non-finite (NaN/Inf) sample(s), first at sample {int(bad[0]) + start}'
    magnitude = np.abs(samples).reshape(len(samples), -1).max(axis=1) if samples.size else samples
    if samples.size and magnitude.max() > MAX_ABS_SAMPLE:
        first = int(np.flatnonzero(magnitude > MAX_ABS_SAMPLE)[0])
        return (f'sample {first + start} has magnitude {float(magnitude[first]):.3g}, more than {MAX_ABS_SAMPLE:g} '
                f'(60 dB above full scale): a broken or mis-scaled file, not audio in [-1, 1]')
    return None


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f'{path}: {reason}')
        self.path = str(path)
        self.reason = reason


# soxr's quality recipe.  'HQ' (its default): 20-bit precision, measured on a 1 kHz tone in float64 at
# 119-137 dB SNR for 16/22.05/44.1/44.101/48 kHz -> 8/16 kHz, passband flat (-0.02 dB) to 3.7 kHz at 8 kHz;
# 'VHQ' (28-bit) took twice the time for error below float32 rounding.  See bench/bench_resample.py.
RESAMPLE_QUALITY = 'HQ'
_SOXR_DTYPES = (torch.float32, torch.float64)
_MAX_CHANNELS = 256  # channels per soxr call (older soxr releases take no more)


def _check_rates(orig_rate: Any, new_rate: Any) -> Tuple[int, int]:
    rates = []
    for name, rate in (('orig_rate', orig_rate), ('new_rate', new_rate)):
        try:
            value = int(rate)
        except (TypeError, ValueError):
            raise ValueError(f'{name} must be a whole number of Hz, got {rate!r}') from None
        if value != rate or value <= 0:
            raise ValueError(f'sample rates must be positive whole numbers of Hz, got {orig_rate} -> {new_rate}')
        rates.append(value)
    return rates[0], rates[1]


def resampled_length(num_samples: int, orig_rate: int, new_rate: int) -> int:
    """Samples that `resample` returns for `num_samples` inputs: ceil(n * new / orig)."""
    return -(-int(num_samples) * int(new_rate) // int(orig_rate))


def _flush_padding(orig_rate: int, new_rate: int) -> int:
    """Zeros appended before flushing so that soxr (which returns round(n * new / orig) samples) yields at
    least `resampled_length` samples: with k >= orig / new more inputs it returns at least one more."""
    return -(-orig_rate // new_rate)


def _as_frames(wave: torch.Tensor) -> Tuple[np.ndarray, torch.dtype]:
    """[..., T] tensor -> ([channels, T] numpy array in a dtype soxr takes, the tensor's dtype)."""
    dtype = wave.dtype
    work = wave.detach()
    if work.dtype not in _SOXR_DTYPES:
        if not work.is_floating_point():
            raise TypeError(f'resampling needs floating-point audio, got {work.dtype}')
        work = work.float()
    channels = int(np.prod(wave.shape[:-1], dtype=np.int64))
    return work.cpu().reshape(channels, wave.shape[-1]).numpy(), dtype


def _to_tensor(frames: np.ndarray, like: torch.Tensor, dtype: torch.dtype, length: int) -> torch.Tensor:
    """[T', channels] soxr output -> [..., length] tensor on `like`'s device, in `dtype`."""
    out = torch.from_numpy(np.ascontiguousarray(frames[:length].T))
    return out.reshape(like.shape[:-1] + (length,)).to(device=like.device, dtype=dtype)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling of [..., T] from `orig_rate` to `new_rate` Hz.

    Returns ceil(T * new_rate / orig_rate) samples (the signal taken as zero beyond its ends), in the
    input's dtype and on its device; leading dimensions are channels, resampled independently.
    """
    if orig_rate == new_rate:
        return wave
    orig_rate, new_rate = _check_rates(orig_rate, new_rate)
    import soxr

    length = resampled_length(wave.shape[-1], orig_rate, new_rate)
    frames, dtype = _as_frames(wave)
    channels = frames.shape[0]
    if channels == 0 or frames.shape[1] == 0:
        return wave.new_zeros(wave.shape[:-1] + (length,))
    # One [channels, T + pad] buffer passed as its [T + pad, channels] transpose: soxr's
    # channel-split memory layout, no further copy.
    padded = np.zeros((channels, frames.shape[1] + _flush_padding(orig_rate, new_rate)), frames.dtype)
    padded[:, :frames.shape[1]] = frames
    groups = [soxr.resample(padded[i:i + _MAX_CHANNELS].T, orig_rate, new_rate, quality=RESAMPLE_QUALITY)
              for i in range(0, channels, _MAX_CHANNELS)]
    out = groups[0] if len(groups) == 1 else np.concatenate(groups, axis=1)
    return _to_tensor(out, wave, dtype, length)


def to_mono(samples: np.ndarray, channel: Optional[int] = None) -> np.ndarray:
    """[T] or [T, channels] -> [T]: the channel mean, or one `channel`."""
    if samples.ndim == 1:
        return samples
    if channel is not None:
        if not -samples.shape[1] <= channel < samples.shape[1]:
            raise ValueError(f'channel {channel} requested from audio with {samples.shape[1]} channels')
        return samples[:, channel]
    return samples.mean(axis=1)


def audio_info(path: PathLike) -> Tuple[int, int, int]:
    """(frames, sample rate, channels) of a file, without reading its samples."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioError(path, 'file not found')
    try:
        info = soundfile.info(str(path))
    except Exception as err:  # noqa: BLE001 - libsndfile's errors vary by format
        raise AudioError(path, f'unreadable audio ({err})') from err
    return info.frames, info.samplerate, info.channels


def read_audio(path: PathLike, sample_rate: Optional[int] = None, on_rate_mismatch: str = 'resample',
               channel: Optional[int] = None, start: int = 0, frames: int = -1) -> torch.Tensor:
    """Read an audio file as a float32 1-D tensor.

    Args:
        path: any file libsndfile reads.
        sample_rate: target rate; the file's own rate when None.
        on_rate_mismatch: 'resample' or 'error' when the file's rate differs.
        channel: pick this channel instead of averaging all of them.
        start, frames: read only a segment (in the file's own samples).

    Raises:
        AudioError: missing, unreadable or empty file, non-finite samples, or a
            rate mismatch with `on_rate_mismatch='error'`.
    """
    import soundfile

    if on_rate_mismatch not in RATE_MISMATCH_POLICIES:
        raise ValueError(f'on_rate_mismatch must be one of {RATE_MISMATCH_POLICIES}, got {on_rate_mismatch!r}')
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, 'file not found' if not path.exists() else 'not a regular file')
    try:
        samples, file_rate = soundfile.read(str(path), dtype='float32', always_2d=False, start=start,
                                            frames=frames)
    except Exception as err:  # noqa: BLE001 - libsndfile's errors vary by format
        raise AudioError(path, f'unreadable audio ({err})') from err
    samples = to_mono(np.asarray(samples, dtype=np.float32), channel)
    if samples.size == 0:
        raise AudioError(path, 'empty audio (0 samples)')
    problem = sample_problem(samples, start)
    if problem:
        raise AudioError(path, problem)
    wave = torch.from_numpy(np.ascontiguousarray(samples))
    if sample_rate is not None and file_rate != sample_rate:
        if on_rate_mismatch == 'error':
            raise AudioError(path, f'sample rate {file_rate} Hz, expected {sample_rate} Hz')
        wave = resample(wave, file_rate, sample_rate)
    return wave


def write_audio(path: PathLike, wave: Union[torch.Tensor, np.ndarray], sample_rate: int,
                subtype: Optional[str] = None) -> Path:
    """Write [T] (or [T, channels]) audio; creates parent folders."""
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    soundfile.write(str(path), data, sample_rate, subtype=subtype)
    return path
