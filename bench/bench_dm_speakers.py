"""How often dynamic mixing puts one speaker in two sources of a mixture, with and without speaker ids.

On two pools: the built-in demo corpus (its CSV names each source's voice) and a LibriMix-named tree made
here (``<spk>-<chapter>-<utt>_<spk>-<chapter>-<utt>.wav``, empty files: drawing reads no audio), whose
speakers hold LibriSpeech-like uneven utterance counts.  "without ids" is the same pool with the ids
dropped (the behaviour before speaker-aware mixing, and still the one for data without ids).  Then the time
of one dynamic-mixing item on the demo corpus with the default dB gains and with LUFS gains.

    python bench/bench_dm_speakers.py [--epochs 20] [--speakers 40] [--out DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

from tqdm.auto import tqdm

from modelscope_mossformer.data import AugmentConfig, ManifestDataset, SeparationDataset, load_manifest
from modelscope_mossformer.data.manifest import Example
from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus


def librimix_named_tree(root: Path, num_speakers: int, seed: int = 0) -> Path:
    """Empty files named like Libri2Mix's train-100: speakers with 5..60 utterances, paired across speakers."""
    rng = random.Random(seed)
    utterances = [f'{100 + s}-{1000 + s}-{u:04d}' for s in range(num_speakers) for u in range(rng.randint(5, 60))]
    rng.shuffle(utterances)
    split = root / 'wav8k' / 'min' / 'train-100'
    for folder in ('mix_clean', 's1', 's2'):
        (split / folder).mkdir(parents=True, exist_ok=True)
    for first, second in zip(utterances[0::2], utterances[1::2]):
        if first.split('-')[0] == second.split('-')[0]:
            continue  # LibriMix never mixes a speaker with itself
        for folder in ('mix_clean', 's1', 's2'):
            (split / folder / f'{first}_{second}.wav').touch()
    return root


def count_same_speaker(examples: Sequence[Example], with_ids: bool, epochs: int, label: str) -> Tuple[int, int]:
    """(mixtures drawn, mixtures with one speaker in two sources) over `epochs` epochs of dynamic mixing."""
    pool = examples if with_ids else [dataclasses.replace(e, speakers=None) for e in examples]
    dataset = SeparationDataset(ManifestDataset(pool, None), 8000, augment=AugmentConfig(dynamic_mixing=True))
    drawn = same = 0
    for epoch in tqdm(range(epochs), desc=label, leave=False):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            speakers = [examples[e].speakers[s] for e, s in dataset.draw_sources(index)]
            drawn += 1
            same += len(set(speakers)) < len(speakers)
    return drawn, same


def item_seconds(examples: Sequence[Example], sample_rate: int, loudness: str, items: int) -> float:
    augment = AugmentConfig(dynamic_mixing=True, dm_loudness=None if loudness == 'db' else 'lufs')
    dataset = SeparationDataset(ManifestDataset(examples, sample_rate), sample_rate, segment_seconds=4.0,
                                augment=augment)
    dataset[0]  # imports and caches outside the timing
    start = time.perf_counter()
    for index in range(items):
        dataset[index % len(dataset)]
    return (time.perf_counter() - start) / items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=20, help='epochs of draws per pool')
    parser.add_argument('--speakers', type=int, default=40, help='speakers of the LibriMix-named tree')
    parser.add_argument('--items', type=int, default=60, help='items timed per gain mode')
    parser.add_argument('--out', type=Path, default=None, help='folder for the corpora (a temporary one if unset)')
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix='bench_dm_speakers_'))
    corpus = generate_demo_corpus(root / 'demo', DemoCorpusSpec(train_mixtures=160, min_seconds=4.5,
                                                                max_seconds=6.0), progress=True)
    pools = {'demo corpus (train.csv)': load_manifest(corpus.csv['train']),
             'LibriMix-named tree': load_manifest(librimix_named_tree(root / 'librimix', args.speakers), split='train',
                                                  sample_rate=8000)}
    rows: List[str] = []
    for name, examples in pools.items():
        pool = ManifestDataset(examples, None).speaker_pool()
        counts = pool.counts
        drawn, with_ids = count_same_speaker(examples, True, args.epochs, f'{name}, ids')
        _, without = count_same_speaker(examples, False, args.epochs, f'{name}, no ids')
        rows.append(f'| {name} | {len(pool)} ({min(counts)}-{max(counts)} utterances each) | {drawn} | '
                    f'{with_ids} | {without} ({100 * without / drawn:.1f} %) |')
    print('| pool | speakers | mixtures drawn | same speaker, with ids | same speaker, without ids |')
    print('|---|---|---|---|---|')
    print('\n'.join(rows))
    demo = pools['demo corpus (train.csv)']
    for mode in ('db', 'lufs'):
        print(f'one 4 s dynamic-mixing item, {mode} gains: {1000 * item_seconds(demo, 8000, mode, args.items):.1f} ms')


if __name__ == '__main__':
    main()
