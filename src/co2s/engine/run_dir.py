"""Run directories: the effective config, version and git revision of every run, and the
guard that keeps a run directory from being reused by a different config."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from co2s import __version__
from co2s.config.loader import config_to_dict, dump_yaml
from co2s.errors import ConfigError


def git_revision() -> str | None:
    """The revision of the source tree co2s runs from (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def prepare_run_dir(config, run_dir: str | os.PathLike) -> Path:
    """Create the run directory, or check that an existing one belongs to this same config."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        old = yaml.safe_load(saved.read_text())
        changes = _diff(old, config_to_dict(config))
        if changes:
            shown = "\n  ".join(changes[:10])
            raise ConfigError(
                f"run directory {run_dir} already holds a run with a different config:\n  {shown}\n"
                "choose another output directory (--out or name), or restore the old settings "
                "to resume that run"
            )
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(".config.yaml.tmp")
    tmp.write_text(dump_yaml(config))
    os.replace(tmp, saved)
    return run_dir


def write_run_info(run_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """Record how the run was made: package version, git revision, command, environment."""
    import torch

    info = {
        "co2s_version": __version__,
        "git_revision": git_revision(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        **(extra or {}),
    }
    # One record per start, so resumed runs keep the history of every launch.
    with open(run_dir / "run_info.jsonl", "a") as fh:
        fh.write(json.dumps(info) + "\n")
