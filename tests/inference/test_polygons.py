"""Polygons of predictions (``co2s predict --polygons``): pieces joined across panel and strip
seams into the features whole-raster polygonisation gives, a valid coverage (no gaps, no overlaps)
before and after simplification and sieving, and the fields, CRS and formats a GIS reads."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
from rasterio.transform import Affine

from co2s.cli.main import main
from co2s.data.raster import Window
from co2s.errors import Co2sError
from co2s.inference import streaming
from co2s.inference import polygons
from co2s.inference.polygons import RegionPolygons
from co2s.inference.predict import predict_files
from co2s.inference.scene import NODATA, PredictOptions
from tests.inference.scenes import CRS, TRANSFORM, synthetic_scene, write_raster

NAMES = ["water", "field", "forest", "town"]


def blocky_map(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blocks of 4 classes with speckle (single pixels, diagonal contacts) and a nodata corner."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, (height // 20 + 1, width // 20 + 1)).astype(np.uint8)
    classes = np.kron(coarse, np.ones((20, 20), np.uint8))[:height, :width]
    speckle = rng.random((height, width)) < 0.02
    classes[speckle] = rng.integers(0, 4, int(speckle.sum()))
    classes[:30, :45] = NODATA
    return classes


def in_pieces(classes: np.ndarray, confidence: np.ndarray, panel: int, strip: int) -> RegionPolygons:
    """The pieces in the scene writer's order: panels left to right, each in strips top to bottom."""
    height, width = classes.shape
    regions = RegionPolygons(height, width, NODATA, neighbours=True)
    for x in range(0, width, panel):
        for y in range(0, height, strip):
            w = Window(x, y, min(panel, width - x), min(strip, height - y))
            regions.add(w, classes[w.slices].copy(), confidence[w.slices])
    return regions


def whole_raster_regions(classes: np.ndarray, transform) -> list[tuple[object, int]]:
    return [(shapely.geometry.shape(g), int(v)) for g, v in
            rasterio.features.shapes(classes, mask=classes != NODATA, connectivity=4, transform=transform)]


def assert_coverage(geoms: np.ndarray, valid_area: float) -> None:
    """Neighbours neither overlap nor leave gaps: GEOS's coverage check, the areas adding up to
    their union's, and the union covering every valid pixel."""
    assert shapely.coverage_is_valid(geoms)
    union = shapely.union_all(geoms).area
    assert shapely.area(geoms).sum() == pytest.approx(union, rel=1e-9)
    assert union == pytest.approx(valid_area, rel=1e-9)


TRANSFORM_SMALL = Affine(0.5, 0, 1000, 0, -0.5, 5000)


@pytest.mark.parametrize("panel,strip,batch", [(900, 700, None), (256, 128, None), (64, 37, 1000)])
def test_pieces_give_the_regions_of_the_whole_raster(panel, strip, batch, monkeypatch):
    """However the raster is cut, every region comes out as one feature: the same count and, per
    class, the same union as polygonising the whole raster at once; pixels and confidences add up
    (``batch``: vertices per batch of the last steps, small enough to make many batches)."""
    if batch:
        monkeypatch.setattr(polygons, "_BATCH", batch)
    classes = blocky_map(300, 400)
    confidence = np.random.default_rng(1).random(classes.shape).astype(np.float32)
    features = in_pieces(classes, confidence, panel, strip).features(TRANSFORM_SMALL, NAMES)
    whole = whole_raster_regions(classes, TRANSFORM_SMALL)
    assert len(features) == len(whole)
    for c in range(4):
        expected = shapely.union_all([g for g, v in whole if v == c])
        got = shapely.union_all(features.geometries[features.class_id == c])
        assert got.symmetric_difference(expected).area == 0
        assert (features.class_id == c).sum() == sum(v == c for _, v in whole)
    valid = classes != NODATA
    assert features.pixels.sum() == valid.sum()
    assert np.allclose(features.area, features.pixels * 0.25)
    assert np.allclose(features.area, shapely.area(features.geometries))  # unsimplified: exactly its pixels
    assert list(features.class_name[:3]) == [NAMES[c] for c in features.class_id[:3]]
    # confidence: each feature's own pixels, found by burning the features back into a raster
    burnt = rasterio.features.rasterize(zip(features.geometries, range(1, len(features) + 1)), classes.shape,
                                        transform=TRANSFORM_SMALL, dtype="int32")
    sums = np.bincount(burnt.ravel(), confidence.ravel().astype(np.float64), len(features) + 1)[1:]
    counts = np.bincount(burnt.ravel(), minlength=len(features) + 1)[1:]
    np.testing.assert_array_equal(counts, features.pixels)
    np.testing.assert_allclose(features.confidence, sums / counts, rtol=1e-12)
    assert_coverage(features.geometries, valid.sum() * 0.25)


def test_a_region_across_many_seams_is_one_feature():
    """One class band snaking across every panel and strip seam is a single polygon."""
    classes = np.zeros((200, 300), np.uint8)
    classes[::40, :] = 1
    classes[:, ::50] = 1
    features = in_pieces(classes, np.ones(classes.shape, np.float32), 64, 32).features(Affine.identity(), NAMES)
    grid = features.geometries[features.class_id == 1]
    assert len(grid) == 1 and grid[0].geom_type == "Polygon"
    assert features.pixels[features.class_id == 1][0] == (classes == 1).sum()


def test_simplification_and_sieving_keep_a_coverage():
    classes = blocky_map(300, 400, seed=3)
    def regions():
        return in_pieces(classes, np.full(classes.shape, 0.5, np.float32), 128, 64)

    plain = regions().features(TRANSFORM_SMALL, NAMES)
    simplified = regions().features(TRANSFORM_SMALL, NAMES, simplify=1.0)
    valid_area = (classes != NODATA).sum() * 0.25
    assert simplified.vertices < 0.9 * plain.vertices
    assert_coverage(simplified.geometries, valid_area)
    np.testing.assert_array_equal(simplified.pixels, plain.pixels)  # area/pixels: of the pixels, not the shape

    sieved = regions().features(TRANSFORM_SMALL, NAMES, min_area=10.0)  # 40 pixels
    assert len(sieved) < len(plain) and sieved.area.min() >= 10.0
    assert sieved.pixels.sum() == (classes != NODATA).sum()  # small regions joined, none dropped
    assert_coverage(sieved.geometries, valid_area)
    # each kept region keeps its class; the big blocks survive with at least their own pixels
    big = plain.pixels >= 40
    assert sorted(sieved.class_id.tolist()) == sorted(plain.class_id[big].tolist())
    assert_coverage(regions().features(TRANSFORM_SMALL, NAMES, min_area=10.0, simplify=2.0).geometries, valid_area)


def test_a_small_island_in_nodata_is_dropped_by_min_area():
    classes = np.full((50, 50), NODATA, np.uint8)
    classes[5:8, 5:8] = 2  # 9 pixels alone
    classes[20:45, 20:45] = 1
    features = in_pieces(classes, np.ones(classes.shape, np.float32), 50, 50).features(
        Affine.identity(), NAMES, min_area=20)
    assert features.class_id.tolist() == [1]


def read_features(path):
    info = pyogrio.read_info(path)
    _, _, wkb, fields = pyogrio.raw.read(path)
    table = dict(zip(info["fields"].tolist(), fields))
    return info, shapely.from_wkb(wkb), table


def test_predict_writes_polygons_of_its_class_raster(trained, tmp_path, monkeypatch):
    """co2s predict --polygons on a scene cut into 4 panels and 3 strips: the GeoPackage holds the
    regions of the class raster it wrote (whole-raster polygonisation), in the raster's CRS, with
    every field; regions crossing seams are single features; the coverage has no gap or overlap."""
    monkeypatch.setattr(streaming, "PANEL_WIDTH", 256)
    ckpt, config, _ = trained
    image, _ = synthetic_scene(600, 900, seed=4, cell=70)
    image[:, :40, :60] = 0
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(scene), "--out", str(out), "--polygons",
                 "--confidence", "--no-progress"]) == 0
    polygons = out / "scene_polygons.gpkg"
    assert sorted(p.name for p in out.iterdir()) == ["scene_classes.tif", "scene_confidence.tif",
                                                     "scene_polygons.gpkg"]
    info, geoms, table = read_features(polygons)
    assert info["crs"] == CRS and info["geometry_type"] == "Polygon"
    assert list(table) == ["class_id", "class", "area", "confidence", "pixels"]
    with rasterio.open(out / "scene_classes.tif") as src:
        classes, transform = src.read(1), src.transform
    with rasterio.open(out / "scene_confidence.tif") as src:
        confidence = src.read(1)
    whole = whole_raster_regions(classes, transform)
    assert len(geoms) == len(whole)
    for c in range(config.data.num_classes):
        expected = shapely.union_all([g for g, v in whole if v == c])
        assert shapely.union_all(geoms[table["class_id"] == c]).symmetric_difference(expected).area == 0
    # regions crossing a panel seam (x = 256, 512, 768 px) and a strip seam (y = 256, 512 px) are one feature
    seams_x = [shapely.LineString([(TRANSFORM @ (x, 0)), (TRANSFORM @ (x, 600))]) for x in (256, 512, 768)]
    seams_y = [shapely.LineString([(TRANSFORM @ (0, y)), (TRANSFORM @ (900, y))]) for y in (256, 512)]
    crossing = [g for g in geoms if any(g.crosses(s) for s in seams_x) and any(g.crosses(s) for s in seams_y)]
    assert crossing and all(g.geom_type == "Polygon" for g in crossing)
    assert_coverage(geoms, (classes != NODATA).sum() * 100.0)
    assert np.array_equal(table["area"], table["pixels"] * 100.0)
    assert list(table["class"][:5]) == [config.data.classes[c] for c in table["class_id"][:5]]
    biggest = int(np.argmax(table["pixels"]))
    mask = rasterio.features.geometry_mask([geoms[biggest]], classes.shape, transform, invert=True)
    assert table["confidence"][biggest] == pytest.approx(confidence[mask].astype(np.float64).mean(), rel=1e-6)


def test_predict_geojson_simplified_and_sieved(trained, tmp_path):
    ckpt, _, _ = trained
    image, _ = synthetic_scene(300, 300, seed=5, cell=50)
    scene = write_raster(tmp_path / "scene.tif", image)
    results = predict_files(ckpt, [str(scene)], tmp_path / "out", "cpu", progress=False,
                            options=PredictOptions(polygons="geojson", min_area=2000.0, simplify=15.0))
    assert not results[0].error
    info, geoms, table = read_features(tmp_path / "out" / "scene_polygons.geojson")
    assert info["crs"] == CRS
    assert table["area"].min() >= 2000.0
    assert_coverage(geoms, 300 * 300 * 100.0)


def test_polygon_options_are_checked_before_anything_is_predicted(trained, tmp_path, capsys):
    ckpt, _, _ = trained
    image, _ = synthetic_scene(64, 64)
    tile = tmp_path / "tile.png"
    from PIL import Image

    Image.fromarray(image.transpose(1, 2, 0)).save(tile)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(tile), "--out", str(out), "--polygons",
                 "--no-progress"]) == 2
    assert "tile.png is a plain image" in capsys.readouterr().err and not out.exists()
    for flag in ("--min-area", "--simplify"):
        assert main(["predict", "--checkpoint", str(ckpt), str(tile), "--out", str(out), flag, "5"]) == 2
        assert f"{flag} shapes the polygons: give it with --polygons" in capsys.readouterr().err
    with pytest.raises(Co2sError, match="--simplify must be a number >= 0"):
        PredictOptions(polygons="gpkg", simplify=float("nan"))
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "--polygons" in capsys.readouterr().out
