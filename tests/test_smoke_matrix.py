"""Smoke suite for every cell of the install matrix (scripts/matrix.sh runs just this file there).

What a new user does first, at tiny sizes so that it runs in seconds in any environment:
import and registration, a tiny model from a model dir laid out as ModelScope releases it, the pipeline
on a file at another sample rate, one training epoch through `build_trainer` on MsDataset rows (a local
CSV through `MsDataset.load('csv', ...)` and `AudioBrainPreprocessor`), resuming it, and evaluating.
It runs in the main suite too (marker `smoke`).
"""
from __future__ import annotations

import csv
import logging
import sys

import numpy as np
import pytest
import soundfile
import torch

pytestmark = pytest.mark.smoke
logger = logging.getLogger(__name__)

FAST_TRAIN = {'segment_seconds': 0.5, 'batch_size': 2, 'lr': 2e-3, 'progressbar': False}


def _versions():
    from importlib.metadata import version

    names = ('torch', 'torchaudio', 'modelscope', 'speechbrain', 'datasets', 'numpy', 'soxr')
    return {name: version(name) for name in names}


@pytest.fixture(scope='module')
def released_dirs(tmp_path_factory):
    from .released import write_released_model_dir

    root = tmp_path_factory.mktemp('released')
    return {family: write_released_model_dir(root / family, family=family, size='tiny', num_spks=2)
            for family in ('mossformer', 'mossformer2')}


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus

    spec = DemoCorpusSpec(train_mixtures=4, validation_mixtures=2, test_mixtures=2, min_seconds=0.6,
                          max_seconds=0.8, seed=5)
    return generate_demo_corpus(tmp_path_factory.mktemp('smoke_corpus'), spec)


def test_import_registers_this_package_in_modelscope():
    import modelscope_mossformer  # noqa: F401
    from modelscope.metainfo import Trainers
    from modelscope.trainers.builder import TRAINERS

    from modelscope_mossformer.trainer import SpeechSeparationTrainer

    logger.info('python %s, %s', sys.version.split()[0], _versions())
    assert TRAINERS.get(Trainers.speech_separation) is SpeechSeparationTrainer


@pytest.mark.parametrize('family', ['mossformer', 'mossformer2'])
def test_tiny_model_from_a_released_layout_dir(released_dirs, family):
    from modelscope.models import Model

    from modelscope_mossformer.model import MossFormerSeparation

    model = Model.from_pretrained(str(released_dirs[family]))
    assert isinstance(model, MossFormerSeparation)
    assert model.weights_source is not None  # the released weight files were read
    with torch.no_grad():
        out = model.separator(torch.randn(1, 1600) * 0.1)
    assert out.shape[0] == 1 and out.shape[-1] == 1600 and torch.isfinite(out).all()


def test_pipeline_on_a_file_at_another_rate(released_dirs, tmp_path):
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    rate = 44100  # the model runs at 8 kHz
    t = np.arange(int(0.5 * rate)) / rate
    mix = (0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1300 * t)).astype(np.float32)
    path = tmp_path / 'mix_44k.wav'
    soundfile.write(str(path), np.stack([mix, mix], 1), rate)  # stereo too
    separation = pipeline(Tasks.speech_separation, model=str(released_dirs['mossformer']))
    result = separation(str(path))
    assert result['sample_rate'] == rate
    assert result['waveforms'].shape == (2, mix.size)
    assert len(result[OutputKeys.OUTPUT_PCM_LIST]) == 2
    assert all(len(pcm) == 2 * mix.size for pcm in result[OutputKeys.OUTPUT_PCM_LIST])  # int16 bytes


def _msdataset(csv_path):
    from modelscope.msdatasets import MsDataset

    from modelscope_mossformer import AudioBrainPreprocessor

    fields = [('mix_wav:FILE', 'mix_sig'), ('s1_wav:FILE', 's1_sig'), ('s2_wav:FILE', 's2_sig')]
    dataset = MsDataset.load('csv', data_files={'train': [str(csv_path)]}, split='train')
    return dataset.to_torch_dataset(preprocessors=[
        AudioBrainPreprocessor(takes=takes, provides=provides, root=csv_path.parent) for takes, provides in fields],
        to_tensor=False)


def test_train_one_epoch_resume_and_evaluate(released_dirs, corpus, tmp_path):
    from modelscope.metainfo import Trainers
    from modelscope.trainers import build_trainer

    work_dir = tmp_path / 'work'
    args = dict(model=str(released_dirs['mossformer']), train_dataset=_msdataset(corpus.csv['train']),
                eval_dataset=_msdataset(corpus.csv['validation']), work_dir=str(work_dir), train=FAST_TRAIN)
    first = build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=1)).train()
    assert [epoch['epoch'] for epoch in first['epochs']] == [1]
    assert np.isfinite(first['epochs'][0]['train_loss'])
    assert (work_dir / 'best_model' / 'configuration.json').is_file()
    assert list((work_dir / 'save').glob('CKPT+*'))

    trainer = build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=2))
    second = trainer.train()
    assert [epoch['epoch'] for epoch in second['epochs']] == [2]  # epoch 1 recovered, not redone
    lines = (work_dir / 'train_log.txt').read_text().splitlines()
    assert len(lines) == 2

    trainer.model.load_check_point(device=trainer.device)
    scores = trainer.evaluate(None)
    assert set(scores) == {'si-snr', 'si-snri', 'sdr', 'sdri'}
    assert all(np.isfinite(value) for value in scores.values())
    rows = list(csv.DictReader(open(work_dir / 'eval_results.csv')))
    assert rows[-1]['id'] == 'MEAN'
