"""Which files make up a split: list files and folder layouts, resolved to :class:`Sample` records.

List files have one sample per line, ``image_path [mask_path]`` relative to the data root (the
Co2S/UniMatch split files are read as they are), or bare IDs expanded with ``data.id_format``.
Folders hold ``images/`` and ``masks/`` (or ``labels/``) matched by file stem; a folder of images
alone is an unlabelled split. Errors name the list file and line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


from co2s.data.io import IMAGE_SUFFIXES, image_size, read_mask
from co2s.data.labels import LabelEncoder
from co2s.errors import DataError
from co2s.progress import progress_bar


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None
    origin: str  # where it was listed: "list.txt:12" or the folder, for error messages
    entry: str  # the line as written (or folder-relative paths): what `co2s splits` writes back


def resolve(root: str | Path, path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(root).expanduser() / path


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_list_file(path: Path, root: Path, id_format=None, labelled: bool = True,
                   keep_masks: bool = False) -> list[Sample]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read list file {path}: {exc}") from None
    samples = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{number}"
        tokens = text.split()
        if len(tokens) > 2:
            raise DataError(f"{where}: expected 'image [mask]', got {len(tokens)} fields: {text!r}")
        if len(tokens) == 1 and id_format is not None:
            image = resolve(root, id_format.image.format(id=tokens[0]))
            mask = resolve(root, id_format.mask.format(id=tokens[0])) if id_format.mask else None
        else:
            image = resolve(root, tokens[0])
            mask = resolve(root, tokens[1]) if len(tokens) == 2 else None
        if labelled and mask is None:
            raise DataError(f"{where}: no mask for a labelled sample: {text!r}")
        if not labelled and not (keep_masks and mask is not None and mask.is_file()):
            mask = None
        samples.append(Sample(image, mask, where, text))
    return samples


def read_folder(folder: Path, labelled: bool = True, keep_masks: bool = False) -> list[Sample]:
    images_dir = folder / "images" if (folder / "images").is_dir() else folder
    masks_dir = next((folder / d for d in ("masks", "labels") if (folder / d).is_dir()), None)
    images = _list_images(images_dir)
    if not labelled:
        masks = {p.stem: p for p in _list_images(masks_dir)} if keep_masks and masks_dir else {}
        return [Sample(p, masks.get(p.stem), str(folder), str(p.relative_to(folder))) for p in images]
    if masks_dir is None:
        raise DataError(f"{folder}: a labelled folder needs images/ and masks/ (or labels/) inside")
    masks = {p.stem: p for p in _list_images(masks_dir)}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"{masks_dir}: no mask for {len(missing)} image(s): {shown}")
    return [
        Sample(
            p, masks[p.stem], str(folder),
            f"{p.relative_to(folder)} {masks[p.stem].relative_to(folder)}",
        )
        for p in images
    ]


def read_split(spec: str, data, labelled: bool, name: str = "split", keep_masks: bool = False) -> list[Sample]:
    """Resolve a split entry of the config (list file or folder) into samples.

    Unlabelled splits drop their masks unless ``keep_masks`` (then masks that exist on disk are
    kept, for diagnostics such as pseudo-label accuracy; training never reads them).
    """

    root = Path(data.root).expanduser()
    path = resolve(root, spec)
    if path.is_dir():
        samples = read_folder(path, labelled, keep_masks)
    elif path.is_file():
        samples = read_list_file(path, root, data.id_format, labelled, keep_masks)
    else:
        raise DataError(f"data.splits.{name}: {path} does not exist (data.root is {root})")
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


def validate_samples(
    samples: Iterable[Sample], encoder: LabelEncoder, level: str, color_masks: bool = False,
    desc: str = "checking data",
) -> None:
    """Check files up front so bad data stops a run before training, naming file and line.

    ``exists``: every listed file is there. ``full``: also reads every mask, checks its values
    and that it has the image's size (image headers only, so it stays cheap).
    """
    if level == "none":
        return
    samples = list(samples)
    for s in samples:
        for what, p in (("image", s.image), ("mask", s.mask)):
            if p is not None and not p.is_file():
                raise DataError(f"{s.origin}: {what} not found: {p}")
    if level != "full":
        return
    for s in progress_bar(samples, desc=desc, enabled=len(samples) >= 200):
        if s.mask is None:
            image_size(s.image)
            continue
        mask = read_mask(s.mask, color=color_masks)
        encoder.encode(mask, f"{s.mask} (listed at {s.origin})")
        size = image_size(s.image)
        if size != mask.shape[:2]:
            raise DataError(
                f"{s.origin}: image {s.image.name} is {size[0]}x{size[1]} but mask "
                f"{s.mask.name} is {mask.shape[0]}x{mask.shape[1]}"
            )
