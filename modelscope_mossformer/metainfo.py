"""Every registry name this package uses, in one place.

The two released model types keep ModelScope's names so that released model
directories and `Trainers.speech_separation` resolve to this package once it is
imported; the 16 kHz types are new.  Number of speakers and size are read from
the configuration, not the type name.
"""
from __future__ import annotations

from typing import Dict, Tuple

from .models.configs import MOSSFORMER, MOSSFORMER2

TASK = 'speech-separation'  # == modelscope Tasks.speech_separation
CONFIGURATION_FILE = 'configuration.json'  # == modelscope ModelFile.CONFIGURATION


class Models:
    mossformer_8k = 'speech_mossformer_separation_temporal_8k'  # released by ModelScope
    mossformer2_8k = 'speech_mossformer2_separation_temporal_8k'  # released by ModelScope
    mossformer_16k = 'speech_mossformer_separation_temporal_16k'
    mossformer2_16k = 'speech_mossformer2_separation_temporal_16k'


# model type -> (model family, default sample rate)
MODEL_TYPES: Dict[str, Tuple[str, int]] = {
    Models.mossformer_8k: (MOSSFORMER, 8000),
    Models.mossformer2_8k: (MOSSFORMER2, 8000),
    Models.mossformer_16k: (MOSSFORMER, 16000),
    Models.mossformer2_16k: (MOSSFORMER2, 16000),
}


def model_type_for(family: str, sample_rate: int) -> str:
    """The registered model type for a family and sample rate (16 kHz names for 16 kHz, else 8 kHz)."""
    for name, (fam, rate) in MODEL_TYPES.items():
        if fam == family and rate == sample_rate:
            return name
    return Models.mossformer_8k if family == MOSSFORMER else Models.mossformer2_8k


class Trainers:
    speech_separation = 'speech-separation'  # == modelscope Trainers.speech_separation


class Pipelines:
    # ModelScope registers speech-separation pipelines under the model type names.
    names = tuple(MODEL_TYPES)


class Preprocessors:
    audio_brain = 'mossformer-audio-brain-preprocessor'
