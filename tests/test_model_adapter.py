"""The registered ModelScope model: built from local dirs, loads and saves loadable model dirs."""
import json

import pytest
import torch
from modelscope.models import Model

from modelscope_mossformer.metainfo import Models
from modelscope_mossformer.model import MossFormerSeparation, read_configuration

from .conftest import tiny_mossformer, tiny_mossformer2
from modelscope_mossformer.models.reference import reference_forward, reference_model

TINY_RELEASED_SECTION = {
    'type': Models.mossformer_8k, 'num_spks': 2, 'kernel_size': 16, 'out_channels': 32, 'in_channels': 32,
    'stride': 8, 'bias': False, 'num_blocks': 2, 'd_model': 32, 'attn_dropout': 0.1, 'group_size': 16,
    'query_key_dim': 16, 'expansion_factor': 4.0, 'causal': False, 'norm': 'ln',
}


def _model_dir(path, model_section):
    path.mkdir(parents=True, exist_ok=True)
    (path / 'configuration.json').write_text(json.dumps({
        'framework': 'pytorch', 'task': 'speech-separation', 'model': model_section,
        'pipeline': {'type': model_section['type']}}))
    return path


def test_released_configuration_with_released_weights(tmp_path, mixture):
    model_dir = _model_dir(tmp_path / 'released', TINY_RELEASED_SECTION)
    reference = reference_model(tiny_mossformer())
    torch.save(reference.encoder.state_dict(), model_dir / 'encoder.bin')
    torch.save(reference.decoder.state_dict(), model_dir / 'decoder.bin')
    torch.save(reference.mask_net.state_dict(), model_dir / 'masknet.bin')

    model = Model.from_pretrained(str(model_dir))
    assert isinstance(model, MossFormerSeparation)
    assert model.config == tiny_mossformer() and model.sample_rate == 8000 and model.num_spks == 2
    assert model.weights_source is not None  # weights found in the dir are loaded on construction
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(mixture), reference_forward(reference, mixture), atol=1e-5, rtol=0)


def test_load_check_point_moves_to_the_device(tmp_path):
    model_dir = _model_dir(tmp_path / 'm', TINY_RELEASED_SECTION)
    model = Model.from_pretrained(str(model_dir))
    assert model.weights_source is None
    model.save_model_dir(tmp_path / 'saved')
    report = model.load_check_point(str(tmp_path / 'saved'), device='cpu')
    assert report.format == 'modelscope-mossformer'
    assert next(model.parameters()).device.type == 'cpu'
    with pytest.raises(FileNotFoundError, match='no weights found'):
        model.load_check_point()  # its own dir holds only configuration.json


@pytest.mark.parametrize('model_type, sample_rate, family', [
    (Models.mossformer_16k, 16000, 'mossformer'),
    (Models.mossformer2_8k, 8000, 'mossformer2'),
    (Models.mossformer2_16k, 16000, 'mossformer2'),
])
def test_package_configuration_keys(tmp_path, model_type, sample_rate, family):
    section = {'type': model_type, 'num_spks': 3, 'enc_channels': 32, 'model_dim': 32, 'num_blocks': 1}
    if family == 'mossformer':
        section.update(group_size=16, query_key_dim=16)
    model = Model.from_pretrained(str(_model_dir(tmp_path / 'ours', section)))
    assert model.config.family == family and model.sample_rate == sample_rate and model.num_spks == 3
    with torch.inference_mode():
        assert model(torch.randn(2, 1600)).shape == (2, 3, 1600)


def test_saved_model_dir_round_trips_and_loads_in_modelscopes_class(tmp_path, mixture):
    model = MossFormerSeparation(config=tiny_mossformer(num_spks=3), model_type=Models.mossformer_8k)
    written = model.save_model_dir(tmp_path / 'trained')
    assert sorted(p.name for p in written) == ['configuration.json', 'decoder.bin', 'encoder.bin', 'masknet.bin']

    reloaded = Model.from_pretrained(str(tmp_path / 'trained'))
    assert reloaded.config == model.config
    # ModelScope's own class reads the configuration's model section and the weights
    section = read_configuration(tmp_path / 'trained')['model']
    section.pop('type')
    from modelscope.models.audio.separation.mossformer import MossFormer as BuiltIn
    builtin = BuiltIn(model_dir=str(tmp_path / 'trained'), **section)
    builtin.load_check_point()
    with torch.inference_mode():
        expected = reference_forward(builtin.eval(), mixture)
        torch.testing.assert_close(reloaded.eval()(mixture), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.eval()(mixture), expected, atol=1e-5, rtol=0)


def test_mossformer2_model_dir_round_trip(tmp_path, mixture):
    model = MossFormerSeparation(config=tiny_mossformer2(sample_rate=16000), model_type=Models.mossformer2_16k)
    model.save_model_dir(tmp_path / 'm2')
    assert (tmp_path / 'm2' / 'pytorch_model.pt').is_file()
    reloaded = Model.from_pretrained(str(tmp_path / 'm2'))
    assert reloaded.model_type == Models.mossformer2_16k and reloaded.config == model.config
    with torch.inference_mode():
        torch.testing.assert_close(reloaded.eval()(mixture), model.eval()(mixture), atol=0, rtol=0)


def test_bad_configuration_names_the_file_and_key(tmp_path):
    model_dir = _model_dir(tmp_path / 'bad', dict(TINY_RELEASED_SECTION, num_speakers=2))
    with pytest.raises(ValueError, match=r"configuration.json: model: unknown key 'num_speakers'"):
        Model.from_pretrained(str(model_dir))


def test_broken_json_names_line_and_column(tmp_path):
    (tmp_path / 'configuration.json').write_text('{"model": {"type": 1,}}')
    with pytest.raises(ValueError, match='configuration.json: invalid JSON at line 1 column'):
        read_configuration(tmp_path)


def test_forward_rejects_wrong_shapes():
    model = MossFormerSeparation(config=tiny_mossformer(), model_type=Models.mossformer_8k)
    with pytest.raises(ValueError, match=r'expects mixtures shaped \[batch, time\], got \(2, 1, 800\)'):
        model(torch.randn(2, 1, 800))
    with pytest.raises(ValueError, match='at least enc_kernel_size=16'):
        model(torch.randn(1, 8))


@pytest.mark.parametrize('model_type, section, message', [
    (Models.mossformer_8k, {'sample_rate': 16000},
     r"model type 'speech_mossformer_separation_temporal_8k' is mossformer at 8000 Hz, but the configuration says "
     r"mossformer at 16000 Hz; use type 'speech_mossformer_separation_temporal_16k'"),
    (Models.mossformer2_16k, {'sample_rate': 8000}, r"use type 'speech_mossformer2_separation_temporal_8k'"),
])
def test_a_type_name_that_disagrees_with_the_config_is_an_error(model_type, section, message, tmp_path):
    model_dir = _model_dir(tmp_path / 'm', dict(TINY_RELEASED_SECTION, type=model_type, **section))
    with pytest.raises(ValueError, match=message) as caught:
        Model.from_pretrained(str(model_dir))
    assert str(model_dir / 'configuration.json') in str(caught.value)


def test_the_config_is_the_one_source_of_rate_and_speakers():
    model = MossFormerSeparation(config=tiny_mossformer(sample_rate=16000, num_spks=3))
    assert model.model_type == Models.mossformer_16k and (model.sample_rate, model.num_spks) == (16000, 3)
    with pytest.raises(ValueError, match='is mossformer2 at 8000 Hz, but the configuration says mossformer'):
        MossFormerSeparation(config=tiny_mossformer(), model_type=Models.mossformer2_8k)
