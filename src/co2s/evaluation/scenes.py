"""Scoring validation and test regions of scenes (``data.scenes.val`` / ``test``), SPEC 3.3 on
whole rasters.

Each raster's held-out pixels are predicted as ``co2s predict`` predicts the whole raster: the
tile grid laid over the whole raster (``TileGrid.over``), restricted to the tiles that cover the
window around the regions (:meth:`Segmenter.predict_box`), read through the same
:class:`~co2s.data.raster.RasterReader` and blended in the same order, so every scored pixel
gets the class the GeoTIFF of ``co2s predict`` holds there. Tiles holding no labelled valid pixel
are not predicted (nor read): they change no scored pixel. Predictions stream in strips of tile
rows and each strip's labels are rasterised on their own, so memory depends on the tiles, never
on the scene. Confusion matrices are summed over every labelled valid pixel of the split; under
DDP the rasters' windows are cut in horizontal bands shared out across ranks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from co2s.data.raster import Window, bounded_gdal_cache
from co2s.data.scene_regions import region_extent
from co2s.data.scenes import SceneSet
from co2s.evaluation.metrics import confusion_metric, scores_from_confusion
from co2s.progress import progress_bar


@dataclass(frozen=True)
class RegionWindow:
    """The pixels of one raster a rank scores."""

    scene: int
    window: Window


def region_windows(regions: SceneSet, parts: int = 1) -> list[RegionWindow]:
    """Per raster, the window covering its labelled blocks, cut into ``parts`` horizontal bands."""
    windows = []
    for i in range(len(regions.scenes)):
        extent = region_extent(regions, i)
        if extent is None:
            continue
        cuts = sorted({extent.y + round(k * extent.height / parts) for k in range(parts + 1)})
        windows += [RegionWindow(i, Window.from_bounds(extent.x, a, extent.x1, b)) for a, b in zip(cuts, cuts[1:])]
    return windows


def _labels(scene, ignore_index: int, window: Window, valid=None):
    """Labels of a window (ignore where ``valid(window)`` says invalid), None when it holds no
    labelled pixel."""
    if not scene.labels.touches(window):
        return None
    mask = valid(window) if valid is not None else None
    labels = scene.labels_of(window, window.shape, mask, ignore_index)
    return labels if (labels != ignore_index).any() else None


@torch.no_grad()
def score_scene_regions(segmenter, regions: SceneSet, predictions: list[str] | None = None, rank: int = 0,
                        world_size: int = 1, progress: bool = True) -> dict[str, dict]:
    """Scores of each of ``predictions`` (default: every one the Segmenter can make) on the
    labelled valid pixels of ``regions`` (:func:`co2s.data.scene_regions.load_regions`), the
    rasters read as the regions were loaded (bands, scaling)."""
    predictions = predictions or segmenter.choices
    ignore = regions.ignore_index
    metrics = {n: confusion_metric(segmenter.num_classes, ignore).to(segmenter.device) for n in predictions}
    windows = region_windows(regions, world_size)[rank::world_size]
    with bounded_gdal_cache():  # as predict: GDAL's cache does not grow with the scene
        for window in progress_bar(windows, desc="evaluating regions", enabled=progress):
            _score_window(segmenter, regions.scenes[window.scene], window.window, ignore, predictions, metrics)
    with warnings.catch_warnings():  # a rank may have had no window (its sums are still summed)
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        return {n: scores_from_confusion(m.compute().cpu(), segmenter.classes) for n, m in metrics.items()}


def _score_window(segmenter, scene, region: Window, ignore: int, predictions: list[str], metrics: dict) -> None:
    """Add the pixels of ``region`` of one raster to the confusion ``metrics``."""
    device = segmenter.device
    source = scene.reader  # the scene's reader: its bands, scaling and invalid pixels
    try:
        def read(window: Window):
            # labels first: a window without labelled pixels needs no image (its tiles are skipped)
            labels = _labels(scene, ignore, window)
            if labels is None:
                return np.zeros((len(source.bands), *window.shape), np.float32), np.zeros(window.shape, bool)
            image, valid = source.read(window)
            keep = labels != ignore
            return image, keep if valid is None else keep & valid

        for piece, pieces in segmenter.predict_box(read, scene.height, scene.width, region, predictions):
            labels = _labels(scene, ignore, piece, source.valid)
            if labels is None:
                continue
            target = torch.from_numpy(labels)[None].to(device)
            for name, prediction in pieces.items():
                classes = torch.from_numpy(prediction.classes).to(device=device, dtype=torch.long)
                metrics[name].update(classes[None], target)
    finally:
        source.close()
