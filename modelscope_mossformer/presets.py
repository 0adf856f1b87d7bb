"""Ready configurations (configuration.json files) shipped in `modelscope_mossformer/configs/`.

`mossformer_8k`, `mossformer_16k` (MossFormer(L)), `mossformer2_8k`, `mossformer2_16k` (the released
MossFormer2 size), each with the default `train` section.  `write_model_dir` copies one into a folder that
`build_trainer(..., model=<folder>)` or `Model.from_pretrained` takes; the repository's top-level
configuration.json is `mossformer_8k`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

CONFIG_DIR = Path(__file__).parent / 'configs'
PRESETS = ('mossformer_8k', 'mossformer_16k', 'mossformer2_8k', 'mossformer2_16k')


def build_preset(name: str) -> Dict[str, Any]:
    """The configuration of a preset, computed from the code's defaults."""
    from .model import MossFormerSeparation, model_configuration
    from .models import mossformer2_base, mossformer_large
    from .metainfo import model_type_for
    from .train_config import DEFAULT_TRAIN_CONFIG, released_spelling

    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}; choose one of {PRESETS}')
    family, rate = name.split('_')
    config = (mossformer_large if family == 'mossformer' else mossformer2_base)(sample_rate=int(rate[:-1]) * 1000)
    model_type = model_type_for(config.family, config.sample_rate)
    section = MossFormerSeparation.section_for(config, model_type)
    return model_configuration(section, train=released_spelling(DEFAULT_TRAIN_CONFIG))


def load_preset(name: str) -> Dict[str, Any]:
    """A shipped preset's configuration.json as a dict."""
    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}; choose one of {PRESETS}')
    return json.loads((CONFIG_DIR / f'{name}.json').read_text())


def write_model_dir(name: str, directory: Union[str, os.PathLike], model: Optional[Dict[str, Any]] = None,
                    train: Optional[Dict[str, Any]] = None) -> Path:
    """Write a preset (with optional `model` / `train` key overrides) as a model dir's configuration.json."""
    from .metainfo import MODEL_TYPES, model_type_for
    from .model import MossFormerSeparation, model_configuration, write_configuration
    from .models.configs import CONFIG_CLASSES
    from .train_config import released_spelling, resolve_train_config

    configuration = load_preset(name)
    section = dict(configuration['model'])
    family = MODEL_TYPES[section.pop('type')][0]
    # the preset's released names and the override's (either spelling) meet in the config, which writes
    # the section back in one spelling
    cls = CONFIG_CLASSES[family]
    overridden = {cls.field_for(key) for key in (model or {})}
    kept = {key: value for key, value in section.items() if cls.field_for(key) not in overridden}
    config = cls.from_model_kwargs({**kept, **(model or {})}, source=f'preset {name}')
    configuration = model_configuration(
        MossFormerSeparation.section_for(config, model_type_for(config.family, config.sample_rate)),
        train=released_spelling(resolve_train_config((configuration['train'], f'preset {name}'),
                                                     (train, 'the train argument'))),
        base=configuration)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return write_configuration(directory, configuration)
