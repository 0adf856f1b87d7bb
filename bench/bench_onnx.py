"""ONNX Runtime vs this package's PyTorch path: speed, peak memory and parity at the released sizes.

For each model (MossFormer(L) and MossFormer2 at the released sizes, 8 kHz, 2 speakers, seed-0 random
weights saved as a model dir in the released format, exported with `mossformer export`'s code), two
worker processes are started, one per backend, each with the model loaded once:

* ``pytorch``: `SeparationEngine` around the PyTorch separator (eval mode, fp32, the CLI's path);
* ``onnxruntime``: `SeparationEngine` around `OnnxSeparator` (the ``--backend onnxruntime`` path).

Both separate the same mixture of two demo voices (``--seconds``, default 4 s, one chunk).  After one
warm-up call each, the parent asks them in turn, ``--repeats`` times, alternating which goes first,
so that both see the same machine load; reported are the median and the fastest call, the real-time
factor (median / audio seconds), the resident memory after loading, the peak resident memory of the
process (``VmHWM``) and the peak minus the loaded memory (what separating needed), and the
ratios ONNX Runtime / PyTorch.  ``max_abs_diff`` is the largest difference between the two backends'
separated sources (the model output, before any level matching) on that mixture, and the probe line
the same on a unit-scale test signal of ``--probe-samples`` (default 6 s + 3 samples, a length that is
a multiple of neither the stride nor a group): the released-size parity figures.

    python bench/bench_onnx.py --threads 1
    python bench/bench_onnx.py --models mossformer2 --seconds 4 --repeats 7 --threads 2 --json onnx.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from proc_memory import current_mb, peak_mb  # bench/, this script's folder

RATE = 8000
MODELS = {'mossformer': 'MossFormer(L)', 'mossformer2': 'MossFormer2'}
BACKENDS = ('pytorch', 'onnxruntime')
READY, RESULT = 'READY ', 'RESULT '


# ---------------------------------------------------------------------------
# worker: one backend, model loaded once, one separation per 'run' line on stdin
# ---------------------------------------------------------------------------


def _say(prefix: str, payload: Dict[str, Any]) -> None:
    sys.stdout.write(prefix + json.dumps(payload) + '\n')
    sys.stdout.flush()


def run_worker(backend: str, model_dir: str, wav: str, threads: int, out: str) -> None:
    import numpy as np
    import soundfile
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    from modelscope_mossformer.inference import SeparationEngine

    if backend == 'pytorch':
        from modelscope_mossformer.model import load_model_dir

        model = load_model_dir(model_dir)
        model.separator.eval()
        engine = SeparationEngine(model.separator, model.sample_rate)
    else:
        from modelscope_mossformer.onnx_backend import OnnxSeparator, check_matches_model_dir, onnx_file_for

        separator = OnnxSeparator(onnx_file_for(model_dir), threads=threads)
        check_matches_model_dir(separator, model_dir)
        engine = SeparationEngine(separator, separator.sample_rate)
    audio, rate = soundfile.read(wav, dtype='float32')
    if rate != engine.sample_rate:
        raise ValueError(f'{wav}: {rate} Hz, the model runs at {engine.sample_rate} Hz')
    mix = torch.from_numpy(audio)
    _say(READY, {'load_s': time.perf_counter() - started, 'loaded_rss_mb': current_mb()})
    sources = None
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ['run']:
            begin = time.perf_counter()
            sources = engine.separate(mix)
            _say(RESULT, {'elapsed_s': time.perf_counter() - begin, 'peak_rss_mb': peak_mb()})
        elif command[:1] == ['probe']:  # parity on a unit-scale test signal of N samples (not timed)
            from modelscope_mossformer.onnx_export import probe_signal

            np.save(f'{out}.probe.npy', engine.separate(probe_signal(int(command[1]))[0]).numpy())
            _say(RESULT, {})
        else:
            break
    if sources is not None:
        np.save(out, sources.numpy())


# ---------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------


def make_model_dir(name: str, directory: Path) -> Path:
    import torch

    from modelscope_mossformer.metainfo import Models
    from modelscope_mossformer.model import MossFormerSeparation
    from modelscope_mossformer.models import mossformer2_base, mossformer_large

    if not (directory / 'configuration.json').is_file():
        config, model_type = ((mossformer_large(), Models.mossformer_8k) if name == 'mossformer'
                              else (mossformer2_base(), Models.mossformer2_8k))
        torch.manual_seed(0)
        MossFormerSeparation(config=config, model_type=model_type).save_model_dir(directory)
    return directory


def export_if_needed(model_dir: Path) -> Dict[str, Any]:
    """Export DIR/model.onnx unless an export of the same weights is there; returns the export time."""
    from modelscope_mossformer.onnx_backend import OnnxSeparator, StaleExportError, check_matches_model_dir
    from modelscope_mossformer.model import load_model_dir
    from modelscope_mossformer.onnx_export import DEFAULT_ONNX_FILE, export_model

    path = model_dir / DEFAULT_ONNX_FILE
    if path.is_file():
        try:
            check_matches_model_dir(OnnxSeparator(path, threads=1), model_dir)
            return {'export_s': None, 'onnx_mb': path.stat().st_size / 2 ** 20}
        except (StaleExportError, ValueError):
            pass
    stages: Dict[str, float] = {}
    last = [time.perf_counter(), 'load']

    def on_stage(name: str) -> None:
        now = time.perf_counter()
        stages[last[1]] = now - last[0]
        last[:] = [now, name]

    begin = time.perf_counter()
    export_model(load_model_dir(model_dir), path, model_dir=model_dir, on_stage=on_stage)
    on_stage('done')
    return {'export_s': time.perf_counter() - begin, 'export_stages_s': stages,
            'onnx_mb': path.stat().st_size / 2 ** 20}


def make_input(seconds: float, path: Path) -> Path:
    """A mixture of two demo voices, float32 at 8 kHz."""
    import numpy as np
    import soundfile

    from modelscope_mossformer.data.synth import make_voices, synthesize_utterance

    voices = make_voices(4, seed=0)
    rng = np.random.default_rng(0)
    mix = synthesize_utterance(voices[0], seconds, RATE, rng) + synthesize_utterance(voices[2], seconds, RATE, rng)
    soundfile.write(str(path), mix[:int(seconds * RATE)].astype(np.float32), RATE, subtype='FLOAT')
    return path


class Worker:
    def __init__(self, backend: str, model_dir: Path, wav: Path, threads: int, out: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), '--worker', backend, '--model-dir', str(model_dir),
             '--wav', str(wav), '--threads', str(threads), '--out', str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._read(READY)

    def _read(self, prefix: str) -> Dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return json.loads(line[len(prefix):])
        raise RuntimeError(f'worker exited with status {self.proc.wait()} before sending {prefix.strip()}')

    def run(self, command: str = 'run') -> Dict[str, Any]:
        self.proc.stdin.write(command + '\n')
        self.proc.stdin.flush()
        return self._read(RESULT)

    def close(self) -> None:
        self.proc.stdin.write('stop\n')
        self.proc.stdin.close()
        if self.proc.wait(timeout=600):
            raise RuntimeError(f'worker exited with status {self.proc.returncode}')


def bench_model(name: str, work: Path, seconds: float, repeats: int, threads: int,
                probe_samples: int) -> Dict[str, Any]:
    import numpy as np

    model_dir = make_model_dir(name, work / f'{name}_8k')
    exported = export_if_needed(model_dir)
    wav = make_input(seconds, work / f'mix_{seconds:g}s.wav')
    workers = {backend: Worker(backend, model_dir, wav, threads, work / f'{name}_{backend}.npy')
               for backend in BACKENDS}
    try:
        warmup = {backend: worker.run() for backend, worker in workers.items()}
        times: Dict[str, List[float]] = {backend: [] for backend in BACKENDS}
        peaks: Dict[str, float] = {}
        for index in range(repeats):
            order = BACKENDS if index % 2 == 0 else BACKENDS[::-1]
            for backend in order:
                result = workers[backend].run()
                times[backend].append(result['elapsed_s'])
                peaks[backend] = result['peak_rss_mb']
        if probe_samples:
            for worker in workers.values():
                worker.run(f'probe {probe_samples}')
    finally:
        for worker in workers.values():
            worker.close()
    outputs = {backend: np.load(workers[backend].out) for backend in BACKENDS}
    probe = {}
    if probe_samples:
        probes = {backend: np.load(f'{workers[backend].out}.probe.npy') for backend in BACKENDS}
        probe = {'probe_samples': probe_samples,
                 'probe_max_abs_diff': float(np.abs(probes['onnxruntime'] - probes['pytorch']).max()),
                 'probe_max_abs_source': float(np.abs(probes['pytorch']).max())}
    rows = {}
    for backend in BACKENDS:
        loaded = workers[backend].ready['loaded_rss_mb']
        median = statistics.median(times[backend])
        rows[backend] = {'load_s': workers[backend].ready['load_s'], 'first_s': warmup[backend]['elapsed_s'],
                         'median_s': median, 'min_s': min(times[backend]), 'rtf': median / seconds,
                         'loaded_rss_mb': loaded, 'peak_rss_mb': peaks[backend],
                         'separation_mb': peaks[backend] - loaded}
    torch_row, ort_row = rows['pytorch'], rows['onnxruntime']
    return {
        'model': MODELS[name], **exported, 'backends': rows,
        'ratio_time': ort_row['median_s'] / torch_row['median_s'],
        'ratio_peak_rss': ort_row['peak_rss_mb'] / torch_row['peak_rss_mb'],
        'ratio_separation_mb': ort_row['separation_mb'] / max(torch_row['separation_mb'], 1e-9),
        'max_abs_diff': float(np.abs(outputs['onnxruntime'] - outputs['pytorch']).max()),
        'max_abs_source': float(np.abs(outputs['pytorch']).max()), **probe,
    }


def print_report(results: List[Dict[str, Any]], seconds: float, repeats: int, threads: int) -> None:
    print(f'{seconds:g} s at {RATE} Hz, {threads} thread(s), median of {repeats} interleaved runs after one warm-up')
    header = (f'{"model":14s} {"backend":12s} {"load s":>7s} {"first s":>8s} {"median s":>9s} {"min s":>7s} '
              f'{"RTF":>6s} {"loaded MB":>10s} {"peak MB":>8s} {"sep. MB":>8s}')
    print(header)
    print('-' * len(header))
    for result in results:
        for backend, row in result['backends'].items():
            print(f'{result["model"]:14s} {backend:12s} {row["load_s"]:7.2f} {row["first_s"]:8.3f} '
                  f'{row["median_s"]:9.3f} {row["min_s"]:7.3f} {row["rtf"]:6.3f} {row["loaded_rss_mb"]:10.0f} '
                  f'{row["peak_rss_mb"]:8.0f} {row["separation_mb"]:8.0f}')
        export = 'cached'
        if result['export_s'] is not None:
            stages = ', '.join(f'{k} {v:.0f} s' for k, v in result['export_stages_s'].items())
            export = f'{result["export_s"]:.0f} s ({stages})'
        print(f'{"":14s} onnxruntime / pytorch: time x{result["ratio_time"]:.2f}, peak RSS '
              f'x{result["ratio_peak_rss"]:.2f}, separation memory x{result["ratio_separation_mb"]:.2f}; '
              f'max |diff| {result["max_abs_diff"]:.2e} (sources peak {result["max_abs_source"]:.2f}); '
              f'model.onnx {result["onnx_mb"]:.0f} MB, export {export}')
        if 'probe_samples' in result:
            print(f'{"":14s} parity on a {result["probe_samples"]}-sample unit-scale test signal '
                  f'({result["probe_samples"] / RATE:.3f} s, onnx_export.probe_signal): max |diff| '
                  f'{result["probe_max_abs_diff"]:.2e} (sources peak {result["probe_max_abs_source"]:.2f})')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', default='mossformer,mossformer2', help='comma-separated: mossformer, mossformer2')
    parser.add_argument('--seconds', type=float, default=4.0, help='input length (default: 4)')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per backend (default: 5)')
    parser.add_argument('--threads', type=int, default=1, help='threads for both backends (default: 1)')
    parser.add_argument('--probe-samples', type=int, default=6 * RATE + 3,
                        help='length of the parity test signal (default: 6 s + 3 samples; 0: skip)')
    parser.add_argument('--work-dir', default=None, help='model dirs, exports and inputs (kept; default: a temp dir)')
    parser.add_argument('--json', default=None, help='also write the results here')
    parser.add_argument('--worker', choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument('--model-dir', help=argparse.SUPPRESS)
    parser.add_argument('--wav', help=argparse.SUPPRESS)
    parser.add_argument('--out', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.model_dir, args.wav, args.threads, args.out)
        return
    names = [n.strip() for n in args.models.split(',') if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f'unknown model(s) {unknown}; choose from {sorted(MODELS)}')
    import onnxruntime
    import torch

    load_before = os.getloadavg()[0]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix='bench_onnx_'))
    work.mkdir(parents=True, exist_ok=True)
    results = [bench_model(name, work, args.seconds, args.repeats, args.threads, args.probe_samples)
               for name in names]
    print(f'torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, '
          f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), '
          f'load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end')
    print_report(results, args.seconds, args.repeats, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps({'seconds': args.seconds, 'threads': args.threads,
                                               'repeats': args.repeats, 'results': results}, indent=2) + '\n')


if __name__ == '__main__':
    main()
