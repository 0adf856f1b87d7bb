"""Every example runs (smoke-sized, on the demo corpus), so the examples cannot rot."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# subprocesses (fresh interpreters, torchrun, pip builds): slow, still run in CI
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / 'examples'


def run_example(args, tmp_path, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''),
               OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable] + args + ['--work-dir', str(tmp_path / 'runs')], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _scores(stdout):
    line = [line for line in stdout.splitlines() if line.startswith("{'si-snr'")][-1]
    return eval(line)  # a printed dict of floats


def test_train_libri2mix_offline(tmp_path):
    result = run_example([str(EXAMPLES / 'train_libri2mix.py'), '--tiny', '--max-epochs', '1'], tmp_path)
    assert set(_scores(result.stdout)) == {'si-snr', 'si-snri', 'sdr', 'sdri'}
    assert (tmp_path / 'runs' / 'train_dir' / 'best_model' / 'masknet.bin').is_file()


def test_finetune_mossformer2_16k_from_a_clearervoice_checkpoint(tmp_path):
    result = run_example([str(EXAMPLES / 'finetune_mossformer2_16k.py'), '--tiny', '--max-epochs', '1'], tmp_path)
    assert set(_scores(result.stdout)) == {'si-snr', 'si-snri', 'sdr', 'sdri'}
    log = (tmp_path / 'runs' / 'finetune_dir' / 'log.txt').read_text()
    assert 'fine-tuning from' in log and '(clearervoice)' in log
    best = json.loads((tmp_path / 'runs' / 'finetune_dir' / 'best_model' / 'configuration.json').read_text())
    assert best['model']['type'] == 'speech_mossformer2_separation_temporal_16k'


def test_train_3spk(tmp_path):
    run_example([str(EXAMPLES / 'train_3spk.py'), '--tiny', '--max-epochs', '1'], tmp_path)
    best = json.loads((tmp_path / 'runs' / 'train_3spk' / 'best_model' / 'configuration.json').read_text())
    assert best['model']['num_spks'] == 3


def test_multi_gpu_with_torchrun_on_cpu(tmp_path):
    run_example(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                 str(EXAMPLES / 'multi_gpu.py'), '--tiny', '--max-epochs', '1'], tmp_path)
    lines = (tmp_path / 'runs' / 'ddp_dir' / 'train_log.txt').read_text().splitlines()
    assert len(lines) == 1  # rank 0 alone writes the log


def test_separate_long_recording(tmp_path):
    result = run_example([str(EXAMPLES / 'separate_long_recording.py'), '--tiny'], tmp_path)
    written = [Path(line) for line in result.stdout.split() if line.endswith('.wav')]
    assert [p.name for p in written] == ['long_recording_s1.wav', 'long_recording_s2.wav']
    import soundfile

    assert all(soundfile.info(str(p)).duration == pytest.approx(60.0) for p in written)
