"""The files of a training run's folder, named in one place (the trainer writes them; the API, the
CLI, the demo and checkpoint error messages find them here)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LATEST = "latest.ckpt"  # the newest checkpoint: resume starts here
BEST = "best.ckpt"  # the best on the validation split
BURN_IN = "burn_in.ckpt"  # the end of the supervised burn-in (train.semi.burn_in)
CONFIG = "config.yaml"  # the effective config the run trains under
METRICS_LOG = "metrics.jsonl"  # every train and validation record
RUN_INFO = "run_info.jsonl"  # version, git revision, machine, one line per (re)start


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def latest(self) -> Path:
        return self.path / LATEST

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def burn_in(self) -> Path:
        return self.path / BURN_IN

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_log(self) -> Path:
        return self.path / METRICS_LOG

    @property
    def run_info(self) -> Path:
        return self.path / RUN_INFO

    @property
    def best_or_latest(self) -> Path:
        """``best.ckpt`` (chosen on the validation split); ``latest.ckpt`` when the run had no
        validation split."""
        return self.best if self.best.is_file() else self.latest

    def has_checkpoint(self) -> bool:
        return self.latest.is_file() or self.best.is_file()
