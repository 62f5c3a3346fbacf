"""co2s suggest on constructed cases: students made to agree or disagree where the test says, so
every score is known by hand.

Each "student" reads its class from the image's bands (logits = 10 x the bands, in its own order),
pixel by pixel: a pixel whose band 0 is high is class 0 for both; one whose band 1 is high is
class 1 for student a and class 2 for student b (they disagree); one whose bands are equal is
uniform for both (they agree, the entropy is 1).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pyogrio
import pytest
import shapely
import torch
from PIL import Image

import co2s
from co2s.config.loader import validate
from co2s.errors import Co2sError, DataError
from co2s.inference.segmenter import Segmenter
from co2s.models.contract import InferenceContract
from tests.conftest import tiny_config_dict
from tests.inference.scenes import CRS, TRANSFORM, write_raster

CLASSES = ["c0", "c1", "c2"]


class BandReader(torch.nn.Module):
    """Class logits = 10 x the bands in ``order``, pixel by pixel (no context: tiling changes nothing)."""

    in_channels = 3

    def __init__(self, order):
        super().__init__()
        self.order = list(order)
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return 10 * x[:, self.order] + 0 * self.unused


def segmenter(two: bool = True, prediction: str | None = None) -> Segmenter:
    models = {"a": BandReader([0, 1, 2]), "b": BandReader([0, 2, 1])} if two else {"a": BandReader([0, 1, 2])}
    contract = InferenceContract(classes=CLASSES, palette=[[200, 0, 0], [0, 200, 0], [0, 0, 200]], in_channels=3,
                                 scale=255, normalisation={n: {"mean": [0.0] * 3, "std": [1.0] * 3} for n in models},
                                 tiling={"window": 32, "stride": 26, "batch_size": 4},
                                 prediction=prediction or ("mean" if two else "a"),
                                 architectures={n: {"kind": "band reader"} for n in models})
    return Segmenter(models, contract).eval()


#: pixel kinds, as RGB: both students say class 0 / they disagree (1 vs 2) / uniform for both
AGREE, DISAGREE, UNSURE = (255, 0, 0), (0, 255, 0), (128, 128, 128)


def tile(kinds, size=24) -> np.ndarray:
    """An RGB tile of vertical stripes, one per kind."""
    out = np.zeros((size, size, 3), np.uint8)
    bounds = np.linspace(0, size, len(kinds) + 1).round().astype(int)
    for kind, a, b in zip(kinds, bounds, bounds[1:]):
        out[:, a:b] = kind
    return out


def softmax(logits):
    e = np.exp(np.asarray(logits, float) - max(logits))
    return e / e.sum()


def entropy(p):
    return float(-(p * np.log(np.clip(p, 1e-12, None))).sum() / math.log(len(p)))


# the terms of each kind of pixel, by hand: the mean fusion of the two students' softmax
P_AGREE = softmax([10, 0, 0])
P_DISAGREE = (softmax([0, 10, 0]) + softmax([0, 0, 10])) / 2
E_AGREE, E_DISAGREE, E_UNSURE = entropy(P_AGREE), entropy(P_DISAGREE), 1.0


@pytest.fixture()
def tiles(tmp_path):
    """A tile dataset: labelled l0 (the most uncertain of all), val v0, and a pool listing l0 too."""
    shapes = {"agree": [AGREE], "disagree": [DISAGREE], "unsure": [UNSURE], "half": [DISAGREE, AGREE],
              "l0": [DISAGREE, UNSURE], "v0": [DISAGREE, UNSURE], "x0": [DISAGREE, UNSURE]}
    (tmp_path / "images").mkdir()
    for name, kinds in shapes.items():
        Image.fromarray(tile(kinds)).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / "images" / f"{name}_mask.png")
    (tmp_path / "labelled.txt").write_text("images/l0.png images/l0_mask.png\n")
    (tmp_path / "val.txt").write_text("images/v0.png images/v0_mask.png\n")
    pool = ["agree", "half", "l0", "unsure", "v0", "disagree", "x0"]
    (tmp_path / "unlabelled.txt").write_text("".join(f"images/{n}.png\n" for n in pool))
    (tmp_path / "being_labelled.txt").write_text("images/x0.png\n")
    cfg = tiny_config_dict(tmp_path, tmp_path / "run")
    cfg["data"].update(scale=255, splits={"labelled": "labelled.txt", "unlabelled": "unlabelled.txt",
                                          "val": "val.txt", "test": "val.txt"})
    return validate(cfg)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiles_rank_by_hand_computed_scores_and_skip_labelled_ones(tiles, tmp_path):
    out = tmp_path / "suggest"
    record = co2s.suggest(segmenter(), out, tiles, budget=2, exclude=["being_labelled.txt"], progress=False)
    rows = read_csv(out / "scores.csv")
    names = [r["name"] for r in rows]
    # disagree everywhere > unsure everywhere > half disagreeing > agreeing; l0 (labelled), v0 (val)
    # and x0 (--exclude) are never ranked although they are the most uncertain of all
    assert names == ["images/disagree.png", "images/unsure.png", "images/half.png", "images/agree.png"]
    expected = {"images/disagree.png": (1.0, E_DISAGREE), "images/unsure.png": (0.0, E_UNSURE),
                "images/half.png": (0.5, (E_DISAGREE + E_AGREE) / 2), "images/agree.png": (0.0, E_AGREE)}
    for row in rows:
        share, ent = expected[row["name"]]
        assert float(row["disagreement"]) == pytest.approx(share, abs=1e-6)
        assert float(row["entropy"]) == pytest.approx(ent, abs=1e-5)
        assert float(row["score"]) == pytest.approx(share + ent, abs=1e-5)
    assert (out / "suggestions.txt").read_text() == "images/disagree.png\nimages/unsure.png\n"
    assert record["excluded_tiles"] == 3 and record["pool_tiles"] == 7
    saved = json.loads((out / "suggest.json").read_text())
    assert [s["name"] for s in saved["suggestions"]] == ["images/disagree.png", "images/unsure.png"]
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 3 * 100 and sheet.height > 2 * 100  # two rows of three panels


def test_the_list_reads_back_as_a_split(tiles, tmp_path):
    from co2s.data.sources import read_split

    co2s.suggest(segmenter(), tmp_path / "s", tiles, budget=3, progress=False)
    samples = read_split(str(tmp_path / "s" / "suggestions.txt"), tiles.data, labelled=False)
    # x0 (half disagreeing, half unsure) scores 0.5 + (E_DISAGREE + 1) / 2, between the two
    assert [s.image.name for s in samples] == ["disagree.png", "x0.png", "unsure.png"]


def test_one_model_ranks_by_entropy_and_refuses_disagreement(tiles, tmp_path):
    record = co2s.suggest(segmenter(two=False), tmp_path / "one", tiles, budget=4, progress=False)
    rows = read_csv(tmp_path / "one" / "scores.csv")
    assert "disagreement" not in rows[0]
    assert rows[0]["name"] == "images/unsure.png"  # entropy 1; a single student is sure of a disagree pixel
    assert float(rows[0]["score"]) == pytest.approx(1.0, abs=1e-6)
    assert record["scored_tiles"] == 5  # the pool less l0 (labelled) and v0 (val)
    with pytest.raises(Co2sError, match="two students"):
        co2s.suggest(segmenter(two=False), tmp_path / "two", tiles, score="disagreement", progress=False)


def test_score_variants(tiles, tmp_path):
    def order(score, **kw):
        out = tmp_path / score
        co2s.suggest(segmenter(**kw), out, tiles, budget=1, score=score, progress=False, sheet=0)
        return [(r["name"].split("/")[-1][:-4], float(r["score"])) for r in read_csv(out / "scores.csv")]

    disagreement = order("disagreement")
    assert [s for _, s in disagreement] == pytest.approx([1.0, 0.5, 0.5, 0.0, 0.0])
    margin = dict(order("margin"))
    assert margin["unsure"] == pytest.approx(1.0) and margin["agree"] == pytest.approx(
        1 - (P_AGREE[0] - P_AGREE[1]), abs=1e-6)
    assert margin["disagree"] == pytest.approx(1.0, abs=1e-6)  # its two classes tie at 0.5
    # balanced: a pixel weighs min(1, (1/3) / share of its predicted class over the pool). The pool
    # (agree, half, unsure, disagree, x0; 5 x 576 px): class 1 (the fused argmax of a disagreeing
    # pixel: 1 and 2 tie) on disagree + half of half + half of x0 = 0.4, class 0 on the rest = 0.6
    balanced, default = dict(order("balanced")), dict(order("default"))
    assert balanced["disagree"] == pytest.approx(default["disagree"] * (1 / 3) / 0.4, abs=1e-5)
    assert balanced["agree"] == pytest.approx(default["agree"] * (1 / 3) / 0.6, abs=1e-6)
    assert balanced["half"] == pytest.approx((1 + E_DISAGREE) / 2 * (1 / 3) / 0.4 + E_AGREE / 2 * (1 / 3) / 0.6,
                                             abs=1e-5)
    assert not (tmp_path / "balanced" / "contact_sheet.png").exists()  # sheet=0
    # scores.csv of any run carries the default and balanced scores beside the terms
    columns = {r["name"].split("/")[-1][:-4]: r for r in read_csv(tmp_path / "margin" / "scores.csv")}
    assert {n: float(r["balanced"]) for n, r in columns.items()} == pytest.approx(balanced, abs=1e-5)
    assert {n: float(r["default"]) for n, r in columns.items()} == pytest.approx(default, abs=1e-5)


def test_outputs_are_checked_before_any_work(tiles, tmp_path):
    out = tmp_path / "s"
    co2s.suggest(segmenter(), out, tiles, budget=1, progress=False, sheet=0)
    before = (out / "suggestions.txt").read_text()
    with pytest.raises(Co2sError, match="exists"):
        co2s.suggest(segmenter(), out, tiles, budget=2, progress=False)
    assert (out / "suggestions.txt").read_text() == before
    co2s.suggest(segmenter(), out, tiles, budget=2, progress=False, overwrite=True, sheet=0)
    assert len((out / "suggestions.txt").read_text().split()) == 2
    # an input list named like an output is never written over
    (tmp_path / "suggestions.txt").write_text("images/agree.png\n")
    with pytest.raises(Co2sError, match="one of the inputs"):
        co2s.suggest(segmenter(), tmp_path, tiles, pool=["suggestions.txt"], overwrite=True, progress=False)
    assert (tmp_path / "suggestions.txt").read_text() == "images/agree.png\n"


def test_nodata_pixels_do_not_count(tmp_path, tiles):
    # left half disagreeing, right half agreeing but nodata: the tile disagrees on all its valid pixels
    image = tile([DISAGREE, AGREE]).transpose(2, 0, 1).copy()
    image[:, :, 12:] = 0
    write_raster(tmp_path / "images" / "masked.tif", image, nodata=0)
    (tmp_path / "pool.txt").write_text("images/masked.tif\nimages/half.png\n")
    co2s.suggest(segmenter(), tmp_path / "s", tiles, pool=["pool.txt"], progress=False, sheet=1)
    rows = {r["name"]: r for r in read_csv(tmp_path / "s" / "scores.csv")}
    assert float(rows["images/masked.tif"]["disagreement"]) == pytest.approx(1.0)
    assert int(rows["images/masked.tif"]["pixels"]) == 24 * 12
    assert float(rows["images/half.png"]["disagreement"]) == pytest.approx(0.5)


# -- scenes ------------------------------------------------------------------------------------


@pytest.fixture()
def scene(tmp_path):
    """A 192 x 192 scene agreeing everywhere but in three disagreeing blocks: A (the largest, under a
    labelled polygon), B (under a validation polygon) and C (free), and a stripe D of unsure pixels."""
    image = np.zeros((192, 192, 3), np.uint8)
    image[:] = AGREE
    blocks = {"A": (0, 0, 64, 64), "B": (128, 0, 64, 48), "C": (120, 130, 40, 40)}  # x, y, w, h
    for x, y, w, h in blocks.values():
        image[y : y + h, x : x + w] = DISAGREE
    image[150:170, 0:60] = UNSURE  # D
    write_raster(tmp_path / "scene.tif", image.transpose(2, 0, 1).copy())

    def polygon(x, y, w, h):
        x0, y0 = TRANSFORM @ (x, y)
        x1, y1 = TRANSFORM @ (x + w, y + h)
        return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    for name, block in (("labels", blocks["A"]), ("val", blocks["B"])):
        pyogrio.raw.write(tmp_path / f"{name}.gpkg", np.array([shapely.to_wkb(polygon(*block))], object),
                          [np.array(["c1"], object)], fields=["class"], crs=CRS, geometry_type="Polygon",
                          driver="GPKG")
    cfg = tiny_config_dict(tmp_path, tmp_path / "run")
    cfg["data"] = {"root": str(tmp_path), "classes": CLASSES, "scale": 255,
                   "scenes": {"rasters": ["scene.tif"], "labels": {"vector": "labels.gpkg", "attribute": "class"},
                              "val": {"vector": "val.gpkg"}}}
    return validate(cfg), {k: polygon(*b) for k, b in blocks.items()}


def test_labelled_pixels_do_not_count_and_mostly_labelled_windows_are_not_suggested(scene, tmp_path):
    config, blocks = scene
    record = co2s.suggest(segmenter(), tmp_path / "s", config, budget=400, window=32, spacing=0, progress=False,
                          sheet=0)
    pixel = abs(TRANSFORM.a)
    for s in record["suggestions"]:
        box = shapely.box(*s["bounds"])
        labelled = box.intersection(blocks["A"]).area / pixel**2
        assert labelled <= 0.5 * 32 * 32
        assert s["pixels"] == 32 * 32 - labelled  # scored over its unlabelled pixels only
        assert box.intersection(blocks["B"]).area == 0


def test_scene_nodata_pixels_do_not_count_and_the_mask_is_read_once(tmp_path, monkeypatch):
    """A scene whose left part is nodata: windows there are not candidates, a window across its
    edge is scored over its valid pixels, and scoring takes the valid pixels from the prediction's
    reads (no mask read beyond those of loading the scenes, which check the labels)."""
    from co2s.data.raster import RasterReader
    from co2s.data.scenes import load_scenes

    image = np.zeros((3, 96, 96), np.uint8)
    image[:] = np.array(DISAGREE, np.uint8)[:, None, None]
    image[:, :, :40] = 0  # nodata
    write_raster(tmp_path / "scene.tif", image, nodata=0)
    x0, y0 = TRANSFORM @ (0, 0)
    x1, y1 = TRANSFORM @ (8, 8)  # a labelled corner, in the nodata
    pyogrio.raw.write(tmp_path / "labels.gpkg", np.array([shapely.to_wkb(shapely.box(x0, y1, x1, y0))], object),
                      [np.array(["c1"], object)], fields=["class"], crs=CRS, geometry_type="Polygon", driver="GPKG")
    cfg = tiny_config_dict(tmp_path, tmp_path / "run")
    cfg["data"] = {"root": str(tmp_path), "classes": CLASSES, "scale": 255,
                   "scenes": {"rasters": ["scene.tif"], "labels": {"vector": "labels.gpkg", "attribute": "class"}}}
    config = validate(cfg)
    calls = []
    valid = RasterReader.valid
    monkeypatch.setattr(RasterReader, "valid", lambda self, *a, **k: calls.append(a) or valid(self, *a, **k))
    load_scenes(config.data, 3, progress=False)
    loading = len(calls)
    record = co2s.suggest(segmenter(), tmp_path / "s", config, budget=100, window=32, spacing=0,
                          progress=False, sheet=0)
    assert len(calls) == 2 * loading  # suggest loaded the scenes, and read no mask again to score them
    assert record["suggestions"]
    has_data = image.max(0) > 0
    for s in record["suggestions"]:
        w = s["window"]
        inside = has_data[w["y"] : w["y"] + w["height"], w["x"] : w["x"] + w["width"]]
        assert s["pixels"] == inside.sum() >= 0.5 * inside.size  # data.scenes.min_valid's default
    assert any(s["pixels"] < 32 * 32 for s in record["suggestions"])  # one across the edge


def test_scene_windows_avoid_labels_and_held_out_regions_and_keep_their_spacing(scene, tmp_path):
    config, blocks = scene
    out = tmp_path / "windows"
    record = co2s.suggest(segmenter(), out, config, budget=6, window=32, spacing=16, progress=False)
    info = pyogrio.read_info(out / "suggestions.gpkg")
    assert info["crs"] == CRS and info["features"] == len(record["suggestions"]) >= 3
    _, _, geometry, fields = pyogrio.raw.read(out / "suggestions.gpkg")
    windows = shapely.from_wkb(geometry)
    table = dict(zip(info["fields"], fields))
    assert list(table["rank"]) == list(range(1, len(windows) + 1))
    assert np.all(np.diff(table["score"]) <= 0)
    # the top window lies on the free disagreeing block C, the most uncertain place left
    assert windows[0].intersection(blocks["C"]).area / windows[0].area > 0.5
    for w in windows:  # never on a validation region; at most half on a labelled polygon (min_valid 0.5)
        assert w.intersection(blocks["B"]).area == 0 and w.intersection(blocks["A"]).area <= 0.5 * w.area
    pixel = abs(TRANSFORM.a)
    for i in range(len(windows)):
        for j in range(i):
            assert windows[i].distance(windows[j]) >= 16 * pixel - 1e-6
    sizes = {(s["window"]["width"], s["window"]["height"]) for s in record["suggestions"]}
    assert sizes == {(32, 32)}
    assert Image.open(out / "contact_sheet.png").height > 100


def test_spacing_spreads_the_windows(scene, tmp_path):
    config, _ = scene

    def windows(spacing):
        r = co2s.suggest(segmenter(), tmp_path / f"s{spacing}", config, budget=3, window=32, spacing=spacing,
                         progress=False, sheet=0)
        return [(s["window"]["x"], s["window"]["y"]) for s in r["suggestions"]]

    def gaps(found):  # pixels between each pair of 32 px windows (< 0: overlap)
        return [max(abs(a[0] - b[0]), abs(a[1] - b[1])) - 32 for i, a in enumerate(found) for b in found[:i]]

    close, apart = windows(0), windows(64)
    # spacing 0: windows never overlap but crowd around block C, touching; 64: they spread
    assert min(gaps(close)) == 0 and close[0] == (120, 136)
    assert min(gaps(apart)) >= 64 and apart[0] == (120, 136)


def test_an_earlier_suggestion_excludes_its_windows(scene, tmp_path):
    config, _ = scene
    first = tmp_path / "first"
    co2s.suggest(segmenter(), first, config, budget=2, window=32, spacing=0, progress=False, sheet=0)
    earlier = shapely.from_wkb(pyogrio.raw.read(first / "suggestions.gpkg")[2])
    again = co2s.suggest(segmenter(), tmp_path / "second", config, budget=3, window=32, spacing=0, progress=False,
                         sheet=0, exclude=[str(first / "suggestions.gpkg")])
    later = shapely.from_wkb(pyogrio.raw.read(tmp_path / "second" / "suggestions.gpkg")[2])
    assert len(later) == 3 and again["excluded_by"] == [str(first / "suggestions.gpkg")]
    assert all(a.intersection(b).area == 0 for a in earlier for b in later)
    # the file excluded is an input: never written over, even with overwrite
    with pytest.raises(Co2sError, match="one of the inputs"):
        co2s.suggest(segmenter(), first, config, window=32, exclude=[str(first / "suggestions.gpkg")],
                     overwrite=True, progress=False)
    assert shapely.from_wkb(pyogrio.raw.read(first / "suggestions.gpkg")[2]).tolist() == earlier.tolist()


def test_scene_options_are_checked(scene, tmp_path):
    config, _ = scene
    with pytest.raises(Co2sError, match="multiple of 4"):
        co2s.suggest(segmenter(), tmp_path / "x", config, window=30, progress=False)
    with pytest.raises(Co2sError, match="tile datasets"):
        co2s.suggest(segmenter(), tmp_path / "x", config, pool=["a.txt"], progress=False)
    with pytest.raises(DataError, match="nothing to suggest"):
        co2s.suggest(segmenter(), tmp_path / "x", config, window=256, progress=False)  # larger than the scene


@pytest.mark.slow
def test_cli_on_a_trained_checkpoint(trained_tiles, tmp_path):
    checkpoint = trained_tiles
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "co2s.cli.main", "suggest", "--checkpoint", str(checkpoint),
                          "--out", str(out), "--budget", "2", "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "tile(s) ranked" in run.stdout and (out / "suggestions.txt").is_file()
    again = subprocess.run([sys.executable, "-m", "co2s.cli.main", "suggest", "--checkpoint", str(checkpoint),
                            "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.startswith("error: nothing suggested") and "Traceback" not in again.stderr


@pytest.fixture()
def trained_tiles(tmp_path):
    """A tiny lite_unet trained for a few steps on 2 labelled tiles, 6 unlabelled: its best.ckpt."""
    from tests.conftest import write_tiny_dataset

    root = write_tiny_dataset(tmp_path / "data", n=10)
    lines = (root / "train.txt").read_text().splitlines()
    (root / "labelled.txt").write_text("\n".join(lines[:2]) + "\n")
    (root / "unlabelled.txt").write_text("\n".join(line.split()[0] for line in lines[2:]) + "\n")
    cfg = tiny_config_dict(root, tmp_path / "run", iters=4)
    cfg["data"]["splits"].update(labelled="labelled.txt", unlabelled="unlabelled.txt")
    return co2s.train(validate(cfg), progress=False).best_checkpoint
