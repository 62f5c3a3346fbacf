"""Seeded labelled / held-out subsets of a vector label file (``co2s splits labels.gpkg ...``): the
scene-level analogue of the tile ratios.

The features (labelled polygons) are split into ``labelled.gpkg`` (for ``data.scenes.labels``)
and ``held_out.gpkg`` (for ``data.scenes.val`` / ``test``, or left unlabelled), so that the
labelled part holds ``ratio`` of the features (``by="count"``) or of their area (``by="area"``).

Spatial blocking: neighbouring polygons are alike (same field, same roof, same image patch), so a
held-out polygon next to a training one measures little. With ``block``, every feature goes to
the square grid cell of ``block`` x ``block`` CRS units holding its representative point
(``shapely.point_on_surface``), and whole cells are split: features of one cell are all labelled
or all held out. ``buffer`` then drops held-out features closer than ``buffer`` CRS units to any
labelled feature (they go to neither file), so the two sides are at least that far apart.

Selection: the units (cells, or single features without ``block``) are shuffled with the seed and
the labelled part is the prefix whose measure is closest to ``ratio`` of the total (at least one
unit, never all). With ``stratify`` this is done per class, each unit counted in the class that
holds most of its measure, so every class keeps about ``ratio`` of its features or area on the
labelled side (a class with two units or more is on both sides). Files keep every attribute and
the source order; the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from co2s.atomic import commit, write_text
from co2s.data.scene_labels import PolygonLayer, class_indices, shown_items
from co2s.errors import DataError

#: file suffixes read as vector label files by ``co2s splits``
VECTOR_SUFFIXES = {".gpkg", ".geojson", ".geojsonl", ".geojsons", ".json", ".shp", ".fgb", ".gml", ".kml",
                   ".sqlite", ".gdb"}
#: the GeoPackage "last change" date written (GDAL's OGR_CURRENT_DATE): outputs do not depend on the time
FIXED_DATE = "2000-01-01T00:00:00.000Z"
BY = ("count", "area")


def is_vector_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def _closest_prefix(measures: list[float], ratio: float) -> int:
    """How many of the (shuffled) units make the labelled part: the prefix whose measure is closest
    to ``ratio`` of the total, at least one and, with two units or more, never all."""
    n = len(measures)
    if n == 1:
        return 1
    cumulative = np.cumsum(measures)
    target = ratio * cumulative[-1]
    return min(range(1, n), key=lambda k: (abs(cumulative[k - 1] - target), k))


def _summary(rows: np.ndarray, measure: np.ndarray, area: np.ndarray, classes: list[str] | None, total: float) -> dict:
    out = {"features": int(rows.size), "area": float(area[rows].sum()),
           "share": float(measure[rows].sum() / total) if total else 0.0}
    if classes is not None:
        per = defaultdict(lambda: {"features": 0, "area": 0.0})
        for i in rows.tolist():
            per[classes[i]]["features"] += 1
            per[classes[i]]["area"] += float(area[i])
        out["classes"] = {c: per[c] for c in sorted(per)}
    return out


def make_vector_splits(
    path: str | os.PathLike,
    ratio: str | float,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    layer: str | None = None,
    attribute: str | None = None,
    where: str | None = None,
    by: str = "area",
    stratify: bool = False,
    block: float | None = None,
    buffer: float | None = None,
    classes: list[str] | None = None,
    ignore_index: int = 255,
    repair: bool = False,
) -> dict:
    """Write ``labelled.gpkg``, ``held_out.gpkg`` and ``split.json`` into ``out_dir`` (see the
    module docstring); ``classes`` (a config's) checks the attribute's values as training would;
    ``repair`` (a config's ``data.scenes.labels.repair``) remakes invalid polygons valid, and the
    files hold the repaired ones."""
    import pyogrio
    import shapely

    from co2s.data.splits import parse_ratio

    value = parse_ratio(ratio)
    if by not in BY:
        raise DataError(f"--by {by!r}: choose count or area")
    for name, number in (("--block", block), ("--buffer", buffer)):
        if number is not None and not (np.isfinite(number) and number >= (0 if name == "--buffer" else 1e-12)):
            raise DataError(f"{name} {number}: give a positive distance in the vector's CRS units")
    if stratify and not attribute:
        raise DataError("stratified splits need --attribute: the field holding each polygon's class")
    path = Path(path)
    polygons = PolygonLayer(path, layer, where, "--", required=(attribute,) if attribute else (), repair=repair)
    layer, described, fids, geoms = polygons.layer, polygons.described, polygons.fids, polygons.geoms
    labels = None
    if attribute:
        if classes is not None:  # the checks and class names of training
            indices = class_indices(polygons, attribute, list(classes), ignore_index)
            labels = [classes[i] if i < len(classes) else "(ignore)" for i in indices.tolist()]
        else:
            raw = polygons.column(attribute).tolist()
            nulls = [int(f) for f, v in zip(fids, raw) if v is None]
            if nulls:
                raise DataError(f"{described}: feature id(s) {shown_items(nulls)} have no class (attribute "
                                f"{attribute!r} is empty)")
            labels = [str(v) for v in raw]
    crs = polygons.crs_text
    if polygons.crs is not None and (block is not None or buffer is not None):
        if polygons.crs.is_geographic:
            raise DataError(f"{described} is in a geographic CRS ({crs}): --block and --buffer are distances "
                            "in the CRS's units (degrees here); reproject the file to a projected CRS "
                            "first (QGIS: Export > Save Features As; ogr2ogr -t_srs EPSG:...)")

    area = shapely.area(geoms)
    measure = area if by == "area" else np.ones(len(geoms))
    if block is not None:
        points = shapely.get_coordinates(shapely.point_on_surface(geoms))
        cells = [tuple(c) for c in np.floor(points / block).astype(np.int64).tolist()]
        first: dict[tuple, int] = {}
        unit_of = np.array([first.setdefault(c, len(first)) for c in cells], np.int64)
    else:
        unit_of = np.arange(len(geoms))
    units = int(unit_of.max()) + 1
    unit_measure = np.bincount(unit_of, weights=measure, minlength=units)
    if stratify:
        keys = sorted(set(labels))
        by_class = np.zeros((units, len(keys)))
        np.add.at(by_class, (unit_of, [keys.index(c) for c in labels]), measure)
        stratum = by_class.argmax(1)  # ties: the first class in sorted order
    else:
        stratum = np.zeros(units, np.int64)
    if units < 2:
        raise DataError(f"{described}: all {len(geoms)} feature(s) fall in one "
                        f"{'block of --block ' + str(block) if block is not None else 'unit'}: nothing "
                        "to hold out (a smaller --block, or more features)")
    rng = random.Random(seed)
    labelled_units: set[int] = set()
    for s in sorted(set(stratum.tolist())):
        members = [u for u in range(units) if stratum[u] == s]
        rng.shuffle(members)
        labelled_units |= set(members[: _closest_prefix([unit_measure[u] for u in members], value)])
    if len(labelled_units) == units:  # one unit per class, all labelled: hold out the last drawn one
        raise DataError(f"{described}: every class has a single {'block' if block is not None else 'feature'}, "
                        "so stratifying leaves nothing to hold out (drop --stratify, or a smaller --block)")
    is_labelled = np.isin(unit_of, sorted(labelled_units))
    labelled = np.flatnonzero(is_labelled)
    held = np.flatnonzero(~is_labelled)
    dropped = np.zeros(0, np.int64)
    tree = shapely.STRtree(geoms[labelled])
    if buffer is not None:
        near = np.unique(tree.query(geoms[held], predicate="dwithin", distance=buffer)[0])
        dropped, held = held[near], np.delete(held, near)
        if held.size == 0:
            raise DataError(f"{described}: --buffer {buffer} drops every held-out feature (they all lie "
                            "that close to a labelled one): a smaller --buffer, or a larger --block")
    touching = np.unique(tree.query(geoms[held], predicate="intersects")[0]).size

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    types = set(shapely.get_type_id(geoms).tolist())
    geometry_type = "Polygon" if types == {3} else "MultiPolygon"
    if shapely.has_z(geoms).any():
        geometry_type += " Z"
    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": FIXED_DATE})
    try:
        for name, rows in (("labelled.gpkg", labelled), ("held_out.gpkg", held)):
            tmp = out_dir / f".{os.getpid()}.{name}"  # GDAL wants the .gpkg suffix
            try:
                pyogrio.raw.write(tmp, polygons.wkb[rows], [f[rows] for f in polygons.fields],
                                  fields=polygons.columns, crs=crs, geometry_type=geometry_type, driver="GPKG",
                                  layer=layer, promote_to_multi=len(types) > 1)
                commit(tmp, out_dir / name)
            except Exception as exc:
                tmp.unlink(missing_ok=True)
                raise DataError(f"cannot write {out_dir / name}: {exc}") from None
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})
    total = float(measure.sum())
    info = {
        "source": str(path), "layer": layer, "where": where, "attribute": attribute, "ratio": str(ratio),
        "by": by, "seed": seed, "stratified": stratify, "block": block, "buffer": buffer, "crs": crs,
        "units": units, "repaired": polygons.repaired,
        "total": _summary(np.arange(len(geoms)), measure, area, labels, total),
        "labelled": _summary(labelled, measure, area, labels, total),
        "held_out": _summary(held, measure, area, labels, total),
        "dropped": _summary(dropped, measure, area, labels, total),
        "held_out_touching_labelled": int(touching),
        "files": {"labelled": "labelled.gpkg", "held_out": "held_out.gpkg"},
        "fids": {"labelled": fids[labelled].tolist(), "held_out": fids[held].tolist(),
                 "dropped": fids[dropped].tolist()},
    }
    write_text(out_dir / "split.json", json.dumps(info, indent=2) + "\n")
    return {**info, "out_dir": str(out_dir)}
