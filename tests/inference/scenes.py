"""Synthetic GeoTIFF scenes whose colours carry their classes, and a tiny model trained to read them:
shared by the scene, polygon and GIS plugin tests (the fixture ``trained`` is in conftest.py)."""

from __future__ import annotations

import warnings

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from co2s.config.loader import validate
from co2s.data.raster import scale_image
from co2s.engine.checkpoint import write_model_checkpoint
from co2s.models.factory import build_models
from tests.conftest import tiny_config_dict

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 5000000.0, 10.0, 10.0)
COLOURS = np.array([[200, 60, 40], [40, 160, 60], [50, 70, 210]])


def synthetic_scene(height: int, width: int, seed: int = 0, cell: int = 60):
    """Blocky class map and an image whose colour carries the class (uint8, values >= 1)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 3, (height // cell + 1, width // cell + 1))
    labels = np.kron(coarse, np.ones((cell, cell), int))[:height, :width]
    image = COLOURS[labels].transpose(2, 0, 1) + rng.normal(0, 12, (3, height, width))
    return np.clip(image, 1, 255).astype(np.uint8), labels


def write_raster(path, array, nodata=None, crs=CRS, transform=TRANSFORM, **extra):
    profile = dict(driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                   dtype=array.dtype, nodata=nodata, **extra)
    if crs:
        profile.update(crs=crs, transform=transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
    return path


def scene_config(tmp_path, **data):
    cfg = tiny_config_dict(tmp_path, tmp_path / "run")
    cfg["eval"].update(window=192, batch_size=8)
    cfg["data"].update(data)
    return validate(cfg)


def train_colour_reader(tmp):
    """A tiny lite_unet trained for a few seconds to read the class colours: its checkpoint (in
    ``tmp``), config and model."""
    config = scene_config(tmp)
    torch.manual_seed(0)
    threads = torch.get_num_threads()  # restored below: a module fixture must not leave it at 1
    torch.set_num_threads(1)
    model = build_models(config)["model"]
    image, labels = synthetic_scene(384, 384, seed=1, cell=24)
    x = torch.from_numpy(scale_image(image))
    y = torch.from_numpy(labels)
    steps = 100
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ys, xs = torch.randint(0, 384 - 64, (2, 4), generator=gen)
        batch = torch.stack([x[:, a : a + 64, b : b + 64] for a, b in zip(ys, xs)])
        target = torch.stack([y[a : a + 64, b : b + 64] for a, b in zip(ys, xs)])
        loss = torch.nn.functional.cross_entropy(model(batch), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    model.eval()
    torch.set_num_threads(threads)
    return write_model_checkpoint(tmp / "model.ckpt", config, {"model": model}), config, model
