"""A work_dir nobody can poison, one owner per run, and resumes that continue the same run.

* every file this package reads (checkpoint parts, RNG state, optimizer, scheduler, counter, model dirs,
  pointer targets, init_checkpoint) is read weights-only: a crafted pickle is refused naming the file and
  its code never runs;
* a second trainer on a work_dir in use fails naming the owner; a killed owner's lock is taken over;
* a resume with another model, seed or training data is refused naming the keys; changed training settings
  only with ``resume_with_new_settings``, and then they take effect;
* leftovers of a kill (a half-deleted checkpoint) are removed on the next start.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from modelscope.metainfo import Trainers
from modelscope.models import Model
from modelscope.trainers import build_trainer

from modelscope_mossformer.models.checkpoint import CheckpointError, UnsafeCheckpointError
from modelscope_mossformer.workdir import ResumeMismatchError, WorkDirBusyError

from .released import write_released_model_dir
from .subprocess_utils import demo_corpus, subprocess_env


class _RunsCode:
    """Unpickling this object runs `touch <marker>` (what an attacker's file would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def plant(path, marker, protocol_zero=False):
    """Replace `path` by a pickle that runs code when unpickled."""
    if protocol_zero:
        path.write_bytes(pickle.dumps(_RunsCode(marker), protocol=0))
    else:
        torch.save({'state': _RunsCode(marker)}, path)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return demo_corpus(tmp_path_factory.mktemp('safety') / 'corpus', train_mixtures=2)


def trainer_args(model_dir, corpus, work_dir, **extra):
    return dict(model=str(model_dir), train_dataset=str(corpus.csv['train']),
                eval_dataset=str(corpus.csv['validation']), work_dir=str(work_dir),
                train={'progressbar': False, 'segment_seconds': 0.5}, **extra)


@pytest.fixture
def trained(corpus, tmp_path):
    """A released-layout model dir and a work_dir with one finished epoch."""
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    work_dir = tmp_path / 'work'
    build_trainer(Trainers.speech_separation,
                  default_args=trainer_args(model_dir, corpus, work_dir, max_epochs=1)).train()
    return model_dir, work_dir


# ---------------------------------------------------------------------------
# nothing read from disk executes code
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('part', ['separator', 'optimizer', 'lr_scheduler', 'rng'])
def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_runs(part, trained, corpus, tmp_path):
    model_dir, work_dir = trained
    (checkpoint,) = (work_dir / 'save').glob('CKPT+*')
    marker = tmp_path / 'code_ran'
    plant(checkpoint / f'{part}.ckpt', marker)
    trainer = build_trainer(Trainers.speech_separation,
                            default_args=trainer_args(model_dir, corpus, work_dir, max_epochs=2))
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f'{checkpoint / part}.ckpt: refused to load')):
        trainer.train()
    assert not marker.exists()


@pytest.mark.parametrize('part, read', [('counter', True), ('brain', True), ('dataloader-TRAIN', False)])
def test_text_parts_of_a_checkpoint_are_parsed_as_text(part, read, trained, corpus, tmp_path):
    """SpeechBrain reads these as text (an int, safe YAML); the loader position only mid-epoch."""
    model_dir, work_dir = trained
    (checkpoint,) = (work_dir / 'save').glob('CKPT+*')
    marker = tmp_path / 'code_ran'
    plant(checkpoint / f'{part}.ckpt', marker, protocol_zero=True)
    trainer = build_trainer(Trainers.speech_separation,
                            default_args=trainer_args(model_dir, corpus, work_dir, max_epochs=2))
    if read:
        with pytest.raises(CheckpointError, match=re.escape(f'{checkpoint}: cannot resume from this checkpoint')):
            trainer.train()
    else:  # an end-of-epoch checkpoint: the loader position is not used
        assert [record['epoch'] for record in trainer.train()['epochs']] == [2]
    assert not marker.exists()


@pytest.mark.parametrize('family, name', [('mossformer', 'encoder.bin'), ('mossformer', 'masknet.bin'),
                                          ('mossformer2', 'pytorch_model.pt')])
def test_a_crafted_pickle_in_a_model_dir_is_refused(family, name, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', family)
    marker = tmp_path / 'code_ran'
    plant(model_dir / name, marker)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f'{model_dir / name}: refused to load')):
        Model.from_pretrained(str(model_dir))
    assert not marker.exists()


def test_a_pointer_file_to_a_crafted_checkpoint_and_a_crafted_init_checkpoint_are_refused(corpus, tmp_path):
    marker = tmp_path / 'code_ran'
    clearervoice = tmp_path / 'clearervoice'
    clearervoice.mkdir()
    plant(clearervoice / 'epoch_10.pt', marker)
    (clearervoice / 'last_best_checkpoint').write_text('epoch_10.pt\n')
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer2')
    trainer = build_trainer(Trainers.speech_separation, default_args=trainer_args(
        model_dir, corpus, tmp_path / 'work', max_epochs=1, init_checkpoint=str(clearervoice)))
    with pytest.raises(UnsafeCheckpointError, match=r'epoch_10\.pt: refused to load'):
        trainer.train()
    assert not marker.exists()


# ---------------------------------------------------------------------------
# one owner per work_dir
# ---------------------------------------------------------------------------

LONG_RUN = textwrap.dedent('''
    import sys
    import modelscope_mossformer
    from modelscope.trainers import build_trainer

    model_dir, train_csv, valid_csv, work_dir = sys.argv[1:5]
    build_trainer('speech-separation', default_args=dict(
        model=model_dir, train_dataset=train_csv, eval_dataset=valid_csv, work_dir=work_dir, max_epochs=100000,
        train={'progressbar': False, 'segment_seconds': 0.5})).train()
''')


def test_a_second_trainer_on_a_busy_work_dir_fails_and_a_killed_owner_is_taken_over(corpus, tmp_path, caplog):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    work_dir = tmp_path / 'work'
    owner = subprocess.Popen([sys.executable, '-c', LONG_RUN, str(model_dir), str(corpus.csv['train']),
                              str(corpus.csv['validation']), str(work_dir)], env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list((work_dir / 'save').glob('CKPT+*')):  # training is under way (it has saved an epoch)
            assert owner.poll() is None, owner.stderr.read()
            assert time.monotonic() < deadline, 'the first run never saved a checkpoint'
            time.sleep(0.2)
        args = trainer_args(model_dir, corpus, work_dir, max_epochs=1)
        with pytest.raises(WorkDirBusyError, match=re.escape(f'{work_dir} is in use by another run (pid {owner.pid} on ')):
            build_trainer(Trainers.speech_separation, default_args=args)
        before = (work_dir / 'train_log.txt').read_text()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        owner.stderr.close()
    assert (work_dir / 'train_log.txt').read_text().startswith(before)  # nothing of ours was written into it
    caplog.set_level(logging.WARNING, logger='modelscope_mossformer')
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=100000))
    assert f'taking over the lock of a run that ended without releasing it (pid {owner.pid}' in caplog.text
    trainer.train_config.max_epochs = 1  # bookkeeping only: the resumed run ends at once
    trainer.train()


# ---------------------------------------------------------------------------
# a resume is the same run
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('change, names', [
    (dict(seed=99), 'train.seed: 10 -> 99'),
    (dict(train={'progressbar': False, 'segment_seconds': 0.5}, model_patch={'num_blocks': 1}),
     'model.num_blocks: 2 -> 1'),
    (dict(train_dataset='TEST'), 'train_data.path'),
])
def test_a_resume_of_another_run_is_refused_naming_the_keys(change, names, trained, corpus, tmp_path):
    model_dir, work_dir = trained
    change = dict(change)
    patch = change.pop('model_patch', None)
    if patch:
        configuration = json.loads((model_dir / 'configuration.json').read_text())
        configuration['model'].update(patch)
        other = tmp_path / 'other_model'
        other.mkdir()
        (other / 'configuration.json').write_text(json.dumps(configuration))
        model_dir = other
    if change.get('train_dataset') == 'TEST':
        change['train_dataset'] = str(corpus.csv['test'])
    args = trainer_args(model_dir, corpus, work_dir, max_epochs=2)
    args.update(change)
    with pytest.raises(ResumeMismatchError, match='holds checkpoints of another run') as caught:
        build_trainer(Trainers.speech_separation, default_args=args).train()
    assert names in str(caught.value)


def test_changed_settings_need_consent_and_then_take_effect(trained, corpus):
    model_dir, work_dir = trained
    args = trainer_args(model_dir, corpus, work_dir, max_epochs=2)
    args['train'] = dict(args['train'], lr=1e-3)
    with pytest.raises(ResumeMismatchError, match=r'train\.lr: 0\.00015 -> 0\.001.*resume_with_new_settings=True'):
        build_trainer(Trainers.speech_separation, default_args=args).train()
    build_trainer(Trainers.speech_separation, default_args=dict(args, resume_with_new_settings=True)).train()
    lines = (work_dir / 'train_log.txt').read_text().splitlines()
    assert len(lines) == 2 and 'lr: 0.001,' in lines[1]  # the new learning rate was used for epoch 2


def test_leftovers_of_an_interrupted_deletion_are_removed(trained, corpus):
    model_dir, work_dir = trained
    save = work_dir / 'save'
    torn = save / 'CKPT+2026-01-01+00-00-00+00'  # its CKPT.yaml went first
    torn.mkdir()
    (torn / 'separator.ckpt').write_bytes(b'\0' * 1024)
    deleting = save / '.deleting-CKPT+2026-01-01+00-00-01+00'
    deleting.mkdir()
    build_trainer(Trainers.speech_separation,
                  default_args=trainer_args(model_dir, corpus, work_dir, max_epochs=2)).train()
    assert not torn.exists() and not deleting.exists()
    assert len(list(save.glob('CKPT+*'))) in (1, 2)


def test_which_changes_a_resume_may_make():
    from modelscope_mossformer.train_config import DEFAULT_TRAIN_CONFIG
    from modelscope_mossformer.workdir import compare_runs

    base = {'model': {'type': 't', 'num_blocks': 2}, 'train': dict(DEFAULT_TRAIN_CONFIG),
            'train_data': {'path': '/d/train.csv', 'sha256': 'a'}}
    changed = {'model': {'type': 't', 'num_blocks': 2},
               'train': dict(DEFAULT_TRAIN_CONFIG, seed=7, lr=1e-3, max_epochs=300, bad_example_policy='skip'),
               'train_data': {'path': '/d/train.csv', 'sha256': 'b'}}
    defining, settings, bookkeeping = compare_runs(base, changed)
    assert [text.split(':')[0] for text in defining] == ['train.seed', 'train_data.sha256']
    assert [text.split(':')[0] for text in settings] == ['train.lr']
    assert [text.split(':')[0] for text in bookkeeping] == ['train.bad_example_policy', 'train.max_epochs']
