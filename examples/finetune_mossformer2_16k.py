"""Fine-tune MossFormer2 at 16 kHz from a released checkpoint, on ClearerVoice-style scp lists.

`--init-checkpoint` takes any released format: ClearerVoice's MossFormer2_SS_16K checkpoint file (or the
folder with its `last_best_checkpoint` pointer), a ModelScope `pytorch_model.pt`, or a model dir.  Training
then starts from those weights at the fine-tune learning rate (5e-5 unless `--lr`).

    python examples/finetune_mossformer2_16k.py --init-checkpoint ckpt/MossFormer2_SS_16K \
        --train-scp tr.scp --valid-scp cv.scp
    python examples/finetune_mossformer2_16k.py --tiny --max-epochs 1   # smoke run on the demo corpus
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
    parser.add_argument('--init-checkpoint', type=Path, default=None, help='released weights to start from')
    parser.add_argument('--train-scp', type=Path, default=None)
    parser.add_argument('--valid-scp', type=Path, default=None)
    parser.add_argument('--lr', type=float, default=None, help='fine-tune learning rate (default 5e-5)')
    args = parser.parse_args()

    if args.train_scp is None:
        corpus = demo_corpus(args.work_dir / 'demo_corpus_16k', sample_rate=16000, small=args.tiny)
        args.train_scp, args.valid_scp = corpus.scp['train'], corpus.scp['validation']
    train = dict(TINY_TRAIN if args.tiny else {})
    if args.lr is not None:
        train['fine_tune_lr'] = args.lr
    model_dir = write_model_dir('mossformer2_16k', args.work_dir / 'mossformer2_16k',
                                model=tiny_overrides('mossformer2') if args.tiny else None, train=train).parent
    if args.init_checkpoint is None:
        # no released checkpoint given: make a ClearerVoice-style one so the example shows the whole path
        from modelscope.models import Model

        from modelscope_mossformer.models.checkpoint import save_clearervoice

        start = Model.from_pretrained(str(model_dir.resolve()))
        args.init_checkpoint = args.work_dir / 'released' / 'model.ckpt-0-0.pt'
        args.init_checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_clearervoice(start.separator, args.init_checkpoint, pointer='last_best_checkpoint')

    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), train_dataset=str(args.train_scp), eval_dataset=str(args.valid_scp),
        work_dir=str(args.work_dir / 'finetune_dir'), max_epochs=args.max_epochs,
        init_checkpoint=str(args.init_checkpoint), device=args.device))
    trainer.train()
    print(trainer.evaluate(None))


if __name__ == '__main__':
    main()
