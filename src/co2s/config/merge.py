"""How a config file's keys combine with its bases (``preset:``/``base:``): one rule set, here.

- Mappings merge key by key; a scalar or a list replaces.
- A model preset (``models/NAME``) among the bases sets the whole ``model`` section: it is a
  complete model, swapped in (``preset: [demo, models/co2s-tiny]``), never blended with the pair
  before it.
- ``model`` with another ``name`` than its base's replaces the whole model section: the keys of
  one model (a student pair's ``students``, the CNN's ``width``) mean nothing to another.
- ``model.students`` merges **by student name**, so restating a student to point it at other
  weights keeps everything it does not restate (guidance, text concepts, skips, layers). A student
  restated with another ``backbone.kind`` starts from that kind's defaults (the old kind's keys
  would not fit it), with a warning. A new name adds a student.
- Explicit spellings for the rest, Kubernetes' strategic-merge convention: an item
  ``{$patch: replace}`` in a list of students makes the list replace the base's;
  ``{name: dino, $patch: delete}`` removes that student (e.g. for a one-student baseline).

``--set`` overrides (:mod:`co2s.config.overrides`) set values and never merge:
``--set model.students=[...]`` replaces the list.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from co2s.config.schema import _model_kind
from co2s.errors import ConfigError

PATCH = "$patch"


def merge_configs(base: dict[str, Any], override: dict[str, Any], origin: str = "config",
                  whole_model: bool = False) -> dict[str, Any]:
    """``override`` merged onto a copy of ``base`` by the rules above; ``origin`` names the file
    in errors and warnings; ``whole_model``: ``override`` is a model preset, its ``model`` replaces."""
    if whole_model and "model" in override:
        base = {k: v for k, v in base.items() if k != "model"}
    return _merge(base, override, (), origin)


def _merge(base: Any, override: Any, path: tuple[str, ...], origin: str) -> Any:
    if path == ("model", "students") and isinstance(override, list):
        return _merge_students(base if isinstance(base, list) else [], override, origin)
    if not (isinstance(override, dict) and isinstance(base, dict)):
        return _without_patch_keys(copy.deepcopy(override))
    if path == ("model",) and "name" in override and _model_kind(base) != override["name"]:
        return _without_patch_keys(copy.deepcopy(override))  # another model: nothing of the old one fits
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out.get(key), value, path + (str(key),), origin) if key in out else \
            _merge(None, value, path + (str(key),), origin)
    return out


def _merge_students(base: list, override: list, origin: str) -> list:
    where = f"{origin}: model.students"
    replace = [item for item in override if isinstance(item, dict) and item.get(PATCH) == "replace"]
    items = [item for item in override if not (isinstance(item, dict) and item.get(PATCH) == "replace")]
    if replace and any(len(r) != 1 for r in replace):
        raise ConfigError(f"{where}: the list item {{$patch: replace}} takes no other keys")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{where}: every student needs a name (students merge with the base's by "
                              "name; add {$patch: replace} to the list to replace them all)")
        if PATCH in item and item[PATCH] != "delete":
            raise ConfigError(f"{where}: {PATCH} is 'replace' (a list item of its own) or 'delete' "
                              f"(with a student's name), not {item[PATCH]!r}")
    names = [item["name"] for item in items]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a student name appears twice in one list")
    out = [] if replace else [copy.deepcopy(s) for s in base]
    for item in items:
        index = next((i for i, s in enumerate(out) if isinstance(s, dict) and s.get("name") == item["name"]), None)
        if item.get(PATCH) == "delete":
            if index is None:
                known = [s.get("name") for s in out if isinstance(s, dict)]
                raise ConfigError(f"{where}: cannot delete student {item['name']!r}: the base has {known}")
            del out[index]
        elif index is None:
            out.append(_without_patch_keys(copy.deepcopy(item)))
        else:
            old_kind = (out[index].get("backbone") or {}).get("kind")
            new_kind = (item.get("backbone") or {}).get("kind") if isinstance(item.get("backbone"), dict) else None
            if new_kind is not None and old_kind is not None and new_kind != old_kind:
                warnings.warn(f"{where}: student {item['name']!r} changes backbone.kind {old_kind} -> {new_kind}; "
                              "it starts from that kind's defaults (keys of the base's student dropped)",
                              stacklevel=2)
                out[index] = _without_patch_keys(copy.deepcopy(item))
            else:
                out[index] = _merge(out[index], item, ("model", "students", item["name"]), origin)
    return out


def _without_patch_keys(value: Any) -> Any:
    """Patch markers never reach validation: a list that replaces its base needs none."""
    if isinstance(value, dict):
        return {k: _without_patch_keys(v) for k, v in value.items() if k != PATCH}
    if isinstance(value, list):
        return [_without_patch_keys(v) for v in value if not (isinstance(v, dict) and v.get(PATCH) == "replace")]
    return value
