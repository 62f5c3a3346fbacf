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
    """Parse ``a.b.c=value`` (value as YAML: numbers, booleans, null, lists)."""
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
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def expand_env(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value
