"""`pipeline(Tasks.speech_separation, model=<dir>)`: every model type, every input form, levels, bad inputs."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import soundfile
import torch
from modelscope.outputs import OutputKeys
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks

from modelscope_mossformer.data.audio import AudioError
from modelscope_mossformer.metainfo import model_type_for
from modelscope_mossformer.model import MossFormerSeparation
from modelscope_mossformer.models.configs import MOSSFORMER, MOSSFORMER2
from modelscope_mossformer.pipeline import MossFormerSeparationPipeline, to_pcm16

from .conftest import tiny_mossformer, tiny_mossformer2

TINY_CONFIGS = {MOSSFORMER: tiny_mossformer, MOSSFORMER2: tiny_mossformer2}
MODEL_CASES = [(family, rate, spks) for family in (MOSSFORMER, MOSSFORMER2) for rate in (8000, 16000)
               for spks in (2, 3)]


@pytest.fixture(scope='module')
def model_dirs(tmp_path_factory):
    """Builds (once per module) a tiny model dir with weights for (family, rate, num_spks)."""
    built = {}

    def get(family: str, rate: int, spks: int):
        key = (family, rate, spks)
        if key not in built:
            torch.manual_seed(len(built))
            config = TINY_CONFIGS[family](sample_rate=rate, num_spks=spks)
            directory = tmp_path_factory.mktemp(f'{family}_{rate}_{spks}spk')
            MossFormerSeparation(config=config, model_type=model_type_for(family, rate)).save_model_dir(directory)
            built[key] = directory
        return built[key]

    return get


@pytest.fixture(scope='module')
def separate_8k(model_dirs):
    """The 2-speaker 8 kHz MossFormer pipeline, for the input-form tests."""
    return pipeline(Tasks.speech_separation, model=str(model_dirs(MOSSFORMER, 8000, 2)))


def speech_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonics plus a little noise: [T] float32 around -20 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for f0 in (140.0, 230.0) for k in range(1, 6))
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t)) + 0.05 * rng.standard_normal(t.size)
    return (0.1 * wave / np.abs(wave).max()).astype(np.float32)


def write_wav(path, samples: np.ndarray, rate: int, subtype: str = 'FLOAT'):
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


@pytest.mark.parametrize('family, rate, spks', MODEL_CASES)
def test_every_model_type_separates_a_file(model_dirs, tmp_path, family, rate, spks):
    model_dir = model_dirs(family, rate, spks)
    separate = pipeline(Tasks.speech_separation, model=str(model_dir))
    assert isinstance(separate, MossFormerSeparationPipeline)
    assert (separate.model.config.family, separate.model.sample_rate, separate.model.num_spks) == (family, rate, spks)

    mix = speech_like(0.5, rate)
    out = separate(str(write_wav(tmp_path / 'mix.wav', mix, rate)))

    assert set(out) == {OutputKeys.OUTPUT_PCM_LIST, 'waveforms', 'sample_rate', 'activity'}
    waves = out['waveforms']
    assert waves.dtype == np.float32 and waves.shape == (spks, mix.size)
    assert out['sample_rate'] == rate
    assert np.isfinite(waves).all() and np.abs(waves).max() <= 0.999
    pcm = out[OutputKeys.OUTPUT_PCM_LIST]
    assert len(pcm) == spks and all(isinstance(b, bytes) and len(b) == 2 * mix.size for b in pcm)
    assert pcm[0] == to_pcm16(waves[0])


def test_array_tuple_tensor_path_and_bytes_agree(separate_8k, tmp_path):
    mix = speech_like(0.6, 8000)
    from_path = separate_8k(str(write_wav(tmp_path / 'mix.wav', mix, 8000)))['waveforms']
    encoded = io.BytesIO()
    soundfile.write(encoded, mix, 8000, format='WAV', subtype='FLOAT')
    results = {
        'array': separate_8k(mix, sample_rate=8000),
        'tuple': separate_8k((mix, 8000)),
        'tensor': separate_8k(torch.from_numpy(mix), sample_rate=8000),
        'raw float32 bytes': separate_8k(mix.tobytes()),  # ModelScope's own form: float32 PCM at the model rate
        'encoded wav bytes': separate_8k(encoded.getvalue()),
    }
    for form, out in results.items():
        assert out['sample_rate'] == 8000, form
        np.testing.assert_allclose(out['waveforms'], from_path, atol=1e-6, err_msg=form)


@pytest.mark.parametrize('input_rate', [44100, 16000, 11025])
def test_other_rates_come_back_at_the_input_rate(separate_8k, input_rate):
    mix = speech_like(0.5, input_rate)
    out = separate_8k(mix, sample_rate=input_rate)
    assert out['sample_rate'] == input_rate
    assert out['waveforms'].shape == (2, mix.size)  # length preserved through both resamplings
    assert len(out[OutputKeys.OUTPUT_PCM_LIST][0]) == 2 * mix.size


def test_16k_model_takes_8k_input(model_dirs):
    separate = pipeline(Tasks.speech_separation, model=str(model_dirs(MOSSFORMER2, 16000, 2)))
    mix = speech_like(0.4, 8000)
    out = separate(mix, sample_rate=8000)
    assert out['sample_rate'] == 8000 and out['waveforms'].shape == (2, mix.size)


def test_stereo_is_downmixed_to_the_channel_mean(separate_8k, tmp_path):
    left, right = speech_like(0.5, 8000, seed=1), speech_like(0.5, 8000, seed=2)
    mono = separate_8k((left + right) / 2, sample_rate=8000)['waveforms']
    time_major = separate_8k(np.stack([left, right], axis=1), sample_rate=8000)['waveforms']  # [T, 2]
    channel_major = separate_8k(np.stack([left, right]), sample_rate=8000)['waveforms']  # [2, T]
    from_file = separate_8k(str(write_wav(tmp_path / 'stereo.wav', np.stack([left, right], axis=1), 8000)))
    for waves in (time_major, channel_major, from_file['waveforms']):
        assert waves.shape == (2, left.size)
        np.testing.assert_allclose(waves, mono, atol=1e-6)


def test_level_follows_the_mixture(separate_8k):
    mix = speech_like(0.8, 8000)
    full = separate_8k(mix, sample_rate=8000)['waveforms']
    quiet = separate_8k(mix * 0.1, sample_rate=8000)['waveforms']
    # The model is scale-equivariant up to the norms' epsilons: 1 % relative error allowed.
    assert np.linalg.norm(quiet - 0.1 * full) < 0.01 * np.linalg.norm(0.1 * full)
    assert np.sqrt((quiet ** 2).mean()) / np.sqrt((full ** 2).mean()) == pytest.approx(0.1, rel=0.01)
    # One gain for all speakers: the estimates' sum is the least-squares fit to the mixture.
    total = full.sum(0)
    assert np.dot(total, mix) == pytest.approx(np.dot(total, total), rel=1e-3)


def test_loud_input_is_not_clipped(separate_8k):
    mix = speech_like(0.5, 8000)
    mix = np.clip(mix / np.abs(mix).max() * 1.5, -1, 1).astype(np.float32)  # clipped, at full scale
    waves = separate_8k(mix, sample_rate=8000)['waveforms']
    assert np.abs(waves).max() <= 0.999 + 1e-6


def test_silence_gives_silent_outputs(separate_8k, caplog):
    with caplog.at_level(logging.WARNING, logger='modelscope_mossformer'):
        out = separate_8k(np.zeros(4000, np.float32), sample_rate=8000)
    assert out['waveforms'].shape == (2, 4000) and not out['waveforms'].any()
    assert 'silent' in caplog.text


def test_long_input_is_chunked_with_its_length_kept(model_dirs):
    separate = pipeline(Tasks.speech_separation, model=str(model_dirs(MOSSFORMER, 8000, 3)), chunk_seconds=1.0,
                        overlap_seconds=0.25)
    assert separate.engine.plan is not None and separate.engine.plan.chunk == 8000
    mix = speech_like(3.3, 8000)
    out = separate(mix, sample_rate=8000)
    assert out['waveforms'].shape == (3, mix.size) and np.isfinite(out['waveforms']).all()
    batched = pipeline(Tasks.speech_separation, model=str(model_dirs(MOSSFORMER, 8000, 3)), chunk_seconds=1.0,
                       overlap_seconds=0.25, batch_chunks=3)
    assert batched.engine.batch_chunks == 3
    np.testing.assert_allclose(batched(mix, sample_rate=8000)['waveforms'], out['waveforms'], atol=1e-5, rtol=0)


@pytest.mark.parametrize('inputs, kwargs, error, message', [
    (np.zeros(100, np.float32) + 0.1, {}, ValueError, 'needs its sample rate'),
    (np.zeros(0, np.float32), {'sample_rate': 8000}, AudioError, 'non-empty'),
    (np.array([0.1, np.nan, 0.2] * 100, np.float32), {'sample_rate': 8000}, AudioError, 'non-finite'),
    (np.array([0.1, np.inf] * 100, np.float32).tobytes(), {}, AudioError, 'non-finite'),
    (b'\x00\x01\x02', {}, AudioError, 'multiple of 4'),
    (b'RIFF' + b'\x00' * 40, {}, AudioError, 'unreadable audio'),
    ({'audio': [0.1]}, {}, TypeError, 'unsupported input dict'),
])
def test_bad_inputs_raise_clear_errors(separate_8k, inputs, kwargs, error, message):
    with pytest.raises(error, match=message):
        separate_8k(inputs, **kwargs)


def test_bad_files_raise_errors_naming_them(separate_8k, tmp_path):
    with pytest.raises(AudioError, match=r'missing\.wav: file not found'):
        separate_8k(str(tmp_path / 'missing.wav'))
    garbage = tmp_path / 'garbage.wav'
    garbage.write_bytes(b'not audio at all')
    with pytest.raises(AudioError, match=r'garbage\.wav: unreadable audio'):
        separate_8k(str(garbage))
    empty = write_wav(tmp_path / 'empty.wav', np.zeros(0, np.float32), 8000)
    with pytest.raises(AudioError, match=r'empty\.wav: empty audio'):
        separate_8k(str(empty))


def test_a_model_dir_without_weights_is_refused(tmp_path):
    MossFormerSeparation(config=tiny_mossformer(), model_type=model_type_for(MOSSFORMER, 8000)).save_model_dir(
        tmp_path / 'model')
    for weights in tmp_path.joinpath('model').glob('*.bin'):
        weights.unlink()
    with pytest.raises(FileNotFoundError, match='holds no weights'):
        pipeline(Tasks.speech_separation, model=str(tmp_path / 'model'))
