"""Separating recordings of any length: chunking, speaker alignment, overlap-add, loudness.

Long inputs are cut into chunks of `chunk_seconds` that overlap by
`overlap_seconds`.  Each chunk is separated on its own, so model memory depends
on the chunk length only.  Before two chunks are joined, the new chunk's
speakers are put in the order of the previous one: the permutation with the
highest normalised correlation over the shared overlap wins (all C!
permutations, C <= 3; between orders that correlate equally, as scaled copies of one
voice do, the one whose levels continue).  The overlap is then cross-faded with complementary
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
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


TIE_MARGIN = 1e-3  # correlation scores this close count as equal (float32 rounding gives about 1e-6)


def best_permutation(previous: torch.Tensor, current: torch.Tensor) -> List[int]:
    """Order of `current`'s speakers that best continues `previous` ([C, O] each, same span)."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(-1, keepdim=True)
        return x / (x.norm(dim=-1, keepdim=True) + 1e-8)

    similarity = unit(previous.float()) @ unit(current.float()).T  # [C_prev, C_cur]
    num_spks = similarity.shape[0]
    scores = {perm: float(sum(similarity[i, perm[i]] for i in range(num_spks)))
              for perm in itertools.permutations(range(num_spks))}
    best = max(scores.values())
    # Outputs that are scaled copies of each other (one voice leaked into two outputs) correlate
    # equally with either order, and rounding noise would pick one. Among orders within
    # TIE_MARGIN of the best, the one whose levels continue (least squared difference) wins.
    tied = [perm for perm, score in scores.items() if score >= best - TIE_MARGIN]
    if len(tied) == 1:
        return list(tied[0])
    previous, current = previous.double(), current.double()
    return list(min(tied, key=lambda perm: float((previous - current[list(perm)]).pow(2).sum())))


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


OUTPUT_PEAK = 0.999  # separated outputs stay below this
SILENCE_PEAK = 1e-6  # an input peak below one 16-bit step is digital silence: the model does not run


def level_gain(dot: float, energy: float, top: float, peak: float = OUTPUT_PEAK) -> float:
    """The one factor that fits the estimates' sum to the mixture, lowered so that no output clips.

    Args:
        dot: <sum of the estimates, mixture>; energy: |sum of the estimates|^2 (least squares: dot / energy).
        top: the estimates' peak before scaling.
        peak: the highest output level allowed.
    """
    gain = dot / energy if energy > 0 else 1.0
    if not math.isfinite(gain) or gain <= 0:
        gain = 1.0  # estimates anti-correlated with the mixture: leave the level alone
    if gain * top > peak:
        gain = peak / top
    return gain


def match_mixture_level(estimates: torch.Tensor, mix: torch.Tensor, peak: float = OUTPUT_PEAK) -> torch.Tensor:
    """Scale [C, T] estimates by one factor so their sum best fits `mix` [T]; avoid clipping."""
    total = estimates.sum(0)
    top = float(estimates.abs().max()) if estimates.numel() else 0.0
    return estimates * level_gain(float((total * mix).sum()), float(total.pow(2).sum()), top, peak)


def overlapping_chunks(blocks: Iterable[torch.Tensor], chunk: int, hop: int,
                       on_new_samples: Optional[Callable[[torch.Tensor], None]] = None) -> Iterator[torch.Tensor]:
    """Cut a stream of [n] blocks into overlapping chunks (`SeparationEngine.chunks` of a whole signal).

    Args:
        blocks: consecutive pieces of the signal.
        chunk: chunk length in samples.
        hop: distance between chunk starts.
        on_new_samples: called with each chunk's samples not seen in an earlier chunk.
    """
    iterator = iter(blocks)
    buffer = torch.zeros(0)
    ended = False
    seen = 0  # samples at the start of `buffer` already reported as new
    while True:
        while not ended and buffer.shape[-1] <= chunk:
            block = next(iterator, None)
            if block is None:
                ended = True
            else:
                buffer = torch.cat((buffer, block))
        piece = buffer[:chunk]
        if on_new_samples is not None:
            on_new_samples(piece[seen:])
        yield piece
        if buffer.shape[-1] <= chunk:  # this chunk reached the end of the signal
            return
        buffer = buffer[hop:]
        seen = chunk - hop




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
        batch_chunks: up to this many consecutive chunks of a long signal go through the separator as
            one batch (bigger GEMMs, more memory: activations grow with the batch); the estimates are
            those of chunk-by-chunk separation to float rounding.
    """

    def __init__(self, separator: Callable[[torch.Tensor], torch.Tensor], sample_rate: int, device: str = 'cpu',
                 precision: str = 'fp32', chunk_seconds: Optional[float] = 8.0, overlap_seconds: float = 1.0,
                 batch_chunks: int = 1) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
        if isinstance(batch_chunks, bool) or not isinstance(batch_chunks, int) or batch_chunks < 1:
            raise ValueError(f'batch_chunks must be a whole number >= 1, got {batch_chunks!r}')
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
        self.batch_chunks = batch_chunks

    @property
    def num_spks(self) -> int:
        """Outputs per input, from the separator's config (the one source of it)."""
        config = getattr(self.separator, 'config', None)
        count = getattr(config, 'num_spks', None) or getattr(self.separator, 'num_spks', None)
        if not isinstance(count, int):
            raise TypeError(f'{type(self.separator).__name__} carries no config with num_spks')
        return count

    def run_model(self, mix: torch.Tensor) -> torch.Tensor:
        """[T] -> [C, T] float32 on the CPU."""
        return self.run_batch(mix[None])[0]

    def run_batch(self, mixes: torch.Tensor) -> torch.Tensor:
        """[N, T] -> [N, C, T] float32 on the CPU."""
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            out = self.separator(mixes.to(self.device))
        return out.float().cpu()

    def chunks(self, mix: torch.Tensor) -> Iterator[torch.Tensor]:
        """Overlapping chunks of an in-memory signal [T]."""
        return overlapping_chunks([mix], self.plan.chunk, self.plan.hop)

    def separate_stream(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Separate overlapping mixture chunks (as `chunks` cuts them); yield final [C, m] blocks in order."""
        if self.plan is None:
            raise ValueError('separate_stream needs chunk_seconds')
        stitcher = ChunkStitcher(self.plan.overlap)
        for estimates, last in self._separated_chunks(chunks):
            block = stitcher.push(estimates, last=last)
            if block.shape[-1]:
                yield block
        if stitcher.swaps:
            logger.debug('speaker order realigned at %d chunk border(s)', stitcher.swaps)

    def _separated_chunks(self, chunks: Iterable[torch.Tensor]) -> Iterator[Tuple[torch.Tensor, bool]]:
        """Each chunk's [C, m] estimates in order, with whether it is the last chunk.

        Consecutive chunks of one length (all but a shorter last one) are stacked into batches of up
        to `batch_chunks`; a batch is cut short where the stream ends or the length changes.
        """
        iterator = iter(chunks)
        batch: List[torch.Tensor] = []
        current = next(iterator, None)
        while current is not None:
            following = next(iterator, None)
            batch.append(current)
            if (following is None or len(batch) == self.batch_chunks
                    or following.shape[-1] != current.shape[-1]):
                estimates = self.run_batch(torch.stack(batch))
                for index, item in enumerate(estimates):
                    yield item, following is None and index == len(batch) - 1
                batch = []
            current = following

    def separate(self, mix: torch.Tensor) -> torch.Tensor:
        """[T] mixture at the model rate -> [C, T] estimates (float32, CPU)."""
        if mix.dim() != 1:
            raise ValueError(f'expected a 1-D mixture, got shape {tuple(mix.shape)}')
        if self.plan is None or mix.shape[-1] <= self.plan.chunk:
            return self.run_model(mix)
        return torch.cat(list(self.separate_stream(self.chunks(mix))), dim=-1)
