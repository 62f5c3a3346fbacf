"""Invalid pixels of training images (non-finite floats, the raster's nodata value or internal
mask) are ignored by every loss, never reach the model as NaN, and are not scored."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from co2s.config.loader import validate
from co2s.data.dataset import LabelledCrops, UnlabelledPairs, WholeImages
from co2s.data.evaluation_sets import TileEvaluationSet
from co2s.data.sources import read_split
from co2s.data.transforms import weak_view
from co2s.evaluation.evaluator import score_predictions
from co2s.inference.segmenter import Segmenter
from co2s.models.contract import InferenceContract
from tests.conftest import tiny_config_dict, weak_params

SIZE = 40


def _geotiff(path, array, nodata=None):
    bands, h, w = array.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=bands, dtype=array.dtype,
                       nodata=nodata, crs="EPSG:32633", transform=from_origin(500000, 4000000, 10, 10)) as dst:
        dst.write(array)


def _float_nan(path, rng):
    """A reflectance float32 GeoTIFF as exported by GIS tools: NaN where there is no data."""
    image = rng.random((3, SIZE, SIZE)).astype(np.float32) * 0.5
    image[:, 5:15, 5:25] = np.nan  # a cloud-masked patch
    image[1, 30:, :] = np.nan  # one band missing in the last rows
    _geotiff(path, image)
    invalid = np.zeros((SIZE, SIZE), bool)
    invalid[5:15, 5:25] = True
    invalid[30:, :] = True
    return invalid


def _uint16_nodata(path, rng):
    """A uint16 GeoTIFF whose nodata value (0) fills the area outside the swath."""
    image = rng.integers(100, 4000, (3, SIZE, SIZE)).astype(np.uint16)
    image[:, :, :8] = 0
    image[:, 20:26, 20:30] = 0
    _geotiff(path, image, nodata=0)
    invalid = np.zeros((SIZE, SIZE), bool)
    invalid[:, :8] = True
    invalid[20:26, 20:30] = True
    return invalid


@pytest.fixture
def rasters(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    invalid = {"f": _float_nan(root / "images" / "f.tif", rng),
               "u": _uint16_nodata(root / "images" / "u.tif", rng)}
    for name in invalid:
        mask = np.ones((SIZE, SIZE), np.uint8)  # every pixel labelled class 1
        mask[:, SIZE // 2 :] = 2
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    (root / "lab.txt").write_text("images/f.tif masks/f.png\nimages/u.tif masks/u.png\n")
    (root / "unl.txt").write_text("images/f.tif\nimages/u.tif\n")
    cfg = tiny_config_dict(root, tmp_path / "run")
    cfg["data"]["splits"] = {"labelled": "lab.txt", "unlabelled": "unl.txt", "val": "lab.txt"}
    return validate(cfg), invalid


def test_read_model_input_follows_the_nodata_rule(rasters):
    from co2s.data.io import read_model_input

    config, invalid = rasters
    root = config.data.root
    for name in ("f", "u"):
        image, valid = read_model_input(f"{root}/images/{name}.tif")
        assert valid is not None and np.array_equal(valid, ~invalid[name])
        assert np.isfinite(image).all() and (image[:, invalid[name]] == 0).all()
    # a band selection that avoids the band with NaN rows keeps those rows valid
    _, valid = read_model_input(f"{root}/images/f.tif", bands=[1, 3])
    assert valid[30:].all() and not valid[5:15, 5:25].any()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(f"{root}/plain.png")
    assert read_model_input(f"{root}/plain.png")[1] is None


def test_labelled_crops_ignore_invalid_pixels(rasters):
    config, invalid = rasters
    samples = read_split("lab.txt", config.data, labelled=True)
    # crop = image size and no rescale: the invalid pixels are exactly where they were
    crops = LabelledCrops(samples, config.data, weak_params((SIZE, SIZE), scale_range=(1.0, 1.0), hflip_p=0.0))
    for index, sample in enumerate(samples):
        item = crops[(index, 3)]
        assert torch.isfinite(item["image"]).all()
        assert item["path"] == str(sample.image)
        name = sample.image.stem
        assert (item["mask"][torch.from_numpy(invalid[name])] == 255).all()
        assert (item["mask"][torch.from_numpy(~invalid[name])] != 255).all()
        assert (item["image"][:, torch.from_numpy(invalid[name])] == 0).all()
    # with rescaling and crops, every tensor is still finite and the invalid share stays ignore
    crops = LabelledCrops(samples, config.data, weak_params((32, 32)))
    for seed in range(8):
        item = crops[(seed % 2, seed)]
        assert torch.isfinite(item["image"]).all()


def test_unlabelled_pairs_mark_invalid_pixels_not_valid(rasters):
    config, invalid = rasters
    samples = read_split("unl.txt", config.data, labelled=False)
    weak = weak_params((SIZE, SIZE), scale_range=(1.0, 1.0), hflip_p=0.0)
    pairs = UnlabelledPairs(samples, config.data, weak)
    item = pairs[(0, 0)]
    for key, value in item.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all(), key
    assert item["u_path"] == str(samples[0].image) and item["mix_path"] == str(samples[1].image)
    assert torch.equal(item["u_valid"], torch.from_numpy(~invalid["f"]))
    assert torch.equal(item["mix_valid"], torch.from_numpy(~invalid["u"]))
    pairs = UnlabelledPairs(samples, config.data, weak_params((32, 32)))
    invalid_share = []
    for seed in range(8):
        item = pairs[(seed % 2, seed)]
        assert all(torch.isfinite(v).all() for v in item.values()
                   if isinstance(v, torch.Tensor) and v.is_floating_point())
        invalid_share.append(1 - item["u_valid"].float().mean().item())
    assert min(invalid_share) > 0.05  # both images have invalid areas bigger than that


def test_weak_view_carries_validity_through_rescale_crop_and_flip():
    image = torch.rand(3, 30, 30)
    valid = torch.ones(30, 30, dtype=torch.bool)
    valid[:, :10] = False  # left third invalid
    mask = torch.ones(30, 30, dtype=torch.long)
    params = weak_params((30, 30), scale_range=(0.5, 2.0), hflip_p=0.5)
    fewer = 0
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        plain = weak_view(image, mask, params, torch.Generator().manual_seed(seed))
        out, out_mask, out_valid = weak_view(image, mask, params, gen, valid=valid)
        assert torch.equal(out, plain[0])  # same draws, same image
        assert (out_mask[~out_valid] == 255).all() and (out_valid <= plain[2]).all()
        fewer += int(out_valid.sum() < plain[2].sum())
    assert fewer >= 5
    # no rescale, a flip: the invalid third moves to the right
    _, out_mask, out_valid = weak_view(image, mask, weak_params((30, 30), (1.0, 1.0), hflip_p=1.0),
                                       torch.Generator().manual_seed(0), valid=valid)
    assert torch.equal(out_valid, valid.flip(-1)) and (out_mask[:, 20:] == 255).all()


def test_evaluation_does_not_score_invalid_pixels(rasters):
    config, invalid = rasters
    samples = read_split("lab.txt", config.data, labelled=True)
    dataset = WholeImages(samples, config.data)
    for index, sample in enumerate(samples):
        item = dataset[index]
        assert torch.isfinite(item["image"]).all()
        assert (item["mask"][torch.from_numpy(invalid[sample.image.stem])] == 255).all()

    class Constant(torch.nn.Module):  # always predicts class 0, whatever it sees (NaN included)
        in_channels = 3

        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
            logits[:, 0] = 1
            return logits + 0 * x.sum() + self.bias

    contract = InferenceContract(classes=list(config.data.classes), in_channels=3,
                                 normalisation={"m": {"mean": [0.0] * 3, "std": [1.0] * 3}},
                                 tiling={"window": 32, "stride": 26, "batch_size": 4}, prediction="m",
                                 architectures={"m": {"kind": "constant"}})
    scores = score_predictions(Segmenter({"m": Constant()}, contract), TileEvaluationSet(dataset, "lab.txt"),
                               progress=False)["m"]
    expected = sum(int((~invalid[s.image.stem]).sum()) for s in samples)
    assert scores["pixels"] == expected
