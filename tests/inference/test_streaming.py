"""The streamed tile-row prediction is the same computation as whole-image sliding windows."""

import numpy as np
import pytest
import torch

from co2s.errors import Co2sError
from co2s.inference.fusion import class_probabilities
from co2s.inference.tiling import TileGrid, blend_weight
from co2s.inference.segmenter import Segmenter
from co2s.models.factory import build_models
from co2s.inference.streaming import VALID, stream_prediction_maps, tile_logits
from tests.inference.oracle import sliding_window_logits
from co2s.config.loader import validate
from tests.conftest import tiny_config_dict


def _context_model(tiles):
    """Logits that depend on the whole tile (its mean) and on position, so blending matters."""
    k = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1)
    ramp = torch.linspace(-1, 1, tiles.shape[-1]).view(1, 1, 1, -1)
    return torch.sin(tiles[:, :1] * 7 + k) + tiles.mean((1, 2, 3), keepdim=True) * k + ramp * (k - 1)


def _stream(image, tile, stride, batch, valid=None, prediction="m", models=None, panel_width=4096):
    _, h, w = image.shape
    grid = TileGrid.over(h, w, tile, stride)

    def read(window):
        rows, cols = window.slices
        return image[:, rows, cols], None if valid is None else valid[rows, cols]

    labels, conf = np.full((h, w), 99, np.uint8), np.full((h, w), -1.0, np.float32)
    written = np.zeros((h, w), int)
    seen = []
    for window, pieces in stream_prediction_maps(read, grid, models or {"m": _context_model}, 3, [prediction],
                                                 batch, on_progress=lambda t, p: seen.append((t, p)),
                                                 panel_width=panel_width, validity=True):
        rows, c = pieces[prediction]
        assert rows.shape == window.shape
        # the piece's valid pixels, kept from the reads (no second read of the mask)
        np.testing.assert_array_equal(pieces[VALID], True if valid is None else valid[window.slices])
        labels[window.slices], conf[window.slices] = rows, c
        written[window.slices] += 1
    assert (written == 1).all()  # every pixel exactly once
    assert sum(t for t, _ in seen) == grid.tiles_to_predict(panel_width) and sum(p for _, p in seen) == h * w
    return labels, conf


@pytest.mark.parametrize("h, w, tile, stride, batch, panel", [
    (50, 70, 16, 13, 3, 4096),  # the usual 1/6 overlap, one panel
    (50, 70, 16, 13, 3, 24),    # three panels, tiles straddling their borders
    (50, 70, 16, 5, 2, 32),     # overlap above half a tile: rows carried over several tile rows
    (33, 41, 16, 16, 4, 16),    # no overlap except the flush last tiles; panels of one tile
    (10, 70, 16, 12, 1, 20),    # image lower than a tile: one tile row of the image's height
    (12, 9, 16, 12, 4, 4096),   # image smaller than a tile: one tile
])
def test_streamed_result_equals_whole_image_sliding_windows(h, w, tile, stride, batch, panel):
    torch.manual_seed(0)
    image = torch.rand(1, h, w)
    logits = sliding_window_logits(_context_model, image[None], 3, tile, stride,
                                   weight=blend_weight(min(tile, h), min(tile, w)))
    conf, expected = logits.softmax(1)[0].max(0)
    labels, got_conf = _stream(image, tile, stride, batch, panel_width=panel)
    np.testing.assert_array_equal(labels, expected.numpy())
    np.testing.assert_allclose(got_conf, conf.numpy(), rtol=0, atol=1e-6)


def test_fusion_is_applied_to_each_students_blended_logits():
    torch.manual_seed(0)
    image = torch.rand(1, 40, 52)
    models = {"a": _context_model, "b": lambda t: _context_model(t.flip(-1) * 2)}
    weight = blend_weight(16, 16)
    whole = {name: sliding_window_logits(m, image[None], 3, 16, 11, weight=weight) for name, m in models.items()}
    for mode in ("mean", "confidence", "b"):
        conf, expected = class_probabilities(whole, mode)[0].max(0)
        labels, got = _stream(image, 16, 11, 3, prediction=mode, models=models, panel_width=20)
        np.testing.assert_array_equal(labels, expected.numpy())
        np.testing.assert_allclose(got, conf.numpy(), atol=1e-6)


@pytest.mark.parametrize("panel", [4096, 20])
def test_pixel_maps_are_of_the_whole_image_blended_logits(panel):
    """co2s suggest's per-pixel terms, streamed across panels and strips, equal the terms of the
    whole-image blended logits of both students."""
    from co2s.inference.uncertainty import pixel_terms

    torch.manual_seed(0)
    image = torch.rand(1, 40, 52)
    models = {"a": _context_model, "b": lambda t: _context_model(t.flip(-1) * 2)}
    whole = {name: sliding_window_logits(m, image[None], 3, 16, 11, weight=blend_weight(16, 16))
             for name, m in models.items()}
    expected = pixel_terms("mean", ["a", "b"])(whole)
    assert 0 < expected["disagreement"].mean() < 1  # the students do disagree somewhere, not everywhere
    grid = TileGrid.over(40, 52, 16, 11)
    got = {name: np.full((40, 52), np.nan, np.float32) for name in expected}
    for window, pieces in stream_prediction_maps(lambda w: (image[:, w.slices[0], w.slices[1]], None), grid, models,
                                                 3, ["mean"], 3, panel_width=panel,
                                                 pixel_maps=pixel_terms("mean", ["a", "b"])):
        for name in expected:
            got[name][window.slices] = pieces[name]
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values.numpy(), atol=1e-5, err_msg=name)


def test_tiles_without_valid_pixels_are_skipped_without_changing_valid_pixels():
    torch.manual_seed(0)
    image = torch.rand(1, 48, 60)
    valid = np.ones((48, 60), bool)
    valid[:, :30] = False  # the left half is nodata: its whole tiles are not predicted
    calls = []

    def counting(tiles):
        calls.append(tiles.shape[0])
        return _context_model(tiles)

    labels, conf = _stream(image, 16, 13, 2, valid, models={"m": counting})
    full_labels, full_conf = _stream(image, 16, 13, 2)
    assert sum(calls) < TileGrid.over(48, 60, 16, 13).num_tiles  # tiles were skipped
    np.testing.assert_array_equal(labels[valid], full_labels[valid])
    np.testing.assert_allclose(conf[valid], full_conf[valid], atol=1e-6)


def test_blend_weight_is_smooth_positive_and_peaks_in_the_centre():
    w = blend_weight(64, 48)
    assert w.shape == (64, 48) and w.min() > 0 and w.max() <= 1
    assert w[32, 24] > 0.99 and w[0, 0] < 1e-3
    torch.testing.assert_close(w, w.flip(0).flip(1))  # symmetric
    assert (w[1:] - w[:-1]).abs().max() < 0.06  # no jumps: neighbouring rows differ by < 6 %


def test_tta_averages_the_mirrored_prediction():
    def lopsided(t):
        return torch.linspace(0, 1, t.shape[-1]).expand(t.shape[0], 3, *t.shape[-2:]).clone()

    x = torch.rand(2, 3, 8, 10)
    out = tile_logits(lopsided, torch.device("cpu"), tta=True)(x)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))  # ramp + mirrored ramp


def test_tile_and_overlap_options(tmp_path):
    cfg = tiny_config_dict(tmp_path, tmp_path / "run")
    cfg["eval"]["window"] = 120
    config = validate(cfg)
    tile_and_stride = Segmenter.from_config({"m": build_models(config)["model"]}, config).tiling
    assert tile_and_stride() == (120, 100)
    assert tile_and_stride(64) == (64, 53)
    assert tile_and_stride(100, 0.25) == (100, 75)
    assert tile_and_stride(100, 30) == (100, 70)
    assert tile_and_stride(100, 0) == (100, 100)
    for bad in (100, 2.5, -1):
        with pytest.raises(Exception, match="--overlap"):
            tile_and_stride(100, bad)
    # within a configured tiling's bounds, not a run out of memory or of time
    with pytest.raises(Co2sError, match=r"^--tile 100000: tile 100000 must be from 16 to 4096 px$"):
        tile_and_stride(100000)
    with pytest.raises(Co2sError, match=r"^--tile 512 --overlap 0.99: stride 5 must be from 64"):
        tile_and_stride(512, 0.99)  # 100 x 100 tiles over every pixel
    assert tile_and_stride(512, 448) == (512, 64)  # the most overlap allowed
    with pytest.raises(Exception, match="fp16 needs a GPU"):
        tile_logits(_context_model, torch.device("cpu"), "fp16")


def test_bf16_autocast_on_cpu_gives_float32_logits_close_to_fp32():
    from co2s.models.lite_unet import LiteUNet

    torch.manual_seed(0)
    model = LiteUNet(num_classes=3, width=8, depth=3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full = tile_logits(model, torch.device("cpu"))(x)
        half = tile_logits(model, torch.device("cpu"), "bf16")(x)
    assert half.dtype == torch.float32 and not torch.equal(half, full)  # autocast really ran in bf16
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)
