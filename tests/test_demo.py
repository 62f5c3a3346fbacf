"""`co2s demo` end to end at a reduced length (the full demo is `make demo`)."""

import json

import pytest

from co2s.demo import reference_scores, run_demo


def test_reference_scores_of_constant_and_random_predictors():
    cm = [[6, 0], [0, 2]]  # 6 pixels of class a, 2 of class b
    ref = reference_scores(cm, ["a", "b"])
    assert abs(ref["constant_mIoU"] - 100 * (6 / 8) / 2) < 1e-9  # always "a": IoU_a = 6/8, IoU_b = 0
    # uniform guessing: tp_a = 3, union_a = 6 + 4 - 3; tp_b = 1, union_b = 2 + 4 - 1
    assert abs(ref["random_mIoU"] - 100 * (3 / 7 + 1 / 5) / 2) < 1e-9


@pytest.mark.slow
def test_demo_writes_everything_into_one_folder(tmp_path):
    summary = run_demo(tmp_path / "demo", ["train.iters=12", "train.val_every=6", "train.num_workers=0"],
                       progress=False)
    out = tmp_path / "demo"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "run" / "metrics.json").is_file() and (out / "run" / "best.ckpt").is_file()
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [
        "scene_0.png", "scene_0_color.png", "scene_1.png", "scene_1_color.png"]
    assert summary["test_mIoU"] >= 0 and summary["constant_mIoU"] < 15
