"""Palette ("P" mode) masks: without ``color_masks`` their indices are the labels; with it they
are decoded by colour, so the order of a file's palette does not matter."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from co2s.config.loader import validate
from co2s.data.dataset import SampleReader
from co2s.data.io import read_mask
from co2s.data.labels import LabelEncoder
from co2s.data.sources import read_split
from tests.conftest import shared_dataset, tiny_config_dict

CLASSES = {"building": (255, 0, 0), "road": (255, 255, 0), "water": (0, 0, 255)}


def _palette_png(path, labels, order, suffix=".png"):
    """A mask as an annotation tool writes it: a "P" image whose palette lists the classes in
    the tool's own ``order`` (a different project file, a different order)."""
    names = list(CLASSES)
    index_of = {name: order.index(name) for name in names}
    indices = np.vectorize(lambda k: index_of[names[k]])(labels).astype(np.uint8)
    img = Image.fromarray(indices, mode="L").convert("P")
    flat = [c for name in order for c in CLASSES[name]]
    img.putpalette(flat + [0, 0, 0] * (256 - len(order)))
    path = path.with_suffix(suffix)
    img.save(path)
    return path, indices


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_palette_masks_with_and_without_color_masks(tmp_path, suffix):
    labels = np.zeros((12, 16), int)
    labels[:, 5:] = 1
    labels[6:, 10:] = 2
    a, a_idx = _palette_png(tmp_path / "a", labels, ["building", "road", "water"], suffix)
    b, b_idx = _palette_png(tmp_path / "b", labels, ["water", "building", "road"], suffix)
    assert not np.array_equal(a_idx, b_idx)
    # without color_masks: the indices as stored are the labels
    assert np.array_equal(read_mask(a), a_idx) and np.array_equal(read_mask(b), b_idx)
    # with color_masks: decoded by colour, the same labels whatever the palette order
    encoder = LabelEncoder(num_classes=3, palette=tuple(CLASSES.values()))
    for path in (a, b):
        rgb = read_mask(path, color=True)
        assert rgb.shape == (12, 16, 3)
        assert np.array_equal(encoder.encode(rgb), labels)


def test_palette_masks_through_the_dataset(tmp_path):
    labels = np.zeros((32, 32), int)
    labels[8:, :] = 1
    labels[20:, 16:] = 2
    (tmp_path / "images").mkdir()
    lines = []
    for name, order in (("a", ["building", "road", "water"]), ("b", ["road", "water", "building"])):
        _palette_png(tmp_path / name, labels, order)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images" / f"{name}.png")
        lines.append(f"images/{name}.png {name}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    cfg = tiny_config_dict(tmp_path, tmp_path / "run")
    cfg["data"].update(classes=list(CLASSES), palette=list(CLASSES.values()), color_masks=True)
    data = validate(cfg).data
    reader = SampleReader(data)
    for sample in read_split("list.txt", data, labelled=True):
        assert np.array_equal(reader.pair(sample)[1].numpy(), labels)


def test_real_whdld_palette_png_decodes_the_same_either_way():
    root = shared_dataset("whdld-sample")
    path = root / "ImagesPNG" / "wh0001.png"
    palette = ((255, 0, 0), (255, 255, 0), (192, 192, 0), (0, 255, 0), (128, 128, 128), (0, 0, 255))
    by_index = LabelEncoder(num_classes=6, reduce_zero_label=True).encode(read_mask(path))
    by_colour = LabelEncoder(num_classes=6, palette=palette).encode(read_mask(path, color=True))
    assert np.array_equal(by_index, by_colour)
    assert set(np.unique(by_colour).tolist()) == {1, 3, 5}
