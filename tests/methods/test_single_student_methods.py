"""FixMatch and UniMatch train end to end on the built-in model and log their terms."""

import pytest

from co2s.config.loader import validate
from co2s.engine.metrics_log import read_log
from co2s.api import train
from tests.conftest import tiny_config_dict


@pytest.mark.parametrize("method,terms", [("fixmatch", {"sup", "s1"}), ("unimatch", {"sup", "s1", "s2", "fp"})])
def test_method_trains_and_logs_its_terms(tiny_dataset, tmp_path, method, terms):
    (tiny_dataset / "train.txt").write_text("images/t0.png masks/t0.png\nimages/t1.png masks/t1.png\n")
    (tiny_dataset / "unl.txt").write_text("images/t2.png masks/t2.png\nimages/t3.png\n")
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=2, val_every=2, log_every=2, method=method)
    cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    cfg["train"]["semi"] = {"tau": 0.0}  # every pixel confident: the unsupervised terms are active
    assert train(validate(cfg), progress=False).steps == 2
    record = [r for r in read_log(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"][-1]
    assert terms <= set(record) and record["s1"] > 0 and record["confident_ratio"] == 1.0
    assert "pseudo_label_acc" in record  # t2's mask, a diagnostic only
