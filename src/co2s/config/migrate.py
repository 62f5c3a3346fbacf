"""Old spellings of config keys: YAML files, ``--set`` overrides and the configs stored in older
checkpoints keep working after a key is renamed, with one deprecation message naming the new key.

Every validation goes through :func:`migrate` (``co2s.config.loader.validate``), so the rename is
made in this table only.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from co2s.errors import ConfigError

#: old dotted key -> (new dotted key, the release that renamed it)
RENAMED: dict[str, tuple[str, str]] = {
    "train.semi.fusion": ("eval.prediction", "0.2"),
}


class Co2sDeprecationWarning(FutureWarning):
    """A deprecated spelling was accepted (shown by default, unlike DeprecationWarning)."""


_MISSING = object()


def _pop(raw: dict, keys: list[str]) -> Any:
    node = raw
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return _MISSING
    return node.pop(keys[-1], _MISSING) if isinstance(node, dict) else _MISSING


def _get(raw: dict, keys: list[str]) -> Any:
    node: Any = raw
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _set(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(keys[:-1])} is not a section")
    node[keys[-1]] = value


def _two_students(raw: dict) -> bool:
    model = raw.get("model")
    return isinstance(model, dict) and model.get("name") == "students" and len(model.get("students") or []) == 2


#: values an old key held without meaning, dropped instead of moved: ``train.semi.fusion`` held a
#: fusion (its default ``confidence``) in every config, and older releases ignored it unless the
#: config had two students
_MEANINGLESS = {"train.semi.fusion": lambda raw, value: not _two_students(raw) and value in ("mean", "confidence")}


def migrate(raw: dict[str, Any], origin: str = "config", warn: bool = True) -> dict[str, Any]:
    """``raw`` with every old key of :data:`RENAMED` moved to its new place (a copy). ``warn``: a
    deprecation warning per key (the user's own files; configs stored by older releases are
    migrated quietly). Both spellings with different values is an error."""
    out = copy.deepcopy(raw)
    for old, (new, release) in RENAMED.items():
        value = _pop(out, old.split("."))
        if value is _MISSING:
            continue
        if old in _MEANINGLESS and _MEANINGLESS[old](out, value):
            continue
        current = _get(out, new.split("."))
        if current is not _MISSING and current is not None and current != value:
            raise ConfigError(f"{origin}: {old} (deprecated) and {new} disagree ({value!r} vs {current!r}); "
                              f"keep {new} only")
        _set(out, new.split("."), value)
        if warn:
            warnings.warn(f"{origin}: {old} is deprecated since co2s {release}; use {new}",
                          Co2sDeprecationWarning, stacklevel=3)
    return out
