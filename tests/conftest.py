"""Shared fixtures: tiny model configs and deterministic inputs."""
from __future__ import annotations

import sys

import pytest
import torch

from modelscope_mossformer.models import mossformer2_tiny, mossformer_tiny

# the package's tiny factories under the names the tests have always used
tiny_mossformer = mossformer_tiny
tiny_mossformer2 = mossformer2_tiny


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=['blas', 'onednn'])
def cpu_gemm(request):
    """Each float32 CPU GEMM backend of models.gemm in turn (oneDNN skipped where this PyTorch lacks it)."""
    from modelscope_mossformer.models import gemm

    if request.param == 'onednn' and not gemm.onednn_usable():
        pytest.skip('this PyTorch build cannot run float32 GEMMs through oneDNN')
    gemm.set_cpu_gemm_backend(request.param)
    yield request.param
    gemm.set_cpu_gemm_backend(None)


@pytest.fixture
def mixture():
    """Two 0.25 s mixtures at 8 kHz: long enough for several attention groups and a padded one."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(2, 2000, generator=generator) * 0.1


def _hide_unloaded_speechbrain_lazy_modules() -> None:
    """Hide SpeechBrain's not-yet-imported lazy modules from `sys.modules` scans.

    Hypothesis reads `__file__` of every module in `sys.modules` (at collection and
    before each test); on SpeechBrain's lazy placeholders that triggers their import,
    and optional integrations such as `speechbrain.integrations.k2_fsa` raise
    ImportError without k2.  The placeholders stay reachable as attributes of their
    packages.
    """
    if 'speechbrain' not in sys.modules:
        return
    from speechbrain.utils.importutils import LazyModule

    for name, module in list(sys.modules.items()):
        if isinstance(module, LazyModule) and getattr(module, 'lazy_module', None) is None:
            del sys.modules[name]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    _hide_unloaded_speechbrain_lazy_modules()


def pytest_runtest_setup(item):
    _hide_unloaded_speechbrain_lazy_modules()


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    """A one-block tiny MossFormer (8 kHz, random weights, seed 0) saved as a model dir, once per module."""
    from modelscope_mossformer.metainfo import Models
    from modelscope_mossformer.model import MossFormerSeparation

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp('model')
    MossFormerSeparation(config=tiny_mossformer(num_blocks=1), model_type=Models.mossformer_8k).save_model_dir(
        directory)
    return directory
