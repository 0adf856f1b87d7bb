"""Train a 3-speaker MossFormer (8 kHz) on a 3-speaker corpus (CSV, scp or LibriMix Libri3Mix folder).

    python examples/train_3spk.py --data Libri3Mix/ --valid-data Libri3Mix/   # LibriMix tree (train / dev)
    python examples/train_3spk.py --tiny --max-epochs 1                       # smoke run on the demo corpus
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import modelscope_mossformer  # noqa: F401
from modelscope.metainfo import Trainers
from modelscope.trainers import build_trainer

from modelscope_mossformer.presets import write_model_dir

from _common import TINY_TRAIN, add_common_arguments, demo_corpus, tiny_overrides

# this script owns its logging: INFO lines (fine-tuning source, checkpoints) go to work_dir/log.txt
logging.getLogger('modelscope_mossformer').setLevel(logging.INFO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument('--data', default=None, help='training CSV / scp / LibriMix folder')
    parser.add_argument('--valid-data', default=None, help='validation CSV / scp / LibriMix folder')
    args = parser.parse_args()

    if args.data is None:
        corpus = demo_corpus(args.work_dir / 'demo_corpus_3spk', num_spks=3, small=args.tiny)
        args.data, args.valid_data = str(corpus.root), str(corpus.root)  # the LibriMix tree it writes
    model = {'num_spks': 3, **(tiny_overrides('mossformer') if args.tiny else {})}
    model_dir = write_model_dir('mossformer_8k', args.work_dir / 'mossformer_3spk', model=model,
                                train=TINY_TRAIN if args.tiny else None).parent
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), train_dataset=args.data, eval_dataset=args.valid_data,
        work_dir=str(args.work_dir / 'train_3spk'), max_epochs=args.max_epochs, device=args.device))
    trainer.train()
    print(trainer.evaluate(None))


if __name__ == '__main__':
    main()
