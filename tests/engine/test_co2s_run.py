"""A Co2S run end to end: training logs, best by fused mIoU, side-by-side evaluation, prediction
per student or fusion, and checkpoints that no longer need the pretrained files."""

import json
import shutil

import numpy as np
from PIL import Image

from co2s.config.loader import validate
from co2s.engine.metrics_log import read_log
from co2s.api import train
from co2s.evaluation import metrics_file
from co2s.evaluation.run import evaluate_checkpoint
from co2s.inference.predict import predict_files
from co2s.models.student_factory import _random_model
from tests.conftest import tiny_config_dict, tiny_weights


def test_co2s_train_evaluate_predict(tiny_dataset, tmp_path):
    weights = tmp_path / "dino_weights"
    _random_model("dinov3", "tiny").save_pretrained(weights)
    (tiny_dataset / "train.txt").write_text("images/t0.png masks/t0.png\nimages/t1.png masks/t1.png\n")
    (tiny_dataset / "unl.txt").write_text("images/t2.png masks/t2.png\nimages/t3.png\n")  # t2's mask: diagnostics only
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=4, val_every=2, log_every=1)
    cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    cfg["model"] = {"name": "students", "students": [
        {"name": "clip", "backbone": {"kind": "clip", "arch": "tiny"}, "guidance": "text",
         "text": {"prototypes": "random"}},
        {"name": "dino", "backbone": {"kind": "dinov3", "weights": str(weights), **tiny_weights("dinov3")},
         "guidance": "queries"}]}
    cfg["train"].update(method="co2s", semi={"tau": 0.0, "stability_ramp": 0.5})
    result = train(validate(cfg), progress=False)
    assert result.best["prediction"] == "confidence" and result.best["split"] == "val"

    log = read_log(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in log if r["kind"] == "train"]
    assert [r["lambda"] for r in steps][0] == 0.0 and steps[-1]["lambda"] == 0.5  # ramp over 2 of 4 iters
    for key in ("clip/sup", "clip/s1", "clip/s2", "clip/fp", "clip/sta", "dino/sta", "clip/confident_ratio",
                "clip_teaches", "dino_teaches", "no_teaching", "lr/clip/backbone", "lr/dino/queries",
                "images_per_sec", "dino/pseudo_label_acc"):
        assert key in steps[-1], key
    assert steps[-1]["clip/sta"] > 0

    shutil.rmtree(weights)  # the checkpoint alone must be enough from now on
    ckpt = tmp_path / "run" / "best.ckpt"
    metrics = evaluate_checkpoint(ckpt, split="test", progress=False)
    assert set(metrics["predictions"]) == {"clip", "dino", "mean", "confidence"}
    assert metrics["prediction"] == "confidence"
    assert metrics["mIoU"] == metrics["predictions"]["confidence"]["mIoU"]
    on_disk = json.loads((tmp_path / "run" / metrics_file("test")).read_text())
    assert on_disk["predictions"]["dino"]["confusion_matrix"] == metrics["predictions"]["dino"]["confusion_matrix"]
    dino_first = evaluate_checkpoint(ckpt, split="test", progress=False, prediction="dino",
                                     out=tmp_path / "dino.json")
    assert dino_first["mIoU"] == metrics["predictions"]["dino"]["mIoU"]

    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(tmp_path / "scene.png")
    for student in ("clip", "mean"):
        out = predict_files(ckpt, [str(tmp_path / "scene.png")], tmp_path / student, progress=False,
                            prediction=student)
        assert out[0].error is None and (tmp_path / student / "scene.png").is_file()
