"""Shared by the examples: tiny-model overrides for smoke runs and the demo corpus as stand-in data."""
from __future__ import annotations

import argparse
from pathlib import Path

# Small enough for a CPU smoke run; drop --tiny for the real sizes.
TINY_MODEL = {'enc_channels': 16, 'model_dim': 16, 'num_blocks': 1, 'group_size': 16, 'query_key_dim': 16,
              'fsmn_inner_channels': 16, 'fsmn_memory_order': 4}
TINY_TRAIN = {'segment_seconds': 0.5, 'batch_size': 2, 'progressbar': False}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', type=Path, default=Path('example_runs'), help='outputs go here')
    parser.add_argument('--max-epochs', type=int, default=None, help='epochs (the preset says 200)')
    parser.add_argument('--tiny', action='store_true', help='a tiny model for a quick smoke run')
    parser.add_argument('--device', default=None, help='cpu, cuda, cuda:1 ... (CUDA when available)')


def tiny_overrides(family: str) -> dict:
    if family == 'mossformer':
        return {k: v for k, v in TINY_MODEL.items() if not k.startswith('fsmn')}
    return dict(TINY_MODEL)


def demo_corpus(root: Path, sample_rate: int = 8000, num_spks: int = 2, small: bool = False):
    """The built-in demo corpus, generated once under `root`."""
    from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus

    counts = dict(train_mixtures=6, validation_mixtures=2, test_mixtures=2, min_seconds=0.6, max_seconds=0.9) \
        if small else {}
    return generate_demo_corpus(root, DemoCorpusSpec(sample_rate=sample_rate, num_spks=num_spks, **counts))
