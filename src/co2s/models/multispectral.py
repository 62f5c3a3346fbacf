"""ViT students on more than three bands: a widened patch embedding and per-band normalisation.

The pretrained CLIP and DINO backbones see RGB. For data with N > 3 bands (``data.bands`` lists
red, green and blue first) the first layer, the patch-embedding convolution, gets N input
channels once the pretrained weights are loaded: the RGB filters are kept as they are and each
extra band's filter is the mean of the three RGB filters, without rescaling. Inputs are
normalised per band, so a band at its typical value (its mean) adds nothing and the pretrained
response to the RGB bands is unchanged; a deviation in an extra band moves the patch embedding
about as much as the same deviation in an average RGB band would.
"""

from __future__ import annotations

import torch
from torch import nn

from co2s.errors import ConfigError

RGB = 3


def _patch_embedding(model: nn.Module, kind: str) -> tuple[nn.Module, str]:
    """The module holding the patch-embedding conv of a transformers backbone, and its name."""
    if kind == "clip":
        return model.vision_model.embeddings, "patch_embedding"
    if kind == "dinov3":
        return model.embeddings, "patch_embeddings"
    return model.embeddings.patch_embeddings, "projection"  # dinov2


def input_bands(model: nn.Module, kind: str) -> int:
    parent, name = _patch_embedding(model, kind)
    return getattr(parent, name).in_channels


def widen_patch_embedding(model: nn.Module, kind: str, in_channels: int) -> None:
    """Give the backbone ``in_channels`` input bands (in place; a no-op when it already has them).

    The architecture record (``model.config``) is updated too, so a checkpoint of the widened
    student rebuilds the widened layer directly.
    """
    parent, name = _patch_embedding(model, kind)
    conv: nn.Conv2d = getattr(parent, name)
    if conv.in_channels == in_channels:
        return
    if conv.in_channels != RGB:
        raise ConfigError(f"the {kind} backbone has {conv.in_channels} input bands, the data {in_channels}")
    wide = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        wide.weight[:, :RGB] = conv.weight
        wide.weight[:, RGB:] = conv.weight.mean(1, keepdim=True)
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    for new, old in zip(wide.parameters(), conv.parameters()):
        new.requires_grad_(old.requires_grad)  # the tuning policy already chose for this layer
    setattr(parent, name, wide)
    (model.config.vision_config if kind == "clip" else model.config).num_channels = in_channels
    if kind == "dinov2":
        parent.num_channels = in_channels  # its forward checks the input against this


def band_normalisation(rgb_mean, rgb_std, data, in_channels: int) -> tuple[list[float], list[float]]:
    """Per-band mean and std of a student: the backbone's pretraining values for bands 1-3, and
    ``data.mean``/``data.std`` for bands 4..N when given (else the average of the RGB values)."""
    if in_channels < RGB:
        raise ConfigError(
            f"ViT students take {RGB} or more bands (red, green, blue first); the data gives "
            f"{in_channels} (see data.bands and model.in_channels)"
        )
    mean, std = list(rgb_mean), list(rgb_std)
    if in_channels > RGB and data.mean is not None and len(data.mean) != in_channels:
        raise ConfigError(f"data.mean/std give {len(data.mean)} values for {in_channels} bands")
    for band in range(RGB, in_channels):
        mean.append(data.mean[band] if data.mean is not None else sum(rgb_mean) / RGB)
        std.append(data.std[band] if data.std is not None else sum(rgb_std) / RGB)
    return mean, std
