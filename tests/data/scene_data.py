"""Tiny scenes for the scene tests: a georeferenced raster whose colours follow labelled polygons,
the polygons as a GeoPackage (in the raster's CRS or another one) and a reference rasterisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.warp import transform_geom

RASTER_CRS = "EPSG:32633"  # UTM 33N, metres
OTHER_CRS = "EPSG:4326"  # the vector in degrees: reprojected on read
ORIGIN = (500_000.0, 5_000_000.0)
PIXEL = 10.0
CLASSES = ["c0", "c1", "c2"]
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
BACKGROUND = np.array([120, 120, 120])


def scene_transform() -> Affine:
    return Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])


def polygons_in_pixels() -> list[tuple[shapely.Geometry, str]]:
    """Labelled polygons in scene pixel coordinates (vertices off the half-pixel grid, so no pixel
    centre lies on an edge), classes by name; disjoint, one small."""
    return [
        (shapely.box(20.3, 30.3, 70.7, 90.7), "c0"),
        (shapely.Polygon([(120.3, 20.3), (180.7, 40.3), (150.3, 100.7)]), "c1"),
        (shapely.box(30.3, 140.3, 110.7, 170.7), "c2"),
        (shapely.box(160.3, 150.3, 166.7, 155.7), "c0"),  # a small one: 6 x 5 pixels
        (shapely.MultiPolygon([shapely.box(90.3, 110.3, 100.7, 120.7),
                               shapely.box(180.3, 180.3, 190.7, 195.7)]), "c2"),
    ]


def to_crs(geom: shapely.Geometry, crs: str) -> shapely.Geometry:
    """Pixel coordinates -> ``crs`` (through the raster's CRS), by GDAL's transform_geom."""
    world = shapely.affinity.affine_transform(geom, scene_transform().to_shapely())
    if crs == RASTER_CRS:
        return world
    return shapely.geometry.shape(transform_geom(RASTER_CRS, crs, shapely.geometry.mapping(world)))


def reference_labels(size: tuple[int, int], ignore: int = 255, fill: int | None = None) -> np.ndarray:
    """The whole scene rasterised at once in the raster's CRS (the reference of the tests)."""
    shapes = [(to_crs(g, RASTER_CRS), CLASSES.index(c)) for g, c in polygons_in_pixels()]
    return rasterize(shapes, out_shape=size, transform=scene_transform(),
                     fill=ignore if fill is None else fill, dtype="uint8").astype(np.int64)


def nodata_area(size: tuple[int, int]) -> np.ndarray:
    """Invalid pixels of the scene: a band at the bottom-right corner (partly under a polygon)."""
    rows, cols = np.mgrid[: size[0], : size[1]]
    return (rows + cols) > (size[0] + size[1] - 30)


def write_scene(path: Path, size: tuple[int, int] = (200, 210), crs: str | None = RASTER_CRS,
                nodata: bool = True, seed: int = 0, tiled: bool = True) -> Path:
    """A 3-band uint8 GeoTIFF (64 x 64 tiles) whose colours follow the polygons; nodata 0."""
    rng = np.random.default_rng(seed)
    labels = reference_labels(size, fill=3)
    palette = np.vstack([COLOURS, BACKGROUND])
    image = palette[labels] + rng.normal(0, 12, (*size, 3))
    image = np.clip(image, 1, 255).astype(np.uint8).transpose(2, 0, 1)
    if nodata:
        image[:, nodata_area(size)] = 0
    profile = dict(driver="GTiff", width=size[1], height=size[0], count=3, dtype="uint8",
                   transform=scene_transform(), nodata=0 if nodata else None)
    if crs is not None:
        profile["crs"] = crs
    if tiled:
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def write_vector(path: Path, crs: str | None = OTHER_CRS, features=None, field: str = "class",
                 layer: str | None = None, driver: str = "GPKG", append: bool = False) -> Path:
    """The polygons as a vector file in ``crs`` with the class name in ``field``."""
    features = polygons_in_pixels() if features is None else features
    geoms = [None if g is None else to_crs(g, crs or RASTER_CRS) for g, _ in features]
    wkb = np.array([None if g is None else shapely.to_wkb(g) for g in geoms], dtype=object)
    values = np.array([v for _, v in features], dtype=object)
    kinds = {int(shapely.get_type_id(g)) for g in geoms if g is not None}
    geometry_type = {3: "Polygon", 6: "MultiPolygon"}.get(kinds.pop(), "Unknown") if len(kinds) == 1 else "Unknown"
    pyogrio.raw.write(path, wkb, [values], fields=[field], crs=crs, geometry_type=geometry_type,
                      driver=driver, layer=layer, append=append, promote_to_multi=False)
    return path


def scene_data_config(root: Path, vector: str = "labels.gpkg", classes=CLASSES, **scenes) -> dict:
    """``data`` section of a config for the tiny scene."""
    return {
        "root": str(root),
        "classes": list(classes),
        "palette": [c.tolist() for c in COLOURS[: len(classes)]],
        "scenes": {"rasters": ["scene*.tif"],
                   "labels": {"vector": vector, "attribute": "class"}, **scenes},
    }
