"""Resampling speed and accuracy: this package's soxr path against the old torchaudio sinc path, side by side.

    python bench/bench_resample.py                       # 60 s of audio, every rate -> 8 and 16 kHz
    python bench/bench_resample.py --seconds 10 --slow-excerpt 1

For each source rate (8, 16, 22.05, 44.1, 44.101, 48 kHz) and model rate (8, 16 kHz), one table row:

* time to resample `--seconds` of audio (best of `--repeat`): `modelscope_mossformer.data.audio.resample`
  (python-soxr, quality HQ), soxr at VHQ, and the sinc resampler this package used before
  (`torchaudio.transforms.Resample`, Kaiser window, lowpass width 64, rolloff 0.9476, beta 14.77: the
  "kaiser_best" settings), timed after its kernel is built (it was cached per rate pair).  When the rates
  share only a small factor the old kernel is huge (gcd(44101, 8000) = 1: 8000 x 44847 taps) and one call
  takes minutes; such pairs (reduced input rate above `--slow-limit`) are skipped, or, with
  `--slow-excerpt S`, timed on S seconds and scaled linearly to the full length (marked `~`).  Measured here:
  44101 -> 8000 Hz ~44 s per 60 s; 44101 -> 16000 Hz was killed for memory even on 1 s (23 GB resident).
* accuracy against the exact reference: a 1 kHz tone (amplitude 0.5) resampled, compared with the same tone
  computed at the new rate, SNR in dB over the signal without its first and last 5 %.  float64 input, so
  the figure is the resampler's own error (float32 audio adds its rounding, ~-150 dB).
* `stream = whole`: the largest difference between `batch.StreamResampler` fed 2 s file blocks and
  whole-signal `resample` (the package's streaming path for long files).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

from modelscope_mossformer.batch import StreamResampler
from modelscope_mossformer.data.audio import RESAMPLE_QUALITY, resample

SOURCE_RATES = (8000, 16000, 22050, 44100, 44101, 48000)
MODEL_RATES = (8000, 16000)
TONE_HZ = 1000.0


def old_torchaudio_resampler(orig: int, new: int) -> torch.nn.Module:
    """The resampler this package used before soxr (data/audio.py, with the same settings)."""
    import torchaudio

    return torchaudio.transforms.Resample(orig, new, resampling_method='sinc_interp_kaiser', lowpass_filter_width=64,
                                          rolloff=0.9475937167399596, beta=14.769656459379492)


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def tone(rate: int, samples: int) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * TONE_HZ * np.arange(samples) / rate)


def tone_snr_db(output: np.ndarray, new: int) -> float:
    exact = tone(new, output.shape[-1])
    edge = output.shape[-1] // 20
    error = output[edge:-edge] - exact[edge:-edge]
    return 10 * math.log10(float((exact[edge:-edge] ** 2).sum()) / max(float((error ** 2).sum()), 1e-300))


def fmt_time(seconds: float | None, approx: bool = False) -> str:
    if seconds is None:
        return 'skipped'
    text = f'{seconds * 1000:.0f} ms' if seconds < 10 else f'{seconds:.0f} s'
    if seconds < 0.1:
        text = f'{seconds * 1000:.1f} ms'
    return ('~' if approx else '') + text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seconds', type=float, default=60.0, help='audio length to time (default 60)')
    parser.add_argument('--repeat', type=int, default=3, help='best of this many runs (default 3)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads for the torchaudio path')
    parser.add_argument('--slow-limit', type=int, default=2000,
                        help='skip the old path when the reduced input rate orig/gcd exceeds this (default 2000)')
    parser.add_argument('--slow-excerpt', type=float, default=0.0,
                        help='time skipped pairs on this many seconds instead and scale (default 0: skip)')
    parser.add_argument('--no-torchaudio', action='store_true', help='leave the old path out')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import soxr

    cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
               'unknown CPU') if os.path.exists('/proc/cpuinfo') else 'unknown CPU'
    print(f'# {args.seconds:g} s of audio; {cpu}; {args.threads} torch thread(s); soxr {soxr.__version__}; '
          f'torch {torch.__version__}; package quality {RESAMPLE_QUALITY}')
    print('| from | to | soxr HQ (this package) | soxr VHQ | old torchaudio sinc | old / HQ '
          '| SNR HQ | SNR VHQ | SNR old | stream = whole |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    rng = np.random.default_rng(0)
    for orig in SOURCE_RATES:
        for new in MODEL_RATES:
            if orig == new:
                continue
            samples = int(args.seconds * orig)
            audio = torch.from_numpy((0.1 * rng.standard_normal(samples)).astype(np.float32))
            t_hq = best_time(lambda: resample(audio, orig, new), args.repeat)
            t_vhq = best_time(lambda: soxr.resample(audio.numpy(), orig, new, quality='VHQ'), args.repeat)
            ref_in = tone(orig, int(5 * orig))
            snr_hq = tone_snr_db(resample(torch.from_numpy(ref_in), orig, new).numpy(), new)
            snr_vhq = tone_snr_db(soxr.resample(ref_in, orig, new, quality='VHQ'), new)
            # streaming: 2 s blocks, as batch.separate_file reads long files
            streamer, block, pieces = StreamResampler(orig, new), 2 * orig, []
            for start in range(0, samples, block):
                pieces.append(streamer.push(audio[start:start + block]))
            pieces.append(streamer.finish())
            stream_diff = float((torch.cat(pieces) - resample(audio, orig, new)).abs().max())

            t_old, approx, snr_old = None, False, None
            reduced = orig // math.gcd(orig, new)
            if not args.no_torchaudio and (reduced <= args.slow_limit or args.slow_excerpt > 0):
                old = old_torchaudio_resampler(orig, new)
                if reduced <= args.slow_limit:
                    with torch.no_grad():
                        t_old = best_time(lambda: old(audio), args.repeat)
                        snr_old = tone_snr_db(old.double()(torch.from_numpy(ref_in)).numpy(), new)
                else:
                    excerpt = audio[:int(args.slow_excerpt * orig)]
                    with torch.no_grad():
                        t_old = best_time(lambda: old(excerpt), 1) * samples / excerpt.shape[-1]
                    approx = True
                del old
            ratio = f'{t_old / t_hq:.0f}x' if t_old is not None else ''
            print(f'| {orig} | {new} | {fmt_time(t_hq)} | {fmt_time(t_vhq)} | {fmt_time(t_old, approx)} | {ratio} '
                  f'| {snr_hq:.0f} dB | {snr_vhq:.0f} dB | {"" if snr_old is None else f"{snr_old:.0f} dB"} '
                  f'| {stream_diff:.1e} |', flush=True)
    print(f'# old path skipped where orig/gcd > {args.slow_limit} (its kernel is new/gcd x ~orig/gcd taps); '
          'SNR: 1 kHz tone against the exact tone at the new rate, float64')
    return 0


if __name__ == '__main__':
    sys.exit(main())
