"""`co2s predict` and `co2s evaluate` never write over what they read: every output path is checked
before anything is computed (an output that is an input, two outputs of one call on the same path,
an existing file without --overwrite), the metrics of each split have their own file, and a shared
model folder is never written into. Each case: one line, exit 2, and no file of the folder changed;
or success that writes only what was asked. The same rules hold in the Python API."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image
from rasterio.transform import from_origin

from co2s import api
from co2s.cli.main import main
from co2s.config.loader import validate
from co2s.engine.checkpoint import write_model_checkpoint
from co2s.errors import Co2sError
from co2s.evaluation import metrics_file
from co2s.models.factory import build_models
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) and the hash of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def added(before: dict, after: dict) -> list[str]:
    """Files written by a command that may only add: every earlier file is unchanged."""
    assert {k: after.get(k) for k in before} == before, "a file that existed before changed or vanished"
    return sorted(set(after) - set(before))


@pytest.fixture
def model(tiny_dataset, tmp_path):
    """A tiny model's training checkpoint in its run folder (untrained weights are enough here),
    the run's config file, and the model folder exported from it."""
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run")
    cfg["eval"]["window"] = 32
    torch.manual_seed(0)
    config = validate(cfg)
    run = tmp_path / "run"
    run.mkdir()
    ckpt = write_model_checkpoint(run / "best.ckpt", config, build_models(config))
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    folder = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(folder)]) == 0
    return ckpt, config_file, folder


def tiles(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(folder / name)
    return folder


def scene(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(1).integers(1, 255, (3, 40, 50), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=40, width=50, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000.0, 5000000.0, 10.0, 10.0)) as dst:
        dst.write(image)
    return path


def refused(capsys, argv: list[str], root: Path, *needles: str) -> str:
    """Run the CLI; it must stop with exit 2 and one line naming the file, and change nothing under root."""
    capsys.readouterr()
    before = tree(root)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert tree(root) == before
    return lines[0]


def predict(ckpt, *args) -> list[str]:
    return ["predict", "--checkpoint", str(ckpt), *map(str, args), "--no-progress", "--device", "cpu"]


# -- predict ---------------------------------------------------------------------------------------


def test_predict_into_the_folder_of_its_png_inputs_is_refused(model, tmp_path, capsys):
    ckpt, _, _ = model
    folder = tiles(tmp_path / "tiles", ["tile_0112.png", "tile_0113.png", "tile_0114.png"])
    line = refused(capsys, predict(ckpt, folder, "--out", folder), tmp_path, "tile_0112.png", "is one of the inputs")
    assert "--out" in line
    # --overwrite replaces earlier outputs, never an input
    refused(capsys, predict(ckpt, folder, "--out", folder, "--overwrite"), tmp_path, "tile_0112.png",
            "is one of the inputs")
    # the same input given as a file inside the folder
    refused(capsys, predict(ckpt, folder / "tile_0113.png", "--out", folder), tmp_path, "tile_0113.png")
    # the folder reached through a symbolic link, and an input hard-linked into the output folder
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    refused(capsys, predict(ckpt, folder, "--out", tmp_path / "link", "--overwrite"), tmp_path, "tile_0112.png",
            "is one of the inputs")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tile_0114.png").hardlink_to(folder / "tile_0114.png")
    refused(capsys, predict(ckpt, folder, "--out", tmp_path / "out", "--overwrite"), tmp_path, "tile_0114.png",
            "is one of the inputs")


def test_predict_scene_into_its_own_folder_never_reads_back_its_outputs(model, tmp_path, capsys):
    ckpt, _, _ = model
    scenes = tmp_path / "scenes"
    scene(scenes / "area.tif")
    before = tree(tmp_path)
    assert main(predict(ckpt, scenes, "--out", scenes, "--confidence", "--preview")) == 0
    assert added(before, tree(tmp_path)) == ["scenes/area_classes.tif", "scenes/area_confidence.tif",
                                             "scenes/area_preview.png"]
    # the folder now holds the earlier outputs: as inputs of the next call they are never written over
    for flag in ([], ["--overwrite"]):
        refused(capsys, predict(ckpt, scenes, "--out", scenes, *flag), tmp_path, "area_classes.tif",
                "is one of the inputs")


def test_an_earlier_output_is_replaced_only_with_overwrite(model, tmp_path, capsys):
    ckpt, _, _ = model
    inputs = tiles(tmp_path / "in", ["a.png", "b.png"])
    scene(inputs / "s.tif")
    out = tmp_path / "out"
    before = tree(tmp_path)
    assert main(predict(ckpt, inputs, "--out", out)) == 0
    assert added(before, tree(tmp_path)) == ["out/a.png", "out/a_color.png", "out/b.png", "out/b_color.png",
                                             "out/s_classes.tif"]
    refused(capsys, predict(ckpt, inputs / "a.png", "--out", out), tmp_path, str(out / "a.png"), "exists",
            "--overwrite")
    refused(capsys, predict(ckpt, inputs / "s.tif", "--out", out), tmp_path, "s_classes.tif", "exists")
    # a new output file of a scene is refused too when only its class raster existed
    (out / "s_classes.tif").unlink()
    (out / "s_preview.png").write_bytes(b"earlier")
    refused(capsys, predict(ckpt, inputs / "s.tif", "--out", out, "--preview"), tmp_path, "s_preview.png",
            "exists")

    before = tree(tmp_path)
    assert main(predict(ckpt, inputs, "--out", out, "--overwrite", "--preview")) == 0
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out/")} == \
        {k: v for k, v in before.items() if not k.startswith("out/")}  # the inputs are untouched
    assert sorted(k for k in after if k.startswith("out/")) == [
        "out/a.png", "out/a_color.png", "out/b.png", "out/b_color.png", "out/s_classes.tif", "out/s_preview.png"]
    assert after["out/s_preview.png"] != before["out/s_preview.png"]


def test_two_inputs_that_would_write_the_same_file_are_refused(model, tmp_path, capsys):
    ckpt, _, _ = model
    inputs = tiles(tmp_path / "in", ["a.png", "a_color.png"])  # the colour preview of a is a_color.png
    refused(capsys, predict(ckpt, inputs, "--out", tmp_path / "out"), tmp_path, "a_color.png", "twice")
    assert not (tmp_path / "out").exists()
    # the same name in two folders
    tiles(tmp_path / "other", ["a.png"])
    refused(capsys, predict(ckpt, inputs / "a.png", tmp_path / "other" / "a.png", "--out", tmp_path / "out",
                            "--overwrite"), tmp_path, "a.png", "twice")


# -- evaluate --------------------------------------------------------------------------------------


def evaluate(*args) -> list[str]:
    return ["evaluate", *map(str, args), "--no-progress", "--device", "cpu"]


def test_each_split_has_its_own_metrics_file(model, tmp_path, capsys):
    ckpt, _, _ = model
    before = tree(tmp_path)
    assert main(evaluate("--checkpoint", ckpt, "--split", "val")) == 0
    assert added(before, tree(tmp_path)) == ["run/metrics_val.json"]
    before = tree(tmp_path)
    assert main(evaluate("--checkpoint", ckpt, "--split", "test")) == 0
    assert added(before, tree(tmp_path)) == ["run/metrics_test.json"]  # metrics_val.json intact
    assert [json.loads((tmp_path / "run" / metrics_file(s)).read_text())["split"] for s in ("val", "test")] == \
        ["val", "test"]
    assert metrics_file("test") == "metrics_test.json"
    # the same split again: refused without --overwrite, replaced with it
    refused(capsys, evaluate("--checkpoint", ckpt, "--split", "test"), tmp_path, "metrics_test.json", "exists",
            "--overwrite")
    before = tree(tmp_path)
    assert main(evaluate("--checkpoint", ckpt, "--split", "test", "--overwrite")) == 0
    assert added(before, tree(tmp_path)) == []
    # never over the checkpoint itself, even with --overwrite
    refused(capsys, evaluate("--checkpoint", ckpt, "--out", ckpt, "--overwrite"), tmp_path, "best.ckpt")
    shutil.copyfile(ckpt, tmp_path / "run" / "copy.json")
    refused(capsys, evaluate("--checkpoint", tmp_path / "run" / "copy.json", "--out", tmp_path / "run" / "copy.json",
                             "--overwrite"), tmp_path, "copy.json", "is one of the inputs")


def test_evaluating_a_model_folder_writes_into_the_current_folder(model, tmp_path, capsys, monkeypatch):
    ckpt, config_file, folder = model
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    before = tree(tmp_path)
    assert main(evaluate(config_file, "--checkpoint", folder)) == 0
    assert added(before, tree(tmp_path)) == ["cwd/metrics_test.json"]  # nothing inside the model folder
    assert f"metrics written to {cwd / 'metrics_test.json'}" in capsys.readouterr().out
    # --out DIR chooses the folder, a model folder included when named
    before = tree(tmp_path)
    assert main(evaluate(config_file, "--checkpoint", folder, "--split", "val", "--out", tmp_path / "m")) == 0
    assert main(evaluate(config_file, "--checkpoint", folder, "--split", "val", "--out", folder)) == 0
    assert added(before, tree(tmp_path)) == ["exported/metrics_val.json", "m/metrics_val.json"]
    # a file of the model folder is never the metrics file
    refused(capsys, evaluate(config_file, "--checkpoint", folder, "--out", folder / "co2s_model.json", "--overwrite"),
            tmp_path, "co2s_model.json", "is one of the inputs")
    # run from inside the model folder, the default (the current folder) would be the model folder
    monkeypatch.chdir(folder)
    refused(capsys, evaluate(config_file, "--checkpoint", ".", "--split", "test"), tmp_path, "model folder", "--out")


# -- the Python API --------------------------------------------------------------------------------


def test_the_python_api_follows_the_same_rules(model, tmp_path, monkeypatch):
    ckpt, config_file, folder = model
    inputs = tiles(tmp_path / "in", ["a.png", "b.png"])
    before = tree(tmp_path)
    for extra in ({}, {"overwrite": True}):
        with pytest.raises(Co2sError, match="a.png is one of the inputs"):
            api.predict(ckpt, [inputs], inputs, device="cpu", progress=False, **extra)
        assert tree(tmp_path) == before
    with pytest.raises(Co2sError, match="twice"):
        api.predict(ckpt, [inputs / "a.png", tiles(tmp_path / "x", ["a.png"]) / "a.png"], tmp_path / "out",
                    device="cpu", progress=False)
    before = tree(tmp_path)
    api.predict(ckpt, [inputs], tmp_path / "out", device="cpu", progress=False)
    written = added(before, tree(tmp_path))
    assert written == ["out/a.png", "out/a_color.png", "out/b.png", "out/b_color.png"]
    before = tree(tmp_path)
    with pytest.raises(Co2sError, match="exists"):
        api.predict(ckpt, [inputs], tmp_path / "out", device="cpu", progress=False)
    assert tree(tmp_path) == before
    results = api.predict(ckpt, [inputs], tmp_path / "out", device="cpu", progress=False, overwrite=True)
    assert all(r.error is None for r in results) and added(before, tree(tmp_path)) == []

    api.evaluate_checkpoint(ckpt, split="val", device="cpu", progress=False)
    api.evaluate_checkpoint(ckpt, split="test", device="cpu", progress=False)
    assert {metrics_file("val"), metrics_file("test")} <= {p.name for p in (tmp_path / "run").iterdir()}
    before = tree(tmp_path)
    with pytest.raises(Co2sError, match="exists"):
        api.evaluate_checkpoint(ckpt, split="val", device="cpu", progress=False)
    assert tree(tmp_path) == before
    api.evaluate_checkpoint(ckpt, split="val", device="cpu", progress=False, overwrite=True)

    monkeypatch.chdir(tmp_path / "in")
    before = tree(tmp_path)
    api.evaluate_checkpoint(folder, api.load_config(str(config_file)), device="cpu", progress=False)
    assert added(before, tree(tmp_path)) == ["in/metrics_test.json"]

    segmenter = api.Segmenter.load(ckpt)
    with pytest.raises(Co2sError, match="exists"):
        api.evaluate(segmenter, split="val", out=tmp_path / "run", progress=False)
    result = api.evaluate(segmenter, split="val", out=tmp_path / "run", progress=False, overwrite=True)
    assert result["path"] == str(tmp_path / "run" / "metrics_val.json")
