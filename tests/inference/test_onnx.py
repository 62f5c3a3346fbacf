"""ONNX export of a Segmenter (co2s.inference.onnx_export): band values / 255 in; onnxruntime gives
torch's probabilities (and with ``logits`` per-student logits) for the built-in CNN, a tiny student
of each backbone (CLIP, DINOv3 with RoPE, DINOv2 with interpolated position embeddings) and a
two-student fusion; the onnxruntime recipe of docs/prediction.md reproduces ``co2s predict``; the
file holds no path of the machine that wrote it. Needs the ``onnx`` extra. The metadata QGIS
Deepness and GeoDeep read, and GeoDeep running the file: tests/inference/test_gis_plugins.py."""

from __future__ import annotations

import json
import re
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import co2s
from co2s.config.loader import load_config
from co2s.errors import Co2sError
from co2s.inference.fusion import fuse
from co2s.inference.onnx_export import export_onnx, graph_scale
from co2s.inference.segmenter import Segmenter
from co2s.models.factory import build_models
from tests.conftest import REPO, tiny_config_dict
from tests.models.harness import FUSION_CASE, MODEL_CASES, NUM_CLASSES, build_segmenter

DOCS = REPO / "docs" / "prediction.md"
TILE = 48  # 3 x 3 patches of the tiny ViTs
# Bounds: about twice the largest |onnxruntime - torch| measured here (docs/prediction.md): logits
# 1.43e-6 (the tiny pair, test_measured_tolerance), probabilities 3.3e-7 (dinov2, tile 48)
LOGITS_TOLERANCE = 3e-6
PROBABILITY_TOLERANCE = 7e-7
#: share of pixels whose confidence fusion takes the other student (measured 1.5e-5: one pixel of
#: 65536); a count of pixels, so a few pixels of room rather than twice one
JUMPS = 1e-4
#: the confidence fusion's choice is a tie within rounding where the students' top probabilities
#: are closer than this; there onnxruntime and torch may take different students
TIE = 1e-5

_BY_ID = {c.id: c for c in MODEL_CASES}
_SLOW = pytest.mark.slow  # each export takes 10-40 s on 2 cores (torch.export + decompositions)
# (case, prediction, fixed batch size or None for a dynamic batch dimension); the quick run
# (-m "not slow") exports the CNN and the DINOv3 student (RoPE), the full one every backbone
CASES = [
    pytest.param(_BY_ID["lite_unet"], None, 1, id="lite_unet"),
    pytest.param(_BY_ID["dinov3-vlg-queries"], None, None, id="dinov3-vlg-queries"),
    pytest.param(_BY_ID["clip-vlg-text"], None, None, id="clip-vlg-text", marks=_SLOW),
    pytest.param(_BY_ID["dinov2-deeplabv3plus"], None, None, id="dinov2-deeplabv3plus", marks=_SLOW),
    pytest.param(FUSION_CASE, "confidence", None, id="fusion-clip-dinov3-confidence", marks=_SLOW),
]


def _require(module: str):
    return pytest.importorskip(module, reason=f"{module} not installed (the onnx extra: pip install -e '.[onnx]')")


def _session(path: Path):
    ort = _require("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _raw_tiles(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 band values as float32 (the graph takes them divided by 255)."""
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed)).float()


def _clear(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Pixels ``[..., H, W]`` where the confidence fusion's choice is not a rounding tie (class axis -3)."""
    return np.abs(pa.max(-3) - pb.max(-3)) > TIE


def _machine_paths() -> list[str]:
    """Paths of this machine an exported file must not contain."""
    paths = {str(REPO), str(Path.home()), str(Path(torch.__file__).parents[1])}
    paths |= {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return sorted(p for p in paths if len(p) > 4)


@pytest.mark.parametrize("case,prediction,batch_size", CASES)
def test_onnxruntime_matches_torch(case, prediction, batch_size, tmp_path):
    onnx = _require("onnx")
    _require("onnxscript")
    segmenter = build_segmenter(case, prediction=prediction)
    path = export_onnx(segmenter, tmp_path / "model.onnx", tile=TILE, batch_size=batch_size, scale=255, logits=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporaries left
    assert not segmenter.training
    session = _session(path)
    names = segmenter.prediction_models
    (image,), outputs = session.get_inputs(), session.get_outputs()
    assert image.name == "image" and [o.name for o in outputs] == ["probabilities", *(f"logits_{n}" for n in names)]
    assert image.type == "tensor(float)" and image.shape[1:] == [3, TILE, TILE]
    assert image.shape[0] == (batch_size or "batch")
    n = batch_size or 3  # a dynamic batch: another size than the export's example (2)
    raw = _raw_tiles(n, TILE)
    got = dict(zip([o.name for o in outputs], session.run(None, {"image": (raw / 255).numpy()})))
    with torch.no_grad():  # the graph gives back the values and divides by the scale; the models normalise
        scaled = raw / 255
        logits = {name: segmenter.models[name](scaled).numpy() for name in names}
        expected = segmenter(scaled).numpy()
    assert got["probabilities"].shape == expected.shape == (n, NUM_CLASSES, TILE, TILE)
    logits_diff = max(float(np.abs(got[f"logits_{name}"] - logits[name]).max()) for name in names)
    diff = np.abs(got["probabilities"] - expected).max(1)
    if segmenter.prediction == "confidence":
        pa, pb = (torch.from_numpy(z).softmax(1).numpy() for z in logits.values())
        clear = _clear(pa, pb)
        assert clear.mean() > 0.99
        diff = diff[clear]
    print(f"{segmenter.prediction}: max |onnx - torch| of logits {logits_diff:.2e}, of probabilities "
          f"{diff.max():.2e}; {path.stat().st_size / 1e6:.2f} MB")
    assert logits_diff <= LOGITS_TOLERANCE and float(diff.max()) <= PROBABILITY_TOLERANCE

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["co2s.prediction"] == segmenter.prediction
    assert json.loads(meta["co2s.classes"]) == segmenter.classes and meta["co2s.tile"] == str(TILE)
    assert json.loads(meta["co2s.scale"]) == 255 and json.loads(meta["co2s.bands"]) == segmenter.bands
    assert json.loads(meta["co2s.outputs"]) == [o.name for o in outputs]
    assert json.loads(meta["co2s.normalisation"]) == {
        name: segmenter.contract.normalisation[name].model_dump() for name in names}
    plugin_keys = {"model_type", "class_names", "tiles_size", "tile_size", "tiles_overlap", "seg_thresh",
                   "seg_small_segment", "standardization_mean", "standardization_std"}
    assert {key for key in meta if not key.startswith("co2s.")} == plugin_keys  # nothing of the exporter's

    data = path.read_bytes()
    for machine_path in _machine_paths():
        assert machine_path.encode() not in data, f"{path} holds {machine_path}"
    assert b"pkg.torch" not in data and b"stack_trace" not in data


def test_scale_auto_takes_the_training_images_scale_or_the_one_given():
    """``auto`` follows each file's data type, which a float32 graph input cannot show: the graph
    divides by the training images' (``auto_scale``), by the one given, or the export is refused."""
    contract = Segmenter.load(REPO / "tests" / "compat" / "v1" / "lite_unet" / "best.ckpt").contract
    auto, recorded = contract, contract.model_copy(update={"auto_scale": 255.0})
    number = contract.model_copy(update={"scale": 255.0})
    assert auto.scale == "auto" and auto.auto_scale is None  # saved before contracts recorded it
    with pytest.raises(Co2sError, match=r"--scale 255"):
        graph_scale(auto, None)
    assert graph_scale(auto, 65535) == 65535.0
    assert graph_scale(recorded, None) == 255.0 and graph_scale(recorded, 65535) == 65535.0  # other imagery
    assert graph_scale(number, None) == graph_scale(number, 255) == 255.0
    with pytest.raises(Co2sError, match=r"divided by 255.0; --scale 65535"):
        graph_scale(number, 65535)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(Co2sError, match="positive number"):
            graph_scale(recorded, bad)


def test_a_trained_model_exports_with_its_training_images_scale(tmp_path, tiny_dataset):
    """uint8 PNG tiles: the run records 255, and ``--onnx`` needs no ``--scale``."""
    ort = _require("onnxruntime")
    _require("onnxscript")
    from co2s.cli.main import main

    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=2, val_every=2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "tiny.yaml"), "--no-progress"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no ground sample distance: said elsewhere
        written = co2s.export(tmp_path / "run" / "latest.ckpt", tmp_path / "model", onnx=True)
    meta = ort.InferenceSession(str(written["onnx"])).get_modelmeta().custom_metadata_map
    assert json.loads(meta["co2s.scale"]) == 255.0
    with pytest.warns(UserWarning, match=r"divided by 255 \(their data type's range\); model.onnx divides by 65535"
                      ) as caught:
        co2s.export(tmp_path / "run" / "latest.ckpt", tmp_path / "uint16", onnx=True, scale=65535)  # other imagery
    assert {w.filename for w in caught if "divided by" in str(w.message)} == {__file__}  # the caller's line


def test_export_refuses_auto_scale_before_writing_anything(tmp_path):
    checkpoint = REPO / "tests" / "compat" / "v1" / "lite_unet" / "best.ckpt"
    assert Segmenter.load(checkpoint).scale == "auto"
    with pytest.raises(Co2sError, match=r"--scale"):
        co2s.export(checkpoint, tmp_path / "model", onnx=True)
    with pytest.raises(Co2sError, match=r"with --onnx"):
        co2s.export(checkpoint, tmp_path / "model", scale=255)
    assert not (tmp_path / "model").exists()


def test_export_without_the_onnx_extra_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises ImportError
    with pytest.raises(Co2sError, match=r"pip install 'co2s\[onnx\]'"):
        export_onnx(build_segmenter(_BY_ID["lite_unet"]), tmp_path / "m.onnx", tile=32, scale=255)
    assert not list(tmp_path.iterdir())


@_SLOW
def test_measured_tolerance(tmp_path):
    """The differences docs/prediction.md states: the tiny pair (models/co2s-tiny, random weights,
    confidence fusion), tile 128, 4 batches of 4 random uint8 tiles. Run with -s to see them."""
    _require("onnxscript")
    tile = 128
    torch.manual_seed(0)
    config = load_config(["demo", "models/co2s-tiny"])
    segmenter = Segmenter.from_config(build_models(config), config, "confidence").eval()
    session = _session(export_onnx(segmenter, tmp_path / "model.onnx", tile=tile, scale=255, logits=True))
    worst = dict.fromkeys(["logits", "softmax", "mean", "confidence", "jumps", "jump", "jump gap", "argmax flips"],
                          0.0)
    for seed in range(4):
        raw = _raw_tiles(4, tile, seed)
        probabilities, *onnx_logits = session.run(None, {"image": (raw / 255).numpy()})
        with torch.no_grad():
            logits = [segmenter.models[name](raw / 255) for name in segmenter.prediction_models]
        ours = [torch.from_numpy(z) for z in onnx_logits]
        expected = fuse(*logits, "confidence").numpy()
        ca, cb = (z.softmax(1).amax(1).numpy() for z in logits)
        diff = np.abs(probabilities - expected).max(1)
        jumps = diff > TIE  # the graph's fusion took the other student's distribution
        measured = {
            "logits": max(float((a - b).abs().max()) for a, b in zip(ours, logits)),
            "softmax": max(float((a.softmax(1) - b.softmax(1)).abs().max()) for a, b in zip(ours, logits)),
            "mean": float((fuse(*ours, "mean") - fuse(*logits, "mean")).abs().max()),
            "confidence": float(diff[~jumps].max()),
            "jumps": float(jumps.mean()),
            "jump": float(diff[jumps].max(initial=0.0)),
            "jump gap": float(np.abs(ca - cb)[jumps].max(initial=0.0)),  # how close to a tie they were
            "argmax flips": float((probabilities.argmax(1) != expected.argmax(1)).mean()),
        }
        worst = {key: max(worst[key], measured[key]) for key in worst}
    print("max |onnxruntime - torch|:", ", ".join(f"{key} {value:.2e}" for key, value in worst.items()))
    assert worst["logits"] <= LOGITS_TOLERANCE
    assert max(worst["softmax"], worst["mean"], worst["confidence"]) <= PROBABILITY_TOLERANCE
    assert worst["jump gap"] <= TIE  # only where the students are equally confident up to rounding
    assert worst["jumps"] <= JUMPS and worst["argmax flips"] <= worst["jumps"]


def _docs_recipe() -> str:
    """The onnxruntime recipe of docs/prediction.md: the python block that opens a session."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    recipes = [b for b in blocks if "ort.InferenceSession" in b]
    assert len(recipes) == 1, "docs/prediction.md should hold one onnxruntime recipe"
    return recipes[0]


def _write_scene(path: Path, height: int, width: int) -> None:
    """A uint16 three-band GeoTIFF, nodata 0 in a corner larger than a tile (a tile co2s skips)."""
    import rasterio
    from rasterio.transform import Affine

    rng = np.random.default_rng(1)
    data = rng.integers(1, 65535, (3, height, width), dtype=np.uint16)
    data[:, :56, :60] = 0
    data[1, 70:80, 70:80] = 0  # one band masked: its value is 0, the pixel still valid
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint16",
                       nodata=0, crs="EPSG:32633", transform=Affine(1, 0, 500000, 0, -1, 4000000)) as dst:
        dst.write(data)


@_SLOW
def test_docs_recipe_reproduces_co2s_predict(tmp_path):
    """The recipe's text, run as written on an exported pair (confidence fusion) and a uint16
    GeoTIFF (scale auto, exported with 65535), gives co2s predict's classes and confidences."""
    import rasterio

    _require("onnxscript")
    _require("onnxruntime")
    segmenter = build_segmenter(FUSION_CASE)
    assert segmenter.prediction == "confidence" and segmenter.scale == "auto"
    model = export_onnx(segmenter, tmp_path / "model.onnx", tile=TILE, scale=65535, logits=True)
    scene = tmp_path / "scene.tif"
    _write_scene(scene, 100, 130)
    (result,) = co2s.predict(segmenter, [scene], tmp_path / "out", tile=TILE, confidence=True, progress=False)
    assert result.error is None
    with rasterio.open(result.outputs[0]) as src:
        classes = src.read(1)
    with rasterio.open(tmp_path / "out" / "scene_confidence.tif") as src:
        confidence = src.read(1)

    recipe = _docs_recipe()
    for placeholder, actual in (("models/mars/model.onnx", model), ("scene.tif", scene)):
        assert recipe.count(f'"{placeholder}"') == 1
        recipe = recipe.replace(f'"{placeholder}"', repr(str(actual)))
    namespace: dict = {}
    exec(compile(recipe, str(DOCS), "exec"), namespace)

    valid = classes != 255
    assert valid.mean() < 0.9 and np.array_equal(namespace["valid"], valid)
    assert np.array_equal(namespace["labels"] == 255, ~valid)
    blended = {name: torch.from_numpy(s / namespace["norm"]) for name, s in namespace["sums"].items()}
    pa, pb = (z.softmax(0).numpy() for z in blended.values())
    top2 = np.sort(namespace["probabilities"], axis=0)[-2:]
    clear = _clear(pa[None], pb[None])[0] & (top2[1] - top2[0] > TIE) & valid  # no rounding tie decides
    got = namespace["labels"]
    print(f"classes differ at {(got != classes)[valid].mean():.2e} of valid pixels, "
          f"ties {(~clear & valid).mean():.2e}; max confidence difference "
          f"{np.abs(namespace['confidence'] - confidence)[clear].max():.2e}")
    assert np.array_equal(got[clear], classes[clear])
    assert float(np.abs(namespace["confidence"] - confidence)[clear].max()) <= PROBABILITY_TOLERANCE
    assert np.isnan(namespace["confidence"][~valid]).all() and np.isnan(confidence[~valid]).all()
    assert (~clear & valid).mean() < 0.01
