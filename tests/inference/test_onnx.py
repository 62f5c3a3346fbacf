"""ONNX export of a Segmenter (co2s.inference.onnx_export): onnxruntime gives torch's probabilities,
for the built-in CNN, a tiny student of each backbone (CLIP, DINOv3 with RoPE, DINOv2 with
interpolated position embeddings) and a two-student fusion. Needs the ``onnx`` extra."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from co2s.errors import Co2sError
from co2s.inference.onnx_export import export_onnx
from tests.models.harness import FUSION_CASE, MODEL_CASES, NUM_CLASSES, build_segmenter


def _require(module: str):
    return pytest.importorskip(module, reason=f"{module} not installed (the onnx extra: pip install -e '.[onnx]')")

TILE = 48  # 3 x 3 patches of the tiny ViTs
TOLERANCE = 1e-4  # max abs difference of probabilities

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


@pytest.mark.parametrize("case,prediction,batch_size", CASES)
def test_onnxruntime_matches_torch(case, prediction, batch_size, tmp_path):
    onnx, ort = _require("onnx"), _require("onnxruntime")
    _require("onnxscript")
    segmenter = build_segmenter(case, prediction=prediction)
    path = export_onnx(segmenter, tmp_path / "model.onnx", tile=TILE, batch_size=batch_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporaries left
    assert not segmenter.training
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image,), (probabilities,) = session.get_inputs(), session.get_outputs()
    assert image.name == "image" and probabilities.name == "probabilities"
    assert image.type == "tensor(float)" and image.shape[1:] == [3, TILE, TILE]
    assert image.shape[0] == (batch_size or "batch")
    n = batch_size or 3  # a dynamic batch: another size than the export's example (2)
    x = torch.rand(n, 3, TILE, TILE)
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = segmenter(x).numpy()
    assert got.shape == expected.shape == (n, NUM_CLASSES, TILE, TILE)
    diff = float(np.abs(got - expected).max())
    print(f"{segmenter.prediction}: max |onnx - torch| = {diff:.2e}, {path.stat().st_size / 1e6:.2f} MB")
    assert diff <= TOLERANCE
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["co2s.prediction"] == segmenter.prediction
    assert json.loads(meta["co2s.classes"]) == segmenter.classes and meta["co2s.tile"] == str(TILE)


def test_export_without_the_onnx_extra_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises ImportError
    with pytest.raises(Co2sError, match=r"pip install 'co2s\[onnx\]'"):
        export_onnx(build_segmenter(_BY_ID["lite_unet"]), tmp_path / "m.onnx", tile=32)
    assert not list(tmp_path.iterdir())
