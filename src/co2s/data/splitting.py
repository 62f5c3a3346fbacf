"""``co2s splits``: the one place that decides whether a split source is a tile list or a vector
label file, and draws the split with :mod:`co2s.data.splits` or :mod:`co2s.data.vector_splits`."""

from __future__ import annotations

import os
from pathlib import Path

from co2s.data import splits
from co2s.data.scene_set import vector_file
from co2s.data.sources import resolve
from co2s.data.vector_splits import is_vector_file, make_vector_splits
from co2s.errors import DataError

#: Options that only vector label files take, by CLI flag.
VECTOR_ONLY = ("--by", "--block", "--buffer", "--attribute", "--layer", "--where")


def write_splits(source: str | None, ratio: str, seed: int, out_dir: str | os.PathLike, *, data=None,
                 root: str | None = None, stratify: bool = False, by: str | None = None,
                 block: float | None = None, buffer: float | None = None, attribute: str | None = None,
                 layer: str | None = None, where: str | None = None) -> dict:
    """Seeded splits for a labelled ``ratio`` (see :func:`co2s.api.make_splits`); ``data``: the
    data config that resolves paths and names classes, when there is one. The result's ``kind``
    says which road was taken: ``tiles`` or ``vector``."""
    labels = data.scenes.labels if data is not None and data.scenes is not None else None
    vector = None
    if source is not None and is_vector_file(source):
        vector = Path(source) if Path(source).exists() or data is None else resolve(data.root, source)
    elif source is None and labels is not None and labels.vector is not None:
        vector = vector_file(Path(data.root), labels.vector)
        layer, where = layer or labels.layer, where or labels.where
    if vector is not None:
        attribute = attribute or (labels.attribute if labels is not None else None)
        return {**make_vector_splits(vector, ratio, seed, out_dir, layer=layer, attribute=attribute, where=where,
                                     by=by or "area", stratify=stratify, block=block, buffer=buffer,
                                     classes=list(data.classes) if data is not None and attribute else None,
                                     ignore_index=data.ignore_index if data is not None else 255,
                                     repair=labels is not None and labels.repair),
                "kind": "vector"}
    given = [flag for flag, v in zip(VECTOR_ONLY, (by, block, buffer, attribute, layer, where)) if v is not None]
    if given:
        raise DataError(f"{', '.join(given)}: for vector label files only (a .gpkg, .geojson, .shp, ...), "
                        f"not the tile source {source or 'data.splits.train'}")
    samples, encoder, source_name = splits.split_source(source, data, root, stratify)
    return {**splits.make_splits(samples, ratio, seed, out_dir, stratify, encoder,
                                 data.ignore_index if data else 255, data.color_masks if data else False,
                                 source_name),
            "kind": "tiles"}
