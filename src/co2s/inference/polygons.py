"""Polygons of a predicted class raster (``co2s predict --polygons``), built piece by piece.

The scene writer hands over its finished rows (:meth:`RegionPolygons.add`): panel by panel, each
top to bottom. Each piece is polygonised on its own (GDAL's polygonize through rasterio: one
polygon per 4-connected region of one class, nodata left out) in pixel coordinates, so every
vertex is an exact integer and neighbouring polygons share their edges exactly. The regions a
piece's upper or left edge cuts are found from the region ids of the row above and of the column
to the left, the only per-pixel state kept (O(height + width)), and joined into one feature at the
end (a union of polygons sharing pixel edges: exact). Memory is thus one piece's plus the output
geometry's, never proportional to the scene's pixel count.

At the end (:meth:`RegionPolygons.features`), in this order:

1. with ``min_area``, a region smaller than it joins its largest neighbour (as ``gdal_sieve`` does
   on rasters), so no gap is left; one with no neighbour (an island in nodata) is dropped;
2. the coordinates go through the raster's affine transform into its CRS;
3. the polygons are simplified together as a coverage (``shapely.coverage_simplify``): vertices
   in a straight line go, and with ``simplify`` those within that distance too; neighbours keep
   sharing their simplified edges, so the result has neither gaps nor overlaps.

Each feature: ``class_id``, ``class`` (the name), ``area`` (of its pixels, in the CRS's units
squared), ``confidence`` (the mean, over its pixels predicted as its class, of that class's
probability) and ``pixels``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from co2s.data.raster import Window

#: output formats of ``--polygons``: file suffix and GDAL/OGR driver
FORMATS = {"gpkg": ("gpkg", "GPKG"), "geojson": ("geojson", "GeoJSON")}


@dataclass
class PolygonFeatures:
    """The features of one class raster, in the order their first piece was found."""

    geometries: np.ndarray  # shapely Polygons in the raster's CRS
    class_id: np.ndarray  # int32
    class_name: np.ndarray  # object (str)
    area: np.ndarray  # float64, CRS units squared
    confidence: np.ndarray  # float64
    pixels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.geometries)

    @property
    def vertices(self) -> int:
        import shapely

        return int(shapely.get_num_coordinates(self.geometries).sum())


class RegionPolygons:
    """Polygons of the 4-connected regions of a ``height x width`` class raster given in pieces.

    Pieces come as :meth:`add` ``(window, classes, confidence)``: every pixel once, each piece
    after the pieces holding the row above it and the column to its left (the scene writer's
    order, panel by panel and top to bottom; row-major tiles too). Pixels equal to ``nodata``
    belong to no region."""

    def __init__(self, height: int, width: int, nodata: int) -> None:
        self.height, self.width, self.nodata = height, width, nodata
        self._geoms: list = []
        self._classes: list[np.ndarray] = []
        self._pixels: list[np.ndarray] = []
        self._confidence: list[np.ndarray] = []
        self._links: list[np.ndarray] = []  # [k, 2] pairs of region ids that are one region
        self._count = 0
        # the region id (-1: none) and class of the last row given per column, and which row it was
        self._row_ids = np.full(width, -1, np.int64)
        self._row_class = np.zeros(width, np.int64)
        self._row_at = np.full(width, -1, np.int64)
        # the same for the last column given per row
        self._col_ids = np.full(height, -1, np.int64)
        self._col_class = np.zeros(height, np.int64)
        self._col_at = np.full(height, -1, np.int64)

    def add(self, window: Window, classes: np.ndarray, confidence: np.ndarray) -> None:
        """Take the pixels of ``window``: class indices (``nodata`` for none) and the probability
        of each pixel's class."""
        import rasterio.features
        import shapely
        from rasterio.transform import Affine

        valid = classes != self.nodata
        ids = np.full(classes.shape, -1, np.int64)
        if valid.any():
            shift = Affine.translation(window.x, window.y)  # pixel coordinates of the whole raster
            found = list(rasterio.features.shapes(classes, mask=valid, connectivity=4, transform=shift))
            geoms = [shapely.geometry.shape(g) for g, _ in found]
            local = rasterio.features.rasterize(zip(geoms, range(1, len(geoms) + 1)), out_shape=classes.shape,
                                                transform=shift, fill=0, dtype="int32")
            counts = np.bincount(local.ravel(), minlength=len(geoms) + 1)[1:]
            sums = np.bincount(local.ravel(), weights=confidence.ravel().astype(np.float64),
                               minlength=len(geoms) + 1)[1:]
            ids = np.where(local > 0, local.astype(np.int64) - 1 + self._count, -1)
            self._geoms += geoms
            self._classes.append(np.array([int(v) for _, v in found], np.int64))
            self._pixels.append(counts.astype(np.int64))
            self._confidence.append(sums)
            self._count += len(geoms)
        cols, rows = slice(window.x, window.x1), slice(window.y, window.y1)
        classes = classes.astype(np.int64)
        if window.y > 0:
            self._link(self._row_ids[cols], self._row_class[cols], self._row_at[cols] == window.y - 1,
                       ids[0], classes[0])
        if window.x > 0:
            self._link(self._col_ids[rows], self._col_class[rows], self._col_at[rows] == window.x - 1,
                       ids[:, 0], classes[:, 0])
        self._row_ids[cols], self._row_class[cols], self._row_at[cols] = ids[-1], classes[-1], window.y1 - 1
        self._col_ids[rows], self._col_class[rows], self._col_at[rows] = ids[:, -1], classes[:, -1], window.x1 - 1

    def _link(self, before: np.ndarray, before_class: np.ndarray, adjacent: np.ndarray, now: np.ndarray,
              now_class: np.ndarray) -> None:
        same = adjacent & (before >= 0) & (now >= 0) & (before_class == now_class)
        if same.any():
            self._links.append(np.unique(np.stack([before[same], now[same]], 1), axis=0))

    def features(self, transform, class_names: list[str], min_area: float = 0.0,
                 simplify: float = 0.0) -> PolygonFeatures:
        """The regions as features in the CRS of ``transform`` (an affine pixel-to-CRS transform):
        pieces of one region joined, then ``min_area`` (CRS units squared) and ``simplify``
        (CRS units) applied as the module docstring says."""
        import shapely

        geoms = np.empty(self._count, object)
        geoms[:] = self._geoms
        region_class = np.concatenate(self._classes) if self._classes else np.zeros(0, np.int64)
        pixels = np.concatenate(self._pixels) if self._pixels else np.zeros(0, np.int64)
        sums = np.concatenate(self._confidence) if self._confidence else np.zeros(0)
        links = np.concatenate(self._links) if self._links else np.zeros((0, 2), np.int64)

        # pieces of one region -> one polygon
        root = _components(self._count, links)
        geoms, region_class, pixels, sums = _join(root, geoms, region_class, pixels, sums)
        own_pixels = pixels.copy()  # the pixels predicted as the region's class

        pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
        if min_area > 0 and len(geoms):
            keep, target = _sieve(geoms, pixels, min_area / pixel_area)
            geoms, pixels = _absorb(geoms, pixels, keep, target)
            region_class, sums, own_pixels = region_class[keep], sums[keep], own_pixels[keep]

        # A vertex at every pixel corner of every edge (exact integers again after segmentize's
        # interpolation): neighbours then hold the same vertices along what they share, which is
        # what makes the polygons a valid coverage (GDAL leaves a vertex on one side only where a
        # third region meets the edge). Coverage simplification then drops the vertices that are
        # in a straight line (tolerance 0) or within ``simplify``, on both sides of an edge alike.
        geoms = shapely.transform(shapely.segmentize(geoms, 1.0), np.round)
        m = np.array([[transform.a, transform.b], [transform.d, transform.e]])
        offset = np.array([transform.c, transform.f])
        geoms = shapely.transform(geoms, lambda xy: xy @ m.T + offset)
        if len(geoms):
            geoms = shapely.coverage_simplify(geoms, simplify)
        names = np.array([class_names[c] if c < len(class_names) else str(c) for c in region_class], object)
        with np.errstate(invalid="ignore", divide="ignore"):
            confidence = sums / own_pixels
        return PolygonFeatures(geoms, region_class.astype(np.int32), names, pixels * pixel_area, confidence,
                               pixels)


def _components(count: int, links: np.ndarray) -> np.ndarray:
    """The smallest region id of each region's component under ``links`` (union-find over the
    linked ids only: the others are their own component)."""
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.get(i, i) != i:
            parent[i] = parent.get(parent[i], parent[i])
            i = parent[i]
        return i

    for a, b in links.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    root = np.arange(count)
    for i in parent:
        root[i] = find(i)
    return root


def _join(root, geoms, region_class, pixels, sums):
    """One entry per component (at its smallest id), its polygons unioned and its sums added."""
    import shapely

    heads = np.flatnonzero(root == np.arange(len(root)))
    index = np.searchsorted(heads, root)  # each id's component, numbered in the order of its head
    joined = geoms[heads].copy()
    members = np.flatnonzero(root != np.arange(len(root)))
    for head in np.unique(index[members]):
        joined[head] = shapely.union_all(geoms[index == head])
    return (joined, region_class[heads], np.bincount(index, pixels, len(heads)).astype(np.int64),
            np.bincount(index, sums, len(heads)))


def _sieve(geoms: np.ndarray, pixels: np.ndarray, min_pixels: float) -> tuple[np.ndarray, np.ndarray]:
    """Which regions stay (``keep``) and where every region goes (``target``: itself, a kept
    region, or -1 when dropped): regions under ``min_pixels``, smallest first, join the largest
    region they share an edge with (a group they joined counts as one); with no neighbour
    left they are dropped."""
    import shapely

    n = len(geoms)
    parent = np.arange(n)
    size = pixels.astype(np.float64).copy()
    dropped = np.zeros(n, bool)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    small = np.flatnonzero(pixels < min_pixels)
    if small.size:
        tree = shapely.STRtree(geoms)
        boundaries = shapely.boundary(geoms)
        for i in small[np.argsort(pixels[small], kind="stable")]:
            here = find(i)
            if size[here] >= min_pixels:  # others joined it: large enough now
                continue
            near = tree.query(geoms[i], predicate="touches")
            near = near[shapely.length(shapely.intersection(boundaries[i], boundaries[near])) > 0]  # edges
            groups = {find(j) for j in near.tolist()} - {here}
            if not groups:
                dropped[here] = True
                continue
            best = max(groups, key=lambda g: (size[g], -g))
            parent[here] = best
            size[best] += size[here]
    target = np.array([find(i) for i in range(n)])
    target[dropped[target]] = -1
    keep = np.flatnonzero(target == np.arange(n))
    return keep, target


def _absorb(geoms, pixels, keep, target):
    """The kept regions with the regions that joined them unioned in."""
    import shapely

    out = geoms[keep].copy()
    total = pixels[keep].copy()
    slot = {int(k): j for j, k in enumerate(keep)}
    movers = np.flatnonzero((target >= 0) & (target != np.arange(len(target))))
    for k in np.unique(target[movers]):
        members = np.flatnonzero(target == k)
        out[slot[int(k)]] = shapely.union_all(geoms[members])
        total[slot[int(k)]] = pixels[members].sum()
    return out, total


def write_polygons(path: Path, features: PolygonFeatures, crs, driver: str, layer: str) -> None:
    """Write ``features`` with ``driver`` (GPKG or GeoJSON) at ``path`` in ``crs`` (a
    rasterio CRS or None)."""
    import pyogrio
    import shapely

    types = set(shapely.get_type_id(features.geometries).tolist())
    geometry_type = "MultiPolygon" if 6 in types else "Polygon"
    fields = ["class_id", "class", "area", "confidence", "pixels"]
    data = [features.class_id, features.class_name, features.area, features.confidence, features.pixels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GDAL on the temporary's suffix, which is not .gpkg
        pyogrio.raw.write(os.fspath(path), shapely.to_wkb(features.geometries), data, fields=fields,
                          crs=crs.to_wkt() if crs is not None else None, geometry_type=geometry_type,
                          driver=driver, layer=layer, promote_to_multi=geometry_type == "MultiPolygon")
