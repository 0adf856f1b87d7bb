"""Inference speed and memory: chunked vs whole-file, and ModelScope's built-in pipeline.

For each model (MossFormer(L) and MossFormer2 at the released sizes, 8 kHz, 2
speakers, seed-0 random weights saved as a model dir in the released format) and
each input length (demo-voice mixtures, 8 kHz, 16-bit), one fresh Python process
per configuration runs:

* ``chunked``: `batch.separate_file` with 8 s chunks and 1 s overlap (the default);
* ``batched``: the same chunks, ``--batch-chunks`` of them (default 4) per forward pass
  (`SeparationEngine(batch_chunks=...)`); ``vs chunked`` is its time over ``chunked``'s and
  ``max diff`` the largest difference of its outputs from ``chunked``'s;
* ``tuned_malloc``: ``chunked`` in a process whose glibc malloc keeps the memory it frees
  (``GLIBC_TUNABLES=`` the `TUNED_MALLOC` below: no mmap for large blocks, no heap trimming);
  ``vs chunked`` and ``max diff`` as for ``batched``;
* ``whole``: `batch.separate_file` without chunking (one forward pass);
* ``builtin``: ModelScope's own `SeparationPipeline` and model classes (this
  package is not imported in that process) on the same model dir, whole file,
  as a user of ModelScope would call it.

Reported per configuration: real-time factor (separation wall time / audio
duration; imports and model loading excluded and reported as ``load_s``), peak
resident memory of the process (``VmHWM``) and its peak minus the resident
memory after loading (what the separation itself needed).  ``parity_db`` is the
SI-SNR of the built-in pipeline's output against ours (whole file), which shows
that both ran the same weights (it is limited by the built-in 16-bit output).

A watchdog polls each process's resident memory and stops it above ``--max-rss-gb``
(default: 85 % of the memory available at start), so that a whole-file run that
would exhaust the machine is reported as such instead of taking it down.

    python bench/bench_inference.py --lengths 10,60 --models mossformer,mossformer2 --threads 2
    python bench/bench_inference.py --lengths 600 --models mossformer2 --modes chunked --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from proc_memory import current_mb, peak_mb  # bench/, this script's folder

REPO_ROOT = Path(__file__).resolve().parents[1]
RATE = 8000
MODES = ('chunked', 'batched', 'tuned_malloc', 'whole', 'builtin')
MODELS = {'mossformer': 'MossFormer(L)', 'mossformer2': 'MossFormer2'}
CHUNK_SECONDS, OVERLAP_SECONDS = 8.0, 1.0
RESULT_PREFIX = 'RESULT '
# glibc malloc settings of the tuned_malloc mode: every block from the heap, freed memory kept there
TUNED_MALLOC = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184'


# ---------------------------------------------------------------------------
# child process: one configuration
# ---------------------------------------------------------------------------


def run_child(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Separate spec['wav'] with spec['mode']; return timings and memory."""
    import torch

    torch.set_num_threads(spec['threads'])
    started = time.perf_counter()
    out_dir = Path(spec['out_dir'])
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec['mode'] == 'builtin':
        import numpy as np
        import soundfile
        from modelscope.pipelines import pipeline

        separate = pipeline('speech-separation', model=spec['model_dir'], device='cpu')
        if type(separate).__module__.startswith('modelscope_mossformer'):
            raise RuntimeError('the built-in pipeline was replaced by this package in the child process')
        load_s = time.perf_counter() - started
        loaded_mb = current_mb()
        begin = time.perf_counter()
        outputs = separate(spec['wav'])['output_pcm_list']
        elapsed = time.perf_counter() - begin
        for index, pcm in enumerate(outputs):
            soundfile.write(str(out_dir / f'builtin_s{index + 1}.wav'),
                            np.frombuffer(pcm, dtype=np.int16), RATE, subtype='PCM_16')
    else:
        from modelscope.models import Model

        from modelscope_mossformer.batch import separate_file
        from modelscope_mossformer.inference import SeparationEngine

        model = Model.from_pretrained(spec['model_dir']).eval()
        chunk = CHUNK_SECONDS if spec['mode'] in ('chunked', 'batched', 'tuned_malloc') else None
        engine = SeparationEngine(model.separator, model.sample_rate, chunk_seconds=chunk,
                                  overlap_seconds=OVERLAP_SECONDS,
                                  batch_chunks=spec['batch_chunks'] if spec['mode'] == 'batched' else 1)
        load_s = time.perf_counter() - started
        loaded_mb = current_mb()
        begin = time.perf_counter()
        separate_file(engine, spec['wav'], out_dir, name=spec['mode'], subtype='FLOAT')
        elapsed = time.perf_counter() - begin
    return {'load_s': load_s, 'elapsed_s': elapsed, 'loaded_rss_mb': loaded_mb, 'peak_rss_mb': peak_mb()}


# ---------------------------------------------------------------------------
# parent: inputs, model dirs, one process per configuration
# ---------------------------------------------------------------------------


def make_model_dir(name: str, directory: Path) -> Path:
    import torch

    from modelscope_mossformer.metainfo import Models
    from modelscope_mossformer.model import MossFormerSeparation
    from modelscope_mossformer.models import mossformer2_base, mossformer_large

    if (directory / 'configuration.json').is_file():
        return directory
    config, model_type = ((mossformer_large(), Models.mossformer_8k) if name == 'mossformer'
                          else (mossformer2_base(), Models.mossformer2_8k))
    torch.manual_seed(0)
    MossFormerSeparation(config=config, model_type=model_type).save_model_dir(directory)
    return directory


def make_input(seconds: float, path: Path) -> Path:
    """A mixture of two demo voices: 30 s rendered once, repeated to `seconds`."""
    import numpy as np
    import soundfile

    from modelscope_mossformer.data.synth import make_voices, synthesize_utterance

    if path.is_file() and soundfile.info(str(path)).frames == int(seconds * RATE):
        return path
    voices = make_voices(4, seed=0)
    rng = np.random.default_rng(0)
    mix = synthesize_utterance(voices[0], 30.0, RATE, rng) + synthesize_utterance(voices[2], 30.0, RATE, rng)
    total = int(seconds * RATE)
    with soundfile.SoundFile(str(path), 'w', samplerate=RATE, channels=1, subtype='PCM_16') as handle:
        for start in range(0, total, mix.size):
            handle.write(mix[:min(mix.size, total - start)])
    return path


def _rss_mb(pid: int) -> float:
    try:
        with open(f'/proc/{pid}/status') as handle:
            for line in handle:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def available_mb() -> float:
    with open('/proc/meminfo') as handle:
        for line in handle:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) / 1024
    return float('inf')


def run_configuration(spec: Dict[str, Any], max_rss_mb: float, timeout: float) -> Dict[str, Any]:
    """Run one configuration in a fresh process under the memory watchdog."""
    env = dict(os.environ)
    if spec['mode'] == 'tuned_malloc':
        env['GLIBC_TUNABLES'] = ':'.join(p for p in (env.get('GLIBC_TUNABLES'), TUNED_MALLOC) if p)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get('PYTHONPATH')) if p)
    if spec['mode'] == 'builtin':  # keep this package out of the built-in's process
        env['PYTHONPATH'] = os.pathsep.join(p for p in env['PYTHONPATH'].split(os.pathsep)
                                            if Path(p).resolve() != REPO_ROOT)
    command = [sys.executable, str(Path(__file__).resolve()), '--child', json.dumps(spec)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tempfile.gettempdir())
    watched_peak = 0.0
    outcome = None
    while process.poll() is None:
        watched_peak = max(watched_peak, _rss_mb(process.pid))
        if watched_peak > max_rss_mb:
            outcome = f'stopped: resident memory above {max_rss_mb / 1024:.1f} GB'
        elif time.perf_counter() - started > timeout:
            outcome = f'stopped: longer than {timeout:.0f} s'
        if outcome:
            process.kill()
            break
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    if outcome is None and process.returncode != 0:
        tail = stderr.strip().splitlines()[-1:] or ['no error output']
        outcome = f'failed (exit {process.returncode}): {tail[0][:200]}'
    result: Dict[str, Any] = dict(model=spec['model'], mode=spec['mode'], seconds=spec['seconds'],
                                  watched_peak_rss_mb=watched_peak, status=outcome or 'ok')
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result.update(json.loads(line[len(RESULT_PREFIX):]))
    if 'elapsed_s' in result:
        result['rtf'] = result['elapsed_s'] / spec['seconds']
        result['separation_mb'] = result['peak_rss_mb'] - result['loaded_rss_mb']
    return result


def parity_db(out_dir: Path) -> Optional[float]:
    """PIT SI-SNR (dB) of the built-in pipeline's output against ours (whole file), if both exist."""
    import soundfile
    import torch

    from modelscope_mossformer.metrics import pit_si_snr

    ours = sorted(out_dir.glob('whole_s*.wav'))
    builtin = sorted(out_dir.glob('builtin_s*.wav'))
    if not ours or len(ours) != len(builtin):
        return None

    def load(paths):
        return torch.stack([torch.from_numpy(soundfile.read(str(p), dtype='float32')[0]) for p in paths])

    score, _ = pit_si_snr(load(builtin)[None], load(ours)[None])
    return float(score)


def against_chunked(out_dir: Path, mode: str) -> Optional[float]:
    """Largest absolute difference of `mode`'s outputs from the chunk-by-chunk ones, if both exist."""
    import numpy as np
    import soundfile

    chunked = sorted(out_dir.glob('chunked_s*.wav'))
    batched = sorted(out_dir.glob(f'{mode}_s*.wav'))
    if not chunked or len(chunked) != len(batched):
        return None
    return max(float(np.abs(soundfile.read(str(a), dtype='float32')[0]
                            - soundfile.read(str(b), dtype='float32')[0]).max()) for a, b in zip(chunked, batched))


def print_table(rows: List[Dict[str, Any]]) -> None:
    header = (f'{"model":<14} {"length":>7} {"mode":<12} {"RTF":>7} {"sep s":>8} {"load s":>7} '
              f'{"peak MB":>8} {"sep MB":>8} {"parity dB":>9} {"vs chunked":>10} {"max diff":>9}  status')
    print(header)
    print('-' * len(header))
    for row in rows:
        def number(key: str, fmt: str) -> str:
            value = row.get(key)
            return format(value, fmt) if isinstance(value, (int, float)) else '-'.rjust(int(fmt[1:].split('.')[0]))

        peak = row.get('peak_rss_mb', row['watched_peak_rss_mb'] if row['status'] != 'ok' else None)
        print(f'{MODELS[row["model"]]:<14} {row["seconds"]:>6g}s {row["mode"]:<12} {number("rtf", ">7.3f")} '
              f'{number("elapsed_s", ">8.1f")} {number("load_s", ">7.1f")} '
              f'{format(peak, ">8.0f") if peak is not None else "       -"} {number("separation_mb", ">8.0f")} '
              f'{number("parity_db", ">9.1f")} {number("vs_chunked", ">10.3f")} {number("max_diff", ">9.1e")}  '
              f'{row["status"]}')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--lengths', default='10,60,600', help='input lengths in seconds (default 10,60,600)')
    parser.add_argument('--models', default='mossformer,mossformer2', help=f'subset of {",".join(MODELS)}')
    parser.add_argument('--modes', default=','.join(MODES), help=f'subset of {",".join(MODES)}')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads per process (default 2)')
    parser.add_argument('--batch-chunks', type=int, default=4, help='chunks per forward in batched mode (default 4)')
    parser.add_argument('--work-dir', type=Path, default=Path(tempfile.gettempdir()) / 'mossformer_bench',
                        help='model dirs, inputs and outputs (reused between runs)')
    parser.add_argument('--max-rss-gb', type=float, default=None,
                        help='stop a process above this resident memory (default: 85%% of available)')
    parser.add_argument('--timeout', type=float, default=3600.0, help='seconds per configuration (default 3600)')
    parser.add_argument('--skip-whole-above', type=float, default=None, metavar='S',
                        help='skip whole-file and built-in runs on inputs longer than S seconds')
    parser.add_argument('--json', type=Path, default=None, help='also write the results to this JSON file')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return args
    args.lengths = [float(v) for v in args.lengths.split(',') if v.strip()]
    args.models = [m.strip() for m in args.models.split(',') if m.strip()]
    args.modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    for values, known, what in ((args.models, MODELS, 'model'), (args.modes, MODES, 'mode')):
        unknown = [v for v in values if v not in known]
        if unknown:
            parser.error(f'unknown {what}(s) {unknown}; choose from {list(known)}')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(RESULT_PREFIX + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    import torch

    max_rss_mb = args.max_rss_gb * 1024 if args.max_rss_gb else 0.85 * available_mb()
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'torch {torch.__version__}, {args.threads} thread(s) per process, {os.cpu_count()} CPU(s), '
          f'{platform.processor() or platform.machine()}, load average {load:.1f}; chunks {CHUNK_SECONDS:g} s '
          f'with {OVERLAP_SECONDS:g} s overlap; memory watchdog at {max_rss_mb / 1024:.1f} GB', flush=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        model_dir = make_model_dir(name, args.work_dir / f'model_{name}')
        for seconds in args.lengths:
            wav = make_input(seconds, args.work_dir / f'mix_{seconds:g}s.wav')
            out_dir = args.work_dir / f'out_{name}_{seconds:g}s'
            for mode in args.modes:
                skip_above = args.skip_whole_above
                if mode in ('whole', 'builtin') and skip_above is not None and seconds > skip_above:
                    continue
                print(f'{MODELS[name]}, {seconds:g} s, {mode} ...', flush=True)
                spec = dict(model=name, mode=mode, seconds=seconds, model_dir=str(model_dir), wav=str(wav),
                            out_dir=str(out_dir), threads=args.threads, batch_chunks=args.batch_chunks)
                row = run_configuration(spec, max_rss_mb, args.timeout)
                print(f'  {row["status"]}' + (f', RTF {row["rtf"]:.3f}, peak {row["peak_rss_mb"]:.0f} MB'
                                              if 'rtf' in row else ''), flush=True)
                rows.append(row)
            builtin = [r for r in rows if r['model'] == name and r['seconds'] == seconds and r['mode'] == 'builtin']
            if builtin and builtin[0]['status'] == 'ok':
                builtin[0]['parity_db'] = parity_db(out_dir)
            chunked, *others = ([r for r in rows if r['model'] == name and r['seconds'] == seconds
                                 and r['mode'] == mode and r['status'] == 'ok']
                                for mode in ('chunked', 'batched', 'tuned_malloc'))
            for other in others:
                if chunked and other:
                    other[0]['vs_chunked'] = other[0]['elapsed_s'] / chunked[0]['elapsed_s']
                    other[0]['max_diff'] = against_chunked(out_dir, other[0]['mode'])
    print()
    print_table(rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({'torch': torch.__version__, 'threads': args.threads,
                                         'chunk_seconds': CHUNK_SECONDS, 'overlap_seconds': OVERLAP_SECONDS,
                                         'batch_chunks': args.batch_chunks,
                                         'load_average': load, 'results': rows}, indent=2) + '\n')
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
