"""Sliding-window inference (SPEC 3.3): windows of the crop size, overlapping logits averaged.

Also the reference for whole-scene prediction (``co2s.inference.streaming``), which lays out the
same grid with ``window_starts`` and blends tiles with the smooth ``blend_weight``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from co2s.config.schema import default_stride


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)``; the last window is flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def blend_weight(height: int, width: int, floor: float = 1e-3) -> torch.Tensor:
    """A separable Hann window ``[height, width]``: 1 at the centre, falling smoothly towards the
    edges, where a tile sees the least context. Overlapping tiles then hand over gradually (no
    seams). Floored at ``floor`` so a pixel covered by a single tile keeps a positive weight."""

    def hann(n: int) -> torch.Tensor:
        return torch.sin(torch.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n).square().clamp_min(floor)

    return (hann(height)[:, None] * hann(width)[None, :]).float()


@torch.no_grad()
def sliding_window_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    num_classes: int,
    window: int,
    stride: int | None = None,
    batch_size: int = 4,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``[B, K, H, W]`` of ``image`` ``[B, C, H, W]`` from overlapping windows.

    ``model`` maps ``[N, C, h, w]`` to ``[N, K, h, w]``. Each pixel's logits are the (weighted)
    average over the windows that cover it; with ``weight=None`` every window counts equally.
    An image smaller than the window is predicted in one pass at its own size.
    """
    stride = stride or default_stride(window)
    b, _, h, w = image.shape
    wh, ww = min(window, h), min(window, w)
    boxes = [(y, x) for y in window_starts(h, wh, stride) for x in window_starts(w, ww, stride)]
    if weight is None:
        weight = torch.ones(wh, ww, device=image.device)
    weight = weight.to(image.device, torch.float32)
    out = torch.zeros(b, num_classes, h, w, device=image.device, dtype=torch.float32)
    norm = torch.zeros(1, 1, h, w, device=image.device, dtype=torch.float32)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        tiles = torch.cat([image[:, :, y : y + wh, x : x + ww] for y, x in chunk])
        logits = model(tiles).float()
        for j, (y, x) in enumerate(chunk):
            out[:, :, y : y + wh, x : x + ww] += logits[j * b : (j + 1) * b] * weight
            norm[:, :, y : y + wh, x : x + ww] += weight
    return out / norm
