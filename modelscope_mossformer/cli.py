"""The ``mossformer`` command: separate, evaluate and train from a shell.

    mossformer separate  INPUT... --model DIR --out DIR
    mossformer evaluate  --model DIR --data LIST_OR_LIBRIMIX --out DIR
    mossformer train     --config MODEL_DIR_OR_JSON --train DATA --valid DATA --work-dir DIR
    mossformer average   --work-dir DIR --best N
    mossformer export    --model DIR [--out model.onnx]

Every subcommand wraps the library: the registered ModelScope pipeline and
`batch.separate_many` for separation and evaluation, `build_trainer` for
training.  Exit status: 0 when everything worked, 1 when some files failed (or
training failed), 2 for a usage error (bad arguments, a missing model, an
unreadable list, an unavailable device).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from .metainfo import CONFIGURATION_FILE

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CONFIGS_DIR = Path(__file__).resolve().parent / 'configs'
PRECISION_CHOICES = ('fp32', 'bf16', 'fp16')
BACKENDS = ('auto', 'pytorch', 'onnxruntime')

MAIN_EPILOG = """\
examples:
  mossformer separate meeting.wav --model ./mossformer2_8k --out separated/
  mossformer evaluate --model ./mossformer2_8k --data test.csv --out eval/
  mossformer train --config ./my_model --train train.csv --valid dev.csv --work-dir runs/exp1
  mossformer export --model ./mossformer2_8k   (then: separate --model ./mossformer2_8k --backend onnxruntime)

A model directory holds configuration.json and weights (a released ModelScope model,
or best_model/ of a training run).  Run 'mossformer COMMAND --help' for details.
"""

SEPARATE_EPILOG = """\
inputs:
  audio files (wav, flac, ogg, ...), folders (every audio file below them),
  CSV lists (mix_wav[,s1_wav,s2_wav...]) or scp lists ("mix [s1 s2 ...]" per line).
  Any sample rate and channel count: channels are averaged, audio is resampled
  to the model's rate and the outputs back to the input's.

outputs:
  OUT/<name>_s1.wav, <name>_s2.wav, ... per input (folders keep their subfolders),
  OUT/report.csv (one row per file) and OUT/summary.json.  When a list names the
  reference sources, report.csv also holds SI-SNR, SI-SNRi, SDR and SDRi.
  Levels follow the mixture (one gain per file, peaks kept below 0.999).

long recordings:
  are separated in chunks of --chunk-seconds that overlap by --overlap-seconds;
  speakers keep their output file across chunks.  Memory depends on the chunk
  length only, so hour-long files work on a laptop.  --chunk-seconds 0 separates
  each file at once (needs memory in proportion to its length).

fewer talkers than outputs:
  report.csv gives each output's active share of the time (s1_active, s2_active ...),
  copy_of (e.g. "s2=s1": s2 is essentially a copy of s1) and single_talker (the
  output that holds the whole mixture); both are also logged as warnings.
  --gate-inactive sets each output to silence where it carries no talker of its own
  (leaked voice, model noise), with 10 ms fades; outputs are unchanged without it.

a bad file (missing, unreadable, empty, NaN samples) is reported and skipped;
the exit status is then 1.

examples:
  mossformer separate call.wav --model models/mossformer2_8k --out out/
  mossformer separate monologue.wav --model models/mossformer2_8k --out out/ --gate-inactive
  mossformer separate recordings/ --model models/mossformer2_8k --out out/ --device cuda --precision bf16
  mossformer separate lecture.flac --model models/mossformer_8k --out out/ --chunk-seconds 16 --overlap-seconds 2
  mossformer separate call.wav --model models/mossformer2_8k --backend onnxruntime --out out/ --threads 4
  mossformer separate call.wav --model mossformer2_8k.onnx --out out/
"""

EVALUATE_EPILOG = """\
data:
  a CSV (mix_wav:FILE,s1_wav:FILE,s2_wav:FILE[,s3_wav:FILE]), a ClearerVoice scp
  list ("mix s1 s2 [s3]" per line) or a LibriMix folder with --split.

writes OUT/report.csv (per file: SI-SNR, SI-SNRi, SDR, SDRi in dB, higher is
better), OUT/summary.json (means) and the separated files.  Files are separated
whole by default, as papers evaluate; --chunk-seconds evaluates chunked inference.

--metrics pesq,stoi,estoi adds PESQ (narrow band for 8 kHz models, wide band for
16 kHz ones), STOI and ESTOI per file (pip install 'modelscope_mossformer[metrics]').
A file a metric cannot score (silent reference, too short) gets NaN there and is
left out of that mean; the summary says how many.

examples:
  mossformer evaluate --model work/best_model --data corpus/test.csv --out eval/
  mossformer evaluate --model models/mossformer2_8k --data LibriMix/ --split test --out eval/
  mossformer evaluate --model work/best_model --data corpus/test.csv --out eval/ --metrics pesq,stoi,estoi
"""

TRAIN_EPILOG = """\
--config is a model directory (configuration.json, weights optional) or a
configuration.json file.  Its "model" section picks the architecture, its "train"
section the recipe (defaults: the released one).  --set overrides one train key;
the value is read as JSON (numbers, true/false, lists), else as text:

  --set lr=5e-4 --set batch_size=2 --set augment.dynamic_mixing=true

Ready-made configurations (the released sizes, 8 and 16 kHz): {configs}/
{{mossformer,mossformer2}}_{{8k,16k}}.json (MossFormer(L) and MossFormer2; "num_spks": 3 for
three speakers).

Running the same command again resumes from the last checkpoint in --work-dir.
The best model (by validation SI-SNR) is kept in WORK_DIR/best_model, ready for
'mossformer separate --model WORK_DIR/best_model'.

examples:
  mossformer train --config {configs}/mossformer2_8k.json --train train.csv --valid dev.csv --work-dir runs/m2
  mossformer train --config models/mossformer2_8k --train train.scp --valid dev.scp --work-dir runs/ft \\
      --init-checkpoint models/mossformer2_8k --set fine_tune_lr=5e-5 --max-epochs 20
"""


AVERAGE_EPILOG = """\
Averages the weights of the N best checkpoints of a training run (by validation
SI-SNR, from WORK_DIR/save/) into WORK_DIR/best_model/, measures the averaged
model's validation SI-SNR and records both in best_model/configuration.json.
The run keeps N checkpoints (besides the latest) when it was trained with
--set average_best=N; with fewer kept, those that exist are averaged (a warning
says so).  --best 1 writes best_model/ from the best single checkpoint.

The validation data is the run's (recorded in WORK_DIR/run.json) unless --valid
names other data.

examples:
  mossformer train --config my_model --train train.csv --valid dev.csv --work-dir runs/exp1 --set average_best=5
  mossformer average --work-dir runs/exp1 --best 5
  mossformer evaluate --model runs/exp1/best_model --data test.csv --out eval/
"""


EXPORT_EPILOG = """\
writes one ONNX model (opset 18) that maps a mixture "mix" [batch, time] float32
at the model's rate to "sources" [batch, speakers, time], for any batch size and
length; its metadata_props hold sample_rate, num_spks, model_type, family, the
model config, this package's version and the SHA-256 of the weights it came from.
The export is checked at once: ONNX Runtime and PyTorch separate a 1.5 s test
signal and must agree within 1e-4 (--no-verify skips this).

Separate with ONNX Runtime (same chunking, speaker alignment and outputs as PyTorch):
  mossformer separate ... --model DIR --backend onnxruntime    (DIR/model.onnx)
  mossformer separate ... --model FILE.onnx                    (any exported file)
--threads sets ONNX Runtime's intra-op threads.  Needs the 'onnx' extra:
  pip install 'modelscope_mossformer[onnx]'

examples:
  mossformer export --model models/mossformer2_8k
  mossformer export --model work/best_model --out deploy/mossformer2_8k.onnx
"""


class UsageError(Exception):
    """A problem with the command line or its inputs; exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become exceptions, so that `main` can return 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_runtime_options(parser: argparse.ArgumentParser, device: bool = True) -> None:
    group = parser.add_argument_group('runtime')
    if device:
        group.add_argument('--device', default='auto', metavar='DEVICE',
                           help='auto (CUDA when available), cpu, cuda or cuda:N (default: auto)')
    group.add_argument('--threads', type=int, default=None, metavar='N',
                       help='CPU threads for PyTorch (and ONNX Runtime) (default: they decide)')
    group.add_argument('--no-progress', action='store_true', help='hide progress bars')
    group.add_argument('-v', '--verbose', action='count', default=0,
                       help='more log messages (-vv also shows ModelScope\'s)')
    group.add_argument('-q', '--quiet', action='store_true', help='only errors')


def _add_separation_options(parser: argparse.ArgumentParser, chunk_default: float) -> None:
    parser.add_argument('--model', required=True, metavar='DIR',
                        help='model directory (configuration.json + weights), or an exported .onnx file')
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder (created)')
    group = parser.add_argument_group('separation')
    group.add_argument('--backend', choices=BACKENDS, default='auto',
                       help='pytorch, or onnxruntime (runs DIR/model.onnx, see mossformer export); auto: '
                            'onnxruntime for an .onnx --model, else pytorch (default: auto)')
    group.add_argument('--chunk-seconds', type=float, default=chunk_default, metavar='S',
                       help=f'chunk length for long inputs; 0 = whole file at once (default: {chunk_default:g})')
    group.add_argument('--overlap-seconds', type=float, default=1.0, metavar='S',
                       help='overlap between chunks, used to keep speakers in order and to cross-fade (default: 1)')
    group.add_argument('--batch-chunks', type=int, default=1, metavar='N',
                       help='separate up to N chunks of a long input in one batch (for GPUs: on CPUs it measured '
                            'slower), N times the activation memory, the same output (default: 1)')
    group.add_argument('--precision', choices=PRECISION_CHOICES, default='fp32',
                       help='fp32, or bf16/fp16 autocast (fp16 on CUDA only) (default: fp32)')
    group.add_argument('--subtype', choices=('PCM_16', 'PCM_24', 'FLOAT'), default='PCM_16',
                       help='sample format of the written files (default: PCM_16)')
    group.add_argument('--gate-inactive', action='store_true',
                       help='silence each output where it is inactive (leakage, model noise), with 10 ms fades')
    group.add_argument('--activity-relative-db', type=float, default=None, metavar='DB',
                       help='an output this far below the mixture (over 0.2 s) is inactive (default: -15)')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='mossformer', formatter_class=_formatter, epilog=MAIN_EPILOG,
                     description='MossFormer / MossFormer2 speech separation: split a recording with several '
                                 'talkers into one file per talker, measure how well a model does it, or train one.')
    from . import __version__

    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)

    separate = commands.add_parser(
        'separate', formatter_class=_formatter, epilog=SEPARATE_EPILOG,
        help='separate audio files into one file per speaker',
        description='Separate recordings into one file per speaker.')
    separate.add_argument('inputs', nargs='+', metavar='INPUT', help='audio files, folders, CSV or scp lists')
    _add_separation_options(separate, chunk_default=8.0)
    _add_runtime_options(separate)

    evaluate = commands.add_parser(
        'evaluate', formatter_class=_formatter, epilog=EVALUATE_EPILOG,
        help='score a model on mixtures with known sources (SI-SNRi, SDRi)',
        description='Separate a test set and score the result against the reference sources.')
    evaluate.add_argument('--data', required=True, nargs='+', metavar='DATA',
                          help='CSV / scp list(s) with references, or a LibriMix folder (with --split)')
    evaluate.add_argument('--split', default='test', help='LibriMix split for folder data (default: test)')
    evaluate.add_argument('--metrics', default='', metavar='LIST',
                          help='perceptual metrics to add, comma-separated: pesq (narrow band below 16 kHz, wide '
                               'band from 16 kHz), pesq-nb, pesq-wb, stoi, estoi; needs the metrics extra')
    _add_separation_options(evaluate, chunk_default=0.0)
    _add_runtime_options(evaluate)

    train = commands.add_parser(
        'train', formatter_class=_formatter, epilog=TRAIN_EPILOG.format(configs=CONFIGS_DIR),
        help='train or fine-tune a model',
        description='Train (or fine-tune, or resume training of) a MossFormer / MossFormer2 model.')
    train.add_argument('--config', required=True, metavar='PATH',
                       help='model directory or configuration.json with "model" and optional "train" sections')
    train.add_argument('--train', required=True, metavar='DATA', help='training data: CSV, scp or LibriMix folder')
    train.add_argument('--valid', required=True, metavar='DATA', help='validation data: CSV, scp or LibriMix folder')
    train.add_argument('--work-dir', required=True, metavar='DIR',
                       help='checkpoints, logs and best_model/ go here; an existing run resumes')
    train.add_argument('--max-epochs', type=int, default=None, metavar='N', help='epochs in total')
    train.add_argument('--init-checkpoint', default=None, metavar='PATH',
                       help='start from these weights (fine-tuning; any supported checkpoint format)')
    train.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', dest='overrides',
                       help='override a train key (dotted for nested keys); may be repeated')
    train.add_argument('--resume-with-new-settings', action='store_true',
                       help='let a resumed run continue with changed training settings (learning rate, schedule, '
                            'batch...); the model, seed and training data can never change')
    _add_runtime_options(train)

    average = commands.add_parser(
        'average', formatter_class=_formatter, epilog=AVERAGE_EPILOG,
        help='best_model/ from the mean of the N best checkpoints of a run',
        description='Average the N best checkpoints of a training run into its best_model/.')
    average.add_argument('--work-dir', required=True, metavar='DIR', help='the training run\'s work dir')
    average.add_argument('--best', required=True, type=int, metavar='N', help='checkpoints to average (>= 1)')
    average.add_argument('--valid', default=None, metavar='DATA',
                         help='validation data to score the average on (default: the run\'s own)')
    _add_runtime_options(average)
    export = commands.add_parser(
        'export', formatter_class=_formatter, epilog=EXPORT_EPILOG,
        help='export a model to ONNX (for ONNX Runtime)',
        description='Export a MossFormer / MossFormer2 model dir to one ONNX file with dynamic batch and length.')
    export.add_argument('--model', required=True, metavar='DIR', help='model directory (configuration.json + weights)')
    export.add_argument('--out', default=None, metavar='FILE', help='the .onnx file to write (default: DIR/model.onnx)')
    export.add_argument('--no-verify', action='store_true',
                        help='do not compare ONNX Runtime with PyTorch after the export')
    _add_runtime_options(export, device=False)
    return parser


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """['lr=1e-3', 'augment.dynamic_mixing=true'] -> {'lr': 0.001, 'augment': {'dynamic_mixing': True}}."""
    overrides: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition('=')
        key = key.strip()
        if not sep or not key:
            raise UsageError(f'--set {item!r}: expected KEY=VALUE, e.g. --set lr=5e-4')
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        target = overrides
        parts = key.split('.')
        for part in parts[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f'--set {item!r}: {part} was already given a value')
            target = node
        target[parts[-1]] = value
    return overrides


def resolve_device(name: str) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a device that exists."""
    import torch

    name = name.strip().lower()
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cpu':
        return 'cpu'
    kind, _, index = name.partition(':')
    if kind in ('cuda', 'gpu'):
        if not torch.cuda.is_available():
            raise UsageError(f'--device {name}: CUDA is not available here (use --device cpu or auto)')
        if index:
            if not index.isdigit():
                raise UsageError(f'--device {name}: expected cuda:N with N a GPU number')
            if int(index) >= torch.cuda.device_count():
                raise UsageError(f'--device {name}: only {torch.cuda.device_count()} GPU(s) visible')
            return f'cuda:{int(index)}'
        return 'cuda'
    raise UsageError(f'--device {name}: expected auto, cpu, cuda or cuda:N')


def _model_dir(path: str) -> Path:
    from .data.sources import HubUnavailableError
    from .hub import resolve_model_dir

    try:
        directory = resolve_model_dir(path)
    except (FileNotFoundError, HubUnavailableError) as err:
        raise UsageError(f'--model {path}: {err}') from None
    if not (directory / CONFIGURATION_FILE).is_file():
        raise UsageError(f'--model {path}: no configuration.json in this directory')
    return directory.resolve()


class _MinimumLevel(logging.Filter):
    """Drops records below a level; survives ModelScope resetting its logger's level on every import."""

    def __init__(self) -> None:
        super().__init__()
        self.level = logging.ERROR

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


_MODELSCOPE_FILTER = _MinimumLevel()


def set_speechbrain_level(level: int) -> None:
    """SpeechBrain's loggers at `level` (for programs that own their logging, like this CLI).

    SpeechBrain sets every module logger's level from ``SB_LOG_LEVEL`` (default INFO) when the module is
    imported, so its INFO lines pass whatever the root level is: the variable is set for modules imported
    later and the loggers that already exist are set now.
    """
    os.environ['SB_LOG_LEVEL'] = logging.getLevelName(level)
    for name in list(logging.root.manager.loggerDict):
        if name == 'speechbrain' or name.startswith('speechbrain.'):
            logging.getLogger(name).setLevel(level)


def _configure_logging(args: argparse.Namespace) -> None:
    """Warnings and errors by default (-v: progress messages, -q: errors only); ModelScope's chatter hidden."""
    level = logging.ERROR if args.quiet else (logging.INFO if args.verbose else logging.WARNING)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format='%(levelname)s %(name)s: %(message)s')
    logging.getLogger('modelscope_mossformer').setLevel(level)
    set_speechbrain_level(level if args.verbose > 1 else max(level, logging.WARNING))
    _MODELSCOPE_FILTER.level = level if args.verbose > 1 else max(level, logging.ERROR)
    modelscope_logger = logging.getLogger('modelscope')
    if _MODELSCOPE_FILTER not in modelscope_logger.filters:
        modelscope_logger.addFilter(_MODELSCOPE_FILTER)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UsageError(f'--threads {args.threads}: must be at least 1')
        torch.set_num_threads(args.threads)


@contextlib.contextmanager
def _progress_friendly_logging(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield


def _chunk_seconds(args: argparse.Namespace) -> Optional[float]:
    """--chunk-seconds as the engine takes it (None: whole file), after checking the chunking options."""
    chunk = args.chunk_seconds if args.chunk_seconds and args.chunk_seconds > 0 else None
    if chunk is not None and not 0 < args.overlap_seconds < chunk:
        raise UsageError(f'--overlap-seconds {args.overlap_seconds:g} must be above 0 and below '
                         f'--chunk-seconds {chunk:g}')
    if args.batch_chunks < 1:
        raise UsageError(f'--batch-chunks {args.batch_chunks}: must be at least 1')
    return chunk


def _build_engine(args: argparse.Namespace):
    """The separation engine for --model (no ModelScope pipeline in between: the CLI streams files itself)."""
    if _backend(args) == 'onnxruntime':
        return _build_onnx_engine(args)
    model_dir = _model_dir(args.model)
    device = resolve_device(args.device)
    if args.precision == 'fp16' and not device.startswith('cuda'):
        raise UsageError("--precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
    chunk = _chunk_seconds(args)
    import modelscope_mossformer  # noqa: F401 - registers the model types

    from .inference import SeparationEngine
    from .model import load_model_dir

    try:
        model = load_model_dir(model_dir)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise UsageError(f'--model {args.model}: cannot load the model ({err})') from err
    if model.weights_source is None:
        raise UsageError(f'--model {args.model}: the model dir holds no weights to separate with')
    model.separator.to(device).eval()
    return SeparationEngine(model.separator, model.sample_rate, device=device, precision=args.precision,
                            chunk_seconds=chunk, overlap_seconds=args.overlap_seconds,
                            batch_chunks=args.batch_chunks)


def _activity_settings(args: argparse.Namespace):
    """The activity rule's constants from --activity-relative-db."""
    from .activity import DEFAULT_SETTINGS, ActivitySettings

    if args.activity_relative_db is None:
        return DEFAULT_SETTINGS
    try:
        return ActivitySettings(relative_db=args.activity_relative_db)
    except ValueError as err:
        raise UsageError(f'--activity-relative-db {args.activity_relative_db:g}: {err}') from None


def _backend(args: argparse.Namespace) -> str:
    from .onnx_backend import is_onnx_file

    backend = getattr(args, 'backend', 'pytorch')
    onnx_model = is_onnx_file(args.model)
    if backend == 'auto':
        return 'onnxruntime' if onnx_model else 'pytorch'
    if backend == 'pytorch' and onnx_model:
        raise UsageError(f'--model {args.model}: an .onnx file runs with --backend onnxruntime; '
                         f'--backend pytorch needs a model directory')
    return backend


def _build_onnx_engine(args: argparse.Namespace):
    """The separation engine running an exported model with ONNX Runtime (same chunking and stitching)."""
    from .inference import SeparationEngine
    from .onnx_backend import (OnnxSeparator, StaleExportError, available_devices, check_matches_model_dir,
                               onnx_file_for)

    if args.precision != 'fp32':
        raise UsageError(f'--precision {args.precision}: the onnxruntime backend runs the exported float32 graph; '
                         f'use --precision fp32 (or --backend pytorch)')
    chunk = _chunk_seconds(args)
    model_path = Path(args.model).expanduser()
    try:
        onnx_path = onnx_file_for(model_path)
    except FileNotFoundError as err:
        raise UsageError(f'--model {args.model}: {err}') from None
    device = args.device.strip().lower()
    if args.threads is not None and args.threads < 1:
        raise UsageError(f'--threads {args.threads}: must be at least 1')
    try:
        if device == 'auto':
            device = 'cuda' if 'cuda' in available_devices() else 'cpu'
        separator = OnnxSeparator(onnx_path, threads=args.threads, device=device)
        if model_path.is_dir():
            check_matches_model_dir(separator, model_path)
    except ImportError as err:
        raise UsageError(str(err)) from None
    except (ValueError, StaleExportError) as err:
        raise UsageError(f'--model {args.model}: {err}') from None
    return SeparationEngine(separator, separator.sample_rate, device='cpu', precision='fp32',
                            chunk_seconds=chunk, overlap_seconds=args.overlap_seconds,
                            batch_chunks=args.batch_chunks)


def _print_summary(summary: Any, out_dir: str) -> None:
    print(f'{summary.ok}/{summary.total} file(s) separated into {out_dir}')
    if summary.means:
        print(f'mean over {summary.scored} scored file(s):')
        for key, value in summary.means.items():
            unit = ' dB' if key in ('si-snr', 'si-snri', 'sdr', 'sdri') else ''
            missing = getattr(summary, 'unscored', {}).get(key)
            print(f'  {key:8s} {value:8.3f}{unit}' + (f'  ({missing} file(s) not scored)' if missing else ''))
    for path, message in summary.failures:
        print(f'FAILED {message if message.startswith(path) else f"{path}: {message}"}', file=sys.stderr)
    print(f'report: {summary.report_csv}')


# ---------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------


def _run_separation(args: argparse.Namespace, inputs: List[str], split: Optional[str],
                    metrics: Sequence[str] = ()) -> int:
    from .batch import separate_many
    from .data.manifest import ManifestError

    separator = _build_engine(args)
    activity = _activity_settings(args)
    if metrics:
        from .perceptual import resolve_metrics

        try:
            resolve_metrics(metrics, separator.sample_rate, '--metrics')
        except (ValueError, ImportError) as err:
            raise UsageError(str(err)) from None
    progress = not args.no_progress
    with _progress_friendly_logging(progress):
        try:
            summary = separate_many(separator, inputs, args.out, split=split, subtype=args.subtype,
                                    progress=progress, gate_inactive=args.gate_inactive, activity=activity,
                                    metrics=metrics)
        except ManifestError as err:
            raise UsageError(str(err)) from err
    _print_summary(summary, args.out)
    if summary.total == 0:
        print('no input files found', file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if summary.failed else EXIT_OK


def command_separate(args: argparse.Namespace) -> int:
    return _run_separation(args, args.inputs, split=None)


def command_evaluate(args: argparse.Namespace) -> int:
    from .perceptual import parse_metric_names

    for item in args.data:
        if not Path(item).exists():
            raise UsageError(f'--data {item}: no such file or folder')
    try:
        metrics = parse_metric_names(args.metrics, '--metrics')
    except ValueError as err:
        raise UsageError(str(err)) from None
    return _run_separation(args, args.data, split=args.split, metrics=metrics)


def _training_model_dir(config: str, work_dir: Path) -> Path:
    path = Path(config).expanduser()
    if path.is_dir():
        if not (path / CONFIGURATION_FILE).is_file():
            raise UsageError(f'--config {config}: no configuration.json in this directory')
        return path.resolve()
    if not path.is_file():
        from .hub import is_hub_id

        if is_hub_id(config):  # a hub id: its cached copy (or a download when online)
            return _model_dir(config)
        raise UsageError(f'--config {config}: no such file or directory')
    try:
        json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f'--config {config}: not valid JSON ({err})') from err
    if path.name == CONFIGURATION_FILE:
        return path.parent.resolve()
    model_dir = work_dir / 'initial_model'
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, model_dir / CONFIGURATION_FILE)
    return model_dir.resolve()


def command_train(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    for name, data in (('--train', args.train), ('--valid', args.valid)):
        if not Path(data).exists():
            raise UsageError(f'{name} {data}: no such file or folder')
    work_dir = Path(args.work_dir).expanduser().resolve()
    device = resolve_device(args.device)
    model_dir = _training_model_dir(args.config, work_dir)
    if args.no_progress:
        overrides['progressbar'] = False
    import modelscope_mossformer  # noqa: F401 - registers the trainer
    from modelscope.trainers import build_trainer

    from .metainfo import Trainers
    from .workdir import ResumeMismatchError, WorkDirBusyError

    default_args = dict(model=str(model_dir), train_dataset=str(Path(args.train).resolve()),
                        eval_dataset=str(Path(args.valid).resolve()), work_dir=str(work_dir), device=device,
                        train=overrides, resume_with_new_settings=args.resume_with_new_settings)
    if args.max_epochs is not None:
        default_args['max_epochs'] = args.max_epochs
    if args.init_checkpoint is not None:
        default_args['init_checkpoint'] = args.init_checkpoint
    try:
        trainer = build_trainer(Trainers.speech_separation, default_args=default_args)
    except (ValueError, TypeError, FileNotFoundError, WorkDirBusyError) as err:
        raise UsageError(str(err)) from err
    try:
        result = trainer.train()
    except (ResumeMismatchError, WorkDirBusyError) as err:
        raise UsageError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - report and exit 1, the log has the details
        logger.error('training failed: %s', err, exc_info=args.verbose > 0)
        print(f'training failed: {err} (log: {work_dir / "log.txt"})', file=sys.stderr)
        return EXIT_FAILED
    epochs = result.get('epochs') or []
    if epochs:
        last = epochs[-1]
        print(f'epoch {int(last["epoch"])}: train loss {last["train_loss"]:.3f}, '
              f'valid SI-SNR {last["valid_si_snr"]:.3f} dB')
    else:
        print('nothing to train: the run in this work dir already reached --max-epochs')
    print(f'best model: {result["best_model_dir"]}')
    return EXIT_OK


def _run_validation_data(work_dir: Path) -> str:
    """The validation data a run in `work_dir` used, from its run.json."""
    from .workdir import RUN_FILE

    run_file = work_dir / RUN_FILE
    try:
        described = json.loads(run_file.read_text()).get('valid_data') or {}
    except (OSError, ValueError):
        described = {}
    path = described.get('path')
    if not path or not Path(path).exists():
        raise UsageError(f'--work-dir {work_dir}: {run_file} names no validation data that exists here '
                         f'({path or "none recorded"}); pass --valid DATA')
    return path


def command_average(args: argparse.Namespace) -> int:
    work_dir = Path(args.work_dir).expanduser().resolve()
    if args.best < 1:
        raise UsageError(f'--best {args.best}: must be at least 1')
    if not (work_dir / CONFIGURATION_FILE).is_file() or not (work_dir / 'save').is_dir():
        raise UsageError(f'--work-dir {args.work_dir}: not a training work dir (needs configuration.json and save/)')
    valid = args.valid if args.valid is not None else _run_validation_data(work_dir)
    if not Path(valid).exists():
        raise UsageError(f'--valid {valid}: no such file or folder')
    device = resolve_device(args.device)
    import modelscope_mossformer  # noqa: F401 - registers the model types

    from .models.checkpoint import CheckpointError
    from .trainer import SpeechSeparationTrainer
    from .workdir import WorkDirBusyError

    try:
        trainer = SpeechSeparationTrainer(model=str(work_dir), eval_dataset=str(Path(valid).resolve()),
                                          work_dir=str(work_dir), device=device)
        summary = trainer.average_best_checkpoints(args.best, progress=not args.no_progress)
    except (WorkDirBusyError, FileNotFoundError, CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from err
    print(f'averaged {len(summary["epochs"])} checkpoint(s), epochs {", ".join(map(str, summary["epochs"]))}')
    for item in summary['checkpoints']:
        print(f'  epoch {item["epoch"]:4d}  valid SI-SNR {item["valid_si_snr"]:8.3f} dB  {item["checkpoint"]}')
    print(f'valid SI-SNR of the average {summary["valid_si_snr"]:8.3f} dB '
          f'({summary["gain_db"]:+.3f} dB over the best single checkpoint)')
    if not summary['written']:
        print(f'the average is not finite; {trainer.best_model_dir} was left as it was', file=sys.stderr)
        return EXIT_FAILED
    print(f'best model: {trainer.best_model_dir}')
    return EXIT_OK


def command_export(args: argparse.Namespace) -> int:
    model_dir = _model_dir(args.model)
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.suffix.lower() != '.onnx':
        raise UsageError(f'--out {args.out}: expected a file name ending in .onnx')
    from .onnx_export import (DEFAULT_ONNX_FILE, OPSET, TOLERANCE, VERIFY_SECONDS, export_model, require,
                              verify_export)

    try:
        for module in ('onnx', 'onnxscript') + (() if args.no_verify else ('onnxruntime',)):
            require(module, 'mossformer export')
    except ImportError as err:
        raise UsageError(str(err)) from None
    import modelscope_mossformer  # noqa: F401 - registers the model types
    from tqdm.auto import tqdm

    if not args.verbose:  # the exporter's notices (e.g. "torchvision is not installed") are not for users
        logging.getLogger('torch.onnx').setLevel(logging.ERROR)
    stages = ['load', 'capture', 'convert', 'save'] + ([] if args.no_verify else ['verify'])
    bar = tqdm(total=len(stages), desc='export', unit='step', disable=args.no_progress,
               bar_format='{desc}: {n_fmt}/{total_fmt} {postfix}')

    def on_stage(name: str) -> None:
        if bar.n < stages.index(name):
            bar.update(stages.index(name) - bar.n)
        bar.set_postfix_str(name)

    from .model import load_model_dir

    with _progress_friendly_logging(not args.no_progress), bar:
        on_stage('load')
        try:
            model = load_model_dir(model_dir)
            if model.weights_source is None:
                raise ValueError('the model dir holds no weights to export')
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise UsageError(f'--model {args.model}: cannot export this model ({err})') from err
        path = out if out is not None else model_dir / DEFAULT_ONNX_FILE
        try:
            export_model(model, path, model_dir=model_dir, on_stage=on_stage)
        except Exception as err:  # noqa: BLE001 - the exporter's own errors: report and exit 1
            logger.error('export failed: %s', err, exc_info=args.verbose > 0)
            print(f'export failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}',
                  file=sys.stderr)
            return EXIT_FAILED
        difference = None
        if not args.no_verify:
            on_stage('verify')
            difference = verify_export(model.separator, path, threads=args.threads)
        bar.update(len(stages) - bar.n)
    size_mb = path.stat().st_size / 2 ** 20
    print(f'wrote {path} ({size_mb:.1f} MB, opset {OPSET}, {model.config.family} at {model.sample_rate} Hz, '
          f'{model.num_spks} speakers)')
    if difference is not None:
        verdict = 'within' if difference <= TOLERANCE else 'NOT within'
        print(f'ONNX Runtime vs PyTorch on a {VERIFY_SECONDS:g} s test signal: max abs difference {difference:.2e} '
              f'({verdict} {TOLERANCE:g})')
        if difference > TOLERANCE:
            print(f'export check failed: {path} does not reproduce the PyTorch model', file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


COMMANDS = {'separate': command_separate, 'evaluate': command_evaluate, 'train': command_train,
            'average': command_average, 'export': command_export}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some failures, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(f'mossformer: error: {err}', file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        _configure_logging(args)
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f'mossformer {args.command}: error: {err}', file=sys.stderr)
        return EXIT_USAGE


if __name__ == '__main__':
    sys.exit(main())
