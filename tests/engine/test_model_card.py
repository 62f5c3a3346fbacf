"""The model card (README.md) of an exported folder: written from the folder's own contract, the
training config and the run's recorded scores (validation per class at the checkpoint's step, the
test metrics of co2s evaluate on this checkpoint), and nothing claimed that was not measured."""

from __future__ import annotations

import json

import yaml

from co2s.cli.main import main
from co2s.engine.metrics_log import read_log
from tests.conftest import tiny_config_dict


def _train(tmp_path, tiny_dataset, **data):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=6, val_every=3, seed=11)
    cfg["data"].update(data)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--no-progress"]) == 0
    return tmp_path / "run"


def _pct(value: float) -> str:
    return f"{value:.2f}"


def test_card_holds_the_contract_training_and_scores(tmp_path, tiny_dataset, capsys):
    run = _train(tmp_path, tiny_dataset, gsd=0.5)
    assert main(["evaluate", "--checkpoint", str(run / "latest.ckpt"), "--split", "test", "--no-progress"]) == 0
    folder = tmp_path / "model"
    assert main(["export", "--checkpoint", str(run / "latest.ckpt"), "--out", str(folder)]) == 0
    card = (folder / "README.md").read_text()
    contract = json.loads((folder / "co2s_model.json").read_text())["contract"]

    assert "3 classes" in card and "after 6 training iterations" in card
    for i, name in enumerate(["c0", "c1", "c2"]):  # index, name, palette colour
        r, g, b = i * 60, 255 - i * 60, 100
        assert f"| {i} | {name} | #{r:02x}{g:02x}{b:02x} |" in card
    assert "values divided by their data type's range" in card  # scale auto
    assert contract["auto_scale"] == 255 and "; 255 for its training images)" in card  # uint8 PNG tiles
    assert contract["gsd"] == 0.5 and "Ground sample distance: 0.5 m per pixel" in card
    mean = ", ".join(f"{v:.4g}" for v in contract["normalisation"]["model"]["mean"])
    assert f"`model`: mean [{mean}]" in card
    assert "- Method: `supervised`" in card and "seed 11" in card
    assert "data.splits.labelled: `train.txt`" in card and "data.splits.val: `val.txt`" in card
    assert str(tmp_path) not in card  # a card to share holds no path of its author's machine

    # validation at step 6 from the run's log, per class; test from metrics_test.json of this checkpoint
    (val,) = [r for r in read_log(run / "metrics.jsonl") if r.get("kind") == "val" and r["step"] == 6]
    assert val["images"] == 2 and val["seconds"] > 0  # val.txt's images, and what scoring them cost
    test = json.loads((run / "metrics_test.json").read_text())
    assert f"validation: mIoU {_pct(val['mIoU'])} %" in card and f"test: mIoU {_pct(test['mIoU'])} %" in card
    for name in ["c0", "c1", "c2"]:
        assert f"| {name} | {_pct(val['IoU'][name])} | {_pct(test['IoU'][name])} |" in card


def test_card_says_what_was_not_measured(tmp_path, tiny_dataset):
    """best.ckpt's step has a validation but no test evaluation; its card says so instead of
    borrowing another checkpoint's scores (metrics_test.json of latest.ckpt)."""
    run = _train(tmp_path, tiny_dataset)
    assert main(["evaluate", "--checkpoint", str(run / "latest.ckpt"), "--split", "test", "--no-progress"]) == 0
    folder = tmp_path / "model"
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--out", str(folder)]) == 0
    card = (folder / "README.md").read_text()
    assert "test: mIoU" not in card and "IoU test" not in card
    assert "validation: mIoU" in card
    assert "Ground sample distance: unknown" in card  # PNG tiles, no data.gsd

    again = tmp_path / "again"  # exported from the folder: no run folder, no scores claimed
    assert main(["export", "--checkpoint", str(folder), "--out", str(again)]) == 0
    assert "No evaluation recorded" in (again / "README.md").read_text()
