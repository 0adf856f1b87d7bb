"""The SpeechBrain side of the trainer: the `Brain`, the checkpointer and the random-state recoverable.

Imported by `SpeechSeparationTrainer.train()` only (SpeechBrain is loaded when training starts, not when
`modelscope_mossformer` is imported).

* `SeparationBrain`: PIT SI-SNR training of ``modules.separator``; skipped bad examples counted, non-finite
  losses named by their examples, nothing of an epoch kept once the weights or the validation output are
  non-finite, the plateau schedule, checkpoints kept as ModelScope's built-in keeps them (latest + best;
  latest + N best with ``train.average_best: N``, see `keep_best_and_latest`).
* `AtomicCheckpointer`: each checkpoint written into a hidden folder and renamed into place, deleted by
  renaming first; every tensor file of a checkpoint read weights-only before SpeechBrain loads it.
* `RNGState`: Python, NumPy and torch random states as tensors (weights-only loadable).
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.dataloader import SaveableDataLoader
from speechbrain.utils.checkpoints import (DEFAULT_SAVE_HOOKS, METAFNAME, Checkpoint, Checkpointer,
                                           get_default_hook, mark_as_loader, mark_as_saver,
                                           register_checkpoint_hooks)
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process
from speechbrain.utils.epoch_loop import EpochCounter

from .errors import NonFiniteLossError, NonFiniteWeightsError
from .metrics import pit_si_snr, pit_si_snr_loss
from .models.checkpoint import CheckpointError, atomic_save, safe_torch_load
from .workdir import DELETING_PREFIX, PARTIAL_PREFIX, disk_errors_named

logger = logging.getLogger(__name__)


class AtomicCheckpointer(Checkpointer):
    """Writes each checkpoint into a hidden folder and renames it into place when complete.

    SpeechBrain's own checkpointer writes the meta file first and the weights
    after it, so a kill mid-save leaves a folder that looks complete.  Here the
    folder only gets its ``CKPT+`` name once every file is on disk.
    """

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):  # noqa: B006
        final = tmp = None
        if if_main_process():
            final = self._new_checkpoint_dirpath() if name is None else self._custom_checkpoint_dirpath(name)
            tmp = final.parent / f'{PARTIAL_PREFIX}{final.name}'
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        tmp = ddp_broadcast(tmp, src=0)
        with disk_errors_named(tmp, self._needed_bytes, cleanup=tmp):
            for key, obj in self.recoverables.items():
                path = tmp / f'{key}.ckpt'
                if key in self.custom_save_hooks:
                    self.custom_save_hooks[key](obj, path)
                    continue
                hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
                if hook is None:
                    raise RuntimeError(f"don't know how to save {type(obj)} ({key})")
                hook(obj, path)
        ddp_barrier()
        checkpoint = None
        if if_main_process():
            with disk_errors_named(tmp, self._needed_bytes, cleanup=tmp):
                saved_meta = self._save_checkpoint_metafile(tmp / METAFNAME, meta, end_of_epoch)
                for file in tmp.iterdir():
                    with open(file, 'rb') as handle:
                        os.fsync(handle.fileno())
            os.rename(tmp, final)
            logger.log(verbosity, 'saved %s checkpoint %s', 'end-of-epoch' if end_of_epoch else 'intra-epoch',
                       final)
            checkpoint = Checkpoint(final, saved_meta, {k: final / f'{k}.ckpt' for k in self.recoverables})
        # every rank lists the checkpoints next (save_and_keep_only) and must see this one, or their
        # deletion loops run different numbers of collectives and hang
        ddp_barrier()
        return checkpoint

    def _needed_bytes(self) -> int:
        """About what one checkpoint takes: the weights and Adam's two moments."""
        separator = self.recoverables.get('separator')
        weights = sum(p.numel() * p.element_size() for p in separator.parameters()) if separator else 0
        return 3 * weights

    def _call_load_hooks(self, checkpoint):
        # SpeechBrain's load hooks call torch.load without weights_only (unpickling anything on torch < 2.6):
        # every file holding tensors is read weights-only first, so a crafted pickle is refused, never run.
        # The text files (epoch counter, brain state, loader position) are parsed by SpeechBrain as text.
        for name, path in checkpoint.paramfiles.items():
            obj = self.recoverables.get(name)
            if obj is None or isinstance(obj, (EpochCounter, SaveableDataLoader, sb.Brain)):
                continue
            safe_torch_load(path)
        try:
            return super()._call_load_hooks(checkpoint)
        except Exception as err:  # noqa: BLE001 - SpeechBrain's parse errors name no file
            raise CheckpointError(f'{checkpoint.path}: cannot resume from this checkpoint '
                                  f'({type(err).__name__}: {err})') from err

    @staticmethod
    def _delete_checkpoint(checkpoint, verbosity=logging.INFO):
        # renamed out of the CKPT+ namespace first: a kill during the deletion leaves a .deleting- folder
        # that the next start removes, never a CKPT+ folder without its CKPT.yaml
        path = Path(checkpoint.path)
        doomed = path.with_name(f'{DELETING_PREFIX}{path.name}')
        os.rename(path, doomed)
        shutil.rmtree(doomed)
        logger.log(verbosity, 'deleted checkpoint %s', path)


def keep_best_and_latest(checkpointer: Checkpointer, meta: Mapping[str, Any], num_best: int) -> None:
    """Save an end-of-epoch checkpoint, then keep the `num_best` best by validation SI-SNR and the latest.

    (SpeechBrain's `save_and_keep_only(num_to_keep=N)` would keep the N latest as well: up to 2N.)
    Intra-epoch checkpoints, superseded by this one, are removed.
    """
    from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
    from speechbrain.utils.checkpoints import ckpt_recency

    checkpointer.save_checkpoint(meta=dict(meta), end_of_epoch=True)
    scored = checkpointer.find_checkpoints(max_key='si-snr')  # best first
    kept = {c.path for c in scored[:num_best]} | {max(scored, key=ckpt_recency).path}
    checkpointer.delete_checkpoints(num_to_keep=0, max_keys=['si-snr'], importance_keys=[],
                                    ckpt_predicate=lambda c: c.path not in kept)
    checkpointer.delete_checkpoints(num_to_keep=0, importance_keys=[ckpt_recency],
                                    ckpt_predicate=lambda c: INTRA_EPOCH_CKPT_FLAG in c.meta)


def rng_state_to_tensors() -> Dict[str, Any]:
    """Python, NumPy and torch random states as tensors and plain values (loadable with weights_only=True)."""
    version, python_state, gauss = random.getstate()
    key, numpy_state, pos, has_gauss, cached = np.random.get_state()
    return {'python': {'version': version, 'state': torch.tensor(python_state, dtype=torch.int64), 'gauss': gauss},
            'numpy': {'key': key, 'state': torch.from_numpy(numpy_state.astype(np.int64)), 'pos': int(pos),
                      'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(state: Mapping[str, Any]) -> None:
    python, numpy_state = state['python'], state['numpy']
    random.setstate((python['version'], tuple(int(v) for v in python['state'].tolist()), python['gauss']))
    np.random.set_state((numpy_state['key'], numpy_state['state'].numpy().astype(np.uint32), numpy_state['pos'],
                         numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@register_checkpoint_hooks
class RNGState:
    """Python, NumPy and torch random states, saved with every checkpoint."""

    @mark_as_saver
    def save(self, path):
        atomic_save(rng_state_to_tensors(), path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        restore_rng_state(safe_torch_load(path))


class SeparationBrain(sb.Brain):
    """PIT SI-SNR training of a separator held in ``modules.separator``."""

    def compute_forward(self, batch, stage):
        return self.modules.separator(batch['mix'].to(self.device))

    def compute_objectives(self, predictions, batch, stage):
        references = batch['sources'].to(self.device)
        lengths = batch['lengths'].to(self.device)
        estimates = predictions.float()
        if stage == sb.Stage.TRAIN:
            return pit_si_snr_loss(estimates, references, lengths, self.hparams.loss_threshold_db)
        if not torch.isfinite(estimates).all():  # a score of such output is meaningless: poison the mean
            return torch.tensor(float('nan'), device=estimates.device)
        scores, _ = pit_si_snr(estimates, references, lengths)
        return -scores.mean()

    def fit_batch(self, batch):
        self.skipped += int(batch['skipped'])
        if len(batch['ids']) == 0:
            return torch.tensor(0.0)
        self.batch_origins = batch.get('origins') or [str(i) for i in batch['ids']]
        return super().fit_batch(batch)

    def check_loss_isfinite(self, loss):
        if not torch.isfinite(loss):
            examples = ', '.join(self.batch_origins)
            if self.nonfinite_count + 1 > self.nonfinite_patience:
                raise NonFiniteLossError(
                    f'the training loss was not finite {self.nonfinite_count + 1} times (nonfinite_patience '
                    f'{self.nonfinite_patience}), the last time on {examples}: check these files (a sample far '
                    'outside [-1, 1], silence in every source) or lower the learning rate')
            logger.warning('non-finite training loss on %s: step skipped (%d of %d tolerated)', examples,
                           self.nonfinite_count + 1, self.nonfinite_patience)
        super().check_loss_isfinite(loss)

    def evaluate_batch(self, batch, stage):
        self.skipped += int(batch['skipped'])
        if len(batch['ids']) == 0:
            return torch.tensor(0.0)
        return super().evaluate_batch(batch, stage)

    def on_fit_start(self):
        super().on_fit_start()  # recovers the latest checkpoint, optimiser state included
        override = self.hparams.optimizer_override
        if override is not None and self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group.update(override)
            logger.info('resumed with new optimiser settings %s', override)

    def on_stage_start(self, stage, epoch=None):
        self.skipped = 0
        if stage == sb.Stage.TRAIN and epoch is not None:
            self.hparams.train_set.set_epoch(epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if self.skipped:
            logger.warning('%s epoch %s: skipped %d bad example(s) (bad_example_policy=skip)',
                           stage.name.lower(), epoch, self.skipped)
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            self.train_skipped = self.skipped
            return
        if stage != sb.Stage.VALID:
            return
        valid_si_snr = -stage_loss
        broken = [name for name, p in self.modules.named_parameters() if not torch.isfinite(p).all()]
        if broken or not math.isfinite(float(valid_si_snr)):
            # nothing of this epoch is kept: the last checkpoint and best_model/ stay as they are
            what = (f'{len(broken)} weight tensor(s) are no longer finite (first {broken[0]})' if broken else
                    f'the validation SI-SNR is {float(valid_si_snr)} (the model outputs NaN/Inf)')
            raise NonFiniteWeightsError(
                f'epoch {epoch}: {what}; this epoch is neither checkpointed nor exported, the previous '
                'checkpoint and best_model/ are kept. Resume with a lower learning rate or check the data.')
        old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stage_loss)
        sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
        stats = {'train_loss': self.train_loss, 'valid_si_snr': valid_si_snr, 'lr': old_lr,
                 'train_skipped': self.train_skipped, 'valid_skipped': self.skipped}
        self.hparams.on_epoch_end(epoch, stats)
        meta = {'si-snr': valid_si_snr, 'epoch': epoch}
        kept = getattr(self.hparams, 'checkpoints_kept', 1)
        if kept <= 1:
            self.checkpointer.save_and_keep_only(meta=meta, max_keys=['si-snr'], num_to_keep=1)
        else:
            keep_best_and_latest(self.checkpointer, meta, kept)
