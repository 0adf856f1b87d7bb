"""Every dataset source gives the same items; the hub fails fast and clearly when unreachable."""
import time

import pytest
import torch

from modelscope_mossformer.data import sources
from modelscope_mossformer.data.sources import HubUnavailableError, load_split, msdataset_from_csv
from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    spec = DemoCorpusSpec(train_mixtures=4, validation_mixtures=2, test_mixtures=2, min_seconds=0.6,
                          max_seconds=1.0, seed=5)
    return generate_demo_corpus(tmp_path_factory.mktemp('demo'), spec)


def _items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def test_csv_scp_librimix_and_msdataset_agree(corpus):
    from_csv = _items(load_split(corpus.csv['validation'], 'validation'))
    from_scp = _items(load_split(corpus.scp['validation'], 'validation'))
    from_tree = _items(load_split(corpus.root, 'validation'))
    from_ms = _items(msdataset_from_csv(corpus.csv['validation'], num_spks=2, sample_rate=8000, split='validation'))
    assert len(from_csv) == 2
    for others in (from_scp, from_tree, from_ms):
        for a, b in zip(from_csv, others):
            assert a['id'] == b['id']
            assert torch.equal(a['mix'], b['mix']) and torch.equal(a['sources'], b['sources'])


def test_msdataset_csv_is_resampled_to_the_model_rate(corpus):
    item = msdataset_from_csv(corpus.csv['test'], num_spks=2, sample_rate=16000, split='test')[0]
    native = load_split(corpus.csv['test'], 'test')[0]
    assert item['mix'].shape[-1] == 2 * native['mix'].shape[-1]


def test_unreachable_hub_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(sources, 'hub_endpoint', lambda: 'http://127.0.0.1:9')  # closed port: refused at once
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match=r"cannot load dataset 'Libri2Mix_8k' \(split 'train'\).*"
                                                  r"pass a local CSV"):
        load_split('Libri2Mix_8k', 'train')
    assert time.monotonic() - start < 5


def test_missing_local_manifest_is_named(tmp_path):
    with pytest.raises(ValueError, match='nothing.csv: CSV manifest not found'):
        load_split(tmp_path / 'nothing.csv', 'train')
