"""Scenes as a training source: labels per window equal a whole-scene reference rasterisation,
no label outside the polygons, tiles cut from a scene count the same pixels, the items are those
of the tile datasets, reads are windowed, sampling is seeded."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from PIL import Image
from rasterio.features import rasterize
from rasterio.windows import Window

from co2s.config.loader import validate
from co2s.data.dataset import LabelledCrops, UnlabelledPairs
from co2s.data.labels import LabelEncoder
from co2s.data.scenes import LabelledSceneCrops, UnlabelledScenePairs, load_scenes, scene_pools
from co2s.data.sources import read_split, validate_samples
from co2s.errors import DataError
from co2s.data.raster import Window as PixelWindow
from tests.conftest import write_tiny_dataset, weak_params
from tests.data.scene_data import (
    CLASSES,
    OTHER_CRS,
    RASTER_CRS,
    nodata_area,
    polygons_in_pixels,
    reference_labels,
    scene_data_config,
    scene_transform,
    to_crs,
    write_scene,
    write_vector,
)

SIZE = (200, 210)
CROP = 32


def _config(root: Path, crop: int = CROP, scale_range=(0.5, 2.0), hflip_p: float = 0.5, **scenes):
    return validate({"data": scene_data_config(root, **scenes),
                     "train": {"iters": 2, "crop_size": crop, "scale_range": list(scale_range),
                               "augment": {"hflip_p": hflip_p}}})


def _scene(tmp_path: Path, vector_crs: str = OTHER_CRS, **scenes):
    write_scene(tmp_path / "scene.tif", SIZE)
    write_vector(tmp_path / "labels.gpkg", crs=vector_crs)
    return tmp_path


def _datasets(config, **pool):
    scene_set = load_scenes(config.data, config.in_channels, progress=False)
    labelled, unlabelled = scene_pools(scene_set, config.data, config.train.crop_size)
    t = config.train
    weak = weak_params((t.crop_size, t.crop_size), tuple(t.scale_range), t.augment.hflip_p,
                          config.data.ignore_index)
    return scene_set, LabelledSceneCrops(labelled, weak), UnlabelledScenePairs(unlabelled, weak)


def _window(path: str) -> tuple[int, int, int, int]:
    x0, y0, w, h = map(int, re.search(r"#window=(\d+),(\d+),(\d+)x(\d+)$", path).groups())
    return x0, y0, w, h


def _reference_with_nodata() -> np.ndarray:
    ref = reference_labels(SIZE)
    ref[nodata_area(SIZE)] = 255
    return ref


@pytest.mark.parametrize("vector_crs", [RASTER_CRS, OTHER_CRS], ids=["same-crs", "reprojected"])
def test_window_labels_equal_the_whole_scene_reference(tmp_path, vector_crs):
    """(a) A window's rasterised labels are the whole-scene reference cropped to it, at scale 1
    and read into another size (then against the reference rasterised on that window's grid)."""
    config = _config(_scene(tmp_path, vector_crs))
    scene = load_scenes(config.data, progress=False).scenes[0]
    reference = reference_labels(SIZE)
    assert (reference != 255).sum() > 5000  # the polygons label a good part of the scene
    for x0, y0, w, h in [(0, 0, 210, 200), (17, 23, 64, 64), (150, 140, 60, 60), (100, 0, 33, 71)]:
        got = scene.labels.read(PixelWindow(x0, y0, w, h), (h, w))
        np.testing.assert_array_equal(got, reference[y0 : y0 + h, x0 : x0 + w])
    shapes = [(to_crs(g, RASTER_CRS), CLASSES.index(c)) for g, c in polygons_in_pixels()]
    for x0, y0, w, h, out in [(10, 20, 90, 90, (32, 32)), (120, 10, 20, 20, (32, 32))]:
        grid = scene_transform() @ rasterio.Affine(w / out[1], 0, x0, 0, h / out[0], y0)
        expected = rasterize(shapes, out_shape=out, transform=grid, fill=255, dtype="uint8")
        np.testing.assert_array_equal(scene.labels.read(PixelWindow(x0, y0, w, h), out), expected)


def test_labelled_crops_never_label_a_pixel_outside_its_polygon(tmp_path):
    """(b) Every labelled pixel of many rescaled crops has its centre in a polygon of its class."""
    config = _config(_scene(tmp_path), hflip_p=0.0)
    _, crops, _ = _datasets(config)
    by_class = {c: shapely.union_all([g for g, name in polygons_in_pixels() if name == c]) for c in CLASSES}
    labelled = 0
    for i in range(120):
        item = crops[(i, 1000 + i)]
        mask = item["mask"].numpy()
        x0, y0, w, h = _window(item["path"])
        assert w == h <= CROP / 0.5  # windows never reach past this scene: read into the whole crop
        rows, cols = np.nonzero(mask != 255)
        labelled += rows.size
        # output pixel centres in scene pixels
        xs = x0 + (cols + 0.5) * w / CROP
        ys = y0 + (rows + 0.5) * h / CROP
        for index, name in enumerate(CLASSES):
            sel = mask[rows, cols] == index
            inside = shapely.dwithin(by_class[name], shapely.points(xs[sel], ys[sel]), 1e-6)
            assert inside.all(), (item["path"], int((~inside).sum()))
    assert labelled > 10_000


def test_scale_one_crops_are_the_reference_with_nodata_ignored(tmp_path):
    config = _config(_scene(tmp_path), scale_range=(1.0, 1.0), hflip_p=0.0)
    _, crops, _ = _datasets(config)
    reference = _reference_with_nodata()
    for i in range(40):
        item = crops[(i, i)]
        x0, y0, w, h = _window(item["path"])
        assert (w, h) == (CROP, CROP)
        np.testing.assert_array_equal(item["mask"].numpy(), reference[y0 : y0 + h, x0 : x0 + w])
        invalid = nodata_area(SIZE)[y0 : y0 + h, x0 : x0 + w]
        assert (item["image"][:, torch.from_numpy(invalid)] == 0).all()
        assert (item["mask"] != 255).any()  # a labelled crop holds labels


def test_tiles_cut_from_the_scene_count_the_same_labelled_pixels(tmp_path):
    """(c) Cut the scene into tiles + masks rasterised from the same polygons (nodata as ignore):
    the tile split's class counts equal the scene index's."""
    config = _config(_scene(tmp_path))
    scene_set = load_scenes(config.data, progress=False)
    reference = _reference_with_nodata()
    (tmp_path / "tiles" / "images").mkdir(parents=True)
    (tmp_path / "tiles" / "masks").mkdir()
    with rasterio.open(tmp_path / "scene.tif") as src:
        for y in range(0, SIZE[0], 50):
            for x in range(0, SIZE[1], 70):
                window = Window(x, y, 70, 50)
                profile = {**src.profile, "width": 70, "height": 50, "transform": src.window_transform(window)}
                profile.pop("blockxsize"), profile.pop("blockysize"), profile.pop("tiled")
                with rasterio.open(tmp_path / "tiles" / "images" / f"t{y}_{x}.tif", "w", **profile) as dst:
                    dst.write(src.read(window=window))
                Image.fromarray(reference[y : y + 50, x : x + 70].astype(np.uint8)).save(
                    tmp_path / "tiles" / "masks" / f"t{y}_{x}.png")
    tiles = read_split("tiles", config.data, labelled=True)
    assert len(tiles) == 12
    stats = validate_samples(tiles, LabelEncoder.from_config(config.data), "full")
    np.testing.assert_array_equal(scene_set.counts, stats.counts)
    np.testing.assert_array_equal(scene_set.stats().counts, stats.counts)
    assert scene_set.stats().ignored == SIZE[0] * SIZE[1] - stats.counts.sum()


def test_anchors_follow_the_labelled_pixels_small_polygons_included(tmp_path):
    """Labelled crops are anchored on labelled pixels drawn uniformly (stratified per epoch): the
    anchors of evenly spaced fractions hit each class in proportion, the 30-pixel polygon too."""
    config = _config(_scene(tmp_path))
    scene_set, crops, _ = _datasets(config)
    reference = _reference_with_nodata()
    n = 400
    anchors = [crops.anchor((k + 0.5) / n) for k in range(n)]
    classes = np.array([reference[y, x] for _, x, y in anchors])
    assert (classes != 255).all()
    share = np.bincount(classes, minlength=3) / n
    np.testing.assert_allclose(share, scene_set.counts / scene_set.counts.sum(), atol=0.01)
    small = shapely.box(160.3, 150.3, 166.7, 155.7)
    assert any(shapely.contains_xy(small, x + 0.5, y + 0.5) for _, x, y in anchors)


def test_scene_items_have_the_keys_shapes_and_dtypes_of_the_tile_items(tmp_path):
    config = _config(_scene(tmp_path / "s"))
    _, crops, pairs = _datasets(config)
    tiles = write_tiny_dataset(tmp_path / "tiles", n=4, size=48)
    samples = read_split("train.txt", validate({"data": {"root": str(tiles), "classes": CLASSES},
                                               "train": {"iters": 1}}).data, labelled=True)
    weak = weak_params((CROP, CROP))
    tile_item = LabelledCrops(samples, config.data, weak)[(0, 3)]
    tile_pair = UnlabelledPairs(samples, config.data, weak)[(0, 3)]
    for ours, theirs in ((crops[(0, 3)], tile_item), (pairs[(0, 3)], tile_pair)):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert (ours[key].shape, ours[key].dtype) == (value.shape, value.dtype), key
            else:
                assert isinstance(ours[key], str) and ours[key].startswith(str(tmp_path / "s" / "scene.tif"))
    item = pairs[(1, 11)]
    assert item["u_path"] != item["mix_path"]  # the CutMix source is another window


def test_items_depend_only_on_their_key_and_survive_pickling(tmp_path):
    config = _config(_scene(tmp_path))
    _, crops, pairs = _datasets(config)
    a, b = crops[(2, 77)], crops[(2, 77)]
    assert a["path"] == b["path"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert crops[(2, 78)]["path"] != a["path"]
    u = pairs[(3, 5)]
    clone = pickle.loads(pickle.dumps(pairs))  # after use: no open dataset is pickled
    v = clone[(3, 5)]
    assert all(torch.equal(u[k], v[k]) if isinstance(u[k], torch.Tensor) else u[k] == v[k] for k in u)
    assert clone.set.scenes[0].reader._dataset is not None  # reopened lazily in this "process"


def test_data_loader_workers_open_the_scenes_themselves(tmp_path):
    """Workers (forked with the parent's dataset) reopen the raster in their own process and give
    the same items as the main process."""
    from torch.utils.data import DataLoader

    config = _config(_scene(tmp_path))
    _, crops, _ = _datasets(config)
    keys = [(i, 50 + i) for i in range(4)]
    here = [crops[k] for k in keys]  # opens the raster in this process first
    loader = DataLoader(crops, batch_size=2, sampler=keys, num_workers=2)
    batches = list(loader)
    images = torch.cat([b["image"] for b in batches])
    assert torch.equal(images, torch.stack([h["image"] for h in here]))
    assert [p for b in batches for p in b["path"]] == [h["path"] for h in here]


class _Spy:
    """Forwards to a rasterio dataset and records every read's window and output shape."""

    def __init__(self, dataset, calls: list) -> None:
        self._dataset, self._calls = dataset, calls

    def __getattr__(self, name):
        attr = getattr(self._dataset, name)
        if name in {"read", "read_masks"}:
            def recorded(*args, **kwargs):
                self._calls.append((kwargs.get("window"), kwargs.get("out_shape")))
                return attr(*args, **kwargs)
            return recorded
        return attr


def test_every_read_is_a_window_no_larger_than_the_rescaled_crop(tmp_path, monkeypatch):
    """Training reads windows only: crops of at most crop / 0.5 scene pixels, and the index blocks
    (here made that size too) that locate a crop's labelled anchor pixel."""
    monkeypatch.setattr("co2s.data.scene_set.BLOCK", 64)
    config = _config(_scene(tmp_path), scale_range=(0.5, 2.0))
    _, crops, pairs = _datasets(config)
    calls: list = []
    scene = crops.set.scenes[0]
    scene.reader._dataset, scene.reader._pid = _Spy(rasterio.open(tmp_path / "scene.tif"), calls), os.getpid()
    for i in range(10):
        crops[(i, i)]
        pairs[(i, i)]
    assert calls
    for window, out_shape in calls:
        assert window is not None
        assert window.width <= CROP / 0.5 and window.height <= CROP / 0.5
        assert out_shape is None or max(out_shape[-2:]) <= CROP


def test_scene_reads_run_with_a_bounded_gdal_block_cache(tmp_path, monkeypatch):
    """GDAL's default cache (5 % of RAM) would keep the decoded blocks of every window read, so
    memory would grow with the scene: every training read (and the index) runs under the cap."""
    from co2s.data.raster import TRAINING_GDAL_CACHE_BYTES
    from co2s.data.scene_set import Scene

    seen: list = []
    read = Scene.read

    def spy(self, *args, **kwargs):
        seen.append(rasterio.env.get_gdal_config("GDAL_CACHEMAX"))
        return read(self, *args, **kwargs)

    monkeypatch.setattr(Scene, "read", spy)
    _, crops, pairs = _datasets(_config(_scene(tmp_path)))
    for i in range(3):
        crops[(i, i)]
        pairs[(i, i)]
    assert len(seen) >= 6 and set(seen) == {TRAINING_GDAL_CACHE_BYTES}, seen


def test_unlabelled_crops_avoid_labelled_pixels(tmp_path):
    config = _config(_scene(tmp_path), scale_range=(1.0, 1.0), hflip_p=0.0)
    _, _, pairs = _datasets(config)
    reference = _reference_with_nodata()
    for i in range(12):
        item = pairs[(i, 100 + i)]
        for path, valid in ((item["u_path"], item["u_valid"]), (item["mix_path"], item["mix_valid"])):
            x0, y0, w, h = _window(path)
            window = reference[y0 : y0 + h, x0 : x0 + w]
            assert not valid.numpy()[window != 255].any()
            assert not valid.numpy()[nodata_area(SIZE)[y0 : y0 + h, x0 : x0 + w]].any()
            assert valid.float().mean() >= 0.5  # min_valid: these windows exist here
    shared = _config(tmp_path, scale_range=(1.0, 1.0), hflip_p=0.0, exclude_labelled=False)
    _, _, pairs = _datasets(shared)
    overlap = 0
    for i in range(12):
        item = pairs[(i, 100 + i)]
        x0, y0, w, h = _window(item["u_path"])
        overlap += int(item["u_valid"].numpy()[reference[y0 : y0 + h, x0 : x0 + w] != 255].sum())
    assert overlap > 0  # without exclude_labelled, labelled areas are unlabelled crops too


def test_complete_labels_make_every_other_pixel_background(tmp_path):
    _scene(tmp_path)
    config = _config(tmp_path, labels={"vector": "labels.gpkg", "attribute": "class", "complete": True,
                                       "background": "c1"})
    scene_set = load_scenes(config.data, progress=False)
    expected = reference_labels(SIZE, fill=1)
    expected[nodata_area(SIZE)] = 255
    np.testing.assert_array_equal(scene_set.counts, np.bincount(expected[expected != 255], minlength=3))
    labelled, unlabelled = scene_pools(scene_set, config.data, CROP)
    with pytest.raises(DataError, match="complete.*no unlabelled area.*exclude_labelled: false"):
        UnlabelledScenePairs(unlabelled, weak_params((CROP, CROP)))


@pytest.mark.parametrize("grid", ["same", "reprojected"])
def test_raster_mask_labels_on_the_scene_grid_or_warped(tmp_path, grid):
    """A raster mask on the scene's grid reads as itself; one on a grid in another CRS is warped
    (nearest) and agrees with a whole-scene reprojection."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    write_scene(tmp_path / "scene.tif", SIZE)
    reference = reference_labels(SIZE)
    profile = dict(driver="GTiff", count=1, dtype="uint8", nodata=255)
    if grid == "same":  # nodata 99: no class value, so it must never reach the label check
        profile.update(width=SIZE[1], height=SIZE[0], crs=RASTER_CRS, transform=scene_transform(), nodata=99)
        mask = reference.copy()
        mask[:40] = 99
        reference = reference.copy()
        reference[:40] = 255
    else:
        left, top = scene_transform() @ (0, 0)
        right, bottom = scene_transform() @ (SIZE[1], SIZE[0])
        transform, width, height = calculate_default_transform(RASTER_CRS, OTHER_CRS, SIZE[1], SIZE[0],
                                                               left, bottom, right, top)
        mask = np.full((height, width), 255, np.uint8)
        reproject(reference.astype(np.uint8), mask, src_transform=scene_transform(), src_crs=RASTER_CRS,
                  dst_transform=transform, dst_crs=OTHER_CRS, resampling=Resampling.nearest,
                  src_nodata=255, dst_nodata=255)
        profile.update(width=width, height=height, crs=OTHER_CRS, transform=transform)
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(mask.astype(np.uint8), 1)
    config = _config(tmp_path, labels={"raster": "mask.tif"})
    scene_set = load_scenes(config.data, progress=False)
    scene = scene_set.scenes[0]
    if grid == "same":
        expected = reference
    else:
        expected = np.full(SIZE, 255, np.uint8)
        reproject(mask, expected, src_transform=transform, src_crs=OTHER_CRS, dst_transform=scene_transform(),
                  dst_crs=RASTER_CRS, resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)
        assert ((expected == reference) | (expected == 255) | (reference == 255)).mean() > 0.97
    for x0, y0, w, h in [(0, 0, 210, 200), (17, 23, 64, 64), (150, 140, 60, 60)]:
        np.testing.assert_array_equal(scene.labels.read(PixelWindow(x0, y0, w, h), (h, w)),
                                      expected[y0 : y0 + h, x0 : x0 + w].astype(np.int64))
    with_nodata = expected.astype(np.int64)
    with_nodata[nodata_area(SIZE)] = 255
    np.testing.assert_array_equal(scene_set.counts, np.bincount(with_nodata[with_nodata != 255], minlength=3))
