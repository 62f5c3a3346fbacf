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
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    # eval.prediction unset = auto: each validation selects by its best-scoring student or fusion,
    # and best.ckpt predicts the one that won the validation it was chosen at
    vals = [r for r in log if r["kind"] == "val"]
    for record in vals:
        scores = {k.removeprefix("mIoU/"): v for k, v in record.items() if k.startswith("mIoU/")}
        assert set(scores) == {"clip", "dino", "mean", "confidence"}
        assert record["mIoU"] == max(scores.values()) == scores[record["selected_by"]]
    chosen = max(vals, key=lambda r: r["mIoU"])  # first of equals, as the trainer keeps it
    assert result.best["prediction"] == chosen["selected_by"] and result.best["split"] == "val"

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
    assert metrics["prediction"] == chosen["selected_by"]
    assert metrics["mIoU"] == metrics["predictions"][chosen["selected_by"]]["mIoU"]
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


def test_auto_prediction_is_the_validation_winner_and_the_checkpoint_keeps_it(tiny_dataset, tmp_path, monkeypatch):
    """With eval.prediction auto (the default for two students) the student or fusion that scores
    highest on a validation selects best.ckpt, and that checkpoint, its export and its evaluation
    predict it, and so does latest.ckpt (written before the validation of its step). The validation
    scores are rigged so that the winners are known: dino at step 2, then mean, higher, at step 4."""
    import co2s.engine.trainer as trainer
    from co2s import Segmenter

    real = trainer.score_predictions
    rigged = iter([{"dino": 90.0}, {"mean": 95.0}])

    def scored(*args, **kwargs):
        results = real(*args, **kwargs)
        for name, value in next(rigged).items():
            results[name]["mIoU"] = value
        return results

    monkeypatch.setattr(trainer, "score_predictions", scored)
    (tiny_dataset / "unl.txt").write_text("images/t4.png\nimages/t5.png\n")
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=4, val_every=2, log_every=1, method="co2s")
    cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    cfg["model"] = {"name": "students", "students": [
        {"name": "clip", "backbone": {"kind": "clip", "arch": "tiny"}, "guidance": "text",
         "text": {"prototypes": "random"}},
        {"name": "dino", "backbone": {"kind": "dinov3", "arch": "tiny"}, "guidance": "queries"}]}
    result = train(validate(cfg), progress=False)
    vals = [r for r in read_log(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "val"]
    assert [(r["selected_by"], r["mIoU"]) for r in vals] == [("dino", 90.0), ("mean", 95.0)]
    assert result.best["prediction"] == "mean" and result.best["step"] == 4

    best = Segmenter.load(tmp_path / "run" / "best.ckpt")
    assert best.prediction == "mean" and best.prediction_models == ["clip", "dino"]
    assert Segmenter.load(tmp_path / "run" / "latest.ckpt").prediction == "mean"
    assert Segmenter.load(tmp_path / "run" / "best.ckpt", prediction="auto").prediction == "mean"
    assert Segmenter.load(tmp_path / "run" / "best.ckpt", prediction="dino").prediction == "dino"
    monkeypatch.setattr(trainer, "score_predictions", real)
    assert evaluate_checkpoint(tmp_path / "run" / "best.ckpt", split="test", progress=False)["prediction"] == "mean"
    folder = best.save_pretrained(tmp_path / "exported")
    assert Segmenter.load(folder).prediction == "mean"
