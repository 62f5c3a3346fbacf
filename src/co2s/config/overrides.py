"""Plain-data edits of a config before validation: ``--set key.path=value`` overrides and
``${VAR}`` environment references. The schema (``Config.override``) and the loader both use them."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import yaml

from co2s.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value as YAML: numbers, booleans, null, lists). A key part indexes a
    list by position or by its items' ``name``: ``model.students.0.backbone.weights=...``."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, _, text = item.partition("=")
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """``raw`` with overrides set: ``["a.b=value", ...]`` (values parsed as YAML, as ``--set``) or
    ``{"a.b": value, ...}`` (values used as given)."""
    out = copy.deepcopy(raw)
    if isinstance(overrides, dict):
        pairs = [([k for k in str(key).split(".") if k], value, f"{key}={value!r}")
                 for key, value in overrides.items()]
    else:
        pairs = [(*parse_override(item), item) for item in overrides]
    for keys, value, item in pairs:
        if not keys:
            raise ConfigError(f"override {item!r}: empty key")
        node = out
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                index = _list_index(node, k, item, ".".join(keys[:depth]))
                if last:
                    node[index] = value
                else:
                    node = node[index]
                continue
            if last:
                node[k] = value
                break
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, (dict, list)):
                raise ConfigError(f"--set {item!r}: {k!r} is a value, not a section or list")
            node = child
    return out


def _list_index(items: list, key: str, item: str, where: str) -> int:
    """A list item by position (``students.0``) or by its ``name`` (``students.clip``)."""
    if key.lstrip("-").isdigit():
        index = int(key)
        if not -len(items) <= index < len(items):
            raise ConfigError(f"--set {item!r}: {where} has {len(items)} items; no item {index}")
        return index
    names = [x.get("name") for x in items if isinstance(x, dict)]
    if key in names:
        return names.index(key)
    raise ConfigError(f"--set {item!r}: {where} is a list: index it by position (0 to {len(items) - 1})"
                      + (f" or by name ({', '.join(map(str, names))})" if names else ""))


def expand_env(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value
