"""The fast formulations in models/layers.py compute what the plain PyTorch layers compute."""
import pytest
import torch
import torch.nn.functional as F

from modelscope_mossformer.models.layers import DenseLayer, GatedAttentionUnit, depthwise_conv_frames, with_identity_tap


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
