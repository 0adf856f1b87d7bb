"""Best single checkpoint vs the average of the N best: validation and test SI-SNR on the demo corpus.

One training run of a small MossFormer on a demo corpus of synthetic voices, with
``train.average_best`` set to the largest N asked for (so the N best checkpoints are kept).
Then, for each N (N = 1 is the best single checkpoint), `SpeechSeparationTrainer.average_best_checkpoints`
writes best_model/ from the mean of the N best checkpoints and measures its validation SI-SNR as
the trainer measures every epoch, and `trainer.evaluate` scores it on the held-out test split
(voices seen neither in training nor in validation; the checkpoints were chosen on validation,
so the test column is the fair one).

    python bench/bench_averaging.py --threads 1                    # about 8 minutes on one CPU core
    python bench/bench_averaging.py --threads 1 --halve-from 10 --patience 1   # halving the rate on plateaus
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus  # noqa: E402

SIZES = {  # (enc_channels = model_dim, num_blocks)
    'tiny': (32, 2),
    'small': (64, 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', choices=sorted(SIZES), default='tiny')
    parser.add_argument('--epochs', type=int, default=40)
    parser.add_argument('--average', default='2,3,5,8', help='comma-separated N to compare with the best single')
    parser.add_argument('--train-mixtures', type=int, default=96)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--segment', type=float, default=1.0, help='training crop seconds')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--halve-from', type=int, default=85,
                        help='lr_scheduler.dont_halve_until_epoch (the released 85: a constant rate in short runs)')
    parser.add_argument('--patience', type=int, default=2, help='lr_scheduler.patience')
    parser.add_argument('--seed', type=int, default=1234)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--work', type=Path, default=None, help='folder for the corpus and the run (default: temp)')
    parser.add_argument('--json', type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    counts = sorted({int(n) for n in args.average.split(',') if n.strip()} | {1})

    import modelscope_mossformer  # noqa: F401 - registers the trainer
    from modelscope.metainfo import Trainers
    from modelscope.trainers import build_trainer

    from modelscope_mossformer.cli import set_speechbrain_level

    set_speechbrain_level(logging.WARNING)

    root = args.work or Path(tempfile.mkdtemp(prefix='bench_averaging_'))
    corpus = generate_demo_corpus(root / 'corpus', DemoCorpusSpec(
        train_mixtures=args.train_mixtures, validation_mixtures=12, test_mixtures=12, min_seconds=1.5,
        max_seconds=2.5, seed=7))
    width, blocks = SIZES[args.size]
    model_dir = root / 'model'
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / 'configuration.json').write_text(json.dumps({
        'framework': 'pytorch', 'task': 'speech-separation',
        'model': {'type': 'speech_mossformer_separation_temporal_8k', 'enc_channels': width, 'model_dim': width,
                  'num_blocks': blocks, 'group_size': 16, 'query_key_dim': 16}}))
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), train_dataset=str(corpus.csv['train']), eval_dataset=str(corpus.csv['validation']),
        work_dir=str(root / 'work'), max_epochs=args.epochs, seed=args.seed, device='cpu',
        train={'lr': args.lr, 'segment_seconds': args.segment, 'batch_size': args.batch_size,
               'progressbar': False, 'average_best': max(counts),
               'lr_scheduler': {'dont_halve_until_epoch': args.halve_from, 'patience': args.patience}}))
    started = time.perf_counter()
    result = trainer.train()
    trained = time.perf_counter() - started
    valid = [e['valid_si_snr'] for e in result['epochs']]
    lrs = [e['lr'] for e in result['epochs']]
    print(f'{args.size} MossFormer ({sum(p.numel() for p in trainer.model.separator.parameters()):,} parameters), '
          f'{args.epochs} epochs on {args.train_mixtures} mixtures in {trained:.0f} s, lr {lrs[0]:g} -> {lrs[-1]:g}; '
          f'valid SI-SNR by epoch: {", ".join(f"{v:.2f}" for v in valid)}')
    rows = []
    for count in counts:
        trainer.eval_dataset = str(corpus.csv['validation'])
        summary = trainer.average_best_checkpoints(count, progress=False)
        trainer.eval_dataset = str(corpus.csv['test'])
        test = trainer.evaluate(None)
        rows.append({'n': len(summary['epochs']), 'epochs': summary['epochs'], 'valid_si_snr': summary['valid_si_snr'],
                     'test_si_snr': test['si-snr'], 'test_si_snri': test['si-snri']})
    single = rows[0]
    print(f'{"N":>3} {"valid SI-SNR":>13} {"gain":>7} {"test SI-SNRi":>13} {"gain":>7}  epochs averaged')
    for row in rows:
        print(f'{row["n"]:>3} {row["valid_si_snr"]:>13.3f} {row["valid_si_snr"] - single["valid_si_snr"]:>+7.3f} '
              f'{row["test_si_snri"]:>13.3f} {row["test_si_snri"] - single["test_si_snri"]:>+7.3f}  '
              f'{", ".join(map(str, row["epochs"]))}')
    if args.json:
        args.json.write_text(json.dumps({'args': {k: str(v) for k, v in vars(args).items()}, 'valid_by_epoch': valid,
                                         'train_seconds': trained, 'rows': rows}, indent=2) + '\n')


if __name__ == '__main__':
    main()
