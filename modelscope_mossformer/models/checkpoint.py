"""Checkpoint import and export for every released MossFormer weight format.

Formats read and written:

* ``modelscope-mossformer``: ModelScope's MossFormer model dir, three plain
  state dicts ``encoder.bin`` (``conv1d.weight``), ``decoder.bin`` (``weight``)
  and ``masknet.bin`` (``norm.weight``, ``mdl.att_mdl.mossformerM.layers.0...``).
* ``modelscope-mossformer2``: ModelScope's MossFormer2 model dir, one
  ``pytorch_model.pt`` with ``enc.``, ``mask_net.`` and ``dec.`` keys.
* ``clearervoice``: ``torch.save({'model': state_dict, 'optimizer', 'epoch', 'step'})``
  with MossFormer2 key names, possibly ``module.``-prefixed; a directory may hold
  ``last_best_checkpoint`` / ``last_checkpoint`` text files naming the file.
* a plain state dict with this package's own key names (``encoder.conv.weight``,
  ``masker.sequence.layers.0.attention.to_hidden.linear.weight``...).

Key names differ between this package and the releases; `released_key` is the one
place where the mapping lives.  Loading is strict: the only tolerated difference is
the constant rotary-embedding table (``rotary_pos_emb.freqs``), which some versions
of rotary-embedding-torch save and others do not.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .configs import MOSSFORMER, MOSSFORMER2

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
StateDict = Dict[str, torch.Tensor]

MOSSFORMER_FILES = ('encoder.bin', 'decoder.bin', 'masknet.bin')
MOSSFORMER_FILE_PREFIXES = {'encoder.bin': 'encoder.', 'decoder.bin': 'decoder.', 'masknet.bin': 'mask_net.'}
TORCH_MODEL_FILES = ('pytorch_model.pt', 'pytorch_model.bin')
POINTER_FILES = ('last_best_checkpoint', 'last_checkpoint')
ROTARY_SUFFIX = 'rotary_pos_emb.freqs'

FORMAT_MOSSFORMER = 'modelscope-mossformer'
FORMAT_MOSSFORMER2 = 'modelscope-mossformer2'
FORMAT_CLEARERVOICE = 'clearervoice'
FORMAT_NATIVE = 'native'
RELEASED_FORMAT = {MOSSFORMER: FORMAT_MOSSFORMER, MOSSFORMER2: FORMAT_MOSSFORMER2}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


# ---------------------------------------------------------------------------
# key mapping
# ---------------------------------------------------------------------------

# This package's top-level names -> (MossFormer release, MossFormer2 release).
_TOP_LEVEL = (
    ('encoder.conv.', 'encoder.conv1d.', 'enc.conv1d.'),
    ('decoder.deconv.', 'decoder.', 'dec.'),
    ('masker.in_norm.', 'mask_net.norm.', 'mask_net.norm.'),
    ('masker.in_proj.', 'mask_net.conv1d_encoder.', 'mask_net.conv1d_encoder.'),
    ('masker.pos_enc.', 'mask_net.pos_enc.', 'mask_net.pos_enc.'),
    ('masker.sequence.final_norm.', 'mask_net.mdl.att_mdl.norm.norm.', 'mask_net.mdl.intra_mdl.norm.'),
    ('masker.seq_norm.', 'mask_net.mdl.att_norm.', 'mask_net.mdl.intra_norm.'),
    ('masker.prelu.', 'mask_net.prelu.', 'mask_net.prelu.'),
    ('masker.out_proj.', 'mask_net.conv1d_out.', 'mask_net.conv1d_out.'),
    ('masker.gate_tanh.', 'mask_net.output.0.', 'mask_net.output.0.'),
    ('masker.gate_sigmoid.', 'mask_net.output_gate.0.', 'mask_net.output_gate.0.'),
    ('masker.mask_proj.', 'mask_net.conv1_decoder.', 'mask_net.conv1_decoder.'),
)
_SEQUENCE_MODULE = {MOSSFORMER: 'mask_net.mdl.att_mdl', MOSSFORMER2: 'mask_net.mdl.intra_mdl'}
_LAYER = re.compile(r'masker\.sequence\.layers\.(\d+)\.(attention|recurrent)\.(.+)')
# Inside a projection (to_hidden, to_qk, to_out, to_u, to_v): norm, linear, depthwise conv.
_PROJECTION = ((re.compile(r'(^|\.)(to_\w+)\.norm\.'), r'\1\2.mdl.0.'),
               (re.compile(r'(^|\.)(to_\w+)\.linear\.'), r'\1\2.mdl.1.'),
               (re.compile(r'(^|\.)(to_\w+)\.dwconv\.'), r'\1\2.mdl.3.sequential.1.conv.'))
_RECURRENT = ((re.compile(r'^in_conv\.'), 'conv1.0.'),
              (re.compile(r'^in_prelu\.'), 'conv1.1.'),
              (re.compile(r'^out_conv\.'), 'conv2.'),
              (re.compile(r'\.dense\.layers\.(\d+)\.(conv|norm|prelu)\.'),
               lambda m: f'.conv.{m.group(2)}{int(m.group(1)) + 1}.'))


def _substitute(rules: Iterable[Tuple[re.Pattern, Any]], text: str) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def released_key(key: str, family: str) -> str:
    """Name of this package's parameter `key` in the released checkpoints of `family`.

    Raises:
        KeyError: for a key this mapping does not know.
    """
    if family not in _SEQUENCE_MODULE:
        raise ValueError(f'unknown model family {family!r}')
    match = _LAYER.fullmatch(key)
    if match:
        index, part, rest = match.groups()
        rest = _substitute(_PROJECTION, rest)
        if part == 'attention':
            return f'{_SEQUENCE_MODULE[family]}.mossformerM.layers.{index}.{rest}'
        return f'{_SEQUENCE_MODULE[family]}.mossformerM.fsmn.{index}.{_substitute(_RECURRENT, rest)}'
    column = 1 if family == MOSSFORMER else 2
    for row in _TOP_LEVEL:
        if key.startswith(row[0]):
            return row[column] + key[len(row[0]):]
    raise KeyError(f'no released name is known for parameter {key!r}')


def released_names(model: nn.Module, family: str) -> Dict[str, str]:
    """{released key: this package's key} for every state-dict entry of `model`."""
    table: Dict[str, str] = {}
    for key in model.state_dict():
        name = released_key(key, family)
        if name in table:
            raise RuntimeError(f'{key!r} and {table[name]!r} both map to {name!r}')
        table[name] = key
    return table


def _is_rotary(key: str) -> bool:
    return key.endswith(ROTARY_SUFFIX)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Weights read from disk: a flat state dict and where / how it was found."""

    state_dict: StateDict
    source: Path
    format: str
    extra: Dict[str, Any] = field(default_factory=dict)


class UnsafeCheckpointError(CheckpointError):
    """A file that holds pickled objects other than tensors and plain values: refused, never unpickled."""


def safe_torch_load(path: PathLike) -> Any:
    """torch.load(weights_only=True) with errors that name the file.

    Only tensors and plain containers are read; a pickle that would build any other object (and so could
    run code) raises `UnsafeCheckpointError` before anything of it is executed.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        named = [line for line in lines if 'unsupported global' in line.lower() or 'unsupported operand' in line.lower()]
        detail = (named or lines or [type(err).__name__])[0]
        if 'weights only' in str(err).lower() or 'weights_only' in str(err):
            raise UnsafeCheckpointError(
                f'{path}: refused to load: the file holds pickled Python objects other than tensors and plain '
                f'values, which could run code when loaded; this package reads weights-only files '
                f'({detail})') from None
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({detail})') from None
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})') from err




def _as_state_dict(obj: Any, path: Path) -> Tuple[StateDict, str, Dict[str, Any]]:
    if isinstance(obj, Mapping) and isinstance(obj.get('model'), Mapping):
        extra = {k: v for k, v in obj.items() if k in ('epoch', 'step')}
        return dict(obj['model']), FORMAT_CLEARERVOICE, extra
    if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
        return dict(obj['state_dict']), 'state_dict', {}
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), 'state_dict', {}
    raise CheckpointError(f'{path}: expected a state dict or a {{"model": state_dict}} checkpoint, '
                          f'found {type(obj).__name__} with keys {list(obj)[:8] if isinstance(obj, Mapping) else []}')


def _strip_module_prefix(state_dict: StateDict) -> StateDict:
    if state_dict and all(k.startswith('module.') for k in state_dict):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


def _resolve_pointer(directory: Path) -> Optional[Path]:
    for pointer in POINTER_FILES:
        pointer_path = directory / pointer
        if pointer_path.is_file():
            name = pointer_path.read_text().strip().splitlines()
            if not name or not name[0].strip():
                raise CheckpointError(f'{pointer_path}: empty pointer file, expected a checkpoint file name')
            target = Path(name[0].strip())
            target = target if target.is_absolute() else directory / target
            if not target.is_file():
                raise CheckpointError(f'{pointer_path} names {target}, which does not exist')
            return target
    return None


def find_weights(directory: PathLike) -> Optional[Path]:
    """The weight file (or, for the three-file MossFormer format, the dir) in a model dir, if any."""
    directory = Path(directory)
    if all((directory / name).is_file() for name in MOSSFORMER_FILES):
        return directory
    for name in TORCH_MODEL_FILES:
        if (directory / name).is_file():
            return directory / name
    return _resolve_pointer(directory)


def read_checkpoint(source: PathLike) -> Checkpoint:
    """Read any supported checkpoint from a file or a model directory.

    Raises:
        FileNotFoundError: nothing loadable at `source` (the message lists what was looked for).
        CheckpointError: a file that is not a state dict.
    """
    source = Path(source)
    if source.is_file() and source.name in MOSSFORMER_FILES:
        source = source.parent
    if source.is_dir():
        found = find_weights(source)
        if found is None:
            partial = [n for n in MOSSFORMER_FILES if (source / n).is_file()]
            hint = f' (found only {partial} of {list(MOSSFORMER_FILES)})' if partial else ''
            raise FileNotFoundError(
                f'{source}: no weights found{hint}; looked for {" + ".join(MOSSFORMER_FILES)}, '
                f'{" or ".join(TORCH_MODEL_FILES)}, or a {" / ".join(POINTER_FILES)} pointer file')
        if found == source:
            state: StateDict = {}
            for name in MOSSFORMER_FILES:
                part, _, _ = _as_state_dict(safe_torch_load(source / name), source / name)
                state.update({MOSSFORMER_FILE_PREFIXES[name] + k: v for k, v in part.items()})
            return Checkpoint(state, source, FORMAT_MOSSFORMER)
        source = found
    if not source.exists():
        raise FileNotFoundError(f'{source}: no such checkpoint file or model directory')
    state, fmt, extra = _as_state_dict(safe_torch_load(source), source)
    state = _strip_module_prefix(state)
    if fmt == 'state_dict':
        if any(k.startswith('masker.') for k in state):
            fmt = FORMAT_NATIVE
        elif any(k.startswith(('enc.', 'dec.')) for k in state):
            fmt = FORMAT_MOSSFORMER2
        else:
            fmt = FORMAT_MOSSFORMER
    return Checkpoint(state, source, fmt, extra)


# ---------------------------------------------------------------------------
# matching a checkpoint to a model
# ---------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What `load_weights` did: the source, its format, and the entries it re-initialised."""

    source: Path
    format: str
    reinitialised: List[str] = field(default_factory=list)


def _guess_family(keys: Iterable[str]) -> Optional[str]:
    keys = list(keys)
    if any('.recurrent.' in k or 'mossformerM.fsmn.' in k for k in keys):
        return MOSSFORMER2
    if any('.attention.' in k or 'mossformerM.layers.' in k for k in keys):
        return MOSSFORMER
    return None


def _format_keys(keys: Sequence[str]) -> str:
    return '\n'.join(f'    {k}' for k in keys)


def to_model_state_dict(model: nn.Module, family: str, state_dict: Mapping[str, torch.Tensor], source: str,
                        allow_shape_mismatch: Sequence[str] = ()) -> Tuple[StateDict, List[str]]:
    """Rename `state_dict` to `model`'s keys and check it fits, strictly.

    Args:
        model: the target separator.
        family: 'mossformer' or 'mossformer2', the release naming to accept.
        state_dict: released or native names.
        source: shown in error messages.
        allow_shape_mismatch: key prefixes (this package's names) whose shapes may
            differ; those entries keep the model's initial values and are reported.

    Returns:
        (state dict in the model's names, keys kept at their initial values).

    Raises:
        CheckpointError: naming every missing and unexpected key and every shape mismatch.
    """
    target = model.state_dict()
    native = any(k.startswith('masker.') for k in state_dict)
    table = {k: k for k in target} if native else released_names(model, family)
    renamed: StateDict = {}
    unexpected: List[str] = []
    for key, value in state_dict.items():
        if key in table:
            renamed[table[key]] = value
        elif not _is_rotary(key):
            unexpected.append(key)
    missing = [k for k in target if k not in renamed and not _is_rotary(k)]
    mismatched, kept = [], []
    for key, value in list(renamed.items()):
        if _is_rotary(key) and (key not in target or value.shape != target[key].shape):
            renamed.pop(key)
        elif value.shape != target[key].shape:
            if any(key.startswith(prefix) for prefix in allow_shape_mismatch):
                kept.append(key)
                renamed.pop(key)
            else:
                mismatched.append(f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}')
    if missing or unexpected or mismatched:
        lines = [f'{source} does not fit {type(model).__name__} ({family}):']
        if missing:
            lines += [f'  {len(missing)} missing key(s):', _format_keys(missing)]
        if unexpected:
            lines += [f'  {len(unexpected)} unexpected key(s):', _format_keys(unexpected)]
        if mismatched:
            lines += [f'  {len(mismatched)} shape mismatch(es):', _format_keys(mismatched)]
        guessed = _guess_family(state_dict)
        if guessed and guessed != family:
            lines.append(f'  hint: the checkpoint looks like a {guessed} model, the model is {family}')
        raise CheckpointError('\n'.join(lines))
    return renamed, kept


def load_weights(model: nn.Module, source: PathLike, family: Optional[str] = None,
                 allow_shape_mismatch: Sequence[str] = ()) -> LoadReport:
    """Load any supported checkpoint into `model` in place (strict but for the rotary table).

    Args:
        model: a MossFormer or MossFormer2 separator.
        source: checkpoint file or model directory.
        family: release naming; taken from `model.config.family` when None.
        allow_shape_mismatch: see `to_model_state_dict`.
    """
    family = family or model.config.family
    checkpoint = read_checkpoint(source)
    state, kept = to_model_state_dict(model, family, checkpoint.state_dict, str(checkpoint.source),
                                      allow_shape_mismatch)
    model.load_state_dict(state, strict=False)
    if kept:
        logger.warning('%s: re-initialised %d entries whose shapes differ from the checkpoint: %s',
                       checkpoint.source, len(kept), ', '.join(kept))
    logger.info('loaded %s weights from %s', checkpoint.format, checkpoint.source)
    return LoadReport(checkpoint.source, checkpoint.format, kept)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def atomic_save(obj: Any, path: PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def released_state_dict(model: nn.Module, family: Optional[str] = None) -> StateDict:
    """The model's weights under the released key names of its family (CPU tensors)."""
    family = family or model.config.family
    return {released_key(k, family): v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_released(model: nn.Module, directory: PathLike, family: Optional[str] = None) -> List[Path]:
    """Write the weights in the format ModelScope's released model of this family loads.

    MossFormer: ``encoder.bin``, ``decoder.bin``, ``masknet.bin``; MossFormer2:
    ``pytorch_model.pt``.  Returns the written paths.
    """
    family = family or model.config.family
    directory = Path(directory)
    state = released_state_dict(model, family)
    if family == MOSSFORMER2:
        return [atomic_save(state, directory / TORCH_MODEL_FILES[0])]
    written = []
    for name, prefix in MOSSFORMER_FILE_PREFIXES.items():
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        written.append(atomic_save(part, directory / name))
    return written


def save_clearervoice(model: nn.Module, path: PathLike, epoch: int = 0, step: int = 0,
                      optimizer: Optional[torch.optim.Optimizer] = None, family: Optional[str] = None,
                      pointer: Optional[str] = 'last_checkpoint') -> Path:
    """Write a ClearerVoice-style ``{'model', 'optimizer', 'epoch', 'step'}`` checkpoint.

    When `pointer` is given, a text file of that name next to `path` names it, as
    ClearerVoice's ``last_checkpoint`` / ``last_best_checkpoint`` do.
    """
    path = Path(path)
    payload = {'model': released_state_dict(model, family), 'epoch': epoch, 'step': step}
    if optimizer is not None:
        payload['optimizer'] = optimizer.state_dict()
    atomic_save(payload, path)
    if pointer:
        pointer_path = path.parent / pointer
        tmp = pointer_path.with_name(f'.{pointer}.tmp')
        tmp.write_text(path.name + '\n')
        os.replace(tmp, pointer_path)
    return path


__all__ = [
    'CheckpointError', 'Checkpoint', 'LoadReport', 'released_key', 'released_names', 'read_checkpoint',
    'find_weights', 'to_model_state_dict', 'load_weights', 'atomic_save', 'released_state_dict', 'save_released',
    'save_clearervoice', 'FORMAT_MOSSFORMER', 'FORMAT_MOSSFORMER2', 'FORMAT_CLEARERVOICE', 'FORMAT_NATIVE',
]
