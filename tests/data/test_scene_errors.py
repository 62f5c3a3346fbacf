"""Bad scene inputs stop before training with one DataError naming the file (and feature ids)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely

from co2s.config.loader import validate
from co2s.data.scene_labels import parse_crs
from co2s.data.scenes import load_scenes
from co2s.errors import ConfigError, DataError
from tests.data.scene_data import (
    CLASSES,
    OTHER_CRS,
    RASTER_CRS,
    polygons_in_pixels,
    scene_data_config,
    write_scene,
    write_vector,
)


def _load(root, **data):
    cfg = scene_data_config(root)
    for key, value in data.items():
        cfg["scenes"][key] = value
    return load_scenes(validate({"data": cfg, "train": {"iters": 1}}).data, 3, progress=False)


@pytest.fixture
def scene(tmp_path):
    write_scene(tmp_path / "scene.tif", (120, 120))
    return tmp_path


def test_missing_class_attribute_lists_the_attributes(scene):
    write_vector(scene / "labels.gpkg", field="landcover")
    with pytest.raises(DataError, match=r"labels\.gpkg \(layer labels\) has no attribute 'class'.*"
                                        r"its attributes: landcover"):
        _load(scene)


def test_class_values_not_in_classes_name_the_features(scene):
    features = [(shapely.box(10.3, 10.3, 20.7, 20.7), "c1"), (shapely.box(30.3, 30.3, 40.7, 40.7), "forst"),
                (shapely.box(50.3, 50.3, 60.7, 60.7), "7")]
    write_vector(scene / "labels.gpkg", features=features)
    with pytest.raises(DataError, match=r"labels\.gpkg.*'7', 'forst'.*not in data\.classes.*"
                                        r"feature id\(s\) 2 \('forst'\), 3 \('7'\)"):
        _load(scene)


def test_integer_class_indices_and_ignore_are_accepted(scene):
    features = [(shapely.box(10.3, 10.3, 20.7, 20.7), "2"), (shapely.box(30.3, 30.3, 40.7, 40.7), "c0"),
                (shapely.box(50.3, 50.3, 60.7, 60.7), "255")]
    write_vector(scene / "labels.gpkg", features=features)
    counts = _load(scene).counts
    assert counts[2] == 121 and counts[0] == 121 and counts[1] == 0  # the 255 polygon is ignore


def test_geometries_outside_every_raster_are_named(scene):
    features = [*polygons_in_pixels()[:1], (shapely.box(5000.3, 5000.3, 5010.7, 5010.7), "c1")]
    write_vector(scene / "labels.gpkg", features=features)
    with pytest.raises(DataError, match=r"labels\.gpkg: feature id\(s\) 2 lie outside every raster \(scene\.tif\)"):
        _load(scene)


def test_missing_crs_of_the_raster_or_the_vector(tmp_path):
    write_scene(tmp_path / "scene.tif", (120, 120), crs=None)
    write_vector(tmp_path / "labels.gpkg")
    with pytest.raises(DataError, match=r"raster .*scene\.tif has no CRS"):
        _load(tmp_path)
    write_scene(tmp_path / "scene.tif", (120, 120))
    with pytest.warns(UserWarning, match="crs"):
        write_vector(tmp_path / "nocrs.gpkg", crs=None)
    with pytest.raises(DataError, match=r"vector file .*nocrs\.gpkg \(layer nocrs\) has no CRS"):
        _load(tmp_path, labels={"vector": "nocrs.gpkg", "attribute": "class"})


def test_a_raster_placed_by_ground_control_points_says_to_warp_it(tmp_path):
    """A scan placed in QGIS's Georeferencer without warping, or a Sentinel-1 GRD, carries GCPs:
    setting a CRS (the advice for a raster without one) would not place its pixels, warping does."""
    from rasterio.control import GroundControlPoint

    write_scene(tmp_path / "plain.tif", (120, 120), crs=None)
    with rasterio.open(tmp_path / "plain.tif") as src:
        image = src.read()
    gcps = [GroundControlPoint(r, c, 500000 + c, 4000000 - r) for r, c in [(0, 0), (0, 120), (120, 0), (120, 120)]]
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", width=120, height=120, count=3, dtype="uint8",
                       gcps=gcps, crs="EPSG:32633") as dst:
        dst.write(image)
    (tmp_path / "plain.tif").unlink()
    write_vector(tmp_path / "labels.gpkg")
    with pytest.raises(DataError, match=r"raster .*scene\.tif is placed by ground control points, not a "
                                        r"geotransform: .* \(gdalwarp scene\.tif scene_warped\.tif\)"):
        _load(tmp_path)


def test_unknown_crs_is_a_data_error():
    with pytest.raises(DataError, match=r"labels\.gpkg has an unknown CRS 'EPSG:999999'"):
        parse_crs("EPSG:999999", "labels.gpkg")
    assert parse_crs(OTHER_CRS, "x") == rasterio.crs.CRS.from_epsg(4326)


def test_empty_and_null_geometries_are_named(scene):
    features = [*polygons_in_pixels()[:2], (shapely.Polygon(), "c1")]
    write_vector(scene / "labels.gpkg", features=features, crs=RASTER_CRS)
    with pytest.raises(DataError, match=r"feature id\(s\) 3 have an empty geometry"):
        _load(scene)
    features = [*polygons_in_pixels()[:1], (None, "c1")]
    write_vector(scene / "null.gpkg", features=features, crs=RASTER_CRS)
    with pytest.raises(DataError, match=r"null\.gpkg \(layer null\): feature id\(s\) 2 have no geometry"):
        _load(scene, labels={"vector": "null.gpkg", "attribute": "class"})


def test_points_and_lines_are_not_labels(scene):
    features = [*polygons_in_pixels()[:1], (shapely.LineString([(1.5, 1.5), (30.5, 40.5)]), "c1")]
    write_vector(scene / "labels.gpkg", features=features, crs=RASTER_CRS)
    with pytest.raises(DataError, match=r"feature id\(s\) 2 \(LineString\) are not polygons"):
        _load(scene)


def test_layers_must_be_chosen_and_exist(scene):
    write_vector(scene / "labels.gpkg", layer="a", features=polygons_in_pixels()[:1])
    write_vector(scene / "labels.gpkg", layer="b", append=True, features=polygons_in_pixels()[:1])
    with pytest.raises(DataError, match=r"labels\.gpkg holds 2 layers \(a, b\): set data\.scenes\.labels\.layer"):
        _load(scene)
    with pytest.raises(DataError, match=r"labels\.gpkg has no layer 'c'; its layers: a, b"):
        _load(scene, labels={"vector": "labels.gpkg", "layer": "c", "attribute": "class"})
    assert _load(scene, labels={"vector": "labels.gpkg", "layer": "b", "attribute": "class"}).labelled_pixels > 0


def test_rasters_that_cannot_be_read_window_wise(tmp_path, monkeypatch):
    write_vector(tmp_path / "labels.gpkg", features=polygons_in_pixels()[:1])
    data = write_scene(tmp_path / "full.tif", (120, 120)).read_bytes()
    (tmp_path / "full.tif").unlink()
    (tmp_path / "scene_cut.tif").write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(DataError, match=r"scene_cut\.tif: cannot be read window-wise"):
        _load(tmp_path)
    (tmp_path / "scene_cut.tif").unlink()
    write_scene(tmp_path / "scene_strip.tif", (120, 120), tiled=False)
    with rasterio.open(tmp_path / "scene_strip.tif") as src:
        profile, pixels = src.profile, src.read()
    profile.update(blockysize=120, compress="deflate")  # one compressed strip: the raster is one block
    with rasterio.open(tmp_path / "scene_strip.tif", "w", **profile) as dst:
        dst.write(pixels)
    monkeypatch.setattr("co2s.data.scene_set.ONE_BLOCK_LIMIT", 100 * 100)
    with pytest.raises(DataError, match=r"scene_strip\.tif: cannot be read window-wise: it is stored as one "
                                        r"120x120 block.*gdal_translate -of COG"):
        _load(tmp_path)


def test_globs_and_files_that_match_nothing(scene):
    write_vector(scene / "labels.gpkg")
    with pytest.raises(DataError, match=r"data\.scenes\.rasters: 'tiles/\*\.tif' matches no file"):
        _load(scene, rasters=["tiles/*.tif"])
    with pytest.raises(DataError, match=r"data\.scenes\.rasters: .*other\.tif not found"):
        _load(scene, rasters="other.tif")
    with pytest.raises(DataError, match=r"vector file not found: .*none\.gpkg"):
        _load(scene, labels={"vector": "none.gpkg", "attribute": "class"})


def test_band_count_must_fit_the_model(scene):
    write_vector(scene / "labels.gpkg")
    cfg = scene_data_config(scene)
    config = validate({"data": cfg, "train": {"iters": 1}})
    with pytest.raises(DataError, match=r"scene\.tif: has 3 band\(s\) but the config expects 4"):
        load_scenes(config.data, 4, progress=False)
    cfg["bands"] = [3, 2, 5]
    with pytest.raises(DataError, match=r"scene\.tif: has 3 band\(s\), config selects band\(s\) \[5\]"):
        load_scenes(validate({"data": cfg, "train": {"iters": 1}}).data, 3, progress=False)


def test_a_mask_outside_every_raster(scene):
    from affine import Affine

    with rasterio.open(scene / "mask.tif", "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8",
                       crs=RASTER_CRS, transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(np.zeros((1, 10, 10), np.uint8))
    with pytest.raises(DataError, match=r"mask\(s\) .*mask\.tif lie outside every raster"):
        _load(scene, labels={"raster": "mask.tif"})


@pytest.mark.parametrize("change,message", [
    ({"splits": {"labelled": "train.txt"}, "scenes": {"rasters": "a.tif", "labels": {"raster": "m.tif"}}},
     "data.scenes and data.splits.labelled are both set"),
    ({"scenes": {"rasters": "a.tif", "labels": {"vector": "l.gpkg"}}}, "vector labels need attribute"),
    ({"scenes": {"rasters": "a.tif", "labels": {"vector": "l.gpkg", "attribute": "k", "complete": True}}},
     "complete: true needs background"),
    ({"scenes": {"rasters": "a.tif", "labels": {"vector": "l.gpkg", "attribute": "k", "complete": True,
                                                "background": "sea"}}}, "background 'sea' is not in classes"),
    ({"scenes": {"rasters": "a.tif", "labels": {"raster": "m.tif", "attribute": "k"}}}, "for vector labels only"),
    ({"scenes": {"rasters": "a.tif", "labels": {"raster": "m.tif", "vector": "l.gpkg"}}}, "exactly one of"),
    ({"scenes": {"rasters": [], "labels": {"raster": "m.tif"}}}, "rasters"),
])
def test_scene_config_checks(tmp_path, change, message):
    data = {"root": str(tmp_path), "classes": CLASSES, **change}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate({"data": data, "train": {"iters": 1}})


def test_semi_supervised_methods_take_the_scenes_unlabelled_pool(tmp_path):
    data = {"root": str(tmp_path), "classes": CLASSES,
            "scenes": {"rasters": "*.tif", "labels": {"raster": "m.tif"}}}
    tiny = {"name": "students", "students": [{"name": "a", "backbone": {"kind": "dinov3", "arch": "tiny"}}]}
    config = validate({"data": data, "model": tiny, "train": {"iters": 1, "method": "unimatch"}})
    assert config.data.scenes.exclude_labelled and config.data.scenes.labels.raster == ["m.tif"]
    with pytest.raises(ConfigError, match=r"needs data\.splits\.unlabelled \(or data\.scenes\)"):
        validate({"data": {"root": ".", "classes": CLASSES}, "model": tiny,
                  "train": {"iters": 1, "method": "unimatch"}})
