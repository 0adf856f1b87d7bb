"""A training process killed with SIGKILL resumes from its latest checkpoint.

Each run is a fresh interpreter (`TRAIN_SCRIPT`) that calls
``build_trainer(Trainers.speech_separation, ...)`` on a tiny local model and a
tiny demo corpus.  The script records every optimizer step (epoch, step within
the epoch, global optimizer step, batch ids, loss) to a JSON-lines file, so the
test can count the steps each process really took, including the ones a kill
threw away.

Where the kill lands is made deterministic instead of timed: with ``stall_at`` the
run sleeps right after an optimizer step, before SpeechBrain's intra-epoch save of
that step, and the test sends SIGKILL once it sees that step in the record and the
previous step's intra-epoch checkpoint in ``save/``.  With ``die_in_save_of_epoch``
the run SIGKILLs itself inside an end-of-epoch save, after every file of the
checkpoint is written and before its folder is renamed into place.

Recovery restores weights, optimizer, epoch counter, data position and random
states, so a resumed run repeats the uninterrupted one exactly (same batches,
losses and final weights; one thread per run keeps CPU arithmetic deterministic).

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

from .subprocess_utils import demo_corpus, subprocess_env, write_model_dir

# subprocesses (fresh interpreters, torchrun, pip builds): slow, still run in CI
pytestmark = pytest.mark.slow

TRAIN_MIXTURES = 3          # optimizer steps per epoch (batch_size 1)
MAX_EPOCHS = 3
KILL_EPOCH, KILL_STEP = 2, 2  # the step the first run dies in; the checkpoint before it is step 1
WAIT_TIMEOUT_S = 240.0

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
    from modelscope_mossformer import brain as brain_module

    options = json.loads(sys.argv[1])
    steps_log = options['steps_log']
    stall_at = tuple(options['stall_at'] or ()) or None
    die_in_save_of_epoch = options['die_in_save_of_epoch']

    class RecordingBrain(brain_module.SeparationBrain):
        """Appends one JSON line per optimizer step; optionally stalls after one (to be killed)."""

        def on_stage_start(self, stage, epoch=None):
            self.record_epoch = epoch
            super().on_stage_start(stage, epoch)

        def fit_batch(self, batch):
            loss = super().fit_batch(batch)
            record = {'pid': os.getpid(), 'epoch': self.record_epoch, 'step': self.step,
                      'optimizer_step': self.optimizer_step, 'ids': list(batch['ids']), 'loss': float(loss)}
            with open(steps_log, 'a') as handle:
                handle.write(json.dumps(record) + '\\n')
            if stall_at == (self.record_epoch, self.step):
                time.sleep(600)  # the test sends SIGKILL here, before this step is checkpointed
            return loss


    class DyingCheckpointer(brain_module.AtomicCheckpointer):
        """SIGKILLs its own process in the middle of the end-of-epoch save of one epoch."""

        def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
            meta = super()._save_checkpoint_metafile(fpath, meta_to_include, end_of_epoch)
            if end_of_epoch and meta_to_include.get('epoch') == die_in_save_of_epoch:
                os.kill(os.getpid(), signal.SIGKILL)  # weights and CKPT.yaml written, not renamed
            return meta


    brain_module.SeparationBrain = RecordingBrain
    brain_module.AtomicCheckpointer = DyingCheckpointer
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
def inputs(tmp_path_factory) -> Dict[str, Path]:
    """A tiny demo corpus, a model dir with a `train` section, and the training script."""
    root = tmp_path_factory.mktemp('resume')
    corpus = demo_corpus(root / 'corpus', TRAIN_MIXTURES)
    model_dir = write_model_dir(root / 'model', TINY_MODEL, train={
        'segment_seconds': 0.5, 'batch_size': 1, 'lr': 1e-3, 'ckpt_interval_steps': 1, 'progressbar': False})
    script = root / 'train.py'
    script.write_text(TRAIN_SCRIPT)
    return {'model': model_dir, 'train': corpus.csv['train'], 'eval': corpus.csv['validation'], 'script': script}


class Run:
    """One training process on `work_dir`; its output goes to files next to it."""

    def __init__(self, inputs: Dict[str, Path], work_dir: Path, max_epochs: int,
                 train: Optional[Dict[str, Any]] = None, stall_at: Optional[tuple] = None,
                 die_in_save_of_epoch: Optional[int] = None) -> None:
        options = {'model_dir': str(inputs['model']), 'train_csv': str(inputs['train']),
                   'eval_csv': str(inputs['eval']), 'work_dir': str(work_dir),
                   'steps_log': str(work_dir.parent / f'{work_dir.name}.steps.jsonl'), 'max_epochs': max_epochs,
                   'train': train or {}, 'stall_at': stall_at, 'die_in_save_of_epoch': die_in_save_of_epoch}
        env = subprocess_env(OMP_NUM_THREADS='1')
        self.stdout_path = work_dir.parent / f'{work_dir.name}.{time.monotonic_ns()}.out'
        self.stderr_path = self.stdout_path.with_suffix('.err')
        with open(self.stdout_path, 'w') as stdout, open(self.stderr_path, 'w') as stderr:
            self.process = subprocess.Popen([sys.executable, str(inputs['script']), json.dumps(options)],
                                            env=env, stdout=stdout, stderr=stderr)

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text()[-4000:]

    def wait(self, timeout: float = 300.0) -> int:
        return self.process.wait(timeout=timeout)

    def finish(self, timeout: float = 300.0) -> List[int]:
        """Wait for a successful end; the epochs this process trained."""
        returncode = self.wait(timeout)
        assert returncode == 0, f'training failed (rc {returncode}):\n{self.stderr_tail()}'
        trained = [line for line in self.stdout_path.read_text().splitlines() if line.startswith('TRAINED ')]
        assert trained, self.stdout_path.read_text()
        return json.loads(trained[-1][len('TRAINED '):])


@pytest.fixture
def launch(inputs):
    """Starts `Run`s; kills the ones still running when the test ends."""
    runs: List[Run] = []

    def start(work_dir: Path, max_epochs: int, **options: Any) -> Run:
        runs.append(Run(inputs, work_dir, max_epochs, **options))
        return runs[-1]

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def _steps(work_dir: Path) -> List[Dict[str, Any]]:
    """The recorded optimizer steps of every run on `work_dir` (complete lines only: a run may be writing)."""
    path = work_dir.parent / f'{work_dir.name}.steps.jsonl'
    return [json.loads(line) for line in path.read_text().split('\n')[:-1]] if path.is_file() else []


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


def _wait_for(condition, run: Run, what: str, timeout: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if run.process.poll() is not None:
            raise AssertionError(f'training ended (rc {run.process.returncode}) before {what}:\n{run.stderr_tail()}')
        time.sleep(0.05)
    raise AssertionError(f'timed out waiting for {what}')


def _separator_state(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    return torch.load(checkpoint['path'] / 'separator.ckpt', map_location='cpu')


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


def test_sigkill_mid_epoch_resumes_from_latest_checkpoint(launch, tmp_path):
    reference_dir, work_dir = tmp_path / 'uninterrupted', tmp_path / 'interrupted'
    reference = launch(reference_dir, MAX_EPOCHS)
    first = launch(work_dir, MAX_EPOCHS, stall_at=(KILL_EPOCH, KILL_STEP))

    def stalled_mid_epoch() -> bool:
        """Step 2 of epoch 2 taken (not checkpointed) and an intra-epoch checkpoint of epoch 2 in save/."""
        checkpoints = _checkpoints(work_dir)
        return (any((s['epoch'], s['step']) == (KILL_EPOCH, KILL_STEP) for s in _steps(work_dir))
                and bool(checkpoints) and checkpoints[-1]['counter'] == KILL_EPOCH
                and not checkpoints[-1]['meta']['end-of-epoch'])

    _wait_for(stalled_mid_epoch, first, f'step {KILL_STEP} of epoch {KILL_EPOCH}')
    latest = _checkpoints(work_dir)[-1]
    first.process.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL

    # what the kill left: the intra-epoch checkpoint after step 1 of epoch 2 is the latest one
    assert latest['meta']['end-of-epoch'] is False and latest['meta']['brain_intra_epoch_ckpt'] is True
    assert latest['counter'] == KILL_EPOCH
    assert latest['brain']['step'] == KILL_STEP - 1
    assert latest['brain']['optimizer_step'] == TRAIN_MIXTURES * (KILL_EPOCH - 1) + KILL_STEP - 1
    assert _checkpoints(work_dir)[-1]['path'] == latest['path']
    assert _logged_epochs(work_dir) == [1]
    killed_run_steps = _steps(work_dir)

    # same command again, without the stall: resumes and finishes
    assert launch(work_dir, MAX_EPOCHS).finish() == [2, 3]
    assert reference.finish() == [1, 2, 3]

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
    assert [(s['ids'], s['optimizer_step'], s['loss']) for s in kept] == [
        (s['ids'], s['optimizer_step'], s['loss']) for s in reference_epoch]
    assert [(s['step'], s['loss']) for s in lost] == [(KILL_STEP, kept[KILL_STEP - 1]['loss'])]
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


def test_sigkill_during_checkpoint_save_keeps_previous_checkpoint(launch, tmp_path):
    work_dir = tmp_path / 'work'
    no_intra_epoch = {'ckpt_interval_steps': 0}  # only end-of-epoch checkpoints
    # first run: dies by SIGKILL inside the end-of-epoch save of epoch 2, after all files and CKPT.yaml
    # are written to the hidden folder and before it is renamed
    assert launch(work_dir, 2, train=no_intra_epoch, die_in_save_of_epoch=2).wait() == -signal.SIGKILL
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
    log_of_killed_run = (work_dir / 'train_log.txt').read_text()  # epoch 2 is logged before its checkpoint

    assert launch(work_dir, 2, train=no_intra_epoch).finish() == [2]
    assert not list((work_dir / 'save').glob('.partial-*'))
    assert 'removing incomplete checkpoint' in (work_dir / 'log.txt').read_text()
    final = _checkpoints(work_dir)[-1]
    assert final['counter'] == 2 and final['brain']['optimizer_step'] == 2 * TRAIN_MIXTURES
    # epoch 2 ran twice (its checkpoint was lost) but is logged once
    assert [s['epoch'] for s in _steps(work_dir)] == [1] * TRAIN_MIXTURES + [2] * TRAIN_MIXTURES * 2
    assert _logged_epochs(work_dir) == [1, 2]
    assert (work_dir / 'train_log.txt').read_text() == log_of_killed_run  # the replay repeats the lost epoch

    from modelscope.models import Model

    assert Model.from_pretrained(str(work_dir / 'best_model')).separator(torch.zeros(1, 800)).shape == (1, 2, 800)
