"""The train section: every released key maps onto this package's settings; what cannot be honoured is refused."""
import json

import pytest

from modelscope_mossformer.train_config import (DEFAULT_TRAIN_CONFIG, modified_section, normalise_train_section,
                                                released_spelling, resolve_train_config)

from .released import RELEASED_TRAIN

SOURCE = '/models/x/configuration.json'


def test_the_released_section_maps_key_by_key():
    cfg = resolve_train_config((RELEASED_TRAIN, SOURCE))
    assert cfg['max_epochs'] == 200 and cfg['seed'] == 10
    assert cfg['lr'] == 1.5e-4 and cfg['weight_decay'] == 0.0 and cfg['max_grad_norm'] == 5.0
    assert cfg['lr_scheduler'] == {'factor': 0.5, 'patience': 2, 'dont_halve_until_epoch': 85,
                                   'lr_min': DEFAULT_TRAIN_CONFIG['lr_scheduler']['lr_min']}
    # everything the released section does not mention keeps this package's default
    untouched = {k for k in DEFAULT_TRAIN_CONFIG if k not in ('max_epochs', 'seed', 'lr', 'weight_decay',
                                                              'max_grad_norm', 'lr_scheduler')}
    assert {k: cfg[k] for k in untouched} == {k: DEFAULT_TRAIN_CONFIG[k] for k in untouched}


def test_written_spelling_is_the_released_one_and_reads_back_identically():
    cfg = resolve_train_config((RELEASED_TRAIN, SOURCE), ({'lr': 3e-4, 'max_grad_norm': None}, 'arguments'))
    written = json.loads(json.dumps(released_spelling(cfg)))
    assert written['optimizer'] == {'type': 'Adam', 'lr': 3e-4, 'weight_decay': 0.0, 'clip_grad_norm': -1.0}
    assert not {'lr', 'weight_decay', 'max_grad_norm'} & set(written)
    assert resolve_train_config((written, 'written')) == cfg


@pytest.mark.parametrize('optimizer_type', ['Adam', 'adam'])
def test_adam_is_accepted(optimizer_type):
    section = {'optimizer': {'type': optimizer_type, 'lr': 1e-3}}
    assert normalise_train_section(section, SOURCE) == {'lr': 1e-3}


def test_negative_clip_grad_norm_means_no_clipping_as_in_the_built_in_trainer():
    assert resolve_train_config(({'optimizer': {'clip_grad_norm': -1}}, SOURCE))['max_grad_norm'] is None


@pytest.mark.parametrize('section, message', [
    ({'optimizer': {'type': 'SGD', 'lr': 0.1}},
     r"configuration\.json: train\.optimizer\.type 'SGD' is not supported by this trainer; supported: \['Adam'\]"),
    ({'optimizer': {'type': 'Adam', 'momentum': 0.9}},
     r'configuration\.json: unknown key train\.optimizer\.momentum; this trainer honours '
     r'train\.optimizer\.\{type, lr, weight_decay, clip_grad_norm\}'),
    ({'optimizer': {'clip_grad_norm': 0}}, r'clip_grad_norm 0 would scale every gradient to zero'),
    ({'optimizer': {'lr': '1e-3'}}, r"train\.optimizer\.lr must be a number, got '1e-3'"),
    ({'optimizer': 'Adam'}, r'train\.optimizer must be an object'),
    ({'lr_scheduler': {'type': 'StepLR', 'step_size': 3}},
     r"train\.lr_scheduler\.type 'StepLR' is not supported by this trainer; supported: \['ReduceLROnPlateau'\]"),
    ({'lr': 1e-3, 'optimizer': {'lr': 2e-3}},
     r'train\.optimizer\.lr=0\.002 and train\.lr=0\.001 are the same setting in two spellings with different '
     r'values; give one'),
    ({'max_grad_norm': 10.0, 'optimizer': {'clip_grad_norm': 5}}, r'two spellings'),
    ({'optimizer': {'lr': 1e-3}, 'warmup_steps': 100}, r'unknown configuration key train\.warmup_steps'),
])
def test_what_cannot_be_honoured_is_refused_naming_key_and_file(section, message):
    with pytest.raises(ValueError, match=message) as caught:
        resolve_train_config((section, SOURCE))
    if 'unknown configuration key' not in message:
        assert SOURCE in str(caught.value)


def test_both_spellings_with_the_same_value_are_one_setting():
    assert normalise_train_section({'lr': 1e-3, 'optimizer': {'lr': 1e-3}}, SOURCE) == {'lr': 1e-3}


@pytest.mark.parametrize('section, message', [
    ({'max_epochs': 0}, r'train\.max_epochs must be a positive integer, got 0'),
    ({'lr': -1.0}, r'train\.lr must be a positive finite number'),
    ({'max_grad_norm': 0.0}, r'train\.max_grad_norm must be a positive finite number'),
    ({'weight_decay': -0.1}, r'train\.weight_decay must be a number >= 0'),
    ({'seed': 1.5}, r'train\.seed must be an integer'),
])
def test_values_that_cannot_train_are_refused(section, message):
    with pytest.raises(ValueError, match=message):
        resolve_train_config((section, SOURCE))


def test_later_layers_override_earlier_ones_in_either_spelling():
    cfg = resolve_train_config((RELEASED_TRAIN, SOURCE), ({'lr': 7e-4}, 'the train argument'),
                               ({'max_epochs': 2}, 'the trainer arguments'))
    assert cfg['lr'] == 7e-4 and cfg['max_epochs'] == 2 and cfg['max_grad_norm'] == 5.0


@pytest.mark.parametrize('edit, expected_lr', [
    (lambda train: train['optimizer'].update(lr=1e-3), 1e-3),  # the released spelling
    (lambda train: train.update(lr=2e-3), 2e-3),  # this package's spelling, added next to the released one
])
def test_a_cfg_modify_fn_may_edit_either_spelling(edit, expected_lr):
    handed = released_spelling(resolve_train_config((RELEASED_TRAIN, SOURCE)))
    edited = json.loads(json.dumps(handed))
    edit(edited)
    cfg = resolve_train_config((modified_section(handed, edited, 'cfg_modify_fn'), 'cfg_modify_fn'))
    assert cfg['lr'] == expected_lr


def test_a_cfg_modify_fn_setting_both_spellings_differently_is_refused():
    handed = released_spelling(resolve_train_config((RELEASED_TRAIN, SOURCE)))
    edited = json.loads(json.dumps(handed))
    edited['lr'], edited['optimizer']['lr'] = 1e-3, 2e-3
    with pytest.raises(ValueError, match='two spellings'):
        modified_section(handed, edited, 'cfg_modify_fn')


def test_the_typed_config_is_the_one_source_of_defaults_and_round_trips():
    from modelscope_mossformer.data.dataset import AugmentConfig
    from modelscope_mossformer.train_config import LRSchedule, TrainConfig

    assert TrainConfig().to_dict() == DEFAULT_TRAIN_CONFIG
    typed = TrainConfig.from_dict(resolve_train_config((RELEASED_TRAIN, SOURCE)), SOURCE)
    assert isinstance(typed.lr_scheduler, LRSchedule) and isinstance(typed.augment, AugmentConfig)
    assert (typed.seed, typed.lr, typed.lr_scheduler.dont_halve_until_epoch) == (10, 1.5e-4, 85)
    assert TrainConfig.from_dict(typed.to_dict()) == typed
    with pytest.raises(ValueError, match=r'train\.batch_size must be a positive integer'):
        TrainConfig.from_dict(dict(DEFAULT_TRAIN_CONFIG, batch_size=0), SOURCE)
