"""Proof that a module holds the pretrained weights, and error messages that name every problem.

Every loader returns the model and a *reference* state dict in the module's own key names.
:func:`verify_weights` compares a module with that reference exactly (shape, dtype, values, NaNs
in the same places) and raises :class:`~co2s.errors.CheckpointError` naming every missing,
unexpected or changed tensor; call it again after building the segmentor, so that a later
re-initialisation of pretrained weights (one defect of the original authors' code) cannot go
unnoticed. :func:`reference_subset` re-keys a reference for a wrapper module.

The helpers below are shared by the loaders and converters: :func:`difference` (why two tensors
are not the same), :func:`check_keys_and_shapes` (converted tensors vs. a freshly built model),
:func:`raise_if_any` and :func:`list_names` (one error listing every problem, shortened), and
:func:`architecture_hint` (a guess at what a state dict that does not fit is).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from co2s.errors import CheckpointError


def verify_weights(module: nn.Module, reference: dict[str, Tensor], source: str, prefix: str = "") -> None:
    """Check that ``module`` holds exactly the ``reference`` tensors.

    Reference key ``k`` is looked up as ``prefix + k`` among the module's state-dict entries (and
    buffers); module entries under ``prefix`` that the reference lacks count as unexpected, entries
    outside ``prefix`` are ignored. Values are compared exactly (same shape, dtype and values,
    NaNs in the same places). Raises :class:`CheckpointError` naming ``source`` and every missing,
    unexpected and changed tensor, e.g. after a re-initialisation of pretrained weights.
    """
    state = module.state_dict()
    buffers = dict(module.named_buffers())
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, changed = [], []
    for key, ref in reference.items():
        value = own.get(key, buffers.get(prefix + key))
        if value is None:
            missing.append(prefix + key)
            continue
        reason = difference(value, ref)
        if reason:
            changed.append(f"{prefix + key} ({reason})")
    unexpected = [prefix + k for k in own if k not in reference]
    raise_if_any(f"{source}: the model does not hold the pretrained weights", [
        (changed, f"{len(changed)} tensor(s) differ from the checkpoint"),
        (missing, f"{len(missing)} checkpoint tensor(s) missing from the model"),
        (unexpected, f"{len(unexpected)} model tensor(s) not in the checkpoint"),
    ])


def reference_subset(reference: dict[str, Tensor], prefix: str, new_prefix: str = "") -> dict[str, Tensor]:
    """The entries of ``reference`` under ``prefix``, re-keyed with ``new_prefix`` instead, e.g.
    ``reference_subset(ref, "vision_model.", "vision.vision_model.")`` for a wrapper module."""
    return {new_prefix + k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}


def difference(value: Tensor, ref: Tensor) -> str:
    value = value.detach()
    if tuple(value.shape) != tuple(ref.shape):
        return f"shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
    if value.dtype != ref.dtype:
        return f"dtype {value.dtype}, expected {ref.dtype}"
    value = value.to("cpu")
    ref = ref.detach().to("cpu")
    if torch.equal(value, ref):
        return ""
    if value.is_floating_point() or value.is_complex():
        nan_v, nan_r = torch.isnan(value), torch.isnan(ref)
        if torch.equal(nan_v, nan_r) and torch.equal(value[~nan_v], ref[~nan_r]):
            return ""
        finite = ~(nan_v | nan_r)
        if finite.any():
            delta = (value[finite].double() - ref[finite].double()).abs().max().item()
            return f"values differ, max |difference| {delta:.3g}"
    return "values differ"


def raise_if_any(headline: str, problems: list[tuple[list[str], str]]) -> None:
    """One CheckpointError listing every non-empty group of problem names, or nothing."""
    parts = [f"{label}: {list_names(items)}" for items, label in problems if items]
    if parts:
        raise CheckpointError(f"{headline}; " + "; ".join(parts))


def list_names(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def check_keys_and_shapes(expected: dict[str, Tensor], converted: dict[str, Tensor], source: str) -> None:
    """Converted state dict vs. a freshly built model: same names and shapes, or a named error."""
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    shapes = [
        f"{k}: {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    raise_if_any(f"{source}: converted weights do not fit the model", [
        (missing, "no value for model tensors"),
        (unexpected, "no model tensor for"),
        (shapes, "shape mismatch"),
    ])


def architecture_hint(keys: set[str]) -> str:
    """A guess at what a state dict that does not fit is, for the error message."""
    if "pos_embed" in keys or ("register_tokens" in keys and "rope_embed.periods" not in keys):
        return ("it looks like a DINOv2 checkpoint (learned position embedding 'pos_embed', no RoPE "
                "'rope_embed.periods'); load DINOv2 as kind 'dinov2' from a save_pretrained directory")
    if "rope_embed.periods" in keys or "storage_tokens" in keys:
        return "it looks like a DINOv3 checkpoint (load it as kind 'dinov3')"
    if "visual.conv1.weight" in keys or "token_embedding.weight" in keys:
        return "it looks like an OpenAI CLIP checkpoint"
    if any(k.startswith(("embeddings.", "model.layer.", "layer.", "vision_model.", "encoder.layer.")) for k in keys):
        return ("it uses transformers key names; pass the save_pretrained directory (with config.json) "
                "instead of the weight file")
    if any(re.match(r"^(layer[1-4]\.|bn1\.|fc\.|downsample_layers\.|stages\.|stem\.)", k) for k in keys):
        return "it looks like a convolutional network (ResNet/ConvNeXt), not a ViT"
    return "keys present: " + list_names(sorted(keys), 8)
