"""Whole scenes as a training source (SPEC 3.1b): windowed crops of large rasters with sparse labels.

``data.scenes`` names rasters (GeoTIFF/COG of any size) and their labels (a vector file or raster
masks, :mod:`co2s.data.scene_labels`). Nothing ever reads a whole scene: every training crop is a
windowed read at the crop's resolution, so memory is bounded by the crop.

- :func:`load_scenes` checks everything up front (files, CRSs, bands, class values, geometries
  outside every raster, a window read) and builds the index of labelled pixels: per block of
  ``BLOCK`` x ``BLOCK`` scene pixels, the valid labelled pixels per class. Its totals are the
  class table printed at start-up (:class:`LabelStats`).
- :class:`LabelledSceneCrops`: items as :class:`co2s.data.dataset.LabelledCrops` gives them. A crop
  is anchored on one labelled pixel drawn uniformly among all labelled pixels of all scenes
  (stratified over an epoch: item ``i`` of ``N`` takes its anchor from the ``i``-th ``1/N`` of the
  labelled pixels, so a polygon holding a ``1/N`` share is in at least one crop per epoch), then
  a random rescale (``train.scale_range``) sets the window read (``crop / ratio`` scene pixels
  into ``crop`` pixels: images bilinear, labels nearest) and a random position that keeps the
  anchor inside.
- :class:`UnlabelledScenePairs`: items as :class:`co2s.data.dataset.UnlabelledPairs` gives them;
  windows are drawn uniformly over the scenes' area (stratified per epoch), redrawn when they hold
  labelled pixels (``exclude_labelled``) or less than ``min_valid`` valid pixels; the CutMix source
  is a different window.

Validation and test regions (``data.scenes.val`` / ``test``, :mod:`co2s.data.scene_regions`) that
fall on a scene are its ``held_out`` sources: ignore in its training labels, never valid in an
unlabelled crop.

Items depend only on the ``(index, seed)`` keys of the trainer's sampler, so training is
deterministic and resumable. Rasters are opened lazily in each process (data-loader workers
included) and never pickled open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from co2s.config.schema import CutMixConfig, StrongViewConfig
from co2s.data.dataset import split_key
from co2s.data.raster import TRAINING_GDAL_CACHE_BYTES, Window, bounded_gdal_cache
from co2s.data.scene_set import Scene, SceneSet, attach_labels, expand_paths, index_labels, open_scene
from co2s.data.transforms import (
    WeakViewParams,
    random_int,
    random_uniform,
    cutmix_box,
    strong_view,
    weak_view,
)
from co2s.errors import DataError

#: windows drawn for an unlabelled crop before the best one is taken
UNLABELLED_TRIES = 16


def load_scenes(data, channels: int | None = None, progress: bool = True) -> SceneSet:
    """Open and check ``data.scenes`` and index its labelled pixels (a :class:`DataError` names
    the file, and the feature ids, of the first problem)."""
    cfg = data.scenes
    if cfg is None:
        raise DataError("data.scenes is not set")
    root = Path(data.root).expanduser()
    scenes = [open_scene(p, data, channels) for p in expand_paths(cfg.rasters, root, "data.scenes.rasters")]
    source, vector = attach_labels(scenes, cfg.labels, data, root, "data.scenes.labels", "data.scenes.rasters")
    if cfg.val is not None or cfg.test is not None:
        from co2s.data.scene_regions import attach_held_out

        attach_held_out(scenes, data, root, vector)
    with bounded_gdal_cache(TRAINING_GDAL_CACHE_BYTES):  # the index visits each block once
        return index_labels(scenes, data.num_classes, data.ignore_index, source, progress)


# ---------------------------------------------------------------------------------------------
# pools and datasets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenePool:
    """What the trainer sizes an epoch with: one pool (labelled or unlabelled) of a scene set.

    ``len`` is ``data.scenes.samples_per_epoch``, else the crops that cover the pool once at
    scale 1: labelled pixels / crop_size^2 (labelled), scene pixels / crop_size^2 (unlabelled)."""

    scenes: SceneSet
    labelled: bool
    length: int
    exclude_labelled: bool = True
    min_valid: float = 0.5

    def __len__(self) -> int:
        return self.length


def scene_pools(scene_set: SceneSet, data, crop_size: int) -> tuple[ScenePool, ScenePool]:
    """The labelled and unlabelled pools of ``data.scenes`` (errors when one is empty)."""
    cfg = data.scenes
    if scene_set.labelled_pixels == 0:
        raise DataError(f"{scene_set.label_source}: no valid labelled pixel in any raster of "
                        "data.scenes.rasters (labels over nodata only?)")
    per = cfg.samples_per_epoch
    labelled = ScenePool(scene_set, True, per or max(1, math.ceil(scene_set.labelled_pixels / crop_size**2)))
    unlabelled = ScenePool(scene_set, False, per or max(2, math.ceil(scene_set.area / crop_size**2)),
                           cfg.exclude_labelled, cfg.min_valid)
    return labelled, unlabelled


def _scale_window(generator: torch.Generator, crop: int, scale_range: tuple[float, float]) -> int:
    """Scene pixels a window spans for a random rescale ``ratio`` in ``scale_range``: ``crop / ratio``."""
    ratio = random_uniform(generator, *scale_range)
    return max(1, round(crop / ratio))


def _axis(start: int, span: int, size: int, crop: int) -> tuple[int, int, int]:
    """``(offset, length, out_length)`` along one axis of a window of ``span`` scene pixels
    starting at ``start``: a span longer than the scene reads all of it, smaller (padded later)."""
    if span >= size:
        return 0, size, max(1, min(crop, round(size * crop / span)))
    return min(max(start, 0), size - span), span, crop


@dataclass(frozen=True)
class _Crop:
    """A training crop: a window of one scene and the shape it is read into."""

    scene: int
    window: Window
    out: tuple[int, int]

    def name(self, scene: Scene) -> str:
        w = self.window
        return f"{scene.path}#window={w.x},{w.y},{w.width}x{w.height}"


def _crop(scene_index: int, scene: Scene, x: int, y: int, span: int, crop: int) -> _Crop:
    x0, w, ow = _axis(x, span, scene.width, crop)
    y0, h, oh = _axis(y, span, scene.height, crop)
    return _Crop(scene_index, Window(x0, y0, w, h), (oh, ow))


def _identity_view(params: WeakViewParams) -> WeakViewParams:
    """The weak view without its rescale (the window read did it): pad, crop, flip."""
    return replace(params, scale_range=(1.0, 1.0))


class _SceneItems(Dataset):
    """Items drawn from a scene pool: item ``i`` of ``n`` (any epoch: the index wraps) draws its
    window at the stratified position ``(i + u) / n`` of what the dataset draws over, with its own
    seeded generator (:func:`split_key`), inside a bounded GDAL block cache."""

    def __init__(self, pool: ScenePool) -> None:
        self.pool, self.set = pool, pool.scenes

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, key) -> dict:
        with bounded_gdal_cache(TRAINING_GDAL_CACHE_BYTES):  # blocks of a scene must not pile up
            index, seed = split_key(key)
            generator = torch.Generator().manual_seed(seed)
            return self._item(generator, (index % len(self) + random_uniform(generator, 0.0, 1.0)) / len(self))

    def _item(self, generator: torch.Generator, fraction: float) -> dict:
        raise NotImplementedError


class LabelledSceneCrops(_SceneItems):
    """Labelled crops of scenes, items as :class:`co2s.data.dataset.LabelledCrops`: ``image``
    ``[C, crop, crop]`` (scaled, not normalised), ``mask`` (``ignore_index`` where unlabelled,
    invalid or padding) and ``path`` (the raster and window)."""

    def __init__(self, pool: ScenePool, params: WeakViewParams) -> None:
        super().__init__(pool)
        self.params, self.view = params, _identity_view(params)
        self.crop = params.crop_size[0]
        self.cumulative = np.cumsum(self.set.block_counts.sum(1))

    def anchor(self, fraction: float) -> tuple[int, int, int]:
        """``(scene, x, y)`` of the labelled pixel at ``fraction`` of all labelled pixels (blocks
        in index order, pixels in raster order within a block)."""
        total = int(self.cumulative[-1])
        target = min(int(fraction * total), total - 1)
        block = int(np.searchsorted(self.cumulative, target, side="right"))
        before = int(self.cumulative[block - 1]) if block else 0
        scene, x0, y0, labels = self.set.block_labels(block)
        flat = np.flatnonzero(labels.ravel() != self.set.ignore_index)
        if flat.size == 0:  # the index and the block disagree: the data changed under the run
            raise DataError(f"{scene.path}: the labels of block ({x0}, {y0}) changed since the run started")
        row, col = divmod(int(flat[min(target - before, flat.size - 1)]), labels.shape[1])
        return int(self.set.block_scene[block]), x0 + col, y0 + row

    def _item(self, generator: torch.Generator, fraction: float) -> dict:
        scene_index, ax, ay = self.anchor(fraction)
        scene = self.set.scenes[scene_index]
        span = _scale_window(generator, self.crop, self.params.scale_range)
        x = ax - random_int(generator, 0, span - 1)
        y = ay - random_int(generator, 0, span - 1)
        w = _crop(scene_index, scene, x, y, span, self.crop)
        image, valid = scene.read(w.window, w.out)
        labels = scene.labels_of(w.window, w.out, valid, self.set.ignore_index)
        image, mask, _ = weak_view(torch.from_numpy(image), torch.from_numpy(labels), self.view, generator,
                                   torch.from_numpy(valid))
        return {"image": image, "mask": mask, "path": w.name(scene)}


class UnlabelledScenePairs(_SceneItems):
    """Unlabelled crops of scenes for the UniMatch-style methods, items as
    :class:`co2s.data.dataset.UnlabelledPairs`: the weak view, two strong views and two CutMix
    boxes of a window ``u``, the views of a *different* window ``u'`` (the CutMix source),
    ``valid`` False on nodata, padding and (``exclude_labelled``) labelled pixels, ``u_gt`` the
    window's labels where it has any (pseudo-label accuracy only, never trained on)."""

    def __init__(self, pool: ScenePool, weak: WeakViewParams, strong: StrongViewConfig | None = None,
                 cutmix: CutMixConfig | None = None) -> None:
        super().__init__(pool)
        self.weak, self.view = weak, _identity_view(weak)
        self.strong, self.cutmix = strong or StrongViewConfig(), cutmix or CutMixConfig()
        self.crop = weak.crop_size[0]
        self.ignore_index = self.set.ignore_index
        self.cumulative_area = np.cumsum([s.width * s.height for s in self.set.scenes])
        if pool.exclude_labelled and all(getattr(s.labels, "complete", False) for s in self.set.scenes):
            raise DataError(f"{self.set.label_source}: the labels are complete (data.scenes.labels."
                            "complete), so with data.scenes.exclude_labelled the scenes have no "
                            "unlabelled area; set exclude_labelled: false, or use a supervised method")

    def _draw(self, generator: torch.Generator, fraction: float) -> _Crop:
        """A window uniformly over the scenes' area (its top-left corner at ``fraction``)."""
        total = int(self.cumulative_area[-1])
        target = min(int(fraction * total), total - 1)
        index = int(np.searchsorted(self.cumulative_area, target, side="right"))
        scene = self.set.scenes[index]
        span = _scale_window(generator, self.crop, self.weak.scale_range)
        x = random_int(generator, 0, max(0, scene.width - span))
        y = random_int(generator, 0, max(0, scene.height - span))
        return _crop(index, scene, x, y, span, self.crop)

    def _pick(self, generator: torch.Generator, fraction: float, avoid: _Crop | None):
        """The first drawn window with no labelled pixel (``exclude_labelled``) and at least
        ``min_valid`` valid pixels; after ``UNLABELLED_TRIES`` draws the best one seen."""
        best, best_score = None, None
        for attempt in range(UNLABELLED_TRIES):
            w = self._draw(generator, fraction if attempt == 0 else random_uniform(generator, 0.0, 1.0))
            other = avoid is None or w != avoid  # the CutMix source must be another window
            if not other and best is not None:
                continue
            scene = self.set.scenes[w.scene]
            image, valid = scene.read(w.window, w.out)
            labels = None
            if scene.labels.touches(w.window):
                labels = scene.labels_of(w.window, w.out, valid, self.ignore_index)
            labelled = 0 if labels is None else int((labels != self.ignore_index).sum())
            usable = valid if labels is None or not self.pool.exclude_labelled else valid & (labels == self.ignore_index)
            held = scene.held_out_mask(w.window, w.out)
            if held is not None:  # validation/test regions: never trained on, not even unlabelled
                usable = usable & ~held
            share = usable.sum() / self.crop**2
            score = (other, labelled == 0 or not self.pool.exclude_labelled, share)
            if other and score[1] and share >= self.pool.min_valid:
                return w, image, usable, labels
            if best_score is None or score > best_score:
                best, best_score = (w, image, usable, labels), score
        return best

    def _views(self, generator: torch.Generator, fraction: float, avoid: _Crop | None = None):
        w, image, valid, labels = self._pick(generator, fraction, avoid)
        gt = torch.from_numpy(labels) if labels is not None else torch.full(w.out, self.ignore_index, dtype=torch.long)
        weak, gt, valid = weak_view(torch.from_numpy(image), gt, self.view, generator, torch.from_numpy(valid))
        return w, {"w": weak, "s1": strong_view(weak, self.strong, generator),
                   "s2": strong_view(weak, self.strong, generator), "valid": valid, "gt": gt}

    def _item(self, generator: torch.Generator, fraction: float) -> dict:
        uw, u = self._views(generator, fraction)
        mw, mix = self._views(generator, random_uniform(generator, 0.0, 1.0), avoid=uw)
        size = tuple(u["w"].shape[-2:])
        return {
            "u_w": u["w"], "u_s1": u["s1"], "u_s2": u["s2"], "u_valid": u["valid"], "u_gt": u["gt"],
            "box1": cutmix_box(size, self.cutmix, generator), "box2": cutmix_box(size, self.cutmix, generator),
            "mix_w": mix["w"], "mix_s1": mix["s1"], "mix_s2": mix["s2"], "mix_valid": mix["valid"],
            "u_path": uw.name(self.set.scenes[uw.scene]), "mix_path": mw.name(self.set.scenes[mw.scene]),
        }
