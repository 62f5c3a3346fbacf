"""The supervised engine trains a tiny ViT student end to end (train, checkpoint, evaluate)."""

from co2s.config.loader import validate
from co2s.api import train
from co2s.evaluation.run import evaluate_checkpoint
from tests.conftest import tiny_config_dict


def test_supervised_training_of_a_tiny_dinov3_student(tiny_dataset, tmp_path):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=3, val_every=3)
    cfg["model"] = {"name": "students", "students": [
        {"name": "dino", "backbone": {"kind": "dinov3", "arch": "tiny", "tune": "attention"},
         "guidance": "queries"}]}
    result = train(validate(cfg), progress=False)
    assert result.steps == 3 and result.best is not None
    metrics = evaluate_checkpoint(tmp_path / "run" / "latest.ckpt", split="test", progress=False)
    assert metrics["checkpoint_step"] == 3 and 0 <= metrics["mIoU"] <= 100
