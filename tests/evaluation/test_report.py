"""``co2s report RUN`` (co2s.engine.report.write_report): the PNGs of a real run, the page that
links exactly them, escaping, the folder rules, the missing-matplotlib message, and the page as a
browser renders it (headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from co2s.errors import Co2sError
from co2s.run_folder import RunFolder
from tests.conftest import tiny_config_dict, write_tiny_dataset

pytest.importorskip("matplotlib", reason="co2s report needs matplotlib (pip install 'co2s[report]')")

from co2s.engine.report import INDEX, MANIFEST, _classify, _training_plots, _Colours, write_report  # noqa: E402

#: class names that are HTML and mathtext: shown as text on the page and in the figures
ODD_CLASSES = ["<b>bold</b>", "a & b", "$x$_1 \"q\""]
ODD_NAME = "</pre><script>alert(1)</script>"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """A finished run of the built-in CNN (odd class names, an odd run name) with metrics_val.json
    and metrics_test.json beside its checkpoints."""
    from co2s import api
    from co2s.config.loader import validate

    root = tmp_path_factory.mktemp("single")
    data = write_tiny_dataset(root / "data")
    cfg = tiny_config_dict(data, root / "run")
    cfg["name"] = ODD_NAME
    cfg["data"]["classes"] = ODD_CLASSES
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        run = api.train(validate(cfg), progress=False)
        for split in ("val", "test"):
            api.evaluate_checkpoint(run.best_checkpoint, split=split, device="cpu", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    """A Co2S run of the tiny random-weight pair (models/co2s-tiny) with metrics_test.json."""
    from co2s import api
    from co2s.config.loader import _load_raw, validate
    from co2s.config.merge import merge_configs

    root = tmp_path_factory.mktemp("pair")
    data = write_tiny_dataset(root / "data")
    (data / "train.txt").write_text("images/t0.png masks/t0.png\nimages/t1.png masks/t1.png\n")
    (data / "unl.txt").write_text("images/t2.png masks/t2.png\nimages/t3.png\n")  # t2's mask: diagnostics
    cfg = tiny_config_dict(data, root / "run", iters=4, val_every=2, log_every=1, method="co2s")
    cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    cfg["train"]["semi"] = {"tau": 0.0, "stability_ramp": 0.5}
    cfg.pop("model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        run = api.train(validate(merge_configs(_load_raw("models/co2s-tiny")[0], cfg)), progress=False)
        api.evaluate_checkpoint(run.best_checkpoint, split="test", device="cpu", progress=False)
    return root / "run"


class _Page(HTMLParser):
    """The images, links and scripts of a page, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])

    def handle_data(self, data):
        self.text.append(data)


def _page(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text())
    return page


def _pngs(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.png")}


def _check_images(folder: Path) -> None:
    for path in folder.glob("*.png"):
        assert path.stat().st_size > 0, path
        with Image.open(path) as image:
            assert image.format == "PNG"
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            assert width >= 200 and height >= 200, (path, image.size)
            darkest, lightest = image.convert("L").getextrema()
            assert lightest - darkest > 100, f"{path} looks blank"


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.ckpt", "report", "tensorboard"))
    return copy


@pytest.mark.slow
def test_the_report_of_a_run_shows_its_curves_and_evaluations(single_run, tmp_path):
    run = _copy_run(single_run, tmp_path)
    index = write_report(run)
    out = run / "report"
    assert index == out / INDEX
    assert _pngs(out) == {"loss.png", "val_miou.png", "learning_rate.png", "throughput.png",
                          "iou_val.png", "confusion_val.png", "iou_test.png", "confusion_test.png"}
    _check_images(out)
    page = _page(index)
    assert sorted(page.images) == sorted(_pngs(out))  # exactly the images written, each once
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["files"]) == _pngs(out) | {INDEX}
    # self-contained: no script, no stylesheet or image from elsewhere, relative image links
    assert "script" not in page.tags and "link" not in page.tags and page.links == []
    assert all("/" not in src and ":" not in src for src in page.images)
    text = "".join(page.text)
    assert "6 of 6" in text  # steps done of the total
    assert "finished" in text and "best validation" in text and "co2s version" in text
    assert "metrics_val.json" in text and "metrics_test.json" in text


@pytest.mark.slow
def test_text_of_the_run_is_escaped(single_run, tmp_path):
    run = _copy_run(single_run, tmp_path)
    html = write_report(run, tmp_path / "out").read_text()
    assert "<b>bold</b>" not in html and "<script>alert" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # the config's class name, shown as text
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the run's name in the config
    page = _page(tmp_path / "out" / INDEX)
    shown = "".join(page.text)
    assert "<b>bold</b>" in shown and ODD_NAME in shown and "a & b" in shown
    assert page.tags.count("pre") == 1 and "script" not in page.tags


@pytest.mark.slow
def test_two_students_side_by_side_and_their_teaching(pair_run, tmp_path):
    run = _copy_run(pair_run, tmp_path)
    index = write_report(run)
    out = index.parent
    assert _pngs(out) == {"loss.png", "val_miou.png", "learning_rate.png", "throughput.png", "confident_ratio.png",
                          "confident_by_class.png", "pseudo_label_accuracy.png", "teaching.png", "stability_weight.png",
                          "iou_test.png", "confusion_test.png"}
    _check_images(out)
    assert sorted(_page(index).images) == sorted(_pngs(out))

    from co2s.engine.metrics_log import read_log

    records = read_log(RunFolder(run).metrics_log)
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    groups = _classify([k for k in train[-1] if k not in ("step", "kind")])
    assert {"clip/sup", "dino/sup", "clip/sta", "dino/fp", "loss", "clip/loss"} <= set(groups["loss"])
    assert set(groups["teaching"]) == {"dino_teaches", "clip_teaches", "no_teaching"}
    assert set(groups["confident"]) == {"clip/confident_ratio", "dino/confident_ratio"}
    by_class = {k.split(":")[0] for k in groups["by_class"]}  # each student's classes apart, none a loss term
    assert by_class == {"clip/confident_ratio", "dino/confident_ratio"} and not any(":" in k for k in groups["loss"])
    assert "lr/clip/backbone" in groups["lr"] and groups["schedule"] == ["lambda"]
    plots = {p.name: p for p in _training_plots(train, val, [], _Colours(["clip", "dino"]))}
    assert set(plots) >= {"loss.png", "val_miou.png", "teaching.png"}


def test_missing_matplotlib_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    run = _synthetic_run(tmp_path)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(Co2sError) as exc:
        write_report(run)
    message = str(exc.value)
    assert "\n" not in message and "matplotlib" in message and "pip install 'co2s[report]'" in message
    assert not (run / "report").exists()


def test_folders_that_are_not_runs_are_refused_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_config").mkdir()
    (tmp_path / "only_config" / "config.yaml").write_text("name: x\n")
    (tmp_path / "best.ckpt").write_bytes(b"x")
    for path, words in ((tmp_path / "missing", "does not exist"), (tmp_path / "best.ckpt", "is a file"),
                        (tmp_path / "empty", "not a run folder"), (tmp_path / "only_config", "logged nothing")):
        with pytest.raises(Co2sError) as exc:
            write_report(path)
        assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "empty", "only_config"]
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.slow
def test_the_report_writes_only_over_its_own_files(tmp_path):
    run = _synthetic_run(tmp_path)
    # a folder of other files is refused, and left as it was
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(Co2sError, match="did not write"):
        write_report(run, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(Co2sError, match="run folder"):
        write_report(run, run)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(Co2sError, match="is a file"):
        write_report(run, tmp_path / "a_file")

    index = write_report(run)
    out = index.parent
    first = _pngs(out)
    assert {"iou_test.png", "confusion_test.png", "teaching.png"} <= first
    # a second report replaces the first; a file of the user's there is left alone
    (out / "mine.txt").write_text("keep")
    (run / "metrics_test.json").unlink()  # its pictures are gone from the next report
    write_report(run)
    assert _pngs(out) == first - {"iou_test.png", "confusion_test.png"}
    assert sorted(_page(index).images) == sorted(_pngs(out))
    assert (out / "mine.txt").read_text() == "keep"
    # a file of the user's under a name the report would write is not replaced
    (out / "loss.png").unlink()
    (out / "loss.png").write_text("the user's")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"].remove("loss.png")
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Co2sError, match="loss.png was not written by co2s report"):
        write_report(run)
    assert (out / "loss.png").read_text() == "the user's"


def test_a_torn_log_line_and_an_old_metrics_file_without_a_matrix(tmp_path):
    run = _synthetic_run(tmp_path)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 9, "kind": "tr')
    metrics = json.loads((run / "metrics_test.json").read_text())
    del metrics["confusion_matrix"]
    (run / "metrics_test.json").write_text(json.dumps(metrics))
    (run / "metrics_broken.json").write_text("{not json")
    with pytest.warns(UserWarning) as caught:
        index = write_report(run)
    said = " ".join(str(w.message) for w in caught)
    assert "torn write" in said and "metrics_broken.json" in said
    assert "iou_test.png" in _pngs(index.parent) and "confusion_test.png" not in _pngs(index.parent)
    assert "holds no confusion matrix" in index.read_text()
    assert "confident_by_class.png" in _pngs(index.parent)
    text = " ".join(_page(index).text)
    assert f"{ODD_CLASSES[2]} (dino: 0% of its pseudo-labels confident, all classes 55%)" in text  # steps 3-8
    assert f"{ODD_CLASSES[1]} (clip: never pseudo-labelled, all classes 55%)" in text  # classes from config.yaml


@pytest.mark.slow  # the run it reads is trained once for the module: 3 s
def test_evaluate_stores_the_confusion_matrix_with_the_class_order(single_run):
    metrics = json.loads((single_run / "metrics_test.json").read_text())
    assert metrics["classes"] == ODD_CLASSES and metrics["confusion_matrix_axes"] == ["true", "predicted"]
    matrix = metrics["confusion_matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert all(isinstance(v, int) for row in matrix for v in row)
    assert sum(map(sum, matrix)) == metrics["pixels"] > 0
    # the recall of a class is its diagonal over its row
    for i, name in enumerate(ODD_CLASSES):
        if sum(matrix[i]):
            assert metrics["recall"][name] == pytest.approx(100 * matrix[i][i] / sum(matrix[i]))
    for scores in metrics["predictions"].values():
        assert len(scores["confusion_matrix"]) == 3


# -- the page in a browser -----------------------------------------------------------------------

_CHECK = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); });
  var out = document.createElement('pre');
  out.textContent = 'CO2S-CHECK ' + JSON.stringify({images: images.length, loaded: images.length - broken.length,
    broken: broken.map(function (i) { return i.getAttribute('src'); }),
    shown: images.filter(function (i) { return i.getBoundingClientRect().width > 0; }).length}) + ' CO2S-END';
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    message = f"no headless browser found ({', '.join(BROWSERS)}); apt-get install chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: the browser test must run in CI)")
    pytest.skip(message)


def _render(browser: str, page: Path, profile: Path) -> dict:
    """What the check script of ``page`` found once the page loaded in headless Chromium."""
    command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={profile}", "--run-all-compositor-stages-before-draw",
               "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r"CO2S-CHECK (.*?) CO2S-END", done.stdout)
    assert found, f"{browser} rendered no check (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(found.group(1))


@pytest.mark.slow
def test_the_page_renders_every_image_in_a_browser(tmp_path):
    browser = _browser()
    run = _synthetic_run(tmp_path)
    index = write_report(run)
    shown = tmp_path / "shown"
    shutil.copytree(index.parent, shown)
    html = index.read_text()
    assert html.count("</body>") == 1
    (shown / "check.html").write_text(html.replace("</body>", _CHECK + "</body>"))
    result = _render(browser, shown / "check.html", tmp_path / "profile")
    expected = len(_pngs(index.parent))
    assert expected >= 8
    assert result == {"images": expected, "loaded": expected, "broken": [], "shown": expected}, result
    # the check sees a broken image: a truncated PNG is reported, not passed over
    data = (shown / "loss.png").read_bytes()
    (shown / "loss.png").write_bytes(data[:100])
    result = _render(browser, shown / "check.html", tmp_path / "profile")
    assert result["broken"] == ["loss.png"] and result["loaded"] == expected - 1, result


# -- a run folder written by hand: the records a two-student run logs, without training ---------------

def _synthetic_run(tmp_path: Path) -> Path:
    run = tmp_path / "synthetic_run"
    run.mkdir()
    (run / "config.yaml").write_text(f"name: synthetic\ndata:\n  classes: {json.dumps(ODD_CLASSES)}\n")
    (run / "run_info.jsonl").write_text(
        json.dumps({"co2s_version": "0.1.0", "git_revision": None, "command": ["co2s", "train", "x.yaml"],
                    "started": "2026-01-01T10:00:00+0000", "python": "3.11", "torch": "2.13.0",
                    "host": "h", "resumed_from_step": 0, "total_steps": 8, "burn_in_steps": 2,
                    "world_size": 1}) + "\n")
    lines = []
    for step in range(1, 9):
        burn_in = step <= 2
        record = {"step": step, "kind": "train", "loss": 2.0 / step, "lambda": 0.0 if burn_in else 0.5,
                  "burn_in": float(burn_in), "dino_teaches": 0.3, "clip_teaches": 0.6, "no_teaching": 0.1}
        for student in ("clip", "dino"):
            record.update({f"{student}/{k}": 1.0 / step for k in ("loss", "sup", "s1", "s2", "fp", "sta")})
            record.update({f"{student}/confident_ratio": step / 10, f"{student}/pseudo_label_acc": 0.5})
            # per class: the third class is never confident for dino after the burn-in (steps 1-2)
            record.update({f"{student}/confident_ratio:{c}": (0.0 if (student, i, burn_in) == ("dino", 2, False)
                                                              else step / 10) for i, c in enumerate(ODD_CLASSES)
                           if (student, i, burn_in) != ("clip", 1, False)})  # clip gives class 1 no more
        record.update({"lr/clip/backbone": 0.01 / step, "lr/dino/backbone": 0.02 / step, "images_per_sec": 3.0})
        lines.append(record)
        if step % 4 == 0:
            lines.append({"step": step, "kind": "val", "split": "val", "selected_by": "confidence",
                          **{f"mIoU/{p}": 10.0 * step / 4 + i for i, p in enumerate(("clip", "dino", "mean",
                                                                                      "confidence"))},
                          "mIoU": 10.0 * step / 4 + 3})
    lines.append({"step": 8, "kind": "final", "ranks": 1, "ranks_in_sync": True, "weight_checksums": {}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    matrix = [[50, 3, 2], [4, 40, 6], [0, 0, 0]]
    iou = {ODD_CLASSES[0]: 80.0, ODD_CLASSES[1]: 70.0, ODD_CLASSES[2]: None}
    scores = {"mIoU": 75.0, "OA": 85.0, "mF1": 80.0, "IoU": iou, "F1": iou, "precision": iou, "recall": iou,
              "confusion_matrix": matrix}
    (run / "metrics_test.json").write_text(json.dumps({
        **scores, "prediction": "confidence", "classes": ODD_CLASSES, "confusion_matrix_axes": ["true", "predicted"],
        "pixels": 105, "predictions": {p: scores for p in ("confidence", "clip", "dino", "mean")}, "split": "test",
        "images": 2, "checkpoint": str(run / "best.ckpt"), "checkpoint_step": 8}))
    return run
