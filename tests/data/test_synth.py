"""The demo corpus generator: determinism, layout, exact mixtures, speech-likeness, arguments, re-use."""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import soundfile
from scipy import stats

from modelscope_mossformer.data.synth import (CORPUS_JSON, SPLITS, DemoCorpus, DemoCorpusSpec, VoiceParams,
                                              generate_demo_corpus, main, make_voices, synthesize_utterance)

LIBRIMIX_NAMES = {'train': 'train-100', 'validation': 'dev', 'test': 'test'}


def small_spec(**overrides) -> DemoCorpusSpec:
    """6 / 2 / 2 mixtures of 0.6-1.0 s utterances from 9 voices (3 per split)."""
    values = dict(train_mixtures=6, validation_mixtures=2, test_mixtures=2, min_seconds=0.6, max_seconds=1.0,
                  num_voices=9, validation_voices=3, test_voices=3)
    values.update(overrides)
    return DemoCorpusSpec(**values)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> DemoCorpus:
    return generate_demo_corpus(tmp_path_factory.mktemp('demo') / 'corpus', small_spec())


def read(path: Path) -> np.ndarray:
    samples, _ = soundfile.read(str(path), dtype='float32')
    return samples


def csv_rows(path: Path) -> Tuple[List[str], List[List[str]]]:
    with open(path, newline='') as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def mixture_voices(mixture_path: str) -> List[str]:
    """'.../tr0003_v02-v07.wav' -> ['v02', 'v07']."""
    return Path(mixture_path).stem.split('_', 1)[1].split('-')


# ----------------------------------------------------------------------------------------------
# Determinism and layout

def corpus_files(root: Path) -> Dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob('*')) if path.is_file()}


def test_same_arguments_give_identical_files(tmp_path):
    first = generate_demo_corpus(tmp_path / 'a', small_spec())
    second = generate_demo_corpus(tmp_path / 'b', small_spec())
    files_a, files_b = corpus_files(first.root), corpus_files(second.root)
    assert files_a.keys() == files_b.keys()
    for name, content in files_a.items():
        if name.endswith('.scp'):   # absolute paths: equal up to the root
            assert content.decode().replace(str(first.root), '') == files_b[name].decode().replace(str(second.root), '')
        elif name == CORPUS_JSON:
            record_a, record_b = json.loads(content), json.loads(files_b[name])
            assert record_a.pop('root') != record_b.pop('root')
            assert record_a == record_b
        else:
            assert content == files_b[name], name

    other = generate_demo_corpus(tmp_path / 'c', small_spec(seed=1))
    _, rows_a = csv_rows(first.csv['train'])
    _, rows_c = csv_rows(other.csv['train'])
    assert read(first.root / rows_a[0][0]).tobytes() != read(other.root / rows_c[0][0]).tobytes()


def test_csv_scp_and_librimix_tree(corpus):
    spec = corpus.spec
    assert corpus.librimix_root == corpus.root / 'wav8k' / 'min'
    for split in SPLITS:
        header, rows = csv_rows(corpus.csv[split])
        assert corpus.csv[split] == corpus.root / f'{split}.csv'
        assert header == ['mix_wav:FILE', 's1_wav:FILE', 's2_wav:FILE', 's1_spk', 's2_spk']
        assert len(rows) == spec.mixtures_in(split)
        scp_lines = corpus.scp[split].read_text().splitlines()
        assert len(scp_lines) == len(rows)
        split_dir = corpus.librimix_root / LIBRIMIX_NAMES[split]
        assert sorted(p.name for p in split_dir.iterdir()) == ['mix_clean', 's1', 's2']
        for row, line in zip(rows, scp_lines):
            assert line == line.strip() and '  ' not in line
            fields = line.split(' ')
            assert len(fields) == 3 and all(Path(field).is_absolute() for field in fields)
            for relative, absolute, folder in zip(row, fields, ['mix_clean', 's1', 's2']):
                assert not Path(relative).is_absolute()
                resolved = (corpus.csv[split].parent / relative).resolve()
                assert resolved.is_file() and resolved == Path(absolute)
                assert resolved.parent == split_dir / folder
                assert resolved.name == Path(row[0]).name
        assert len(list((split_dir / 'mix_clean').iterdir())) == len(rows)


def test_splits_use_disjoint_voices(corpus):
    record = json.loads((corpus.root / CORPUS_JSON).read_text())
    voices = {split: set(record['splits'][split]['voices']) for split in SPLITS}
    assert [len(voices[split]) for split in SPLITS] == [3, 3, 3]
    assert not voices['train'] & voices['validation']
    assert not voices['train'] & voices['test']
    assert not voices['validation'] & voices['test']
    assert set(record['voices']) == set.union(*voices.values())
    assert record['sample_rate'] == 8000 and record['num_spks'] == 2 and record['status'] == 'complete'
    for split in SPLITS:
        _, rows = csv_rows(corpus.csv[split])
        for row in rows:
            ids = mixture_voices(row[0])
            assert len(set(ids)) == 2 and set(ids) <= voices[split]


def test_mixture_lengths_within_bounds(corpus):
    spec = corpus.spec
    for split in SPLITS:
        _, rows = csv_rows(corpus.csv[split])
        for row in rows:
            info = soundfile.info(str(corpus.root / row[0]))
            assert round(spec.min_seconds * 8000) <= info.frames <= round(spec.max_seconds * 8000)


@pytest.mark.parametrize('sample_rate', [8000, 16000])
@pytest.mark.parametrize('num_spks', [2, 3])
def test_mixture_is_exactly_the_sum_of_its_sources(tmp_path, sample_rate, num_spks):
    spec = small_spec(sample_rate=sample_rate, num_spks=num_spks, train_mixtures=2, validation_mixtures=1,
                      test_mixtures=1)
    demo = generate_demo_corpus(tmp_path, spec)
    assert demo.librimix_root == tmp_path.resolve() / f'wav{sample_rate // 1000}k' / 'min'
    for split in SPLITS:
        header, rows = csv_rows(demo.csv[split])
        assert header == ['mix_wav:FILE'] + [f's{i + 1}_wav:FILE' for i in range(num_spks)] + \
            [f's{i + 1}_spk' for i in range(num_spks)]
        for row in rows:
            info = soundfile.info(str(demo.root / row[0]))
            assert (info.format, info.subtype, info.samplerate, info.channels) == ('WAV', 'FLOAT', sample_rate, 1)
            mixture = read(demo.root / row[0])
            sources = [read(demo.root / path) for path in row[1:1 + num_spks]]
            total = sources[0].copy()
            for source in sources[1:]:
                total += source
            np.testing.assert_array_equal(mixture, total)
            assert np.abs(np.stack([mixture, *sources])).max() <= 0.9 + 1e-6
            levels_db = [20 * np.log10(np.sqrt(np.mean(source.astype(np.float64) ** 2))) for source in sources]
            assert max(levels_db) - min(levels_db) <= 5.0 + 1e-3


def test_utterance_length_dtype_and_seed():
    voice = make_voices(4, seed=0)[0]
    for seconds, sample_rate in [(0.5, 8000), (1.2345, 16000), (3.0, 8000)]:
        wave = synthesize_utterance(voice, seconds, sample_rate, np.random.default_rng(3))
        assert wave.dtype == np.float32 and wave.shape == (round(seconds * sample_rate),)
        assert np.all(np.isfinite(wave))
    first = synthesize_utterance(voice, 1.0, 8000, np.random.default_rng(5))
    np.testing.assert_array_equal(first, synthesize_utterance(voice, 1.0, 8000, np.random.default_rng(5)))
    assert not np.array_equal(first, synthesize_utterance(voice, 1.0, 8000, np.random.default_rng(6)))


def test_voice_pool_is_stable_and_spread():
    voices = make_voices(16, seed=0)
    assert voices == make_voices(16, seed=0) and voices != make_voices(16, seed=1)
    assert len({voice.voice_id for voice in voices}) == 16
    centres = sorted(voice.f0_centre for voice in voices)
    assert centres[0] < 125 and centres[-1] > 270
    assert 80 <= min(voice.f0_low for voice in voices) and max(voice.f0_high for voice in voices) <= 400
    assert {voice.register for voice in voices} == {'low male', 'male', 'female', 'child'}


# ----------------------------------------------------------------------------------------------
# Speech-likeness, measured

def frames(wave: np.ndarray, sample_rate: int, seconds: float, hop_seconds: float = 0.01) -> np.ndarray:
    """[T] -> [N, L] overlapping frames."""
    length, hop = int(seconds * sample_rate), int(hop_seconds * sample_rate)
    return np.lib.stride_tricks.sliding_window_view(wave.astype(np.float64), length)[::hop]


def pitch_track(wave: np.ndarray, sample_rate: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per 40 ms frame: F0 from the normalised autocorrelation (60-500 Hz) and whether the frame is voiced.

    The pick is the first lag whose correlation comes within 10 % of the best peak, which avoids
    the sub-harmonic (octave-down) errors of a plain argmax.
    """
    chunks = frames(wave, sample_rate, 0.04)
    length = chunks.shape[1]
    centred = chunks - chunks.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(centred, 2 * length, axis=1)) ** 2
    correlation = np.fft.irfft(power, axis=1)[:, :length]
    correlation = correlation / np.maximum(correlation[:, :1], 1e-12) * length / (length - np.arange(length))
    low_lag, high_lag = int(sample_rate / 500), int(sample_rate / 60)
    window = correlation[:, low_lag:high_lag]
    best = window.max(axis=1)
    f0 = np.full(len(chunks), np.nan)
    for index, (row, peak) in enumerate(zip(window, best)):
        if peak <= 0:
            continue
        start = int(np.flatnonzero(row >= 0.9 * peak)[0])
        stop = start
        while stop + 1 < row.size and row[stop + 1] >= 0.9 * peak:
            stop += 1
        f0[index] = sample_rate / (low_lag + start + int(np.argmax(row[start:stop + 1])))
    energy = np.mean(chunks ** 2, axis=1)
    voiced = (best > 0.6) & (energy > energy.max() * 10 ** -2.5)
    return f0, voiced


def spectral_centroid(wave: np.ndarray, sample_rate: int) -> float:
    """Centroid of the long-term power spectrum, Hz."""
    chunks = frames(wave, sample_rate, 0.032, 0.016)
    power = (np.abs(np.fft.rfft(chunks * np.hanning(chunks.shape[1]), axis=1)) ** 2).sum(axis=0)
    freqs = np.fft.rfftfreq(chunks.shape[1], 1.0 / sample_rate)
    return float(np.sum(power * freqs) / np.sum(power))


def modulation_peak(wave: np.ndarray, sample_rate: int) -> float:
    """Dominant modulation frequency (0.5-20 Hz) of the frame-energy envelope (RMS of 20 ms frames every 10 ms).

    Dominant in energy per octave (power spectrum x f), the scale on which speech modulation
    spectra are read and peak at 4-5 Hz (Ding et al., 2017).
    """
    envelope = np.sqrt(np.mean(frames(wave, sample_rate, 0.02) ** 2, axis=1))
    power = np.abs(np.fft.rfft((envelope - envelope.mean()) * np.hanning(envelope.size), 8192)) ** 2
    freqs = np.fft.rfftfreq(8192, 0.01)
    band = (freqs >= 0.5) & (freqs <= 20.0)
    return float(freqs[band][np.argmax((power * freqs)[band])])


def spread_voices() -> List[VoiceParams]:
    """Four voices of the default pool from the deepest to the highest."""
    voices = sorted(make_voices(16, seed=0), key=lambda voice: voice.f0_centre)
    return [voices[0], voices[5], voices[10], voices[15]]


@pytest.fixture(scope='module', params=[8000, 16000])
def utterances(request) -> Tuple[int, List[Tuple[VoiceParams, np.ndarray]]]:
    """8 s of speech from each spread voice."""
    sample_rate = request.param
    return sample_rate, [(voice, synthesize_utterance(voice, 8.0, sample_rate, np.random.default_rng(index)))
                         for index, voice in enumerate(spread_voices())]


def test_voiced_frames_have_pitch_in_the_voice_range(utterances):
    sample_rate, items = utterances
    for voice, wave in items:
        f0, voiced = pitch_track(wave, sample_rate)
        assert voiced.mean() > 0.3, voice
        in_range = (f0[voiced] >= 0.9 * voice.f0_low) & (f0[voiced] <= 1.1 * voice.f0_high)
        assert in_range.mean() > 0.9, (voice, in_range.mean())


def test_voices_differ_in_median_f0_and_spectral_centroid(utterances):
    sample_rate, items = utterances
    voices = make_voices(16, seed=0)
    medians, centroids = [], []
    for index, voice in enumerate(voices):
        wave = synthesize_utterance(voice, 4.0, sample_rate, np.random.default_rng(100 + index))
        f0, voiced = pitch_track(wave, sample_rate)
        medians.append(np.median(f0[voiced]))
        centroids.append(spectral_centroid(wave, sample_rate))
    # pitch follows each voice's F0 range; from the deepest to the highest voice it rises step by step
    assert stats.spearmanr([voice.f0_centre for voice in voices], medians).statistic > 0.95
    spread = []
    for _, wave in items:
        f0, voiced = pitch_track(wave, sample_rate)
        spread.append(np.median(f0[voiced]))
    assert all(high > 1.15 * low for low, high in zip(spread, spread[1:])), spread
    # timbre follows the vocal-tract length: shorter tracts (larger formant_scale) sound brighter
    assert stats.spearmanr([voice.formant_scale for voice in voices], centroids).statistic > 0.6
    assert max(centroids) > 1.4 * min(centroids), centroids


def test_energy_envelope_is_modulated_at_the_syllable_rate(utterances):
    sample_rate, items = utterances
    for voice, wave in items:
        assert 2.0 <= modulation_peak(wave, sample_rate) <= 8.0, voice


def test_speech_has_silent_and_unvoiced_stretches(utterances):
    sample_rate, items = utterances
    for voice, wave in items:
        chunks = frames(wave, sample_rate, 0.04)
        energy = np.mean(chunks ** 2, axis=1)
        assert np.mean(energy < energy.max() * 1e-3) > 0.05, voice   # pauses and closures, 30 dB down
        _, voiced = pitch_track(wave, sample_rate)
        crossings = np.mean(np.abs(np.diff(np.sign(chunks), axis=1)) > 0, axis=1)
        fricative = ~voiced & (energy > energy.max() * 1e-3) & (crossings > 0.3)
        assert fricative.mean() > 0.02, voice   # noisy frames without pitch


# ----------------------------------------------------------------------------------------------
# Arguments

@pytest.mark.parametrize('overrides, field', [
    (dict(sample_rate=22050), 'sample_rate'),
    (dict(num_spks=4), 'num_spks'),
    (dict(num_spks=True), 'num_spks'),
    (dict(train_mixtures=0), 'train_mixtures'),
    (dict(validation_mixtures=-1), 'validation_mixtures'),
    (dict(test_mixtures=1.5), 'test_mixtures'),
    (dict(min_seconds=0.1), 'min_seconds'),
    (dict(max_seconds=float('nan')), 'max_seconds'),
    (dict(min_seconds=3.0, max_seconds=2.0), 'max_seconds'),
    (dict(num_voices=0), 'num_voices'),
    (dict(num_voices=7), 'train'),
    (dict(validation_voices=1), 'validation'),
    (dict(test_voices=0), 'test_voices'),
    (dict(seed=-1), 'seed'),
])
def test_spec_rejects_bad_fields(overrides, field):
    with pytest.raises(ValueError, match=field):
        small_spec(**overrides)


def test_other_argument_errors(tmp_path):
    voice = make_voices(2, seed=0)[0]
    with pytest.raises(ValueError, match='num_voices'):
        make_voices(0)
    with pytest.raises(ValueError, match='seed'):
        make_voices(3, seed=-2)
    with pytest.raises(ValueError, match='seconds'):
        synthesize_utterance(voice, 0.1, 8000, np.random.default_rng(0))
    with pytest.raises(ValueError, match='sample_rate'):
        synthesize_utterance(voice, 1.0, 44100, np.random.default_rng(0))
    with pytest.raises(TypeError, match='rng'):
        synthesize_utterance(voice, 1.0, 8000, 0)
    with pytest.raises(TypeError, match='spec'):
        generate_demo_corpus(tmp_path, dict(sample_rate=8000))
    with pytest.raises(ValueError, match='whitespace'):
        generate_demo_corpus(tmp_path / 'with space', small_spec())
    assert DemoCorpusSpec() == DemoCorpusSpec(sample_rate=8000, num_spks=2, train_mixtures=160, validation_mixtures=20,
                                              test_mixtures=20, min_seconds=2.0, max_seconds=4.0, num_voices=16,
                                              validation_voices=3, test_voices=3, seed=0)


# ----------------------------------------------------------------------------------------------
# Re-use, refusal, overwrite

def modification_times(root: Path) -> Dict[str, int]:
    return {path.relative_to(root).as_posix(): path.stat().st_mtime_ns for path in root.rglob('*') if path.is_file()}


def test_same_spec_is_reused_and_another_refused(tmp_path, caplog):
    spec = small_spec(train_mixtures=2, validation_mixtures=1, test_mixtures=1)
    first = generate_demo_corpus(tmp_path, spec)
    before = modification_times(tmp_path)
    with caplog.at_level(logging.INFO, logger='modelscope_mossformer.data.synth'):
        again = generate_demo_corpus(tmp_path, spec)
    assert again == first
    assert 'not regenerating' in caplog.text
    assert modification_times(tmp_path) == before

    with pytest.raises(ValueError, match='different spec.*seed'):
        generate_demo_corpus(tmp_path, small_spec(train_mixtures=2, validation_mixtures=1, test_mixtures=1, seed=4))
    assert modification_times(tmp_path) == before

    other = small_spec(train_mixtures=3, validation_mixtures=1, test_mixtures=1, sample_rate=16000)
    replaced = generate_demo_corpus(tmp_path, other, overwrite=True)
    assert json.loads((tmp_path / CORPUS_JSON).read_text())['spec']['sample_rate'] == 16000
    assert not (tmp_path / 'wav8k').exists()   # the old tree is gone, nothing stale is left
    assert len(csv_rows(replaced.csv['train'])[1]) == 3


def test_unfinished_corpus_is_generated_again(tmp_path):
    spec = small_spec(train_mixtures=2, validation_mixtures=1, test_mixtures=1)
    generate_demo_corpus(tmp_path, spec)
    record = json.loads((tmp_path / CORPUS_JSON).read_text())
    record['status'] = 'incomplete'
    (tmp_path / CORPUS_JSON).write_text(json.dumps(record))
    (tmp_path / 'wav8k' / 'min' / 'dev' / 'stale.wav').write_bytes(b'')
    generate_demo_corpus(tmp_path, spec)
    assert json.loads((tmp_path / CORPUS_JSON).read_text())['status'] == 'complete'
    assert not (tmp_path / 'wav8k' / 'min' / 'dev' / 'stale.wav').exists()


def test_corpus_of_another_generator_version_is_refused(tmp_path):
    spec = small_spec(train_mixtures=2, validation_mixtures=1, test_mixtures=1)
    generate_demo_corpus(tmp_path, spec)
    record = json.loads((tmp_path / CORPUS_JSON).read_text())
    record['format_version'] = 0
    (tmp_path / CORPUS_JSON).write_text(json.dumps(record))
    with pytest.raises(ValueError, match='format_version'):
        generate_demo_corpus(tmp_path, spec)
    (tmp_path / CORPUS_JSON).write_text('{not json')
    with pytest.raises(ValueError, match='overwrite=True'):
        generate_demo_corpus(tmp_path, spec)
    generate_demo_corpus(tmp_path, spec, overwrite=True)
    assert json.loads((tmp_path / CORPUS_JSON).read_text())['status'] == 'complete'


def test_foreign_librimix_folder_is_not_written_into(tmp_path):
    foreign = tmp_path / 'wav8k' / 'min' / 'dev' / 'mix_clean'
    foreign.mkdir(parents=True)
    (foreign / 'real.wav').write_bytes(b'RIFF')
    spec = small_spec(train_mixtures=2, validation_mixtures=1, test_mixtures=1)
    with pytest.raises(ValueError, match='overwrite=True'):
        generate_demo_corpus(tmp_path, spec)
    generate_demo_corpus(tmp_path, spec, overwrite=True)
    assert (foreign / 'real.wav').read_bytes() == b'RIFF'   # written into, never deleted


def test_moved_corpus_gets_its_scp_paths_rewritten(tmp_path):
    spec = small_spec(train_mixtures=2, validation_mixtures=1, test_mixtures=1)
    generate_demo_corpus(tmp_path / 'old', spec)
    shutil.move(str(tmp_path / 'old'), str(tmp_path / 'new'))
    moved = generate_demo_corpus(tmp_path / 'new', spec)
    for split in SPLITS:
        for path in moved.scp[split].read_text().split():
            assert path.startswith(str(moved.root) + '/') and Path(path).is_file()


def test_command_line(tmp_path, capsys):
    args = ['--out', str(tmp_path), '--train', '2', '--validation', '1', '--test', '1', '--min-seconds', '0.6',
            '--max-seconds', '0.8', '--num-voices', '9', '--validation-voices', '3', '--test-voices', '3',
            '--num-spks', '3', '--sample-rate', '16000']
    assert main(args) == 0
    printed = capsys.readouterr().out
    root = tmp_path.resolve()
    assert str(root / 'train.csv') in printed and str(root / 'wav16k' / 'min') in printed
    assert csv_rows(tmp_path / 'test.csv')[0][-4:] == ['s3_wav:FILE', 's1_spk', 's2_spk', 's3_spk']
    assert main(args + ['--seed', '3']) == 2
    assert 'different spec' in capsys.readouterr().err
    assert main(args + ['--seed', '3', '--overwrite']) == 0
