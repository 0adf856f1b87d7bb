"""Numerical parity with ModelScope's own MossFormer classes on identical weights."""
import pytest
import torch

from modelscope_mossformer.models import MossFormer, MossFormer2, mossformer2_base, mossformer_large

from ..conftest import tiny_mossformer, tiny_mossformer2
from modelscope_mossformer.models.reference import paired_gradients, reference_forward, reference_with_weights_of

TOLERANCE = 1e-4


def _random_mixture(sample_rate: int, seconds: float, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(sample_rate)
    return 0.1 * torch.randn(batch, int(sample_rate * seconds), generator=generator)


def _assert_parity(ours: torch.nn.Module, mix: torch.Tensor) -> None:
    ours.eval()
    reference = reference_with_weights_of(ours)
    with torch.inference_mode():
        expected = reference_forward(reference, mix)
        actual = ours(mix)
    assert actual.shape == (mix.shape[0], ours.num_spks, mix.shape[1])
    assert expected.abs().max() > 1e-3  # a silent output would make parity meaningless
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize('sample_rate', [8000, 16000])
@pytest.mark.parametrize('num_spks', [2, 3])
@pytest.mark.parametrize('causal', [False, True])
def test_tiny_mossformer_matches_reference(sample_rate, num_spks, causal, cpu_gemm):
    ours = MossFormer(tiny_mossformer(sample_rate=sample_rate, num_spks=num_spks, causal=causal))
    _assert_parity(ours, _random_mixture(sample_rate, 0.3))


@pytest.mark.parametrize('norm', ['gln', 'cln'])
def test_tiny_mossformer_other_norms_match_reference(norm):
    _assert_parity(MossFormer(tiny_mossformer(norm=norm)), _random_mixture(8000, 0.2))


@pytest.mark.parametrize('sample_rate', [8000, 16000])
@pytest.mark.parametrize('num_spks', [2, 3])
def test_tiny_mossformer2_matches_reference(sample_rate, num_spks, cpu_gemm):
    ours = MossFormer2(tiny_mossformer2(sample_rate=sample_rate, num_spks=num_spks))
    _assert_parity(ours, _random_mixture(sample_rate, 0.3))


def test_odd_lengths_keep_the_input_length():
    ours = MossFormer(tiny_mossformer()).eval()
    for length in (16, 17, 257, 1001):
        mix = torch.randn(2, length)
        with torch.inference_mode():
            assert ours(mix).shape == (2, 2, length)
    _assert_parity(ours, torch.randn(2, 1001))


@pytest.mark.parametrize('family,causal', [('mossformer2', False), ('mossformer', False), ('mossformer', True)])
def test_gradients_match_reference(family, causal, cpu_gemm):
    # MossFormer2: one partial attention group; MossFormer (group 16): 12 full groups + a partial one
    if family == 'mossformer2':
        ours = MossFormer2(tiny_mossformer2())
    else:
        ours = MossFormer(tiny_mossformer(causal=causal))
    ours.eval()  # eval: dropout off, so both are deterministic
    reference = reference_with_weights_of(ours)
    mix = _random_mixture(8000, 0.2)
    ours(mix).pow(2).mean().backward()
    reference_forward(reference, mix).pow(2).mean().backward()
    compared = 0
    for name, actual, expected in paired_gradients(ours, reference):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-3, msg=name)
        compared += 1
    assert compared > 30



@pytest.mark.parametrize('family', ['mossformer2', 'mossformer'])
def test_float64_gradients_equal_the_reference(family):
    """In float64 the hand-written backward passes give the reference's gradients to rounding.

    (Models built in float64 from the start: converting a model after a float32 run would keep the
    reference's rotary table, which rotary-embedding-torch caches, at float32 precision.)
    """
    torch.manual_seed(0)
    ours = (MossFormer2(tiny_mossformer2()) if family == 'mossformer2' else MossFormer(tiny_mossformer())).double()
    ours.eval()
    reference = reference_with_weights_of(ours).double()
    mix = _random_mixture(8000, 0.2).double()
    ours(mix).pow(2).mean().backward()
    reference_forward(reference, mix).pow(2).mean().backward()
    worst = max(float((actual - expected).norm() / expected.norm().clamp(min=1e-300))
                for _, actual, expected in paired_gradients(ours, reference))
    # float64 summation-order differences are ~1e-15 relative; a float32 step anywhere would show as ~1e-7
    assert worst < 1e-11

@pytest.mark.slow
@pytest.mark.parametrize('family', ['mossformer', 'mossformer2'])
@pytest.mark.parametrize('sample_rate', [8000, 16000])
def test_released_size_matches_reference(family, sample_rate, cpu_gemm):
    ours = MossFormer(mossformer_large(sample_rate=sample_rate)) if family == 'mossformer' \
        else MossFormer2(mossformer2_base(sample_rate=sample_rate))
    _assert_parity(ours, _random_mixture(sample_rate, 0.5))


@pytest.mark.slow
def test_released_size_three_speakers_matches_reference():
    _assert_parity(MossFormer2(mossformer2_base(num_spks=3)), _random_mixture(8000, 0.5))
