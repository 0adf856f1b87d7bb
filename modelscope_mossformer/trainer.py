"""`build_trainer(Trainers.speech_separation, ...)`: train, resume, fine-tune and evaluate.

The training loop, mixed precision, gradient accumulation, the non-finite loss
guard, DDP, progress bars and checkpoint recovery are SpeechBrain's `Brain`;
`SeparationBrain` adds only what is specific to separation (PIT SI-SNR, the
plateau schedule, best-model export).  No hparams.yaml is needed: settings come
from the ``train`` section of configuration.json over `DEFAULT_TRAIN_CONFIG`, in
this package's spelling or the released one (`train_config` maps every released
key; a released model dir's hparams.yaml is not read).

Files in ``work_dir``:
    save/CKPT+<time>/   SpeechBrain checkpoints (latest and best by validation SI-SNR),
                        written to a temporary folder and renamed, so a kill at any
                        moment leaves the previous checkpoint usable
    best_model/         a loadable model dir: configuration.json + released-format weights
    configuration.json  the merged configuration this run used
    train_log.txt       one line per epoch; tensorboard/ scalars; log.txt the full log
    eval_results.csv    per-utterance scores of the last `evaluate()`
"""
from __future__ import annotations

import contextlib
import copy
import csv
import errno
import json
import logging
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from modelscope.trainers.builder import TRAINERS
from modelscope.trainers.base import BaseTrainer

from .data.dataset import AugmentConfig, SeparationDataset, collate_separation
from .data.sources import load_split
from .hub import resolve_model_dir
from .metainfo import Trainers
from .metrics import pit_si_snr, pit_si_snr_loss, separation_scores
from .model import MossFormerSeparation, load_model_dir, read_configuration, write_configuration
from .models import build_separator
from .models.checkpoint import CheckpointError, atomic_save, find_weights, load_weights, safe_torch_load
from .registration import register
from .workdir import RUN_FILE, WorkDirLock, check_resume, run_record
from .train_config import (DEFAULT_TRAIN_CONFIG, merge_config, modified_section, released_spelling,  # noqa: F401
                           resolve_train_config)

logger = logging.getLogger(__name__)

PARTIAL_PREFIX = '.partial-'  # a checkpoint being written
DELETING_PREFIX = '.deleting-'  # a checkpoint being deleted

class NonFiniteLossError(ValueError):
    """The training loss stayed non-finite past `nonfinite_patience`; names the last examples."""


class NonFiniteWeightsError(ValueError):
    """The weights (or the validation output) became NaN/Inf; nothing of that epoch is kept."""


class DiskFullError(OSError):
    """No space left where a checkpoint or model is written; names the place and the bytes."""


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


def _is_main_process() -> bool:
    return int(os.environ.get('RANK', '0')) == 0


# ---------------------------------------------------------------------------
# SpeechBrain pieces
# ---------------------------------------------------------------------------


def _atomic_checkpointer_class():
    from speechbrain.utils.checkpoints import METAFNAME, Checkpoint, Checkpointer
    from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process

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
                    from speechbrain.utils.checkpoints import DEFAULT_SAVE_HOOKS, get_default_hook

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
            from speechbrain.dataio.dataloader import SaveableDataLoader
            from speechbrain.utils.epoch_loop import EpochCounter

            for name, path in checkpoint.paramfiles.items():
                obj = self.recoverables.get(name)
                if obj is None or isinstance(obj, (EpochCounter, SaveableDataLoader, sb_brain_type())):
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

    return AtomicCheckpointer


def sb_brain_type() -> type:
    import speechbrain as sb

    return sb.Brain


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


def _rng_state_class():
    from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

    @register_checkpoint_hooks
    class RNGState:
        """Python, NumPy and torch random states, saved with every checkpoint."""

        @mark_as_saver
        def save(self, path):
            atomic_save(rng_state_to_tensors(), path)

        @mark_as_loader
        def load(self, path, end_of_epoch=False):
            restore_rng_state(safe_torch_load(path))

    return RNGState


def _brain_class():
    import speechbrain as sb

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
            self.checkpointer.save_and_keep_only(meta={'si-snr': valid_si_snr, 'epoch': epoch},
                                                 max_keys=['si-snr'], num_to_keep=1)

    return SeparationBrain


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
        config_path = model_dir / 'configuration.json' if model_dir else None
        configuration = read_configuration(model_dir) if config_path and config_path.is_file() else {}
        if model_dir and (model_dir / 'hparams.yaml').is_file():
            logger.info('%s: not read; this trainer takes its settings from the train section of '
                        'configuration.json (SpeechBrain hparams files are for ModelScope\'s built-in trainer)',
                        model_dir / 'hparams.yaml')
        shortcuts = {k: v for k, v in {'max_epochs': max_epochs, 'seed': seed,
                                       'init_checkpoint': init_checkpoint}.items() if v is not None}
        train_cfg = resolve_train_config((configuration.get('train'), str(config_path or 'model configuration')),
                                         (train, 'the train argument'), (shortcuts, 'the trainer arguments'))
        configuration.update({'framework': 'pytorch', 'task': 'speech-separation',
                              'model': self.model.model_section(), 'train': released_spelling(train_cfg)})
        if cfg_modify_fn is not None:
            from modelscope.utils.config import Config

            handed = copy.deepcopy(configuration)
            modified = cfg_modify_fn(Config(copy.deepcopy(configuration)))
            configuration = modified.to_dict() if hasattr(modified, 'to_dict') else dict(modified)
            source = 'the configuration returned by cfg_modify_fn'
            train_cfg = resolve_train_config(
                (modified_section(handed['train'], configuration.get('train') or {}, source), source))
            configuration['train'] = released_spelling(train_cfg)
        self.train_cfg = train_cfg
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
        cfg = self.train_cfg
        augment = cfg['augment']
        return SeparationDataset(
            base, self.model.sample_rate, segment_seconds=cfg['segment_seconds'] if train else None, train=train,
            augment=AugmentConfig(dynamic_mixing=augment['dynamic_mixing'], dm_gain_db=tuple(augment['dm_gain_db']),
                                  speed_perturb=augment['speed_perturb'], speeds=tuple(augment['speeds']),
                                  random_gain_db=(tuple(augment['random_gain_db'])
                                                  if augment['random_gain_db'] is not None else None)),
            bad_example_policy=cfg['bad_example_policy'], seed=cfg['seed'],
            min_samples=self.model.config.enc_kernel_size)

    def _seed(self) -> None:
        seed = int(self.train_cfg['seed'])
        os.environ['SB_GLOBAL_SEED'] = str(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _run_options(self):
        from speechbrain.utils.run_opts import RunOptions

        cfg = self.train_cfg
        backend = cfg['distributed_backend'] or ('nccl' if self.device.startswith('cuda') else 'gloo')
        return RunOptions.from_dictionary({
            'device': self.device, 'precision': cfg['precision'], 'eval_precision': cfg['eval_precision'],
            'max_grad_norm': math.inf if cfg['max_grad_norm'] is None else cfg['max_grad_norm'],
            'nonfinite_patience': cfg['nonfinite_patience'],
            'skip_nonfinite_grads': True,  # a non-finite loss's NaN gradients are dropped, never applied
            'grad_accumulation_factor': cfg['grad_accumulation_factor'],
            'ckpt_interval_minutes': cfg['ckpt_interval_minutes'], 'ckpt_interval_steps': cfg['ckpt_interval_steps'],
            'noprogressbar': not cfg['progressbar'], 'distributed_backend': backend})

    def _initialise_weights(self) -> float:
        """Load `init_checkpoint` (fine-tuning) unless a run is being resumed; return the learning rate."""
        cfg = self.train_cfg
        if not cfg['init_checkpoint']:
            return cfg['lr']
        report = load_weights(self.model.separator, cfg['init_checkpoint'],
                              allow_shape_mismatch=('masker.out_proj.',))
        if report.reinitialised:
            logger.warning('init_checkpoint %s: re-initialised %s (speaker count differs)', report.source,
                           ', '.join(report.reinitialised))
        logger.info('fine-tuning from %s (%s) at lr %g', report.source, report.format, cfg['fine_tune_lr'])
        return cfg['fine_tune_lr']

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
        import speechbrain as sb
        from speechbrain.nnet.schedulers import ReduceLROnPlateau
        from speechbrain.utils.distributed import ddp_init_group
        from speechbrain.utils.epoch_loop import EpochCounter

        cfg = self.train_cfg
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
        separator.activation_checkpointing = bool(cfg['activation_checkpointing'])
        counter = EpochCounter(cfg['max_epochs'])
        scheduler = ReduceLROnPlateau(lr_min=cfg['lr_scheduler']['lr_min'], factor=cfg['lr_scheduler']['factor'],
                                      patience=cfg['lr_scheduler']['patience'],
                                      dont_halve_until_epoch=cfg['lr_scheduler']['dont_halve_until_epoch'])
        checkpointer = _atomic_checkpointer_class()(
            str(self.checkpoint_dir), recoverables={'separator': separator, 'counter': counter,
                                                    'lr_scheduler': scheduler, 'rng': _rng_state_class()()})
        history = []
        # a resume allowed to change the optimiser's settings applies them over the recovered optimiser state
        optimizer_override = ({'lr': lr, 'weight_decay': cfg['weight_decay']}
                              if any(text.startswith(('train.lr', 'train.fine_tune_lr', 'train.weight_decay'))
                                     for text in changed_settings) else None)
        hparams = {'loss_threshold_db': cfg['loss_threshold_db'], 'lr_scheduler': scheduler, 'train_set': train_set,
                   'optimizer_override': optimizer_override,
                   'on_epoch_end': lambda epoch, stats: history.append(self._on_epoch_end(epoch, stats))}
        brain = _brain_class()(modules={'separator': separator},
                               opt_class=lambda params: torch.optim.Adam(params, lr=lr,
                                                                        weight_decay=cfg['weight_decay']),
                               hparams=hparams, run_opts=run_opts, checkpointer=checkpointer)
        loader = {'batch_size': cfg['batch_size'], 'num_workers': cfg['num_workers'],
                  'collate_fn': collate_separation}
        # the loader's own generator: starting an epoch's iterator (also when resuming mid-epoch) must not
        # draw from the global RNG that the checkpoints restore, or a resumed run would not repeat a plain one
        loader_rng = torch.Generator().manual_seed(int(cfg['seed']))
        brain.fit(counter, train_set, valid_set, train_loader_kwargs=dict(loader, shuffle=True, generator=loader_rng),
                  valid_loader_kwargs=dict(loader, batch_size=cfg['eval_batch_size']))
        self._brain = brain
        if self.best_model_dir.is_dir():
            self.model.model_dir = str(self.best_model_dir)
        return {'epochs': history, 'best_model_dir': str(self.best_model_dir)}

    def _check_resume(self) -> List[str]:
        """Compare this run with the one whose checkpoints are in save/ (see `workdir.check_resume`);
        record this run's configuration when it starts.  Returns the changed training settings."""
        run_file = self.checkpoint_dir / RUN_FILE
        record = run_record(self.configuration, self.train_cfg, self.train_dataset)
        resuming = self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.glob('CKPT+*'))
        changed: List[str] = []
        if resuming and run_file.is_file():
            changed = check_resume(run_file, record, self.resume_with_new_settings)
        elif resuming:
            logger.warning('%s: checkpoints without a record of their run (written by an older version); '
                           'resuming without checking that the configuration is the same', self.checkpoint_dir)
        if _is_main_process():
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
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
        path = self.best_model_dir / 'configuration.json'
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
            if (candidate / 'configuration.json').is_file() and find_weights(candidate) is not None:
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

    # -- evaluation --------------------------------------------------------

    def evaluate(self, checkpoint_path: Optional[str] = None, *args: Any, **kwargs: Any) -> Dict[str, float]:
        """Mean SI-SNR, SI-SNRi, SDR and SDRi (dB, higher is better) on the eval dataset.

        Unlike ModelScope's built-in trainer (which returns the negative SI-SNR
        loss), these are the metrics as reported in papers.

        Args:
            checkpoint_path: weights to evaluate; when None the best model in
                work_dir, or the model's own weights when training never ran.
        """
        self._recover_best_model()
        source = checkpoint_path or (self.best_model_dir if self.best_model_dir.is_dir() else None)
        if source is not None:
            load_weights(self.model.separator, source)
        dataset = self._dataset(self.eval_dataset, 'test', train=False)
        separator = self.model.separator.to(self.device).eval()
        rows = []
        from tqdm import tqdm

        for index in tqdm(range(len(dataset)), desc='evaluate', disable=not self.train_cfg['progressbar']):
            item = dataset[index]
            if item is None:
                continue
            with torch.inference_mode():
                estimates = separator(item['mix'][None].to(self.device))[0].float().cpu()
            if not torch.isfinite(estimates).all():
                raise ValueError(f"{item.get('origin', item['id'])}: the model produced non-finite (NaN/Inf) "
                                 f'output; check the weights of {source or self.model.model_dir}')
            rows.append({'id': item['id'], **separation_scores(estimates, item['sources'], item['mix'])})
        if not rows:
            raise ValueError('evaluation dataset yielded no usable example')
        keys = ('si-snr', 'si-snri', 'sdr', 'sdri')
        summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        if _is_main_process():
            with open(self.work_dir / 'eval_results.csv', 'w', newline='') as handle:
                writer = csv.DictWriter(handle, fieldnames=('id',) + keys)
                writer.writeheader()
                writer.writerows(rows)
                writer.writerow({'id': 'MEAN', **summary})
        logger.info('evaluation on %d utterances: %s', len(rows), summary)
        return summary


register(TRAINERS, SpeechSeparationTrainer, Trainers.speech_separation)
