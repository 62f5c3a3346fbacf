"""Tests for the synthetic demo dataset (co2s.demo.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from co2s.demo.synthetic import (
    DEMO_CLASSES,
    DEMO_PALETTE,
    SURVEY_LABELLED_PART,
    DemoDataset,
    generate_scene,
    survey_position,
    write_demo_dataset,
)

CROPLAND, FOREST, WATER, ROAD, BUILDING, BARE_SOIL = range(6)

# Small arguments for the tests that only need *a* dataset, not the default-size one.
SMALL = dict(n_labelled=3, n_unlabelled=2, n_val=2, n_test=1, n_scenes=1, scene_size=(150, 170))


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_ds(tmp_path_factory) -> DemoDataset:
    """The default-size dataset, written once for the module."""
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=0)


@pytest.fixture(scope="module")
def labelled_pixels(default_ds) -> tuple[np.ndarray, np.ndarray]:
    """(rgb [N, 3] float, labels [N]) over all labelled tiles of the default dataset."""
    imgs, masks = [], []
    for line in default_ds.labelled.read_text().splitlines():
        ip, mp = line.split(" ")
        imgs.append(np.asarray(Image.open(default_ds.root / ip)).reshape(-1, 3))
        masks.append(np.asarray(Image.open(default_ds.root / mp)).reshape(-1))
    return np.concatenate(imgs).astype(np.float64), np.concatenate(masks)


# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------


def test_classes_and_palette():
    assert DEMO_CLASSES == ("cropland", "forest", "water", "road", "building", "bare soil")
    assert len(DEMO_PALETTE) == len(DEMO_CLASSES)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in DEMO_PALETTE)
    assert len(set(DEMO_PALETTE)) == len(DEMO_PALETTE)
    r, g, b = np.array(DEMO_PALETTE, dtype=int).T
    assert b[WATER] > r[WATER] and b[WATER] > g[WATER]  # water is blue
    assert r[BUILDING] > g[BUILDING] and r[BUILDING] > b[BUILDING]  # building is red
    assert g[FOREST] > r[FOREST] and g[FOREST] > b[FOREST]  # forest is green ...
    assert sum(DEMO_PALETTE[FOREST]) < sum(DEMO_PALETTE[CROPLAND])  # ... and darker than crops
    assert r[ROAD] == g[ROAD] == b[ROAD]  # road is grey


# --------------------------------------------------------------------------------------
# generate_scene
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(128, 128), (97, 161), (16, 16)])
def test_generate_scene_shapes_and_dtypes(hw):
    image, mask = generate_scene(*hw, np.random.default_rng(0))
    assert image.shape == (*hw, 3) and image.dtype == np.uint8
    assert mask.shape == hw and mask.dtype == np.uint8
    assert mask.max() < len(DEMO_CLASSES)
    assert image.std() > 5  # not a flat image


def test_generate_scene_deterministic_per_seed():
    a = generate_scene(128, 128, np.random.default_rng(7))
    b = generate_scene(128, 128, np.random.default_rng(7))
    c = generate_scene(128, 128, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_generate_scene_rejects_empty_size():
    with pytest.raises(ValueError):
        generate_scene(0, 10, np.random.default_rng(0))


# --------------------------------------------------------------------------------------
# Content: coverage and the image carrying the label
# --------------------------------------------------------------------------------------


def test_class_coverage_over_default_dataset(default_ds):
    counts = np.zeros(len(DEMO_CLASSES), np.int64)
    for lst in (default_ds.labelled, default_ds.val, default_ds.test):
        for line in lst.read_text().splitlines():
            mask = np.asarray(Image.open(default_ds.root / line.split(" ")[1]))
            counts += np.bincount(mask.ravel(), minlength=len(DEMO_CLASSES))
    shares = counts / counts.sum()
    assert (shares >= 0.02).all(), dict(zip(DEMO_CLASSES, shares.round(3)))


def test_class_coverage_of_labelled_split(labelled_pixels):
    _, labels = labelled_pixels
    shares = np.bincount(labels, minlength=len(DEMO_CLASSES)) / labels.size
    assert (shares >= 0.02).all(), dict(zip(DEMO_CLASSES, shares.round(3)))


def test_class_appearance_is_sensible(labelled_pixels):
    rgb, labels = labelled_pixels
    mean = np.array([rgb[labels == c].mean(axis=0) for c in range(len(DEMO_CLASSES))])
    r, g, b = mean.T
    bright = mean.sum(axis=1)
    blueness = b - r
    assert blueness[WATER] > blueness[CROPLAND] + 20  # water is bluer than cropland
    assert blueness[WATER] > blueness[BARE_SOIL] + 20
    assert bright[FOREST] < bright[CROPLAND] - 60  # forest is darker than cropland
    assert bright[WATER] < bright[CROPLAND] - 60
    assert g[CROPLAND] > r[CROPLAND] and g[CROPLAND] > b[CROPLAND]  # crops are green-ish
    assert (g - r)[CROPLAND] > (g - r)[BARE_SOIL] + 15  # bare soil is browner than crops
    assert (r - b)[BUILDING] > (r - b)[ROAD] + 15  # roofs are redder than roads
    sat = mean.max(axis=1) - mean.min(axis=1)
    assert sat[ROAD] < sat[CROPLAND] and sat[ROAD] < sat[BARE_SOIL]  # roads are greyish
    # All class mean colours are distinct.
    dist = np.linalg.norm(mean[:, None] - mean[None], axis=-1)
    assert dist[~np.eye(len(DEMO_CLASSES), dtype=bool)].min() > 8


def test_not_separable_per_pixel_but_informative(labelled_pixels):
    """A per-pixel nearest-colour-centroid classifier is far from perfect but far above
    chance: the image carries the label, yet context (texture, shape) is needed."""
    rgb, labels = labelled_pixels
    centroids = np.array([rgb[labels == c].mean(axis=0) for c in range(len(DEMO_CLASSES))])
    pred = ((rgb[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(axis=1)
    acc = float((pred == labels).mean())
    assert 0.40 < acc < 0.95, acc
    # Also clearly better than always predicting the most frequent class.
    majority = np.bincount(labels).max() / labels.size
    assert acc > majority + 0.1, (acc, majority)


# --------------------------------------------------------------------------------------
# write_demo_dataset
# --------------------------------------------------------------------------------------


def test_layout_and_formats(default_ds):
    root = default_ds.root
    assert isinstance(default_ds, DemoDataset)
    assert default_ds.labelled == root / "splits" / "labelled.txt"
    assert default_ds.unlabelled == root / "splits" / "unlabelled.txt"
    assert default_ds.val == root / "splits" / "val.txt"
    assert default_ds.test == root / "splits" / "test.txt"
    expected = {default_ds.labelled: 16, default_ds.unlabelled: 96, default_ds.val: 16,
                default_ds.test: 24}
    ids = []
    for lst, n in expected.items():
        text = lst.read_text()
        assert text.endswith("\n") and "\r" not in text and "\n\n" not in text
        lines = text.splitlines()
        assert len(lines) == n
        for line in lines:
            parts = line.split(" ")
            if lst == default_ds.unlabelled:
                assert len(parts) == 1
            else:
                assert len(parts) == 2
                tid = Path(parts[0]).stem
                assert parts[1] == f"masks/{tid}.png"
                assert (root / parts[1]).is_file()
            assert parts[0].startswith("images/tile_") and parts[0].endswith(".png")
            assert (root / parts[0]).is_file()
            ids.append(Path(parts[0]).stem)
    assert len(set(ids)) == len(ids) == 152  # no tile in two splits
    assert sorted(ids) == [f"tile_{i:04d}" for i in range(152)]

    for tid in ids:
        with Image.open(root / "images" / f"{tid}.png") as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (128, 128)
        # Every tile has a mask, including the unlabelled ones.
        with Image.open(root / "masks" / f"{tid}.png") as im:
            assert im.mode == "L" and im.size == (128, 128)
            assert np.asarray(im).max() < len(DEMO_CLASSES)

    assert default_ds.scenes == [root / "scenes" / "scene_0.png", root / "scenes" / "scene_1.png"]
    for k, scene in enumerate(default_ds.scenes):
        with Image.open(scene) as im:
            assert im.mode == "RGB" and im.size == (560, 400)  # PIL size is (width, height)
        with Image.open(root / "scenes" / f"scene_{k}_mask.png") as im:
            assert im.mode == "L" and im.size == (560, 400)
            m = np.asarray(im)
            assert m.max() < len(DEMO_CLASSES) and len(np.unique(m)) >= 4

    meta = json.loads((root / "dataset.json").read_text())
    assert meta["seed"] == 0 and meta["tile_size"] == 128
    # No temporary files left behind.
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a = write_demo_dataset(tmp_path / "a", seed=3, **SMALL)
    b = write_demo_dataset(tmp_path / "b", seed=3, **SMALL)
    c = write_demo_dataset(tmp_path / "c", seed=4, **SMALL)
    fa, fb, fc = _all_files(a.root), _all_files(b.root), _all_files(c.root)
    assert len(fa) == 2 * 8 + 4 + 2 + 1  # tiles + masks, 4 lists, 1 scene + mask, dataset.json
    assert fa == fb
    assert fa.keys() == fc.keys()
    for name in fa:
        if name.startswith(("images/", "masks/", "scenes/")):
            assert fa[name] != fc[name], name


def test_default_dataset_is_reproducible(default_ds, tmp_path):
    """The labelled tiles of a second default-seed dataset match the default one byte for
    byte (tiles are seeded per split and index, so smaller counts give the same tiles)."""
    small = write_demo_dataset(tmp_path / "d", seed=0, n_labelled=16, n_unlabelled=0,
                               n_val=0, n_test=0, n_scenes=0)
    for line in small.labelled.read_text().splitlines():
        for rel in line.split(" "):
            assert (small.root / rel).read_bytes() == (default_ds.root / rel).read_bytes()
    assert small.unlabelled.read_text() == "" and small.scenes == []


def test_second_call_does_not_rewrite(tmp_path):
    first = write_demo_dataset(tmp_path / "x", seed=1, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in first.root.rglob("*") if p.is_file()}
    second = write_demo_dataset(tmp_path / "x", seed=1, **SMALL)
    after = {p: p.stat().st_mtime_ns for p in second.root.rglob("*") if p.is_file()}
    assert second == first
    assert before == after


def test_other_arguments_or_incomplete_dataset_are_rewritten(tmp_path):
    root = tmp_path / "y"
    write_demo_dataset(root, seed=1, **SMALL)
    # Other arguments: rewritten, and the record says so.
    ds = write_demo_dataset(root, seed=2, **SMALL)
    assert json.loads((root / "dataset.json").read_text())["seed"] == 2
    assert _all_files(root) == _all_files(write_demo_dataset(tmp_path / "z", seed=2, **SMALL).root)
    # A missing file (e.g. an interrupted run or a user deleting something) is regenerated.
    victim = ds.root / "images" / "tile_0000.png"
    good = victim.read_bytes()
    victim.unlink()
    write_demo_dataset(root, seed=2, **SMALL)
    assert victim.read_bytes() == good


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_demo_dataset(tmp_path / "bad", n_labelled=-1)
    with pytest.raises(ValueError):
        write_demo_dataset(tmp_path / "bad", tile_size=0)
    with pytest.raises(ValueError):
        write_demo_dataset(tmp_path / "bad", seed=-5)


# --------------------------------------------------------------------------------------
# The survey setting: labelled tiles from one part of the area, conditions varying across it
# --------------------------------------------------------------------------------------


def _scene_pair(index: int, u: float | None):
    return generate_scene(128, 128, np.random.default_rng(np.random.SeedSequence([5, 0, index])), u)


def test_acquisition_changes_conditions_not_ground():
    """Late in the survey (u = 1) the same ground is imaged riper, darker and hazier than at u = 0:
    cropland redder against green, lower contrast; the mask is unchanged."""
    ratios, contrast = {0.0: [], 1.0: []}, {0.0: [], 1.0: []}
    for index in range(6):
        for u in (0.0, 1.0):
            image, mask = _scene_pair(index, u)
            assert np.array_equal(mask, _scene_pair(index, None)[1])
            rgb = image.astype(np.float64)
            crop = mask == CROPLAND
            if crop.sum() > 100:
                ratios[u].append(rgb[crop, 0].mean() / rgb[crop, 1].mean())
            contrast[u].append(rgb.std())
    assert min(r1 - r0 for r0, r1 in zip(ratios[0.0], ratios[1.0])) > 0.05
    assert all(c1 < 0.85 * c0 for c0, c1 in zip(contrast[0.0], contrast[1.0]))
    # the uniform setting draws nothing more: no conditions, the scene of before
    assert np.array_equal(_scene_pair(0, None)[0], generate_scene(128, 128, np.random.default_rng(
        np.random.SeedSequence([5, 0, 0])))[0])


def test_survey_positions_put_labelled_tiles_in_one_part():
    labelled = [survey_position("survey", "labelled", 0, i) for i in range(200)]
    test = [survey_position("survey", "test", 0, i) for i in range(200)]
    assert max(labelled) < SURVEY_LABELLED_PART and min(labelled) >= 0.0
    assert max(test) > 0.9 and min(test) < 0.1 and np.mean(np.asarray(test) > SURVEY_LABELLED_PART) > 0.6
    assert survey_position("uniform", "test", 0, 3) is None
    assert survey_position("survey", "test", 1, 3) != survey_position("survey", "test", 0, 3)


def test_survey_dataset_same_ground_other_conditions(tmp_path):
    uniform = write_demo_dataset(tmp_path / "u", seed=2, **SMALL)
    survey = write_demo_dataset(tmp_path / "s", seed=2, setting="survey", **SMALL)
    fu, fs = _all_files(uniform.root), _all_files(survey.root)
    assert fu.keys() == fs.keys()
    assert json.loads(fs["dataset.json"])["setting"] == "survey"
    for name in fu:
        if name.startswith("masks/") or name.endswith("_mask.png") or name.startswith("splits/"):
            assert fu[name] == fs[name], name  # the same ground and the same lists
        elif name.startswith(("images/", "scenes/")):
            assert fu[name] != fs[name], name  # acquired under other conditions
    # a scene crosses the survey area: its right side is hazier (less contrast) than its left
    with Image.open(survey.scenes[0]) as im:
        scene = np.asarray(im).astype(np.float64)
    third = scene.shape[1] // 3
    assert scene[:, -third:].std() < scene[:, :third].std()
    # another setting in the same folder rewrites it
    write_demo_dataset(tmp_path / "u", seed=2, setting="survey", **SMALL)
    assert _all_files(uniform.root) == fs
    with pytest.raises(ValueError, match="setting must be one of uniform, survey"):
        write_demo_dataset(tmp_path / "bad", setting="surveys", **SMALL)
