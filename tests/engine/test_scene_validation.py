"""Validation regions of scenes in training (val records, best.ckpt) and ``co2s evaluate --split
val|test`` on scene regions (metrics_<split>.json as for tiles)."""

from __future__ import annotations

import json

import shapely

from co2s.api import train
from co2s.cli.main import main
from co2s.config.loader import validate
from co2s.engine.metrics_log import read_log
from tests.data.scene_data import polygons_in_pixels, scene_data_config, write_scene, write_vector


def test_training_validates_on_scene_regions_and_evaluate_scores_them(tmp_path, capsys):
    data = tmp_path / "data"
    write_scene(data / "scene.tif", (160, 170))
    features = polygons_in_pixels()[:3]  # the polygons on this 160 x 170 scene
    write_vector(data / "labels.gpkg", features=features[:2])
    write_vector(data / "val.gpkg", features=[features[2]])
    write_vector(data / "test.gpkg", features=[(shapely.box(115.3, 105.3, 150.7, 135.7), "c0")])
    cfg = {"name": "scene-val", "out_dir": str(tmp_path / "run"),
           "data": scene_data_config(data, samples_per_epoch=4, val={"vector": "val.gpkg"},
                                     test={"vector": "test.gpkg"}),
           "model": {"width": 8, "depth": 3},
           "train": {"method": "supervised", "crop_size": 32, "batch_size": 2, "iters": 2, "val_every": 1,
                     "ckpt_every": 2, "log_every": 1, "num_workers": 0, "lr": 0.01},
           "eval": {"batch_size": 4}, "engine": {"accelerator": "cpu"}}
    cfg["data"]["label_check"] = "warn"  # c2 is in the validation polygon only
    run = train(validate(cfg), progress=False)
    assert "validation scene pixels: 1 raster" in capsys.readouterr().out
    vals = [r for r in read_log(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [1, 2] and all(r["split"] == "val" for r in vals)
    assert run.best is not None and (tmp_path / "run" / "best.ckpt").is_file()
    assert run.best["mIoU"] == max(r["mIoU"] for r in vals)

    for split in ("val", "test"):
        out = tmp_path / f"{split}.json"
        assert main(["evaluate", "--checkpoint", str(run.best_checkpoint), "--split", split, "--out", str(out),
                     "--no-progress"]) == 0
        metrics = json.loads(out.read_text())
        assert metrics["split"] == split and metrics["split_source"].endswith(f"{split}.gpkg")
        assert {"mIoU", "OA", "mF1", "IoU", "F1", "confusion_matrix", "predictions"} <= set(metrics)
        assert metrics["pixels"] == sum(map(sum, metrics["confusion_matrix"])) > 1000
        assert metrics["rasters"] == [str(data / "scene.tif")]
    assert "val (1 raster)" in capsys.readouterr().out
