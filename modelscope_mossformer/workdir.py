"""One owner per work_dir, and a resume that is the same run.

* `WorkDirLock`: an exclusive `flock` on ``work_dir/.lock``, held by the training process (rank 0 under
  DDP) for the whole of `train()` and briefly by a trainer writing ``work_dir/configuration.json``.  The
  kernel drops it when its process dies, so a killed run never blocks the next one; the file keeps the
  last holder's pid and host, which the error for a busy work_dir names, and a start that finds a
  departed holder's record says so in one log line.
* `compare_runs`: the configuration a run started with (``work_dir/run.json``) against the one resuming it.
  Keys that change what is being trained (the model, the seed, the training data) can never change in a
  resume; training settings (learning rate, schedule, batch, augmentation...) only when the user asks for
  it (`resume_with_new_settings=True`); bookkeeping keys (max_epochs, progress bars, workers, checkpoint
  intervals) freely.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .errors import DiskFullError

logger = logging.getLogger(__name__)

LOCK_FILE = '.lock'
PARTIAL_PREFIX = '.partial-'  # a checkpoint being written
DELETING_PREFIX = '.deleting-'  # a checkpoint being deleted
RUN_FILE = 'run.json'

# train keys a resume may change without asking: they do not change what the run computes
BOOKKEEPING_KEYS = frozenset({'max_epochs', 'progressbar', 'num_workers', 'eval_batch_size', 'eval_precision',
                              'nonfinite_patience', 'ckpt_interval_minutes', 'ckpt_interval_steps',
                              'distributed_backend', 'activation_checkpointing', 'init_checkpoint',
                              'bad_example_policy', 'eval_metrics', 'average_best'})
# train keys that define the run: a different value is another run
RUN_DEFINING_TRAIN_KEYS = frozenset({'seed'})


class WorkDirBusyError(RuntimeError):
    """Another process holds the work_dir."""


class ResumeMismatchError(ValueError):
    """A resume whose configuration differs from the run it would continue."""


class WorkDirLock:
    """Exclusive lock on a work_dir (a no-op where `fcntl` is missing)."""

    def __init__(self, work_dir: os.PathLike) -> None:
        self.path = Path(work_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> 'WorkDirLock':
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.debug('no fcntl: %s is not locked', self.path.parent)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkDirBusyError(
                f'{self.path.parent} is in use by another run ({_describe(holder)}); wait for it to finish, '
                f'or give this run another work_dir') from None
        except OSError as err:  # a file system without locks (some network mounts): no exclusion possible
            os.close(fd)
            logger.warning('%s: cannot lock the work_dir (%s); make sure no other run uses it',
                           self.path.parent, err)
            return self
        previous = _read_holder(fd)
        if previous and previous.get('pid') != os.getpid():
            logger.warning('%s: taking over the lock of a run that ended without releasing it (%s)',
                           self.path.parent, _describe(previous))
        record = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                             'since': time.strftime('%Y-%m-%d %H:%M:%S')}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)  # an orderly end leaves no holder record
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> 'WorkDirLock':
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> Dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: Mapping[str, Any]) -> str:
    if not holder:
        return 'holder unknown'
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


# ---------------------------------------------------------------------------
# what a run is
# ---------------------------------------------------------------------------


def describe_data(source: Any) -> Optional[Dict[str, Any]]:
    """A comparable description of a dataset source: path and content hash of a manifest file, path of a
    folder, class and length of a dataset object."""
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.path.expanduser(str(source)))
        if path.is_file():
            return {'path': str(path.resolve()), 'sha256': hashlib.sha256(path.read_bytes()).hexdigest()}
        return {'path': str(path.resolve()) if path.exists() else str(source)}
    kind = type(source)
    description: Dict[str, Any] = {'type': f'{kind.__module__}.{kind.__qualname__}'}
    try:
        description['length'] = len(source)
    except TypeError:
        pass
    return description


def run_record(configuration: Mapping[str, Any], train_cfg: Mapping[str, Any], train_data: Any) -> Dict[str, Any]:
    return {'model': dict(configuration.get('model') or {}), 'train': dict(train_cfg),
            'train_data': describe_data(train_data)}


def _flatten(value: Any, prefix: str) -> Dict[str, Any]:
    if isinstance(value, Mapping):
        out: Dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f'{prefix}.{key}' if prefix else str(key)))
        return out
    return {prefix: value}


def compare_runs(stored: Mapping[str, Any], new: Mapping[str, Any]) -> Tuple[List[str], List[str], List[str]]:
    """(run-defining differences, training-setting differences, bookkeeping differences), as
    ``'key: old -> new'`` strings."""
    old_flat = _flatten({k: stored.get(k) for k in ('model', 'train', 'train_data')}, '')
    new_flat = _flatten({k: new.get(k) for k in ('model', 'train', 'train_data')}, '')
    defining, settings, bookkeeping = [], [], []
    for key in sorted(set(old_flat) | set(new_flat)):
        old, now = old_flat.get(key), new_flat.get(key)
        if old == now:
            continue
        text = f'{key}: {old!r} -> {now!r}'
        section, _, rest = key.partition('.')
        top = rest.split('.')[0]
        if section in ('model', 'train_data') or top in RUN_DEFINING_TRAIN_KEYS:
            defining.append(text)
        elif top in BOOKKEEPING_KEYS:
            bookkeeping.append(text)
        else:
            settings.append(text)
    return defining, settings, bookkeeping


def check_resume(run_file: Path, record: Mapping[str, Any], allow_new_settings: bool) -> List[str]:
    """Raise `ResumeMismatchError` if resuming the run recorded in `run_file` with `record` is refused;
    return the training settings that change (allowed)."""
    try:
        stored = json.loads(run_file.read_text())
    except (OSError, ValueError) as err:
        raise ResumeMismatchError(f'{run_file}: unreadable record of the run these checkpoints belong to '
                                  f'({err}); use another work_dir') from None
    defining, settings, bookkeeping = compare_runs(stored, record)
    work_dir = run_file.parent
    if defining:
        raise ResumeMismatchError(
            f'{work_dir} holds checkpoints of another run: resuming it with {"; ".join(defining)} would mix two '
            f'runs. Use a new work_dir (or restore the original settings).')
    if settings and not allow_new_settings:
        raise ResumeMismatchError(
            f'{work_dir}: resuming with changed training settings ({"; ".join(settings)}). Pass '
            f'resume_with_new_settings=True (mossformer train --resume-with-new-settings) to continue this run '
            f'with them, or use a new work_dir.')
    for text in bookkeeping + settings:
        logger.info('%s: resuming with %s', work_dir, text)
    return settings


@contextlib.contextmanager
def disk_errors_named(target: Path, needed_bytes: Callable[[], int], cleanup: Optional[Path] = None):
    """Re-raise a full disk (ENOSPC, or PyTorch's "unexpected pos" from a short write) as `DiskFullError`
    naming `target`, the free and the needed bytes; the half-written `cleanup` folder is removed."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        text = str(err)
        if getattr(err, 'errno', None) != errno.ENOSPC and 'No space left' not in text \
                and 'unexpected pos' not in text:
            raise
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        anchor = next((p for p in (target, *target.parents) if p.exists()), Path('/'))
        free = shutil.disk_usage(anchor).free
        raise DiskFullError(errno.ENOSPC, f'no space left on the device holding {target}: {free} bytes free, '
                                          f'about {needed_bytes()} needed; free space or move work_dir '
                                          f'(the previous checkpoint and best_model/ are intact)') from err
