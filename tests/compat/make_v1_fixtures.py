"""Provenance of the format-1 fixtures in ``tests/compat/v1/`` (run once, at commit bebf7ad).

Each fixture is what a user of that release holds: a training checkpoint (``best.ckpt`` as
``co2s train`` wrote it, optimiser state included) and the model folder ``co2s export`` wrote from
it, for a lite_unet, a two-student Co2S model (CLIP ViT + CNN) and a lite_unet trained on a
scene. ``expected.npz`` holds what that release predicted with each (every prediction choice) on a
seeded image and on a GeoTIFF without nodata, so later releases can be checked to load and
predict identically (``tests/compat/test_format_v1.py``). This script needs that release's code:
it is kept to say how the files were made, not to be run again.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import co2s  # noqa: E402
from co2s.config.loader import validate  # noqa: E402
from tests.conftest import tiny_config_dict, write_tiny_dataset  # noqa: E402
from tests.data.scene_data import scene_data_config, write_scene, write_vector  # noqa: E402

OUT = Path(__file__).resolve().parent / "v1"
SEED_IMAGE = 1234


def seeded_image() -> np.ndarray:
    return np.random.default_rng(SEED_IMAGE).uniform(0, 1, (3, 40, 52)).astype(np.float32)


def write_input_scene(path: Path) -> Path:
    """A 3-band uint8 GeoTIFF without nodata (70 x 90)."""
    rng = np.random.default_rng(SEED_IMAGE + 1)
    image = rng.integers(0, 256, (3, 70, 90), dtype=np.uint8)
    profile = dict(driver="GTiff", width=90, height=70, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=rasterio.Affine(10, 0, 500_000, 0, -10, 5_000_000))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def record(name: str, config: dict, work: Path) -> None:
    run = co2s.train(validate(config), progress=False)
    target = OUT / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy(run.best_checkpoint, target / "best.ckpt")
    co2s.export(target / "best.ckpt", target / "model")
    scene = write_input_scene(work / "input.tif")
    expected = {}
    for kind, source in (("ckpt", target / "best.ckpt"), ("folder", target / "model")):
        segmenter = co2s.Segmenter.load(source)
        for choice, p in segmenter.predict_many(seeded_image(), segmenter.choices).items():
            expected[f"{kind}/{choice}/classes"] = p.classes
            expected[f"{kind}/{choice}/confidence"] = p.confidence
        out = work / f"pred_{name}_{kind}"
        co2s.predict(segmenter, [scene], out, progress=False, confidence=True)
        with rasterio.open(out / "input_classes.tif") as src:
            expected[f"{kind}/scene/classes"] = src.read(1)
        with rasterio.open(out / "input_confidence.tif") as src:
            expected[f"{kind}/scene/confidence"] = src.read(1)
        expected[f"{kind}/prediction"] = np.array(segmenter.prediction)
    np.savez_compressed(target / "expected.npz", **expected)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_tiny_dataset(work / "tiles", n=6, size=48)
        lite = tiny_config_dict(data, work / "runs/lite", iters=4, val_every=2, ckpt_every=2)
        lite["model"] = {"width": 4, "depth": 2}
        record("lite_unet", lite, work)

        pair = tiny_config_dict(data, work / "runs/co2s", iters=4, val_every=2, ckpt_every=2,
                                method="co2s", batch_size=2)
        pair["data"]["splits"]["unlabelled"] = str(write_tiny_dataset(work / "unlabelled", n=4, seed=1))
        pair["model"] = {"name": "students", "students": [
            {"name": "clip", "backbone": {"kind": "clip", "arch": {
                "base": "tiny", "vision_config": {"patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                                                  "num_hidden_layers": 2, "num_attention_heads": 2}},
                "skips": "value", "tune": "full", "lr_mult": 10.0},
             "guidance": "text", "text": {"prototypes": "random"}, "head_width": 16},
            {"name": "cnn", "backbone": {"kind": "cnn", "arch": {
                "base": "tiny", "stem": 8, "widths": [8, 16, 16], "depths": [1, 1, 1], "strides": [2, 2, 1]},
                "tune": "full", "lr_mult": 10.0},
             "guidance": "queries", "head_width": 16},
        ]}
        record("co2s_pair", pair, work)

        scenes = work / "scenes"
        write_scene(scenes / "scene_a.tif")
        write_vector(scenes / "labels.gpkg")
        scene_cfg = tiny_config_dict(scenes, work / "runs/scene", iters=4, val_every=2, ckpt_every=2)
        scene_cfg["data"] = scene_data_config(scenes, samples_per_epoch=4)
        scene_cfg["model"] = {"width": 4, "depth": 2}
        record("scene_lite_unet", scene_cfg, work)


if __name__ == "__main__":
    main()
