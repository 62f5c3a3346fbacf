"""Losses of the Co2S method: UniMatch consistency, confidence arbitration and stability.

Shapes: logits ``[B, K, H, W]``, labels ``[B, H, W]`` int64, confidences ``[B, H, W]`` float,
boolean masks ``[B, H, W]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from co2s.config.schema import LossWeightsConfig

__all__ = [
    "arbitration_masks",
    "masked_cross_entropy",
    "pseudo_labels",
    "stability_loss",
    "stability_weight",
    "supervised_cross_entropy",
    "teaching_shares",
    "unimatch_loss",
]


def pseudo_labels(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(labels, confidence)``: argmax and max of the softmax over classes (no gradient)."""
    # float32 so the confidences compared with tau do not depend on the autocast dtype.
    probs = logits.detach().float().softmax(dim=1)
    confidence, labels = probs.max(dim=1)
    return labels, confidence


def masked_cross_entropy(logits: Tensor, labels: Tensor, confidence: Tensor, valid: Tensor, tau: float) -> Tensor:
    """UniMatch unsupervised loss: CE on confident valid pixels, divided by the number of valid pixels."""
    valid = valid.bool()
    # Invalid pixels may hold 255 (or anything); CE would fail on an out-of-range index.
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(logits, safe_labels, reduction="none")
    keep = ((confidence >= tau) & valid).to(ce.dtype)
    # Dividing by the valid count (not the confident count) is what UniMatch does: the loss
    # shrinks when few pixels pass the threshold instead of being re-inflated. No valid pixel: 0
    # (this and the losses below branch on no tensor value: no host sync inside a training step).
    return (ce * keep).sum() / valid.sum().clamp(min=1)


def supervised_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean CE over non-ignored pixels; 0 (with a zero gradient) when every pixel is ignored."""
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


def arbitration_masks(
    conf_clip: Tensor, conf_dino: Tensor, tau: float, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Return ``(clip_learns, dino_learns)``: where each student takes the other's pseudo-labels.

    The more confident of the two confident students teaches; on a tie both teach each other;
    a pixel where neither is confident teaches nobody.
    """
    high_c = conf_clip >= tau
    high_d = conf_dino >= tau
    both = high_c & high_d
    clip_learns = (high_d & ~high_c) | (both & (conf_dino >= conf_clip))
    dino_learns = (high_c & ~high_d) | (both & (conf_clip >= conf_dino))
    if valid is not None:
        valid = valid.bool()
        clip_learns = clip_learns & valid
        dino_learns = dino_learns & valid
    return clip_learns, dino_learns


def stability_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, detach_student: bool = False) -> Tensor:
    """Mean over masked pixels and classes of ``(softmax(student) - softmax(teacher))**2``.

    The teacher is always detached. ``detach_student=True`` reproduces the authors' released
    code, where this term contributes no gradient at all.
    """
    mask = mask.bool()
    student = student_logits.detach() if detach_student else student_logits
    p_s = student.float().softmax(dim=1)
    p_t = teacher_logits.detach().float().softmax(dim=1)
    per_pixel = (p_s - p_t).pow(2).mean(dim=1)
    return (per_pixel * mask.to(per_pixel.dtype)).sum() / mask.sum().clamp(min=1)


def stability_weight(step: int, total_steps: int, max_weight: float, ramp_fraction: float) -> float:
    """lambda(t): cosine ramp from 0 to ``max_weight`` over the first ``ramp_fraction`` of training."""
    ramp_steps = ramp_fraction * total_steps
    if ramp_steps <= 0 or step >= ramp_steps:
        return float(max_weight)
    return float(max_weight * 0.5 * (1.0 - math.cos(math.pi * step / ramp_steps)))


def unimatch_loss(sup: Tensor, s1: Tensor, s2: Tensor, fp: Tensor, weights: LossWeightsConfig) -> Tensor:
    """Weighted UniMatch total of one student (the caller adds ``lambda(t) * L_sta``)."""
    w = weights
    return w.scale * (w.sup * sup + w.s1 * s1 + w.s2 * s2 + w.fp * fp)


def teaching_shares(clip_learns: Tensor, dino_learns: Tensor, valid: Tensor) -> dict[str, float]:
    """Fractions of valid pixels where DINO teaches, CLIP teaches, or nobody teaches (for logging)."""
    valid = valid.bool()
    n = int(valid.sum())
    if n == 0:
        return {"dino_teaches": 0.0, "clip_teaches": 0.0, "no_teaching": 0.0}
    clip_learns = clip_learns.bool() & valid
    dino_learns = dino_learns.bool() & valid
    neither = valid & ~clip_learns & ~dino_learns
    return {
        "dino_teaches": int(clip_learns.sum()) / n,
        "clip_teaches": int(dino_learns.sum()) / n,
        "no_teaching": int(neither.sum()) / n,
    }
