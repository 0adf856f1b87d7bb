"""A training process killed with SIGKILL resumes from its latest checkpoint.

Each run is a fresh interpreter (`TRAIN_SCRIPT`) that calls
``build_trainer(Trainers.speech_separation, ...)`` on a tiny local model and a
tiny demo corpus.  The script records every optimizer step (epoch, step within
the epoch, global optimizer step, batch ids) to a JSON-lines file, so the test can
count the steps each process really took, including the ones a kill threw away.

Where the kill lands is made deterministic instead of timed: the first run stops
right after an optimizer step that is not yet checkpointed (a `--stall-at`
epoch/step sleeps after the step and before SpeechBrain's intra-epoch save), and
the test sends SIGKILL once it sees that step in the record and the previous
step's intra-epoch checkpoint in ``save/``.

SpeechBrain checkpoint layout (1.x): ``save/CKPT+<date>+<time>+NN/`` with
``CKPT.yaml`` (``end-of-epoch: bool``, ``unixtime``, plus ``brain_intra_epoch_ckpt:
true`` for intra-epoch saves, ``epoch`` / ``si-snr`` for end-of-epoch saves),
``counter.ckpt`` (the epoch, a plain integer), ``brain.ckpt`` (YAML: ``step``
within the epoch, ``optimizer_step``, ``avg_train_loss``), ``dataloader-TRAIN.ckpt``
(position in the epoch), ``separator.ckpt``, ``optimizer.ckpt``, ``lr_scheduler.ckpt``
and ``rng.ckpt``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_MIXTURES = 3          # optimizer steps per epoch (batch_size 1)
MAX_EPOCHS = 3
KILL_EPOCH, KILL_STEP = 2, 2  # the step the first run dies in; the checkpoint before it is step 1
START_TIMEOUT_S = 240.0

TINY_MODEL = {'type': 'speech_mossformer_separation_temporal_8k', 'enc_channels': 16, 'model_dim': 16,
              'num_blocks': 1, 'group_size': 16, 'query_key_dim': 16}

# argv[1]: JSON {model_dir, train_csv, eval_csv, work_dir, steps_log, max_epochs, train, stall_at, die_in_save_of_epoch}
TRAIN_SCRIPT = textwrap.dedent('''
    import json, os, signal, sys, time

    import torch

    torch.set_num_threads(1)  # two runs share the machine; one thread each keeps them deterministic

    import modelscope_mossformer  # noqa: F401 - registers the trainer
    from modelscope.metainfo import Trainers
    from modelscope.trainers import build_trainer
    from modelscope_mossformer import trainer as trainer_module

    options = json.loads(sys.argv[1])
    steps_log = options['steps_log']
    stall_at = tuple(options['stall_at'] or ()) or None
    die_in_save_of_epoch = options['die_in_save_of_epoch']

    plain_brain_class = trainer_module._brain_class
    plain_checkpointer_class = trainer_module._atomic_checkpointer_class


    def recording_brain_class():
        class RecordingBrain(plain_brain_class()):
            """Appends one JSON line per optimizer step; optionally stalls after one (to be killed)."""

            def on_stage_start(self, stage, epoch=None):
                self.record_epoch = epoch
                super().on_stage_start(stage, epoch)

            def fit_batch(self, batch):
                import hashlib
                rng = hashlib.md5(torch.get_rng_state().numpy().tobytes()).hexdigest()
                w = hashlib.md5(b''.join(p.detach().numpy().tobytes() for p in self.modules.parameters())).hexdigest()
                opt = hashlib.md5(repr(self.optimizer.state_dict()).encode()).hexdigest()
                loss = super().fit_batch(batch)
                record = {'pid': os.getpid(), 'epoch': self.record_epoch, 'step': self.step,
                          'optimizer_step': self.optimizer_step, 'ids': list(batch['ids']), 'loss': float(loss), 'rng': rng, 'w': w, 'opt': opt, 'mixhash': hashlib.md5(batch['mix'].numpy().tobytes()).hexdigest()}
                with open(steps_log, 'a') as handle:
                    handle.write(json.dumps(record) + '\\n')
                if stall_at == (self.record_epoch, self.step):
                    time.sleep(600)  # the test sends SIGKILL here, before this step is checkpointed
                return loss

        return RecordingBrain


    def dying_checkpointer_class():
        class DyingCheckpointer(plain_checkpointer_class()):
            """SIGKILLs its own process in the middle of the end-of-epoch save of one epoch."""

            def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
                meta = super()._save_checkpoint_metafile(fpath, meta_to_include, end_of_epoch)
                if end_of_epoch and meta_to_include.get('epoch') == die_in_save_of_epoch:
                    os.kill(os.getpid(), signal.SIGKILL)  # weights and CKPT.yaml written, not renamed
                return meta

        return DyingCheckpointer


    trainer_module._brain_class = recording_brain_class
    trainer_module._atomic_checkpointer_class = dying_checkpointer_class
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=options['model_dir'], train_dataset=options['train_csv'], eval_dataset=options['eval_csv'],
        work_dir=options['work_dir'], max_epochs=options['max_epochs'], train=options['train']))
    result = trainer.train()
    print('TRAINED ' + json.dumps([record['epoch'] for record in result['epochs']]))
''')


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def setup(tmp_path_factory) -> Dict[str, Path]:
    """A tiny demo corpus, a model dir with a `train` section, and the training script."""
    from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus

    root = tmp_path_factory.mktemp('resume')
    corpus = generate_demo_corpus(root / 'corpus', DemoCorpusSpec(
        train_mixtures=TRAIN_MIXTURES, validation_mixtures=1, test_mixtures=1, min_seconds=1.0, max_seconds=1.0,
        num_voices=6, validation_voices=2, test_voices=2))
    model_dir = root / 'model'
    model_dir.mkdir()
    (model_dir / 'configuration.json').write_text(json.dumps({
        'framework': 'pytorch', 'task': 'speech-separation', 'model': TINY_MODEL,
        'train': {'segment_seconds': 0.5, 'batch_size': 1, 'lr': 1e-3, 'ckpt_interval_steps': 1,
                  'progressbar': False}}))
    script = root / 'train.py'
    script.write_text(TRAIN_SCRIPT)
    return {'model': model_dir, 'train': corpus.csv['train'], 'eval': corpus.csv['validation'], 'script': script}


def _command(setup: Dict[str, Path], work_dir: Path, max_epochs: int, train: Optional[Dict[str, Any]] = None,
             stall_at: Optional[tuple] = None, die_in_save_of_epoch: Optional[int] = None) -> List[str]:
    options = {'model_dir': str(setup['model']), 'train_csv': str(setup['train']), 'eval_csv': str(setup['eval']),
               'work_dir': str(work_dir), 'steps_log': str(work_dir.parent / f'{work_dir.name}.steps.jsonl'),
               'max_epochs': max_epochs, 'train': train or {}, 'stall_at': stall_at,
               'die_in_save_of_epoch': die_in_save_of_epoch}
    return [sys.executable, str(setup['script']), json.dumps(options)]


def _environment() -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]),
                OMP_NUM_THREADS='1')


def _start(setup: Dict[str, Path], work_dir: Path, max_epochs: int, **options: Any) -> subprocess.Popen:
    return subprocess.Popen(_command(setup, work_dir, max_epochs, **options), env=_environment(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen, timeout: float = 300.0) -> str:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f'training failed (rc {process.returncode}):\n{stderr[-4000:]}'
    assert 'TRAINED' in stdout, stdout
    return stdout


def _steps(work_dir: Path) -> List[Dict[str, Any]]:
    path = work_dir.parent / f'{work_dir.name}.steps.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _checkpoints(work_dir: Path) -> List[Dict[str, Any]]:
    """Complete checkpoints in ``save/``, oldest first: meta, epoch counter, brain state, folder."""
    found = []
    for folder in sorted((work_dir / 'save').glob('CKPT+*')):
        try:
            found.append({'meta': yaml.safe_load((folder / 'CKPT.yaml').read_text()),
                          'counter': int((folder / 'counter.ckpt').read_text()),
                          'brain': yaml.safe_load((folder / 'brain.ckpt').read_text()), 'path': folder})
        except FileNotFoundError:  # deleted by the running trainer while we looked
            continue
    return sorted(found, key=lambda ckpt: ckpt['meta']['unixtime'])


def _logged_epochs(work_dir: Path) -> List[int]:
    """Epoch numbers of train_log.txt, whose lines read ``epoch: 1, train_loss: ..., valid_si_snr: ...``."""
    lines = (work_dir / 'train_log.txt').read_text().splitlines()
    return [int(line.split(',')[0].removeprefix('epoch: ')) for line in lines]


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = START_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f'training ended (rc {process.returncode}) before {what}:\n'
                                 f'{process.stderr.read()[-4000:]}')
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f'timed out waiting for {what}')


def _separator_state(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    return torch.load(checkpoint['path'] / 'separator.ckpt', map_location='cpu')


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


def test_sigkill_mid_epoch_resumes_from_latest_checkpoint(setup, tmp_path):
    reference_dir, work_dir = tmp_path / 'uninterrupted', tmp_path / 'interrupted'
    reference = _start(setup, reference_dir, MAX_EPOCHS)
    first = _start(setup, work_dir, MAX_EPOCHS, stall_at=(KILL_EPOCH, KILL_STEP))
    try:
        # the first run took step 2 of epoch 2 (not checkpointed) and has an intra-epoch checkpoint after step 1
        _wait_for(lambda: any(s['epoch'] == KILL_EPOCH and s['step'] == KILL_STEP for s in _steps(work_dir)),
                  first, f'step {KILL_STEP} of epoch {KILL_EPOCH}')
        latest = _checkpoints(work_dir)[-1]
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL

    # what the kill left: the intra-epoch checkpoint after step 1 of epoch 2 is the latest one
    assert latest['meta']['end-of-epoch'] is False and latest['meta']['brain_intra_epoch_ckpt'] is True
    assert latest['counter'] == KILL_EPOCH
    assert latest['brain']['step'] == KILL_STEP - 1
    assert latest['brain']['optimizer_step'] == TRAIN_MIXTURES * (KILL_EPOCH - 1) + KILL_STEP - 1
    assert _checkpoints(work_dir)[-1]['path'] == latest['path']
    assert _logged_epochs(work_dir) == [1]
    killed_run_steps = _steps(work_dir)

    # same command again, without the stall: resumes and finishes
    second = _start(setup, work_dir, MAX_EPOCHS)
    assert _finish(second).strip().endswith('TRAINED ' + json.dumps([2, 3]))
    _finish(reference)

    # epochs: each logged exactly once, like the uninterrupted run
    assert _logged_epochs(work_dir) == [1, 2, 3] == _logged_epochs(reference_dir)
    final, reference_final = _checkpoints(work_dir)[-1], _checkpoints(reference_dir)[-1]
    assert final['meta']['end-of-epoch'] is True and final['counter'] == MAX_EPOCHS == reference_final['counter']
    assert final['brain']['optimizer_step'] == MAX_EPOCHS * TRAIN_MIXTURES == reference_final['brain']['optimizer_step']

    # optimizer steps of epoch 2: the first run's checkpointed ones plus the second run's make one epoch,
    # in the uninterrupted run's batch order; only the un-checkpointed step 2 was taken twice
    resumed_run_steps = _steps(work_dir)[len(killed_run_steps):]
    first_pid, second_pid = killed_run_steps[0]['pid'], resumed_run_steps[0]['pid']
    assert {s['pid'] for s in killed_run_steps} == {first_pid} and {s['pid'] for s in resumed_run_steps} == {second_pid}
    kept = ([s for s in killed_run_steps if s['epoch'] == KILL_EPOCH and s['step'] <= latest['brain']['step']]
            + [s for s in resumed_run_steps if s['epoch'] == KILL_EPOCH])
    lost = [s for s in killed_run_steps if s['epoch'] == KILL_EPOCH and s['step'] > latest['brain']['step']]
    reference_epoch = [s for s in _steps(reference_dir) if s['epoch'] == KILL_EPOCH]
    assert [s['step'] for s in kept] == list(range(1, TRAIN_MIXTURES + 1))
    assert [(s['ids'], s['optimizer_step']) for s in kept] == [(s['ids'], s['optimizer_step'])
                                                                for s in reference_epoch]
    assert [s['step'] for s in lost] == [KILL_STEP]
    assert [s['epoch'] for s in resumed_run_steps] == [2] * (TRAIN_MIXTURES - KILL_STEP + 1) + [3] * TRAIN_MIXTURES

    # best_model/ is a loadable model dir
    from modelscope.models import Model

    best = Model.from_pretrained(str(work_dir / 'best_model'))
    assert best.separator(torch.zeros(1, 800)).shape == (1, 2, 800)
    # recovery restored weights, optimizer, RNG and data order: the result is the uninterrupted run's
    resumed_state, reference_state = _separator_state(final), _separator_state(reference_final)
    assert resumed_state.keys() == reference_state.keys()
    for key in resumed_state:
        torch.testing.assert_close(resumed_state[key], reference_state[key], rtol=0, atol=0, msg=key)


def test_sigkill_during_checkpoint_save_keeps_previous_checkpoint(setup, tmp_path):
    work_dir = tmp_path / 'work'
    no_intra_epoch = {'ckpt_interval_steps': 0}  # only end-of-epoch checkpoints
    # first run: dies by SIGKILL inside the end-of-epoch save of epoch 2, after all files and CKPT.yaml
    # are written to the hidden folder and before it is renamed
    first = _start(setup, work_dir, 2, train=no_intra_epoch, die_in_save_of_epoch=2)
    first.communicate(timeout=300)
    assert first.returncode == -signal.SIGKILL
    partials = list((work_dir / 'save').glob('.partial-CKPT+*'))
    assert len(partials) == 1 and (partials[0] / 'CKPT.yaml').is_file()
    assert yaml.safe_load((partials[0] / 'CKPT.yaml').read_text())['epoch'] == 2
    # a second leftover with junk in it, dated later than anything real
    junk = work_dir / 'save' / '.partial-CKPT+2099-01-01+00-00-00+00'
    junk.mkdir()
    (junk / 'CKPT.yaml').write_text('end-of-epoch: true\nepoch: 9\nunixtime: 4070908800.0\n')
    (junk / 'separator.ckpt').write_bytes(b'\x00 not a torch file')
    (junk / 'counter.ckpt').write_text('9')
    complete = _checkpoints(work_dir)
    assert [(c['counter'], c['meta']['end-of-epoch']) for c in complete] == [(1, True)]

    second = _start(setup, work_dir, 2, train=no_intra_epoch)
    assert _finish(second).strip().endswith('TRAINED ' + json.dumps([2]))
    assert not list((work_dir / 'save').glob('.partial-*'))
    assert 'removing incomplete checkpoint' in (work_dir / 'log.txt').read_text()
    final = _checkpoints(work_dir)[-1]
    assert final['counter'] == 2 and final['brain']['optimizer_step'] == 2 * TRAIN_MIXTURES
    # epoch 2 ran twice (its checkpoint was lost) but is logged once
    assert [s['epoch'] for s in _steps(work_dir)] == [1] * TRAIN_MIXTURES + [2] * TRAIN_MIXTURES * 2
    assert _logged_epochs(work_dir) == [1, 2]

    from modelscope.models import Model

    assert Model.from_pretrained(str(work_dir / 'best_model')).separator(torch.zeros(1, 800)).shape == (1, 2, 800)
