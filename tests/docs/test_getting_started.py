"""docs/getting-started.md runs as written.

Every ``yaml`` block that opens with ``# <file>.yaml`` is written to that file and every ``co2s``
line of a ``bash`` block is run through the shell, in order, as a user would paste them. The only
changes to the page's text are the substitutions below, each of which must still match the page
(so the page cannot drift away from what is tested): sizes, the data root of the tile steps (AI4Mars
tiles from ../shared/data laid out as in step 2), random-weight students in place of the paper's
pair. Step 7 runs in a folder holding a generated GeoTIFF scene and QGIS-like polygons.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import yaml
from PIL import Image

from tests.conftest import shared_dataset
from tests.data.scene_data import OTHER_CRS, RASTER_CRS, scene_transform, write_vector

DOC = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"
SCENE_SECTION = "## 7."

#: the page's text -> what the test runs instead, per part of the page; every entry must match
TILE_CHANGES = {
    "iters: 4000": "iters: 6",
    "val_every: 500": "val_every: 3\nval_max_images: 4\nnum_workers: 0",
    "crop_size: 256": "crop_size: 64",
    "batch_size: 8": "batch_size: 2",
    "[mydata.yaml, models/co2s-vitb16]": "[mydata.yaml, models/co2s-tiny]",  # random-weight students
    "classes: [background, building, road, water]": "classes: [soil, bedrock, sand, big_rock]",
}
SCENE_CHANGES = {
    "iters: 300": "iters: 6\nval_every: 3\nnum_workers: 0",
    "crop_size: 128": "crop_size: 64",
    "batch_size: 4": "batch_size: 2",
    # the test's scene is 256 px with polygons every few dozen pixels: small windows find room
    "--out next/ --budget 5": "--out next/ --budget 5 --window 16 --spacing 0",
}


def doc_steps(text: str) -> list[tuple[str, str, str]]:
    """``(part, language, code)`` of each fenced block, in page order; part is ``tiles`` or
    ``scene`` (step 7 runs in the scene's folder)."""
    steps = []
    for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```[ ]*$", text, flags=re.M | re.S):
        part = "scene" if SCENE_SECTION in text[: match.start()] else "tiles"
        steps.append((part, match.group(2), textwrap.dedent(match.group(3))))
    return steps


def substitute(code: str, changes: dict[str, str], used: set[str]) -> str:
    """``code`` with each change applied line by line (a multi-line replacement keeps the indent
    of the line it replaces); the keys that matched are added to ``used``."""
    lines = []
    for line in code.splitlines():
        for old, new in changes.items():
            if old in line:
                used.add(old)
                indent = line[: len(line) - len(line.lstrip())]
                line = line.replace(old, new.replace("\n", "\n" + indent))
        lines.append(line)
    return "\n".join(lines) + "\n"


def ai4mars_folders(source: Path, root: Path) -> dict[str, list[str]]:
    """AI4Mars tiles in step 2's folder layout (links, nothing copied): a few train tiles holding
    every class (so every class has labelled pixels whatever the split draws), val and test."""
    ids = {name: (source / "splits" / f"{name}.txt").read_text().split() for name in ("train", "val", "test_gold")}
    chosen = {"train": [], "val": ids["val"][:4], "test": ids["test_gold"][:4]}
    for sample in ids["train"]:
        present = set(np.unique(np.array(Image.open(source / "masks" / f"{sample}.png"))).tolist())
        if {0, 1, 2, 3} <= present:
            chosen["train"].append(sample)
        if len(chosen["train"]) == 16:
            break
    assert len(chosen["train"]) == 16, "AI4Mars train has fewer than 16 tiles with all four classes"
    for split, samples in chosen.items():
        for sub, ext in (("images", "jpg"), ("masks", "png")):
            (root / split / sub).mkdir(parents=True)
            for sample in samples:
                (root / split / sub / f"{sample}.{ext}").symlink_to(source / sub / f"{sample}.{ext}")
    return chosen


def write_geotiff_tiles(source: Path, samples: list[str], folder: Path) -> None:
    """AI4Mars test tiles as georeferenced GeoTIFFs (step 4 predicts ``scenes/*.tif``)."""
    folder.mkdir()
    for sample in samples:
        pixels = np.array(Image.open(source / "images" / f"{sample}.jpg").convert("RGB")).transpose(2, 0, 1)
        with rasterio.open(folder / f"{sample}.tif", "w", driver="GTiff", width=pixels.shape[2],
                           height=pixels.shape[1], count=3, dtype="uint8", crs=RASTER_CRS,
                           transform=scene_transform()) as dst:
            dst.write(pixels)


def write_scene_folder(folder: Path, classes: list[str], palette: list[list[int]]) -> None:
    """``scene.tif`` (256 x 256, UTM) in 16 blocks of 64 px, each block one class's colour with
    noise, and ``labels.gpkg`` (WGS 84, as drawn in a QGIS project of another CRS): one polygon
    inside each block, its class name in ``class``."""
    rng = np.random.default_rng(0)
    size, block = 256, 64
    labels = np.zeros((size, size), dtype=np.int64)
    features = []
    for i in range(16):
        row, col = divmod(i, 4)
        labels[row * block:(row + 1) * block, col * block:(col + 1) * block] = i % len(classes)
        x0, y0 = col * block + 8.3, row * block + 8.3
        features.append((shapely.box(x0, y0, x0 + 47.4, y0 + 47.4), classes[i % len(classes)]))
    image = np.asarray(palette)[labels] + rng.normal(0, 12, (size, size, 3))
    image = np.clip(image, 1, 255).astype(np.uint8).transpose(2, 0, 1)
    folder.mkdir()
    with rasterio.open(folder / "scene.tif", "w", driver="GTiff", width=size, height=size, count=3,
                       dtype="uint8", crs=RASTER_CRS, transform=scene_transform(), nodata=0) as dst:
        dst.write(image)
    write_vector(folder / "labels.gpkg", crs=OTHER_CRS, features=features)


def run_line(line: str, cwd: Path) -> str:
    """One command of the page, through the shell (globs, comments) with this environment's co2s."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    print(f"$ {line}\n{output}")  # shown with a failure (or -s)
    assert done.returncode == 0, f"`{line}` in {cwd} exited {done.returncode}:\n{output[-4000:]}"
    assert "Traceback" not in output, f"`{line}` printed a traceback:\n{output[-4000:]}"
    return output


@pytest.mark.slow
def test_getting_started_runs_as_written(tmp_path):
    source = shared_dataset("ai4mars-msl-256")
    text = DOC.read_text()
    mydata = tmp_path / "mydata"
    chosen = ai4mars_folders(source, mydata)
    project = tmp_path / "project"
    project.mkdir()
    write_geotiff_tiles(source, chosen["test"][:2], project / "scenes")

    changes = {"tiles": {**TILE_CHANGES, "/path/to/mydata": str(mydata)}, "scene": SCENE_CHANGES}
    used: set[str] = set()
    steps = [(part, lang, substitute(code, changes[part], used)) for part, lang, code in doc_steps(text)]
    stale = (set(changes["tiles"]) | set(changes["scene"])) - used
    assert not stale, f"docs/getting-started.md no longer says {sorted(stale)}: update the test's substitutions"

    scene_config = next(code for _, lang, code in steps if lang == "yaml" and code.startswith("# myscene.yaml"))
    scene_data = yaml.safe_load(scene_config)["data"]
    write_scene_folder(tmp_path / "scene", scene_data["classes"], scene_data["palette"])

    outputs = {}
    for section, lang, code in steps:
        cwd = project if section == "tiles" else tmp_path / "scene"
        first = code.splitlines()[0] if code else ""
        if lang == "yaml" and re.fullmatch(r"# [\w.-]+\.yaml", first):
            (cwd / first[2:]).write_text(code)
        elif lang == "bash":
            for line in code.splitlines():
                if line.startswith("co2s "):
                    outputs[line.split("#")[0].strip()] = run_line(line, cwd)
    assert len(outputs) >= 12, f"only {len(outputs)} co2s commands found in the page"

    # step 4: a supervised run, its test metrics and georeferenced predictions
    assert (project / "runs" / "mydata" / "best.ckpt").is_file()
    metrics = json.loads((project / "runs" / "mydata" / "metrics_test.json").read_text())
    assert "mIoU" in json.dumps(metrics)
    for sample in chosen["test"][:2]:
        with rasterio.open(project / "predictions" / f"{sample}_classes.tif") as out:
            assert out.crs == RASTER_CRS and out.transform == scene_transform()
            assert out.read(1).max() < 4
    # step 5: a seeded 1/8 of the 16 training tiles, with the rest as the unlabelled list
    labelled = (project / "splits" / "1_8" / "labelled.txt").read_text().splitlines()
    unlabelled = (project / "splits" / "1_8" / "unlabelled.txt").read_text().splitlines()
    assert len(labelled) == 2 and len(unlabelled) == 14
    # step 6: Co2S in its own run folder, evaluated per student and fused; step 4's run untouched
    co2s_metrics = json.loads((project / "runs" / "mydata_co2s" / "metrics_test.json").read_text())
    assert {"clip", "dino", "mean", "confidence"} <= set(json.dumps(co2s_metrics).replace('"', " ").split())
    stored = yaml.safe_load((project / "runs" / "mydata" / "config.yaml").read_text())
    assert stored["train"]["method"] == "supervised" and stored["name"] == "mydata"
    diff = next(out for line, out in outputs.items() if "--diff" in line)
    assert diff.strip() == "the model is preset models/co2s-tiny's as it is"
    # step 7: the scene's class map on its grid, then a held-out validation run
    scene = tmp_path / "scene"
    with rasterio.open(scene / "predictions" / "scene_classes.tif") as out, rasterio.open(scene / "scene.tif") as src:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
    assert (scene / "predictions" / "scene_confidence.tif").is_file()
    assert (scene / "splits" / "labelled.gpkg").is_file() and (scene / "splits" / "held_out.gpkg").is_file()
    assert (scene / "runs" / "myscene_val" / "best.ckpt").is_file()
    assert len((project / "next" / "suggestions.txt").read_text().splitlines()) == 4
    windows = pyogrio.read_info(scene / "next" / "suggestions.gpkg")
    assert 1 <= windows["features"] <= 5 and windows["crs"] == RASTER_CRS
    val = json.loads((scene / "runs" / "myscene_val" / "metrics_val.json").read_text())
    assert "mIoU" in json.dumps(val)


def test_step6_as_written_keeps_the_paper_pair(tmp_path, monkeypatch):
    """Without the test's substitution, step 6's config is the paper's pair with the user's data:
    the CLIP student keeps its text guidance and value skips (what a composed config must not lose)."""
    from co2s.config.loader import load_config

    steps = doc_steps(DOC.read_text())
    files = {code.splitlines()[0][2:]: code for _, lang, code in steps
             if lang == "yaml" and code.startswith("# mydata")}
    assert set(files) >= {"mydata.yaml", "mydata_co2s.yaml"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    monkeypatch.chdir(tmp_path)
    composed = load_config(str(tmp_path / "mydata_co2s.yaml"))
    paper = load_config("loveda")  # a paper preset: its data on models/co2s-vitb16
    assert composed.name == "mydata_co2s"
    assert composed.model == paper.model
    clip = composed.model.students[0]
    assert (clip.guidance, clip.backbone.skips) == ("text", "value")
    assert composed.data.classes == ["background", "building", "road", "water"]
