"""Sliding-window prediction of an image of any size, streamed in strips of tile rows.

The tile grid is laid out over the whole image (``window_starts`` over its full height and
width), and each tile's logits are added with a smooth weight (``blend_weight``) to running sums,
exactly as :func:`~co2s.inference.sliding_window.sliding_window_logits` does over the whole
image. Only the sums of rows and columns that a later tile still covers are kept: the band of the
tile row being predicted, a few tiles wide, and the overlap rows carried to the next tile row.
Finished pixels leave as class indices and confidences, one strip of rows at a time, so memory
depends on the tile size and the image width, never on the height, and the result equals
whole-image inference with the same grid, stride and weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from co2s.errors import Co2sError
from co2s.inference.fusion import class_probabilities
from co2s.inference.sliding_window import blend_weight, default_stride, window_starts

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile_h x tile_w`` at every (y, x) of ``ys x xs``; the last ones flush with the edges."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def over(cls, height: int, width: int, tile: int, stride: int) -> TileGrid:
        """The grid ``sliding_window_logits`` uses: an image smaller than a tile is one tile."""
        th, tw = min(tile, height), min(tile, width)
        return cls(height, width, th, tw, tuple(window_starts(height, th, stride)),
                   tuple(window_starts(width, tw, stride)))

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)


def tile_and_stride(config, tile: int | None = None, overlap: float | None = None) -> tuple[int, int]:
    """Tile size and stride: ``tile`` defaults to the evaluation window (``eval.window`` or
    ``train.crop_size``); ``overlap`` is in pixels (>= 1) or a fraction of the tile (< 1), by
    default ``eval.stride``'s for the configured window, else a sixth of the tile."""
    from co2s.evaluation.evaluator import window_and_stride

    window, stride = window_and_stride(config)
    tile = tile or window
    if tile < 1:
        raise Co2sError(f"--tile must be a positive number of pixels, got {tile}")
    if overlap is None:
        return tile, stride if tile == window else default_stride(tile)
    pixels = round(overlap * tile) if overlap < 1 else overlap
    if pixels != int(pixels) or not 0 <= pixels < tile:
        raise Co2sError(f"--overlap {overlap}: give whole pixels below the tile size {tile}, or a "
                        "fraction of the tile in [0, 1)")
    return tile, tile - int(pixels)


def tile_logits(model: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                precision: str = "fp32", tta: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` as a float32 tile predictor: autocast to bf16/fp16 (fp16 only on GPUs), and with
    ``tta`` the average of the logits of the tiles and of their horizontal mirror images."""
    if precision not in PRECISIONS:
        raise Co2sError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    if precision == "fp16" and device.type == "cpu":
        raise Co2sError("fp16 needs a GPU; on the CPU use --precision bf16 or fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            if not tta:
                return model(tiles).float()
            plain, mirrored = model(torch.cat([tiles, tiles.flip(-1)])).float().chunk(2)
            return (plain + mirrored.flip(-1)) / 2

    return predict


Reader = Callable[[int, int, int, int], tuple[torch.Tensor, "np.ndarray | None"]]


@torch.no_grad()
def stream_predictions(
    read: Reader,
    grid: TileGrid,
    predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    num_classes: int,
    prediction: str,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    with_confidence: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield ``(y0, classes [h, W] uint8, confidence [h, W] float32 or None)`` strips, top to bottom.

    ``read(y, x, h, w)`` returns the scaled image window ``[C, h, w]`` and its validity mask
    (``None``: all valid). A tile without any valid pixel is not predicted: every pixel it covers
    is invalid too, so no valid pixel's result changes. ``predictors`` are the models whose logits
    ``prediction`` (a model name or a fusion) needs; ``on_progress(tiles, pixels)`` reports work done.
    """
    device = torch.device(device)
    names = list(predictors)
    n, k, th, tw, width = len(names), num_classes, grid.tile_h, grid.tile_w, grid.width
    weight = blend_weight(th, tw).to(device)
    gaps = [b - a for a, b in zip(grid.ys, grid.ys[1:])] or [th]
    carry_rows = th - min(gaps)
    # Sums of the rows the next tile row still covers (their first ``carried`` rows are live).
    carry = torch.zeros(n, k, carry_rows, width, device=device)
    carry_norm = torch.zeros(carry_rows, width, device=device)
    carried = 0
    for r, y0 in enumerate(grid.ys):
        done = (grid.ys[r + 1] if r + 1 < len(grid.ys) else grid.height) - y0  # rows final after this row
        classes = np.zeros((done, width), np.uint8)
        confidence = np.zeros((done, width), np.float32) if with_confidence else None
        band = torch.zeros(n, k, th, 0, device=device)  # sums over columns [left, left + band width)
        band_norm = torch.zeros(th, 0, device=device)
        left = 0
        for c0 in range(0, len(grid.xs), batch_size):
            cols = grid.xs[c0 : c0 + batch_size]
            right = cols[-1] + tw
            grow = right - left - band.shape[-1]
            new = torch.zeros(n, k, th, grow, device=device)
            new_norm = torch.zeros(th, grow, device=device)
            start = left + band.shape[-1]
            new[:, :, :carried] = carry[:, :, :carried, start:right]
            new_norm[:carried] = carry_norm[:carried, start:right]
            band, band_norm = torch.cat([band, new], -1), torch.cat([band_norm, new_norm], -1)

            image, valid = read(y0, cols[0], th, right - cols[0])
            keep = [x for x in cols if valid is None or valid[:, x - cols[0] : x - cols[0] + tw].any()]
            if keep:
                tiles = torch.stack([image[:, :, x - cols[0] : x - cols[0] + tw] for x in keep]).to(device)
                logits = [predictors[name](tiles) for name in names]
                for j, x in enumerate(keep):
                    for s in range(n):
                        band[s, :, :, x - left : x - left + tw] += logits[s][j] * weight
                    band_norm[:, x - left : x - left + tw] += weight

            last = c0 + len(cols)
            finished = (grid.xs[last] if last < len(grid.xs) else width) - left
            if finished > 0:
                carry[:, :, : th - done, left : left + finished] = band[:, :, done:, :finished]
                carry_norm[: th - done, left : left + finished] = band_norm[done:, :finished]
                logits = {name: band[s, :, :done, :finished] / band_norm[:done, :finished].clamp_min(1e-12)
                          for s, name in enumerate(names)}
                conf, labels = class_probabilities({m: v[None] for m, v in logits.items()}, prediction)[0].max(0)
                classes[:, left : left + finished] = labels.cpu().numpy()
                if confidence is not None:
                    confidence[:, left : left + finished] = conf.cpu().numpy()
                band, band_norm = band[..., finished:], band_norm[:, finished:]
                left += finished
            if on_progress:
                on_progress(len(cols), finished * done if finished > 0 else 0)
        carried = th - done
        yield y0, classes, confidence
