"""UniMatch-style training views on tensors: weak (geometric), strong (photometric), CutMix.

Conventions:

* an image is a floating-point tensor ``[C, H, W]`` with values in about ``[0, 1]``; ``C`` may be
  1, 3 or any number of bands;
* a mask is an integer tensor ``[H, W]`` of class indices, ``ignore_index`` marking unlabelled
  pixels;
* every random draw comes from the ``torch.Generator`` passed in (never the global RNG), so one
  seed always gives the same output; ``weak_view`` and ``strong_view`` consume a fixed number of
  draws whatever their coin flips give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from co2s.config.schema import CutMixConfig, StrongViewConfig

__all__ = [
    "WeakViewParams",
    "apply_cutmix",
    "cutmix_box",
    "strong_view",
    "weak_view",
]

# ITU-R BT.601 luma weights, as used by PIL's "L" conversion.
_LUMA = (0.299, 0.587, 0.114)

# Rejection sampling of a CutMix box stops after this many tries (see cutmix_box).
_CUTMIX_MAX_TRIES = 100


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _pair(value: Sequence[float], name: str, cast: type) -> tuple:
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a pair, got {value!r}") from None
    if len(items) != 2:
        raise ValueError(f"{name} must be a pair, got {value!r}")
    return tuple(cast(v) for v in items)


def _check_range(
    pair: tuple[float, float], name: str, low: float, high: float | None = None
) -> None:
    """Check ``low <= pair[0] <= pair[1] (<= high)``."""
    lo, hi = pair
    if not (lo >= low and hi >= lo and (high is None or hi <= high)):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an increasing pair within {bound}, got {pair!r}")


def _check_prob(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


@dataclass(frozen=True)
class WeakViewParams:
    """Geometric augmentation: random rescale (ratio of the long side), pad, random crop, hflip.
    Its values come from a training config (:meth:`from_train`), their one source; the strong
    view and CutMix take their config sections as they are."""

    crop_size: tuple[int, int]  # (h, w)
    scale_range: tuple[float, float]
    hflip_p: float
    ignore_index: int

    @classmethod
    def from_train(cls, train, ignore_index: int) -> WeakViewParams:
        """The weak view of a ``train`` config section."""
        return cls((train.crop_size, train.crop_size), tuple(train.scale_range), train.augment.hflip_p, ignore_index)

    def __post_init__(self) -> None:
        # Lists (from YAML) become tuples so the frozen instance stays hashable.
        object.__setattr__(self, "crop_size", _pair(self.crop_size, "crop_size", int))
        object.__setattr__(self, "scale_range", _pair(self.scale_range, "scale_range", float))
        if min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {self.crop_size!r}")
        if self.scale_range[0] <= 0:
            raise ValueError(f"scale_range must be positive, got {self.scale_range!r}")
        _check_range(self.scale_range, "scale_range", 0.0)
        _check_prob(self.hflip_p, "hflip_p")


# --------------------------------------------------------------------------------------------
# Random draws (all from an explicit generator)
# --------------------------------------------------------------------------------------------


def random_uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    """One float drawn uniformly from ``[lo, hi)``."""
    u = torch.rand((), generator=generator, device=generator.device, dtype=torch.float64).item()
    return lo + (hi - lo) * u


def random_int(generator: torch.Generator, lo: int, hi: int) -> int:
    """One integer drawn uniformly from ``[lo, hi]``, both ends included (as ``random.randint``)."""
    if hi < lo:
        raise ValueError(f"empty integer range [{lo}, {hi}]")
    return int(torch.randint(lo, hi + 1, (), generator=generator, device=generator.device).item())


def _coin(generator: torch.Generator, p: float) -> bool:
    """True with probability ``p``; always consumes exactly one draw."""
    return random_uniform(generator, 0.0, 1.0) < p


# --------------------------------------------------------------------------------------------
# Weak view
# --------------------------------------------------------------------------------------------


def _check_image(image: Tensor) -> None:
    if not isinstance(image, Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a [C, H, W] tensor, got {shape}")
    if not image.is_floating_point():
        raise ValueError(f"image must be floating point (values in [0, 1]), got {image.dtype}")
    if image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")


def _nearest_indices(src: int, dst: int, device: torch.device) -> Tensor:
    # Pixel-centre ("nearest-exact", as PIL NEAREST) sampling, so the mask stays aligned with
    # the bilinear align_corners=False image.
    idx = ((torch.arange(dst, device=device, dtype=torch.float64) + 0.5) * (src / dst)).floor()
    return idx.clamp_(0, src - 1).long()


def weak_view(
    image: Tensor,
    mask: Tensor | None,
    params: WeakViewParams,
    generator: torch.Generator,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Random rescale, pad, random crop and horizontal flip (UniMatch weak view).

    The long side ``L = max(H, W)`` is resized to ``randint(int(L * lo), int(L * hi))`` (aspect
    kept; image bilinear, antialiased when shrinking; mask nearest). Where the result is smaller
    than ``params.crop_size`` it is padded bottom/right (image 0, mask ``ignore_index``), then a
    random ``crop_size`` window is taken and flipped horizontally with probability ``hflip_p``.

    Invalid input pixels (``valid`` False: nodata; their image values should be finite, e.g. 0)
    go through the same geometry: after rescaling, an output pixel is invalid when invalid input
    pixels weigh more than 0.1 % in its interpolated value, and the mask is ``ignore_index``
    wherever the output is invalid. The random draws do not depend on ``valid``.

    Args:
        image: float tensor ``[C, H, W]``.
        mask: integer tensor ``[H, W]`` or None for an unlabelled image.
        params: augmentation parameters.
        generator: source of every random draw.
        valid: optional bool tensor ``[H, W]``, False on invalid input pixels; None: all valid.

    Returns:
        ``(image [C, h, w], mask [h, w] int64 or None, valid [h, w] bool)`` with
        ``(h, w) = params.crop_size``; ``valid`` is False on padded and invalid pixels. ``mask``
        is None exactly when the input mask is None.
    """
    _check_image(image)
    height, width = image.shape[-2:]
    if mask is not None:
        if mask.shape != (height, width):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match image shape {tuple(image.shape)}"
            )
        if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
            raise ValueError(f"mask must hold integer class indices, got {mask.dtype}")
    if valid is not None:
        if valid.shape != (height, width) or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor of shape {(height, width)}, got "
                             f"{valid.dtype} {tuple(valid.shape)}")
        valid = None if bool(valid.all()) else valid

    # (1) rescale, UniMatch style.
    long_side = max(height, width)
    lo, hi = params.scale_range
    target = random_int(generator, max(1, int(long_side * lo)), max(1, int(long_side * hi)))
    if height > width:
        new_h, new_w = target, int(width * target / height + 0.5)
    else:
        new_h, new_w = int(height * target / width + 0.5), target
    new_h, new_w = max(1, new_h), max(1, new_w)
    if (new_h, new_w) != (height, width):
        shrink = new_h < height or new_w < width
        image = F.interpolate(
            image.unsqueeze(0),
            size=(new_h, new_w),
            mode="bilinear",
            align_corners=False,
            antialias=shrink,
        ).squeeze(0)
        if mask is not None:
            rows = _nearest_indices(height, new_h, mask.device)
            cols = _nearest_indices(width, new_w, mask.device)
            mask = mask[rows[:, None], cols[None, :]]
        if valid is not None:
            weight = F.interpolate(
                (~valid).to(image.dtype)[None, None],
                size=(new_h, new_w),
                mode="bilinear",
                align_corners=False,
                antialias=shrink,
            )[0, 0]
            valid = weight < 1e-3
    if valid is not None and mask is not None:
        mask = mask.masked_fill(~valid.to(mask.device), params.ignore_index)

    # (2) pad bottom/right to at least the crop size.
    crop_h, crop_w = params.crop_size
    pad_h, pad_w = max(0, crop_h - new_h), max(0, crop_w - new_w)
    if valid is None:
        valid = torch.ones((new_h, new_w), dtype=torch.bool, device=image.device)
    else:
        valid = valid.to(image.device)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        valid = F.pad(valid, (0, pad_w, 0, pad_h), value=False)
        if mask is not None:
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=params.ignore_index)

    # (3) random crop.
    full_h, full_w = new_h + pad_h, new_w + pad_w
    x = random_int(generator, 0, full_w - crop_w)
    y = random_int(generator, 0, full_h - crop_h)
    image = image[:, y : y + crop_h, x : x + crop_w]
    valid = valid[y : y + crop_h, x : x + crop_w]
    if mask is not None:
        mask = mask[y : y + crop_h, x : x + crop_w]

    # (4) horizontal flip, the same for image, mask and valid.
    if _coin(generator, params.hflip_p):
        image = image.flip(-1)
        valid = valid.flip(-1)
        if mask is not None:
            mask = mask.flip(-1)

    image = image.contiguous()
    valid = valid.contiguous()
    if mask is not None:
        mask = mask.to(torch.int64).contiguous()
    return image, mask, valid


# --------------------------------------------------------------------------------------------
# Strong view
# --------------------------------------------------------------------------------------------


def _luminance(image: Tensor) -> Tensor:
    """Grayscale ``[..., 1, H, W]`` of an RGB image ``[..., 3, H, W]``."""
    r, g, b = image.unbind(-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def _gray(image: Tensor) -> Tensor:
    """Luminance for 3 channels, plain mean over bands otherwise; shape ``[..., 1, H, W]``."""
    if image.shape[-3] == 3:
        return _luminance(image)
    return image.mean(dim=-3, keepdim=True)


def _blend(image: Tensor, other: Tensor, factor: float) -> Tensor:
    return (factor * image + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _rgb_to_hsv(image: Tensor) -> Tensor:
    """RGB ``[..., 3, H, W]`` in [0, 1] to HSV, each channel in [0, 1] (hue as a turn fraction)."""
    maxc, argmax = image.max(dim=-3)  # ties resolve to the first channel (r, then g)
    minc = image.amin(dim=-3)
    delta = maxc - minc
    ones = torch.ones_like(maxc)
    sat = delta / torch.where(maxc > 0, maxc, ones)
    # Hue sector by the dominant channel: r -> (g - b), g -> 2 + (b - r), b -> 4 + (r - g).
    diff = image[..., [1, 2, 0], :, :] - image[..., [2, 0, 1], :, :]
    num = diff.gather(-3, argmax.unsqueeze(-3)).squeeze(-3)
    hue = num / torch.where(delta > 0, delta, ones) + 2.0 * argmax.to(image.dtype)
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.stack((hue, sat, maxc), dim=-3)


def _hsv_to_rgb(image: Tensor) -> Tensor:
    """HSV ``[..., 3, H, W]`` (all in [0, 1]) back to RGB in [0, 1]."""
    h, s, v = image.unsqueeze(-3).unbind(-4)
    # Closed form per channel n in (5, 3, 1) for (r, g, b): v - v s clamp(min(k, 4 - k), 0, 1)
    # with k = (n + 6 h) mod 6; avoids branching on the hue sector.
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device).view(3, 1, 1)
    k = torch.remainder(offsets + 6.0 * h, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _adjust_hue(image: Tensor, shift: float) -> Tensor:
    """Rotate the hue of an RGB image by ``shift`` turns (e.g. 1/3: red -> green)."""
    hsv = _rgb_to_hsv(image)
    h, s, v = hsv.unbind(-3)
    h = torch.remainder(h + shift, 1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3)).clamp_(0.0, 1.0)


def _gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur per channel, reflect padding.

    The kernel has ``2 * ceil(3 * sigma) + 1`` taps, cut down along an axis to the largest odd
    size not above the image size there (reflect padding needs a radius below the size).
    """
    channels, height, width = image.shape
    radius = math.ceil(3.0 * sigma)
    out = image.reshape(channels, 1, height, width)
    for axis, size in ((-2, height), (-1, width)):
        r = min(radius, (size - 1) // 2)
        if r == 0:
            continue
        x = torch.arange(-r, r + 1, dtype=torch.float64, device=image.device)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = (kernel / kernel.sum()).to(image.dtype)
        if axis == -2:
            weight = kernel.view(1, 1, -1, 1)
            out = F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), weight)
        else:
            weight = kernel.view(1, 1, 1, -1)
            out = F.conv2d(F.pad(out, (r, r, 0, 0), mode="reflect"), weight)
    out = out.reshape(channels, height, width)
    return image.clone() if out.data_ptr() == image.data_ptr() else out


def strong_view(image: Tensor, params: StrongViewConfig, generator: torch.Generator) -> Tensor:
    """Photometric augmentation of a weak-view image (shape unchanged, values in [0, 1]).

    1. With probability ``jitter_p``: colour jitter, the four ops in a random order (as
       torchvision's ColorJitter): brightness (multiply), contrast (blend with the mean of the
       grayscale image), saturation (blend with the grayscale image), hue (rotate by a uniform
       shift in ``[-hue, hue]`` turns). Each factor is uniform in ``[max(0, 1 - s), 1 + s]``;
       the result is clamped to [0, 1] after each op.
    2. With probability ``grayscale_p``: replace by luminance ``0.299 R + 0.587 G + 0.114 B``
       on all three channels.
    3. With probability ``blur_p``: Gaussian blur with sigma uniform in ``blur_sigma``.

    Saturation, hue and grayscale are defined only for RGB and are skipped when ``C != 3``
    (multispectral or single-band images); there "grayscale" for contrast is the band mean.
    """
    _check_image(image)
    channels = image.shape[0]
    rgb = channels == 3
    out = image

    b, c, s, h = params.jitter
    # Every factor and the op order are drawn even when unused, so the draw count is fixed.
    apply_jitter = _coin(generator, params.jitter_p)
    order = torch.randperm(4, generator=generator, device=generator.device).tolist()
    factors = (
        random_uniform(generator, max(0.0, 1.0 - b), 1.0 + b),
        random_uniform(generator, max(0.0, 1.0 - c), 1.0 + c),
        random_uniform(generator, max(0.0, 1.0 - s), 1.0 + s),
        random_uniform(generator, -h, h),
    )
    if apply_jitter:
        for op in order:
            factor = factors[op]
            if op == 0 and b > 0:
                out = (out * factor).clamp_(0.0, 1.0)
            elif op == 1 and c > 0:
                out = _blend(out, _gray(out).mean(), factor)
            elif op == 2 and s > 0 and rgb:
                out = _blend(out, _luminance(out), factor)
            elif op == 3 and h > 0 and rgb:
                out = _adjust_hue(out, factor)

    if _coin(generator, params.grayscale_p) and rgb:
        out = _luminance(out).expand(3, -1, -1).contiguous()

    apply_blur = _coin(generator, params.blur_p)
    sigma = random_uniform(generator, *params.blur_sigma)
    if apply_blur:
        out = _gaussian_blur(out, sigma)

    # Every op above builds a new tensor; copy when none ran so the result never aliases the input.
    return out if out is not image else image.clone()


# --------------------------------------------------------------------------------------------
# CutMix
# --------------------------------------------------------------------------------------------


def cutmix_box(
    size: tuple[int, int], params: CutMixConfig, generator: torch.Generator
) -> Tensor:
    """Random CutMix box as a bool mask ``[h, w]`` (True inside the box); on CPU.

    With probability ``1 - p`` the mask is all False. Otherwise, as in UniMatch, the box area is
    ``uniform(area) * h * w`` and, until the box fits inside the image, an aspect ratio
    ``r = uniform(aspect)`` (height / width) gives ``box_w = int(sqrt(area / r))`` and
    ``box_h = int(sqrt(area * r))``; the top-left corner is then uniform over the positions that
    keep the box inside. On very elongated images where no ratio fits after 100 tries, the last
    box is clipped to the image.
    """
    height, width = _pair(size, "size", int)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    box = torch.zeros((height, width), dtype=torch.bool)
    if not _coin(generator, params.p):
        return box

    area = random_uniform(generator, *params.area) * height * width
    for _ in range(_CUTMIX_MAX_TRIES):
        ratio = random_uniform(generator, *params.aspect)
        box_w = int(math.sqrt(area / ratio))
        box_h = int(math.sqrt(area * ratio))
        if box_w <= width and box_h <= height:
            break
    else:
        box_w, box_h = min(box_w, width), min(box_h, height)
    x = random_int(generator, 0, width - box_w)
    y = random_int(generator, 0, height - box_h)
    box[y : y + box_h, x : x + box_w] = True
    return box


def apply_cutmix(target: Tensor, source: Tensor, box: Tensor) -> Tensor:
    """Paste ``source`` into ``target`` where ``box`` is True; returns a new tensor.

    ``target`` and ``source`` have the same shape and dtype: images ``[C, h, w]`` / ``[B, C, h, w]``
    (``box`` ``[h, w]`` / ``[B, h, w]``, broadcast over channels) or masks / confidences
    ``[h, w]`` / ``[B, h, w]`` (``box`` of the same shape, or ``[h, w]`` for the whole batch).
    """
    if target.shape != source.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} != source shape {tuple(source.shape)}"
        )
    if target.dtype != source.dtype:
        raise ValueError(f"target dtype {target.dtype} != source dtype {source.dtype}")
    if box.dtype != torch.bool:
        raise ValueError(f"box must be a bool tensor, got {box.dtype}")
    if box.dim() not in (2, 3) or box.dim() > target.dim() or box.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"box shape {tuple(box.shape)} does not match target shape {tuple(target.shape)}"
        )
    box = box.to(target.device)
    if box.dim() == 3 and target.dim() == 4:
        box = box.unsqueeze(1)  # [B, h, w] -> [B, 1, h, w]: broadcast over channels
    try:
        torch.broadcast_shapes(box.shape, target.shape)
    except RuntimeError:
        raise ValueError(
            f"box shape {tuple(box.shape)} does not match target shape {tuple(target.shape)}"
        ) from None
    return torch.where(box, source, target)
