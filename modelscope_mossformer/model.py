"""ModelScope models: thin adapters around the plain MossFormer / MossFormer2 modules.

One class serves every registered type; the type name fixes the family and the
default sample rate, the configuration everything else.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from modelscope.models import MODELS, TorchModel

from .metainfo import CONFIGURATION_FILE, MODEL_TYPES, TASK, Models, model_type_for
from .models import MossFormer, build_separator
from .models.checkpoint import LoadReport, find_weights, load_weights, save_released
from .models.configs import CONFIG_CLASSES, MODELSCOPE_PLUMBING_KEYS, MossFormerConfig
from .registration import register

logger = logging.getLogger(__name__)

# top-level configuration.json key naming this package and what loading the directory needs
PACKAGE_KEY = 'modelscope_mossformer'


class MossFormerSeparation(TorchModel):
    """A MossFormer or MossFormer2 separator usable through ModelScope.

    Args:
        model_dir: model directory; its weights are loaded when present (unless
            `load_weights=False`).
        config: a ready config; otherwise built from the remaining keyword
            arguments (the configuration.json `model` section).
        model_type: the registered type; ModelScope passes it as `type`.
        load_weights: load weights found in `model_dir`.

    `forward(inputs)` takes [B, T] mixtures and returns [B, C, T] sources.
    """

    default_type: Optional[str] = None

    def __init__(self, model_dir: Optional[str] = None, config: Optional[MossFormerConfig] = None,
                 model_type: Optional[str] = None, load_weights: bool = True, **kwargs: Any) -> None:
        plumbing = {k: kwargs[k] for k in ('device', 'trust_remote_code') if k in kwargs}
        super().__init__(model_dir, **plumbing)
        model_type = model_type or kwargs.get('type') or self.default_type
        if config is None:
            if model_type not in MODEL_TYPES:
                raise ValueError(f'unknown model type {model_type!r}; registered types: {sorted(MODEL_TYPES)}')
            family, rate = MODEL_TYPES[model_type]
            arch = {k: v for k, v in kwargs.items() if k not in MODELSCOPE_PLUMBING_KEYS}
            arch.setdefault('sample_rate', rate)
            where = f'{Path(model_dir) / CONFIGURATION_FILE}: model' if model_dir else 'model arguments'
            config = CONFIG_CLASSES[family].from_model_kwargs(arch, source=where)
        self.config = config
        if model_type in MODEL_TYPES:
            _check_type_matches(model_type, config, model_dir)
        self.model_type = model_type or model_type_for(config.family, config.sample_rate)
        self.separator: MossFormer = build_separator(config)
        self.weights_source: Optional[LoadReport] = None
        if load_weights and model_dir and os.path.isdir(model_dir) and find_weights(model_dir) is not None:
            self.load_check_point(model_dir)

    @property
    def num_spks(self) -> int:
        return self.config.num_spks

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @classmethod
    def from_pretrained(cls, model_name_or_path: Union[str, os.PathLike], *args: Any,
                        **kwargs: Any) -> 'MossFormerSeparation':
        """`Model.from_pretrained` that resolves a hub id from ModelScope's local cache without network access.

        A directory loads as it is; a hub id already cached loads offline; an uncached hub id downloads when
        the hub is reachable and otherwise fails within seconds naming what to do (`hub.resolve_model_dir`).

        Raises:
            TypeError: ModelScope built another class for the directory's model type (its registry holds
                another stack, e.g. ModelScope's built-in MossFormer).
        """
        from .hub import resolve_model_dir

        directory = resolve_model_dir(model_name_or_path)
        model = super().from_pretrained(str(directory), *args, **kwargs)
        return ensure_ours(model, directory)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """[B, T] mixtures -> [B, C, T] estimated sources."""
        return self.separator(inputs)

    def load_check_point(self, load_path: Optional[Union[str, os.PathLike]] = None,
                         device: Optional[Union[str, torch.device]] = None, strict: bool = True) -> LoadReport:
        """Load weights in any released format (or this package's) and move to `device`.

        Args:
            load_path: checkpoint file or model dir; the model dir when None.
            device: where to put the model; CPU when None.
            strict: accepted for compatibility; loading is always strict
                except for the constant rotary-embedding table.
        """
        source = load_path or self.model_dir
        if not source:
            raise ValueError('load_check_point needs a load_path: this model has no model_dir')
        del strict
        self.weights_source = load_weights(self.separator, source)
        self.to(torch.device(device) if device is not None else torch.device('cpu'))
        return self.weights_source

    def model_section(self) -> Dict[str, Any]:
        """The configuration.json `model` section for this model (released key names where they exist)."""
        return self.section_for(self.config, self.model_type)

    @staticmethod
    def section_for(config: MossFormerConfig, model_type: str) -> Dict[str, Any]:
        """A `model` section for `config`: released key names where they exist, so ModelScope's classes read it."""
        return {'type': model_type, **config.to_model_section()}

    def save_model_dir(self, directory: Union[str, os.PathLike],
                       extra_configuration: Optional[Mapping[str, Any]] = None) -> List[Path]:
        """Write a loadable model dir: configuration.json + weights in the released format."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        configuration: Dict[str, Any] = {}
        if self.model_dir and (Path(self.model_dir) / CONFIGURATION_FILE).is_file():
            configuration = read_configuration(self.model_dir)
        configuration = model_configuration(self.model_section(), base=configuration)
        configuration[PACKAGE_KEY] = package_note()
        configuration.update(dict(extra_configuration or {}))
        written = save_released(self.separator, directory)
        written.append(write_configuration(directory, configuration))
        return written


def _check_type_matches(model_type: str, config: MossFormerConfig, model_dir: Optional[str]) -> None:
    """The config is the one source of family, rate and speakers; a type name that says otherwise is an error
    (a rate without a registered type of its own, e.g. 22050 Hz, keeps the 8 kHz name)."""
    family, rate = MODEL_TYPES[model_type]
    rates_with_a_type = {r for f, r in MODEL_TYPES.values() if f == config.family}
    if family != config.family or (config.sample_rate != rate and config.sample_rate in rates_with_a_type):
        where = f'{Path(model_dir) / CONFIGURATION_FILE}: ' if model_dir else ''
        raise ValueError(f'{where}model type {model_type!r} is {family} at {rate} Hz, but the configuration says '
                         f'{config.family} at {config.sample_rate} Hz; use type '
                         f'{model_type_for(config.family, config.sample_rate)!r} or change sample_rate')


def model_configuration(model_section: Mapping[str, Any], train: Optional[Mapping[str, Any]] = None,
                        base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The configuration.json of a model dir, assembled in one place.

    Args:
        model_section: the ``model`` section (with its ``type``, which the pipeline section repeats).
        train: the ``train`` section, if any (written as given: pass `released_spelling(...)`).
        base: a configuration whose other sections (``preprocessor``, ``evaluation``...) are kept.
    """
    configuration = dict(base or {})
    configuration.update({'framework': 'pytorch', 'task': TASK, 'model': dict(model_section),
                          'pipeline': {'type': model_section['type']}})
    if train is not None:
        configuration['train'] = dict(train)
    return configuration


def package_note() -> Dict[str, str]:
    """What a directory written by this package needs (a top-level configuration.json key ModelScope ignores)."""
    from . import __version__

    return {'version': __version__,
            'requires': 'pip install modelscope_mossformer, then `import modelscope_mossformer` before '
                        'ModelScope\'s pipeline() / build_trainer() / Model.from_pretrained(); without it '
                        'ModelScope builds its own MossFormer classes (8 kHz types) or reports the type as '
                        'unregistered (16 kHz types)'}


def ensure_ours(model: Any, model_dir: Union[str, os.PathLike]) -> 'MossFormerSeparation':
    """`model` if ModelScope built this package's class, else a TypeError saying which stack is active."""
    if isinstance(model, MossFormerSeparation):
        return model
    kind = type(model)
    raise TypeError(
        f'{Path(model_dir) / CONFIGURATION_FILE}: ModelScope built {kind.__module__}.{kind.__qualname__} for this '
        f'model type instead of modelscope_mossformer\'s model: its registry holds another stack. Run '
        f'`import modelscope_mossformer` in this process before building models, and do not register other '
        f'classes under the names in modelscope_mossformer.metainfo.Models afterwards.')


def load_model_dir(model_dir: Union[str, os.PathLike], **kwargs: Any) -> 'MossFormerSeparation':
    """Build the registered model for a local model dir through ModelScope, checking that it is ours."""
    from modelscope.models import Model

    return ensure_ours(Model.from_pretrained(str(model_dir), **kwargs), model_dir)


def read_configuration(model_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Parse a model dir's configuration.json with an error naming the file."""
    path = Path(model_dir) / CONFIGURATION_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: no configuration.json in the model directory') from None
    except json.JSONDecodeError as err:
        raise ValueError(f'{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}') from None


def write_configuration(directory: Union[str, os.PathLike], configuration: Mapping[str, Any]) -> Path:
    path = Path(directory) / CONFIGURATION_FILE
    tmp = path.with_name(f'.{CONFIGURATION_FILE}.tmp')
    tmp.write_text(json.dumps(configuration, indent=4) + '\n')
    os.replace(tmp, path)
    return path


class MossFormer8k(MossFormerSeparation):
    default_type = Models.mossformer_8k


class MossFormer2For8k(MossFormerSeparation):
    default_type = Models.mossformer2_8k


class MossFormer16k(MossFormerSeparation):
    default_type = Models.mossformer_16k


class MossFormer2For16k(MossFormerSeparation):
    default_type = Models.mossformer2_16k


REGISTERED_MODELS = {cls.default_type: cls for cls in (MossFormer8k, MossFormer2For8k, MossFormer16k,
                                                         MossFormer2For16k)}
for _name, _cls in REGISTERED_MODELS.items():
    register(MODELS, _cls, _name, group_key=TASK)
