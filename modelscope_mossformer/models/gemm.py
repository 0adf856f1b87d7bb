"""Which library runs the models' float32 GEMMs on the CPU: oneDNN or torch's BLAS.

PyTorch sends a float32 ``F.linear`` or ``matmul`` on the CPU to its BLAS, which is Intel's
MKL in the released wheels. On CPUs from other vendors MKL picks its AVX2 kernels even where
the CPU has AVX-512: on a 2-core AMD EPYC (Zen 5, AVX-512) an ``[4000, 512] x [512, 2048]``
float32 GEMM ran at 180 GFLOP/s through MKL and at 380-450 GFLOP/s through oneDNN, which
picks its kernels from the instruction sets the CPU reports (``bench/bench_gemm.py`` measures
both side by side). bfloat16 GEMMs go to oneDNN in PyTorch already.

Backends:
    'onednn'  float32 GEMMs through oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``,
              the primitive PyTorch's compiler uses for CPU linear layers), in float32
              throughout (no implicit reduced precision);
    'blas'    PyTorch's own dispatch (MKL, OpenBLAS, ...);
    'auto'    (default) 'onednn' on x86 CPUs whose vendor is not Intel when PyTorch's BLAS is
              MKL and oneDNN is usable, else 'blas'. On Intel CPUs MKL's float32 kernels are
              the fast ones and stay.

Choose with the environment variable ``MOSSFORMER_CPU_GEMM`` (read once, at the first GEMM) or
``set_cpu_gemm_backend``. The two backends give the same float32 results up to summation order
(differences of about 1e-6 relative); neither is needed for correctness.

Only plain float32 CPU tensors take oneDNN: other dtypes, autocast (its casts decide the
dtype), tracing and ONNX export (the op has no ONNX form) and ``torch.compile`` use the
ordinary ops.
"""
from __future__ import annotations

import logging
import os
import platform
from typing import Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ENV_VAR = 'MOSSFORMER_CPU_GEMM'
BACKENDS = ('auto', 'onednn', 'blas')
_ACTIVATIONS = {None: 'none', 'silu': 'swish'}

_SMALL_BYTES = 4 << 20  # matmul copies a transposed right operand up to this size
_state = {'requested': None, 'resolved': None}


def _cpu_vendor() -> str:
    """The CPU's vendor id ('GenuineIntel', 'AuthenticAMD', ...), '' where it cannot be read."""
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='replace') as handle:
            for line in handle:
                if line.startswith('vendor_id'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return ''


def onednn_usable() -> bool:
    """Whether this PyTorch build can run a float32 GEMM through oneDNN's matmul (checked on a tiny one)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, w, None, 'none', [], '')
        return bool(torch.equal(y, torch.full((2, 4), 3.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _auto_backend() -> str:
    machine = platform.machine().lower()
    if machine not in ('x86_64', 'amd64', 'i686', 'x86'):
        return 'blas'
    vendor = _cpu_vendor()
    if not vendor or vendor == 'GenuineIntel' or not torch.backends.mkl.is_available():
        return 'blas'
    return 'onednn' if onednn_usable() else 'blas'


def _check(name: str, where: str) -> str:
    value = str(name).strip().lower()
    if value not in BACKENDS:
        raise ValueError(f'{where} must be one of {", ".join(BACKENDS)}, got {name!r}')
    return value


def set_cpu_gemm_backend(name: Optional[str]) -> str:
    """Choose the float32 CPU GEMM backend ('auto', 'onednn' or 'blas'; None: back to the environment
    variable's choice); returns the backend that now runs."""
    _state['requested'] = None if name is None else _check(name, 'the CPU GEMM backend')
    _state['resolved'] = None
    return cpu_gemm_backend()


def cpu_gemm_backend() -> str:
    """'onednn' or 'blas': the backend that runs float32 GEMMs on the CPU now."""
    resolved = _state['resolved']
    if resolved is not None:
        return resolved
    requested = _state['requested']
    if requested is None:
        requested = _check(os.environ.get(ENV_VAR, 'auto'), f'environment variable {ENV_VAR}')
    if requested == 'auto':
        resolved = _auto_backend()
    elif requested == 'onednn' and not onednn_usable():
        logger.warning('%s: oneDNN cannot run float32 GEMMs in this PyTorch build; using its BLAS', ENV_VAR)
        resolved = 'blas'
    else:
        resolved = requested
    _state['resolved'] = resolved
    logger.debug('float32 CPU GEMMs run through %s', resolved)
    return resolved


def takes_onednn(*tensors: torch.Tensor) -> bool:
    """Whether a GEMM on these tensors goes to oneDNN: all float32 on the CPU, the backend is
    'onednn', and no autocast, tracing, ONNX export or compilation is in progress."""
    for tensor in tensors:
        if tensor.device.type != 'cpu' or tensor.dtype != torch.float32:
            return False
    return plain_eager_cpu() and cpu_gemm_backend() == 'onednn'


def plain_eager_cpu() -> bool:
    """No CPU autocast, tracing, ONNX export or compilation in progress: the state in which the
    models may replace ordinary ops by oneDNN calls or reused buffers."""
    return not (torch.is_autocast_enabled('cpu') or capturing())


def capturing() -> bool:
    """Whether tracing, ONNX export (torch.export) or compilation is in progress: the models then
    run their plain graph (convolutions, no oneDNN calls, no views whose shapes depend on the input)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   activation: Optional[str] = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, _ACTIVATIONS[activation], [], '')


class _OneDnnLinear(torch.autograd.Function):
    """x W^T + b through oneDNN, with the backward's two GEMMs through oneDNN too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        rows = grad.reshape(-1, grad.shape[-1])  # [M, N]
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_linear(grad, weight.t().contiguous(), None)  # [.., K]: grad W
        if ctx.needs_input_grad[1]:
            # grad^T x [N, K] as a linear map of two strided views. oneDNN's op copies its first
            # operand to a contiguous one (the second it reads strided), so the narrower of the two
            # goes first: rows^T [N, M] against x^T [K, M], or x^T against rows^T for (x^T grad)^T
            columns = x.reshape(-1, x.shape[-1])  # [M, K]
            if columns.shape[1] < rows.shape[1]:
                grad_weight = _onednn_linear(columns.t(), rows.t(), None).t().contiguous()
            else:
                grad_weight = _onednn_linear(rows.t(), columns.t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           activation: Optional[str] = None) -> torch.Tensor:
    """activation(x W^T + b) for x [.., K], weight [N, K] (views allowed) -> [.., N].

    activation: None, 'silu' or 'relu'; through oneDNN SiLU is fused into the GEMM (no second
    pass over the output); ReLU is not (oneDNN's ReLU post-op maps NaN to 0, which would hide a
    non-finite weight or input: it runs as PyTorch's in-place ReLU, which keeps NaN); with autograd
    on the activation is a separate op.
    """
    if takes_onednn(x, weight, *(() if bias is None else (bias,))):
        if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad
                                               or (bias is not None and bias.requires_grad)):
            if activation == 'relu':
                return activate(_onednn_linear(x, weight, bias), activation)
            return _onednn_linear(x, weight, bias, activation)
        out = _OneDnnLinear.apply(x, weight, bias)
    else:
        out = F.linear(x, weight, bias)
    return activate(out, activation)


def activate(out: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    """activation (None, 'silu' or 'relu') applied to a GEMM's output, in place without autograd."""
    if activation == 'silu':
        return F.silu(out, inplace=not torch.is_grad_enabled())
    if activation == 'relu':
        return F.relu(out, inplace=not torch.is_grad_enabled())
    return out


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for a [.., M, K] and one matrix b [K, N] (no autograd through oneDNN: for no-grad
    paths and hand-written backward passes)."""
    if b.dim() == 2 and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)) \
            and takes_onednn(a, b):
        weight = b.t()
        if not weight.is_contiguous() and b.numel() * b.element_size() <= _SMALL_BYTES:
            # a small transposed operand: copying it (1 MB for the attention's [128, 2048] summary)
            # costs less than oneDNN's strided read of it (8.2 against 6.2 ms at 4000 frames here)
            weight = weight.contiguous()
        return _onednn_linear(a, weight, None)
    return torch.matmul(a, b)
