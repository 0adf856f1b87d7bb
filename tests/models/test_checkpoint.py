"""Every released checkpoint format loads strictly, and what we save loads in the released tools."""
import os

import pytest
import torch

from modelscope_mossformer.models import MossFormer, MossFormer2, build_separator, mossformer2_base, mossformer_large
from modelscope_mossformer.models.checkpoint import (FORMAT_CLEARERVOICE, FORMAT_MOSSFORMER, FORMAT_MOSSFORMER2,
                                                     FORMAT_NATIVE, CheckpointError, atomic_save, load_weights,
                                                     read_checkpoint, released_key, released_names,
                                                     released_state_dict, save_clearervoice, save_released)

from ..conftest import tiny_mossformer, tiny_mossformer2
from modelscope_mossformer.models.reference import reference_forward, reference_model


def _save_like_modelscope_mossformer(reference, directory):
    """The three files of ModelScope's MossFormer model dir, written from its own modules."""
    torch.save(reference.encoder.state_dict(), directory / 'encoder.bin')
    torch.save(reference.decoder.state_dict(), directory / 'decoder.bin')
    torch.save(reference.mask_net.state_dict(), directory / 'masknet.bin')


def _outputs_match(ours, reference, mix):
    ours.eval()
    with torch.inference_mode():
        torch.testing.assert_close(ours(mix), reference_forward(reference, mix), atol=1e-5, rtol=0)


@pytest.mark.parametrize('config', [tiny_mossformer(num_blocks=3), tiny_mossformer2(num_blocks=2)],
                         ids=['mossformer', 'mossformer2'])
def test_mapping_covers_the_reference_names_and_shapes(config):
    ours = build_separator(config)
    reference = reference_model(config)
    table = released_names(ours, config.family)
    reference_state = reference.state_dict()
    assert set(table) == set(reference_state)
    for released, native in table.items():
        assert ours.state_dict()[native].shape == reference_state[released].shape, released


def test_released_sizes_have_the_released_key_counts():
    large = released_state_dict(build_separator(mossformer_large()))
    assert len(large) == 379
    assert sum(k.startswith('mask_net.') for k in large) == 377
    assert 'mask_net.mdl.att_mdl.mossformerM.layers.23.to_hidden.mdl.1.weight' in large
    assert 'mask_net.mdl.att_mdl.norm.norm.weight' in large
    m2 = released_state_dict(build_separator(mossformer2_base()))
    assert len(m2) == 1099
    assert 'mask_net.mdl.intra_mdl.mossformerM.fsmn.23.gated_fsmn.fsmn.conv.conv2.weight' in m2


def test_unknown_key_has_no_released_name():
    with pytest.raises(KeyError, match='no released name'):
        released_key('masker.something_new.weight', 'mossformer')


def test_loads_modelscope_mossformer_model_dir(tmp_path, mixture):
    reference = reference_model(tiny_mossformer())
    _save_like_modelscope_mossformer(reference, tmp_path)
    ours = MossFormer(tiny_mossformer())
    report = load_weights(ours, tmp_path)
    assert report.format == FORMAT_MOSSFORMER and report.reinitialised == []
    _outputs_match(ours, reference, mixture)
    # a path to one of the three files means its directory
    assert load_weights(MossFormer(tiny_mossformer()), tmp_path / 'masknet.bin').format == FORMAT_MOSSFORMER


def test_loads_modelscope_mossformer2_file(tmp_path, mixture):
    reference = reference_model(tiny_mossformer2())
    torch.save(reference.state_dict(), tmp_path / 'pytorch_model.pt')
    ours = MossFormer2(tiny_mossformer2())
    assert load_weights(ours, tmp_path).format == FORMAT_MOSSFORMER2
    _outputs_match(ours, reference, mixture)


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_loads_clearervoice_checkpoints(tmp_path, mixture, prefix):
    reference = reference_model(tiny_mossformer2(num_spks=3))
    state = {prefix + k: v for k, v in reference.state_dict().items()}
    optimizer = torch.optim.Adam(reference.parameters(), lr=1.5e-4)
    torch.save({'model': state, 'optimizer': optimizer.state_dict(), 'epoch': 7, 'step': 1234},
               tmp_path / 'model.ckpt-7-1234.pt')
    (tmp_path / 'last_best_checkpoint').write_text('model.ckpt-7-1234.pt\n')
    ours = MossFormer2(tiny_mossformer2(num_spks=3))
    assert load_weights(ours, tmp_path).format == FORMAT_CLEARERVOICE  # through the pointer file
    _outputs_match(ours, reference, mixture)
    checkpoint = read_checkpoint(tmp_path / 'model.ckpt-7-1234.pt')
    assert checkpoint.extra == {'epoch': 7, 'step': 1234}


@pytest.mark.parametrize('with_rotary', [True, False])
def test_rotary_table_may_be_present_or_absent(tmp_path, mixture, with_rotary):
    reference = reference_model(tiny_mossformer2())
    state = {k: v for k, v in reference.state_dict().items() if with_rotary or not k.endswith('rotary_pos_emb.freqs')}
    assert len(state) == len(reference.state_dict()) - (0 if with_rotary else 1)
    torch.save(state, tmp_path / 'pytorch_model.pt')
    ours = MossFormer2(tiny_mossformer2())
    load_weights(ours, tmp_path)
    _outputs_match(ours, reference, mixture)


def test_native_state_dict_round_trip(tmp_path, mixture):
    ours = MossFormer(tiny_mossformer())
    torch.save(ours.state_dict(), tmp_path / 'native.pt')
    copy = MossFormer(tiny_mossformer())
    assert load_weights(copy, tmp_path / 'native.pt').format == FORMAT_NATIVE
    with torch.inference_mode():
        torch.testing.assert_close(copy.eval()(mixture), ours.eval()(mixture), atol=0, rtol=0)


def test_mismatch_error_names_every_key(tmp_path):
    reference = reference_model(tiny_mossformer())
    state = reference.state_dict()
    state.pop('mask_net.conv1d_out.weight')
    state.pop('encoder.conv1d.weight')
    state['mask_net.extra.weight'] = torch.zeros(1)
    state['decoder.weight'] = torch.zeros(3, 1, 16)
    torch.save(state, tmp_path / 'broken.pt')
    with pytest.raises(CheckpointError) as error:
        load_weights(MossFormer(tiny_mossformer()), tmp_path / 'broken.pt')
    message = str(error.value)
    assert str(tmp_path / 'broken.pt') in message
    assert '2 missing key(s)' in message and 'masker.out_proj.weight' in message and 'encoder.conv.weight' in message
    assert '1 unexpected key(s)' in message and 'mask_net.extra.weight' in message
    assert '1 shape mismatch(es)' in message and 'decoder.deconv.weight: checkpoint (3, 1, 16) vs model (32, 1, 16)' \
        in message


def test_wrong_family_gets_a_hint(tmp_path):
    torch.save(reference_model(tiny_mossformer2()).state_dict(), tmp_path / 'pytorch_model.pt')
    with pytest.raises(CheckpointError, match='looks like a mossformer2 model, the model is mossformer'):
        load_weights(MossFormer(tiny_mossformer()), tmp_path)


def test_model_is_untouched_when_loading_fails(tmp_path):
    ours = MossFormer(tiny_mossformer())
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    state = released_state_dict(MossFormer(tiny_mossformer()))
    state.pop('mask_net.prelu.weight')
    torch.save(state, tmp_path / 'partial.pt')
    with pytest.raises(CheckpointError):
        load_weights(ours, tmp_path / 'partial.pt')
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_shape_mismatch_can_be_allowed_for_the_output_layer(tmp_path):
    two = MossFormer(tiny_mossformer(num_spks=2))
    save_released(two, tmp_path)
    three = MossFormer(tiny_mossformer(num_spks=3))
    report = load_weights(three, tmp_path, allow_shape_mismatch=('masker.out_proj.',))
    assert report.reinitialised == ['masker.out_proj.weight', 'masker.out_proj.bias']
    assert torch.equal(three.masker.in_proj.weight, two.masker.in_proj.weight)


@pytest.mark.parametrize('problem', ['empty_dir', 'partial_three_files', 'not_a_checkpoint', 'bad_pointer'])
def test_unloadable_sources_name_the_file(tmp_path, problem):
    model = MossFormer(tiny_mossformer())
    if problem == 'empty_dir':
        error, match, source = FileNotFoundError, 'no weights found; looked for encoder.bin', tmp_path
    elif problem == 'partial_three_files':
        torch.save({}, tmp_path / 'encoder.bin')
        error, match, source = FileNotFoundError, r"found only \['encoder.bin'\]", tmp_path
    elif problem == 'not_a_checkpoint':
        (tmp_path / 'pytorch_model.pt').write_text('this is not a checkpoint')
        error, match, source = CheckpointError, 'pytorch_model.pt: not a readable PyTorch checkpoint', tmp_path
    else:
        (tmp_path / 'last_checkpoint').write_text('gone.pt\n')
        error, match, source = CheckpointError, 'last_checkpoint names .*gone.pt, which does not exist', tmp_path
    with pytest.raises(error, match=match):
        load_weights(model, source)


def test_saved_mossformer_loads_in_modelscopes_own_class(tmp_path, mixture):
    ours = MossFormer(tiny_mossformer(num_spks=3))
    written = save_released(ours, tmp_path)
    assert sorted(p.name for p in written) == ['decoder.bin', 'encoder.bin', 'masknet.bin']
    reference = reference_model(tiny_mossformer(num_spks=3))
    reference.load_check_point(load_path=str(tmp_path))  # ModelScope's loader, strict=True inside
    _outputs_match(ours, reference, mixture)


def test_saved_mossformer2_loads_in_modelscopes_own_class(tmp_path, mixture):
    ours = MossFormer2(tiny_mossformer2())
    assert [p.name for p in save_released(ours, tmp_path)] == ['pytorch_model.pt']
    reference = reference_model(tiny_mossformer2())
    saved = torch.load(tmp_path / 'pytorch_model.pt', weights_only=True)
    assert set(saved) == set(reference.state_dict())  # ModelScope loads this file with strict=False
    reference.load_check_point(load_path=str(tmp_path))
    _outputs_match(ours, reference, mixture)


def test_clearervoice_export_round_trip(tmp_path, mixture):
    ours = MossFormer2(tiny_mossformer2())
    optimizer = torch.optim.Adam(ours.parameters())
    path = save_clearervoice(ours, tmp_path / 'model.ckpt-2-10.pt', epoch=2, step=10, optimizer=optimizer,
                             pointer='last_best_checkpoint')
    assert (tmp_path / 'last_best_checkpoint').read_text().strip() == path.name
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {'model', 'optimizer', 'epoch', 'step'}
    assert 'mask_net.mdl.intra_mdl.mossformerM.fsmn.0.conv1.0.weight' in payload['model']
    reference = reference_model(tiny_mossformer2())
    reference.load_state_dict(payload['model'])
    _outputs_match(ours, reference, mixture)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError('cannot pickle')


def test_atomic_save_keeps_the_previous_file_on_failure(tmp_path):
    path = tmp_path / 'checkpoint.pt'
    atomic_save({'step': 1}, path)
    with pytest.raises(RuntimeError, match='cannot pickle'):
        atomic_save({'step': 2, 'bad': _Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {'step': 1}
    assert os.listdir(tmp_path) == ['checkpoint.pt']
