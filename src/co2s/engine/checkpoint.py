"""Writing training checkpoints: one file holds model(s), optimiser(s), step, RNG states and the config.

Written through a temporary name, fsynced and renamed, so a crash or power loss mid-write never
corrupts ``latest``; weights that are not finite are never written. Reading them (and rebuilding
the models) lives beside the models: :mod:`co2s.models.loading`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from co2s.atomic import atomic_path, commit, temp_path
from co2s.errors import TrainingError
from co2s.models.contract import contract_for
from co2s.models.loading import FORMAT, FORMAT_VERSION


def save_checkpoint(fabric, path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (modules and optimisers are turned into state dicts by Fabric).

    Refuses (:class:`TrainingError`) to write modules whose weights are not all finite, so neither
    ``latest`` nor ``best`` can ever hold a diverged model.
    """
    path = Path(path)
    check_finite_weights({k: v for k, v in state.items() if isinstance(v, torch.nn.Module)},
                         f"refusing to write {path}")
    tmp = temp_path(path)
    fabric.save(tmp, {"format": FORMAT, "format_version": FORMAT_VERSION, **state})
    if fabric.is_global_zero:
        commit(tmp, path)
    fabric.barrier()


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
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_to_dict(config),
                    "step": step, "contract": contract.to_record(),
                    **{name: m.state_dict() for name, m in models.items()}}, tmp)
    return path
