"""The package learns: a short supervised run of the built-in CNN beats the constant predictor."""

from __future__ import annotations

import torch

from co2s.api import evaluate, train
from co2s.config.loader import validate
from co2s.evaluation.metrics import scores_from_confusion
from tests.conftest import tiny_config_dict, write_tiny_dataset

MARGIN = 20.0  # mIoU points; seeds 0-4 of this setup give +31 to +66 (lr 0.02, 120 steps)


def test_short_supervised_run_beats_the_constant_predictor(tmp_path):
    root = write_tiny_dataset(tmp_path / "data", n=16, seed=0)  # colour carries the class, plus noise
    lines = [f"images/t{i}.png masks/t{i}.png\n" for i in range(16)]
    (root / "train.txt").write_text("".join(lines[:10]))
    (root / "val.txt").write_text("".join(lines[10:12]))
    (root / "test.txt").write_text("".join(lines[12:]))
    cfg = tiny_config_dict(root, tmp_path / "run", iters=120, lr=0.02, val_every=1000, ckpt_every=1000,
                           log_every=20)
    cfg["data"]["splits"]["test"] = "test.txt"
    run = train(validate(cfg), progress=False)

    result = evaluate(run.segmenter("latest"), split="test", progress=False)
    confusion = torch.tensor(result["confusion_matrix"])  # [true, predicted] pixel counts
    truth = confusion.sum(1)
    # The best constant predictor in hindsight: the test split's own majority class everywhere.
    constant = torch.zeros_like(confusion)
    constant[:, truth.argmax()] = truth
    constant_miou = scores_from_confusion(constant, result["classes"])["mIoU"]
    assert result["pixels"] == int(truth.sum()) > 0
    assert result["mIoU"] >= constant_miou + MARGIN, (result["mIoU"], constant_miou, result["IoU"])
