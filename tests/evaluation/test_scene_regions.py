"""Validation and test regions of scenes: scored pixels are exactly those ``co2s predict`` writes
for the scene (every student and fusion), reads are windows around the regions, held-out regions
are never trained on, and bad regions stop with one clear message."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
import torch

from co2s.config.loader import validate
from co2s.data.scene_regions import load_regions
from co2s.data.scenes import LabelledSceneCrops, UnlabelledScenePairs, load_scenes, scene_pools
from co2s.errors import ConfigError, DataError
from co2s.evaluation.run import evaluate
from co2s.data.raster import RasterReader
from co2s.inference.predict import predict_files
from co2s.inference.segmenter import Segmenter
from co2s.models.factory import build_models
from tests.conftest import weak_params
from tests.data.scene_data import (
    CLASSES,
    RASTER_CRS,
    nodata_area,
    polygons_in_pixels,
    scene_data_config,
    scene_transform,
    to_crs,
    write_scene,
    write_vector,
)

SIZE = (200, 210)
WINDOW = 48  # stride int(48 * 5 / 6) = 40: a 5 x 5 tile grid over the scene
TRAIN, HELD = [0, 1, 3], [2, 4]  # polygons for training, held out (two spread over several tiles)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(root, held=HELD, train=TRAIN):
    write_scene(root / "scene.tif", SIZE)
    features = polygons_in_pixels()
    write_vector(root / "labels.gpkg", features=[features[i] for i in train])
    write_vector(root / "val.gpkg", features=[features[i] for i in held])
    return root


def _config(root, **scenes):
    scenes = {"val": {"vector": "val.gpkg"}, **scenes}
    return validate({"data": scene_data_config(root, **scenes), "model": {"width": 8, "depth": 3},
                     "train": {"crop_size": WINDOW, "iters": 1}, "eval": {"batch_size": 3}})


def _segmenter(config, students: int = 2) -> Segmenter:
    torch.manual_seed(0)
    models = {f"s{i}": build_models(config)["model"].eval() for i in range(students)}
    return Segmenter.from_config(models, config).eval()


def _rasterised(indices, size=SIZE, fill: int = 255) -> np.ndarray:
    """Polygons ``indices`` of the fixture rasterised over a whole scene of ``size``, nodata as ignore."""
    from rasterio.features import rasterize

    shapes = [(to_crs(g, RASTER_CRS), CLASSES.index(c)) for i, (g, c) in enumerate(polygons_in_pixels())
              if i in indices]
    labels = rasterize(shapes, out_shape=size, transform=scene_transform(), fill=fill, dtype="uint8")
    labels = labels.astype(np.int64)
    labels[nodata_area(size)] = 255
    return labels


def _reference(held=HELD) -> np.ndarray:
    return _rasterised(held)


def _confusion(classes: np.ndarray, labels: np.ndarray) -> list:
    scored = labels != 255
    assert (classes[scored] != 255).all()  # predict wrote a class on every scored pixel
    cm = np.zeros((3, 3), np.int64)
    np.add.at(cm, (labels[scored], classes[scored]), 1)
    return cm.tolist()


def test_regions_score_exactly_what_predict_writes_for_every_student_and_fusion(tmp_path):
    config = _config(_write(tmp_path))
    segmenter = _segmenter(config)
    result = evaluate(segmenter, config.data, "val", progress=False)
    labels = _reference()
    assert result["pixels"] == int((labels != 255).sum()) > 2000
    assert set(result["predictions"]) == {"s0", "s1", "mean", "confidence"}
    for prediction, scores in result["predictions"].items():
        out = tmp_path / "pred" / prediction
        (written,) = predict_files(segmenter, [str(tmp_path / "scene.tif")], out, device="cpu",
                                   progress=False, prediction=prediction)
        assert written.error is None
        with rasterio.open(out / "scene_classes.tif") as src:
            classes = src.read(1).astype(np.int64)
        assert scores["confusion_matrix"] == _confusion(classes, labels), prediction
    assert result["split"] == "val" and result["images"] == 1 and result["split_source"].endswith("val.gpkg")
    assert result["confusion_matrix"] == result["predictions"][result["prediction"]]["confusion_matrix"]


def test_a_uint16_scene_with_nodata_65535_scores_what_predict_writes(tmp_path):
    """The scene's nodata area stores 65535 (declared): evaluation and prediction read it through
    the same reader, so the raster ``co2s predict`` writes scores to evaluate's confusion matrix."""
    _write(tmp_path)
    with rasterio.open(tmp_path / "scene.tif") as src:
        profile, pixels = src.profile, src.read()
    pixels = pixels.astype(np.uint16) * 257
    pixels[:, nodata_area(SIZE)] = 65535
    profile.update(dtype="uint16", nodata=65535)
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as dst:
        dst.write(pixels)
    config = _config(tmp_path)
    segmenter = _segmenter(config, 1)
    result = evaluate(segmenter, config.data, "val", progress=False)
    labels = _reference()
    assert result["pixels"] == int((labels != 255).sum()) > 2000
    (written,) = predict_files(segmenter, [str(tmp_path / "scene.tif")], tmp_path / "pred", device="cpu",
                               progress=False)
    with rasterio.open(tmp_path / "pred" / "scene_classes.tif") as src:
        classes = src.read(1).astype(np.int64)
    assert (classes[nodata_area(SIZE)] == 255).all()
    assert result["confusion_matrix"] == _confusion(classes, labels)


def test_ranks_share_the_regions_without_counting_a_pixel_twice(tmp_path):
    """Under DDP the windows are cut in bands across ranks: their confusion matrices add up to
    the single-process one."""
    from co2s.data.evaluation_sets import SceneEvaluationSet
    from co2s.evaluation.evaluator import score_predictions

    config = _config(_write(tmp_path))
    segmenter = _segmenter(config, 1)
    regions = SceneEvaluationSet(load_regions(config.data, "val", progress=False))
    assert len(regions.windows(3)) == 3
    whole = score_predictions(segmenter, regions, progress=False)["s0"]["confusion_matrix"]
    parts = [np.array(score_predictions(segmenter, regions, rank=r, world_size=3, progress=False)["s0"]
                      ["confusion_matrix"]) for r in range(3)]
    assert sum(p.sum() > 0 for p in parts) >= 2
    assert sum(parts).tolist() == whole


def test_scoring_takes_the_valid_pixels_from_the_prediction(tmp_path, monkeypatch):
    """The predicted pieces carry the valid pixels of their reads: the labels are masked with them,
    and the raster's mask is not read a second time for the labels."""
    from co2s.data.evaluation_sets import SceneEvaluationSet
    from co2s.evaluation.evaluator import score_predictions

    config = _config(_write(tmp_path))
    regions = SceneEvaluationSet(load_regions(config.data, "val", progress=False))
    masks = []
    original = RasterReader.valid

    def spy(self, window=None, out_shape=None):
        masks.append(window)
        return original(self, window, out_shape)

    monkeypatch.setattr(RasterReader, "valid", spy)
    scores = score_predictions(_segmenter(config, 1), regions, progress=False)["s0"]
    assert masks == []
    assert np.array(scores["confusion_matrix"]).sum() == int((_reference() != 255).sum())  # nodata not scored


def test_only_windows_around_the_regions_are_read(tmp_path, monkeypatch):
    """A 7 x 6 pixel region: the image is read only in the tiles of the whole scene's grid that
    cover it, one batch of tiles at a time."""
    config = _config(_write(tmp_path, held=[3], train=[0, 1, 2]))
    reads = []
    original = RasterReader.read

    def spy(self, window=None, out_shape=None):
        if window.shape != (1, 1):  # not the up-front check of a raster's corners
            reads.append((window.y, window.x, window.height, window.width))
        return original(self, window, out_shape)

    monkeypatch.setattr(RasterReader, "read", spy)
    result = evaluate(_segmenter(config, 1), config.data, "val", progress=False)
    assert result["pixels"] == int((_reference([3]) != 255).sum()) > 20
    # rows 150-155, columns 160-166: tile rows 120 and 152, tile columns 120, 160 and 162 (one batch)
    assert sorted(reads) == [(120, 120, WINDOW, 90), (152, 120, WINDOW, 90)]


def test_test_regions_as_raster_masks_and_as_whole_scenes(tmp_path):
    """``test`` as a raster mask on the training scene, and as another raster whose complete
    vector labels make the whole scene scored: both equal scoring the predict output."""
    _write(tmp_path)
    labels = _reference()
    with rasterio.open(tmp_path / "mask.tif", "w", driver="GTiff", width=SIZE[1], height=SIZE[0], count=1,
                       dtype="uint8", nodata=255, crs=RASTER_CRS, transform=scene_transform()) as dst:
        dst.write(labels.astype(np.uint8), 1)
    config = _config(tmp_path, test={"raster": "mask.tif"})
    segmenter = _segmenter(config, 1)
    result = evaluate(segmenter, config.data, "test", progress=False)
    predict_files(segmenter, [str(tmp_path / "scene.tif")], tmp_path / "pred", device="cpu", progress=False)
    with rasterio.open(tmp_path / "pred" / "scene_classes.tif") as src:
        classes = src.read(1).astype(np.int64)
    assert result["pixels"] == int((labels != 255).sum())
    assert result["confusion_matrix"] == _confusion(classes, labels)

    other = tmp_path / "other"
    write_scene(other / "whole.tif", (90, 100), seed=3)
    write_vector(other / "whole.gpkg", features=[polygons_in_pixels()[0]])
    config = _config(tmp_path, test={"rasters": "other/whole.tif", "vector": "other/whole.gpkg",
                                     "complete": True, "background": "c2"})
    result = evaluate(segmenter, config.data, "test", progress=False)
    predict_files(segmenter, [str(other / "whole.tif")], tmp_path / "pred2", device="cpu", progress=False)
    with rasterio.open(tmp_path / "pred2" / "whole_classes.tif") as src:
        classes = src.read(1).astype(np.int64)
    whole = _rasterised([0], (90, 100), fill=2)  # every valid pixel is scored
    assert result["pixels"] == int((whole != 255).sum()) > 8000
    assert result["confusion_matrix"] == _confusion(classes, whole)
    assert result["rasters"] == [str(other / "whole.tif")]


def test_held_out_regions_are_never_trained_on(tmp_path):
    """Training polygons overlapping the validation ones lose the overlap (with a warning); no
    unlabelled crop has a valid pixel inside a validation region."""
    _write(tmp_path, held=[2, 4], train=[0, 1, 2, 3])  # polygon 2 both: a mistake, reported
    config = validate({"data": scene_data_config(tmp_path, val={"vector": "val.gpkg"}),
                       "train": {"iters": 1, "crop_size": 32, "scale_range": [1.0, 1.0],
                                 "augment": {"hflip_p": 0.0}}})
    with pytest.warns(UserWarning, match=r"labels\.gpkg: feature id\(s\) 3 overlap held-out regions of "
                                         r"data\.scenes\.val"):
        scene_set = load_scenes(config.data, progress=False)
    held = _reference([2, 4]) != 255
    train = _rasterised([0, 1, 2, 3])
    train[held] = 255
    assert train[_rasterised([2]) != 255].size and (train == 2).sum() == 0  # c2 lies in held-out polygons only
    np.testing.assert_array_equal(scene_set.counts, np.bincount(train[train != 255], minlength=3))
    labelled, unlabelled = scene_pools(scene_set, config.data, 32)
    weak = weak_params((32, 32), (1.0, 1.0), 0.0)
    crops, pairs = LabelledSceneCrops(labelled, weak), UnlabelledScenePairs(unlabelled, weak)
    for i in range(10):
        item = crops[(i, i)]
        x0, y0 = (int(v) for v in item["path"].rsplit("=", 1)[1].split(",")[:2])
        assert (item["mask"].numpy()[held[y0 : y0 + 32, x0 : x0 + 32]] == 255).all()
    seen = 0
    for i in range(20):
        item = pairs[(i, 7 + i)]
        x0, y0 = (int(v) for v in item["u_path"].rsplit("=", 1)[1].split(",")[:2])
        window = held[y0 : y0 + 32, x0 : x0 + 32]
        seen += int(window.sum())
        assert not item["u_valid"].numpy()[window].any()
    assert seen > 0  # some drawn windows do reach a region (and mask it)


def test_bad_regions_each_give_one_clear_message(tmp_path):
    _write(tmp_path)
    far = [(shapely.box(5000.3, 5000.3, 5010.7, 5010.7), "c1")]
    write_vector(tmp_path / "far.gpkg", features=far)
    with pytest.raises(DataError, match=r"far\.gpkg: feature id\(s\) 1 lie outside every raster \(scene\.tif\).*"
                                        r"data\.scenes\.rasters"):
        load_regions(_config(tmp_path, val={"vector": "far.gpkg"}).data, "val", progress=False)
    with pytest.raises(DataError, match=r"data\.scenes\.test\.rasters: 'nothing/\*\.tif' matches no file"):
        load_regions(_config(tmp_path, test={"rasters": "nothing/*.tif", "vector": "val.gpkg"}).data, "test",
                     progress=False)
    nodata_only = [(shapely.box(195.3, 195.3, 199.7, 199.7), "c1")]  # inside the nodata corner
    write_vector(tmp_path / "void.gpkg", features=nodata_only)
    with pytest.raises(DataError, match=r"data\.scenes\.val .*void\.gpkg.*no labelled pixel with data"):
        load_regions(_config(tmp_path, val={"vector": "void.gpkg"}).data, "val", progress=False)
    with pytest.raises(DataError, match=r"no feature matches data\.scenes\.val\.where \"class = 'c9'\""):
        load_regions(_config(tmp_path, val={"vector": "val.gpkg", "where": "class = 'c9'"}).data, "val",
                     progress=False)
    same = _config(tmp_path, val={"vector": "labels.gpkg"})
    with pytest.raises(DataError, match=r"data\.scenes\.val reads the same features as data\.scenes\.labels"):
        load_scenes(same.data, progress=False)
    with pytest.raises(DataError, match=r"data\.scenes\.test is not set"):
        load_regions(_config(tmp_path).data, "test", progress=False)
    cfg = scene_data_config(tmp_path, val={"vector": "val.gpkg"})
    cfg["splits"] = {"val": "val.txt"}
    with pytest.raises(ConfigError, match=r"data\.scenes\.val and data\.splits\.val are both set"):
        validate({"data": cfg, "train": {"iters": 1}})
    cfg = scene_data_config(tmp_path, val={"vector": "val.gpkg"}, labels={"raster": "mask.tif"})
    with pytest.raises(ConfigError, match=r"scenes\.val\.attribute"):
        validate({"data": cfg, "train": {"iters": 1}})


def test_one_file_with_a_split_attribute(tmp_path):
    """``where`` filters give training and validation features from one layer."""
    write_scene(tmp_path / "scene.tif", SIZE)
    features = polygons_in_pixels()
    write_vector(tmp_path / "all.gpkg", features=features)
    import pyogrio

    # add a split attribute: rewrite with two fields
    meta, fids, wkb, (classes,) = pyogrio.raw.read(tmp_path / "all.gpkg", return_fids=True)
    split = np.array(["val" if i in HELD else "train" for i in range(len(features))], dtype=object)
    pyogrio.raw.write(tmp_path / "split.gpkg", wkb, [classes, split], fields=["class", "split"], crs=meta["crs"],
                      geometry_type="Unknown", driver="GPKG", promote_to_multi=False)
    cfg = scene_data_config(tmp_path, vector="split.gpkg", val={"vector": "split.gpkg", "where": "split = 'val'"})
    cfg["scenes"]["labels"]["where"] = "split = 'train'"
    config = validate({"data": cfg, "model": {"width": 8, "depth": 3}, "train": {"crop_size": WINDOW, "iters": 1}})
    train = load_scenes(config.data, progress=False)
    expected = _rasterised(TRAIN)
    expected[_reference() != 255] = 255
    np.testing.assert_array_equal(train.counts, np.bincount(expected[expected != 255], minlength=3))
    regions = load_regions(config.data, "val", progress=False)
    labels = _reference()
    np.testing.assert_array_equal(regions.counts, np.bincount(labels[labels != 255], minlength=3))
