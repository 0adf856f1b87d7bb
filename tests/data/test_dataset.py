import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from modelscope_mossformer.data.dataset import (AugmentConfig, ExampleError, ManifestDataset, RowDataset,
                                                SeparationDataset, collate_separation, length_mask)
from modelscope_mossformer.data.manifest import Example

RATE = 8000


def _write_example(folder, name, seconds, num_spks=2, seed=0, source_seconds=None, amplitude=0.2):
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    sources = [(amplitude * rng.standard_normal(int((source_seconds or seconds) * RATE))).astype(np.float32)
               for _ in range(num_spks)]
    mix = np.sum([s[:n] for s in sources], axis=0) if source_seconds is None else rng.standard_normal(n) * 0.1
    paths = []
    for tag, data in [('mix', mix)] + [(f's{i + 1}', s) for i, s in enumerate(sources)]:
        path = folder / tag / f'{name}.wav'
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, np.asarray(data, np.float32), RATE, subtype='FLOAT')
        paths.append(path)
    return Example(name, paths[0], tuple(paths[1:]), f'list.csv:{seed + 2}')


@pytest.fixture
def examples(tmp_path):
    return [_write_example(tmp_path, f'u{i}', 0.5 + 0.25 * i, seed=i) for i in range(4)]


def test_manifest_dataset_reads_full_utterances(examples):
    dataset = ManifestDataset(examples, RATE)
    item = dataset[2]
    assert item['id'] == 'u2' and item['mix'].shape == (8000,) and item['sources'].shape == (2, 8000)
    torch.testing.assert_close(item['mix'], item['sources'].sum(0), atol=1e-6, rtol=0)


def test_training_items_are_random_segments_and_reproducible(examples):
    dataset = SeparationDataset(ManifestDataset(examples, RATE), RATE, segment_seconds=0.5, train=True, seed=3)
    first = dataset[3]
    assert first['mix'].shape == (4000,) and first['sources'].shape == (2, 4000)
    torch.testing.assert_close(first['mix'], first['sources'].sum(0), atol=1e-6, rtol=0)
    assert torch.equal(dataset[3]['mix'], first['mix'])  # same seed, epoch and index
    offsets = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        offsets.add(float(dataset[3]['mix'][0]))
    assert len(offsets) > 1  # each epoch crops elsewhere


def test_evaluation_items_are_full_utterances(examples):
    dataset = SeparationDataset(ManifestDataset(examples, RATE), RATE, segment_seconds=0.5, train=False)
    assert dataset[3]['mix'].shape == (10000,)


def test_collate_pads_and_keeps_lengths(examples):
    dataset = SeparationDataset(ManifestDataset(examples, RATE), RATE, train=False)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_separation)))
    assert batch['mix'].shape == (3, 8000) and batch['sources'].shape == (3, 2, 8000)
    assert batch['lengths'].tolist() == [4000, 6000, 8000]
    assert batch['ids'] == ['u0', 'u1', 'u2'] and batch['skipped'] == 0
    assert float(batch['mix'][0, 4000:].abs().max()) == 0.0
    mask = length_mask(batch['lengths'])
    assert mask.shape == (3, 8000)
    assert mask.sum(1).tolist() == batch['lengths'].tolist()


def test_dynamic_mixing_builds_new_exact_mixtures(examples):
    augment = AugmentConfig(dynamic_mixing=True, dm_gain_db=(-5.0, 5.0))
    dataset = SeparationDataset(ManifestDataset(examples, RATE), RATE, segment_seconds=0.4, augment=augment)
    mixtures = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        item = dataset[1]
        assert item['sources'].shape[0] == 2 and item['mix'].shape[-1] <= 3200
        torch.testing.assert_close(item['mix'], item['sources'].sum(0), atol=1e-6, rtol=0)
        mixtures.add(item['id'])
    assert len(mixtures) > 1


def test_speed_perturbation_and_gain_keep_the_sum(examples):
    augment = AugmentConfig(speed_perturb=True, speeds=(90.0,), random_gain_db=(-6.0, 6.0))
    dataset = SeparationDataset(ManifestDataset(examples, RATE), RATE, train=True, augment=augment)
    item = dataset[0]
    assert item['mix'].shape[-1] == pytest.approx(4000 / 0.9, abs=2)  # slower: longer
    torch.testing.assert_close(item['mix'], item['sources'].sum(0), atol=1e-5, rtol=0)


def test_speed_perturbation_keeps_the_residual_noise(tmp_path):
    example = _write_example(tmp_path, 'noisy', 0.5, seed=9, amplitude=0.05)  # no peak rescaling
    noise = np.full(4000, 0.05, np.float32)
    mix = soundfile.read(example.mix, dtype='float32')[0] + noise
    soundfile.write(example.mix, mix, RATE, subtype='FLOAT')
    dataset = SeparationDataset(ManifestDataset([example], RATE), RATE,
                                augment=AugmentConfig(speed_perturb=True, speeds=(100.0,)))
    item = dataset[0]
    residual = item['mix'] - item['sources'].sum(0)
    assert float(residual[100:-100].mean()) == pytest.approx(0.05, abs=2e-3)


def test_mismatched_lengths_name_the_example(tmp_path):
    bad = _write_example(tmp_path, 'bad', 0.5, source_seconds=0.6)
    with pytest.raises(ExampleError, match=r'list.csv:2: source lengths \[4800, 4800\] differ from the mixture '
                                           r'length 4000'):
        ManifestDataset([bad], RATE)[0]


def test_bad_examples_raise_or_are_skipped_and_counted(tmp_path, examples):
    missing = Example('gone', tmp_path / 'gone.wav', (tmp_path / 'a.wav', tmp_path / 'b.wav'), 'list.csv:9')
    base = ManifestDataset(examples + [missing], RATE)
    strict = SeparationDataset(base, RATE, train=False)
    with pytest.raises(ExampleError, match='list.csv:9: .*gone.wav: file not found'):
        strict[4]
    lenient = SeparationDataset(base, RATE, train=False, bad_example_policy='skip')
    batches = list(DataLoader(lenient, batch_size=5, collate_fn=collate_separation))
    assert batches[0]['skipped'] == 1 and len(batches[0]['ids']) == 4


def test_all_skipped_batch_is_empty():
    batch = collate_separation([None, None])
    assert batch['skipped'] == 2 and batch['mix'].shape[0] == 0


def test_row_dataset_accepts_modelscope_rows():
    rows = [{'mix_wav:FILE': '/x/abc.wav', 'mix_sig': torch.ones(100) * 2, 's1_sig': torch.ones(100),
             's2_sig': np.ones(100)}]
    item = RowDataset(rows, num_spks=2)[0]
    assert item['id'] == 'abc' and item['sources'].shape == (2, 100) and item['sources'].dtype == torch.float32
    with pytest.raises(ExampleError, match=r"row 0: missing field\(s\) \['s3_sig'\]"):
        RowDataset(rows, num_spks=3)[0]
    stereo = [{'mix_sig': torch.ones(100, 2), 's1_sig': torch.ones(100, 2), 's2_sig': torch.zeros(100, 2)}]
    assert RowDataset(stereo, num_spks=2)[0]['mix'].shape == (100,)


def test_workers_give_the_same_items(examples):
    dataset = SeparationDataset(ManifestDataset(examples, RATE), RATE, segment_seconds=0.3,
                                augment=AugmentConfig(dynamic_mixing=True))
    serial = [b['mix'] for b in DataLoader(dataset, batch_size=2, collate_fn=collate_separation)]
    parallel = [b['mix'] for b in DataLoader(dataset, batch_size=2, collate_fn=collate_separation, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
