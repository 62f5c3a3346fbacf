"""Vector labels of scenes that would train the wrong thing stop (or are repaired) with one line:
coordinates that cannot be in the declared CRS, invalid polygons, polygons that label no pixel.

Fixtures are the files a user ships: GeoPackages and GeoJSON written by pyogrio, GeoTIFF scenes by
rasterio; the CLI is driven as a user runs it (``co2s train``, ``co2s splits``)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyogrio
import pytest
import shapely
import yaml
from rasterio.features import rasterize

from co2s.cli.main import main
from co2s.config.loader import validate
from co2s.data.raster import Window
from co2s.data.scenes import load_scenes
from co2s.errors import DataError
from tests.data.scene_data import RASTER_CRS, polygons_in_pixels, scene_data_config, to_crs, write_scene

SIZE = (120, 120)  # the scene; its nodata is the corner where row + col > 210
# pixel coordinates (vertices off the half-pixel grid, as in scene_data)
BOX = shapely.box(10.3, 60.3, 40.7, 100.7)
BOWTIE = shapely.Polygon([(10.3, 10.2), (50.7, 50.9), (50.7, 10.2), (10.3, 50.9)])  # crosses at (30.5, 30.55)
SHELL = [(55.3, 55.3), (90.7, 55.3), (90.7, 100.7), (55.3, 100.7)]
HOLE = [(70.3, 60.3), (110.7, 60.3), (110.7, 79.7), (70.3, 79.7)]  # 20 x 20 pixels of it outside the shell
CROSSING = shapely.Polygon(SHELL, [HOLE])


def write_layer(path, features, crs, driver="GPKG", in_pixels=True):
    """Features ``(geometry, class)`` as a one-layer vector file declaring ``crs``; geometries in
    scene pixels are written in the raster's CRS (metres), whatever ``crs`` declares."""
    geoms = [to_crs(g, RASTER_CRS) if in_pixels else g for g, _ in features]
    kinds = {int(shapely.get_type_id(g)) for g in geoms}
    pyogrio.raw.write(path, np.array([shapely.to_wkb(g) for g in geoms], dtype=object),
                      [np.array([c for _, c in features], dtype=object)], fields=["class"], crs=crs,
                      geometry_type="Polygon" if kinds == {3} else "Unknown", driver=driver)
    return path


def digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def load(root, **labels):
    cfg = scene_data_config(root)
    cfg["scenes"]["labels"].update(labels)
    return load_scenes(validate({"data": cfg, "train": {"iters": 1}}).data, 3, progress=False)


def train_cli(tmp_path, root, capsys, **labels) -> tuple[int, list[str]]:
    """``co2s train`` on the scene under ``root``: the exit code and the lines on stderr."""
    data = scene_data_config(root)
    data["scenes"]["labels"].update(labels)
    cfg = {"name": "checks", "out_dir": str(tmp_path / "run"), "data": data, "model": {"width": 8, "depth": 3},
           "train": {"method": "supervised", "crop_size": 32, "batch_size": 2, "iters": 1, "num_workers": 0},
           "engine": {"accelerator": "cpu"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    code = main(["train", str(path), "--no-progress"])
    return code, capsys.readouterr().err.splitlines()


@pytest.fixture
def root(tmp_path):
    write_scene(tmp_path / "data" / "scene.tif", SIZE)
    return tmp_path / "data"


# -- coordinates that cannot be in the declared CRS -------------------------------------------

def test_metres_in_a_file_declared_in_degrees_stop_training_with_one_line(tmp_path, root, capsys):
    labels = write_layer(root / "labels.gpkg", [(BOX, "c0")], crs="EPSG:4326")  # UTM metres, says degrees
    before = digest(root)
    code, err = train_cli(tmp_path, root, capsys)
    assert code == 2
    assert err == [f"error: {labels} (layer labels): coordinates look like metres (x up to 500,407), not "
                   "degrees as EPSG:4326 declares: the file declares a wrong CRS; assign the one its "
                   "coordinates are in (QGIS: Layer > Set CRS, then Export > Save Features As; GDAL: "
                   "ogr2ogr -a_srs EPSG:<code> fixed.gpkg labels.gpkg)"]
    assert digest(root) == before


def test_a_geojson_in_metres_without_crs_is_read_as_degrees_and_refused(root):
    # GDAL reads a GeoJSON without a "crs" member as EPSG:4326 (RFC 7946)
    with pytest.warns(UserWarning, match="crs"):  # pyogrio warns when it writes no CRS
        write_layer(root / "labels.geojson", [(BOX, "c0")], crs=None, driver="GeoJSON")
    with pytest.raises(DataError) as error:
        load(root, vector="labels.geojson")
    assert str(error.value) == (
        f"{root / 'labels.geojson'} (layer labels): coordinates look like metres (x up to 500,407), not "
        "degrees as EPSG:4326 declares: the file declares a wrong CRS; assign the one its coordinates are "
        "in (QGIS: Layer > Set CRS, then Export > Save Features As; GDAL: ogr2ogr -a_srs EPSG:<code> "
        "fixed.gpkg labels.geojson)")


def test_degrees_in_a_file_declared_in_metres_stop_co2s_splits(tmp_path, root, capsys):
    features = [(to_crs(g, "EPSG:4326"), c) for g, c in polygons_in_pixels()]
    labels = write_layer(root / "labels.gpkg", features, crs=RASTER_CRS, in_pixels=False)
    x0, y0, x1, y1 = shapely.total_bounds([g for g, _ in features])
    before = digest(root)
    capsys.readouterr()
    code = main(["splits", str(labels), "--ratio", "1/2", "--out", str(tmp_path / "splits")])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {labels} (layer labels): coordinates look like degrees (x {x0:.6g} to {x1:.6g}, y "
        f"{y0:.6g} to {y1:.6g}), not metres as EPSG:32633 declares: the file declares a wrong CRS; "
        "assign the one its coordinates are in (QGIS: Layer > Set CRS, then Export > Save Features As; "
        "GDAL: ogr2ogr -a_srs EPSG:<code> fixed.gpkg labels.gpkg)"]
    assert 14 < x0 < x1 < 16 and 45 < y0 < y1 < 46  # UTM 33N near 15 E, 45 N
    assert digest(root) == before and not (tmp_path / "splits").exists()


def test_a_vector_file_without_crs_says_how_to_assign_one(root):
    with pytest.warns(UserWarning, match="crs"):  # pyogrio warns when it writes no CRS
        write_layer(root / "labels.gpkg", [(BOX, "c0")], crs=None)
    with pytest.raises(DataError) as error:
        load(root)
    assert str(error.value) == (
        f"vector file {root / 'labels.gpkg'} (layer labels) has no CRS: scene labels are placed by their "
        "coordinates, so every raster and vector file needs one (QGIS: Layer > Set CRS, then Export > "
        "Save Features As; GDAL: ogr2ogr -a_srs EPSG:<code> fixed.gpkg labels.gpkg)")


# -- invalid polygons --------------------------------------------------------------------------

def test_invalid_polygons_are_refused_naming_the_features_and_the_reason(tmp_path, root, capsys):
    labels = write_layer(root / "labels.gpkg", [(BOX, "c0"), (BOWTIE, "c1"), (CROSSING, "c2")], crs=RASTER_CRS)
    before = digest(root)
    code, err = train_cli(tmp_path, root, capsys)
    assert code == 2 and len(err) == 1 and "Traceback" not in "\n".join(err)
    # GEOS names one crossing of the hole with its shell: x 90.7 px, y 60.3 or 79.7 px (metres here)
    crossing = next(p for p in ("[500907 4999397]", "[500907 4999203]") if p in err[0])
    assert err[0] == (
        f"error: {labels} (layer labels): 2 invalid polygon(s) of 3, which would label the wrong pixels: "
        f"feature id 2: Self-intersection[500305 4999694.5]; feature id 3: Self-intersection{crossing}; fix "
        "them in the file (QGIS: Vector > Geometry Tools > Fix Geometries; ogr2ogr -makevalid) or set "
        "data.scenes.labels.repair: true to repair them on reading")
    assert digest(root) == before


def test_repaired_polygons_label_only_pixels_inside_the_drawn_polygon(root):
    labels = write_layer(root / "labels.gpkg", [(BOX, "c0"), (BOWTIE, "c1"), (CROSSING, "c2")], crs=RASTER_CRS)
    before = digest(root)
    with pytest.warns(UserWarning) as caught:
        scenes = load(root, repair=True)
    assert [str(w.message) for w in caught] == [
        f"{labels} (layer labels): repaired 2 invalid polygon(s) of 3 with shapely.make_valid "
        "(data.scenes.labels.repair: true): feature id(s) 2, 3"]
    assert digest(root) == before  # repaired on reading, never in the file
    scene = scenes.scenes[0]
    whole = Window(0, 0, SIZE[1], SIZE[0])
    got = scene.labels_of(whole, SIZE, scene.valid(whole), 255)

    def pixels(geom) -> np.ndarray:  # pixel centres inside ``geom`` (pixel coordinates)
        return rasterize([(geom, 1)], out_shape=SIZE, fill=0, dtype="uint8").astype(bool)

    shell, hole = pixels(shapely.Polygon(SHELL)), pixels(shapely.Polygon(HOLE))
    assert (hole & ~shell).sum() == 400  # what GDAL's fill of the invalid polygon labelled c2
    assert np.array_equal(got == 2, shell & ~hole)  # the shell minus its hole, nothing outside
    bowtie = got == 1
    rows, cols = np.nonzero(bowtie)
    assert 10 <= rows.min() and rows.max() <= 50 and 10 <= cols.min() and cols.max() <= 50
    triangles = shapely.MultiPolygon([shapely.Polygon([(10.3, 10.2), (30.5, 30.55), (10.3, 50.9)]),
                                      shapely.Polygon([(50.7, 10.2), (30.5, 30.55), (50.7, 50.9)])])
    assert np.array_equal(bowtie, pixels(triangles))  # the bowtie split at its crossing
    assert np.array_equal(got == 0, pixels(BOX))


def test_co2s_splits_with_repair_writes_the_repaired_polygons(tmp_path, root, capsys):
    features = [(shapely.box(5.3 + 12 * i, 5.3, 14.7 + 12 * i, 14.7), "c0") for i in range(4)]
    labels = write_layer(root / "labels.gpkg", [*features, (BOWTIE, "c1"), (CROSSING, "c2")], crs=RASTER_CRS)
    before = digest(root)
    capsys.readouterr()
    assert main(["splits", str(labels), "--ratio", "1/2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {labels} (layer labels): 2 invalid polygon(s) of 6")
    assert err[0].endswith("or set data.scenes.labels.repair: true (in --config) to repair them on reading")

    config = tmp_path / "config.yaml"
    data = scene_data_config(root)
    data["scenes"]["labels"]["repair"] = True
    config.write_text(yaml.safe_dump({"data": data, "train": {"iters": 1}}))
    assert main(["splits", "--config", str(config), "--ratio", "1/2", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {labels} (layer labels): repaired 2 invalid polygon(s) of 6 with "
                   "shapely.make_valid (data.scenes.labels.repair: true (in --config)): feature id(s) 5, 6"]
    assert json.loads((tmp_path / "b" / "split.json").read_text())["repaired"] == [5, 6]
    written = [shapely.from_wkb(pyogrio.raw.read(tmp_path / "b" / name)[2])
               for name in ("labelled.gpkg", "held_out.gpkg")]
    assert sum(len(g) for g in written) == 6 and all(shapely.is_valid(g).all() for g in written)
    assert digest(root) == before


# -- polygons that label no pixel ---------------------------------------------------------------

NODATA_FEATURES = [
    (BOX, "c0"),
    (shapely.box(112.3, 112.3, 118.7, 118.7), "c1"),  # inside the scene, all on its nodata corner
    (shapely.box(50.3, 10.3, 80.7, 40.7), "c2"),
    (shapely.box(60.2, 20.2, 60.4, 20.4), "c2"),  # smaller than a pixel: holds no pixel centre
]


def test_polygons_that_label_no_pixel_are_named(root):
    labels = write_layer(root / "labels.gpkg", NODATA_FEATURES, crs=RASTER_CRS)
    with pytest.warns(UserWarning) as caught:
        scenes = load(root)
    assert [str(w.message) for w in caught] == [
        f"{labels} (layer labels): 2 polygon(s) label no pixel of data.scenes.rasters: feature id(s) 2 (c1) "
        "lie on nodata pixels only; feature id(s) 4 (c2) hold no pixel centre of the rasters (smaller than "
        "a pixel?)"]
    assert scenes.counts.tolist() == [31 * 41, 0, 31 * 31]


def test_a_class_left_without_pixels_stops_training_in_the_words_of_the_polygons(tmp_path, root, capsys):
    labels = write_layer(root / "labels.gpkg", NODATA_FEATURES, crs=RASTER_CRS)
    before = digest(root)
    code, err = train_cli(tmp_path, root, capsys)
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-2:] == [
        f"warning: {labels} (layer labels): 2 polygon(s) label no pixel of data.scenes.rasters: feature "
        "id(s) 2 (c1) lie on nodata pixels only; feature id(s) 4 (c2) hold no pixel centre of the rasters "
        "(smaller than a pixel?)",
        f"error: label check failed: class(es) c1 have no pixel in the polygons of {labels} on 1 raster(s): "
        "the model would never learn them. Check data.classes and the attribute 'class' of the polygons (a "
        "polygon on nodata labels nothing: a warning names such polygons) (set data.label_check: warn to "
        "train anyway)"]
    assert digest(root) == before
