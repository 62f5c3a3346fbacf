import numpy as np
import pytest

from co2s.data.labels import LabelEncoder
from co2s.errors import DataError


def test_reduce_zero_label():
    enc = LabelEncoder(num_classes=3, reduce_zero_label=True)
    raw = np.array([[0, 1, 2, 3, 255]])
    assert enc.encode(raw).tolist() == [[255, 0, 1, 2, 255]]


def test_label_map_applies_before_reduce_zero_label():
    enc = LabelEncoder(num_classes=2, reduce_zero_label=True, label_map={7: 1, 9: 2})
    assert enc.encode(np.array([[7, 9, 0]])).tolist() == [[0, 1, 255]]


def test_colour_masks_decode_with_palette_and_unknown_colours_are_ignored():
    palette = ((255, 0, 0), (0, 0, 255))
    enc = LabelEncoder(num_classes=2, palette=palette)
    rgb = np.array([[[255, 0, 0], [0, 0, 255], [1, 2, 3]]], np.uint8)
    assert enc.encode(rgb).tolist() == [[0, 1, 255]]


def test_invalid_value_names_source_and_values():
    enc = LabelEncoder(num_classes=4)
    with pytest.raises(DataError, match=r"masks/x\.png: label value\(s\) 4, 7 are neither.*0\.\.3"):
        enc.encode(np.array([[0, 4, 7, 255]]), "masks/x.png")
