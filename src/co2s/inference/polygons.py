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
3. with ``simplify``, the polygons are simplified together as a coverage
   (``shapely.coverage_simplify``): neighbours keep sharing their simplified edges, so the result
   has neither gaps nor overlaps (without it, the polygons are the pixels' edges, a valid coverage
   too, and no second copy of the geometry is made).

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
    belong to no region. ``neighbours``: also record which regions share an edge, which
    ``min_area`` needs (and only it: the record costs a pass over each piece)."""

    def __init__(self, height: int, width: int, nodata: int, neighbours: bool = False) -> None:
        self.height, self.width, self.nodata, self.with_neighbours = height, width, nodata, neighbours
        self._geoms: list = []
        self._classes: list[np.ndarray] = []
        self._pixels: list[np.ndarray] = []
        self._confidence: list[np.ndarray] = []
        self._links: list[np.ndarray] = []  # [k, 2] pairs of region ids that are one region
        self._junctions: list[np.ndarray] = []  # [k, 2] pixel corners (x, y) where 3 or more ids meet
        self._neighbours: list[np.ndarray] = []  # [k, 2] ids with 4-adjacent pixels (a < b)
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
        above_known, left_known = self._row_at[cols] == window.y - 1, self._col_at[rows] == window.x - 1
        if window.y > 0:
            self._link(self._row_ids[cols], self._row_class[cols], above_known, ids[0], classes[0])
        if window.x > 0:
            self._link(self._col_ids[rows], self._col_class[rows], left_known, ids[:, 0], classes[:, 0])
        above = np.where(above_known, self._row_ids[cols], _OUTSIDE)
        left = np.where(left_known, self._col_ids[rows], _OUTSIDE)
        self._find_junctions(window, ids, above, left)
        if self.with_neighbours:
            self._note_neighbours(ids, above, left)
        self._row_ids[cols], self._row_class[cols], self._row_at[cols] = ids[-1], classes[-1], window.y1 - 1
        self._col_ids[rows], self._col_class[rows], self._col_at[rows] = ids[:, -1], classes[:, -1], window.x1 - 1

    def _find_junctions(self, window: Window, ids: np.ndarray, above: np.ndarray, left: np.ndarray) -> None:
        """Keep the pixel corners of the piece (its upper and left edges included) where three or
        more ids meet among the four pixels around it. Only there can one side of an edge have a
        vertex the other lacks (a T-junction; a seam crossing, where a piece's ids change): they are
        added to every polygon whose boundary passes through them, which makes the polygons a valid
        coverage. Ids that later prove one region only add a harmless vertex."""
        h, w = ids.shape
        grid = np.empty((h + 1, w + 1), np.int64)
        grid[1:, 1:], grid[0, 1:], grid[1:, 0], grid[0, 0] = ids, above, left, _UNKNOWN
        a, b, c, d = grid[:-1, :-1], grid[:-1, 1:], grid[1:, :-1], grid[1:, 1:]
        distinct = 1 + (b != a) + ((c != a) & (c != b)) + ((d != a) & (d != b) & (d != c))
        r, q = np.nonzero(distinct >= 3)
        if r.size:
            self._junctions.append(np.stack([q + window.x, r + window.y], 1).astype(np.int64))

    def _note_neighbours(self, ids: np.ndarray, above: np.ndarray, left: np.ndarray) -> None:
        """Keep the pairs of ids whose pixels share an edge (in the piece, and across its upper and
        left edges): the region adjacency ``min_area`` merges along, found from pixels, never from
        geometry (a region with thousands of holes would make that quadratic)."""
        found = []
        for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1], ids[1:]), (above, ids[0]), (left, ids[:, 0])):
            differ = (a != b) & (a >= 0) & (b >= 0)
            if differ.any():
                found.append(np.stack([np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])], 1))
        if found:
            self._neighbours.append(np.unique(np.concatenate(found), axis=0))

    def _link(self, before: np.ndarray, before_class: np.ndarray, adjacent: np.ndarray, now: np.ndarray,
              now_class: np.ndarray) -> None:
        same = adjacent & (before >= 0) & (now >= 0) & (before_class == now_class)
        if same.any():
            self._links.append(np.unique(np.stack([before[same], now[same]], 1), axis=0))

    def features(self, transform, class_names: list[str], min_area: float = 0.0,
                 simplify: float = 0.0) -> PolygonFeatures:
        """The regions as features in the CRS of ``transform`` (an affine pixel-to-CRS transform):
        pieces of one region joined, then ``min_area`` (CRS units squared) and ``simplify``
        (CRS units) applied as the module docstring says. Called once, when every piece is in: the
        pieces' polygons are handed over (not copied), so that at most two versions of the
        geometry are held at any time."""
        import shapely

        if self._geoms is None:
            raise RuntimeError("RegionPolygons.features() was called already")
        if min_area > 0 and not self.with_neighbours:
            raise ValueError("min_area merges along region neighbours: make RegionPolygons(..., neighbours=True)")
        geoms = np.empty(self._count, object)
        geoms[:] = self._geoms
        self._geoms = None
        region_class = np.concatenate(self._classes) if self._classes else np.zeros(0, np.int64)
        pixels = np.concatenate(self._pixels) if self._pixels else np.zeros(0, np.int64)
        sums = np.concatenate(self._confidence) if self._confidence else np.zeros(0)
        links = np.concatenate(self._links) if self._links else np.zeros((0, 2), np.int64)

        # pieces of one region -> one polygon
        root = _components(self._count, links)
        geoms, region_class, pixels, sums, index = _join(root, geoms, region_class, pixels, sums)
        own_pixels = pixels.copy()  # the pixels predicted as the region's class

        pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
        if min_area > 0 and len(geoms):
            pairs = index[np.concatenate(self._neighbours)] if self._neighbours else np.zeros((0, 2), np.int64)
            keep, target = _sieve(pixels, np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0), min_area / pixel_area)
            geoms, pixels = _absorb(geoms, pixels, keep, target)
            region_class, sums, own_pixels = region_class[keep], sums[keep], own_pixels[keep]

        # GDAL leaves a vertex on one side of an edge only where a third region meets it (and
        # joining pieces may drop a seam's): the junctions are added to every polygon through
        # them, so that neighbours hold the same vertices along what they share, which is what
        # makes the polygons a valid coverage (what coverage simplification needs, and what GIS
        # topology tools expect).
        # In batches of about a million vertices, each batch's pixel-space polygons replaced as it
        # goes: the arrays of a whole scene's vertices are never built.
        corners = np.unique(np.concatenate(self._junctions), axis=0) if self._junctions else None
        m = np.array([[transform.a, transform.b], [transform.d, transform.e]])
        offset = np.array([transform.c, transform.f])
        vertices = np.cumsum(shapely.get_num_coordinates(geoms))
        cuts = np.searchsorted(vertices, np.arange(_BATCH, vertices[-1] if len(vertices) else 0, _BATCH), "right")
        bounds = np.unique([0, *cuts.tolist(), len(geoms)])
        for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            batch = _add_junctions(geoms[start:end], corners)
            geoms[start:end] = shapely.transform(batch, lambda xy: xy @ m.T + offset)
        if simplify > 0 and len(geoms):  # on both sides of a shared edge alike
            geoms = shapely.coverage_simplify(geoms, simplify)
        names = np.array([class_names[c] if c < len(class_names) else str(c) for c in region_class], object)
        with np.errstate(invalid="ignore", divide="ignore"):
            confidence = sums / own_pixels
        return PolygonFeatures(geoms, region_class.astype(np.int32), names, pixels * pixel_area, confidence,
                               pixels)


#: ids of what lies beyond a piece's edge when it is outside the raster or not given yet, and of the
#: pixel diagonally above-left of a piece (never kept): distinct from every region id and nodata
_OUTSIDE, _UNKNOWN = -2, -3


#: vertices handled at once when junctions are added and coordinates transformed
_BATCH = 1_000_000


def _add_junctions(geoms: np.ndarray, corners: np.ndarray | None) -> np.ndarray:
    """``geoms`` (pixel coordinates, every edge horizontal or vertical) with each junction point
    that lies inside one of their edges inserted there as a vertex. Linear in the vertices: every
    edge finds its points by binary search in the sorted junctions of its row (or column), so a
    huge region with thousands of holes costs what its vertices cost."""
    import shapely

    if corners is None or not len(geoms):  # corners: the junctions (x, y), integers, unique
        return geoms
    rings, ring_polygon = shapely.get_rings(geoms, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    xy = np.rint(xy).astype(np.int64)
    span = int(max(xy.max(), corners.max())) + 2  # keys y * span + x never collide
    by_row = np.sort(corners[:, 1] * span + corners[:, 0])  # row-major keys: points of a row in x order
    by_col = np.sort(corners[:, 0] * span + corners[:, 1])  # column-major keys
    n = len(xy)
    x0, y0, x1, y1 = xy[:-1, 0], xy[:-1, 1], xy[1:, 0], xy[1:, 1]
    edge = ring[:-1] == ring[1:]  # coordinate i and i + 1 bound an edge of one ring
    flat = edge & (y0 == y1)  # horizontal; the other edges are vertical (x0 == x1)
    lo_key = np.where(flat, y0 * span + np.minimum(x0, x1), x0 * span + np.minimum(y0, y1))
    hi_key = np.where(flat, y0 * span + np.maximum(x0, x1), x0 * span + np.maximum(y0, y1))
    lo = np.where(flat, np.searchsorted(by_row, lo_key, "right"), np.searchsorted(by_col, lo_key, "right"))
    hi = np.where(flat, np.searchsorted(by_row, hi_key, "left"), np.searchsorted(by_col, hi_key, "left"))
    count = np.zeros(n, np.int64)
    count[:-1] = np.where(edge, np.maximum(hi - lo, 0), 0)
    if not count.any():
        return geoms
    # the output: every coordinate, followed by the points inserted into the edge it starts
    at = np.arange(n) + np.concatenate([[0], np.cumsum(count)[:-1]])
    out = np.empty((n + int(count.sum()), 2), np.int64)
    out[at] = xy
    out_ring = np.empty(len(out), np.int64)
    out_ring[at] = ring
    source = np.repeat(np.arange(n), count)  # the edge each inserted point belongs to
    k = np.arange(len(source)) - np.repeat(np.cumsum(count) - count, count)  # its rank on the edge
    forward = np.where(flat[source], x1[source] > x0[source], y1[source] > y0[source])
    index = np.where(forward, lo[source] + k, hi[source] - 1 - k)
    key = np.where(flat[source], by_row[np.minimum(index, len(by_row) - 1)], by_col[np.minimum(index, len(by_col) - 1)])
    first, second = key // span, key % span  # row-major: (y, x); column-major: (x, y)
    inserted = np.where(flat[source][:, None], np.stack([second, first], 1), np.stack([first, second], 1))
    slots = np.ones(len(out), bool)
    slots[at] = False
    out[slots] = inserted
    out_ring[slots] = ring[source]
    new_rings = shapely.linearrings(out.astype(np.float64), indices=out_ring)
    return shapely.polygons(new_rings, indices=ring_polygon)


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


def _groups(labels: np.ndarray, wanted: np.ndarray):
    """``(label, members)`` for each label in ``wanted``: the indices holding it (one sort, so a
    scene of many regions costs n log n, not n per group)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, wanted, "left")
    ends = np.searchsorted(sorted_labels, wanted, "right")
    for label, a, b in zip(wanted.tolist(), starts.tolist(), ends.tolist()):
        yield label, order[a:b]


def _join(root, geoms, region_class, pixels, sums):
    """One entry per component (at its smallest id), its polygons unioned and its sums added;
    and each id's component."""
    import shapely

    heads = np.flatnonzero(root == np.arange(len(root)))
    index = np.searchsorted(heads, root)  # each id's component, numbered in the order of its head
    joined = geoms[heads].copy()
    pieced = np.unique(index[root != np.arange(len(root))])  # components of more than one piece
    for component, members in _groups(index, pieced):
        joined[component] = shapely.union_all(geoms[members])
    return (joined, region_class[heads], np.bincount(index, pixels, len(heads)).astype(np.int64),
            np.bincount(index, sums, len(heads)), index)


def _sieve(pixels: np.ndarray, neighbours: np.ndarray, min_pixels: float) -> tuple[np.ndarray, np.ndarray]:
    """Which regions stay (``keep``) and where every region goes (``target``: itself, a kept
    region, or -1 when dropped): regions under ``min_pixels``, smallest first, join the largest
    region they share an edge with (``neighbours``: pairs of regions with 4-adjacent pixels; a
    group they joined counts as one); with no neighbour left they are dropped."""
    n = len(pixels)
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
        both = np.concatenate([neighbours, neighbours[:, ::-1]])
        adjacent = dict(_groups(both[:, 0], small))
        for i in small[np.argsort(pixels[small], kind="stable")].tolist():
            here = find(i)
            if size[here] >= min_pixels:  # others joined it: large enough now
                continue
            groups = {find(j) for j in both[adjacent[i], 1].tolist()} - {here}
            if not groups:
                dropped[here] = True
                continue
            best = max(groups, key=lambda g: (size[g], -g))
            parent[here] = best
            size[best] += size[here]
    target = np.array([find(i) for i in range(n)], np.int64)
    target[dropped[target]] = -1
    keep = np.flatnonzero(target == np.arange(n))
    return keep, target


def _absorb(geoms, pixels, keep, target):
    """The kept regions with the regions that joined them unioned in."""
    import shapely

    out = geoms[keep].copy()
    total = pixels[keep].copy()
    slot = np.full(len(target), -1, np.int64)
    slot[keep] = np.arange(len(keep))
    movers = np.flatnonzero((target >= 0) & (target != np.arange(len(target))))
    for k, members in _groups(target, np.unique(target[movers])):
        out[slot[k]] = shapely.union_all(geoms[members])
        total[slot[k]] = pixels[members].sum()
    return out, total


def write_polygons(path: Path, features: PolygonFeatures, crs, driver: str, layer: str) -> None:
    """Write ``features`` with ``driver`` (GPKG or GeoJSON) at ``path`` in ``crs`` (a
    rasterio CRS or None): :func:`write_features`."""
    columns = {"class_id": features.class_id, "class": features.class_name, "area": features.area,
               "confidence": features.confidence, "pixels": features.pixels}
    write_features(path, features.geometries, columns, crs, driver, layer)


def write_features(path: Path, geometries: np.ndarray, columns: dict[str, np.ndarray], crs, driver: str,
                   layer: str, append: bool = False) -> None:
    """Write polygons (``geometries``, shapely) and their ``columns`` as a layer of a vector file
    (``append``: beside the file's other layers) in ``crs`` (a rasterio CRS or None). GDAL's
    failures come as an :class:`OSError` without errno (as rasterio's do), for the writer's caller
    to word with the file's name and the disk's fault."""
    import pyogrio
    import shapely
    from pyogrio.errors import DataLayerError, DataSourceError

    types = set(shapely.get_type_id(geometries).tolist())
    geometry_type = "MultiPolygon" if 6 in types else "Polygon"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GDAL on the temporary's suffix, which is not .gpkg
            pyogrio.raw.write(os.fspath(path), shapely.to_wkb(geometries), list(columns.values()),
                              fields=list(columns), crs=crs.to_wkt() if crs is not None else None,
                              geometry_type=geometry_type, driver=driver, layer=layer,
                              promote_to_multi=geometry_type == "MultiPolygon", append=append)
    except (DataSourceError, DataLayerError) as exc:
        raise OSError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc
