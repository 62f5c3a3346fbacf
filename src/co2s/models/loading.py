"""Reading trained models back: the training checkpoint format (what ``co2s train`` writes) and the
models it holds, rebuilt for inference. Read with ``torch.load(weights_only=True)``: loading a
checkpoint never executes code from the file, and every failure says in words what is wrong.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from co2s.config.compare import config_differences
from co2s.config.loader import config_to_dict, validate
from co2s.errors import CheckpointError
from co2s.models.factory import build_models

FORMAT = "co2s-checkpoint"
FORMAT_VERSION = 1


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


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
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


def load_trained_models(source: str | os.PathLike, config=None) -> tuple[dict, Any, dict]:
    """Rebuild trained model(s) for inference (eval mode, CPU) from a training checkpoint or an
    exported model folder (:func:`write_model_folder`).

    Returns ``(models by name, config, info)``; ``info`` has the ``step`` trained, the ``best``
    validation record (checkpoints) and the ``prediction`` an export was made for. ``config``
    defaults to the stored one; a given one must describe the same model and classes, or the
    weights would be silently misread. ViT students are rebuilt from the architectures recorded
    with the weights, so the pretrained files they started from are not needed.
    """
    path = Path(source)
    if path.is_dir() and (path / MODEL_CONFIG).is_file():
        stored_dict, architectures, states, info = _read_model_folder(path)
    else:
        ckpt = read_checkpoint(path)
        stored_dict, architectures = ckpt["config"], ckpt.get("architectures")
        states = {k: v for k, v in ckpt.items() if isinstance(v, dict) and k not in _CHECKPOINT_RECORDS}
        info = {"step": int(ckpt.get("step", 0)), "best": ckpt.get("best"), "prediction": None}
    stored = validate(stored_dict, f"config stored in {path}")
    if config is None:
        config = stored
    else:
        changes = config_differences(config_to_dict(stored)["model"], config_to_dict(config)["model"], "model.")
        if changes or config.data.classes != stored.data.classes:
            shown = "; ".join(changes[:5]) or f"classes {stored.data.classes} -> {config.data.classes}"
            raise CheckpointError(
                f"{path} was trained with a different model or class list than the given config ({shown})"
            )
    models = build_models(config, architectures)
    for name, model in models.items():
        if name not in states:
            raise CheckpointError(f"{path}: holds no weights for model {name!r} (it has {sorted(states)})")
        try:
            model.load_state_dict(states[name])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights of {name!r} do not fit the model: {exc}") from None
        model.eval()
    return models, config, info


#: checkpoint entries that are not model weights
_CHECKPOINT_RECORDS = {"config", "rng", "architectures", "best", "best_per_prediction"}

# --------------------------------------------------------------------------------------------
# exported model folders: weights only (safetensors) and a small JSON config

MODEL_FORMAT = "co2s-model"
MODEL_FORMAT_VERSION = 1
MODEL_CONFIG = "co2s_model.json"
MODEL_WEIGHTS = "model.safetensors"


def write_model_folder(directory: str | os.PathLike, models: dict, config, extra: dict | None = None) -> Path:
    """Write ``models`` as a folder to share: ``model.safetensors`` (weights only, no optimiser or
    RNG state) and ``co2s_model.json`` (classes, palette, bands, scaling, tiling, architectures,
    prediction mode, and the config it was trained with). Both files are written atomically."""
    import json

    from safetensors.torch import save_file

    from co2s import __version__
    from co2s.atomic import atomic_path, write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, model in models.items():
        module = getattr(model, "module", model)  # unwrap Fabric/DDP wrappers
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous().clone()
    with atomic_path(directory / MODEL_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": MODEL_FORMAT, "format_version": str(MODEL_FORMAT_VERSION)})
        os.chmod(tmp, 0o644)  # safetensors creates owner-only files; a folder to share must be readable
    first = getattr(next(iter(models.values())), "module", next(iter(models.values())))
    data = config.data
    record = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "co2s_version": __version__,
        "models": list(models), "classes": list(data.classes), "palette": data.palette,
        "bands": data.bands, "scale": data.scale, "in_channels": first.in_channels,
        "architectures": {n: getattr(getattr(m, "module", m), "arch_config", None) for n, m in models.items()
                          if getattr(getattr(m, "module", m), "arch_config", None)},
        **(extra or {}), "config": config_to_dict(config),
    }
    write_text(directory / MODEL_CONFIG, json.dumps(record, indent=2) + "\n")
    return directory


def _read_model_folder(path: Path) -> tuple[dict, dict | None, dict[str, dict], dict]:
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        record = json.loads((path / MODEL_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / MODEL_CONFIG}: unreadable model config: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path / MODEL_CONFIG} is not a co2s model config")
    if record.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer co2s (format {record['format_version']})")
    weights = path / MODEL_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: {MODEL_WEIGHTS} is missing")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: unreadable (truncated or corrupt?): {exc}") from None
    states: dict[str, dict] = {name: {} for name in record.get("models", [])}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        if name not in states:
            raise CheckpointError(f"{weights}: tensor {key!r} belongs to no model of {MODEL_CONFIG}")
        states[name][rest] = value
    info = {"step": record.get("step"), "best": None, "prediction": record.get("prediction")}
    return record["config"], record.get("architectures"), states, info
