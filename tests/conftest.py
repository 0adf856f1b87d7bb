"""Shared fixtures: tiny model configs and deterministic inputs."""
from __future__ import annotations

import sys

import pytest
import torch

from modelscope_mossformer.models import MossFormer2Config, MossFormerConfig


def tiny_mossformer(**overrides) -> MossFormerConfig:
    """A MossFormer small enough for unit tests (a few hundred thousand parameters)."""
    values = dict(enc_channels=32, model_dim=32, num_blocks=2, group_size=16, query_key_dim=16)
    values.update(overrides)
    return MossFormerConfig(**values)


def tiny_mossformer2(**overrides) -> MossFormer2Config:
    """A MossFormer2 with ModelScope's fixed internals (qk 128, group 256, FSMN 256) but 1 narrow block."""
    values = dict(enc_channels=32, model_dim=32, num_blocks=1)
    values.update(overrides)
    return MossFormer2Config(**values)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


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
