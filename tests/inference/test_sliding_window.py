import torch

from co2s.config.schema import default_stride
from co2s.inference.tiling import window_starts
from tests.inference.oracle import sliding_window_logits
from co2s.models.lite_unet import LiteUNet


def test_window_starts_cover_and_end_flush():
    assert window_starts(100, 40, 33) == [0, 33, 60]
    assert window_starts(30, 40, 33) == [0]
    assert default_stride(512) == 426 and default_stride(256) == 213


def test_equals_whole_image_inference_when_window_covers_image():
    model = LiteUNet(num_classes=3, width=8, depth=3).eval()
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        whole = model(x)
    torch.testing.assert_close(sliding_window_logits(model, x, 3, window=64), whole)


def test_overlaps_are_averaged():
    """A 'model' that outputs the tile's serial number makes the expected average easy to count."""
    calls = []

    def model(tiles):
        out = []
        for t in tiles:
            calls.append(len(calls))
            out.append(torch.full((1, *t.shape[-2:]), float(calls[-1])))
        return torch.stack(out)

    h, w, window, stride = 10, 14, 6, 4
    got = sliding_window_logits(model, torch.zeros(1, 1, h, w), 1, window, stride, batch_size=3)
    total = torch.zeros(h, w)
    count = torch.zeros(h, w)
    k = 0
    for y in window_starts(h, window, stride):
        for x in window_starts(w, window, stride):
            total[y : y + window, x : x + window] += k
            count[y : y + window, x : x + window] += 1
            k += 1
    assert k == len(calls)
    torch.testing.assert_close(got[0, 0], total / count)
    assert count.max() > 1  # the case really had overlaps


def test_weighted_blending():
    def model(tiles):
        return tiles[:, :1] * 0 + torch.arange(tiles.shape[0], dtype=torch.float32).view(-1, 1, 1, 1)

    weight = torch.rand(4, 4) + 0.1
    got = sliding_window_logits(model, torch.zeros(1, 1, 4, 6), 1, window=4, stride=2, weight=weight)
    # columns 2-3 are covered by tiles 0 and 1 with the weight's columns 2-3 and 0-1
    expected = (0 * weight[:, 2:] + 1 * weight[:, :2]) / (weight[:, 2:] + weight[:, :2])
    torch.testing.assert_close(got[0, 0, :, 2:4], expected)
