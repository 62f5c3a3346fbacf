"""A Co2S student: a backbone (a pretrained ViT, or the random-init CNN), class guidance, and a
decoder (SPEC 2.1-2.3).

``extract`` returns every map the decoder uses (skips, then the cost-volume map), so UniMatch's
feature perturbation (``dropout2d`` on each of them) applies through the base class; the guidance
is never perturbed.
"""

from __future__ import annotations

import torch
from torch import nn

from co2s.models.param_groups import split_decay
from co2s.models.backbones.base import Backbone
from co2s.models.base import SegmentationModel


class Student(SegmentationModel):
    def __init__(self, backbone: Backbone, head: nn.Module, guidance: nn.Module | None,
                 num_classes: int, lr_mults: dict[str, float] | None = None, in_channels: int = 3,
                 mean=None, std=None) -> None:
        """``mean``/``std`` default to the backbone's RGB pretraining values (see
        :mod:`co2s.models.multispectral` for more bands)."""
        super().__init__(num_classes, in_channels, mean=backbone.mean if mean is None else mean,
                         std=backbone.std if std is None else std)
        self.backbone = backbone
        self.guidance = guidance
        self.head = head
        self.lr_mults = {"backbone": 0.01, "decoder": 10.0, "queries": 1.0, **(lr_mults or {})}

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x).as_list()

    def decode(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        *skips, last = features
        guidance = self.guidance() if self.guidance is not None else None
        return self.head(last, guidance, skips, size)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Backbone x0.01, decoder x10, queries x1 (the paper's code); no decay on norms/biases."""
        parts = {"backbone": self.backbone, "decoder": self.head}
        if self.guidance is not None:
            parts["queries"] = self.guidance
        groups = []
        for part, module in parts.items():
            for group in split_decay(module, lr * self.lr_mults[part], weight_decay):
                groups.append({**group, "name": f"{part}{'' if group['weight_decay'] else '/no_decay'}"})
        return groups

    def parameter_counts(self) -> dict[str, int]:
        def count(module, trainable=False):
            if module is None:
                return 0
            return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

        guidance_total = count(self.guidance)
        if self.guidance is not None:
            guidance_total += sum(b.numel() for b in self.guidance.buffers())
        return {
            "backbone_total": count(self.backbone), "backbone_trainable": count(self.backbone, True),
            "decoder_total": count(self.head), "decoder_trainable": count(self.head, True),
            "guidance_total": guidance_total, "guidance_trainable": count(self.guidance, True),
        }
