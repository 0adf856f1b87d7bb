"""No bad sample ruins a model silently, and every failure names its file.

* a sample at 3e38 (or a file scaled by 1e30) is refused at read time naming the file, or skipped and
  counted under ``bad_example_policy: skip``;
* weights that become non-finite are never checkpointed or exported: best_model/ keeps the last good one;
* a non-finite training loss names the examples of its batch;
* a NaN output is an error for that file in the pipeline and the CLI;
* a full disk names the place and the bytes; a 1-sample file, a binary list, a mistyped dataset folder
  each get an error naming the file; a kill inside the best-model export is repaired on the next start.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import shutil

import numpy as np
import pytest
import soundfile
import torch
from modelscope.metainfo import Trainers
from modelscope.pipelines import pipeline
from modelscope.trainers import build_trainer
from modelscope.utils.constant import Tasks

from modelscope_mossformer.cli import main
from modelscope_mossformer.data.audio import AudioError
from modelscope_mossformer.data.dataset import ExampleError
from modelscope_mossformer.data.manifest import ManifestError
from modelscope_mossformer.data.sources import load_split
from modelscope_mossformer.model import MossFormerSeparation
from modelscope_mossformer.models.checkpoint import read_checkpoint
from modelscope_mossformer.trainer import DiskFullError, NonFiniteLossError, NonFiniteWeightsError

from .released import write_released_model_dir
from .subprocess_utils import demo_corpus

QUIET = ['--device', 'cpu', '--no-progress']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return demo_corpus(tmp_path_factory.mktemp('reliability') / 'corpus', train_mixtures=2)


def rows(csv_path):
    with open(csv_path, newline='') as handle:
        return [{k: str((csv_path.parent / v).resolve()) for k, v in row.items()} for row in csv.DictReader(handle)]


def write_csv(path, table):
    with open(path, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return path


def with_broken_mixture(corpus, tmp_path, damage):
    """The training CSV with its last mixture replaced by `damage(samples)`; returns (csv, broken file)."""
    table = rows(corpus.csv['train'])
    broken = tmp_path / 'broken_mix.wav'
    data, rate = soundfile.read(table[-1]['mix_wav:FILE'], dtype='float32')
    soundfile.write(broken, damage(data), rate, subtype='FLOAT')
    table[-1]['mix_wav:FILE'] = str(broken)
    return write_csv(tmp_path / 'train.csv', table), broken


def args_for(model_dir, train_csv, corpus, work_dir, **train):
    return dict(model=str(model_dir), train_dataset=str(train_csv), eval_dataset=str(corpus.csv['validation']),
                work_dir=str(work_dir), max_epochs=1,
                train={'progressbar': False, 'segment_seconds': 0.5, **train})


def train_log(work_dir):
    return [dict(part.split(': ') for part in line.strip().split(', '))
            for line in (work_dir / 'train_log.txt').read_text().splitlines()]


@pytest.mark.parametrize('damage', [
    pytest.param(lambda x: np.where(np.arange(x.size) == 100, np.float32(3e38), x).astype(np.float32), id='3e38'),
    pytest.param(lambda x: (x * np.float32(1e30)).astype(np.float32), id='scaled-1e30'),
])
def test_an_absurd_sample_is_refused_naming_the_file_or_skipped(damage, corpus, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    train_csv, broken = with_broken_mixture(corpus, tmp_path, damage)
    with pytest.raises(ExampleError, match=re.escape(str(broken)) + r'.*magnitude .* more than 1000'):
        build_trainer(Trainers.speech_separation,
                      default_args=args_for(model_dir, train_csv, corpus, tmp_path / 'w1')).train()
    skipping = build_trainer(Trainers.speech_separation, default_args=args_for(
        model_dir, train_csv, corpus, tmp_path / 'w2', bad_example_policy='skip'))
    skipping.train()
    assert float(train_log(tmp_path / 'w2')[0]['train_skipped']) == 1
    best = read_checkpoint(tmp_path / 'w2' / 'best_model').state_dict
    assert all(torch.isfinite(value).all() for value in best.values())


def test_non_finite_weights_are_never_kept_and_the_loss_names_its_examples(corpus, tmp_path, caplog):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    train_csv = write_csv(tmp_path / 'train.csv', rows(corpus.csv['train']))
    args = args_for(model_dir, train_csv, corpus, tmp_path / 'work')
    build_trainer(Trainers.speech_separation, default_args=args).train()
    save = tmp_path / 'work' / 'save'
    first_checkpoints = sorted(p.name for p in save.glob('CKPT+*'))
    # weights gone bad (as after a diverged step): one NaN in the checkpointed separator
    (checkpoint,) = save.glob('CKPT+*')
    state = torch.load(checkpoint / 'separator.ckpt', weights_only=True)
    state[next(iter(state))].view(-1)[0] = float('nan')
    torch.save(state, checkpoint / 'separator.ckpt')
    caplog.set_level(logging.WARNING, logger='modelscope_mossformer')
    resumed = dict(args, max_epochs=2, train=dict(args['train'], nonfinite_patience=5))
    with pytest.raises(NonFiniteWeightsError, match=r'epoch 2: .* no longer finite .* the previous checkpoint and '
                                                    r'best_model/ are kept'):
        build_trainer(Trainers.speech_separation, default_args=resumed).train()
    assert 'non-finite training loss on ' in caplog.text and str(train_csv) in caplog.text
    assert sorted(p.name for p in save.glob('CKPT+*')) == first_checkpoints
    best = tmp_path / 'work' / 'best_model'
    assert json.loads((best / 'configuration.json').read_text())['train_result']['epoch'] == 1
    assert all(torch.isfinite(value).all() for value in read_checkpoint(best).state_dict.values())
    with pytest.raises(NonFiniteLossError, match=r'not finite 1 times \(nonfinite_patience 0\), the last time on '
                                                 r'.*train\.csv:\d+ \('):
        build_trainer(Trainers.speech_separation, default_args=dict(
            resumed, resume_with_new_settings=True, train=dict(resumed['train'], nonfinite_patience=0))).train()


@pytest.mark.parametrize('samples', [1, 15])
def test_a_file_shorter_than_the_encoder_kernel_is_a_bad_example(samples, corpus, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    table = rows(corpus.csv['train'])
    short = {}
    for column in table[-1]:
        short[column] = str(tmp_path / f'short_{column[:2]}.wav')
        soundfile.write(short[column], np.full(samples, 0.1, np.float32), 8000)
    train_csv = write_csv(tmp_path / 'train.csv', table + [short])
    with pytest.raises(ExampleError, match=rf'train\.csv:\d+ \(.*short_mi\.wav\): {samples} sample\(s\), shorter than '
                                           r"the model's encoder kernel \(16 samples\)"):
        build_trainer(Trainers.speech_separation,
                      default_args=args_for(model_dir, train_csv, corpus, tmp_path / 'w1')).train()
    build_trainer(Trainers.speech_separation, default_args=args_for(
        model_dir, train_csv, corpus, tmp_path / 'w2', bad_example_policy='skip')).train()
    assert float(train_log(tmp_path / 'w2')[0]['train_skipped']) == 1


def test_a_full_disk_names_the_place_and_keeps_the_last_checkpoint(corpus, tmp_path, monkeypatch):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    args = args_for(model_dir, corpus.csv['train'], corpus, tmp_path / 'work')
    build_trainer(Trainers.speech_separation, default_args=args).train()
    save = tmp_path / 'work' / 'save'
    before = sorted(p.name for p in save.glob('CKPT+*'))
    real_save = torch.save

    def full_disk(obj, f, *a, **k):  # what PyTorch raises when a write comes up short
        if 'CKPT+' in str(f):
            raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0')
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(DiskFullError, match=rf'no space left on the device holding {re.escape(str(save))}/'
                                            r'\.partial-CKPT\+.*: \d+ bytes free, about \d+ needed'):
        build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=2)).train()
    assert sorted(p.name for p in save.glob('CKPT+*')) == before
    assert not list(save.glob('.partial-*'))


def test_a_binary_list_and_a_mistyped_folder_are_named(tmp_path, capsys):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    binary = tmp_path / 'mixtures.scp'
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(['separate', str(binary), '--model', str(model_dir), '--out', str(tmp_path / 'o'), *QUIET]) == 2
    assert f'{binary}: not a text list (byte 128 is not UTF-8)' in capsys.readouterr().err
    with pytest.raises(ManifestError, match=r'/data/LibriMxi/wav8k/min: no such file or folder \(given as the train'):
        load_split('/data/LibriMxi/wav8k/min', 'train')
    with pytest.raises(ManifestError, match=r'\./my_dtaa: no such file or folder'):
        load_split('./my_dtaa', 'validation')


def test_a_kill_inside_the_best_model_export_is_repaired(corpus, tmp_path, caplog):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    work_dir = tmp_path / 'work'
    args = args_for(model_dir, corpus.csv['train'], corpus, work_dir)
    build_trainer(Trainers.speech_separation, default_args=args).train()
    best = work_dir / 'best_model'
    # the moment between the two renames: the new copy complete in .best_model.tmp, the old one moved aside
    shutil.copytree(best, work_dir / '.best_model.tmp')
    best.rename(work_dir / '.best_model.old')
    caplog.set_level(logging.WARNING, logger='modelscope_mossformer')
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(args, train_dataset=None))
    assert 'restored the complete new best model from .best_model.tmp' in caplog.text
    assert (best / 'configuration.json').is_file() and not (work_dir / '.best_model.tmp').exists()
    assert set(trainer.evaluate(None)) >= {'si-snr'}


def test_a_nan_output_is_an_error_for_that_file(corpus, tmp_path):
    model = MossFormerSeparation.from_pretrained(str(write_released_model_dir(tmp_path / 'model', 'mossformer')))
    with torch.no_grad():
        model.separator.decoder.deconv.weight.fill_(float('nan'))
    broken_dir = tmp_path / 'nan_model'
    model.save_model_dir(broken_dir)
    mix = rows(corpus.csv['test'])[0]['mix_wav:FILE']
    with pytest.raises(AudioError, match=re.escape(mix) + r': the model produced non-finite \(NaN/Inf\) output'):
        pipeline(Tasks.speech_separation, model=str(broken_dir))(mix)
    out = tmp_path / 'sep'
    assert main(['separate', mix, '--model', str(broken_dir), '--out', str(out), *QUIET]) == 1
    assert not list(out.glob('*.wav'))
    with open(out / 'report.csv', newline='') as handle:
        (row,) = [r for r in csv.DictReader(handle) if r['id'] != 'MEAN']
    assert row['status'] == 'failed' and 'non-finite' in row['message']
