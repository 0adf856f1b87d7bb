"""build_trainer(Trainers.speech_separation): train, resume, fine-tune, evaluate on the demo corpus."""
import csv
import json
import logging

import pytest
from modelscope.metainfo import Trainers
from modelscope.models import Model
from modelscope.msdatasets import MsDataset
from modelscope.trainers import build_trainer

from modelscope_mossformer import AudioBrainPreprocessor
from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus
from modelscope_mossformer.model import MossFormerSeparation
from modelscope_mossformer.trainer import SpeechSeparationTrainer

TINY = {'enc_channels': 16, 'model_dim': 16, 'num_blocks': 1, 'group_size': 16, 'query_key_dim': 16}
FAST = {'segment_seconds': 0.5, 'batch_size': 2, 'lr': 2e-3, 'progressbar': False}


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    spec = DemoCorpusSpec(train_mixtures=6, validation_mixtures=2, test_mixtures=2, min_seconds=0.6,
                          max_seconds=0.9, seed=11)
    return generate_demo_corpus(tmp_path_factory.mktemp('corpus2'), spec)


@pytest.fixture(scope='module')
def corpus3(tmp_path_factory):
    spec = DemoCorpusSpec(num_spks=3, train_mixtures=4, validation_mixtures=2, test_mixtures=2, min_seconds=0.6,
                          max_seconds=0.9, seed=12)
    return generate_demo_corpus(tmp_path_factory.mktemp('corpus3'), spec)


def model_dir(path, model_type='speech_mossformer_separation_temporal_8k', train=None, **model):
    path.mkdir(parents=True, exist_ok=True)
    (path / 'configuration.json').write_text(json.dumps({
        'framework': 'pytorch', 'task': 'speech-separation', 'model': {'type': model_type, **TINY, **model},
        'train': {**FAST, **(train or {})}}))
    return path


def msdataset(csv_path, num_spks=2):
    fields = [('mix_wav:FILE', 'mix_sig')] + [(f's{i + 1}_wav:FILE', f's{i + 1}_sig') for i in range(num_spks)]
    dataset = MsDataset.load('csv', data_files={'train': [str(csv_path)]}, split='train')
    return dataset.to_torch_dataset(preprocessors=[AudioBrainPreprocessor(takes=t, provides=p, root=csv_path.parent)
                                                   for t, p in fields], to_tensor=False)


def train_log(work_dir):
    return [dict(part.split(': ') for part in line.strip().split(', '))
            for line in (work_dir / 'train_log.txt').read_text().splitlines()]


def test_modelscope_snippet_trains_keeps_the_best_and_evaluates(tmp_path, corpus):
    work_dir = tmp_path / 'train_dir'
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir(tmp_path / 'model')), train_dataset=msdataset(corpus.csv['train']),
        eval_dataset=msdataset(corpus.csv['validation']), work_dir=str(work_dir), max_epochs=3))
    assert isinstance(trainer, SpeechSeparationTrainer)
    result = trainer.train()
    losses = [epoch['train_loss'] for epoch in result['epochs']]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # files: checkpoints, logs, best model dir in the released format
    assert len(list((work_dir / 'save').glob('CKPT+*'))) >= 1
    assert [int(row['epoch']) for row in train_log(work_dir)] == [1, 2, 3]
    assert list((work_dir / 'tensorboard').glob('events.out.tfevents.*'))
    best = work_dir / 'best_model'
    assert {p.name for p in best.iterdir()} >= {'configuration.json', 'encoder.bin', 'decoder.bin', 'masknet.bin'}
    best_score = max(epoch['valid_si_snr'] for epoch in result['epochs'])
    assert json.loads((best / 'configuration.json').read_text())['train_result']['valid_si_snr'] == \
        pytest.approx(best_score)
    assert isinstance(Model.from_pretrained(str(best)), MossFormerSeparation)
    # the snippet's last two lines
    trainer.model.load_check_point(device=trainer.device)
    scores = trainer.evaluate(None)
    assert set(scores) == {'si-snr', 'si-snri', 'sdr', 'sdri'}
    assert scores['si-snr'] == pytest.approx(best_score, abs=1e-3)  # the best model on the same split
    rows = list(csv.DictReader(open(work_dir / 'eval_results.csv')))
    assert len(rows) == 3 and rows[-1]['id'] == 'MEAN'


def test_train_again_resumes_to_the_same_epoch_count(tmp_path, corpus):
    args = dict(model=str(model_dir(tmp_path / 'model')), train_dataset=str(corpus.csv['train']),
                eval_dataset=str(corpus.csv['validation']), work_dir=str(tmp_path / 'work'))
    first = build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=2)).train()
    assert [e['epoch'] for e in first['epochs']] == [1, 2]
    second = build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=3)).train()
    assert [e['epoch'] for e in second['epochs']] == [3]  # epochs 1-2 recovered, not redone
    assert [int(row['epoch']) for row in train_log(tmp_path / 'work')] == [1, 2, 3]
    again = build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=3)).train()
    assert again['epochs'] == []


def test_three_speakers_fine_tuned_from_a_two_speaker_checkpoint(tmp_path, corpus, corpus3, caplog):
    two = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir(tmp_path / 'two')), train_dataset=str(corpus.csv['train']),
        eval_dataset=str(corpus.csv['validation']), work_dir=str(tmp_path / 'work2'), max_epochs=1))
    two.train()
    caplog.set_level(logging.WARNING, logger='modelscope_mossformer')
    three = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir(tmp_path / 'three', num_spks=3)), train_dataset=str(corpus3.scp['train']),
        eval_dataset=str(corpus3.scp['validation']), work_dir=str(tmp_path / 'work3'), max_epochs=1,
        init_checkpoint=str(tmp_path / 'work2' / 'best_model'),
        train={'fine_tune_lr': 7e-5, 'activation_checkpointing': True}))
    three.train()
    assert three.model.separator.activation_checkpointing is True
    assert 're-initialised masker.out_proj.weight, masker.out_proj.bias' in caplog.text
    assert float(train_log(tmp_path / 'work3')[0]['lr']) == pytest.approx(7e-5)
    assert three.model.num_spks == 3
    assert set(three.evaluate(None)) == {'si-snr', 'si-snri', 'sdr', 'sdri'}


def test_cfg_modify_fn_and_config_errors(tmp_path, corpus):
    def modify(cfg):
        cfg.train.max_epochs = 1
        return cfg

    args = dict(model=str(model_dir(tmp_path / 'model')), train_dataset=str(corpus.csv['train']),
                eval_dataset=str(corpus.csv['validation']), work_dir=str(tmp_path / 'work'))
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(args, cfg_modify_fn=modify))
    assert trainer.train_cfg['max_epochs'] == 1
    assert json.loads((tmp_path / 'work' / 'configuration.json').read_text())['train']['max_epochs'] == 1
    with pytest.raises(ValueError, match=r'unknown configuration key train.augment.dynamic_mix'):
        build_trainer(Trainers.speech_separation, default_args=dict(args, train={'augment': {'dynamic_mix': True}}))


def test_evaluate_without_training_uses_the_models_own_weights(tmp_path, corpus):
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir(tmp_path / 'model')), eval_dataset=str(corpus.csv['test']),
        work_dir=str(tmp_path / 'work')))
    scores = trainer.evaluate(None)
    assert abs(scores['si-snri']) < 30 and (tmp_path / 'work' / 'eval_results.csv').is_file()


def test_bad_examples_are_skipped_and_counted(tmp_path, corpus):
    rows = corpus.csv['train'].read_text().splitlines()
    broken = tmp_path / 'train_with_missing.csv'
    absolute = [','.join(str((corpus.csv['train'].parent / cell).resolve()) for cell in row.split(','))
                for row in rows[1:]]
    broken.write_text('\n'.join([rows[0]] + absolute + ['/nope/m.wav,/nope/a.wav,/nope/b.wav,v98,v99']) + '\n')
    args = dict(model=str(model_dir(tmp_path / 'model')), train_dataset=str(broken),
                eval_dataset=str(corpus.csv['validation']), work_dir=str(tmp_path / 'work'), max_epochs=1)
    with pytest.raises(ValueError, match=r'train_with_missing.csv:8: .*m.wav: file not found'):
        build_trainer(Trainers.speech_separation, default_args=args).train()
    skipping = build_trainer(Trainers.speech_separation, default_args=dict(
        args, work_dir=str(tmp_path / 'work_skip'), train={'bad_example_policy': 'skip'}))
    skipping.train()
    assert float(train_log(tmp_path / 'work_skip')[0]['train_skipped']) == 1
