"""Two-process DDP training on CPU: ``torchrun --standalone --nproc_per_node=2``, gloo backend.

Every rank runs the same script (`TRAIN_SCRIPT`); the trainer picks gloo because
the device is the CPU.  Each rank writes a report of what it saw (its pid, the
world size, its optimizer steps and a checksum of its final weights) outside
``work_dir``, so the test can tell the ranks' work apart from what landed there.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import yaml

from .subprocess_utils import demo_corpus, subprocess_env, write_model_dir

# subprocesses (fresh interpreters, torchrun, pip builds): slow, still run in CI
pytestmark = pytest.mark.slow

WORLD_SIZE = 2
TRAIN_MIXTURES = 4
MAX_EPOCHS = 2

TINY_MODEL = {'type': 'speech_mossformer_separation_temporal_8k', 'enc_channels': 16, 'model_dim': 16,
              'num_blocks': 1, 'group_size': 16, 'query_key_dim': 16}

# argv: model_dir train_csv eval_csv work_dir max_epochs reports_dir
TRAIN_SCRIPT = textwrap.dedent('''
    import json, logging, os, sys

    import torch
    import torch.distributed as dist

    import modelscope_mossformer  # noqa: F401 - registers the trainer

    logging.getLogger('modelscope_mossformer').setLevel(logging.INFO)  # the script's choice: INFO in log.txt
    from modelscope.metainfo import Trainers
    from modelscope.trainers import build_trainer

    model_dir, train_csv, eval_csv, work_dir, max_epochs, reports_dir = sys.argv[1:7]
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=model_dir, train_dataset=train_csv, eval_dataset=eval_csv, work_dir=work_dir,
        max_epochs=int(max_epochs)))
    result = trainer.train()
    weights = trainer.model.separator.state_dict()
    rank = int(os.environ['RANK'])
    with open(os.path.join(reports_dir, f'rank{rank}.json'), 'w') as handle:
        json.dump({
            'rank': rank, 'pid': os.getpid(),
            'world_size': dist.get_world_size() if dist.is_initialized() else 1,
            'backend': dist.get_backend() if dist.is_initialized() else None,
            'optimizer_steps': trainer._brain.optimizer_step,
            'epochs': [record['epoch'] for record in result['epochs']],
            'checksum': [float(weights[key].double().sum()) for key in sorted(weights)]}, handle)
''')


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory) -> Dict[str, Any]:
    """One two-process run of `MAX_EPOCHS` epochs; its work_dir and the ranks' reports."""
    root = tmp_path_factory.mktemp('ddp')
    corpus = demo_corpus(root / 'corpus', TRAIN_MIXTURES)
    model_dir = write_model_dir(root / 'model', TINY_MODEL, train={
        'segment_seconds': 0.5, 'batch_size': 1, 'lr': 1e-3, 'progressbar': False, 'ckpt_interval_steps': 1})
    script = root / 'train.py'
    script.write_text(TRAIN_SCRIPT)
    work_dir, reports_dir = root / 'work', root / 'reports'
    reports_dir.mkdir()
    env = subprocess_env(OMP_NUM_THREADS='1')
    env.pop('RANK', None)
    completed = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={WORLD_SIZE}',
         str(script), str(model_dir), str(corpus.csv['train']), str(corpus.csv['validation']), str(work_dir),
         str(MAX_EPOCHS), str(reports_dir)], env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f'torchrun failed (rc {completed.returncode}):\n{completed.stderr[-6000:]}'
    reports = [json.loads(path.read_text()) for path in sorted(reports_dir.glob('rank*.json'))]
    return {'work_dir': work_dir, 'reports': reports}


def _checkpoint_folders(work_dir: Path) -> List[Path]:
    return sorted((work_dir / 'save').glob('CKPT+*'))


def test_every_rank_trained_in_one_gloo_group(ddp_run):
    reports = ddp_run['reports']
    assert [report['rank'] for report in reports] == list(range(WORLD_SIZE))
    for report in reports:
        assert report['world_size'] == WORLD_SIZE and report['backend'] == 'gloo'
        assert report['epochs'] == list(range(1, MAX_EPOCHS + 1))
        # DistributedSampler: each rank takes its share of the mixtures per epoch
        assert report['optimizer_steps'] == MAX_EPOCHS * TRAIN_MIXTURES // WORLD_SIZE
    # gradients are all-reduced: the ranks end with the same weights
    assert reports[0]['checksum'] == reports[1]['checksum']


def test_only_rank_zero_wrote_checkpoints_and_logs(ddp_run):
    work_dir = ddp_run['work_dir']
    rank0_pid = ddp_run['reports'][0]['pid']
    assert sorted(path.name for path in work_dir.iterdir()) == [
        '.lock', 'best_model', 'configuration.json', 'log.txt', 'run.json', 'save', 'tensorboard', 'train_log.txt']
    lines = (work_dir / 'train_log.txt').read_text().splitlines()
    assert [line.split(',')[0] for line in lines] == [f'epoch: {epoch}' for epoch in range(1, MAX_EPOCHS + 1)]
    log = (work_dir / 'log.txt').read_text()
    assert log.count('saved end-of-epoch checkpoint') == MAX_EPOCHS
    # tensorboard event files are named ...tfevents.<time>.<host>.<pid>.<n>: one writer per epoch, all rank 0
    events = list((work_dir / 'tensorboard').glob('events.out.tfevents.*'))
    assert len(events) == MAX_EPOCHS and {path.name.split('.')[-2] for path in events} == {str(rank0_pid)}
    # the end-of-epoch checkpoint of the last epoch (and the best one, if another), nothing half-written;
    # the intra-epoch checkpoints (one per step) were replaced, then removed at the end of their epoch
    assert not list((work_dir / 'save').glob('.partial-*'))
    metas = {folder: yaml.safe_load((folder / 'CKPT.yaml').read_text()) for folder in _checkpoint_folders(work_dir)}
    assert 1 <= len(metas) <= 2 and all(meta['end-of-epoch'] for meta in metas.values())
    latest = max(metas, key=lambda folder: metas[folder]['unixtime'])
    assert int((latest / 'counter.ckpt').read_text()) == MAX_EPOCHS
    assert yaml.safe_load((latest / 'brain.ckpt').read_text())['optimizer_step'] == (
        MAX_EPOCHS * TRAIN_MIXTURES // WORLD_SIZE)
    # the checkpointed weights are the ranks' common weights, without DDP's "module." prefix
    state = torch.load(latest / 'separator.ckpt', map_location='cpu')
    assert [float(state[key].double().sum()) for key in sorted(state)] == ddp_run['reports'][0]['checksum']


def test_best_model_loads(ddp_run):
    from modelscope.models import Model

    best_dir = ddp_run['work_dir'] / 'best_model'
    best = Model.from_pretrained(str(best_dir))
    assert json.loads((best_dir / 'configuration.json').read_text())['train_result']['epoch'] in (1, 2)
    assert best.separator(torch.zeros(1, 800)).shape == (1, 2, 800)
