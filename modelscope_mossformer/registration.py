"""Registering this package's classes so that ModelScope's builders return them.

ModelScope ships its own MossFormer model, pipeline and trainer under the same
names.  Its `build_from_cfg` first imports the built-in module that its prebuilt
AST index lists for the requested name, and that module's decorators register
the built-in class *without* `force`, so they raise if a name is already taken.

`register` therefore:
1. imports the built-in module for the name (once; a failing import is logged
   and ignored, the built-in is then simply absent);
2. registers our class with `force=True`, replacing the built-in;
3. points the AST index entry at our module, so later builds import ours and
   never re-run a failing built-in import.

After that, any order of imports gives our class: the built-in module is already
in `sys.modules`, so importing it again registers nothing.
"""
from __future__ import annotations

import importlib
import logging
from typing import Optional

logger = logging.getLogger(__name__)

DEFAULT_GROUP = 'default'


def _ast_index() -> Optional[dict]:
    try:
        from modelscope.utils.import_utils import LazyImportModule

        return LazyImportModule.get_ast_index()
    except Exception as err:  # noqa: BLE001 - an index-less ModelScope still works
        logger.debug('ModelScope AST index unavailable: %s', err)
        return None


def builtin_module(registry_name: str, group_key: str, name: str) -> Optional[str]:
    """The ModelScope module that registers `name` in `registry_name`/`group_key`, if any."""
    from modelscope.utils.ast_utils import INDEX_KEY, MODULE_KEY

    index = _ast_index()
    if not index:
        return None
    entry = index[INDEX_KEY].get((registry_name.upper(), group_key, name))
    return entry[MODULE_KEY] if entry else None


def _point_index_at(registry_name: str, group_key: str, name: str, module: str) -> None:
    from modelscope.utils.ast_utils import INDEX_KEY, MODULE_KEY

    index = _ast_index()
    if not index:
        return
    signature = (registry_name.upper(), group_key, name)
    entry = dict(index[INDEX_KEY].get(signature) or {})
    entry[MODULE_KEY] = module
    index[INDEX_KEY][signature] = entry


def register(registry, cls: type, name: str, group_key: str = DEFAULT_GROUP) -> type:
    """Register `cls` as `name` in a ModelScope `registry`, winning over the built-in.

    Args:
        registry: a `modelscope.utils.registry.Registry` (MODELS, PIPELINES, TRAINERS, PREPROCESSORS).
        cls: the class to register.
        name: registry name (model type, trainer name...).
        group_key: registry group (the task for MODELS and PIPELINES, 'default' for TRAINERS).

    Returns:
        `cls`, so that it can be used as a decorator helper.
    """
    module = builtin_module(registry.name, group_key, name)
    if module and module != cls.__module__:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - the built-in is optional; ours replaces it
            logger.info('ModelScope built-in %s could not be imported (%s); registering %s alone',
                        module, err, cls.__name__)
    registry.register_module(group_key=group_key, module_name=name, module_cls=cls, force=True)
    _point_index_at(registry.name, group_key, name, cls.__module__)
    return cls


def registered(registry, name: str, group_key: str = DEFAULT_GROUP) -> Optional[type]:
    """The class ModelScope's builder would use for `name` now."""
    return registry.get(name, group_key=group_key)
