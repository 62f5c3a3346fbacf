"""Run directories: the effective config, version and git revision of every run, and the
guard that keeps a run directory from being reused by a different config."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from co2s.version import __version__
from co2s.atomic import atomic_path, write_text
from co2s.config.compare import config_differences
from co2s.config.loader import config_to_dict, dump_yaml, read_yaml_file, validate
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
    notes: tuple[str, ...] = ()  # what the run's diagnostics say to look at (metrics_log.untaught_class_notes)

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


#: the settings `co2s train --extend` changes in a run's stored config (and nothing else may differ)
EXTENSION_KEYS = ("train.iters", "train.semi.burn_in_steps")


def check_run_dir(config, run_dir: str | os.PathLike, extending: bool = False) -> bool:
    """Whether ``run_dir`` holds a run of another config (which will be replaced: it has no
    checkpoint yet); raises :class:`ConfigError` when such a run has a checkpoint. ``extending``
    accepts differences in :data:`EXTENSION_KEYS` only. Reads only, so a run into the wrong folder
    is refused before its data are checked."""
    saved = RunFolder(Path(run_dir)).config
    if not saved.is_file():
        return False
    old = _saved_config(saved)
    changes = config_differences(old, config_to_dict(config))
    if extending:
        changes = [c for c in changes if c.split(":")[0] not in EXTENSION_KEYS]
    if not changes:
        return False
    if RunFolder(Path(run_dir)).has_checkpoint():
        shown = "\n  ".join(changes[:10]) + (f"\n  ... and {len(changes) - 10} more" if len(changes) > 10 else "")
        extended = ((old.get("train") or {}).get("semi") or {}).get("burn_in_steps") is not None
        hint = (f"this run was extended to {old['train'].get('iters')} steps: add --extend "
                f"{old['train'].get('iters')} to resume it, or " if extended and not extending else "")
        raise ConfigError(
            f"run directory {run_dir} already holds a run with a different config:\n  {shown}\n"
            f"{hint}give this run its own folder (--out, or another name in the config), or restore the old "
            "settings to resume that run"
        )
    return True


def _saved_config(path: Path) -> dict:
    """A run's saved config as this version reads it: settings added since it was written take
    their defaults, so a new setting does not make an old run look like another run. As written
    when it no longer validates (the comparison then shows what changed)."""
    raw = read_yaml_file(path)
    try:
        return config_to_dict(validate(raw, str(path), stored=True))
    except (ConfigError, ValueError):
        return raw


def prepare_run_dir(config, run_dir: str | os.PathLike, extending: bool = False) -> Path:
    """Create the run directory, or check that an existing one belongs to this same config
    (:func:`check_run_dir`); the config is written (again: an extension changes it). A run
    directory without a checkpoint (killed before its first save) holds nothing to protect: its
    config is replaced by the new one."""
    run_dir = Path(run_dir)
    if check_run_dir(config, run_dir, extending):
        print(f"{run_dir} holds no checkpoint yet; starting it again with the new config")
    elif RunFolder(run_dir).config.is_file() and not extending:
        return run_dir  # this run's own config: kept as first written
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(RunFolder(run_dir).config, dump_yaml(config))
    return run_dir


def extended_config(config, run_dir: str | os.PathLike, iters: int):
    """``config`` for continuing the run in ``run_dir`` to a total of ``iters`` steps
    (``co2s train --extend``): ``train.iters`` is the new total and ``train.semi.burn_in_steps``
    the burn-in the run had, so a run past its burn-in never returns to it; learning-rate decay and
    ramps, which follow the total, continue towards the new one. Rerunning the same extension
    (to resume it) gives the same config."""
    from co2s.config.loader import validate
    from co2s.engine.metrics_log import read_log

    folder = RunFolder(Path(run_dir))
    if not folder.latest.is_file():
        raise ConfigError(f"--extend: {run_dir} holds no checkpoint to continue (train it first, or check "
                          "--out and the config's name)")
    stored = read_yaml_file(folder.config) if folder.config.is_file() else {}
    stored_semi = (stored.get("train") or {}).get("semi") or {}
    starts = read_log(folder.run_info) if folder.run_info.is_file() else []  # torn lines dropped
    last = next((s for s in reversed(starts) if "total_steps" in s), None)
    if last is None:
        raise ConfigError(f"--extend: {folder.run_info} records no run length; cannot tell where {run_dir} ends")
    burn_in = stored_semi.get("burn_in_steps")
    if burn_in is None:
        burn_in = int(last["burn_in_steps"])
    if iters < int(last["total_steps"]) or (iters == int(last["total_steps"]) and stored_semi.get("burn_in_steps") is None):
        raise ConfigError(f"--extend {iters}: the run in {run_dir} is {last['total_steps']} steps long; give a "
                          "larger total")
    raw = config_to_dict(config)
    raw["train"]["iters"] = iters
    raw["train"]["semi"]["burn_in_steps"] = burn_in
    return validate(raw, f"{run_dir} extended to {iters} steps", stored=True)


def fork_at_burn_in(source: str | os.PathLike, target: str | os.PathLike, fork_step: int) -> bool:
    """Start the run in ``target`` from the end of the burn-in of the run in ``source``: its
    ``burn_in.ckpt`` (step ``fork_step``) becomes the target's ``latest.ckpt``.

    Until its supervised burn-in ends, a semi-supervised run is the same computation as a run of
    the same models, labels, seed and schedule that differs only after it (its supervised
    baseline, or the same method with a detached L_sta), so the target resumes there instead of
    repeating it; resuming checks that the models and classes are the same. The source's log up
    to the fork goes along, its validation records only when its ``best.ckpt`` is among them (so a
    logged validation never lacks its weights); otherwise the target selects among its own. False,
    and nothing written, when the source has no burn-in checkpoint or the target has checkpoints.
    """
    from co2s.engine.metrics_log import best_validation, read_log

    source, target = RunFolder(source), RunFolder(target)
    if not source.burn_in.is_file() or target.has_checkpoint():
        return False
    logged = read_log(source.metrics_log) if source.metrics_log.is_file() else []
    records = [r for r in logged if r.get("step", 0) <= fork_step and r.get("kind") != "final"]
    best, _ = best_validation(logged)
    keeps_best = best is not None and best["step"] <= fork_step and source.best.is_file()
    if not keeps_best:
        records = [r for r in records if r.get("kind") != "val"]
    target.path.mkdir(parents=True, exist_ok=True)
    write_text(target.metrics_log, "".join(json.dumps(r) + "\n" for r in records))
    if keeps_best:  # the best validation so far is one both runs share: the same weights
        _copy(source.best, target.best)
    _copy(source.burn_in, target.latest)  # last: a checkpoint there means the fork is whole
    return True


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def last_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The record of the run's latest start (:func:`write_run_info`); empty when there is none
    or it does not read."""
    path = RunFolder(run_dir).run_info
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        return record if isinstance(record, dict) else {}
    return {}


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
