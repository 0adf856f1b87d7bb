"""`trainer.evaluate()` and `mossformer evaluate` score with one function (`metrics.separation_scores`) and
agree on the same model and data."""
from __future__ import annotations

import json

import pytest
from modelscope.metainfo import Trainers
from modelscope.trainers import build_trainer

from modelscope_mossformer.cli import main

from .released import write_released_model_dir
from .subprocess_utils import demo_corpus


def test_trainer_evaluate_and_the_cli_give_the_same_scores(tmp_path):
    corpus = demo_corpus(tmp_path / 'corpus', train_mixtures=1)
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer', seed=2)
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), eval_dataset=str(corpus.csv['test']), work_dir=str(tmp_path / 'work'),
        train={'progressbar': False}))
    from_trainer = trainer.evaluate(None)
    out = tmp_path / 'cli'
    # whole files (no chunking, as the trainer does) written as float: the CLI then scores what the trainer does,
    # up to the level fit it applies before writing (SI-SNR and SDR do not depend on one gain) and float32 I/O
    assert main(['evaluate', '--model', str(model_dir), '--data', str(corpus.csv['test']), '--out', str(out),
                 '--chunk-seconds', '0', '--subtype', 'FLOAT', '--device', 'cpu', '--no-progress']) == 0
    from_cli = json.loads((out / 'summary.json').read_text())['means']
    for key in ('si-snr', 'si-snri', 'sdr', 'sdri'):
        # 1e-3 dB: float32 rounding of one gain and of the written samples moves the scores by far less
        assert from_cli[key] == pytest.approx(from_trainer[key], abs=1e-3), key
