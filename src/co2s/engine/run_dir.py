"""Run directories: the effective config, version and git revision of every run, and the
guard that keeps a run directory from being reused by a different config."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from co2s.version import __version__
from co2s.atomic import write_text
from co2s.config.compare import config_differences
from co2s.config.loader import config_to_dict, dump_yaml, read_yaml_file
from co2s.errors import ConfigError
from co2s.run_folder import RunFolder


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


@dataclass(frozen=True)
class Run:
    """A finished (or resumed-to-the-end) training run and where its checkpoints are."""

    run_dir: Path
    steps: int
    best: dict[str, Any] | None  # {"step", "mIoU", "split", "prediction"} of the best validation
    is_global_zero: bool = True  # False in the other processes of a multi-process run
    burn_in_steps: int = 0  # steps of the supervised burn-in (burn_in.ckpt holds their end)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    @property
    def latest_checkpoint(self) -> Path:
        return self.folder.latest

    @property
    def best_checkpoint(self) -> Path:
        """``best.ckpt`` (chosen on the validation split); ``latest.ckpt`` when the run had no
        validation split."""
        return self.folder.best_or_latest

    def segmenter(self, checkpoint: str = "best", prediction: str | None = None):
        """The trained models as a :class:`~co2s.inference.segmenter.Segmenter` (``checkpoint``:
        ``best`` or ``latest``)."""
        from co2s.inference.segmenter import Segmenter

        path = self.best_checkpoint if checkpoint == "best" else self.latest_checkpoint
        return Segmenter.load(path, prediction=prediction)


def check_run_dir(config, run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a run of another config (which will be replaced: it has no
    checkpoint yet); raises :class:`ConfigError` when such a run has a checkpoint. Reads only, so
    a run into the wrong folder is refused before its data are checked."""
    saved = RunFolder(Path(run_dir)).config
    if not saved.is_file():
        return False
    changes = config_differences(read_yaml_file(saved), config_to_dict(config))
    if not changes:
        return False
    if RunFolder(Path(run_dir)).has_checkpoint():
        shown = "\n  ".join(changes[:10]) + (f"\n  ... and {len(changes) - 10} more" if len(changes) > 10 else "")
        raise ConfigError(
            f"run directory {run_dir} already holds a run with a different config:\n  {shown}\n"
            "give this run its own folder (--out, or another name in the config), or restore the old "
            "settings to resume that run"
        )
    return True


def prepare_run_dir(config, run_dir: str | os.PathLike) -> Path:
    """Create the run directory, or check that an existing one belongs to this same config
    (:func:`check_run_dir`). A run directory without a checkpoint (killed before its first save)
    holds nothing to protect: its config is replaced by the new one."""
    run_dir = Path(run_dir)
    if check_run_dir(config, run_dir):
        print(f"{run_dir} holds no checkpoint yet; starting it again with the new config")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(RunFolder(run_dir).config, dump_yaml(config))
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
    with open(RunFolder(run_dir).run_info, "a") as fh:
        fh.write(json.dumps(info) + "\n")
