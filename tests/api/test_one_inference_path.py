"""One inference path: what `co2s evaluate` scores is exactly what `co2s predict` writes, for the
built-in CNN and for a fused two-student model; exported model folders are small and equivalent."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from co2s import Segmenter
from co2s.cli.main import main
from co2s.data.sources import read_split
from co2s.config.loader import validate
from co2s.evaluation import metrics_file
from tests.conftest import tiny_config_dict

CO2S_TINY = {"name": "students", "students": [
    {"name": "clip", "backbone": {"kind": "clip", "arch": "tiny", "skips": "value"}, "guidance": "text",
     "text": {"prototypes": "random"}},
    {"name": "dino", "backbone": {"kind": "dinov3", "arch": "tiny"}, "guidance": "queries"}]}


def _train(tiny_dataset, tmp_path, method):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=4, val_every=4, method=method)
    if method == "co2s":
        (tiny_dataset / "unl.txt").write_text("images/t4.png\nimages/t5.png\n")
        cfg["model"] = CO2S_TINY
        cfg["data"]["splits"]["unlabelled"] = "unl.txt"
        cfg["train"]["lr"] = 1e-4
        cfg["eval"]["prediction"] = "confidence"  # the fused path (the default, auto, may choose a student)
    cfg["eval"]["window"] = 32  # the 48 px test images take overlapping tiles
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--no-progress"]) == 0
    return tmp_path / "run" / "best.ckpt", validate(cfg)


@pytest.mark.parametrize("method", ["supervised", "co2s"])
def test_evaluate_scores_exactly_what_predict_writes(tiny_dataset, tmp_path, method, capsys):
    ckpt, config = _train(tiny_dataset, tmp_path, method)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", "test", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "run" / metrics_file("test")).read_text())
    samples = read_split(config.data.splits.test, config.data, labelled=True)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), *[str(s.image) for s in samples], "--out", str(out),
                 "--no-progress"]) == 0
    k = config.data.num_classes
    confusion = np.zeros((k, k), np.int64)
    for s in samples:
        predicted = np.asarray(Image.open(out / f"{s.image.stem}.png"))
        truth = np.asarray(Image.open(s.mask)).astype(np.int64)
        keep = truth != config.data.ignore_index
        np.add.at(confusion, (truth[keep], predicted[keep].astype(np.int64)), 1)
    assert metrics["prediction"] == ("confidence" if method == "co2s" else "model")
    assert confusion.tolist() == metrics["confusion_matrix"]
    inter = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    present = union > 0
    assert np.mean(inter[present] / union[present]) * 100 == pytest.approx(metrics["mIoU"], abs=1e-9)


def test_exported_folder_is_small_equivalent_and_predicts(tiny_dataset, tmp_path, capsys, monkeypatch):
    ckpt, config = _train(tiny_dataset, tmp_path, "co2s")
    folder = tmp_path / "exported"
    assert main(["export", str(ckpt), "--out", str(folder)]) == 0
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= ckpt.stat().st_size / 2, (size, ckpt.stat().st_size)

    from_ckpt, from_folder = Segmenter.load(ckpt), Segmenter.load(folder)
    assert from_folder.prediction == from_ckpt.prediction == "confidence"
    x = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        assert torch.equal(from_ckpt(x), from_folder(x))
        for name in from_ckpt.models:
            assert torch.equal(from_ckpt.models[name](x), from_folder.models[name](x))

    image = str(tiny_dataset / "images" / "t5.png")
    assert main(["predict", "--checkpoint", str(folder), image, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["predict", "--checkpoint", str(ckpt), image, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "t5.png")),
                          np.asarray(Image.open(tmp_path / "b" / "t5.png")))
    # evaluate accepts the folder too, with the data config (a folder carries none), and scores the same;
    # the metrics go to the current folder, never into the (shared) model folder
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--checkpoint", str(folder), "--split", "test", "--no-progress"]) == 2
    assert "is an exported model folder" in capsys.readouterr().err
    run_config = str(tmp_path / "run" / "config.yaml")
    assert main(["evaluate", run_config, "--checkpoint", str(folder), "--split", "test", "--no-progress"]) == 0
    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", "test", "--no-progress"]) == 0
    assert not (folder / metrics_file("test")).exists()
    a = json.loads((tmp_path / metrics_file("test")).read_text())
    b = json.loads((tmp_path / "run" / metrics_file("test")).read_text())
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["predictions"].keys() == b["predictions"].keys()


def test_the_api_shows_a_per_file_warning_once_per_call(tmp_path):
    """Three RGBA tiles give one alpha-band warning per ``co2s.predict`` call, not one per file,
    even with every warning shown ("always"); and it stays a Python warning that callers can
    record or filter."""
    import warnings

    import co2s
    from tests.compat.make_v1_fixtures import OUT

    rgba = np.random.default_rng(0).integers(0, 256, (24, 24, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    files = []
    for i in range(3):
        files.append(tmp_path / f"rgba{i}.png")
        Image.fromarray(rgba).save(files[-1])
    for call in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            co2s.predict(OUT / "lite_unet" / "best.ckpt", files, tmp_path / f"out{call}", progress=False)
        alpha = [w for w in caught if "an alpha band" in str(w.message)]
        assert len(alpha) == 1, [str(w.message) for w in caught]
        assert sorted(p.name for p in (tmp_path / f"out{call}").glob("rgba?.png")) == [f.name for f in files]
