"""``co2s.data.prepare``: official LoveDA / ISPRS Potsdam releases (miniatures in the exact official
folder and file names) turned into the presets' layout, read back by the package, and trained on."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from co2s.config.loader import load_config
from co2s.data.dataset import SampleReader
from co2s.data.prepare import prepare_dataset
from co2s.data.sources import read_split
from co2s.errors import DataError

#: a miniature of LoveDA's numbering: Train Rural 0-2, Train Urban 3-4, Val Rural 5-6, Val Urban 7,
#: Test Rural 8, Test Urban 9 (the release: Train 0-2521, Val 2522-4190, Test 4191-5986)
LOVEDA_IDS = {("Train", "Rural"): [0, 1, 2], ("Train", "Urban"): [3, 4], ("Val", "Rural"): [5, 6],
              ("Val", "Urban"): [7], ("Test", "Rural"): [8], ("Test", "Urban"): [9]}
SIZE = 48


def _mask(rng, image_id: int) -> np.ndarray:
    """Values 0 (no-data) and 1..7, every class present."""
    mask = np.repeat(np.arange(1, 8, dtype=np.uint8), SIZE * SIZE // 7 + 1)[: SIZE * SIZE].reshape(SIZE, SIZE)
    mask = np.roll(mask, image_id * 5)
    mask[:4, :4] = 0
    return mask


def write_loveda_release(root: Path, ids=LOVEDA_IDS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 255, (8, 3))
    for (split, domain), numbers in ids.items():
        images = root / split / domain / "images_png"
        images.mkdir(parents=True, exist_ok=True)
        if split != "Test":
            (root / split / domain / "masks_png").mkdir(parents=True, exist_ok=True)
        for i in numbers:
            mask = _mask(rng, i)
            image = colours[mask] + rng.normal(0, 8, (SIZE, SIZE, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(images / f"{i}.png")
            if split != "Test":
                Image.fromarray(mask).save(root / split / domain / "masks_png" / f"{i}.png")
    return root


def write_authors_lists(folder: Path, train=(0, 1, 2, 3, 4, 5), val=(6, 7), labelled=(0, 3)) -> Path:
    """The Co2S lists' form: train.txt + val.txt re-split from Train+Val, 1_8/labeled.txt etc."""
    def line(i):
        return f"images/{i}.png labels/{i}.png\n"

    (folder / "1_8").mkdir(parents=True)
    (folder / "train.txt").write_text("".join(map(line, train)))
    (folder / "val.txt").write_text("".join(map(line, val)))
    (folder / "pred.txt").write_text("".join(f"images/{i}.png\n" for i in val))
    (folder / "1_8" / "labeled.txt").write_text("".join(map(line, labelled)))
    (folder / "1_8" / "unlabeled.txt").write_text("".join(line(i) for i in train if i not in labelled))
    return folder


def tree_digest(root: Path) -> dict[str, tuple]:
    """Every file's bytes, mode and mtime, and every folder: what 'untouched' means."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir",
                                            st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture
def release(tmp_path) -> Path:
    return write_loveda_release(tmp_path / "LoveDA")


# -- LoveDA ------------------------------------------------------------------------------------


def test_loveda_tree_matches_the_preset_and_leaves_the_source_untouched(release, tmp_path):
    before = tree_digest(release)
    out = tmp_path / "loveda"
    summary = prepare_dataset("loveda", release, out)
    assert tree_digest(release) == before

    assert summary["counts"] == {"train": 5, "val": 3, "test": 2}
    assert summary["files"] == {"images": 10, "labels": 8}
    assert summary["transfer"] == {"hardlink": 18}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}.png" for i in range(10))
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(f"{i}.png" for i in range(8))
    # hard links to the very source files; the masks keep their values 0..7
    assert os.path.samefile(out / "images" / "3.png", release / "Train" / "Urban" / "images_png" / "3.png")
    assert set(np.unique(np.asarray(Image.open(out / "labels" / "5.png"))).tolist()) == set(range(8))
    assert (out / "splits" / "official" / "train.txt").read_text().splitlines() == [
        f"images/{i}.png labels/{i}.png" for i in range(5)]
    assert (out / "splits" / "official" / "test.txt").read_text().splitlines() == ["images/8.png", "images/9.png"]
    # the preset's train and test entries from the official split; the labelled ratio lists missing
    assert (out / "splits" / "train.txt").read_text() == (out / "splits" / "official" / "train.txt").read_text()
    assert (out / "splits" / "val.txt").read_text() == (out / "splits" / "official" / "val.txt").read_text()
    assert summary["missing"] == ["data.splits.labelled: splits/1_8/labeled.txt",
                                  "data.splits.unlabelled: splits/1_8/unlabeled.txt"]
    record = json.loads((out / "prepare.json").read_text())
    assert record["dataset"] == "loveda" and record["counts"] == summary["counts"]
    assert record["lists"]["splits/train.txt"]["samples"] == 5

    # read back through the package with the preset's label handling: 0 -> ignore, 1..7 -> 0..6
    config = load_config("loveda", [f"data.root={out}"])
    samples = read_split(config.data.splits.test, config.data, labelled=True, name="test")
    assert [s.image.name for s in samples] == ["5.png", "6.png", "7.png"]
    image, mask = SampleReader(config.data).pair(samples[0])
    assert image.shape == (3, SIZE, SIZE)
    assert set(np.unique(mask.numpy()).tolist()) == set(range(7)) | {255}
    raw = np.asarray(Image.open(release / "Val" / "Rural" / "masks_png" / "5.png"))
    assert (mask.numpy()[raw == 0] == 255).all() and (mask.numpy()[raw == 3] == 2).all()


def test_rerun_is_idempotent_and_authors_lists_replace_the_official_ones(release, tmp_path):
    out = tmp_path / "loveda"
    prepare_dataset("loveda", release, out)
    first = tree_digest(out)
    again = prepare_dataset("loveda", release, out)
    assert again["transfer"] == {"unchanged": 18}
    assert {k: v for k, v in tree_digest(out).items() if k != "prepare.json"} == \
        {k: v for k, v in first.items() if k != "prepare.json"}

    lists = write_authors_lists(tmp_path / "co2s" / "splits" / "loveda")
    summary = prepare_dataset("loveda", release, out, splits=lists.parent)  # the whole splits/ folder works too
    assert summary["authors_lists"] == str(lists)
    assert summary["missing"] == []
    assert (out / "splits" / "train.txt").read_text() == (lists / "train.txt").read_text()  # replaced: ours
    assert (out / "splits" / "1_8" / "labeled.txt").read_text() == (lists / "1_8" / "labeled.txt").read_text()
    assert summary["lists"]["splits/1_8/unlabeled.txt"] == 4 and summary["lists"]["splits/pred.txt"] == 2
    assert prepare_dataset("loveda", release, out, splits=lists)["transfer"] == {"unchanged": 18}
    # a later run without the lists keeps the authors' copies, and still knows them as its own
    assert prepare_dataset("loveda", release, out)["missing"] == []
    assert (out / "splits" / "train.txt").read_text() == (lists / "train.txt").read_text()
    assert json.loads((out / "prepare.json").read_text())["lists"]["splits/1_8/labeled.txt"]["from"] == \
        str(lists / "1_8" / "labeled.txt")
    (lists / "val.txt").write_text("images/7.png labels/7.png\n")  # the authors' lists, updated
    prepare_dataset("loveda", release, out, splits=lists)
    assert (out / "splits" / "val.txt").read_text() == "images/7.png labels/7.png\n"


@pytest.mark.slow
def test_two_training_iterations_on_the_prepared_tree(release, tmp_path):
    out = tmp_path / "loveda"
    prepare_dataset("loveda", release, out, splits=write_authors_lists(tmp_path / "lists"))
    from co2s.api import train

    config = load_config(["loveda", "models/co2s-tiny"], [
        f"data.root={out}", f"out_dir={tmp_path / 'run'}", "train.iters=2", "train.crop_size=32",
        "train.num_workers=0", "train.val_every=2", "train.ckpt_every=2", "train.log_every=1",
        "eval.batch_size=2", "engine.accelerator=cpu", "data.splits.val=splits/val.txt"])
    start = time.perf_counter()
    run = train(config, progress=False)
    assert run.steps == 2 and (tmp_path / "run" / "best.ckpt").is_file()
    assert time.perf_counter() - start < 60


def test_zips_as_released_are_read_too(release, tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    for split in ("Train", "Val", "Test"):
        with zipfile.ZipFile(zips / f"{split}.zip", "w") as archive:
            for path in sorted((release / split).rglob("*")):
                archive.write(path, path.relative_to(release).as_posix())
    summary = prepare_dataset("loveda", zips, tmp_path / "out")
    assert summary["transfer"] == {"extract": 18} and summary["counts"] == {"train": 5, "val": 3, "test": 2}
    assert (tmp_path / "out" / "labels" / "7.png").read_bytes() == \
        (release / "Val" / "Urban" / "masks_png" / "7.png").read_bytes()
    assert prepare_dataset("loveda", zips, tmp_path / "out")["transfer"] == {"unchanged": 18}
    # the folders and the zips give the same tree
    assert prepare_dataset("loveda", release, tmp_path / "out")["transfer"] == {"unchanged": 18}


def test_copies_without_links_and_test_is_optional(release, tmp_path):
    shutil.rmtree(release / "Test")
    summary = prepare_dataset("loveda", release, tmp_path / "out", link=False)
    assert summary["transfer"] == {"copy": 16} and summary["counts"] == {"train": 5, "val": 3}
    target = tmp_path / "out" / "images" / "0.png"
    assert not os.path.samefile(target, release / "Train" / "Rural" / "images_png" / "0.png")
    assert not (tmp_path / "out" / "splits" / "official" / "test.txt").exists()


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("damage, message", [
    (lambda r: shutil.rmtree(r / "Val"), r"LoveDA: not the official LoveDA layout: no Val/ folder or Val\.zip "
                                          r"\(it holds Test, Train\); expected Train/ and Val/"),
    (lambda r: shutil.rmtree(r / "Train" / "Urban" / "masks_png"), r"not the official LoveDA layout: "
                                                                    r"Train/Urban/masks_png/ is missing"),
    (lambda r: (r / "Val" / "Urban" / "masks_png" / "7.png").unlink(),
     r"Val/Urban/images_png/7\.png: no mask Val/Urban/masks_png/7\.png"),
    (lambda r: (shutil.copy(r / "Train" / "Rural" / "images_png" / "0.png", r / "Val" / "Urban" / "images_png"
                            / "3.png"),
                shutil.copy(r / "Val" / "Urban" / "masks_png" / "7.png", r / "Val" / "Urban" / "masks_png" / "3.png")),
     r"Val/Urban/images_png/3\.png and .*Train/Urban/images_png/3\.png have the same id 3"),
    (lambda r: Image.fromarray(np.full((8, 8), 200, np.uint8)).save(r / "Train" / "Rural" / "masks_png" / "0.png"),
     r"Train/Rural/masks_png/0\.png: mask value 200, but LoveDA masks hold 0 \(no-data\) and 1\.\.7"),
])
def test_wrong_layouts_are_refused_in_one_line(release, tmp_path, damage, message):
    damage(release)
    with pytest.raises(DataError, match=message) as exc:
        prepare_dataset("loveda", release, tmp_path / "out")
    _one_line(exc)
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_folder_holding_other_data_is_refused(release, tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out / "images" / "2.png")
    with pytest.raises(DataError, match=r"images/2\.png exists and differs from .*Train/Rural/images_png/2\.png: "
                                         r"the folder holds other data") as exc:
        prepare_dataset("loveda", release, out)
    _one_line(exc)
    (out / "images" / "2.png").unlink()
    (out / "labels").mkdir()
    (out / "labels" / "tile_7.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"already holds other data: labels/tile_7\.png is not a file of this loveda"):
        prepare_dataset("loveda", release, out)
    with pytest.raises(DataError, match=r"overlap: prepare into a folder outside the source"):
        prepare_dataset("loveda", release, release / "prepared")
    (out / "labels" / "tile_7.png").unlink()
    prepare_dataset("loveda", release, out)
    (out / "splits" / "val.txt").write_text("images/1.png labels/1.png\n")  # the user's own edit
    (out / "images" / "0.png").unlink()
    with pytest.raises(DataError, match=r"splits/val\.txt exists with other contents and was not written by co2s "
                                         r"prepare"):
        prepare_dataset("loveda", release, out)
    assert not (out / "images" / "0.png").exists()  # refused before anything was written


def test_split_lists_are_checked_against_the_tree(release, tmp_path):
    lists = write_authors_lists(tmp_path / "lists")
    (lists / "1_8" / "unlabeled.txt").write_text("images/1.png labels/1.png\n\n# a comment\nimages/4190.png "
                                                 "labels/4190.png\n")
    with pytest.raises(DataError, match=r"lists/1_8/unlabeled\.txt:4: images/4190\.png is not in the prepared "
                                         r"tree \(.*images/4190\.png missing\)") as exc:
        prepare_dataset("loveda", release, tmp_path / "out", splits=lists)
    _one_line(exc)
    assert not (tmp_path / "out").exists()
    (lists / "1_8" / "unlabeled.txt").write_text("images/1.png ../labels/1.png\n")
    with pytest.raises(DataError, match=r"unlabeled\.txt:1: \.\./labels/1\.png is not a path inside the data root"):
        prepare_dataset("loveda", release, tmp_path / "out", splits=lists)
    with pytest.raises(DataError, match=r"--splits .*nowhere: no such folder"):
        prepare_dataset("loveda", release, tmp_path / "out", splits=tmp_path / "nowhere")


def test_unknown_dataset_and_missing_source(tmp_path):
    with pytest.raises(DataError, match=r"co2s prepare knows loveda, potsdam, not 'whdld'"):
        prepare_dataset("whdld", tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match=r"source .*missing: no such folder"):
        prepare_dataset("loveda", tmp_path / "missing", tmp_path / "out")


# -- Potsdam -----------------------------------------------------------------------------------

ISPRS = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]


def write_potsdam_release(root: Path, tiles=("2_10", "2_13"), size=600, no_boundary=True) -> Path:
    import rasterio

    rgb, labels = root / "2_Ortho_RGB", root / ("5_Labels_all_noBoundary" if no_boundary else "5_Labels_all")
    rgb.mkdir(parents=True)
    labels.mkdir()
    rng = np.random.default_rng(1)
    for tile in tiles:
        classes = (np.add.outer(np.arange(size), np.arange(size)) // 37) % 6
        colour = np.asarray(ISPRS, np.uint8)[classes]
        colour[:, 290:292] = 0  # an eroded boundary
        image = np.clip(colour.astype(int) // 2 + rng.integers(0, 60, colour.shape), 0, 255).astype(np.uint8)
        name = f"top_potsdam_{tile}_label_noBoundary.tif" if no_boundary else f"top_potsdam_{tile}_label.tif"
        for path, data in ((rgb / f"top_potsdam_{tile}_RGB.tif", image), (labels / name, colour)):
            with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                               crs="EPSG:32633", transform=rasterio.Affine(0.05, 0, 368000, 0, -0.05, 5810000)
                               ) as ds:
                ds.write(data.transpose(2, 0, 1))
        (rgb / f"top_potsdam_{tile}_RGB.tfw").write_text("0.05\n0\n0\n-0.05\n0\n0\n")
    return root


def test_potsdam_tiles_are_cut_as_the_authors_lists_name_them(tmp_path):
    source = write_potsdam_release(tmp_path / "Potsdam")
    before = tree_digest(source)
    out = tmp_path / "potsdam"
    summary = prepare_dataset("potsdam", source, out)
    assert tree_digest(source) == before
    # 600 px at crop 512: origins 0 and 88 (the last crop shifted to end at the border)
    names = ["2_10_0_0_512_512.png", "2_10_88_0_600_512.png", "2_10_0_88_512_600.png", "2_10_88_88_600_600.png"]
    assert (out / "splits" / "official" / "train.txt").read_text().splitlines() == [
        f"images/{n} labels/{n}" for n in names]
    assert summary["counts"] == {"train": 4, "test": 4} and summary["tiles"] == {"train": 1, "test": 1}
    assert summary["transfer"] == {"generated": 16} and summary["unknown_colour_pixels"] == {}
    assert (out / "splits" / "val.txt").read_text() == (out / "splits" / "official" / "test.txt").read_text()

    config = load_config("potsdam", [f"data.root={out}"])
    samples = read_split(config.data.splits.train, config.data, labelled=True, name="train")
    image, mask = SampleReader(config.data).pair(samples[1])  # x 88..600, y 0..512
    assert image.shape == (3, 512, 512)
    classes = (np.add.outer(np.arange(600), np.arange(600)) // 37) % 6
    expected = classes[0:512, 88:600].copy()
    expected[:, 290 - 88:292 - 88] = 255  # black boundary -> 0 -> ignore
    assert np.array_equal(mask.numpy(), expected)
    raw = np.asarray(Image.open(out / "images" / names[1]))
    with __import__("rasterio").open(source / "2_Ortho_RGB" / "top_potsdam_2_10_RGB.tif") as ds:
        assert np.array_equal(raw, ds.read()[:, 0:512, 88:600].transpose(1, 2, 0))

    assert prepare_dataset("potsdam", source, out)["transfer"] == {"unchanged": 16}
    with pytest.raises(DataError, match=r"this folder holds a prepared potsdam dataset, not loveda"):
        prepare_dataset("loveda", write_loveda_release(tmp_path / "LoveDA"), out)


def test_potsdam_refusals(tmp_path):
    source = write_potsdam_release(tmp_path / "Potsdam", no_boundary=False)
    (source / "5_Labels_all" / "top_potsdam_2_13_label.tif").unlink()
    with pytest.raises(DataError, match=r"top_potsdam_2_13_RGB\.tif: no label 5_Labels_all/"
                                         r"top_potsdam_2_13_label\.tif") as exc:
        prepare_dataset("potsdam", source, tmp_path / "out")
    _one_line(exc)
    shutil.rmtree(source / "2_Ortho_RGB")
    (source / "2_Ortho_RGB.zip").write_bytes(b"")
    with pytest.raises(DataError, match=r"no 2_Ortho_RGB/ folder; unzip 2_Ortho_RGB\.zip there first"):
        prepare_dataset("potsdam", source, tmp_path / "out")


def test_across_file_systems_links_are_symbolic(release, tmp_path, monkeypatch):
    import errno

    def no_hard_links(src, dst, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_hard_links)
    summary = prepare_dataset("loveda", release, tmp_path / "out", progress=True)
    assert summary["transfer"] == {"symlink": 18}
    assert summary["fallback"].startswith("hardlink failed (Invalid cross-device link)")
    target = tmp_path / "out" / "labels" / "0.png"
    assert target.is_symlink() and target.resolve() == (release / "Train" / "Rural" / "masks_png" / "0.png").resolve()
    assert prepare_dataset("loveda", release, tmp_path / "out")["transfer"] == {"unchanged": 18}


def test_cli_prepare_prints_the_tree_and_the_next_command(release, tmp_path, capsys):
    from co2s.cli.main import main

    out = tmp_path / "prepared"
    assert main(["prepare", "loveda", str(release), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and f"next: co2s train loveda --set data.root={out}" in printed
    assert main(["prepare", "loveda", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
