"""Separation metrics in dB (higher is better) and the permutation-invariant loss.

* `si_snr`: scale-invariant signal-to-noise ratio of zero-mean signals.
* `pit_si_snr`: the best speaker assignment per example (2 or 3 speakers: all
  permutations) and its mean SI-SNR.
* `pit_si_snr_loss`: the training loss, the negative PIT SI-SNR, optionally
  ignoring examples already above a threshold (the released recipe's 30 dB).
* `sdr`: BSS Eval SDR (fast_bss_eval, 512-tap distortion filter), as reported
  in papers; `improvement` turns a metric into its improvement over the mixture.
* `separation_scores`: all of them for one utterance, plus PESQ / STOI / ESTOI when asked
  (`perceptual`, the optional ``metrics`` extra), with the permutation PIT SI-SNR found.

Padded batches pass `lengths` so that padding never counts.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

EPS = 1e-8


def _mask(lengths: Optional[torch.Tensor], num_samples: int, device: torch.device) -> Optional[torch.Tensor]:
    if lengths is None:
        return None
    return (torch.arange(num_samples, device=device)[None, :] < lengths.to(device)[:, None]).float()  # [B, T]


def pairwise_si_snr(estimates: torch.Tensor, references: torch.Tensor,
                    lengths: Optional[torch.Tensor] = None, eps: float = EPS) -> torch.Tensor:
    """SI-SNR of every (estimate, reference) pair.

    Args:
        estimates: [B, C, T].
        references: [B, C, T].
        lengths: [B] valid samples per example, or None.

    Returns:
        [B, C_est, C_ref] in dB.
    """
    if estimates.shape != references.shape or estimates.dim() != 3:
        raise ValueError(f'expected two [batch, speakers, time] tensors of one shape, got '
                         f'{tuple(estimates.shape)} and {tuple(references.shape)}')
    mask = _mask(lengths, estimates.shape[-1], estimates.device)
    if mask is not None:
        mask = mask[:, None, :]  # [B, 1, T]
        count = mask.sum(-1, keepdim=True).clamp(min=1)
        estimates = (estimates - (estimates * mask).sum(-1, keepdim=True) / count) * mask
        references = (references - (references * mask).sum(-1, keepdim=True) / count) * mask
    else:
        estimates = estimates - estimates.mean(-1, keepdim=True)
        references = references - references.mean(-1, keepdim=True)
    dot = torch.einsum('bit,bjt->bij', estimates, references)  # [B, C, C]
    ref_energy = references.pow(2).sum(-1)[:, None, :] + eps  # [B, 1, C]
    scale = dot / ref_energy  # projection of estimate i on reference j
    target_energy = scale.pow(2) * ref_energy  # ||s_target||^2
    noise = estimates[:, :, None, :] - scale[..., None] * references[:, None, :, :]  # [B, C, C, T]
    noise_energy = noise.pow(2).sum(-1)
    return 10 * torch.log10(target_energy / (noise_energy + eps) + eps)


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """SI-SNR in dB of [..., T] signals, no permutation."""
    flat_est = estimate.reshape(-1, 1, estimate.shape[-1])
    flat_ref = reference.reshape(-1, 1, reference.shape[-1])
    return pairwise_si_snr(flat_est, flat_ref, eps=eps)[:, 0, 0].reshape(estimate.shape[:-1])


def pit_si_snr(estimates: torch.Tensor, references: torch.Tensor,
               lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Permutation-invariant SI-SNR.

    Returns:
        (mean SI-SNR over speakers under the best assignment [B], that assignment [B, C]:
        estimate `perm[b, j]` goes with reference j).
    """
    pairwise = pairwise_si_snr(estimates, references, lengths)  # [B, C, C]
    num_spks = pairwise.shape[-1]
    perms = torch.tensor(list(itertools.permutations(range(num_spks))), device=pairwise.device)  # [P, C]
    refs = torch.arange(num_spks, device=pairwise.device)
    scores = pairwise[:, perms, refs].mean(-1)  # [B, P]
    best, index = scores.max(dim=1)
    return best, perms[index]


def reorder(estimates: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Estimates [B, C, T] in reference order, given `pit_si_snr`'s assignment."""
    return torch.gather(estimates, 1, perm[:, :, None].expand(-1, -1, estimates.shape[-1]))


def pit_si_snr_loss(estimates: torch.Tensor, references: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                    threshold_db: Optional[float] = None) -> torch.Tensor:
    """Negative PIT SI-SNR averaged over the batch.

    Examples already above `threshold_db` are left out, as in the released recipe
    (they carry little signal and can dominate the gradient); when all are, the
    loss is the plain mean, so it stays defined.
    """
    scores, _ = pit_si_snr(estimates, references, lengths)
    losses = -scores
    if threshold_db is not None:
        keep = scores <= threshold_db
        if keep.any():
            losses = losses[keep]
    return losses.mean()


def sdr(estimates: np.ndarray, references: np.ndarray) -> np.ndarray:
    """BSS Eval SDR in dB of [C, T] estimates in reference order (fast_bss_eval)."""
    import fast_bss_eval

    return np.asarray(fast_bss_eval.sdr(np.asarray(references, np.float64), np.asarray(estimates, np.float64),
                                        load_diag=1e-10), dtype=np.float64)


def separation_scores(estimates: torch.Tensor, references: torch.Tensor, mix: torch.Tensor,
                      perceptual: Sequence[str] = (), sample_rate: Optional[int] = None,
                      name: str = 'utterance') -> dict:
    """Per-utterance SI-SNR, SI-SNRi, SDR and SDRi (dB) of one example, and optional perceptual metrics.

    Args:
        estimates: [C, T] in any speaker order.
        references: [C, T].
        mix: [T].
        perceptual: result keys of `perceptual.resolve_metrics` ('pesq-nb', 'pesq-wb', 'stoi', 'estoi'),
            scored with the speaker assignment that PIT SI-SNR found.
        sample_rate: rate of the signals (needed with `perceptual`).
        name: the utterance, named in the warning when a perceptual metric cannot score it (NaN).
    """
    best, perm = pit_si_snr(estimates[None], references[None])
    ordered = reorder(estimates[None], perm)[0]
    mixes = mix[None].expand_as(references)
    mix_si_snr = si_snr(mixes, references).mean()
    est_sdr = sdr(ordered.detach().cpu().numpy(), references.cpu().numpy()).mean()
    mix_sdr = sdr(mixes.cpu().numpy(), references.cpu().numpy()).mean()
    scores = {'si-snr': float(best[0]), 'si-snri': float(best[0] - mix_si_snr), 'sdr': float(est_sdr),
              'sdri': float(est_sdr - mix_sdr)}
    if perceptual:
        if sample_rate is None:
            raise ValueError('separation_scores: perceptual metrics need the sample_rate')
        from .perceptual import perceptual_scores

        scores.update(perceptual_scores(ordered, references, sample_rate, perceptual, name))
    return scores
