"""Checkpoint files: one file holds model(s), optimiser(s), step, RNG states and the config.

Written through a temporary name and renamed, so a crash mid-write never corrupts ``latest``.
Read with ``weights_only=True``: loading a checkpoint never executes code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from co2s.errors import CheckpointError

FORMAT = "co2s-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(fabric, path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (modules and optimisers are turned into state dicts by Fabric)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fabric.save(tmp, {"format": FORMAT, "format_version": FORMAT_VERSION, **state})
    if fabric.is_global_zero:
        os.replace(tmp, path)
    fabric.barrier()


def write_model_checkpoint(path: str | os.PathLike, config, models: dict, step: int = 0) -> Path:
    """Atomically write a weights-and-config checkpoint of ``models`` (no optimiser or RNG state):
    enough for ``evaluate`` and ``predict``, for models built outside the trainer (benchmarks, tests)."""
    from co2s.config.loader import config_to_dict

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    architectures = {name: m.arch_config for name, m in models.items() if getattr(m, "arch_config", None)}
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_to_dict(config),
                "step": step, "architectures": architectures,
                **{name: m.state_dict() for name, m in models.items()}}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, unsafe pickle content...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a co2s checkpoint")
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
    elif config.model != stored.model or config.data.classes != stored.data.classes:
        raise CheckpointError(
            f"{path} was trained with a different model or class list than the given config"
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
