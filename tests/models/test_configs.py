import pytest

from modelscope_mossformer.models import (MossFormer2Config, MossFormerConfig, build_separator, config_from_dict,
                                          count_parameters, mossformer2_base, mossformer_large, mossformer_medium,
                                          mossformer_small)

RELEASED_MOSSFORMER_SECTION = {
    'type': 'speech_mossformer_separation_temporal_8k', 'num_spks': 2, 'kernel_size': 16, 'out_channels': 512,
    'in_channels': 512, 'stride': 8, 'bias': False, 'num_blocks': 24, 'd_model': 512, 'attn_dropout': 0.1,
    'group_size': 256, 'query_key_dim': 128, 'expansion_factor': 4.0, 'causal': False, 'norm': 'ln',
}


def test_defaults_are_the_papers_large_model():
    config = MossFormerConfig()
    assert (config.enc_channels, config.enc_kernel_size, config.stride) == (512, 16, 8)
    assert (config.num_blocks, config.group_size, config.query_key_dim, config.expansion_factor) == (24, 256, 128, 4)
    assert config.rotary_width == 32 and config.norm == 'ln' and not config.causal


def test_released_section_maps_onto_fields():
    config = MossFormerConfig.from_model_kwargs(RELEASED_MOSSFORMER_SECTION)
    assert config == mossformer_large()


def test_released_mossformer2_width_is_out_channels():
    config = MossFormer2Config.from_model_kwargs({'in_channels': 64, 'out_channels': 64, 'num_blocks': 2})
    assert (config.enc_channels, config.model_dim, config.num_blocks) == (64, 64, 2)


def test_released_mossformer2_section():
    section = {'type': 'speech_mossformer2_separation_temporal_8k', 'in_channels': 512, 'out_channels': 512,
               'num_blocks': 24, 'kernel_size': 16, 'norm': 'ln', 'num_spks': 3, 'skip_around_intra': True,
               'use_global_pos_enc': True, 'max_length': 20000}
    config = MossFormer2Config.from_model_kwargs(section)
    assert config == mossformer2_base(num_spks=3)


@pytest.mark.parametrize('key, value, message', [
    ('num_spk', 2, "unknown key 'num_spk'"),
    ('num_spks', 0, 'num_spks must be a positive integer'),
    ('norm', 'bn', 'norm must be one of'),
    ('conv_kernel_size', 16, 'must be odd'),
    ('attn_dropout', 1.5, 'attn_dropout must be in'),
])
def test_bad_values_name_the_field(key, value, message):
    with pytest.raises(ValueError, match=message):
        MossFormerConfig.from_model_kwargs({key: value}, source='cfg.json: model')


def test_unknown_key_error_names_the_source():
    with pytest.raises(ValueError, match=r'^cfg.json: model: unknown key'):
        MossFormerConfig.from_model_kwargs({'num_spk': 2}, source='cfg.json: model')


def test_inconsistent_released_widths_are_rejected():
    with pytest.raises(ValueError, match="'out_channels'=256 conflicts with 'model_dim'=512"):
        MossFormerConfig.from_model_kwargs({'d_model': 512, 'out_channels': 256, 'in_channels': 256})
    with pytest.raises(ValueError, match='in_channels == out_channels'):
        MossFormerConfig.from_model_kwargs({'d_model': 512, 'out_channels': 512, 'in_channels': 256})


def test_to_dict_round_trip():
    for config in (mossformer_small(num_spks=3, sample_rate=16000), mossformer2_base(num_blocks=3)):
        assert config_from_dict(config.to_dict()) == config


@pytest.mark.slow
@pytest.mark.parametrize('factory, expected', [
    (mossformer_large, 42_101_834),  # 42.1 M, as measured on ModelScope's class
    (mossformer2_base, 55_735_394),  # 55,735,410 including the 16 rotary frequencies ModelScope counts
])
def test_published_sizes(factory, expected):
    assert count_parameters(build_separator(factory())) == expected


@pytest.mark.slow
def test_smaller_sizes_are_ordered():
    small, medium, large = (count_parameters(build_separator(f())) for f in
                            (mossformer_small, mossformer_medium, mossformer_large))
    assert 10e6 < small < 12e6 < 23e6 < medium < 26e6 < large
