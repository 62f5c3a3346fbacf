"""``co2s splits`` on a vector label file: seeded, disjoint, sized by count or area, spatially
blocked (neighbours stay together; a buffer keeps the sides apart), stratified by class, usable
as training labels and validation regions as written."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import shapely

from co2s.api import make_splits
from co2s.cli.main import main
from co2s.config.loader import validate
from co2s.data.scene_regions import load_regions
from co2s.data.scenes import load_scenes
from co2s.errors import DataError
from tests.data.scene_data import ORIGIN, RASTER_CRS, scene_data_config, write_scene

N = 12  # a 12 x 12 grid of parcels, 50 m apart, of different sizes and three classes


def parcels() -> list[tuple[shapely.Geometry, str]]:
    out = []
    for i in range(N):
        for j in range(N):
            side = 10 + (i * 7 + j * 3) % 30
            x, y = ORIGIN[0] + 100 + 50 * i, ORIGIN[1] - 100 - 50 * j
            out.append((shapely.box(x, y - side, x + side, y), ["c0", "c1", "c2"][(i // 2 + j // 3) % 3]))
    return out


def write_parcels(path, crs=RASTER_CRS, features=None):
    features = parcels() if features is None else features
    wkb = np.array([shapely.to_wkb(g) for g, _ in features], dtype=object)
    classes = np.array([c for _, c in features], dtype=object)
    ids = np.arange(len(features), dtype=np.int32)
    pyogrio.raw.write(path, wkb, [classes, ids], fields=["class", "parcel"], crs=crs, geometry_type="Polygon",
                      driver="GPKG", layer="parcels")
    return path


def read(path):
    meta, fids, wkb, (classes, ids) = pyogrio.raw.read(path, return_fids=True)
    return shapely.from_wkb(wkb), classes, ids


def test_same_seed_gives_identical_files_and_disjoint_sides(tmp_path):
    source = write_parcels(tmp_path / "labels.gpkg")
    files = ("labelled.gpkg", "held_out.gpkg", "split.json")
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_splits(str(source), "1/4", seed, tmp_path / name, by="count", attribute="class")
        runs.append([(tmp_path / name / f).read_bytes() for f in files])
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]
    _, _, labelled = read(tmp_path / "a" / "labelled.gpkg")
    geoms, classes, held = read(tmp_path / "a" / "held_out.gpkg")
    assert not set(labelled) & set(held) and sorted([*labelled, *held]) == list(range(N * N))
    assert len(labelled) == N * N // 4
    assert list(held) == sorted(held)  # source order, every attribute kept
    original = parcels()
    assert all(shapely.equals(g, original[i][0]) and c == original[i][1] for g, c, i in zip(geoms, classes, held))
    info = json.loads(runs[0][2])
    assert info["labelled"]["features"] == 36 and info["held_out"]["features"] == 108
    assert sorted(info["fids"]["labelled"]) == sorted((np.asarray(labelled) + 1).tolist())  # GeoPackage fids from 1


def test_area_share(tmp_path):
    source = write_parcels(tmp_path / "labels.gpkg")
    info = make_splits(str(source), "1/4", 3, tmp_path / "s")  # by area by default
    largest = max(g.area for g, _ in parcels()) / sum(g.area for g, _ in parcels())
    assert info["by"] == "area" and abs(info["labelled"]["share"] - 0.25) <= largest
    assert info["labelled"]["area"] + info["held_out"]["area"] == pytest.approx(info["total"]["area"])


def test_blocks_keep_neighbours_together_and_a_buffer_keeps_the_sides_apart(tmp_path):
    source = write_parcels(tmp_path / "labels.gpkg")
    info = make_splits(str(source), "1/4", 0, tmp_path / "blocks", block=200.0, attribute="class")
    assert info["units"] == 16  # parcels over x 500100-500700 and y 4999300-4999900: 4 x 4 cells
    lab, _, _ = read(tmp_path / "blocks" / "labelled.gpkg")
    held, _, _ = read(tmp_path / "blocks" / "held_out.gpkg")

    def cells(geoms):
        return {tuple(c) for c in np.floor(shapely.get_coordinates(shapely.point_on_surface(geoms)) / 200).tolist()}

    assert not cells(lab) & cells(held)  # whole blocks on one side
    # without blocks, most held-out parcels have a labelled parcel 50 m away; with them, few do
    make_splits(str(source), "1/4", 0, tmp_path / "plain", attribute="class")
    plain_lab, _, _ = read(tmp_path / "plain" / "labelled.gpkg")
    plain_held, _, _ = read(tmp_path / "plain" / "held_out.gpkg")
    near = lambda a, b: shapely.STRtree(a).query(b, predicate="dwithin", distance=45)[0].size  # noqa: E731
    assert near(lab, held) < 0.6 * near(plain_lab, plain_held)  # only pairs across block borders are left

    info = make_splits(str(source), "1/4", 0, tmp_path / "buffer", block=200.0, buffer=60.0)
    lab, _, _ = read(tmp_path / "buffer" / "labelled.gpkg")
    held, _, _ = read(tmp_path / "buffer" / "held_out.gpkg")
    assert info["dropped"]["features"] > 0 and info["held_out_touching_labelled"] == 0
    assert min(shapely.distance(g, shapely.union_all(lab)) for g in held) >= 60.0
    assert info["labelled"]["features"] + info["held_out"]["features"] + info["dropped"]["features"] == N * N


def test_stratified_splits_keep_every_class_on_both_sides(tmp_path):
    source = write_parcels(tmp_path / "labels.gpkg")
    info = make_splits(str(source), "1/8", 5, tmp_path / "s", by="count", stratify=True, attribute="class")
    for name, total in info["total"]["classes"].items():
        labelled = info["labelled"]["classes"][name]["features"]
        assert abs(labelled - total["features"] / 8) <= 0.5 and labelled >= 1
        assert info["held_out"]["classes"][name]["features"] == total["features"] - labelled
    by_area = make_splits(str(source), "1/4", 5, tmp_path / "a", stratify=True, attribute="class", block=100.0)
    for name, total in by_area["total"]["classes"].items():
        share = by_area["labelled"]["classes"][name]["area"] / total["area"]
        assert 0.1 < share < 0.45, (name, share)  # whole blocks of mixed classes: about a quarter


def test_cli_output_is_training_labels_and_validation_regions(tmp_path, capsys):
    write_scene(tmp_path / "scene.tif", (200, 210))
    write_parcels(tmp_path / "parcels.gpkg")
    code = main(["splits", str(tmp_path / "parcels.gpkg"), "--ratio", "1/4", "--by", "area", "--block", "200",
                 "--stratify", "--attribute", "class", "--out", str(tmp_path / "splits")])
    assert code == 0
    assert "labelled" in capsys.readouterr().out
    config = validate({"data": scene_data_config(tmp_path, vector="splits/labelled.gpkg",
                                                 val={"vector": "splits/held_out.gpkg"}),
                       "train": {"iters": 1}})
    train = load_scenes(config.data, progress=False)  # no overlap: no warning, no error
    regions = load_regions(config.data, "val", progress=False)
    assert train.labelled_pixels > 0 and regions.labelled_pixels > 3 * train.labelled_pixels / 2
    info = json.loads((tmp_path / "splits" / "split.json").read_text())
    assert info["stratified"] and info["block"] == 200.0 and info["attribute"] == "class"


def test_bad_vector_splits(tmp_path):
    source = write_parcels(tmp_path / "labels.gpkg")
    with pytest.raises(DataError, match="stratified splits need --attribute"):
        make_splits(str(source), "1/4", 0, tmp_path / "o", stratify=True)
    with pytest.raises(DataError, match=r"has no attribute 'landcover' \(--attribute\); its attributes: class, parcel"):
        make_splits(str(source), "1/4", 0, tmp_path / "o", attribute="landcover")
    with pytest.raises(DataError, match="fall in one block"):
        make_splits(str(source), "1/4", 0, tmp_path / "o", block=10_000.0)
    degrees = write_parcels(tmp_path / "deg.gpkg", crs="EPSG:4326",
                            features=[(shapely.box(i, 0, i + 0.5, 0.5), "c0") for i in range(4)])
    with pytest.raises(DataError, match=r"geographic CRS.*--block and --buffer"):
        make_splits(str(degrees), "1/4", 0, tmp_path / "o", block=1.0)
    with pytest.raises(DataError, match=r"--block, --attribute: for vector label files only"):
        make_splits(str(tmp_path / "train.txt"), "1/4", 0, tmp_path / "o", block=5.0, attribute="class")
    config = validate({"data": scene_data_config(tmp_path, vector="labels.gpkg"), "train": {"iters": 1}})
    with pytest.raises(DataError, match=r"class value\(s\) 'c7'"):
        write_parcels(tmp_path / "labels.gpkg", features=[*parcels()[:3], (shapely.box(0, 0, 1, 1), "c7")])
        make_splits(None, "1/4", 0, tmp_path / "o", config=config)  # the config's labels and classes
