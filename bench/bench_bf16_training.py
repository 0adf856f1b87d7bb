"""Loss curves of a short training run in float32 and under CPU bfloat16 autocast, side by side.

Both runs start from the same weights (seed 0), see the same batches in the same order and
draw the same dropout masks (the global generator is reseeded before every step), so the two
curves differ only by the precision of the arithmetic. Data: two-talker mixtures of the demo
corpus's synthetic voices (``--seconds`` long, a fresh pair of utterances per example),
made in memory. Each step is what the trainer does: forward, PIT SI-SNR loss (the released
recipe's -30 dB threshold), backward, gradient-norm clipping at 5, Adam (lr 1.5e-4). The bf16
run uses ``torch.autocast('cpu', dtype=torch.bfloat16)`` around the forward and loss, as the
trainer's ``train.precision: bf16`` does; its weights and optimizer state stay float32.

Printed: both losses every ``--every`` steps, the means over the last ``--window`` steps,
their difference against the fp32 curve's own step-to-step spread (standard deviation over
that window), and the PIT SI-SNR of both final models on ``--eval`` held-out mixtures,
each evaluated in float32.

    python bench/bench_bf16_training.py                      # MossFormer(L) width, 4 blocks, 80 steps
    python bench/bench_bf16_training.py --model mossformer2 --num-blocks 2 --steps 60
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelscope_mossformer.data.synth import make_voices, synthesize_utterance  # noqa: E402
from modelscope_mossformer.metrics import pit_si_snr, pit_si_snr_loss  # noqa: E402
from modelscope_mossformer.models import build_separator  # noqa: E402
from modelscope_mossformer.models.configs import MossFormer2Config, MossFormerConfig  # noqa: E402

RATE = 8000
CONFIGS = {'mossformer': MossFormerConfig, 'mossformer2': MossFormer2Config}


def log(message: str) -> None:
    print(message, flush=True)


def make_examples(count: int, seconds: float, seed: int) -> List[torch.Tensor]:
    """`count` [2, T] pairs of sources from a pool of 8 voices, each scaled to a random level."""
    rng = np.random.default_rng(seed)
    voices = make_voices(8, seed=seed)
    examples = []
    for _ in range(count):
        first, second = rng.choice(len(voices), size=2, replace=False)
        sources = np.stack([synthesize_utterance(voices[i], seconds, RATE, rng) for i in (first, second)])
        gains = 10 ** (rng.uniform(-2.5, 2.5, size=(2, 1)) / 20)
        examples.append(torch.tensor(sources * gains, dtype=torch.float32))
    return examples


def train(model: torch.nn.Module, batches: List[torch.Tensor], bf16: bool, lr: float) -> List[float]:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step, sources in enumerate(batches):
        torch.manual_seed(1000 + step)  # the same dropout masks in both runs
        mix = sources.sum(dim=1)  # [B, T]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            loss = pit_si_snr_loss(model(mix), sources, threshold_db=30.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def evaluate(model: torch.nn.Module, examples: List[torch.Tensor]) -> float:
    model.eval()
    scores = [float(pit_si_snr(model(s.sum(dim=0, keepdim=True)), s[None])[0].mean()) for s in examples]
    return statistics.mean(scores)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', choices=sorted(CONFIGS), default='mossformer')
    parser.add_argument('--num-blocks', type=int, default=4, help='blocks (released width; default 4)')
    parser.add_argument('--steps', type=int, default=80)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--seconds', type=float, default=2.0, help='segment length (default 2)')
    parser.add_argument('--lr', type=float, default=1.5e-4)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--every', type=int, default=5, help='print the losses every this many steps')
    parser.add_argument('--window', type=int, default=20, help='steps averaged at the end (default 20)')
    parser.add_argument('--eval', type=int, default=8, help='held-out mixtures for the final SI-SNR')
    parser.add_argument('--json', type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    examples = make_examples(args.steps * args.batch, args.seconds, seed=11)
    batches = [torch.stack(examples[i:i + args.batch]) for i in range(0, len(examples), args.batch)]
    held_out = make_examples(args.eval, args.seconds, seed=12)
    torch.manual_seed(0)
    initial = build_separator(CONFIGS[args.model](num_blocks=args.num_blocks))
    log(f'torch {torch.__version__}, {args.threads} threads; {args.model} with {args.num_blocks} blocks, '
        f'{args.steps} steps of {args.batch} x {args.seconds:g} s, lr {args.lr:g}')

    curves: Dict[str, List[float]] = {}
    models: Dict[str, torch.nn.Module] = {}
    seconds: Dict[str, float] = {}
    for name, bf16 in (('fp32', False), ('bf16', True)):
        models[name] = copy.deepcopy(initial)
        start = time.perf_counter()
        curves[name] = train(models[name], batches, bf16, args.lr)
        seconds[name] = time.perf_counter() - start

    log(f'{"step":>5} {"fp32 loss":>10} {"bf16 loss":>10} {"bf16 - fp32":>12}')
    for step in range(0, args.steps, args.every):
        a, b = curves['fp32'][step], curves['bf16'][step]
        log(f'{step + 1:>5} {a:>10.3f} {b:>10.3f} {b - a:>12.3f}')
    window = min(args.window, args.steps)
    tail = {name: curve[-window:] for name, curve in curves.items()}
    means = {name: statistics.mean(values) for name, values in tail.items()}
    spread = statistics.pstdev(tail['fp32'])
    first = {name: statistics.mean(curve[:window]) for name, curve in curves.items()}
    scores = {name: evaluate(model, held_out) for name, model in models.items()}
    result: Dict[str, Any] = {
        'args': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, 'curves': curves,
        'seconds': seconds, 'first_window_mean': first, 'last_window_mean': means,
        'fp32_last_window_std': spread, 'eval_si_snr_db': scores,
        'max_abs_step_diff': max(abs(a - b) for a, b in zip(curves['fp32'], curves['bf16']))}
    log(f'first {window} steps: mean loss fp32 {first["fp32"]:.3f}, bf16 {first["bf16"]:.3f}')
    log(f'last {window} steps: mean loss fp32 {means["fp32"]:.3f}, bf16 {means["bf16"]:.3f}, difference '
        f'{means["bf16"] - means["fp32"]:+.3f} (fp32 step-to-step std {spread:.3f}); '
        f'largest per-step difference {result["max_abs_step_diff"]:.3f}')
    log(f'held-out PIT SI-SNR after training: fp32 {scores["fp32"]:.2f} dB, bf16-trained {scores["bf16"]:.2f} dB; '
        f'time fp32 {seconds["fp32"]:.0f} s, bf16 {seconds["bf16"]:.0f} s ({seconds["bf16"] / seconds["fp32"]:.2f} x)')
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        log(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
