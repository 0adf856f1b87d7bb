"""Checkpoint averaging: ``train.average_best: N`` and ``mossformer average`` write best_model/ from the mean of
the N best checkpoints (by validation SI-SNR) of a run, record them, and measure the average."""
import json
import logging
import shutil

import pytest
import torch
from modelscope.metainfo import Trainers
from modelscope.models import Model
from modelscope.trainers import build_trainer

from modelscope_mossformer.averaging import (average_checkpoints, average_state_dicts, list_epoch_checkpoints,
                                             select_best, validation_si_snr)
from modelscope_mossformer.cli import main
from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus
from modelscope_mossformer.model import MossFormerSeparation
from modelscope_mossformer.models.checkpoint import CheckpointError, UnsafeCheckpointError
from modelscope_mossformer.workdir import WorkDirLock

TINY = {'enc_channels': 16, 'model_dim': 16, 'num_blocks': 1, 'group_size': 16, 'query_key_dim': 16}
# a high learning rate moves the weights far between epochs, so that the mean of checkpoints is a new model
FAST = {'segment_seconds': 0.5, 'batch_size': 2, 'lr': 5e-3, 'progressbar': False}
EPOCHS = 4
AVERAGE = 3


class Payload:
    """An object a crafted checkpoint could hold: unpickling it means running its module's code."""


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    spec = DemoCorpusSpec(train_mixtures=6, validation_mixtures=3, test_mixtures=2, min_seconds=0.6,
                          max_seconds=0.9, seed=11)
    return generate_demo_corpus(tmp_path_factory.mktemp('corpus'), spec)


def model_dir(path, train=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / 'configuration.json').write_text(json.dumps({
        'framework': 'pytorch', 'task': 'speech-separation',
        'model': {'type': 'speech_mossformer_separation_temporal_8k', **TINY}, 'train': {**FAST, **(train or {})}}))
    return path


def trainer_args(tmp, corpus, work, **train):
    return dict(model=str(model_dir(tmp / f'model-{work}', train)), train_dataset=str(corpus.csv['train']),
                eval_dataset=str(corpus.csv['validation']), work_dir=str(tmp / work))


def train_log(work_dir):
    return [dict(part.split(': ') for part in line.strip().split(', '))
            for line in (work_dir / 'train_log.txt').read_text().splitlines()]


def separator_weights(directory):
    """best_model/'s weights in the separator's own key names."""
    model = Model.from_pretrained(str(directory))
    assert isinstance(model, MossFormerSeparation)
    return model.separator.state_dict()


def checkpoint_mean(checkpoints):
    """The mean computed here independently: float64 sum / count, rounded once to float32."""
    states = [torch.load(c.path / 'separator.ckpt', weights_only=True) for c in checkpoints]
    return {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype)
            if states[0][k].is_floating_point() else states[0][k] for k in states[0]}


@pytest.fixture(scope='module')
def averaged_run(tmp_path_factory, corpus):
    """A tiny run trained EPOCHS epochs with train.average_best = AVERAGE."""
    tmp = tmp_path_factory.mktemp('run')
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        trainer_args(tmp, corpus, 'work', average_best=AVERAGE), max_epochs=EPOCHS))
    result = trainer.train()
    return tmp, trainer, result


# -- averaging state dicts ------------------------------------------------------------------------------


def test_floats_are_averaged_exactly_and_integers_are_copied_from_the_best():
    best = {'w': torch.tensor([1.0, 2.0, 3.0]), 'h': torch.tensor([1.0], dtype=torch.float16),
            'steps': torch.tensor(7), 'mask': torch.tensor([True, False])}
    other = {'w': torch.tensor([2.0, 2.0, 0.1]), 'h': torch.tensor([2.0], dtype=torch.float16),
             'steps': torch.tensor(3), 'mask': torch.tensor([False, False])}
    third = {'w': torch.tensor([3.0, 5.0, 0.2]), 'h': torch.tensor([4.0], dtype=torch.float16),
             'steps': torch.tensor(1), 'mask': torch.tensor([False, True])}
    mean = average_state_dicts([('best', best), ('other', other), ('third', third)])
    expected = ((best['w'].double() + other['w'].double() + third['w'].double()) / 3).float()
    assert torch.equal(mean['w'], expected) and mean['w'].dtype == torch.float32
    assert mean['h'].dtype == torch.float16 and float(mean['h']) == pytest.approx(7 / 3, abs=1e-3)  # fp16 step
    assert mean['steps'].dtype == torch.int64 and int(mean['steps']) == 7  # copied from the best, not 11 / 3
    assert mean['mask'].tolist() == [True, False]
    assert torch.equal(average_state_dicts([('only', best)])['w'], best['w'])


def test_checkpoints_of_different_models_are_refused_by_name():
    best = {'a': torch.zeros(2), 'b': torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r'(?s)CKPT\+2: its parameters differ.*1 missing: b.*1 unexpected: c'):
        average_state_dicts([('CKPT+1', best), ('CKPT+2', {'a': torch.zeros(2), 'c': torch.zeros(3)})])
    with pytest.raises(CheckpointError, match=r'(?s)CKPT\+3.*shape/dtype: b: \(4,\)'):
        average_state_dicts([('CKPT+1', best), ('CKPT+3', {'a': torch.zeros(2), 'b': torch.zeros(4)})])
    with pytest.raises(CheckpointError, match=r'(?s)CKPT\+4.*b: \(3,\) torch.float64'):
        average_state_dicts([('CKPT+1', best), ('CKPT+4', {'a': torch.zeros(2), 'b': torch.zeros(3).double()})])


# -- a run with train.average_best ----------------------------------------------------------------------


def test_the_run_keeps_the_n_best_checkpoints_and_the_latest(averaged_run):
    tmp, trainer, result = averaged_run
    scores = {int(row['epoch']): float(row['valid_si_snr']) for row in train_log(tmp / 'work')}
    assert sorted(scores) == list(range(1, EPOCHS + 1))
    kept = list_epoch_checkpoints(tmp / 'work' / 'save')
    best_epochs = sorted(scores, key=lambda e: -scores[e])[:AVERAGE]
    assert {c.epoch for c in kept} == set(best_epochs) | {EPOCHS}  # N best + the latest, nothing more
    assert [c.epoch for c in kept[:AVERAGE]] == best_epochs
    for checkpoint in kept:
        assert checkpoint.valid_si_snr == pytest.approx(scores[checkpoint.epoch], abs=1e-5)  # printed to 6 digits


def test_best_model_is_the_exact_mean_of_the_n_best_and_records_them(averaged_run):
    tmp, trainer, result = averaged_run
    chosen = list_epoch_checkpoints(tmp / 'work' / 'save')[:AVERAGE]
    averaged = separator_weights(tmp / 'work' / 'best_model')
    expected = checkpoint_mean(chosen)
    assert set(averaged) == set(expected)
    for key in expected:  # the export writes float32 tensors as they are: equal bit for bit
        assert torch.equal(averaged[key], expected[key]), key
    # the checkpoints differ, so the mean is a new model, not one of them
    assert not torch.equal(expected['masker.in_proj.weight'],
                           torch.load(chosen[0].path / 'separator.ckpt', weights_only=True)['masker.in_proj.weight'])
    record = json.loads((tmp / 'work' / 'best_model' / 'configuration.json').read_text())['train_result']
    assert record['averaged']['epochs'] == [c.epoch for c in chosen]
    assert record['averaged']['checkpoints'] == [c.record() for c in chosen]
    assert record['averaged']['best_single_valid_si_snr'] == chosen[0].valid_si_snr
    assert record['valid_si_snr'] == record['averaged']['valid_si_snr'] == result['averaged']['valid_si_snr']
    assert record['averaged']['gain_db'] == pytest.approx(record['valid_si_snr'] - chosen[0].valid_si_snr)


def test_the_recorded_score_is_the_averaged_models_validation_si_snr(averaged_run, corpus):
    tmp, trainer, result = averaged_run
    model = Model.from_pretrained(str(tmp / 'work' / 'best_model'))
    dataset = trainer._dataset(str(corpus.csv['validation']), 'validation', train=False)
    measured = validation_si_snr(model.separator, dataset, batch_size=1, device='cpu')
    # the same weights, data and batches (eval_batch_size 1) as the measurement after training: equal up to
    # float32 rounding
    assert measured == pytest.approx(result['averaged']['valid_si_snr'], abs=1e-5)
    # and trainer.evaluate (whole utterances, test-time path) scores the same model on the same split
    assert trainer.evaluate(None)['si-snr'] == pytest.approx(measured, abs=1e-3)


def test_the_averaged_model_dir_loads_everywhere(averaged_run, corpus, tmp_path):
    tmp, trainer, result = averaged_run
    best = tmp / 'work' / 'best_model'
    assert isinstance(Model.from_pretrained(str(best)), MossFormerSeparation)
    from modelscope.pipelines import pipeline

    separate = pipeline('speech-separation', model=str(best))
    wav = sorted(corpus.root.rglob('*.wav'))[0]
    assert len(separate(str(wav))['output_pcm_list']) == 2
    assert main(['separate', str(wav), '--model', str(best), '--out', str(tmp_path / 'sep'), '--device', 'cpu',
                 '--no-progress']) == 0
    assert len(list((tmp_path / 'sep').glob('*_s*.wav'))) == 2


def test_the_cli_writes_the_same_model_as_the_config_key(averaged_run, tmp_path, capsys):
    tmp, trainer, result = averaged_run
    work = tmp_path / 'copy'
    shutil.copytree(tmp / 'work', work)
    from_config = separator_weights(work / 'best_model')
    shutil.rmtree(work / 'best_model')
    # run.json records the validation data, so --valid is not needed
    assert main(['average', '--work-dir', str(work), '--best', str(AVERAGE), '--device', 'cpu',
                 '--no-progress']) == 0
    out = capsys.readouterr().out
    assert f'averaged {AVERAGE} checkpoint(s)' in out and 'valid SI-SNR of the average' in out
    from_cli = separator_weights(work / 'best_model')
    assert all(torch.equal(from_cli[k], from_config[k]) for k in from_config)
    record = json.loads((work / 'best_model' / 'configuration.json').read_text())['train_result']
    assert record['valid_si_snr'] == pytest.approx(result['averaged']['valid_si_snr'], abs=1e-6)


def test_best_one_is_the_best_checkpoint_with_its_own_score(averaged_run, tmp_path):
    tmp, trainer, result = averaged_run
    work = tmp_path / 'copy'
    shutil.copytree(tmp / 'work', work)
    assert main(['average', '--work-dir', str(work), '--best', '1', '--device', 'cpu', '--no-progress']) == 0
    best = list_epoch_checkpoints(work / 'save')[0]
    weights = separator_weights(work / 'best_model')
    saved = torch.load(best.path / 'separator.ckpt', weights_only=True)
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
    record = json.loads((work / 'best_model' / 'configuration.json').read_text())['train_result']
    assert record['epoch'] == best.epoch and 'averaged' not in record
    # measured again exactly as the trainer measured it at that epoch: SpeechBrain's running mean of the
    # same batch means differs from a plain mean by float rounding only
    assert record['valid_si_snr'] == pytest.approx(best.valid_si_snr, abs=1e-4)


def test_fewer_checkpoints_than_asked_are_used_with_a_warning(averaged_run, tmp_path, caplog):
    tmp, trainer, result = averaged_run
    work = tmp_path / 'copy'
    shutil.copytree(tmp / 'work', work)
    kept = list_epoch_checkpoints(work / 'save')
    caplog.set_level(logging.WARNING, logger='modelscope_mossformer')
    assert main(['average', '--work-dir', str(work), '--best', '10', '--device', 'cpu', '--no-progress',
                 '--valid', str(tmp / 'work' / '..' / 'nonexistent')]) == 2  # a --valid that is not there
    assert main(['average', '--work-dir', str(work), '--best', '10', '--device', 'cpu', '--no-progress']) == 0
    assert f'10 best checkpoint(s) asked for, only {len(kept)} kept' in caplog.text
    weights = separator_weights(work / 'best_model')
    expected = checkpoint_mean(kept)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_a_mismatched_or_unsafe_checkpoint_is_refused_by_name(averaged_run, tmp_path, capsys):
    tmp, trainer, result = averaged_run
    work = tmp_path / 'copy'
    shutil.copytree(tmp / 'work', work)
    second = list_epoch_checkpoints(work / 'save')[1]
    state = torch.load(second.path / 'separator.ckpt', weights_only=True)
    state.pop('masker.prelu.weight')
    torch.save(state, second.path / 'separator.ckpt')
    before = (work / 'best_model' / 'masknet.bin').read_bytes()
    assert main(['average', '--work-dir', str(work), '--best', '3', '--device', 'cpu', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert f'{second.path / "separator.ckpt"}: its parameters differ' in err and 'masker.prelu.weight' in err
    assert (work / 'best_model' / 'masknet.bin').read_bytes() == before  # best_model/ untouched

    torch.save({'w': Payload()}, second.path / 'separator.ckpt')
    with pytest.raises(UnsafeCheckpointError, match='separator.ckpt: refused to load'):
        average_checkpoints(select_best(list_epoch_checkpoints(work / 'save'), 3, work / 'save'))


def test_average_waits_for_no_training_run(averaged_run, tmp_path, capsys):
    tmp, trainer, result = averaged_run
    work = tmp_path / 'copy'
    shutil.copytree(tmp / 'work', work)
    with WorkDirLock(work):
        assert main(['average', '--work-dir', str(work), '--best', '2', '--device', 'cpu', '--no-progress']) == 2
    assert 'is in use by another run' in capsys.readouterr().err


def test_resume_after_averaging_continues_from_the_latest_checkpoint(averaged_run, corpus, tmp_path):
    tmp, trainer, result = averaged_run
    work = tmp_path / 'copy'
    shutil.copytree(tmp / 'work', work)
    args = trainer_args(tmp_path, corpus, 'copy', average_best=AVERAGE)
    resumed = build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=EPOCHS + 1)).train()
    assert [e['epoch'] for e in resumed['epochs']] == [EPOCHS + 1]
    # a run trained straight to EPOCHS + 1: the same epochs, so the averaged best_model/ written at the end of
    # the first call changed nothing of the training (resume recovers the latest checkpoint, not best_model/)
    straight = build_trainer(Trainers.speech_separation, default_args=dict(
        trainer_args(tmp_path, corpus, 'straight', average_best=AVERAGE), max_epochs=EPOCHS + 1)).train()
    assert [row['train_loss'] for row in train_log(work)] == [row['train_loss'] for row in train_log(tmp_path /
                                                                                                    'straight')]
    chosen = list_epoch_checkpoints(work / 'save')[:AVERAGE]
    assert resumed['averaged']['epochs'] == [c.epoch for c in chosen] == straight['averaged']['epochs']
    weights = separator_weights(work / 'best_model')
    expected = checkpoint_mean(chosen)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    # nothing new to train: the average is already in best_model/ and is not computed again
    again = build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=EPOCHS + 1)).train()
    assert again['epochs'] == [] and again['averaged'].get('unchanged') is True


def test_average_best_is_validated_and_off_by_default(tmp_path, corpus):
    from modelscope_mossformer.train_config import DEFAULT_TRAIN_CONFIG, resolve_train_config

    assert DEFAULT_TRAIN_CONFIG['average_best'] is None
    for bad in (0, -2, 2.5, True, '3'):
        with pytest.raises(ValueError, match=r'the train argument: train.average_best must be null \(off\)'):
            resolve_train_config(({'average_best': bad}, 'the train argument'))
    assert resolve_train_config(({'average_best': 5}, 'x'))['average_best'] == 5
    assert main(['average', '--work-dir', str(tmp_path), '--best', '2']) == 2  # not a work dir
    assert main(['average', '--work-dir', str(tmp_path), '--best', '0']) == 2


def test_a_non_finite_average_leaves_best_model_as_it_was(averaged_run, tmp_path, capsys, caplog):
    tmp, trainer, result = averaged_run
    work = tmp_path / 'copy'
    shutil.copytree(tmp / 'work', work)
    second = list_epoch_checkpoints(work / 'save')[1]
    state = torch.load(second.path / 'separator.ckpt', weights_only=True)
    state['masker.in_proj.weight'][0, 0] = float('nan')  # a checkpoint with one NaN weight poisons the mean
    torch.save(state, second.path / 'separator.ckpt')
    before = (work / 'best_model' / 'configuration.json').read_text()
    caplog.set_level(logging.ERROR, logger='modelscope_mossformer')
    assert main(['average', '--work-dir', str(work), '--best', '2', '--device', 'cpu', '--no-progress']) == 1
    assert 'the average is not finite' in capsys.readouterr().err
    assert 'scores nan on validation; best_model/ is left as it was' in caplog.text
    assert (work / 'best_model' / 'configuration.json').read_text() == before
