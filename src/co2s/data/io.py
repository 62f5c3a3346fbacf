"""Reading images and masks from disk: PNG/JPEG through Pillow, TIFF/GeoTIFF through rasterio.

Images come back as ``[bands, H, W]`` arrays in their stored dtype; masks as ``[H, W]`` integer
arrays (palette PNGs give their indices) or ``[H, W, 3]`` for colour-coded masks. Every failure is
a :class:`DataError` that names the file.

Invalid (nodata) pixels of a raster follow GDAL's rule, shared by training, evaluation and
whole-scene prediction (:func:`raster_valid`): a pixel is invalid when every selected band is
masked (the band's nodata value, an alpha band or an internal mask) or, for floating-point data,
when any selected band is not finite (NaN, inf).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from co2s.atomic import atomic_path
from co2s.errors import DataError

TIFF_SUFFIXES = {".tif", ".tiff"}
PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
IMAGE_SUFFIXES = PLAIN_IMAGE_SUFFIXES | TIFF_SUFFIXES
#: rasters predicted as whole scenes (any file rasterio opens is accepted when named explicitly)
SCENE_SUFFIXES = TIFF_SUFFIXES | {".vrt", ".jp2", ".img"}
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


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def _check_exists(path: Path, what: str) -> None:
    if not path.is_file():
        if path.is_dir():
            raise DataError(f"{what} {path} is a directory, not a file")
        raise DataError(f"{what} not found: {path}")


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


def raster_nodata_flags(dataset, bands: list[int]) -> tuple[bool, bool]:
    """``(masked, floating)`` of the selected bands (1-based) of an open rasterio dataset:
    whether any carries a mask (nodata value, alpha band, internal mask) and whether the data is
    floating point. When both are False every pixel is valid (no read needed)."""
    from rasterio.enums import MaskFlags

    masked = any(MaskFlags.all_valid not in dataset.mask_flag_enums[b - 1] for b in bands)
    floating = np.issubdtype(np.dtype(dataset.dtypes[bands[0] - 1]), np.floating)
    return masked, floating


def raster_valid(dataset, bands: list[int], window=None, raw: np.ndarray | None = None,
                 flags: tuple[bool, bool] | None = None,
                 out_shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """Valid pixels ``[h, w]`` of ``window`` (None: the whole raster), or ``None`` when all are.

    GDAL's dataset-mask rule: a pixel is valid where any selected band holds data; for float
    rasters every selected band must also be finite. ``raw`` is the window's data when already
    read (at ``out_shape`` when given); ``flags`` the result of :func:`raster_nodata_flags` when
    already known. ``out_shape`` ``(h, w)``: the window read resampled to that size (the masks
    nearest, as the scenes' training crops read them).
    """
    masked, floating = flags if flags is not None else raster_nodata_flags(dataset, bands)
    resample = {}
    if out_shape is not None:
        from rasterio.enums import Resampling

        resample = {"out_shape": (len(bands), *out_shape), "resampling": Resampling.nearest}
    valid = None
    if masked:
        valid = dataset.read_masks(bands, window=window, **resample).max(0) > 0
    if floating:
        if raw is None:
            raw = dataset.read(bands, window=window, **resample)
        finite = np.isfinite(raw).all(0)
        valid = finite if valid is None else valid & finite
    return valid


def _read_raster(path: Path, bands: list[int] | None, with_valid: bool = False,
                 colormap: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Data ``[bands, H, W]`` and, when ``with_valid``, the valid pixels (None: all valid).

    ``colormap``: a single-band raster with a colour table comes back as its colours ``[3, H, W]``.
    """
    from rasterio.errors import RasterioError

    with open_raster(path) as src:
        try:
            if colormap and src.count == 1:
                try:
                    table = src.colormap(1)
                except ValueError:  # no colour table
                    table = None
                if table:
                    indices = src.read(1)
                    lut = np.zeros((max(256, max(table) + 1, int(indices.max()) + 1), 3), np.uint8)
                    for index, rgba in table.items():
                        lut[index] = rgba[:3]
                    return lut[indices].transpose(2, 0, 1), None
            selected = list(bands) if bands is not None else list(range(1, src.count + 1))
            if bands is not None:
                check_bands(path, bands, src.count)
            array = src.read(selected)
            valid = raster_valid(src, selected, raw=array) if with_valid and selected else None
            return array, valid
        except RasterioError as exc:
            raise DataError(f"cannot read raster {path}: {exc}") from None


def check_bands(path: Path, bands: list[int], count: int) -> None:
    """``bands`` (1-based) must exist in a file of ``count`` bands."""
    bad = [b for b in bands if b > count]
    if bad:
        raise DataError(f"{path}: has {count} band(s), config selects band(s) {bad} (1-based)")


def read_image(path: str | os.PathLike, bands: list[int] | None = None) -> np.ndarray:
    """Read an image as ``[bands, H, W]`` in its stored dtype (uint8, uint16, float...).

    ``bands`` are 1-based band indices to keep, in order; ``None`` keeps all.
    """
    return read_image_valid(path, bands, with_valid=False)[0]


def read_image_valid(path: str | os.PathLike, bands: list[int] | None = None,
                     with_valid: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`read_image` and its valid pixels ``[H, W]`` bool (the module's nodata rule), or
    ``None`` when every pixel is valid (always for PNG/JPEG/BMP)."""
    path = Path(path)
    _check_exists(path, "image")
    valid = None
    if _is_tiff(path):
        array, valid = _read_raster(path, bands, with_valid)
    else:
        try:
            with Image.open(path) as img:
                if img.mode == "P":
                    img = img.convert("RGB")
                array = np.asarray(img)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        if bands is not None:
            check_bands(path, bands, array.shape[0])
            array = array[[b - 1 for b in bands]]
    if array.size == 0:
        raise DataError(f"image {path} is empty ({array.shape})")
    if valid is not None and valid.all():
        valid = None
    return np.ascontiguousarray(array), valid


def read_mask(path: str | os.PathLike, color: bool = False) -> np.ndarray:
    """Read a mask: ``[H, W]`` integers, or ``[H, W, 3]`` uint8 when ``color`` (colour-coded masks).

    Palette ("P" mode) PNGs, and TIFFs with a colour table, return their indices, as annotation
    tools write them; with ``color`` they return their colours, so colour decoding does not depend
    on the order of a file's palette.
    """
    path = Path(path)
    _check_exists(path, "mask")
    if _is_tiff(path):
        array, _ = _read_raster(path, None, colormap=color)
        if color:
            if array.shape[0] < 3:
                raise DataError(f"colour mask {path} has {array.shape[0]} band(s), expected 3")
            return np.ascontiguousarray(array[:3].transpose(1, 2, 0))
        if array.shape[0] != 1:
            raise DataError(f"mask {path} has {array.shape[0]} bands; a mask must have one band")
        array = array[0]
    else:
        try:
            with Image.open(path) as img:
                if color:
                    array = np.asarray(img.convert("RGB"))
                else:
                    if img.mode not in {"L", "P", "I", "I;16", "1"}:
                        raise DataError(
                            f"mask {path} is a {img.mode} image; masks must be single-band index "
                            "images (set data.color_masks: true for colour-coded masks)"
                        )
                    array = np.asarray(img)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read mask {path}: {exc}") from None
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise DataError(f"mask {path} holds non-integer values")
        array = array.astype(np.int64)
    return np.ascontiguousarray(array)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the header only."""
    height, width, _ = image_header(path)
    return height, width


def image_header(path: str | os.PathLike) -> tuple[int, int, int]:
    """(height, width, bands) from the header only; bands as :func:`read_image` returns them
    (a palette image reads as its 3 colour bands)."""
    path = Path(path)
    _check_exists(path, "file")
    if _is_tiff(path):
        with open_raster(path) as src:
            return src.height, src.width, src.count
    try:
        with Image.open(path) as img:
            bands = 3 if img.mode == "P" else len(img.getbands())
            return img.height, img.width, bands
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def scale_image(array: np.ndarray, scale: float | str = "auto") -> np.ndarray:
    """Convert raw values to float32, divided by ``scale`` (auto: by the dtype's range)."""
    if scale == "auto":
        if array.dtype == np.uint8:
            scale = 255.0
        elif array.dtype == np.uint16:
            scale = 65535.0
        else:
            scale = 1.0
    return array.astype(np.float32) / np.float32(scale)


def save_index_png(path: str | os.PathLike, mask: np.ndarray, palette: list | None) -> None:
    """Write class indices as a palette PNG (indices stay exact; viewers show colours)."""
    img = Image.fromarray(mask.astype(np.uint8), mode="L")
    if palette:
        img = img.convert("P")
        flat = [c for rgb in palette for c in rgb]
        img.putpalette(flat + [0, 0, 0] * (256 - len(palette)))
    atomic_save_image(img, path)


def colorize(mask: np.ndarray, palette: list, ignore_index: int = 255) -> np.ndarray:
    """``[H, W]`` indices to ``[H, W, 3]`` uint8 colours; unknown values are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    out = lut[np.clip(mask, 0, 255).astype(np.uint8)]
    out[mask == ignore_index] = 0
    return out


def atomic_save_image(img: Image.Image, path: str | os.PathLike) -> None:
    """Save through a temporary name so an interruption never leaves a truncated file."""
    path = Path(path)
    with atomic_path(path, durable=False) as tmp:
        img.save(tmp, format=(path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"))
