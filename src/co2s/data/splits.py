"""Seeded labelled/unlabelled partitions of a training list (``co2s splits``).

The labelled part is ``round(n x ratio)`` samples (at least one, never all); with ``stratify``
each dominant class contributes in proportion to its share. Output lines are the source lines
as written, in source order, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np

from co2s.atomic import write_text
from co2s.data.io import read_mask
from co2s.data.labels import LabelEncoder
from co2s.data.sources import Sample, read_folder, read_list_file, read_split, resolve
from co2s.errors import DataError
from co2s.progress import progress_bar


def parse_ratio(text: str | float) -> float:
    """'1/8', '0.125' or 0.125 -> 0.125; must lie strictly between 0 and 1."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise DataError(f"ratio {text!r} is not a fraction like 1/8 or a number like 0.125") from None
    if not 0 < value < 1:
        raise DataError(f"ratio {text!r} must be between 0 and 1")
    return value


def ratio_tag(text: str | float) -> str:
    """Folder-friendly name of a ratio: '1/8' -> '1_8'."""
    return str(text).strip().replace("/", "_")


def dominant_class(sample: Sample, encoder: LabelEncoder | None, ignore_index: int, color: bool) -> int:
    labels = encoder.read(sample.mask) if encoder else read_mask(sample.mask, color=color).astype(np.int64)
    values = labels[labels != ignore_index]
    if values.size == 0:
        return -1  # an all-ignore mask is its own stratum
    return int(np.bincount(values).argmax())


def _allocate(group_sizes: dict[int, int], n_labelled: int) -> dict[int, int]:
    """Per-group counts summing to n_labelled, proportional to group size (largest remainder)."""
    total = sum(group_sizes.values())
    exact = {g: n_labelled * size / total for g, size in group_sizes.items()}
    counts = {g: int(v) for g, v in exact.items()}
    leftover = n_labelled - sum(counts.values())
    for g in sorted(exact, key=lambda g: (-(exact[g] - counts[g]), g))[:leftover]:
        counts[g] += 1
    return counts


def choose_labelled(n: int, ratio: float, seed: int, strata: list[int] | None = None) -> list[int]:
    """Sorted indices of the labelled part."""
    n_labelled = max(1, round(n * ratio))
    if n_labelled >= n:
        raise DataError(f"ratio {ratio:g} of {n} samples leaves no unlabelled sample")
    rng = random.Random(seed)
    if strata is None:
        return sorted(rng.sample(range(n), n_labelled))
    groups: dict[int, list[int]] = {}
    for index, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(index)
    counts = _allocate({g: len(v) for g, v in groups.items()}, n_labelled)
    chosen = []
    for g in sorted(groups):
        chosen += rng.sample(groups[g], counts[g])
    return sorted(chosen)


def make_splits(
    samples: list[Sample],
    ratio: str | float,
    seed: int,
    out_dir: str | os.PathLike,
    stratify: bool = False,
    encoder: LabelEncoder | None = None,
    ignore_index: int = 255,
    color_masks: bool = False,
    source: str = "",
) -> dict:
    """Write ``labelled.txt``, ``unlabelled.txt`` and ``split.json`` into ``out_dir``."""
    value = parse_ratio(ratio)
    entries = Counter(s.entry for s in samples)
    dupes = [e for e, c in entries.items() if c > 1]
    if dupes:
        first = next(s for s in samples if s.entry == dupes[0])
        raise DataError(f"{first.origin}: {dupes[0]!r} is listed more than once in {source or 'the source'}")
    strata = None
    if stratify:
        missing = [s for s in samples if s.mask is None]
        if missing:
            raise DataError(f"{missing[0].origin}: stratified splits need a mask for every sample")
        strata = [dominant_class(s, encoder, ignore_index, color_masks)
                  for s in progress_bar(samples, desc="reading masks")]
    labelled_idx = set(choose_labelled(len(samples), value, seed, strata))
    labelled = [s.entry for i, s in enumerate(samples) if i in labelled_idx]
    unlabelled = [s.entry for i, s in enumerate(samples) if i not in labelled_idx]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "source": source, "ratio": str(ratio), "seed": seed, "stratified": stratify,
        "total": len(samples), "labelled": len(labelled), "unlabelled": len(unlabelled),
    }
    if strata is not None:
        info["strata_labelled"] = dict(sorted(Counter(strata[i] for i in labelled_idx).items()))
    for name, lines in (("labelled.txt", labelled), ("unlabelled.txt", unlabelled)):
        write_text(out_dir / name, "".join(line + "\n" for line in lines))
    write_text(out_dir / "split.json", json.dumps(info, indent=2) + "\n")
    return {**info, "out_dir": str(out_dir)}


def split_source(source: str | None, data=None, root: str | None = None, labelled: bool = False):
    """The samples ``co2s splits`` draws from: ``source`` (a list file or folder), resolved with
    the data config when given (its root, ID format and label handling; default source
    ``data.splits.train``), else relative to ``root``. Returns ``(samples, encoder or None,
    source path)``; ``labelled`` requires masks (stratified splits)."""
    if data is not None:
        source = source or data.splits.train
        if not source:
            raise DataError("give a SOURCE list/folder or set data.splits.train in the config")
        # masks kept where they exist: the labelled list written from a folder must name them
        samples = read_split(source, data, labelled=labelled, name="train", keep_masks=True)
        return samples, LabelEncoder.from_config(data), str(resolve(data.root, source))
    if not source:
        raise DataError("give a SOURCE list file or folder, or --config")
    path = Path(source)
    if path.is_dir():
        samples = read_folder(path, labelled=labelled, keep_masks=True, root=Path(root) if root else None)
    elif path.is_file():
        samples = read_list_file(path, Path(root or "."), None, labelled=labelled)
    else:
        raise DataError(f"split source not found: {path}")
    if not samples:
        raise DataError(f"{path} lists no samples")
    return samples, None, str(path)
