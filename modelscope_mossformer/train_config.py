"""The ``train`` section of configuration.json: defaults, released spellings, merging, validation.

This package's own keys are flat (``lr``, ``weight_decay``, ``max_grad_norm``...).  The released
MossFormer configuration.json (and ModelScope's built-in ``SeparationTrainer``, which reads it) spells
three of them inside an ``optimizer`` block; both spellings are accepted on input:

==========================================  ==========================  =====================================
released key                                this package                notes
==========================================  ==========================  =====================================
``train.max_epochs``                        ``max_epochs``              same name
``train.seed``                              ``seed``                    same name
``train.optimizer.type``                    (Adam)                      only ``Adam`` is supported
``train.optimizer.lr``                      ``lr``
``train.optimizer.weight_decay``            ``weight_decay``            Adam's L2 term, as in the built-in
``train.optimizer.clip_grad_norm``          ``max_grad_norm``           negative: no clipping (``null``); 0 is
                                                                        refused (it zeroes every gradient)
``train.lr_scheduler.type``                 (ReduceLROnPlateau)         only ReduceLROnPlateau is supported
``train.lr_scheduler.factor``               ``lr_scheduler.factor``     same name
``train.lr_scheduler.patience``             ``lr_scheduler.patience``   same name
``train.lr_scheduler.dont_halve_until_epoch``  same name
==========================================  ==========================  =====================================

A section that gives one setting in both spellings with different values is an error.  The sections this
package writes (``work_dir/configuration.json``, ``best_model/configuration.json``) use the released
spelling for these keys, so ModelScope's built-in trainer reads them too, and this package's spelling for
everything else.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .data.dataset import AugmentConfig

@dataclass
class LRSchedule:
    """ReduceLROnPlateau on the validation SI-SNR (the released recipe)."""

    factor: float = 0.5
    patience: int = 2
    dont_halve_until_epoch: int = 85
    lr_min: float = 1e-8


@dataclass
class TrainConfig:
    """The ``train`` section, typed: every key, its type and its default (the released recipe), once.

    `to_dict` gives the section in this package's spelling (`DEFAULT_TRAIN_CONFIG` is the default one);
    `from_dict` builds it back from a validated section; `released_spelling` gives the written form.
    """

    # schedule
    max_epochs: int = 200
    lr: float = 1.5e-4
    fine_tune_lr: float = 5e-5  # used instead of lr when init_checkpoint is set
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 5.0  # None: no clipping
    lr_scheduler: LRSchedule = field(default_factory=LRSchedule)
    loss_threshold_db: float = 30.0  # examples separated better than this are left out of the loss
    # data
    batch_size: int = 1
    eval_batch_size: int = 1
    num_workers: int = 0
    segment_seconds: float = 4.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    bad_example_policy: str = 'raise'
    # SpeechBrain run options
    precision: str = 'fp32'
    eval_precision: str = 'fp32'
    grad_accumulation_factor: int = 1
    activation_checkpointing: bool = False  # recompute each block in backward: ~half the memory, ~1.4x the time
    nonfinite_patience: int = 3
    ckpt_interval_minutes: float = 0
    ckpt_interval_steps: int = 0
    progressbar: bool = True
    distributed_backend: Optional[str] = None  # nccl on CUDA, gloo on CPU when None
    # runs
    seed: int = 1234
    init_checkpoint: Optional[str] = None
    # evaluation and the exported model
    eval_metrics: List[str] = field(default_factory=list)  # perceptual metrics of evaluate(): pesq, stoi, estoi
    average_best: Optional[int] = None  # best_model/ = mean of the N best checkpoints (N kept); None: off

    def to_dict(self) -> Dict[str, Any]:
        """The section in this package's spelling, JSON types."""
        out: Dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, AugmentConfig):
                value = value.to_section()
            elif isinstance(value, LRSchedule):
                value = asdict(value)
            out[item.name] = value
        return out

    @classmethod
    def from_dict(cls, section: Mapping[str, Any], source: str = 'train section') -> 'TrainConfig':
        """A complete, validated section (as `resolve_train_config` returns it) as a typed config."""
        validate_train_config(section, source)
        values = dict(section)
        values['lr_scheduler'] = LRSchedule(**values['lr_scheduler'])
        values['augment'] = AugmentConfig.from_section(values['augment'])
        return cls(**values)


DEFAULT_TRAIN_CONFIG: Dict[str, Any] = TrainConfig().to_dict()

SUPPORTED_OPTIMIZERS = ('Adam',)
SUPPORTED_SCHEDULERS = ('ReduceLROnPlateau',)
# optimizer.<released key> -> this package's key
OPTIMIZER_KEYS = {'lr': 'lr', 'weight_decay': 'weight_decay', 'clip_grad_norm': 'max_grad_norm'}


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any], where: str = 'train') -> Dict[str, Any]:
    """Recursively override `base`; unknown keys raise ValueError naming the full key."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if key not in base:
            raise ValueError(f'unknown configuration key {where}.{key}; known: {sorted(base)}')
        if isinstance(base[key], Mapping) and isinstance(value, Mapping):
            merged[key] = merge_config(base[key], value, f'{where}.{key}')
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _grad_norm_from_released(value: Any, where: str) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{where}: clip_grad_norm must be a number, got {value!r}')
    if value == 0:
        raise ValueError(f'{where}: clip_grad_norm 0 would scale every gradient to zero (ModelScope\'s built-in '
                         'trainer clips to norm 0); use a positive norm, or a negative value for no clipping')
    return None if value < 0 else float(value)


def normalise_train_section(section: Optional[Mapping[str, Any]], source: str) -> Dict[str, Any]:
    """Translate one ``train`` section's released spellings to this package's keys.

    Args:
        section: the section as written (released keys, this package's keys, or both).
        source: where it came from (a file path or 'train argument'), used in every error.

    Raises:
        ValueError: an optimizer or scheduler this trainer cannot honour, an unknown ``optimizer`` key,
            or one setting given in both spellings with different values; the message names the key,
            `source` and what is supported.
    """
    out = copy.deepcopy(dict(section or {}))
    optimizer = out.pop('optimizer', None)
    if optimizer is not None:
        if not isinstance(optimizer, Mapping):
            raise ValueError(f'{source}: train.optimizer must be an object with keys type, '
                             f'{", ".join(OPTIMIZER_KEYS)}; got {optimizer!r}')
        optimizer = dict(optimizer)
        kind = optimizer.pop('type', 'Adam')
        if str(kind).lower() not in {name.lower() for name in SUPPORTED_OPTIMIZERS}:
            raise ValueError(f'{source}: train.optimizer.type {kind!r} is not supported by this trainer; '
                             f'supported: {list(SUPPORTED_OPTIMIZERS)}')
        for key, value in optimizer.items():
            if key not in OPTIMIZER_KEYS:
                raise ValueError(f'{source}: unknown key train.optimizer.{key}; this trainer honours '
                                 f'train.optimizer.{{type, {", ".join(OPTIMIZER_KEYS)}}}')
            ours = OPTIMIZER_KEYS[key]
            if ours == 'max_grad_norm':
                value = _grad_norm_from_released(value, f'{source}: train.optimizer')
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'{source}: train.optimizer.{key} must be a number, got {value!r}')
            else:
                value = float(value)
            if ours in out and out[ours] != value:
                raise ValueError(f'{source}: train.optimizer.{key}={optimizer[key]!r} and train.{ours}={out[ours]!r} '
                                 'are the same setting in two spellings with different values; give one')
            out[ours] = value
    scheduler = out.get('lr_scheduler')
    if isinstance(scheduler, Mapping) and 'type' in scheduler:
        scheduler = dict(scheduler)
        kind = scheduler.pop('type')
        if kind not in SUPPORTED_SCHEDULERS:
            raise ValueError(f'{source}: train.lr_scheduler.type {kind!r} is not supported by this trainer; '
                             f'supported: {list(SUPPORTED_SCHEDULERS)} (factor, patience, '
                             'dont_halve_until_epoch, lr_min)')
        out['lr_scheduler'] = scheduler
    augment = out.get('augment')
    if isinstance(augment, Mapping) and isinstance(augment.get('dm_loudness'), str):
        out['augment'] = dict(augment, dm_loudness=augment['dm_loudness'].lower())  # 'LUFS' reads as 'lufs'
    return out


def validate_train_config(cfg: Mapping[str, Any], source: str) -> None:
    """Raise ValueError naming the key when a value cannot be honoured."""
    def positive(key: str, value: Any, integer: bool = False) -> None:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0 or \
                (not integer and not math.isfinite(value)):
            what = 'a positive integer' if integer else 'a positive finite number'
            raise ValueError(f'{source}: train.{key} must be {what}, got {value!r}')

    positive('max_epochs', cfg['max_epochs'], integer=True)
    positive('lr', cfg['lr'])
    positive('fine_tune_lr', cfg['fine_tune_lr'])
    positive('batch_size', cfg['batch_size'], integer=True)
    positive('eval_batch_size', cfg['eval_batch_size'], integer=True)
    if cfg['max_grad_norm'] is not None:
        positive('max_grad_norm', cfg['max_grad_norm'])
    weight_decay = cfg['weight_decay']
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f'{source}: train.weight_decay must be a number >= 0, got {weight_decay!r}')
    if isinstance(cfg['seed'], bool) or not isinstance(cfg['seed'], int):
        raise ValueError(f'{source}: train.seed must be an integer, got {cfg["seed"]!r}')
    if not isinstance(cfg['augment'], Mapping):
        raise ValueError(f'{source}: train.augment must be an object, got {cfg["augment"]!r}')
    try:
        AugmentConfig.from_section(cfg['augment'])
    except ValueError as err:  # the message starts with the field's name
        raise ValueError(f'{source}: train.augment.{err}') from None
    from .perceptual import parse_metric_names

    if not isinstance(cfg['eval_metrics'], (list, tuple)):
        raise ValueError(f'{source}: train.eval_metrics must be a list such as ["pesq", "stoi", "estoi"] '
                         f'(or [] for none), got {cfg["eval_metrics"]!r}')
    parse_metric_names(cfg['eval_metrics'], f'{source}: train.eval_metrics')
    average = cfg['average_best']
    if average is not None and (isinstance(average, bool) or not isinstance(average, int) or average < 1):
        raise ValueError(f'{source}: train.average_best must be null (off) or the number of best checkpoints '
                         f'to average (an integer >= 1; 1 keeps the best single checkpoint), got {average!r}')


def resolve_train_config(*layers: Tuple[Optional[Mapping[str, Any]], str]) -> Dict[str, Any]:
    """Defaults overridden by each (section, source) layer in turn, released spellings translated."""
    cfg = copy.deepcopy(DEFAULT_TRAIN_CONFIG)
    for section, source in layers:
        cfg = merge_config(cfg, normalise_train_section(section, source), 'train')
    validate_train_config(cfg, ' then '.join(source for _, source in layers) or 'train defaults')
    return cfg


def released_spelling(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The section as written to disk: the released ``optimizer`` block instead of lr / weight_decay /
    max_grad_norm, so that ModelScope's built-in trainer reads it as well."""
    out = copy.deepcopy(dict(cfg))
    optimizer: Dict[str, Any] = {'type': 'Adam'}
    for released, ours in OPTIMIZER_KEYS.items():
        value = out.pop(ours)
        optimizer[released] = -1.0 if ours == 'max_grad_norm' and value is None else value
    ordered: Dict[str, Any] = {}
    for key, value in out.items():
        ordered[key] = value
        if key == 'max_epochs':
            ordered['optimizer'] = optimizer
    ordered.setdefault('optimizer', optimizer)
    return ordered


def modified_section(before: Mapping[str, Any], after: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """A section edited by a user's `cfg_modify_fn` (handed `before`, in the released spelling).

    A user may set either spelling (``cfg.train.lr`` or ``cfg.train.optimizer.lr``); the one that changed
    wins.  Setting both to different new values is the two-spellings error.
    """
    after = copy.deepcopy(dict(after))
    optimizer = after.get('optimizer')
    old_optimizer = before.get('optimizer') or {}
    if isinstance(optimizer, Mapping):
        optimizer = dict(optimizer)
        for released, ours in OPTIMIZER_KEYS.items():
            if ours in after and released in optimizer and optimizer[released] == old_optimizer.get(released):
                del optimizer[released]  # only our spelling was edited
        after['optimizer'] = optimizer
    return normalise_train_section(after, source)
