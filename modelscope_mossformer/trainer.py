"""`build_trainer(Trainers.speech_separation, ...)`: train, resume, fine-tune and evaluate.

The training loop, mixed precision, gradient accumulation, the non-finite loss
guard, DDP, progress bars and checkpoint recovery are SpeechBrain's `Brain`;
`SeparationBrain` adds only what is specific to separation (PIT SI-SNR, the
plateau schedule, best-model export).  No hparams.yaml is needed: settings come
from the ``train`` section of configuration.json over `DEFAULT_TRAIN_CONFIG`, in
this package's spelling or the released one (`train_config` maps every released
key; a released model dir's hparams.yaml is not read).

Files in ``work_dir``:
    save/CKPT+<time>/   SpeechBrain checkpoints (latest and best by validation SI-SNR; the N best
                        with train.average_best: N, whose mean becomes best_model/ at the end),
                        written to a temporary folder and renamed, so a kill at any
                        moment leaves the previous checkpoint usable
    best_model/         a loadable model dir: configuration.json + released-format weights
    configuration.json  the merged configuration this run used
    train_log.txt       one line per epoch; tensorboard/ scalars; log.txt the full log
    eval_results.csv    per-utterance scores of the last `evaluate()`
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from modelscope.trainers.builder import TRAINERS
from modelscope.trainers.base import BaseTrainer

from .data.dataset import SeparationDataset, collate_separation
from .data.sources import load_split
from .hub import resolve_model_dir
from .metainfo import CONFIGURATION_FILE, Trainers
from .metrics import separation_scores
from .model import (MossFormerSeparation, load_model_dir, model_configuration, read_configuration,
                    write_configuration)
from .models import build_separator
from .models.checkpoint import find_weights, load_weights, to_model_state_dict
from .errors import DiskFullError, NonFiniteLossError, NonFiniteWeightsError  # noqa: F401 - re-exported
from .registration import register
from .train_config import (DEFAULT_TRAIN_CONFIG, TrainConfig, merge_config, modified_section,  # noqa: F401
                           released_spelling, resolve_train_config)
from .workdir import (DELETING_PREFIX, PARTIAL_PREFIX, RUN_FILE, WorkDirLock, check_resume, describe_data,
                      disk_errors_named, run_record)

logger = logging.getLogger(__name__)

def _is_main_process() -> bool:
    return int(os.environ.get('RANK', '0')) == 0


# ---------------------------------------------------------------------------
# the ModelScope trainer
# ---------------------------------------------------------------------------


def _resolve_model(model: Any, device: Optional[str]) -> MossFormerSeparation:
    if isinstance(model, MossFormerSeparation):
        return model
    if isinstance(model, torch.nn.Module) and hasattr(model, 'config'):
        adapter = MossFormerSeparation(config=model.config)
        adapter.separator = model
        return adapter
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f'model must be a model dir, a hub id or a MossFormerSeparation, got {type(model).__name__}')
    return load_model_dir(resolve_model_dir(model))


class SpeechSeparationTrainer(BaseTrainer):
    """Trains and evaluates MossFormer / MossFormer2 through ModelScope's `build_trainer`.

    Args:
        model: local model dir, hub id, or a `MossFormerSeparation`.
        train_dataset, eval_dataset: ModelScope torch datasets of rows with ``mix_sig`` /
            ``sN_sig`` fields (as built with AudioBrainPreprocessor), or a CSV / scp /
            LibriMix folder path.
        work_dir: checkpoints, logs and the best model go here.
        max_epochs, seed, init_checkpoint: shortcuts for the matching ``train`` keys.
        train: overrides of the ``train`` section.
        cfg_modify_fn: called with the merged configuration (a ModelScope `Config`) and
            returns the configuration to use.
        device: 'cpu', 'cuda', 'cuda:1'...; CUDA when available if None.
        resume_with_new_settings: let a resume change training settings (learning rate,
            schedule, batch, augmentation); the model, seed and training data never change.

    Raises:
        WorkDirBusyError: another process trains in `work_dir`.
    """

    def __init__(self, model: Any, train_dataset: Any = None, eval_dataset: Any = None,
                 work_dir: Union[str, os.PathLike] = './work_dir', max_epochs: Optional[int] = None,
                 seed: Optional[int] = None, init_checkpoint: Optional[str] = None,
                 train: Optional[Mapping[str, Any]] = None, cfg_modify_fn: Optional[Callable] = None,
                 device: Optional[str] = None, resume_with_new_settings: bool = False, **kwargs: Any) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.resume_with_new_settings = bool(resume_with_new_settings)
        self.device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
        if self.device.startswith('cuda') and 'LOCAL_RANK' in os.environ:
            self.device = f'cuda:{int(os.environ["LOCAL_RANK"])}'
        self.model = _resolve_model(model, self.device)
        # a model dir without weights gives random ones, drawn before the run's seed is known
        self._redraw_initial_weights = isinstance(model, (str, os.PathLike)) and self.model.weights_source is None
        model_dir = Path(self.model.model_dir) if self.model.model_dir else None
        config_path = model_dir / CONFIGURATION_FILE if model_dir else None
        configuration = read_configuration(model_dir) if config_path and config_path.is_file() else {}
        if model_dir and (model_dir / 'hparams.yaml').is_file():
            logger.info('%s: not read; this trainer takes its settings from the train section of '
                        'configuration.json (SpeechBrain hparams files are for ModelScope\'s built-in trainer)',
                        model_dir / 'hparams.yaml')
        shortcuts = {k: v for k, v in {'max_epochs': max_epochs, 'seed': seed,
                                       'init_checkpoint': init_checkpoint}.items() if v is not None}
        train_cfg = resolve_train_config((configuration.get('train'), str(config_path or 'model configuration')),
                                         (train, 'the train argument'), (shortcuts, 'the trainer arguments'))
        configuration = model_configuration(self.model.model_section(), train=released_spelling(train_cfg),
                                            base=configuration)
        if cfg_modify_fn is not None:
            from modelscope.utils.config import Config

            handed = copy.deepcopy(configuration)
            modified = cfg_modify_fn(Config(copy.deepcopy(configuration)))
            configuration = modified.to_dict() if hasattr(modified, 'to_dict') else dict(modified)
            source = 'the configuration returned by cfg_modify_fn'
            train_cfg = resolve_train_config(
                (modified_section(handed['train'], configuration.get('train') or {}, source), source))
            configuration['train'] = released_spelling(train_cfg)
        self.train_config = TrainConfig.from_dict(train_cfg, str(config_path or 'model configuration'))
        if kwargs:
            logger.info('ignoring trainer arguments %s', sorted(kwargs))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if _is_main_process():
            with WorkDirLock(self.work_dir):  # never overwrite the configuration of a run in progress
                super().__init__(str(write_configuration(self.work_dir, configuration)))
                self._recover_best_model()
        else:  # rank 0 may not have written work_dir/configuration.json yet
            with tempfile.TemporaryDirectory() as private:
                super().__init__(str(write_configuration(private, configuration)))
        self.configuration = configuration
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self._attach_file_log()

    # -- helpers -----------------------------------------------------------

    @property
    def train_cfg(self) -> Dict[str, Any]:
        """The train section in effect, as a dict (a snapshot of `train_config`)."""
        return self.train_config.to_dict()

    @property
    def best_model_dir(self) -> Path:
        return self.work_dir / 'best_model'

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / 'save'

    def _attach_file_log(self) -> None:
        if not _is_main_process():
            return
        path = self.work_dir / 'log.txt'
        package_logger = logging.getLogger('modelscope_mossformer')
        if not any(getattr(h, 'baseFilename', None) == str(path) for h in package_logger.handlers):
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
            # no logger's level is touched: log.txt receives what the application's logging settings let
            # through (all INFO lines once `modelscope_mossformer`'s logger is set to INFO)
            package_logger.addHandler(handler)

    def _dataset(self, source: Any, split: str, train: bool) -> SeparationDataset:
        if source is None:
            raise ValueError(f'no {split} dataset was given to the trainer')
        base = load_split(source, split, num_spks=self.model.num_spks, sample_rate=self.model.sample_rate)
        cfg = self.train_config
        return SeparationDataset(
            base, self.model.sample_rate, segment_seconds=cfg.segment_seconds if train else None, train=train,
            augment=cfg.augment, bad_example_policy=cfg.bad_example_policy, seed=cfg.seed,
            min_samples=self.model.config.enc_kernel_size)

    def _seed(self) -> None:
        seed = int(self.train_config.seed)
        os.environ['SB_GLOBAL_SEED'] = str(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _run_options(self):
        from speechbrain.utils.run_opts import RunOptions

        cfg = self.train_config
        backend = cfg.distributed_backend or ('nccl' if self.device.startswith('cuda') else 'gloo')
        return RunOptions.from_dictionary({
            'device': self.device, 'precision': cfg.precision, 'eval_precision': cfg.eval_precision,
            'max_grad_norm': math.inf if cfg.max_grad_norm is None else cfg.max_grad_norm,
            'nonfinite_patience': cfg.nonfinite_patience,
            'skip_nonfinite_grads': True,  # a non-finite loss's NaN gradients are dropped, never applied
            'grad_accumulation_factor': cfg.grad_accumulation_factor,
            'ckpt_interval_minutes': cfg.ckpt_interval_minutes, 'ckpt_interval_steps': cfg.ckpt_interval_steps,
            'noprogressbar': not cfg.progressbar, 'distributed_backend': backend})

    def _initialise_weights(self) -> float:
        """Load `init_checkpoint` (fine-tuning) unless a run is being resumed; return the learning rate."""
        cfg = self.train_config
        if not cfg.init_checkpoint:
            return cfg.lr
        report = load_weights(self.model.separator, cfg.init_checkpoint,
                              allow_shape_mismatch=('masker.out_proj.',))
        if report.reinitialised:
            logger.warning('init_checkpoint %s: re-initialised %s (speaker count differs)', report.source,
                           ', '.join(report.reinitialised))
        logger.info('fine-tuning from %s (%s) at lr %g', report.source, report.format, cfg.fine_tune_lr)
        return cfg.fine_tune_lr

    # -- training ----------------------------------------------------------

    def train(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Train until ``max_epochs``; a second call with the same work_dir resumes the same run.

        Raises:
            WorkDirBusyError: another process trains in this work_dir.
            ResumeMismatchError: the work_dir holds another run (model, seed or training data
                differ), or training settings differ without `resume_with_new_settings`.
        """
        lock = WorkDirLock(self.work_dir).acquire() if _is_main_process() else None
        try:
            return self._train_locked()
        finally:
            if lock is not None:
                lock.release()

    def _train_locked(self) -> Dict[str, Any]:
        from speechbrain.nnet.schedulers import ReduceLROnPlateau
        from speechbrain.utils.distributed import ddp_init_group
        from speechbrain.utils.epoch_loop import EpochCounter

        from .brain import AtomicCheckpointer, RNGState, SeparationBrain

        cfg = self.train_config
        self._clean_partial_checkpoints()
        changed_settings = self._check_resume()
        self._seed()
        if self._redraw_initial_weights:  # so that the same seed gives the same run
            self.model.separator = build_separator(self.model.config)
            self._redraw_initial_weights = False
        run_opts = self._run_options()
        ddp_init_group(run_opts)
        train_set = self._dataset(self.train_dataset, 'train', train=True)
        valid_set = self._dataset(self.eval_dataset, 'validation', train=False)
        lr = self._initialise_weights()
        separator = self.model.separator
        separator.activation_checkpointing = cfg.activation_checkpointing
        counter = EpochCounter(cfg.max_epochs)
        schedule = cfg.lr_scheduler
        scheduler = ReduceLROnPlateau(lr_min=schedule.lr_min, factor=schedule.factor, patience=schedule.patience,
                                      dont_halve_until_epoch=schedule.dont_halve_until_epoch)
        checkpointer = AtomicCheckpointer(
            str(self.checkpoint_dir), recoverables={'separator': separator, 'counter': counter,
                                                    'lr_scheduler': scheduler, 'rng': RNGState()})
        history = []
        # a resume allowed to change the optimiser's settings applies them over the recovered optimiser state
        optimizer_override = ({'lr': lr, 'weight_decay': cfg.weight_decay}
                              if any(text.startswith(('train.lr', 'train.fine_tune_lr', 'train.weight_decay'))
                                     for text in changed_settings) else None)
        hparams = {'loss_threshold_db': cfg.loss_threshold_db, 'lr_scheduler': scheduler, 'train_set': train_set,
                   'optimizer_override': optimizer_override, 'checkpoints_kept': max(1, cfg.average_best or 1),
                   'on_epoch_end': lambda epoch, stats: history.append(self._on_epoch_end(epoch, stats))}
        brain = SeparationBrain(modules={'separator': separator},
                               opt_class=lambda params: torch.optim.Adam(params, lr=lr,
                                                                        weight_decay=cfg.weight_decay),
                               hparams=hparams, run_opts=run_opts, checkpointer=checkpointer)
        loader = {'batch_size': cfg.batch_size, 'num_workers': cfg.num_workers,
                  'collate_fn': collate_separation}
        # the loader's own generator: starting an epoch's iterator (also when resuming mid-epoch) must not
        # draw from the global RNG that the checkpoints restore, or a resumed run would not repeat a plain one
        loader_rng = torch.Generator().manual_seed(int(cfg.seed))
        brain.fit(counter, train_set, valid_set, train_loader_kwargs=dict(loader, shuffle=True, generator=loader_rng),
                  valid_loader_kwargs=dict(loader, batch_size=cfg.eval_batch_size))
        self._brain = brain
        result: Dict[str, Any] = {'epochs': history, 'best_model_dir': str(self.best_model_dir)}
        if cfg.average_best is not None and _is_main_process():
            result['averaged'] = self._average_locked(cfg.average_best, valid_set)
        if self.best_model_dir.is_dir():
            self.model.model_dir = str(self.best_model_dir)
        return result

    def _check_resume(self) -> List[str]:
        """Compare this run with the one whose checkpoints are in save/ (see `workdir.check_resume`);
        record this run's configuration when it starts.  Returns the changed training settings."""
        run_file = self.work_dir / RUN_FILE  # not in save/: ModelScope's contract counts the checkpoints there
        record = run_record(self.configuration, self.train_cfg, self.train_dataset)
        record['valid_data'] = describe_data(self.eval_dataset)  # not compared; `mossformer average` reads it
        resuming = self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.glob('CKPT+*'))
        changed: List[str] = []
        if resuming and run_file.is_file():
            changed = check_resume(run_file, record, self.resume_with_new_settings)
        elif resuming:
            logger.warning('%s: checkpoints without a record of their run (written by an older version); '
                           'resuming without checking that the configuration is the same', self.checkpoint_dir)
        if _is_main_process():
            tmp = run_file.with_name(f'.{RUN_FILE}.tmp')
            tmp.write_text(json.dumps(record, indent=2) + '\n')
            os.replace(tmp, run_file)
        return changed

    def _clean_partial_checkpoints(self) -> None:
        """Remove what a kill can leave in save/: a half-written or half-deleted checkpoint."""
        if not (_is_main_process() and self.checkpoint_dir.is_dir()):
            return
        for leftover in self.checkpoint_dir.iterdir():
            if leftover.name.startswith(PARTIAL_PREFIX):
                why = 'interrupted save'
            elif leftover.name.startswith(DELETING_PREFIX):
                why = 'interrupted deletion'
            elif leftover.name.startswith('CKPT+') and leftover.is_dir() and not (leftover / 'CKPT.yaml').exists():
                why = 'no CKPT.yaml: left by an interrupted deletion'
            else:
                continue
            logger.warning('removing incomplete checkpoint %s (%s)', leftover, why)
            shutil.rmtree(leftover, ignore_errors=True)

    def _on_epoch_end(self, epoch: int, stats: Dict[str, Any]) -> Dict[str, Any]:
        record = {'epoch': epoch, **{k: float(v) for k, v in stats.items()}}
        if not _is_main_process():
            return record
        best = self._best_valid_si_snr()
        if not math.isfinite(record['valid_si_snr']):
            logger.error('epoch %d: validation SI-SNR is %s; best_model/ is left as it was', epoch,
                         record['valid_si_snr'])
        elif best is None or record['valid_si_snr'] > best:
            self._export_best_model(record)
        line = ', '.join(f'{k}: {v:.6g}' for k, v in record.items())
        # written before the epoch's checkpoint: an epoch run again after a kill that lost it replaces its line
        path = self.work_dir / 'train_log.txt'
        earlier = path.read_text().splitlines() if path.is_file() else []
        kept = [old for old in earlier if int(old.split(',')[0].split(': ')[1]) < epoch]
        tmp = path.with_name('.train_log.txt.tmp')
        tmp.write_text(''.join(f'{text}\n' for text in kept + [line]))
        os.replace(tmp, path)
        logger.info('epoch %d: %s', epoch, line)
        try:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(self.work_dir / 'tensorboard')) as writer:
                for key in ('train_loss', 'valid_si_snr', 'lr'):
                    writer.add_scalar(key, record[key], epoch)
        except ImportError:
            logger.info('tensorboard is not installed; scalars only in train_log.txt')
        return record

    def _best_valid_si_snr(self) -> Optional[float]:
        path = self.best_model_dir / CONFIGURATION_FILE
        if not path.is_file():
            return None
        return json.loads(path.read_text()).get('train_result', {}).get('valid_si_snr')

    def _recover_best_model(self) -> None:
        """A kill between the two renames of `_export_best_model` leaves no best_model/: put back the new
        copy when it is complete (its configuration.json is written last), else the previous one."""
        if not _is_main_process() or self.best_model_dir.exists():
            return
        for candidate, which in ((self.work_dir / '.best_model.tmp', 'complete new'),
                                 (self.work_dir / '.best_model.old', 'previous')):
            if (candidate / CONFIGURATION_FILE).is_file() and find_weights(candidate) is not None:
                os.rename(candidate, self.best_model_dir)
                logger.warning('%s was missing (export interrupted); restored the %s best model from %s',
                               self.best_model_dir, which, candidate.name)
                return

    def _export_best_model(self, record: Mapping[str, Any]) -> None:
        """Replace best_model/ by a complete new folder (rename dance: never a half-written best model)."""
        tmp = self.work_dir / '.best_model.tmp'
        old = self.work_dir / '.best_model.old'
        shutil.rmtree(tmp, ignore_errors=True)
        weights = sum(p.numel() * p.element_size() for p in self.model.separator.parameters())
        with disk_errors_named(tmp, lambda: weights, cleanup=tmp):
            self.model.save_model_dir(tmp, extra_configuration={'train_result': dict(record),
                                                                'train': released_spelling(self.train_cfg)})
        if self.best_model_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(self.best_model_dir, old)
        os.rename(tmp, self.best_model_dir)
        shutil.rmtree(old, ignore_errors=True)
        logger.info('new best model (valid SI-SNR %.3f dB) in %s', record['valid_si_snr'], self.best_model_dir)

    # -- checkpoint averaging ---------------------------------------------

    def average_best_checkpoints(self, count: Optional[int] = None, progress: Optional[bool] = None
                                 ) -> Dict[str, Any]:
        """Write best_model/ from the mean of the `count` best checkpoints in save/ (by validation SI-SNR).

        The averaged model's validation SI-SNR is measured on the eval dataset (the validation set of
        the run) and recorded with the averaged checkpoints in best_model/configuration.json
        (``train_result.averaged``).  ``train.average_best`` does this when training ends.

        Args:
            count: checkpoints to average; ``train.average_best`` when None. Fewer are used, with a
                warning, when save/ holds fewer.
            progress: progress bar over the validation set; ``train.progressbar`` when None.

        Returns:
            What was averaged and the scores (see `_average_locked`).

        Raises:
            WorkDirBusyError: a training run holds the work_dir.
            FileNotFoundError: save/ holds no end-of-epoch checkpoint.
            CheckpointError: a checkpoint is unreadable or does not fit the others.
        """
        count = count if count is not None else self.train_config.average_best
        if count is None:
            raise ValueError('average_best_checkpoints: give a count (train.average_best is not set)')
        with WorkDirLock(self.work_dir):
            valid_set = self._dataset(self.eval_dataset, 'validation', train=False)
            return self._average_locked(int(count), valid_set, force=True, progress=progress)

    def _average_locked(self, count: int, valid_set: SeparationDataset, force: bool = False,
                        progress: Optional[bool] = None) -> Dict[str, Any]:
        from .averaging import average_checkpoints, list_epoch_checkpoints, select_best, validation_si_snr

        cfg = self.train_config
        chosen = select_best(list_epoch_checkpoints(self.checkpoint_dir), count, self.checkpoint_dir)
        epochs = [c.epoch for c in chosen]
        if not force and self._best_model_epochs() == epochs:
            logger.info('%s already holds the model of epoch(s) %s', self.best_model_dir, epochs)
            return {'epochs': epochs, 'written': False, 'unchanged': True}
        state, _ = to_model_state_dict(self.model.separator, self.model.config.family, average_checkpoints(chosen),
                                       f'the average of {", ".join(c.path.name for c in chosen)}')
        self.model.separator.load_state_dict(state, strict=False)  # checked strictly above (but the rotary table)
        score = validation_si_snr(self.model.separator, valid_set, cfg.eval_batch_size, self.device,
                                  cfg.eval_precision, cfg.progressbar if progress is None else progress)
        best_single = chosen[0].valid_si_snr
        summary = {'count': len(chosen), 'epochs': epochs, 'checkpoints': [c.record() for c in chosen],
                   'valid_si_snr': score, 'best_single_valid_si_snr': best_single, 'gain_db': score - best_single}
        record = {'valid_si_snr': score, 'averaged': dict(summary)} if len(chosen) > 1 else \
            {'valid_si_snr': score, 'epoch': chosen[0].epoch, 'checkpoint': chosen[0].path.name}
        summary['written'] = math.isfinite(score)
        if not summary['written']:
            logger.error('the average of epochs %s scores %s on validation; best_model/ is left as it was',
                         epochs, score)
            if self.best_model_dir.is_dir():  # the model in memory stays the one on disk
                load_weights(self.model.separator, self.best_model_dir)
            return summary
        self._export_best_model(record)
        logger.info('averaged %d checkpoint(s) (epochs %s): valid SI-SNR %.3f dB, best single %.3f dB '
                    '(epoch %d): %+.3f dB', len(chosen), ', '.join(map(str, epochs)), score, best_single,
                    chosen[0].epoch, score - best_single)
        if len(chosen) > 1 and score < best_single:
            logger.warning('the average of %d checkpoints scores %.3f dB below the best single one; '
                           '`mossformer average --best 1` writes best_model/ from the best one alone',
                           len(chosen), best_single - score)
        return summary

    def _best_model_epochs(self) -> Optional[List[int]]:
        """The epoch(s) whose weights best_model/ holds, from its configuration.json."""
        path = self.best_model_dir / CONFIGURATION_FILE
        if not path.is_file():
            return None
        result = json.loads(path.read_text()).get('train_result', {})
        if 'averaged' in result:
            return list(result['averaged'].get('epochs', []))
        return [result['epoch']] if 'epoch' in result else None

    # -- evaluation --------------------------------------------------------

    def evaluate(self, checkpoint_path: Optional[str] = None, *args: Any, metrics: Optional[Sequence[str]] = None,
                 **kwargs: Any) -> Dict[str, float]:
        """Mean SI-SNR, SI-SNRi, SDR and SDRi (dB, higher is better) on the eval dataset.

        Unlike ModelScope's built-in trainer (which returns the negative SI-SNR
        loss), these are the metrics as reported in papers.  With ``train.eval_metrics``
        (or `metrics`) also PESQ / STOI / ESTOI (see `perceptual`), with their mean over the
        utterances they could score and ``<key>-unscored``, the count of those they could not.

        Args:
            checkpoint_path: weights to evaluate; when None the best model in
                work_dir, or the model's own weights when training never ran.
            metrics: perceptual metrics instead of ``train.eval_metrics`` ('pesq', 'stoi', 'estoi'...).
        """
        from .perceptual import count_unscored, nan_mean, resolve_metrics, unscored_note

        names = self.train_config.eval_metrics if metrics is None else metrics
        perceptual = resolve_metrics(names, self.model.sample_rate,
                                     'train.eval_metrics' if metrics is None else 'evaluate(metrics=...)')
        self._recover_best_model()
        source = checkpoint_path or (self.best_model_dir if self.best_model_dir.is_dir() else None)
        if source is not None:
            load_weights(self.model.separator, source)
        dataset = self._dataset(self.eval_dataset, 'test', train=False)
        separator = self.model.separator.to(self.device).eval()
        rows = []
        from tqdm import tqdm

        for index in tqdm(range(len(dataset)), desc='evaluate', disable=not self.train_config.progressbar):
            item = dataset[index]
            if item is None:
                continue
            with torch.inference_mode():
                estimates = separator(item['mix'][None].to(self.device))[0].float().cpu()
            if not torch.isfinite(estimates).all():
                raise ValueError(f"{item.get('origin', item['id'])}: the model produced non-finite (NaN/Inf) "
                                 f'output; check the weights of {source or self.model.model_dir}')
            rows.append({'id': item['id'], **separation_scores(
                estimates, item['sources'], item['mix'], perceptual=perceptual, sample_rate=self.model.sample_rate,
                name=str(item.get('origin', item['id'])))})
        if not rows:
            raise ValueError('evaluation dataset yielded no usable example')
        keys = ('si-snr', 'si-snri', 'sdr', 'sdri') + perceptual
        summary = {k: float(np.mean([r[k] for r in rows])) for k in keys[:4]}
        summary.update({k: nan_mean(r[k] for r in rows) for k in perceptual})
        unscored = count_unscored(rows, perceptual)
        note = unscored_note(unscored, len(rows))
        if note:
            logger.warning('evaluation: %s', note)
        if _is_main_process():
            with open(self.work_dir / 'eval_results.csv', 'w', newline='') as handle:
                writer = csv.DictWriter(handle, fieldnames=('id',) + keys)
                writer.writeheader()
                writer.writerows(rows)
                writer.writerow({'id': 'MEAN', **summary})
        summary.update({f'{k}-unscored': unscored[k] for k in perceptual})
        logger.info('evaluation on %d utterances: %s', len(rows), summary)
        return summary


register(TRAINERS, SpeechSeparationTrainer, Trainers.speech_separation)
