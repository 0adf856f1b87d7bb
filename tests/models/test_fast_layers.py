"""The fast formulations in models/layers.py compute what the plain PyTorch layers compute."""
import pytest
import torch
import torch.nn.functional as F

from modelscope_mossformer.models import build_separator, mossformer2_tiny, mossformer_tiny
from modelscope_mossformer.models.layers import (DenseLayer, GatedAttentionUnit, RecurrentModule, depthwise_conv_frames,
                                                 with_identity_tap)
from modelscope_mossformer.models.mossformer import MaskNet


def _plain_depthwise(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    padding = (weight.shape[-1] - 1) // 2 * dilation
    return F.conv1d(x.transpose(1, 2), weight, padding=padding, dilation=dilation,
                    groups=weight.shape[0]).transpose(1, 2)


@pytest.mark.parametrize('batch,frames,channels,kernel,dilation', [
    # gradcheck costs one forward per input element: the kernel-39, dilation-4 case (the FSMN's) stays small
    (1, 50, 8, 17, 1), (3, 37, 5, 5, 2), (2, 30, 4, 39, 4), (2, 10, 4, 39, 1), (1, 9, 3, 7, 8)])
@pytest.mark.parametrize('residual', [False, True])
def test_depthwise_conv_frames_matches_conv1d_and_its_gradients(batch, frames, channels, kernel, dilation, residual):
    generator = torch.Generator().manual_seed(frames)
    x = torch.randn(batch, frames, channels, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(channels, 1, kernel, dtype=torch.float64, generator=generator, requires_grad=True)
    expected = _plain_depthwise(x, weight, dilation) + (x if residual else 0)
    def fast(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # x + conv(x) as one conv with an identity tap
        return depthwise_conv_frames(a, with_identity_tap(w) if residual else w, dilation)

    actual = fast(x, weight)
    assert actual.shape == expected.shape
    assert actual.is_contiguous() or dilation > 1  # undilated: [B, L, C] memory, no copy
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=0)
    grad = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
    for a, e in zip(torch.autograd.grad(actual, (x, weight), grad), torch.autograd.grad(expected, (x, weight), grad)):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(fast, (x, weight))


@pytest.mark.parametrize('batch,frames,channels,kernel,dilation', [
    (1, 700, 6, 17, 1),  # 44 blocks of 16 frames, the last one partial
    (2, 95, 3, 39, 1),   # a 38-frame reach: blocks of 38
    (1, 50, 5, 5, 3),    # dilated taps
    (1, 5, 4, 17, 1)])   # shorter than one block
def test_depthwise_weight_gradient_by_blocks_equals_conv1d_weight(batch, frames, channels, kernel, dilation):
    from modelscope_mossformer.models.layers import _depthwise_weight_grad

    generator = torch.Generator().manual_seed(frames)
    x, grad = (torch.randn(batch, frames, channels, dtype=torch.float64, generator=generator) for _ in range(2))
    padding = (kernel - 1) // 2 * dilation
    expected = torch.nn.grad.conv1d_weight(x.transpose(1, 2), (channels, 1, kernel), grad.transpose(1, 2),
                                           padding=padding, dilation=dilation, groups=channels)
    actual = _depthwise_weight_grad(x, grad, kernel, padding, dilation)
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, atol=1e-12 * float(expected.abs().max()), rtol=0)


def test_depthwise_conv_frames_without_autograd_and_rejects_even_kernels():
    x = torch.randn(2, 30, 6)
    weight = torch.randn(6, 1, 5)
    with torch.inference_mode():
        torch.testing.assert_close(depthwise_conv_frames(x, with_identity_tap(weight), 2),
                                   _plain_depthwise(x, weight, 2) + x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='odd kernel'):
        depthwise_conv_frames(x, torch.randn(6, 1, 4))


@pytest.mark.parametrize('inputs_per_channel,dilation', [(1, 1), (2, 2), (3, 4)])
def test_dense_layer_equals_the_released_grouped_conv(inputs_per_channel, dilation):
    channels, memory_order = 4, 5
    kernel = 2 * memory_order - 1
    padding = (kernel - 1) // 2 * dilation
    layer = DenseLayer(channels, inputs_per_channel, kernel, dilation, padding).double()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
        layer.prelu.weight.uniform_(0.1, 0.4)
    x = torch.randn(2, 23, channels * inputs_per_channel, dtype=torch.float64)  # [B, L, C*k]
    # the released computation: [B, C*k, L, 1] -> pad -> grouped Conv2d -> InstanceNorm2d -> PReLU
    plain = F.pad(x.transpose(1, 2).unsqueeze(-1), (0, 0, padding, padding))
    plain = layer.prelu(layer.norm(F.conv2d(plain, layer.conv.weight, dilation=(dilation, 1), groups=channels)))
    torch.testing.assert_close(layer(x), plain.squeeze(-1).transpose(1, 2), atol=1e-10, rtol=0)


@pytest.mark.parametrize('frames', [48, 50, 7])
def test_attention_without_padding_copies_matches_the_padded_form(frames):
    torch.manual_seed(frames)
    block = GatedAttentionUnit(16, None, group_size=16, query_key_dim=8).double().eval()
    q1, q2, k1, k2 = (torch.randn(2, frames, 8, dtype=torch.float64) for _ in range(4))
    vu = torch.randn(2, frames, 24, dtype=torch.float64)
    # the padded formulation, written out
    padding = (-frames) % 16
    pad = lambda t: F.pad(t, (0, 0, 0, padding))  # noqa: E731
    groups = (frames + padding) // 16
    qg, kg, vg = (pad(t).reshape(2, groups, 16, -1) for t in (q1, k1, vu))
    quad = torch.matmul(F.relu(torch.matmul(qg, kg.transpose(-1, -2)) / 16) ** 2, vg).reshape(2, -1, 24)[:, :frames]
    linear = torch.matmul(q2, torch.matmul(k2.transpose(-1, -2), vu) / frames)
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            torch.testing.assert_close(block._joint_attention(q1, q2, k1, k2, vu), quad + linear, atol=1e-10, rtol=0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize('channels', [8, 16, 48])
def test_bf16_depthwise_conv_on_narrow_layers_finishes_and_is_close(channels):
    # oneDNN's channels-last bf16 depthwise kernel hangs for 8 and 16 channels; those take the plain path
    x = torch.randn(1, 2000, channels)
    weight = torch.randn(channels, 1, 17)
    with torch.inference_mode():
        expected = _plain_depthwise(x, weight, 1)
        low = depthwise_conv_frames(x.bfloat16(), weight.bfloat16())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            autocast = depthwise_conv_frames(x, weight)
    for result in (low, autocast):
        assert result.shape == expected.shape
        torch.testing.assert_close(result.float(), expected, atol=0.15 * float(expected.abs().max()), rtol=0)


def _span_reference(q1, q2, k1, k2, vu, group_size, masks, scale):
    """The joint attention written out with autograd ops, span by span, dropping with the given masks."""
    frames = vu.shape[1]
    out = torch.matmul(q2, torch.matmul(k2.transpose(-1, -2), vu) / frames)
    full = frames - frames % group_size
    spans = [(0, full, group_size)] if full else []
    if full < frames:
        spans.append((full, frames, frames - full))
    parts = []
    for index, (start, stop, size) in enumerate(spans):
        q = q1[:, start:stop].reshape(-1, size, q1.shape[-1])
        k = k1[:, start:stop].reshape(-1, size, k1.shape[-1])
        attn = F.relu(torch.bmm(q, k.transpose(1, 2)) / group_size) ** 2
        if masks:
            attn = attn * masks[index] * scale
        v = vu[:, start:stop].reshape(-1, size, vu.shape[-1])
        parts.append(torch.bmm(attn, v).reshape(vu.shape[0], stop - start, -1))
    return out + torch.cat(parts, dim=1)


def _attention_inputs(frames, dtype=torch.float64, batch=2, width=4, hidden=6):
    generator = torch.Generator().manual_seed(frames)
    return [torch.randn(batch, frames, n, dtype=dtype, generator=generator, requires_grad=True)
            for n in (width, width, width, width, hidden)]


@pytest.mark.parametrize('frames', [16, 21, 5])
def test_joint_attention_backward_matches_autograd_and_gradcheck(frames):
    block = GatedAttentionUnit(8, None, group_size=8, query_key_dim=4, expansion_factor=0.75).double().eval()
    inputs = _attention_inputs(frames)
    actual = block._joint_attention(*inputs)
    expected = _span_reference(*inputs, 8, [], 1.0)
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=0)
    grad = torch.randn(actual.shape, dtype=torch.float64)
    for a, e in zip(torch.autograd.grad(actual, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(lambda *t: block._joint_attention(*t), inputs)


def test_joint_attention_dropout_uses_one_mask_in_forward_and_backward(monkeypatch):
    from modelscope_mossformer.models import layers

    drawn = []
    real_dropout_mask = layers.dropout_mask

    def recorded(shape, p, like):
        mask, scale = real_dropout_mask(shape, p, like)
        assert scale == 1.0  # the scores are float64 here: the mask carries the scale
        drawn.append(mask)
        return mask, scale

    monkeypatch.setattr(layers, 'dropout_mask', recorded)
    block = GatedAttentionUnit(8, None, group_size=8, query_key_dim=4, expansion_factor=0.75, dropout=0.3).double()
    block.train()
    inputs = _attention_inputs(21)  # one span of two full groups, one of five frames
    actual = block._joint_attention(*inputs)
    assert [mask.shape for mask in drawn] == [(4, 8, 8), (2, 5, 5)]
    assert 0 < sum(int((m == 0).sum()) for m in drawn) < sum(m.numel() for m in drawn)  # some dropped, not all
    expected = _span_reference(*inputs, 8, drawn, 1.0)
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=0)
    grad = torch.randn(actual.shape, dtype=torch.float64)
    for a, e in zip(torch.autograd.grad(actual, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=0)


def test_gated_product_and_token_shift_backward_pass_gradcheck():
    from modelscope_mossformer.models.layers import _GatedProduct, _TokenShift

    generator = torch.Generator().manual_seed(5)
    vu, att = (torch.randn(2, 7, 6, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2))
    v, u = vu.chunk(2, dim=-1)
    att_v, att_u = att.chunk(2, dim=-1)
    torch.testing.assert_close(_GatedProduct.apply(vu, att), (att_u * v) * torch.sigmoid(att_v * u),
                               atol=1e-14, rtol=0)
    assert torch.autograd.gradcheck(_GatedProduct.apply, (vu, att))

    x = torch.randn(2, 5, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    shifted, passed = x.chunk(2, dim=-1)  # the first, larger piece comes from the previous frame
    expected = torch.cat((F.pad(shifted, (0, 0, 1, -1)), passed), dim=-1)
    torch.testing.assert_close(_TokenShift.apply(x), expected, atol=0, rtol=0)
    assert torch.autograd.gradcheck(_TokenShift.apply, (x,))


def test_dropout_keeps_one_minus_p_unbiased_and_its_gradient_is_the_same_mask():
    from modelscope_mossformer.models.layers import dropout, dropout_mask, keep_mask

    module = torch.nn.Dropout(0.1).train()
    count = 1 << 20
    x = torch.ones(count, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, module)
    kept = y != 0
    # binomial: the kept fraction has standard deviation sqrt(p (1 - p) / n) = 2.9e-4; allow 6 of them
    assert abs(kept.double().mean().item() - 0.9) < 6 * (0.09 / count) ** 0.5
    # kept values are scaled by 1 / P(keep) for the rounded rate: the mean stays 1 within the same bound
    _, scale = keep_mask((1,), 0.1, x.device)
    assert scale == 65536 / (65536 - round(0.1 * 65536))
    assert torch.all(y[kept] == torch.tensor(scale, dtype=torch.float32))
    assert abs(y.double().mean().item() - 1.0) < 6 * scale * (0.09 / count) ** 0.5
    (grad,) = torch.autograd.grad(y, x, torch.full_like(y, 2.0))
    assert torch.equal(grad, torch.where(kept, 2.0 * torch.tensor(scale, dtype=torch.float32), 0.0))
    # the global generator decides the mask, with or without autograd; eval mode and p = 0 are the identity
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(dropout(x, module), y)
    assert dropout(x, torch.nn.Dropout(0.1).eval()) is x
    assert dropout(x, torch.nn.Dropout(0.0).train()) is x
    keep, _ = keep_mask((3, 5), 0.5, x.device)
    assert keep.shape == (3, 5) and keep.dtype == torch.bool
    # bfloat16 input: the scale is applied in float32 and the product rounded once (no 0.2 % bias)
    torch.manual_seed(1)
    low = dropout(torch.full((4096,), 3.0, dtype=torch.bfloat16), module)
    assert low.dtype == torch.bfloat16
    assert torch.all((low == 0) | (low == torch.tensor(3.0 * scale).to(torch.bfloat16)))
    mask, low_scale = dropout_mask((4,), 0.1, low)
    assert mask.dtype == torch.bfloat16 and low_scale == scale and set(mask.tolist()) <= {0.0, 1.0}
    ones = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
    out = dropout(ones, module)
    (low_grad,) = torch.autograd.grad(out, ones, torch.ones_like(out))
    assert torch.equal(low_grad, out)  # the same mask and scale in the backward pass


def test_a_float64_model_computes_in_float64():
    """The parts kept float32 under autocast (query/key path, mask head, filterbanks) do not round a float64 model."""
    from modelscope_mossformer.models import build_separator
    from modelscope_mossformer.models.configs import MossFormerConfig

    torch.manual_seed(0)
    model = build_separator(MossFormerConfig(num_blocks=1, model_dim=32, enc_channels=32, query_key_dim=8,
                                             group_size=16)).eval()
    mix = torch.randn(1, 800)
    with torch.no_grad():
        single = model(mix)
        double = model.double()(mix.double())
    assert double.dtype == torch.float64
    # float32 rounding of a 1-block model: about 1e-7 relative; float64 must not be further from it
    torch.testing.assert_close(double.float(), single, atol=1e-5, rtol=1e-4)
    # and its blocks' float64 gradients are exact (gradcheck needs them to 1e-6; float32 rounding fails it)
    block = GatedAttentionUnit(16, None, group_size=8, query_key_dim=4, dropout=0.0).double().train()
    x = torch.randn(1, 12, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


def _relative_error(actual: torch.Tensor, exact: torch.Tensor) -> float:
    return float((actual.double() - exact).norm() / exact.norm())


@pytest.mark.parametrize('frames', [300, 1000, 2100])
def test_bf16_linear_attention_summary_and_product_keep_more_than_bf16_precision(frames):
    """The linear attention's [S, H] summary repeats in every frame's output: under bfloat16 it is
    summed in float32 from blockwise GEMMs and multiplied as a split (y1 + y2) pair, so both carry
    several times less error than one bfloat16 GEMM's rounded output (2^-9 relative per element)."""
    from modelscope_mossformer.models.layers import _frame_summary, _split_matmul

    generator = torch.Generator().manual_seed(frames)
    # keys and values with a common offset, as the model's (SiLU outputs, offset-scaled keys): the
    # block sums then add up coherently, and each block's rounding is a fraction of the total's
    # (for zero-mean data the block sums add like random walks and their rounding errors too)
    keys = torch.randn(2, frames, 16, generator=generator) + 1.0
    values = (torch.rand(2, frames, 64, generator=generator) + 0.5).bfloat16()
    exact = keys.bfloat16().double().transpose(1, 2) @ values.double()  # the summary of the bf16 operands
    summary = _frame_summary(keys, values)
    assert summary.dtype == torch.float32 and summary.shape == (2, 16, 64)
    one_gemm = torch.matmul(keys.bfloat16().transpose(1, 2), values)  # what plain autocast would keep
    blocks = min(8, frames // 256)
    # rounding of each block's result: independent errors, about sqrt(blocks) times smaller in norm
    assert _relative_error(summary, exact) < _relative_error(one_gemm, exact) / (0.7 * blocks ** 0.5)

    queries = torch.randn(2, frames, 16, generator=generator)
    product = _split_matmul(queries, summary, torch.bfloat16)
    assert product.dtype == torch.bfloat16
    exact_product = queries.bfloat16().double() @ summary.double()  # queries rounded once, the summary not
    plain = torch.matmul(queries.bfloat16(), summary.bfloat16())
    # what is left is the output's own rounding: within 10 % of the correctly rounded product, where
    # plain adds the summary's rounding to it
    best = _relative_error(exact_product.bfloat16(), exact_product)
    assert _relative_error(product, exact_product) < 1.1 * best
    assert _relative_error(plain, exact_product) > 1.2 * best


def test_bf16_gated_attention_unit_stays_close_to_float32():
    torch.manual_seed(0)
    block = GatedAttentionUnit(32, None, group_size=16, query_key_dim=16).eval()
    x = torch.randn(2, 70, 32)  # 4 full groups and a short one
    with torch.inference_mode():
        exact = block(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = block(x)
    assert low.dtype == torch.float32  # the residual stream stays float32
    assert _relative_error(low, exact.double()) < 2e-2


@pytest.mark.parametrize('kind', ['mossformer', 'mossformer2'])
def test_reused_inference_buffers_change_no_output_and_never_alias_results(kind, monkeypatch, cpu_gemm):
    """Buffers reused from block to block (inference only) give the same numbers as fresh ones,
    and nothing a forward pass returns lives in them: a second call leaves the first's result.
    (Through oneDNN the GEMMs write new tensors; the other buffers are still reused.)"""
    from modelscope_mossformer.models import build_separator, layers, mossformer2_tiny, mossformer_tiny

    torch.manual_seed(0)
    model = build_separator((mossformer_tiny if kind == 'mossformer' else mossformer2_tiny)(num_blocks=3)).eval()
    generator = torch.Generator().manual_seed(1)
    first, second = (torch.randn(2, 1600, generator=generator) for _ in range(2))
    with torch.inference_mode():
        fresh = model(first)
        taken = []
        real = layers.reusable
        monkeypatch.setattr(layers, '_REUSE_MIN_BYTES', 0)  # the tiny model's buffers count as large
        monkeypatch.setattr(layers, 'reusable', lambda *a, **k: taken.append(a[0]) or real(*a, **k))
        reused = model(first)
        kept = reused.clone()
        other = model(second)
    assert torch.equal(reused, fresh)
    assert torch.equal(reused, kept)  # the second call did not write into the first's output
    assert not torch.equal(other, reused)
    assert {'projection', 'token shift', 'heads'} <= set(taken)
    if kind == 'mossformer2' and cpu_gemm == 'blas':
        assert {'recurrent input', 'gated projections', 'fsmn hidden', 'fsmn projection'} <= set(taken)
    assert layers._BUFFERS.pool is None  # released when the forward pass ends
    # training: nothing is reused (autograd keeps the tensors)
    model.train()
    assert layers.reusable('projection', (2, 100, 64), first) is None


@pytest.mark.parametrize('kind', ['mossformer', 'mossformer2'])
def test_training_never_takes_reused_buffers(kind, monkeypatch):
    """Autograd functions run their forward with grad mode off, and save what it returns: a
    training step must get the same gradients whatever counts as a large buffer."""
    from modelscope_mossformer.models import build_separator, layers, mossformer2_tiny, mossformer_tiny

    torch.manual_seed(0)
    model = build_separator((mossformer_tiny if kind == 'mossformer' else mossformer2_tiny)(num_blocks=3)).train()
    for module in model.modules():  # dropout off: the two steps must see the same computation
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    mix = torch.randn(2, 1600, generator=torch.Generator().manual_seed(1))

    def gradients():
        model.zero_grad()
        model(mix).square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = gradients()
    monkeypatch.setattr(layers, '_REUSE_MIN_BYTES', 0)
    with_small_threshold = gradients()
    assert len(plain) == len(with_small_threshold) > 0
    for a, b in zip(plain, with_small_threshold):
        assert torch.equal(a, b)


@pytest.mark.parametrize('factory', [mossformer_tiny, mossformer2_tiny])
@pytest.mark.parametrize('kernel, stride', [(16, 8), (12, 4), (5, 2)])
def test_frames_first_graph_equals_the_channels_first_one(monkeypatch, factory, kernel, stride):
    """The eager frames-first mask head and filterbanks (one GEMM per filterbank where K is a multiple
    of S, here 2 and 3 hops per window; the convolutions where it is not) against the channels-first
    graph that tracing and export run, on the same weights and an input whose length is not a multiple of S."""
    from modelscope_mossformer.models import gemm

    model = build_separator(factory(num_blocks=1, enc_kernel_size=kernel, enc_stride=stride)).eval()
    mix = torch.randn(2, 1001, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        frames_first = model(mix)
        monkeypatch.setattr(gemm, 'capturing', lambda: True)
        channels_first = model(mix)
    assert frames_first.shape == channels_first.shape == (2, 2, 1001)
    # float32 sums of up to 64 terms in another order: about 1e-7 relative
    assert float((frames_first - channels_first).abs().max() / channels_first.abs().max()) < 1e-5


def _set_tile_frames(model: torch.nn.Module, frames: int, recurrent_frames: int = None) -> None:
    for module in model.modules():
        if isinstance(module, (GatedAttentionUnit, MaskNet)):
            module.tile_frames = frames
        if isinstance(module, RecurrentModule):
            module.tile_frames = frames if recurrent_frames is None else recurrent_frames


@pytest.mark.parametrize('kind, tile, recurrent_tile', [('mossformer', 32, None), ('mossformer', 48, None),
                                                         ('mossformer2', 256, 256), ('mossformer2', 256, 40)])
def test_tiled_inference_forward_equals_the_whole_tensor_one(kind, tile, recurrent_tile, monkeypatch, cpu_gemm):
    """Tiles of frames (each with the convolutions' halo, a partial last group inside the last tile;
    MossFormer2's recurrent modules with a halo of 8 + 38 frames, tiles of 40 included) give the
    whole-tensor forward's numbers, and the blocks never write into their input. Under bf16 autocast,
    where tiles measured slower, the whole-tensor forward runs."""
    from modelscope_mossformer.models import layers

    torch.manual_seed(0)
    factory = mossformer_tiny if kind == 'mossformer' else mossformer2_tiny
    model = build_separator(factory(num_blocks=2)).eval()
    # mossformer: groups of 16 frames, 398 frames; mossformer2: groups of 256, 1248 frames (4 full, one of 224)
    mix = torch.randn(2, 3199 if kind == 'mossformer' else 9999, generator=torch.Generator().manual_seed(1))
    num_frames = mix.shape[-1] // 8 - 1
    tiled_calls, head_rows = [], []
    for cls in (GatedAttentionUnit, RecurrentModule):
        monkeypatch.setattr(cls, '_tiled_forward', lambda self, x, tiles, real=cls._tiled_forward:
                            tiled_calls.append((type(self), tiles)) or real(self, x, tiles))
    monkeypatch.setattr(MaskNet, '_head', lambda self, h, x, real=MaskNet._head:
                        head_rows.append(h.shape[1]) or real(self, h, x))
    monkeypatch.setattr(layers, '_REUSE_MIN_BYTES', 0)  # the tiny model's buffers count as large
    with torch.inference_mode():
        _set_tile_frames(model, 0)
        whole = model(mix)
        assert not tiled_calls and head_rows == [num_frames]  # the head: one call on every frame
        _set_tile_frames(model, tile, recurrent_tile)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            model(mix)
        assert not tiled_calls and head_rows == [num_frames] * 2  # no tiles under autocast
        head_rows.clear()
        tiled = model(mix)
    blocks = [(GatedAttentionUnit, tile)] + ([(RecurrentModule, recurrent_tile)] if recurrent_tile else [])
    assert [cls for cls, _ in tiled_calls] == [cls for cls, _ in blocks] * 2  # every block ran tiled
    for (cls, tiles), (_, size) in zip(tiled_calls, blocks * 2):
        assert len(tiles) >= 3 and tiles[0] == (0, size) and all(b - a == size for a, b in tiles[:-1])
    assert head_rows[0] == tile and len(head_rows) >= 3 and sum(head_rows) == num_frames
    if cpu_gemm == 'onednn':
        # oneDNN may choose another kernel, and summation order, for a tile's row count than for the
        # whole sequence's (1.3e-7 of the output's peak measured here): rounding only
        assert torch.allclose(tiled, whole, rtol=0, atol=1e-6 * whole.abs().max().item())
    else:  # the same kernels on the same rows
        assert torch.equal(tiled, whole)
    block = next(m for m in model.modules() if isinstance(m, GatedAttentionUnit))
    x = torch.randn(2, 5 * tile + 3, 32)
    kept = x.clone()
    with torch.inference_mode(), layers.reused_buffers():
        once = block(x)
        twice = block(once)
    assert torch.equal(x, kept)
    assert once.data_ptr() != twice.data_ptr()  # a block's output never overwrites its input


@pytest.mark.parametrize('kind', ['mossformer', 'mossformer2'])
def test_tiled_blocks_compute_the_bf16_forward_too(kind):
    """Called under bf16 autocast (which the models do not tile: slower there), the tiled block forward
    still gives the whole-tensor one's numbers: the same casts, GEMMs and float32 regions per tile."""
    torch.manual_seed(0)
    factory = mossformer_tiny if kind == 'mossformer' else mossformer2_tiny
    layer = build_separator(factory(num_blocks=1)).eval().masker.sequence.layers[0]
    x = torch.randn(2, 600, 32)
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        for block in filter(None, (layer.attention, layer.recurrent)):
            size = 256 if kind == 'mossformer2' else 48
            tiles = [(start, min(start + size, 600)) for start in range(0, 600, size)]
            whole = block(x)
            tiled = block._tiled_forward(x, tiles)
            assert whole.dtype == tiled.dtype == torch.float32  # the residual stream stays float32
            assert torch.equal(tiled, whole), type(block).__name__


def test_tiles_only_at_cpu_inference_in_eval_mode():
    torch.manual_seed(0)
    block = GatedAttentionUnit(32, None, group_size=16, query_key_dim=16, dropout=0.0)
    block.tile_frames = 32
    x = torch.randn(1, 200, 32)
    block.train()
    with torch.no_grad():
        assert block._frame_tiles(x) is None  # dropout would draw differently
    block.eval()
    assert block._frame_tiles(x) is None  # autograd on
    with torch.no_grad():
        assert block._frame_tiles(x) == [(s, min(s + 32, 200)) for s in range(0, 200, 32)]
        assert block._frame_tiles(x[:, :63]) is None  # under two tiles
        block.tile_frames = 40  # rounded down to whole groups
        assert block._frame_tiles(x)[0] == (0, 32)
        block.tile_frames = 0
        assert block._frame_tiles(x) is None
    causal = GatedAttentionUnit(32, None, group_size=16, query_key_dim=16, causal=True).eval()
    causal.tile_frames = 32
    with torch.no_grad():
        assert causal._frame_tiles(x) is None
