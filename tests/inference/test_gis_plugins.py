"""model.onnx in the GIS plugins that run ONNX segmentation models: its metadata read through
onnxruntime's ``custom_metadata_map`` and parsed the way QGIS Deepness parses it (json.loads, then
the cast its code applies), its input fed as Deepness feeds one (tile / 255, then its
standardisation), and GeoDeep (the package on PyPI, same keys) running it on a GeoTIFF against
``co2s predict``. Deepness itself runs inside QGIS, which is not installed here."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch

import co2s
from co2s.inference.onnx_export import IR_VERSION, export_onnx
from tests.inference.scenes import synthetic_scene, write_raster
from tests.models.harness import FUSION_CASE, MODEL_CASES, NUM_CLASSES, build_segmenter

TILE = 48
_BY_ID = {c.id: c for c in MODEL_CASES}


def _require(module: str):
    return pytest.importorskip(module, reason=f"{module} not installed (pip install -e '.[dev]')")


def deepness_config(session) -> dict:
    """The metadata as Deepness's ModelBase reads it: every key json.loads'ed, then cast."""
    meta = session.get_modelmeta().custom_metadata_map
    names = json.loads(meta["class_names"])
    names = [names] if isinstance(names, dict) else names
    for per_output in names:  # Deepness requires ids 0, 1, 2, ... without a gap
        assert sorted(int(k) for k in per_output) == list(range(len(per_output)))
    return {
        "model_type": str(json.loads(meta["model_type"])).capitalize(),
        "class_names": [{int(k): v for k, v in d.items()} for d in names],
        "resolution": float(json.loads(meta["resolution"])) if "resolution" in meta else None,
        "tiles_size": int(json.loads(meta["tiles_size"])),
        "tiles_overlap": int(json.loads(meta["tiles_overlap"])),
        "seg_thresh": float(json.loads(meta["seg_thresh"])),
        "seg_small_segment": int(json.loads(meta["seg_small_segment"])),
        "mean": [float(x) for x in json.loads(meta["standardization_mean"])],
        "std": [float(x) for x in json.loads(meta["standardization_std"])],
    }


def deepness_segment(session, config: dict, tiles_hwc: np.ndarray) -> np.ndarray:
    """Deepness's segmentation of a batch of uint8 tiles [N, H, W, C]: limit channels, / 255,
    standardise, NHWC -> NCHW, run, threshold each output, argmax."""
    channels = session.get_inputs()[0].shape[1]
    x = np.float32(tiles_hwc[..., :channels] * (1.0 / 255.0))
    x = (x - np.array(config["mean"], np.float32)) / np.array(config["std"], np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2)})
    masks = []
    for result in outputs:
        result = result.copy()
        result[result < config["seg_thresh"]] = 0.0
        masks.append(result.argmax(1))
    return np.stack(masks)


@pytest.mark.parametrize("case", [pytest.param(_BY_ID["lite_unet"], id="lite_unet"),
                                  pytest.param(FUSION_CASE, id="two-students", marks=pytest.mark.slow)])
def test_deepness_reads_every_key_and_gets_co2s_classes(case, tmp_path):
    ort = _require("onnxruntime")
    _require("onnxscript")
    onnx = _require("onnx")
    segmenter = build_segmenter(case, prediction="confidence" if case is FUSION_CASE else None)
    segmenter.contract = segmenter.contract.model_copy(update={"gsd": 0.3})
    path = export_onnx(segmenter, tmp_path / "model.onnx", tile=TILE, scale=255)
    assert onnx.load(str(path), load_external_data=False).ir_version <= IR_VERSION  # onnxruntime 1.17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    config = deepness_config(session)
    stride = segmenter.tiling(TILE)[1]
    assert config == {
        "model_type": "Segmentor", "class_names": [dict(enumerate(segmenter.classes))], "resolution": 30.0,
        "tiles_size": TILE, "tiles_overlap": round(100 * (TILE - stride) / TILE), "seg_thresh": 0.0,
        "seg_small_segment": 0, "mean": [0.0] * 3, "std": [1.0] * 3}
    (image,), outputs = session.get_inputs(), session.get_outputs()
    assert image.shape == ["batch", 3, TILE, TILE]  # Deepness takes the tile size from here, batch free
    assert [o.name for o in outputs] == ["probabilities"]  # one output: one layer in Deepness
    assert outputs[0].shape[1:] == [NUM_CLASSES, TILE, TILE]

    tiles = np.random.default_rng(0).integers(0, 256, (2, TILE, TILE, 3), dtype=np.uint8)
    (mask,) = deepness_segment(session, config, tiles)
    with torch.no_grad():
        probabilities = segmenter(torch.from_numpy(tiles.transpose(0, 3, 1, 2) / 255).float())
    top2 = probabilities.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1] > 1e-5).numpy()
    assert decided.mean() > 0.95
    np.testing.assert_array_equal(mask[decided], probabilities.argmax(1).numpy()[decided])


def test_export_without_a_ground_sample_distance_says_so(trained, tmp_path):
    _require("onnxscript")
    ckpt, _, _ = trained
    with pytest.warns(UserWarning, match="no resolution key.*--gsd METRES"):
        written = co2s.export(ckpt, tmp_path / "model", onnx=True, scale=255)
    ort = _require("onnxruntime")
    meta = ort.InferenceSession(str(written["onnx"])).get_modelmeta().custom_metadata_map
    assert "resolution" not in meta and json.loads(meta["co2s.gsd"]) is None
    assert "resolution" in (tmp_path / "model" / "README.md").read_text()  # the card says it is unknown


@pytest.mark.slow
def test_geodeep_runs_the_exported_model_like_co2s_predict(trained, tmp_path):
    """GeoDeep's own tiling (its overlap from tiles_overlap, centre crops) and its 5 x 5 median
    filter against co2s predict's Hann-blended logits, on a 10 m GeoTIFF with the model's
    resolution: the share of pixels with the same class (docs/prediction.md states it)."""
    _require("onnxscript")
    geodeep = _require("geodeep")
    from geodeep.inference import create_session

    ckpt, config, _ = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ground sample distance is given: no warning
        written = co2s.export(ckpt, tmp_path / "model", onnx=True, scale=255, gsd=10.0)
    _, geodeep_config = create_session(str(written["onnx"]))
    assert geodeep_config["model_type"] == "Segmentor" and geodeep_config["resolution"] == 1000.0
    assert geodeep_config["class_names"] == {str(i): c for i, c in enumerate(config.data.classes)}
    assert geodeep_config["tiles_size"] == config.tiling[0] and geodeep_config["seg_small_segment"] == 0

    image, labels = synthetic_scene(500, 620, seed=7, cell=70)
    scene = write_raster(tmp_path / "scene.tif", image, tiled=True, blockxsize=256, blockysize=256)
    mask = geodeep.segment(str(scene), str(written["onnx"]), output_type="raw")
    (result,) = co2s.predict(written["folder"], [scene], tmp_path / "out", progress=False)
    with rasterio.open(result.outputs[0]) as src:
        classes = src.read(1)
    assert mask.shape == classes.shape
    agreement = float((mask == classes).mean())
    print(f"GeoDeep and co2s predict agree on {agreement:.4f} of the pixels; co2s predict is right on "
          f"{(classes == labels).mean():.4f}, GeoDeep on {(mask == labels).mean():.4f}")
    assert agreement > 0.97
    assert (classes == labels).mean() > 0.9  # the comparison is between two maps that read the scene
