"""Reading trained models back: the training checkpoint format (what ``co2s train`` writes), exported
model folders, and the models they hold rebuilt for inference from their inference contract
(:mod:`co2s.models.contract`). Read with ``torch.load(weights_only=True)``: loading a
checkpoint never executes code from the file, and every failure says in words what is wrong.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from co2s.config.loader import config_to_dict
from co2s.errors import CheckpointError
from co2s.run_folder import RunFolder
from co2s.models.contract import InferenceContract, contract_for
from co2s.models.factory import build_models, models_from_contract

FORMAT = "co2s-checkpoint"
#: 2: the inference contract beside the training config (1: the config and ``architectures`` only)
FORMAT_VERSION = 2


def _other_checkpoints(path: Path) -> str:
    """A hint naming the run's other checkpoint when it exists (``best`` for ``latest`` and back)."""
    folder = RunFolder(path.parent)
    others = [p for p in (folder.best, folder.latest)
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
    version = ckpt.get("format_version", 1)
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer co2s (format {version}); upgrade co2s")
    return ckpt


@dataclass
class TrainedModels:
    """Trained models read back for inference (eval mode, CPU) and what they came with."""

    models: dict[str, torch.nn.Module]
    contract: InferenceContract
    step: int | None = None  # iterations trained
    best: dict | None = None  # the best validation record (checkpoints)
    #: the training config as stored (a plain record, never validated here): checkpoints hold the
    #: full config (resume, ``co2s evaluate`` without a config); exported folders a portable copy
    training_config: dict | None = None
    is_folder: bool = False


def load_trained_models(source: str | os.PathLike) -> TrainedModels:
    """Rebuild the trained model(s) of a training checkpoint or an exported model folder
    (:func:`write_model_folder`) from its inference contract alone: the training config is not
    read, and the pretrained files the models started from are not needed. Checkpoints and
    folders of format 1 (before the contract) are read through their stored config, migrated."""
    path = Path(source)
    if path.is_dir() and (path / MODEL_CONFIG).is_file():
        record, states = _read_model_folder(path)
        where = str(path / MODEL_CONFIG)
        step, best, training = record.get("step"), None, record.get("training_config")
        if record.get("format_version", 1) >= 2:
            contract = InferenceContract.from_record(record.get("contract"), where)
            return TrainedModels(_load_states(models_from_contract(contract, where), states, where, contract),
                                 contract, step, best, training, is_folder=True)
        config_record, architectures, prediction = record.get("config"), record.get("architectures"), record.get("prediction")
    else:
        ckpt = read_checkpoint(path)
        where = str(path)
        states = {k: v for k, v in ckpt.items() if isinstance(v, dict) and k not in _CHECKPOINT_RECORDS}
        step, best, training = int(ckpt.get("step", 0)), ckpt.get("best"), ckpt.get("config")
        if ckpt.get("format_version", 1) >= 2:
            contract = InferenceContract.from_record(ckpt.get("contract"), where)
            return TrainedModels(_load_states(models_from_contract(contract, where), states, where, contract),
                                 contract, step, best, training)
        config_record, architectures, prediction = ckpt.get("config"), ckpt.get("architectures"), None
    # format 1: the models are described by the training config stored with them
    from co2s.config.loader import validate

    config = validate(config_record, f"config stored in {where}", stored=True)
    models = _load_states(build_models(config, architectures), states, where)
    contract = contract_for(models, config, prediction)
    if path.is_dir():
        training = portable_config(config_to_dict(config))
    return TrainedModels(models, contract, step, best, training, is_folder=path.is_dir())


def _load_states(models: dict, states: dict[str, dict], where: str,
                 contract: InferenceContract | None = None) -> dict:
    """Load each model's weights (eval mode); with a ``contract``, its normalisation must be the
    one the weights hold."""
    for name, model in models.items():
        if name not in states:
            raise CheckpointError(f"{where}: holds no weights for model {name!r} (it has {sorted(states)})")
        try:
            model.load_state_dict(states[name])
        except RuntimeError as exc:
            raise CheckpointError(f"{where}: weights of {name!r} do not fit the model: {exc}") from None
        model.eval()
        if contract is not None:
            norm = contract.normalisation[name]
            held = (model.mean.flatten().tolist(), model.std.flatten().tolist())
            if not (torch.allclose(torch.tensor(held[0]), torch.tensor(norm.mean))
                    and torch.allclose(torch.tensor(held[1]), torch.tensor(norm.std))):
                raise CheckpointError(f"{where}: normalisation.{name} of the contract (mean {norm.mean}, std "
                                      f"{norm.std}) disagrees with the weights (mean {held[0]}, std {held[1]})")
    return models


#: checkpoint entries that are not model weights
_CHECKPOINT_RECORDS = {"config", "rng", "architectures", "best", "best_per_prediction", "contract"}

# --------------------------------------------------------------------------------------------
# exported model folders: weights only (safetensors) and a small JSON record around the contract

MODEL_FORMAT = "co2s-model"
MODEL_FORMAT_VERSION = 2
MODEL_CONFIG = "co2s_model.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_NOTICE = "NOTICE.md"  # the pretrained weights' families, licences and required notices


def portable_config(record: Any) -> Any:
    """A training config record without absolute paths (each becomes its file name), so a shared
    folder does not carry its author's directories; kept for the record, never read back."""
    if isinstance(record, dict):
        return {k: portable_config(v) for k, v in record.items()}
    if isinstance(record, list):
        return [portable_config(v) for v in record]
    if isinstance(record, str) and (os.path.isabs(record) or record.startswith("~")):
        return Path(record).name
    return record


def write_model_folder(directory: str | os.PathLike, models: dict, contract: InferenceContract,
                       step: int | None = None, training_config: dict | None = None) -> Path:
    """The one writer of model folders: ``model.safetensors`` (weights only, no optimiser or RNG
    state) and ``co2s_model.json`` (the inference contract, the step trained and, as an opaque
    record without absolute paths, the training config). Both files are written atomically."""
    import json

    from safetensors.torch import save_file

    from co2s.atomic import atomic_path, write_text
    from co2s.version import __version__

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
    record = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "co2s_version": __version__,
        "contract": contract.to_record(), "step": step,
        "training_config": portable_config(training_config) if training_config is not None else None,
    }
    write_text(directory / MODEL_CONFIG, json.dumps(record, indent=2) + "\n")
    notice = weights_notice(contract)
    if notice:
        write_text(directory / MODEL_NOTICE, notice)
    return directory


def weights_notice(contract: InferenceContract) -> str:
    """What a shared model folder must say of the pretrained weights inside it (the DINOv3 licence
    requires its notice on redistribution): family, licence, citation, notice per model; empty
    when no model started from pretrained weights."""
    lines = []
    for name, architecture in contract.architectures.items():
        record = (architecture.get("backbone") or {}).get("weights") or {}
        if record.get("family"):
            lines += [f"## {name}: {record['title']}", "", f"- licence: {record['licence']}",
                      f"- cite: {record['citation']}"]
            if record.get("notice"):
                lines.append(f"- notice: {record['notice']}")
            lines.append("")
    if not lines:
        return ""
    return "# Pretrained weights in this model\n\nThe weights were fine-tuned from:\n\n" + "\n".join(lines)


def _read_model_folder(path: Path) -> tuple[dict, dict[str, dict]]:
    """The folder's JSON record and its weights by model name."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        record = json.loads((path / MODEL_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / MODEL_CONFIG}: unreadable model config: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path / MODEL_CONFIG} is not a co2s model config")
    version = record.get("format_version", 1)
    if not isinstance(version, int):
        raise CheckpointError(f"{path / MODEL_CONFIG}: format_version must be an integer, got {version!r}")
    if version > MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer co2s (format {version}); upgrade co2s")
    weights = path / MODEL_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: {MODEL_WEIGHTS} is missing")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: unreadable (truncated or corrupt?): {exc}") from None
    if version >= 2:
        contract = record.get("contract")
        names = list(contract.get("architectures", {})) if isinstance(contract, dict) else []
    else:
        names = record.get("models", [])
    if not isinstance(names, list):
        raise CheckpointError(f"{path / MODEL_CONFIG}: the model names are not a list")
    states: dict[str, dict] = {name: {} for name in names}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        if name not in states:
            raise CheckpointError(f"{weights}: tensor {key!r} belongs to no model of {MODEL_CONFIG}")
        states[name][rest] = value
    return record, states
