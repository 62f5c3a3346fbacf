"""Models written by the release before the inference contract (format 1: checkpoint and exported
folder of a lite_unet, a Co2S pair and a scene-trained model, ``make_v1_fixtures.py``) keep loading
and predict what that release predicted (to float rounding: another build of torch or transformers
may move a probability by 1e-7, never more than 1e-5); exporting them again gives a folder of today's
format that loads through its contract alone."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import rasterio

import co2s
from co2s.models.loading import MODEL_CONFIG, read_checkpoint
from tests.compat.make_v1_fixtures import OUT, seeded_image, write_input_scene

FIXTURES = ["lite_unet", "co2s_pair", "scene_lite_unet"]
KINDS = {"ckpt": "best.ckpt", "folder": "model"}


def _assert_same(classes, confidence, expected_classes, expected_confidence, what: str) -> None:
    """The same prediction to float rounding: every probability within 1e-5, and a class may differ
    only where the old prediction was a near tie of its two best classes (its top probability then
    at most one half), on under 1 % of the pixels."""
    np.testing.assert_allclose(confidence, expected_confidence, rtol=0, atol=1e-5, err_msg=what)
    flipped = np.asarray(classes) != np.asarray(expected_classes)
    assert flipped.mean() < 0.01, f"{what}: {flipped.sum()} pixels changed class"
    assert (np.asarray(expected_confidence)[flipped] <= 0.5 + 1e-4).all(), f"{what}: a decided pixel changed class"


def _check_predictions(segmenter, expected, kind: str, scene, out) -> None:
    assert segmenter.prediction == str(expected[f"{kind}/prediction"])
    for choice, p in segmenter.predict_many(seeded_image(), segmenter.choices).items():
        _assert_same(p.classes, p.confidence, expected[f"{kind}/{choice}/classes"],
                     expected[f"{kind}/{choice}/confidence"], choice)
    co2s.predict(segmenter, [scene], out, progress=False, confidence=True)
    with rasterio.open(out / "input_classes.tif") as classes, rasterio.open(out / "input_confidence.tif") as conf:
        _assert_same(classes.read(1), conf.read(1), expected[f"{kind}/scene/classes"],
                     expected[f"{kind}/scene/confidence"], "scene")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", FIXTURES)
def test_format_1_models_load_and_predict_identically(name, kind, tmp_path):
    expected = np.load(OUT / name / "expected.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stored old spelling is migrated quietly
        segmenter = co2s.Segmenter.load(OUT / name / KINDS[kind])
    _check_predictions(segmenter, expected, kind, write_input_scene(tmp_path / "input.tif"), tmp_path / "out")


@pytest.mark.parametrize("name", FIXTURES)
def test_format_1_exported_again_loads_by_its_contract_alone(name, tmp_path, monkeypatch):
    expected = np.load(OUT / name / "expected.npz")
    folder = co2s.export(OUT / name / "best.ckpt", tmp_path / "model")["folder"]
    record = json.loads((folder / MODEL_CONFIG).read_text())
    assert record["format_version"] == 2 and record["contract"]["classes"] == ["c0", "c1", "c2"]
    # the old checkpoint's stored config held the author's absolute paths: none travels
    strings = []

    def walk(value):
        if isinstance(value, dict):
            [walk(v) for v in value.values()]
        elif isinstance(value, list):
            [walk(v) for v in value]
        elif isinstance(value, str):
            strings.append(value)

    walk(record)
    assert any("tmp" in s for s in json.dumps(read_checkpoint(OUT / name / "best.ckpt")["config"]).split('"'))
    assert not [s for s in strings if os.path.isabs(s) or s.startswith("~")]

    def no_config(*args, **kwargs):
        raise AssertionError("the training config was read")

    monkeypatch.setattr("co2s.config.loader.validate", no_config)
    segmenter = co2s.Segmenter.load(folder)
    _check_predictions(segmenter, expected, "ckpt", write_input_scene(tmp_path / "input.tif"), tmp_path / "out")


def test_format_1_checkpoint_keeps_its_training_config_migrated():
    pair = co2s.Segmenter.load(OUT / "co2s_pair" / "best.ckpt").training_config
    assert pair.eval.prediction == "confidence"  # train.semi.fusion, moved
    assert pair.train.method == "co2s" and [s.name for s in pair.model.students] == ["clip", "cnn"]
    # a single model's meaningless old fusion value is dropped, not turned into an invalid prediction
    assert co2s.Segmenter.load(OUT / "lite_unet" / "best.ckpt").training_config.eval.prediction is None
