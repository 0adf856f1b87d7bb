"""ModelScope's builders return this package's classes once it is imported.

ModelScope registers its own MossFormer classes under the released type names.
Whatever the import order of ModelScope's built-in modules and ours, after
`import modelscope_mossformer` the registry and `Model.from_pretrained` must give
our adapter.  Registries are process-global, so every order runs in a fresh
interpreter.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Dict

import pytest

from .subprocess_utils import RESULT_PREFIX, TASK, run_python, write_model_dir

BUILTIN_MODULES = (
    'modelscope.models.audio.separation.mossformer',
    'modelscope.models.audio.separation.m2.mossformer',
    'modelscope.pipelines.audio.separation_pipeline',
    'modelscope.trainers.audio.separation_trainer',
)

# Tiny models under the released configuration keys.
TINY_MOSSFORMER = {'num_spks': 2, 'kernel_size': 16, 'in_channels': 32, 'out_channels': 32, 'stride': 8,
                   'bias': False, 'num_blocks': 1, 'd_model': 32, 'attn_dropout': 0.1, 'group_size': 16,
                   'query_key_dim': 16, 'expansion_factor': 4.0, 'causal': False, 'norm': 'ln'}
# MossFormer2 releases only in_channels, out_channels, num_blocks, kernel_size, norm and num_spks; the
# rest shrink it with this package's own field names.
TINY_MOSSFORMER2 = {'in_channels': 32, 'out_channels': 32, 'num_blocks': 1, 'kernel_size': 16, 'norm': 'ln',
                    'num_spks': 2, 'group_size': 16, 'query_key_dim': 16,
                    'fsmn_inner_channels': 16, 'fsmn_memory_order': 4}

MODEL_TYPES = {
    'speech_mossformer_separation_temporal_8k': TINY_MOSSFORMER,
    'speech_mossformer2_separation_temporal_8k': TINY_MOSSFORMER2,
    'speech_mossformer_separation_temporal_16k': TINY_MOSSFORMER,
    'speech_mossformer2_separation_temporal_16k': TINY_MOSSFORMER2,
}

# Runs in a fresh interpreter: argv = [order, json {model type: model dir}].
SCRIPT = textwrap.dedent('''
    import importlib, json, sys

    order, model_dirs = sys.argv[1], json.loads(sys.argv[2])
    BUILTIN_MODULES = {builtins!r}

    if order == 'before':
        for name in BUILTIN_MODULES:
            importlib.import_module(name)
    builtins_before_ours = [name for name in BUILTIN_MODULES if name in sys.modules]

    import modelscope_mossformer
    from modelscope_mossformer.model import MossFormerSeparation

    if order == 'after':
        for name in BUILTIN_MODULES:
            importlib.import_module(name)  # must not raise

    from modelscope.models import MODELS, Model

    result = {{'builtins_before_ours': builtins_before_ours, 'types': {{}}}}
    for model_type, model_dir in model_dirs.items():
        cls = MODELS.get(model_type, group_key={task!r})
        model = Model.from_pretrained(model_dir)
        result['types'][model_type] = {{
            'registry_class': f'{{cls.__module__}}.{{cls.__qualname__}}' if cls else None,
            'registry_is_ours': isinstance(cls, type) and issubclass(cls, MossFormerSeparation),
            'built_class': f'{{type(model).__module__}}.{{type(model).__qualname__}}',
            'built_is_ours': isinstance(model, MossFormerSeparation),
            'built_type': model.model_type,
        }}
    print({prefix!r} + json.dumps(result))
''').format(builtins=BUILTIN_MODULES, task=TASK, prefix=RESULT_PREFIX)


@pytest.fixture(scope='module')
def model_dirs(tmp_path_factory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp('registration')
    return {name: str(write_model_dir(root / name, {'type': name, **section}, pipeline={'type': name}))
            for name, section in MODEL_TYPES.items()}


@pytest.mark.parametrize('order', ['before', 'never', 'after'])
def test_builders_return_our_classes(order: str, model_dirs: Dict[str, str], tmp_path: Path) -> None:
    """`before`: built-in modules imported before ours; `never`: not imported by the user;
    `after`: imported after ours (must not raise)."""
    result = run_python(SCRIPT, order, json.dumps(model_dirs), cwd=tmp_path)

    if order == 'before':
        assert result['builtins_before_ours'] == list(BUILTIN_MODULES)
    else:
        assert result['builtins_before_ours'] == []
    assert set(result['types']) == set(MODEL_TYPES)
    for model_type, found in result['types'].items():
        assert found['registry_is_ours'], f'{order}: MODELS.get({model_type!r}) -> {found["registry_class"]}'
        assert found['registry_class'].startswith('modelscope_mossformer.'), found
        assert found['built_is_ours'], f'{order}: Model.from_pretrained built {found["built_class"]}'
        assert found['built_type'] == model_type
