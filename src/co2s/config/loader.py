"""Load a run config: preset or YAML file, inheritance, ``--set`` overrides, validation.

A config is a YAML mapping. ``preset: NAME`` (or ``base: path.yaml``, or a list of them, merged in
order) at the top level starts from packaged presets or other files and merges the file's own
keys on top by the rules of :mod:`co2s.config.merge` (students merge by name), e.g. ``preset: [ai4mars, models/co2s-tiny]``. Strings may refer
to environment variables as ``${VAR}`` or ``${VAR:-default}``. Relative paths in a file resolve
against its folder (:mod:`co2s.config.paths`). Every error names the file and the
key path, so a typo is found before any data is read.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from co2s.config.merge import merge_configs
from co2s.config.overrides import apply_overrides
from co2s.config.paths import resolve_file_paths
from co2s.config.schema import Config
from co2s.errors import ConfigError

def preset_names() -> list[str]:
    """Names of the configs shipped with the package (``co2s train NAME`` accepts them)."""
    folder = resources.files("co2s") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def model_presets() -> list[str]:
    """Model fragments (``preset: models/NAME`` in a config): student pairs and tiny variants."""
    folder = resources.files("co2s") / "presets" / "models"
    return sorted(f"models/{p.name[:-5]}" for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_description(name: str) -> str:
    """A packaged preset's one-line description: the first sentence of its opening comment."""
    lines = []
    for line in _preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    text = text.split(": ", 1)[-1] if text.startswith(f"{name}: ") else text
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= 90 else first[:first.rfind(" ", 0, 88)].rstrip(",;:") + " ..."


def _is_model_preset(source: str) -> bool:
    return source.startswith("models/") and not Path(source).is_file()


def _preset_text(name: str) -> str:
    path = resources.files("co2s") / "presets" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(preset_names() + model_presets())
        folder = f" ({name} here is a folder, not a config file)" if Path(name).is_dir() else ""
        raise ConfigError(f"unknown preset {name!r}{folder}; available: {known}")
    return path.read_text()


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping of a file (a config, a run folder's ``config.yaml``); every problem with
    its content is a :class:`ConfigError` naming the file (and the line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML config (not UTF-8 text)") from None
    return _parse_yaml(text, str(path))


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a key given twice in one mapping is an error: YAML
    keeps the last, so a second ``train:`` block would silently drop everything in the first."""


def _mapping_without_repeats(loader: _ConfigLoader, node: yaml.MappingNode) -> dict:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # ``<<: *base`` then a key of base: overriding a merged key is what merging is for
        key = loader.construct_object(key_node, deep=True)
        try:
            line = first.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if line != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice in one mapping (first on line {line}); YAML would "
                "keep only the last, dropping the first without a word", key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} is given twice in one object; JSON readers keep only the last, "
                             "dropping the first without a word")
        found[key] = value
    return found


def parse_json(text: str) -> Any:
    """``json.loads``, except that a key given twice in one object is a ``ValueError`` (as in YAML
    configs, :class:`_ConfigLoader`): for the JSON files co2s reads that people edit by hand."""
    import json

    return json.loads(text, object_pairs_hook=_object_without_repeats)


def _parse_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.constructor.ConstructorError) and "python/" in problem:
            # safe_load refuses them: a config holds plain values, never Python objects to build
            problem = f"a Python object tag, which co2s never builds ({problem})"
        raise ConfigError(f"{origin}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def _load_raw(source: str, seen: tuple[str, ...] = (), presets: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """Return (merged mapping, origin label) of a preset name or a YAML path, following bases;
    ``presets`` collects the packaged presets of the chain, in merge order."""
    path = Path(source)
    # A file only when it names one: a folder called like a preset (``co2s demo --out demo``
    # makes ``demo/``) never shadows the preset.
    if path.is_file() or path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"config file not found: {source}"
                              + (" (a folder of that name exists)" if path.is_dir() else ""))
        origin = str(path)
        raw = resolve_file_paths(read_yaml_file(path), path)
    else:
        origin = f"preset {source!r}"
        raw = _parse_yaml(_preset_text(source), origin)
    if origin in seen:
        raise ConfigError(f"{origin}: circular base/preset chain: {' -> '.join(seen + (origin,))}")
    if "preset" in raw and "base" in raw:
        raise ConfigError(f"{origin}: give 'preset' or 'base', not both (either takes a list)")
    parents = raw.pop("preset", None) or raw.pop("base", None)
    if parents is None:
        if presets is not None and origin.startswith("preset "):
            presets.append(source)
        return merge_configs({}, raw, origin), origin  # patch markers checked and dropped here too
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{origin}: 'preset'/'base' must be a name or path, or a list of them")
    merged: dict[str, Any] = {}
    for parent in parents:  # later parents override earlier ones, the file overrides all
        if path.is_file() and parent.endswith((".yaml", ".yml")) and not Path(parent).is_absolute():
            parent = str(path.parent / parent)
        merged = merge_configs(merged, _load_raw(parent, seen + (origin,), presets)[0], origin,
                               whole_model=_is_model_preset(parent))
    if presets is not None and origin.startswith("preset "):
        presets.append(source)
    return merge_configs(merged, raw, origin), origin


def validate(raw: dict[str, Any], origin: str = "config", stored: bool = False) -> Config:
    """A typed :class:`Config` from plain data, old key spellings migrated (with a deprecation
    warning, unless ``stored``: a config an older release wrote into a checkpoint)."""
    return Config.from_raw(raw, origin, stored)


def load_config(source: str | list[str], overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a preset name or YAML path, or a list of them merged in order (as ``base:`` does, e.g.
    ``["ai4mars", "models/co2s-tiny"]``), apply overrides (``["train.iters=500"]`` as ``--set``,
    or ``{"train.iters": 500}``), and validate."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise ConfigError("load_config needs at least one preset or file")
        raw: dict[str, Any] = {}
        for item in source:
            raw = merge_configs(raw, _load_raw(str(item))[0], str(item), whole_model=_is_model_preset(str(item)))
        origin = " + ".join(map(str, source))
    else:
        raw, origin = _load_raw(str(source))
    if overrides:
        raw = apply_overrides(raw, overrides)
        shown = " ".join(overrides) if not isinstance(overrides, dict) else ", ".join(
            f"{k}={v!r}" for k, v in overrides.items())
        origin = f"{origin} (with overrides {shown})"
    return validate(raw, origin)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain-data form (YAML/JSON safe) of a validated config."""
    return config.model_dump(mode="json")


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def changes_against_preset(source: str | list[str], config: Config) -> tuple[str | None, list[str]]:
    """The packaged preset that ``config``'s model comes from (the last one in ``source``'s chain
    that sets ``model``) and every ``model.`` key ``config`` changes against it (``key: preset ->
    config``); (None, []) for a preset itself or a chain without one. What a user's file or
    ``--set`` changed in the paper's pair is shown before training, never found out after."""
    from pydantic import TypeAdapter

    from co2s.config.compare import config_differences
    from co2s.config.schema import ModelConfig

    sources = [str(s) for s in source] if isinstance(source, (list, tuple)) else [str(source)]
    presets: list[str] = []
    with warnings.catch_warnings():  # loading said them once already
        warnings.simplefilter("ignore")
        for item in sources:
            _load_raw(item, (), presets)
        with_model = [p for p in presets if "model" in _load_raw(p)[0]]
        if not with_model:
            return None, []
        preset = with_model[-1]
        model = TypeAdapter(ModelConfig).validate_python(_load_raw(preset)[0]["model"])
    return preset, config_differences(model.model_dump(mode="json"), config_to_dict(config)["model"], "model.")

