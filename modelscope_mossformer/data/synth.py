"""A built-in demo corpus: synthetic speech-like mixtures for smoke tests and tutorials.

Nothing here is real speech, but every utterance is built the way speech is, so a
separation model has voices to tell apart:

* glottal source: a Rosenberg glottal pulse per pitch period, differentiated (lip
  radiation), with per-period shimmer and pulsed aspiration noise, following an F0
  contour with declination, word accents, slow drift and jitter that stays inside
  the voice's F0 range;
* vocal tract: four formant resonators gliding between vowel targets (Peterson &
  Barney's adult male averages times the voice's vocal-tract length factor), plus
  fixed higher poles, applied frame by frame in the STFT domain so that the formants
  can move;
* unvoiced segments: fricatives and plosive bursts, noise through one wide resonance
  (scipy.signal.lfilter);
* rhythm: words of 1-4 syllables at 3-6 syllables per second, each with an onset and
  offset ramp, and short pauses between words.

A voice (`VoiceParams`) fixes F0 range, formant scale, speaking rate, breathiness,
glottal open and speed quotients, spectral tilt, jitter and shimmer, so voices are
distinct and stable.  `generate_demo_corpus` mixes utterances of distinct voices into a LibriMix
"min" tree with CSV and scp manifests; train / validation / test use disjoint voices.  The CSVs name each
source's voice (``s1_spk``, ``s2_spk``... columns) and so do the mixture ids (``tr0003_v02-v07``), which is
where `speakers` finds them for the scp lists and the LibriMix tree.
Everything follows from the seed: the same spec writes byte-identical files.

Command line::

    python -m modelscope_mossformer.data.synth --out DIR [--sample-rate 16000] [--num-spks 3]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import logging
import numbers
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import signal

_LOG = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

SPLITS = ('train', 'validation', 'test')
LIBRIMIX_SPLITS = {'train': 'train-100', 'validation': 'dev', 'test': 'test'}
ID_PREFIXES = {'train': 'tr', 'validation': 'cv', 'test': 'tt'}
SUPPORTED_SAMPLE_RATES = (8000, 16000)
SUPPORTED_NUM_SPKS = (2, 3)
CORPUS_JSON = 'corpus.json'
FORMAT_VERSION = 1            # bump when the same spec would give other audio or layout

MIN_UTTERANCE_SECONDS = 0.5   # room for at least one syllable after the leading silence
MAX_UTTERANCE_SECONDS = 60.0
UTTERANCE_RMS = 0.05          # level of `synthesize_utterance` output
PEAK_LEVEL = 0.9              # mixtures and sources of a mixture stay within [-PEAK_LEVEL, PEAK_LEVEL]
GAIN_SPREAD_DB = 5.0          # source gains in +-GAIN_SPREAD_DB / 2: relative levels within +-5 dB

# Separate random streams per purpose, so that e.g. adding mixtures never changes the voices.
_VOICE_STREAM, _ASSIGN_STREAM, _MIXTURE_STREAM = 11, 12, 13

# Voice pool: mean F0s spread on a log scale from a deep male voice to a child.
F0_CENTRE_LOW, F0_CENTRE_HIGH = 112.0, 300.0
REGISTERS = ((125.0, 'low male'), (165.0, 'male'), (245.0, 'female'), (float('inf'), 'child'))

# Peterson & Barney (1952) adult male F1-F3 in Hz, F4 ~3.5 kHz: iy ih eh ae ah aa ao uh uw er.
VOWEL_FORMANTS = np.array([
    [270, 2290, 3010, 3500], [390, 1990, 2550, 3500], [530, 1840, 2480, 3500], [660, 1720, 2410, 3500],
    [520, 1190, 2390, 3500], [730, 1090, 2440, 3500], [570, 840, 2410, 3500], [440, 1020, 2240, 3500],
    [300, 870, 2240, 3500], [490, 1350, 1690, 3500],
], dtype=np.float64)
FORMANT_BANDWIDTHS = np.array([70.0, 100.0, 160.0, 250.0])
HIGHER_POLES = 4               # neutral-tube resonances above F4 (up to ~8 kHz for an adult male)
HIGHER_POLE_BANDWIDTH = 400.0  # Hz
GLOTTAL_TABLE_SIZE = 4096     # points per period of the tabulated glottal pulse


@dataclass(frozen=True)
class _Consonant:
    name: str
    plosive: bool
    freq: float        # centre of the noise resonance for an adult male tract, Hz
    bandwidth: float   # Hz
    level: float       # amplitude relative to a stressed vowel


CONSONANTS = (
    _Consonant('s', False, 5500.0, 2000.0, 0.35), _Consonant('sh', False, 2800.0, 1200.0, 0.4),
    _Consonant('f', False, 3500.0, 4000.0, 0.2), _Consonant('h', False, 1500.0, 2000.0, 0.15),
    _Consonant('p', True, 900.0, 1200.0, 0.6), _Consonant('t', True, 4000.0, 2000.0, 0.6),
    _Consonant('k', True, 2000.0, 800.0, 0.6),
)
ONSET_PROBABILITY = 0.65
CODA_PROBABILITY = 0.3


# ----------------------------------------------------------------------------------------------
# Argument checks

def _check_int(field: str, value: Any, minimum: int, owner: str = '') -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f'{owner}{field} must be an integer, got {value!r}')
    if value < minimum:
        raise ValueError(f'{owner}{field} must be >= {minimum}, got {value}')
    return int(value)


def _check_choice(field: str, value: Any, choices: Sequence[int], owner: str = '') -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value not in choices:
        raise ValueError(f'{owner}{field} must be one of {tuple(choices)}, got {value!r}')
    return int(value)


def _check_seconds(field: str, value: Any, owner: str = '') -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f'{owner}{field} must be a number of seconds, got {value!r}')
    if not MIN_UTTERANCE_SECONDS <= value <= MAX_UTTERANCE_SECONDS:
        raise ValueError(f'{owner}{field} must be within [{MIN_UTTERANCE_SECONDS}, {MAX_UTTERANCE_SECONDS}] s, '
                         f'got {value}')
    return float(value)


# ----------------------------------------------------------------------------------------------
# Voices

@dataclass(frozen=True)
class VoiceParams:
    """Stable parameters of one synthetic voice (a "speaker").

    Attributes:
        voice_id: name used in mixture ids and manifests, e.g. ``'v07'``.
        register: rough voice type by mean F0: 'low male', 'male', 'female' or 'child'.
        f0_low: lowest fundamental frequency in Hz; contours never go below it.
        f0_high: highest fundamental frequency in Hz; contours never go above it.
        formant_scale: vocal-tract length factor alpha; formants are alpha x the adult male
            targets (a shorter tract has a larger alpha).
        syllable_rate: syllables per second while speaking (pauses between words come on top).
        breathiness: aspiration noise relative to the glottal pulses.
        open_quotient: fraction of a pitch period the glottis is open (larger: softer voice).
        speed_quotient: glottal opening time over closing time (larger: sharper closure, brighter voice).
        spectral_tilt_db: extra roll-off of the source, in dB per octave above 500 Hz.
        jitter: relative random F0 perturbation, about once per pitch period.
        shimmer: relative random amplitude perturbation per pitch period.
        pause_seconds: mean pause between words.
    """

    voice_id: str
    register: str
    f0_low: float
    f0_high: float
    formant_scale: float
    syllable_rate: float
    breathiness: float
    open_quotient: float
    speed_quotient: float
    spectral_tilt_db: float
    jitter: float
    shimmer: float
    pause_seconds: float

    def __post_init__(self) -> None:
        if not 0 < self.f0_low < self.f0_high:
            raise ValueError(f'VoiceParams {self.voice_id}: need 0 < f0_low < f0_high, '
                             f'got {self.f0_low}, {self.f0_high}')
        if not 0.1 < self.open_quotient < 1.0:
            raise ValueError(f'VoiceParams {self.voice_id}: open_quotient must be in (0.1, 1), '
                             f'got {self.open_quotient}')
        for field in ('formant_scale', 'speed_quotient', 'syllable_rate', 'pause_seconds'):
            if not getattr(self, field) > 0:
                raise ValueError(f'VoiceParams {self.voice_id}: {field} must be positive, got {getattr(self, field)}')

    @property
    def f0_centre(self) -> float:
        """Geometric mean of the F0 range, in Hz."""
        return float(np.sqrt(self.f0_low * self.f0_high))


def make_voices(num_voices: int, seed: int = 0) -> List[VoiceParams]:
    """A pool of distinct voices, the same for the same arguments.

    Mean F0s are spread evenly on a log scale from a deep male voice (~112 Hz) to a
    child (~300 Hz), in random order over the voice ids; the vocal tract gets shorter
    (larger formant scale) as the voice gets higher.  The other parameters are drawn
    independently per voice.

    Args:
        num_voices: size of the pool.
        seed: random seed (>= 0).

    Returns:
        `num_voices` voices named ``v00``, ``v01``, ... (wider numbers for big pools).
    """
    num_voices = _check_int('num_voices', num_voices, 1)
    seed = _check_int('seed', seed, 0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _VOICE_STREAM]))
    centres = np.geomspace(F0_CENTRE_LOW, F0_CENTRE_HIGH, num_voices)[rng.permutation(num_voices)]
    width = max(2, len(str(num_voices - 1)))
    voices = []
    for index, centre in enumerate(centres):
        centre *= rng.uniform(0.97, 1.03)
        height = np.log(centre / F0_CENTRE_LOW) / np.log(F0_CENTRE_HIGH / F0_CENTRE_LOW)   # ~0 deep .. ~1 child
        half_range = rng.uniform(1.31, 1.39) - 0.17 * height   # F0 range: centre / half_range .. centre * half_range
        values = dict(
            f0_low=centre / half_range, f0_high=centre * half_range,
            formant_scale=(0.95 + 0.33 * height) * np.exp(rng.uniform(-0.06, 0.06)),
            syllable_rate=rng.uniform(3.8, 6.0),
            breathiness=rng.uniform(0.03, 0.12) + 0.1 * height,
            open_quotient=rng.uniform(0.45, 0.6) + 0.1 * height,
            speed_quotient=rng.uniform(2.0, 4.0),
            spectral_tilt_db=rng.uniform(0.0, 2.0),
            jitter=rng.uniform(0.005, 0.015),
            shimmer=rng.uniform(0.03, 0.08),
            pause_seconds=rng.uniform(0.06, 0.14),
        )
        register = next(name for limit, name in REGISTERS if centre < limit)
        voices.append(VoiceParams(voice_id=f'v{index:0{width}d}', register=register,
                                  **{key: round(float(value), 4) for key, value in values.items()}))
    return voices


# ----------------------------------------------------------------------------------------------
# One utterance: plan (rhythm) -> F0 contour -> glottal source -> vocal tract

def _samples(seconds: float, sample_rate: int) -> int:
    return max(1, int(round(seconds * sample_rate)))


def _ramp(length: int, attack: int, release: int) -> np.ndarray:
    """[length] envelope: raised-cosine onset of `attack` and offset of `release` samples."""
    envelope = np.ones(length)
    attack = min(attack, length // 2)
    release = min(release, length - attack)
    envelope[:attack] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    envelope[length - release:] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 0.5) / release)
    return envelope


@dataclass(frozen=True)
class _NoiseBurst:
    """A fricative or plosive burst: noise through one wide resonance."""

    start: int               # first sample
    envelope: np.ndarray     # [length] amplitude
    freq: float              # resonance centre, Hz
    bandwidth: float         # Hz


@dataclass
class _Plan:
    """What happens when in one utterance."""

    voiced_env: np.ndarray                      # [T + margin] amplitude of the glottal source
    bursts: List[_NoiseBurst]                   # unvoiced segments, in time order
    knot_times: List[int]                       # samples where the formants sit on a vowel target
    knot_formants: List[np.ndarray]             # [4] formant frequencies in Hz, one per knot
    accents: List[Tuple[int, float, float]]     # (centre sample, height in F0-range units, width in samples)


def _add_consonant(plan: _Plan, voice: VoiceParams, start: int, max_length: int, sample_rate: int,
                   rng: np.random.Generator) -> int:
    """Adds a fricative or a plosive (silent closure + burst) of at most `max_length` samples from `start`;
    returns where it ends."""
    consonant = CONSONANTS[int(rng.integers(len(CONSONANTS)))]
    if consonant.plosive:
        length = min(_samples(rng.uniform(0.015, 0.035), sample_rate), max(max_length // 2, 1))
        start += min(_samples(rng.uniform(0.02, 0.05), sample_rate), max_length - length)   # closure
        decay = np.exp(-np.arange(length) / (0.008 * sample_rate))
        envelope = _ramp(length, _samples(0.001, sample_rate), _samples(0.005, sample_rate)) * decay
    else:
        length = min(_samples(rng.uniform(0.06, 0.13), sample_rate), max(max_length, 1))
        envelope = _ramp(length, _samples(0.015, sample_rate), _samples(0.02, sample_rate))
    freq = min(consonant.freq * np.sqrt(voice.formant_scale), 0.42 * sample_rate)
    level = consonant.level * rng.uniform(0.7, 1.0)
    plan.bursts.append(_NoiseBurst(start, level * envelope, freq, consonant.bandwidth))
    return start + length


def _add_syllable(plan: _Plan, voice: VoiceParams, start: int, sample_rate: int, rng: np.random.Generator,
                  stressed: bool) -> int:
    """Writes [onset consonant] vowel [coda consonant], about 1 / syllable_rate long, from `start`;
    returns where it ends."""
    length = _samples(rng.uniform(0.9, 1.1) / voice.syllable_rate, sample_rate)
    position = start
    if rng.random() < ONSET_PROBABILITY:
        position = _add_consonant(plan, voice, position, int(0.4 * length), sample_rate, rng)
    coda = _samples(rng.uniform(0.04, 0.08), sample_rate) if rng.random() < CODA_PROBABILITY else 0
    # vowel nucleus: the formants hold the target over its middle half and glide elsewhere
    nucleus = max(start + length - coda - position, _samples(0.06, sample_rate))
    level = 1.0 if stressed else rng.uniform(0.75, 0.95)
    envelope = _ramp(nucleus, int(rng.uniform(0.2, 0.35) * nucleus), int(rng.uniform(0.3, 0.45) * nucleus))
    plan.voiced_env[position:position + nucleus] = level * envelope * np.linspace(1.0, 0.85, nucleus)
    target = VOWEL_FORMANTS[int(rng.integers(len(VOWEL_FORMANTS)))] * voice.formant_scale
    target = target * (1.0 + 0.03 * rng.standard_normal(4))
    for knot in (position + nucleus // 4, position + (3 * nucleus) // 4):
        plan.knot_times.append(knot)
        plan.knot_formants.append(target)
    if stressed:
        plan.accents.append((position + nucleus // 3, rng.uniform(0.1, 0.35), nucleus / 3))
    position += nucleus
    if coda:
        position = _add_consonant(plan, voice, position, coda, sample_rate, rng)
    return position


def _plan_utterance(voice: VoiceParams, num_samples: int, sample_rate: int, rng: np.random.Generator) -> _Plan:
    """Words of 1-4 syllables (one stressed) separated by short pauses, until `num_samples` are filled."""
    plan = _Plan(np.zeros(num_samples + sample_rate), [], [], [], [])   # room for the syllable that crosses the end
    position = _samples(rng.uniform(0.03, 0.15), sample_rate)
    while position < num_samples:
        num_syllables = int(rng.integers(1, 5))
        stressed = int(rng.integers(num_syllables))
        for index in range(num_syllables):
            if position >= num_samples:
                break
            position = _add_syllable(plan, voice, position, sample_rate, rng, stressed=index == stressed)
        pause = voice.pause_seconds * rng.uniform(0.5, 1.5)
        if rng.random() < 0.1:   # phrase break
            pause += rng.uniform(0.1, 0.25)
        position += _samples(pause, sample_rate)
    plan.voiced_env = plan.voiced_env[:num_samples]
    return plan


def _f0_contour(voice: VoiceParams, plan: _Plan, num_samples: int, sample_rate: int,
                rng: np.random.Generator) -> np.ndarray:
    """[T] F0 in Hz: declination + word accents + drift (+ a question rise) + jitter, within the range."""
    step = sample_rate // 200                       # 5 ms control rate, about one pitch period
    times = np.arange(0, num_samples + step, step, dtype=np.float64)   # [C]
    progress = times / num_samples
    start, end = rng.uniform(0.4, 0.65), rng.uniform(0.1, 0.3)
    height = start + (end - start) * progress       # declination, in units of the (log) F0 range
    for centre, accent, width in plan.accents:
        height += accent * np.exp(-0.5 * ((times - centre) / width) ** 2)
    drift = signal.lfilter([np.sqrt(1 - 0.95 ** 2)], [1.0, -0.95], rng.standard_normal(times.size))   # unit variance
    height += 0.04 * drift
    if rng.random() < 0.2:                          # question-like final rise
        height += 0.35 * np.clip((progress - 0.85) / 0.15, 0.0, 1.0) ** 2
    low, high = np.log(voice.f0_low), np.log(voice.f0_high)
    log_f0 = low + (high - low) * np.clip(height, 0.03, 0.97)
    log_f0 += voice.jitter * rng.standard_normal(times.size)
    log_f0 = np.clip(log_f0, low, high)
    return np.exp(np.interp(np.arange(num_samples), times, log_f0))


def _rosenberg_flow(position: np.ndarray, open_quotient: float, speed_quotient: float) -> np.ndarray:
    """Rosenberg glottal flow at `position` in [0, 1) of a period: a raised-cosine opening, a
    quarter-cosine closing `speed_quotient` times shorter, together `open_quotient`, then closed."""
    rise = open_quotient * speed_quotient / (1.0 + speed_quotient)
    fall = open_quotient - rise
    opening = 0.5 - 0.5 * np.cos(np.pi * np.minimum(position / rise, 1.0))
    closing = np.cos(0.5 * np.pi * np.clip((position - rise) / fall, 0.0, 1.0))
    return np.where(position < rise, opening, np.where(position < open_quotient, closing, 0.0))


def _glottal_source(voice: VoiceParams, f0: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """[T] differentiated Rosenberg pulses at `f0` with shimmer and pulsed aspiration, unit RMS pulses."""
    phase = rng.uniform() + np.cumsum(f0 / sample_rate)   # [T] in pitch periods
    cycle = phase.astype(np.int64)
    position = phase - cycle                              # [T] 0..1 within the period
    table = _rosenberg_flow(np.arange(GLOTTAL_TABLE_SIZE) / GLOTTAL_TABLE_SIZE, voice.open_quotient,
                            voice.speed_quotient)
    flow = table[(position * GLOTTAL_TABLE_SIZE).astype(np.int64)]   # a table look-up is cheaper than cos
    cycle -= cycle[0]
    flow *= 1.0 + voice.shimmer * rng.standard_normal(int(cycle[-1]) + 1)[cycle]
    # lip radiation: the derivative, scaled per period so loudness does not follow F0
    pulses = np.diff(flow, prepend=flow[0]) * (sample_rate / f0)
    pulses /= max(float(np.sqrt(np.mean(pulses ** 2))), 1e-12)
    aspiration = voice.breathiness * rng.standard_normal(f0.size) * (0.25 + flow)
    return pulses + aspiration


def _formant_response(freqs: np.ndarray, centres: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Cascade of analogue two-pole resonators with unit DC gain, prod_r F_r^2 / (F_r^2 - f^2 + j B_r f).

    Evaluated directly at the analysis frequencies, a resonance needs no frequency warping and may
    lie above Nyquist, where its low-frequency tail still lifts the band as in a real recording.

    Args:
        freqs: [K] frequencies f in Hz.
        centres: [R, M] resonance frequencies F in Hz for R resonators over M frames (M may be 1).
        bandwidths: [R, M] (or broadcastable) bandwidths B in Hz.

    Returns:
        [M, K] complex response.
    """
    bandwidths = np.broadcast_to(bandwidths, centres.shape)
    denominator = np.ones((centres.shape[1], freqs.size), dtype=np.complex128)     # [M, K]
    for centre, bandwidth in zip(centres[:, :, None], bandwidths[:, :, None]):   # [M, 1] each
        term = np.empty_like(denominator)
        term.real = centre ** 2 - freqs ** 2
        term.imag = bandwidth * freqs
        denominator *= term
    return np.prod(centres ** 2, axis=0)[:, None] / denominator


def _higher_poles(freqs: np.ndarray, voice: VoiceParams) -> np.ndarray:
    """[K] resonances 5.. of the voice's neutral tube, (2k - 1) x 500 Hz x formant_scale: fixed, they
    restore the high-frequency level a four-formant cascade lacks (Fant's higher-pole correction)."""
    orders = np.arange(5, 5 + HIGHER_POLES)
    centres = ((2 * orders - 1) * 500.0 * voice.formant_scale)[:, None]              # [P, 1]
    return _formant_response(freqs, centres, HIGHER_POLE_BANDWIDTH)[0]


def _frame_length(sample_rate: int) -> int:
    """STFT frame of ~32 ms, a power of two: long against the resonators' decay."""
    return 2 ** int(round(np.log2(0.032 * sample_rate)))


@functools.lru_cache(maxsize=4)
def _sine_window(frame: int) -> np.ndarray:
    """sqrt of the periodic Hann window: analysis x synthesis sums to one at hop frame / 2."""
    return np.sin(np.pi * np.arange(frame) / frame)


def _stft(waves: np.ndarray, frame: int) -> np.ndarray:
    """[C, T] -> [C, M, frame // 2 + 1]: sine-windowed frames at hop frame / 2; frame m is centred
    on sample (m - 1) * frame / 2."""
    padded = np.pad(waves, ((0, 0), (frame, frame)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame, axis=-1)[:, ::frame // 2]   # [C, M, frame]
    return np.fft.rfft(frames * _sine_window(frame), axis=-1)


def _istft(spectra: np.ndarray, frame: int, length: int) -> np.ndarray:
    """[M, frame // 2 + 1] -> [length]: sine-windowed overlap-add, the inverse of `_stft`."""
    hop = frame // 2
    halves = (np.fft.irfft(spectra, n=frame, axis=-1) * _sine_window(frame)).reshape(len(spectra), 2, hop)
    blocks = np.zeros((len(spectra) + 1, hop))
    blocks[:-1] += halves[:, 0]
    blocks[1:] += halves[:, 1]
    return blocks.reshape(-1)[frame:frame + length]


def _vocal_tract(voice: VoiceParams, plan: _Plan, voiced: np.ndarray, sample_rate: int) -> np.ndarray:
    """[T] `voiced` through the formants, which glide between the plan's vowel targets."""
    frame = _frame_length(sample_rate)
    spectra = _stft(voiced[None], frame)[0]                                          # [M, K]
    frame_times = (np.arange(len(spectra)) - 1) * (frame // 2)                       # [M] centre samples
    knots = np.stack(plan.knot_formants)                                             # [knots, 4]
    formants = np.stack([np.interp(frame_times, plan.knot_times, knots[:, i]) for i in range(4)])   # [4, M]
    bandwidths = FORMANT_BANDWIDTHS[:, None] * (1.0 + voice.breathiness)             # [4, 1]
    freqs = np.fft.rfftfreq(frame, 1.0 / sample_rate)                                # [K]
    tract = _formant_response(freqs, formants, bandwidths)                           # [M, K]
    tract *= _higher_poles(freqs, voice)
    with np.errstate(divide='ignore'):
        highpass = 1.0 / np.sqrt(1.0 + (70.0 / freqs) ** 4)                           # 2nd order at 70 Hz
    tilt = 10.0 ** (-voice.spectral_tilt_db * np.log2(np.maximum(freqs, 500.0) / 500.0) / 20.0)
    tract *= highpass * tilt
    tract /= np.sqrt(np.mean(np.abs(tract) ** 2))   # unit power gain on average; open vowels come out louder
    return _istft(spectra * tract, frame, voiced.size)


def _frication(plan: _Plan, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """[T] the plan's noise bursts: white noise, differentiated (no DC) and through one two-pole resonance,
    at unit RMS times the burst envelope."""
    noise = np.zeros(num_samples)
    warm_up = _samples(0.005, sample_rate)   # lets the resonance settle before the burst starts
    for burst in plan.bursts:
        if burst.start >= num_samples:
            break
        radius = np.exp(-np.pi * burst.bandwidth / sample_rate)
        denominator = [1.0, -2.0 * radius * np.cos(2 * np.pi * burst.freq / sample_rate), radius ** 2]
        length = min(burst.envelope.size, num_samples - burst.start)
        shaped = signal.lfilter([1.0, -1.0], denominator, rng.standard_normal(warm_up + burst.envelope.size))
        shaped = shaped[warm_up:] / np.sqrt(np.mean(shaped[warm_up:] ** 2))
        noise[burst.start:burst.start + length] += (shaped * burst.envelope)[:length]
    return noise


def synthesize_utterance(voice: VoiceParams, seconds: float, sample_rate: int,
                         rng: np.random.Generator) -> np.ndarray:
    """One speech-like utterance of `voice`.

    Args:
        voice: the speaker.
        seconds: duration, within [MIN_UTTERANCE_SECONDS, MAX_UTTERANCE_SECONDS].
        sample_rate: 8000 or 16000 Hz.
        rng: the only source of randomness; the same generator state gives the same samples.

    Returns:
        float32 [T], T = round(seconds * sample_rate), at RMS `UTTERANCE_RMS`.
    """
    if not isinstance(voice, VoiceParams):
        raise TypeError(f'voice must be a VoiceParams, got {type(voice).__name__}')
    seconds = _check_seconds('seconds', seconds)
    sample_rate = _check_choice('sample_rate', sample_rate, SUPPORTED_SAMPLE_RATES)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f'rng must be a numpy.random.Generator, got {type(rng).__name__}')
    num_samples = int(round(seconds * sample_rate))
    return _render(voice, num_samples, num_samples, sample_rate, rng)


def _render(voice: VoiceParams, num_samples: int, keep: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The first `keep` samples of an utterance planned for `num_samples`: float32 [keep] at `UTTERANCE_RMS`.

    Cutting here rather than after rendering gives the same speech (plan and F0 contour are those
    of the whole utterance) without rendering audio that a "min" mixture throws away.
    """
    plan = _plan_utterance(voice, num_samples, sample_rate, rng)
    f0 = _f0_contour(voice, plan, num_samples, sample_rate, rng)[:keep]
    voiced = plan.voiced_env[:keep] * _glottal_source(voice, f0, sample_rate, rng)
    wave = _vocal_tract(voice, plan, voiced, sample_rate) + _frication(plan, keep, sample_rate, rng)
    wave *= _ramp(keep, 0, _samples(0.01, sample_rate))   # no click where the utterance ends or is cut
    wave *= UTTERANCE_RMS / max(float(np.sqrt(np.mean(wave ** 2))), 1e-12)
    return wave.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Corpus

@dataclass(frozen=True)
class DemoCorpusSpec:
    """What `generate_demo_corpus` writes; every field goes into corpus.json.

    Attributes:
        sample_rate: 8000 or 16000 Hz.
        num_spks: speakers per mixture, 2 or 3.
        train_mixtures: number of training mixtures.
        validation_mixtures: number of validation mixtures.
        test_mixtures: number of test mixtures.
        min_seconds: shortest utterance, at least MIN_UTTERANCE_SECONDS.
        max_seconds: longest utterance, at most MAX_UTTERANCE_SECONDS; a mixture is as long as
            its shortest utterance (LibriMix "min").
        num_voices: size of the voice pool.
        validation_voices: voices held out for validation.
        test_voices: voices held out for test; train gets the rest.
        seed: random seed (>= 0).
    """

    sample_rate: int = 8000
    num_spks: int = 2
    train_mixtures: int = 160
    validation_mixtures: int = 20
    test_mixtures: int = 20
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    num_voices: int = 16
    validation_voices: int = 3
    test_voices: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        owner = 'DemoCorpusSpec.'
        checked = dict(
            sample_rate=_check_choice('sample_rate', self.sample_rate, SUPPORTED_SAMPLE_RATES, owner),
            num_spks=_check_choice('num_spks', self.num_spks, SUPPORTED_NUM_SPKS, owner),
            min_seconds=_check_seconds('min_seconds', self.min_seconds, owner),
            max_seconds=_check_seconds('max_seconds', self.max_seconds, owner),
            num_voices=_check_int('num_voices', self.num_voices, 1, owner),
            seed=_check_int('seed', self.seed, 0, owner),
        )
        for split in SPLITS:
            checked[f'{split}_mixtures'] = _check_int(f'{split}_mixtures', getattr(self, f'{split}_mixtures'), 1,
                                                      owner)
        for split in ('validation', 'test'):
            field = f'{split}_voices'
            checked[field] = _check_int(field, getattr(self, field), 1, owner)
        for field, value in checked.items():
            object.__setattr__(self, field, value)
        if self.max_seconds < self.min_seconds:
            raise ValueError(f'{owner}max_seconds ({self.max_seconds}) must be >= min_seconds ({self.min_seconds})')
        for split in SPLITS:
            if self.voices_in(split) < self.num_spks:
                raise ValueError(
                    f'DemoCorpusSpec: the {split} split gets {self.voices_in(split)} voice(s) (num_voices='
                    f'{self.num_voices}, validation_voices={self.validation_voices}, test_voices='
                    f'{self.test_voices}) but each mixture needs num_spks={self.num_spks} distinct voices')

    def mixtures_in(self, split: str) -> int:
        """Number of mixtures of `split` ('train', 'validation' or 'test')."""
        return getattr(self, f'{_check_split(split)}_mixtures')

    def voices_in(self, split: str) -> int:
        """Number of voices reserved for `split`."""
        if _check_split(split) == 'train':
            return self.num_voices - self.validation_voices - self.test_voices
        return getattr(self, f'{split}_voices')


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    return split


@dataclass
class DemoCorpus:
    """A generated demo corpus.

    Attributes:
        root: the output folder (absolute).
        spec: what was generated.
        csv: split -> CSV manifest (``mix_wav:FILE,s1_wav:FILE,...,s1_spk,...``, paths relative to `root`,
            the voice of each source in the ``sN_spk`` columns).
        scp: split -> ClearerVoice scp list (``mix s1 s2 [s3]``, absolute paths).
        librimix_root: the ``wav8k/min`` (or ``wav16k/min``) folder of the LibriMix tree.
    """

    root: Path
    spec: DemoCorpusSpec
    csv: Dict[str, Path]
    scp: Dict[str, Path]
    librimix_root: Path

    @classmethod
    def at(cls, root: Path, spec: DemoCorpusSpec) -> 'DemoCorpus':
        """The paths a corpus of `spec` has under `root`."""
        return cls(root=root, spec=spec, csv={split: root / f'{split}.csv' for split in SPLITS},
                   scp={split: root / f'{split}.scp' for split in SPLITS},
                   librimix_root=root / _librimix_rate_dir(spec.sample_rate) / 'min')

    def split_dir(self, split: str) -> Path:
        """LibriMix folder of `split`, e.g. ``.../wav8k/min/train-100``."""
        return self.librimix_root / LIBRIMIX_SPLITS[_check_split(split)]


def _librimix_rate_dir(sample_rate: int) -> str:
    return f'wav{sample_rate // 1000}k'


def _assign_voices(voices: Sequence[VoiceParams], spec: DemoCorpusSpec) -> Dict[str, List[VoiceParams]]:
    """Disjoint voice sets per split; held-out voices are drawn across the F0 range (stratified)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _ASSIGN_STREAM]))
    remaining = sorted(voices, key=lambda voice: voice.f0_centre)
    assignment = {}
    for split in ('test', 'validation'):
        count = spec.voices_in(split)
        picks = set(((np.arange(count) + rng.uniform()) * len(remaining) / count).astype(int).tolist())
        assignment[split] = [voice for i, voice in enumerate(remaining) if i in picks]
        remaining = [voice for i, voice in enumerate(remaining) if i not in picks]
    assignment['train'] = remaining
    return {split: sorted(assignment[split], key=lambda voice: voice.voice_id) for split in SPLITS}


def _make_mixture(spec: DemoCorpusSpec, split: str, index: int,
                  voices: Sequence[VoiceParams]) -> Tuple[str, np.ndarray, np.ndarray]:
    """One mixture of `split`, from its own random stream.

    Returns:
        (mixture id, sources float32 [num_spks, L], mixture float32 [L]) with the mixture
        exactly the float32 sum s1 + s2 (+ s3), all within [-PEAK_LEVEL, PEAK_LEVEL].
    """
    seed_sequence = np.random.SeedSequence([spec.seed, _MIXTURE_STREAM, SPLITS.index(split), index])
    rng = np.random.default_rng(seed_sequence)
    chosen = [voices[i] for i in rng.choice(len(voices), size=spec.num_spks, replace=False)]
    seconds = rng.uniform(spec.min_seconds, spec.max_seconds, size=spec.num_spks)
    gains_db = rng.uniform(-GAIN_SPREAD_DB / 2, GAIN_SPREAD_DB / 2, size=spec.num_spks)
    num_samples = [int(round(length * spec.sample_rate)) for length in seconds]
    length = min(num_samples)   # LibriMix "min": every utterance is cut to the shortest
    sources = np.stack([_render(voice, count, length, spec.sample_rate, np.random.default_rng(child))
                        for voice, count, child in zip(chosen, num_samples, seed_sequence.spawn(spec.num_spks))])
    sources = sources.astype(np.float64)                                                   # [S, L]
    sources /= np.maximum(np.sqrt(np.mean(sources ** 2, axis=1, keepdims=True)), 1e-12)
    sources *= 10.0 ** (gains_db[:, None] / 20.0)
    peak = max(float(np.abs(sources).max()), float(np.abs(sources.sum(axis=0)).max()))
    sources = (sources * (PEAK_LEVEL / peak)).astype(np.float32)
    mixture = sources[0].copy()
    for source in sources[1:]:
        mixture += source
    width = max(4, len(str(spec.mixtures_in(split) - 1)))
    mixture_id = f'{ID_PREFIXES[split]}{index:0{width}d}_' + '-'.join(voice.voice_id for voice in chosen)
    return mixture_id, sources, mixture


def _write_float_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Mono float32 WAV, as soundfile's subtype 'FLOAT' reads it.

    soundfile (libsndfile) stamps float WAVs with a PEAK chunk holding the wall-clock
    time, so its files differ from run to run; this writes the same header without it.
    """
    data = np.ascontiguousarray(samples, dtype='<f4').tobytes()
    fmt = struct.pack('<HHIIHHH', 3, 1, sample_rate, 4 * sample_rate, 4, 32, 0)   # IEEE float, mono, 32 bit
    body = b''.join([b'WAVE', b'fmt ', struct.pack('<I', len(fmt)), fmt,
                     b'fact', struct.pack('<II', 4, samples.size), b'data', struct.pack('<I', len(data)), data])
    path.write_bytes(b'RIFF' + struct.pack('<I', len(body)) + body)


def _csv_header(num_spks: int) -> List[str]:
    """Paths, then the voice of each source (``s1_spk``...: speaker ids for dynamic mixing)."""
    return ['mix_wav:FILE'] + [f's{i + 1}_wav:FILE' for i in range(num_spks)] + \
        [f's{i + 1}_spk' for i in range(num_spks)]


def mixture_voices(mixture_id: str) -> List[str]:
    """The voice of each source of a demo mixture, from its id: ``'tr0003_v02-v07'`` -> ``['v02', 'v07']``."""
    return mixture_id.split('_', 1)[1].split('-')


def _write_text(path: Path, text: str) -> None:
    with open(path, 'w', encoding='utf-8', newline='') as handle:
        handle.write(text)


def _write_manifests(corpus: DemoCorpus, split: str, rows: List[List[str]]) -> None:
    """`rows`: per mixture, the mixture and source paths relative to the corpus root (posix)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(_csv_header(corpus.spec.num_spks))
    writer.writerows(row + mixture_voices(Path(row[0]).stem) for row in rows)
    _write_text(corpus.csv[split], buffer.getvalue())
    _write_text(corpus.scp[split], ''.join(' '.join(str(corpus.root / path) for path in row) + '\n'
                                           for row in rows))


def _read_csv_rows(path: Path) -> List[List[str]]:
    """The path columns of a corpus CSV (one written before the ``sN_spk`` columns existed too)."""
    with open(path, encoding='utf-8', newline='') as handle:
        header, *rows = list(csv.reader(handle))
    paths = [at for at, name in enumerate(header) if name.endswith(':FILE')]
    return [[row[at] for at in paths] for row in rows]


def _read_corpus_json(root: Path) -> Optional[Dict[str, Any]]:
    path = root / CORPUS_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as error:
        raise ValueError(f'{path} is not a readable demo corpus record ({error}); '
                         f'pass overwrite=True to regenerate') from error
    if not isinstance(record, dict) or not isinstance(record.get('spec'), dict):
        raise ValueError(f'{path} is not a demo corpus record; pass overwrite=True to regenerate')
    return record


def _corpus_record(corpus: DemoCorpus, assignment: Dict[str, List[VoiceParams]], status: str,
                   seconds: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    spec = corpus.spec
    splits = {}
    for split in SPLITS:
        splits[split] = dict(librimix_split=LIBRIMIX_SPLITS[split], num_mixtures=spec.mixtures_in(split),
                             voices=[voice.voice_id for voice in assignment[split]],
                             csv=corpus.csv[split].name, scp=corpus.scp[split].name)
        if seconds is not None:
            splits[split]['total_seconds'] = round(seconds[split], 3)
    voices = {voice.voice_id: dataclasses.asdict(voice)
              for split in SPLITS for voice in assignment[split]}
    return dict(format_version=FORMAT_VERSION, generator=__name__, status=status, root=str(corpus.root),
                spec=dataclasses.asdict(spec), sample_rate=spec.sample_rate, num_spks=spec.num_spks,
                librimix_root=corpus.librimix_root.relative_to(corpus.root).as_posix(), splits=splits,
                voices=dict(sorted(voices.items())))


def _write_corpus_json(root: Path, record: Dict[str, Any]) -> None:
    _write_text(root / CORPUS_JSON, json.dumps(record, indent=2) + '\n')


def _remove_corpus(root: Path, record: Dict[str, Any]) -> None:
    """Deletes what an earlier generation recorded in `record` wrote under `root`, nothing else."""
    (root / CORPUS_JSON).unlink()
    old_rate = record['spec'].get('sample_rate')
    rate_dir = root / _librimix_rate_dir(old_rate) if old_rate in SUPPORTED_SAMPLE_RATES else None
    for split in SPLITS:
        for suffix in ('.csv', '.scp'):
            (root / f'{split}{suffix}').unlink(missing_ok=True)
        if rate_dir is not None and (rate_dir / 'min' / LIBRIMIX_SPLITS[split]).is_dir():
            shutil.rmtree(rate_dir / 'min' / LIBRIMIX_SPLITS[split])
    for folder in ((rate_dir / 'min', rate_dir) if rate_dir is not None else ()):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    _LOG.info('removed the previous demo corpus in %s', root)


def _spec_differences(recorded: Dict[str, Any], spec: DemoCorpusSpec) -> List[str]:
    wanted = dataclasses.asdict(spec)
    return [f'{key}: {recorded.get(key)!r} -> {wanted.get(key)!r}'
            for key in sorted(set(recorded) | set(wanted)) if recorded.get(key) != wanted.get(key)]


def _is_complete(corpus: DemoCorpus, record: Dict[str, Any]) -> bool:
    manifests = [*corpus.csv.values(), *corpus.scp.values()]
    return record.get('status') == 'complete' and all(path.is_file() for path in manifests)


def _reuse(corpus: DemoCorpus, record: Dict[str, Any]) -> DemoCorpus:
    """The recorded corpus; if the folder moved, its scp lists are rewritten with the new absolute paths."""
    _LOG.info('demo corpus with the same spec already in %s; not regenerating', corpus.root)
    if record.get('root') != str(corpus.root):
        for split in SPLITS:
            _write_manifests(corpus, split, _read_csv_rows(corpus.csv[split]))
        _LOG.info('corpus moved from %s; rewriting the scp lists', record.get('root'))
        record['root'] = str(corpus.root)
        _write_corpus_json(corpus.root, record)
    return corpus


def _check_target(corpus: DemoCorpus, overwrite: bool) -> None:
    """Refuses to write into LibriMix split folders that this module did not create."""
    if overwrite:
        return
    for split in SPLITS:
        folder = corpus.split_dir(split)
        if folder.is_dir() and any(folder.iterdir()):
            raise ValueError(f'{folder} already exists and is not part of a demo corpus record '
                             f'({corpus.root / CORPUS_JSON} is missing); pass overwrite=True to write into it '
                             f'or pick another out_dir')


def generate_demo_corpus(out_dir: PathLike, spec: DemoCorpusSpec = DemoCorpusSpec(), progress: bool = False,
                         overwrite: bool = False) -> DemoCorpus:
    """Writes (or finds) a demo corpus of synthetic speech mixtures under `out_dir`.

    Layout: ``wav8k|wav16k/min/{train-100,dev,test}/{mix_clean,s1,s2[,s3]}/<ID>.wav``
    (mono float32 WAV; each mixture is exactly the sum of its sources), ``<split>.csv``
    (paths relative to `out_dir`), ``<split>.scp`` (absolute paths) and ``corpus.json``
    (spec, voices per split, voice parameters, counts).

    Args:
        out_dir: output folder; created if missing.  Its absolute path may not contain
            whitespace (scp lists are whitespace-separated).
        spec: what to generate.
        progress: show a tqdm progress bar.
        overwrite: replace a corpus of another spec (or an unfinished one) in `out_dir`.

    Returns:
        The corpus.  If `out_dir` already holds a finished corpus of the same `spec`, it is
        returned as is (unless `overwrite`).

    Raises:
        ValueError: `out_dir` holds a corpus of another spec (or foreign LibriMix folders)
            and `overwrite` is False, or its path contains whitespace.
        TypeError: `spec` is not a `DemoCorpusSpec`.
    """
    if not isinstance(spec, DemoCorpusSpec):
        raise TypeError(f'spec must be a DemoCorpusSpec, got {type(spec).__name__}')
    root = Path(out_dir).expanduser().resolve()
    if any(character.isspace() for character in str(root)):
        raise ValueError(f'out_dir {str(root)!r} contains whitespace, which the scp lists cannot represent')
    corpus = DemoCorpus.at(root, spec)
    try:
        record = _read_corpus_json(root)
    except ValueError:
        if not overwrite:
            raise
        _LOG.warning('replacing the unreadable %s', root / CORPUS_JSON)
        record = None
    if record is not None:
        differences = _spec_differences(record['spec'], spec)
        if record.get('format_version') != FORMAT_VERSION:   # written by another version of this generator
            differences.append(f'format_version: {record.get("format_version")!r} -> {FORMAT_VERSION}')
        if differences and not overwrite:
            raise ValueError(f'{root} already holds a demo corpus generated with a different spec '
                             f'({"; ".join(differences)}); pass overwrite=True to replace it or pick another out_dir')
        if not differences and not overwrite:
            if _is_complete(corpus, record):
                return _reuse(corpus, record)
            _LOG.info('the demo corpus in %s is unfinished; generating it again', root)
        _remove_corpus(root, record)
    else:
        _check_target(corpus, overwrite)
    _generate(corpus, progress)
    return corpus


def _generate(corpus: DemoCorpus, progress: bool) -> None:
    from tqdm.auto import tqdm

    spec = corpus.spec
    started = time.perf_counter()
    assignment = _assign_voices(make_voices(spec.num_voices, spec.seed), spec)
    corpus.root.mkdir(parents=True, exist_ok=True)
    _write_corpus_json(corpus.root, _corpus_record(corpus, assignment, status='incomplete'))
    folders = ['mix_clean'] + [f's{i + 1}' for i in range(spec.num_spks)]
    seconds = {}
    total = sum(spec.mixtures_in(split) for split in SPLITS)
    with tqdm(total=total, desc='demo corpus', unit='mix', disable=not progress) as bar:
        for split in SPLITS:
            split_dir = corpus.split_dir(split)
            for folder in folders:
                (split_dir / folder).mkdir(parents=True, exist_ok=True)
            rows, samples = [], 0
            for index in range(spec.mixtures_in(split)):
                mixture_id, sources, mixture = _make_mixture(spec, split, index, assignment[split])
                paths = [split_dir / folder / f'{mixture_id}.wav' for folder in folders]
                for path, wave in zip(paths, [mixture, *sources]):
                    _write_float_wav(path, wave, spec.sample_rate)
                rows.append([path.relative_to(corpus.root).as_posix() for path in paths])
                samples += mixture.size
                bar.update(1)
            _write_manifests(corpus, split, rows)
            seconds[split] = samples / spec.sample_rate
    _write_corpus_json(corpus.root, _corpus_record(corpus, assignment, status='complete', seconds=seconds))
    _LOG.info('wrote %d demo mixtures (%.1f s of audio) to %s in %.1f s', total, sum(seconds.values()),
              corpus.root, time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------
# Command line

def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    defaults = DemoCorpusSpec()
    parser = argparse.ArgumentParser(prog='python -m modelscope_mossformer.data.synth',
                                     description='Generate the synthetic demo corpus (LibriMix tree, CSV and scp).')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--sample-rate', type=int, default=defaults.sample_rate, choices=SUPPORTED_SAMPLE_RATES)
    parser.add_argument('--num-spks', type=int, default=defaults.num_spks, choices=SUPPORTED_NUM_SPKS)
    for split in SPLITS:
        parser.add_argument(f'--{split}', type=int, default=defaults.mixtures_in(split),
                            help=f'number of {split} mixtures (default %(default)s)')
    parser.add_argument('--min-seconds', type=float, default=defaults.min_seconds)
    parser.add_argument('--max-seconds', type=float, default=defaults.max_seconds)
    parser.add_argument('--num-voices', type=int, default=defaults.num_voices)
    parser.add_argument('--validation-voices', type=int, default=defaults.validation_voices)
    parser.add_argument('--test-voices', type=int, default=defaults.test_voices)
    parser.add_argument('--seed', type=int, default=defaults.seed)
    parser.add_argument('--overwrite', action='store_true', help='replace a corpus of another spec in --out')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        spec = DemoCorpusSpec(sample_rate=args.sample_rate, num_spks=args.num_spks, train_mixtures=args.train,
                              validation_mixtures=args.validation, test_mixtures=args.test,
                              min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                              num_voices=args.num_voices, validation_voices=args.validation_voices,
                              test_voices=args.test_voices, seed=args.seed)
        corpus = generate_demo_corpus(args.out, spec, progress=True, overwrite=args.overwrite)
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'demo corpus: {corpus.root}')
    print(f'  LibriMix tree: {corpus.librimix_root}')
    for split in SPLITS:
        print(f'  {split:<10} {spec.mixtures_in(split):>5} mixtures  csv: {corpus.csv[split]}  '
              f'scp: {corpus.scp[split]}')
    print(f'  record: {corpus.root / CORPUS_JSON}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
