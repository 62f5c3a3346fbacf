"""DeepLabV3+ decoder for ViT features: the "without guidance" ablation head.

Follows the structure of the authors' ``DLV3PHead`` for ViT students: ASPP on the last feature
map, a low-level path from one earlier block's patch map (1x1 conv to 48 channels), the ASPP output
resized to the low-level map, concatenation, two 3x3 conv (256) + norm + ReLU and a 1x1 classifier,
then a bilinear resize to the output size. ViT skips share the feature's 1/16 resolution, so with
the default ``fuse_scale=1`` the fusion happens at that resolution, as in the reference;
``fuse_scale=4`` resizes both paths to 4x the feature size first (a decoder at 1/4 resolution, as
DeepLabV3+ on a CNN); ``fuse_scale=None`` fuses at the low-level skip's own size (the CNN student:
its skip has 4x the resolution of its last map).

Differences from the reference (the project's spec wins): GroupNorm instead of BatchNorm, ASPP at
256 channels with dropout 0.1 (the reference's UniMatch ASPP uses ``in_channels // 8`` channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ASPP, conv_gn_relu


class DeepLabV3PlusHead(nn.Module):
    """Feature map + skip maps -> logits ``[B, num_classes, H, W]``; guidance is ignored.

    ``skip_index`` picks the low-level skip from ``skips`` (shallow to deep); the default 0 is the
    first (shallowest) one.
    """

    #: tensors with one row per class (co2s.models.transfer: rows follow class names)
    class_rows = ("classifier.weight", "classifier.bias")

    uses_guidance = False

    def __init__(self, feature_dim: int, skip_dims: Sequence[int], num_classes: int, channels: int = 256,
                 skip_channels: int = 48, aspp_rates: Sequence[int] = (6, 12, 18), dropout: float = 0.1,
                 skip_index: int = 0, fuse_scale: int | None = 1, group_size: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.skip_index = skip_index
        self.fuse_scale = fuse_scale
        self.aspp = ASPP(feature_dim, channels, aspp_rates, group_size=group_size, dropout=dropout)
        self.skip_proj = conv_gn_relu(skip_dims[skip_index], skip_channels, 1, group_size=group_size)
        self.fuse = nn.Sequential(
            conv_gn_relu(channels + skip_channels, channels, 3, group_size=group_size),
            conv_gn_relu(channels, channels, 3, group_size=group_size),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feature: torch.Tensor, guidance: torch.Tensor | None, skips: Sequence[torch.Tensor],
                out_size: tuple[int, int] | None) -> torch.Tensor:
        h, w = feature.shape[-2:]
        x = self.aspp(feature)
        low = self.skip_proj(skips[self.skip_index])
        size = tuple(low.shape[-2:]) if self.fuse_scale is None else (h * self.fuse_scale, w * self.fuse_scale)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if low.shape[-2:] != size:
            low = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        x = self.classifier(self.fuse(torch.cat([low, x], dim=1)))
        if out_size is not None:
            x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
        return x
