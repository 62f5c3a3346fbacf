"""Pieces shared by the decoder heads: GroupNorm sizing, conv + GroupNorm + ReLU, and ASPP.

GroupNorm (not BatchNorm) is used throughout: the language-guided head folds the classes into the
batch and the semi-supervised batches are small, so batch statistics would be noisy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def gn_groups(channels: int, group_size: int = 16) -> int:
    """A valid GroupNorm group count for ``channels``: about ``channels // group_size`` groups.

    ``group_size`` is the number of channels per group, as in the Co2S reference (``C // 16``
    groups: 8 for 128 channels, 4 for 64, 2 for 32). When that count does not divide ``channels``
    the largest smaller divisor is used; at least one group.
    """
    if channels < 1 or group_size < 1:
        raise ValueError(f"channels and group_size must be positive, got {channels}, {group_size}")
    groups = max(1, channels // group_size)
    while channels % groups:
        groups -= 1
    return groups


def group_norm(channels: int, group_size: int = 16) -> nn.GroupNorm:
    return nn.GroupNorm(gn_groups(channels, group_size), channels)


def conv_gn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 group_size: int = 16) -> nn.Sequential:
    """Conv (bias-free, 'same' padding) + GroupNorm + ReLU."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        group_norm(out_channels, group_size),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv + GroupNorm + ReLU, broadcast back."""

    def __init__(self, in_channels: int, out_channels: int, group_size: int = 16) -> None:
        super().__init__()
        self.proj = conv_gn_relu(in_channels, out_channels, 1, group_size=group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x.mean(dim=(2, 3), keepdim=True))
        # Bilinear upsampling of a 1x1 map is a constant map: expand is the same, and cheaper.
        return y.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with GroupNorm.

    Branches: a 1x1 conv, one 3x3 conv per dilation rate in ``rates``, and image pooling; each
    followed by GroupNorm + ReLU. The concatenated branches are projected by a 1x1 conv + GroupNorm
    + ReLU to ``out_channels``, then optional dropout; with ``residual`` the input is added back
    (needs ``in_channels == out_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (6, 12, 18),
                 group_size: int = 16, residual: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError(f"residual ASPP needs in == out channels, got {in_channels} -> {out_channels}")
        self.residual = residual
        branches: list[nn.Module] = [conv_gn_relu(in_channels, out_channels, 1, group_size=group_size)]
        for rate in rates:
            branches.append(conv_gn_relu(in_channels, out_channels, 3, dilation=rate, group_size=group_size))
        branches.append(ImagePooling(in_channels, out_channels, group_size))
        self.branches = nn.ModuleList(branches)
        self.project = conv_gn_relu(len(branches) * out_channels, out_channels, 1, group_size=group_size)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
        y = self.dropout(y)
        return x + y if self.residual else y
