"""MossFormer and MossFormer2 speech separation for ModelScope.

Importing this package registers its model types (and later its trainer,
pipeline and preprocessor) in ModelScope's registries, replacing ModelScope's
built-in MossFormer stack under the same names.  Nothing here contacts a hub.
"""
from __future__ import annotations

import logging

from . import metainfo
from .data import AudioBrainPreprocessor
from .model import MossFormerSeparation
from .trainer import SpeechSeparationTrainer
from .pipeline import MossFormerSeparationPipeline
from .models import (MossFormer, MossFormer2, MossFormer2Config, MossFormerConfig, build_separator,
                     mossformer2_base, mossformer_large, mossformer_medium, mossformer_small)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = '0.1.0'

__all__ = [
    'AudioBrainPreprocessor', 'MossFormer', 'MossFormer2', 'MossFormerConfig', 'MossFormer2Config', 'MossFormerSeparation', 'SpeechSeparationTrainer', 'MossFormerSeparationPipeline',
    'build_separator', 'metainfo', 'mossformer_small', 'mossformer_medium', 'mossformer_large', 'mossformer2_base',
]
