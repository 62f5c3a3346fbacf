"""Fusing the two students at inference (SPEC 2.6): from their logits to class probabilities."""

from __future__ import annotations

import torch

from co2s.config.schema import FUSIONS


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
