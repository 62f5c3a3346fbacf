"""A short supervised run on the real AI4Mars data, then `co2s evaluate` on the gold test set."""

import json

import numpy as np
import pytest

from co2s.cli.main import main
from tests.conftest import shared_dataset


@pytest.mark.slow
def test_supervised_ai4mars_then_evaluate_test_gold(tmp_path, capsys):
    root = shared_dataset("ai4mars-msl-256")
    (tmp_path / "lab.txt").write_text("\n".join((root / "splits/train.txt").read_text().split()[:64]) + "\n")
    # 64 images hold no bedrock/big_rock pixel: the absent-class check would rightly stop the run
    common = [f"data.root={root}", "model.width=8", "model.depth=3", "eval.window=256",
              "data.label_check=warn"]
    code = main(["train", "ai4mars", "--out", str(tmp_path / "run"), "--no-progress",
                 *sum((["--set", s] for s in common + [
                     f"data.splits.labelled={tmp_path / 'lab.txt'}", "train.iters=30", "train.crop_size=96",
                     "train.batch_size=4", "train.val_every=30", "train.val_max_images=16",
                     "train.num_workers=0"]), [])])
    assert code == 0, capsys.readouterr().err
    code = main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.ckpt"), "--split", "test",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics_test.json").read_text())
    assert metrics["split"] == "test" and metrics["split_source"].endswith("test_gold.txt")
    assert metrics["images"] == 322 and metrics["classes"] == ["soil", "bedrock", "sand", "big_rock"]
    cm = np.array(metrics["confusion_matrix"], dtype=float)
    assert cm.sum() == metrics["pixels"] > 0
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    assert np.isclose(metrics["mIoU"], 100 * iou.mean())
    for k, name in enumerate(metrics["classes"]):
        expected = None if union[k] == 0 else 100 * tp[k] / union[k]
        assert (metrics["IoU"][name] is None) if expected is None else np.isclose(metrics["IoU"][name], expected)
