"""Checkpoint averaging: a model whose weights are the mean of the N best checkpoints of a run.

ESPnet and SpeechBrain recipes average the few best checkpoints of a run (by validation score) for a
small gain over the best single one.  Here:

* `list_epoch_checkpoints`: the end-of-epoch checkpoints in ``work_dir/save/`` with their epoch and
  validation SI-SNR (read from SpeechBrain's ``CKPT.yaml`` with ``yaml.safe_load``), best first;
  intra-epoch checkpoints (no validation score) are not candidates.
* `select_best`: the N best (all of them, with a warning, when fewer exist).
* `average_state_dicts`: the element-wise mean of floating-point tensors (accumulated in float64, then
  cast back to each tensor's dtype); integer and boolean tensors (counters, masks) are copied from the
  best checkpoint, never averaged.  Checkpoints whose keys, shapes or dtypes differ are refused, naming
  the checkpoint and the keys.
* `average_checkpoints`: the mean of the checkpoints' ``separator.ckpt`` files, each read weights-only
  (`models.checkpoint.safe_torch_load`), one at a time (memory: two state dicts, whatever N).
* `validation_si_snr`: the validation score of a separator computed as the trainer computes it each epoch
  (batches of ``eval_batch_size``, ``eval_precision`` autocast, PIT SI-SNR over the valid lengths, mean
  of the batch means), so the averaged model's score compares with the checkpoints' own.

`SpeechSeparationTrainer.average_best_checkpoints` puts these together and writes ``best_model/``;
``train.average_best: N`` runs it when training ends, ``mossformer average`` on a finished run.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from .models.checkpoint import CheckpointError, StateDict, safe_torch_load

logger = logging.getLogger(__name__)

CHECKPOINT_GLOB = 'CKPT+*'
META_FILE = 'CKPT.yaml'
SEPARATOR_FILE = 'separator.ckpt'
SCORE_KEY = 'si-snr'  # the validation SI-SNR that the trainer writes into each checkpoint's meta


@dataclass(frozen=True)
class EpochCheckpoint:
    """One end-of-epoch checkpoint of a run.

    Attributes:
        path: its ``CKPT+<time>`` folder.
        epoch: the epoch it ends.
        valid_si_snr: validation SI-SNR (dB) at that epoch.
    """

    path: Path
    epoch: int
    valid_si_snr: float

    def record(self) -> Dict[str, Any]:
        """What ``best_model/configuration.json`` records of it."""
        return {'checkpoint': self.path.name, 'epoch': self.epoch, 'valid_si_snr': self.valid_si_snr}


def _read_meta(path: Path) -> Mapping[str, Any]:
    import yaml

    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f'{path}: unreadable checkpoint meta file ({type(err).__name__}: {err})') from None
    if not isinstance(meta, Mapping):
        raise CheckpointError(f'{path}: expected a mapping of checkpoint facts, found {type(meta).__name__}')
    return meta


def list_epoch_checkpoints(save_dir: Path) -> List[EpochCheckpoint]:
    """End-of-epoch checkpoints in `save_dir` that hold a validation SI-SNR, best first (ties: later epoch)."""
    found: List[EpochCheckpoint] = []
    for folder in sorted(Path(save_dir).glob(CHECKPOINT_GLOB)):
        meta_path = folder / META_FILE
        if not folder.is_dir() or not meta_path.is_file():
            continue
        meta = _read_meta(meta_path)
        score, epoch = meta.get(SCORE_KEY), meta.get('epoch')
        if not meta.get('end-of-epoch', True) or score is None or epoch is None:
            continue  # an intra-epoch checkpoint: no validation score
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise CheckpointError(f'{meta_path}: {SCORE_KEY} must be a finite number, found {score!r}')
        found.append(EpochCheckpoint(folder, int(epoch), float(score)))
    return sorted(found, key=lambda c: (-c.valid_si_snr, -c.epoch))


def select_best(checkpoints: Sequence[EpochCheckpoint], count: int, save_dir: Path) -> List[EpochCheckpoint]:
    """The `count` best of `checkpoints` (best first); every one, with a warning, when there are fewer.

    Raises:
        FileNotFoundError: no checkpoint at all.
    """
    if count < 1:
        raise ValueError(f'the number of checkpoints to average must be at least 1, got {count}')
    if not checkpoints:
        raise FileNotFoundError(f'{save_dir}: no end-of-epoch checkpoint with a validation SI-SNR to average; '
                                'train at least one epoch first')
    chosen = list(checkpoints[:count])
    if len(chosen) < count:
        logger.warning('%s: %d best checkpoint(s) asked for, only %d kept; averaging epochs %s (a run keeps N '
                       'best when train.average_best is N from its start)', save_dir, count, len(chosen),
                       ', '.join(str(c.epoch) for c in chosen))
    return chosen


def average_state_dicts(states: Iterable[Tuple[str, Mapping[str, torch.Tensor]]]) -> StateDict:
    """Element-wise mean of state dicts given as (name, state dict), the first being the best.

    Floating-point tensors are summed in float64 and divided once, then cast back to their dtype (so the
    result is the exact mean rounded once); other tensors (integer counters, boolean masks) are the first
    state dict's.

    Raises:
        CheckpointError: a state dict whose keys, shapes or dtypes differ from the first's (named).
        ValueError: no state dict.
    """
    first_name: Optional[str] = None
    reference: Dict[str, torch.Tensor] = {}
    sums: Dict[str, torch.Tensor] = {}
    count = 0
    for name, state in states:
        if first_name is None:
            first_name, reference = name, {k: v.detach().cpu() for k, v in state.items()}
            sums = {k: v.double() for k, v in reference.items() if v.is_floating_point()}
            count = 1
            continue
        missing = sorted(set(reference) - set(state))
        unexpected = sorted(set(state) - set(reference))
        different = [f'{k}: {tuple(state[k].shape)} {state[k].dtype} vs {tuple(v.shape)} {v.dtype}'
                     for k, v in reference.items() if k in state and
                     (state[k].shape != v.shape or state[k].dtype != v.dtype)]
        if missing or unexpected or different:
            lines = [f'{name}: its parameters differ from those of {first_name}, so the two cannot be averaged '
                     '(checkpoints of different models in one save/ folder?)']
            for title, keys in (('missing', missing), ('unexpected', unexpected), ('shape/dtype', different)):
                if keys:
                    lines.append(f'  {len(keys)} {title}: ' + ', '.join(keys[:8]) + (' ...' if len(keys) > 8 else ''))
            raise CheckpointError('\n'.join(lines))
        for key in sums:
            sums[key] += state[key].detach().cpu().double()
        count += 1
    if first_name is None:
        raise ValueError('average_state_dicts: no state dict to average')
    return {key: (sums[key] / count).to(value.dtype) if key in sums else value.clone()
            for key, value in reference.items()}


def _separator_state(checkpoint: EpochCheckpoint) -> Tuple[str, Mapping[str, torch.Tensor]]:
    path = checkpoint.path / SEPARATOR_FILE
    if not path.is_file():
        raise CheckpointError(f'{checkpoint.path}: no {SEPARATOR_FILE} (not a checkpoint of this trainer?)')
    state = safe_torch_load(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f'{path}: expected a state dict of tensors')
    return str(path), state


def average_checkpoints(checkpoints: Sequence[EpochCheckpoint]) -> StateDict:
    """Mean of the checkpoints' separator weights (the first, the best, gives the non-float tensors)."""
    return average_state_dicts(_separator_state(c) for c in checkpoints)


def validation_si_snr(separator: torch.nn.Module, dataset: Any, batch_size: int, device: str,
                      precision: str = 'fp32', progress: bool = False) -> float:
    """Validation SI-SNR (dB) of `separator` on `dataset`, as the trainer scores each epoch.

    The trainer's figure is SpeechBrain's running mean of per-batch losses (the negative mean PIT SI-SNR
    of each batch, over valid samples); this is the same mean of the same batches, under the same
    ``eval_precision`` autocast.  Batches left empty by skipped bad examples are not counted.
    """
    from speechbrain.utils.autocast import AMPConfig, TorchAutocast
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from .data.dataset import collate_separation
    from .metrics import pit_si_snr

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_separation)
    device_type = torch.device(device).type
    autocast = TorchAutocast(device_type=device_type, dtype=AMPConfig.from_name(precision).dtype)
    separator = separator.to(device).eval()
    means: List[float] = []
    with torch.no_grad():
        for batch in tqdm(loader, desc='validate', disable=not progress):
            if len(batch['ids']) == 0:
                continue
            with autocast:
                estimates = separator(batch['mix'].to(device)).float()
                scores, _ = pit_si_snr(estimates, batch['sources'].to(device), batch['lengths'].to(device))
            means.append(float(scores.mean()))
    if not means:
        raise ValueError('the validation set yielded no usable example')
    return float(sum(means) / len(means))
