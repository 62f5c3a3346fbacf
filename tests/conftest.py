"""Shared fixtures: tiny on-disk datasets and configs, and the path of the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from co2s.config.loader import validate
from co2s.data.transforms import WeakViewParams
from co2s.models.families import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Overrides

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CO2S_DATA_DIR", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Path of a dataset in ../shared/data, or skip the test with a message when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data {path} not found (set CO2S_DATA_DIR to the folder holding {name})")
    return path


def write_tiny_dataset(root: Path, n: int = 6, size: int = 48, classes: int = 3, seed: int = 0) -> Path:
    """Images whose colour carries the label, with list files in the Co2S format."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    colours = rng.integers(0, 255, (classes, 3))
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(8, size // 2, 2)
            mask[y : y + h, x : x + w] = rng.integers(0, classes)
        mask[0, :3] = 255  # a few ignore pixels
        image = colours[np.minimum(mask, classes - 1)] + rng.normal(0, 10, (size, size, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"t{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"t{i}.png")
        lines.append(f"images/t{i}.png masks/t{i}.png")
    (root / "train.txt").write_text("\n".join(lines[: n - 2]) + "\n")
    (root / "val.txt").write_text("\n".join(lines[n - 2 :]) + "\n")
    return root


def tiny_config_dict(root: Path, run_dir: Path, classes: int = 3, **train) -> dict:
    return {
        "name": "tiny",
        "out_dir": str(run_dir),
        "data": {
            "root": str(root),
            "classes": [f"c{i}" for i in range(classes)],
            "palette": [[i * 60, 255 - i * 60, 100] for i in range(classes)],
            "splits": {"labelled": "train.txt", "val": "val.txt", "test": "val.txt"},
        },
        "model": {"width": 8, "depth": 3},
        "train": {"crop_size": 32, "batch_size": 2, "iters": 6, "val_every": 3, "ckpt_every": 2,
                  "log_every": 2, "num_workers": 0, "lr": 0.01, **train},
        "eval": {"batch_size": 4},
        "engine": {"accelerator": "cpu"},
    }


def weak_params(crop_size, scale_range=(0.5, 2.0), hflip_p=0.5, ignore_index=255) -> WeakViewParams:
    """A weak view for tests that drive the transforms and datasets directly (the package builds
    it from a training config): UniMatch's rescale range and flip unless a test says otherwise."""
    return WeakViewParams(tuple(crop_size), tuple(scale_range), hflip_p, ignore_index)


def tiny_weights(kind: str, heads: int | None = None) -> dict:
    """The backbone keys that describe the tests' tiny weight files, which no weight family has
    (a real file is matched to its family by name and shape: co2s.models.families): the
    normalisation and, for CLIP files in OpenAI's names, the heads and the activation."""
    mean, std = (CLIP_MEAN, CLIP_STD) if kind == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    keys = {"mean": list(mean), "std": list(std)}
    if heads is not None:
        keys.update(heads=heads, act="quick_gelu")
    return keys


def tiny_overrides(kind: str, heads: int | None = None) -> Overrides:
    """:func:`tiny_weights` for calls of ``load_backbone_weights``."""
    keys = tiny_weights(kind, heads)
    return Overrides(heads=keys.get("heads"), act=keys.get("act"), mean=tuple(keys["mean"]), std=tuple(keys["std"]))


@pytest.fixture(scope="session")
def throughput_benchmark():
    """benchmarks/throughput.py as a module (its cells are the real training step, timed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("co2s_throughput_benchmark", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_real_hub(monkeypatch, tmp_path):
    """No test reaches huggingface.co or reads the user's token: the Hub endpoint is a closed local
    port (connection refused at once) unless a test serves its own (tests/hub_server.py)."""
    from huggingface_hub import constants

    from tests.hub_server import closed_port_url

    url = closed_port_url()
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-hub-token"))


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, restored after: the test machine's two cores are shared,
    and one thread avoids oversubscription stalls in tests that run whole scenes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture
def tiny_config(tiny_dataset, tmp_path):
    return validate(tiny_config_dict(tiny_dataset, tmp_path / "run"))
