"""Checkpoint files: one file holds model(s), optimiser(s), step, RNG states and the config.

Written through a temporary name, fsynced and renamed, so a crash or power loss mid-write never
corrupts ``latest``; weights that are not finite are never written. Read with ``weights_only=True``:
loading a checkpoint never executes code from the file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from co2s.atomic import atomic_path, commit, temp_path
from co2s.errors import CheckpointError, TrainingError

FORMAT = "co2s-checkpoint"
FORMAT_VERSION = 1


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
    architectures = {name: m.arch_config for name, m in models.items() if getattr(m, "arch_config", None)}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_to_dict(config),
                    "step": step, "architectures": architectures,
                    **{name: m.state_dict() for name, m in models.items()}}, tmp)
    return path


def _other_checkpoints(path: Path) -> str:
    """A hint naming the run's other checkpoint when it exists (``best`` for ``latest`` and back)."""
    others = [p for p in (path.with_name("best.ckpt"), path.with_name("latest.ckpt"))
              if p.is_file() and p.resolve() != path.resolve()]
    return f"; {others[0]} exists and may be intact" if others else ""


def _unreadable(path: Path) -> str:
    """Why ``torch.load`` cannot read ``path``, in words (never torch's advice to unpickle anyway)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        return "is truncated (the zip archive ends early: interrupted write or full disk?)"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError):
            bad = "?"
        if bad:
            return f"is corrupt (damaged record {bad} in the archive)"
    if head[:2] != b"PK" and head[:1] != b"\x80":  # zip (torch >= 1.6) or legacy pickle
        return "is not a PyTorch checkpoint file"
    return "cannot be read (truncated or corrupt)"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a co2s checkpoint; every failure is a :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (e.g. {path / 'best.ckpt'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}{_other_checkpoints(path)}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes: interrupted write or full disk?)"
                              f"{_other_checkpoints(path)}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path} is not a co2s checkpoint: it holds Python objects besides tensors, which "
                f"co2s refuses to load because unpickling them can run code{_other_checkpoints(path)}"
            ) from None
        raise CheckpointError(f"checkpoint {path} {_unreadable(path)}{_other_checkpoints(path)}") from None
    except Exception:  # zip reader errors, EOF, not a torch file...
        raise CheckpointError(f"checkpoint {path} {_unreadable(path)}{_other_checkpoints(path)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = f"keys {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is a PyTorch file but not a co2s checkpoint ({what}); "
                              "co2s reads the latest.ckpt / best.ckpt of a `co2s train` run")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer co2s (format {ckpt['format_version']})")
    return ckpt


def load_models_from_checkpoint(path: str | os.PathLike, config=None):
    """Rebuild the trained model(s) of a checkpoint for inference (eval mode, CPU).

    Returns ``(models by name, config, checkpoint)``. ``config`` defaults to the one stored in the
    checkpoint; a given one must describe the same model and classes, or the weights would be
    silently misread. ViT students are rebuilt from the architecture recorded in the checkpoint,
    so the pretrained files they started from are not needed.
    """
    from co2s.config.loader import validate
    from co2s.models.factory import build_models

    ckpt = load_checkpoint(path)
    stored = validate(ckpt["config"], f"config stored in {path}")
    if config is None:
        config = stored
    else:
        from co2s.config.loader import config_to_dict
        from co2s.engine.run_dir import config_differences

        changes = config_differences(config_to_dict(stored)["model"], config_to_dict(config)["model"], "model.")
        if changes or config.data.classes != stored.data.classes:
            shown = "; ".join(changes[:5]) or f"classes {stored.data.classes} -> {config.data.classes}"
            raise CheckpointError(
                f"{path} was trained with a different model or class list than the given config ({shown})"
            )
    config = config.model_copy(update={"train": config.train.model_copy(update={"method": stored.train.method})})
    models = build_models(config, ckpt.get("architectures"))
    for name, model in models.items():
        try:
            model.load_state_dict(ckpt[name])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: weights of {name!r} do not fit the model: {exc}") from None
        model.eval()
    return models, config, ckpt
