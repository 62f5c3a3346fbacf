"""Whole-scene prediction of georeferenced rasters (SPEC 4): read in windows, write in windows.

A scene of any size is predicted in panels of a few thousand columns, each in strips of tile
rows (``co2s.inference.streaming``): input windows are read as the tiles need them and finished
rows are written to the outputs one block row of the panel at a time, so memory does not grow with
the scene. Outputs, beside each other in the output folder (named by
``co2s.inference.predict.output_paths``):

- ``<stem>_classes.tif``: uint8 class indices, the input's CRS, transform and size, nodata 255
  where the input is nodata (all selected bands masked: nodata value, alpha band or internal
  mask), the palette as colour table, 256 x 256 tiles, deflate; optionally overviews (mode);
- ``<stem>_confidence.tif`` (optional): float32 probability of the predicted class, NaN as nodata;
- ``<stem>_preview.png`` (optional): an RGBA colour preview at most ``PREVIEW_SIZE`` pixels on its
  longer side, nodata transparent, built from the rows as they are written;
- ``<stem>_polygons.gpkg`` or ``.geojson`` (optional): one feature per connected region of a class,
  in the input's CRS, built from the rows as they are written (``co2s.inference.polygons``).

Every file is written under a hidden temporary name and renamed only once all are complete, so an
interrupted or failed run never leaves a valid-looking partial output.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from co2s.atomic import commit, write_error
from co2s.data.io import colorize
from co2s.data.raster import RasterReader, Window, bounded_gdal_cache, placed_by_points, placement
from co2s.errors import Co2sError
from co2s.inference import streaming
from co2s.inference.polygons import FORMATS, RegionPolygons, write_polygons
from co2s.inference.tiling import TileGrid
from co2s.progress import progress_bar

NODATA = 255
BLOCK = 256
assert streaming.PANEL_WIDTH % BLOCK == 0, "panels must start on block boundaries: each block is written once"
PREVIEW_SIZE = 2048


@dataclass
class PredictOptions:
    """What ``co2s predict`` does besides choosing the model: tiling, speed and extra outputs."""

    tile: int | None = None  # default: eval.window or train.crop_size
    overlap: float | None = None  # pixels (>= 1) or fraction of the tile (< 1); default eval.stride's
    batch_size: int | None = None  # tiles per forward pass; default eval.batch_size
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast; fp16 on GPUs only)
    tta: bool = False  # average with the horizontally mirrored tiles
    prediction: str | None = None  # a student or a fusion; default: the Segmenter's
    confidence: bool = False
    preview: bool = False
    overviews: bool = False
    polygons: str | None = None  # a vector file of the regions: "gpkg" or "geojson" (co2s.inference.polygons)
    min_area: float = 0.0  # polygons: regions smaller than this (CRS units squared) join their largest neighbour
    simplify: float = 0.0  # polygons: coverage simplification tolerance (CRS units)

    def __post_init__(self) -> None:
        if self.polygons is not None and self.polygons not in FORMATS:
            raise Co2sError(f"unknown polygon format {self.polygons!r}; choose from {list(FORMATS)}")
        for name in ("min_area", "simplify"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise Co2sError(f"--{name.replace('_', '-')} must be a number >= 0 (CRS units), got {value}")
            if value and self.polygons is None:
                raise Co2sError(f"--{name.replace('_', '-')} shapes the polygons: give it with --polygons")


class SceneOutputs:
    """The output files of one scene, filled block row by block row under temporary names."""

    def __init__(self, source: RasterReader, final: dict[str, Path], palette: list | None, classes: list[str],
                 options: PredictOptions) -> None:
        import rasterio

        ds = source.dataset
        num_classes = len(classes)
        self.source, self.height, self.width = source, ds.height, ds.width
        self.final = dict(final)  # classes, and with the options confidence, preview and polygons
        self.temp = {key: path.with_name(f".{path.name}.partial") for key, path in self.final.items()}
        self.overviews = options.overviews
        self.options, self.classes = options, list(classes)
        self.polygons = (RegionPolygons(ds.height, ds.width, NODATA, neighbours=options.min_area > 0)
                         if options.polygons else None)
        self.valid_pixels = 0
        self.files = {}
        profile = dict(driver="GTiff", width=ds.width, height=ds.height, count=1, tiled=True,
                       blockxsize=BLOCK, blockysize=BLOCK, compress="deflate", BIGTIFF="IF_SAFER")
        profile.update(placement(ds))
        try:
            with self._writing("classes"):
                self.files["classes"] = rasterio.open(self.temp["classes"], "w", dtype="uint8", nodata=NODATA,
                                                      **profile)
                if palette:
                    colours = {i: (*rgb, 255) for i, rgb in enumerate(palette)}
                    self.files["classes"].write_colormap(1, {**colours, NODATA: (0, 0, 0, 0)})
            if options.confidence:
                with self._writing("confidence"):
                    self.files["confidence"] = rasterio.open(self.temp["confidence"], "w", dtype="float32",
                                                             nodata=float("nan"), predictor=3, **profile)
        except BaseException:
            self.discard()
            raise
        self.preview = None
        if options.preview:
            self.step = max(1, math.ceil(max(ds.height, ds.width) / PREVIEW_SIZE))
            self.preview = np.zeros((math.ceil(ds.height / self.step), math.ceil(ds.width / self.step), 4),
                                    np.uint8)
            self.palette = palette or [[round(255 * i / max(1, num_classes - 1))] * 3 for i in range(num_classes)]
        self.left, self.top, self.pending = 0, 0, []  # rows [top, top + pending) of the panel at left

    def write_rows(self, window: Window, classes: np.ndarray, confidence: np.ndarray | None,
                   valid: np.ndarray) -> None:
        """Take the finished rows of ``window`` and their valid pixels (as the prediction read
        them); whole block rows go to the files.

        Pieces come panel by panel (``window.x``: a multiple of the block width), each top to bottom."""
        x0 = window.x
        if x0 != self.left:
            self.left, self.top = x0, 0
        self.pending.append((classes, confidence, valid))
        end = window.y1
        cut = end if end == self.height else end // BLOCK * BLOCK
        if cut <= self.top:
            return
        classes, valid = (np.concatenate([p[i] for p in self.pending]) for i in (0, 2))
        confidence = np.concatenate([p[1] for p in self.pending]) if confidence is not None else None
        rows = cut - self.top
        self._write_block_rows(Window(x0, self.top, classes.shape[1], rows), classes[:rows],
                               None if confidence is None else confidence[:rows], valid[:rows])
        self.pending = [(classes[rows:].copy(), None if confidence is None else confidence[rows:].copy(),
                         valid[rows:].copy())] if end > cut else []
        self.top = cut

    def _write_block_rows(self, window: Window, classes: np.ndarray, confidence: np.ndarray | None,
                          valid: np.ndarray) -> None:
        classes[~valid] = NODATA
        if confidence is not None:
            confidence[~valid] = np.nan
        self.valid_pixels += int(valid.sum())
        rio = window.to_rasterio()
        with self._writing("classes"):
            self.files["classes"].write(classes, 1, window=rio)
        if "confidence" in self.files:
            with self._writing("confidence"):
                self.files["confidence"].write(confidence, 1, window=rio)
        if self.polygons is not None:
            self.polygons.add(window, classes, confidence)
        if self.preview is not None:
            y, x = window.y, window.x
            top, left = -y % self.step, -x % self.step
            picked = classes[top :: self.step, left :: self.step]
            rgba = np.concatenate([colorize(picked, self.palette, NODATA),
                                   np.where(picked == NODATA, 0, 255).astype(np.uint8)[..., None]], -1)
            row, col = (y + top) // self.step, (x + left) // self.step
            self.preview[row : row + rgba.shape[0], col : col + rgba.shape[1]] = rgba

    def finish(self) -> list[Path]:
        """Close and complete the temporary files (overviews, preview), then rename them all."""
        from rasterio.enums import Resampling

        for key, f in self.files.items():
            with self._writing(key):
                f.close()  # GDAL writes its last blocks here
        if self.overviews:
            import rasterio

            factors = [2**i for i in range(1, 32) if max(self.height, self.width) >> i >= BLOCK]
            for key, resampling in (("classes", Resampling.mode), ("confidence", Resampling.average)):
                if key in self.temp and factors:
                    with self._writing(key), rasterio.open(self.temp[key], "r+") as dst:
                        dst.build_overviews(factors, resampling)
                        dst.update_tags(ns="rio_overview", resampling=resampling.name)
        if self.preview is not None:
            with self._writing("preview"):
                Image.fromarray(self.preview, "RGBA").save(self.temp["preview"], format="PNG")
        if self.polygons is not None:
            ds = self.source.dataset
            features = self.polygons.features(ds.transform, self.classes, self.options.min_area,
                                              self.options.simplify)
            with self._writing("polygons"):
                write_polygons(self.temp["polygons"], features, ds.crs if self.source.georeferenced else None,
                               FORMATS[self.options.polygons][1], self.final["polygons"].stem)
        for key, path in self.final.items():
            commit(self.temp[key], path)
        return list(self.final.values())

    @contextlib.contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """Word a failed write of output ``key`` for the user: an OSError naming the output, with
        the fault where it is known (:func:`co2s.atomic.write_error`: a full or read-only disk),
        else GDAL's own words in a :class:`Co2sError` (its "Write failed" names no cause)."""
        try:
            yield
        except Exception as exc:
            error = write_error(exc, self.final[key], self.temp[key])
            if error is not exc:
                raise error from exc
            if isinstance(exc, OSError) and exc.errno is None:  # rasterio's errors
                cause = exc.__cause__ or exc.__context__
                detail = f"{exc}" if cause is None or str(cause) in str(exc) else f"{exc} ({cause})"
                raise Co2sError(f"cannot write {self.final[key]}: {detail}") from exc
            raise

    def discard(self) -> None:
        """Close and delete the temporary files (after an error or an interruption)."""
        for f in self.files.values():
            try:
                f.close()
            except Exception:  # the error being handled matters more than a failed close
                pass
        for path in self.temp.values():
            path.unlink(missing_ok=True)


def predict_scene(path: Path, segmenter, outputs: dict[str, Path], options: PredictOptions,
                  progress: bool = True) -> tuple[list[Path], list[str]]:
    """Predict one raster with ``segmenter`` into ``outputs`` (the paths of the module docstring by
    kind: ``classes``, and with the options ``confidence``, ``preview`` and ``polygons``; see
    ``co2s.inference.predict.output_paths``); returns them and any warnings."""

    prediction = segmenter.resolve(options.prediction)
    num_classes = segmenter.num_classes
    if num_classes >= NODATA:
        raise Co2sError(f"{num_classes} classes do not fit a uint8 class raster with nodata {NODATA}")
    notes = []
    with bounded_gdal_cache(COMPRESS_OVERVIEW="DEFLATE"):
        source = RasterReader(path, segmenter.bands, segmenter.scale, segmenter.in_channels)
        try:
            by = placed_by_points(source.dataset)
            if by:
                notes.append(f"{path} is placed by {by}, not a geotransform: its rasters carry the same {by} "
                             "(gdalwarp makes them maps)"
                             + ("; its polygons are in pixel coordinates" if options.polygons else ""))
            elif source.dataset.crs is None:
                notes.append(f"{path} has no CRS; its outputs are written without one")
            height, width = source.height, source.width
            grid = TileGrid.over(height, width, *segmenter.tiling(options.tile, options.overlap))
            writer = SceneOutputs(source, outputs, segmenter.palette, segmenter.classes, options)
            bar = progress_bar(total=grid.tiles_to_predict(streaming.PANEL_WIDTH), desc=path.name, unit="tile",
                               enabled=progress)
            start, pixels = time.perf_counter(), 0

            def report(tiles: int, finished: int) -> None:
                nonlocal pixels
                pixels += finished
                bar.update(tiles)
                bar.set_postfix_str(f"{pixels / 1e6 / max(time.perf_counter() - start, 1e-9):.2f} MP/s",
                                    refresh=False)

            try:
                for window, pieces in segmenter.predict_box(
                        source.read, height, width, Window(0, 0, width, height), [prediction], tile=options.tile,
                        overlap=options.overlap, tta=options.tta, precision=options.precision,
                        batch_size=options.batch_size, confidence=options.confidence or bool(options.polygons),
                        on_progress=report, validity=True):
                    writer.write_rows(window, pieces[prediction].classes, pieces[prediction].confidence,
                                      pieces[streaming.VALID])
                written = writer.finish()
            except BaseException:
                writer.discard()
                raise
            finally:
                bar.close()
            if writer.valid_pixels == 0:
                notes.append(f"{path}: every pixel is nodata; its class raster is all nodata ({NODATA})")
        finally:
            source.close()
    return written, notes
