"""What ``data.scale: auto`` divided the training images by, read from their headers and recorded
in the inference contract (``auto_scale``) for users that see no file type (an ONNX graph): the
header's data type is the one the reader gives, for every file kind a user has."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from co2s.config.loader import validate
from co2s.data.io import image_dtype, images_auto_scale, read_image
from co2s.data.module import data_module
from co2s.data.raster import dtype_scale
from tests.conftest import tiny_config_dict


def _tiff(path, dtype, count=3):
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=count, dtype=dtype,
                       crs="EPSG:32633", transform=from_origin(5e5, 5e6, 1.0, 1.0)) as dst:
        dst.write(np.ones((count, 8, 8), dtype))
    return path


def _files(tmp_path) -> dict[str, object]:
    rgb = np.full((8, 8, 3), 7, np.uint8)
    files = {}
    for name, image in {
        "rgb.png": Image.fromarray(rgb),
        "rgb.jpg": Image.fromarray(rgb),
        "grey16.png": Image.fromarray(np.full((8, 8), 4000, np.uint16)),  # PIL mode I;16
        "palette.png": Image.fromarray(rgb).convert("P"),  # read as its colours
        "binary.png": Image.fromarray(np.ones((8, 8), bool)),
    }.items():
        if image is not None:
            image.save(tmp_path / name)
            files[name] = tmp_path / name
    files["u16.tif"] = _tiff(tmp_path / "u16.tif", "uint16")
    files["f32.tif"] = _tiff(tmp_path / "f32.tif", "float32")
    files["u8.tif"] = _tiff(tmp_path / "u8.tif", "uint8", count=4)
    return files


def test_the_header_gives_the_data_type_the_reader_gives(tmp_path):
    files = _files(tmp_path)
    for name, path in files.items():
        assert image_dtype(path) == read_image(path).dtype, name
    assert dtype_scale(image_dtype(files["grey16.png"])) == 65535.0
    assert dtype_scale(image_dtype(files["palette.png"])) == 255.0
    assert dtype_scale(">u2") == 65535.0  # PIL's big-endian I;16B is a uint16 too


def test_one_type_gives_its_scale_and_mixed_types_none(tmp_path):
    files = _files(tmp_path)
    assert images_auto_scale([files["rgb.png"], files["rgb.jpg"], files["u8.tif"]]) == 255.0
    assert images_auto_scale([files["u16.tif"], files["grey16.png"]]) == 65535.0
    assert images_auto_scale([files["f32.tif"]]) == 1.0
    assert images_auto_scale([files["rgb.png"], files["u16.tif"]]) is None
    assert images_auto_scale([tmp_path / "missing.png"]) is None


@pytest.mark.parametrize("scale, expected", [("auto", 65535.0), (1000.0, None)])
def test_the_data_module_reports_the_training_images_scale(tmp_path, scale, expected):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i in range(2):
        _tiff(root / "images" / f"t{i}.tif", "uint16")
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / "masks" / f"t{i}.png")
        lines.append(f"images/t{i}.tif masks/t{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    cfg = tiny_config_dict(root, tmp_path / "run")
    cfg["data"]["splits"] = {"labelled": "train.txt"}
    cfg["data"]["label_check"] = "warn"
    cfg["data"]["scale"] = scale
    config = validate(cfg)
    module = data_module(config.data, 3, progress=False).setup_training(config.train, False)
    assert module.auto_scale() == expected
