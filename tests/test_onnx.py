"""ONNX export and the ONNX Runtime backend: parity with PyTorch, dynamic shapes, metadata, CLI, errors.

Each tiny model is exported once per module (about 20 s each on one core): MossFormer through
`mossformer export`, MossFormer2 through `export_onnx`.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np
import onnx
import pytest
import soundfile
import torch
from torch import nn

from modelscope_mossformer import __version__
from modelscope_mossformer.cli import _build_engine, build_parser, main
from modelscope_mossformer.metainfo import Models
from modelscope_mossformer.model import MossFormerSeparation
from modelscope_mossformer.models import build_separator
from modelscope_mossformer.onnx_backend import OnnxSeparator
from modelscope_mossformer.onnx_export import (DEFAULT_ONNX_FILE, ONNX_EXTRA, OPSET, TOLERANCE, ExportGraph,
                                               export_forwards, export_onnx, max_abs_difference, probe_signal,
                                               weights_digest)

from .conftest import tiny_mossformer, tiny_mossformer2

RATE = 8000
QUIET = ['--no-progress', '--threads', '1']
# lengths in samples: one encoder frame (K = 16, below the range the graph was captured for), 0.5 s,
# a length that is a multiple of neither the stride (8) nor a group of frames (16 or 256) and 6 s; the
# graph was captured at 1 s (MossFormer) and 0.75 s (MossFormer2), so every length here is a new one
LENGTHS = [16, 4000, 12347, 48000]


@pytest.fixture(scope='module')
def mossformer_export(tmp_path_factory):
    """A tiny MossFormer model dir exported by the CLI to DIR/model.onnx: (model dir, separator)."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp('mossformer')
    model = MossFormerSeparation(config=tiny_mossformer(), model_type=Models.mossformer_8k)
    model.save_model_dir(directory)
    assert main(['export', '--model', str(directory), *QUIET]) == 0
    return directory, model.separator.eval()


@pytest.fixture(scope='module')
def mossformer2_export(tmp_path_factory):
    """A tiny MossFormer2 exported with `export_onnx` (trace length 0.75 s) while in training mode:
    (onnx path, separator in eval mode, what the export left behind)."""
    torch.manual_seed(1)
    separator = build_separator(tiny_mossformer2())
    mix = probe_signal(3000)
    with torch.inference_mode():
        before = separator.eval()(mix)
    separator.train()
    path = export_onnx(separator, tmp_path_factory.mktemp('mossformer2') / 'm2.onnx', trace_seconds=0.75)
    after_export = {'training': separator.training,
                    'patched': [name for name, module in separator.named_modules() if 'forward' in vars(module)]}
    with torch.inference_mode():
        after_export['same_output'] = torch.equal(separator.eval()(mix), before)
    return path, separator, after_export


@pytest.fixture(params=['mossformer', 'mossformer2'])
def exported(request, mossformer_export, mossformer2_export):
    if request.param == 'mossformer':
        directory, separator = mossformer_export
        return directory / DEFAULT_ONNX_FILE, separator
    return mossformer2_export[:2]


# ---------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('num_samples', LENGTHS)
def test_onnxruntime_matches_pytorch(exported, num_samples):
    path, separator = exported
    mix = probe_signal(num_samples, seed=num_samples)  # unit-scale audio
    with torch.inference_mode():
        expected = separator(mix)
    got = OnnxSeparator(path, threads=1)(mix)
    assert got.shape == expected.shape == (1, 2, num_samples)
    assert expected.abs().max() > 1e-3  # the sources are not (near) zero, so the comparison means something
    # TOLERANCE (1e-4): float32 rounding of other kernels and summation orders; see onnx_export.TOLERANCE
    assert (got - expected).abs().max() <= TOLERANCE


def test_dynamic_batch_each_item_separated_on_its_own(exported):
    path, separator = exported
    mix = torch.cat([probe_signal(6001, seed=seed) for seed in range(3)])  # [3, T]
    runtime = OnnxSeparator(path, threads=1)
    together = runtime(mix)
    with torch.inference_mode():
        expected = separator(mix)
    assert together.shape == (3, 2, 6001)
    assert (together - expected).abs().max() <= TOLERANCE  # as above
    for item in range(3):
        alone = runtime(mix[item:item + 1])
        # the same graph on one item: only the batched kernels' rounding differs (float32, ~1e-7)
        assert (alone[0] - together[item]).abs().max() <= 1e-5


def test_shape_generic_forwards_compute_the_pytorch_function():
    """The forwards swapped in for the export give the model's own numbers in PyTorch, for both families."""
    for config in (tiny_mossformer(), tiny_mossformer2()):
        separator = build_separator(config).eval()
        for num_samples in (16, 999, 4000, 12347):
            mix = probe_signal(num_samples, seed=3).expand(2, -1)
            with torch.inference_mode():
                expected = separator(mix)
                with export_forwards(separator):
                    got = ExportGraph(separator)(mix)
            # same float32 arithmetic in another order (batched group matmuls, conv1d instead of conv2d): ~1e-8
            assert (got - expected).abs().max() <= 1e-6, (type(separator).__name__, num_samples)


def test_export_leaves_the_model_as_it_was(mossformer2_export):
    _, _, after_export = mossformer2_export
    assert after_export == {'training': True, 'patched': [], 'same_output': True}


def test_parity_check_detects_other_weights(mossformer2_export):
    """The comparison can fail: a model with other weights is off by far more than the tolerance."""
    path, separator, _ = mossformer2_export
    torch.manual_seed(99)
    other = build_separator(tiny_mossformer2()).eval()
    assert max_abs_difference(other, path, probe_signal(4000)) > 100 * TOLERANCE
    assert max_abs_difference(separator, path, probe_signal(4000)) <= TOLERANCE


def test_norms_over_long_inputs_keep_float32_precision_in_onnxruntime():
    """A mask-net norm over 512 channels x 8000 frames (an 8 s chunk at the released width): ONNX Runtime's
    float32 InstanceNormalization was off by 1e-2 here; the export's float64 statistics are not."""
    import onnxruntime

    class Norm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.GroupNorm(1, 512, eps=1e-8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x)

    module = Norm().eval()
    x = torch.relu(torch.randn(1, 512, 8000, generator=torch.Generator().manual_seed(0))) * 3 + 1  # mean ~2
    example = x[..., :100].clone()
    with export_forwards(module), torch.no_grad():
        exported = torch.export.export(module, (example,), dynamic_shapes={'x': {2: torch.export.Dim('L')}})
    program = torch.onnx.export(exported, (example,), dynamo=True, opset_version=OPSET, verbose=False)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(),
                                           providers=['CPUExecutionProvider'])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        exact = module.double()(x.double())
    # PyTorch's own float32 result is 5e-7 from the float64 one; 1e-5 allows ONNX Runtime's other kernels
    assert np.abs(got - exact.numpy()).max() <= 1e-5


# ---------------------------------------------------------------------------
# the file
# ---------------------------------------------------------------------------


def test_metadata_opset_and_dynamic_axes(mossformer_export):
    directory, separator = mossformer_export
    model = onnx.load(str(directory / DEFAULT_ONNX_FILE))
    props = {entry.key: entry.value for entry in model.metadata_props}
    assert props['sample_rate'] == str(RATE) and props['num_spks'] == '2'
    assert props['model_type'] == Models.mossformer_8k and props['family'] == 'mossformer'
    assert props['modelscope_mossformer_version'] == __version__
    assert props['weights_sha256'] == weights_digest(directory)
    assert {o.domain: o.version for o in model.opset_import}[''] == OPSET
    (mix,), (sources,) = model.graph.input, model.graph.output
    assert (mix.name, sources.name) == ('mix', 'sources')
    in_dims = [d.dim_param or d.dim_value for d in mix.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in sources.type.tensor_type.shape.dim]
    assert in_dims == ['batch', 'time'] and out_dims == ['batch', 2, 'time']
    assert mix.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    runtime = OnnxSeparator(directory / DEFAULT_ONNX_FILE)
    assert runtime.sample_rate == RATE and runtime.num_spks == 2 and runtime.config == separator.config


def test_threads_reach_the_session(mossformer_export):
    directory, _ = mossformer_export
    args = build_parser().parse_args(['separate', 'x.wav', '--model', str(directory), '--out', 'o',
                                      '--backend', 'onnxruntime', '--threads', '1'])
    engine = _build_engine(args)
    assert engine.separator.session.get_session_options().intra_op_num_threads == 1
    assert engine.num_spks == 2 and engine.sample_rate == RATE
    assert OnnxSeparator(directory / DEFAULT_ONNX_FILE, threads=3).session.get_session_options() \
        .intra_op_num_threads == 3


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    a = np.sin(2 * np.pi * 210 * t + 3 * np.sin(2 * np.pi * 3 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t))
    b = np.sign(np.sin(2 * np.pi * 130 * t)) * 0.3 * (t % 0.5 < 0.3)
    return (0.4 * a + 0.3 * b + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_cli_onnxruntime_outputs_match_pytorch(mossformer_export, tmp_path):
    """Chunked separation (2 s chunks, 0.5 s overlap: four chunks, speakers aligned at each border) of a
    file through both backends, and through an .onnx given as --model."""
    directory, _ = mossformer_export
    soundfile.write(str(tmp_path / 'talk.wav'), _speech_like(6.3, seed=0), RATE, subtype='FLOAT')
    common = ['--chunk-seconds', '2', '--overlap-seconds', '0.5', '--subtype', 'FLOAT', *QUIET]
    runs = {'pytorch': ['--model', str(directory), '--device', 'cpu'],
            'onnxruntime': ['--model', str(directory), '--backend', 'onnxruntime'],
            'onnx_file': ['--model', str(directory / DEFAULT_ONNX_FILE)]}
    for name, options in runs.items():
        assert main(['separate', str(tmp_path / 'talk.wav'), '--out', str(tmp_path / name), *options,
                     *common]) == 0, name
    for speaker in (1, 2):
        reference, rate = soundfile.read(str(tmp_path / 'pytorch' / f'talk_s{speaker}.wav'))
        assert rate == RATE and reference.shape == (int(6.3 * RATE),) and np.abs(reference).max() > 1e-2
        for name in ('onnxruntime', 'onnx_file'):
            got, _ = soundfile.read(str(tmp_path / name / f'talk_s{speaker}.wav'))
            # the model outputs agree within 1e-7 here; the level fit to the mixture multiplies both backends'
            # sources by (nearly) the same gain, so the files agree within the same TOLERANCE
            assert np.abs(got - reference).max() <= TOLERANCE, (name, speaker)


def test_stale_export_is_refused(mossformer_export, tmp_path, capsys):
    directory, _ = mossformer_export
    copy = tmp_path / 'retrained'
    torch.manual_seed(5)
    MossFormerSeparation(config=tiny_mossformer(), model_type=Models.mossformer_8k).save_model_dir(copy)
    shutil.copyfile(directory / DEFAULT_ONNX_FILE, copy / DEFAULT_ONNX_FILE)
    assert main(['separate', 'x.wav', '--model', str(copy), '--backend', 'onnxruntime', '--out',
                 str(tmp_path / 'o'), *QUIET]) == 2
    assert 'exported from other weights' in capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [
    (['separate', 'x.wav', '--model', '{onnx}', '--backend', 'pytorch', '--out', 'o'],
     'runs with --backend onnxruntime'),
    (['separate', 'x.wav', '--model', '{bare}', '--backend', 'onnxruntime', '--out', 'o'],
     'run `mossformer export --model'),
    (['separate', 'x.wav', '--model', '{onnx}', '--out', 'o', '--precision', 'bf16'], 'use --precision fp32'),
    (['separate', 'x.wav', '--model', '{garbage}', '--out', 'o'], 'ONNX Runtime cannot load this file'),
    (['separate', 'x.wav', '--model', '{onnx}', '--out', 'o', '--device', 'tpu'], 'must be cpu, cuda or cuda:N'),
    (['export', '--model', '{dir}', '--out', 'model.txt'], 'ending in .onnx'),
    (['export', '--model', '{bare}'], 'no weights to export'),
])
def test_usage_errors(mossformer_export, tmp_path, capsys, argv, message):
    directory, _ = mossformer_export
    bare = tmp_path / 'bare'
    MossFormerSeparation(config=tiny_mossformer(), model_type=Models.mossformer_8k).save_model_dir(bare)
    for weights in ('encoder.bin', 'decoder.bin', 'masknet.bin'):
        (bare / weights).unlink()
    (tmp_path / 'garbage.onnx').write_bytes(b'not a model')
    places = {'onnx': str(directory / DEFAULT_ONNX_FILE), 'dir': str(directory), 'bare': str(bare),
              'garbage': str(tmp_path / 'garbage.onnx')}
    argv = [item.format(**places) for item in argv]
    assert main(argv + ['--no-progress']) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------
# missing packages
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('module', ['onnxruntime', 'onnx', 'onnxscript'])
def test_missing_package_names_the_extra(mossformer_export, monkeypatch, capsys, tmp_path, module):
    directory, separator = mossformer_export
    monkeypatch.setitem(sys.modules, module, None)  # "import <module>" raises ImportError
    if module == 'onnxruntime':
        with pytest.raises(ImportError, match=f"'onnxruntime' package: {ONNX_EXTRA}".replace('[', r'\[')
                           .replace(']', r'\]')):
            OnnxSeparator(directory / DEFAULT_ONNX_FILE)
        argv = ['separate', 'x.wav', '--model', str(directory / DEFAULT_ONNX_FILE), '--out', str(tmp_path)]
    else:
        with pytest.raises(ImportError) as caught:
            export_onnx(separator, tmp_path / 'never.onnx')
        assert f"'{module}' package" in str(caught.value) and ONNX_EXTRA in str(caught.value)
        assert not (tmp_path / 'never.onnx').exists()
        argv = ['export', '--model', str(directory), '--out', str(tmp_path / 'never.onnx')]
    assert main(argv + ['--no-progress']) == 2
    assert ONNX_EXTRA in capsys.readouterr().err


def test_export_help_explains_itself(capsys):
    assert main(['export', '--help']) == 0
    text = capsys.readouterr().out
    assert text.startswith('usage: mossformer export')
    assert all(word in text for word in ('--model', '--out', '--no-verify', 'opset 18', 'metadata_props',
                                         '--backend onnxruntime', ONNX_EXTRA, 'examples:'))
