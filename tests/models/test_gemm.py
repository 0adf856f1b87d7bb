"""models.gemm: the float32 CPU GEMM backend (oneDNN or torch's BLAS), its choice and its results."""
import pytest
import torch
import torch.nn.functional as F

from modelscope_mossformer.models import build_separator, gemm, mossformer2_tiny, mossformer_tiny

needs_onednn = pytest.mark.skipif(not gemm.onednn_usable(), reason='no oneDNN float32 GEMM in this PyTorch build')


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    gemm.set_cpu_gemm_backend(None)


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def test_auto_keeps_blas_on_intel_and_takes_onednn_elsewhere(monkeypatch):
    monkeypatch.delenv(gemm.ENV_VAR, raising=False)
    monkeypatch.setattr(gemm.platform, 'machine', lambda: 'x86_64')
    monkeypatch.setattr(gemm.torch.backends.mkl, 'is_available', lambda: True)
    monkeypatch.setattr(gemm, 'onednn_usable', lambda: True)
    monkeypatch.setattr(gemm, '_cpu_vendor', lambda: 'GenuineIntel')
    assert gemm.set_cpu_gemm_backend(None) == 'blas'
    monkeypatch.setattr(gemm, '_cpu_vendor', lambda: 'AuthenticAMD')
    assert gemm.set_cpu_gemm_backend(None) == 'onednn'
    # no MKL (another BLAS), an unreadable vendor, another architecture or no oneDNN: torch's own dispatch
    for patch in ((gemm.torch.backends.mkl, 'is_available', lambda: False), (gemm, '_cpu_vendor', lambda: ''),
                  (gemm.platform, 'machine', lambda: 'aarch64'), (gemm, 'onednn_usable', lambda: False)):
        with monkeypatch.context() as local:
            local.setattr(*patch)
            assert gemm.set_cpu_gemm_backend(None) == 'blas'


def test_the_environment_variable_chooses_and_a_bad_value_names_it(monkeypatch):
    monkeypatch.setenv(gemm.ENV_VAR, 'blas')
    assert gemm.set_cpu_gemm_backend(None) == 'blas'
    monkeypatch.setenv(gemm.ENV_VAR, 'fastest')
    with pytest.raises(ValueError, match=f'{gemm.ENV_VAR}.*auto, onednn, blas.*fastest'):
        gemm.set_cpu_gemm_backend(None)
    with pytest.raises(ValueError, match='backend must be one of'):
        gemm.set_cpu_gemm_backend('mkl')
    assert gemm.set_cpu_gemm_backend('BLAS') == 'blas'  # an explicit choice wins over the variable


def test_onednn_requested_without_it_falls_back_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(gemm, 'onednn_usable', lambda: False)
    with caplog.at_level('WARNING', logger=gemm.__name__):
        assert gemm.set_cpu_gemm_backend('onednn') == 'blas'
    assert 'oneDNN cannot run float32 GEMMs' in caplog.text


@needs_onednn
def test_only_plain_float32_cpu_tensors_take_onednn():
    gemm.set_cpu_gemm_backend('onednn')
    x = torch.randn(3, 4)
    assert gemm.takes_onednn(x, x)
    assert not gemm.takes_onednn(x, x.double())
    assert not gemm.takes_onednn(x.bfloat16())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not gemm.takes_onednn(x)
    gemm.set_cpu_gemm_backend('blas')
    assert not gemm.takes_onednn(x)


@needs_onednn
@pytest.mark.parametrize('activation', [None, 'silu', 'relu'])
def test_linear_equals_torch_on_views_and_leading_axes(activation):
    gemm.set_cpu_gemm_backend('onednn')
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 300, 96, generator=generator)[:, ::2]  # strided rows
    weight = torch.randn(96, 48, generator=generator).t()  # [48, 96], a transposed view
    bias = torch.randn(48, generator=generator)
    expected = F.linear(x.double(), weight.double(), bias.double())
    expected = {None: expected, 'silu': F.silu(expected), 'relu': F.relu(expected)}[activation]
    with torch.no_grad():
        actual = gemm.linear(x, weight, bias, activation)
    assert actual.shape == (2, 150, 48) and actual.dtype == torch.float32
    # float32 rounding of a 96-term sum: about 1e-7 relative; a bfloat16 step would show as 1e-3
    assert _relative(actual, expected) < 1e-6
    product = gemm.matmul(x, weight.t())
    assert _relative(product, x.double() @ weight.double().t()) < 1e-6


@pytest.mark.parametrize('backend', ['blas', pytest.param('onednn', marks=needs_onednn)])
@pytest.mark.parametrize('activation', [None, 'silu', 'relu'])
def test_a_nan_stays_nan_through_every_activation(backend, activation):
    """oneDNN's fused ReLU maps NaN to 0: a NaN weight or input must not vanish from the output."""
    gemm.set_cpu_gemm_backend(backend)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    x[1, 3] = float('nan')
    with torch.no_grad():
        out = gemm.linear(x, torch.randn(5, 8), torch.randn(5), activation)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2, 3]]).all()


@pytest.mark.parametrize('backend', ['blas', pytest.param('onednn', marks=needs_onednn)])
@pytest.mark.parametrize('kind', ['mossformer', 'mossformer2'])
@pytest.mark.parametrize('weight', ['encoder.conv.weight', 'masker.in_proj.weight', 'masker.mask_proj.weight'])
def test_a_nan_weight_gives_a_nan_separation(backend, kind, weight):
    """The trainer and `mossformer average` reject non-finite scores: a poisoned checkpoint must show."""
    gemm.set_cpu_gemm_backend(backend)
    torch.manual_seed(0)
    model = build_separator((mossformer_tiny if kind == 'mossformer' else mossformer2_tiny)(num_blocks=1)).eval()
    with torch.no_grad():
        dict(model.named_parameters())[weight].view(-1)[0] = float('nan')
    with torch.inference_mode():
        out = model(0.1 * torch.randn(1, 800, generator=torch.Generator().manual_seed(1)))
    assert torch.isnan(out).any()


@needs_onednn
@pytest.mark.parametrize('inputs,outputs', [(64, 80), (80, 64)])  # the weight gradient's two operand orders
def test_linear_gradients_through_onednn_equal_autograd(inputs, outputs):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 130, inputs, generator=generator)
    weight = torch.randn(outputs, inputs, generator=generator)
    bias = torch.randn(outputs, generator=generator)
    upstream = torch.randn(2, 130, outputs, generator=generator)
    grads = {}
    for backend in ('onednn', 'blas'):
        gemm.set_cpu_gemm_backend(backend)
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        out = gemm.linear(*leaves, activation='silu')
        (out * upstream).sum().backward()
        grads[backend] = [t.grad for t in leaves]
    for name, a, b in zip(('x', 'weight', 'bias'), grads['onednn'], grads['blas']):
        assert a.shape == b.shape and a.is_contiguous(), name
        assert _relative(a, b) < 1e-6, name
    # the oneDNN path really ran its own backward
    gemm.set_cpu_gemm_backend('onednn')
    out = gemm.linear(x.requires_grad_(), weight, bias)
    assert type(out.grad_fn).__name__ == '_OneDnnLinearBackward'


@needs_onednn
@pytest.mark.parametrize('kind', ['mossformer', 'mossformer2'])
def test_models_through_onednn_are_as_close_to_float64_as_through_blas(kind):
    """Outputs and per-parameter gradients of each float32 backend against the same model in float64."""
    import copy

    torch.manual_seed(0)
    model = build_separator((mossformer_tiny if kind == 'mossformer' else mossformer2_tiny)(num_blocks=2)).eval()
    mix = 0.1 * torch.randn(2, 1900, generator=torch.Generator().manual_seed(2))  # a short last group
    exact = copy.deepcopy(model).double()
    with torch.inference_mode():
        exact_output = exact(mix.double())
    exact(mix.double()).pow(2).mean().backward()
    errors = {}
    for backend in ('blas', 'onednn'):
        gemm.set_cpu_gemm_backend(backend)
        with torch.inference_mode():
            output_error = _relative(model(mix), exact_output)
        model.zero_grad(set_to_none=True)
        model(mix).pow(2).mean().backward()
        errors[backend] = output_error, {name: _relative(p.grad, dict(exact.named_parameters())[name].grad)
                                         for name, p in model.named_parameters() if p.grad is not None}
    # float32 sums of 1e3-1e5 terms: 1e-7..1e-5 relative; one bfloat16 step anywhere would give 1e-3.
    # A one-number parameter (a ScaleNorm gain, a PReLU slope) has as its gradient one sum over every
    # frame and channel whose terms largely cancel: its float32 error depends on the summation order
    # alone, from 1.6e-6 to 1.0e-3 through either backend over seeds 0-5 of this test (measured), so it
    # is held to 5e-3 only; the matrices, where a bfloat16 step would show, keep the tight bound.
    assert errors['onednn'][0] < 1e-5
    blas_grads, onednn_grads = errors['blas'][1], errors['onednn'][1]
    assert onednn_grads.keys() == blas_grads.keys() and len(blas_grads) > 20
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    assert sum(sizes[name] > 1 for name in onednn_grads) > 20
    for name, error in onednn_grads.items():
        assert error < max(1e-5, 10 * blas_grads[name], 5e-3 if sizes[name] == 1 else 0), name


@needs_onednn
@pytest.mark.parametrize('batch', [1, 2])
def test_joint_attention_backward_through_onednn_equals_float64(batch):
    """The float32 oneDNN backward (item by item; one item is a view, not a stacked copy) against float64."""
    from modelscope_mossformer.models.layers import GatedAttentionUnit

    block = GatedAttentionUnit(16, None, group_size=16, query_key_dim=8).eval()
    generator = torch.Generator().manual_seed(batch)
    inputs = [torch.randn(batch, 40, n, generator=generator) for n in (8, 8, 8, 8, 24)]  # a short last group
    upstream = torch.randn(batch, 40, 24, generator=generator)
    gemm.set_cpu_gemm_backend('onednn')
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = block._joint_attention(*leaves)
    assert type(out.grad_fn).__name__ == '_JointAttentionBackward'
    actual = torch.autograd.grad(out, leaves, upstream)
    exact_leaves = [t.double().requires_grad_() for t in inputs]
    expected = torch.autograd.grad(block.double()._joint_attention(*exact_leaves), exact_leaves, upstream.double())
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == torch.float32, index
        assert _relative(a.double(), e) < 1e-5, index  # float32 sums over 40 frames: about 1e-7 relative
