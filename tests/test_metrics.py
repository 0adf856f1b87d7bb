import itertools

import numpy as np
import pytest
import torch

from modelscope_mossformer.metrics import (pairwise_si_snr, pit_si_snr, pit_si_snr_loss, reorder,
                                           separation_scores, si_snr)


def test_si_snr_of_known_noise_level():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(16000, generator=generator)
    noise = torch.randn(16000, generator=generator)
    noise = noise - noise.mean()
    noise = noise - (noise @ (reference - reference.mean())) / (reference - reference.mean()).pow(2).sum() * \
        (reference - reference.mean())  # orthogonal to the reference
    noise = noise / noise.norm() * (reference - reference.mean()).norm() * 10 ** (-10 / 20)
    assert float(si_snr(reference + noise, reference)) == pytest.approx(10.0, abs=1e-3)
    assert float(si_snr(3.0 * (reference + noise) + 0.5, reference)) == pytest.approx(10.0, abs=1e-3)  # invariant


@pytest.mark.parametrize('num_spks', [2, 3])
def test_pit_finds_every_permutation(num_spks):
    generator = torch.Generator().manual_seed(num_spks)
    references = torch.randn(1, num_spks, 4000, generator=generator)
    for perm in itertools.permutations(range(num_spks)):
        estimates = references[:, list(perm)] + 0.01 * torch.randn(1, num_spks, 4000, generator=generator)
        score, found = pit_si_snr(estimates, references)
        assert score.item() > 30
        torch.testing.assert_close(reorder(estimates, found), references, atol=0.1, rtol=0)


def test_padding_is_ignored():
    generator = torch.Generator().manual_seed(1)
    references = torch.randn(1, 2, 3000, generator=generator)
    estimates = references + 0.1 * torch.randn(1, 2, 3000, generator=generator)
    padded_est = torch.cat([estimates, 5 * torch.randn(1, 2, 1000, generator=generator)], -1)
    padded_ref = torch.cat([references, torch.zeros(1, 2, 1000)], -1)
    unpadded = pairwise_si_snr(estimates, references)
    masked = pairwise_si_snr(padded_est, padded_ref, lengths=torch.tensor([3000]))
    torch.testing.assert_close(masked, unpadded, atol=1e-3, rtol=0)


def test_loss_is_negative_pit_and_thresholds_easy_examples():
    generator = torch.Generator().manual_seed(2)
    references = torch.randn(2, 2, 2000, generator=generator)
    easy = references + 1e-3 * torch.randn(2, 2, 2000, generator=generator)  # ~60 dB
    hard = references + 1.0 * torch.randn(2, 2, 2000, generator=generator)  # ~0 dB
    estimates = torch.stack([easy[0], hard[1]])
    scores, _ = pit_si_snr(estimates, references)
    assert float(pit_si_snr_loss(estimates, references)) == pytest.approx(-float(scores.mean()), abs=1e-5)
    assert float(pit_si_snr_loss(estimates, references, threshold_db=30)) == pytest.approx(-float(scores[1]),
                                                                                           abs=1e-5)
    assert float(pit_si_snr_loss(easy, references, threshold_db=30)) < -50  # all easy: plain mean


def test_loss_has_gradients():
    estimates = torch.randn(2, 3, 800, requires_grad=True)
    pit_si_snr_loss(estimates, torch.randn(2, 3, 800)).backward()
    assert torch.isfinite(estimates.grad).all() and estimates.grad.abs().sum() > 0


def test_separation_scores_improvements_are_relative_to_the_mixture():
    generator = torch.Generator().manual_seed(3)
    references = torch.randn(2, 8000, generator=generator)
    mix = references.sum(0)
    perfect = separation_scores(references.flip(0).clone(), references, mix)  # swapped order is fine
    assert perfect['si-snr'] > 60 and perfect['sdr'] > 60
    assert perfect['si-snri'] == pytest.approx(perfect['si-snr'] - float(si_snr(mix.expand(2, -1), references).mean()))
    nothing = separation_scores(mix.expand(2, -1).clone(), references, mix)
    assert nothing['si-snri'] == pytest.approx(0.0, abs=1e-4) and nothing['sdri'] == pytest.approx(0.0, abs=1e-3)
    assert np.isfinite(list(nothing.values())).all()
