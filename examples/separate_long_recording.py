"""Separate a long recording (any length, rate or channel count) with a trained model dir.

The recording is processed in overlapping chunks with speaker alignment between them, so memory depends on
the chunk length, not the file length; the outputs keep the input's sample rate and level.

    python examples/separate_long_recording.py --model train_dir/best_model --input meeting.wav --out separated/
    python examples/separate_long_recording.py --tiny        # smoke run: tiny model, 60 s demo recording
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import modelscope_mossformer  # noqa: F401
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks

from modelscope_mossformer.data.audio import read_audio, write_audio

from _common import add_common_arguments, demo_corpus, tiny_overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument('--model', type=Path, default=None, help='a model dir with weights')
    parser.add_argument('--input', type=Path, default=None, help='the recording')
    parser.add_argument('--out', type=Path, default=None, help='output folder')
    parser.add_argument('--chunk-seconds', type=float, default=8.0)
    parser.add_argument('--overlap-seconds', type=float, default=1.0)
    args = parser.parse_args()
    out = args.out or args.work_dir / 'separated'

    if args.model is None or args.input is None:
        from modelscope.models import Model

        from modelscope_mossformer.presets import write_model_dir

        corpus = demo_corpus(args.work_dir / 'demo_corpus', small=args.tiny)
        mixes = sorted((corpus.librimix_root / 'test' / 'mix_clean').glob('*.wav'))
        once = np.concatenate([read_audio(p).numpy() for p in mixes])
        long = np.tile(once, -(-60 * 8000 // once.size))[:60 * 8000]  # a 60 s recording
        args.input = write_audio(args.work_dir / 'long_recording.wav', long, 8000)
        if args.model is None:
            args.model = write_model_dir('mossformer_8k', args.work_dir / 'untrained',
                                         model=tiny_overrides('mossformer') if args.tiny else None).parent
            untrained = Model.from_pretrained(str(args.model.resolve()))
            untrained.save_model_dir(args.model)  # random weights: shows the mechanics only

    separation = pipeline(Tasks.speech_separation, model=str(args.model.resolve()),
                          chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds)
    result = separation(str(args.input))
    for index, wave in enumerate(result['waveforms']):
        path = write_audio(out / f'{args.input.stem}_s{index + 1}.wav', wave, result['sample_rate'])
        print(path)


if __name__ == '__main__':
    main()
