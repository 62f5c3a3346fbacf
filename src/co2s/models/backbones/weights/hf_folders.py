"""``save_pretrained`` directories: a local folder, or the cache folder of a Hub id.

A directory written by ``save_pretrained`` (``config.json`` + ``model.safetensors``, sharded or
not, or ``pytorch_model.bin``) is loaded by ``transformers.CLIPModel`` / ``DINOv3ViTModel`` /
``Dinov2Model`` with ``local_files_only=True``; the model type in ``config.json`` must match the
requested kind (:data:`HF_MODELS`). A Hugging Face Hub id reaches this module as the cache folder
:func:`~.hub.hub_snapshot` downloaded it to (or found it in): transformers itself never goes to
the network here.

The reference of a saved directory is itself checked against the file: the loaded module, written
back in the file's layout with transformers' own reverse renaming (what ``save_pretrained`` does),
must equal every tensor of the file, and transformers must report no missing, unexpected or
mis-shaped key.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from transformers import CLIPModel, Dinov2Model, DINOv3ViTModel, PreTrainedModel

from co2s.errors import CheckpointError
from co2s.models.architecture_limits import check_hf_config
from co2s.models.backbones.weights.readers import read_state_dict
from co2s.models.backbones.weights.verify import difference, list_names, verify_weights

#: transformers class and accepted ``model_type`` values of ``config.json`` per kind
HF_MODELS: dict[str, tuple[type[PreTrainedModel], tuple[str, ...]]] = {
    "clip": (CLIPModel, ("clip",)),
    "dinov3": (DINOv3ViTModel, ("dinov3_vit",)),
    "dinov2": (Dinov2Model, ("dinov2",)),
}


def hf_config(kind: str, directory: Path, label: str) -> dict:
    """The ``config.json`` of a save_pretrained folder of a ``kind`` model, checked for its type."""
    model_cls, model_types = HF_MODELS[kind]
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{label}: no config.json in {directory}; not a save_pretrained directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        model_type = config.get("model_type")
    except (ValueError, OSError, AttributeError) as exc:
        raise CheckpointError(f"{label}: config.json is unreadable or not a JSON object: {exc}") from None
    if model_type not in model_types:
        raise CheckpointError(
            f"{label}: config.json has model_type {model_type!r}, but a {kind} backbone needs "
            f"{' or '.join(repr(t) for t in model_types)} ({model_cls.__name__})"
        )
    try:  # the sizes transformers will allocate, checked before it does
        check_hf_config(kind, config)
    except ValueError as exc:
        raise CheckpointError(f"{label}: config.json field {exc}") from None
    return config


def load_hf_directory(kind: str, directory: Path, label: str,
                      act: str | None = None) -> tuple[PreTrainedModel, dict[str, Tensor]]:
    """The model of a save_pretrained folder, checked tensor by tensor against its files;
    ``act`` replaces the activation its config names (``backbone.act``)."""
    model_cls, _ = HF_MODELS[kind]
    hf_config(kind, directory, label)
    file_tensors = _read_hf_weight_files(directory, label)
    extra = {}
    if act is not None:
        config = model_cls.config_class.from_pretrained(str(directory), local_files_only=True)
        for sub in (config.vision_config, config.text_config) if kind == "clip" else (config,):
            sub.hidden_act = act
        extra["config"] = config
    try:
        model, info = model_cls.from_pretrained(
            str(directory), local_files_only=True, output_loading_info=True, dtype=torch.float32, **extra
        )
    except Exception as exc:  # transformers raises many types; the user needs the message
        raise CheckpointError(f"{label}: transformers could not load {model_cls.__name__}: {exc}") from None
    problems = []
    for what in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = sorted(str(n) for n in info.get(what, ()) if not str(n).endswith("position_ids"))
        if names:
            problems.append(f"{what.replace('_', ' ')}: {list_names(names)}")
    if info.get("error_msgs"):
        problems.append("errors: " + "; ".join(map(str, info["error_msgs"])))
    if problems:
        raise CheckpointError(f"{label}: the weights do not fit {model_cls.__name__}: " + "; ".join(problems))
    model.eval()
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _check_against_file(model, reference, file_tensors, label)
    verify_weights(model, reference, label)
    return model, reference


def _read_hf_weight_files(directory: Path, label: str) -> dict[str, Tensor]:
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, OSError, TypeError) as exc:
                raise CheckpointError(f"{label}: unreadable {index_name}: {exc}") from None
            tensors: dict[str, Tensor] = {}
            for shard in shards:
                tensors.update(read_state_dict(directory / shard))
            return tensors
        if (directory / single).is_file():
            return read_state_dict(directory / single)
    raise CheckpointError(f"{label}: no model.safetensors or pytorch_model.bin in {directory}")


def _check_against_file(model: PreTrainedModel, reference: dict[str, Tensor], file_tensors: dict[str, Tensor],
                        label: str) -> None:
    """The loaded module, written back in the file's layout, must equal the file tensor by tensor."""
    from transformers.core_model_loading import revert_weight_conversion

    as_saved = revert_weight_conversion(model, dict(reference))
    missing = sorted(k for k in as_saved if k not in file_tensors)
    extra = sorted(k for k in file_tensors if k not in as_saved and not k.endswith("position_ids"))
    changed = []
    for key, value in as_saved.items():
        if key in file_tensors:
            stored = file_tensors[key]
            if tuple(stored.shape) != tuple(value.shape):
                changed.append(f"{key} (shape {tuple(stored.shape)} in the file, {tuple(value.shape)} loaded)")
            else:
                reason = difference(value, stored.to(value.dtype))
                if reason:
                    changed.append(f"{key} ({reason})")
    if missing or extra or changed:
        parts = []
        if missing:
            parts.append(f"not in the file (left at their initial values): {list_names(missing)}")
        if extra:
            parts.append(f"file tensors that were not loaded: {list_names(extra)}")
        if changed:
            parts.append(f"loaded values differ from the file: {list_names(changed)}")
        raise CheckpointError(f"{label}: loading did not reproduce the file; " + "; ".join(parts))
