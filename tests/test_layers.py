"""The layers of the README's Layout section: no module imports a higher layer, and the core imports
without ModelScope or SpeechBrain."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .subprocess_utils import subprocess_env

PACKAGE = Path(__file__).resolve().parents[1] / 'modelscope_mossformer'

LAYERS = {
    1: ['models'],
    2: ['metrics', 'activity', 'perceptual', 'averaging', 'inference', 'batch', 'data', 'train_config', 'workdir',
        'errors', 'metainfo', 'onnx_export', 'onnx_backend'],
    3: ['registration', 'hub', 'model', 'pipeline', 'preprocessor', 'trainer', 'brain', 'presets'],
    4: ['__init__', 'cli', 'quickstart', '__main__'],
}
FRAMEWORKS = ('modelscope', 'speechbrain')


def layer_of(module: str) -> int:
    """Layer of a module path relative to the package ('data.audio' -> 2)."""
    top = module.split('.')[0]
    for layer, names in LAYERS.items():
        if top in names:
            return layer
    raise AssertionError(f'{module} is in no layer of the README: add it to tests/test_layers.py and the README')


def module_level_imports(path: Path):
    """(imported module, line) for the imports executed when `path` is imported (not inside functions)."""
    tree = ast.parse(path.read_text())
    relative_to = path.relative_to(PACKAGE).with_suffix('')
    package_parts = list(relative_to.parts[:-1]) if relative_to.name != '__init__' else list(relative_to.parts[:-1])
    for node in tree.body:
        nodes = [node]
        if isinstance(node, (ast.If, ast.Try)):  # guarded imports run at import time too
            nodes = list(ast.walk(node))
        for item in nodes:
            if isinstance(item, ast.Import):
                for alias in item.names:
                    yield alias.name, item.lineno
            elif isinstance(item, ast.ImportFrom):
                if item.level == 0:
                    yield item.module or '', item.lineno
                    continue
                base = package_parts[:len(package_parts) - (item.level - 1)] if item.level > 1 else package_parts
                target = '.'.join(base + ([item.module] if item.module else []))
                if item.module is None:  # from . import x
                    for alias in item.names:
                        yield 'modelscope_mossformer.' + '.'.join(base + [alias.name]).strip('.'), item.lineno
                else:
                    yield 'modelscope_mossformer.' + target.strip('.'), item.lineno


def sources():
    return sorted(p for p in PACKAGE.rglob('*.py') if '__pycache__' not in p.parts)


@pytest.mark.parametrize('path', sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    module = '.'.join(path.relative_to(PACKAGE).with_suffix('').parts)
    own = layer_of(module)
    for imported, line in module_level_imports(path):
        if imported.startswith('modelscope_mossformer.'):
            inner = imported[len('modelscope_mossformer.'):]
            assert layer_of(inner) <= own, f'{path.name}:{line} imports {imported} (layer {layer_of(inner)} > {own})'
        elif imported.split('.')[0] in FRAMEWORKS:
            assert own >= 3, f'{path.name}:{line} imports {imported} at import time (core modules must not)'


def test_the_core_imports_without_modelscope_or_speechbrain():
    script = textwrap.dedent('''
        import sys
        sys.modules['modelscope'] = None  # "import modelscope" raises ImportError
        sys.modules['speechbrain'] = None
        import modelscope_mossformer
        from modelscope_mossformer import batch, data, errors, inference, metrics, models, train_config, workdir
        from modelscope_mossformer import onnx_backend, onnx_export
        from modelscope_mossformer.models import build_separator, mossformer_small
        import torch
        model = build_separator(mossformer_small(num_blocks=1)).eval()
        with torch.inference_mode():
            out = model(torch.zeros(1, 800))
        assert out.shape == (1, 2, 800), out.shape
        loaded = sorted(name for name in sys.modules if name.startswith(('modelscope.', 'speechbrain.')))
        assert not loaded, loaded
        print('core ok')
    ''')
    proc = subprocess.run([sys.executable, '-c', script], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'core ok' in proc.stdout
