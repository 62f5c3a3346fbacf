"""Students on more than three bands: the pretrained patch embedding widened after loading, the
per-band normalisation rule, training on 4-band rasters and reloading the checkpoint."""

import numpy as np
import pytest
import torch

from co2s.config.loader import load_config, validate
from co2s.models.loading import load_trained_models, read_checkpoint
from co2s.errors import ConfigError
from co2s.models.families import CLIP_MEAN, CLIP_STD
from co2s.models.multispectral import _patch_embedding
from co2s.models.student_factory import _random_model, build_student
from tests.conftest import tiny_config_dict, tiny_weights

PATCH_CONV = {"clip": "backbone.vision.embeddings.patch_embedding.weight",
              "dinov3": "backbone.model.embeddings.patch_embeddings.weight",
              "dinov2": "backbone.model.embeddings.patch_embeddings.projection.weight"}


def _config(kind, weights, bands=4, **data):
    student = {"name": kind, "backbone": {"kind": kind, "weights": str(weights), "tune": "attention",
                                          **tiny_weights(kind)},
               "guidance": "queries"}
    overrides = ["train.method=supervised", "model.name=students", f"model.students=[{student!r}]",
                 f"data.bands={list(range(1, bands + 1))}"]
    overrides += [f"data.{k}={v}" for k, v in data.items()]
    return load_config("demo", overrides)


@pytest.mark.parametrize("kind", ["clip", "dinov3", "dinov2"])
def test_pretrained_patch_embedding_is_widened_after_loading(kind, tmp_path):
    torch.manual_seed(0)
    pretrained = _random_model(kind, "tiny")
    pretrained.save_pretrained(tmp_path / "w")
    rgb = getattr(*_patch_embedding(pretrained, kind)).weight.detach()
    config = _config(kind, tmp_path / "w", bands=5, mean=[0.1] * 5, std=[0.2] * 5)
    student = build_student(config.model.students[0], config.data, in_channels=config.in_channels)

    weight = student.state_dict()[PATCH_CONV[kind]]
    assert weight.shape[1] == 5
    torch.testing.assert_close(weight[:, :3], rgb, rtol=0, atol=0)  # the pretrained filters, unscaled
    for band in (3, 4):
        torch.testing.assert_close(weight[:, band], rgb.mean(1), rtol=0, atol=0)
    # the layer follows the tuning policy: attention-only tuning keeps the patch embedding frozen
    assert not dict(student.named_parameters())[PATCH_CONV[kind]].requires_grad
    # normalisation: the backbone's RGB statistics, then data.mean/std for the extra bands
    if kind == "clip":
        assert student.mean.flatten().tolist() == pytest.approx([*CLIP_MEAN, 0.1, 0.1])
        assert student.std.flatten().tolist() == pytest.approx([*CLIP_STD, 0.2, 0.2])
    with torch.no_grad():
        assert student.eval()(torch.rand(1, 5, 64, 64)).shape == (1, config.data.num_classes, 64, 64)


def test_extra_band_at_its_mean_leaves_the_rgb_response_unchanged(tmp_path):
    """No rescaling: a zero (normalised) extra band gives exactly the pretrained embedding."""
    torch.manual_seed(0)
    _random_model("dinov3", "tiny").save_pretrained(tmp_path / "w")
    rgb_cfg = _config("dinov3", tmp_path / "w", bands=3)
    wide_cfg = _config("dinov3", tmp_path / "w", bands=4)
    rgb = build_student(rgb_cfg.model.students[0], rgb_cfg.data).eval()
    wide = build_student(wide_cfg.model.students[0], wide_cfg.data, in_channels=4).eval()
    x = torch.rand(1, 3, 32, 32)
    extra = wide.mean[:, 3:]  # scaled value equal to the band's mean: normalised to 0
    with torch.no_grad():
        a = rgb.backbone.model.embeddings(rgb.normalize(x))
        b = wide.backbone.model.embeddings(wide.normalize(torch.cat([x, extra.expand(1, 1, 32, 32)], 1)))
    torch.testing.assert_close(a, b)


def test_fewer_than_three_bands_is_refused(tmp_path):
    _random_model("clip", "tiny").save_pretrained(tmp_path / "w")
    config = _config("clip", tmp_path / "w", bands=1)
    with pytest.raises(ConfigError, match="3 or more bands"):
        build_student(config.model.students[0], config.data, in_channels=1)


def test_train_four_band_student_and_reload(tmp_path):
    import rasterio

    from co2s.api import train

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        mask = rng.integers(0, 3, (32, 32)).astype(np.uint8)
        image = (rng.integers(0, 1000, (4, 32, 32)) + 5000 * mask.astype(np.int64)).astype(np.uint16)
        with rasterio.open(root / "images" / f"s{i}.tif", "w", driver="GTiff", height=32, width=32,
                           count=4, dtype="uint16") as dst:
            dst.write(image)
        with rasterio.open(root / "masks" / f"s{i}.tif", "w", driver="GTiff", height=32, width=32,
                           count=1, dtype="uint8") as dst:
            dst.write(mask[None])
        lines.append(f"images/s{i}.tif masks/s{i}.tif")
    (root / "train.txt").write_text("\n".join(lines[:2]) + "\n")
    (root / "val.txt").write_text(lines[2] + "\n")
    cfg = tiny_config_dict(root, tmp_path / "run", iters=2, val_every=2, ckpt_every=2)
    cfg["data"].update(bands=[1, 2, 3, 4], mean=[0.2] * 4, std=[0.1] * 4)
    del cfg["data"]["splits"]["val"]  # no validation: seconds, not tens of seconds
    cfg["model"] = {"name": "students", "students": [
        {"name": "dino", "backbone": {"kind": "dinov3", "arch": "tiny", "tune": "full"},
         "guidance": "none", "head": "deeplabv3plus"}]}
    train(validate(cfg), progress=False)

    loaded = load_trained_models(tmp_path / "run" / "latest.ckpt")
    ckpt = read_checkpoint(tmp_path / "run" / "latest.ckpt")
    student = loaded.models["dino"]  # a single student is stored under its own name
    assert student.in_channels == 4 and ckpt["contract"]["architectures"]["dino"]["backbone"]["arch"]["num_channels"] == 4
    assert loaded.contract.bands == [1, 2, 3, 4] and loaded.contract.normalisation["dino"].mean[3] == pytest.approx(0.2)
    torch.testing.assert_close(student.state_dict()[PATCH_CONV["dinov3"]], ckpt["dino"][PATCH_CONV["dinov3"]])
    assert student.mean.flatten()[3].item() == pytest.approx(0.2)
    with torch.no_grad():
        assert student(torch.rand(1, 4, 32, 32)).shape == (1, 3, 32, 32)
