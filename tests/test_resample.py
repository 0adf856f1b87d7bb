"""Resampling (python-soxr): whole-signal and streamed, any pair of rates."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelscope_mossformer.batch import StreamResampler
from modelscope_mossformer.data.audio import RESAMPLE_QUALITY, resample, resampled_length

# (orig, new): integer ratios, common ones, and pairs whose gcd is 1 (44101 Hz), up and down.
RATE_PAIRS = [(16000, 8000), (8000, 16000), (44100, 8000), (22050, 16000), (48000, 16000),
              (44101, 8000), (8000, 44101), (44101, 16000), (11025, 7999)]


def _tone(rate, samples, freq, dtype=np.float64):
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(samples) / rate)).astype(dtype)


def _snr_db(estimate, reference):
    return 10 * math.log10(float((reference ** 2).sum()) / float(((estimate - reference) ** 2).sum()))


def _streamed(signal, orig, new, sizes):
    streamer = StreamResampler(orig, new)
    pieces, start, i = [], 0, 0
    while start < signal.shape[-1]:
        size = sizes[i % len(sizes)]
        pieces.append(streamer.push(signal[..., start:start + size]))
        start, i = start + size, i + 1
    pieces.append(streamer.finish())
    return torch.cat(pieces, -1)


# Streamed vs whole.  The stream is soxr's own ResampleStream, which carries its filter state
# across blocks, and `finish` flushes with the same zero padding `resample` uses, so the arithmetic
# is the same: measured bit-identical (max |diff| 0.0) for every pair and block size below.  The
# tolerance (1e-6, ~-120 dB, the resampler's own 20-bit precision) only leaves room for a soxr build
# whose SIMD path rounds differently at block edges; a wrong context or phase would be off by ~1e-1.
@pytest.mark.parametrize('orig, new', RATE_PAIRS)
def test_streamed_output_equals_whole_signal_resampling(orig, new):
    signal = torch.randn(2, 2 * orig + 123, generator=torch.Generator().manual_seed(orig + new))
    whole = resample(signal, orig, new)
    assert whole.shape == (2, resampled_length(signal.shape[-1], orig, new))
    for sizes in ([997], [orig // 2 + 1], [5 * orig], [1, 2, 3, 500, 4096, 0, 7]):
        torch.testing.assert_close(_streamed(signal, orig, new, sizes), whole, atol=1e-6, rtol=0)


@settings(max_examples=25, deadline=None)
@given(pair=st.sampled_from(RATE_PAIRS), length=st.integers(1, 30000),
       sizes=st.lists(st.integers(0, 9000), min_size=1, max_size=6).filter(any))
def test_any_block_boundaries_give_the_whole_signal_result(pair, length, sizes):
    orig, new = pair
    signal = torch.randn(3, length, generator=torch.Generator().manual_seed(length))
    torch.testing.assert_close(_streamed(signal, orig, new, sizes), resample(signal, orig, new), atol=1e-6, rtol=0)


def test_a_tone_at_44101_hz_keeps_its_frequency_at_8000_hz():
    # 44101 and 8000 Hz share no factor (the old sinc resampler took 114 s for 5 s of this).
    orig, new, freq = 44101, 8000, 1000.0
    out = resample(torch.from_numpy(_tone(orig, 2 * orig, freq)), orig, new)
    assert out.dtype == torch.float64 and out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out.numpy() * np.hanning(out.shape[-1])))
    assert abs(np.argmax(spectrum) * new / out.shape[-1] - freq) <= 0.5  # 0.5 Hz bins over 2 s
    # Against the exact tone at the new rate, away from the edges (the signal starts and stops
    # abruptly there): 118 dB measured (soxr HQ: 20-bit precision; 16-bit audio itself is 96 dB).
    exact = torch.from_numpy(_tone(new, out.shape[-1], freq))
    assert _snr_db(out[400:-400], exact[400:-400]) > 110
    # Streamed in 2 s file blocks, as batch.separate_file reads a long file: the same.
    streamed = _streamed(torch.from_numpy(_tone(orig, 2 * orig, freq)), orig, new, [2 * 44101 // 3])
    assert _snr_db(streamed[400:-400], exact[400:-400]) > 110


@pytest.mark.parametrize('orig, new', RATE_PAIRS)
def test_float32_tones_stay_far_above_16_bit_quality(orig, new):
    out = resample(torch.from_numpy(_tone(orig, orig, 1000.0, np.float32)), orig, new)
    assert out.dtype == torch.float32
    exact = torch.from_numpy(_tone(new, out.shape[-1], 1000.0))
    edge = new // 20
    assert _snr_db(out[edge:-edge].double(), exact[edge:-edge]) > 100  # float32 input: 120-137 dB measured


@pytest.mark.parametrize('orig, new', RATE_PAIRS)
def test_near_the_band_edge_only_the_gain_rolls_off(orig, new):
    # At 0.85 of the lower Nyquist rate the output is the tone times a gain a little below 1 (soxr's
    # passband roll-off, <= 0.01 dB by design: -0.008 dB measured at 0.9) plus noise and distortion
    # 133 dB down (measured, HQ).  Compare against the least-squares fit of a tone at that frequency.
    freq = 0.85 * min(orig, new) / 2
    out = resample(torch.from_numpy(_tone(orig, orig, freq)), orig, new).numpy()
    edge = new // 20
    t = np.arange(edge, out.shape[-1] - edge) / new
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], 1)
    coef = np.linalg.lstsq(basis, out[edge:-edge], rcond=None)[0]
    fit = basis @ coef
    assert abs(20 * math.log10(np.hypot(*coef) / 0.5)) < 0.05
    assert _snr_db(out[edge:-edge], fit) > 110


def test_content_above_the_new_nyquist_rate_is_removed():
    rate = 44101
    out = resample(torch.from_numpy(_tone(rate, rate, 4300.0)), rate, 8000)  # 4.3 kHz > 4 kHz
    assert float(out[200:-200].abs().max()) < 1e-5  # stopband: > 100 dB down from the 0.5 input


@pytest.mark.parametrize('length', [1, 2, 5, 99, 100, 4409, 44101])
@pytest.mark.parametrize('orig, new', RATE_PAIRS)
def test_lengths_are_the_ceiling_and_a_round_trip_keeps_every_sample(orig, new, length):
    signal = torch.randn(length)
    there = resample(signal, orig, new)
    assert there.shape == (math.ceil(length * new / orig),)
    assert resample(there, new, orig).shape[-1] >= length  # callers crop the round trip to the input


def test_leading_dimensions_dtype_and_identity():
    signal = torch.randn(2, 3, 1000)
    out = resample(signal, 16000, 8000)
    assert out.shape == (2, 3, 500) and out.dtype == torch.float32
    torch.testing.assert_close(out[1, 2], resample(signal[1, 2], 16000, 8000))  # channels are independent
    assert resample(signal.to(torch.bfloat16), 16000, 8000).dtype == torch.bfloat16
    assert resample(signal, 8000, 8000) is signal
    assert resample(torch.zeros(2, 0), 16000, 8000).shape == (2, 0)


def test_quality_setting_is_high():
    assert RESAMPLE_QUALITY in ('HQ', 'VHQ')


@pytest.mark.parametrize('orig, new, match', [(0, 8000, 'positive'), (-8000, 16000, 'positive'),
                                               (44100.5, 8000, 'whole numbers'), ('fast', 8000, 'orig_rate')])
def test_bad_rates_are_refused(orig, new, match):
    with pytest.raises(ValueError, match=match):
        resample(torch.randn(100), orig, new)
    with pytest.raises(ValueError, match=match):
        StreamResampler(orig, new)


def test_integer_audio_is_refused():
    with pytest.raises(TypeError, match='floating-point'):
        resample(torch.zeros(100, dtype=torch.int16), 16000, 8000)


def test_stream_refuses_a_change_of_channels_and_finishes_once():
    streamer = StreamResampler(16000, 8000)
    assert streamer.finish() is None  # nothing pushed
    streamer.push(torch.randn(2, 100))
    with pytest.raises(ValueError, match='channels must not change'):
        streamer.push(torch.randn(3, 100))
    assert streamer.finish().shape == (2, 50)
    assert streamer.finish() is None


def test_the_benchmark_runs_and_reports_every_rate_pair():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(repo / 'bench' / 'bench_resample.py'), '--seconds', '0.5',
                             '--repeat', '1', '--slow-limit', '500'], capture_output=True, text=True, timeout=600,
                            cwd=repo)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split('|')[1:-1] for line in result.stdout.splitlines() if line.startswith('| ') and 'from' not in line]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(a, b) for a in (8000, 16000, 22050, 44100, 44101, 48000)
                                                      for b in (8000, 16000) if a != b]
    assert all(float(r[-1]) <= 1e-6 for r in rows)  # streamed = whole
    assert all(float(r[6].split()[0]) > 110 for r in rows)  # tone SNR, HQ
    skipped = {(int(r[0]), int(r[1])) for r in rows if r[4].strip() == 'skipped'}
    assert (44101, 8000) in skipped and (16000, 8000) not in skipped  # the old path only where it is cheap
