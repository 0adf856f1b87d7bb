"""Shipped configurations stay in step with the code, and the repository itself is a model dir."""
import json
from pathlib import Path

import pytest
from modelscope.models import Model

from modelscope_mossformer.model import MossFormerSeparation
from modelscope_mossformer.models import mossformer2_base, mossformer_large
from modelscope_mossformer.presets import PRESETS, build_preset, load_preset, write_model_dir
from modelscope_mossformer.train_config import DEFAULT_TRAIN_CONFIG, released_spelling

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name', PRESETS)
def test_shipped_presets_match_the_code(name):
    assert load_preset(name) == json.loads(json.dumps(build_preset(name)))


def test_top_level_configuration_is_the_default_mossformer_8k():
    assert json.loads((REPO_ROOT / 'configuration.json').read_text()) == load_preset('mossformer_8k')
    assert load_preset('mossformer_8k')['train'] == json.loads(json.dumps(released_spelling(DEFAULT_TRAIN_CONFIG)))


def test_the_repository_is_a_model_dir():
    model = Model.from_pretrained(str(REPO_ROOT))
    assert isinstance(model, MossFormerSeparation)
    assert model.config == mossformer_large() and model.weights_source is None


def test_write_model_dir_with_overrides(tmp_path):
    write_model_dir('mossformer2_16k', tmp_path, model={'num_spks': 3}, train={'max_epochs': 5})
    model = Model.from_pretrained(str(tmp_path))
    assert model.config == mossformer2_base(sample_rate=16000, num_spks=3)
    assert json.loads((tmp_path / 'configuration.json').read_text())['train']['max_epochs'] == 5
    with pytest.raises(ValueError, match='unknown preset'):
        write_model_dir('mossformer_24k', tmp_path)
