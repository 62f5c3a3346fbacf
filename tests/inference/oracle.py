"""The test oracle of tiled prediction: every window of the image at once, logits averaged with a
weight (uniform by default, as the paper's code does), no streaming. The package's streamed
prediction must equal it with the Hann weight; ``benchmarks/blend_rule.py`` compares the two weights."""

from __future__ import annotations

from collections.abc import Callable

import torch

from co2s.config.schema import default_stride
from co2s.inference.tiling import window_starts


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
