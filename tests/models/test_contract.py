"""The inference contract of model folders and checkpoints: what loading reads, what it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import co2s
from co2s.config.loader import load_config, validate
from co2s.config.migrate import Co2sDeprecationWarning
from co2s.errors import CheckpointError, Co2sError, ConfigError
from co2s.models.factory import build_models
from co2s.models.loading import MODEL_CONFIG
from tests.compat.make_v1_fixtures import OUT

FOLDER = OUT / "co2s_pair" / "best.ckpt"


@pytest.fixture
def folder(tmp_path):
    return co2s.export(FOLDER, tmp_path / "model")["folder"]


def _edit(folder, change):
    path = folder / MODEL_CONFIG
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("change, message", [
    (lambda r: r["contract"]["normalisation"]["cnn"].update(mean=[0.5, 0.5, 0.5]),
     "normalisation.cnn of the contract .* disagrees with the weights"),
    (lambda r: r["contract"].update(version=99), "contract version 99 is newer"),
    (lambda r: r.update(format_version="2"), "format_version must be an integer"),
    (lambda r: r.update(format_version=3), "written by a newer co2s"),
    (lambda r: r["contract"].update(prediction="median"), "field prediction|is not one of"),
    (lambda r: r["contract"].update(palette=[[0, 0, 0]]), "palette: 1 colours for 3 classes"),
    (lambda r: r["contract"]["architectures"]["cnn"].update(kind="transformer"), "architectures.cnn.kind: must be one of lite_unet, student"),
    (lambda r: r["contract"]["architectures"]["clip"].update(guidance="words"), "architectures.clip.guidance: must be one of text, queries, none"),
    (lambda r: r["contract"].pop("tiling"), "field tiling"),
    (lambda r: r["contract"].update(scale=255.0, auto_scale=65535.0), "auto_scale 65535.0 is given for scale 255.0"),
    (lambda r: r["contract"].update(auto_scale=0.0), "field auto_scale"),
])
def test_a_contract_that_is_wrong_or_newer_is_refused_in_one_line(folder, change, message):
    _edit(folder, change)
    with pytest.raises(CheckpointError, match=message) as info:
        co2s.Segmenter.load(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_the_contract_says_how_to_use_the_model(folder):
    segmenter = co2s.Segmenter.load(folder, prediction="cnn")
    contract = segmenter.contract
    assert contract.prediction == "cnn" and contract.tiling.window == 32 and contract.tiling.stride == 26
    assert contract.bands is None and contract.scale == "auto" and contract.in_channels == 3
    assert contract.architectures["clip"]["backbone"]["skips"] == "value"
    for name, model in segmenter.models.items():
        assert contract.normalisation[name].std == model.std.flatten().tolist()
    with pytest.raises(ConfigError, match="is an exported model folder"):
        segmenter.training_config


def test_a_checkpoint_and_a_folder_of_today_predict_alike(tmp_path):
    config = validate({"data": {"root": str(tmp_path), "classes": ["a", "b"], "bands": [3, 1, 2]},
                       "model": {"width": 8, "depth": 2}, "train": {"crop_size": 48, "iters": 1},
                       "eval": {"window": 40, "stride": 30}})
    from co2s.engine.checkpoint import write_model_checkpoint

    ckpt = write_model_checkpoint(tmp_path / "m.ckpt", config, build_models(config))
    a = co2s.Segmenter.load(ckpt)
    folder = co2s.export(ckpt, tmp_path / "folder")["folder"]
    b = co2s.Segmenter.load(folder)
    text = (folder / MODEL_CONFIG).read_text()
    assert str(tmp_path) not in text and json.loads(text)["training_config"]["data"]["root"] == tmp_path.name
    assert a.contract == b.contract and (a.tile, a.stride, a.bands) == (40, 30, [3, 1, 2])
    x = torch.rand(3, 50, 70)
    np.testing.assert_array_equal(a.predict(x).classes, b.predict(x).classes)
    assert a.training_config.eval.window == 40


def test_old_spelling_of_a_key_is_accepted_with_a_deprecation_message(tmp_path):
    yaml = tmp_path / "run.yaml"
    yaml.write_text("preset: [ai4mars, models/co2s-tiny]\ntrain: {method: co2s, semi: {fusion: mean}}\n"
                    "data: {splits: {unlabelled: u.txt}}\n")
    with pytest.warns(Co2sDeprecationWarning, match="train.semi.fusion is deprecated .* use eval.prediction"):
        config = load_config(str(yaml))
    assert config.eval.prediction == "mean"
    with pytest.warns(Co2sDeprecationWarning):
        assert load_config(str(yaml), ["train.semi.fusion=dino"]).eval.prediction == "dino"
    with pytest.raises(ConfigError, match="disagree"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_config(str(yaml), ["eval.prediction=clip"])


@pytest.mark.slow
def test_predicting_evaluating_and_exporting_do_not_import_the_engine(tmp_path):
    """`import co2s; co2s.Segmenter` and the predict, evaluate and export commands leave Lightning
    Fabric (the training engine) unimported."""
    from PIL import Image

    Image.new("RGB", (40, 30), (90, 120, 30)).save(tmp_path / "a.png")
    code = f"""
import sys, co2s
co2s.Segmenter
assert "lightning_fabric" not in sys.modules, "import co2s; co2s.Segmenter imported the engine"
assert "torchmetrics" not in sys.modules, "import co2s; co2s.Segmenter imported torchmetrics"
from co2s.cli.main import main
ckpt = {str(FOLDER)!r}
assert main(["predict", "--checkpoint", ckpt, {str(tmp_path / 'a.png')!r}, "--out", {str(tmp_path / 'p')!r},
             "--no-progress"]) == 0
assert main(["export", ckpt, "--out", {str(tmp_path / 'e')!r}]) == 0
main(["evaluate", "--checkpoint", ckpt, "--no-progress"])  # the stored data is gone: an error, no engine
print(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning_fabric", "lightning")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _tiny_checkpoint(tmp_path):
    from co2s.engine.checkpoint import write_model_checkpoint

    config = validate({"data": {"root": str(tmp_path), "classes": ["a", "b"]}, "model": {"width": 8, "depth": 2},
                       "train": {"crop_size": 32, "iters": 1}})
    return write_model_checkpoint(tmp_path / "m.ckpt", config, build_models(config))


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


@pytest.mark.parametrize("change, message", [
    (lambda c: c["contract"]["tiling"].update(window=10**6), "field tiling: window 1000000 must be"),
    (lambda c: c["contract"]["architectures"]["model"].update(width=10**5), "architectures.model.width: must be"),
    (lambda c: c["contract"]["architectures"]["model"].update(width=16), "'model.stem.0.weight' has shape"),
    (lambda c: c["model"].update({"classifier.weight": _nan(c["model"]["classifier.weight"])}),
     "'model.classifier.weight' holds NaN"),
    (lambda c: c["model"].update({"stem.0.weight": c["model"]["stem.0.weight"].int()}), "must be floating point"),
    (lambda c: c.pop("model"), "the model 'model' is missing"),
    (lambda c: c.update(step="many"), "step must be"),
])
def test_a_checkpoint_out_of_bounds_or_disagreeing_with_its_weights_is_refused(tmp_path, change, message):
    """A checkpoint's contract and weights are read as a folder's are: bounded, then checked against
    each other before anything is loaded."""
    ckpt = _tiny_checkpoint(tmp_path)
    record = torch.load(ckpt, weights_only=True)
    change(record)
    torch.save(record, ckpt)
    with pytest.raises(CheckpointError, match=message) as info:
        co2s.Segmenter.load(ckpt)
    assert str(ckpt) in str(info.value) and "\n" not in str(info.value)


def test_auto_prediction_resolves_to_the_validation_winner_else_the_confidence_fusion():
    from co2s.config.schema import UNVALIDATED_FUSION, best_on_validation, resolve_prediction

    pair = ["clip", "cnn"]
    assert UNVALIDATED_FUSION == "confidence"
    assert resolve_prediction(None, pair) == resolve_prediction("auto", pair) == UNVALIDATED_FUSION
    assert resolve_prediction(None, pair, validated="cnn") == resolve_prediction("auto", pair, "cnn") == "cnn"
    assert resolve_prediction("mean", pair, validated="cnn") == "mean"  # a fixed choice stays fixed
    assert resolve_prediction("auto", pair, validated="dino") == UNVALIDATED_FUSION  # not this pair's
    assert resolve_prediction("auto", ["model"]) == resolve_prediction(None, ["model"]) == "model"
    with pytest.raises(Co2sError, match="unknown prediction 'median'"):
        resolve_prediction("median", pair)
    nan = float("nan")
    assert best_on_validation({"clip": 30.0, "cnn": 41.0, "mean": 41.0, "confidence": nan}) == "cnn"
    assert best_on_validation({"clip": nan, "mean": 12.0}) == "mean"
    assert best_on_validation({"clip": nan}) is None
