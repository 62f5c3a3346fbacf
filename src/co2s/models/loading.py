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

from co2s.config.limits import MAX_MODEL_RECORD_BYTES, MAX_MODELS
from co2s.config.loader import config_to_dict, parse_json
from co2s.errors import CheckpointError
from co2s.run_folder import RunFolder
from co2s.models.contract import InferenceContract, contract_for
from co2s.models.factory import build_models, models_from_contract
from co2s.models.weight_checks import (
    check_finite,
    check_fit,
    expected_tensors,
    group_by_model,
    safetensors_header,
    tensor_infos,
)

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
    if type(version) is not int or version < 1:
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
    folders of format 1 (before the contract) are read through their stored config, migrated.

    Both are untrusted files: every size they state is bounded (:mod:`co2s.config.limits`) and the
    weights must fit the models their contract describes, by name, shape and dtype, and be finite
    (:mod:`co2s.models.weight_checks`), before anything is allocated or loaded."""
    path = Path(source)
    if path.is_dir() and (path / MODEL_CONFIG).exists():
        return _load_model_folder(path)
    ckpt = read_checkpoint(path)
    where = str(path)
    states = {k: v for k, v in ckpt.items() if isinstance(v, dict) and k not in _CHECKPOINT_RECORDS}
    step, best, training = _step(ckpt.get("step", 0), where), ckpt.get("best"), ckpt.get("config")

    def stored(names: list[str]) -> dict[str, dict]:
        return {name: tensor_infos(states[name], where, name) for name in names if name in states}

    if ckpt.get("format_version", 1) >= 2:
        contract = InferenceContract.from_record(ckpt.get("contract"), where)
        check_fit(_expected_by_contract(contract, where), stored(contract.model_names), where,
                  _kinds(contract), "the checkpoint's contract")
        check_finite({name: states[name] for name in contract.model_names}, where)
        return TrainedModels(_load_states(models_from_contract(contract, where), states, where, contract),
                             contract, step, best, training)
    # format 1: the models are described by the training config stored with them
    config = _stored_config(ckpt.get("config"), where)
    models = _build_format_1(config, ckpt.get("architectures"), where)
    check_fit(expected_tensors(models), stored(list(models)), where, _kinds_of_config(config),
              "the checkpoint's config")
    check_finite({name: states[name] for name in models}, where)
    models = _load_states(models, states, where)
    return TrainedModels(models, contract_for(models, config), step, best, training)


def _load_model_folder(path: Path) -> TrainedModels:
    """A folder of :func:`write_model_folder`: its record checked, then the weights' header
    against the models its record describes, then the weights' values, then the models built."""
    config_file, weights = path / MODEL_CONFIG, path / MODEL_WEIGHTS
    where = str(config_file)
    record = _read_model_record(config_file)
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: is not a file (a {'directory' if weights.is_dir() else 'special file'})")
    header = safetensors_header(weights)
    step, training = record.get("step"), record.get("training_config")
    if record["format_version"] >= 2:
        contract = InferenceContract.from_record(record.get("contract"), where)
        stored = group_by_model(header, contract.model_names, str(weights), MODEL_CONFIG)
        check_fit(_expected_by_contract(contract, where), stored, str(weights), _kinds(contract), MODEL_CONFIG)
        states = _read_weights(weights, contract.model_names)
        models = _load_states(models_from_contract(contract, where), states, where, contract)
        return TrainedModels(models, contract, step, None, training, is_folder=True)
    config = _stored_config(record.get("config"), where)
    models = _build_format_1(config, record.get("architectures"), where)
    stored = group_by_model(header, record["models"], str(weights), MODEL_CONFIG)
    check_fit(expected_tensors(models), stored, str(weights), _kinds_of_config(config), MODEL_CONFIG)
    models = _load_states(models, _read_weights(weights, record["models"]), where)
    contract = contract_for(models, config, record.get("prediction"))
    return TrainedModels(models, contract, step, None, portable_config(config_to_dict(config)), is_folder=True)


def _expected_by_contract(contract: InferenceContract, where: str) -> dict:
    """The tensors the contract's models hold, from models built on the meta device: no memory,
    so a record that disagrees with its weights is refused before anything is allocated."""
    with torch.device("meta"):
        return expected_tensors(models_from_contract(contract, where))


def _kinds(contract: InferenceContract) -> dict[str, str]:
    return {name: "student" if record.get("kind") == "student" else "model"
            for name, record in contract.architectures.items()}


def _kinds_of_config(config) -> dict[str, str]:
    return {name: "student" if config.model.name == "students" else "model" for name in config.model_names}


def _stored_config(record: Any, where: str):
    from co2s.config.loader import validate

    return validate(record, f"config stored in {where}", stored=True)


def _build_format_1(config, architectures: Any, where: str) -> dict:
    """The models of a format-1 checkpoint or folder: its config and ``architectures`` records."""
    if architectures is not None and not isinstance(architectures, dict):
        raise CheckpointError(f"{where}: architectures must be a mapping of model names to records")
    try:
        return build_models(config, architectures)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{where}: cannot build the models from the stored architectures: {first}") from None


def _step(value: Any, where: str) -> int:
    if type(value) is not int or value < 0:
        raise CheckpointError(f"{where}: step must be a whole number of iterations, got {value!r:.40}")
    return value


def _load_states(models: dict, states: dict[str, dict], where: str,
                 contract: InferenceContract | None = None) -> dict:
    """Load each model's weights (checked by :func:`check_fit` and :func:`check_finite` first;
    eval mode); with a ``contract``, its normalisation must be the one the weights hold."""
    for name, model in models.items():
        try:
            model.load_state_dict(states[name])
        except RuntimeError as exc:  # check_fit refuses what would fail here; kept to one line anyway
            first = (str(exc).splitlines() or ["?"])[0]
            raise CheckpointError(f"{where}: weights of {name!r} do not fit the model: {first}") from None
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
MODEL_CARD = "README.md"  # the model card (co2s.models.card)


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
                       step: int | None = None, training_config: dict | None = None,
                       evaluations: dict | None = None, onnx: dict | None = None) -> Path:
    """The one writer of model folders: ``model.safetensors`` (weights only, no optimiser or RNG
    state), ``co2s_model.json`` (the inference contract, the step trained and, as an opaque
    record without absolute paths, the training config), the model card ``README.md``
    (:func:`co2s.models.card.model_card`, with ``evaluations`` and what ``onnx`` holds) and, for
    pretrained weights, ``NOTICE.md``. Every file is written atomically; the card last."""
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
    from co2s.models.card import model_card

    write_text(directory / MODEL_CARD, model_card(contract, step=step, training_config=record["training_config"],
                                                  evaluations=evaluations, onnx=onnx))
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


#: the fields of co2s_model.json of format 2 (:func:`write_model_folder`)
_RECORD_KEYS = {"format", "format_version", "co2s_version", "contract", "step", "training_config"}


def _read_model_record(path: Path) -> dict:
    """A folder's ``co2s_model.json``, its size bounded and the fields read here checked for type."""
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    size = path.stat().st_size
    if size > MAX_MODEL_RECORD_BYTES:
        raise CheckpointError(f"{path}: {size} bytes, more than a model config holds (at most "
                              f"{MAX_MODEL_RECORD_BYTES}; docs/models.md#limits-on-what-co2s-reads)")
    try:
        record = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: unreadable model config: {first}") from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a co2s model config")
    version = record.get("format_version", 1)
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r:.40}")
    if version > MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path.parent} was written by a newer co2s (format {version}); upgrade co2s")
    unknown = sorted(set(record) - _RECORD_KEYS) if version >= 2 else []
    if unknown:  # format 1 folders hold more (classes, palette, ... beside the config), read from the config
        raise CheckpointError(f"{path}: unknown field(s) {unknown!r:.80} for format {version}")
    if record.get("step") is not None:
        _step(record["step"], str(path))
    if not isinstance(record.get("training_config"), (dict, type(None))):
        raise CheckpointError(f"{path}: training_config must be a mapping")
    if version == 1:
        names = record.get("models", [])
        if (not isinstance(names, list) or not 1 <= len(names) <= MAX_MODELS
                or not all(isinstance(n, str) and n.isidentifier() for n in names)):
            raise CheckpointError(f"{path}: models must list 1 to {MAX_MODELS} model names, got {names!r:.40}")
        if not isinstance(record.get("prediction"), (str, type(None))):
            raise CheckpointError(f"{path}: prediction must be a model's name or a fusion")
    return {**record, "format_version": version, **({"models": names} if version == 1 else {})}


def _read_weights(path: Path, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors of a folder's weights (their header already checked) by model, all finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: unreadable (truncated or corrupt?): {first}") from None
    states: dict[str, dict] = {name: {} for name in names}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        states[name][rest] = value
    check_finite(states, str(path))
    return states
