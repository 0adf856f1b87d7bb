"""Multi-GPU (or multi-node) training with torchrun and DDP.

Launch one process per GPU; SpeechBrain wraps the model in DDP, shards the data with a distributed sampler,
and only rank 0 writes checkpoints and logs.  On CPU the gloo backend is used (that is how the test runs it).

    torchrun --nproc_per_node=4 examples/multi_gpu.py --train train.csv --valid validation.csv
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 examples/multi_gpu.py ...
    python -m torch.distributed.run --standalone --nproc_per_node=2 examples/multi_gpu.py --tiny --max-epochs 1
"""
from __future__ import annotations

import argparse
import logging
import os

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
    parser.add_argument('--train', default=None)
    parser.add_argument('--valid', default=None)
    args = parser.parse_args()
    rank = int(os.environ.get('RANK', '0'))
    if args.train is None:
        corpus_root = args.work_dir / 'demo_corpus'
        if rank == 0:
            demo_corpus(corpus_root, small=args.tiny)
        else:  # wait for rank 0's corpus
            import time

            while not (corpus_root / 'corpus.json').is_file() or 'complete' not in \
                    (corpus_root / 'corpus.json').read_text():
                time.sleep(0.5)
        args.train, args.valid = str(corpus_root / 'train.csv'), str(corpus_root / 'validation.csv')
    model_dir = args.work_dir / 'model'
    if rank == 0:
        write_model_dir('mossformer_8k', model_dir, model=tiny_overrides('mossformer') if args.tiny else None,
                        train=TINY_TRAIN if args.tiny else None)
    else:
        import time

        while not (model_dir / 'configuration.json').is_file():
            time.sleep(0.2)
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), train_dataset=args.train, eval_dataset=args.valid,
        work_dir=str(args.work_dir / 'ddp_dir'), max_epochs=args.max_epochs, device=args.device))
    trainer.train()


if __name__ == '__main__':
    main()
