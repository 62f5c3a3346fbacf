"""Two CPU processes (gloo): training runs under DDP and validation counts every image once."""

import subprocess
import sys

import pytest
import yaml

from co2s.engine.metrics_log import read_log
from co2s.evaluation.run import evaluate_checkpoint
from tests.conftest import tiny_config_dict, write_tiny_dataset


@pytest.mark.slow
def test_two_process_ddp_validation_matches_single_process_evaluation(tmp_path):
    root = write_tiny_dataset(tmp_path / "data", n=9)
    (root / "val.txt").write_text("".join(f"images/t{i}.png masks/t{i}.png\n" for i in (4, 5, 6, 7, 8)))
    cfg = tiny_config_dict(root, tmp_path / "run", iters=4, val_every=4)
    cfg["engine"] = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "co2s.cli.main", "train", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("finished 4 steps") == 1  # only rank 0 reports
    assert "Starting with 2 processes" in out.stdout + out.stderr
    val = [r for r in read_log(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["step"] for r in val] == [4]
    # 5 val images over 2 ranks (3 + 2): the synced confusion matrix must cover all of them
    single = evaluate_checkpoint(tmp_path / "run" / "latest.ckpt", split="val", device="cpu", progress=False)
    assert abs(single["mIoU"] - val[0]["mIoU"]) < 1e-6
