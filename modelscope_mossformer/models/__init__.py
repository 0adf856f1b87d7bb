"""Plain PyTorch MossFormer / MossFormer2 models; importable without ModelScope."""
from __future__ import annotations

from typing import Union

from .configs import (MOSSFORMER, MOSSFORMER2, NAMED_SIZES, MossFormer2Config, MossFormerConfig,
                      config_from_dict, mossformer2_base, mossformer2_tiny, mossformer_large, mossformer_medium,
                      mossformer_small, mossformer_tiny)
from .layers import count_parameters
from .mossformer import MossFormer
from .mossformer2 import MossFormer2

Separator = Union[MossFormer, MossFormer2]


def build_separator(config: MossFormerConfig) -> MossFormer:
    """The separator class for a config: MossFormer2 for MossFormer2Config, else MossFormer."""
    return MossFormer2(config) if isinstance(config, MossFormer2Config) else MossFormer(config)


__all__ = [
    'MossFormer', 'MossFormer2', 'MossFormerConfig', 'MossFormer2Config', 'build_separator', 'config_from_dict',
    'count_parameters', 'mossformer_tiny', 'mossformer2_tiny', 'mossformer_small', 'mossformer_medium', 'mossformer_large', 'mossformer2_base', 'NAMED_SIZES',
    'MOSSFORMER', 'MOSSFORMER2', 'Separator',
]
