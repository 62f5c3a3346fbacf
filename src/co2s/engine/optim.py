"""Optimiser set-up shared by every method: AdamW, no decay on norms and biases, poly schedule."""

from __future__ import annotations

import torch
from torch import nn


def split_decay(module: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: weights with decay; biases and norms (1-d) without."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "base_lr": lr},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "base_lr": lr},
    ]
    return [g for g in groups if g["params"]]


def poly_factor(step: int, total: int, power: float = 0.9, warmup: int = 0) -> float:
    """Learning-rate factor at ``step`` (0-based): linear warm-up, then (1 - t/T)^power."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - step / max(1, total)) ** power


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
