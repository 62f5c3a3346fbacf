"""Whole-scene prediction of GeoTIFFs: georeferencing, nodata, colour table, equality with
whole-image sliding-window inference, options, and one clear message per bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from co2s.cli.main import main
from co2s.config.loader import validate
from co2s.data.raster import RasterReader, scale_image
from co2s.engine.checkpoint import write_model_checkpoint
from co2s.errors import Co2sError
from co2s.inference.fusion import class_probabilities
from co2s.inference.predict import predict_files
from co2s.inference.scene import NODATA, PredictOptions
from co2s.inference.tiling import blend_weight, overlap_to_stride

from co2s.inference import streaming
from co2s.models.factory import build_models
from tests.inference.oracle import sliding_window_logits
from tests.conftest import tiny_config_dict
from tests.inference.scenes import TRANSFORM, synthetic_scene, write_raster

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_probabilities(models: dict, image: np.ndarray, config, prediction: str, tile=None, overlap=None,
                            scale="auto") -> torch.Tensor:
    """Whole-image sliding-window inference over the full array with the same grid and weight."""
    tile, stride = overlap_to_stride(*config.tiling, tile, overlap)
    x = torch.from_numpy(scale_image(image, scale))[None]
    weight = blend_weight(min(tile, x.shape[2]), min(tile, x.shape[3]))
    with torch.no_grad():
        logits = {name: sliding_window_logits(m, x, config.data.num_classes, tile, stride, 8, weight)
                  for name, m in models.items()}
    return class_probabilities(logits, prediction)[0]


def assert_same_prediction(classes: np.ndarray, probs: torch.Tensor, valid: np.ndarray, confidence=None):
    """Equal classes wherever the reference's top two probabilities are not a near tie."""
    top2 = probs.topk(2, dim=0).values
    decided = (top2[0] - top2[1]).numpy() > 1e-5
    assert decided[valid].mean() > 0.99  # random-weight students are close to uniform: more near ties
    expected = probs.argmax(0).numpy()
    np.testing.assert_array_equal(classes[valid & decided], expected[valid & decided])
    if confidence is not None:
        np.testing.assert_allclose(confidence[valid], probs.max(0).values.numpy()[valid], rtol=0, atol=1e-5)


def read_band(path):
    with rasterio.open(path) as src:
        return src.read(1)


def _no_second_read(self, *args, **kwargs):
    raise AssertionError("the valid pixels were read again: the prediction's reads give them")


@pytest.mark.parametrize("panel_width", [4096, 768])  # one panel; four panels
def test_scene_keeps_georeferencing_and_nodata_and_equals_whole_image_inference(trained, tmp_path, panel_width,
                                                                                monkeypatch):
    monkeypatch.setattr(streaming, "PANEL_WIDTH", panel_width)
    monkeypatch.setattr(RasterReader, "valid", _no_second_read)
    ckpt, config, model = trained
    image, truth = synthetic_scene(700, 2500)
    image[:, 100:400, 300:900] = 0  # a nodata hole
    image[:, :, 2400:] = 0  # and a nodata strip along the right edge
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0)

    [result] = predict_files(ckpt, [str(scene)], tmp_path / "out", device="cpu", progress=False,
                             options=PredictOptions(confidence=True))
    assert result.error is None and not result.warnings
    out = tmp_path / "out" / "scene_classes.tif"
    assert result.outputs == [out, tmp_path / "out" / "scene_confidence.tif"]
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32633 and src.transform == TRANSFORM
        assert (src.width, src.height, src.count, src.dtypes[0]) == (2500, 700, 1, "uint8")
        assert src.nodata == NODATA
        assert src.profile["tiled"] and src.profile["compress"] == "deflate"
        colormap = src.colormap(1)
        classes = src.read(1)
    assert [colormap[i][:3] for i in range(3)] == [tuple(c) for c in config.data.palette]
    valid = image.max(0) > 0
    assert (classes[~valid] == NODATA).all() and (classes[valid] < 3).all()

    probs = reference_probabilities({"model": model}, image, config, "model")
    assert_same_prediction(classes, probs, valid, read_band(tmp_path / "out" / "scene_confidence.tif"))
    assert (classes[valid] == truth[valid]).mean() > 0.9  # the model really reads the colours


def test_two_tile_sizes_agree(trained, tmp_path):
    """Blending hides the tiling: the default 192 px tiles and 256 px tiles agree. (How far a model
    depends on the tile size is its own property: this CNN's GroupNorm sees whole tiles.)"""
    ckpt, _, _ = trained
    scene = write_raster(tmp_path / "scene.tif", synthetic_scene(600, 900, seed=3)[0])
    for tile in (192, 256):
        [r] = predict_files(ckpt, [str(scene)], tmp_path / str(tile), device="cpu", progress=False,
                            options=PredictOptions(tile=tile))
        assert r.error is None
    a, b = read_band(tmp_path / "192" / "scene_classes.tif"), read_band(tmp_path / "256" / "scene_classes.tif")
    assert (a == b).mean() >= 0.995


def test_confidence_preview_overviews_and_tta(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "PANEL_WIDTH", 1024)  # three panels
    ckpt, config, model = trained
    image = synthetic_scene(300, 2600, seed=4)[0]
    image[:, :50, :50] = 0
    scene = write_raster(tmp_path / "wide.tif", image, nodata=0)
    options = PredictOptions(confidence=True, preview=True, overviews=True, tta=True, overlap=0.25)
    [r] = predict_files(ckpt, [str(scene)], tmp_path / "out", device="cpu", progress=False, options=options)
    assert r.error is None
    conf = read_band(tmp_path / "out" / "wide_confidence.tif")
    assert np.isnan(conf[:50, :50]).all()
    valid = ~np.isnan(conf)
    assert conf[valid].min() >= 1 / 3 - 1e-6 and conf[valid].max() <= 1
    with rasterio.open(tmp_path / "out" / "wide_classes.tif") as src:
        assert src.overviews(1) == [2, 4, 8]
        classes = src.read(1)
    with Image.open(tmp_path / "out" / "wide_preview.png") as img:
        assert img.mode == "RGBA" and img.size == (1300, 150)  # 2600 px > 2048: every 2nd pixel
        preview = np.asarray(img)
    assert (preview[:25, :25, 3] == 0).all()  # nodata is transparent
    palette = np.array(config.data.palette)
    np.testing.assert_array_equal(preview[30:, 30:, :3], palette[classes[::2, ::2][30:, 30:]])

    def mirrored(tiles):  # the TTA reference, written independently of tile_logits
        return (model(tiles) + model(tiles.flip(-1)).flip(-1)) / 2

    probs = reference_probabilities({"model": mirrored}, image, config, "model", overlap=0.25)
    assert_same_prediction(classes, probs, valid, conf)
    plain = reference_probabilities({"model": model}, image, config, "model", overlap=0.25)
    assert not torch.allclose(plain, probs)  # TTA really changed the result


def tiny_pair_config(tmp_path, **eval_):
    """The config of ``models/co2s-tiny`` (a CLIP and a DINOv3 student) at test size."""
    cfg = tiny_config_dict(tmp_path, tmp_path / "run", crop_size=64)
    cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    cfg["train"]["method"] = "co2s"
    cfg["eval"] = {**cfg.get("eval", {}), **eval_}
    cfg.pop("model")
    from co2s.config.loader import _load_raw
    from co2s.config.merge import merge_configs

    return validate(merge_configs(_load_raw("models/co2s-tiny")[0], cfg))


def test_two_student_fusion_equals_whole_image_inference(tmp_path):
    config = tiny_pair_config(tmp_path)
    torch.manual_seed(0)
    models = {name: m.eval() for name, m in build_models(config).items()}
    ckpt = write_model_checkpoint(tmp_path / "pair.ckpt", config, models)
    image = synthetic_scene(150, 230, seed=5)[0]
    scene = write_raster(tmp_path / "pair.tif", image)
    for prediction in ("confidence", "mean", "dino"):
        [r] = predict_files(ckpt, [str(scene)], tmp_path / prediction, device="cpu", progress=False,
                            prediction=prediction, options=PredictOptions(confidence=True))
        assert r.error is None
        classes = read_band(tmp_path / prediction / "pair_classes.tif")
        conf = read_band(tmp_path / prediction / "pair_confidence.tif")
        probs = reference_probabilities(models, image, config, prediction)
        assert_same_prediction(classes, probs, np.ones(classes.shape, bool), conf)


def test_auto_prediction_is_the_models_own_choice(tmp_path):
    """``--prediction auto`` (what evaluate and export accept) predicts what the model's contract
    chose, in predict_files and Segmenter.predict alike, instead of being refused as unknown."""
    from co2s.inference.segmenter import Segmenter

    config = tiny_pair_config(tmp_path, prediction="dino")
    torch.manual_seed(0)
    models = {name: m.eval() for name, m in build_models(config).items()}
    ckpt = write_model_checkpoint(tmp_path / "pair.ckpt", config, models)
    image = synthetic_scene(96, 120, seed=5)[0]
    scene = write_raster(tmp_path / "pair.tif", image)
    [r] = predict_files(ckpt, [str(scene)], tmp_path / "auto", device="cpu", progress=False, prediction="auto")
    assert r.error is None
    classes = read_band(tmp_path / "auto" / "pair_classes.tif")
    assert_same_prediction(classes, reference_probabilities(models, image, config, "dino"), np.ones(classes.shape, bool))
    assert not np.array_equal(classes, reference_probabilities(models, image, config, "clip").argmax(0).numpy())
    segmenter = Segmenter.load(ckpt)
    assert segmenter.resolve("auto") == segmenter.resolve(None) == "dino"
    x = torch.from_numpy(scale_image(image, "auto"))
    assert np.array_equal(segmenter.predict(x, "auto").classes, segmenter.predict(x, "dino").classes)


def test_band_selection_and_uint16_scaling(trained, tmp_path):
    _, config, model = trained
    selected = config.model_copy(update={"data": config.data.model_copy(update={"bands": [3, 1, 2]})})
    ckpt = write_model_checkpoint(tmp_path / "bands.ckpt", selected, {"model": model})
    rgb = synthetic_scene(200, 300, seed=6)[0].astype(np.uint16) * 257
    stored = np.stack([rgb[1], rgb[2], rgb[0], rgb[0] // 2])  # band 3 is red, band 1 green, band 2 blue
    scene = write_raster(tmp_path / "multi.tif", stored)
    [r] = predict_files(ckpt, [str(scene)], tmp_path / "out", device="cpu", progress=False)
    assert r.error is None
    classes = read_band(tmp_path / "out" / "multi_classes.tif")
    probs = reference_probabilities({"model": model}, stored[[2, 0, 1]], config, "model")
    assert_same_prediction(classes, probs, np.ones(classes.shape, bool))
    assert (classes == probs.argmax(0).numpy()).mean() > 0.999


def write_two_variable_netcdf(path, height=3, width=4):
    """A classic netCDF file holding two variables: GDAL opens it as 0 bands and 2 subdatasets."""
    import struct

    def i32(v):
        return struct.pack(">i", v)

    def name(s):
        return i32(len(s)) + s.encode() + b"\0" * (-len(s) % 4)

    absent, size = i32(0) + i32(0), 4 * height * width
    dims = i32(10) + i32(2) + name("y") + i32(height) + name("x") + i32(width)

    def header(begin):
        variables = b"".join(name(v) + i32(2) + i32(0) + i32(1) + absent + i32(5) + i32(size)
                             + i32(begin + k * size) for k, v in enumerate("ab"))
        return b"CDF\x01" + i32(0) + dims + absent + i32(11) + i32(2) + variables

    path.write_bytes(header(len(header(0))) + np.zeros(2 * height * width, ">f4").tobytes())


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_bad_inputs_each_give_one_clear_message_and_leave_nothing(trained, tmp_path, capsys):
    ckpt, _, _ = trained
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    image = synthetic_scene(64, 80)[0]
    write_raster(scenes / "good.tif", image)
    (scenes / "text.tif").write_text("not a raster")
    write_raster(scenes / "four.tif", np.concatenate([image, image[:1]]), photometric="MINISBLACK")
    write_raster(scenes / "empty.tif", np.zeros_like(image), nodata=0)
    write_raster(scenes / "nocrs.tif", image, crs=None)
    write_two_variable_netcdf(scenes / "container.nc")
    Image.fromarray(np.stack([image[0], np.full_like(image[0], 255)], axis=-1), "LA").save(scenes / "grey.png")
    out = tmp_path / "out"
    results = {r.source.name: r for r in predict_files(
        ckpt, [str(scenes), *map(str, [scenes / "missing.tif", scenes / "container.nc"])], out,
        device="cpu", progress=False)}

    assert f"image not found: {scenes / 'missing.tif'}" in results["missing.tif"].error
    assert f"cannot read raster {scenes / 'text.tif'}" in results["text.tif"].error
    assert f"{scenes / 'four.tif'}: has 4 band(s) but the model was trained on 3" in results["four.tif"].error
    # a grey photo with alpha: one band (the alpha is which pixels hold data), and the message says so
    assert (f"{scenes / 'grey.png'}: has 1 band(s) (and 1 alpha band(s), read as which pixels hold data) but "
            "the model was trained on 3") in results["grey.png"].error
    assert f"{scenes / 'container.nc'}: the raster has no bands: it holds 2 subdatasets" in results["container.nc"].error
    # an all-nodata raster is predicted as all nodata, with a warning
    assert results["empty.tif"].error is None and "every pixel is nodata" in results["empty.tif"].warnings[0]
    assert (read_band(out / "empty_classes.tif") == NODATA).all()
    # no CRS: still predicted, with a warning, and the output has none either
    assert results["nocrs.tif"].error is None and "has no CRS" in results["nocrs.tif"].warnings[0]
    with rasterio.open(out / "nocrs_classes.tif") as src:
        assert src.crs is None
    assert results["good.tif"].error is None and not results["good.tif"].warnings
    assert _files(out) == ["empty_classes.tif", "good_classes.tif", "nocrs_classes.tif"]

    # the command line: failures reported, the others predicted, exit status 1
    code = main(["predict", "--checkpoint", str(ckpt), str(scenes), "--out", str(tmp_path / "cli"),
                 "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: " in captured.err and "text.tif" in captured.err and "warning: " in captured.err
    assert "3 of 6 image(s) predicted" in captured.out  # the folder: .nc is not a scene suffix


def test_failure_midway_leaves_no_partial_file(trained, tmp_path, monkeypatch):
    from co2s.errors import DataError

    ckpt, _, _ = trained
    scene = write_raster(tmp_path / "scene.tif", synthetic_scene(600, 300)[0])
    real_read, calls = RasterReader.read, []

    def failing_read(self, *window):
        calls.append(window)
        if len(calls) == 3:
            raise DataError(f"{self.path}: cannot read a window: simulated I/O error")
        return real_read(self, *window)

    monkeypatch.setattr(RasterReader, "read", failing_read)
    out = tmp_path / "out"
    [r] = predict_files(ckpt, [str(scene)], out, device="cpu", progress=False,
                        options=PredictOptions(confidence=True, preview=True))
    assert "simulated I/O error" in r.error
    assert _files(out) == []  # the temporary files are gone, no output looks complete


def test_output_folder_that_cannot_be_written(trained, tmp_path):
    ckpt, _, _ = trained
    scene = write_raster(tmp_path / "scene.tif", synthetic_scene(64, 64)[0])
    (tmp_path / "file").write_text("")
    with pytest.raises(Co2sError, match="cannot create output folder .*file/out"):
        predict_files(ckpt, [str(scene)], tmp_path / "file" / "out", device="cpu", progress=False)
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(Co2sError, match="cannot write to output folder .*locked"):
            predict_files(ckpt, [str(scene)], locked, device="cpu", progress=False)
        assert _files(locked) == []
    finally:
        locked.chmod(0o700)


def test_plain_images_still_give_pngs(trained, tmp_path):
    ckpt, config, model = trained
    image = synthetic_scene(90, 140, seed=7)[0]
    Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / "photo.png")
    [r] = predict_files(ckpt, [str(tmp_path / "photo.png")], tmp_path / "out", device="cpu", progress=False)
    assert [p.name for p in r.outputs] == ["photo.png", "photo_color.png"]
    with Image.open(r.outputs[0]) as img:
        classes = np.asarray(img)
    assert_same_prediction(classes, reference_probabilities({"model": model}, image, config, "model"),
                           np.ones(classes.shape, bool))


def test_a_raster_placed_by_gcps_or_rpcs_gives_outputs_placed_the_same_way(trained, tmp_path):
    """Sentinel-1 GRD and scans placed in QGIS's Georeferencer carry ground control points, L1
    satellite products RPCs, instead of a geotransform: the class raster carries the same, so it
    lands where its input does (before, it was written as a bare pixel grid, said to have no CRS)."""
    from rasterio.control import GroundControlPoint
    from rasterio.rpc import RPC

    ckpt, _, _ = trained
    image = synthetic_scene(64, 80)[0]
    gcps = [GroundControlPoint(row, col, 500000 + 10 * col, 4000000 - 10 * row, id=f"p{i}")
            for i, (row, col) in enumerate([(0, 0), (0, 80), (64, 0), (64, 80)])]
    coefficients = [1.0] + [0.0] * 19
    rpcs = RPC(height_off=100, height_scale=500, lat_off=45, lat_scale=0.01, line_den_coeff=coefficients,
               line_num_coeff=[0.0, 0.0, -1.0] + [0.0] * 17, line_off=32, line_scale=32, long_off=7,
               long_scale=0.01, samp_den_coeff=coefficients, samp_num_coeff=[0.0, 1.0] + [0.0] * 18,
               samp_off=40, samp_scale=40)
    write_raster(tmp_path / "mapped.tif", image)
    with rasterio.open(tmp_path / "gcps.tif", "w", driver="GTiff", height=64, width=80, count=image.shape[0],
                       dtype=image.dtype, gcps=gcps, crs="EPSG:32633") as dst:  # the CRS of the GCPs
        dst.write(image)
    write_raster(tmp_path / "rpcs.tif", image, crs=None, rpcs=rpcs)
    out = tmp_path / "out"
    results = {r.source.name: r for r in predict_files(
        ckpt, [str(tmp_path / n) for n in ("mapped.tif", "gcps.tif", "rpcs.tif")], out, device="cpu",
        progress=False)}
    assert "placed by ground control points" in results["gcps.tif"].warnings[0]
    assert "placed by RPCs" in results["rpcs.tif"].warnings[0]
    with rasterio.open(out / "gcps_classes.tif") as src:
        written, crs = src.gcps
        assert crs == "EPSG:32633" and src.transform.is_identity
        assert [(p.row, p.col, p.x, p.y) for p in written] == [(p.row, p.col, p.x, p.y) for p in gcps]
    with rasterio.open(out / "rpcs_classes.tif") as src:
        assert src.rpcs is not None
        written = src.rpcs.to_dict()
        for key, value in rpcs.to_dict().items():
            if value is not None:  # GDAL writes the unset error terms as -1
                assert written[key] == pytest.approx(value), key
    mapped = read_band(out / "mapped_classes.tif")
    assert (read_band(out / "gcps_classes.tif") == mapped).all() and (read_band(out / "rpcs_classes.tif") == mapped).all()


def test_a_png_or_jpeg_with_a_world_file_is_predicted_as_a_placed_raster(trained, tmp_path):
    """Orthophoto tiles shipped as JPEG or PNG with a world file (``.jgw``/``.pgw``/``.wld``) and a
    ``.aux.xml`` (the CRS), as GDAL writes them with WORLDFILE=YES: predicted into a GeoTIFF placed
    as the input is; the same pixels without them give the plain PNGs. Before, the georeferenced
    tile also gave a bare PNG, its placement lost without a word."""
    ckpt, _, _ = trained
    image = synthetic_scene(64, 80)[0]
    transform = rasterio.transform.from_origin(500000, 4000000, 0.5, 0.5)
    (tmp_path / "placed").mkdir()
    (tmp_path / "bare").mkdir()
    with rasterio.open(tmp_path / "placed" / "tile.png", "w", driver="PNG", width=80, height=64, count=3,
                       dtype="uint8", crs="EPSG:32633", transform=transform, WORLDFILE="YES") as dst:
        dst.write(image)
    assert sorted(p.name for p in (tmp_path / "placed").iterdir()) == ["tile.png", "tile.png.aux.xml", "tile.wld"]
    Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / "bare" / "tile.png")
    for folder in ("placed", "bare"):
        results = predict_files(ckpt, [str(tmp_path / folder / "tile.png")], tmp_path / f"out_{folder}",
                                device="cpu", progress=False)
        assert results[0].error is None, results[0].error
    assert _files(tmp_path / "out_bare") == ["tile.png", "tile_color.png"]
    assert _files(tmp_path / "out_placed") == ["tile_classes.tif"]
    with rasterio.open(tmp_path / "out_placed" / "tile_classes.tif") as src:
        assert src.crs == "EPSG:32633" and src.transform == transform
        placed = src.read(1)
    assert (placed == np.asarray(Image.open(tmp_path / "out_bare" / "tile.png"))).all()
