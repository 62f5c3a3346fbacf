"""Ground sample distance of the training imagery (recorded in the inference contract for the ONNX
``resolution`` key): projected CRSs by their unit, geographic ones at the raster's centre on the
WGS 84 ellipsoid, none without a CRS; ``data.gsd`` wins; mixed files give the median and a warning."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from co2s.config.loader import validate
from co2s.data.module import data_module
from co2s.data.raster import ground_sample_distance
from tests.conftest import tiny_config_dict


def test_projected_crs_in_metres_and_feet():
    assert ground_sample_distance(CRS.from_epsg(32633), from_origin(5e5, 5e6, 0.5, 0.5), 100, 100) == 0.5
    rect = ground_sample_distance(CRS.from_epsg(32633), from_origin(5e5, 5e6, 0.5, 2.0), 100, 100)
    assert rect == pytest.approx(1.0)  # geometric mean of the pixel's sides
    feet = ground_sample_distance(CRS.from_epsg(2227), from_origin(6e6, 2e6, 1.0, 1.0), 100, 100)  # US survey feet
    assert feet == pytest.approx(1200 / 3937, rel=1e-9)
    rotated = Affine(0.3, -0.4, 5e5, -0.4, -0.3, 5e6)  # 0.5 m pixels, rotated
    assert ground_sample_distance(CRS.from_epsg(32633), rotated, 10, 10) == pytest.approx(0.5)


def test_geographic_crs_converted_at_the_centre():
    """1e-5 degree pixels centred at 45 degrees north: a degree of latitude there is 111,132.95 m and
    of longitude 78,846.8 m on WGS 84 (the geodesy tables' values)."""
    transform = from_origin(10.0, 45.0 + 50e-5, 1e-5, 1e-5)  # 100 x 100 pixels: centre at 45 N
    gsd = ground_sample_distance(CRS.from_epsg(4326), transform, 100, 100)
    assert gsd == pytest.approx(np.sqrt(111_132.95e-5 * 78_846.8e-5), rel=1e-5)


def test_no_crs_no_distance():
    assert ground_sample_distance(None, Affine.identity(), 10, 10) is None


def _tiles(root, sizes):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i, pixel in enumerate(sizes):
        with rasterio.open(root / "images" / f"t{i}.tif", "w", driver="GTiff", width=32, height=32, count=3,
                           dtype="uint8", crs="EPSG:32633", transform=from_origin(5e5, 5e6, pixel, pixel)) as dst:
            dst.write(np.full((3, 32, 32), 100 + 40 * i, np.uint8))
        Image.fromarray(np.full((32, 32), i % 3, np.uint8)).save(root / "masks" / f"t{i}.png")
        lines.append(f"images/t{i}.tif masks/t{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def _module(tmp_path, root, **data):
    cfg = tiny_config_dict(root, tmp_path / "run")
    cfg["data"]["splits"] = {"labelled": "train.txt"}
    cfg["data"]["label_check"] = "warn"
    cfg["data"].update(data)
    config = validate(cfg)
    return data_module(config.data, 3, progress=False).setup_training(config.train, False)


def test_training_rasters_give_the_distance_and_data_gsd_wins(tmp_path, capsys):
    root = _tiles(tmp_path / "data", [0.5, 0.5, 0.5])
    assert _module(tmp_path, root).ground_sample_distance() == 0.5
    assert _module(tmp_path, root, gsd=0.3).ground_sample_distance() == 0.3


def test_mixed_distances_give_the_median_and_a_warning(tmp_path, capsys):
    root = _tiles(tmp_path / "data", [0.5, 1.0, 2.0])
    module = _module(tmp_path, root)
    capsys.readouterr()
    assert module.ground_sample_distance() == 1.0
    assert "ground sample distances differ (0.5 to 2 m per pixel)" in capsys.readouterr().err
