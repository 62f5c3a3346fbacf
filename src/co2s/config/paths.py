"""Where the paths written in a user's config file point: one rule, applied as each file is read.

A relative path written in a config file resolves against **that file's folder**, as ``base:``
entries always did, so a config works from any working directory and a run's stored
``config.yaml`` (which keeps the resolved, absolute paths) resumes from anywhere. Packaged presets
keep their environment-variable rules (their paths resolve against the working directory), and
``--set`` values resolve against the working directory, where the user typed them.

The keys: ``data.root``, ``out_dir`` and ``train.init_from`` (always paths); a student's ``backbone.weights``,
``text.prototypes`` and ``text.tokenizer`` only when the path exists beside the file (otherwise
they may be a Hub id or ``random``, left as written). Configs written before this rule resolved
against the working directory: where only that reading finds an existing path, it is kept, with a
deprecation warning naming both readings.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from co2s.config.migrate import Co2sDeprecationWarning
from co2s.config.overrides import expand_env

#: per student: keys that are a path only when something exists there
_STUDENT_PATHS = (("backbone", "weights"), ("text", "prototypes"), ("text", "tokenizer"))


def resolve_file_paths(raw: dict[str, Any], config_file: Path) -> dict[str, Any]:
    """``raw`` (a file's own keys, bases not yet merged) with its relative paths resolved against
    ``config_file``'s folder."""
    folder = config_file.resolve().parent
    origin = str(config_file)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str):
        data["root"] = _resolve(data["root"], folder, origin, "data.root", always=True)
    if isinstance(raw.get("out_dir"), str):
        raw["out_dir"] = _resolve(raw["out_dir"], folder, origin, "out_dir", always=True)
    train = raw.get("train")
    if isinstance(train, dict) and isinstance(train.get("init_from"), str):
        train["init_from"] = _resolve(train["init_from"], folder, origin, "train.init_from", always=True)
    model = raw.get("model")
    students = model.get("students") if isinstance(model, dict) else None
    for i, student in enumerate(students if isinstance(students, list) else []):
        for section, key in _STUDENT_PATHS:
            part = student.get(section) if isinstance(student, dict) else None
            if isinstance(part, dict) and isinstance(part.get(key), str):
                part[key] = _resolve(part[key], folder, origin, f"model.students.{i}.{section}.{key}", always=False)
    return raw


def _resolve(written: str, folder: Path, origin: str, key: str, always: bool) -> str:
    expanded = expand_env(written)
    path = Path(expanded).expanduser()
    if path.is_absolute() or not expanded:
        return expanded
    beside_file, in_cwd = folder / path, Path.cwd() / path
    if beside_file.exists() or beside_file == in_cwd:
        return str(beside_file)
    if in_cwd.exists():
        warnings.warn(f"{origin}: {key} {written!r} is read from the working directory ({in_cwd}) as "
                      f"before; relative paths in a config file now resolve against the file's folder "
                      f"({beside_file}, which does not exist): write the path relative to the file, or absolute",
                      Co2sDeprecationWarning, stacklevel=2)
        return str(in_cwd)
    if not always:
        return written  # a Hub id, 'random', or a file that does not exist anywhere: said when used
    if key == "data.root":
        warnings.warn(f"{origin}: data.root {written!r} resolves to {beside_file} (against the config "
                      "file's folder), which does not exist", stacklevel=2)
    return str(beside_file)
