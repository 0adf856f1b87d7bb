"""Reading audio files into float32 mono tensors at the model's sample rate.

Rules:
* Any format libsndfile reads (wav, flac, ogg, ...), read with soundfile.
* Multi-channel audio becomes mono by averaging the channels (the standard
  downmix; it keeps a centred talker at full level).  `channel=i` picks one
  channel instead.
* A file at another rate is resampled with torchaudio's band-limited windowed
  sinc resampler (Kaiser window, the "kaiser_best" settings); with
  `on_rate_mismatch='error'` it raises instead.
* Problems raise `AudioError` naming the file and what was wrong: missing,
  unreadable, empty, or containing NaN / Inf samples.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]
RATE_MISMATCH_POLICIES = ('resample', 'error')


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f'{path}: {reason}')
        self.path = str(path)
        self.reason = reason


@functools.lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int) -> torch.nn.Module:
    import torchaudio

    return torchaudio.transforms.Resample(orig_rate, new_rate, resampling_method='sinc_interp_kaiser',
                                          lowpass_filter_width=64, rolloff=0.9475937167399596,
                                          beta=14.769656459379492)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling of [..., T] from `orig_rate` to `new_rate` Hz."""
    if orig_rate == new_rate:
        return wave
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f'sample rates must be positive, got {orig_rate} -> {new_rate}')
    return _resampler(int(orig_rate), int(new_rate))(wave)


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
    finite = np.isfinite(samples)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise AudioError(path, f'{bad.size} non-finite (NaN/Inf) sample(s), first at sample {int(bad[0]) + start}')
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
