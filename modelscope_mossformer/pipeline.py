"""`pipeline(Tasks.speech_separation, model=<model dir>)` for every registered model type.

Inputs: a file path (any format libsndfile reads), raw bytes (an encoded file,
or float32 PCM at the model rate as ModelScope's own pipeline takes them), a
numpy array / tensor together with `sample_rate=`, or a ``(waveform, rate)``
tuple.  Multi-channel input is averaged to mono; any rate is resampled to the
model's and the outputs back to the input's.

Outputs: ``output_pcm_list`` (int16 PCM bytes per speaker, ModelScope's key),
``waveforms`` (float32 [C, T] at the input rate), ``sample_rate`` and
``activity`` (per-output active time and segments, copies, single-talker check:
`activity.ActivityReport.to_dict`).  Levels follow the mixture (see
`inference.match_mixture_level`).  ``gate_inactive=True`` (when building the
pipeline or per call) sets each output to silence where it is inactive.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from modelscope.outputs import OutputKeys
from modelscope.pipelines import Pipeline
from modelscope.pipelines.builder import PIPELINES

from .activity import DEFAULT_SETTINGS, ActivitySettings, mixture_level, track_activity
from .data.audio import AudioError, read_audio, resample, sample_problem, to_mono
from .inference import SILENCE_PEAK, SeparationEngine, match_mixture_level
from .metainfo import MODEL_TYPES, TASK
from .model import ensure_ours
from .registration import register

logger = logging.getLogger(__name__)

ENCODED_AUDIO_MAGIC = (b'RIFF', b'fLaC', b'OggS', b'FORM', b'.snd')


def to_pcm16(wave: np.ndarray) -> bytes:
    """float [-1, 1] -> little-endian int16 PCM bytes (clipped, rounded)."""
    return (np.clip(np.round(wave * 32767.0), -32768, 32767).astype('<i2')).tobytes()


def _decode(inputs: Any, sample_rate: Optional[int], model_rate: int) -> Tuple[torch.Tensor, int]:
    """Any supported input -> (float32 mono [T], its sample rate)."""
    if isinstance(inputs, (str, os.PathLike)):
        return read_audio(inputs), _file_rate(inputs)
    if isinstance(inputs, (bytes, bytearray)):
        if bytes(inputs[:4]) in ENCODED_AUDIO_MAGIC:
            import soundfile

            try:
                data, rate = soundfile.read(io.BytesIO(inputs), dtype='float32')
            except Exception as err:  # noqa: BLE001
                raise AudioError('<bytes>', f'unreadable audio ({err})') from err
            return _checked(to_mono(data), '<bytes>'), rate
        if len(inputs) % 4:
            raise AudioError('<bytes>', 'raw bytes must be float32 PCM (length a multiple of 4) or an encoded file')
        return _checked(np.frombuffer(bytes(inputs), dtype=np.float32), '<bytes>'), sample_rate or model_rate
    if isinstance(inputs, tuple) and len(inputs) == 2:
        inputs, sample_rate = inputs
    if isinstance(inputs, (np.ndarray, torch.Tensor, list)):
        if sample_rate is None:
            raise ValueError('array input needs its sample rate: pipeline(array, sample_rate=16000) '
                             'or pipeline((array, 16000))')
        array = inputs.detach().cpu().float().numpy() if isinstance(inputs, torch.Tensor) \
            else np.asarray(inputs, dtype=np.float32)
        if array.ndim == 2 and array.shape[0] < array.shape[1]:
            array = array.T  # [channels, T] -> [T, channels]
        return _checked(to_mono(array), '<array>'), int(sample_rate)
    raise TypeError(f'unsupported input {type(inputs).__name__}: give a path, bytes, or an array with sample_rate')


def _file_rate(path: Union[str, os.PathLike]) -> int:
    import soundfile

    return soundfile.info(str(path)).samplerate


def _checked(array: np.ndarray, where: str) -> torch.Tensor:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise AudioError(where, f'expected non-empty mono audio, got shape {array.shape}')
    problem = sample_problem(array)
    if problem:
        raise AudioError(where, problem)
    return torch.from_numpy(array.copy())


def model_dir_of(model: Any) -> str:
    return str(getattr(model, 'model_dir', None) or type(model).__name__)


class MossFormerSeparationPipeline(Pipeline):
    """Separates a recording into one waveform per speaker.

    Args:
        model: a model dir, or a `MossFormerSeparation`.
        chunk_seconds: chunk length for long inputs (None: whole input at once).
        overlap_seconds: overlap between chunks.
        precision: 'fp32', 'bf16' or 'fp16'.
        gate_inactive: default for each call's ``gate_inactive``: silence outputs where they are inactive.
        activity_settings: the activity rule's constants (`activity.ActivitySettings`).
        batch_chunks: chunks of a long input separated together in one batch (`SeparationEngine`).
        device: 'cpu', 'cuda', 'gpu'... (ModelScope's device names).
    """

    def __init__(self, model: Any, chunk_seconds: Optional[float] = 8.0, overlap_seconds: float = 1.0,
                 precision: str = 'fp32', gate_inactive: bool = False,
                 activity_settings: ActivitySettings = DEFAULT_SETTINGS, batch_chunks: int = 1, **kwargs: Any) -> None:
        if not isinstance(activity_settings, ActivitySettings):
            raise TypeError(f'activity_settings must be an ActivitySettings, got {type(activity_settings).__name__}')
        self.gate_inactive = bool(gate_inactive)
        self.activity_settings = activity_settings
        super().__init__(model=model, **kwargs)
        self.model = ensure_ours(self.model, getattr(self.model, 'model_dir', None) or str(model))
        if self.model.weights_source is None:
            raise FileNotFoundError(f'{self.model.model_dir}: the model dir holds no weights to separate with')
        self.model.eval()
        self.engine = SeparationEngine(self.model.separator, self.model.sample_rate, device=str(self.device),
                                       precision=precision, chunk_seconds=chunk_seconds,
                                       overlap_seconds=overlap_seconds, batch_chunks=batch_chunks)

    def _sanitize_parameters(self, **kwargs: Any):
        return {'sample_rate': kwargs.pop('sample_rate', None)}, {}, {}

    def preprocess(self, inputs: Any, sample_rate: Optional[int] = None) -> Dict[str, Any]:
        wave, rate = _decode(inputs, sample_rate, self.model.sample_rate)
        source = str(inputs) if isinstance(inputs, (str, os.PathLike)) else f'<{type(inputs).__name__} input>'
        return {'mix': resample(wave, rate, self.model.sample_rate), 'input_rate': rate,
                'input_length': wave.shape[-1], 'source': source, 'input_mix': wave}

    def forward(self, inputs: Dict[str, Any], **forward_params: Any) -> Dict[str, Any]:
        mix = inputs['mix']
        if float(mix.abs().max()) < SILENCE_PEAK:
            logger.warning('the input is silent; the outputs are silent too')
            estimates = torch.zeros(self.model.num_spks, mix.shape[-1])
        else:
            estimates = self.engine.separate(mix)
            if not torch.isfinite(estimates).all():
                raise AudioError(inputs.get('source', '<input>'),
                                 f'the model produced non-finite (NaN/Inf) output for {model_dir_of(self.model)}'
                                 ' (check its weights, or use precision fp32)')
            estimates = match_mixture_level(estimates, mix)
        return dict(inputs, estimates=estimates)

    def postprocess(self, inputs: Dict[str, Any], **post_params: Any) -> Dict[str, Any]:
        rate = inputs['input_rate']
        waves = resample(inputs['estimates'], self.model.sample_rate, rate)[..., :inputs['input_length']]
        waves = waves.numpy().astype(np.float32)
        result = {'sample_rate': rate}
        if 'input_mix' in inputs:  # activity of the outputs against the input (see `activity`)
            gate = bool(post_params.get('gate_inactive', self.gate_inactive))
            settings = self.activity_settings
            waves, report = track_activity(waves, inputs['input_mix'], rate, gate=gate, settings=settings,
                                           reference_db=mixture_level(inputs['mix'], self.model.sample_rate,
                                                                      settings))
            for warning in report.warnings:
                logger.warning('%s: %s', inputs.get('source', '<input>'), warning)
            result['activity'] = report.to_dict()
        return {OutputKeys.OUTPUT_PCM_LIST: [to_pcm16(w) for w in waves], 'waveforms': waves, **result}

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        sample_rate = kwargs.pop('sample_rate', None)
        gate = kwargs.pop('gate_inactive', self.gate_inactive)
        if args and sample_rate is None and isinstance(args[0], int):
            sample_rate = args[0]
        return self.postprocess(self.forward(self.preprocess(inputs, sample_rate=sample_rate)), gate_inactive=gate)


for _name in MODEL_TYPES:
    register(PIPELINES, MossFormerSeparationPipeline, _name, group_key=TASK)
