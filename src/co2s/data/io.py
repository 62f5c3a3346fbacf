"""Reading images and masks from disk: PNG/JPEG through Pillow, TIFF/GeoTIFF through rasterio.

Images come back as ``[bands, H, W]`` arrays in their stored dtype; masks as ``[H, W]`` integer
arrays (palette PNGs give their indices) or ``[H, W, 3]`` for colour-coded masks. Every failure is
a :class:`DataError` that names the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from co2s.errors import DataError

TIFF_SUFFIXES = {".tif", ".tiff"}
PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
IMAGE_SUFFIXES = PLAIN_IMAGE_SUFFIXES | TIFF_SUFFIXES
#: rasters predicted as whole scenes (any file rasterio opens is accepted when named explicitly)
SCENE_SUFFIXES = TIFF_SUFFIXES | {".vrt", ".jp2", ".img"}


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def _check_exists(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")


def _read_raster(path: Path, bands: list[int] | None) -> np.ndarray:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if bands is not None:
                    check_bands(path, bands, src.count)
                return src.read(bands)
    except RasterioIOError as exc:
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
    path = Path(path)
    _check_exists(path, "image")
    if _is_tiff(path):
        array = _read_raster(path, bands)
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
    return np.ascontiguousarray(array)


def read_mask(path: str | os.PathLike, color: bool = False) -> np.ndarray:
    """Read a mask: ``[H, W]`` integers, or ``[H, W, 3]`` uint8 when ``color`` (colour-coded masks).

    Palette ("P" mode) PNGs return their indices, as annotation tools write them.
    """
    path = Path(path)
    _check_exists(path, "mask")
    if _is_tiff(path):
        array = _read_raster(path, None)
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
    path = Path(path)
    _check_exists(path, "file")
    if _is_tiff(path):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    return src.height, src.width
        except RasterioIOError as exc:
            raise DataError(f"cannot read raster {path}: {exc}") from None
    try:
        with Image.open(path) as img:
            return img.height, img.width
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
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format=(path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"))
    os.replace(tmp, path)
