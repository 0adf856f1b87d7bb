"""PESQ / STOI / ESTOI in evaluation (`perceptual`, the optional ``metrics`` extra): known values, the speaker
assignment of PIT SI-SNR, rates, unscorable utterances, missing packages, and the trainer and the CLI agreeing.

Neither the pesq nor the pystoi distribution ships test vectors (pystoi's tests compare with MATLAB at run time;
pesq's sdist has none), so the checks are the values known from the standards: the maximum PESQ of a signal
against itself (P.862.1 narrow band 4.549, P.862.2 wide band 4.644), STOI / ESTOI of identical signals 1, and
scores that fall as noise is added.
"""
import csv
import json
import logging
import sys

import numpy as np
import pytest
import soundfile
import torch
from modelscope.metainfo import Trainers
from modelscope.trainers import build_trainer

from modelscope_mossformer.cli import main
from modelscope_mossformer.data.audio import resample, write_audio
from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus, make_voices, synthesize_utterance
from modelscope_mossformer.metrics import separation_scores
from modelscope_mossformer.perceptual import (METRIC_CHOICES, count_unscored, parse_metric_names, perceptual_scores,
                                              resolve_metrics)
from modelscope_mossformer.train_config import resolve_train_config

from .released import write_released_model_dir

pesq = pytest.importorskip('pesq')
pystoi = pytest.importorskip('pystoi')


def voices(sample_rate, seconds=1.5, count=2):
    """`count` synthetic utterances (different voices) at `sample_rate`, float64 [count, T]."""
    speakers = make_voices(count, seed=3)
    return np.stack([synthesize_utterance(v, seconds, sample_rate, np.random.default_rng(i)).astype(np.float64)
                     for i, v in enumerate(speakers)])


def noisy(clean, snr_db, seed=0):
    noise = np.random.default_rng(seed).standard_normal(clean.shape)
    return clean + noise * np.sqrt((clean ** 2).mean() / (noise ** 2).mean() / 10 ** (snr_db / 10))


# -- known values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('rate, key, maximum', [(8000, 'pesq-nb', 4.549), (16000, 'pesq-wb', 4.644),
                                                (16000, 'pesq-nb', 4.549)])
def test_pesq_of_a_signal_against_itself_is_the_maximum(rate, key, maximum):
    refs = torch.from_numpy(voices(rate))
    scores = perceptual_scores(refs, refs, rate, (key,))
    # the standards' mapping of zero disturbance, 4.5486 (P.862.1) and 4.6439 (P.862.2): 1e-3 is their rounding
    assert scores[key] == pytest.approx(maximum, abs=1e-3)


@pytest.mark.parametrize('rate', [8000, 16000])
def test_stoi_of_identical_signals_is_one(rate):
    refs = torch.from_numpy(voices(rate))
    scores = perceptual_scores(refs, refs, rate, ('stoi', 'estoi'))
    # correlation of identical envelopes: 1 up to float64 rounding of the normalisations
    assert scores['stoi'] == pytest.approx(1.0, abs=1e-9) and scores['estoi'] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize('rate, keys', [(8000, ('pesq-nb', 'stoi', 'estoi')), (16000, ('pesq-wb', 'stoi', 'estoi'))])
def test_every_metric_falls_as_noise_is_added(rate, keys):
    clean = voices(rate)
    refs = torch.from_numpy(clean)
    by_snr = [perceptual_scores(torch.from_numpy(noisy(clean, snr)), refs, rate, keys) for snr in (30, 20, 10, 0)]
    for key in keys:
        values = [scores[key] for scores in by_snr]
        assert all(a > b for a, b in zip(values, values[1:])), (key, values)
    assert by_snr[-1]['stoi'] < 0.9 and by_snr[0]['stoi'] > 0.95  # far from both ends: a real scale


# -- with the speaker assignment of PIT SI-SNR ----------------------------------------------------------


def test_separation_scores_use_the_pit_assignment_and_agree_with_direct_calls():
    rate = 8000
    clean = voices(rate)
    estimates = np.stack([noisy(clean[0], 15, seed=1), noisy(clean[1], 5, seed=2)])
    swapped = torch.from_numpy(estimates[::-1].copy())  # the model put speaker 2 first
    mix = torch.from_numpy(clean.sum(0))
    scores = separation_scores(swapped, torch.from_numpy(clean), mix, perceptual=('pesq-nb', 'stoi', 'estoi'),
                               sample_rate=rate)
    direct_pesq = np.mean([pesq.pesq(rate, clean[j], estimates[j], 'nb') for j in range(2)])
    direct_stoi = np.mean([pystoi.stoi(clean[j], estimates[j], rate) for j in range(2)])
    direct_estoi = np.mean([pystoi.stoi(clean[j], estimates[j], rate, extended=True) for j in range(2)])
    # the same float64 signals through the same functions: equal but for the last bits of numpy's vectorised
    # sums, which depend on how the arrays are laid out in memory (1e-12 relative is far below any real change)
    assert scores['pesq-nb'] == pytest.approx(direct_pesq, rel=1e-12)
    assert scores['stoi'] == pytest.approx(direct_stoi, rel=1e-12)
    assert scores['estoi'] == pytest.approx(direct_estoi, rel=1e-12)
    # and not what the swapped order would score
    assert scores['stoi'] > np.mean([pystoi.stoi(clean[j], estimates[1 - j], rate) for j in range(2)]) + 0.1
    with pytest.raises(ValueError, match='need the sample_rate'):
        separation_scores(swapped, torch.from_numpy(clean), mix, perceptual=('stoi',))


# -- names and rates -------------------------------------------------------------------------------------


def test_names_resolve_to_one_key_per_band_and_bad_names_are_refused():
    assert resolve_metrics(['pesq', 'stoi', 'estoi'], 8000) == ('pesq-nb', 'stoi', 'estoi')
    assert resolve_metrics(['pesq'], 16000) == ('pesq-wb',)
    assert resolve_metrics(['pesq', 'pesq-nb'], 16000) == ('pesq-wb', 'pesq-nb')
    assert resolve_metrics(['pesq', 'PESQ_NB'], 8000) == ('pesq-nb',)  # one column per band, however spelt
    assert parse_metric_names(' PESQ, stoi ,', '--metrics') == ('pesq', 'stoi')
    with pytest.raises(ValueError, match=r"--metrics: unknown metric 'mos'; choose from \['pesq'"):
        parse_metric_names('pesq,mos', '--metrics')
    with pytest.raises(ValueError, match=r'pesq-wb needs audio at 16000 Hz or more, the audio is at 8000 Hz'):
        resolve_metrics(['pesq-wb'], 8000)
    with pytest.raises(ValueError, match=r'pesq-nb needs audio at 8000 Hz or more'):
        resolve_metrics(['pesq'], 6000)
    assert set(METRIC_CHOICES) == {'pesq', 'pesq-nb', 'pesq-wb', 'stoi', 'estoi'}


@pytest.mark.parametrize('rate, key, band_rate', [(22050, 'pesq-wb', 16000), (12000, 'pesq-nb', 8000),
                                                  (48000, 'pesq-nb', 8000)])
def test_pesq_at_other_rates_resamples_down_to_its_band(rate, key, band_rate):
    base = voices(16000)
    refs = resample(torch.from_numpy(base), 16000, rate)
    ests = resample(torch.from_numpy(noisy(base, 10)), 16000, rate)
    names = ['pesq'] if key == 'pesq-wb' or rate < 16000 else [key]
    assert resolve_metrics(names, rate) == (key,)
    scores = perceptual_scores(ests, refs, rate, (key,))
    down_refs, down_ests = resample(refs, rate, band_rate).numpy(), resample(ests, rate, band_rate).numpy()
    direct = np.mean([pesq.pesq(band_rate, down_refs[j], down_ests[j], key[-2:]) for j in range(2)])
    assert scores[key] == direct  # the package's soxr resampling, then PESQ at its own rate
    assert 1.0 < scores[key] < 4.0  # 10 dB of white noise: a poor, not a broken score


# -- utterances a metric cannot score --------------------------------------------------------------------


def test_silent_and_too_short_utterances_are_nan_with_a_warning(caplog):
    rate = 8000
    clean = voices(rate)
    caplog.set_level(logging.WARNING, logger='modelscope_mossformer')
    silent = torch.from_numpy(np.stack([clean[0], np.zeros_like(clean[1])]))
    scores = perceptual_scores(torch.from_numpy(clean), silent, rate, ('pesq-nb', 'stoi', 'estoi'), name='mix_07')
    assert all(np.isnan(scores[k]) for k in ('pesq-nb', 'stoi', 'estoi'))
    assert "mix_07: pesq-nb not computed (reference source(s) [2] are silent)" in caplog.text
    caplog.clear()
    short = torch.from_numpy(clean[:, :int(0.2 * rate)].copy())  # PESQ needs 1/4 s, STOI 30 frames of speech
    scores = perceptual_scores(short, short, rate, ('pesq-nb', 'stoi'), name='short_one')
    assert np.isnan(scores['pesq-nb']) and np.isnan(scores['stoi'])  # not pystoi's stand-in value 1e-5
    assert 'short_one: pesq-nb not computed (PESQ: Buffer needs to be at least 1/4 of a second long)' in caplog.text
    assert 'short_one: stoi not computed (fewer than 30 frames' in caplog.text
    assert count_unscored([scores, {'pesq-nb': 2.0, 'stoi': 0.5}], ('pesq-nb', 'stoi')) == {'pesq-nb': 1, 'stoi': 1}
    caplog.clear()
    # a model that outputs digital silence for a speaker: pesq's own code would fail (NaN to int); STOI is 0
    mute = torch.from_numpy(np.stack([clean[0], np.zeros_like(clean[1])]))
    scores = perceptual_scores(mute, torch.from_numpy(clean), rate, ('pesq-nb', 'stoi'), name='mute')
    assert np.isnan(scores['pesq-nb']) and 'mute: pesq-nb not computed (the estimate is digital silence' in caplog.text
    assert scores['stoi'] == pytest.approx(np.mean([pystoi.stoi(clean[0], clean[0], rate), 0.0]), abs=1e-9)


# -- missing packages --------------------------------------------------------------------------------------


@pytest.mark.parametrize('module, name, what', [('pesq', 'pesq', 'PESQ'), ('pystoi', 'stoi', 'STOI'),
                                                ('pystoi', 'estoi', 'ESTOI')])
def test_a_missing_package_names_the_extra(monkeypatch, module, name, what):
    monkeypatch.setitem(sys.modules, module, None)  # what `import pesq` sees when it is not installed
    with pytest.raises(ImportError, match=rf"^{what} needs the '{module}' package: pip install "
                                          r"'modelscope_mossformer\[metrics\]'"):
        resolve_metrics([name], 16000)


# -- the configuration key ---------------------------------------------------------------------------------


def test_eval_metrics_is_validated_and_empty_by_default():
    assert resolve_train_config()['eval_metrics'] == []
    assert resolve_train_config(({'eval_metrics': ['pesq', 'estoi']}, 'x'))['eval_metrics'] == ['pesq', 'estoi']
    with pytest.raises(ValueError, match=r"cfg.json: train.eval_metrics: unknown metric 'pesqq'"):
        resolve_train_config(({'eval_metrics': ['pesqq']}, 'cfg.json'))
    with pytest.raises(ValueError, match=r'cfg.json: train.eval_metrics must be a list'):
        resolve_train_config(({'eval_metrics': 'pesq'}, 'cfg.json'))


# -- trainer.evaluate and mossformer evaluate ------------------------------------------------------------


@pytest.fixture(scope='module')
def scored_setup(tmp_path_factory):
    """A random-weight tiny 8 kHz model; a test list of two demo mixtures and a third cut to 0.2 s, too short for
    PESQ (1/4 s) and STOI (30 frames), not for SI-SNR and SDR."""
    tmp = tmp_path_factory.mktemp('scoring')
    corpus = generate_demo_corpus(tmp / 'corpus', DemoCorpusSpec(
        train_mixtures=1, validation_mixtures=1, test_mixtures=2, min_seconds=1.0, max_seconds=1.2, seed=5))
    rows = list(csv.reader(open(corpus.csv['test'])))
    cut = []
    for column, relative in enumerate(rows[1]):
        if not rows[0][column].endswith(':FILE'):  # speaker-id columns (s1_spk ...) are copied as they are
            cut.append(relative)
            continue
        samples, rate = soundfile.read(str(corpus.csv['test'].parent / relative), dtype='float32')
        write_audio(tmp / f'short_{column}.wav', samples[:int(0.2 * rate)], rate)
        cut.append(str(tmp / f'short_{column}.wav'))
    test_csv = corpus.csv['test'].parent / 'with_short.csv'  # beside the corpus: its relative paths hold
    with open(test_csv, 'w', newline='') as handle:
        csv.writer(handle).writerows(rows + [cut])
    return tmp, test_csv, write_released_model_dir(tmp / 'model', 'mossformer', seed=2)


def test_trainer_evaluate_and_the_cli_agree_and_count_the_unscored(scored_setup, caplog):
    tmp, test_csv, model_dir = scored_setup
    caplog.set_level(logging.WARNING, logger='modelscope_mossformer')
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), eval_dataset=str(test_csv), work_dir=str(tmp / 'work'),
        train={'progressbar': False, 'eval_metrics': ['pesq', 'stoi', 'estoi']}))
    from_trainer = trainer.evaluate(None)
    keys = ('pesq-nb', 'stoi', 'estoi')  # an 8 kHz model: narrow-band PESQ
    assert set(from_trainer) == {'si-snr', 'si-snri', 'sdr', 'sdri'} | set(keys) | {f'{k}-unscored' for k in keys}
    assert all(from_trainer[f'{k}-unscored'] == 1 for k in keys)  # the short utterance
    assert 'evaluation: pesq-nb: 1 of 3' in caplog.text and 'short_0.wav): pesq-nb not computed' in caplog.text
    rows = list(csv.DictReader(open(tmp / 'work' / 'eval_results.csv')))
    assert len(rows) == 3 + 1 and rows[-1]['id'] == 'MEAN'
    per_utterance = rows[:-1]
    assert [r['pesq-nb'] == 'nan' for r in per_utterance] == [False] * (len(per_utterance) - 1) + [True]
    finite = [float(r['stoi']) for r in per_utterance[:-1]]
    assert float(rows[-1]['stoi']) == pytest.approx(np.mean(finite))  # the mean leaves the NaN out

    out = tmp / 'cli'
    assert main(['evaluate', '--model', str(model_dir), '--data', str(test_csv), '--out', str(out),
                 '--chunk-seconds', '0', '--subtype', 'FLOAT', '--device', 'cpu', '--no-progress',
                 '--metrics', 'pesq,stoi,estoi']) == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['unscored'] == {k: 1 for k in keys}
    for key in ('si-snr', 'si-snri', 'sdr', 'sdri') + keys:
        # the CLI scores what it wrote: the output after one level gain, as float32 files, each score rounded to
        # 4 decimals (up to 5e-5) in report.csv; narrow-band PESQ and STOI do not depend on one gain: 2e-4
        assert summary['means'][key] == pytest.approx(from_trainer[key], abs=2e-4), key
    report = list(csv.DictReader(open(out / 'report.csv')))
    assert {'pesq-nb', 'stoi', 'estoi'} <= set(report[0]) and report[-1]['id'] == 'MEAN'


def test_cli_metrics_errors_are_usage_errors(scored_setup, monkeypatch, capsys):
    tmp, test_csv, model_dir = scored_setup
    args = ['evaluate', '--model', str(model_dir), '--data', str(test_csv), '--out', str(tmp / 'bad'),
            '--device', 'cpu', '--no-progress']
    assert main(args + ['--metrics', 'pesq,mos']) == 2
    assert "--metrics: unknown metric 'mos'" in capsys.readouterr().err
    assert main(args + ['--metrics', 'pesq-wb']) == 2  # an 8 kHz model
    assert 'pesq-wb needs audio at 16000 Hz or more' in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, 'pystoi', None)
    assert main(args + ['--metrics', 'stoi']) == 2
    assert "STOI needs the 'pystoi' package: pip install 'modelscope_mossformer[metrics]'" in capsys.readouterr().err
    assert not (tmp / 'bad' / 'report.csv').exists()  # refused before anything was separated


def test_trainer_evaluate_without_the_package_names_the_extra(scored_setup, monkeypatch):
    tmp, test_csv, model_dir = scored_setup
    monkeypatch.setitem(sys.modules, 'pesq', None)
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), eval_dataset=str(test_csv), work_dir=str(tmp / 'work-missing'),
        train={'progressbar': False, 'eval_metrics': ['pesq']}))
    with pytest.raises(ImportError, match=r"PESQ needs the 'pesq' package: pip install 'modelscope_mossformer\[metrics"):
        trainer.evaluate(None)
    assert set(trainer.evaluate(None, metrics=[])) == {'si-snr', 'si-snri', 'sdr', 'sdri'}
