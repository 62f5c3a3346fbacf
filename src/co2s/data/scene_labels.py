"""Labels of whole scenes, read per window: polygons of a vector file or raster masks on any grid.

A label source answers one question for a scene: the class of every pixel of a window, read at any
output size (the training crops read a window of ``s x s`` scene pixels into ``crop x crop``).

- **Vector** (:class:`VectorLabels`): polygons with a class attribute (GeoPackage, GeoJSON,
  Shapefile, ... through pyogrio), checked once when loaded (coordinates that cannot be in the
  declared CRS, invalid polygons: refused, or repaired on request), reprojected to each scene's
  CRS and put in the scene's pixel coordinates; each window is rasterised on its own grid
  (``rasterio.features.rasterize``, pixel centres, later features over earlier ones). Pixels in
  no polygon are ``ignore_index`` (sparse labels), or ``background`` when the labels are complete.
- **Raster masks** (:class:`MaskLabels`): single-band index masks on the scene's grid, or on any
  other grid and CRS, warped onto the scene's grid (``WarpedVRT``, nearest); values go through the
  config's label handling (:class:`LabelEncoder`); mask nodata and pixels outside every mask are
  ``ignore_index``.

Every problem is a :class:`DataError` naming the file (and the feature ids).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from co2s.data.raster import Window, open_raster, placed_by_points
from co2s.data.labels import LabelEncoder
from co2s.errors import DataError

#: OGR geometry type ids (shapely.get_type_id) that label pixels: Polygon, MultiPolygon
POLYGONAL = (3, 6)
GEOMETRY_NAMES = {0: "Point", 1: "LineString", 2: "LinearRing", 3: "Polygon", 4: "MultiPoint",
                  5: "MultiLineString", 6: "MultiPolygon", 7: "GeometryCollection"}


def shown_items(items: list, limit: int = 8) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def window_transform(window: Window, out_shape: tuple[int, int]):
    """Affine from the output pixels of a window read into ``out_shape`` to the scene's pixels."""
    from affine import Affine

    return Affine(window.width / out_shape[1], 0.0, window.x, 0.0, window.height / out_shape[0], window.y)


#: how a user assigns a file's CRS (without reprojecting it), by kind of file
SET_CRS = {"raster": "QGIS: Layer > Set CRS; GDAL: gdal_edit -a_srs EPSG:<code> {file}",
           "vector": "QGIS: Layer > Set CRS, then Export > Save Features As; GDAL: ogr2ogr -a_srs "
                     "EPSG:<code> fixed.gpkg {file}"}


def set_crs(kind: str, path: Path | None) -> str:
    """How to assign the CRS of a ``kind`` (raster or vector) file ``path`` without reprojecting it."""
    return SET_CRS[kind].format(file=path.name if path is not None else "FILE")


def _placed_by_points(path: Path) -> str | None:
    try:
        with open_raster(path) as src:
            return placed_by_points(src)
    except DataError:
        return None


def parse_crs(value, what: str, kind: str = "raster", path: Path | None = None):
    """A rasterio CRS from a file's CRS (string or CRS); a missing or unknown one is a DataError
    (``kind``, raster or vector, and ``path`` make the message say how to set one)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    if value is None or (isinstance(value, str) and not value.strip()):
        by = _placed_by_points(path) if kind == "raster" and path is not None else None
        if by:  # a CRS set on it would not place it: its pixels are not on a map grid yet
            raise DataError(f"{what} is placed by {by}, not a geotransform: scene labels are placed by "
                            f"map coordinates, so warp it onto a map grid first "
                            f"(gdalwarp {path.name} {path.stem}_warped.tif)")
        raise DataError(f"{what} has no CRS: scene labels are placed by their coordinates, so every "
                        f"raster and vector file needs one ({set_crs(kind, path)})")
    try:
        crs = value if isinstance(value, CRS) else CRS.from_user_input(value)
    except CRSError as exc:
        raise DataError(f"{what} has an unknown CRS {str(value)[:80]!r}: {exc}") from None
    if not crs.to_wkt():
        raise DataError(f"{what} has an unknown CRS {str(value)[:80]!r}")
    return crs


def crs_name(crs) -> str:
    """``EPSG:4326``, else the CRS's own name (never a page of WKT)."""
    text = crs.to_string()
    if len(text) <= 40:
        return text
    name = crs.to_wkt().split('"')  # WKT opens with the CRS's name: PROJCS["WGS 84 / UTM zone 33N", ...
    return name[1] if len(name) > 2 and name[1] else text[:40]


#: plural of a projected CRS's linear unit, for messages
UNITS = {"metre": "metres", "meter": "metres", "foot": "feet", "US survey foot": "US survey feet"}


def check_coordinates(crs, geoms: np.ndarray, described: str, path: Path) -> None:
    """Refuse coordinates that cannot be in the declared CRS, before anything reprojects them
    (PROJ stops on them, or puts the polygons somewhere else): values beyond 180 / 90 in a
    geographic CRS are not degrees (a UTM file declared EPSG:4326, a GeoJSON in metres, which
    GDAL reads as EPSG:4326); a projected CRS whose values all lie within 180 / 90 holds degrees."""
    import shapely

    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    x, y = max(abs(x0), abs(x1)), max(abs(y0), abs(y1))
    name = crs_name(crs)
    if crs.is_geographic and (x > 180 + 1e-7 or y > 90 + 1e-7):
        axis, value = ("x", x) if x > 180 + 1e-7 else ("y", y)
        found, declared = f"metres ({axis} up to {value:,.0f})", f"degrees as {name} declares"
    elif crs.is_projected and x <= 180 and y <= 90:
        units = UNITS.get(crs.linear_units, crs.linear_units or "metres")
        found, declared = f"degrees (x {x0:.6g} to {x1:.6g}, y {y0:.6g} to {y1:.6g})", f"{units} as {name} declares"
    else:
        return
    raise DataError(f"{described}: coordinates look like {found}, not {declared}: the file declares a "
                    f"wrong CRS; assign the one its coordinates are in ({set_crs('vector', path)})")


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """The polygonal parts of each geometry (a Polygon, a MultiPolygon, or an empty geometry when
    it has none): what :func:`shapely.make_valid` returns may hold lines and points too."""
    import shapely

    out = np.empty(len(geoms), dtype=object)
    for i, geom in enumerate(geoms):
        parts = shapely.get_parts(shapely.get_parts(geom))  # collections, then multipolygons
        parts = [p for p in parts if shapely.get_type_id(p) == 3 and not p.is_empty]
        out[i] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return out


# ---------------------------------------------------------------------------------------------
# vector labels
# ---------------------------------------------------------------------------------------------


class PolygonLayer:
    """The polygons of one layer of a vector file, read and checked once (the one reader of vector
    labels: training, evaluation regions and ``co2s splits`` all use it).

    ``key`` names the setting a user changes to pick a layer or filter (``data.scenes.labels`` or a
    CLI flag such as ``--layer``), so each error names it. Every feature has a non-empty, valid
    polygonal geometry whose coordinates fit the layer's CRS (``crs``, None when it has none):
    GDAL's fill of an invalid polygon labels pixels outside it (a hole crossing its shell fills
    the hole's outer part), so invalid polygons are refused, or with ``repair`` remade valid
    (:func:`shapely.make_valid` keeping the shell minus its holes, polygonal parts only) and
    reported (``repaired``: their feature ids). ``fields`` are the attribute columns ``columns``
    (all when None), of which ``required`` must exist; ``force_2d`` drops Z coordinates."""

    def __init__(self, path: Path, layer: str | None, where: str | None, key: str, *,
                 columns: list[str] | None = None, required: tuple[str, ...] = (), force_2d: bool = False,
                 repair: bool = False) -> None:
        import pyogrio
        import shapely

        self.path, self.where = path, where
        if not path.exists():
            raise DataError(f"vector file not found: {path}")
        try:
            layers = [str(name) for name, _ in pyogrio.list_layers(path)]
        except Exception as exc:  # pyogrio's DataSourceError and friends
            raise DataError(f"cannot read vector file {path}: {exc}") from None
        if layer is None:
            if len(layers) != 1:
                raise DataError(f"{path} holds {len(layers)} layers ({shown_items(layers)}): set "
                                f"{key_for(key, 'layer')} to the one with the labels")
            layer = layers[0]
        elif layer not in layers:
            raise DataError(f"{path} has no layer {layer!r}; its layers: {shown_items(layers)}")
        self.layer = layer
        self.described = described = f"{path} (layer {layer})"
        try:
            info = pyogrio.read_info(path, layer=layer)
        except Exception as exc:
            raise DataError(f"cannot read vector file {described}: {exc}") from None
        self.field_names = [str(f) for f in info["fields"]]
        self.crs_text = info["crs"]
        self.crs = parse_crs(info["crs"], f"vector file {described}", "vector", path) if info["crs"] else None
        for name in required:
            if name not in self.field_names:
                raise DataError(f"{described} has no attribute {name!r} ({key_for(key, 'attribute')}); "
                                f"its attributes: {', '.join(self.field_names) if self.field_names else 'none'}")
        try:
            meta, fids, wkb, fields = pyogrio.raw.read(path, layer=layer, columns=columns, return_fids=True,
                                                       force_2d=force_2d, where=where)
        except Exception as exc:
            filtered = f" with {key_for(key, 'where')} {where!r}" if where else ""
            raise DataError(f"cannot read vector file {described}{filtered}: {exc}") from None
        if len(wkb) == 0:
            if where:
                raise DataError(f"{described}: no feature matches {key_for(key, 'where')} {where!r}")
            raise DataError(f"{described} has no features")
        self.columns = [str(f) for f in meta["fields"]]
        self.fields = list(fields)
        self.wkb = np.asarray(wkb, dtype=object)
        self.fids = np.asarray(fids if fids is not None else np.arange(len(wkb)))
        missing = [int(f) for f, g in zip(self.fids, wkb) if g is None]
        if missing:
            raise DataError(f"{described}: feature id(s) {shown_items(missing)} have no geometry")
        geoms = shapely.from_wkb(self.wkb)
        empty = self.fids[shapely.is_empty(geoms)].tolist()
        if empty:
            raise DataError(f"{described}: feature id(s) {shown_items(empty)} have an empty geometry")
        types = shapely.get_type_id(geoms)
        other = [f"{int(f)} ({GEOMETRY_NAMES.get(int(t), t)})" for f, t in zip(self.fids, types)
                 if t not in POLYGONAL]
        if other:
            raise DataError(f"{described}: feature id(s) {shown_items(other)} are not polygons; labels are "
                            "polygons (buffer lines and points into polygons first)")
        if self.crs is not None:
            check_coordinates(self.crs, geoms, described, path)
        self.geoms, repaired = self._valid(geoms, key, repair)
        self.repaired = self.fids[repaired].tolist()
        if self.repaired:
            warnings.warn(f"{described}: repaired {len(self.repaired)} invalid polygon(s) of {len(geoms)} "
                          f"with shapely.make_valid ({repair_option(key)}): feature id(s) "
                          f"{shown_items(self.repaired)}", stacklevel=2)

    def _valid(self, geoms: np.ndarray, key: str, repair: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(geoms, rows)``: the invalid ones refused (a DataError naming them and GEOS's reason)
        or repaired (``rows``: theirs)."""
        import shapely

        bad = np.flatnonzero(~shapely.is_valid(geoms))
        if bad.size == 0:
            return geoms, bad
        if not repair:
            reasons = [f"feature id {int(f)}: {r}" for f, r in
                       zip(self.fids[bad[:3]], shapely.is_valid_reason(geoms[bad[:3]]))]
            more = f"; ... ({bad.size} in all)" if bad.size > 3 else ""
            raise DataError(f"{self.described}: {bad.size} invalid polygon(s) of {len(geoms)}, which would "
                            f"label the wrong pixels: {'; '.join(reasons)}{more}; fix them in the file "
                            "(QGIS: Vector > Geometry Tools > Fix Geometries; ogr2ogr -makevalid) or set "
                            f"{repair_option(key)} to repair them on reading")
        fixed = polygonal(shapely.make_valid(geoms[bad], method="structure", keep_collapsed=False))
        gone = self.fids[bad[shapely.is_empty(fixed)]].tolist()
        if gone:
            raise DataError(f"{self.described}: feature id(s) {shown_items(gone)} have no area once repaired "
                            "(degenerate polygons): delete them from the file")
        geoms = geoms.copy()
        geoms[bad] = fixed
        self.wkb = self.wkb.copy()
        self.wkb[bad] = shapely.to_wkb(fixed)  # what `co2s splits` writes: the repaired polygons
        return geoms, bad

    def column(self, name: str) -> np.ndarray:
        return self.fields[self.columns.index(name)]


def key_for(key: str, option: str) -> str:
    """The user-facing name of a vector option: ``data.scenes.labels.layer`` or ``--layer``."""
    return f"--{option}" if key.startswith("--") else f"{key}.{option}"


def repair_option(key: str) -> str:
    """The setting that repairs invalid polygons: a config key (``co2s splits`` reads it from
    ``--config``)."""
    return "data.scenes.labels.repair: true (in --config)" if key.startswith("--") else f"{key}.repair: true"


class VectorLabels:
    """The polygons of one vector layer with their class indices, checked up front.

    ``values`` are class indices ``0..K-1`` or ``ignore_index`` (a polygon explicitly unlabelled);
    the attribute holds class names of ``classes`` or integer indices.
    """

    def __init__(self, path: Path, layer: str | None, attribute: str, classes: list[str],
                 ignore_index: int, where: str | None = None, key: str = "data.scenes.labels",
                 repair: bool = False) -> None:
        polygons = PolygonLayer(path, layer, where, key, columns=[attribute], required=(attribute,), force_2d=True,
                                repair=repair)
        self.path, self.attribute, self.ignore_index = path, attribute, ignore_index
        self.layer, self.where, self.described = polygons.layer, where, polygons.described
        self.crs = polygons.crs or parse_crs(None, f"vector file {polygons.described}", "vector", path)
        self.classes = classes
        self.fids, self.geoms = polygons.fids, polygons.geoms
        self.values = class_indices(polygons, attribute, classes, ignore_index)

    def in_pixels(self, crs, transform, what: str) -> np.ndarray:
        """The polygons in the pixel coordinates of a scene with ``crs`` and ``transform``,
        reprojected when the CRSs differ."""
        return polygons_in_pixels(self.geoms, self.fids, self.crs, self.path, crs, transform, what)

    def for_scene(self, pixels: np.ndarray, fill: int) -> VectorSceneLabels:
        return VectorSceneLabels(pixels, self.values, fill, self.ignore_index)

    def class_of(self, row: int) -> str:
        value = int(self.values[row])
        return self.classes[value] if value < len(self.classes) else "ignore"


def class_indices(polygons: PolygonLayer, attribute: str, classes: list[str], ignore_index: int) -> np.ndarray:
    """Each polygon's class index from its ``attribute``: a name of ``classes`` or an index
    ``0..K-1`` or ``ignore_index``; an empty or unknown value is a DataError naming the features."""
    values, where = polygons.column(attribute), polygons.described
    index = {name: i for i, name in enumerate(classes)}
    out = np.empty(len(values), np.int64)
    nulls, bad = [], []
    for i, (fid, value) in enumerate(zip(polygons.fids.tolist(), values.tolist())):
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            nulls.append(fid)
            continue
        if isinstance(value, str) and value in index:
            out[i] = index[value]
            continue
        number = None
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            number = int(value)
        elif isinstance(value, float) and value == int(value):
            number = int(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            number = int(value.strip())
        if number is not None and (0 <= number < len(classes) or number == ignore_index):
            out[i] = number
        else:
            bad.append((fid, value))
    if nulls:
        raise DataError(f"{where}: feature id(s) {shown_items(nulls)} have no class (attribute "
                        f"{attribute!r} is empty)")
    if bad:
        values_seen = sorted({repr(v) for _, v in bad})
        raise DataError(
            f"{where}: class value(s) {shown_items(values_seen)} of attribute {attribute!r} are "
            f"not in data.classes {classes} (nor a class index 0..{len(classes) - 1}): feature "
            f"id(s) {shown_items([f'{f} ({v!r})' for f, v in bad], 5)}"
        )
    return out


class VectorSceneLabels:
    """The polygons of one scene (pixel coordinates), rasterised onto any window."""

    def __init__(self, geoms: np.ndarray, values: np.ndarray, fill: int, ignore_index: int) -> None:
        self.geoms, self.values, self.fill, self.ignore_index = geoms, values, fill, ignore_index
        self._tree = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tree": None}  # rebuilt in each process

    @property
    def tree(self):
        if self._tree is None:
            import shapely

            self._tree = shapely.STRtree(self.geoms)
        return self._tree

    @property
    def complete(self) -> bool:
        return self.fill != self.ignore_index

    def _hits(self, window: Window) -> np.ndarray:
        import shapely

        hits = self.tree.query(shapely.box(window.x, window.y, window.x1, window.y1), predicate="intersects")
        return np.sort(hits)  # file order: later features are drawn over earlier ones

    def touches(self, window: Window) -> bool:
        """Whether the window may hold labelled pixels."""
        return self.complete or self._hits(window).size > 0

    def read(self, window: Window, out_shape: tuple[int, int]) -> np.ndarray:
        """Labels ``[h, w]`` int64 of the window (scene pixels) read into ``out_shape``: a pixel
        takes the class of the last polygon holding its centre."""
        hits = self._hits(window)
        if hits.size == 0:
            return np.full(out_shape, self.fill, np.int64)
        return burn(self.geoms[hits], self.values[hits], window, out_shape, self.fill)


def polygons_in_pixels(geoms: np.ndarray, fids: np.ndarray, source_crs, path: Path, crs, transform,
                       what: str) -> np.ndarray:
    """Polygons of ``path`` (in ``source_crs``) in the pixel coordinates of a scene with ``crs`` and
    ``transform``, reprojected when the CRSs differ; a DataError names the features that cannot be."""
    import shapely
    from rasterio.warp import transform as reproject_points

    inverse = ~transform
    same = crs == source_crs

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        if not same and len(x):
            try:
                x, y = (np.asarray(v, dtype=np.float64) for v in reproject_points(source_crs, crs, x, y))
            except Exception as exc:  # rasterio's CPLE_* errors from PROJ
                raise DataError(f"{path}: the polygons cannot be reprojected from {crs_name(source_crs)} "
                                f"to the CRS of {what} ({crs_name(crs)}): {exc}") from None
        return np.column_stack([inverse.a * x + inverse.b * y + inverse.c,
                                inverse.d * x + inverse.e * y + inverse.f])

    pixels = shapely.transform(geoms, to_pixels)
    bounds = shapely.bounds(pixels)
    broken = fids[~np.isfinite(bounds).all(1)].tolist()
    if broken:
        raise DataError(f"{path}: feature id(s) {shown_items(broken)} cannot be reprojected from "
                        f"{source_crs.to_string()} to the CRS of {what} ({crs.to_string()})")
    return pixels


def burn(geoms: np.ndarray, values: np.ndarray, window: Window, out_shape: tuple[int, int], fill: int) -> np.ndarray:
    """The one rasterisation rule of polygon labels: ``[h, w]`` int64, a pixel of the window read
    into ``out_shape`` takes the value of the last polygon holding its centre, else ``fill``."""
    from rasterio.features import rasterize

    dtype = "uint8" if max(fill, int(values.max())) < 256 else "int32"
    burnt = rasterize(zip(geoms, values.tolist()), out_shape=out_shape, fill=fill,
                      transform=window_transform(window, out_shape), all_touched=False, dtype=dtype)
    return burnt.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# raster masks
# ---------------------------------------------------------------------------------------------


class MaskLabels:
    """Raster masks of one scene: each on the scene's grid or warped onto it (nearest)."""

    def __init__(self, masks: list[Path], grid: dict, encoder: LabelEncoder, what: str) -> None:
        """``grid``: the scene's ``crs``, ``transform``, ``width``, ``height``; masks that do not
        reach the scene are left out (:func:`mask_extent` tells which do)."""
        self.masks, self.grid, self.encoder = masks, grid, encoder
        self.ignore_index = encoder.ignore_index
        self.extents = [mask_extent(m, grid, what) for m in masks]
        self._open: dict | None = None
        self._pid = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": None, "_pid": None}  # never pickle an open dataset

    def _readers(self) -> list:
        """The masks opened in this process (on first use; warped when not on the scene's grid)."""
        if self._open is None or self._pid != os.getpid():
            from rasterio.enums import Resampling
            from rasterio.vrt import WarpedVRT

            readers = []
            for path, (same, _) in zip(self.masks, self.extents):
                dataset = open_raster(path)
                if not same:
                    g = self.grid
                    dataset = WarpedVRT(dataset, crs=g["crs"], transform=g["transform"], width=g["width"],
                                        height=g["height"], resampling=Resampling.nearest, add_alpha=True)
                readers.append(dataset)
            self._open, self._pid = readers, os.getpid()
        return self._open

    def touches(self, window: Window) -> bool:
        return any(_overlap((window.x, window.y, window.x1, window.y1), box) for _, box in self.extents)

    def read(self, window: Window, out_shape: tuple[int, int]) -> np.ndarray:
        """Labels ``[h, w]`` int64 of the window read into ``out_shape`` (nearest); later masks
        win where they are labelled."""
        from rasterio.enums import Resampling
        from rasterio.errors import RasterioError

        out = np.full(out_shape, self.ignore_index, np.int64)
        rio = window.to_rasterio()
        for path, (_, box), reader in zip(self.masks, self.extents, self._readers()):
            if not _overlap((window.x, window.y, window.x1, window.y1), box):
                continue
            try:
                raw = reader.read(1, window=rio, out_shape=out_shape, resampling=Resampling.nearest,
                                  boundless=False)
                present = reader.read_masks(1, window=rio, out_shape=out_shape,
                                            resampling=Resampling.nearest) > 0
            except RasterioError as exc:
                raise DataError(f"{path}: cannot read a window of the mask: {exc}") from None
            labels = self.encoder.encode(raw, f"mask {path}", present)  # nodata: any value, no label
            known = labels != self.ignore_index
            out[known] = labels[known]
        return out


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def mask_extent(path: Path, grid: dict, what: str) -> tuple[bool, tuple[float, float, float, float]]:
    """``(same_grid, (x0, y0, x1, y1))``: whether the mask is on the scene's grid, and its extent
    in the scene's pixel coordinates."""
    from rasterio.warp import transform_bounds

    with open_raster(path) as src:
        if src.count != 1:
            raise DataError(f"mask {path} has {src.count} bands; a mask must have one band")
        size = (src.width, src.height) == (grid["width"], grid["height"])
        if src.crs is None and grid["crs"] is None:
            if not size:
                raise DataError(f"mask {path} ({src.width}x{src.height}) and {what} "
                                f"({grid['width']}x{grid['height']}) have no CRS and differ in size: "
                                "cannot place the mask on the scene")
            return True, (0.0, 0.0, float(grid["width"]), float(grid["height"]))
        mask_crs = parse_crs(src.crs, f"mask {path}", path=path)
        scene_crs = parse_crs(grid["crs"], what)
        if mask_crs == scene_crs and size and src.transform.almost_equals(grid["transform"]):
            return True, (0.0, 0.0, float(grid["width"]), float(grid["height"]))
        left, bottom, right, top = transform_bounds(mask_crs, scene_crs, *src.bounds, densify_pts=21)
    inv = ~grid["transform"]
    corners = ((left, bottom), (left, top), (right, bottom), (right, top))
    xs = [inv.a * x + inv.b * y + inv.c for x, y in corners]
    ys = [inv.d * x + inv.e * y + inv.f for x, y in corners]
    return False, (min(xs), min(ys), max(xs), max(ys))
