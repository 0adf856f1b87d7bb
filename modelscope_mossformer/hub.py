"""Model names to model directories, offline first.

`resolve_model_dir` is what this package's own entry points (the trainer, `mossformer ...`,
`MossFormerSeparation.from_pretrained`) call with whatever the user gave as ``model``:

1. an existing directory is used as it is (a released layout or one this package wrote);
2. a hub id (``owner/name``) already in ModelScope's local cache is used without any network access
   (`snapshot_download(id, local_files_only=True)`, which knows every cache layout ModelScope has used:
   ``models/<owner>--<name>/snapshots/<rev>``, ``models/<owner>/<name>``, ``hub/<owner>/<name>``, flat);
   the ``damo/`` and ``iic/`` namespaces name the same released models, so each is tried for the other;
3. otherwise the hub is probed with a short TCP connect and the model downloaded; offline, a
   `HubUnavailableError` says what to do within seconds.

ModelScope's own `pipeline()` and `build_trainer()` ask the hub about a hub id before any code of this
package runs, so offline they fail inside ModelScope; pass them a directory (see the README).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import List, Optional, Union

from .data import sources
from .metainfo import CONFIGURATION_FILE

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')
# The released models moved from the damo/ to the iic/ namespace; both ids appear in user code.
NAMESPACE_ALIASES = {'damo': 'iic', 'iic': 'damo'}


def is_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a hub id (``owner/name``) rather than a path."""
    return bool(HUB_ID.match(name)) and not name.startswith(('.', '~'))


def _candidate_ids(model_id: str) -> List[str]:
    owner, name = model_id.split('/', 1)
    alias = NAMESPACE_ALIASES.get(owner)
    return [model_id] + ([f'{alias}/{name}'] if alias else [])


def cached_model_dir(model_id: str) -> Optional[Path]:
    """The local copy of a hub model in ModelScope's cache, or None; never touches the network."""
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:  # pragma: no cover - modelscope is a dependency
        return None
    for candidate in _candidate_ids(model_id):
        try:
            path = Path(snapshot_download(candidate, local_files_only=True))
        except Exception as err:  # noqa: BLE001 - ModelScope raises its own error types per version
            logger.debug('%s is not in the local cache: %s', candidate, err)
            continue
        if (path / CONFIGURATION_FILE).is_file():
            return path
    return None


def resolve_model_dir(model: Union[str, os.PathLike], download: bool = True,
                      probe_timeout: float = 3.0) -> Path:
    """A local model directory for a directory path or a hub id.

    Args:
        model: a model directory, or a hub id such as ``damo/speech_mossformer_separation_temporal_8k``.
        download: download a hub id missing from the cache when the hub is reachable.
        probe_timeout: seconds to wait for the hub before giving up.

    Raises:
        FileNotFoundError: a path that does not exist and is not a hub id; a file instead of a folder.
        sources.HubUnavailableError: a hub id that is neither cached nor reachable.
    """
    text = os.path.expanduser(str(model))
    path = Path(text)
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise FileNotFoundError(f'{path}: a model must be a directory with a configuration.json, not a file')
    if not is_hub_id(str(model)):
        raise FileNotFoundError(f'{model}: no such directory (and not a hub id of the form owner/name)')
    cached = cached_model_dir(str(model))
    if cached is not None:
        logger.info('%s: using the copy in ModelScope\'s local cache, %s', model, cached)
        return cached
    if download and sources.hub_reachable(probe_timeout):
        from modelscope.hub.snapshot_download import snapshot_download

        return Path(snapshot_download(str(model)))
    raise sources.HubUnavailableError(
        f'{model!r} is not a local directory, is not in ModelScope\'s local cache (MODELSCOPE_CACHE, default '
        f'~/.cache/modelscope) and the hub at {sources.hub_endpoint()} is not reachable. On a machine with '
        f'network run `from modelscope.hub.snapshot_download import snapshot_download; '
        f'snapshot_download({str(model)!r})` once (or copy the model folder here), then pass that directory.')
