"""MossFormer and MossFormer2 speech separation for ModelScope.

Importing this package registers its model types, trainer, pipeline and preprocessor in ModelScope's
registries, replacing ModelScope's built-in MossFormer stack under the same names.  Nothing here contacts
a hub.  Without ModelScope installed, the plain library (`models`, `data`, `inference`, `metrics`,
`batch`) still imports; the ModelScope classes are then absent.
"""
from __future__ import annotations

import logging

from . import metainfo
from .models import (MossFormer, MossFormer2, MossFormer2Config, MossFormerConfig, build_separator,
                     mossformer2_base, mossformer_large, mossformer_medium, mossformer_small, mossformer_tiny)

logging.getLogger(__name__).addHandler(logging.NullHandler())

try:
    import modelscope  # noqa: F401 - the adapters need it; the plain library does not
except ImportError:  # pragma: no cover - exercised in a subprocess by tests/test_layers.py
    HAVE_MODELSCOPE = False
else:
    HAVE_MODELSCOPE = True
    from .preprocessor import AudioBrainPreprocessor
    from .model import MossFormerSeparation
    from .trainer import SpeechSeparationTrainer
    from .pipeline import MossFormerSeparationPipeline

__version__ = '0.1.0'

__all__ = [
    'AudioBrainPreprocessor', 'MossFormer', 'MossFormer2', 'MossFormerConfig', 'MossFormer2Config',
    'MossFormerSeparation', 'SpeechSeparationTrainer', 'MossFormerSeparationPipeline',
    'build_separator', 'metainfo', 'mossformer_tiny', 'mossformer_small', 'mossformer_medium', 'mossformer_large',
    'mossformer2_base', 'HAVE_MODELSCOPE',
]
