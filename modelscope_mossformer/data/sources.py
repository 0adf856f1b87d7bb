"""One entry point for every dataset source: local manifests, local CSVs through MsDataset, or the hub.

`load_split` returns a dataset of ``{'id', 'mix', 'sources'}`` items for
`SeparationDataset`, whatever the source:

* a ``.csv`` / ``.scp`` file or a LibriMix folder -> `ManifestDataset`;
* a ModelScope dataset name such as ``'Libri2Mix_8k'`` -> `MsDataset.load` with
  `AudioBrainPreprocessor` for each column, wrapped in `RowDataset`.  Before any
  hub call the hub's address is probed with a short TCP connect, so an offline
  machine gets a clear `HubUnavailableError` in seconds instead of a long
  download retry loop.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlparse

from torch.utils.data import Dataset

from .dataset import ManifestDataset, RowDataset, source_field
from .manifest import FILE_SUFFIX, LIST_SUFFIXES, MIX_COLUMN, ManifestError, load_manifest, read_csv_manifest, source_column

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


class HubUnavailableError(ConnectionError):
    """The ModelScope hub cannot be reached for a dataset or model that is not local."""


def hub_endpoint() -> str:
    """The hub URL ModelScope would use (honours the MODELSCOPE_DOMAIN environment variable)."""
    try:
        from modelscope.hub.utils.utils import get_endpoint

        return get_endpoint()
    except Exception:  # noqa: BLE001 - older / newer ModelScope layouts
        return 'https://' + os.environ.get('MODELSCOPE_DOMAIN', 'www.modelscope.cn')


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within `timeout` seconds."""
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == 'https' else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError as err:
        logger.debug('hub %s unreachable: %s', url.hostname, err)
        return False


def looks_like_path(name: str) -> bool:
    """A string that can only be a local path: absolute, ./ ../ ~, or more than one separator."""
    return os.path.isabs(name) or name.startswith(('.', '~')) or name.count('/') > 1 or os.sep != '/' and \
        os.sep in name


def is_local_source(source: PathLike) -> bool:
    path = Path(os.path.expanduser(str(source)))
    return path.exists() or path.suffix.lower() in LIST_SUFFIXES


def _preprocessors(num_spks: int, sample_rate: int, root: Optional[Path]) -> list:
    from ..preprocessor import AudioBrainPreprocessor  # the ModelScope adapter, for MsDataset rows

    columns = [(MIX_COLUMN, 'mix_sig')] + [(source_column(i), source_field(i)) for i in range(num_spks)]
    return [AudioBrainPreprocessor(takes=column + FILE_SUFFIX, provides=field, sample_rate=sample_rate, root=root)
            for column, field in columns]


def msdataset_from_csv(csv_path: PathLike, num_spks: int, sample_rate: int, split: str = 'train') -> RowDataset:
    """A local ``mix_wav:FILE,...`` CSV through `MsDataset.load`; relative paths are relative to the CSV."""
    from modelscope.msdatasets import MsDataset

    csv_path = Path(csv_path).resolve()
    read_csv_manifest(csv_path, num_spks)  # validates the header and rows with file:line errors first
    dataset = MsDataset.load('csv', data_files={split: [str(csv_path)]}, split=split)
    rows = dataset.to_torch_dataset(preprocessors=_preprocessors(num_spks, sample_rate, csv_path.parent),
                                    to_tensor=False)
    return RowDataset(rows, num_spks)


def load_split(source: Union[PathLike, Any], split: str, num_spks: int = 2, sample_rate: Optional[int] = None,
               namespace: Optional[str] = None, probe_timeout: float = 3.0,
               utt2spk: Optional[PathLike] = None) -> Dataset:
    """A dataset of full utterances for one split.

    Args:
        source: a CSV / scp file, a LibriMix folder, a ModelScope dataset name, or
            an already built dataset of rows (returned wrapped as `RowDataset`).
        split: 'train', 'validation' or 'test' (LibriMix names work for folders).
        num_spks: speakers per mixture.
        sample_rate: the model's rate (files at other rates are resampled to it); None keeps each file's
            own rate (and a LibriMix folder must then hold one ``wavNk`` folder).
        namespace: hub namespace for dataset names.
        probe_timeout: seconds to wait for the hub before giving up.
        utt2spk: speaker ids of a local manifest's sources (else one found beside it, see `load_manifest`).

    Raises:
        HubUnavailableError: a hub name while the hub cannot be reached.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source if hasattr(source, 'read_source') else RowDataset(source, num_spks)
    if is_local_source(source):
        return ManifestDataset(load_manifest(Path(os.path.expanduser(str(source))), split=split,
                                             num_spks=num_spks, sample_rate=sample_rate, utt2spk=utt2spk),
                              sample_rate)
    name = str(source)
    if looks_like_path(name):
        raise ManifestError(f'{name}: no such file or folder (given as the {split} dataset; a ModelScope dataset '
                            f'name looks like Libri2Mix_8k or owner/name)')
    if not hub_reachable(probe_timeout):
        raise HubUnavailableError(
            f'cannot load dataset {name!r} (split {split!r}): the ModelScope hub at {hub_endpoint()} is not '
            f'reachable. Offline, pass a local CSV with mix_wav:FILE,s1_wav:FILE,... columns, an .scp list '
            f'("mix s1 s2" per line) or a LibriMix folder instead.')
    from modelscope.msdatasets import MsDataset

    kwargs = {'namespace': namespace} if namespace else {}
    dataset = MsDataset.load(name, split=split, **kwargs)
    rows = dataset.to_torch_dataset(preprocessors=_preprocessors(num_spks, sample_rate, None), to_tensor=False)
    return RowDataset(rows, num_spks)
