"""Learning-rate schedule shared by every method: poly decay with optional linear warm-up (the
parameter groups themselves come from the models: ``co2s.models.param_groups``)."""

from __future__ import annotations

import torch


def poly_factor(step: int, total: int, power: float = 0.9, warmup: int = 0) -> float:
    """Learning-rate factor at ``step`` (0-based): linear warm-up, then (1 - t/T)^power."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - step / max(1, total)) ** power


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
