"""Data-loader throughput vs the cost of the training step it feeds.

Measures examples per second through `SeparationDataset` + `DataLoader` for
random segments (default 4 s at 8 kHz), with and without dynamic mixing, with 0
and 2 worker processes, on the built-in demo corpus; then times one training
step (forward + backward + Adam) of a model on a batch of the same shape, and
prints data time / step time (well below 1 means the loader is not the
bottleneck).

    python bench/bench_data.py [--segment 4] [--batch-size 1] [--batches 40] [--model mossformer_l]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from modelscope_mossformer.data import (AugmentConfig, ManifestDataset, SeparationDataset, collate_separation,
                                        read_csv_manifest)
from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus
from modelscope_mossformer.models import NAMED_SIZES, build_separator


def loader_rate(dataset: SeparationDataset, batch_size: int, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=collate_separation, persistent_workers=False)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            dataset.set_epoch(dataset.epoch + 1)
            iterator = iter(loader)
            batch = next(iterator)
        seen += len(batch['ids'])
    return seen / (time.perf_counter() - start)


def train_step_seconds(model_name: str, batch_size: int, samples: int, num_spks: int) -> float:
    model = build_separator(NAMED_SIZES[model_name](num_spks=num_spks)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.5e-4)
    mix = torch.randn(batch_size, samples) * 0.1
    target = torch.randn(batch_size, num_spks, samples) * 0.1
    timings = []
    for _ in range(2):  # the first step warms up allocators
        start = time.perf_counter()
        loss = (model(mix) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - start)
    return timings[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--segment', type=float, default=4.0, help='segment seconds')
    parser.add_argument('--sample-rate', type=int, default=8000)
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--batches', type=int, default=40)
    parser.add_argument('--model', default='mossformer_l', choices=sorted(NAMED_SIZES))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--corpus', type=Path, default=None, help='reuse a demo corpus folder')
    parser.add_argument('--json', type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    root = args.corpus or Path(tempfile.mkdtemp(prefix='bench_data_'))
    spec = DemoCorpusSpec(sample_rate=args.sample_rate, train_mixtures=60, validation_mixtures=2, test_mixtures=2,
                          min_seconds=args.segment + 0.5, max_seconds=args.segment + 2.0)
    corpus = generate_demo_corpus(root, spec)
    base = ManifestDataset(read_csv_manifest(corpus.csv['train']), args.sample_rate)

    results = {}
    print(f'{args.segment:g} s segments at {args.sample_rate} Hz, batch {args.batch_size}, {args.batches} batches')
    print(f'{"dynamic mixing":>15} {"workers":>8} {"examples/s":>11} {"ms/example":>11}')
    for dynamic in (False, True):
        for workers in (0, 2):
            dataset = SeparationDataset(base, args.sample_rate, segment_seconds=args.segment, train=True,
                                        augment=AugmentConfig(dynamic_mixing=dynamic))
            rate = loader_rate(dataset, args.batch_size, workers, args.batches)
            results[f'dm={dynamic},workers={workers}'] = rate
            print(f'{str(dynamic):>15} {workers:>8} {rate:>11.1f} {1000 / rate:>11.2f}')

    step = train_step_seconds(args.model, args.batch_size, int(args.segment * args.sample_rate), spec.num_spks)
    slowest = min(results.values())
    ratio = (args.batch_size / slowest) / step
    print(f'{args.model} training step (batch {args.batch_size}): {step:.2f} s')
    print(f'slowest loader time per batch / training step time: {ratio:.4f}')
    if args.json:
        args.json.write_text(json.dumps({'examples_per_second': results, 'train_step_seconds': step,
                                         'loader_over_step': ratio}, indent=2))


if __name__ == '__main__':
    main()
