"""Which files make up a split: list files and folder layouts, resolved to :class:`Sample` records.

List files have one sample per line, ``image_path [mask_path]`` relative to the data root (the
Co2S/UniMatch split files are read as they are), or bare IDs expanded with ``data.id_format``.
Folders hold ``images/`` and ``masks/`` (or ``labels/``) matched by file stem; a folder of images
alone is an unlabelled split. Errors name the list file and line.

:func:`validate_samples` checks a split up front and returns the per-class pixel counts of its
masks (:class:`LabelStats`); :func:`check_labels` reports classes without pixels and colour masks
with too many unknown colours; :func:`class_table` formats the counts for the terminal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from co2s.data.io import alpha_band_count, image_files, image_header, read_mask_labelled
from co2s.data.labels import LabelEncoder
from co2s.data.raster import said_bands
from co2s.errors import DataError
from co2s.progress import progress_bar


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None
    origin: str  # where it was listed: "list.txt:12" or the folder, for error messages
    entry: str  # the line as written (a folder's samples: paths relative to the data root): what `co2s splits` writes back


def resolve(root: str | Path, path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(root).expanduser() / path


_FIELD = re.compile(r'"([^"]*)"|(\S+)')


def list_fields(line: str, where: str) -> list[str]:
    """The one or two paths of a list line (``image [mask]``, whitespace between them, as the
    UniMatch lists write them); a path holding spaces (``tile (1).png``, ``Images RGB/a.png``)
    goes in double quotes, as :func:`list_entry` writes it. A backslash separates folders, as in
    a list written on Windows (every platform reads ``/``)."""
    fields = [(quoted or bare).replace("\\", "/") for quoted, bare in _FIELD.findall(line)]
    if len(fields) > 2:
        raise DataError(f"{where}: expected 'image [mask]', got {len(fields)} fields: {line!r} (a path with "
                        'spaces goes in double quotes: "Images RGB/tile (1).png")')
    return fields


def list_entry(*paths: str) -> str:
    """A list line naming ``paths``: each quoted when it holds whitespace (:func:`list_fields`)."""
    return " ".join(f'"{p}"' if any(c.isspace() for c in p) else p for p in paths)


def read_list_file(path: Path, root: Path, id_format=None, labelled: bool = True,
                   keep_masks: bool = False) -> list[Sample]:
    try:
        # utf-8-sig: a list saved by Windows Notepad or Excel starts with a byte-order mark, which
        # would join the first path unseen ("\ufeffimages/a.png" is not found)
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read list file {path}: {exc}") from None
    samples = []
    first_line: dict[Path, int] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{number}"
        tokens = list_fields(text, where)
        if len(tokens) == 1 and id_format is not None:
            image = resolve(root, id_format.image.format(id=tokens[0]))
            mask = resolve(root, id_format.mask.format(id=tokens[0])) if id_format.mask else None
        else:
            image = resolve(root, tokens[0])
            mask = resolve(root, tokens[1]) if len(tokens) == 2 else None
        if labelled and mask is None:
            raise DataError(f"{where}: no mask for a labelled sample: {text!r}")
        key = image.resolve()
        if key in first_line:
            raise DataError(f"{where}: image {image} is listed twice (lines {first_line[key]} and "
                            f"{number}); each image may appear once in a list")
        first_line[key] = number
        if not labelled and not (keep_masks and mask is not None and mask.is_file()):
            mask = None
        samples.append(Sample(image, mask, where, text))
    return samples


def read_folder(folder: Path, labelled: bool = True, keep_masks: bool = False,
                root: Path | None = None) -> list[Sample]:
    """The samples of a folder (``images/`` and ``masks/`` or ``labels/`` matched by stem). Each
    sample's ``entry`` (the line ``co2s splits`` writes) is relative to ``root`` (the data root,
    default the folder itself), so a written list reads back under the same ``data.root``."""
    images_dir = folder / "images" if (folder / "images").is_dir() else folder
    masks_dir = next((folder / d for d in ("masks", "labels") if (folder / d).is_dir()), None)
    images = image_files(images_dir)
    base = Path(root if root is not None else folder).absolute()

    def entry(*paths: Path) -> str:
        return list_entry(*(os.path.relpath(p.absolute(), base) for p in paths))

    if not labelled:
        masks = {p.stem: p for p in image_files(masks_dir)} if keep_masks and masks_dir else {}
        return [Sample(p, masks.get(p.stem), str(folder), entry(p, *([masks[p.stem]] if p.stem in masks else [])))
                for p in images]
    if masks_dir is None:
        raise DataError(f"{folder}: a labelled folder needs images/ and masks/ (or labels/) inside")
    masks = {p.stem: p for p in image_files(masks_dir)}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"{masks_dir}: no mask for {len(missing)} image(s): {shown}")
    return [Sample(p, masks[p.stem], str(folder), entry(p, masks[p.stem])) for p in images]


def split_path(spec: str, data) -> Path:
    """The list file or folder a split entry names: under ``data.root`` first, else in the working
    folder (where ``co2s splits --out`` wrote it)."""
    path = resolve(Path(data.root).expanduser(), spec)
    if not path.exists() and Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
    return path


def read_split(spec: str, data, labelled: bool, name: str = "split", keep_masks: bool = False) -> list[Sample]:
    """Resolve a split entry of the config (list file or folder) into samples.

    A relative entry is looked up under ``data.root`` first, then in the working folder (where
    ``co2s splits --out`` wrote it). The lines of a list file are always relative to ``data.root``.
    Unlabelled splits drop their masks unless ``keep_masks`` (then masks that exist on disk are
    kept, for diagnostics such as pseudo-label accuracy; training never reads them).
    """

    root = Path(data.root).expanduser()
    path = split_path(spec, data)
    if path.is_dir():
        samples = read_folder(path, labelled, keep_masks, root=root)
    elif path.is_file():
        samples = read_list_file(path, root, data.id_format, labelled, keep_masks)
    else:
        raise DataError(f"data.splits.{name}: {path} does not exist (data.root is {root}; "
                        f"{spec} is not in the working folder either)")
    if not samples:
        raise DataError(f"data.splits.{name}: {path} lists no samples")
    return samples


def check_disjoint(labelled: list[Sample], unlabelled: list[Sample]) -> None:
    """Labelled and unlabelled training images must never overlap."""
    seen = {s.image.resolve(): s for s in labelled}
    shared = [(seen[s.image.resolve()], s) for s in unlabelled if s.image.resolve() in seen]
    if shared:
        a, b = shared[0]
        raise DataError(
            f"{len(shared)} image(s) are both labelled and unlabelled, e.g. {a.image.name} "
            f"at {a.origin} and {b.origin}; labelled and unlabelled lists must not overlap"
        )


@dataclass
class LabelStats:
    """What the masks of a split hold, after label handling: pixels per class and ignored
    pixels, and for colour masks the masks with colours outside the palette."""

    counts: np.ndarray  # int64 [num_classes]
    ignored: int = 0  # pixels that are ignore_index after label handling (unmatched colours included)
    masks: int = 0
    unmatched_pixels: int = 0  # colour masks: pixels of colours in neither palette nor ignore_colors
    # every colour mask with unmatched pixels: (sample, share of the mask, [(colour, pixels), ...])
    unmatched: list[tuple[Sample, float, list]] = field(default_factory=list)


def _check_file(s: Sample, what: str, p: Path) -> None:
    if not p.is_file():
        if p.is_dir():
            raise DataError(f"{s.origin}: {what} {p} is a directory, not a file")
        raise DataError(f"{s.origin}: {what} not found: {p}")


def _check_band_count(s: Sample, count: int, channels: int | None, bands: list[int] | None) -> None:
    if bands is not None:
        count += alpha_band_count(s.image)  # chosen bands may include alpha bands: every band counts
        missing = [b for b in bands if b > count]
        if missing:
            raise DataError(
                f"{s.origin}: image {s.image} has {count} band(s) but data.bands selects {bands} "
                f"(1-based): band(s) {missing} do not exist; fix data.bands or the list"
            )
    elif channels is not None and count != channels:
        alpha = alpha_band_count(s.image)
        hint = (f"set data.bands to the bands to read, e.g. data.bands: {list(range(1, channels + 1))}"
                if count + alpha >= channels else
                f"convert the image to {channels} bands or fix the list (data.bands selects bands for "
                f"every image; e.g. {[1] * channels} repeats a single band)")
        raise DataError(
            f"{s.origin}: image {s.image} has {said_bands(count, alpha)} but the config expects {channels} "
            f"(model.in_channels, else len(data.bands), else len(data.mean), else 3): {hint}"
        )


def validate_samples(
    samples: Iterable[Sample], encoder: LabelEncoder, level: str, color_masks: bool = False,
    desc: str = "checking data", *, masks: bool = True, channels: int | None = None,
    bands: list[int] | None = None,
) -> LabelStats | None:
    """Check files up front so bad data stops a run before training, naming file and line.

    ``exists``: every listed file is there (and is a file). ``full``: also reads every image
    header (size; band count: each of ``bands`` must exist, else the count must equal
    ``channels``) and, when ``masks``, every mask: its values and that it has the image's size.
    Returns the split's :class:`LabelStats` when masks were read (``full``), else None.
    """
    if level == "none":
        return None
    samples = list(samples)
    for s in samples:
        _check_file(s, "image", s.image)
        if s.mask is not None and masks:
            _check_file(s, "mask", s.mask)
    if level != "full":
        return None
    stats = LabelStats(np.zeros(encoder.num_classes, np.int64)) if masks else None
    for s in progress_bar(samples, desc=desc, enabled=len(samples) >= 200):
        height, width, count = image_header(s.image)
        _check_band_count(s, count, channels, bands)
        if s.mask is None or not masks:
            continue
        raw, labelled = read_mask_labelled(s.mask, color=color_masks)
        labels = encoder.encode(raw, f"{s.mask} (listed at {s.origin})", labelled)
        if (height, width) != labels.shape:
            raise DataError(
                f"{s.origin}: image {s.image.name} is {height}x{width} but mask "
                f"{s.mask.name} is {labels.shape[0]}x{labels.shape[1]}"
            )
        known = labels != encoder.ignore_index
        stats.counts += np.bincount(labels[known].ravel(), minlength=encoder.num_classes)
        stats.ignored += int(labels.size - known.sum())
        stats.masks += 1
        if encoder.palette is not None and raw.ndim == 3:
            unmatched, colours = encoder.unmatched_colors(raw if labelled is None else raw[labelled])
            if unmatched:
                stats.unmatched_pixels += unmatched
                stats.unmatched.append((s, unmatched / labels.size, colours))
    return stats


def _colour_list(colours: list) -> str:
    return ", ".join(f"{tuple(c)} ({n} px)" for c, n in colours)


#: what a class without pixels makes a user check, for tile masks
TILE_CHECKS = ("data.classes, data.palette / color_masks, data.label_map and data.reduce_zero_label, or the "
               "labelled list")


def check_labels(stats: LabelStats, classes: list[str], mode: str = "error",
                 max_unmatched: float = 0.01, source: str | None = None, checks: str = TILE_CHECKS) -> list[str]:
    """Problems of a labelled split that would silently train the wrong thing: a configured class
    with no pixel, and colour masks with more than ``max_unmatched`` of their pixels in colours
    outside the palette (they become ignore). ``source`` names where the labels come from in
    their own words (default: the tile masks of the labelled split), ``checks`` what to check.
    ``mode`` error raises one :class:`DataError` with them all (one line for one problem); warn
    returns them as messages."""
    problems = []
    absent = [name for name, n in zip(classes, stats.counts) if n == 0]
    if absent:
        problems.append(
            f"class(es) {', '.join(absent)} have no pixel in {source or f'the labelled split ({stats.masks} masks)'}: "
            f"the model would never learn them. Check {checks}"
        )
    over = sorted((u for u in stats.unmatched if u[1] > max_unmatched), key=lambda u: -u[1])
    if over:
        lines = [f"  {s.mask} (listed at {s.origin}): {100 * share:.1f} % unmatched, "
                 f"{_colour_list(colours)}" for s, share, colours in over[:5]]
        more = f"\n  ... and {len(over) - 5} more" if len(over) > 5 else ""
        problems.append(
            f"{len(over)} colour mask(s) have more than {100 * max_unmatched:g} % of their pixels in "
            "colours that are not in data.palette (they would become ignore): a palette typo? Fix "
            "data.palette, list such colours in data.ignore_colors, or raise "
            "data.max_unmatched_colors\n" + "\n".join(lines) + more
        )
    if problems and mode == "error":
        if len(problems) == 1 and "\n" not in problems[0]:
            raise DataError(f"label check failed: {problems[0]} (set data.label_check: warn to train anyway)")
        raise DataError("label check of the labelled split failed:\n- " + "\n- ".join(problems)
                        + "\n(set data.label_check: warn to train anyway)")
    return problems


def class_table(stats: LabelStats, classes: list[str], title: str = "labelled split",
                unit: str = "masks") -> str:
    """Pixels per class (count and share of the labelled pixels), ignored and unmatched pixels."""
    total = int(stats.counts.sum())
    width = max(12, *(len(c) for c in classes))
    unit = unit[:-1] if stats.masks == 1 and unit.endswith("s") else unit
    lines = [f"{title}: {stats.masks} {unit}, pixels per class",
             f"{'class':<{width}}  {'pixels':>12}  {'share':>7}"]
    for name, n in zip(classes, stats.counts.tolist()):
        share = f"{100 * n / total:6.2f}%" if total else "      -"
        flag = "  <- no pixel" if n == 0 else ""
        lines.append(f"{name:<{width}}  {n:>12}  {share}{flag}")
    all_pixels = total + stats.ignored
    lines.append(f"{'(ignored)':<{width}}  {stats.ignored:>12}  "
                 f"{100 * stats.ignored / all_pixels if all_pixels else 0:6.2f}% of all pixels")
    if stats.unmatched_pixels:
        lines.append(f"{'(unmatched)':<{width}}  {stats.unmatched_pixels:>12}  colour(s) not in "
                     f"data.palette, in {len(stats.unmatched)} mask(s) (counted as ignored)")
    return "\n".join(lines)
