"""torch.compile per block against eager, for a training step or an inference forward, side by side.

Each MossFormer / MossFormer2 block's forward is compiled as it stands (``torch.compile(block.forward)``;
its autograd functions are traced), the rest of the model stays eager. Prints the eager time before and
after the compiled runs (this machine's drift), the compiled time, their ratio, the compilation time
(with the first step) and the largest output difference.

    python bench/bench_compile.py --model mossformer --num-blocks 2 --seconds 4 --mode train
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import List, Optional

import torch

from modelscope_mossformer.models import build_separator, mossformer2_base, mossformer_large

CONFIGS = {'mossformer': mossformer_large, 'mossformer2': mossformer2_base}
BLOCKS = ('GatedAttentionUnit', 'RecurrentModule')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--model', choices=sorted(CONFIGS), default='mossformer')
    parser.add_argument('--num-blocks', type=int, default=2)
    parser.add_argument('--seconds', type=float, default=4.0)
    parser.add_argument('--mode', choices=('train', 'inference'), default='train')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_separator(CONFIGS[args.model](num_blocks=args.num_blocks))
    model.train(args.mode == 'train')
    mix = 0.1 * torch.randn(1, int(args.seconds * 8000), generator=torch.Generator().manual_seed(1))
    blocks = [module for module in model.modules() if type(module).__name__ in BLOCKS]

    def run() -> torch.Tensor:
        if args.mode == 'inference':
            with torch.inference_mode():
                return model(mix)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(2)  # the same dropout masks in every step
        out = model(mix)
        out.pow(2).mean().backward()
        return out.detach()

    def timed() -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    run()  # warm-up
    eager_before = timed()
    reference = run()
    eager_forwards = [block.forward for block in blocks]
    start = time.perf_counter()
    for block in blocks:
        block.forward = torch.compile(block.forward, dynamic=False)
    compiled_out = run()
    compile_s = time.perf_counter() - start
    compiled = timed()
    for block, forward in zip(blocks, eager_forwards):
        block.forward = forward
    eager_after = timed()
    eager = (eager_before + eager_after) / 2
    print(f'{args.model}, {len(blocks)} compiled modules, {args.seconds:g} s, {args.mode}, {args.threads} threads: '
          f'eager {eager_before:.3f} / {eager_after:.3f} s, compiled {compiled:.3f} s, '
          f'compiled / eager {compiled / eager:.3f}, compilation and first run {compile_s:.1f} s, '
          f'max|diff| {float((compiled_out - reference).abs().max()):.2e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
