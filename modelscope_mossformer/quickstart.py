"""The whole product in one run, offline, on a CPU, in minutes.

1. generates the built-in demo corpus (speech-like synthetic voices, 8 kHz, 2 speakers);
2. evaluates an untrained small MossFormer on the held-out test split (SI-SNRi before);
3. trains it through ModelScope's `build_trainer(Trainers.speech_separation, ...)`;
4. evaluates the best model on the test split (SI-SNRi after);
5. separates a held-out mixture with `pipeline(Tasks.speech_separation, ...)` into wav files;
6. plots the training curves and a spectrogram figure (mixture, references, estimates) as PNG.

    python -m modelscope_mossformer.quickstart --out demo_out [--epochs 12] [--train-mixtures 120]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .metainfo import TASK

logger = logging.getLogger(__name__)

DEMO_MODEL = {'type': 'speech_mossformer_separation_temporal_8k', 'enc_channels': 64, 'model_dim': 64,
              'num_blocks': 2, 'group_size': 64, 'query_key_dim': 32, 'enc_kernel_size': 16}
DEMO_TRAIN = {'lr': 3e-3, 'segment_seconds': 1.0, 'batch_size': 4, 'num_workers': 0,
              'lr_scheduler': {'dont_halve_until_epoch': 6}, 'seed': 1234}


def _trainer(model: Any, train_csv: Optional[Path], eval_csv: Path, work_dir: Path, epochs: int,
             progress: bool):
    import modelscope_mossformer  # noqa: F401 - registers the trainer
    from modelscope.metainfo import Trainers
    from modelscope.trainers import build_trainer

    return build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model), train_dataset=str(train_csv) if train_csv else None, eval_dataset=str(eval_csv),
        work_dir=str(work_dir), max_epochs=epochs, train={'progressbar': progress}))


def plot_curves(epochs: List[Dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    xs = [e['epoch'] for e in epochs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(xs, [e['train_loss'] for e in epochs], marker='o')
    left.set(title='training loss (negative SI-SNR, dB)', xlabel='epoch')
    right.plot(xs, [e['valid_si_snr'] for e in epochs], marker='o', color='tab:green')
    right.set(title='validation SI-SNR (dB)', xlabel='epoch')
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_spectrograms(mix: np.ndarray, references: np.ndarray, estimates: np.ndarray, sample_rate: int,
                      path: Path) -> Path:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [('mixture', mix)] + [(f'reference s{i + 1}', r) for i, r in enumerate(references)] + \
        [(f'estimate s{i + 1}', e) for i, e in enumerate(estimates)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.9 * len(rows)), sharex=True)
    dither = np.random.default_rng(0).standard_normal(len(mix)) * 1e-6  # digital silence has no log power
    for axis, (title, wave) in zip(axes, rows):
        axis.specgram(wave + dither[:len(wave)], NFFT=256, Fs=sample_rate, noverlap=192, cmap='magma', vmin=-120)
        axis.set_title(title, fontsize=9, loc='left')
        axis.set_ylabel('Hz')
    axes[-1].set_xlabel('seconds')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(out: Path, epochs: int = 12, train_mixtures: int = 120, progress: bool = True) -> Dict[str, Any]:
    """Run the demo; returns the figures and where everything is."""
    from modelscope.pipelines import pipeline

    from .data.audio import read_audio, write_audio
    from .data.manifest import read_csv_manifest
    from .data.synth import DemoCorpusSpec, generate_demo_corpus
    from .metrics import pit_si_snr, reorder
    from .model import model_configuration, write_configuration

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    corpus = generate_demo_corpus(out / 'corpus', DemoCorpusSpec(
        train_mixtures=train_mixtures, validation_mixtures=10, test_mixtures=10, min_seconds=1.5, max_seconds=2.5),
        progress=progress)
    model_dir = out / 'model'
    model_dir.mkdir(exist_ok=True)
    write_configuration(model_dir, model_configuration(DEMO_MODEL, train=DEMO_TRAIN))

    before = _trainer(model_dir, None, corpus.csv['test'], out / 'before', epochs, progress).evaluate(None)
    trainer = _trainer(model_dir, corpus.csv['train'], corpus.csv['validation'], out / 'train_dir', epochs,
                       progress)
    history = trainer.train()['epochs']
    best_dir = trainer.best_model_dir
    after = _trainer(best_dir, None, corpus.csv['test'], out / 'after', epochs, progress).evaluate(None)

    example = read_csv_manifest(corpus.csv['test'])[0]
    separation = pipeline(TASK, model=str(best_dir))
    result = separation(str(example.mix))
    separated_dir = out / 'separated'
    estimates = result['waveforms']
    written = [write_audio(separated_dir / f'{example.id}_s{i + 1}.wav', wave, result['sample_rate'])
               for i, wave in enumerate(estimates)]
    write_audio(separated_dir / f'{example.id}_mix.wav', read_audio(example.mix), result['sample_rate'])
    import torch

    references = torch.stack([read_audio(p) for p in example.sources])
    _, perm = pit_si_snr(torch.from_numpy(estimates)[None], references[None])
    ordered = reorder(torch.from_numpy(estimates)[None], perm)[0].numpy()

    figures = out / 'figures'
    figures.mkdir(exist_ok=True)
    curves = plot_curves(history, figures / 'training_curves.png') if history else None
    spectrograms = plot_spectrograms(read_audio(example.mix).numpy(), references.numpy(), ordered,
                                     result['sample_rate'], figures / 'spectrograms.png')
    summary = {'si-snri_before': before['si-snri'], 'si-snri_after': after['si-snri'],
               'sdri_before': before['sdri'], 'sdri_after': after['sdri'], 'epochs': len(history),
               'minutes': (time.monotonic() - started) / 60, 'corpus': str(corpus.root),
               'best_model': str(best_dir), 'separated': [str(p) for p in written],
               'training_curves': str(curves) if curves else None, 'spectrograms': str(spectrograms),
               'train_log': str(trainer.work_dir / 'train_log.txt')}
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m modelscope_mossformer.quickstart', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, default=Path('demo_out'), help='output folder (default demo_out)')
    parser.add_argument('--epochs', type=int, default=12, help='training epochs (default 12)')
    parser.add_argument('--train-mixtures', type=int, default=120, help='training mixtures (default 120)')
    parser.add_argument('--no-progress', action='store_true', help='hide progress bars')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    from .cli import set_speechbrain_level

    set_speechbrain_level(logging.WARNING)
    summary = run(args.out, epochs=args.epochs, train_mixtures=args.train_mixtures, progress=not args.no_progress)
    print(f"\nSI-SNRi on the held-out demo test split: {summary['si-snri_before']:.2f} dB before training, "
          f"{summary['si-snri_after']:.2f} dB after {summary['epochs']} epochs "
          f"(SDRi {summary['sdri_before']:.2f} -> {summary['sdri_after']:.2f} dB), "
          f"{summary['minutes']:.1f} min in total.")
    for key in ('corpus', 'best_model', 'train_log', 'training_curves', 'spectrograms'):
        print(f'{key:>16}: {summary[key]}')
    print(f"{'separated':>16}: {', '.join(summary['separated'])}")
    print(f"{'summary':>16}: {args.out / 'summary.json'}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
