"""A small ResNet-like CNN as a student backbone, with random initialisation (no pretrained
weights): the competent, cheap student for CPU runs such as ``co2s demo``.

Stem (3x3 conv, stride 2) then stages of basic residual blocks (two 3x3 convs + GroupNorm, identity
or 1x1 shortcut), each stage starting with a block of its stride (``strides``, default 2 each), so
with the default three stages sit at 1/4, 1/8 and 1/16 of the input. A stage of stride 1 keeps the
resolution and doubles the dilation of its convs instead (``strides: [2, 2, 1]``: 1/4, 1/8, 1/8, a
finer cost volume). The last stage's map, through a
linear 1x1 projection, feeds the cost volume; the two stages before it are the skips, shallow to deep (the decoder's stage 1 takes the
deeper one). Unlike a ViT's patch maps, the skips carry real detail at 1/4 and 1/8 of the input.

GroupNorm, not BatchNorm, as everywhere in the package: small batches, and identical under DDP.
Any input size works (padding convs; the decoder resizes the skips to its own stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from co2s.models.backbones.base import Backbone, BackboneFeatures
from co2s.models.families import IMAGENET_MEAN, IMAGENET_STD
from co2s.models.heads.blocks import group_norm

#: named architectures: ``stem`` channels, per-stage ``widths`` and ``depths`` (residual blocks)
CNN_ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {"stem": 24, "widths": [32, 64, 128], "depths": [1, 2, 2], "strides": [2, 2, 2]},
    "small": {"stem": 32, "widths": [48, 96, 192], "depths": [2, 2, 2], "strides": [2, 2, 2]},
}


def cnn_arch(arch: str | dict[str, Any]) -> dict[str, Any]:
    """The architecture record of ``arch`` (a name, or keys overriding ``base``, default ``tiny``)."""
    if isinstance(arch, str):
        if arch not in CNN_ARCHS:
            raise ValueError(f"unknown cnn architecture {arch!r}; known: {sorted(CNN_ARCHS)}")
        return {**CNN_ARCHS[arch]}
    unknown = set(arch) - {"base", "stem", "widths", "depths", "strides", "group_size"}
    if unknown:
        raise ValueError(f"unknown cnn architecture keys {sorted(unknown)}; known: base, stem, widths, "
                         "depths, strides, group_size")
    merged = {**cnn_arch(arch.get("base", "tiny")), **{k: v for k, v in arch.items() if k != "base"}}
    return merged


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and a residual connection (1x1 conv shortcut on a change of
    width or stride)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, group_size: int = 8, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.norm1 = group_norm(cout, group_size)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm2 = group_norm(cout, group_size)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), group_norm(cout, group_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(self.norm2(self.conv2(y)) + identity)


class CnnBackbone(Backbone):
    """``stem``, ``widths``, ``depths`` and ``strides`` (see :data:`CNN_ARCHS`); at least three stages."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD  # any fixed normalisation serves a randomly initialised CNN

    def __init__(self, stem: int, widths: Sequence[int], depths: Sequence[int], strides: Sequence[int] | None = None,
                 in_channels: int = 3, group_size: int = 8) -> None:
        super().__init__()
        widths, depths = [int(w) for w in widths], [int(d) for d in depths]
        strides = [2] * len(widths) if strides is None else [int(s) for s in strides]
        if (len(widths) < 3 or not len(widths) == len(depths) == len(strides) or min(depths) < 1
                or min(widths) < 1 or stem < 1 or not set(strides) <= {1, 2}):
            raise ValueError(f"a cnn backbone needs >= 3 stages with positive widths and depths and strides "
                             f"1 or 2, one of each per stage, got widths {widths}, depths {depths}, strides {strides}, "
                             f"stem {stem}")
        self.arch = {"stem": int(stem), "widths": widths, "depths": depths, "strides": strides,
                     "group_size": int(group_size), "in_channels": int(in_channels)}
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 2, padding=1, bias=False),
                                  group_norm(stem, group_size), nn.ReLU(inplace=True))
        stages, cin, dilation = [], stem, 1
        for width, depth, stride in zip(widths, depths, strides):
            if stride == 1:  # keep the resolution, widen the receptive field instead (as DeepLab)
                dilation *= 2
            blocks = [BasicBlock(cin, width, stride, group_size, dilation)]
            blocks += [BasicBlock(width, width, 1, group_size, dilation) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)
        # The cost volume compares the last map with the guidance by cosine: a linear projection
        # lets its features take both signs (after the last ReLU they would all lie in the
        # positive orthant, where every class query sees about the same direction).
        self.project = nn.Conv2d(widths[-1], widths[-1], 1)
        self.feature_dim = widths[-1]
        self.skip_dims = (widths[-3], widths[-2])

    @classmethod
    def from_arch(cls, arch: str | dict[str, Any], in_channels: int = 3) -> CnnBackbone:
        record = cnn_arch(arch)
        record.setdefault("in_channels", in_channels)
        return cls(**record)

    def blocks(self) -> list[nn.Module]:
        return [self.stem, *(block for stage in self.stages for block in stage), self.project]

    def set_tuning(self, policy: str, last_n: int = 0) -> None:
        if policy == "attention":
            raise ValueError("a cnn backbone has no attention layers: tune it full, last_n or frozen")
        super().set_tuning(policy, last_n)

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return BackboneFeatures(skips=maps[-3:-1], last=self.project(maps[-1]))
