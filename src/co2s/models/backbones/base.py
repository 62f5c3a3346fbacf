"""What a student backbone (a ViT, or the random-init CNN) provides to the decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


#: names of the attention projections, per backbone family, for attention-only tuning
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "query", "key", "value",
                   "attention.output.dense")


@dataclass
class BackboneFeatures:
    """Two skip maps of earlier blocks and the map the cost volume is built from, all ``[B, C, h, w]``."""

    skips: list[torch.Tensor]
    last: torch.Tensor

    def as_list(self) -> list[torch.Tensor]:
        return [*self.skips, self.last]


class Backbone(nn.Module):
    """A student backbone: skip maps and the cost-volume map of an image, ``blocks()`` in order for
    last-N tuning, and the RGB ``mean``/``std`` its inputs are normalised with (a ViT's come from
    its weight family, set when it is built: :mod:`co2s.models.families`)."""

    feature_dim: int  # channels of ``last``
    skip_dims: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def blocks(self) -> list[nn.Module]:
        """The blocks, input side first (for last-N tuning): transformer blocks of a ViT, the stem
        and residual blocks of the CNN."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        raise NotImplementedError

    def set_tuning(self, policy: str, last_n: int = 0) -> None:
        """Which backbone weights train: ``frozen``, ``attention`` (q, k, v and output
        projections of every block; the paper's policy), ``last_n`` blocks, or ``full``."""
        for p in self.parameters():
            p.requires_grad = policy == "full"
        if policy == "attention":
            for block in self.blocks():
                for name, module in block.named_modules():
                    if isinstance(module, nn.Linear) and any(name.endswith(a) for a in ATTENTION_NAMES):
                        for p in module.parameters():
                            p.requires_grad = True
        elif policy == "last_n":
            for block in self.blocks()[len(self.blocks()) - last_n :] if last_n else []:
                for p in block.parameters():
                    p.requires_grad = True
        elif policy not in {"frozen", "full"}:
            raise ValueError(f"unknown tuning policy {policy!r}")
        self.freeze_unused()

    def freeze_unused(self) -> None:
        """Parameters the dense features never use get no gradient; keep them frozen (DDP-safe)."""


class ViTBackbone(Backbone):
    """A pretrained ViT exposing patch maps of chosen blocks (see subclasses)."""

    patch_size: int
    checkpointing: bool = False  # backbone.checkpointing

    def run_block(self, block: nn.Module, *args, **kwargs):
        """``block(*args, **kwargs)``; with activation checkpointing, in a training forward that
        builds a graph, the block's activations are recomputed in the backward pass instead of kept
        (memory per block falls to its input; the forward runs twice)."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)


def to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Patch tokens ``[B, h*w, C]`` to a map ``[B, C, h, w]``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], height, width)
