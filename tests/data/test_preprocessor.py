"""AudioBrainPreprocessor through ModelScope's MsDataset, as in the ModelScope snippet."""
import numpy as np
import pytest
import soundfile
import torch
from modelscope.msdatasets import MsDataset
from modelscope.preprocessors import PREPROCESSORS
from modelscope.preprocessors.audio import AudioBrainPreprocessor as ModelScopeAudioBrainPreprocessor

from modelscope_mossformer.data.audio import AudioError
from modelscope_mossformer.data.dataset import RowDataset
from modelscope_mossformer.preprocessor import AudioBrainPreprocessor
from modelscope_mossformer.metainfo import Preprocessors

FIELDS = (('mix_wav:FILE', 'mix_sig'), ('s1_wav:FILE', 's1_sig'), ('s2_wav:FILE', 's2_sig'))


@pytest.fixture
def csv_corpus(tmp_path):
    rng = np.random.default_rng(0)
    lines = ['mix_wav:FILE,s1_wav:FILE,s2_wav:FILE']
    for index in range(3):
        sources = [(0.1 * rng.standard_normal(1600)).astype(np.float32) for _ in range(2)]
        names = []
        for tag, data in (('mix', sources[0] + sources[1]), ('s1', sources[0]), ('s2', sources[1])):
            path = tmp_path / 'wav' / f'{index}_{tag}.wav'
            path.parent.mkdir(exist_ok=True)
            soundfile.write(path, data, 8000, subtype='FLOAT')
            names.append(str(path))
        lines.append(','.join(names))
    (tmp_path / 'train.csv').write_text('\n'.join(lines) + '\n')
    return tmp_path / 'train.csv'


@pytest.mark.parametrize('preprocessor_class', [AudioBrainPreprocessor, ModelScopeAudioBrainPreprocessor])
def test_msdataset_rows_become_separation_items(csv_corpus, preprocessor_class):
    dataset = MsDataset.load('csv', data_files={'train': [str(csv_corpus)]}, split='train')
    torch_dataset = dataset.to_torch_dataset(
        preprocessors=[preprocessor_class(takes=t, provides=p) for t, p in FIELDS], to_tensor=False)
    assert len(torch_dataset) == 3
    item = RowDataset(torch_dataset, num_spks=2)[1]
    assert item['mix'].shape == (1600,) and item['sources'].shape == (2, 1600)
    torch.testing.assert_close(item['mix'], item['sources'].sum(0), atol=1e-6, rtol=0)


def test_registered_under_the_package_name():
    assert PREPROCESSORS.get(Preprocessors.audio_brain) is AudioBrainPreprocessor


def test_resamples_and_resolves_relative_paths(tmp_path):
    soundfile.write(tmp_path / 'a.wav', np.zeros(16000, np.float32), 16000)
    row = AudioBrainPreprocessor('mix_wav:FILE', 'mix_sig', sample_rate=8000, root=tmp_path)({'mix_wav:FILE': 'a.wav'})
    assert row['mix_sig'].shape == (8000,) and row['mix_sig'].dtype == torch.float32


def test_errors_name_the_field_and_file(tmp_path):
    preprocessor = AudioBrainPreprocessor('s1_wav:FILE', 's1_sig')
    with pytest.raises(AudioError, match=r"missing.wav: file not found \(field 's1_wav:FILE'\)"):
        preprocessor({'s1_wav:FILE': str(tmp_path / 'missing.wav')})
    with pytest.raises(KeyError, match="no field 's1_wav:FILE'; fields: \\['mix_wav:FILE'\\]"):
        preprocessor({'mix_wav:FILE': 'x.wav'})
    with pytest.raises(AudioError, match="does not hold an audio path"):
        preprocessor({'s1_wav:FILE': None})
