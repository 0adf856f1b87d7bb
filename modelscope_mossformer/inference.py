"""Separating recordings of any length: chunking, speaker alignment, overlap-add, loudness.

Long inputs are cut into chunks of `chunk_seconds` that overlap by
`overlap_seconds`.  Each chunk is separated on its own, so model memory depends
on the chunk length only.  Before two chunks are joined, the new chunk's
speakers are put in the order of the previous one: the permutation with the
highest normalised correlation over the shared overlap wins (all C!
permutations, C <= 3).  The overlap is then cross-faded with complementary
raised-cosine windows, so the joined signal has no seam and no speaker swap.

Loudness: the model output is scale-ambiguous.  `match_mixture_level` scales all
estimates by one factor so that their sum best matches the mixture (least
squares), keeping the speakers' relative levels and the input's level; if a peak
would then clip, all estimates are scaled down together.  Nothing is normalised
to a fixed peak.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def best_permutation(previous: torch.Tensor, current: torch.Tensor) -> List[int]:
    """Order of `current`'s speakers that best continues `previous` ([C, O] each, same span)."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(-1, keepdim=True)
        return x / (x.norm(dim=-1, keepdim=True) + 1e-8)

    similarity = unit(previous.float()) @ unit(current.float()).T  # [C_prev, C_cur]
    num_spks = similarity.shape[0]
    scores = {perm: float(sum(similarity[i, perm[i]] for i in range(num_spks)))
              for perm in itertools.permutations(range(num_spks))}
    return list(max(scores, key=scores.get))


def _fades(length: int, dtype: torch.dtype) -> tuple:
    ramp = 0.5 - 0.5 * torch.cos(torch.linspace(0, torch.pi, length + 2, dtype=torch.float64)[1:-1])
    return (1 - ramp).to(dtype), ramp.to(dtype)


class ChunkStitcher:
    """Joins separated chunks into one stream: align speakers, cross-fade, emit finished samples.

    Args:
        overlap: samples shared by consecutive chunks.
    """

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self.tail: Optional[torch.Tensor] = None  # [C, overlap] of the last chunk, not yet emitted
        self.swaps = 0

    def push(self, chunk: torch.Tensor, last: bool = False) -> torch.Tensor:
        """Add the next separated chunk [C, n]; returns the samples that are now final [C, m]."""
        if self.tail is not None:
            shared = min(self.overlap, chunk.shape[-1], self.tail.shape[-1])
            perm = best_permutation(self.tail[:, :shared], chunk[:, :shared])
            if perm != sorted(perm):
                self.swaps += 1
            chunk = chunk[perm]
            fade_out, fade_in = _fades(shared, chunk.dtype)
            joined = self.tail[:, :shared] * fade_out + chunk[:, :shared] * fade_in
            chunk = torch.cat((joined, chunk[:, shared:]), dim=-1)
        if last or chunk.shape[-1] <= self.overlap:
            self.tail = None if last else chunk
            return chunk if last else chunk[:, :0]
        self.tail = chunk[:, -self.overlap:]
        return chunk[:, :-self.overlap]

    def finish(self) -> torch.Tensor:
        tail, self.tail = self.tail, None
        return tail if tail is not None else torch.zeros(0, 0)


def match_mixture_level(estimates: torch.Tensor, mix: torch.Tensor, peak: float = 0.999) -> torch.Tensor:
    """Scale [C, T] estimates by one factor so their sum best fits `mix` [T]; avoid clipping."""
    total = estimates.sum(0)
    energy = float(total.pow(2).sum())
    gain = float((total * mix).sum()) / energy if energy > 0 else 1.0
    if not np.isfinite(gain) or gain <= 0:
        gain = 1.0  # an estimate anti-correlated with the mixture: leave the level alone
    scaled = estimates * gain
    top = float(scaled.abs().max()) if scaled.numel() else 0.0
    return scaled * (peak / top) if top > peak else scaled


@dataclass
class ChunkPlan:
    chunk: int
    overlap: int

    @property
    def hop(self) -> int:
        return self.chunk - self.overlap


class SeparationEngine:
    """Runs a separator on whole signals or in overlapping chunks.

    Args:
        separator: maps [B, T] to [B, C, T] (a MossFormer / MossFormer2 module).
        sample_rate: the separator's rate.
        device: where the separator runs.
        precision: 'fp32', 'bf16' or 'fp16' (autocast; outputs are float32).
        chunk_seconds: chunk length; None separates the whole signal at once.
        overlap_seconds: overlap between chunks, used for alignment and cross-fade.
    """

    def __init__(self, separator: Callable[[torch.Tensor], torch.Tensor], sample_rate: int, device: str = 'cpu',
                 precision: str = 'fp32', chunk_seconds: Optional[float] = 8.0, overlap_seconds: float = 1.0) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
        if chunk_seconds is not None and not 0 < overlap_seconds < chunk_seconds:
            raise ValueError(f'need 0 < overlap_seconds < chunk_seconds, got {overlap_seconds} and {chunk_seconds}')
        self.separator = separator
        self.sample_rate = sample_rate
        self.device = torch.device(device)
        if precision == 'fp16' and self.device.type == 'cpu':
            raise ValueError("precision 'fp16' needs CUDA: PyTorch's float16 autocast on the CPU takes minutes "
                             "for a second of audio; use 'bf16' or 'fp32' on the CPU")
        self.precision = precision
        self.plan = (ChunkPlan(int(chunk_seconds * sample_rate), int(overlap_seconds * sample_rate))
                     if chunk_seconds is not None else None)

    def run_model(self, mix: torch.Tensor) -> torch.Tensor:
        """[T] -> [C, T] float32 on the CPU."""
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            out = self.separator(mix[None].to(self.device))[0]
        return out.float().cpu()

    def chunks(self, mix: torch.Tensor) -> Iterator[torch.Tensor]:
        """Overlapping chunks of an in-memory signal [T]."""
        plan = self.plan
        start = 0
        while True:
            yield mix[start:start + plan.chunk]
            if start + plan.chunk >= mix.shape[-1]:
                return
            start += plan.hop

    def separate_stream(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Separate overlapping mixture chunks (as `chunks` cuts them); yield final [C, m] blocks in order."""
        if self.plan is None:
            raise ValueError('separate_stream needs chunk_seconds')
        stitcher = ChunkStitcher(self.plan.overlap)
        iterator = iter(chunks)
        current = next(iterator, None)
        while current is not None:
            following = next(iterator, None)
            block = stitcher.push(self.run_model(current), last=following is None)
            if block.shape[-1]:
                yield block
            current = following
        if stitcher.swaps:
            logger.debug('speaker order realigned at %d chunk border(s)', stitcher.swaps)

    def separate(self, mix: torch.Tensor) -> torch.Tensor:
        """[T] mixture at the model rate -> [C, T] estimates (float32, CPU)."""
        if mix.dim() != 1:
            raise ValueError(f'expected a 1-D mixture, got shape {tuple(mix.shape)}')
        if self.plan is None or mix.shape[-1] <= self.plan.chunk:
            return self.run_model(mix)
        return torch.cat(list(self.separate_stream(self.chunks(mix))), dim=-1)
