"""The label check of the labelled split: pixels per class, colours outside the palette, the
start-up table; the real AI4Mars splits and the built-in demo data pass it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from co2s.config.loader import load_config, validate
from co2s.data.labels import LabelEncoder
from co2s.data.sources import check_labels, class_table, read_split, validate_samples
from co2s.data.splits import make_splits
from co2s.demo.synthetic import write_demo_dataset
from co2s.errors import DataError
from tests.conftest import shared_dataset, tiny_config_dict

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _colour_masks(root, typo_pixels=0):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i in range(2):
        labels = np.zeros((20, 20), int)
        labels[:, 10:] = 1
        labels[15:, :] = 2
        rgb = np.asarray(PALETTE, np.uint8)[labels]
        rgb.reshape(-1, 3)[:typo_pixels] = (1, 254, 0)  # a near-green colour nobody declared
        Image.fromarray(rgb).save(root / "masks" / f"{i}.png")
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "images" / f"{i}.png")
        lines.append(f"images/{i}.png masks/{i}.png")
    (root / "l.txt").write_text("\n".join(lines) + "\n")
    cfg = tiny_config_dict(root, root / "run")
    cfg["data"].update(palette=[list(c) for c in PALETTE], color_masks=True)
    return validate(cfg).data


def test_counts_per_class_ignored_and_unmatched(tmp_path):
    data = _colour_masks(tmp_path, typo_pixels=8)
    samples = read_split("l.txt", data, labelled=True)
    stats = validate_samples(samples, LabelEncoder.from_config(data), "full", color_masks=True)
    # per mask: 150 red, 150 green (8 of the red row became the unknown colour), 100 blue
    assert stats.masks == 2 and stats.counts.tolist() == [2 * 142, 2 * 150, 2 * 100]
    assert stats.ignored == stats.unmatched_pixels == 16
    assert [(s.origin, share, colours) for s, share, colours in stats.unmatched] == [
        (samples[0].origin, 8 / 400, [((1, 254, 0), 8)]), (samples[1].origin, 8 / 400, [((1, 254, 0), 8)])]
    table = class_table(stats, data.classes)
    assert "2 masks" in table and "c0" in table and "284" in table and "(unmatched)" in table
    with pytest.raises(DataError, match=r"(?s)2 colour mask\(s\) have more than 1 %.*0\.png \(listed at .*l\.txt:1\): "
                       r"2\.0 % unmatched, \(1, 254, 0\) \(8 px\)"):
        check_labels(stats, data.classes, "error", 0.01)
    assert check_labels(stats, data.classes, "error", 0.05) == []
    assert len(check_labels(stats, data.classes, "warn", 0.01)) == 1
    # the other levels read no mask: no statistics
    assert validate_samples(samples, LabelEncoder.from_config(data), "exists") is None


def test_absent_classes_are_named(tmp_path):
    data = _colour_masks(tmp_path)
    encoder = LabelEncoder(num_classes=5, palette=(*PALETTE, (1, 1, 1), (2, 2, 2)))
    stats = validate_samples(read_split("l.txt", data, labelled=True), encoder, "full", color_masks=True)
    with pytest.raises(DataError, match=r"class\(es\) c3, c4 have no pixel"):
        check_labels(stats, ["c0", "c1", "c2", "c3", "c4"])
    assert "<- no pixel" in class_table(stats, ["c0", "c1", "c2", "c3", "c4"])


def test_ignore_colors_are_not_unmatched():
    encoder = LabelEncoder(num_classes=2, palette=((9, 9, 9), (200, 0, 0)), ignore_colors=((0, 0, 0),))
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0] = (200, 0, 0)
    rgb[1, :2] = (7, 7, 7)
    assert encoder.unmatched_colors(rgb) == (2, [((7, 7, 7), 2)])
    assert (encoder.encode(rgb)[2:] == 255).all()


@pytest.mark.slow
def test_real_ai4mars_labelled_splits_pass(tmp_path):
    root = shared_dataset("ai4mars-msl-256")
    config = load_config("ai4mars", [f"data.root={root}"])
    data, encoder = config.data, LabelEncoder.from_config(config.data)
    train = read_split(data.splits.labelled, data, labelled=True)
    stats = validate_samples(train, encoder, "full", channels=3)
    assert check_labels(stats, data.classes) == []
    shares = stats.counts / stats.counts.sum()
    np.testing.assert_allclose(shares, [0.370, 0.503, 0.118, 0.009], atol=0.001)  # the README's shares
    assert "big_rock" in class_table(stats, data.classes)
    for ratio in ("1/16", "1/8"):
        for seed in (0, 1):  # the study's splits
            make_splits(train, ratio, seed, tmp_path / f"{seed}")
            (tmp_path / "ids.txt").write_text((tmp_path / f"{seed}" / "labelled.txt").read_text())
            subset = read_split(str(tmp_path / "ids.txt"), data, labelled=True)
            assert check_labels(validate_samples(subset, encoder, "full"), data.classes) == []


def test_demo_data_passes(tmp_path):
    for seed in (0, 1, 2):
        dataset = write_demo_dataset(tmp_path / f"d{seed}", seed=seed, n_unlabelled=0, n_val=0, n_test=0,
                                     n_scenes=0)
        config = load_config("demo", [f"data.root={dataset.root}"])
        samples = read_split(config.data.splits.labelled, config.data, labelled=True)
        stats = validate_samples(samples, LabelEncoder.from_config(config.data), "full", channels=3)
        assert check_labels(stats, config.data.classes) == []
