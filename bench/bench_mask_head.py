"""The frames-first mask head and GEMM filterbanks against the channels-first graph, side by side.

`MossFormer.sources` runs the encoder, the mask head and the decoder frames-first in eager mode: the
mask head's 1x1 convs as GEMMs on [B, L, channels] and each filterbank as one GEMM. The traced,
exported and compiled graph keeps the channels-first convolutions (`MossFormer.channels_first_sources`:
the encoder's Conv1d, `MaskNet.channels_first`, the decoder's ConvTranspose1d). This script times both
(`sources` against `channels_first_sources`) on the same model and input,
interleaved in one process, and prints their largest relative output difference:

    python bench/bench_mask_head.py --model mossformer --seconds 4,60 --blocks 1
    python bench/bench_mask_head.py --model mossformer --seconds 4 --blocks 1 --bf16

Few blocks (default 1) make the mask head's share of the time, and so the difference, easiest to see;
the difference in seconds is the same for any number of blocks.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch
from bench_speed import config_of, interleaved, speech_mixture  # bench/, this script's folder

from modelscope_mossformer.models import build_separator


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='mossformer', choices=['mossformer', 'mossformer2'])
    parser.add_argument('--seconds', default='4,60', help='input lengths in seconds (default 4,60)')
    parser.add_argument('--blocks', type=int, default=1, help='blocks in the model (default 1)')
    parser.add_argument('--bf16', action='store_true', help='under bfloat16 autocast')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_separator(config_of(args.model, args.blocks)).eval()
    for seconds in (float(s) for s in args.seconds.split(',') if s.strip()):
        mix = speech_mixture(seconds)

        def run(sources):
            def forward():
                with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16, enabled=args.bf16):
                    return sources(mix)
            return forward

        fns = {'channels_first': run(model.channels_first_sources), 'frames_first': run(model.sources)}
        outputs = {}
        for fn in fns.values():
            fn()  # warm-up
        times = interleaved(fns, args.repeats, outputs)
        old, new = min(times['channels_first']), min(times['frames_first'])
        diff = float((outputs['frames_first'] - outputs['channels_first']).abs().max()
                     / outputs['channels_first'].abs().max())
        print(f'{args.model} {args.blocks} block(s) {seconds:g} s{" bf16" if args.bf16 else ""}: channels-first '
              f'{old:.3f} s, frames-first {new:.3f} s, ratio {new / old:.3f} ({1e3 * (old - new):+.0f} ms saved), '
              f'max relative diff {diff:.1e}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
