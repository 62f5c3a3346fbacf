"""Writing training checkpoints: one file holds model(s), optimiser(s), step, RNG states and the config.

Written through a temporary name inside the run folder, fsynced and renamed, so a crash or power
loss mid-write never corrupts ``latest``; weights that are not finite are never written. Every byte
goes to that in-folder temporary: Fabric's default ``TorchCheckpointIO`` saves through an fsspec
transaction, which stages the file in ``tempfile.gettempdir()`` (``$TMPDIR``) and moves it after,
so a full ``$TMPDIR`` failed training into a folder with room and a kill leaked the staged file.
Reading them (and rebuilding the models) lives beside the models: :mod:`co2s.models.loading`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from co2s.atomic import atomic_path, commit, failed_write, temp_path, write_stream
from co2s.errors import CheckpointError, TrainingError
from co2s.models.contract import contract_for
from co2s.models.loading import FORMAT, FORMAT_VERSION, read_checkpoint
from co2s.run_folder import RunFolder


class InPlaceCheckpointIO(TorchCheckpointIO):
    """Fabric's checkpoint writer with ``torch.save`` straight to the path it is given (our
    in-folder temporary) instead of fsspec's transaction, which stages in ``$TMPDIR``. Fabric still
    turns modules and optimisers into state dicts on every rank and calls this on rank 0 only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_stream(path, lambda f: torch.save(checkpoint, f))  # a full disk stays an OSError


def save_checkpoint(fabric, path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (modules and optimisers are turned into state dicts by Fabric).

    Refuses (:class:`TrainingError`) to write modules whose weights are not all finite, so neither
    ``latest`` nor ``best`` can ever hold a diverged model. A failed write (a full disk) removes
    its temporary and raises an OSError naming ``path``; the previous ``path`` stays as it was.
    """
    path = Path(path)
    check_finite_weights({k: v for k, v in state.items() if isinstance(v, torch.nn.Module)},
                         f"refusing to write {path}")
    tmp = temp_path(path)
    if not isinstance(fabric.strategy.checkpoint_io, InPlaceCheckpointIO):
        fabric.strategy.checkpoint_io = InPlaceCheckpointIO()  # a Fabric not made by make_fabric
    try:
        fabric.save(tmp, {"format": FORMAT, "format_version": FORMAT_VERSION, **state})
        if fabric.is_global_zero:
            step = int(state.get("step", -1))
            _kill_for_test("torn", path, step, tmp)
            _kill_for_test("written", path, step, tmp)
            commit(tmp, path)
            _kill_for_test("committed", path, step, tmp)
    except BaseException as exc:  # an interrupt too: no temporary is left behind
        if not fabric.is_global_zero:
            raise
        failed_write(exc, path, tmp)
    fabric.barrier()


KILL_PHASES = ("torn", "written", "committed")


def _kill_for_test(phase: str, path: Path, step: int, tmp: Path) -> None:
    """Test hook: ``CO2S_TEST_KILL_AT=<phase>:<file name>[@<step>]`` SIGKILLs the process at that
    point of that checkpoint's write (at every write of it when no step is given): ``torn``, the
    temporary cut to half its bytes as a kill mid-``torch.save`` leaves it; ``written``, the
    temporary whole but not renamed; ``committed``, just after the rename. Used by
    tests/engine/test_run_lock.py and benchmarks/kill_harness.py."""
    wanted = os.environ.get("CO2S_TEST_KILL_AT")
    if not wanted:
        return
    want_phase, _, target = wanted.partition(":")
    name, _, want_step = target.partition("@")
    if want_phase != phase or name != path.name or (want_step and int(want_step) != step):
        return
    if phase == "torn":
        os.truncate(tmp, tmp.stat().st_size // 2)
    os.kill(os.getpid(), signal.SIGKILL)


def clean_checkpoint_temporaries(folder: RunFolder, step: int, burn_in_step: int) -> None:
    """Before a (re)start, on rank 0 under the run lock: remove the hidden temporaries that a
    killed attempt left of ``latest``, ``best`` and ``burn_in`` (a kill mid-write or between write
    and rename). None needs keeping: the restart from ``step`` redoes every step after it, and with
    them every checkpoint they write, ``burn_in.ckpt`` included since it is committed before
    ``latest`` of its step. One exception is recovered, left by versions that committed ``latest``
    first: ``latest`` at or past the burn-in, ``burn_in.ckpt`` missing and its temporary a whole
    checkpoint of the burn-in's last step; no restart would write it again, so it is committed."""
    for ckpt in (folder.latest, folder.best, folder.burn_in):
        for tmp in sorted(ckpt.parent.glob(f".{ckpt.name}.*tmp")):  # .name.tmp and .name.<pid>.tmp
            if (ckpt == folder.burn_in and 0 < burn_in_step <= step and not ckpt.is_file()
                    and _holds_step(tmp, burn_in_step)):
                commit(tmp, ckpt)
            else:
                tmp.unlink(missing_ok=True)


def _holds_step(path: Path, step: int) -> bool:
    try:
        return int(read_checkpoint(path)["step"]) == step
    except (CheckpointError, KeyError, TypeError, ValueError):  # torn or foreign: not worth keeping
        return False


def check_finite_weights(modules: dict[str, torch.nn.Module], what: str) -> None:
    """Raise :class:`TrainingError` naming the tensors of ``modules`` that hold NaN or inf."""
    bad = []
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(f"{name}.{key}")
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise TrainingError(f"{what}: non-finite weights in {shown}")


def write_model_checkpoint(path: str | os.PathLike, config, models: dict, step: int = 0) -> Path:
    """Atomically write a weights-and-config checkpoint of ``models`` (no optimiser or RNG state):
    enough for ``evaluate`` and ``predict``, for models built outside the trainer (benchmarks, tests)."""
    from co2s.config.loader import config_to_dict

    path = Path(path)
    check_finite_weights(models, f"refusing to write {path}")
    contract = contract_for(models, config)
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_to_dict(config),
              "step": step, "contract": contract.to_record(), **{name: m.state_dict() for name, m in models.items()}}
    with atomic_path(path) as tmp:
        write_stream(tmp, lambda f: torch.save(record, f))
    return path
