"""Fusing the two students at inference (SPEC 2.6): from their logits to class probabilities."""

from __future__ import annotations

import torch

from co2s.config.schema import FUSIONS
from co2s.errors import Co2sError


def prediction_choices(model_names: list[str]) -> list[str]:
    """What a set of trained models can predict: each model, and both fusions for two students."""
    return [*model_names, *(FUSIONS if len(model_names) == 2 else ())]


def resolve_prediction(requested: str | None, model_names: list[str], configured_fusion: str) -> str:
    """The prediction to make: ``requested``, else the configured fusion for two students, else the
    only model. The one place that decides it (validation, evaluate, predict, export)."""
    choices = prediction_choices(model_names)
    if requested is None:
        requested = configured_fusion if len(model_names) == 2 else model_names[0]
    if requested not in choices:
        raise Co2sError(f"unknown prediction {requested!r}; choose from {choices}")
    return requested


def fuse(logits_a: torch.Tensor, logits_b: torch.Tensor, mode: str) -> torch.Tensor:
    """Probabilities ``[B, K, H, W]``: ``mean`` averages the two softmax maps; ``confidence`` takes,
    per pixel, the distribution of the more confident student (ties averaged)."""
    pa, pb = logits_a.float().softmax(1), logits_b.float().softmax(1)
    if mode == "mean":
        return (pa + pb) / 2
    if mode == "confidence":
        ca, cb = pa.amax(1, keepdim=True), pb.amax(1, keepdim=True)
        return torch.where(ca > cb, pa, torch.where(cb > ca, pb, (pa + pb) / 2))
    raise ValueError(f"unknown fusion {mode!r}; expected one of {FUSIONS}")


def predictions(student_logits: dict[str, torch.Tensor], fusions: list[str]) -> dict[str, torch.Tensor]:
    """Class scores of every student and every fusion of the first two, keyed by name."""
    out = dict(student_logits)
    if len(student_logits) == 2:
        a, b = student_logits.values()
        for mode in fusions:
            out[mode] = fuse(a, b, mode)
    return out


def class_probabilities(student_logits: dict[str, torch.Tensor], prediction: str) -> torch.Tensor:
    """Probabilities ``[B, K, H, W]`` of ``prediction``: a model's name (softmax of its logits) or
    a fusion of the two students."""
    if prediction in FUSIONS:
        return predictions(student_logits, [prediction])[prediction]
    return student_logits[prediction].float().softmax(1)
