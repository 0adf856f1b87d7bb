import numpy as np
import pytest
import soundfile
import torch

from modelscope_mossformer.data.audio import AudioError, read_audio, resample


def _tone(rate, seconds=0.5, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_reads_float32_mono(tmp_path):
    soundfile.write(tmp_path / 'a.wav', _tone(8000), 8000, subtype='PCM_16')
    wave = read_audio(tmp_path / 'a.wav', 8000)
    assert wave.dtype == torch.float32 and wave.shape == (4000,)
    assert abs(float(wave.abs().max()) - 0.5) < 1e-3


def test_flac_is_read(tmp_path):
    soundfile.write(tmp_path / 'a.flac', _tone(16000), 16000)
    assert read_audio(tmp_path / 'a.flac').shape == (8000,)


def test_stereo_is_the_channel_mean(tmp_path):
    left, right = _tone(8000), np.zeros(4000, np.float32)
    soundfile.write(tmp_path / 's.wav', np.stack([left, right], 1), 8000, subtype='FLOAT')
    torch.testing.assert_close(read_audio(tmp_path / 's.wav'), torch.from_numpy(left / 2))
    torch.testing.assert_close(read_audio(tmp_path / 's.wav', channel=0), torch.from_numpy(left))


def test_other_rates_are_resampled_with_the_tone_kept(tmp_path):
    soundfile.write(tmp_path / 'hi.wav', _tone(16000, 1.0, 1000.0), 16000, subtype='FLOAT')
    wave = read_audio(tmp_path / 'hi.wav', 8000)
    assert wave.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) - 1000) <= 1  # 1 Hz bins at 1 s
    assert abs(float(wave[1000:-1000].abs().max()) - 0.5) < 0.01


def test_resampling_removes_content_above_the_new_nyquist():
    rate = 16000
    t = torch.arange(rate) / rate
    high = torch.sin(2 * torch.pi * 6000 * t)  # above 4 kHz: must vanish at 8 kHz
    assert float(resample(high, rate, 8000)[500:-500].abs().max()) < 1e-2


def test_rate_mismatch_can_be_an_error(tmp_path):
    soundfile.write(tmp_path / 'hi.wav', _tone(16000), 16000)
    with pytest.raises(AudioError, match=r'hi.wav: sample rate 16000 Hz, expected 8000 Hz'):
        read_audio(tmp_path / 'hi.wav', 8000, on_rate_mismatch='error')


@pytest.mark.parametrize('problem, match', [
    ('missing', 'file not found'),
    ('garbage', 'unreadable audio'),
    ('empty', r'empty audio \(0 samples\)'),
    ('nan', r'1 non-finite \(NaN/Inf\) sample\(s\), first at sample 10'),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, problem, match):
    path = tmp_path / f'{problem}.wav'
    if problem == 'garbage':
        path.write_bytes(b'not audio at all')
    elif problem == 'empty':
        soundfile.write(path, np.zeros(0, np.float32), 8000)
    elif problem == 'nan':
        data = _tone(8000)
        data[10] = np.nan
        soundfile.write(path, data, 8000, subtype='FLOAT')
    with pytest.raises(AudioError, match=match) as error:
        read_audio(path, 8000)
    assert str(path) in str(error.value)
