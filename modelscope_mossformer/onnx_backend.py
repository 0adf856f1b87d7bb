"""The ONNX Runtime backend: an exported model as the separator of a `SeparationEngine`.

`OnnxSeparator` wraps an ``onnxruntime.InferenceSession`` as the callable the engine runs on each
chunk ([B, T] -> [B, C, T] tensors), so chunking, speaker alignment across chunks, cross-fades and
level matching are the PyTorch path's own code.  The model's sample rate and speaker count come
from the metadata `onnx_export.export_onnx` writes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch

from .models.configs import MossFormerConfig, config_from_dict
from .onnx_export import (DEFAULT_ONNX_FILE, INPUT_NAME, META_CONFIG, META_NUM_SPKS, META_SAMPLE_RATE,
                          META_WEIGHTS, OUTPUT_NAME, require, weights_digest)

logger = logging.getLogger(__name__)

PROVIDERS = {'cpu': 'CPUExecutionProvider', 'cuda': 'CUDAExecutionProvider'}


class StaleExportError(ValueError):
    """A model dir's model.onnx was exported from other weights than the directory holds now."""


class OnnxSeparator:
    """An exported MossFormer / MossFormer2 run by ONNX Runtime: mixture [B, T] -> sources [B, C, T].

    Args:
        path: the .onnx file written by `export_onnx` (``mossformer export``).
        threads: ONNX Runtime's intra-op threads (None: ONNX Runtime decides, one per core).
        device: 'cpu', 'cuda' or 'cuda:N' (CUDA needs onnxruntime-gpu's CUDA provider); inputs and
            outputs stay CPU tensors either way.

    Raises:
        ImportError: onnxruntime missing (the message names the 'onnx' extra).
        ValueError: the file is not an ONNX model, or lacks this package's metadata.
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None, device: str = 'cpu') -> None:
        ort = require('onnxruntime', 'The ONNX Runtime backend')
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f'{self.path}: no such ONNX model file')
        kind, _, index = device.strip().lower().partition(':')
        kind = 'cuda' if kind == 'gpu' else kind
        if kind not in PROVIDERS or (index and (kind != 'cuda' or not index.isdigit())):
            raise ValueError(f'ONNX Runtime device must be cpu, cuda or cuda:N, got {device!r}')
        if PROVIDERS[kind] not in ort.get_available_providers():
            raise ValueError(f'ONNX Runtime has no {PROVIDERS[kind]} here (available: '
                             f'{", ".join(ort.get_available_providers())}); install onnxruntime-gpu for CUDA')
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if threads < 1:
                raise ValueError(f'threads must be at least 1, got {threads}')
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            provider = (PROVIDERS[kind], {'device_id': int(index)}) if index else PROVIDERS[kind]
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=[provider])
        except Exception as err:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            raise ValueError(f'{self.path}: ONNX Runtime cannot load this file ({err})') from None
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.config = self._config_from_metadata()
        self.device = kind
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([INPUT_NAME], [OUTPUT_NAME]):
            raise ValueError(f'{self.path}: expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, '
                             f'found inputs {names[0]} and outputs {names[1]}')

    def _config_from_metadata(self) -> MossFormerConfig:
        missing = [key for key in (META_SAMPLE_RATE, META_NUM_SPKS, META_CONFIG) if key not in self.metadata]
        if missing:
            raise ValueError(f'{self.path}: no {", ".join(missing)} in the model\'s metadata_props; '
                             f'export it with `mossformer export`')
        try:
            config = config_from_dict(json.loads(self.metadata[META_CONFIG]))
        except (json.JSONDecodeError, ValueError, TypeError) as err:
            raise ValueError(f'{self.path}: unreadable {META_CONFIG!r} metadata ({err})') from None
        for key in (META_SAMPLE_RATE, META_NUM_SPKS):
            if str(getattr(config, key)) != self.metadata[key]:
                raise ValueError(f'{self.path}: metadata {key}={self.metadata[key]} disagrees with its config '
                                 f'({getattr(config, key)})')
        return config

    @property
    def num_spks(self) -> int:
        return self.config.num_spks

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        """[B, T] mixtures -> [B, C, T] float32 sources (on the CPU)."""
        if mix.dim() != 2:
            raise ValueError(f'ONNX separator expects mixtures shaped [batch, time], got {tuple(mix.shape)}')
        if mix.shape[-1] < self.config.enc_kernel_size:
            raise ValueError(f'input has {mix.shape[-1]} samples; at least enc_kernel_size='
                             f'{self.config.enc_kernel_size} are needed')
        inputs = mix.detach().to('cpu', torch.float32).contiguous().numpy()
        (sources,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
        return torch.from_numpy(sources)


def onnx_file_for(model: Union[str, os.PathLike]) -> Path:
    """The ONNX file of `model`: the file itself, or DIR/model.onnx for a model dir."""
    path = Path(model)
    if path.is_dir():
        found = path / DEFAULT_ONNX_FILE
        if not found.is_file():
            raise FileNotFoundError(f'{path}: no {DEFAULT_ONNX_FILE} in this model dir; run '
                                    f'`mossformer export --model {path}` first')
        return found
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no such file or directory')
    return path


def check_matches_model_dir(separator: OnnxSeparator, model_dir: Union[str, os.PathLike]) -> None:
    """Raise StaleExportError when `separator` was exported from other weights than `model_dir` holds."""
    recorded = separator.metadata.get(META_WEIGHTS)
    current = weights_digest(model_dir)
    if recorded and current and recorded != current:
        raise StaleExportError(f'{separator.path} was exported from other weights than {model_dir} holds now; '
                               f'run `mossformer export --model {model_dir}` again')


def is_onnx_file(path: Union[str, os.PathLike]) -> bool:
    return Path(path).suffix.lower() == '.onnx'


def available_devices() -> Sequence[str]:
    """ONNX Runtime devices usable here ('cpu', and 'cuda' with onnxruntime-gpu)."""
    ort = require('onnxruntime', 'The ONNX Runtime backend')
    return [kind for kind, provider in PROVIDERS.items() if provider in ort.get_available_providers()]


__all__ = ['OnnxSeparator', 'StaleExportError', 'onnx_file_for', 'check_matches_model_dir', 'is_onnx_file',
           'available_devices']
