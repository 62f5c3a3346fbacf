"""A small U-Net-style CNN: the fast CPU baseline for the demo, tests and quick experiments.

Residual conv stages with GroupNorm (robust at the batch sizes of 1-8 segmentation uses, and
identical under DDP without SyncBatchNorm), a dilated context block at the bottom, and a decoder
that upsamples with skip connections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from co2s.models.base import SegmentationModel


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.GroupNorm(_groups(cout), cout),
            nn.ReLU(inplace=True),
        )


class ResidualStage(nn.Module):
    """Downsample by ``stride`` then one residual pair of 3x3 convs."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.down = ConvBlock(cin, cout, stride)
        self.body = nn.Sequential(
            ConvBlock(cout, cout),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(cout), cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return F.relu(x + self.body(x))


class ContextBlock(nn.Module):
    """Parallel dilated convs and image pooling (a light ASPP) for context at the bottom."""

    def __init__(self, channels: int, rates: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(ConvBlock(channels, channels, dilation=r) for r in rates)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1), nn.ReLU())
        self.project = ConvBlock(channels * (len(rates) + 1), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return x + self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class LiteUNet(SegmentationModel):
    #: tensors with one row per class (co2s.models.transfer: rows follow class names)
    class_rows = ("classifier.weight", "classifier.bias")

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, depth: int = 4,
                 dropout: float = 0.1, mean=None, std=None) -> None:
        super().__init__(num_classes, in_channels, mean, std)
        widths = [width * 2**i for i in range(depth)]
        # Stride-2 stem: full-resolution convs would dominate the cost on CPU.
        self.stem = ConvBlock(in_channels, widths[0], stride=2)
        self.stages = nn.ModuleList(
            ResidualStage(widths[max(i - 1, 0)], widths[i], stride=1 if i == 0 else 2)
            for i in range(depth)
        )
        self.context = ContextBlock(widths[-1])
        self.ups = nn.ModuleList(
            ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth - 1))
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        features[-1] = self.context(features[-1])
        return features

    def decode(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))
        logits = self.classifier(self.dropout(x))
        if logits.shape[-2:] != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits
