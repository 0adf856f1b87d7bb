"""Speed of this package's models against ModelScope's implementation, side by side in one run.

Sections (``--sections``, all by default):

* ``peak``: this machine's float32 (and bfloat16) matmul throughput at the size of the
  models' largest GEMM ([frames, 512] x [512, 2048]), best of several runs: the hardware
  reference for the GFLOP/s figures below (float32 through the backend our GEMMs take,
  ``models.gemm``, and through torch's BLAS, which the reference's take).
* ``inference``: forward pass at the released sizes (batch 1, 8 kHz) for each length in
  ``--lengths``: ours vs the reference (ModelScope's classes holding the same weights),
  interleaved, median of ``--repeats`` (one repeat for inputs of 30 s and more), the
  largest absolute output difference, and the GFLOP/s both achieve (matmul and conv
  FLOPs counted once on the meta device with torch.utils.flop_counter).
* ``bf16``: the same forward under CPU bfloat16 autocast (an explicit option; the default
  stays fp32): time against our fp32 run and the reference, and fidelity as the SI-SNR of
  the bf16 output against our fp32 output, on the timing input and (for inputs under 30 s)
  on a two-talker synthetic speech mixture with the default weights and with every
  parameter perturbed by 0.05 N(0, 1).
* ``train``: one training step (forward + backward of the mean squared output + an Adam
  update, batch 1, 4 s segments as in the released recipe, dropout on): ours vs the reference, ours in
  bf16 autocast, and ours with activation checkpointing; the largest relative gradient
  difference to the reference (dropout off for that check).
* ``profile``: what remains, as the operators that take most of our forward's time (``torch.profiler``,
  self CPU time, 4 s, float32 and bf16, ``--profile-blocks`` blocks, 6 by default: the blocks are
  identical, so a few give each operator's share of a block).
* ``memory`` (run first): peak resident memory of a training step (forward + backward) for 2 s and
  4 s segments, with and without activation checkpointing, each in a fresh process;
  memory per second of training audio = the difference / 2 s.

    python bench/bench_speed.py --threads 2 --lengths 4,60 --json bench_speed.json
    python bench/bench_speed.py --sections peak,inference --lengths 4 --models mossformer

With ``peak`` and ``inference`` (or ``train``) both run, the summary also gives each forward's (or
training step's) floor: its FLOPs at the matmul peak (float32, and bfloat16 for the bf16 rows) over
the reference's time, the ratio ours would reach if every FLOP ran at peak and nothing else took
time. A target ratio below the floor cannot be met on that machine.

Exit status 1 when an output differs from the reference by more than 1e-4.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from proc_memory import current_mb, peak_mb  # bench/, this script's folder

from modelscope_mossformer.models import build_separator, mossformer2_base, mossformer_large
from modelscope_mossformer.models.gemm import ENV_VAR, cpu_gemm_backend
from modelscope_mossformer.models.reference import paired_gradients, reference_forward, reference_with_weights_of

RATE = 8000
MAX_ABS_DIFF = 1e-4
CONFIGS: Dict[str, Callable] = {'mossformer': mossformer_large, 'mossformer2': mossformer2_base}
LABELS = {'mossformer': 'MossFormer(L)', 'mossformer2': 'MossFormer2'}
SECTIONS = ('peak', 'inference', 'bf16', 'train', 'memory', 'profile')


def log(message: str) -> None:
    print(message, flush=True)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: Dict[str, Callable[[], Any]], repeats: int,
                outputs: Optional[Dict[str, Any]] = None) -> Dict[str, List[float]]:
    """Run each function `repeats` times, alternating, so that all see the same machine state.

    The last result of each function goes into `outputs` when given.
    """
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            if outputs is not None:
                outputs[name] = result
    return times


def si_snr_db(estimate: torch.Tensor, target: torch.Tensor) -> float:
    estimate = estimate.double().flatten() - estimate.double().mean()
    target = target.double().flatten() - target.double().mean()
    projection = (estimate @ target) / (target @ target) * target
    return float(10 * torch.log10(projection.pow(2).sum() / (estimate - projection).pow(2).sum()))


NUM_BLOCKS: Optional[int] = None  # --num-blocks: fewer blocks than released (smoke runs); None = released


def config_of(name: str, num_blocks: Optional[int] = None):
    """The released-size config of `name`, with `num_blocks` (default: --num-blocks) blocks when given."""
    num_blocks = NUM_BLOCKS if num_blocks is None else num_blocks
    return CONFIGS[name]() if num_blocks is None else CONFIGS[name](num_blocks=num_blocks)


def forward_flops(name: str, num_samples: int) -> int:
    """Matmul/conv FLOPs of one forward pass of our model (counted on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device('meta'):
        model = build_separator(config_of(name)).eval()
        mix = torch.empty(1, num_samples)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(mix)
    return counter.get_total_flops()


def cpu_name() -> str:
    """The CPU model from lscpu, with the bf16 matrix extensions it has (the bf16 figures depend on them)."""
    try:
        text = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(':', 1) for line in text.splitlines() if ':' in line)
    model = fields.get('Model name', platform.machine()).strip()
    flags = fields.get('Flags', '').split()
    extras = [f for f in ('avx512_bf16', 'amx_bf16') if f in flags]
    return f'{model} ({fields.get("CPU(s)", "?").strip()} CPUs; {", ".join(extras) or "no bf16 extensions"})'


def perturbed_copy(model: torch.nn.Module, std: float = 0.05, seed: int = 3) -> torch.nn.Module:
    """A copy of `model` with std * N(0, 1) added to every trainable parameter (weights far from init)."""
    import copy

    twin = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in twin.parameters():
            if parameter.requires_grad:
                parameter.add_(std * torch.randn(parameter.shape, generator=generator))
    return twin


def speech_mixture(seconds: float, rate: int = RATE) -> torch.Tensor:
    """[1, T] two synthetic talkers (the demo corpus's voices) at `rate`, peak 0.5."""
    import numpy as np

    from modelscope_mossformer.data.synth import make_voices, synthesize_utterance

    rng = np.random.default_rng(0)
    mix = sum(synthesize_utterance(voice, seconds, rate, rng) for voice in make_voices(2, seed=1))
    mix = torch.tensor(mix, dtype=torch.float32)[None]
    return 0.5 * mix / mix.abs().max()


def build_pair(name: str):
    torch.manual_seed(0)
    ours = build_separator(config_of(name)).eval()
    reference = reference_with_weights_of(ours).eval()
    return ours, reference


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------


def bench_peak(frames: int = 4000) -> Dict[str, Any]:
    """Best-of-10 GEMM throughput; 'float32' is the library our float32 GEMMs run through (models.gemm),
    'float32_blas' torch's own dispatch, which the reference uses."""
    from modelscope_mossformer.models import gemm

    result = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(frames, 512).to(dtype)
        b = torch.randn(512, 2048).to(dtype)
        torch.matmul(a, b)
        best = min(timed(lambda: torch.matmul(a, b)) for _ in range(10))
        result[str(dtype).replace('torch.', '')] = 2 * frames * 512 * 2048 / best / 1e9
    result['float32_blas'] = result['float32']
    if gemm.cpu_gemm_backend() == 'onednn':
        a, weight = torch.randn(frames, 512), torch.randn(2048, 512)
        with torch.no_grad():
            gemm.linear(a, weight)
            best = min(timed(lambda: gemm.linear(a, weight)) for _ in range(10))
        result['float32'] = 2 * frames * 512 * 2048 / best / 1e9
    log(f'matmul peak ([{frames}, 512] x [512, 2048]): fp32 {result["float32"]:.1f} GFLOP/s '
        f'({gemm.cpu_gemm_backend()}; torch\'s BLAS {result["float32_blas"]:.1f}), '
        f'bf16 {result["bfloat16"]:.1f} GFLOP/s')
    return {'matmul_gflops': result}


def bench_inference(name: str, lengths: List[float], repeats: int, with_bf16: bool, with_fp32: bool
                    ) -> List[Dict[str, Any]]:
    ours, reference = build_pair(name)
    rows = []
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        warm = torch.randn(1, 2 * RATE, generator=generator)
        ours(warm), reference_forward(reference, warm)  # first-call costs out of the timings
        for seconds in lengths:
            mix = 0.1 * torch.randn(1, int(seconds * RATE), generator=generator)
            runs = repeats if seconds < 30 else 1
            flops = forward_flops(name, mix.shape[1])
            row: Dict[str, Any] = {'model': LABELS[name], 'seconds': seconds, 'repeats': runs, 'gflop': flops / 1e9}
            out_fp32 = None
            if with_fp32:
                outputs: Dict[str, torch.Tensor] = {}
                times = interleaved({'ours': lambda: ours(mix),
                                     'reference': lambda: reference_forward(reference, mix)}, runs, outputs)
                out_fp32, out_reference = outputs['ours'], outputs['reference']
                row.update(ours_s=statistics.median(times['ours']), reference_s=statistics.median(times['reference']),
                           times=times, max_abs_diff=float((out_fp32 - out_reference).abs().max()))
                row['ratio'] = row['ours_s'] / row['reference_s']
                row['ours_gflops'] = flops / 1e9 / row['ours_s']
                row['reference_gflops'] = flops / 1e9 / row['reference_s']
                log(f'  {LABELS[name]:<14} {seconds:>5g} s fp32: ours {row["ours_s"]:.2f} s, reference '
                    f'{row["reference_s"]:.2f} s, ratio {row["ratio"]:.3f}, {row["ours_gflops"]:.1f} vs '
                    f'{row["reference_gflops"]:.1f} GFLOP/s, max|diff| {row["max_abs_diff"]:.2e}')
            if with_bf16:
                def run_bf16():
                    with torch.autocast('cpu', dtype=torch.bfloat16):
                        return ours(mix)
                outputs = {}
                times = interleaved({'bf16': run_bf16, 'fp32': lambda: ours(mix)}, runs, outputs)
                out_bf16, out_fp32 = outputs['bf16'], outputs['fp32']
                row.update(bf16_s=statistics.median(times['bf16']), fp32_again_s=statistics.median(times['fp32']),
                           bf16_si_snr_db=si_snr_db(out_bf16.float(), out_fp32))
                row['bf16_over_fp32'] = row['bf16_s'] / row['fp32_again_s']
                if 'reference_s' in row:
                    row['bf16_over_reference'] = row['bf16_s'] / row['reference_s']
                log(f'  {LABELS[name]:<14} {seconds:>5g} s bf16: {row["bf16_s"]:.2f} s = '
                    f'{row["bf16_over_fp32"]:.3f} x our fp32, SI-SNR vs fp32 {row["bf16_si_snr_db"]:.1f} dB')
                if seconds < 30:  # fidelity on speech, default and perturbed weights (once each)
                    speech = speech_mixture(seconds)
                    for label, model in (('default', ours), ('perturbed', perturbed_copy(ours))):
                        with torch.autocast('cpu', dtype=torch.bfloat16):
                            low = model(speech)
                        row[f'bf16_si_snr_speech_{label}_db'] = si_snr_db(low.float(), model(speech))
                    log(f'  {LABELS[name]:<14} {seconds:>5g} s bf16 on speech: SI-SNR vs fp32 '
                        f'{row["bf16_si_snr_speech_default_db"]:.1f} dB (default weights), '
                        f'{row["bf16_si_snr_speech_perturbed_db"]:.1f} dB (weights + 0.05 N(0, 1))')
            rows.append(row)
    return rows


def _step(model: torch.nn.Module, forward: Callable, mix: torch.Tensor, bf16: bool = False,
          optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """One training step: forward, backward and, given an optimizer, its update (the trainer's Adam)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        out = forward(mix)
    out.float().pow(2).mean().backward()
    if optimizer is not None:
        optimizer.step()


def train_flops(name: str, num_samples: int) -> int:
    """Matmul/conv FLOPs of one training step's forward and backward of our model (meta device).

    torch's counter takes a grouped convolution's backward for an ungrouped one (a depthwise
    conv's weight gradient comes out C times too large: 14.6 of 16.0 counted TFLOP for
    MossFormer(L) at 4 s), so here each gradient a convolution's backward computes counts as much
    as the convolution itself.
    """
    from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

    def conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                      _output_padding, _groups, output_mask, out_shape) -> int:
        forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
        return forward * sum(1 for wanted in output_mask[:2] if wanted)

    with torch.device('meta'):
        model = build_separator(config_of(name)).train()
        mix = torch.empty(1, num_samples)
    with FlopCounterMode(display=False,
                         custom_mapping={torch.ops.aten.convolution_backward: conv_backward}) as counter:
        model(mix).pow(2).mean().backward()
    return counter.get_total_flops()


def bench_train(name: str, seconds: float, repeats: int) -> Dict[str, Any]:
    ours, reference = build_pair(name)
    generator = torch.Generator().manual_seed(2)
    mix = 0.1 * torch.randn(1, int(seconds * RATE), generator=generator)
    # gradients agree (dropout off so that both are deterministic)
    _step(ours, ours, mix)
    _step(reference, lambda m: reference_forward(reference, m), mix)
    # norm-relative per parameter: |g_ours - g_ref| / |g_ref| (a max-relative figure depends on which thread
    # summed which element first, so it moved between 1e-4 and 4e-3 with the machine's load)
    worst = max(float((actual - expected).norm() / expected.norm().clamp(min=1e-12))
                for _, actual, expected in paired_gradients(ours, reference))
    ours.train(), reference.train()
    # Adam as the trainer builds it (a small rate: the timed steps should not push the weights far)
    adam_ours, adam_reference = (torch.optim.Adam(m.parameters(), lr=1e-6) for m in (ours, reference))

    def checkpointed():
        ours.activation_checkpointing = True
        try:
            _step(ours, ours, mix, optimizer=adam_ours)
        finally:
            ours.activation_checkpointing = False

    fns = {'ours': lambda: _step(ours, ours, mix, optimizer=adam_ours),
           'reference': lambda: _step(reference, lambda m: reference_forward(reference, m), mix,
                                      optimizer=adam_reference),
           'ours_bf16': lambda: _step(ours, ours, mix, bf16=True, optimizer=adam_ours),
           'ours_checkpointed': checkpointed}
    for fn in fns.values():
        fn()  # warm-up
    times = interleaved(fns, repeats)
    med = {key: statistics.median(value) for key, value in times.items()}
    row = {'model': LABELS[name], 'seconds': seconds, 'repeats': repeats, 'times': times,
           'gflop': train_flops(name, mix.shape[1]) / 1e9, 'norm_rel_grad_diff': worst,
           **{f'{key}_s': value for key, value in med.items()},
           'ratio': med['ours'] / med['reference'], 'bf16_over_reference': med['ours_bf16'] / med['reference'],
           'bf16_over_fp32': med['ours_bf16'] / med['ours'],
           'checkpointed_over_plain': med['ours_checkpointed'] / med['ours']}
    log(f'  {LABELS[name]:<14} train step {seconds:g} s: ours {med["ours"]:.2f} s, reference '
        f'{med["reference"]:.2f} s, ratio {row["ratio"]:.3f}; bf16 {med["ours_bf16"]:.2f} s '
        f'({row["bf16_over_reference"]:.3f} x reference); checkpointed {med["ours_checkpointed"]:.2f} s '
        f'({row["checkpointed_over_plain"]:.2f} x plain); norm-relative grad diff {worst:.1e}')
    return row


def memory_child(spec: Dict[str, Any]) -> Dict[str, Any]:
    torch.set_num_threads(spec['threads'])
    torch.manual_seed(0)
    model = build_separator(CONFIGS[spec['model']](**({} if spec['num_blocks'] is None else
                                                       {'num_blocks': spec['num_blocks']}))).train()
    model.activation_checkpointing = spec['checkpointing']
    mix = 0.1 * torch.randn(1, int(spec['seconds'] * RATE))
    rss = current_mb()
    _step(model, model, mix)
    peak = peak_mb()  # this process's own peak (see proc_memory)
    return {'rss_before_mb': rss, 'peak_mb': peak, 'step_mb': peak - rss}



def bench_memory(name: str, threads: int) -> Dict[str, Any]:
    results: Dict[str, Any] = {'model': LABELS[name]}
    for checkpointing in (False, True):
        steps = {}
        for seconds in (2.0, 4.0):
            spec = {'model': name, 'seconds': seconds, 'checkpointing': checkpointing, 'threads': threads,
                    'num_blocks': NUM_BLOCKS}
            proc = subprocess.run([sys.executable, __file__, '--child', json.dumps(spec)], capture_output=True,
                                  text=True, check=True)
            steps[seconds] = json.loads(proc.stdout.strip().splitlines()[-1])['step_mb']
        key = 'checkpointed' if checkpointing else 'plain'
        results[key] = {'step_mb_2s': steps[2.0], 'step_mb_4s': steps[4.0],
                        'mb_per_second': (steps[4.0] - steps[2.0]) / 2.0}
    results['ratio'] = results['checkpointed']['mb_per_second'] / results['plain']['mb_per_second']
    log(f'  {LABELS[name]:<14} training memory: {results["plain"]["mb_per_second"]:.0f} MB per second of audio '
        f'plain, {results["checkpointed"]["mb_per_second"]:.0f} MB/s checkpointed ({results["ratio"]:.2f} x); '
        f'4 s step {results["plain"]["step_mb_4s"]:.0f} MB vs {results["checkpointed"]["step_mb_4s"]:.0f} MB')
    return results


def bench_profile(name: str, blocks: int, top: int = 12) -> Dict[str, Any]:
    """Top operators by self CPU time of one 4 s forward of `name` with `blocks` blocks, fp32 and bf16."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = build_separator(config_of(name, blocks)).eval()
    mix = speech_mixture(4.0)
    result: Dict[str, Any] = {'model': LABELS[name], 'blocks': blocks}
    for precision in ('fp32', 'bf16'):
        def forward():
            with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):
                return model(mix)
        forward()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total_ms = sum(e.self_cpu_time_total for e in events) / 1e3
        rows = [{'op': e.key, 'calls': e.count, 'self_ms': e.self_cpu_time_total / 1e3} for e in events[:top]]
        result[precision] = {'total_ms': total_ms, 'top': rows}
        log(f'  {LABELS[name]:<14} {precision} profile, {blocks} blocks, 4 s: {total_ms:.0f} ms self CPU time')
        for row in rows:
            log(f'    {row["op"]:<48} {row["calls"]:>5} calls {row["self_ms"]:>9.1f} ms '
                f'({100 * row["self_ms"] / total_ms:4.1f} %)')
    return result


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def add_floors(result: Dict[str, Any]) -> None:
    """Each inference and training row's floors: its FLOPs at the fp32 / bf16 matmul peak over the
    reference's time."""
    peak = result.get('peak', {}).get('matmul_gflops', {})
    for row in (*result.get('inference', []), *result.get('train', [])):
        if peak and 'reference_s' in row:
            row['floor_fp32'] = row['gflop'] / peak['float32'] / row['reference_s']
            row['floor_bf16'] = row['gflop'] / peak['bfloat16'] / row['reference_s']


def print_summary(result: Dict[str, Any]) -> None:
    log('\n== summary ==')
    peak = result.get('peak', {}).get('matmul_gflops', {})
    if peak:
        log(f'matmul peak: fp32 {peak["float32"]:.1f} GFLOP/s, bf16 {peak["bfloat16"]:.1f} GFLOP/s')
    nan = float('nan')
    rows = [r for r in result.get('inference', []) if 'ratio' in r]
    if rows:
        log(f'{"inference (batch 1)":<24} {"ours s":>8} {"ref s":>8} {"ours/ref":>9} {"floor":>6} {"GFLOP/s":>8} '
            f'{"% peak":>7} {"max|diff|":>10}')
        for r in rows:
            share = 100 * r['ours_gflops'] / peak['float32'] if peak else nan
            log(f'{r["model"] + " " + format(r["seconds"], "g") + " s":<24} {r["ours_s"]:>8.2f} '
                f'{r["reference_s"]:>8.2f} {r["ratio"]:>9.3f} {r.get("floor_fp32", nan):>6.3f} '
                f'{r["ours_gflops"]:>8.1f} {share:>6.0f}% {r["max_abs_diff"]:>10.2e}')
    rows = [r for r in result.get('inference', []) if 'bf16_s' in r]
    if rows:
        log(f'{"bf16 inference":<24} {"bf16 s":>8} {"/fp32":>8} {"/ref":>8} {"floor":>6} {"SI-SNR dB":>10} '
            f'{"speech, default":>16} {"speech, perturbed":>18}')
        for r in rows:
            log(f'{r["model"] + " " + format(r["seconds"], "g") + " s":<24} {r["bf16_s"]:>8.2f} '
                f'{r["bf16_over_fp32"]:>8.3f} {r.get("bf16_over_reference", nan):>8.3f} '
                f'{r.get("floor_bf16", nan):>6.3f} {r["bf16_si_snr_db"]:>10.1f} '
                f'{r.get("bf16_si_snr_speech_default_db", nan):>16.1f} '
                f'{r.get("bf16_si_snr_speech_perturbed_db", nan):>18.1f}')
    for r in result.get('train', []):
        floors = (f' (floors {r["floor_fp32"]:.3f} / {r["floor_bf16"]:.3f})' if 'floor_fp32' in r else '')
        log(f'train step {r["model"]} {r["seconds"]:g} s, {r["gflop"]:.0f} GFLOP: ours/ref {r["ratio"]:.3f}, bf16/ref '
            f'{r["bf16_over_reference"]:.3f}{floors}, {r["gflop"] / r["ours_s"]:.1f} GFLOP/s fp32, '
            f'checkpointed/plain {r["checkpointed_over_plain"]:.2f}, '
            f'norm-relative grad diff {r["norm_rel_grad_diff"]:.1e}')
    for r in result.get('memory', []):
        log(f'training memory {r["model"]}: {r["plain"]["mb_per_second"]:.0f} -> '
            f'{r["checkpointed"]["mb_per_second"]:.0f} MB per second of audio with activation checkpointing')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sections', default=','.join(SECTIONS), help=f'comma-separated subset of {SECTIONS}')
    parser.add_argument('--models', default='mossformer,mossformer2', help=f'subset of {",".join(CONFIGS)}')
    parser.add_argument('--lengths', default='4,60', help='inference input lengths in seconds (default 4,60)')
    parser.add_argument('--train-seconds', type=float, default=4.0, help='training segment length (default 4)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads (default 2)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per configuration (default 3)')
    parser.add_argument('--num-blocks', type=int, default=None,
                        help='blocks per model (default: the released 24); fewer for a quick smoke run')
    parser.add_argument('--profile-blocks', type=int, default=None,
                        help='blocks in the profiled models (default: --num-blocks if given, else 6)')
    parser.add_argument('--json', type=Path, default=None, help='also write the results to this JSON file')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(',') if s.strip()]
    args.models = [m.strip() for m in args.models.split(',') if m.strip()]
    args.lengths = [float(x) for x in args.lengths.split(',') if x.strip()]
    for value, known, what in ((args.sections, SECTIONS, 'section'), (args.models, CONFIGS, 'model')):
        unknown = [v for v in value if v not in known]
        if unknown:
            parser.error(f'unknown {what}(s) {unknown}; choose from {list(known)}')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    global NUM_BLOCKS
    args = parse_args(argv)
    NUM_BLOCKS = args.num_blocks
    if args.child:
        print(json.dumps(memory_child(json.loads(args.child))))
        return 0
    torch.set_num_threads(args.threads)
    backend = cpu_gemm_backend()
    log(f'torch {torch.__version__}, {args.threads} threads, {cpu_name()}, our float32 GEMMs through {backend} '
        f'({ENV_VAR} chooses), sections {args.sections}')
    result: Dict[str, Any] = {'torch': torch.__version__, 'threads': args.threads, 'num_blocks': NUM_BLOCKS,
                              'cpu': cpu_name(), 'cpu_gemm': backend}
    if 'memory' in args.sections:  # first, while this process is small (each step runs in a fresh process)
        log('training memory ...')
        result['memory'] = [bench_memory(name, args.threads) for name in args.models]
    if 'peak' in args.sections:
        result['peak'] = bench_peak()
    if 'inference' in args.sections or 'bf16' in args.sections:
        result['inference'] = []
        for name in args.models:
            log(f'inference {LABELS[name]} ...')
            result['inference'] += bench_inference(name, args.lengths, args.repeats, 'bf16' in args.sections,
                                                   'inference' in args.sections)
    if 'train' in args.sections:
        log('training step ...')
        result['train'] = [bench_train(name, args.train_seconds, args.repeats) for name in args.models]
    if 'profile' in args.sections:
        log('profile (top operators by self CPU time) ...')
        blocks = args.profile_blocks or NUM_BLOCKS or 6
        result['profile'] = [bench_profile(name, blocks) for name in args.models]
    add_floors(result)
    print_summary(result)
    failures = [f'{r["model"]} {r["seconds"]:g} s: max|diff| {r["max_abs_diff"]:.2e}'
                for r in result.get('inference', []) if r.get('max_abs_diff', 0.0) > MAX_ABS_DIFF]
    for failure in failures:
        log(f'FAIL {failure}')
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + '\n')
        log(f'wrote {args.json}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
