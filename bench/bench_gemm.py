"""The float32 CPU GEMM backends (``models.gemm``: oneDNN and torch's BLAS), side by side.

One process; runs alternate between the backends so that both see the same machine state.
Prints, for the models' own GEMM shapes and then for whole forward passes (and, with
``--train``, training steps) of a released-size model: the median time under each backend,
their ratio and the largest difference between the two backends' outputs.

    python bench/bench_gemm.py --model mossformer --seconds 4
    python bench/bench_gemm.py --model mossformer2 --seconds 4 --train --repeats 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from bench_speed import CONFIGS, LABELS, RATE, config_of, cpu_name, interleaved, log  # bench/, this folder

from modelscope_mossformer.models import build_separator, gemm

BACKENDS = ('onednn', 'blas')


def _with_backend(backend: str, fn):
    def run():
        gemm.set_cpu_gemm_backend(backend)
        return fn()
    return run


def _compare(fns: Dict[str, object], repeats: int) -> Dict[str, object]:
    outputs: Dict[str, torch.Tensor] = {}
    for backend, fn in fns.items():
        fn()  # warm-up: oneDNN creates its primitives, glibc its arenas
    times = interleaved(fns, repeats, outputs)
    median = {backend: statistics.median(values) for backend, values in times.items()}
    difference = float((outputs['onednn'].double() - outputs['blas'].double()).abs().max())
    return {'onednn_s': median['onednn'], 'blas_s': median['blas'], 'ratio': median['onednn'] / median['blas'],
            'max_abs_diff': difference, 'times': times}


def gemm_shapes(name: str, frames: int) -> List[tuple]:
    """(label, M, K, N) of the float32 GEMMs in one block of `name` at `frames` frames."""
    config = config_of(name)
    dim, hidden, width = config.model_dim, int(config.model_dim * config.expansion_factor), config.query_key_dim
    shapes = [('to_hidden', frames, dim, hidden), ('to_qk', frames, dim, width),
              ('to_out', frames, hidden // 2, dim), ('linear attention output', frames, width, hidden),
              ('key-value summary', width, frames, hidden)]
    if name == 'mossformer2':
        inner = config.fsmn_inner_channels
        shapes += [('recurrent in', frames, dim, inner), ('gated projections', frames, inner, 2 * inner),
                   ('recurrent out', frames, inner, dim)]
    return shapes


def bench_shapes(name: str, frames: int, repeats: int) -> List[Dict[str, object]]:
    rows = []
    generator = torch.Generator().manual_seed(0)
    for label, m, k, n in gemm_shapes(name, frames):
        x = torch.randn(1, m, k, generator=generator)
        weight = torch.randn(n, k, generator=generator)
        with torch.no_grad():
            row = _compare({b: _with_backend(b, lambda: gemm.linear(x, weight)) for b in BACKENDS}, repeats * 5)
        row.update(label=label, shape=[m, k, n], gflops={b: 2 * m * k * n / row[f'{b}_s'] / 1e9 for b in BACKENDS})
        log(f'  {label:<24} [{m}, {k}] x [{k}, {n}]: oneDNN {row["onednn_s"] * 1e3:7.2f} ms '
            f'({row["gflops"]["onednn"]:5.0f} GFLOP/s), BLAS {row["blas_s"] * 1e3:7.2f} ms '
            f'({row["gflops"]["blas"]:5.0f} GFLOP/s), ratio {row["ratio"]:.3f}')
        rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', choices=list(CONFIGS), default='mossformer')
    parser.add_argument('--seconds', type=float, default=4.0, help='input length (default 4)')
    parser.add_argument('--repeats', type=int, default=3, help='runs per backend (default 3)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--num-blocks', type=int, default=None, help='default: the released 24')
    parser.add_argument('--train', action='store_true', help='also time a training step (forward, backward, Adam)')
    parser.add_argument('--json', type=Path, default=None, help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if not gemm.onednn_usable():
        print('this PyTorch build cannot run float32 GEMMs through oneDNN: nothing to compare', file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    samples = int(args.seconds * RATE)
    frames = (samples - config_of(args.model).enc_kernel_size) // config_of(args.model).stride + 1
    log(f'torch {torch.__version__}, {args.threads} threads, {cpu_name()}; auto picks '
        f'{gemm.set_cpu_gemm_backend("auto")}')
    result: Dict[str, object] = {'cpu': cpu_name(), 'threads': args.threads, 'model': LABELS[args.model],
                                 'seconds': args.seconds, 'auto': gemm.cpu_gemm_backend()}
    log(f'{LABELS[args.model]} block GEMMs at {frames} frames:')
    result['shapes'] = bench_shapes(args.model, frames, args.repeats)

    torch.manual_seed(0)
    model = build_separator(config_of(args.model, args.num_blocks)).eval()
    mix = 0.1 * torch.randn(1, samples, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        row = _compare({b: _with_backend(b, lambda: model(mix)) for b in BACKENDS}, args.repeats)
    result['forward'] = row
    log(f'{LABELS[args.model]} forward, {args.seconds:g} s: oneDNN {row["onednn_s"]:.3f} s, '
        f'BLAS {row["blas_s"]:.3f} s, ratio {row["ratio"]:.3f}, max|diff| {row["max_abs_diff"]:.2e}')
    if args.train:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)

        def step():
            model.zero_grad(set_to_none=True)
            out = model(mix)
            out.pow(2).mean().backward()
            optimizer.step()
            return out.detach()

        row = _compare({b: _with_backend(b, step) for b in BACKENDS}, args.repeats)
        del row['max_abs_diff']  # (the weights moved between the steps: outputs are not comparable)
        result['train'] = row
        log(f'{LABELS[args.model]} training step, {args.seconds:g} s: oneDNN {row["onednn_s"]:.3f} s, '
            f'BLAS {row["blas_s"]:.3f} s, ratio {row["ratio"]:.3f}')
    gemm.set_cpu_gemm_backend(None)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
        log(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
