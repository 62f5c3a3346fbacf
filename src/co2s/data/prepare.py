"""``co2s prepare``: a paper dataset's official release turned into the layout of its preset.

The benchmark presets (``loveda``, ``potsdam``) read ``<root>/images``, ``<root>/labels`` and the
authors' split lists under ``<root>/splits/`` (lines ``images/x.png labels/x.png``).
:func:`prepare_dataset` builds that tree from the release as its publishers distribute it:

- **loveda**: ``Train/``, ``Val/`` (and optionally ``Test/``) as unzipped from Zenodo record
  5706578, each with ``Urban/`` and ``Rural/`` holding ``images_png/`` and ``masks_png/`` (Test has
  no masks); ``Train.zip`` / ``Val.zip`` / ``Test.zip`` themselves are read too. Image ids are
  unique numbers across the whole release (Train 0-2521, Val 2522-4190, Test 4191-5986), so every
  image keeps its file name: ``images/<id>.png`` and ``labels/<id>.png``. Files are hard-linked
  (symbolic links across file systems, copies only where neither works or ``link=False``;
  members of a zip are extracted). The masks are kept as released (0 no-data, 1..7 the classes):
  the preset's ``reduce_zero_label`` reads 0 as ignore and 1..7 as classes 0..6, as the authors'
  code does, so no value is converted.
- **potsdam**: ``2_Ortho_RGB/top_potsdam_<a>_<b>_RGB.tif`` and
  ``5_Labels_all_noBoundary/top_potsdam_<a>_<b>_label_noBoundary.tif`` (or
  ``5_Labels_all/..._label.tif``) of the ISPRS benchmark. Each 6000 x 6000 tile is cut into
  crops of the preset's ``train.crop_size`` (512) without overlap, the last row and column
  shifted to end at the border, named ``<a>_<b>_<x0>_<y0>_<x1>_<y1>.png`` (x: column): the tiles
  and names of mmsegmentation's converter, which the authors' lists use. Colour labels become
  indices: palette position + 1 (the preset reads them with ``reduce_zero_label``), 0 for black
  (the eroded boundaries of the noBoundary labels) and for any colour not in the palette.

Without split lists, the official split is written as ``splits/official/*.txt`` and, for the
entries the preset names (``splits/train.txt``, ``splits/val.txt``), as those files. With
``splits`` (a folder of the authors' lists, such as Co2S's ``splits/loveda``), every list is
checked against the prepared tree and copied under ``splits/``, replacing lists an earlier run
wrote. The source is never modified. A rerun into the same folder is idempotent; a folder that
holds other data is refused. ``prepare.json`` records what was done.
"""

from __future__ import annotations

import errno
import filecmp
import hashlib
import json
import os
import posixpath
import re
import shutil
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from co2s.atomic import atomic_path, write_text
from co2s.data.io import image_files
from co2s.data.sources import list_fields
from co2s.errors import DataError
from co2s.progress import progress_bar
from co2s.version import __version__

#: the datasets ``co2s prepare`` knows, by preset name
DATASETS = ("loveda", "potsdam")
#: the record of a prepared tree, at its root
RECORD = "prepare.json"
#: where the official split's own lists go (the authors' lists keep their own names)
OFFICIAL = "splits/official"

_LOVEDA_SOURCE = "https://zenodo.org/records/5706578"
_LOVEDA_EXPECTED = ("Train/ and Val/ (Test/ optional) as unzipped from Zenodo's Train.zip, Val.zip and Test.zip "
                    f"({_LOVEDA_SOURCE}), or those zips, each with Urban/ and Rural/ holding images_png/ and "
                    "masks_png/ (Test: images_png/ only)")
_LOVEDA_CLASSES = 7  # mask values 1..7; 0 is no-data

#: ISPRS Potsdam: the 24 tiles whose labels were released first (mmsegmentation's 'train') and the
#: 14 test tiles (its 'val'), whose labels came with 5_Labels_all later
_POTSDAM_TRAIN = ("2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
                  "6_10", "6_11", "6_12", "6_7", "6_8", "6_9", "7_10", "7_11", "7_12", "7_7", "7_8", "7_9")
_POTSDAM_TEST = ("2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14",
                 "6_15", "7_13")
_POTSDAM_EXPECTED = ("2_Ortho_RGB/top_potsdam_<a>_<b>_RGB.tif and 5_Labels_all_noBoundary/"
                     "top_potsdam_<a>_<b>_label_noBoundary.tif (or 5_Labels_all/top_potsdam_<a>_<b>_label.tif), "
                     "as unzipped from the ISPRS benchmark's 2_Ortho_RGB.zip and 5_Labels_all_noBoundary.zip")
_POTSDAM_LABEL_FOLDERS = (("5_Labels_all_noBoundary", "_label_noBoundary.tif"), ("5_Labels_all", "_label.tif"))


# ---------------------------------------------------------------------------------------------
# what a dataset's release holds, and what the prepared tree will hold


@dataclass
class _File:
    """A file of the prepared tree that is a source file as it is (linked, copied or extracted)."""

    rel: str  # its path in the prepared tree (posix)
    origin: str  # where it comes from, for messages
    path: Path | None = None  # a source file
    member: tuple[Path, zipfile.ZipInfo] | None = None  # or a zip member


@dataclass
class _Tile:
    """A Potsdam tile cut into crops: image and colour label of the same size."""

    name: str  # "2_10"
    image: Path
    label: Path
    split: str
    width: int
    height: int
    xs: list[int]
    ys: list[int]
    size: int

    def crops(self) -> Iterator[tuple[int, int, str]]:
        for y in self.ys:
            for x in self.xs:
                yield x, y, f"{self.name}_{x}_{y}_{x + self.size}_{y + self.size}.png"


@dataclass
class _Plan:
    dataset: str
    layout: str  # which form of the release was read
    label_handling: str
    files: list[_File] = field(default_factory=list)
    tiles: list[_Tile] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)  # official split -> list lines
    preset_lists: dict[str, str] = field(default_factory=dict)  # rel under splits/ -> official split it gets

    def targets(self) -> set[str]:
        out = {f.rel for f in self.files}
        for tile in self.tiles:
            for _, _, name in tile.crops():
                out.update((f"images/{name}", f"labels/{name}"))
        return out


def _sort_ids(ids) -> list[str]:
    return sorted(ids, key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i))


# -- LoveDA ------------------------------------------------------------------------------------


class _Listing:
    """The ``images_png`` / ``masks_png`` files of one split of the LoveDA release, from its
    unzipped folder or from its zip."""

    def __init__(self, source: Path, split: str) -> None:
        self.split, self.folder, self.zip = split, source / split, None
        if not self.folder.is_dir():
            self.zip = source / f"{split}.zip"
            if not self.zip.is_file():
                self.zip = None

    @property
    def present(self) -> bool:
        return self.folder.is_dir() or self.zip is not None

    def entries(self, domain: str, kind: str, required: bool) -> dict[str, _File]:
        """``{id: _File}`` of ``<split>/<domain>/<kind>/<id>.png``; missing folder: an error when
        ``required``, else empty."""
        where = f"{self.split}/{domain}/{kind}"
        found: dict[str, _File] = {}
        if self.zip is None:
            folder = self.folder / domain / kind
            if not folder.is_dir():
                if required:
                    raise DataError(f"{self.folder.parent}: not the official LoveDA layout: {where}/ is missing "
                                    f"(expected {_LOVEDA_EXPECTED})")
                return found
            for path in image_files(folder, {".png"}):
                found[path.stem] = _File("", str(path), path=path)
            return found
        for info in self._members():
            parts = info.filename.rstrip("/").split("/")
            if len(parts) == 4 and "/".join(parts[:3]) == where and parts[3].lower().endswith(".png") \
                    and not info.is_dir():
                found[parts[3][:-4]] = _File("", f"{self.zip}:{info.filename}", member=(self.zip, info))
        if not found and required:
            raise DataError(f"{self.zip}: not the official LoveDA archive: no {where}/*.png in it "
                            f"(expected {_LOVEDA_EXPECTED})")
        return found

    def _members(self) -> list[zipfile.ZipInfo]:
        if not hasattr(self, "_infos"):
            try:
                with zipfile.ZipFile(self.zip) as archive:
                    self._infos = archive.infolist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{self.zip}: cannot read the zip archive ({exc}); download it again") from None
        return self._infos


def _check_loveda_mask(f: _File) -> None:
    """One mask per folder is read: values must be LoveDA's 0 (no-data) and 1..7 (classes)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if f.member is not None:
            with zipfile.ZipFile(f.member[0]) as archive, archive.open(f.member[1]) as stream, \
                    Image.open(stream) as img:
                mode, values = img.mode, np.asarray(img)
        else:
            with Image.open(f.path) as img:
                mode, values = img.mode, np.asarray(img)
    except (UnidentifiedImageError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{f.origin}: cannot read the mask: {exc}") from None
    if values.ndim != 2 or mode not in ("L", "P", "I", "I;16"):
        raise DataError(f"{f.origin}: a {mode} image, not a single-band index mask as LoveDA releases "
                        "(values 0 no-data, 1..7 classes)")
    top = int(values.max()) if values.size else 0
    if top > _LOVEDA_CLASSES:
        raise DataError(f"{f.origin}: mask value {top}, but LoveDA masks hold 0 (no-data) and 1..7 (classes): "
                        "not the official release")


def _plan_loveda(source: Path, config) -> _Plan:
    listings = {split: _Listing(source, split) for split in ("Train", "Val", "Test")}
    for split in ("Train", "Val"):
        if not listings[split].present:
            near = sorted(p.name for p in source.iterdir() if p.is_dir()) if source.is_dir() else []
            hint = f" (it holds {', '.join(near[:4])}{', ...' if len(near) > 4 else ''})" if near else ""
            raise DataError(f"{source}: not the official LoveDA layout: no {split}/ folder or {split}.zip{hint}; "
                            f"expected {_LOVEDA_EXPECTED}")
    plan = _Plan("loveda", ", ".join(
        f"{s}{'.zip' if listings[s].zip else '/'}" for s in ("Train", "Val", "Test") if listings[s].present),
        "masks as released (0 no-data, 1..7 background..agriculture); the preset's reduce_zero_label reads 0 "
        "as ignore and 1..7 as classes 0..6; no value converted")
    seen: dict[str, str] = {}
    for split, listing in listings.items():
        if not listing.present:
            continue
        labelled = split != "Test"
        ids: list[str] = []
        for domain in ("Urban", "Rural"):
            images = listing.entries(domain, "images_png", required=True)
            masks = listing.entries(domain, "masks_png", required=True) if labelled else {}
            if labelled:
                lonely = sorted(set(images) - set(masks), key=lambda i: images[i].origin)
                if lonely:
                    raise DataError(f"{images[lonely[0]].origin}: no mask {split}/{domain}/masks_png/{lonely[0]}.png "
                                    f"(every Train and Val image has one in the official release; {len(lonely)} "
                                    "image(s) without a mask here)")
                orphans = sorted(set(masks) - set(images), key=lambda i: masks[i].origin)
                if orphans:
                    raise DataError(f"{masks[orphans[0]].origin}: a mask without its image {split}/{domain}/"
                                    f"images_png/{orphans[0]}.png ({len(orphans)} such mask(s))")
                if masks:
                    _check_loveda_mask(masks[_sort_ids(masks)[0]])
            for image_id in _sort_ids(images):
                image = images[image_id]
                if image_id in seen:
                    raise DataError(f"{image.origin} and {seen[image_id]} have the same id {image_id}: LoveDA ids are "
                                    "unique across Train, Val and Test and both would be images/"
                                    f"{image_id}.png (two copies of the release mixed?)")
                seen[image_id] = image.origin
                image.rel = f"images/{image_id}.png"
                plan.files.append(image)
                if labelled:
                    mask = masks[image_id]
                    mask.rel = f"labels/{image_id}.png"
                    plan.files.append(mask)
                ids.append(image_id)
        plan.splits[split.lower()] = [f"images/{i}.png labels/{i}.png" if labelled else f"images/{i}.png"
                                      for i in _sort_ids(ids)]
    plan.preset_lists = _preset_lists(config, {"train": "train", "test": "val", "val": "val"}, plan.splits)
    return plan


# -- Potsdam -----------------------------------------------------------------------------------


def _windows(length: int, size: int) -> list[int]:
    """Crop origins along one axis: steps of ``size`` from 0, the last one shifted to end at the
    border (mmsegmentation's ``clip_big_image`` with clip size = stride = ``size``)."""
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def _raster_header(path: Path) -> tuple[int, int, int, str]:
    from co2s.data.raster import open_raster

    with open_raster(path) as ds:
        return ds.width, ds.height, ds.count, ds.dtypes[0]


def _plan_potsdam(source: Path, config) -> _Plan:
    rgb = source / "2_Ortho_RGB"
    if not rgb.is_dir():
        zips = sorted(p.name for p in source.glob("*.zip"))
        hint = f"; unzip {', '.join(zips)} there first" if zips else ""
        raise DataError(f"{source}: not the official ISPRS Potsdam layout: no 2_Ortho_RGB/ folder{hint} "
                        f"(expected {_POTSDAM_EXPECTED})")
    labels, suffix = next(((source / d, s) for d, s in _POTSDAM_LABEL_FOLDERS if (source / d).is_dir()), (None, None))
    if labels is None:
        raise DataError(f"{source}: not the official ISPRS Potsdam layout: no 5_Labels_all_noBoundary/ or "
                        f"5_Labels_all/ folder (expected {_POTSDAM_EXPECTED})")
    size = int(config.train.crop_size[0] if isinstance(config.train.crop_size, (list, tuple))
               else config.train.crop_size)
    pattern = re.compile(r"^top_potsdam_(\d+_\d+)_RGB\.tif$")
    images = {}
    for path in sorted(rgb.iterdir()):
        if path.suffix.lower() != ".tif":
            continue  # the .tfw world files beside the tiles
        match = pattern.match(path.name)
        if match is None:
            raise DataError(f"{path}: not an ISPRS Potsdam tile name (expected top_potsdam_<a>_<b>_RGB.tif)")
        images[match.group(1)] = path
    if not images:
        raise DataError(f"{rgb}: no top_potsdam_<a>_<b>_RGB.tif tile in it (expected {_POTSDAM_EXPECTED})")
    label_pattern = re.compile(rf"^top_potsdam_(\d+_\d+){re.escape(suffix)}$")
    found = {}
    for path in sorted(labels.iterdir()):
        match = label_pattern.match(path.name)
        if match is not None:
            found[match.group(1)] = path
    plan = _Plan("potsdam", f"2_Ortho_RGB/, {labels.name}/",
                 f"{labels.name} colours to indices: palette position + 1 (impervious surface 1 .. clutter 6), 0 for "
                 "black (eroded boundaries) and unknown colours; the preset's reduce_zero_label reads 0 as ignore "
                 "and 1..6 as classes 0..5")
    palette_check = [tuple(c) for c in config.data.palette]
    official = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]
    if palette_check != official:
        raise DataError(f"preset potsdam: data.palette {palette_check} is not the ISPRS colour code {official}")
    for name, image in images.items():
        if name not in _POTSDAM_TRAIN + _POTSDAM_TEST:
            raise DataError(f"{image}: tile {name} is not one of the 38 ISPRS Potsdam tiles")
        if name not in found:
            raise DataError(f"{image}: no label {labels.name}/top_potsdam_{name}{suffix} (every tile has one in "
                            f"{labels.name})")
        width, height, count, dtype = _raster_header(image)
        lwidth, lheight, lcount, ldtype = _raster_header(found[name])
        if count < 3 or dtype != "uint8":
            raise DataError(f"{image}: {count} band(s) of {dtype}; the ISPRS RGB tiles are 3 bands of uint8")
        if lcount < 3 or ldtype != "uint8":
            raise DataError(f"{found[name]}: {lcount} band(s) of {ldtype}; the ISPRS labels are RGB colour images")
        if (lwidth, lheight) != (width, height):
            raise DataError(f"{found[name]}: {lwidth} x {lheight} pixels, its tile {image.name} {width} x {height}")
        if width < size or height < size:
            raise DataError(f"{image}: {width} x {height} pixels, smaller than the preset's crop of {size}")
        plan.tiles.append(_Tile(name, image, found[name], "train" if name in _POTSDAM_TRAIN else "test",
                                width, height, _windows(width, size), _windows(height, size), size))
    extra = sorted(set(found) - set(images))
    if extra:
        raise DataError(f"{found[extra[0]]}: a label without its tile 2_Ortho_RGB/top_potsdam_{extra[0]}_RGB.tif")
    for split in ("train", "test"):
        plan.splits[split] = [f"images/{n} labels/{n}" for t in plan.tiles if t.split == split for _, _, n in t.crops()]
    plan.preset_lists = _preset_lists(config, {"train": "train", "test": "test", "val": "test"}, plan.splits)
    return plan


def _label_indices(rgb: np.ndarray, palette: list[tuple[int, int, int]]) -> tuple[np.ndarray, int]:
    """``[3, h, w]`` colours to indices (palette position + 1; 0 elsewhere) and the count of
    pixels whose colour is neither in the palette nor black."""
    packed = (rgb[0].astype(np.uint32) << 16) | (rgb[1].astype(np.uint32) << 8) | rgb[2].astype(np.uint32)
    out = np.zeros(packed.shape, np.uint8)
    for i, (r, g, b) in enumerate(palette):
        out[packed == ((r << 16) | (g << 8) | b)] = i + 1
    unknown = int(np.count_nonzero((out == 0) & (packed != 0)))
    return out, unknown


def _preset_lists(config, use: dict[str, str], splits: dict[str, list[str]]) -> dict[str, str]:
    """The preset's split entries (``data.splits.train`` / ``val`` / ``test``) that the official
    split fills when no authors' lists are given: rel under the tree -> official split."""
    out = {}
    for entry, split in use.items():
        rel = getattr(config.data.splits, entry, None)
        if rel and split in splits and not Path(rel).is_absolute():
            out.setdefault(posixpath.normpath(rel), split)
    return out


# ---------------------------------------------------------------------------------------------
# the prepared tree


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return crc


def _state(target: Path, f: _File) -> str:
    """``missing``, ``same`` (the file already holds the source's bytes) or ``differs``."""
    if not target.exists():
        if target.is_symlink():
            raise DataError(f"{target} is a broken link (to {os.readlink(target)}): the source it was prepared "
                            "from has moved; prepare into a new folder or remove this one")
        return "missing"
    if not target.is_file():
        return "differs"
    if f.member is not None:
        info = f.member[1]
        return "same" if target.stat().st_size == info.file_size and _file_crc(target) == info.CRC else "differs"
    try:
        if os.path.samefile(target, f.path):
            return "same"
    except OSError:
        pass
    if target.stat().st_size != f.path.stat().st_size:
        return "differs"
    return "same" if filecmp.cmp(target, f.path, shallow=False) else "differs"


class _Transfer:
    """Puts source files into the tree: hard link, else symbolic link, else copy (``link=False``:
    copy); zip members are extracted. Methods that fail are not tried again for later files."""

    METHODS = ("hardlink", "symlink", "copy")

    def __init__(self, link: bool) -> None:
        self.method = 0 if link else 2
        self.counts: Counter = Counter()
        self.fallbacks: list[str] = []
        self._zips: dict[Path, zipfile.ZipFile] = {}

    def put(self, f: _File, target: Path) -> None:
        if f.member is not None:
            archive = self._zips.get(f.member[0])
            if archive is None:
                archive = self._zips[f.member[0]] = zipfile.ZipFile(f.member[0])
            with archive.open(f.member[1]) as src, atomic_path(target, durable=False) as tmp, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            self.counts["extract"] += 1
            return
        while True:
            method = self.METHODS[self.method]
            try:
                if method == "hardlink":
                    os.link(f.path, target)
                elif method == "symlink":
                    os.symlink(f.path.resolve(), target)
                else:
                    with atomic_path(target, durable=False) as tmp:
                        shutil.copyfile(f.path, tmp)
                self.counts[method] += 1
                return
            except OSError as exc:
                if method == "copy" or exc.errno == errno.EEXIST:
                    raise
                self.fallbacks.append(f"{method} failed ({exc.strerror or exc}), e.g. for {target.name}")
                self.method += 1

    def close(self) -> None:
        for archive in self._zips.values():
            archive.close()


def _put_array(target: Path, array: np.ndarray, counts: Counter) -> None:
    """Write a generated crop as PNG, or check that the file there holds the same pixels."""
    from PIL import Image

    if target.exists():
        with Image.open(target) as img:
            held = np.asarray(img)
        if held.shape != array.shape or not np.array_equal(held, array):
            raise DataError(f"{target} exists and holds other pixels than this source gives it: the folder holds "
                            "other data (prepare into an empty folder, or remove it)")
        counts["unchanged"] += 1
        return
    with atomic_path(target, durable=False) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    counts["generated"] += 1


def _read_record(out: Path) -> dict:
    path = out / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _check_folder(out: Path, source: Path, dataset: str, targets: set[str], record: dict) -> None:
    """Refuse an output folder that is the source (or inside it, or around it) or that already
    holds other data: a different dataset's record, or images/labels that are not this release's."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise DataError(f"--out {out} and the source {source} overlap: prepare into a folder outside the source "
                        "(the source is never modified)")
    if record and record.get("dataset") not in (None, dataset):
        raise DataError(f"{out / RECORD}: this folder holds a prepared {record.get('dataset')} dataset, not "
                        f"{dataset}: prepare into another folder")
    for sub in ("images", "labels"):
        folder = out / sub
        if folder.exists() and not folder.is_dir():
            raise DataError(f"{folder} is a file, not a folder: the folder holds other data")
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.name.startswith("."):
                    continue  # an interrupted write's temporary: replaced on the way
                if f"{sub}/{path.name}" not in targets:
                    raise DataError(f"{out} already holds other data: {sub}/{path.name} is not a file of this "
                                    f"{dataset} release (prepare into an empty folder, or remove it)")


# -- split lists -------------------------------------------------------------------------------


def _authors_lists(splits: Path, dataset: str) -> tuple[Path, list[tuple[str, Path, str]]]:
    """The folder of the authors' lists (``splits/<dataset>`` of a whole ``splits/`` folder is
    taken) and its ``.txt`` files: (path under the tree's ``splits/``, file, text)."""
    if not splits.is_dir():
        raise DataError(f"--splits {splits}: " + ("not a folder" if splits.exists() else "no such folder")
                        + f" (give the folder of the authors' split lists, e.g. the Co2S code's splits/{dataset})")
    root = splits
    if not any(p.is_file() for p in root.glob("*.txt")) and (root / dataset).is_dir():
        root = root / dataset
    lists = []
    for path in sorted(root.rglob("*.txt")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.as_posix().startswith("official/"):
            raise DataError(f"{path}: splits/official/ is where co2s prepare writes the official split; rename it")
        try:
            text = path.read_text(encoding="utf-8-sig")  # as co2s.data.sources reads lists
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read list file {path}: {exc}") from None
        lists.append((rel.as_posix(), path, text))
    if not lists:
        raise DataError(f"--splits {splits}: no .txt split list in it")
    return root, lists


def _check_list(path: Path, text: str, out: Path, targets: set[str], dataset: str) -> int:
    """Every file a list names must be in the prepared tree; returns its sample count."""
    count = 0
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        tokens = list_fields(entry, f"{path}:{number}")
        for token in tokens:
            rel = posixpath.normpath(token)
            if posixpath.isabs(rel) or rel == ".." or rel.startswith("../"):
                raise DataError(f"{path}:{number}: {token} is not a path inside the data root")
            if rel not in targets and not (out / rel).is_file():
                raise DataError(f"{path}:{number}: {token} is not in the prepared tree ({out / rel} missing): the "
                                f"list does not fit this {dataset} release")
        count += 1
    return count


def _list_state(out: Path, rel: str, text: str, record: dict) -> str:
    """``same``, ``write`` (missing, or written by an earlier run of co2s prepare: its hash is in
    the record) or an error: a different file there that co2s prepare did not write."""
    target = out / rel
    if not target.exists():
        return "write"
    if not target.is_file():
        raise DataError(f"{target} is a folder: the folder holds other data")
    held = _sha256(target.read_bytes())
    if held == _sha256(text.encode()):
        return "same"
    if record.get("lists", {}).get(rel, {}).get("sha256") != held:
        raise DataError(f"{target} exists with other contents and was not written by co2s prepare: the folder "
                        "holds other data (move that list away, or prepare into another folder)")
    return "write"


def _put_list(out: Path, rel: str, text: str, record: dict, written: dict, counts: Counter) -> None:
    """Write ``out/rel`` unless it holds ``text`` already (see :func:`_list_state`)."""
    target = out / rel
    digest = _sha256(text.encode())
    if _list_state(out, rel, text, record) == "same":
        written[rel] = digest
        counts["unchanged lists"] += 1
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, text, durable=False)
    written[rel] = digest
    counts["lists"] += 1


# ---------------------------------------------------------------------------------------------


def default_out(name: str) -> Path:
    """The preset's ``data.root`` (``${CO2S_DATA_DIR:-data}/<name>``): preparing there lets
    ``co2s train <name>`` run without ``--set data.root``."""
    from co2s.config.loader import load_config

    return Path(load_config(_dataset(name)).data.root).expanduser()


def _dataset(name: str) -> str:
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise DataError(f"co2s prepare knows {', '.join(DATASETS)}, not {name!r} (the other presets read the "
                        "authors' data copies as they are: see docs/datasets/)")
    return key


def prepare_dataset(name: str, source: str | os.PathLike, out: str | os.PathLike,
                    splits: str | os.PathLike | None = None, link: bool = True, progress: bool = False) -> dict:
    """Build ``out`` in the layout of preset ``name`` (``loveda`` or ``potsdam``) from the
    official release in ``source`` (see the module's docstring for the layouts).

    ``splits``: a folder of the authors' split lists (e.g. Co2S's ``splits/loveda``, or its whole
    ``splits/``), checked line by line against the prepared tree and copied under ``out/splits/``.
    ``link``: hard-link (else symlink) source files instead of copying them. Returns a summary:
    counts per official split, files, how they were put there, the lists written (samples per
    list) and the preset's split entries still missing. Errors are :class:`DataError`, one line
    naming the file and the problem; nothing is written before the source, the folder and the
    lists have been checked (a Potsdam crop that differs from one already there is found when its
    tile is cut).
    """
    from co2s.config.loader import load_config

    dataset = _dataset(name)
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if not source.is_dir():
        raise DataError(f"source {source}: " + ("not a folder" if source.exists() else "no such folder")
                        + f" (give the folder holding the official {dataset} release)")
    config = load_config(dataset)
    plan = (_plan_loveda if dataset == "loveda" else _plan_potsdam)(source, config)
    targets = plan.targets()
    record = _read_record(out)
    _check_folder(out, source, dataset, targets, record)

    # the lists: the official split always, and either the authors' lists or the preset's
    # entries from the official split
    lists: dict[str, tuple[str, str]] = {}  # rel under out -> (text, where from)
    for split, lines in plan.splits.items():
        lists[f"{OFFICIAL}/{split}.txt"] = ("".join(line + "\n" for line in lines), f"official {split} split")
    authors_root = None
    if splits is not None:
        authors_root, authors = _authors_lists(Path(splits).expanduser(), dataset)
        for rel, path, text in authors:
            _check_list(path, text, out, targets, dataset)
            lists[f"splits/{rel}"] = (text, str(path))
    else:
        earlier = record.get("lists", {})
        for rel, split in plan.preset_lists.items():
            if not str(earlier.get(rel, {}).get("from", "official")).startswith("official"):
                continue  # the authors' list an earlier run copied stays (a rerun never downgrades it)
            lists.setdefault(rel, ("".join(line + "\n" for line in plan.splits[split]), f"official {split} split"))

    for rel, (text, _) in lists.items():
        _list_state(out, rel, text, record)  # a list of the user's in the way stops before anything is written
    files = plan.files
    states = {}
    for f in progress_bar(files, desc="checking the folder", enabled=progress) if out.exists() else []:
        state = _state(out / f.rel, f)
        if state == "differs":
            raise DataError(f"{out / f.rel} exists and differs from {f.origin}: the folder holds other data "
                            "(prepare into an empty folder, or remove it)")
        states[f.rel] = state

    # writing
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    transfer = _Transfer(link)
    try:
        for f in progress_bar(files, desc=f"preparing {dataset}", enabled=progress):
            if states.get(f.rel) == "same":
                transfer.counts["unchanged"] += 1
            else:
                transfer.put(f, out / f.rel)
    finally:
        transfer.close()
    unknown_colours = {}
    if plan.tiles:
        _cut_tiles(plan, out, [tuple(c) for c in config.data.palette], transfer.counts, unknown_colours, progress)

    written: dict[str, str] = {}
    list_counts: Counter = Counter()
    for rel, (text, _) in lists.items():
        _put_list(out, rel, text, record, written, list_counts)

    samples = {rel: sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
               for rel, (text, _) in lists.items()}
    preset = {k: v for k, v in config.data.splits.model_dump().items() if isinstance(v, str)}
    missing = [f"data.splits.{k}: {v}" for k, v in preset.items() if not (out / v).is_file()]
    counts = {split: len(lines) for split, lines in plan.splits.items()}
    summary = {
        "dataset": dataset,
        "source": str(source.resolve()),
        "layout": plan.layout,
        "out": str(out.resolve()),
        "record": str((out / RECORD).resolve()),
        "counts": counts,
        "files": {"images": sum(1 for t in targets if t.startswith("images/")),
                  "labels": sum(1 for t in targets if t.startswith("labels/"))},
        "transfer": {k: transfer.counts[k] for k in ("hardlink", "symlink", "copy", "extract", "generated",
                                                      "unchanged") if transfer.counts[k]},
        "fallback": transfer.fallbacks[0] if transfer.fallbacks else None,
        "label_handling": plan.label_handling,
        "authors_lists": str(authors_root) if authors_root is not None else None,
        "lists": samples,
        "preset_splits": preset,
        "missing": missing,
    }
    if plan.tiles:
        summary["tiles"] = {split: sum(1 for t in plan.tiles if t.split == split) for split in counts}
        summary["unknown_colour_pixels"] = {k: v for k, v in unknown_colours.items() if v}
    record_out = {
        "co2s_version": __version__,
        **{k: summary[k] for k in ("dataset", "source", "layout", "counts", "files", "label_handling",
                                   "authors_lists")},
        "lists": {**_kept_lists(out, record, lists),
                  **{rel: {"samples": samples[rel], "sha256": written[rel], "from": lists[rel][1]} for rel in lists}},
        "missing": missing,
    }
    if plan.tiles:
        record_out["crop_size"] = plan.tiles[0].size
        record_out["unknown_colour_pixels"] = summary["unknown_colour_pixels"]
    write_text(out / RECORD, json.dumps(record_out, indent=2) + "\n")
    return summary


def _kept_lists(out: Path, record: dict, lists: dict) -> dict:
    """The record's entries of lists an earlier run wrote that this run did not write and that
    are still there as written: kept, so that a later run still knows them as its own."""
    kept = {}
    for rel, entry in record.get("lists", {}).items():
        path = out / rel
        if rel not in lists and isinstance(entry, dict) and path.is_file() \
                and _sha256(path.read_bytes()) == entry.get("sha256"):
            kept[rel] = entry
    return dict(sorted(kept.items()))


def _cut_tiles(plan: _Plan, out: Path, palette, counts: Counter, unknown: dict, progress: bool) -> None:
    from co2s.data.raster import Window, bounded_gdal_cache, open_raster

    with bounded_gdal_cache():
        for tile in progress_bar(plan.tiles, desc="cutting tiles", enabled=progress):
            unknown[tile.name] = 0
            with open_raster(tile.image) as image, open_raster(tile.label) as label:
                for y in tile.ys:
                    strip = Window(0, y, tile.width, tile.size).to_rasterio()
                    rgb = image.read([1, 2, 3], window=strip)
                    indices, bad = _label_indices(label.read([1, 2, 3], window=strip), palette)
                    unknown[tile.name] += bad
                    for x in tile.xs:
                        name = f"{tile.name}_{x}_{y}_{x + tile.size}_{y + tile.size}.png"
                        _put_array(out / "images" / name, np.ascontiguousarray(
                            rgb[:, :, x:x + tile.size].transpose(1, 2, 0)), counts)
                        _put_array(out / "labels" / name, np.ascontiguousarray(indices[:, x:x + tile.size]), counts)
