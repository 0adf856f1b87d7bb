"""Inference with and without the reused block buffers (``models.layers.reused_buffers``), side by side.

One process, one model at the released size, float32, batch 1; runs alternate between the two modes
(A B B A ...) so that both see the same machine state. Prints the median time of each, their ratio,
and the minor page faults per forward pass (fresh pages the kernel had to map and zero).

    python bench/bench_buffers.py --model mossformer --seconds 8 --repeats 4
    python bench/bench_buffers.py --model mossformer --seconds 60 --repeats 2
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch
from bench_speed import CONFIGS, LABELS, RATE, config_of  # bench/, this folder

from modelscope_mossformer.models import build_separator, layers


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', choices=list(CONFIGS), default='mossformer')
    parser.add_argument('--seconds', type=float, default=8.0, help='input length (default 8: mossformer separate\'s '
                                                                   'chunk)')
    parser.add_argument('--repeats', type=int, default=4, help='runs per mode (default 4)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--num-blocks', type=int, default=None, help='default: the released 24')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_separator(config_of(args.model, args.num_blocks)).eval()
    mix = 0.1 * torch.randn(1, int(args.seconds * RATE), generator=torch.Generator().manual_seed(1))
    threshold = layers._REUSE_MIN_BYTES
    times: Dict[str, List[float]] = {'reused': [], 'fresh': []}
    faults = {'reused': 0, 'fresh': 0}
    outputs = {}
    with torch.inference_mode():
        model(mix[:, :2 * RATE])  # first-call costs out of the timings
        for run in range(2 * args.repeats):
            mode = ('reused', 'fresh')[(run + run // 2) % 2]  # reused, fresh, fresh, reused, ...
            layers._REUSE_MIN_BYTES = threshold if mode == 'reused' else 1 << 62  # nothing counts as large
            before, start = minor_faults(), time.perf_counter()
            outputs[mode] = model(mix)
            times[mode].append(time.perf_counter() - start)
            faults[mode] += minor_faults() - before
    layers._REUSE_MIN_BYTES = threshold
    median = {mode: statistics.median(values) for mode, values in times.items()}
    print(f'{LABELS[args.model]} {args.seconds:g} s, {args.threads} threads, {args.repeats} runs each')
    for mode in ('reused', 'fresh'):
        print(f'  {mode:<7} buffers: {median[mode]:7.3f} s, {faults[mode] // args.repeats:>10} page faults per pass')
    print(f'  reused / fresh: {median["reused"] / median["fresh"]:.3f}; outputs equal: '
          f'{torch.equal(outputs["reused"], outputs["fresh"])}')
    return 0 if torch.equal(outputs['reused'], outputs['fresh']) else 1


if __name__ == '__main__':
    sys.exit(main())
