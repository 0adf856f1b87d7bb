"""bench/bench_speed.py runs end to end (one block per model, 1 s inputs) and reports sane figures."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# subprocesses (fresh interpreters, torchrun, pip builds): slow, still run in CI
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_bench_speed_smoke_run_reports_every_section(tmp_path):
    out = tmp_path / 'speed.json'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_speed.py'), '--num-blocks', '1', '--lengths', '1',
         '--train-seconds', '0.5', '--repeats', '1', '--threads', '1', '--models', 'mossformer2', '--json', str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['num_blocks'] == 1
    assert result['peak']['matmul_gflops']['float32'] > 0
    (row,) = result['inference']
    assert row['max_abs_diff'] < 1e-4 and row['ours_s'] > 0 and row['reference_s'] > 0
    assert row['bf16_si_snr_db'] > 20  # bf16 output close to the fp32 output
    assert row['bf16_si_snr_speech_default_db'] > 20 and row['bf16_si_snr_speech_perturbed_db'] > 10
    assert result['cpu']  # the CPU is named in the report
    (train,) = result['train']
    # float32 gradients of one block agree to ~1e-6 of their norm for most parameters; a norm bias whose
    # gradient sums over every frame with cancellation measured 1.28e-3 on an AMD EPYC (MKL's AVX2 kernels
    # and oneDNN alike): 5e-3 leaves room for any summation order, a bfloat16 step would give 1e-2 and more
    assert train['norm_rel_grad_diff'] < 5e-3 and train['ours_s'] > 0
    # a step's floors: its FLOPs at the fp32 and the (faster) bf16 matmul peak, over the reference's time
    assert 0 < train['floor_bf16'] < train['floor_fp32'] and 'floors' in proc.stdout
    (memory,) = result['memory']
    assert memory['plain']['step_mb_4s'] > 0 and memory['checkpointed']['step_mb_4s'] > 0
    (profile,) = result['profile']
    for precision in ('fp32', 'bf16'):
        top = profile[precision]['top']
        assert profile['blocks'] == 1 and len(top) > 5 and profile[precision]['total_ms'] > 0
        assert top == sorted(top, key=lambda row: -row['self_ms'])
        assert any('linear' in row['op'] or 'mm' in row['op'] for row in top)  # the GEMMs are among them
    assert '== summary ==' in proc.stdout


@pytest.mark.parametrize('name', ['mossformer', 'mossformer2'])
def test_training_step_flops_count_a_depthwise_backward_as_two_convolutions(name, monkeypatch):
    sys.path.insert(0, str(REPO / 'bench'))
    try:
        import bench_speed
    finally:
        sys.path.remove(str(REPO / 'bench'))
    monkeypatch.setattr(bench_speed, 'NUM_BLOCKS', 1)
    # a GEMM's backward is two GEMMs of its size, so a step is about 3x the forward's FLOPs (a little
    # more for the attention's recomputed scores, a little less for inputs that need no gradient);
    # torch's own counter, which takes a depthwise conv's backward for a dense one, gave 36x at released size
    ratio = bench_speed.train_flops(name, 4000) / bench_speed.forward_flops(name, 4000)
    assert 2.8 < ratio < 3.5


def test_bench_mask_head_compares_the_two_graphs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_mask_head.py'), '--model', 'mossformer', '--blocks', '1',
         '--seconds', '0.5', '--repeats', '1', '--threads', '1'], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if 'frames-first' in line]
    # float32 GEMMs against convolutions over the same products: rounding of sums of up to 1024 terms
    assert float(line.rsplit(' ', 1)[1]) < 1e-5


@pytest.mark.parametrize('compare, extra', [('tiles', ['--tile-frames', '256']), ('buffers', ['--bf16'])])
def test_bench_buffers_compares_two_modes(compare, extra):
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_buffers.py'), '--compare', compare, '--model', 'mossformer2',
         '--num-blocks', '1', '--seconds', '1', '--repeats', '1', '--threads', '1', *extra],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    modes = ('tiled', 'whole') if compare == 'tiles' else ('reused', 'fresh')
    for mode in modes:
        (line,) = [line for line in proc.stdout.splitlines()
                   if line.strip().startswith(mode) and 'page faults per pass' in line]
        assert float(line.split(':')[1].split()[0]) > 0  # its median time in seconds
    (ratio,) = [line for line in proc.stdout.splitlines() if f'{modes[0]} / {modes[1]}' in line]
    # the same arithmetic on the same rows; only a GEMM kernel chosen for another row count may sum differently
    assert float(ratio.split('difference ')[1].split()[0]) < 1e-5


def test_bench_bf16_training_smoke_run_reports_both_curves(tmp_path):
    out = tmp_path / 'curves.json'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_bf16_training.py'), '--num-blocks', '1', '--steps', '3',
         '--batch', '1', '--seconds', '1', '--eval', '1', '--window', '2', '--every', '1', '--threads', '1',
         '--json', str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    fp32, bf16 = result['curves']['fp32'], result['curves']['bf16']
    assert len(fp32) == len(bf16) == 3
    # the first step sees identical weights and data: the losses differ only by the bf16 forward's rounding
    # (its output is over 25 dB from the fp32 one), far below 1 dB of SI-SNR
    assert abs(fp32[0] - bf16[0]) < 1.0
    assert all(abs(value) < 200 for value in fp32 + bf16)
    assert set(result['eval_si_snr_db']) == {'fp32', 'bf16'}
    assert 'held-out PIT SI-SNR after training' in proc.stdout


def test_bench_bf16_fidelity_smoke_run_reports_the_error_budget(tmp_path):
    out = tmp_path / 'fidelity.json'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_bf16_fidelity.py'), '--model', 'mossformer', '--num-blocks', '1',
         '--seconds', '1', '--threads', '1', '--json', str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert 10 < result['shipped_db'] < 200
    assert set(result['regions_db']) == {'joint attention in float32', 'hidden projection in float32',
                                         'output projection in float32', 'depthwise convolutions in float32'}
    # float32 in a region removes that region's rounding: the attention's share is the largest there is
    assert result['regions_db']['joint attention in float32'] > result['shipped_db']
    weights = result['rounded_weights_db']
    assert 'attention.to_hidden.linear.weight' in weights and 'encoder.conv.weight' in weights
    # the rounding errors of all groups together add up: no single group's is larger (1 dB for chance cancellation)
    assert weights['all weights'] < min(v for k, v in weights.items() if k != 'all weights') + 1.0


@pytest.mark.skipif(shutil.which('c++') is None and shutil.which('g++') is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_bench_compile_compares_a_compiled_block_with_eager():
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_compile.py'), '--model', 'mossformer', '--num-blocks', '1',
         '--seconds', '0.5', '--repeats', '1', '--threads', '1', '--mode', 'inference'],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if 'compiled / eager' in line]
    assert '1 compiled modules' in line and float(line.split('compiled / eager ')[1].split(',')[0]) > 0
    # inductor fuses and reorders float32 arithmetic: rounding-level differences, not another result
    assert float(line.split('max|diff| ')[1]) < 1e-5
