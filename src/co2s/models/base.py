"""The interface every segmentation model implements (the built-in CNN now, the ViT students later).

A model is split into ``extract`` (image to a list of feature maps) and ``decode`` (features to
logits at the input size). The split is what UniMatch's feature perturbation needs: the same
decoder runs on the clean features and on ``dropout2d`` of them in one batched pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from co2s.models.param_groups import split_decay


class SegmentationModel(nn.Module):
    """Images ``[B, C, H, W]`` (scaled, not normalised) in, logits ``[B, K, H, W]`` out."""

    num_classes: int
    #: buffers made from the run's config (co2s.models.transfer keeps them when init_from loads weights)
    built_from_config = ("mean", "std")

    def __init__(self, num_classes: int, in_channels: int, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        mean = torch.as_tensor(mean if mean is not None else [0.0] * in_channels, dtype=torch.float32)
        std = torch.as_tensor(std if std is not None else [1.0] * in_channels, dtype=torch.float32)
        if mean.numel() != in_channels or std.numel() != in_channels:
            raise ValueError(f"mean/std need {in_channels} values, got {mean.numel()}/{std.numel()}")
        # Buffers, so the normalisation travels with the weights into every checkpoint.
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"model expects {self.in_channels} band(s), got {x.shape[1]}")
        return (x - self.mean) / self.std

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimiser groups; models with parts at different learning rates override this."""
        return split_decay(self, lr, weight_decay)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images to the feature maps the decoder uses."""
        raise NotImplementedError

    def decode(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Feature maps to logits resized to ``size``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, perturb_features: bool = False, dropout: float = 0.5,
                generator: torch.Generator | None = None):
        """Logits; with ``perturb_features`` also the logits of ``dropout2d``-perturbed features
        (:func:`drop_channels`, its draws from ``generator``).

        The perturbed stream shares the decoder pass with the clean one (features concatenated
        along the batch), as UniMatch does, and returns ``(logits, logits_perturbed)``.
        """
        size = x.shape[-2:]
        features = self.extract(self.normalize(x))
        if not perturb_features:
            return self.decode(features, size)
        both = [torch.cat([f, drop_channels(f, dropout, generator)]) for f in features]
        logits = self.decode(both, size)
        return logits.chunk(2)


def drop_channels(features: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``dropout2d`` in training: each channel of each image zeroed with probability ``p``, the
    others scaled by ``1 / (1 - p)``. The draws come from ``generator`` (a CPU generator; torch's
    global one when None), so that students running in parallel threads each draw from their own
    and a seeded run stays the same run."""
    if p <= 0:
        return features
    if p >= 1:
        return features * 0
    keep = torch.rand(features.shape[:2], generator=generator) >= p
    return features * (keep.to(features.device, features.dtype) / (1 - p))[:, :, None, None]
