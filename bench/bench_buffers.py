"""Inference with and without the reused block buffers, or with and without frame tiles, side by side.

One process, one model at the released size, float32 (or bf16 autocast), batch 1; runs alternate
between the two modes (A B B A ...) so that both see the same machine state. Prints the median time
of each, their ratio, the minor page faults per forward pass (fresh pages the kernel had to map and
zero) and how far the outputs are apart.

``--compare buffers`` (default): the blocks' reused buffers (``models.layers.reused_buffers``) against
fresh tensors, both whole-tensor (no tiles). ``--compare tiles``: the blocks' and mask head's tiled
inference forward (``tile_frames`` frames per tile, with the reused buffers) against the whole-tensor one.

    python bench/bench_buffers.py --model mossformer --seconds 8 --repeats 4
    python bench/bench_buffers.py --compare tiles --model mossformer --seconds 60 --repeats 2
"""
from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument('--compare', choices=('buffers', 'tiles'), default='buffers')
    parser.add_argument('--tile-frames', type=int, default=layers.TILE_FRAMES,
                        help=f'frames per tile in the tiled mode (default {layers.TILE_FRAMES})')
    parser.add_argument('--bf16', action='store_true', help='under CPU bfloat16 autocast')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_separator(config_of(args.model, args.num_blocks)).eval()
    mix = 0.1 * torch.randn(1, int(args.seconds * RATE), generator=torch.Generator().manual_seed(1))
    threshold = layers._REUSE_MIN_BYTES
    modes = ('reused', 'fresh') if args.compare == 'buffers' else ('tiled', 'whole')

    def enter(mode: str) -> None:
        layers._REUSE_MIN_BYTES = 1 << 62 if mode == 'fresh' else threshold  # fresh: nothing counts as large
        tile_frames = args.tile_frames if mode == 'tiled' else 0
        for module in model.modules():
            if hasattr(module, 'tile_frames'):
                module.tile_frames = tile_frames

    times: Dict[str, List[float]] = {mode: [] for mode in modes}
    faults = dict.fromkeys(modes, 0)
    outputs = {}
    context = torch.autocast('cpu', dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    with torch.inference_mode(), context:
        model(mix[:, :2 * RATE])  # first-call costs out of the timings
        for run in range(2 * args.repeats):
            mode = modes[(run + run // 2) % 2]  # A, B, B, A, ...
            enter(mode)
            before, start = minor_faults(), time.perf_counter()
            outputs[mode] = model(mix)
            times[mode].append(time.perf_counter() - start)
            faults[mode] += minor_faults() - before
    layers._REUSE_MIN_BYTES = threshold
    median = {mode: statistics.median(values) for mode, values in times.items()}
    first, second = modes
    difference = float((outputs[first] - outputs[second]).abs().max() / outputs[second].abs().max())
    print(f'{LABELS[args.model]} {args.seconds:g} s, {"bf16" if args.bf16 else "fp32"}, {args.threads} threads, '
          f'{args.repeats} runs each')
    for mode in modes:
        print(f'  {mode:<7}: {median[mode]:7.3f} s, {faults[mode] // args.repeats:>10} page faults per pass')
    print(f'  {first} / {second}: {median[first] / median[second]:.3f}; largest output difference '
          f'{difference:.2e} of the output\'s peak')
    # the same numbers but for the summation order a GEMM kernel chosen for another row count may take
    return 0 if difference <= 1e-5 else 1


if __name__ == '__main__':
    sys.exit(main())
