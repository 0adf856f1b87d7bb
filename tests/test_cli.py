"""The `mossformer` command: separate, evaluate, train end to end on tiny data; bad files; usage errors."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from modelscope_mossformer.cli import main, parse_overrides
from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus
from modelscope_mossformer.metainfo import Models

from .subprocess_utils import subprocess_env

TINY_MODEL_SECTION = {'type': Models.mossformer_8k, 'enc_channels': 32, 'model_dim': 32, 'num_blocks': 1,
                      'group_size': 16, 'query_key_dim': 16}
QUIET = ['--device', 'cpu', '--no-progress']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return generate_demo_corpus(tmp_path_factory.mktemp('corpus'), DemoCorpusSpec(
        train_mixtures=4, validation_mixtures=1, test_mixtures=2, min_seconds=1.0, max_seconds=1.0,
        num_voices=6, validation_voices=2, test_voices=2))


def read_report(path):
    with open(path, newline='') as handle:
        return {row['id']: row for row in csv.DictReader(handle)}


def tone(seconds: float, rate: int, level: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 330 * t + 1.0))).astype(np.float32)


def test_python_m_runs_the_command():
    proc = subprocess.run([sys.executable, '-m', 'modelscope_mossformer', '--help'], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('usage: mossformer')
    assert all(command in proc.stdout for command in ('separate', 'evaluate', 'train', 'examples:'))


@pytest.mark.parametrize('command, expected', [
    ('separate', ('--chunk-seconds', '--overlap-seconds', '--device', 'bf16', 'report.csv', 'examples:')),
    ('evaluate', ('--data', '--split', 'SI-SNRi', 'examples:')),
    ('train', ('--config', '--set', '--work-dir', 'resumes', 'examples:')),
])
def test_subcommand_help_explains_itself(capsys, command, expected):
    assert main([command, '--help']) == 0
    text = capsys.readouterr().out
    assert text.startswith(f'usage: mossformer {command}')
    assert all(word in text for word in expected), [word for word in expected if word not in text]


def test_separate_continues_past_bad_files(tmp_path, model_dir, capsys):
    inputs = tmp_path / 'inputs'
    (inputs / 'sub').mkdir(parents=True)
    soundfile.write(str(inputs / 'good.wav'), tone(1.0, 8000), 8000)
    stereo = np.stack([tone(0.7, 44100), tone(0.7, 44100, 0.05)], axis=1)
    soundfile.write(str(inputs / 'sub' / 'stereo.flac'), stereo, 44100)
    soundfile.write(str(inputs / 'silent.wav'), np.zeros(8000, np.float32), 8000)
    soundfile.write(str(inputs / 'clipped.wav'), np.clip(tone(1.0, 8000, 2.0), -1, 1), 8000)
    nan = tone(1.0, 8000)
    nan[4000] = np.nan
    soundfile.write(str(inputs / 'nan.wav'), nan, 8000, subtype='FLOAT')
    soundfile.write(str(inputs / 'empty.wav'), np.zeros(0, np.float32), 8000)
    (inputs / 'broken.wav').write_bytes(b'RIFF but not really a wav file')
    out = tmp_path / 'out'

    status = main(['separate', str(inputs), str(tmp_path / 'missing.wav'), '--model', str(model_dir), '--out',
                   str(out), '--chunk-seconds', '0.5', '--overlap-seconds', '0.1', *QUIET])

    assert status == 1
    for name, rate, frames in (('good', 8000, 8000), ('sub/stereo', 44100, stereo.shape[0]),
                               ('silent', 8000, 8000), ('clipped', 8000, 8000)):
        for speaker in (1, 2):
            info = soundfile.info(str(out / f'{name}_s{speaker}.wav'))
            assert (info.samplerate, info.frames, info.channels) == (rate, frames, 1), name
    assert not soundfile.read(str(out / 'silent_s1.wav'))[0].any()
    report = read_report(out / 'report.csv')
    assert {k: r['status'] for k, r in report.items()} == {
        'good': 'ok', 'stereo': 'ok', 'silent': 'ok', 'clipped': 'ok', 'nan': 'failed', 'empty': 'failed',
        'broken': 'failed', 'missing': 'failed'}
    assert 'silent' in report['silent']['message'] and 'clipping' in report['clipped']['message']
    assert 'non-finite' in report['nan']['message'] and 'sample 4000' in report['nan']['message']
    assert 'empty audio' in report['empty']['message']
    assert 'unreadable audio' in report['broken']['message']
    assert 'file not found' in report['missing']['message']
    assert not list(out.glob('nan_s*.wav')) and not list(out.rglob('.*.wav'))  # nothing half-written
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['total'], summary['ok'], summary['failed']) == (8, 4, 4)
    assert capsys.readouterr().err.count('FAILED') == 4


def test_separate_a_mixture_list_exits_0(tmp_path, model_dir):
    soundfile.write(str(tmp_path / 'a.wav'), tone(0.5, 8000), 8000)
    soundfile.write(str(tmp_path / 'b.wav'), tone(0.5, 16000), 16000)
    (tmp_path / 'list.scp').write_text('a.wav\n# a comment\nb.wav\n')
    assert main(['separate', str(tmp_path / 'list.scp'), '--model', str(model_dir), '--out', str(tmp_path / 'out'),
                 *QUIET]) == 0
    assert sorted(p.name for p in (tmp_path / 'out').glob('*.wav')) == ['a_s1.wav', 'a_s2.wav', 'b_s1.wav',
                                                                         'b_s2.wav']
    assert soundfile.info(str(tmp_path / 'out' / 'b_s1.wav')).samplerate == 16000


@pytest.mark.parametrize('data', ['csv', 'scp', 'librimix'])
def test_evaluate_writes_per_file_scores_and_a_summary(tmp_path, corpus, model_dir, data):
    sources = {'csv': [str(corpus.csv['test'])], 'scp': [str(corpus.scp['test'])],
               'librimix': [str(corpus.librimix_root), '--split', 'test']}[data]
    out = tmp_path / 'eval'
    assert main(['evaluate', '--model', str(model_dir), '--data', *sources, '--out', str(out), *QUIET]) == 0
    report = read_report(out / 'report.csv')
    rows = [row for key, row in report.items() if key != 'MEAN']
    assert len(rows) == 2 and all(row['status'] == 'ok' for row in rows)
    for row in rows:
        assert all(np.isfinite(float(row[key])) for key in ('si-snr', 'si-snri', 'sdr', 'sdri'))
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['scored'] == 2 and set(summary['means']) == {'si-snr', 'si-snri', 'sdr', 'sdri'}
    assert summary['means']['si-snri'] == pytest.approx(np.mean([float(r['si-snri']) for r in rows]), abs=1e-3)


def test_train_with_overrides_then_separate_with_the_best_model(tmp_path, corpus, capsys):
    config = tmp_path / 'tiny.json'
    config.write_text(json.dumps({'framework': 'pytorch', 'task': 'speech-separation', 'model': TINY_MODEL_SECTION,
                                  'train': {'lr': 1e-3}}))
    work = tmp_path / 'work'
    status = main(['train', '--config', str(config), '--train', str(corpus.csv['train']), '--valid',
                   str(corpus.csv['validation']), '--work-dir', str(work), '--max-epochs', '1',
                   '--set', 'segment_seconds=0.5', '--set', 'batch_size=2',
                   '--set', 'augment.random_gain_db=[-1, 1]', *QUIET])
    assert status == 0
    assert 'best model:' in capsys.readouterr().out
    train_section = json.loads((work / 'best_model' / 'configuration.json').read_text())['train']
    # written in the released spelling (optimizer.lr), which ModelScope's built-in trainer reads too
    assert (train_section['segment_seconds'], train_section['batch_size'], train_section['optimizer']['lr']) == \
        (0.5, 2, 1e-3)
    assert train_section['augment']['random_gain_db'] == [-1, 1] and train_section['max_epochs'] == 1
    mixture = corpus.split_dir('test') / 'mix_clean'
    assert main(['separate', str(mixture), '--model', str(work / 'best_model'), '--out', str(tmp_path / 'sep'),
                 *QUIET]) == 0
    assert len(list((tmp_path / 'sep').glob('*_s2.wav'))) == 2


@pytest.mark.parametrize('argv, message', [
    ([], None),
    (['separate', 'x.wav'], 'required: --model, --out'),
    (['separate', 'x.wav', '--model', '/no/such/dir', '--out', 'o'], 'no such directory'),
    (['separate', 'x.wav', '--model', '{model}', '--out', 'o', '--precision', 'fp16', '--device', 'cpu'],
     'fp16 needs CUDA'),
    (['separate', 'x.wav', '--model', '{model}', '--out', 'o', '--chunk-seconds', '2', '--overlap-seconds', '3'],
     'must be above 0 and below'),
    (['separate', 'x.wav', '--model', '{model}', '--out', 'o', '--device', 'tpu'], 'expected auto, cpu, cuda'),
    (['evaluate', '--model', '{model}', '--data', '/no/such.csv', '--out', 'o'], 'no such file'),
    (['train', '--config', '{model}', '--train', '/no/such.csv', '--valid', 'v.csv', '--work-dir', 'w'],
     'no such file'),
    (['train', '--config', '{model}', '--train', '{model}', '--valid', '{model}', '--work-dir', '{tmp}/w', '--set',
      'no_such_key=1', '--device', 'cpu'], 'unknown configuration key train.no_such_key'),
    (['train', '--config', '{model}', '--train', '{model}', '--valid', '{model}', '--work-dir', '{tmp}/w', '--set',
      'lr'], 'expected KEY=VALUE'),
    (['separate', 'x.wav', '--model', '{model}', '--out', 'o', '--threads', '0'], 'at least 1'),
    (['separate', 'x.wav', '--model', '{model}', '--out', 'o', '--batch-chunks', '0'],
     '--batch-chunks 0: must be at least 1'),
])
def test_usage_errors_exit_2_with_a_message(tmp_path, model_dir, capsys, argv, message):
    argv = [arg.format(model=model_dir, tmp=tmp_path) for arg in argv]
    assert main(argv) == 2
    if message:
        assert message in capsys.readouterr().err


def test_cuda_is_refused_when_absent(model_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    assert main(['separate', 'x.wav', '--model', str(model_dir), '--out', 'o', '--device', 'cuda']) == 2
    assert 'CUDA is not available' in capsys.readouterr().err


def test_a_broken_manifest_is_a_usage_error(tmp_path, model_dir, capsys):
    bad = tmp_path / 'bad.csv'
    bad.write_text('mix_wav:FILE,s1_wav:FILE,s2_wav:FILE\nonly_one_field\n')
    assert main(['evaluate', '--model', str(model_dir), '--data', str(bad), '--out', str(tmp_path / 'o'),
                 *QUIET]) == 2
    assert 'bad.csv:2' in capsys.readouterr().err


def test_parse_overrides_reads_json_values_and_dotted_keys():
    assert parse_overrides(['lr=5e-4', 'augment.dynamic_mixing=true', 'augment.speeds=[90, 100]',
                            'init_checkpoint=/some/path', 'precision=bf16']) == {
        'lr': 5e-4, 'augment': {'dynamic_mixing': True, 'speeds': [90, 100]}, 'init_checkpoint': '/some/path',
        'precision': 'bf16'}
