"""What evaluation scores, tiles or scenes alike: a sequence of regions, each a window of an image
or raster with a reader of its model input and of its labels.

The scorer (:func:`co2s.evaluation.evaluator.score_predictions`) predicts each region with
:meth:`Segmenter.predict_box` (the tile grid of the whole image or raster, restricted to the
tiles that cover the region) and compares with the labels piece by piece: one road for a list of
tiles and for validation/test regions of scenes, so no scorer asks which one it has.

- :class:`TileEvaluationSet`: every image of a split is one region, read whole (as training reads
  it: :class:`co2s.data.dataset.WholeImages`), its mask the labels.
- :class:`SceneEvaluationSet`: per raster, the window around its labelled blocks
  (:func:`co2s.data.scene_regions.load_regions`), read window by window through the raster's
  reader; tiles whose windows hold no labelled pixel are neither read nor predicted, so memory
  and time follow the regions, not the scenes.

Under DDP each rank takes its share (``rank``, ``world_size``): every ``world_size``-th image, or
horizontal bands of the raster windows; nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from co2s.data.dataset import WholeImages
from co2s.data.raster import Window, bounded_gdal_cache
from co2s.data.scene_regions import region_extent
from co2s.data.scene_set import SceneSet

Reader = Callable[[Window], tuple["np.ndarray", "np.ndarray | None"]]


@dataclass
class ScoredRegion:
    """The pixels ``window`` of an image or raster of ``height`` x ``width`` to score."""

    name: str
    height: int
    width: int
    window: Window
    read: Reader  # model input of a window and its valid pixels (None: all valid)
    # labels of a window, ignore where the reads found invalid pixels (the window's valid mask,
    # given by the prediction); None: no labelled pixel
    labels: Callable[[Window, np.ndarray], np.ndarray | None]
    close: Callable[[], None] = field(default=lambda: None)


class TileEvaluationSet:
    """A split of image files, each scored whole."""

    unit = "images"

    def __init__(self, images: WholeImages, source: str) -> None:
        self.images, self.source = images, source

    @property
    def ignore_index(self) -> int:
        return self.images.ignore_index

    def __len__(self) -> int:
        return len(self.images)

    def record(self) -> dict:
        """What a metrics report says of the split."""
        return {"split_source": self.source, "images": len(self)}

    def regions(self, rank: int = 0, world_size: int = 1) -> Iterator[ScoredRegion]:
        for i in range(rank, len(self.images), world_size):
            item = self.images[i]
            image, mask = item["image"].numpy(), item["mask"].numpy()
            height, width = mask.shape

            def read(window: Window, image=image):
                return image[(slice(None), *window.slices)], None

            yield ScoredRegion(item["name"], height, width, Window(0, 0, width, height), read,
                               lambda window, valid, mask=mask: mask[window.slices])  # invalid: ignore already


class SceneEvaluationSet:
    """Validation or test regions of scenes, scored in windows of their rasters."""

    unit = "rasters"

    def __init__(self, regions: SceneSet, source: str | None = None) -> None:
        self.set = regions
        self.source = source or regions.label_source

    @property
    def ignore_index(self) -> int:
        return self.set.ignore_index

    def __len__(self) -> int:
        return len(self.set.scenes)

    def record(self) -> dict:
        """What a metrics report says of the split."""
        return {"split_source": self.source, "images": len(self), "rasters": [str(s.path) for s in self.set.scenes]}

    def windows(self, parts: int = 1) -> list[tuple[int, Window]]:
        """Per raster, the window covering its labelled blocks, cut into ``parts`` horizontal bands."""
        windows = []
        for i in range(len(self.set.scenes)):
            extent = region_extent(self.set, i)
            if extent is None:
                continue
            cuts = sorted({extent.y + round(k * extent.height / parts) for k in range(parts + 1)})
            windows += [(i, Window.from_bounds(extent.x, a, extent.x1, b)) for a, b in zip(cuts, cuts[1:])]
        return windows

    def regions(self, rank: int = 0, world_size: int = 1) -> Iterator[ScoredRegion]:
        ignore = self.ignore_index
        with bounded_gdal_cache():  # as predict: GDAL's cache does not grow with the scene
            for index, window in self.windows(world_size)[rank::world_size]:
                scene = self.set.scenes[index]
                yield ScoredRegion(str(scene.path), scene.height, scene.width, window, _scene_reader(scene, ignore),
                                   lambda piece, valid, scene=scene: _labels(scene, ignore, piece, valid),
                                   scene.reader.close)


def _labels(scene, ignore_index: int, window: Window, valid: np.ndarray | None = None) -> np.ndarray | None:
    """Labels of a window (ignore where ``valid`` is False: the predicted pieces carry the valid
    pixels of their reads, so the raster's mask is not read again), None when it holds no labelled
    pixel."""
    if not scene.labels.touches(window):
        return None
    labels = scene.labels_of(window, window.shape, valid, ignore_index)
    return labels if (labels != ignore_index).any() else None


def _scene_reader(scene, ignore_index: int) -> Reader:
    def read(window: Window):
        # labels first: a window without labelled pixels needs no image (its tiles are skipped)
        labels = _labels(scene, ignore_index, window)
        if labels is None:
            return np.zeros((len(scene.bands), *window.shape), np.float32), np.zeros(window.shape, bool)
        image, valid = scene.reader.read(window)
        keep = labels != ignore_index
        return image, keep if valid is None else keep & valid

    return read
