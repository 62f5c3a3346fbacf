"""Sliding-window prediction of an image of any size, streamed in panels and strips of tile rows.

The tile grid (:mod:`co2s.inference.tiling`) is laid out over the whole image, and each tile's
logits are added with a smooth weight (``blend_weight``) to running sums, exactly as adding every
tile over the whole image at once would. The image is cut into vertical panels (``PANEL_WIDTH``
columns), each predicted top to
bottom with every tile that covers it; within a panel only the sums that a later tile still
covers are kept: the band of the tile row being predicted, a few tiles wide, and the overlap rows
carried to the next tile row. Finished pixels leave as class indices and confidences, one strip
of rows at a time. Memory thus depends on the tile and panel sizes only, never on the image's,
and every pixel's sum is over the same tiles in the same order as whole-image inference, so the
result equals it (tiles straddling a panel border are predicted twice: a few percent of work).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

from co2s.data.raster import Window
from co2s.errors import Co2sError
from co2s.inference.fusion import class_probabilities
from co2s.inference.tiling import Panel, TileGrid, blend_weight

PRECISIONS = ("fp32", "bf16", "fp16")
#: columns predicted side by side; wider scenes go in panels (a multiple of the GeoTIFF block)
PANEL_WIDTH = 4096


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise Co2sError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    if precision == "fp16" and torch.device(device).type == "cpu":
        raise Co2sError("fp16 needs a GPU; on the CPU use --precision bf16 or fp32")


def tile_logits(model: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                precision: str = "fp32", tta: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` as a float32 tile predictor: autocast to bf16/fp16 (fp16 only on GPUs), and with
    ``tta`` the average of the logits of the tiles and of their horizontal mirror images."""
    check_precision(precision, device)
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


#: ``pixel_maps(logits)``: float maps ``[h, w]`` by name from the blended logits of each model
PixelMaps = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
#: ``read(window)``: the model input of a window and its valid pixels (None: all valid)
Reader = Callable[[Window], tuple["torch.Tensor | np.ndarray", "np.ndarray | None"]]
#: the key of a piece's valid pixels (bool ``[h, w]``, from the reads that predicted it), when
#: asked for; not an identifier, so no model or fusion can be named so
VALID = "valid pixels"


@torch.no_grad()
def stream_prediction_maps(
    read: Reader,
    grid: TileGrid,
    predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    num_classes: int,
    predictions: list[str],
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    with_confidence: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    panel_width: int | None = None,
    pixel_maps: PixelMaps | None = None,
    validity: bool = False,
) -> Iterator[tuple[Window, dict[str, tuple[np.ndarray, np.ndarray | None] | np.ndarray]]]:
    """Yield ``(window, {prediction: (classes, confidence)})`` pieces, panel by panel, each top
    to bottom in strips of rows. Several ``predictions`` (students and fusions) share one pass of
    each model over the tiles: evaluation scores them side by side at the cost of one.

    ``read(window)`` returns the model input of a :class:`~co2s.data.raster.Window` ``[C, h, w]``
    (tensor or array) and its valid pixels (``None``: all valid). A tile without any valid pixel is not predicted: every pixel it covers
    is invalid too, so no valid pixel's result changes. ``predictors`` are the models whose logits
    the ``predictions`` (model names or fusions) need; ``on_progress(tiles, pixels)`` reports work.
    ``pixel_maps(logits)`` (the blended logits ``[1, K, h, w]`` of each model, by name) returns
    float maps ``[h, w]`` by name, yielded beside the predictions as float32 arrays: per-pixel
    quantities of the same blended logits, such as the uncertainty ``co2s suggest`` ranks by.
    With ``validity`` each piece also holds its valid pixels under :data:`VALID`, kept from the
    reads: whoever writes or scores the pieces need not read the masks again.
    """
    device = torch.device(device)
    weight = blend_weight(grid.tile_h, grid.tile_w).to(device)
    for panel in grid.panels(panel_width or PANEL_WIDTH):
        yield from _stream_panel(read, grid, panel, predictors, num_classes, list(predictions), batch_size,
                                 device, weight, with_confidence, on_progress, pixel_maps, validity)


def _stream_panel(read, grid: TileGrid, panel: Panel, predictors, num_classes, predictions, batch_size,
                  device, weight, with_confidence, on_progress, pixel_maps, validity):
    """One panel, tile row by tile row. Global column ``x`` is ``x - origin`` in the running sums."""
    names = list(predictors)
    n, k, th, tw = len(names), num_classes, grid.tile_h, grid.tile_w
    origin, end = panel.xs[0], panel.xs[-1] + tw
    out_width = panel.right - panel.left
    gaps = [b - a for a, b in zip(grid.ys, grid.ys[1:])] or [th]
    carry_rows = th - min(gaps)
    # Sums of the rows the next tile row still covers (their first ``carried`` rows are live).
    carry = torch.zeros(n, k, carry_rows, end - origin, device=device)
    carry_norm = torch.zeros(carry_rows, end - origin, device=device)
    carried = 0
    for r, y0 in enumerate(grid.ys):
        done = (grid.ys[r + 1] if r + 1 < len(grid.ys) else grid.height) - y0  # rows final after this row
        pieces = {p: (np.zeros((done, out_width), np.uint8),
                      np.zeros((done, out_width), np.float32) if with_confidence else None)
                  for p in predictions}
        maps: dict[str, np.ndarray] = {}
        if validity:
            maps[VALID] = np.zeros((done, out_width), bool)
        band = torch.zeros(n, k, th, 0, device=device)  # sums over columns [left, left + band width)
        band_norm = torch.zeros(th, 0, device=device)
        band_valid = np.zeros((th, 0), bool)  # the reads' valid pixels of the band's columns
        left = origin
        for c0 in range(0, len(panel.xs), batch_size):
            cols = panel.xs[c0 : c0 + batch_size]
            start, right = left + band.shape[-1], cols[-1] + tw
            new = torch.zeros(n, k, th, right - start, device=device)
            new_norm = torch.zeros(th, right - start, device=device)
            new[:, :, :carried] = carry[:, :, :carried, start - origin : right - origin]
            new_norm[:carried] = carry_norm[:carried, start - origin : right - origin]
            band, band_norm = torch.cat([band, new], -1), torch.cat([band_norm, new_norm], -1)

            image, valid = read(Window(cols[0], y0, right - cols[0], th))
            image = torch.as_tensor(image)
            if validity:
                fresh = (np.ones((th, right - start), bool) if valid is None
                         else np.asarray(valid, bool)[:, start - cols[0] :])
                band_valid = np.concatenate([band_valid, fresh], 1)
            keep = [x for x in cols if valid is None or valid[:, x - cols[0] : x - cols[0] + tw].any()]
            if keep:
                tiles = torch.stack([image[:, :, x - cols[0] : x - cols[0] + tw] for x in keep]).to(device)
                logits = [predictors[name](tiles) for name in names]
                for j, x in enumerate(keep):
                    for s in range(n):
                        band[s, :, :, x - left : x - left + tw] += logits[s][j] * weight
                    band_norm[:, x - left : x - left + tw] += weight

            last = c0 + len(cols)
            finished = (panel.xs[last] if last < len(panel.xs) else end) - left
            if finished > 0:
                carry[:, :, : th - done, left - origin : left - origin + finished] = band[:, :, done:, :finished]
                carry_norm[: th - done, left - origin : left - origin + finished] = band_norm[done:, :finished]
                a, b = max(left, panel.left), min(left + finished, panel.right)  # the panel's own columns
                if b > a:
                    sums, norm = band[:, :, :done, a - left : b - left], band_norm[:done, a - left : b - left]
                    logits = {name: (sums[s] / norm.clamp_min(1e-12))[None] for s, name in enumerate(names)}
                    for prediction, (classes, confidence) in pieces.items():
                        conf, labels = class_probabilities(logits, prediction)[0].max(0)
                        classes[:, a - panel.left : b - panel.left] = labels.cpu().numpy()
                        if confidence is not None:
                            confidence[:, a - panel.left : b - panel.left] = conf.cpu().numpy()
                    if validity:
                        maps[VALID][:, a - panel.left : b - panel.left] = band_valid[:done, a - left : b - left]
                    if pixel_maps is not None:
                        for name, values in pixel_maps(logits).items():
                            if name not in maps:
                                maps[name] = np.zeros((done, out_width), np.float32)
                            maps[name][:, a - panel.left : b - panel.left] = values.float().cpu().numpy()
                band, band_norm = band[..., finished:], band_norm[:, finished:]
                band_valid = band_valid[:, finished:]
                left += finished
                if on_progress:
                    on_progress(len(cols), done * max(0, b - a))
            elif on_progress:
                on_progress(len(cols), 0)
        carried = th - done
        yield Window(panel.left, y0, out_width, done), {**pieces, **maps}
