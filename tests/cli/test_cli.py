"""The command line as a user meets it: help, exit codes, and one clear message per bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from co2s.cli.main import main
from tests.conftest import tiny_config_dict


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "co2s.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def _verbs() -> list[str]:
    from co2s.cli.main import build_parser

    import argparse

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


def test_help_lists_every_verb_and_every_verb_has_help(capsys):
    verbs = _verbs()
    assert {"train", "evaluate", "predict", "splits", "export", "demo", "model-summary", "embed-text",
            "presets"} <= set(verbs)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listing = capsys.readouterr().out
    for verb in verbs:
        assert verb in listing
        with pytest.raises(SystemExit) as exit_:
            main([verb, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith(f"usage: co2s {verb}"), verb
        assert "--student" not in out  # the old name of --prediction is an alias only


def test_the_package_facade_exposes_the_whole_api():
    import co2s
    from co2s import api

    assert set(co2s._API) == set(api.__all__)
    for name in api.__all__:
        assert getattr(co2s, name) is getattr(api, name)


@pytest.fixture
def config_file(tiny_dataset, tmp_path):
    def make(method="supervised", **data_changes):
        cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=4, method=method)
        cfg["data"]["splits"].update(data_changes)
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return make


def _bad(capsys, *argv):
    code = main([*map(str, argv)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_inputs_each_give_one_message(tiny_dataset, config_file, tmp_path, capsys):
    root = tiny_dataset
    (root / "missing.txt").write_text("images/t0.png masks/t0.png\nimages/nope.png masks/t1.png\n")
    err = _bad(capsys, "train", config_file(labelled="missing.txt"))
    assert "missing.txt:2: image not found" in err and "nope.png" in err

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / "small.png")
    (root / "size.txt").write_text("images/t0.png masks/small.png\n")
    err = _bad(capsys, "train", config_file(labelled="size.txt"))
    assert "size.txt:1" in err and "48x48" in err and "20x20" in err

    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(root / "masks" / "seven.png")
    (root / "value.txt").write_text("images/t0.png masks/seven.png\n")
    err = _bad(capsys, "train", config_file(labelled="value.txt"))
    assert "seven.png" in err and "value.txt:1" in err and "label value(s) 7" in err

    (root / "empty.txt").write_text("")
    assert "empty.txt lists no samples" in _bad(capsys, "train", config_file(labelled="empty.txt"))

    assert "unknown preset 'nosuch'" in _bad(capsys, "train", "nosuch")

    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**yaml.safe_load(config_file().read_text()), "trian": {}}))
    err = _bad(capsys, "train", typo)
    assert "typo.yaml" in err and "trian: unknown key" in err

    assert "checkpoint not found" in _bad(capsys, "evaluate", "--checkpoint", tmp_path / "no.ckpt")
    assert not (tmp_path / "run" / "latest.ckpt").exists()  # nothing trained on bad input


def test_overlapping_unlabelled_list_stops_training(tiny_dataset, config_file, tmp_path, capsys):
    (tiny_dataset / "u.txt").write_text("images/t5.png\nimages/t1.png\n")
    err = _bad(capsys, "train", config_file(method="fixmatch", unlabelled="u.txt"))
    assert "1 image(s) are both labelled and unlabelled, e.g. t1.png" in err
    assert "train.txt:2" in err and "u.txt:2" in err
    assert not (tmp_path / "run" / "latest.ckpt").exists()


@pytest.mark.slow
def test_train_evaluate_predict_round_trip(config_file, tiny_dataset, tmp_path):
    cfg = config_file()
    assert run_cli("train", cfg, "--no-progress").returncode == 0
    ckpt = tmp_path / "run" / "best.ckpt"
    out = run_cli("evaluate", "--checkpoint", ckpt, "--split", "test", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "mean" in out.stdout and "overall accuracy" in out.stdout
    metrics = json.loads((tmp_path / "run" / "metrics_test.json").read_text())
    for key in ("mIoU", "OA", "IoU", "F1", "confusion_matrix", "split", "checkpoint"):
        assert key in metrics
    assert metrics["split"] == "test" and set(metrics["IoU"]) == {"c0", "c1", "c2"}
    # mIoU recomputed independently from the confusion matrix
    cm = np.array(metrics["confusion_matrix"], dtype=float)
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    assert np.isclose(metrics["mIoU"], 100 * np.mean(tp[union > 0] / union[union > 0]))
    assert np.isclose(metrics["OA"], 100 * tp.sum() / cm.sum())

    big = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "scene.jpg")
    (tmp_path / "broken.png").write_text("garbage")
    out = run_cli("predict", "--checkpoint", ckpt, tmp_path / "scene.jpg", tmp_path / "broken.png",
                  "--out", tmp_path / "pred", "--no-progress")
    assert out.returncode == 1  # one input failed, the other was still predicted
    assert "broken.png" in out.stderr and "1 of 2 image(s) predicted" in out.stdout
    with Image.open(tmp_path / "pred" / "scene.png") as img:
        assert img.mode == "P" and img.size == (90, 70)
        assert np.asarray(img).max() < 3
    with Image.open(tmp_path / "pred" / "scene_color.png") as img:
        assert img.mode == "RGB"

    import rasterio

    profile = dict(driver="GTiff", height=40, width=50, dtype="uint16")
    with rasterio.open(tmp_path / "three.tif", "w", count=3, **profile) as dst:
        dst.write(np.full((3, 40, 50), 30000, np.uint16))
    with rasterio.open(tmp_path / "four.tif", "w", count=4, **profile) as dst:
        dst.write(np.zeros((4, 40, 50), np.uint16))
    out = run_cli("predict", "--checkpoint", ckpt, tmp_path / "three.tif", tmp_path / "four.tif",
                  "--out", tmp_path / "pred", "--no-progress")
    assert "four.tif: has 4 band(s) but the model was trained on 3" in out.stderr
    with rasterio.open(tmp_path / "pred" / "three_classes.tif") as src:  # TIFFs are predicted as scenes
        assert (src.width, src.height) == (50, 40)
    assert not list((tmp_path / "pred").glob("four*"))

    # RGBA tiles (QGIS exports): predicted from their colour bands, the alpha read as the validity;
    # the warning that says so is one line for the command, not one per image
    for i in range(3):
        Image.fromarray(np.dstack([big, np.full(big.shape[:2], 255, np.uint8)])).save(tmp_path / f"rgba{i}.png")
    out = run_cli("predict", "--checkpoint", ckpt, *(tmp_path / f"rgba{i}.png" for i in range(3)),
                  "--out", tmp_path / "rgba", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("warning: an alpha band") == 1, out.stderr
    assert sorted(p.name for p in (tmp_path / "rgba").glob("rgba?.png")) == ["rgba0.png", "rgba1.png", "rgba2.png"]


def test_old_flag_names_still_work_with_a_message(tmp_path, capsys):
    """``--student`` is the old name of ``--prediction``; ``co2s export CHECKPOINT`` the old form of
    ``--checkpoint``: both still work, the first with a deprecation message."""
    from tests.compat.make_v1_fixtures import OUT

    ckpt = OUT / "co2s_pair" / "best.ckpt"
    assert main(["export", str(ckpt), "--out", str(tmp_path / "a"), "--student", "cnn"]) == 0
    assert "--student is deprecated; use --prediction" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), "--prediction", "cnn"]) == 0
    assert capsys.readouterr().err == ""
    a, b = (json.loads((tmp_path / d / "co2s_model.json").read_text())["contract"] for d in "ab")
    assert a == b and a["prediction"] == "cnn"
    assert main(["export", "--out", str(tmp_path / "c")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "d"), "--student", "clip",
                 "--prediction", "cnn"]) == 2
    assert "disagree" in capsys.readouterr().err


def test_presets_lists_each_preset_with_its_description(capsys):
    from co2s.config.loader import model_presets, preset_names

    assert main(["presets"]) == 0
    rows = capsys.readouterr().out.splitlines()
    names = preset_names() + model_presets()
    assert [row.split()[0] for row in rows] == names
    described = dict(row.split(None, 1) for row in rows)
    assert described["loveda"].startswith("LoveDA, urban and rural aerial scenes, 7 classes")
    assert all(len(text) <= 90 for text in described.values())


@pytest.mark.parametrize("args, said", [(["--setting", "surveys"], "demo setting 'surveys': choose one of uniform, survey"),
                                        (["--labelled", "0"], "demo labelled tiles: a positive number, got 0")])
def test_demo_refuses_a_bad_setting_before_writing(tmp_path, args, said):
    result = run_cli("demo", "--out", tmp_path / "d", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {said}"]
    assert not (tmp_path / "d").exists()
