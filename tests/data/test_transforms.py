"""Tests for co2s.data.transforms: weak/strong views and CutMix."""

from __future__ import annotations

import math

import pytest
import torch

from co2s.data.transforms import (
    _adjust_hue,
    _hsv_to_rgb,
    _rgb_to_hsv,
    apply_cutmix,
    cutmix_box,
    strong_view,
    weak_view,
)
from co2s.config.schema import CutMixConfig, StrongViewConfig
from tests.conftest import weak_params

IGNORE = 255


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labelled_pair(height: int, width: int, classes: int = 10, block: int = 1, seed: int = 0):
    """Image whose channel 0 encodes the mask (``round(img[0] * (classes - 1)) == mask``)."""
    g = gen(seed)
    coarse_shape = (math.ceil(height / block), math.ceil(width / block))
    coarse = torch.randint(0, classes, coarse_shape, generator=g)
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)[:height, :width]
    image = torch.rand(3, height, width, generator=g)
    image[0] = mask.float() / (classes - 1)
    return image, mask


# --------------------------------------------------------------------------------------------
# weak_view
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_size", "crop"),
    [((20, 30), (64, 64)), ((200, 160), (64, 64)), ((50, 120), (48, 80)), ((64, 64), (64, 64))],
)
def test_weak_view_output_shapes(in_size, crop):
    image, mask = labelled_pair(*in_size)
    params = weak_params(crop_size=crop)
    for seed in range(5):
        out, out_mask, valid = weak_view(image, mask, params, gen(seed))
        assert out.shape == (3, *crop)
        assert out.dtype == torch.float32
        assert out_mask.shape == crop and out_mask.dtype == torch.int64
        assert valid.shape == crop and valid.dtype == torch.bool


def test_weak_view_padding_is_ignored_and_zero():
    # A 20x30 image rescaled by at most 2 has a long side <= 60 < 64: every crop is padded.
    image = torch.rand(3, 20, 30) * 0.5 + 0.5  # strictly positive, so padding (0) is visible
    mask = torch.randint(0, 5, (20, 30))
    for seed in range(10):
        out, out_mask, valid = weak_view(image, mask, weak_params(crop_size=(64, 64)), gen(seed))
        assert (~valid).any()
        assert torch.all(out_mask[~valid] == IGNORE)
        assert torch.all(out[:, ~valid] == 0)
        assert torch.all(out_mask[valid] != IGNORE)
        assert torch.all(out[:, valid] > 0)


def test_weak_view_custom_ignore_index():
    image, mask = labelled_pair(10, 10)
    params = weak_params(crop_size=(40, 40), ignore_index=7)
    _, out_mask, valid = weak_view(image, mask, params, gen(0))
    assert torch.all(out_mask[~valid] == 7)


def test_weak_view_is_reproducible_and_seed_dependent():
    image, mask = labelled_pair(80, 100)
    params = weak_params(crop_size=(64, 64))
    a = weak_view(image, mask, params, gen(123))
    b = weak_view(image, mask, params, gen(123))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    others = [weak_view(image, mask, params, gen(seed)) for seed in range(5)]
    assert any(not torch.equal(o[0], a[0]) for o in others)
    assert any(not torch.equal(o[1], a[1]) for o in others)


def test_weak_view_does_not_touch_global_rng():
    image, mask = labelled_pair(40, 40)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    weak_view(image, mask, weak_params(crop_size=(32, 32)), gen(1))
    strong_view(image, StrongViewConfig(jitter_p=1.0, blur_p=1.0), gen(1))
    cutmix_box((32, 32), CutMixConfig(p=1.0), gen(1))
    assert torch.equal(torch.rand(3), expected)


def test_weak_view_mask_values_stay_in_input_set():
    image, mask = labelled_pair(37, 53, classes=4)
    mask[mask == 3] = 11  # non-contiguous label set
    for seed in range(10):
        _, out_mask, _ = weak_view(image, mask, weak_params(crop_size=(48, 48)), gen(seed))
        allowed = set(mask.unique().tolist()) | {IGNORE}
        assert set(out_mask.unique().tolist()) <= allowed


def test_weak_view_image_and_mask_stay_aligned_without_rescale():
    # No rescale: the crop and flip must move image and mask identically, pixel for pixel.
    image, mask = labelled_pair(48, 40, classes=10)
    params = weak_params(crop_size=(32, 32), scale_range=(1.0, 1.0))
    for seed in range(10):
        out, out_mask, valid = weak_view(image, mask, params, gen(seed))
        assert valid.all()
        assert torch.equal(torch.round(out[0] * 9).long(), out_mask)


def test_weak_view_crop_position_is_random():
    # Every pixel label is unique, so the crop's top-left label gives its offset; a 35x36 image
    # cropped to 32x32 has offsets y in 0..3 and x in 0..4, all of which must occur.
    mask = torch.arange(35 * 36).view(35, 36)
    image = torch.rand(1, 35, 36)
    params = weak_params(crop_size=(32, 32), scale_range=(1.0, 1.0), hflip_p=0.0)
    ys, xs = set(), set()
    for seed in range(60):
        _, out_mask, _ = weak_view(image, mask, params, gen(seed))
        y, x = divmod(int(out_mask[0, 0]), 36)
        assert torch.equal(out_mask, mask[y : y + 32, x : x + 32])
        ys.add(y)
        xs.add(x)
    assert ys == set(range(4)) and xs == set(range(5))


@pytest.mark.parametrize("factor", [2, 3])
def test_weak_view_mask_upsampling_is_exact_nearest(factor):
    mask = torch.arange(10 * 10).view(10, 10)
    image = mask.float().unsqueeze(0) / 100
    size = 10 * factor
    params = weak_params(crop_size=(size, size), scale_range=(factor, factor), hflip_p=0.0)
    _, out_mask, valid = weak_view(image, mask, params, gen(0))
    assert valid.all()
    assert torch.equal(out_mask, mask.repeat_interleave(factor, 0).repeat_interleave(factor, 1))


def test_weak_view_image_and_mask_stay_aligned_with_rescale():
    # 16x16 blocks of random classes: after bilinear/nearest resizing only block edges may
    # disagree (about 90% agree; a mask flipped or shifted against the image agrees far less).
    image, mask = labelled_pair(64, 64, classes=10, block=16)
    params = weak_params(crop_size=(48, 48))
    for seed in range(10):
        out, out_mask, valid = weak_view(image, mask, params, gen(seed))
        agree = torch.round(out[0] * 9).long() == out_mask
        assert agree[valid].float().mean() > 0.8


def test_weak_view_flip_probability_and_consistency():
    # Channel 0 is a horizontal ramp and the mask its column index: the direction of the ramp
    # tells whether the crop was flipped, and the mask must follow it.
    width = 32
    cols = torch.arange(width)
    mask = cols.expand(16, width).clone()
    image = torch.zeros(3, 16, width)
    image[0] = cols.float() / (width - 1)
    base = dict(crop_size=(16, width), scale_range=(1.0, 1.0))

    def flipped(params, seed):
        out, out_mask, _ = weak_view(image, mask, params, gen(seed))
        assert torch.equal(torch.round(out[0] * (width - 1)).long(), out_mask)
        return bool(out_mask[0, 0] > out_mask[0, -1])

    assert not any(flipped(weak_params(**base, hflip_p=0.0), s) for s in range(10))
    assert all(flipped(weak_params(**base, hflip_p=1.0), s) for s in range(10))
    outcomes = [flipped(weak_params(**base), s) for s in range(40)]
    assert 5 < sum(outcomes) < 35


def test_weak_view_rescale_covers_shrinking_and_enlarging():
    # Every pixel of a 64x64 mask is unique and the crop is 64x64: a shrunk image leaves
    # padding; an enlarged one has no padding but repeats labels (nearest upsampling).
    mask = torch.arange(64 * 64).view(64, 64)
    image = torch.rand(1, 64, 64)
    params = weak_params(crop_size=(64, 64), ignore_index=-1)
    shrunk = enlarged = 0
    for seed in range(30):
        _, out_mask, valid = weak_view(image, mask, params, gen(seed))
        if not valid.all():
            shrunk += 1
        elif out_mask.unique().numel() < out_mask.numel():
            enlarged += 1
    assert shrunk > 0 and enlarged > 0


def test_weak_view_without_mask():
    image = torch.rand(4, 15, 15)  # long side at most 30 < 40: always padded
    out, out_mask, valid = weak_view(image, None, weak_params(crop_size=(40, 40)), gen(0))
    assert out_mask is None
    assert out.shape == (4, 40, 40) and valid.shape == (40, 40)
    assert (~valid).any()
    # Same draws as with a mask: the image part is identical.
    zeros = torch.zeros(15, 15, dtype=torch.long)
    out2, _, valid2 = weak_view(image, zeros, weak_params(crop_size=(40, 40)), gen(0))
    assert torch.equal(out, out2) and torch.equal(valid, valid2)


def test_weak_view_rejects_bad_inputs():
    with pytest.raises(ValueError):
        bad_mask = torch.zeros(10, 11, dtype=torch.long)
        weak_view(torch.rand(3, 10, 10), bad_mask, weak_params((8, 8)), gen(0))
    with pytest.raises(ValueError):
        weak_view(torch.rand(10, 10), None, weak_params((8, 8)), gen(0))
    with pytest.raises(ValueError):
        weak_params(crop_size=(0, 8))
    with pytest.raises(ValueError):
        weak_params(crop_size=(8, 8), scale_range=(2.0, 0.5))


# --------------------------------------------------------------------------------------------
# strong_view
# --------------------------------------------------------------------------------------------


def test_strong_view_keeps_shape_and_range_and_changes_values():
    image = torch.rand(3, 40, 50, generator=gen(0))
    changed = 0
    for seed in range(20):
        out = strong_view(image, StrongViewConfig(), gen(seed))
        assert out.shape == image.shape and out.dtype == image.dtype
        assert out.min() >= 0 and out.max() <= 1
        changed += not torch.allclose(out, image)
    assert changed > 0


def test_strong_view_is_reproducible():
    image = torch.rand(3, 32, 32, generator=gen(0))
    params = StrongViewConfig(jitter_p=1.0, grayscale_p=0.5, blur_p=1.0)
    a = strong_view(image, params, gen(7))
    assert torch.equal(a, strong_view(image, params, gen(7)))
    assert not torch.equal(a, strong_view(image, params, gen(8)))


def test_strong_view_identity_when_nothing_applies():
    image = torch.rand(3, 16, 16, generator=gen(0))
    params = StrongViewConfig(jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=1.0, grayscale_p=0.0, blur_p=0.0)
    out = strong_view(image, params, gen(0))
    assert torch.equal(out, image)
    out.add_(1)  # must be a copy
    assert image.max() <= 1


@pytest.mark.parametrize("bands", [1, 5])
def test_strong_view_other_band_counts(bands):
    image = torch.rand(bands, 24, 24, generator=gen(0))
    params = StrongViewConfig(jitter_p=1.0, grayscale_p=1.0, blur_p=0.5)
    outs = [strong_view(image, params, gen(seed)) for seed in range(6)]
    for out in outs:
        assert out.shape == image.shape
        assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(outs[0], strong_view(image, params, gen(0)))
    assert any(not torch.allclose(o, image) for o in outs)
    # Saturation, hue and grayscale are RGB-only: they leave other band counts untouched.
    rgb_only = StrongViewConfig(jitter=(0.0, 0.0, 0.5, 0.25), jitter_p=1.0, grayscale_p=1.0, blur_p=0.0)
    for seed in range(5):
        assert torch.equal(strong_view(image, rgb_only, gen(seed)), image)


def test_strong_view_brightness_and_contrast_act_on_multiband():
    image = torch.rand(5, 24, 24, generator=gen(0)) * 0.5 + 0.25
    for jitter in [(0.5, 0.0, 0.0, 0.0), (0.0, 0.5, 0.0, 0.0)]:
        params = StrongViewConfig(jitter=jitter, jitter_p=1.0, grayscale_p=0.0, blur_p=0.0)
        assert any(not torch.allclose(strong_view(image, params, gen(s)), image) for s in range(5))
    # Contrast blends with the global mean: it keeps the mean (no clamping here) and scales deviations.
    params = StrongViewConfig(jitter=(0.0, 0.5, 0.0, 0.0), jitter_p=1.0, grayscale_p=0.0, blur_p=0.0)
    out = strong_view(image, params, gen(3))
    assert torch.allclose(out.mean(), image.mean(), atol=1e-5)
    ratio = (out - image.mean()) / (image - image.mean())
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), atol=1e-3)


def test_strong_view_grayscale_gives_equal_channels():
    image = torch.rand(3, 20, 20, generator=gen(0))
    params = StrongViewConfig(jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)
    out = strong_view(image, params, gen(0))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    expected = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_strong_view_blur_reduces_variance():
    image = torch.rand(3, 64, 64, generator=gen(0))
    params = StrongViewConfig(jitter_p=0.0, grayscale_p=0.0, blur_p=1.0, blur_sigma=(1.0, 2.0))
    for seed in range(3):
        out = strong_view(image, params, gen(seed))
        assert out.var() < 0.5 * image.var()
        assert torch.allclose(out.mean(), image.mean(), atol=0.01)


def test_strong_view_blur_on_tiny_images():
    params = StrongViewConfig(jitter_p=0.0, grayscale_p=0.0, blur_p=1.0, blur_sigma=(2.0, 2.0))
    for shape in [(3, 1, 1), (3, 2, 7), (1, 5, 3)]:
        image = torch.rand(*shape, generator=gen(0))
        out = strong_view(image, params, gen(0))
        assert out.shape == image.shape
        assert out.min() >= 0 and out.max() <= 1
    # A constant image stays constant under a normalised kernel.
    flat = torch.full((3, 9, 9), 0.3)
    assert torch.allclose(strong_view(flat, params, gen(0)), flat, atol=1e-6)


def test_hsv_round_trip_and_known_values():
    image = torch.rand(3, 16, 16, generator=gen(0))
    assert torch.allclose(_hsv_to_rgb(_rgb_to_hsv(image)), image, atol=1e-5)
    colours = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]
    ).T.reshape(3, 1, 6)
    hsv = _rgb_to_hsv(colours)[:, 0]
    expected = torch.tensor(
        [[0.0, 1.0, 1.0], [1 / 3, 1.0, 1.0], [2 / 3, 1.0, 1.0], [1 / 6, 1.0, 1.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]]
    ).T
    assert torch.allclose(hsv, expected, atol=1e-6)
    assert torch.allclose(_hsv_to_rgb(_rgb_to_hsv(colours)), colours, atol=1e-6)


@pytest.mark.parametrize(
    ("shift", "rgb"),
    [(1 / 3, (0.0, 1.0, 0.0)), (-1 / 3, (0.0, 0.0, 1.0)), (1 / 6, (1.0, 1.0, 0.0)), (0.5, (0.0, 1.0, 1.0))],
)
def test_hue_shift_of_pure_red(shift, rgb):
    red = torch.zeros(3, 4, 4)
    red[0] = 1.0
    out = _adjust_hue(red, shift)
    assert torch.allclose(out, torch.tensor(rgb).view(3, 1, 1).expand(3, 4, 4), atol=1e-5)


def test_strong_view_hue_only_keeps_value_and_saturation():
    image = torch.rand(3, 16, 16, generator=gen(0))
    params = StrongViewConfig(jitter=(0.0, 0.0, 0.0, 0.5), jitter_p=1.0, grayscale_p=0.0, blur_p=0.0)
    out = strong_view(image, params, gen(1))
    before, after = _rgb_to_hsv(image), _rgb_to_hsv(out)
    assert torch.allclose(before[1:], after[1:], atol=1e-5)
    assert not torch.allclose(before[0], after[0], atol=1e-3)


# --------------------------------------------------------------------------------------------
# cutmix_box / apply_cutmix
# --------------------------------------------------------------------------------------------


def box_extent(box: torch.Tensor) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of the True region, asserting that it is one filled rectangle."""
    rows = box.any(dim=1).nonzero().flatten()
    cols = box.any(dim=0).nonzero().flatten()
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    x0, x1 = int(cols.min()), int(cols.max()) + 1
    assert box[y0:y1, x0:x1].all()
    assert int(box.sum()) == (y1 - y0) * (x1 - x0)
    return y0, x0, y1 - y0, x1 - x0


def test_cutmix_box_never_applied_with_p0():
    for seed in range(20):
        box = cutmix_box((32, 48), CutMixConfig(p=0.0), gen(seed))
        assert box.shape == (32, 48) and box.dtype == torch.bool
        assert not box.any()


@pytest.mark.parametrize("size", [(128, 128), (96, 160)])
def test_cutmix_box_area_and_aspect(size):
    height, width = size
    params = CutMixConfig(p=1.0)
    areas = []
    for seed in range(200):
        box = cutmix_box(size, params, gen(seed))
        _, _, h, w = box_extent(box)
        area = h * w
        # int() truncates each side by less than one pixel.
        assert area <= 0.4 * height * width
        assert area >= 0.02 * height * width - (h + w + 1)
        assert h / (w + 1) <= 1 / 0.3
        assert (h + 1) / w >= 0.3
        areas.append(area / (height * width))
    assert min(areas) < 0.1 and max(areas) > 0.3


def test_cutmix_box_probability_and_reproducibility():
    params = CutMixConfig(p=0.5)
    applied = sum(bool(cutmix_box((32, 32), params, gen(seed)).any()) for seed in range(200))
    assert 60 < applied < 140
    always = CutMixConfig(p=1.0)
    assert torch.equal(cutmix_box((32, 32), always, gen(5)), cutmix_box((32, 32), always, gen(5)))


def test_cutmix_box_positions_vary_and_elongated_images_terminate():
    corners = {box_extent(cutmix_box((64, 64), CutMixConfig(p=1.0), gen(s)))[:2] for s in range(20)}
    assert len(corners) > 10
    box = cutmix_box((2, 500), CutMixConfig(p=1.0), gen(0))
    assert box.shape == (2, 500) and box.any()
    box_extent(box)


def test_apply_cutmix_images_and_masks():
    g = gen(0)
    box = torch.zeros(8, 10, dtype=torch.bool)
    box[2:5, 3:9] = True
    # Unbatched image.
    target, source = torch.rand(3, 8, 10, generator=g), torch.rand(3, 8, 10, generator=g)
    out = apply_cutmix(target, source, box)
    assert torch.equal(out[:, box], source[:, box]) and torch.equal(out[:, ~box], target[:, ~box])
    # Unbatched mask.
    tm, sm = torch.zeros(8, 10, dtype=torch.long), torch.ones(8, 10, dtype=torch.long)
    assert torch.equal(apply_cutmix(tm, sm, box), box.long())
    # Batched: one box per sample.
    boxes = torch.stack([box, ~box])
    bt, bs = torch.rand(2, 3, 8, 10, generator=g), torch.rand(2, 3, 8, 10, generator=g)
    out = apply_cutmix(bt, bs, boxes)
    for i in range(2):
        assert torch.equal(out[i][:, boxes[i]], bs[i][:, boxes[i]])
        assert torch.equal(out[i][:, ~boxes[i]], bt[i][:, ~boxes[i]])
    conf_t, conf_s = torch.rand(2, 8, 10, generator=g), torch.rand(2, 8, 10, generator=g)
    out = apply_cutmix(conf_t, conf_s, boxes)
    assert torch.equal(out, torch.where(boxes, conf_s, conf_t))
    assert torch.equal(out[0][box], conf_s[0][box]) and torch.equal(out[1][box], conf_t[1][box])
    # Inputs are left untouched.
    assert not torch.equal(conf_t, out)


def test_apply_cutmix_rejects_mismatches():
    box = torch.zeros(8, 10, dtype=torch.bool)
    with pytest.raises(ValueError):
        apply_cutmix(torch.rand(3, 8, 10), torch.rand(3, 8, 9), box)
    with pytest.raises(ValueError):
        apply_cutmix(torch.rand(3, 8, 10), torch.rand(3, 8, 10), box.long())
    with pytest.raises(ValueError):
        apply_cutmix(torch.rand(3, 8, 10), torch.rand(3, 8, 10), torch.zeros(8, 9, dtype=torch.bool))
