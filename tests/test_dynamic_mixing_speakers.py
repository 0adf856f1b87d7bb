"""Speaker ids of every source, and dynamic mixing that never puts one speaker in two sources of a mixture."""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import random
import sys
from collections import Counter
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import pytest
import soundfile
import torch
from scipy import stats

from modelscope_mossformer.data.dataset import (AugmentConfig, ExampleError, ManifestDataset, SeparationDataset,
                                                loudness_gain, loudness_meter)
from modelscope_mossformer.data.manifest import Example, ManifestError, load_manifest, write_csv_manifest
from modelscope_mossformer.data.speakers import (SpeakerPool, parse_demo_name, parse_librimix_name, parse_wsj0_name,
                                                 read_utt2spk, speakers_from_names)
from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus
from modelscope_mossformer.train_config import TrainConfig, released_spelling, resolve_train_config

RATE = 8000


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def librimix_tree(root: Path, mixtures: Sequence[Sequence[str]], seconds: float = 0.0) -> Path:
    """A ``wav8k/min/train-100`` tree whose mixtures are named after their utterances, LibriMix style.

    With `seconds` 0 the files are empty (enough for listing and drawing); otherwise quiet noise of that length.
    """
    split = root / 'wav8k' / 'min' / 'train-100'
    rng = np.random.default_rng(0)
    for utterances in mixtures:
        name = '_'.join(utterances) + '.wav'
        waves = [(0.02 * rng.standard_normal(int(seconds * RATE))).astype(np.float32) for _ in utterances]
        for folder, wave in [('mix_clean', np.sum(waves, axis=0))] + [(f's{i + 1}', w) for i, w in enumerate(waves)]:
            path = split / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if seconds:
                soundfile.write(path, np.asarray(wave, np.float32), RATE, subtype='FLOAT')
            else:
                path.touch()
    return root


def speaker_pairs(counts: dict, seed: int = 0) -> List[Tuple[str, str]]:
    """LibriMix-named utterance pairs in which speaker `s` has `counts[s]` utterances, the two of a pair
    always distinct speakers (as in LibriMix); counts must allow that."""
    rng = random.Random(seed)
    utterances = [f'{speaker}-{chapter}-{index:04d}' for speaker, n in counts.items() for chapter, index in
                  [(100 + i, i) for i in range(n)]]
    for _ in range(1000):
        rng.shuffle(utterances)
        pairs = list(zip(utterances[0::2], utterances[1::2]))
        if all(a.split('-')[0] != b.split('-')[0] for a, b in pairs):
            return pairs
    raise AssertionError('no pairing of distinct speakers found')


def dm_dataset(examples: Sequence[Example], **augment) -> SeparationDataset:
    """Training items of full utterances with dynamic mixing (unless `augment` turns it off)."""
    return SeparationDataset(ManifestDataset(examples, RATE), RATE, segment_seconds=None,
                             augment=AugmentConfig(**{'dynamic_mixing': True, **augment}), seed=7)


def drawn_speakers(dataset: SeparationDataset, truth: Sequence[Example], epochs: int) -> List[Tuple[str, ...]]:
    """The true speakers of every dynamic mixture drawn over `epochs` epochs (no audio is read)."""
    out = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            out.append(tuple(truth[e].speakers[s] for e, s in dataset.draw_sources(index)))
    return out


def same_speaker_draws(draws: Sequence[Tuple[str, ...]]) -> int:
    return sum(len(set(d)) < len(d) for d in draws)


def without_ids(examples: Sequence[Example]) -> List[Example]:
    return [dataclasses.replace(e, speakers=None) for e in examples]


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """A tiny demo corpus: 8 training mixtures of 0.6-1.0 s from 3 voices."""
    return generate_demo_corpus(tmp_path_factory.mktemp('dm') / 'corpus', DemoCorpusSpec(
        train_mixtures=8, validation_mixtures=1, test_mixtures=1, min_seconds=0.6, max_seconds=1.0, num_voices=7,
        validation_voices=2, test_voices=2))


# ---------------------------------------------------------------------------
# ids from file names
# ---------------------------------------------------------------------------


def test_librimix_names():
    assert parse_librimix_name('103-1240-0000_1034-121119-0049', 2) == ('103', '1034')
    assert parse_librimix_name('19-198-0001_26-495-0002_2911-12359-0000', 3) == ('19', '26', '2911')
    assert parse_librimix_name('103-1240-0000_1034-121119-0049', 3) is None  # two parts for three sources
    for stem in ('tr0003_v02-v07', '01aa010b_0.97482_209a010p_-0.97482', '103-1240_1034-121119-0049',
                 'mixture_0001', '103-1240-0000__1034-121119-0049'):
        assert parse_librimix_name(stem, 2) is None, stem


def test_wsj0_names():
    assert parse_wsj0_name('01aa010b_0.97482_209a010p_-0.97482', 2) == ('01a', '209')
    assert parse_wsj0_name('40na010x_1.6536_02bo0302_-1.6536_20do010c_0', 3) == ('40n', '02b', '20d')
    for stem in ('01aa010b_0.97482_209a010p', '01aa010b_x_209a010p_-0.97', '01aa010_0.9_209a010p_-0.9',
                 '103-1240-0000_1034-121119-0049', '01aa010b_nan_209a010p_0'):
        assert parse_wsj0_name(stem, 2) is None, stem


def test_demo_names():
    assert parse_demo_name('tr0003_v02-v07', 2) == ('v02', 'v07')
    assert parse_demo_name('cv12_v1-v2-v3', 3) == ('v1', 'v2', 'v3')
    assert parse_demo_name('tr0003_v02-v07', 3) is None
    assert parse_demo_name('xx0003_v02-v07', 2) is None


def test_a_naming_counts_only_when_every_mixture_follows_it():
    assert speakers_from_names(['103-1-0_19-2-3', '26-4-1_103-1-1'], 2) == ('LibriMix', [('103', '19'), ('26', '103')])
    assert speakers_from_names(['103-1-0_19-2-3', 'my_mixture'], 2) is None


def test_librimix_tree_gets_ids_from_its_file_names(tmp_path):
    librimix_tree(tmp_path, [('103-1240-0000', '1034-121119-0049'), ('19-198-0001', '103-1240-0002')])
    examples = load_manifest(tmp_path, split='train', sample_rate=RATE)
    assert [e.speakers for e in examples] == [('103', '1034'), ('19', '103')]


def test_wsj0_csv_gets_ids_from_the_mixture_names(tmp_path):
    (tmp_path / 'wsj.csv').write_text('mix_wav:FILE,s1_wav:FILE,s2_wav:FILE\n'
                                      'mix/01aa010b_0.97482_209a010p_-0.97482.wav,s1/a.wav,s2/a.wav\n'
                                      'mix/20do010c_1.2_40na010x_-1.2.wav,s1/b.wav,s2/b.wav\n')
    assert [e.speakers for e in load_manifest(tmp_path / 'wsj.csv')] == [('01a', '209'), ('20d', '40n')]


def test_names_that_follow_no_naming_give_no_ids(tmp_path):
    (tmp_path / 'm.csv').write_text('mix_wav:FILE,s1_wav:FILE,s2_wav:FILE\nm/x.wav,a/x.wav,b/x.wav\n')
    assert load_manifest(tmp_path / 'm.csv')[0].speakers is None


# ---------------------------------------------------------------------------
# CSV columns and utt2spk
# ---------------------------------------------------------------------------


def test_csv_speaker_columns_and_their_round_trip(tmp_path):
    (tmp_path / 'm.csv').write_text('mix_wav:FILE,s1_wav:FILE,s2_wav:FILE,s1_spk,s2_spk\n'
                                    'm/1.wav,a/1.wav,b/1.wav, anna ,bob\nm/2.wav,a/2.wav,b/2.wav,carl,anna\n')
    examples = load_manifest(tmp_path / 'm.csv')
    assert [e.speakers for e in examples] == [('anna', 'bob'), ('carl', 'anna')]
    write_csv_manifest(examples, tmp_path / 'copy.csv')
    header = (tmp_path / 'copy.csv').read_text().splitlines()[0]
    assert header == 'id,mix_wav:FILE,s1_wav:FILE,s2_wav:FILE,s1_spk,s2_spk'
    assert [e.speakers for e in load_manifest(tmp_path / 'copy.csv')] == [('anna', 'bob'), ('carl', 'anna')]


@pytest.mark.parametrize('content, match', [
    ('mix_wav,s1_wav,s2_wav,s1_spk\nm,a,b,x\n',
     r"m\.csv:1: speaker columns must be s1_spk,s2_spk \(one per source\) or none; found \['s1_spk'\]"),
    ('mix_wav,s1_wav,s2_wav,s1_spk,s2_spk,s3_spk\nm,a,b,x,y,z\n', r"m\.csv:1: speaker columns must be s1_spk,s2_spk"),
    ('mix_wav,s1_wav,s2_wav,s1_spk,s2_spk\nm,a,b,x,y\nm2,a2,b2,x, \n', r'm\.csv:3: s2_spk: empty speaker id'),
    ('mix_wav,s1_wav,s2_wav,s1_spk,s2_spk\nm,a,b,x y,z\n', r"m\.csv:2: s1_spk: speaker id 'x y' holds whitespace"),
    ('mix_wav,s1_wav,s2_wav,s1_spk,s2_spk\nm,a,b,x,y\nm2,a,c,z,y\n',
     r"m\.csv:3 \(s1_spk\): source .*a is speaker 'z', but .*m\.csv:2 \(s1_spk\) makes it 'x'"),
])
def test_bad_csv_speaker_ids_name_file_and_line(tmp_path, content, match):
    (tmp_path / 'm.csv').write_text(content)
    with pytest.raises(ManifestError, match=match):
        load_manifest(tmp_path / 'm.csv')


def test_utt2spk_by_file_stem_found_beside_the_list(tmp_path):
    (tmp_path / 'train.scp').write_text('mix/m1.wav clean/u1.wav clean/u2.wav\nmix/m2.wav clean/u3.wav clean/u1.wav\n')
    (tmp_path / 'utt2spk').write_text('# utterance speaker\nu1 s_a\nu2 s_b\n\nu3 s_c\n')
    assert [e.speakers for e in load_manifest(tmp_path / 'train.scp')] == [('s_a', 's_b'), ('s_c', 's_a')]
    # <list stem>.utt2spk comes before utt2spk; an explicit file before both
    (tmp_path / 'train.utt2spk').write_text('u1 A\nu2 B\nu3 C\n')
    assert load_manifest(tmp_path / 'train.scp')[0].speakers == ('A', 'B')
    (tmp_path / 'other').write_text('u1 X\nu2 Y\nu3 Z\n')
    assert load_manifest(tmp_path / 'train.scp', utt2spk=tmp_path / 'other')[1].speakers == ('Z', 'X')


def test_utt2spk_folder_and_stem_keys_for_trees_whose_sources_share_a_name(tmp_path):
    root = librimix_tree(tmp_path, [('103-1240-0000', '1034-121119-0049')])
    split = root / 'wav8k' / 'min' / 'train-100'
    (split / 'utt2spk').write_text('s1/103-1240-0000_1034-121119-0049 first\n'
                                   's2/103-1240-0000_1034-121119-0049 second\n')
    assert load_manifest(root, split='train', sample_rate=RATE)[0].speakers == ('first', 'second')


def test_a_mixture_level_utt2spk_names_no_source(tmp_path, caplog):
    # Kaldi / ESPnet wsj0-2mix folders key utt2spk by mixture id, which is also the stem of s1/ and s2/ files:
    # it cannot say which source is whose, so the names decide
    stem = '01aa010b_0.97482_209a010p_-0.97482'
    (tmp_path / 'tr.scp').write_text(f'mix/{stem}.wav s1/{stem}.wav s2/{stem}.wav\n')
    (tmp_path / 'utt2spk').write_text(f'{stem} {stem}\n')
    with caplog.at_level(logging.WARNING, logger='modelscope_mossformer'):
        assert load_manifest(tmp_path / 'tr.scp')[0].speakers == ('01a', '209')
    assert any('names none of the 2 source(s)' in r.getMessage() for r in caplog.records)


def test_precedence_csv_column_then_utt2spk_then_names(tmp_path):
    names = 'm/103-1-0_19-2-3.wav,a/u1.wav,b/u2.wav'
    (tmp_path / 'plain.csv').write_text(f'mix_wav,s1_wav,s2_wav\n{names}\n')
    assert load_manifest(tmp_path / 'plain.csv')[0].speakers == ('103', '19')  # names
    (tmp_path / 'plain.utt2spk').write_text('u1 X\n')
    assert load_manifest(tmp_path / 'plain.csv')[0].speakers == ('X', '19')  # utt2spk over names
    (tmp_path / 'cols.csv').write_text(f'mix_wav,s1_wav,s2_wav,s1_spk,s2_spk\n{names},X,Q\n')
    (tmp_path / 'cols.utt2spk').write_text('u1 X\n')
    assert load_manifest(tmp_path / 'cols.csv')[0].speakers == ('X', 'Q')  # the column over utt2spk and names


@pytest.mark.parametrize('utt2spk, match', [
    ('u1 A\nu2\n', r'utt2spk:2: 1 field\(s\) in .u2., expected "<utterance-id> <speaker-id>"'),
    ('u1 A extra\n', r'utt2spk:1: 3 field\(s\)'),
    ('u1 A\nu2 B\nu1 C\n', r"utt2spk:3: utterance 'u1' is given speaker 'C', but .*utt2spk:1 gives it 'A'"),
    ('# nothing\n', r'utt2spk: no entries'),
])
def test_bad_utt2spk_names_file_and_line(tmp_path, utt2spk, match):
    (tmp_path / 'm.scp').write_text('m.wav u1.wav u2.wav\n')
    (tmp_path / 'utt2spk').write_text(utt2spk)
    with pytest.raises(ManifestError, match=match):
        load_manifest(tmp_path / 'm.scp')


def test_a_csv_column_and_utt2spk_that_disagree_are_an_error(tmp_path):
    (tmp_path / 'm.csv').write_text('mix_wav,s1_wav,s2_wav,s1_spk,s2_spk\nm.wav,u1.wav,u2.wav,A,B\n')
    (tmp_path / 'utt2spk').write_text('u1 A\nu2 C\n')
    with pytest.raises(ManifestError, match=r"m\.csv:2: s2_spk is 'B' but .*utt2spk:2 gives u2\.wav speaker 'C'"):
        load_manifest(tmp_path / 'm.csv')
    with pytest.raises(ManifestError, match='utt2spk file not found'):
        load_manifest(tmp_path / 'm.csv', utt2spk=tmp_path / 'missing')
    assert read_utt2spk(tmp_path / 'utt2spk').entries == {'u1': ('A', 1), 'u2': ('C', 2)}


# ---------------------------------------------------------------------------
# the demo corpus
# ---------------------------------------------------------------------------


def test_demo_corpus_names_every_source_in_csv_scp_and_tree(demo):
    for split in ('train', 'validation', 'test'):
        with open(demo.csv[split], newline='') as handle:
            rows = list(csv.DictReader(handle))
        from_csv = [e.speakers for e in load_manifest(demo.csv[split])]
        assert from_csv == [(row['s1_spk'], row['s2_spk']) for row in rows]
        assert from_csv == [tuple(Path(row['mix_wav:FILE']).stem.split('_')[1].split('-')) for row in rows]
        assert [e.speakers for e in load_manifest(demo.scp[split])] == from_csv
        assert [e.speakers for e in load_manifest(demo.librimix_root, split=split, sample_rate=RATE)] == from_csv
    import json
    record = json.loads((demo.root / 'corpus.json').read_text())
    train_ids = {s for e in load_manifest(demo.csv['train']) for s in e.speakers}
    assert train_ids == set(record['splits']['train']['voices'])


def test_a_demo_csv_written_before_the_speaker_columns_still_reads(demo, tmp_path):
    with open(demo.csv['train'], newline='') as handle:
        rows = list(csv.reader(handle))
    old = tmp_path / 'old.csv'
    old.write_text('\n'.join(','.join(str((demo.root / cell).resolve()) for cell in row[:3]) if i else
                             ','.join(row[:3]) for i, row in enumerate(rows)) + '\n')
    assert [e.speakers for e in load_manifest(old)] == [e.speakers for e in load_manifest(demo.csv['train'])]


# ---------------------------------------------------------------------------
# dynamic mixing
# ---------------------------------------------------------------------------


def test_with_ids_no_mixture_repeats_a_speaker_and_without_ids_many_do(tmp_path):
    # 3 speakers holding 6, 3 and 3 utterances: a random second source shares the first one's speaker with
    # probability about sum(w^2) = 0.375, so 600 draws without ids give ~225 collisions; the chance of none
    # is below 0.7^600 (1e-93)
    librimix_tree(tmp_path, speaker_pairs({'11': 6, '22': 3, '33': 3}))
    examples = load_manifest(tmp_path, split='train', sample_rate=RATE)
    assert all(e.speakers for e in examples)
    with_ids = drawn_speakers(dm_dataset(examples), examples, epochs=100)
    without = drawn_speakers(dm_dataset(without_ids(examples)), examples, epochs=100)
    assert len(with_ids) == len(without) == 600
    assert same_speaker_draws(with_ids) == 0
    assert same_speaker_draws(without) > 100


def test_three_speakers_per_mixture_and_too_few_speakers(tmp_path):
    librimix_tree(tmp_path / 'three', [('1-1-1', '2-1-1', '3-1-1'), ('1-1-2', '2-1-2', '3-1-2')])
    examples = load_manifest(tmp_path / 'three', split='train', sample_rate=RATE)
    draws = drawn_speakers(dm_dataset(examples), examples, epochs=50)
    assert all(sorted(d) == ['1', '2', '3'] for d in draws)
    librimix_tree(tmp_path / 'two', [('1-1-1', '2-1-1', '1-1-3'), ('1-1-2', '2-1-2', '2-1-3')])
    examples = load_manifest(tmp_path / 'two', split='train', sample_rate=RATE)
    with pytest.raises(ValueError, match=r'dynamic mixing of 3 distinct speakers needs at least 3 speakers in the '
                                         r'training pool, found 2 \(1, 2\)'):
        dm_dataset(examples)
    dm_dataset(examples, dynamic_mixing=False)  # no dynamic mixing, no pool needed


def test_a_pool_where_only_some_sources_have_ids_is_refused(tmp_path):
    examples = [Example('a', tmp_path / 'a.wav', (tmp_path / 'a1.wav', tmp_path / 'a2.wav'), 'x.csv:2', ('p', 'q')),
                Example('b', tmp_path / 'b.wav', (tmp_path / 'b1.wav', tmp_path / 'b2.wav'), 'x.csv:3', ('p', None))]
    with pytest.raises(ExampleError, match=r'x\.csv:3: source 2 \(.*b2\.wav\) has no speaker id while other sources '
                                           r'have one \(1 of 2 examples lack ids\)'):
        dm_dataset(examples)


def test_speaker_draws_follow_utterance_counts():
    # 10 examples over 5 speakers with 1, 2, 3, 4 and 10 utterances; 20000 draws without any audio
    counts = {'a': 1, 'b': 2, 'c': 3, 'd': 4, 'e': 10}
    pool = [s for s, n in counts.items() for _ in range(n)]
    random.Random(1).shuffle(pool)
    examples = [Example(f'x{i}', Path(f'm{i}.wav'), (Path(f'u{2 * i}.wav'), Path(f'u{2 * i + 1}.wav')), '',
                        (pool[2 * i], pool[2 * i + 1])) for i in range(10)]
    dataset = dm_dataset(examples)
    assert dataset.pool.speakers == ('a', 'b', 'c', 'd', 'e') and dataset.pool.counts == (1, 2, 3, 4, 10)
    draws, utterances = [], Counter()
    for epoch in range(2000):
        dataset.set_epoch(epoch)
        for index in range(10):
            picks = dataset.draw_sources(index)
            draws.append(tuple(examples[e].speakers[s] for e, s in picks))
            utterances.update(picks)
    total = len(draws)
    weights = {s: n / sum(counts.values()) for s, n in counts.items()}
    assert same_speaker_draws(draws) == 0
    # the first speaker is drawn with probability w_s: a chi-square goodness-of-fit test (4 degrees of freedom)
    # at the 0.1 % level; a correct sampler fails it for one seed in a thousand, and this seed is fixed
    first = Counter(d[0] for d in draws)
    chi2 = sum((first[s] - total * w) ** 2 / (total * w) for s, w in weights.items())
    assert chi2 < stats.chi2.ppf(0.999, df=4)
    # a speaker is in a mixture with P = w_s + sum_{t != s} w_t w_s / (1 - w_t) (drawn first, or second from
    # the rest); each count within 4 binomial standard deviations (two-sided 6e-5 per speaker)
    included = Counter(s for d in draws for s in d)
    for s, w in weights.items():
        p = w + sum(v * w / (1 - v) for t, v in weights.items() if t != s)
        assert abs(included[s] - total * p) < 4 * math.sqrt(total * p * (1 - p)), s
    # and each utterance of a speaker equally often: chi-square over the 10 utterances of 'e' (9 dof, 0.1 %)
    of_e = [n for (e, s), n in utterances.items() if examples[e].speakers[s] == 'e']
    assert len(of_e) == 10
    mean = sum(of_e) / 10
    assert sum((n - mean) ** 2 / mean for n in of_e) < stats.chi2.ppf(0.999, df=9)


def test_a_file_listed_twice_counts_once():
    shared = Path('u1.wav')
    examples = [Example('x', Path('m1.wav'), (shared, Path('u2.wav')), '', ('a', 'b')),
                Example('y', Path('m2.wav'), (shared, Path('u3.wav')), '', ('a', 'b'))]
    pool = SpeakerPool.from_examples(examples)
    assert pool.speakers == ('a', 'b') and pool.utterances == (((0, 0),), ((0, 1), (1, 1)))


def test_draws_are_reproducible_per_seed_epoch_and_index(tmp_path):
    librimix_tree(tmp_path, speaker_pairs({'11': 4, '22': 4, '33': 4, '44': 4}))
    examples = load_manifest(tmp_path, split='train', sample_rate=RATE)
    first, again = dm_dataset(examples), dm_dataset(examples)
    per_epoch = []
    for epoch in range(3):
        first.set_epoch(epoch)
        again.set_epoch(epoch)
        draws = [first.draw_sources(i) for i in range(len(first))]
        assert draws == [again.draw_sources(i) for i in range(len(again))]
        per_epoch.append(draws)
    assert per_epoch[0] != per_epoch[1] != per_epoch[2]


def test_items_mix_the_drawn_sources_exactly(tmp_path):
    librimix_tree(tmp_path, speaker_pairs({'11': 2, '22': 2, '33': 2}), seconds=0.25)
    examples = load_manifest(tmp_path, split='train', sample_rate=RATE)
    dataset = dm_dataset(examples)
    base = ManifestDataset(examples, RATE)
    for index in range(len(dataset)):
        item = dataset[index]
        assert item['dm_sources'] == dataset.draw_sources(index)
        assert len({examples[e].speakers[s] for e, s in item['dm_sources']}) == 2
        torch.testing.assert_close(item['mix'], item['sources'].sum(0), atol=1e-6, rtol=0)
        for row, (e, s) in zip(item['sources'], item['dm_sources']):  # each source is a scaled drawn file
            original = base.read_source(e, s)
            gain = float(row @ original) / float(original @ original)
            assert 10 ** (-5 / 20) - 1e-4 < gain < 10 ** (5 / 20) + 1e-4  # within dm_gain_db
            torch.testing.assert_close(row, gain * original, atol=1e-5, rtol=0)


def test_without_ids_a_warning_is_logged_once(tmp_path, caplog):
    librimix_tree(tmp_path, speaker_pairs({'11': 2, '22': 2}), seconds=0.25)
    examples = without_ids(load_manifest(tmp_path, split='train', sample_rate=RATE))
    with caplog.at_level(logging.INFO, logger='modelscope_mossformer'):
        dataset = dm_dataset(examples)
        for index in range(len(dataset)):
            dataset[index]
    warnings = [r for r in caplog.records if 'may come from the same speaker' in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='modelscope_mossformer'):
        dm_dataset(load_manifest(tmp_path, split='train', sample_rate=RATE))
    assert not [r for r in caplog.records if 'may come from the same speaker' in r.getMessage()]
    assert any('2 distinct speakers per mixture from 2 speakers (4 utterances)' in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------
# loudness-normalised gains
# ---------------------------------------------------------------------------


def test_lufs_gains_hit_a_fixed_target(demo):
    import pyloudnorm

    meter = pyloudnorm.Meter(RATE)
    examples = load_manifest(demo.csv['train'])
    dataset = SeparationDataset(ManifestDataset(examples, RATE), RATE, segment_seconds=0.6, seed=3,
                                augment=AugmentConfig(dynamic_mixing=True, dm_loudness='lufs',
                                                      dm_loudness_lufs=(-28.0, -28.0)))
    for index in range(len(dataset)):
        item = dataset[index]
        assert float(item['mix'].abs().max()) < 0.99  # no peak rescaling, so each source keeps its gain
        for source in item['sources']:
            # integrated loudness is scale-covariant (both gates move with the signal) except for blocks that
            # cross the absolute -70 LUFS gate, whose energy is > 40 dB below the mean here: 0.01 LU holds
            # with a wide margin (float32 storage alone errs by ~1e-6 LU)
            assert meter.integrated_loudness(source.double().numpy()) == pytest.approx(-28.0, abs=0.01)


def test_lufs_targets_spread_over_librimix_range(demo):
    import pyloudnorm

    meter = pyloudnorm.Meter(RATE)
    dataset = SeparationDataset(ManifestDataset(load_manifest(demo.csv['train']), RATE), RATE,
                                segment_seconds=0.6, augment=AugmentConfig(dynamic_mixing=True, dm_loudness='lufs'))
    levels = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            if float(item['mix'].abs().max()) < 0.99:
                levels += [meter.integrated_loudness(s.double().numpy()) for s in item['sources']]
    assert len(levels) > 150
    # every target is in LibriMix's [-33, -25] LUFS (0.01 LU as above); with > 150 uniform draws over 8 LU,
    # the chance that none falls in the lowest (or highest) 1 LU is below (7/8)^150 = 2e-9
    assert all(-33.01 <= level <= -24.99 for level in levels)
    assert min(levels) < -32 and max(levels) > -26


def test_loudness_gain_edge_cases():
    meter = loudness_meter(RATE)
    with pytest.raises(ExampleError, match=r'example 3: 3200 sample\(s\), too short to measure its loudness'):
        loudness_gain(torch.ones(3200), -28.0, meter, 'example 3')
    assert loudness_gain(torch.zeros(8000), -28.0, meter) == 1.0  # silence stays silent
    noise = torch.randn(8000, generator=torch.Generator().manual_seed(0)) * 0.1
    louder = loudness_gain(noise, -20.0, meter) / loudness_gain(noise, -26.0, meter)
    assert louder == pytest.approx(10 ** (6 / 20), rel=1e-9)  # 6 LU apart is 6 dB of gain


def test_missing_pyloudnorm_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'pyloudnorm', None)
    librimix_tree(tmp_path, speaker_pairs({'11': 2, '22': 2}))
    examples = load_manifest(tmp_path, split='train', sample_rate=RATE)
    with pytest.raises(ImportError, match=r"needs the 'pyloudnorm' package: pip install "
                                          r"'modelscope_mossformer\[loudness\]'"):
        dm_dataset(examples, dm_loudness='lufs')
    dm_dataset(examples)  # the default dB gains need no pyloudnorm


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


def test_loudness_keys_in_the_train_section():
    cfg = resolve_train_config(({'augment': {'dynamic_mixing': True, 'dm_loudness': 'LUFS'}}, 'a.json'))
    assert cfg['augment']['dm_loudness'] == 'lufs' and cfg['augment']['dm_loudness_lufs'] is None
    typed = TrainConfig.from_dict(cfg)
    assert typed.augment.dm_loudness == 'lufs' and typed.augment.loudness_range == (-33.0, -25.0)
    written = released_spelling(resolve_train_config(({'augment': {'dm_loudness_lufs': [-30, -24]}}, 'a.json')))
    assert written['augment']['dm_loudness_lufs'] == [-30, -24]
    assert resolve_train_config((written, 'written'))['augment']['dm_loudness_lufs'] == [-30, -24]
    assert AugmentConfig().dm_loudness is None  # the default keeps the random dB gains


@pytest.mark.parametrize('augment, match', [
    ({'dm_loudness': 'rms'}, r"a\.json: train\.augment\.dm_loudness must be null \(random dm_gain_db gains\) or one "
                             r"of \['lufs'\], got 'rms'"),
    ({'dm_loudness_lufs': [-20, -30]}, r'a\.json: train\.augment\.dm_loudness_lufs must be \[low, high\] finite LUFS '
                                       r'with low <= high'),
    ({'dm_loudness_lufs': [-20]}, r'train\.augment\.dm_loudness_lufs must be'),
    ({'dm_loudness_lufs': ['-30', -20]}, r'train\.augment\.dm_loudness_lufs must be'),
    ({'dm_loudnes': 'lufs'}, r'unknown configuration key train\.augment\.dm_loudnes'),
])
def test_bad_loudness_keys_are_refused_naming_the_key(augment, match):
    with pytest.raises(ValueError, match=match):
        resolve_train_config(({'augment': augment}, 'a.json'))
