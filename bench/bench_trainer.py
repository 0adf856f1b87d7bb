"""Seconds per training step: this package's trainer vs ModelScope's built-in `SeparationTrainer`.

Both trainers are SpeechBrain `Brain`s; a training step is one `fit_batch` call
(forward, PIT SI-SNR loss, backward, gradient clipping at 5, Adam step, zero_grad),
timed around that call only, so data loading and collation do not count on
either side.  Both sides get identical tensors and identical initial weights:

1. The parent writes a demo corpus with exactly ``(warmup + steps) * batch``
   training mixtures, builds our MossFormer for the chosen size (seed 0), and
   writes its weights twice: as our model dir and, in the released
   ``encoder.bin`` / ``decoder.bin`` / ``masknet.bin`` format, as a model dir for
   ModelScope's own `MossFormer` class together with a configuration.json
   ``train`` section and an ``hparams.yaml`` that SpeechBrain 1.x can load.
2. Child process "ours": ``build_trainer(Trainers.speech_separation, ...)``
   (this package) trains one epoch; a timing hook around `SeparationBrain.fit_batch`
   records every step's wall and CPU time and the batch it was given
   ([B, T] mixture crops and [B, C, T] sources).
3. Child process "built-in": ModelScope's
   `modelscope.trainers.audio.separation_trainer.SeparationTrainer`, constructed as
   ModelScope's own code constructs it, runs `train()` for one epoch on a
   dataset made of exactly those recorded examples, in the same order and batch
   size; a timing hook wraps its `Separation.fit_batch`.  This process never
   imports `modelscope_mossformer`, so the built-in classes are the ones registered.

The released hparams.yaml of the hub model cannot run on SpeechBrain 1.x (it
names augmentation classes that were removed and gives no collate function);
the one written here keeps the released training settings (Adam, lr 1.5e-4,
clip 5, loss threshold -30 dB, ReduceLROnPlateau 0.5 / 2 / 85, SpeechBrain's
`get_si_snr_with_pitwrapper` loss), turns the augmentations off (ours has
them off by default too) and names `PaddedBatch` as the collate function.

Peak memory: each side runs in its own process; on CPU the peak resident set
size (``getrusage(RUSAGE_SELF).ru_maxrss``) and the RSS just before the first
step; on CUDA ``torch.cuda.max_memory_allocated`` over the training steps.

On a CPU shared with other jobs, pass ``--threads 1``: with two or more threads a
step waits for whichever thread the scheduler parked, and times vary several-fold.

    python bench/bench_trainer.py --threads 1            # moderate config, CPU, about a minute
    python bench/bench_trainer.py --size large --steps 3 --warmup 1 --threads 1
    python bench/bench_trainer.py --size large --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# The moderate size: MossFormer(L)'s attention geometry (group 256, qk 128) at 128 wide and 4 blocks deep.
SIZES: Dict[str, Dict[str, Any]] = {
    'moderate': dict(enc_channels=128, model_dim=128, num_blocks=4, group_size=256, query_key_dim=128),
    'large': dict(enc_channels=512, model_dim=512, num_blocks=24, group_size=256, query_key_dim=128),
}
RELEASED_TRAIN = dict(lr=1.5e-4, weight_decay=0.0, clip_grad_norm=5.0, loss_threshold_db=30.0,
                      factor=0.5, patience=2, dont_halve_until_epoch=85)
BATCHES_FILE = 'batches.pt'

BUILTIN_HPARAMS = """\
# ModelScope's Separation brain reads these names; SpeechBrain 1.x classes only.
seed: {seed}
__set_seed: !apply:torch.manual_seed [!ref <seed>]
output_folder: {work_dir}
save_folder: !ref <output_folder>/save
train_log: !ref <output_folder>/train_log.txt
sample_rate: {sample_rate}
num_spks: {num_spks}
lr: {lr}
weight_decay: {weight_decay}
clip_grad_norm: {clip_grad_norm}
factor: {factor}
patience: {patience}
dont_halve_until_epoch: {dont_halve_until_epoch}
loss_upper_lim: 999999
threshold_byloss: True
threshold: {threshold}
use_speedperturb: False
use_rand_shift: False
use_wavedrop: False
limit_training_signal_len: False
save_audio: False
dataloader_opts:
    batch_size: {batch_size}
    num_workers: 0
    collate_fn: !name:speechbrain.dataio.batch.PaddedBatch
loss: !name:speechbrain.nnet.losses.get_si_snr_with_pitwrapper
optimizer: !name:torch.optim.Adam
    lr: !ref <lr>
    weight_decay: !ref <weight_decay>
lr_scheduler: !new:speechbrain.nnet.schedulers.ReduceLROnPlateau
    factor: !ref <factor>
    patience: !ref <patience>
    dont_halve_until_epoch: !ref <dont_halve_until_epoch>
checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <save_folder>
train_logger: !new:speechbrain.utils.train_logger.FileTrainLogger
    save_file: !ref <train_log>
"""


# ---------------------------------------------------------------------------------------------
# measuring one process


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open('/proc/self/statm') as handle:
            return int(handle.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024  # bytes on macOS, KiB on Linux


class StepTimer:
    """Wraps a `fit_batch` callable: wall and CPU seconds of every call, memory around them."""

    def __init__(self, device: str, record: Optional[Callable[[Any], None]] = None) -> None:
        self.device = device
        self.record = record
        self.wall: List[float] = []
        self.cpu: List[float] = []
        self.losses: List[float] = []
        self.rss_before_first_step: Optional[int] = None

    def _sync(self) -> None:
        if self.device.startswith('cuda'):
            torch.cuda.synchronize()

    def wrap(self, fit_batch: Callable[[Any], torch.Tensor]) -> Callable[[Any], torch.Tensor]:
        def timed_fit_batch(batch: Any) -> torch.Tensor:
            if self.rss_before_first_step is None:
                self.rss_before_first_step = current_rss_bytes()
                if self.device.startswith('cuda'):
                    torch.cuda.reset_peak_memory_stats()
            if self.record is not None:
                self.record(batch)
            self._sync()
            wall, cpu = time.perf_counter(), time.process_time()
            loss = fit_batch(batch)
            self._sync()
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.process_time() - cpu)
            self.losses.append(float(loss))
            return loss

        return timed_fit_batch

    def result(self, side: str, warmup: int) -> Dict[str, Any]:
        timed_wall = self.wall[warmup:]
        timed_cpu = self.cpu[warmup:]
        result = {
            'side': side, 'steps_run': len(self.wall), 'warmup': warmup,
            'wall_s': self.wall, 'cpu_s': self.cpu, 'losses': self.losses,
            'median_step_s': statistics.median(timed_wall) if timed_wall else float('nan'),
            'mean_step_s': statistics.fmean(timed_wall) if timed_wall else float('nan'),
            'median_step_cpu_s': statistics.median(timed_cpu) if timed_cpu else float('nan'),
            'rss_before_first_step_bytes': self.rss_before_first_step,
            'peak_rss_bytes': peak_rss_bytes(),
        }
        if self.device.startswith('cuda'):
            result['cuda_max_allocated_bytes'] = torch.cuda.max_memory_allocated()
        return result


# ---------------------------------------------------------------------------------------------
# child: this package's trainer


def run_ours(spec: Dict[str, Any]) -> Dict[str, Any]:
    import modelscope_mossformer  # noqa: F401  (registers the trainer)
    from modelscope.metainfo import Trainers
    from modelscope.trainers import build_trainer


    recorded: List[Dict[str, torch.Tensor]] = []

    def record(batch: Dict[str, Any]) -> None:
        recorded.append({'ids': list(batch['ids']), 'mix': batch['mix'].clone(),
                         'sources': batch['sources'].clone(), 'lengths': batch['lengths'].clone()})

    timer = StepTimer(spec['device'], record)
    from modelscope_mossformer import brain as brain_module

    class TimedSeparationBrain(brain_module.SeparationBrain):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.fit_batch = timer.wrap(super().fit_batch)

    brain_module.SeparationBrain = TimedSeparationBrain
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=spec['ours_model_dir'], train_dataset=spec['train_csv'], eval_dataset=spec['validation_csv'],
        work_dir=spec['ours_work_dir'], max_epochs=1, device=spec['device'],
        train=dict(segment_seconds=spec['segment_seconds'], batch_size=spec['batch_size'], lr=RELEASED_TRAIN['lr'],
                   max_grad_norm=RELEASED_TRAIN['clip_grad_norm'],
                   loss_threshold_db=RELEASED_TRAIN['loss_threshold_db'], seed=spec['seed'], progressbar=False)))
    trainer.train()
    torch.save(recorded, Path(spec['root']) / BATCHES_FILE)
    return timer.result('ours', spec['warmup'])


# ---------------------------------------------------------------------------------------------
# child: ModelScope's built-in trainer


class RecordedExamples(torch.utils.data.Dataset):
    """The examples our trainer was given, one per item, as SpeechBrain-style dicts."""

    def __init__(self, batches: List[Dict[str, Any]]) -> None:
        self.items = []
        for batch in batches:
            for row, example_id in enumerate(batch['ids']):
                length = int(batch['lengths'][row])
                item = {'id': example_id, 'mix_sig': batch['mix'][row, :length]}
                for spk in range(batch['sources'].shape[1]):
                    item[f's{spk + 1}_sig'] = batch['sources'][row, spk, :length]
                self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.items[index]


def run_builtin(spec: Dict[str, Any]) -> Dict[str, Any]:
    if 'modelscope_mossformer' in sys.modules:
        raise RuntimeError('the built-in side must run without modelscope_mossformer imported')
    from modelscope.trainers.audio.separation_trainer import SeparationTrainer

    batches = torch.load(Path(spec['root']) / BATCHES_FILE)
    examples = RecordedExamples(batches)
    # A non-str `model` with cfg_file: ModelScope builds the model from cfg_file's folder and
    # skips the hub look-up it does for a str (which costs ~23 s of retries offline).
    trainer = SeparationTrainer(model=None, cfg_file=str(Path(spec['builtin_model_dir']) / 'configuration.json'),
                                work_dir=spec['builtin_work_dir'], train_dataset=examples,
                                eval_dataset=RecordedExamples(batches[:1]), max_epochs=1,
                                device=spec['device'].replace('cuda', 'gpu'))  # ModelScope's device names
    trainer.model.load_check_point(spec['builtin_model_dir'])  # the released-format copy of our initial weights
    brain = trainer.separator
    timer = StepTimer(spec['device'])
    brain.fit_batch = timer.wrap(brain.fit_batch)
    trainer.train()
    return timer.result('built-in', spec['warmup'])


def child_main(side: str, spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec['threads'])
    torch.manual_seed(spec['seed'])
    result = run_ours(spec) if side == 'ours' else run_builtin(spec)
    (Path(spec['root']) / f'result-{side}.json').write_text(json.dumps(result, indent=2) + '\n')
    return 0


# ---------------------------------------------------------------------------------------------
# parent: data, model dirs, the two runs, the report


def prepare(args: argparse.Namespace, root: Path) -> Dict[str, Any]:
    from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus
    from modelscope_mossformer.model import MossFormerSeparation, write_configuration
    from modelscope_mossformer.models import MossFormerConfig

    steps = args.warmup + args.steps
    corpus = generate_demo_corpus(root / 'corpus', DemoCorpusSpec(
        sample_rate=args.sample_rate, train_mixtures=steps * args.batch_size, validation_mixtures=1,
        test_mixtures=1, min_seconds=args.segment_seconds + 0.25, max_seconds=args.segment_seconds + 1.0))

    config = MossFormerConfig(sample_rate=args.sample_rate, **SIZES[args.size])
    torch.manual_seed(0)
    model = MossFormerSeparation(config=config)
    ours_dir, builtin_dir = root / 'model-ours', root / 'model-builtin'
    model.save_model_dir(ours_dir)
    model.save_model_dir(builtin_dir)  # released weight files + configuration.json with the released key names
    configuration = json.loads((builtin_dir / 'configuration.json').read_text())
    configuration['train'] = {
        'max_epochs': 1, 'seed': args.seed,
        'optimizer': {k: RELEASED_TRAIN[k] for k in ('lr', 'weight_decay', 'clip_grad_norm')},
        'lr_scheduler': {k: RELEASED_TRAIN[k] for k in ('factor', 'patience', 'dont_halve_until_epoch')}}
    write_configuration(builtin_dir, configuration)
    builtin_work = root / 'work-builtin'
    (builtin_dir / 'hparams.yaml').write_text(BUILTIN_HPARAMS.format(
        seed=args.seed, work_dir=builtin_work, sample_rate=args.sample_rate, num_spks=config.num_spks,
        batch_size=args.batch_size, threshold=-RELEASED_TRAIN['loss_threshold_db'],
        **{k: RELEASED_TRAIN[k] for k in ('lr', 'weight_decay', 'clip_grad_norm', 'factor', 'patience',
                                          'dont_halve_until_epoch')}))
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(root=str(root), device=args.device, threads=args.threads, seed=args.seed, warmup=args.warmup,
                steps=args.steps, batch_size=args.batch_size, segment_seconds=args.segment_seconds,
                sample_rate=args.sample_rate, size=args.size, config=config.to_dict(), num_params=num_params,
                train_csv=str(corpus.csv['train']), validation_csv=str(corpus.csv['validation']),
                ours_model_dir=str(ours_dir), ours_work_dir=str(root / 'work-ours'),
                builtin_model_dir=str(builtin_dir), builtin_work_dir=str(builtin_work))


def run_child(side: str, spec_path: Path, root: Path) -> Dict[str, Any]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get('PYTHONPATH')) if p)
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), '--child', side,
                                '--spec', str(spec_path)], env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-8000:])
        raise RuntimeError(f'the {side} run failed (exit status {completed.returncode})')
    result = json.loads((root / f'result-{side}.json').read_text())
    result['process_s'] = time.perf_counter() - started
    return result


def mib(num_bytes: Optional[int]) -> str:
    return '-' if num_bytes is None else f'{num_bytes / 2 ** 20:,.0f}'


def report(spec: Dict[str, Any], results: List[Dict[str, Any]]) -> Dict[str, Any]:
    ours, builtin = results
    ratio = builtin['median_step_s'] / ours['median_step_s']
    cpu_ratio = builtin['median_step_cpu_s'] / ours['median_step_cpu_s']
    print()
    print(f'MossFormer {spec["size"]} ({spec["num_params"]:,} parameters), batch {spec["batch_size"]} x '
          f'{spec["segment_seconds"]:g} s at {spec["sample_rate"]} Hz, {spec["device"]}, {spec["threads"]} threads; '
          f'{spec["steps"]} timed steps after {spec["warmup"]} warm-up')
    cuda = spec['device'].startswith('cuda')
    header = (f'{"trainer":<10} {"median s/step":>14} {"mean s/step":>12} {"cpu s/step":>11} '
              f'{"RSS before MiB":>15} {"peak RSS MiB":>13}' + (f' {"CUDA peak MiB":>14}' if cuda else '') +
              f' {"first loss":>11} {"last loss":>10}')
    print(header)
    print('-' * len(header))
    for row in results:
        print(f'{row["side"]:<10} {row["median_step_s"]:>14.3f} {row["mean_step_s"]:>12.3f} '
              f'{row["median_step_cpu_s"]:>11.3f} {mib(row["rss_before_first_step_bytes"]):>15} '
              f'{mib(row["peak_rss_bytes"]):>13}' + (f' {mib(row.get("cuda_max_allocated_bytes")):>14}' if cuda else '')
              + f' {row["losses"][0]:>11.3f} {row["losses"][-1]:>10.3f}')
    print(f'\nbuilt-in / ours, median seconds per step: {ratio:.3f} '
          f'({"ours faster" if ratio > 1 else "built-in faster" if ratio < 1 else "equal"}); '
          f'median CPU seconds per step: {cpu_ratio:.3f} (wall time also counts waiting for other jobs)')
    return {'spec': spec, 'results': results, 'ratio_builtin_over_ours': ratio,
            'cpu_ratio_builtin_over_ours': cpu_ratio, 'torch': torch.__version__,
            'machine': platform.processor() or platform.machine()}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', choices=sorted(SIZES), default='moderate',
                        help='moderate: 128 wide, 4 blocks (default); large: the released MossFormer(L)')
    parser.add_argument('--steps', type=int, default=10, help='timed steps (default 10)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (default 2)')
    parser.add_argument('--batch-size', type=int, default=1, help='examples per step (default 1, as released)')
    parser.add_argument('--segment-seconds', type=float, default=2.0, help='training crop length (default 2)')
    parser.add_argument('--sample-rate', type=int, default=8000, choices=(8000, 16000))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help="'cpu' or 'cuda' (default: cuda when available)")
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(), help='torch CPU threads')
    parser.add_argument('--seed', type=int, default=1234)
    parser.add_argument('--work-dir', type=Path, default=None, help='keep everything here (default: a temp dir)')
    parser.add_argument('--json', type=Path, default=None, help='also write the results to this JSON file')
    parser.add_argument('--child', choices=('ours', 'built-in'), help=argparse.SUPPRESS)
    parser.add_argument('--spec', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        parser.error('--batch-size and --steps must be >= 1, --warmup >= 0')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    root = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix='bench_trainer_'))
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        spec = prepare(args, root)
        spec_path = root / 'spec.json'
        spec_path.write_text(json.dumps(spec, indent=2) + '\n')
        print(f'prepared corpus and model dirs in {root} ({time.perf_counter() - started:.1f} s)', flush=True)
        results = []
        for side in ('ours', 'built-in'):
            print(f'training with {side} trainer ...', flush=True)
            results.append(run_child(side, spec_path, root))
        summary = report(spec, results)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=2) + '\n')
            print(f'wrote {args.json}')
    finally:
        if args.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
