"""End to end: `build_trainer` teaches a small MossFormer to separate unseen voices.

A small MossFormer (about 90 k parameters) trains through ModelScope's
`build_trainer` on the synthetic demo corpus (8 kHz, two speakers), then the best
checkpoint (chosen on the validation voices) is evaluated on the test split, whose
voices it never heard.  An untrained model scores far below zero SI-SNRi there;
after about three minutes of CPU training (360 steps of 4 x 1 s) it reaches about 6 dB, and
the test asserts 4 dB.

Runs single-threaded: a model this small gains little from a second thread, one
thread keeps the arithmetic independent of the runner's core count, and on a
busy runner it avoids threads waiting for each other.
"""
from __future__ import annotations

import json

import pytest
import torch

import modelscope_mossformer  # noqa: F401  (registers the trainer)
from modelscope.metainfo import Trainers
from modelscope.trainers import build_trainer
from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus

CORPUS = DemoCorpusSpec(sample_rate=8000, num_spks=2, train_mixtures=120, validation_mixtures=10, test_mixtures=10,
                        min_seconds=1.5, max_seconds=2.5, seed=0)
MODEL = dict(type='speech_mossformer_separation_temporal_8k', enc_channels=64, enc_kernel_size=16, model_dim=64,
             num_blocks=2, group_size=64, query_key_dim=32)
TRAIN = dict(segment_seconds=1.0, batch_size=4, lr=3e-3, seed=1234, progressbar=False)  # seed: weights, order, crops
EPOCHS = 12

# Reached on the test voices with train seeds 1234 / 1 / 2: SI-SNRi 6.2 / 5.9 / 6.2 dB, SDRi 7.1 dB each;
# the train loss fell by 7.5 / 8.4 / 8.4 dB.  An untrained model: SI-SNRi -23 to -32 dB.
MIN_SI_SNRI_DB = 4.0
MIN_SDRI_DB = 4.0
MIN_TRAIN_LOSS_DROP_DB = 4.0   # first epoch's mean loss minus the last one's, dB


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trainer(model, work_dir, eval_csv, **extra):
    return build_trainer(Trainers.speech_separation, default_args=dict(
        model=model, eval_dataset=str(eval_csv), work_dir=str(work_dir), train=dict(TRAIN), **extra))


@pytest.mark.slow
def test_trainer_learns_to_separate_unseen_voices(tmp_path, one_thread):
    corpus = generate_demo_corpus(tmp_path / 'corpus', CORPUS)
    model_dir = tmp_path / 'model'
    model_dir.mkdir()
    (model_dir / 'configuration.json').write_text(json.dumps(
        {'framework': 'pytorch', 'task': 'speech-separation', 'model': MODEL}))
    work_dir = tmp_path / 'work'

    trainer = _trainer(str(model_dir), work_dir, corpus.csv['validation'], train_dataset=str(corpus.csv['train']),
                       max_epochs=EPOCHS)
    # baseline: a randomly initialised model of the same configuration (train() draws its own from the seed)
    untrained = _trainer(trainer.model, tmp_path / 'untrained', corpus.csv['test']).evaluate(None)

    history = trainer.train()['epochs']

    # a second trainer on the same work_dir evaluates the best checkpoint on the held-out test voices
    trained = _trainer(str(model_dir), work_dir, corpus.csv['test']).evaluate(None)

    losses = [epoch['train_loss'] for epoch in history]
    summary = (f'untrained {untrained}, trained {trained}, train loss per epoch {[round(x, 2) for x in losses]}, '
               f'validation SI-SNR per epoch {[round(e["valid_si_snr"], 2) for e in history]}')
    assert len(history) == EPOCHS, summary
    assert untrained['si-snri'] < 0.0, summary
    assert losses[0] - losses[-1] >= MIN_TRAIN_LOSS_DROP_DB, summary
    assert trained['si-snri'] >= MIN_SI_SNRI_DB, summary
    assert trained['sdri'] >= MIN_SDRI_DB, summary
