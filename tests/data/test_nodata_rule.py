"""One invalid-pixel rule for every reader of pixels (SPEC 4): a model trained with nodata zeroed is
served zeros at nodata, whatever value the file stores there, in training, evaluation and
prediction alike."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from co2s.config.loader import validate
from co2s.data.dataset import WholeImages
from co2s.data.raster import RasterReader, Window, model_input
from co2s.data.scenes import LabelledSceneCrops, load_scenes, scene_pools
from co2s.data.sources import read_split
from co2s.engine.checkpoint import write_model_checkpoint
from co2s.inference.predict import predict_files
from co2s.inference.segmenter import Segmenter
from co2s.models.factory import build_models
from tests.conftest import weak_params

SHAPE = (3, 150, 170)
BORDER = 40


def _write(path, image, nodata):
    with rasterio.open(path, "w", driver="GTiff", height=image.shape[1], width=image.shape[2],
                       count=image.shape[0], dtype=image.dtype, nodata=nodata, crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, 10, 10), tiled=True, blockxsize=64,
                       blockysize=64) as dst:
        dst.write(image)
    return path


def _image(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "uint16":
        return rng.integers(200, 9000, SHAPE).astype(np.uint16)
    return rng.uniform(0.05, 0.6, SHAPE).astype(np.float32)


def _border() -> np.ndarray:
    border = np.ones(SHAPE[1:], bool)
    border[BORDER:-BORDER, BORDER:-BORDER] = False
    return border


def _model(tmp_path, scale="auto") -> Segmenter:
    config = validate({"data": {"root": str(tmp_path), "classes": ["a", "b", "c"], "scale": scale},
                       "model": {"width": 8, "depth": 3}, "train": {"crop_size": 48, "iters": 1}})
    torch.manual_seed(3)
    models = build_models(config)
    for p in models["model"].parameters():  # a model whose every weight matters
        torch.nn.init.normal_(p, 0, 0.5)
    return write_model_checkpoint(tmp_path / "model.ckpt", config, models)


def _classes(checkpoint, raster, out):
    (result,) = predict_files(checkpoint, [str(raster)], out, device="cpu", progress=False)
    assert result.error is None, result.error
    with rasterio.open(out / f"{raster.stem}_classes.tif") as src:
        return src.read(1)


@pytest.mark.parametrize("dtype, nodata", [("uint16", 65535), ("float32", -9999.0), ("float32", np.nan)])
def test_a_nodata_border_predicts_as_the_same_border_written_as_zero(tmp_path, dtype, nodata):
    checkpoint = _model(tmp_path)
    image, border = _image(dtype), _border()
    declared = image.copy()
    declared[:, border] = nodata
    zeros = image.copy()
    zeros[:, border] = 0
    a = _classes(checkpoint, _write(tmp_path / "declared.tif", declared, nodata), tmp_path / "a")
    b = _classes(checkpoint, _write(tmp_path / "zeros.tif", zeros, 0), tmp_path / "b")
    assert (a[border] == 255).all() and (b[border] == 255).all()  # nodata stays nodata
    np.testing.assert_array_equal(a, b)

    if np.isnan(nodata):
        return
    # the test can tell: the raw nodata value fed to the model changes valid pixels near the border
    segmenter = Segmenter.load(checkpoint)
    raw = np.nan_to_num(declared.astype(np.float32) / (65535 if dtype == "uint16" else 1), nan=0.0)
    fed_raw = segmenter.predict(raw).classes
    assert (fed_raw[~border] != b[~border]).mean() > 0.01


def test_a_band_masked_alone_is_zeroed_and_the_pixel_stays_valid():
    raw = np.full((3, 2, 2), 7, np.uint16)
    masked = np.zeros((3, 2, 2), bool)
    masked[0, 0, 0] = True  # one band has no data here: the pixel still has data
    masked[:, 1, 1] = True  # every band masked: invalid
    image, valid = model_input(raw, masked, scale=1)
    assert valid.tolist() == [[True, True], [True, False]]
    assert image[0, 0, 0] == 0 and image[1, 0, 0] == 7 and (image[:, 1, 1] == 0).all()
    # float: a band that is not finite makes the pixel invalid
    floats = np.ones((2, 2, 2), np.float32)
    floats[1, 0, 1] = np.inf
    image, valid = model_input(floats, None, scale=1)
    assert valid.tolist() == [[True, False], [True, True]] and np.isfinite(image).all()


def test_training_evaluation_and_prediction_read_the_same_pixels(tmp_path):
    """A uint16 tile with nodata 65535: the evaluation dataset's image, a training crop of the
    same file as a scene, and the prediction reader give the same model input."""
    image = _image("uint16")
    image[:, _border()] = 65535
    (tmp_path / "images").mkdir()
    path = _write(tmp_path / "images" / "t.tif", image, 65535)
    _write(tmp_path / "m.tif", np.ones((1, *SHAPE[1:]), np.uint8), None)  # every pixel class 1
    (tmp_path / "list.txt").write_text("images/t.tif m.tif\n")
    config = validate({"data": {"root": str(tmp_path), "classes": ["a", "b"],
                                "splits": {"test": "list.txt"}},
                       "train": {"crop_size": 48, "iters": 1}})
    evaluated = WholeImages(read_split("list.txt", config.data, labelled=True), config.data)[0]
    with RasterReader(path) as reader:
        predicted, valid = reader.read()
    assert torch.equal(evaluated["image"], torch.from_numpy(predicted))
    assert (evaluated["mask"][torch.from_numpy(~valid)] == 255).all()
    assert (predicted[:, ~valid] == 0).all() and predicted.max() < 9000 / 65535 + 1e-6

    scenes = validate({"data": {"root": str(tmp_path), "classes": ["a", "b"],
                                "scenes": {"rasters": ["images/t.tif"], "labels": {"raster": ["m.tif"]}}},
                       "train": {"crop_size": 48, "iters": 1, "scale_range": [1.0, 1.0]}})
    pool, _ = scene_pools(load_scenes(scenes.data, progress=False), scenes.data, 48)
    crops = LabelledSceneCrops(pool, weak_params((48, 48), scale_range=(1.0, 1.0), hflip_p=0.0))
    scene = crops.set.scenes[0]
    window = Window(10, 20, 48, 48)
    crop, crop_valid = scene.read(window, window.shape)
    rows, cols = window.slices
    np.testing.assert_array_equal(crop, predicted[:, rows, cols])
    np.testing.assert_array_equal(crop_valid, valid[rows, cols])


@pytest.mark.parametrize("dtype, nodata", [("uint8", 0), ("float32", float("nan")), ("int16", -9999)])
def test_a_mask_s_nodata_labels_nothing_in_tiles_as_in_scenes(tmp_path, dtype, nodata):
    """A GeoTIFF mask with a nodata value (QGIS's "Rasterize" writes 0 by default, here outside the
    labelled area, whose classes are 1 and 2) labels nothing there, whether it is a tile's mask or
    a scene's: the same pixels are ``ignore_index`` in the training, evaluation and data-check
    readers and in a scene crop. Read as values, nodata 0 would be trained as class "a" unseen."""
    from co2s.data.sources import validate_samples
    from co2s.data.labels import LabelEncoder

    rng = np.random.default_rng(4)
    classes = rng.integers(1, 3, SHAPE[1:])
    unlabelled = _border()
    stored = classes.astype(dtype)
    stored[unlabelled] = nodata
    (tmp_path / "images").mkdir()
    _write(tmp_path / "images" / "t.tif", _image("uint16"), None)
    _write(tmp_path / "m.tif", stored[None], nodata)
    (tmp_path / "list.txt").write_text("images/t.tif m.tif\n")
    config = validate({"data": {"root": str(tmp_path), "classes": ["a", "b", "c"], "splits": {"test": "list.txt"}},
                       "train": {"crop_size": 48, "iters": 1}})
    expected = np.where(unlabelled, 255, classes)
    samples = read_split("list.txt", config.data, labelled=True)
    np.testing.assert_array_equal(WholeImages(samples, config.data)[0]["mask"].numpy(), expected)
    stats = validate_samples(samples, LabelEncoder.from_config(config.data), "full")
    assert stats.ignored == unlabelled.sum() and stats.counts.tolist() == np.bincount(
        classes[~unlabelled], minlength=3).tolist()

    scenes = validate({"data": {"root": str(tmp_path), "classes": ["a", "b", "c"],
                                "scenes": {"rasters": ["images/t.tif"], "labels": {"raster": ["m.tif"]}}},
                       "train": {"crop_size": 48, "iters": 1, "scale_range": [1.0, 1.0]}})
    scene = load_scenes(scenes.data, progress=False).scenes[0]
    window = Window(10, 20, 48, 48)
    _, valid = scene.read(window, window.shape)
    rows, cols = window.slices
    np.testing.assert_array_equal(scene.labels_of(window, window.shape, valid, 255), expected[rows, cols])
