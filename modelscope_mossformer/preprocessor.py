"""AudioBrainPreprocessor: a row field holding an audio path -> a float32 waveform.

A drop-in for ModelScope's class of the same name (same `takes` / `provides`
arguments, usable in `MsDataset.to_torch_dataset(preprocessors=[...])`) that
also resamples to the model's rate, downmixes multi-channel audio (channel
mean), resolves relative paths against a root folder and names the file and
field in every error.  Registered in ModelScope's PREPROCESSORS as
`mossformer-audio-brain-preprocessor`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from modelscope.preprocessors import PREPROCESSORS, Preprocessor
from modelscope.utils.constant import ModeKeys

from .data.audio import AudioError, read_audio
from .metainfo import Preprocessors
from .registration import register


class AudioBrainPreprocessor(Preprocessor):
    """Reads the audio file named by `data[takes]` into `data[provides]`.

    Args:
        takes: field holding the path, e.g. 'mix_wav:FILE'.
        provides: field to write the waveform to, e.g. 'mix_sig'.
        mode: ModelScope mode key.
        sample_rate: resample to this rate; keep the file's rate when None.
        on_rate_mismatch: 'resample' or 'error'.
        channel: pick one channel instead of averaging.
        root: folder that relative paths are relative to (the CSV's folder);
            the working directory when None.
    """

    def __init__(self, takes: str, provides: str, mode: str = ModeKeys.INFERENCE, sample_rate: Optional[int] = None,
                 on_rate_mismatch: str = 'resample', channel: Optional[int] = None,
                 root: Optional[Union[str, os.PathLike]] = None, **kwargs: Any) -> None:
        super().__init__(mode, **kwargs)
        self.takes = takes
        self.provides = provides
        self.sample_rate = sample_rate
        self.on_rate_mismatch = on_rate_mismatch
        self.channel = channel
        self.root = Path(root) if root is not None else None

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        if self.takes not in data:
            raise KeyError(f'AudioBrainPreprocessor: the row has no field {self.takes!r}; fields: {sorted(data)}')
        value = data[self.takes]
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise AudioError(repr(value), f'field {self.takes!r} does not hold an audio path')
        path = Path(os.path.expanduser(str(value)))
        if not path.is_absolute() and self.root is not None:
            path = self.root / path
        try:
            data[self.provides] = read_audio(path, self.sample_rate, self.on_rate_mismatch, self.channel)
        except AudioError as err:
            raise AudioError(err.path, f'{err.reason} (field {self.takes!r})') from None
        return data


register(PREPROCESSORS, AudioBrainPreprocessor, Preprocessors.audio_brain)
