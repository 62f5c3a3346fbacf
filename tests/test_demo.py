"""`co2s demo` end to end at a reduced length (the full demo is `make demo`)."""

import json

import pytest
from PIL import Image

from co2s.demo import reference_scores, run_demo
from co2s.evaluation import metrics_file


def test_reference_scores_of_constant_and_random_predictors():
    cm = [[6, 0], [0, 2]]  # 6 pixels of class a, 2 of class b
    ref = reference_scores(cm, ["a", "b"])
    assert abs(ref["constant_mIoU"] - 100 * (6 / 8) / 2) < 1e-9  # always "a": IoU_a = 6/8, IoU_b = 0
    # uniform guessing: tp_a = 3, union_a = 6 + 4 - 3; tp_b = 1, union_b = 2 + 4 - 1
    assert abs(ref["random_mIoU"] - 100 * (3 / 7 + 1 / 5) / 2) < 1e-9


@pytest.mark.slow
def test_demo_writes_everything_into_one_folder(tmp_path, capsys):
    overrides = ["train.iters=12", "train.val_every=6", "train.log_every=2", "train.num_workers=0"]
    summary = run_demo(tmp_path / "demo", overrides, progress=False)
    assert "replacing the earlier demo outputs" not in capsys.readouterr().out
    out = tmp_path / "demo"
    assert json.loads((out / "summary.json").read_text()) == summary
    for run in ("run", "supervised"):  # Co2S and its supervised baseline
        assert (out / run / metrics_file("test")).is_file() and (out / run / "best.ckpt").is_file()
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [
        "scene_0.png", "scene_0_color.png", "scene_1.png", "scene_1_color.png"]
    assert summary["constant_mIoU"] < 15

    # both test scores, per class, and what the unlabelled images added: numbers of this run
    co2s, sup = summary["co2s"], summary["supervised"]
    assert summary["test_mIoU"] == co2s["mIoU"]
    assert co2s["mIoU"] == json.loads((out / "run" / metrics_file("test")).read_text())["mIoU"]
    assert sup["mIoU"] == json.loads((out / "supervised" / metrics_file("test")).read_text())["mIoU"]
    classes = ["cropland", "forest", "water", "road", "building", "bare soil"]
    assert list(co2s["IoU"]) == list(sup["IoU"]) == classes
    gain = summary["unlabelled_gain"]
    assert gain["mIoU"] == pytest.approx(co2s["mIoU"] - sup["mIoU"])
    assert gain["IoU"] == pytest.approx({c: co2s["IoU"][c] - sup["IoU"][c] for c in classes})

    # the burn-in acted in the Co2S run and covered the whole baseline run
    def burn_in_flags(run):
        return [r["burn_in"] for r in map(json.loads, (out / run / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]
    assert 1.0 in burn_in_flags("run") and 0.0 in burn_in_flags("run")
    assert set(burn_in_flags("supervised")) == {1.0}
    assert "burn_in.ckpt" in summary["supervised"]["how"]  # the baseline shares the burn-in steps
    assert "confident_ratio" in " ".join(summary["semi_supervised"]["last_quarter"])

    # image | ground truth | supervised | co2s for four 128 px test tiles (drawn at 2x), with a legend
    with Image.open(out / "comparison.png") as image:
        assert image.mode == "RGB" and image.width >= 4 * 256 and image.height >= 4 * 256
    assert summary["comparison"] == str(out / "comparison.png")

    # run again into the same folder: the demo replaces its own earlier outputs, and says so in one line
    again = run_demo(tmp_path / "demo", overrides, progress=False)
    said = [line for line in capsys.readouterr().out.splitlines() if "earlier demo outputs" in line]
    assert len(said) == 1 and said[0].startswith(f"replacing the earlier demo outputs in {out}: ")
    for name in (f"run/{metrics_file('test')}", "predictions", "comparison.png", "summary.json"):
        assert name in said[0]
    assert json.loads((out / "summary.json").read_text()) == again
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [
        "scene_0.png", "scene_0_color.png", "scene_1.png", "scene_1_color.png"]
