"""Two CPU processes (gloo) training Co2S: both students end identical on both ranks."""

import subprocess
import sys

import pytest
import yaml

from co2s.engine.metrics_log import read_log
from tests.conftest import tiny_config_dict, write_tiny_dataset


@pytest.mark.slow
def test_two_process_co2s_keeps_both_students_identical_across_ranks(tmp_path):
    root = write_tiny_dataset(tmp_path / "data", n=8)
    (root / "train.txt").write_text("".join(f"images/t{i}.png masks/t{i}.png\n" for i in range(3)))
    (root / "unl.txt").write_text("".join(f"images/t{i}.png\n" for i in (3, 4, 5)))
    cfg = tiny_config_dict(root, tmp_path / "run", iters=4, val_every=4)
    cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    cfg["model"] = {"name": "students", "students": [
        {"name": "clip", "backbone": {"kind": "clip", "arch": "tiny", "tune": "attention"}, "guidance": "text",
         "text": {"prototypes": "random"}},
        {"name": "dino", "backbone": {"kind": "dinov3", "arch": "tiny", "tune": "attention"}, "guidance": "queries"}]}
    cfg["train"].update(method="co2s", semi={"tau": 0.0})
    cfg["engine"] = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "co2s.cli.main", "train", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    final = [r for r in log if r["kind"] == "final"][0]
    assert final["ranks"] == 2 and final["ranks_in_sync"], final
    sums = final["weight_checksums"]
    assert set(sums) == {"clip", "dino"} and all(rows[0] == rows[1] for rows in sums.values())
    train = [r for r in log if r["kind"] == "train"]
    assert train[-1]["clip/sta"] > 0 and train[-1]["dino/sta"] > 0  # the students did interact
    val = [r for r in log if r["kind"] == "val"][0]
    assert {"mIoU/clip", "mIoU/dino", "mIoU/mean", "mIoU/confidence"} <= set(val)
