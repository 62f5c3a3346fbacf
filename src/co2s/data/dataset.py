"""Torch datasets over resolved samples: training crops (seeded views) and whole images for evaluation."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from co2s.data.io import read_model_input
from co2s.data.labels import LabelEncoder
from co2s.data.sources import Sample
from co2s.config.schema import CutMixConfig, StrongViewConfig
from co2s.data.transforms import (
    WeakViewParams,
    cutmix_box,
    strong_view,
    weak_view,
)
from co2s.errors import DataError


class SampleReader:
    """Reads one sample as tensors: image ``[C, H, W]`` float (scaled, not normalised), mask ``[H, W]``.

    Normalisation by mean/std belongs to the model (each student has its own), so it is not here.
    Invalid pixels (the one rule of :mod:`co2s.data.raster`) are 0 in the image and
    ``ignore_index`` in the mask, so no loss and no score counts them and no NaN reaches a model.
    """

    def __init__(self, data) -> None:
        self.bands = data.bands
        self.scale = data.scale
        self.encoder = LabelEncoder.from_config(data)

    def image_valid(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scaled image with invalid pixels set to 0, and its valid pixels (None: all valid)."""
        image, valid = read_model_input(sample.image, self.bands, self.scale)
        return torch.from_numpy(image), None if valid is None else torch.from_numpy(valid)

    def image(self, sample: Sample) -> torch.Tensor:
        return self.image_valid(sample)[0]

    def mask(self, sample: Sample) -> torch.Tensor:
        assert sample.mask is not None
        return torch.from_numpy(self.encoder.read(sample.mask, f"{sample.mask} (listed at {sample.origin})"))

    def read(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Image, mask (``ignore_index`` on invalid pixels) and valid pixels (None: all valid)."""
        image, valid = self.image_valid(sample)
        mask = self.mask(sample)
        if image.shape[1:] != mask.shape:
            raise DataError(
                f"{sample.origin}: image {sample.image.name} is {tuple(image.shape[1:])} but mask "
                f"{sample.mask.name} is {tuple(mask.shape)}"
            )
        if valid is not None:
            mask[~valid] = self.encoder.ignore_index
        return image, mask, valid

    def pair(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        return self.read(sample)[:2]


def split_key(key) -> tuple[int, int]:
    """Samplers of this package yield ``(index, seed)``; a bare index gets seed = index."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), int(key)


class LabelledCrops(Dataset):
    """Labelled training samples as weak-view crops (rescale, pad with ignore, crop, flip);
    ``path`` names the image file (the collated batch holds a list of them)."""

    def __init__(self, samples: list[Sample], data, params: WeakViewParams) -> None:
        self.samples = samples
        self.reader = SampleReader(data)
        self.params = params

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        index, seed = split_key(key)
        sample = self.samples[index]
        image, mask, valid = self.reader.read(sample)
        generator = torch.Generator().manual_seed(seed)
        image, mask, _ = weak_view(image, mask, self.params, generator, valid)
        return {"image": image, "mask": mask, "path": str(sample.image)}


class WholeImages(Dataset):
    """Evaluation samples at full size (batch size 1: sizes may differ)."""

    def __init__(self, samples: list[Sample], data) -> None:
        self.samples = samples
        self.reader = SampleReader(data)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ignore_index(self) -> int:
        return self.reader.encoder.ignore_index

    def __getitem__(self, index: int) -> dict:
        image, mask = self.reader.pair(self.samples[index])
        return {"image": image, "mask": mask, "name": self.samples[index].image.name}


class UnlabelledPairs(Dataset):
    """Unlabelled training samples for UniMatch-style methods, each with its CutMix source.

    An item holds the weak view, two strong views and two CutMix boxes of image ``u``, and the weak
    and strong views of a *different* image ``u'`` (its CutMix source; SPEC 2.9.4: never the same
    image augmented again). ``valid`` marks pixels that are neither padding nor invalid in the
    image. ``u_path`` and ``mix_path`` name the two source files. ``gt`` is the weak view's mask when
    the list gives one (benchmarks): used only to log pseudo-label accuracy, never for training.
    """

    def __init__(self, samples: list[Sample], data, weak: WeakViewParams,
                 strong: StrongViewConfig | None = None, cutmix: CutMixConfig | None = None) -> None:
        if len(samples) < 2:
            raise DataError("the unlabelled split needs at least 2 images (each is mixed with another)")
        self.samples = samples
        self.reader = SampleReader(data)
        self.weak, self.strong = weak, strong or StrongViewConfig()
        self.cutmix = cutmix or CutMixConfig()

    def __len__(self) -> int:
        return len(self.samples)

    def partner(self, index: int, seed: int) -> int:
        """A seeded choice among the other images."""
        return (index + 1 + seed % (len(self.samples) - 1)) % len(self.samples)

    def _views(self, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        image, valid = self.reader.image_valid(sample)
        mask = self.reader.mask(sample) if sample.mask is not None else None
        if mask is not None and mask.shape != image.shape[1:]:
            mask = None  # a benchmark's optional mask that does not fit is just not used
        weak, gt, valid = weak_view(image, mask, self.weak, generator, valid)
        if gt is None:
            gt = torch.full(valid.shape, self.weak.ignore_index, dtype=torch.long)
        return {"w": weak, "s1": strong_view(weak, self.strong, generator),
                "s2": strong_view(weak, self.strong, generator), "valid": valid, "gt": gt}

    def __getitem__(self, key) -> dict:
        index, seed = split_key(key)
        generator = torch.Generator().manual_seed(seed)
        partner = self.partner(index, seed)
        u = self._views(index, generator)
        mix = self._views(partner, generator)
        size = tuple(u["w"].shape[-2:])
        return {
            "u_w": u["w"], "u_s1": u["s1"], "u_s2": u["s2"], "u_valid": u["valid"], "u_gt": u["gt"],
            "box1": cutmix_box(size, self.cutmix, generator), "box2": cutmix_box(size, self.cutmix, generator),
            "mix_w": mix["w"], "mix_s1": mix["s1"], "mix_s2": mix["s2"], "mix_valid": mix["valid"],
            "u_path": str(self.samples[index].image), "mix_path": str(self.samples[partner].image),
        }
