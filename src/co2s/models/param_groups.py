"""Optimiser parameter groups: a model knows which of its parameters train and at which rate."""

from __future__ import annotations

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
