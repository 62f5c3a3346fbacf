"""Reading images and masks from disk: PNG/JPEG through Pillow, TIFF/GeoTIFF through rasterio.

Images read as model input (:func:`read_model_input`) follow the package's one invalid-pixel
rule (:mod:`co2s.data.raster`); :func:`read_image` gives the stored values. Masks come back as
``[H, W]`` integer arrays (palette PNGs give their indices) or ``[H, W, 3]`` for colour-coded
masks. Every failure is a :class:`DataError` that names the file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from co2s.atomic import atomic_path
from co2s.config import limits
from co2s.data.raster import (RasterReader, alpha_bands, check_bands, default_bands, dtype_scale, model_input,
                              open_raster, placement)
from co2s.errors import DataError

TIFF_SUFFIXES = {".tif", ".tiff"}
PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
IMAGE_SUFFIXES = PLAIN_IMAGE_SUFFIXES | TIFF_SUFFIXES
#: rasters predicted as whole scenes (any file rasterio opens is accepted when named explicitly)
SCENE_SUFFIXES = TIFF_SUFFIXES | {".vrt", ".jp2", ".img"}


def image_files(folder: Path, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """The files of ``folder`` with one of ``suffixes``, sorted: the one rule for what a folder given
    as data or as prediction input holds. Hidden files are left out, as a shell glob leaves them:
    macOS writes an AppleDouble ``._name.tif`` beside every file copied to a FAT or exFAT drive or a
    network share, which carries the image's suffix but is no image."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.suffix.lower() in suffixes and p.is_file())


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def _read_by_gdal(path: Path) -> bool:
    """Whether an image file is read through rasterio (GDAL): TIFFs; PNGs of 16-bit colour, which
    Pillow reads as 8-bit, dropping the low byte of every value without a word (16-bit grey it
    reads whole); and PNGs with an alpha channel, whose alpha GDAL makes the validity mask
    (:func:`~co2s.data.raster.default_bands`). The PNG header's bit depth and colour type decide."""
    if _is_tiff(path):
        return True
    if path.suffix.lower() != ".png":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(26)  # signature (8), IHDR length and type (8), width, height, depth, type
    except OSError:
        return False  # reported by the reader
    return (len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
            and (head[25] in (4, 6) or (head[24] == 16 and head[25] == 2)))  # 4, 6: with alpha


def _check_exists(path: Path, what: str) -> None:
    """A file to read is there and not empty (Pillow and GDAL would say "cannot identify image
    file" of an empty one, which hides that its write never finished)."""
    if not path.is_file():
        if path.is_dir():
            raise DataError(f"{what} {path} is a directory, not a file")
        raise DataError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{what} {path} is an empty file (0 bytes: an interrupted copy or download?)")


_LOSSY = ("changes class values where classes meet (an edge pixel of class 1 between 0 and 2 "
          "may read as 2); save masks as PNG, or TIFF without JPEG compression")


def check_whole_image(path: Path, height: int, width: int, what: str = "image") -> None:
    """An image read whole holds at most ``limits.MAX_WHOLE_IMAGE_PIXELS`` pixels: a header may
    claim any size, and a larger raster is read in windows as a scene."""
    if height * width > limits.MAX_WHOLE_IMAGE_PIXELS:
        raise DataError(
            f"{what} {path} is {width} x {height} px ({height * width / 1e6:.0f} Mpx), more than the "
            f"{limits.MAX_WHOLE_IMAGE_PIXELS / 1e6:.0f} Mpx co2s reads whole; a larger raster is read in "
            f"windows as a scene: convert it to GeoTIFF (gdal_translate -of COG {path.name} {path.stem}.tif) "
            "to predict it, or name it under data.scenes to train on it")


@contextlib.contextmanager
def _pillow_image(path: Path, what: str = "image", whole: bool = True):
    """``Image.open`` for reading, with co2s's bound on an image read whole (``whole``; False: only
    the header is read) in place of Pillow's decompression-bomb check, which stops a 200 Mpx photo
    or a large orthophoto export with an exception of its own. An unreadable file is a one-line
    ``DataError`` naming ``what`` and the file."""
    try:
        bound = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # Pillow's check reads this global as it opens a file
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = bound
        with img:
            if whole:
                check_whole_image(path, img.height, img.width, what)
            yield img
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None


def _read_raster(path: Path, bands: list[int] | None, colormap: bool = False, mask: bool = False) -> np.ndarray:
    """Stored values ``[bands, H, W]`` of a TIFF. ``colormap``: a single-band raster with a colour
    table comes back as its colours ``[3, H, W]``. ``mask``: lossy compression is refused."""
    return _read_raster_labelled(path, bands, colormap, mask, labelled=False)[0]


def _read_raster_labelled(path: Path, bands: list[int] | None, colormap: bool = False, mask: bool = False,
                          labelled: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_read_raster`, and (``labelled``) the pixels GDAL's mask holds as data ``[H, W]``
    (nodata and alpha left out; None: all, or not asked)."""
    from rasterio.enums import MaskFlags
    from rasterio.errors import RasterioError

    with open_raster(path) as src:
        check_whole_image(path, src.height, src.width, "mask" if mask else "image")
        compression = getattr(src.compression, "name", "")
        if mask and compression in ("jpeg", "webp"):
            raise DataError(f"mask {path} is {compression.upper()}-compressed: lossy compression {_LOSSY}")
        try:
            table = None
            if colormap and src.count == 1:
                try:
                    table = src.colormap(1)
                except ValueError:  # no colour table
                    table = None
            read = list(bands) if bands is not None else list(range(1, src.count + 1))
            if bands is not None:
                check_bands(path, bands, src.count)
            everywhere = not labelled or all(MaskFlags.all_valid in src.mask_flag_enums[b - 1] for b in read)
            data = None if everywhere else src.dataset_mask() > 0  # read only when asked for
            if table:
                indices = src.read(1)
                lut = np.zeros((max(256, max(table) + 1, int(indices.max()) + 1), 3), np.uint8)
                for index, rgba in table.items():
                    lut[index] = rgba[:3]
                return lut[indices].transpose(2, 0, 1), data
            return src.read(read), data
        except RasterioError as exc:
            raise DataError(f"cannot read raster {path}: {exc}") from None


_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation of a photo (1: as stored), which cameras, phones and drones write
    instead of rotating the pixels."""
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except (ValueError, TypeError, OSError):  # an unreadable EXIF block: the pixels as stored
        return 1


def _upright(img: Image.Image) -> Image.Image:
    """The image as viewers, labelling tools (labelme, CVAT) and OpenCV show it: the EXIF
    orientation applied. Read as stored, a rotated photo would meet the mask drawn on it upright
    turned 90 degrees (silently so for a square tile)."""
    return ImageOps.exif_transpose(img) if _orientation(img) not in (0, 1) else img


def _transparent(img: Image.Image) -> np.ndarray | None:
    """The pixels a PNG's tRNS chunk marks transparent ``[H, W]`` (None: it has none): a palette
    entry of alpha 0, or the one grey level or colour named transparent. Viewers show them as no
    data and GDAL reads them as nodata, so they are invalid as alpha-0 pixels are; read as their
    colours they would pass as valid pixels without a word."""
    trns = img.info.get("transparency")
    if trns is None:
        return None
    values = np.asarray(img)
    if img.mode == "P":
        alpha = np.full(256, 255, np.uint8)
        if isinstance(trns, bytes):
            alpha[: len(trns)] = np.frombuffer(trns, np.uint8)[:256]
        else:
            alpha[int(trns)] = 0
        return alpha[values] == 0
    if values.ndim == 3:
        return (values == np.asarray(trns, values.dtype)).all(-1)
    return values == trns


def _read_plain(path: Path, bands: list[int] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Values ``[bands, H, W]`` of an image Pillow reads (a palette image as its colours) and its
    transparent pixels (:func:`_transparent`)."""
    with _pillow_image(path) as img:
        img = _upright(img)
        transparent = _transparent(img)
        img.info.pop("transparency", None)  # taken above; Pillow would warn of it when converting
        if img.mode == "P":
            img = img.convert("RGB")
        array = np.asarray(img)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if bands is not None:
        check_bands(path, bands, array.shape[0])
        array = array[[b - 1 for b in bands]]
    return array, transparent


def _not_empty(path: Path, array: np.ndarray) -> np.ndarray:
    if array.size == 0:
        raise DataError(f"image {path} is empty ({array.shape})")
    return array


def read_image(path: str | os.PathLike, bands: list[int] | None = None) -> np.ndarray:
    """An image's stored values ``[bands, H, W]`` (uint8, uint16, float...), nodata included:
    for looking at a file. What a model sees is :func:`read_model_input`.

    ``bands`` are 1-based band indices to keep, in order; ``None`` keeps all.
    """
    path = Path(path)
    _check_exists(path, "image")
    array = _read_raster(path, bands) if _read_by_gdal(path) else _read_plain(path, bands)[0]
    return np.ascontiguousarray(_not_empty(path, array))


def read_model_input(path: str | os.PathLike, bands: list[int] | None = None, scale: float | str = "auto"
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """A whole image file as model input ``[C, H, W]`` float32 and its valid pixels ``[H, W]``
    (None: all valid; always for JPEG, BMP and PNGs without alpha or tRNS transparency): the package's one invalid-pixel rule
    (:func:`co2s.data.raster.model_input`), TIFFs read by :class:`~co2s.data.raster.RasterReader`."""
    path = Path(path)
    _check_exists(path, "image")
    if _read_by_gdal(path):
        with RasterReader(path, bands, scale) as reader:
            check_whole_image(path, reader.height, reader.width)
            if reader.width * reader.height == 0:
                raise DataError(f"image {path} is empty ({reader.count}, {reader.height}, {reader.width})")
            image, valid = reader.read()
    else:
        array, transparent = _read_plain(path, bands)
        masked = None if transparent is None else np.broadcast_to(transparent, array.shape)
        image, valid = model_input(_not_empty(path, array), masked, scale)
    return np.ascontiguousarray(image), valid


def read_mask(path: str | os.PathLike, color: bool = False) -> np.ndarray:
    """Read a mask: ``[H, W]`` integers, or ``[H, W, 3]`` uint8 when ``color`` (colour-coded masks).

    Palette ("P" mode) PNGs, and TIFFs with a colour table, return their indices, as annotation
    tools write them; with ``color`` they return their colours, so colour decoding does not depend
    on the order of a file's palette. Which pixels it labels: :func:`read_mask_labelled`.
    """
    return read_mask_labelled(path, color)[0]


def read_mask_labelled(path: str | os.PathLike, color: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`read_mask`, and the pixels the mask labels ``[H, W]`` (None: every pixel): a raster
    mask's nodata (GDAL's mask) labels nothing, in tiles as in the masks of scenes
    (:mod:`co2s.data.scene_labels`). A PNG mask labels every pixel: its values are the labels, as
    annotation tools write them, whatever a palette entry's transparency says."""
    path = Path(path)
    _check_exists(path, "mask")
    labelled = None
    if _is_tiff(path):
        array, labelled = _read_raster_labelled(path, None, colormap=color, mask=True)
        if color:
            if array.shape[0] < 3:
                raise DataError(f"colour mask {path} has {array.shape[0]} band(s), expected 3")
            return np.ascontiguousarray(array[:3].transpose(1, 2, 0)), labelled
        if array.shape[0] != 1:
            raise DataError(f"mask {path} has {array.shape[0]} bands; a mask must have one band")
        array = array[0]
    else:
        with _pillow_image(path, "mask") as img:
            if img.format == "JPEG":  # by content, not by name: a .png that is a JPEG too
                raise DataError(f"mask {path} is a JPEG: lossy compression {_LOSSY}")
            img = _upright(img)
            if color:
                array = np.asarray(img.convert("RGB"))
            else:
                if img.mode not in {"L", "P", "I", "I;16", "1"}:
                    raise DataError(
                        f"mask {path} is a {img.mode} image; masks must be single-band index "
                        "images (set data.color_masks: true for colour-coded masks)"
                    )
                array = np.asarray(img)
    if np.issubdtype(array.dtype, np.floating):
        if labelled is not None:  # nodata (NaN, -9999.5, ...) is no label, whatever its value
            array = np.where(labelled, array, 0)
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise DataError(f"mask {path} holds non-integer values")
        array = array.astype(np.int64)
    return np.ascontiguousarray(array), labelled


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the header only."""
    height, width, _ = image_header(path)
    return height, width


def image_dtype(path: str | os.PathLike) -> np.dtype:
    """The data type :func:`read_image` gives for a file, from its header only."""
    path = Path(path)
    _check_exists(path, "file")
    if _read_by_gdal(path):
        with open_raster(path) as src:
            return np.result_type(*src.dtypes)
    with _pillow_image(path, whole=False) as img:
        mode = "RGB" if img.mode == "P" else img.mode  # palette images read as their colours
        try:
            return np.dtype(ImageMode.getmode(mode).typestr)
        except KeyError:  # a mode Pillow has no table entry for: what reading it gives
            return np.asarray(img).dtype


def images_auto_scale(paths: list, limit: int = 32) -> float | None:
    """What ``data.scale: auto`` divides these images by (:func:`~co2s.data.raster.dtype_scale` of
    their data type, headers of the first ``limit``); None when their scales differ or none reads."""
    scales = set()
    for path in paths[:limit]:
        try:
            scales.add(dtype_scale(image_dtype(path)))
        except DataError:
            continue  # unreadable files are reported by the data checks
    return scales.pop() if len(scales) == 1 else None


def placed_on_the_ground(path: str | os.PathLike) -> bool:
    """Whether GDAL places the file on the ground (a geotransform, GCPs or RPCs;
    :func:`~co2s.data.raster.placement`): a PNG or JPEG is, with a world file (``.pgw``, ``.jgw``,
    ``.wld``) or a ``.aux.xml`` beside it, as municipal orthophoto tiles and older GIS exports ship."""
    try:
        with open_raster(Path(path)) as src:
            return bool(placement(src))
    except DataError:
        return False  # unreadable here: the reader says why


def alpha_band_count(path: str | os.PathLike) -> int:
    """How many alpha bands of the image at ``path`` :func:`read_model_input` leaves out of model
    input with ``data.bands`` unset (they are its validity): for band-count errors, which must say
    why a file has one band fewer than GIS software shows."""
    path = Path(path)
    if not _read_by_gdal(path):
        return 0  # Pillow's path: PNGs with alpha go through GDAL
    try:
        with open_raster(path) as src:
            return len(alpha_bands(src))
    except DataError:
        return 0  # the reader reports an unreadable file; this only words a count


def image_header(path: str | os.PathLike) -> tuple[int, int, int]:
    """(height, width, bands) from the header only; bands as a model reads them with ``data.bands``
    unset (:func:`read_model_input`: a palette image as its 3 colour bands, an alpha band not at
    all: it is the validity)."""
    path = Path(path)
    _check_exists(path, "file")
    if _read_by_gdal(path):
        with open_raster(path) as src:
            return src.height, src.width, len(default_bands(src))
    with _pillow_image(path, whole=False) as img:
        bands = 3 if img.mode == "P" else len(img.getbands())
        if _orientation(img) in _TRANSPOSED:
            return img.width, img.height, bands
        return img.height, img.width, bands


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
