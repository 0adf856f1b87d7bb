"""ONNX export of MossFormer / MossFormer2 separators: one graph for any batch size and length.

The exported graph maps a mixture ``mix`` [B, T] (float32) to ``sources`` [B, C, T], as the PyTorch
separator's `forward` does, with B and T dynamic (T >= enc_kernel_size).

Exporter: torch.export (``torch.onnx.export(..., dynamo=True)``).  It records arithmetic on shapes
symbolically (frames = (T - K) // stride + 1, the padding of the frames to a multiple of the
attention group, the final zero padding back to T) and checks every assumption it makes against
the declared range of T, failing loudly instead of guessing.  The TorchScript tracer
(``dynamo=False``) records Python arithmetic on shapes as constants of the trace length: the model
traced at 1 s ran at 0.5 s but failed at 12347 samples (its final padding was a constant).

Opset 18: the opset the dynamo exporter's operator library (torchlib) is written for, so no version
conversion runs after export; it has LayerNormalization (17+) and is run by ONNX Runtime >= 1.14.

The PyTorch layers have a few shape-dependent Python branches (a per-item loop over the batch and a
shorter last group in the joint attention, a reshape that folds dilation into channels, the cached
rotary table of rotary-embedding-torch) that torch.export cannot keep general.  While exporting,
`export_forwards` gives those modules forwards that compute the same function with shape-generic
tensor code: the last attention group is zero padded (zero keys add nothing: relu(0)^2 = 0), the
dilated convolutions are plain dilated convolutions, the rotary angles are computed for the length at
hand.  The model's own code and numbers are untouched; the parity tests compare the two.

One more swap is for precision, not shapes: ONNX Runtime sums a reduction in float32 one value after
another, which over the N x L values of the mask net's GroupNorm(1, N) (4 M for an 8 s chunk at the
released width) put the separated sources 1.4e-4 away from PyTorch's (6e-5 at 6 s).  The export computes
the statistics of the norms that reduce over frames (GroupNorm, GlobalLayerNorm, the FSMN's instance
norms) in float64; the released models then agree with PyTorch as closely as PyTorch's float32 agrees
with float64.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from types import MethodType
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from .metainfo import model_type_for
from .models.configs import MossFormerConfig
from .models.layers import ConvProjection, DenseLayer, GatedAttentionUnit, GatedFSMN, GlobalLayerNorm

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = 'mix'
OUTPUT_NAME = 'sources'
DEFAULT_ONNX_FILE = 'model.onnx'
ONNX_EXTRA = "pip install 'modelscope_mossformer[onnx]'"
# length of the example input the graph is captured with (any length works afterwards)
TRACE_SECONDS = 1.0
MAX_SAMPLES = 2 ** 31 - 1
# ONNX Runtime vs PyTorch: largest absolute difference accepted on unit-scale audio.  Float32 rounding
# differs between the two (other summation orders in matmuls and convolutions, fused kernels) and
# accumulates through the residual stack: measured up to 1e-6 at the released sizes, where each side is
# 5e-6 from a float64 run.  1e-4 leaves room above that; it is about
# three 16-bit steps (1/32768 = 3.05e-5), 80 dB below full scale, inaudible; a wrong graph (a mis-padded
# group, a lost rotation, an off-by-one frame) is off by 1e-2 or more.
TOLERANCE = 1e-4
VERIFY_SECONDS = 1.5

# metadata_props keys written into every exported model
META_SAMPLE_RATE = 'sample_rate'
META_NUM_SPKS = 'num_spks'
META_MODEL_TYPE = 'model_type'
META_FAMILY = 'family'
META_VERSION = 'modelscope_mossformer_version'
META_CONFIG = 'config'
META_WEIGHTS = 'weights_sha256'


def require(module: str, feature: str) -> Any:
    """Import an optional module of the 'onnx' extra, or raise ImportError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{feature} needs the '{module}' package: {ONNX_EXTRA}") from None


# ---------------------------------------------------------------------------
# shape-generic forwards used while exporting
# ---------------------------------------------------------------------------


def _same_depthwise(x: torch.Tensor, weight: torch.Tensor, dilation: int = 1, groups: Optional[int] = None
                    ) -> torch.Tensor:
    """'same' grouped conv over frames of x [B, L, C_in] with weight [C_out, C_in / groups, K] -> [B, L, C_out]."""
    padding = (weight.shape[-1] - 1) // 2 * dilation
    out = F.conv1d(x.transpose(1, 2), weight, padding=padding, dilation=dilation,
                   groups=groups if groups is not None else weight.shape[0])  # [B, C_out, L]
    return out.transpose(1, 2)


def _conv_projection_forward(self: ConvProjection, x: torch.Tensor) -> torch.Tensor:
    """ConvProjection.forward in eval mode: norm -> Linear -> SiLU -> h + dwconv(h)."""
    h = F.silu(self.linear(self.norm(x)))  # [B, L, out]
    return h + _same_depthwise(h, self.dwconv.weight)


def _normalise(x: torch.Tensor, dim: Tuple[int, ...], eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over `dim`, the statistics summed in float64, the result float32.

    ONNX Runtime sums a reduction in float32 one element after another: over the N * L values of a
    mask-net norm (512 x 8000 for an 8 s chunk) its InstanceNormalization was off by 1e-2 (PyTorch: 5e-7)
    and float32 ReduceMeans in two steps by 1e-5, enough to put the separated sources 1.4e-4 away from
    PyTorch's.  In float64 the sums are exact to float32 precision (the cast costs a few ms per norm).
    """
    wide = x.double()
    mean = wide.mean(dim=dim, keepdim=True)
    centred = wide - mean
    var = centred.pow(2).mean(dim=dim, keepdim=True)
    return (centred * torch.rsqrt(var + eps)).to(x.dtype)


def _group_norm_forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm(1, N) on [B, N, L] ('ln' in the mask net) with float64 statistics."""
    if self.num_groups != 1 or x.dim() != 3:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
    return _normalise(x, (1, 2), self.eps) * self.weight[:, None] + self.bias[:, None]


def _global_layer_norm_forward(self: GlobalLayerNorm, x: torch.Tensor) -> torch.Tensor:
    """GlobalLayerNorm ('gln') on [B, N, L] with float64 statistics."""
    return self.weight * _normalise(x, (1, 2), self.eps) + self.bias


def _dense_layer_forward(self: DenseLayer, x: torch.Tensor) -> torch.Tensor:
    """DenseLayer.forward as the release's grouped convolution (one Conv node), float64 statistics."""
    weight = self.conv.weight.squeeze(-1)  # [C, k, K]
    h = _same_depthwise(x, weight, dilation=self.dilation, groups=self.channels)  # [B, L, C]
    h = _normalise(h, (1,), self.norm.eps) * self.norm.weight + self.norm.bias  # instance norm over frames
    return torch.where(h >= 0, h, h * self.prelu.weight)


def _check_rotary(rotary: nn.Module) -> None:
    """The export computes rotary-embedding-torch's default 'lang' rotation; anything else is refused."""
    settings = {'freqs_for': 'lang', 'use_xpos': False, 'interpolate_factor': 1.0, 'seq_before_head_dim': False}
    for name, expected in settings.items():
        value = getattr(rotary, name, expected)
        if value != expected:
            raise NotImplementedError(f'ONNX export supports rotary embeddings with {name}={expected!r}, '
                                      f'this model has {value!r}')


def _rotate(rotary: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """rotary.rotate_queries_or_keys(t) for t [B, L, S]: pairs of the first R features turned by position."""
    freqs = rotary.freqs  # [R/2]
    rot_dim = 2 * freqs.shape[0]
    positions = torch.arange(t.shape[-2], device=t.device, dtype=freqs.dtype)
    angles = positions[:, None] * freqs[None, :]  # [L, R/2]
    angles = torch.stack((angles, angles), dim=-1).flatten(-2)  # [L, R]: each angle twice, side by side
    turned, kept = t[..., :rot_dim], t[..., rot_dim:]
    pairs = turned.unflatten(-1, (-1, 2))  # [B, L, R/2, 2]
    half_turn = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (x1, x2) -> (-x2, x1)
    return torch.cat((turned * angles.cos() + half_turn * angles.sin(), kept), dim=-1)


def _joint_attention(group_size: int, quad_q: torch.Tensor, lin_q: torch.Tensor, quad_k: torch.Tensor,
                     lin_k: torch.Tensor, vu: torch.Tensor) -> torch.Tensor:
    """GatedAttentionUnit._joint_attention (non-causal) with the frames zero padded to whole groups."""
    b, n, hidden = vu.shape
    g = group_size

    # linear attention over the whole sequence (divided by the true length)
    lin_kv = torch.matmul(lin_k.transpose(-1, -2), vu) / n  # [B, S, H]
    out = torch.matmul(lin_q, lin_kv)  # [B, L, H]

    # quadratic attention inside groups of g frames; padded keys give relu(0)^2 = 0, padded queries are cut
    groups = (n + g - 1) // g
    padding = groups * g - n
    q = F.pad(quad_q, (0, 0, 0, padding)).reshape(b, groups, g, -1)  # [B, G, g, S]
    k = F.pad(quad_k, (0, 0, 0, padding)).reshape(b, groups, g, -1)
    values = F.pad(vu, (0, 0, 0, padding)).reshape(b, groups, g, hidden)  # [B, G, g, H]
    attn = F.relu(torch.matmul(q, k.transpose(-1, -2)) / g) ** 2  # [B, G, g, g]
    quad = torch.matmul(attn, values).reshape(b, groups * g, hidden)  # [B, G*g, H]
    # the first n frames, gathered: a slice or split would need n <= G*g proven, which the exporter cannot
    return out + quad.index_select(1, torch.arange(n, device=quad.device))


def _gated_attention_forward(self: GatedAttentionUnit, x: torch.Tensor) -> torch.Tensor:
    """GatedAttentionUnit.forward in eval mode, shape-generic; [B, L, D] -> [B, L, D]."""
    if self.causal:
        raise NotImplementedError('ONNX export of causal MossFormer attention is not supported')
    h = x
    if self.shift_tokens:  # half the channels see the previous frame
        shifted, passed = h.chunk(2, dim=-1)
        shifted = torch.cat((torch.zeros_like(shifted[:, :1]), shifted[:, :-1]), dim=1)
        h = torch.cat((shifted, passed), dim=-1)
    vu = self.to_hidden(h)  # [B, L, H]
    qk = self.to_qk(h)  # [B, L, S]
    quad_q, lin_q, quad_k, lin_k = self.qk_offset_scale(qk)
    if self.rotary_pos_emb is not None:
        quad_q, lin_q, quad_k, lin_k = (_rotate(self.rotary_pos_emb, t) for t in (quad_q, lin_q, quad_k, lin_k))
    att = _joint_attention(self.group_size, quad_q, lin_q, quad_k, lin_k, vu)  # [B, L, H]
    v, u = vu.chunk(2, dim=-1)
    att_v, att_u = att.chunk(2, dim=-1)
    return x + self.to_out((att_u * v) * torch.sigmoid(att_v * u))


def _gated_fsmn_forward(self: GatedFSMN, x: torch.Tensor) -> torch.Tensor:
    """GatedFSMN.forward as two ConvProjections (the export's own), not the fused eager projection."""
    return self.to_v(x) * self.fsmn(self.to_u(x)) + x


EXPORT_FORWARDS: Dict[Type[nn.Module], Callable[..., torch.Tensor]] = {
    GatedFSMN: _gated_fsmn_forward,
    GatedAttentionUnit: _gated_attention_forward,
    ConvProjection: _conv_projection_forward,
    DenseLayer: _dense_layer_forward,
    nn.GroupNorm: _group_norm_forward,
    GlobalLayerNorm: _global_layer_norm_forward,
}


@contextlib.contextmanager
def export_forwards(separator: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the separator's modules listed in `EXPORT_FORWARDS` run their shape-generic
    forwards (same function, eval mode); the original forwards come back afterwards."""
    patched = []
    for module in separator.modules():
        replacement = EXPORT_FORWARDS.get(type(module))
        if replacement is None:
            continue
        if isinstance(module, GatedAttentionUnit) and module.rotary_pos_emb is not None:
            _check_rotary(module.rotary_pos_emb)
        module.forward = MethodType(replacement, module)
        patched.append(module)
    try:
        yield separator
    finally:
        for module in patched:
            del module.forward  # the instance attribute; the class's forward shows again


class ExportGraph(nn.Module):
    """The separator's forward without Python branches on the input length: [B, T] -> [B, C, T].

    The decoder returns T' = ((T - K) // stride) * stride + K <= T samples; the rest is zero padded,
    as `MossFormer.forward` does.
    """

    def __init__(self, separator: nn.Module) -> None:
        super().__init__()
        self.separator = separator

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        num_samples = mix.shape[-1]
        est_sources = self.separator.sources(mix)  # [B, C, T']
        return F.pad(est_sources, (0, num_samples - est_sources.shape[-1]))  # [B, C, T]


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------


def capture(graph: nn.Module, example: torch.Tensor, min_samples: int) -> Any:
    """torch.export of `graph` with batch in [1, 1024] and time in [min_samples, 2**31 - 1], or an error.

    Capturing here (rather than letting torch.onnx.export do it) keeps the declared ranges: given a
    module, torch.onnx.export retries failed captures with narrowed shapes or `draft_export`, which may
    specialise the graph without saying so.  Sizes 0 and 1 are treated like any other size
    (``backed_size_oblivious``, as torch.onnx itself does), so the batch of one of the example input
    is not baked in.  The time range starts at two frames (K + stride samples): PyTorch's shape
    inference for a convolution over a single frame would otherwise specialise the graph; the
    exported graph computes single-frame inputs (K samples) correctly all the same (tested).
    """
    batch = torch.export.Dim('batch', min=1, max=1024)
    time_axis = torch.export.Dim('time', min=min_samples, max=MAX_SAMPLES)
    oblivious = contextlib.nullcontext()
    fx_config = getattr(getattr(torch.fx, 'experimental', None), '_config', None)
    if fx_config is not None and hasattr(fx_config, 'backed_size_oblivious'):
        oblivious = fx_config.patch(backed_size_oblivious=True)
    with oblivious:
        return torch.export.export(graph, (example,), dynamic_shapes={'mix': {0: batch, 1: time_axis}},
                                   strict=False)


def export_onnx(separator: nn.Module, path: Union[str, os.PathLike], model_type: Optional[str] = None,
                metadata: Optional[Mapping[str, str]] = None, trace_seconds: float = TRACE_SECONDS,
                opset: int = OPSET, on_stage: Optional[Callable[[str], None]] = None) -> Path:
    """Write `separator` (MossFormer or MossFormer2) as an ONNX model with dynamic batch and time axes.

    Args:
        separator: the PyTorch separator; exported on the CPU in eval mode (its own mode and device are
            restored afterwards).
        path: the .onnx file to write (replaced atomically).
        model_type: registered model type stored in the metadata (derived from the config when None).
        metadata: more metadata_props entries.
        trace_seconds: length of the example input used to capture the graph.
        opset: ONNX opset (default 18, see the module docstring).
        on_stage: called with 'capture', 'convert' and 'save' as each stage begins (progress display).

    Returns:
        The path written.

    Raises:
        ImportError: onnx / onnxscript missing (the message names the 'onnx' extra).
    """
    require('onnxscript', 'ONNX export')
    onnx = require('onnx', 'ONNX export')
    config: MossFormerConfig = separator.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    min_samples = config.enc_kernel_size + config.stride
    example = probe_signal(max(int(trace_seconds * config.sample_rate), min_samples))  # [1, T]
    device = next(separator.parameters()).device
    was_training = separator.training
    separator.cpu().eval()
    stage = on_stage or (lambda name: None)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # torch's own deprecation notices from inside the exporter, not actionable here
        warnings.filterwarnings('ignore', category=FutureWarning, module=r'(torch|onnxscript|copyreg)')
        warnings.filterwarnings('ignore', category=DeprecationWarning, module=r'(torch|onnxscript)')
        stage('capture')
        try:
            with export_forwards(separator), torch.no_grad():
                exported = capture(ExportGraph(separator), example, min_samples)
        finally:
            separator.to(device).train(was_training)
        stage('convert')
        program = torch.onnx.export(exported, (example,), dynamo=True, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], optimize=True,
                                    external_data=False, verbose=False)
    logger.info('exported %s in %.1f s', type(separator).__name__, time.perf_counter() - started)
    model = program.model_proto
    _name_axes(model, ('batch', 'time'))
    props = {META_SAMPLE_RATE: str(config.sample_rate), META_NUM_SPKS: str(config.num_spks),
             META_MODEL_TYPE: model_type or model_type_for(config.family, config.sample_rate),
             META_FAMILY: config.family, META_VERSION: _package_version(),
             META_CONFIG: json.dumps(config.to_dict(), sort_keys=True), **dict(metadata or {})}
    onnx.helper.set_model_props(model, props)
    model.doc_string = (f'{type(separator).__name__} speech separation: {INPUT_NAME} [batch, time] float32 at '
                        f'{config.sample_rate} Hz -> {OUTPUT_NAME} [batch, {config.num_spks}, time]')
    stage('save')
    onnx.checker.check_model(model)
    tmp = path.with_name(f'.{path.name}.tmp')
    onnx.save_model(model, str(tmp))
    os.replace(tmp, path)
    return path


def _name_axes(model: Any, names: Tuple[str, ...]) -> None:
    """Give the input's symbolic dims (the exporter's s0, s1...) the names `names`, wherever they appear."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    mapping = {dim.dim_param: name for dim, name in zip(dims, names) if dim.dim_param}
    for info in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


def weights_digest(model_dir: Union[str, os.PathLike]) -> Optional[str]:
    """SHA-256 over the weight file(s) of a model dir (None without weights): ties an export to its weights."""
    from .models.checkpoint import MOSSFORMER_FILES, find_weights

    found = find_weights(model_dir)
    if found is None:
        return None
    files = [found / name for name in MOSSFORMER_FILES] if found.is_dir() else [found]
    digest = hashlib.sha256()
    for file in files:
        with open(file, 'rb') as handle:
            for block in iter(lambda: handle.read(1 << 20), b''):
                digest.update(block)
    return digest.hexdigest()


def export_model(model: Any, out: Union[str, os.PathLike], model_dir: Optional[Union[str, os.PathLike]] = None,
                 trace_seconds: float = TRACE_SECONDS, on_stage: Optional[Callable[[str], None]] = None) -> Path:
    """Export a loaded model-dir model (`model.MossFormerSeparation`: its separator and model type) to `out`.

    Args:
        model: the loaded model (``load_model_dir(DIR)``, as the CLI loads it).
        out: the .onnx file to write.
        model_dir: the directory its weights came from; their SHA-256 goes into the metadata, so that
            the ONNX Runtime backend can tell a stale export from a current one.
        trace_seconds, on_stage: as in `export_onnx`.

    Raises:
        ValueError: the model holds no loaded weights.
    """
    if getattr(model, 'weights_source', None) is None:
        raise ValueError(f'{model_dir or "the model"}: the model dir holds no weights to export')
    extra = {META_WEIGHTS: (weights_digest(model_dir) if model_dir is not None else None) or ''}
    return export_onnx(model.separator, out, model_type=model.model_type, metadata=extra,
                       trace_seconds=trace_seconds, on_stage=on_stage)


def probe_signal(num_samples: int, seed: int = 0) -> torch.Tensor:
    """A unit-scale test mixture [1, T]: seeded Gaussian noise of RMS 0.25, clipped to [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(1, num_samples, generator=generator) * 0.25).clamp(-1.0, 1.0)


def max_abs_difference(separator: nn.Module, onnx_path: Union[str, os.PathLike], mix: torch.Tensor,
                       threads: Optional[int] = None) -> float:
    """Largest |ONNX Runtime - PyTorch| over the sources of `mix` [B, T] (PyTorch on the CPU, eval mode)."""
    from .onnx_backend import OnnxSeparator

    runtime = OnnxSeparator(onnx_path, threads=threads)
    device = next(separator.parameters()).device
    was_training = separator.training
    separator.cpu().eval()
    try:
        with torch.inference_mode():
            expected = separator(mix)
    finally:
        separator.to(device).train(was_training)
    return float((runtime(mix) - expected).abs().max())


def verify_export(separator: nn.Module, onnx_path: Union[str, os.PathLike], seconds: float = VERIFY_SECONDS,
                  threads: Optional[int] = None) -> float:
    """`max_abs_difference` on a `probe_signal` of `seconds` plus 3 samples (a length that is a multiple of
    neither the encoder stride nor the attention group) at the model's rate."""
    rate = separator.config.sample_rate
    return max_abs_difference(separator, onnx_path, probe_signal(int(seconds * rate) + 3), threads=threads)


def _package_version() -> str:
    from . import __version__

    return __version__


__all__ = ['OPSET', 'INPUT_NAME', 'OUTPUT_NAME', 'DEFAULT_ONNX_FILE', 'ONNX_EXTRA', 'TOLERANCE', 'require',
           'export_forwards', 'ExportGraph', 'capture', 'export_onnx', 'export_model', 'weights_digest',
           'probe_signal', 'max_abs_difference', 'verify_export']
