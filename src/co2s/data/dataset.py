"""Torch datasets over resolved samples: training crops (seeded views) and whole images for evaluation."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from co2s.data.io import read_image, read_mask, scale_image
from co2s.data.labels import LabelEncoder
from co2s.data.sources import Sample
from co2s.data.transforms import WeakViewParams, weak_view
from co2s.errors import DataError


class SampleReader:
    """Reads one sample as tensors: image ``[C, H, W]`` float (scaled, not normalised), mask ``[H, W]``.

    Normalisation by mean/std belongs to the model (each student has its own), so it is not here.
    """

    def __init__(self, data) -> None:
        self.bands = data.bands
        self.scale = data.scale
        self.color_masks = data.color_masks
        self.encoder = LabelEncoder.from_config(data)

    def image(self, sample: Sample) -> torch.Tensor:
        return torch.from_numpy(scale_image(read_image(sample.image, self.bands), self.scale))

    def mask(self, sample: Sample) -> torch.Tensor:
        assert sample.mask is not None
        raw = read_mask(sample.mask, color=self.color_masks)
        return torch.from_numpy(self.encoder.encode(raw, f"{sample.mask} (listed at {sample.origin})"))

    def pair(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.image(sample), self.mask(sample)
        if image.shape[1:] != mask.shape:
            raise DataError(
                f"{sample.origin}: image {sample.image.name} is {tuple(image.shape[1:])} but mask "
                f"{sample.mask.name} is {tuple(mask.shape)}"
            )
        return image, mask


def _split_key(key) -> tuple[int, int]:
    """Samplers of this package yield ``(index, seed)``; a bare index gets seed = index."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), int(key)


class LabelledCrops(Dataset):
    """Labelled training samples as weak-view crops (rescale, pad with ignore, crop, flip)."""

    def __init__(self, samples: list[Sample], data, params: WeakViewParams) -> None:
        self.samples = samples
        self.reader = SampleReader(data)
        self.params = params

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        index, seed = _split_key(key)
        image, mask = self.reader.pair(self.samples[index])
        generator = torch.Generator().manual_seed(seed)
        image, mask, _ = weak_view(image, mask, self.params, generator)
        return {"image": image, "mask": mask}


class WholeImages(Dataset):
    """Evaluation samples at full size (batch size 1: sizes may differ)."""

    def __init__(self, samples: list[Sample], data) -> None:
        self.samples = samples
        self.reader = SampleReader(data)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.reader.pair(self.samples[index])
        return {"image": image, "mask": mask, "name": self.samples[index].image.name}
