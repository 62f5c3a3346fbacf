"""Scenes as the training source, end to end: a tiny GeoTIFF scene with polygons in a GeoPackage in
another CRS trains the supervised baseline and Co2S (two tiny students) for a few iterations."""

from __future__ import annotations

import pytest

from co2s.api import train
from co2s.config.loader import validate
from co2s.engine.metrics_log import read_log
from co2s.data.module import data_module
from co2s.data.scenes import LabelledSceneCrops, UnlabelledScenePairs
from tests.conftest import write_tiny_dataset
from tests.data.scene_data import OTHER_CRS, polygons_in_pixels, scene_data_config, write_scene, write_vector
from tests.engine.test_trainer import CO2S_TINY


def _config(tmp_path, method: str) -> dict:
    write_scene(tmp_path / "data" / "scene.tif", (160, 170))
    # the polygons that lie on this 160 x 170 scene (the shared fixture draws on 200 x 210)
    write_vector(tmp_path / "data" / "labels.gpkg", crs=OTHER_CRS, features=polygons_in_pixels()[:3])
    write_tiny_dataset(tmp_path / "data", n=2, size=48)  # validation: tiles, for now
    data = scene_data_config(tmp_path / "data", samples_per_epoch=8)
    data["splits"] = {"val": "val.txt"}
    cfg = {"name": "scenes", "out_dir": str(tmp_path / "run"), "data": data,
           "model": {"width": 8, "depth": 3},
           "train": {"method": method, "crop_size": 32, "batch_size": 2, "iters": 2, "val_every": 2,
                     "ckpt_every": 2, "log_every": 1, "num_workers": 0, "lr": 0.01},
           "eval": {"batch_size": 4}, "engine": {"accelerator": "cpu"}}
    if method == "co2s":
        cfg["model"] = CO2S_TINY
        cfg["train"]["semi"] = {"tau": 0.0}
    return cfg


@pytest.mark.parametrize("method", ["supervised", pytest.param("co2s", marks=pytest.mark.slow)])
def test_training_on_a_scene_with_polygons_in_another_crs(tmp_path, method, capsys):
    cfg = _config(tmp_path, method)
    config = validate(cfg)
    data = data_module(config.data, config.in_channels, progress=False)
    data.setup_training(config.train, config.uses_unlabelled)
    assert "labelled scene pixels: 1 raster" in capsys.readouterr().out
    assert len(data.labelled) == 8 and len(data.val) == 2
    crops, pairs = data.train_datasets(config.train)
    assert isinstance(crops, LabelledSceneCrops)
    assert (pairs is None) == (method == "supervised")
    if pairs is not None:
        assert isinstance(pairs, UnlabelledScenePairs)

    result = train(config, progress=False)
    assert result.steps == 2
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in log if r["kind"] == "train"]
    assert len(steps) == 2 and all(r["loss"] > 0 for r in steps)
    assert any(r["kind"] == "val" for r in log)
    if method == "co2s":
        assert "clip/s1" in steps[-1] and "dino/fp" in steps[-1]
