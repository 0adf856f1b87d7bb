"""Parameter count and CPU forward time: this package's models vs ModelScope's classes.

For MossFormer(L) and MossFormer2 at the released sizes, build ours (seed 0), copy
its weights into ModelScope's own class (the reference, via modelscope_mossformer.models.reference),
then:

* compare trainable parameter counts (must be equal);
* time the forward pass of both on the same batch, interleaved
  (ours, reference, ours, reference, ...) so that both see the same machine
  state, after one warm-up run each; report the median;
* report the largest absolute difference between the two outputs (must be < 1e-4).

Both run the same batch (2 by default, so that batched code paths are exercised).

    python bench/bench_models.py --seconds 4 --sample-rate 8000 --threads 2 --repeats 3 \
        --models mossformer,mossformer2 --json bench_models.json

Exit status 1 when a parameter count or an output differs.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from modelscope_mossformer.models import build_separator, mossformer2_base, mossformer_large
from modelscope_mossformer.models.reference import reference_forward, reference_with_weights_of

BATCH_SIZE = 2  # used for both models
MAX_ABS_DIFF = 1e-4
CONFIGS: Dict[str, Callable] = {'mossformer': mossformer_large, 'mossformer2': mossformer2_base}
LABELS = {'mossformer': 'MossFormer(L)', 'mossformer2': 'MossFormer2'}


def trainable_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def timed(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(name: str, seconds: float, sample_rate: int, repeats: int) -> Dict[str, object]:
    """Build ours and the reference for `name`, compare sizes, outputs and forward times."""
    config = CONFIGS[name](sample_rate=sample_rate)
    torch.manual_seed(0)
    ours = build_separator(config).eval()
    reference = reference_with_weights_of(ours)

    num_samples = int(round(seconds * sample_rate))
    generator = torch.Generator().manual_seed(1)
    mix = torch.randn(BATCH_SIZE, num_samples, generator=generator)  # [B, T]

    def run_ours() -> torch.Tensor:
        return ours(mix)  # [B, C, T]

    def run_reference() -> torch.Tensor:
        return reference_forward(reference, mix)  # [B, C, T]

    with torch.inference_mode():
        out_ours = run_ours()  # warm-up
        out_reference = run_reference()  # warm-up
        times_ours: List[float] = []
        times_reference: List[float] = []
        for _ in range(repeats):
            times_ours.append(timed(run_ours))
            times_reference.append(timed(run_reference))

    if out_ours.shape != out_reference.shape:
        raise RuntimeError(f'{name}: output shapes differ: ours {tuple(out_ours.shape)}, '
                           f'reference {tuple(out_reference.shape)}')
    max_abs_diff = (out_ours - out_reference).abs().max().item()
    median_ours = statistics.median(times_ours)
    median_reference = statistics.median(times_reference)
    return {
        'model': LABELS[name],
        'params_ours': trainable_parameters(ours),
        'params_reference': trainable_parameters(reference),
        'batch_size': BATCH_SIZE,
        'num_samples': num_samples,
        'output_shape': list(out_ours.shape),
        'max_abs_diff': max_abs_diff,
        'times_ours_s': times_ours,
        'times_reference_s': times_reference,
        'median_ours_s': median_ours,
        'median_reference_s': median_reference,
        'ratio_ours_over_reference': median_ours / median_reference,
    }


def print_table(rows: List[Dict[str, object]]) -> None:
    header = (f'{"model":<14} {"params ours":>12} {"params ref":>12} {"ours s":>8} {"ref s":>8} '
              f'{"ours/ref":>8} {"max|diff|":>10}')
    print(header)
    print('-' * len(header))
    for row in rows:
        print(f'{row["model"]:<14} {row["params_ours"]:>12,} {row["params_reference"]:>12,} '
              f'{row["median_ours_s"]:>8.3f} {row["median_reference_s"]:>8.3f} '
              f'{row["ratio_ours_over_reference"]:>8.3f} {row["max_abs_diff"]:>10.2e}')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seconds', type=float, default=4.0, help='audio length per example (default 4)')
    parser.add_argument('--sample-rate', type=int, default=8000, help='sample rate in Hz (default 8000)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads (default 2)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per model after one warm-up (default 3)')
    parser.add_argument('--models', default='mossformer,mossformer2',
                        help=f'comma-separated subset of {",".join(CONFIGS)}')
    parser.add_argument('--json', type=Path, default=None, help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(',') if m.strip()]
    unknown = [m for m in args.models if m not in CONFIGS]
    if unknown:
        parser.error(f'unknown model(s) {unknown}; choose from {list(CONFIGS)}')
    if args.repeats < 1:
        parser.error('--repeats must be at least 1')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}; '
          f'batch {BATCH_SIZE} for both models, '
          f'{args.seconds:g} s at {args.sample_rate} Hz, median of {args.repeats} interleaved runs '
          f'after one warm-up', flush=True)
    rows = []
    for name in args.models:
        print(f'benchmarking {LABELS[name]} ...', flush=True)
        rows.append(bench_model(name, args.seconds, args.sample_rate, args.repeats))
    print()
    print_table(rows)

    failures = []
    for row in rows:
        if row['params_ours'] != row['params_reference']:
            failures.append(f'{row["model"]}: parameter counts differ')
        if not row['max_abs_diff'] < MAX_ABS_DIFF:
            failures.append(f'{row["model"]}: max |ours - reference| = {row["max_abs_diff"]:.3e} >= {MAX_ABS_DIFF}')
    for failure in failures:
        print(f'FAIL {failure}')

    if args.json is not None:
        result = {'torch': torch.__version__, 'threads': args.threads, 'seconds': args.seconds,
                  'sample_rate': args.sample_rate, 'repeats': args.repeats, 'batch_size': BATCH_SIZE,
                  'results': rows, 'failures': failures}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + '\n')
        print(f'wrote {args.json}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
