"""Layers shared by MossFormer and MossFormer2, each defined once.

Axis legend used in shape comments:
    B batch, T samples, N encoder filters, D model width, L frames,
    S query/key width, H hidden width, G groups, g group length, C speakers.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import gemm
from .gemm import takes_onednn

# ---------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------


class ScaleNorm(nn.Module):
    """x / (||x|| / sqrt(dim)) * g over the last axis, one learnable gain g."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one pass over x: x * (g / norm) rounds differently from (x / norm) * g by an ulp
        return x * self.row_scale(scalenorm_denominator(x, self))

    def row_scale(self, denominator: torch.Tensor) -> torch.Tensor:
        """g / denominator: the factor this norm applies to each row."""
        return self.g / denominator


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a [B, channels, L] tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class GlobalLayerNorm(nn.Module):
    """Normalise over channels and frames of [B, channels, L], per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(1, 2), keepdim=True)
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


def channel_norm(kind: str, channels: int) -> nn.Module:
    """Mask-net normalisation for [B, channels, L]: 'ln', 'gln' or 'cln'."""
    if kind == 'ln':
        return nn.GroupNorm(1, channels, eps=1e-8)
    if kind == 'gln':
        return GlobalLayerNorm(channels)
    if kind == 'cln':
        return ChannelLayerNorm(channels, eps=1e-8)
    raise ValueError(f"norm must be 'ln', 'gln' or 'cln', got {kind!r}")


def frames_first_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A `channel_norm` module applied to frames-first x [B, L, channels]: the same numbers as
    norm(x.transpose(1, 2)).transpose(1, 2), without moving x.

    The global norms ('ln', 'gln') take their statistics over all of an item's frames and
    channels; their per-channel affine map and the normalisation are one pass (x * a + c, with
    a and c per item and channel).
    """
    return frames_first_norm_rows(norm, x)(0, x.shape[1])


def frames_first_norm_rows(norm: nn.Module, x: torch.Tensor):
    """`frames_first_norm(norm, x)` as a function of a range of x's frames: rows(start, stop) gives
    those frames of the result (the global norms' statistics are taken over all of x once)."""
    if isinstance(norm, ChannelLayerNorm):
        return lambda start, stop: F.layer_norm(x[:, start:stop], norm.normalized_shape, norm.weight, norm.bias,
                                                norm.eps)
    if isinstance(norm, nn.GroupNorm) and norm.num_groups == 1 and norm.affine:
        weight, bias, eps = norm.weight, norm.bias, norm.eps
    elif isinstance(norm, GlobalLayerNorm):
        weight, bias, eps = norm.weight.view(-1), norm.bias.view(-1), norm.eps
    else:
        raise TypeError(f'frames_first_norm: unsupported norm {type(norm).__name__}')
    var, mean = torch.var_mean(x, dim=(1, 2), keepdim=True, correction=0)  # [B, 1, 1]
    scale = torch.rsqrt(var + eps) * weight  # [B, 1, C]
    shift = bias - mean * scale
    return lambda start, stop: torch.addcmul(shift, x[:, start:stop], scale)


# ---------------------------------------------------------------------------
# depthwise convolution over frames, computed channels-last
# ---------------------------------------------------------------------------
#
# The blocks keep activations as [B, L, C].  A depthwise Conv1d wants [B, C, L]:
# transposing costs a strided copy (tens of ms for a [4000, 2048] tensor on a CPU),
# and oneDNN's depthwise kernel on that layout is slow too.  Viewing [B, L, C] as
# [B, C, 1, L] gives a channels-last (NHWC) tensor without a copy, for which oneDNN
# has a fast depthwise kernel (about 35x faster here, identical results).  Its
# weight gradient on that layout is slow, so on the CPU a custom backward computes
# the input gradient as the same fast convolution with the flipped kernel and the
# weight gradient as two batched GEMMs over blocks of frames (_depthwise_weight_grad).


def _frames_as_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).unsqueeze(2)  # [B, L, C] -> [B, C, 1, L], channels-last strides


def _depthwise_nhwc(x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int) -> torch.Tensor:
    if x.device.type == 'cpu' and x.shape[-1] < 32 and (
            x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled('cpu')):
        # oneDNN's channels-last bf16 depthwise kernel hangs for fewer than ~24 channels (seen with
        # 8 and 16 on torch 2.11); such narrow layers only occur in small test models
        return F.conv1d(x.transpose(1, 2), weight, padding=padding, dilation=dilation,
                        groups=weight.shape[0]).transpose(1, 2).contiguous()
    out = F.conv2d(_frames_as_nhwc(x.contiguous()), weight.unsqueeze(2), padding=(0, padding),
                   dilation=(1, dilation), groups=weight.shape[0])  # [B, C, 1, L]
    return out.squeeze(2).transpose(1, 2)  # [B, L, C], contiguous


def _channels_first(x: torch.Tensor, front: int, total: int, dtype: torch.dtype, tile: int = 64) -> torch.Tensor:
    """[B, L, C] -> [B, C, total] in `dtype`, with `front` zero frames before x and zeros after it.

    The transposing copy goes in tiles of frames: one strided copy of a [4000, 2048] tensor
    takes about 25 ms here, tiles of 64 frames about 8 ms.
    """
    b, num_frames, channels = x.shape
    out = torch.empty(b, channels, total, dtype=dtype, device=x.device)
    out[..., :front] = 0
    out[..., front + num_frames:] = 0
    for start in range(0, num_frames, tile):
        stop = min(start + tile, num_frames)
        out[..., front + start:front + stop].copy_(x[:, start:stop].transpose(1, 2))
    return out


def _depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel: int, padding: int,
                           dilation: int) -> torch.Tensor:
    """d loss / d weight [C, 1, K] of the 'same' depthwise conv of x [B, L, C], given its output gradient.

    grad_w[c, k] = sum_{b, t} grad[b, t, c] * x_padded[b, t + k d, c]. Direct, that is a
    reduction over frames per channel and tap, which runs as a long-kernel convolution at a few
    GFLOP/s. Instead the frames are cut into blocks at least as long as the kernel's reach
    (K - 1) d: per channel, the products of every frame of a block with every frame of that
    block and the next form a small matrix, summed over all blocks by two batched GEMMs
    ([C, block, blocks] x [C, blocks, block], on views of the channels-first copies); tap k is the
    sum of that matrix's diagonal at offset k d. 3x faster here.
    """
    b, num_frames, channels = x.shape
    reach = (kernel - 1) * dilation
    block = max(reach, 1) * max(1, -(-16 // max(reach, 1)))  # a multiple of the reach, at least 16 frames
    blocks = -(-num_frames // block)
    # under bf16 autocast the GEMMs take bf16 operands as every other weight gradient does (with
    # float32 accumulation): the channels-first copies are then half the bytes
    dtype = x.dtype if torch.is_autocast_enabled(x.device.type) else torch.promote_types(x.dtype, torch.float32)
    with float32_region(x):
        grad_t = _channels_first(grad, 0, blocks * block, dtype).view(b, channels, blocks, block)
        x_t = _channels_first(x, padding, (blocks + 1) * block, dtype).view(b, channels, blocks + 1, block)
        products = None  # [C, block, 2 * block]: frame s of a block times frame w of it and the next
        for item in range(b):
            left = grad_t[item].transpose(1, 2)  # [C, block, blocks]
            both = torch.cat((torch.bmm(left, x_t[item, :, :blocks]), torch.bmm(left, x_t[item, :, 1:])), dim=-1)
            products = both if products is None else products.add_(both)
        taps = products.as_strided((channels, kernel, block), (2 * block * block, dilation, 2 * block + 1))
        return taps.sum(-1, dtype=torch.promote_types(dtype, torch.float32)).unsqueeze(1)  # [C, 1, K]

class _DepthwiseFramesConv(torch.autograd.Function):
    """'same' depthwise conv on [B, L, C] with a fast CPU backward."""

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')  # backward runs under the forward's autocast state (bf16 training)
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int) -> torch.Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return _depthwise_nhwc(x, weight, padding, dilation)

    @staticmethod
    @torch.amp.custom_bwd(device_type='cpu')
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # d out[t] / d x[s] = w[(s - t + p) / d]: the same conv with the kernel flipped
            grad_x = _depthwise_nhwc(grad, weight.flip(-1), ctx.padding, ctx.dilation)
        if ctx.needs_input_grad[1]:
            grad_w = _depthwise_weight_grad(x, grad, weight.shape[-1], ctx.padding, ctx.dilation).to(weight.dtype)
        return grad_x, grad_w, None, None


def depthwise_conv_frames(x: torch.Tensor, weight: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """'same' depthwise convolution over frames: x [B, L, C], weight [C, 1, K] (odd K) -> [B, L, C].

    Same numbers as ``F.conv1d(x.transpose(1, 2), weight, padding=(K - 1) // 2 * dilation,
    dilation=dilation, groups=C).transpose(1, 2)`` up to float rounding. For ``h + conv(h)`` pass
    ``with_identity_tap(weight)``: one convolution, no extra pass.
    """
    kernel = weight.shape[-1]
    if kernel % 2 == 0:
        raise ValueError(f'depthwise_conv_frames needs an odd kernel, got {kernel}')
    if dilation > 1:
        # oneDNN's dilated depthwise kernel is slow; a conv with dilation d is d independent
        # undilated convs over the interleaved phases t = r, r + d, ..., which a view folds into
        # channels: [B, L, C] -> [B, L/d, d*C] (zero padding at the end changes nothing)
        b, num_frames, channels = x.shape
        extra = (-num_frames) % dilation
        if extra:
            x = F.pad(x, (0, 0, 0, extra))
        folded = x.reshape(b, (num_frames + extra) // dilation, dilation * channels)
        out = depthwise_conv_frames(folded, weight.repeat(dilation, 1, 1))
        return out.reshape(b, num_frames + extra, channels)[:, :num_frames]
    padding = (kernel - 1) // 2
    if x.device.type == 'cpu' and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _DepthwiseFramesConv.apply(x, weight, padding, 1)
    return _depthwise_nhwc(x, weight, padding, 1)


# ---------------------------------------------------------------------------
# dropout with a cheaper CPU mask
# ---------------------------------------------------------------------------
#
# On a CPU, torch's dropout draws one Bernoulli number per element from a serial generator:
# 55 ms for a [4000, 2048] tensor here, twenty times the multiply it guards. Here each element
# gets 16 random bits, four per 64-bit draw (8 ms for the same tensor), and the kept values are
# scaled by the exact inverse of the keep rate: the drop rate is p rounded to a multiple of
# 1/65536. The mask is kept in the input's dtype, as torch keeps its own: applying it is one
# multiply in float32 (torch.where with a bool mask is 5x slower here), two in bfloat16.

_INT64_MIN = -2 ** 63


def keep_mask(shape: Tuple[int, ...], p: float, device: torch.device) -> Tuple[torch.Tensor, float]:
    """A random bool mask, True with probability 1 - p (p rounded to 1/65536), and 1 / that probability."""
    dropped = round(p * 65536)
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(_INT64_MIN, None)
    draws = words.view(torch.int16)[:count].view(shape)  # uniform over the 65536 int16 values
    return draws >= dropped - 32768, 65536 / (65536 - dropped)


def dropout_mask(shape: Tuple[int, ...], p: float, like: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """A dropout mask in like's dtype and the scale still to apply with it.

    In float32 and wider the mask holds 0 and 1 / P(keep) (scale 1). In bfloat16 and float16,
    where 1 / 0.9 would round to 1.109 (a 0.2 % bias on every kept value), it holds 0 and 1, and
    the scale is applied as a scalar, which PyTorch computes in float32 and rounds once.
    """
    keep, scale = keep_mask(shape, p, like.device)
    if like.dtype in (torch.float32, torch.float64):
        return keep.to(like.dtype).mul_(scale), 1.0
    return keep.to(like.dtype), scale


def apply_mask(x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """x * mask * scale for a `dropout_mask` (a new tensor)."""
    return x * mask if scale == 1.0 else x.mul(scale).mul_(mask)


class _Dropout(torch.autograd.Function):
    """x * mask, keeping the mask for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        mask, ctx.scale = dropout_mask(x.shape, p, x)
        ctx.save_for_backward(mask)
        return apply_mask(x, mask, ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mask, = ctx.saved_tensors
        return apply_mask(grad, mask.to(grad.dtype), ctx.scale), None


def dropout(x: torch.Tensor, module: nn.Dropout) -> torch.Tensor:
    """`module(x)` for an nn.Dropout, with the cheaper mask on a CPU (elsewhere torch's own fused kernel)."""
    if not module.training or module.p == 0:
        return x
    if x.device.type != 'cpu' or module.inplace:
        return module(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Dropout.apply(x, module.p)
    return apply_mask(x, *dropout_mask(x.shape, module.p, x))


# ---------------------------------------------------------------------------
# encoder / decoder
# ---------------------------------------------------------------------------


class ConvEncoder(nn.Module):
    """Learned analysis filterbank: Conv1d(1 -> N, K, stride) + ReLU."""

    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, channels, kernel_size, stride=stride, bias=False)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, N, L]."""
        return F.relu(self.conv(mix.unsqueeze(1)))

    def frames_first(self, mix: torch.Tensor) -> torch.Tensor:
        """The same filterbank, [B, T] -> [B, L, N]: one GEMM over the input's windows where the
        kernel is a multiple of the stride (as released: 16 and 8), else the convolution. (Traced,
        exported and compiled graphs call the module itself: `MossFormer.sources`.)
        """
        kernel, stride = self.conv.kernel_size[0], self.conv.stride[0]
        if kernel % stride:
            return self(mix).transpose(1, 2)
        return gemm.linear(_windows(mix, kernel, stride), self.conv.weight.squeeze(1), None, 'relu')


def _windows(mix: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """[B, T] -> [B, L, K]: window t is mix[:, t*S : t*S + K], L = (T - K) // S + 1 (K a multiple of S).

    The windows are K/S consecutive hops of S samples side by side (views and one concatenation).
    """
    hops_per_window = kernel // stride
    hops = mix.unfold(-1, stride, stride)  # [B, T // S, S]: L + K/S - 1 hops (a view)
    num_frames = hops.shape[1] - hops_per_window + 1
    return torch.cat([hops[:, j:j + num_frames] for j in range(hops_per_window)], dim=-1)


class ConvDecoder(nn.Module):
    """Learned synthesis filterbank: ConvTranspose1d(N -> 1, K, stride)."""

    def __init__(self, channels: int, kernel_size: int, stride: int, bias: bool = False) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose1d(channels, 1, kernel_size, stride=stride, bias=bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B', N, L] -> [B', T']."""
        return self.deconv(frames).squeeze(1)

    def frames_first(self, frames: torch.Tensor) -> torch.Tensor:
        """The same filterbank on [B, L, C, N] -> [B, C, T'], T' = (L - 1) * S + K.

        Where the kernel is a multiple of the stride: one GEMM gives every frame's K output samples,
        and the K/S hops of S samples that overlap are added (oneDNN's transposed convolution took
        30 ms for what is a 0.13 GFLOP product here).
        """
        b, num_frames, sources, channels = frames.shape
        kernel, stride = self.deconv.kernel_size[0], self.deconv.stride[0]
        if kernel % stride:
            return self(frames.permute(0, 2, 3, 1).reshape(b * sources, channels, num_frames)).view(b, sources, -1)
        samples = gemm.linear(frames, self.deconv.weight.squeeze(1).t()).transpose(1, 2)  # [B, C, L, K]
        hops_per_window = kernel // stride
        out = sum(F.pad(samples[..., j * stride:(j + 1) * stride], (0, 0, j, hops_per_window - 1 - j))
                  for j in range(hops_per_window))  # [B, C, L + K/S - 1, S]
        out = out.flatten(-2)  # [B, C, T']
        return out if self.deconv.bias is None else out + self.deconv.bias


class ScaledSinusoidalEmbedding(nn.Module):
    """Sinusoidal position embedding [L, D] times one learnable scalar."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer('inv_freq', inv_freq)

    def forward(self, num_frames: int) -> torch.Tensor:
        positions = torch.arange(num_frames, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        angles = positions[:, None] * self.inv_freq[None, :]  # [L, D/2]
        return torch.cat((angles.sin(), angles.cos()), dim=-1) * self.scale  # [L, D]


# ---------------------------------------------------------------------------
# reused buffers for inference
# ---------------------------------------------------------------------------

# frames per tile of the tiled inference forwards: the default `tile_frames` of GatedAttentionUnit,
# RecurrentModule and the mask head (0 on a module: it never tiles); see `inference_tiles`
TILE_FRAMES = 1024
_BUFFERS = threading.local()
_REUSE_MIN_BYTES = 1 << 20  # (smaller ones are not worth a dictionary lookup)


@contextlib.contextmanager
def reused_buffers():
    """Within it, CPU inference reuses the blocks' largest temporaries from one block to the next.

    glibc hands out every block above its mmap threshold (at most 32 MiB) as fresh pages and
    unmaps it when it is freed, so each [L, 2048] float32 temporary of more than 4096 frames
    faults in its pages anew in every block: 14 million page faults in one 60 s MossFormer(L)
    forward pass on this machine's KVM guest. A buffer taken with `reusable` lives until the
    context ends and serves the same role in every block. The sequence model opens it for every
    forward pass; it only takes effect without autograd (where grad mode is on at its start, no
    pool opens: inside autograd functions' forward grad mode is off, yet their results are saved
    for the backward). Nested uses share the outer one.
    """
    if getattr(_BUFFERS, 'pool', None) is not None or torch.is_grad_enabled():
        yield
        return
    _BUFFERS.pool = {}
    try:
        yield
    finally:
        _BUFFERS.pool = None


def reusable(role: str, shape: Tuple[int, ...], like: torch.Tensor, explicit: bool = False) -> Optional[torch.Tensor]:
    """An uninitialised buffer for `role` (like's dtype and device) from the open pool, or None.

    None (the caller allocates as usual) outside `reused_buffers`, with autograd on, off the CPU,
    while tracing or exporting, for buffers under 1 MiB, and under autocast unless `explicit`: a
    caller that writes the buffer with copies or ops that autocast leaves alone (not an `out=` of a
    GEMM, whose dtype autocast would change). The caller must be done with the buffer before the
    same role and shape are asked for again (the next block).
    """
    pool = getattr(_BUFFERS, 'pool', None)
    if pool is None or torch.is_grad_enabled() or like.device.type != 'cpu':
        return None
    if math.prod(shape) * like.element_size() < _REUSE_MIN_BYTES:
        return None
    if gemm.capturing() or not (explicit or gemm.plain_eager_cpu()):
        return None
    return _pooled(role, shape, like.dtype, like.device)


def _pooled(role: str, shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The open pool's buffer for `role`, shape and dtype (made on first use), or a new tensor
    where no pool is open. For callers that write it with explicit copies or elementwise ops of
    their own: unlike `reusable`, autocast does not matter here."""
    pool = getattr(_BUFFERS, 'pool', None)
    if pool is None or torch.is_grad_enabled() or gemm.capturing():
        return torch.empty(shape, dtype=dtype, device=device)
    key = (role, tuple(shape), dtype, device)
    buffer = pool.get(key)
    if buffer is None:
        buffer = pool[key] = torch.empty(shape, dtype=dtype, device=device)
    return buffer


def inference_tiles(module: nn.Module, x: torch.Tensor, size: int):
    """(start, stop) of `size`-frame tiles of x [B, L, .] for a block's tiled inference forward, or None
    where its whole-tensor forward runs: in training mode (dropout), with autograd on, off the CPU,
    under autocast, while capturing a graph, for size <= 0, and for inputs shorter than two tiles.

    (Under bf16 autocast the tiles measured slower: 1.156x the whole-tensor time for a 6-block
    MossFormer(L) at 4 s, 0.97x for 3 blocks at 60 s, on a 2-core Zen 4: the bf16 temporaries fault
    in half the pages, while the tiles add casts and copies that weigh more in the faster pass.)
    """
    if (size <= 0 or module.training or torch.is_grad_enabled() or x.device.type != 'cpu'
            or torch.is_autocast_enabled('cpu') or gemm.capturing() or x.shape[1] < 2 * size):
        return None
    return [(start, min(start + size, x.shape[1])) for start in range(0, x.shape[1], size)]


def _tile_rows(fn, x: torch.Tensor, tiles, halo: int, role: str) -> torch.Tensor:
    """fn applied to x [B, L, .] tile by tile into a reused buffer for `role`: the rows of each tile
    from fn of the tile with `halo` more frames on each side (fewer at the ends of x), for an fn whose
    frame t depends on frames t - halo .. t + halo of its input only ('same' zero padding at its ends)."""
    out = None
    for start, stop in tiles:
        first, last = max(start - halo, 0), min(stop + halo, x.shape[1])
        rows = fn(x[:, first:last])[:, start - first:stop - first]
        if out is None:
            out = _pooled(role, (x.shape[0], x.shape[1], rows.shape[-1]), rows.dtype, x.device)
        out[:, start:stop] = rows
    return out


def _residual_by_tiles(x: torch.Tensor, tiles, update_rows) -> torch.Tensor:
    """A tiled block's output: x + update_rows(start, stop) tile by tile, into a `_stream_buffer`."""
    out = None
    for start, stop in tiles:
        update = update_rows(start, stop)
        if out is None:
            out = _stream_buffer(x, torch.promote_types(x.dtype, update.dtype))
        torch.add(x[:, start:stop], update, out=out[:, start:stop])
    return out


def _stream_buffer(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A buffer of x's shape for a block's output that is not x's own storage: the pool's two
    'stream' buffers serve the blocks in turn (a block's input is the previous block's output)."""
    for role in ('stream 0', 'stream 1'):
        buffer = _pooled(role, tuple(x.shape), dtype, x.device)
        if buffer.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            return buffer
    raise AssertionError('both stream buffers share the block input\'s storage')  # (cannot happen: two differ)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], role: str,
            activation: Optional[str] = None) -> torch.Tensor:
    """activation(F.linear(x, weight, bias)), at inference into a reused buffer for `role` (the GEMM
    F.linear runs; the activation in place).

    Where oneDNN runs the float32 GEMMs (models.gemm), its output is a new tensor instead, with SiLU
    fused into the GEMM (ReLU in place after it: oneDNN's would turn NaN into 0).
    """
    if takes_onednn(x, weight):
        return gemm.linear(x, weight, bias, activation)
    return gemm.activate(_blas_linear(x, weight, bias, role), activation)


def _blas_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], role: str) -> torch.Tensor:
    buffer = reusable(role, (*x.shape[:-1], weight.shape[0]), x)
    if buffer is None or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.matmul(x, weight.t(), out=buffer)
    if not x.is_contiguous():
        return F.linear(x, weight, bias)
    torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight.t(), out=buffer.view(-1, weight.shape[0]))
    return buffer


# ---------------------------------------------------------------------------
# gated attention unit (MossFormer block)
# ---------------------------------------------------------------------------


class ConvProjection(nn.Module):
    """norm -> Linear -> SiLU -> residual depthwise Conv1d -> Dropout on [B, L, dim]."""

    def __init__(self, dim_in: int, dim_out: int, norm: str = 'scalenorm', kernel_size: int = 17,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = ScaleNorm(dim_in) if norm == 'scalenorm' else nn.LayerNorm(dim_in)
        self.linear = nn.Linear(dim_in, dim_out)
        self.dwconv = nn.Conv1d(dim_out, dim_out, kernel_size, padding=(kernel_size - 1) // 2,
                                groups=dim_out, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, ScaleNorm):
            return self.scaled(x, self.norm.row_scale(scalenorm_denominator(x, self.norm)))
        h = F.layer_norm(x, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        return self._convolve(gemm.linear(h, self.linear.weight, self.linear.bias, 'silu'))

    def scaled(self, x: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor:
        """The projection of x whose ScaleNorm scales row t by row_scale[t] ([.., L, 1]).

        The norm's per-row factor commutes with the linear map, so it is applied to the
        output, together with the bias, in one pass: linear(x * s) = (x W^T) * s + b. This
        saves the pass that scales x, the bias copy and GEMM's read of it, and lets one norm
        serve projections that share an input (the block's hidden and query/key maps).
        """
        if torch.is_grad_enabled() and self.linear.out_features >= self.linear.in_features:
            # training a widening projection: scaling the (narrower) input keeps the backward's extra
            # passes at dim_in wide; folding the factor into the output would add two passes over the
            # dim_out-wide gradient (a narrowing one, as to_out and to_qk, folds it: the output is narrower)
            return self._activate(gemm.linear(x * row_scale, self.linear.weight, self.linear.bias))
        if not torch.is_grad_enabled() and takes_onednn(x, self.linear.weight):
            # oneDNN adds the bias and applies SiLU in the GEMM itself: scaling the input costs one
            # pass over the narrower side instead of two (scale and bias, SiLU) over the output
            h = gemm.linear(x * row_scale.to(x.dtype), self.linear.weight, self.linear.bias, 'silu')
            return self._convolve(h)
        # the GEMM's output is done with when this returns (the conv writes a new tensor): the next
        # user of a 'projection' buffer of this shape (the attention's output) may take it
        h = _linear(x, self.linear.weight, None, 'projection')  # [.., L, out]
        if torch.is_grad_enabled():
            return self._activate(torch.addcmul(self.linear.bias.to(h.dtype), h, row_scale.to(h.dtype)))
        # in h's dtype: under bf16 autocast, float32 operands would make addcmul compute into a
        # float32 temporary and copy it back (two extra passes over the widest tensor)
        bias, row_scale = self.linear.bias.to(h.dtype), row_scale.to(h.dtype)
        return self._activate(torch.addcmul(bias, h, row_scale, out=h))

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        return self._convolve(F.silu(h, inplace=not torch.is_grad_enabled()))  # [B, L, out]

    def _convolve(self, h: torch.Tensor) -> torch.Tensor:
        h = depthwise_conv_frames(h, with_identity_tap(self.dwconv.weight))  # h + dwconv(h): one conv
        return dropout(h, self.dropout)


def with_identity_tap(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise kernel [C, 1, K] (odd K) plus 1 at its centre tap: conv(h) + h as one convolution."""
    folded = weight.clone()
    folded[..., weight.shape[-1] // 2] += 1
    return folded


def scalenorm_denominator(x: torch.Tensor, norm: ScaleNorm) -> torch.Tensor:
    """||x|| / sqrt(dim), clamped as ScaleNorm clamps it: [.., 1]."""
    return (torch.linalg.vector_norm(x, dim=-1, keepdim=True) * norm.scale).clamp(min=norm.eps)


class OffsetScale(nn.Module):
    """Per-head affine maps of a shared vector: [.., S] -> heads x [.., S]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(heads, dim))
        self.beta = nn.Parameter(torch.zeros(heads, dim))
        nn.init.normal_(self.gamma, std=0.02)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = x.unsqueeze(-2) * self.gamma + self.beta  # [.., heads, S]
        return out.unbind(dim=-2)


def _rotary_cos_sin(rotary: nn.Module, num_frames: int, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of rotary-embedding-torch's angles for frames 0..L-1, [L, 1, R/2] (float64 for a float64 model, else float32).

    The angle of frame t and pair j is (t / interpolate_factor) * freqs[j], the same product
    rotary-embedding-torch forms (it repeats each angle for the two members of a pair); the
    positions are always float32 here, where the library builds them in the input's dtype
    (under bfloat16, frame 257 would become 256). One table serves every block of a forward
    pass: it is cached on the shared rotary module, keyed by length, device and grad mode.
    """
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    key = (num_frames, device, dtype, torch.is_inference_mode_enabled())
    cached = getattr(rotary, '_mossformer_cos_sin', None)
    if cached is not None and cached[0] == key:
        return cached[1]
    freqs = rotary.freqs.detach().to(device=device, dtype=dtype)
    positions = torch.arange(num_frames, device=device, dtype=dtype) / rotary.interpolate_factor
    angles = (positions[:, None] * freqs[None, :]).unsqueeze(1)  # [L, 1, R/2]
    table = (angles.cos(), angles.sin())
    rotary._mossformer_cos_sin = (key, table)
    return table


def _plain_rotary(rotary: Optional[nn.Module]) -> bool:
    """Whether `rotary` is rotary-embedding-torch's plain language-model rotation (the released one)."""
    return (rotary is not None and getattr(rotary, 'freqs_for', None) == 'lang'
            and not getattr(rotary, 'use_xpos', True) and not getattr(rotary, 'learned_freq', True))


def offset_scale_rotary(qk: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                        rotary: Optional[nn.Module]) -> Tuple[torch.Tensor, ...]:
    """The four per-head maps of qk, each rotated: [B, L, S] -> 4 x [B, L, S] (strided views).

    Same numbers as ``map(rotary.rotate_queries_or_keys, OffsetScale(qk))`` in float32, in two
    passes over a [B, L, 4, S] buffer instead of about twenty over four [B, L, S] tensors.
    A rotated pair (x1, x2) becomes (x1 cos - x2 sin, x2 cos + x1 sin), which is exactly
    rotary-embedding-torch's x * cos + rotate_half(x) * sin.
    """
    # (at inference the heads' buffer is reused from block to block: the attention is done with it
    # before the next block asks)
    buffer = reusable('heads', (*qk.shape[:-1], gamma.shape[0], qk.shape[-1]), qk, explicit=True)
    heads = torch.addcmul(beta, qk.unsqueeze(-2), gamma, out=buffer)  # [B, L, 4, S]
    if rotary is None:
        return heads.unbind(dim=-2)
    if not _plain_rotary(rotary):
        return tuple(rotary.rotate_queries_or_keys(h) for h in heads.unbind(dim=-2))
    cos, sin = _rotary_cos_sin(rotary, qk.shape[-2], qk.device, qk.dtype)
    half = cos.shape[-1]
    pairs = heads[..., :2 * half].unflatten(-1, (half, 2))  # [B, L, 4, R/2, 2]
    x1, x2 = pairs.unbind(-1)
    if heads.dtype != cos.dtype:
        x1, x2 = x1.to(cos.dtype), x2.to(cos.dtype)
    rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    pairs.copy_(rotated)  # in place in the fresh buffer: addcmul does not need its output for the gradient
    return heads.unbind(dim=-2)


def _token_shift(x: torch.Tensor) -> torch.Tensor:
    """The first half of the channels from the previous frame (zeros at frame 0): one copy of x."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _TokenShift.apply(x)
    return _shift_first_half(x, 1)


def _shift_first_half(x: torch.Tensor, step: int) -> torch.Tensor:
    """out[:, t, :half] = x[:, t - step, :half] (zero outside), out[..., half:] = x[..., half:]; step is 1 or -1."""
    half = (x.shape[-1] + 1) // 2  # the size torch.chunk(2) gives the first piece
    out = reusable('token shift', x.shape, x, explicit=True)
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if step > 0:
        out[:, :1, :half] = 0
        out[:, 1:, :half] = x[:, :-1, :half]
    else:
        out[:, -1:, :half] = 0
        out[:, :-1, :half] = x[:, 1:, :half]
    out[..., half:] = x[..., half:]
    return out


class _TokenShift(torch.autograd.Function):
    """Token shift whose gradient is the opposite shift (autograd's slices would zero-fill and copy twice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _shift_first_half(x, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _shift_first_half(grad, -1)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or as it is when it is wider (a float64 model stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def float32_region(x: torch.Tensor):
    """A context that turns autocast off for x's device (a no-op context without autocast).

    Inside it, float32 inputs give float32 results: the parts of the models that stay float32
    under ``--precision bf16`` use it.
    """
    try:
        enabled = torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta, when FLOPs are counted)
        enabled = False
    return torch.autocast(x.device.type, enabled=False) if enabled else contextlib.nullcontext()


def residual_add(x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """x + update in the wider of their dtypes, in update's buffer where autograd does not record.

    Under bfloat16 autocast the update of a block is bfloat16 while the residual stream x
    stays float32: the sum is float32 then (rounding the stream to bfloat16 at every one of
    24 blocks costs about 10 dB of fidelity). The update is converted first and the sum
    written into the converted copy (0.65 ms for [4000, 512] here, against 0.81 ms for a
    mixed-dtype add into a new tensor).
    """
    wide = torch.promote_types(x.dtype, update.dtype)
    if update.dtype != wide:
        update = update.to(wide)
    if torch.is_grad_enabled() or x.dtype != wide:
        return x + update
    return update.add_(x)


def _pad_frames(x: torch.Tensor, padding: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, padding)) if padding else x


def _group_spans(num_frames: int, group_size: int):
    """(start, stop, size) of the full groups as one span, then of the shorter last group if any."""
    full = num_frames - num_frames % group_size
    spans = [(0, full, group_size)] if full else []
    return spans + ([(full, num_frames, num_frames - full)] if full < num_frames else [])


def _attention_dtype(lin_q: torch.Tensor, vu: torch.Tensor) -> torch.dtype:
    """The dtype of the attention's value GEMMs: autocast's where it is on, else the inputs' common one."""
    try:
        if torch.is_autocast_enabled(vu.device.type):
            return torch.get_autocast_dtype(vu.device.type)
    except RuntimeError:  # a device type autocast does not know (meta)
        pass
    return torch.promote_types(lin_q.dtype, vu.dtype)


def _key_value_summary(lin_k: torch.Tensor, values: torch.Tensor, onednn: bool) -> torch.Tensor:
    """The linear attention's key-value summary lin_k^T values / L: [B, L, S] x [B, L, H] -> [B, S, H].

    In values' dtype where that is at least lin_k's (through oneDNN item by item, when `onednn`),
    else in float32 from blocks of frames (`_frame_summary`). Called within `float32_region`.
    """
    b, n, hidden = values.shape
    if onednn:  # oneDNN multiplies by one matrix per call
        lin_kv = torch.empty((b, lin_k.shape[-1], hidden), dtype=values.dtype, device=values.device)
        for item in range(b):
            torch.div(gemm.matmul(lin_k[item].t(), values[item]), n, out=lin_kv[item])  # [S, H]
        return lin_kv
    if values.dtype == torch.promote_types(values.dtype, lin_k.dtype):
        return torch.matmul(lin_k.transpose(-1, -2).to(values.dtype), values) / n
    return _frame_summary(lin_k, values).div_(n)  # float32


def _joint_attention_forward(quad_q: torch.Tensor, lin_q: torch.Tensor, quad_k: torch.Tensor, lin_k: torch.Tensor,
                             vu: torch.Tensor, group_size: int, p: float):
    """Linear attention over the sequence plus relu^2 attention inside groups: [B, L, H], the
    linear attention's [B, S, H] key-value summary and the dropout masks (one per span).

    The value GEMMs run in `_attention_dtype` (bfloat16 under bf16 autocast), the within-group
    scores in the queries' dtype (float32). The last group may be shorter than g: that is what zero
    padding gives (relu(0)^2 = 0), without copying v and u. The quadratic part is added into the
    linear one by the same GEMM (beta = 1).
    """
    dtype = _attention_dtype(lin_q, vu)
    b, n, hidden = vu.shape
    width = quad_q.shape[-1]
    with float32_region(vu):
        values = vu.to(dtype)
        if takes_onednn(quad_q, lin_q, quad_k, lin_k, values):
            return _joint_attention_onednn(quad_q, lin_q, quad_k, lin_k, values, group_size, p)
        lin_kv = _key_value_summary(lin_k, values, onednn=False)  # [B, S, H]
        if lin_kv.dtype == dtype:  # full precision: one GEMM each
            # (the hidden projection's GEMM output has the same shape, and its conv is done with it)
            buffer = reusable('projection', (b, n, hidden), lin_kv)
            out = torch.matmul(lin_q.to(dtype), lin_kv, out=buffer)  # [B, L, H]
        else:
            out = _split_matmul(lin_q, lin_kv, dtype)  # [B, L, H]
        masks = []
        for start, stop, size in _group_spans(n, group_size):
            q = quad_q[:, start:stop].reshape(-1, size, width)  # [B*G, size, S]
            k = quad_k[:, start:stop].reshape(-1, size, width)
            attn = torch.bmm(q, k.transpose(1, 2)).div_(group_size).relu_().square_()  # [B*G, size, size]
            if p > 0:  # (attn is float32 or wider: the mask carries the scale)
                masks.append(dropout_mask(attn.shape, p, attn)[0])
                attn.mul_(masks[-1])
            attn = attn.to(dtype)
            groups = (stop - start) // size
            for item in range(b):
                target = out[item, start:stop].view(-1, size, hidden)
                item_values = values[item, start:stop].reshape(-1, size, hidden)
                target.baddbmm_(attn[item * groups:(item + 1) * groups], item_values)
    return out, lin_kv, masks


def _joint_attention_onednn(quad_q: torch.Tensor, lin_q: torch.Tensor, quad_k: torch.Tensor, lin_k: torch.Tensor,
                            values: torch.Tensor, group_size: int, p: float):
    """`_joint_attention_forward` in float32 with oneDNN's GEMMs (models.gemm), item by item.

    oneDNN multiplies by one matrix per call: the summary and the linear output are one GEMM
    per item, the quadratic part one per group, which adds the linear output of its frames in
    the same GEMM (a post-op); the groups' results are concatenated into the output.
    """
    b, n, hidden = values.shape
    width = quad_q.shape[-1]
    spans = _group_spans(n, group_size)
    lin_kv = _key_value_summary(lin_k, values, onednn=True)  # [B, S, H]
    out = reusable('projection', (b, n, hidden), values)
    out = torch.empty_like(values) if out is None else out
    masks, attns = [], []
    for start, stop, size in spans:
        q = quad_q[:, start:stop].reshape(-1, size, width)  # [B*G, size, S]
        k = quad_k[:, start:stop].reshape(-1, size, width)
        attns.append(torch.bmm(q, k.transpose(1, 2)).div_(group_size).relu_().square_())  # [B*G, size, size]
        if p > 0:
            masks.append(dropout_mask(attns[-1].shape, p, attns[-1])[0])
            attns[-1].mul_(masks[-1])
    for item in range(b):
        linear = gemm.matmul(lin_q[item], lin_kv[item])  # [L, H]
        parts = []
        for (start, stop, size), attn in zip(spans, attns):
            groups = (stop - start) // size
            for group in range(groups):
                rows = slice(start + group * size, start + (group + 1) * size)
                parts.append(torch.ops.mkldnn._linear_pointwise.binary(
                    attn[item * groups + group], linear[rows], values[item, rows].t(), None, 'add'))
        torch.cat(parts, out=out[item])
    return out, lin_kv, masks


def _tiled_gated_attention(quad_q: torch.Tensor, lin_q: torch.Tensor, quad_k: torch.Tensor, lin_k: torch.Tensor,
                           vu: torch.Tensor, group_size: int, tiles) -> torch.Tensor:
    """The joint attention of `_joint_attention_forward` at inference followed by the gate
    (att_u * v) * sigmoid(att_v * u), tile by tile of frames (tiles of whole groups): [B, L, H/2].

    The key-value summary is one GEMM over all frames; each tile's linear output is its own
    GEMM, to which its groups' quadratic products are added, and the tile is gated in place in
    a reused [B, L, H] buffer while it is still in cache. Same numbers as the whole-tensor path.
    """
    dtype = _attention_dtype(lin_q, vu)
    b, n, hidden = vu.shape
    width = quad_q.shape[-1]
    with float32_region(vu):
        values = vu.to(dtype)
        onednn = takes_onednn(quad_q, lin_q, quad_k, lin_k, values)
        lin_kv = _key_value_summary(lin_k, values, onednn)  # [B, S, H]
        att = _pooled('tiled attention', (b, n, hidden), dtype, vu.device)
        for start, stop in tiles:
            if onednn:
                linear = [gemm.matmul(lin_q[item, start:stop], lin_kv[item]) for item in range(b)]  # [T, H] each
            elif lin_kv.dtype == dtype:
                linear = torch.matmul(lin_q[:, start:stop].to(dtype), lin_kv)  # [B, T, H]
            else:
                linear = _split_matmul(lin_q[:, start:stop], lin_kv, dtype)
            for first, last, size in _group_spans(stop - start, group_size):
                first, last = start + first, start + last
                q = quad_q[:, first:last].reshape(-1, size, width)  # [B*G, size, S]
                k = quad_k[:, first:last].reshape(-1, size, width)
                attn = torch.bmm(q, k.transpose(1, 2)).div_(group_size).relu_().square_().to(dtype)
                groups = (last - first) // size
                for item in range(b):
                    item_values = values[item, first:last].view(groups, size, hidden)
                    if onednn:  # each group's product, plus its linear output, straight into att
                        for group in range(groups):
                            rows = slice(first + group * size, first + (group + 1) * size)
                            local = slice(rows.start - start, rows.stop - start)
                            att[item, rows] = torch.ops.mkldnn._linear_pointwise.binary(
                                attn[item * groups + group], linear[item][local], item_values[group].t(), None,
                                'add')
                        continue
                    target = linear[item, first - start:last - start].view(groups, size, hidden)
                    target.baddbmm_(attn[item * groups:(item + 1) * groups], item_values)
            if not onednn:
                att[:, start:stop] = linear
            del linear
            v, u = vu[:, start:stop].chunk(2, dim=-1)
            att_v, att_u = att[:, start:stop].chunk(2, dim=-1)
            att_v.mul_(u).sigmoid_().mul_(att_u).mul_(v)
    return att[..., :hidden // 2]


def _frame_summary(keys: torch.Tensor, values: torch.Tensor, blocks: int = 8) -> torch.Tensor:
    """keys^T @ values, [B, L, S] x [B, L, H] -> [B, S, H] in float32, from GEMMs in values' dtype.

    Under bfloat16 the linear attention's summary is the one value every frame's output shares,
    so its rounding is one error repeated coherently over the whole sequence: rounding it to
    bfloat16 cost 1.9 dB of MossFormer(L)'s perturbed-weight fidelity (more than any other single
    rounding; bench/bench_bf16_fidelity.py has the budget).
    Here the frames are summed in up to `blocks` blocks of at least 256 frames, each a bfloat16
    GEMM (float32 accumulation inside), and the block results are added in float32: their
    independent output roundings shrink by the square root of the number of blocks.
    """
    b, n, width = keys.shape
    hidden = values.shape[-1]
    keys = keys.to(values.dtype)
    size = max(256, -(-n // blocks))
    count = n // size
    full = count * size
    total = torch.zeros((b, width, hidden), dtype=torch.float32, device=values.device)
    if count:
        k = keys[:, :full].reshape(b * count, size, width)
        v = values[:, :full].reshape(b * count, size, hidden)
        total += torch.bmm(k.transpose(1, 2), v).view(b, count, width, hidden).sum(1, dtype=torch.float32)
    if full < n:
        total += torch.matmul(keys[:, full:].transpose(-1, -2), values[:, full:])
    return total


def _split_matmul(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x @ y ([B, L, S] x [B, S, H] float32) with `dtype` GEMMs, y kept to about 16 bits.

    y is split into its `dtype` rounding and the residue (y = y1 + y2), and x1 y1 + x1 y2 is one
    GEMM over the two stacked along the inner dimension (2S = 256 deep instead of 128: the GEMM
    is bound by writing its [L, H] output, and took 2.27 ms against 2.19 for L = 4000 here). x
    is rounded once (its rounding errors differ from frame to frame; y's would repeat in every
    frame).
    """
    x1, y1 = x.to(dtype), y.to(dtype)
    y2 = (y - y1).to(dtype)
    return torch.matmul(torch.cat((x1, x1), dim=-1), torch.cat((y1, y2), dim=-2))


def _by_item(fn, batch: int) -> torch.Tensor:
    """torch.stack of fn(0) .. fn(batch - 1); for one item a view of fn(0), not a copy (the stacks
    in the attention's backward took 12-25 ms per MossFormer(L) block at 4 s, batch 1, on a Zen 4)."""
    if batch == 1:
        return fn(0).unsqueeze(0)
    return torch.stack([fn(item) for item in range(batch)])


class _JointAttention(torch.autograd.Function):
    """The non-causal joint attention with a hand-written backward.

    Autograd's version of the grouped form pays for its views: each slice of v and u and each
    in-place add into a view of the output costs a zero-filled [B, L, H] gradient and copies of
    it in the backward pass. Here every gradient is written once into its own buffer; the
    within-group scores are recomputed from q and k (6 % of the attention's FLOPs) instead of
    being saved.
    """

    @staticmethod
    def forward(ctx, quad_q, lin_q, quad_k, lin_k, vu, group_size: int, p: float):
        out, lin_kv, masks = _joint_attention_forward(quad_q, lin_q, quad_k, lin_k, vu, group_size, p)
        ctx.save_for_backward(quad_q, lin_q, quad_k, lin_k, vu, lin_kv, *masks)
        ctx.group_size, ctx.dtype = group_size, out.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        quad_q, lin_q, quad_k, lin_k, vu, lin_kv, *masks = ctx.saved_tensors
        g, dtype = ctx.group_size, ctx.dtype
        b, n, hidden = vu.shape
        width = quad_q.shape[-1]
        with float32_region(vu):
            d_out = grad_out.to(dtype).contiguous()
            values = vu.to(dtype)
            # linear part: out = lin_q @ lin_kv, lin_kv = lin_k^T @ v / n
            onednn = takes_onednn(d_out, values, lin_q, lin_k, lin_kv)
            if onednn:  # oneDNN multiplies by one matrix per call: item by item
                grad_lin_q = _by_item(lambda i: gemm.matmul(d_out[i], lin_kv[i].t()), b)
                d_kv = _by_item(lambda i: gemm.matmul(lin_q[i].t(), d_out[i]), b).div_(n)
                grad_lin_k = _by_item(lambda i: gemm.matmul(values[i], d_kv[i].t()), b)
                grad_vu = _by_item(lambda i: gemm.matmul(lin_k[i], d_kv[i]), b)
            else:
                grad_lin_q = torch.matmul(d_out, lin_kv.transpose(-1, -2).to(dtype))  # [B, L, S]
                d_kv = torch.matmul(lin_q.to(dtype).transpose(-1, -2), d_out).div_(n)  # [B, S, H], with the 1 / n
                grad_lin_k = torch.matmul(values, d_kv.transpose(-1, -2))  # [B, L, S]
                grad_vu = torch.matmul(lin_k.to(dtype), d_kv)  # [B, L, H]
            # quadratic part, span by span: out_group += attn @ v_group
            grad_quad_q = torch.empty(quad_q.shape, dtype=quad_q.dtype, device=quad_q.device)
            grad_quad_k = torch.empty(quad_k.shape, dtype=quad_k.dtype, device=quad_k.device)
            spans = _group_spans(n, g)
            for index, (start, stop, size) in enumerate(spans):
                q = quad_q[:, start:stop].reshape(-1, size, width)
                k = quad_k[:, start:stop].reshape(-1, size, width)
                scores = torch.bmm(q, k.transpose(1, 2)).div_(g).relu_()  # relu(sim / g): [B*G, size, size]
                attn = scores.square()
                mask = masks[index] if masks else None
                if mask is not None:
                    attn.mul_(mask)
                attn = attn.to(dtype)
                grad_attn = torch.empty(attn.shape, dtype=dtype, device=attn.device)
                groups = (stop - start) // size
                for item in range(b):
                    rows = slice(item * groups, (item + 1) * groups)
                    v_item = values[item, start:stop].reshape(-1, size, hidden)  # [G, size, H]
                    d_item = d_out[item, start:stop].reshape(-1, size, hidden)
                    target = grad_vu[item, start:stop].view(-1, size, hidden)
                    if onednn:
                        for group in range(groups):
                            grad_attn[item * groups + group] = gemm.matmul(d_item[group], v_item[group].t())
                            target[group] = torch.ops.mkldnn._linear_pointwise.binary(
                                attn[item * groups + group].t(), target[group], d_item[group].t(), None, 'add')
                        continue
                    torch.bmm(d_item, v_item.transpose(1, 2), out=grad_attn[rows])
                    target.baddbmm_(attn[rows].transpose(1, 2), d_item)
                grad_attn = grad_attn.to(scores.dtype)
                if mask is not None:
                    grad_attn.mul_(mask)
                grad_sim = grad_attn.mul_(scores).mul_(2.0 / g)  # d relu(s / g)^2 / ds = 2 relu(s / g) / g
                grad_quad_q[:, start:stop] = torch.bmm(grad_sim, k).view(b, stop - start, width)
                grad_quad_k[:, start:stop] = torch.bmm(grad_sim.transpose(1, 2), q).view(b, stop - start, width)
        return (grad_quad_q, grad_lin_q.to(lin_q.dtype), grad_quad_k, grad_lin_k.to(lin_k.dtype),
                grad_vu.to(vu.dtype), None, None)


def frame_chunks(num_frames: int, size: int = 256):
    """(start, stop) of consecutive frame ranges of at most `size` frames.

    Elementwise chains over [B, L, H] tensors run chunk by chunk: each chunk's temporaries
    (a [256, 1024] float32 slab is 1 MB) stay in the core's cache and their memory is reused,
    where whole-tensor temporaries go to main memory and, freshly allocated, fault in every page.
    """
    return [(start, min(start + size, num_frames)) for start in range(0, num_frames, size)]


class _GatedProduct(torch.autograd.Function):
    """(att_u * v) * sigmoid(att_v * u) from [B, L, H] vu = (v, u) and att = (att_v, att_u).

    Forward and backward run chunk by chunk over frames (`frame_chunks`); the backward
    recomputes the two products and writes the gradients of vu and att into one buffer each
    (autograd's would zero-fill a [B, L, H] buffer per half).
    """

    @staticmethod
    def forward(ctx, vu: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(vu, att)
        b, n, hidden = vu.shape
        out = torch.empty((b, n, hidden // 2), dtype=torch.promote_types(vu.dtype, att.dtype), device=vu.device)
        for start, stop in frame_chunks(n):
            v, u = vu[:, start:stop].chunk(2, dim=-1)
            att_v, att_u = att[:, start:stop].chunk(2, dim=-1)
            torch.mul(att_u, v, out=out[:, start:stop]).mul_(torch.sigmoid(att_v * u))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        vu, att = ctx.saved_tensors
        grad_vu, grad_att = torch.empty_like(vu), torch.empty_like(att)
        for start, stop in frame_chunks(vu.shape[1]):
            v, u = vu[:, start:stop].chunk(2, dim=-1)
            att_v, att_u = att[:, start:stop].chunk(2, dim=-1)
            grad_v, grad_u = grad_vu[:, start:stop].chunk(2, dim=-1)
            grad_att_v, grad_att_u = grad_att[:, start:stop].chunk(2, dim=-1)
            g = grad[:, start:stop]
            gate = torch.mul(att_v, u).sigmoid_()
            d_product = g * gate  # d loss / d (att_u * v)
            torch.mul(d_product, att_u, out=grad_v)
            torch.mul(d_product, v, out=grad_att_u)
            d_logit = torch.mul(att_u, v).mul_(g).mul_(gate)  # d loss / d (att_v * u) = g p s (1 - s) ...
            d_logit.addcmul_(d_logit, gate, value=-1)  # ... as g p s - (g p s) s
            torch.mul(d_logit, u, out=grad_att_v)
            torch.mul(d_logit, att_v, out=grad_u)
        return grad_vu, grad_att

class GatedAttentionUnit(nn.Module):
    """MossFormer block: FLASH-style gated single-head attention with convolutions.

    Joint attention = quadratic relu^2 attention inside non-overlapping groups of
    g frames + linear attention over the whole sequence; both the value v and
    the gate u are attended and combined as (att_u * v) * sigmoid(att_v * u).

    Args:
        dim: model width D.
        rotary: rotary embedding shared by all blocks (rotary-embedding-torch).
        group_size: g.
        query_key_dim: S.
        expansion_factor: hidden width H = 2 * D * e / 2 per v and u.
        causal: mask future frames.
        dropout: dropout on the attention weights and in each projection.
        conv_kernel_size: depthwise kernel of each projection.
    """

    def __init__(self, dim: int, rotary: Optional[nn.Module], group_size: int = 256, query_key_dim: int = 128,
                 expansion_factor: float = 4.0, causal: bool = False, dropout: float = 0.1,
                 conv_kernel_size: int = 17, shift_tokens: bool = True) -> None:
        super().__init__()
        hidden_dim = int(dim * expansion_factor)
        self.group_size = group_size
        self.causal = causal
        self.shift_tokens = shift_tokens
        self.rotary_pos_emb = rotary
        self.attn_dropout = nn.Dropout(dropout)
        self.to_hidden = ConvProjection(dim, hidden_dim, kernel_size=conv_kernel_size, dropout=dropout)
        self.to_qk = ConvProjection(dim, query_key_dim, kernel_size=conv_kernel_size, dropout=dropout)
        self.qk_offset_scale = OffsetScale(query_key_dim, heads=4)
        self.to_out = ConvProjection(dim * 2, dim, kernel_size=conv_kernel_size, dropout=dropout)
        # frames per tile of the tiled inference forward (rounded to whole groups; 0: never tile)
        self.tile_frames = TILE_FRAMES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, L, D]."""
        tiles = self._frame_tiles(x)
        if tiles:
            return self._tiled_forward(x, tiles)
        # token shift: half the channels see the previous frame
        h = _token_shift(x) if self.shift_tokens else x
        vu, qk = self._projections(h)  # [B, L, H]: v and u; [B, L, S]
        with float32_region(h):
            quad_q, lin_q, quad_k, lin_k = offset_scale_rotary(qk, self.qk_offset_scale.gamma,
                                                               self.qk_offset_scale.beta, self.rotary_pos_emb)
        att = self._joint_attention(quad_q, lin_q, quad_k, lin_k, vu)  # [B, L, H]

        # gate, project out and residual
        if torch.is_grad_enabled():
            out = _GatedProduct.apply(vu, att)  # (att_u * v) * sigmoid(att_v * u)
            return residual_add(x, self.to_out(out))
        # same product, in the attention's own buffer (no new allocation)
        v, u = vu.chunk(2, dim=-1)
        att_v, att_u = att.chunk(2, dim=-1)
        out = att_v.mul_(u).sigmoid_().mul_(att_u).mul_(v)
        return residual_add(x, self.to_out(out))

    def _frame_tiles(self, x: torch.Tensor):
        """The frame tiles of `_tiled_forward` for x, or None where the whole-tensor forward runs.

        Tiles run at float32 CPU inference (eval mode, no autograd, no autocast, no capture,
        non-causal) on inputs of at least two tiles: `tile_frames` frames, rounded to whole groups.
        """
        if self.causal or self.tile_frames <= 0:
            return None
        return inference_tiles(self, x, max(1, self.tile_frames // self.group_size) * self.group_size)

    def _tiled_forward(self, x: torch.Tensor, tiles) -> torch.Tensor:
        """The block's inference forward, tile by tile of frames: the same numbers as `forward`.

        The whole-tensor forward makes [B, L, H] temporaries at every step (GEMM outputs, conv
        outputs, the linear attention's output, the scaled inputs); above glibc's mmap threshold
        (32 MiB at most: 4096 frames of 2048 float32 channels) each is mapped afresh and its pages
        faulted in and zeroed at every block, which took more time than the arithmetic on long
        inputs (a 60 s MossFormer(L) pass: 3.2 million faults and 12 s of system time in 19.5 s
        for 4 blocks on a KVM guest). Here only the projected v and u, qk, the attention output and
        the block's output are written whole, into buffers reused from block to block; every other
        temporary is one tile wide (tile_frames plus the convolutions' halo), small enough for the
        allocator to reuse and for the cache.

        1. per tile: token-shifted input with a halo of K // 2 frames on each side, norm, hidden
           and query/key projections with their convs; the rows without the halo go to v|u, qk;
        2. the linear attention's key-value summary over all frames (one GEMM), then per tile
           (whole attention groups) the linear and within-group outputs and the gate, in place;
        3. per tile with its halo: output projection and conv, plus the residual, into the output.
        """
        b, n, _ = x.shape
        halo = max(self.to_hidden.dwconv.kernel_size[0], self.to_qk.dwconv.kernel_size[0],
                   self.to_out.dwconv.kernel_size[0]) // 2
        h = _token_shift(x) if self.shift_tokens else x
        vu = qk = None
        for start, stop in tiles:
            first, last = max(start - halo, 0), min(stop + halo, n)
            vu_tile, qk_tile = self._projections(h[:, first:last])
            if vu is None:
                vu = _pooled('tiled v|u', (b, n, vu_tile.shape[-1]), vu_tile.dtype, x.device)
                qk = _pooled('tiled qk', (b, n, qk_tile.shape[-1]), qk_tile.dtype, x.device)
            vu[:, start:stop].copy_(vu_tile[:, start - first:stop - first])
            qk[:, start:stop].copy_(qk_tile[:, start - first:stop - first])
            del vu_tile, qk_tile
        with float32_region(h):
            quad_q, lin_q, quad_k, lin_k = offset_scale_rotary(qk, self.qk_offset_scale.gamma,
                                                               self.qk_offset_scale.beta, self.rotary_pos_emb)
        gated = _tiled_gated_attention(quad_q, lin_q, quad_k, lin_k, vu, self.group_size, tiles)  # [B, L, H/2]

        def update(start: int, stop: int) -> torch.Tensor:  # the output projection of a tile, with its halo
            first, last = max(start - halo, 0), min(stop + halo, n)
            return self.to_out(gated[:, first:last])[:, start - first:stop - first]

        return _residual_by_tiles(x, tiles, update)

    def _projections(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """v|u [B, L, H] and qk [B, L, S] of the token-shifted input h.

        Under reduced-precision autocast the query/key path (its projection, the offset-scale and
        rotation, the within-group scores) stays float32: it is the most sensitive part (relu^2 of
        the scores doubles their relative error) and 6 % of the FLOPs.
        """
        if isinstance(self.to_hidden.norm, ScaleNorm) and isinstance(self.to_qk.norm, ScaleNorm):
            # both projections normalise h: one norm, each with its own gain
            denominator = scalenorm_denominator(h, self.to_hidden.norm)
            vu = self.to_hidden.scaled(h, self.to_hidden.norm.row_scale(denominator))
            with float32_region(h):
                qk_scale = self.to_qk.norm.row_scale(at_least_float32(denominator))
                return vu, self.to_qk.scaled(at_least_float32(h), qk_scale)
        vu = self.to_hidden(h)
        with float32_region(h):
            return vu, self.to_qk(at_least_float32(h))

    def _joint_attention(self, quad_q: torch.Tensor, lin_q: torch.Tensor, quad_k: torch.Tensor,
                         lin_k: torch.Tensor, vu: torch.Tensor) -> torch.Tensor:
        """Quadratic attention within groups + linear attention, on [B, L, S] and [B, L, H] -> [B, L, H]."""
        if self.causal:
            return self._causal_attention(quad_q, lin_q, quad_k, lin_k, vu)
        p = self.attn_dropout.p if self.training else 0.0
        inputs = (quad_q, lin_q, quad_k, lin_k, vu)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            return _JointAttention.apply(*inputs, self.group_size, p)
        return _joint_attention_forward(*inputs, self.group_size, p)[0]

    def _causal_attention(self, quad_q: torch.Tensor, lin_q: torch.Tensor, quad_k: torch.Tensor,
                          lin_k: torch.Tensor, vu: torch.Tensor) -> torch.Tensor:
        b, n, hidden = vu.shape
        g = self.group_size

        # padding for groups (zero keys add nothing: relu(0)^2 = 0)
        padding = (-n) % g
        quad_q, quad_k, lin_q, lin_k, vu = (_pad_frames(t, padding) for t in (quad_q, quad_k, lin_q, lin_k, vu))
        groups = (n + padding) // g
        quad_q, quad_k, lin_q, lin_k, vu = (t.reshape(b, groups, g, -1) for t in (quad_q, quad_k, lin_q, lin_k, vu))

        # quadratic attention inside groups, future frames masked
        sim = torch.matmul(quad_q, quad_k.transpose(-1, -2)) / g  # [B, G, g, g]
        attn = self.attn_dropout(F.relu(sim) ** 2)
        future = torch.ones((g, g), dtype=torch.bool, device=sim.device).triu(1)
        attn = attn.masked_fill(future, 0.0)

        # linear attention over the earlier groups only
        lin_kv = torch.matmul(lin_k.transpose(-1, -2), vu) / g  # [B, G, S, H]
        lin_kv = F.pad(lin_kv.cumsum(dim=1), (0, 0, 0, 0, 1, -1))  # exclusive cumsum over groups
        out = torch.matmul(lin_q, lin_kv) + torch.matmul(attn, vu)  # [B, G, g, H]
        return out.reshape(b, groups * g, hidden)[:, :n]  # [B, L, H]


# ---------------------------------------------------------------------------
# recurrent module (MossFormer2): gated FSMN with a dilated dense block
# ---------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """Dilated grouped conv over time (+ instance norm, PReLU): [B, L, C*k] -> [B, L, C].

    The parameters are those of the release (a Conv2d with kernel (K, 1) and C groups
    of k inputs each, InstanceNorm2d, PReLU); the computation stays frames-first: the
    grouped conv is a depthwise conv over the C*k inputs followed by a sum over each
    group's k inputs, which is the same arithmetic.
    """

    def __init__(self, channels: int, inputs_per_channel: int, kernel_size: int, dilation: int,
                 padding: int) -> None:
        super().__init__()
        if 2 * padding != (kernel_size - 1) * dilation:
            raise ValueError(f'DenseLayer needs same padding, got kernel {kernel_size}, dilation {dilation}, '
                             f'padding {padding}')
        self.channels = channels
        self.inputs_per_channel = inputs_per_channel
        self.dilation = dilation
        self.conv = nn.Conv2d(channels * inputs_per_channel, channels, kernel_size=(kernel_size, 1),
                              dilation=(dilation, 1), groups=channels, bias=False)
        self.norm = nn.InstanceNorm2d(channels, affine=True)
        self.prelu = nn.PReLU(channels)

    @property
    def reach(self) -> int:
        """Frames on each side of an output frame that its convolution reads."""
        return (self.conv.kernel_size[0] - 1) // 2 * self.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(*self.statistics(self.convolve(x)))

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The grouped conv: [B, L, C*k] -> [B, L, C] (frame t reads frames t - reach .. t + reach)."""
        b, num_frames, _ = x.shape
        weight = self.conv.weight.reshape(self.channels * self.inputs_per_channel, 1, -1)  # [C*k, 1, K]
        h = depthwise_conv_frames(x, weight, self.dilation)  # [B, L, C*k]
        if self.inputs_per_channel > 1:
            h = h.view(b, num_frames, self.channels, self.inputs_per_channel).sum(dim=-1)  # [B, L, C]
        return h

    def statistics(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The instance norm's centred h (in h's own buffer without autograd) and per-channel scale.

        Statistics over frames, per item and channel, in two passes (mean, then the mean square of
        the centred values: on [B, L, C] this is about 5x faster than var_mean).
        """
        mean = h.mean(dim=1, keepdim=True)  # [B, 1, C]
        centred = h - mean if torch.is_grad_enabled() else h.sub_(mean)
        var = centred.square().mean(dim=1, keepdim=True)
        return centred, torch.rsqrt(var + self.norm.eps) * self.norm.weight

    def activate(self, centred: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm's affine map as one multiply-add, then PReLU with per-channel weights on the channels axis:
        frame by frame, so any range of frames of `centred` gives those frames of the output."""
        h = torch.addcmul(self.norm.bias, centred, scale)
        return F.prelu(h.transpose(1, 2), self.prelu.weight).transpose(1, 2)


class DilatedDenseBlock(nn.Module):
    """Dense stack of dilated depthwise convolutions; layer i sees all earlier outputs.

    Kernel 2 * memory_order - 1, dilation 2**i, 'same' padding; input and output
    are [B, L, C].
    """

    def __init__(self, channels: int, memory_order: int, num_layers: int) -> None:
        super().__init__()
        kernel = 2 * memory_order - 1
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            dilation = 2 ** i
            padding = memory_order + (dilation - 1) * (memory_order - 1) - 1
            self.layers.append(DenseLayer(channels, i + 1, kernel, dilation, padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x
        out = x
        for layer in self.layers:
            out = layer(skip)
            skip = torch.cat((out, skip), dim=-1)  # newest first, as in the release
        return out


class DilatedFSMN(nn.Module):
    """Deep FSMN memory: Linear -> ReLU -> projection -> dilated dense block, residual."""

    def __init__(self, dim: int, hidden_dim: int, memory_order: int, num_layers: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, hidden_dim)
        self.project = nn.Linear(hidden_dim, dim, bias=False)
        self.dense = DilatedDenseBlock(dim, memory_order, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, L, C]."""
        # (at inference both GEMM outputs are reused buffers: each is done with before the next block)
        hidden = _linear(x, self.linear.weight, self.linear.bias, 'fsmn hidden', 'relu')
        memory = self.dense(_linear(hidden, self.project.weight, None, 'fsmn projection'))
        return residual_add(x, memory)


class GatedFSMN(nn.Module):
    """u branch through the FSMN memory, gated by the v branch: v * fsmn(u) + x."""

    def __init__(self, dim: int, memory_order: int, num_layers: int, dropout: float = 0.1,
                 conv_kernel_size: int = 17) -> None:
        super().__init__()
        self.to_u = ConvProjection(dim, dim, norm='layernorm', kernel_size=conv_kernel_size, dropout=dropout)
        self.to_v = ConvProjection(dim, dim, norm='layernorm', kernel_size=conv_kernel_size, dropout=dropout)
        self.fsmn = DilatedFSMN(dim, dim, memory_order, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, u = self._projections(x)
        if torch.is_grad_enabled():
            return residual_add(x, v * self.fsmn(u))
        return residual_add(x, self.fsmn(u).mul_(v))

    def _projections(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """to_v(x), to_u(x) as one layer norm, one GEMM, one SiLU and one convolution over 2 x dim channels.

        Both projections layer-normalise the same x: the normalisation is shared and each norm's
        affine map is folded into its linear map (linear(n * w + b) = n (W * w)^T + (W b + c)).
        Dropout stays per projection, v's first, as when they ran one after the other.
        """
        to_v, to_u = self.to_v, self.to_u
        if to_v.norm.eps != to_u.norm.eps:
            return to_v(x), to_u(x)
        # (chunk's backward is one concatenation; slices' would zero-fill twice)
        v, u = self.projected(x).chunk(2, dim=-1)
        return dropout(v, to_v.dropout), dropout(u, to_u.dropout)

    def projected(self, x: torch.Tensor) -> torch.Tensor:
        """[v | u]: [B, L, 2 * dim] (frame t reads frames t - K // 2 .. t + K // 2 of x); no dropout where
        the two norms share their eps (the released models), each projection whole where they do not."""
        to_v, to_u = self.to_v, self.to_u
        if to_v.norm.eps != to_u.norm.eps:
            return torch.cat((to_v(x), to_u(x)), dim=-1)
        normalised = F.layer_norm(x, to_v.norm.normalized_shape, eps=to_v.norm.eps)
        weights, biases = [], []
        for proj in (to_v, to_u):
            weights.append(proj.linear.weight * proj.norm.weight)
            biases.append(torch.addmv(proj.linear.bias, proj.linear.weight, proj.norm.bias))
        h = _linear(normalised, torch.cat(weights), torch.cat(biases), 'gated projections', 'silu')  # (its conv is new)
        kernels = torch.cat((with_identity_tap(to_v.dwconv.weight), with_identity_tap(to_u.dwconv.weight)))
        return depthwise_conv_frames(h, kernels)  # [B, L, 2 * dim]


class RecurrentModule(nn.Module):
    """MossFormer2's recurrent module on [B, L, D], with a residual connection.

    1x1 conv D -> I + PReLU -> channel layer norm -> gated FSMN -> channel layer
    norm -> 1x1 conv I -> D.
    """

    def __init__(self, dim: int, inner_channels: int = 256, memory_order: int = 20, num_layers: int = 2,
                 dropout: float = 0.1, conv_kernel_size: int = 17) -> None:
        super().__init__()
        self.in_conv = nn.Conv1d(dim, inner_channels, kernel_size=1)
        self.in_prelu = nn.PReLU()
        self.norm1 = ChannelLayerNorm(inner_channels)
        self.gated_fsmn = GatedFSMN(inner_channels, memory_order, num_layers, dropout, conv_kernel_size)
        self.norm2 = ChannelLayerNorm(inner_channels)
        self.out_conv = nn.Conv1d(inner_channels, dim, kernel_size=1)
        # frames per tile of the tiled inference forward (0: never tile)
        self.tile_frames = TILE_FRAMES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiles = inference_tiles(self, x, self.tile_frames)
        if tiles:
            return self._tiled_forward(x, tiles)
        # frames-first throughout: the 1x1 convs are linear maps and the channel norms layer norms
        h = self._normalised_input(x)  # [B, L, I]
        h = _layer_norm(self.norm2, self.gated_fsmn(h))
        out = gemm.linear(h, self.out_conv.weight.squeeze(-1), self.out_conv.bias)  # [B, L, D]
        return residual_add(x, out)

    def _normalised_input(self, x: torch.Tensor) -> torch.Tensor:
        h = _linear(x, self.in_conv.weight.squeeze(-1), self.in_conv.bias, 'recurrent input')  # [B, L, I]
        return _layer_norm(self.norm1, self.in_prelu(h))

    def _tiled_forward(self, x: torch.Tensor, tiles) -> torch.Tensor:
        """`forward` at inference tile by tile of frames (see GatedAttentionUnit._tiled_forward): the
        same numbers, with [B, L, .] tensors written whole only into buffers reused from block to block.

        Each step whose frames depend only on nearby frames runs per tile with the halo its convs
        read; the dense block's instance norms take their statistics over the whole stored conv
        output in between. The dense block's input (each layer's output, newest first, then the
        FSMN projection) is one buffer that the steps write in place of the concatenations.
        """
        b, n, _ = x.shape
        fsmn, gated_fsmn = self.gated_fsmn.fsmn, self.gated_fsmn
        dense = list(fsmn.dense.layers)
        inner = fsmn.project.out_features
        normalised = _tile_rows(self._normalised_input, x, tiles, 0, 'recurrent norm1')  # [B, L, I]
        halo = max(gated_fsmn.to_v.dwconv.kernel_size[0], gated_fsmn.to_u.dwconv.kernel_size[0]) // 2
        v, u = _tile_rows(gated_fsmn.projected, normalised, tiles, halo, 'recurrent v|u').chunk(2, dim=-1)

        def memory_input(rows: torch.Tensor) -> torch.Tensor:
            hidden = _linear(rows, fsmn.linear.weight, fsmn.linear.bias, 'fsmn hidden', 'relu')
            return _linear(hidden, fsmn.project.weight, None, 'fsmn projection')

        skip = None
        for index, layer in enumerate(dense):
            if skip is None:
                projected = _tile_rows(memory_input, u, tiles, 0, 'recurrent fsmn projection')  # [B, L, I]
                skip = _pooled('recurrent dense skip', (b, n, len(dense) * inner), projected.dtype, x.device)
                skip[..., (len(dense) - 1) * inner:] = projected
                del projected
            centred, scale = layer.statistics(
                _tile_rows(layer.convolve, skip[..., (len(dense) - 1 - index) * inner:], tiles, layer.reach,
                           'recurrent dense conv'))
            if index < len(dense) - 1:  # the next layer's input: this output before the earlier ones
                slot = skip[..., (len(dense) - 2 - index) * inner:(len(dense) - 1 - index) * inner]
                for start, stop in tiles:
                    slot[:, start:stop] = layer.activate(centred[:, start:stop], scale)

        def update(start: int, stop: int) -> torch.Tensor:
            memory = dense[-1].activate(centred[:, start:stop], scale)
            fsmn_out = residual_add(u[:, start:stop], memory)
            h = residual_add(normalised[:, start:stop], fsmn_out.mul_(v[:, start:stop]))  # the gated FSMN
            return gemm.linear(_layer_norm(self.norm2, h), self.out_conv.weight.squeeze(-1), self.out_conv.bias)

        return _residual_by_tiles(x, tiles, update)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (constant buffers and frozen tables excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    'ScaleNorm', 'ChannelLayerNorm', 'GlobalLayerNorm', 'channel_norm', 'ConvEncoder', 'ConvDecoder',
    'ScaledSinusoidalEmbedding', 'depthwise_conv_frames', 'ConvProjection', 'OffsetScale', 'GatedAttentionUnit', 'DilatedDenseBlock',
    'DilatedFSMN', 'GatedFSMN', 'RecurrentModule', 'count_parameters',
]
