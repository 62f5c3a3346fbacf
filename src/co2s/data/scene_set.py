"""Scenes and the index of their labelled pixels: what training (:mod:`co2s.data.scenes`) and
validation/test regions (:mod:`co2s.data.scene_regions`) both build on.

- :class:`Scene`: one raster, read through :class:`~co2s.data.raster.RasterReader` (the package's
  one invalid-pixel rule), and its label source (:mod:`co2s.data.scene_labels`);
- :func:`open_scene` checks a raster up front (bands, window-wise reading); :func:`attach_labels`
  places a vector file or raster masks on the scenes (and names the polygons that label no pixel
  with data, :func:`pixels_with_data`); :func:`index_labels` counts the valid
  labelled pixels per class of every ``BLOCK`` x ``BLOCK`` block: a :class:`SceneSet`.
"""

from __future__ import annotations

import glob
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from co2s.data.labels import LabelEncoder
from co2s.data.raster import RasterReader, Window
from co2s.data.scene_labels import MaskLabels, VectorLabels, burn, mask_extent, parse_crs, shown_items
from co2s.data.sources import LabelStats, resolve
from co2s.errors import DataError
from co2s.progress import progress_bar

#: side of the index blocks (scene pixels): labelled pixels are counted per block
BLOCK = 256
#: a raster stored as one block larger than this (pixels) cannot be read window-wise
ONE_BLOCK_LIMIT = 4096 * 4096
_GLOB = set("*?[")


# ---------------------------------------------------------------------------------------------
# scenes
# ---------------------------------------------------------------------------------------------


class Scene:
    """One raster (read through :class:`RasterReader`: the package's one invalid-pixel rule) and
    its labels; opened lazily in each process."""

    def __init__(self, reader: RasterReader) -> None:
        self.reader = reader
        self.path, self.bands = reader.path, reader.bands
        self.width, self.height = reader.width, reader.height
        self.crs, self.transform = reader.crs, reader.transform
        self.labels = None  # VectorSceneLabels or MaskLabels, set by load_scenes
        self.held_out: list = []  # label sources of validation/test regions here: never trained on

    @property
    def grid(self) -> dict:
        return self.reader.grid

    def read(self, window: Window, out_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Model input ``[C, h, w]`` of a window read into ``out_shape`` (bilinear; invalid pixels
        0) and its valid pixels ``[h, w]``."""
        image, valid = self.reader.read(window, out_shape)
        return image, np.ones(out_shape, bool) if valid is None else valid

    def valid(self, window: Window, out_shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """Valid pixels of a window, None when all are."""
        return self.reader.valid(window, out_shape)

    def labels_of(self, window: Window, out_shape: tuple[int, int], valid: np.ndarray | None,
                  ignore_index: int) -> np.ndarray:
        """Labels of a window (``ignore_index`` on invalid and held-out pixels)."""
        labels = self.labels.read(window, out_shape)
        held = self.held_out_mask(window, out_shape)
        if held is not None:
            labels[held] = ignore_index
        if valid is not None:
            labels[~valid] = ignore_index
        return labels

    def held_out_mask(self, window: Window, out_shape: tuple[int, int]) -> np.ndarray | None:
        """Pixels of a window inside validation/test regions (``data.scenes.val`` / ``test``), None
        when there are none: they are never labelled for training nor in an unlabelled crop."""
        mask = None
        for source in self.held_out:
            if source.touches(window):
                held = source.read(window, out_shape) != source.ignore_index
                mask = held if mask is None else mask | held
        return mask


def expand_paths(patterns: list[str], root: Path, what: str) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        full = resolve(root, pattern)
        if _GLOB & set(pattern):
            found = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
            if not found:
                raise DataError(f"{what}: {pattern!r} matches no file under {root}")
        else:
            if not full.is_file():
                raise DataError(f"{what}: {full} not found" + (" (a directory)" if full.is_dir() else ""))
            found = [full]
        paths += [p for p in found if p.resolve() not in {q.resolve() for q in paths}]
    return paths


def open_scene(path: Path, data, channels: int | None) -> Scene:
    reader = RasterReader(path, data.bands, data.scale)
    try:
        if data.bands is None and channels is not None and len(reader.bands) != channels:
            raise DataError(f"{path}: has {reader.bands_said} but the config expects {channels} "
                            "(model.in_channels, else len(data.bands), else len(data.mean), else 3): "
                            "set data.bands to the bands to read")
        block_h, block_w = reader.block_shape
        if block_h >= reader.height and block_w >= reader.width and reader.height * reader.width > ONE_BLOCK_LIMIT:
            raise DataError(
                f"{path}: cannot be read window-wise: it is stored as one {reader.width}x"
                f"{reader.height} block, so every crop would decode the whole scene; convert it to a "
                "tiled GeoTIFF or COG (gdal_translate -of COG in.tif out.tif)")
        for x, y in ((0, 0), (reader.width - 1, reader.height - 1)):  # a truncated file stops here
            try:
                reader.read(Window(x, y, 1, 1))
            except DataError as exc:
                raise DataError(f"{path}: cannot be read window-wise: {exc}") from None
        return Scene(reader)
    finally:
        reader.close()


@dataclass
class SceneSet:
    """The checked scenes and the index of their labelled pixels."""

    scenes: list[Scene]
    num_classes: int
    ignore_index: int
    label_source: str  # the vector file or masks, for messages
    block_scene: np.ndarray  # [B] scene of each block holding labelled pixels
    block_origin: np.ndarray  # [B, 2] (x0, y0) of each block, scene pixels
    block_counts: np.ndarray  # [B, num_classes] valid labelled pixels per class
    block: int = BLOCK  # side of the blocks

    @property
    def counts(self) -> np.ndarray:
        """Valid labelled pixels per class over all scenes."""
        return self.block_counts.sum(0) if len(self.block_counts) else np.zeros(self.num_classes, np.int64)

    @property
    def labelled_pixels(self) -> int:
        return int(self.counts.sum())

    @property
    def area(self) -> int:
        return sum(s.width * s.height for s in self.scenes)

    def stats(self) -> LabelStats:
        """The class table's counts: labelled pixels per class; ignored = every other pixel."""
        return LabelStats(self.counts.copy(), ignored=self.area - self.labelled_pixels, masks=len(self.scenes))

    def block_labels(self, block: int) -> tuple[Scene, int, int, np.ndarray]:
        """``(scene, x0, y0, labels)`` of an index block at native resolution, ``ignore_index``
        on invalid pixels (what the index counted)."""
        scene = self.scenes[int(self.block_scene[block])]
        x0, y0 = (int(v) for v in self.block_origin[block])
        window = Window(x0, y0, min(self.block, scene.width - x0), min(self.block, scene.height - y0))
        return scene, x0, y0, scene.labels_of(window, window.shape, scene.valid(window), self.ignore_index)


def attach_labels(scenes: list[Scene], labels, data, root: Path, key: str, rasters_key: str,
                  attribute: str | None = None) -> tuple[str, VectorLabels | None]:
    """Set each scene's ``labels`` from the vector or raster source of ``labels`` (a labels or
    regions config at ``key``; ``attribute`` overrides its own); features or masks outside every
    scene are errors, polygons that label no pixel with data are named in a warning. Returns the
    source's name for messages, and the vector labels if any."""
    if labels.vector is not None:
        import shapely

        vector = VectorLabels(vector_file(root, labels.vector), labels.layer, attribute or labels.attribute,
                              list(data.classes), data.ignore_index, labels.where, key, labels.repair)
        fill = data.classes.index(labels.background) if labels.complete else data.ignore_index
        inside = np.zeros(len(vector.values), bool)
        for scene in scenes:
            crs = parse_crs(scene.crs, f"raster {scene.path}", path=scene.path)
            pixels = vector.in_pixels(crs, scene.transform, f"raster {scene.path}")
            inside |= shapely.intersects(pixels, shapely.box(0, 0, scene.width, scene.height))
            scene.labels = vector.for_scene(pixels, fill)
        outside = vector.fids[~inside].tolist()
        if outside:
            names = ", ".join(s.path.name for s in scenes[:5]) + (" ..." if len(scenes) > 5 else "")
            raise DataError(f"{vector.path}: feature id(s) {', '.join(map(str, outside[:8]))}"
                            f"{' ...' if len(outside) > 8 else ''} lie outside every raster ({names}): "
                            f"a wrong CRS on the vector file, or a raster missing from {rasters_key}?")
        _report_silent(vector, scenes, rasters_key)
        return str(vector.path), vector
    encoder = LabelEncoder.from_config(data)
    masks = expand_paths(labels.raster, root, f"{key}.raster")
    reach = {m: False for m in masks}
    for scene in scenes:
        grid = scene.grid
        here = [m for m in masks if within(mask_extent(m, grid, f"raster {scene.path}")[1], scene)]
        for m in here:
            reach[m] = True
        scene.labels = MaskLabels(here, grid, encoder, f"raster {scene.path}")
    lost = [str(m) for m, hit in reach.items() if not hit]
    if lost:
        raise DataError(f"mask(s) {', '.join(lost)} lie outside every raster of {rasters_key} "
                        "(a wrong CRS or transform?)")
    return ", ".join(str(m) for m in masks), None


def pixels_with_data(scene: Scene, geom, cache: dict) -> tuple[bool, bool]:
    """``(centred, with_data)``: whether a polygon (scene pixels) holds a pixel centre of the scene,
    and one with data, by the labels' own rule (:func:`burn`) and the package's invalid-pixel
    rule, in ``BLOCK`` x ``BLOCK`` windows (memory bounded whatever the polygon's size) that stop
    at the first valid pixel found; ``cache``: the blocks' validity read so far."""
    x0, y0, x1, y1 = geom.bounds
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(scene.width, math.ceil(x1)), min(scene.height, math.ceil(y1))
    centred = False
    one = np.ones(1, np.int64)
    for by in range(y0 // BLOCK * BLOCK, y1, BLOCK):
        for bx in range(x0 // BLOCK * BLOCK, x1, BLOCK):
            wx, wy = max(bx, x0), max(by, y0)
            window = Window(wx, wy, min(bx + BLOCK, x1) - wx, min(by + BLOCK, y1) - wy)
            inside = burn(np.array([geom], dtype=object), one, window, window.shape, 0) > 0
            if not inside.any():
                continue
            centred = True
            if (bx, by) not in cache:
                if len(cache) >= 256:  # 256 blocks of 256 x 256: 16 MB at most
                    cache.clear()
                block = Window(bx, by, min(BLOCK, scene.width - bx), min(BLOCK, scene.height - by))
                cache[bx, by] = scene.valid(block)
            valid = cache[bx, by]
            if valid is None:
                return True, True
            if (inside & valid[wy - by: wy - by + window.height, wx - bx: wx - bx + window.width]).any():
                return True, True
    return centred, False


def _report_silent(vector: VectorLabels, scenes: list[Scene], rasters_key: str) -> None:
    """Warn about labelled polygons that label no pixel: all their pixels are nodata, or they hold
    no pixel centre of any raster (smaller than a pixel, or only their edge on a raster)."""
    import shapely

    centred = np.zeros(len(vector.values), bool)
    with_data = vector.values == vector.ignore_index  # ignore polygons label nothing by design
    for scene in scenes:
        pixels, cache = scene.labels.geoms, {}
        here = shapely.intersects(pixels, shapely.box(0, 0, scene.width, scene.height))
        for row in np.flatnonzero(here & ~with_data):
            c, d = pixels_with_data(scene, pixels[row], cache)
            centred[row] |= c
            with_data[row] |= d
    if with_data.all():
        return
    named = [f"{int(vector.fids[r])} ({vector.class_of(r)})" for r in range(len(centred))]
    parts = []
    nodata = np.flatnonzero(centred & ~with_data)
    if nodata.size:
        parts.append(f"feature id(s) {shown_items([named[r] for r in nodata])} lie on nodata pixels only")
    tiny = np.flatnonzero(~centred & ~with_data)
    if tiny.size:
        parts.append(f"feature id(s) {shown_items([named[r] for r in tiny])} hold no pixel centre of the "
                     "rasters (smaller than a pixel?)")
    warnings.warn(f"{vector.described}: {nodata.size + tiny.size} polygon(s) label no pixel of {rasters_key}: "
                  f"{'; '.join(parts)}", stacklevel=3)


def vector_file(root: Path, spec: str) -> Path:
    """A vector file of the config: under ``data.root``, else in the working folder (where
    ``co2s splits --out`` wrote it), as tile split entries are found."""
    path = resolve(root, spec)
    return Path(spec).expanduser() if not path.exists() and Path(spec).expanduser().exists() else path


def within(box: tuple, scene: Scene) -> bool:
    return box[0] < scene.width and box[2] > 0 and box[1] < scene.height and box[3] > 0


def index_labels(scenes: list[Scene], num_classes: int, ignore_index: int, source: str, progress: bool) -> SceneSet:
    """Count the valid labelled pixels per class of every block that may hold labels."""
    block = BLOCK
    candidates = []
    for i, scene in enumerate(scenes):
        for y0 in range(0, scene.height, block):
            for x0 in range(0, scene.width, block):
                if scene.labels.touches(Window(x0, y0, min(block, scene.width - x0), min(block, scene.height - y0))):
                    candidates.append((i, x0, y0))
    which, origins, counts = [], [], []
    for i, x0, y0 in progress_bar(candidates, desc="indexing scene labels",
                                  enabled=progress and len(candidates) >= 400):
        scene = scenes[i]
        window = Window(x0, y0, min(block, scene.width - x0), min(block, scene.height - y0))
        labels = scene.labels_of(window, window.shape, scene.valid(window), ignore_index)
        known = labels[labels != ignore_index]
        if known.size:
            which.append(i)
            origins.append((x0, y0))
            counts.append(np.bincount(known, minlength=num_classes)[:num_classes])
    return SceneSet(
        scenes, num_classes, ignore_index, source,
        np.asarray(which, np.int64), np.asarray(origins, np.int64).reshape(-1, 2),
        np.asarray(counts, np.int64).reshape(-1, num_classes), block,
    )


