"""Train and evaluate MossFormer as in the ModelScope article.

With the hub reachable this loads `Libri2Mix_8k` and the released model `damo/speech_mossformer_separation_temporal_8k`.
Offline it uses a local CSV (the built-in demo corpus stands in for Libri2Mix) and a local model dir.

    python examples/train_libri2mix.py                       # hub if reachable, else demo corpus
    python examples/train_libri2mix.py --csv-dir DIR         # DIR/train.csv, DIR/validation.csv
    python examples/train_libri2mix.py --tiny --max-epochs 1 # smoke run
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import modelscope_mossformer  # noqa: F401 - registers this package's components in ModelScope
from modelscope.metainfo import Trainers
from modelscope.msdatasets import MsDataset
from modelscope.trainers import build_trainer

from modelscope_mossformer import AudioBrainPreprocessor
from modelscope_mossformer.data.sources import hub_reachable
from modelscope_mossformer.presets import write_model_dir

from _common import TINY_TRAIN, add_common_arguments, demo_corpus, tiny_overrides

# this script owns its logging: INFO lines (fine-tuning source, checkpoints) go to work_dir/log.txt
logging.getLogger('modelscope_mossformer').setLevel(logging.INFO)

FIELDS = [('mix_wav:FILE', 'mix_sig'), ('s1_wav:FILE', 's1_sig'), ('s2_wav:FILE', 's2_sig')]


def hub_split(split: str):
    return MsDataset.load('Libri2Mix_8k', split=split).to_torch_dataset(
        preprocessors=[AudioBrainPreprocessor(takes=t, provides=p) for t, p in FIELDS], to_tensor=False)


def csv_split(csv: Path):
    """A local CSV through MsDataset, exactly like the hub dataset (relative paths resolved against the CSV)."""
    dataset = MsDataset.load('csv', data_files={'train': [str(csv)]}, split='train')
    return dataset.to_torch_dataset(preprocessors=[AudioBrainPreprocessor(takes=t, provides=p, root=csv.parent)
                                                   for t, p in FIELDS], to_tensor=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument('--csv-dir', type=Path, default=None, help='folder with train.csv and validation.csv')
    args = parser.parse_args()

    if args.csv_dir is None and hub_reachable() and not args.tiny:
        model, train_set, valid_set = 'damo/speech_mossformer_separation_temporal_8k', hub_split('train'), \
            hub_split('validation')
    else:
        csv_dir = args.csv_dir or demo_corpus(args.work_dir / 'demo_corpus', small=args.tiny).root
        model = write_model_dir('mossformer_8k', args.work_dir / 'model',
                                model=tiny_overrides('mossformer') if args.tiny else None,
                                train=TINY_TRAIN if args.tiny else None).parent
        train_set, valid_set = csv_split(csv_dir / 'train.csv'), csv_split(csv_dir / 'validation.csv')

    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model), train_dataset=train_set, eval_dataset=valid_set, work_dir=str(args.work_dir / 'train_dir'),
        max_epochs=args.max_epochs, device=args.device))
    trainer.train()
    trainer.model.load_check_point(device=trainer.device)
    print(trainer.evaluate(None))


if __name__ == '__main__':
    main()
