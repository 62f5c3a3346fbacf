"""The one raster window reader: training crops, tile datasets, evaluation and whole-scene
prediction all read raster pixels through :class:`RasterReader`, so what a model sees at a pixel
is decided once (SPEC 4).

Coordinates: a :class:`Window` is ``(x, y, width, height)`` in pixels (column and row of its
top-left corner, then its size): rasterio's order, and the only box type of the package.

The invalid-pixel rule (:func:`model_input`), the same for every reader of pixels:

- a band value is *masked* where GDAL's per-band mask says so (the band's nodata value, an alpha
  band or an internal mask); for floating-point data a value that is not finite (NaN, inf) is
  masked too;
- a pixel is *invalid* when every selected band is masked, or (floating point) when any band is
  not finite;
- the model input is the scaled image with every masked value and every invalid pixel set to 0.
  Training zeroes them this way, evaluation and prediction feed exactly the same values, so a
  scene whose nodata value is 65535 predicts what the same scene with nodata 0 predicts. Invalid
  pixels are ``ignore_index`` in training labels, excluded from scores and nodata in outputs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from co2s.errors import DataError

#: GDAL's block cache for scene reads. Its default (5 % of RAM) fills with decoded blocks as
#: training, evaluation and prediction visit windows all over a scene, so memory would grow with
#: the scene instead of staying bounded by the crop. Prediction walks a tile grid whose
#: neighbours share blocks: a cache that holds a few rows of tiles pays there.
GDAL_CACHE_BYTES = 64 * 2**20
#: Training crops land anywhere in the scenes, so blocks are seldom reused: the cache only has to
#: hold one item's windows (crop, CutMix source, redraws), and it exists once per loader worker.
TRAINING_GDAL_CACHE_BYTES = 16 * 2**20


def bounded_gdal_cache(max_bytes: int = GDAL_CACHE_BYTES, **options):
    """A ``rasterio.Env`` whose block cache is capped at ``max_bytes`` (plus GDAL ``options``)."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=max_bytes, **options)


@dataclass(frozen=True)
class Window:
    """Pixels ``[y, y + height) x [x, x + width)`` of a raster or an image."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def from_bounds(cls, x0: int, y0: int, x1: int, y1: int) -> Window:
        """The window of columns ``[x0, x1)`` and rows ``[y0, y1)``."""
        return cls(x0, y0, x1 - x0, y1 - y0)

    @property
    def x1(self) -> int:
        return self.x + self.width

    @property
    def y1(self) -> int:
        return self.y + self.height

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``: the shape of its pixels as an array."""
        return self.height, self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` to index an ``[..., H, W]`` array with."""
        return slice(self.y, self.y1), slice(self.x, self.x1)

    def shifted(self, dx: int, dy: int) -> Window:
        return Window(self.x + dx, self.y + dy, self.width, self.height)

    def intersection(self, other: Window) -> Window | None:
        """The pixels both hold, None when they share none."""
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        return Window.from_bounds(x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def to_rasterio(self):
        from rasterio.windows import Window as RioWindow

        return RioWindow(self.x, self.y, self.width, self.height)


def dtype_scale(dtype) -> float:
    """What ``data.scale: auto`` divides stored values of ``dtype`` by: the range of uint8 (255)
    and uint16 (65535); 1 for every other type (floats are taken as already scaled)."""
    dtype = np.dtype(dtype).newbyteorder("=")  # a big-endian uint16 (PIL's I;16B) is a uint16 too
    return 255.0 if dtype == np.uint8 else 65535.0 if dtype == np.uint16 else 1.0


def scale_image(array: np.ndarray, scale: float | str = "auto") -> np.ndarray:
    """Convert raw values to float32, divided by ``scale`` (auto: :func:`dtype_scale`)."""
    if scale == "auto":
        scale = dtype_scale(array.dtype)
    return array.astype(np.float32) / np.float32(scale)


def model_input(raw: np.ndarray, masked: np.ndarray | None, scale: float | str = "auto"
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The invalid-pixel rule of the module docstring: ``raw`` ``[C, H, W]`` values as stored and
    ``masked`` ``[C, H, W]`` (True where a band is masked; None: nothing is) give the model input
    ``[C, H, W]`` float32 and the valid pixels ``[H, W]`` (None when every pixel is valid)."""
    image = scale_image(raw, scale)
    valid = None if masked is None else ~masked.all(0)
    if np.issubdtype(raw.dtype, np.floating):
        finite = np.isfinite(raw)
        if not finite.all():
            valid = finite.all(0) if valid is None else valid & finite.all(0)
            image[~finite] = 0
    if masked is not None:
        image[masked] = 0
    if valid is not None:
        if valid.all():
            return image, None
        image[:, ~valid] = 0
    return image, valid


def default_bands(dataset) -> list[int]:
    """The bands (1-based) a model reads from a raster when ``data.bands`` is unset: all but its
    alpha bands. An alpha band (``gdalwarp -dstalpha``, RGBA PNGs and GeoTIFFs of QGIS exports) says
    which pixels hold data: GDAL makes it the mask of the other bands, so it is the validity of the
    pixel rule, never a band of model input (as GIS software shows it: transparency)."""
    alpha = alpha_bands(dataset)
    if alpha:
        # GDAL tags the 4th band of any 4-band 8-bit GeoTIFF written without PHOTOMETRIC as alpha, so
        # an RGB+NIR file can carry it too: say so rather than drop it silently. One constant line,
        # which the CLI and the API show once per call (co2s.warnings_once).
        warnings.warn("an alpha band (as GDAL tags it: RGBA PNGs, gdalwarp -dstalpha, 4-band 8-bit "
                      "GeoTIFFs written without PHOTOMETRIC) is read as which pixels hold data, not as a "
                      "band of model input; set data.bands (e.g. [1, 2, 3, 4]) to read it as a band")
    return [b for b in range(1, dataset.count + 1) if b not in alpha]


def alpha_bands(dataset) -> list[int]:
    """The alpha bands (1-based) of a raster that :func:`default_bands` leaves out of model input
    (none when every band is alpha: then they are the data)."""
    from rasterio.enums import ColorInterp

    alpha = [b for b, ci in enumerate(dataset.colorinterp, start=1) if ci == ColorInterp.alpha]
    return alpha if len(alpha) < dataset.count else []


def said_bands(count: int, alpha: int = 0) -> str:
    """How band-count messages name what a model reads of a file: its bands, and the alpha bands
    left out (which explain a count one short of what the user sees in GIS software)."""
    left = f" (and {alpha} alpha band(s), read as which pixels hold data)" if alpha else ""
    return f"{count} band(s){left}"


def _raster_has_masks(dataset, bands: list[int]) -> bool:
    """Whether any selected band (1-based) carries a mask: nodata value, alpha band, internal mask."""
    from rasterio.enums import MaskFlags

    return any(MaskFlags.all_valid not in dataset.mask_flag_enums[b - 1] for b in bands)


def placement(dataset) -> dict:
    """The ``rasterio.open`` write keywords that put an output on the ground ``dataset`` covers,
    in the form the file has it: a geotransform and CRS; else ground control points and their CRS
    (Sentinel-1 GRD, scans placed in QGIS's Georeferencer without warping); else RPCs (satellite
    L1 products); else nothing (a plain pixel grid)."""
    if dataset.crs is not None or not dataset.transform.is_identity:
        return {"crs": dataset.crs, "transform": dataset.transform}
    gcps, crs = dataset.gcps
    if gcps:
        return {"gcps": gcps, "crs": crs}
    if dataset.rpcs:
        return {"rpcs": dataset.rpcs}
    return {}


def placed_by_points(dataset) -> str | None:
    """"ground control points" or "RPCs" when they, not a geotransform, place ``dataset``
    (:func:`placement`): its pixels are not on a map grid until warped."""
    placed = placement(dataset)
    return "ground control points" if "gcps" in placed else "RPCs" if "rpcs" in placed else None


def open_raster(path: Path):
    """``rasterio.open`` (read-only) without the not-georeferenced warning; errors name the file."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise DataError(f"cannot read raster {path}: {exc}") from None


def check_bands(path: Path, bands: list[int], count: int) -> None:
    """``bands`` (1-based) must exist in a file of ``count`` bands."""
    bad = [b for b in bands if b > count]
    if bad:
        raise DataError(f"{path}: has {count} band(s), config selects band(s) {bad} (1-based)")


def check_stored_orientation(path: Path, ds) -> None:
    """Refuse a photo whose EXIF orientation says to show it turned or mirrored when GDAL reads it.
    GDAL, and any georeferencing (a world file, ``.aux.xml``), place the pixels as stored; Pillow's
    read of the same file (:func:`co2s.data.io.read_image`, training's) turns them upright. Read
    here it would be predicted one way and trained on the other without a word."""
    orientation = str(ds.tags().get("EXIF_Orientation", "1")).strip()
    if orientation in ("", "0", "1"):
        return
    if ds.crs is not None or not ds.transform.is_identity or ds.gcps[0] or ds.rpcs:
        fix = ("on a georeferenced image, whose georeferencing places the pixels as stored; save the pixels "
               "upright with orientation 1, or drop the orientation tag if the georeferencing is right")
    else:
        fix = ("which a scene read (data.scenes) takes as stored while tile training turns it upright; save the pixels "
               "upright with orientation 1 (e.g. an image editor's 'apply rotation')")
    raise DataError(f"{path}: EXIF orientation {orientation} (shown turned or mirrored) {fix}")


class RasterReader:
    """A raster with the selected ``bands`` (1-based; None: all) and ``scale``, read window by
    window into model input (:func:`model_input`). ``channels``: the band count the model takes
    (checked up front when given).

    The file is opened lazily in each process (data-loader workers included) and never pickled
    open; errors are :class:`DataError` naming the file.
    """

    def __init__(self, path: str | os.PathLike, bands: list[int] | None = None, scale: float | str = "auto",
                 channels: int | None = None) -> None:
        self.path, self.scale = Path(path), scale
        if not self.path.is_file():
            raise DataError(f"image {self.path} is a directory, not a file" if self.path.is_dir()
                            else f"image not found: {self.path}")
        self._dataset, self._pid = None, None
        ds = self.dataset
        try:
            if ds.count == 0:
                held = (f": it holds {len(ds.subdatasets)} subdatasets ({', '.join(ds.subdatasets[:2])}"
                        f"{', ...' if len(ds.subdatasets) > 2 else ''}); export the one to use as a GeoTIFF"
                        if ds.subdatasets else "")
                raise DataError(f"{self.path}: the raster has no bands{held}")
            self.bands = list(bands) if bands is not None else default_bands(ds)
            self._bands_by_default = bands is None
            check_bands(self.path, self.bands, ds.count)
            self.width, self.height, self.count = ds.width, ds.height, ds.count
            if channels is not None and len(self.bands) != channels:
                raise DataError(f"{self.path}: has {self.bands_said} but the model was trained on {channels} "
                                "(see data.bands)")
            check_stored_orientation(self.path, ds)
            self.crs, self.transform = ds.crs, ds.transform
            self.block_shape = ds.block_shapes[0]
            self.masked = _raster_has_masks(ds, self.bands)
            self.floating = np.issubdtype(np.dtype(ds.dtypes[self.bands[0] - 1]), np.floating)
        except BaseException:
            self.close()
            raise

    @property
    def bands_said(self) -> str:
        """How many bands are read, and why fewer than the file holds when its alpha band was left out."""
        return said_bands(len(self.bands), self.count - len(self.bands) if self._bands_by_default else 0)

    # -- the file --------------------------------------------------------------------------
    @property
    def dataset(self):
        if self._dataset is None or self._pid != os.getpid():
            self._dataset, self._pid = open_raster(self.path), os.getpid()
        return self._dataset

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None, "_pid": None}  # never pickle an open dataset

    def close(self) -> None:
        if self._dataset is not None and self._pid == os.getpid():
            self._dataset.close()
        self._dataset, self._pid = None, None

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or not self.transform.is_identity

    @property
    def grid(self) -> dict:
        return {"crs": self.crs, "transform": self.transform, "width": self.width, "height": self.height}

    @property
    def full(self) -> Window:
        return Window(0, 0, self.width, self.height)

    # -- pixels ----------------------------------------------------------------------------
    def _call(self, read, what: str):
        from rasterio.errors import RasterioError

        try:
            return read()
        except RasterioError as exc:
            raise DataError(f"{self.path}: cannot read {what}: {exc}") from None

    def _resampling(self, out_shape: tuple[int, int] | None, nearest: bool) -> dict:
        if out_shape is None:
            return {}
        from rasterio.enums import Resampling

        return {"out_shape": (len(self.bands), *out_shape),
                "resampling": Resampling.nearest if nearest else Resampling.bilinear}

    def _band_masks(self, window: Window | None, out_shape: tuple[int, int] | None) -> np.ndarray | None:
        """``[C, h, w]`` True where a selected band is masked (masks are resampled nearest)."""
        if not self.masked:
            return None
        rio = None if window is None else window.to_rasterio()
        masks = self._call(lambda: self.dataset.read_masks(self.bands, window=rio,
                                                           **self._resampling(out_shape, True)), "its mask")
        return masks == 0

    def read(self, window: Window | None = None, out_shape: tuple[int, int] | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """Model input ``[C, h, w]`` float32 of ``window`` (None: the whole raster), read into
        ``out_shape`` when given (bilinear), and its valid pixels (None: all valid)."""
        rio = None if window is None else window.to_rasterio()
        raw = self._call(lambda: self.dataset.read(self.bands, window=rio, **self._resampling(out_shape, False)),
                         "a window")
        return model_input(raw, self._band_masks(window, out_shape), self.scale)

    def valid(self, window: Window | None = None, out_shape: tuple[int, int] | None = None
              ) -> np.ndarray | None:
        """The valid pixels of ``window`` (None: all valid); reads the data only for float rasters."""
        if self.floating:
            return self.read(window, out_shape)[1]
        masked = self._band_masks(window, out_shape)
        if masked is None:
            return None
        valid = ~masked.all(0)
        return None if valid.all() else valid


# ---------------------------------------------------------------------------------------------
# ground sample distance

#: WGS 84 semi-major axis (m) and first eccentricity squared: metres per degree of a geographic CRS
_WGS84_A, _WGS84_E2 = 6378137.0, 6.69437999014e-3
#: georeferenced files whose pixel sizes differ by more than this share are reported as mixed
GSD_TOLERANCE = 0.05


def ground_sample_distance(crs, transform, width: int, height: int) -> float | None:
    """Metres per pixel of a raster: the geometric mean of its pixel's width and height. A
    projected CRS converts by its linear unit (metres, US feet, ...); a geographic CRS converts
    degrees at the raster's centre on the WGS 84 ellipsoid (radii of curvature there). None
    without a CRS (a pixel grid is not a distance)."""
    import math

    if crs is None:
        return None
    dx, dy = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
    if crs.is_geographic:
        _, lat = transform * (width / 2, height / 2)
        phi = math.radians(max(-90.0, min(90.0, lat)))
        w = 1 - _WGS84_E2 * math.sin(phi) ** 2
        east = _WGS84_A / math.sqrt(w) * math.cos(phi)  # prime vertical radius x cos(latitude)
        north = _WGS84_A * (1 - _WGS84_E2) / w**1.5  # meridional radius
        dx, dy = math.radians(dx) * east, math.radians(dy) * north
    else:
        try:
            factor = crs.linear_units_factor[1]
        except Exception:  # a CRS without a linear unit rasterio can name
            return None
        dx, dy = dx * factor, dy * factor
    gsd = math.sqrt(dx * dy)
    return gsd if math.isfinite(gsd) and gsd > 0 else None


def rasters_gsd(paths: list[Path], limit: int = 32) -> tuple[float | None, str | None]:
    """The ground sample distance of the training rasters (the median over the first ``limit``
    georeferenced ones, headers only) and a note when their distances differ by more than
    ``GSD_TOLERANCE``; None when none is georeferenced."""
    found = []
    for path in paths:
        if len(found) == limit:
            break
        try:
            with open_raster(Path(path)) as ds:
                gsd = ground_sample_distance(ds.crs, ds.transform, ds.width, ds.height)
        except DataError:
            continue  # unreadable files are reported by the data checks
        if gsd is not None:
            found.append(gsd)
    if not found:
        return None, None
    median = float(np.median(found))
    spread = (max(found) - min(found)) / median
    note = (f"the training rasters' ground sample distances differ ({min(found):.3g} to {max(found):.3g} m "
            f"per pixel); the model records the median {median:.3g} m (set data.gsd to choose)"
            if spread > GSD_TOLERANCE else None)
    return median, note
