"""Pictures of tiles side by side, drawn with Pillow only (matplotlib is optional and not installed
by default): the demo's comparison (image, ground truth, two models' predictions) and the contact
sheet of ``co2s suggest`` (image, prediction, uncertainty). Images of any band count and range are
shown by :func:`display_rgb`, uncertainty maps by :func:`heat_colours`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from co2s.data.io import atomic_save_image, colorize

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def _text_height(draw: ImageDraw.ImageDraw) -> int:
    box = draw.textbbox((0, 0), "Ag")
    return box[3] - box[1]


def display_rgb(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A model input ``[C, H, W]`` (any band count, any range) as ``[H, W, 3]`` uint8 to look at:
    its first three bands (one band as grey), each stretched between its 2nd and 98th percentile
    over the valid pixels; invalid pixels black."""
    image = np.asarray(image, dtype=np.float32)
    bands = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    keep = np.ones(bands.shape[1:], bool) if valid is None else valid
    out = np.zeros((*bands.shape[1:], 3), np.uint8)
    for i, band in enumerate(bands):
        values = band[keep & np.isfinite(band)]
        if values.size == 0:
            continue
        low, high = np.percentile(values, [2, 98])
        stretched = (band - low) / (high - low) if high > low else np.full_like(band, 0.5)
        out[..., i] = np.clip(np.nan_to_num(stretched) * 255, 0, 255).astype(np.uint8)
    out[~keep] = 0
    return out


#: colours of a heat map from 0 (dark blue) through green to 1 (yellow), as viridis runs
_HEAT = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def heat_colours(values: np.ndarray, top: float = 1.0, valid: np.ndarray | None = None) -> np.ndarray:
    """``[H, W]`` values in ``[0, top]`` as ``[H, W, 3]`` uint8 colours (dark: low, yellow: high);
    invalid pixels white."""
    x = np.clip(np.nan_to_num(np.asarray(values, np.float64)) / top, 0, 1) * (len(_HEAT) - 1)
    low = np.minimum(x.astype(np.int64), len(_HEAT) - 2)
    frac = (x - low)[..., None]
    out = (_HEAT[low] * (1 - frac) + _HEAT[low + 1] * frac).round().astype(np.uint8)
    if valid is not None:
        out[~valid] = 255
    return out


def comparison_image(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], classes: Sequence[str],
                     palette: Sequence[Sequence[int]], scale: int = 2, gap: int = 6,
                     captions: Sequence[str] | None = None) -> Image.Image:
    """One row per tile: the RGB image (``[H, W, 3]`` uint8), then class maps (``[H, W]`` indices,
    coloured with ``palette``) or more RGB panels; a title over each column, a caption over each
    row (``captions``) and a legend of the classes below. ``scale`` enlarges (> 1) or, as a
    fraction, shrinks the panels."""
    if not rows:
        raise ValueError("no tiles to show")
    pad = gap
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = _text_height(probe) + 4
    panels = [[Image.fromarray(p if p.ndim == 3 else colorize(p, [list(c) for c in palette]))
               for p in row] for row in rows]
    panels = [[im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)
               for im in row] for row in panels]
    caption = line if captions is not None else 0
    width = max(sum(im.width for im in row) + gap * (len(row) - 1) for row in panels) + 2 * pad
    if captions is not None:
        width = max(width, max(int(probe.textlength(c)) for c in captions) + 2 * pad)
    height_rows = sum(max(im.height for im in row) + caption for row in panels) + gap * (len(panels) - 1)
    swatch = line
    legend_width = width - 2 * pad
    # legend: one entry per class, wrapped over lines
    entries = [(c, tuple(int(v) for v in palette[i])) for i, c in enumerate(classes)]
    entry_widths = [swatch + 4 + int(probe.textlength(name)) + 14 for name, _ in entries]
    legend_lines, used = 1, 0
    for w in entry_widths:
        if used and used + w > legend_width:
            legend_lines, used = legend_lines + 1, 0
        used += w
    canvas = Image.new("RGB", (width, pad + line + height_rows + gap + legend_lines * (line + 2) + pad), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = pad
    for title, im in zip(titles, panels[0]):
        draw.text((x, pad), title, fill=INK)
        x += im.width + gap
    y = pad + line
    for r, row in enumerate(panels):
        x = pad
        if captions is not None:
            draw.text((x, y), captions[r], fill=INK)
            y += caption
        for im in row:
            canvas.paste(im, (x, y))
            x += im.width + gap
        y += max(im.height for im in row) + gap
    x = pad
    for (name, colour), w in zip(entries, entry_widths):
        if x > pad and x + w > pad + legend_width:
            x, y = pad, y + line + 2
        draw.rectangle([x, y + 1, x + swatch - 2, y + swatch - 2], fill=colour, outline=INK)
        draw.text((x + swatch + 4, y), name, fill=INK)
        x += w
    return canvas


def write_comparison(path: str | os.PathLike, rows, titles, classes, palette, scale: float = 2,
                     captions: Sequence[str] | None = None) -> Path:
    """:func:`comparison_image` saved as a PNG (atomically)."""
    path = Path(path)
    atomic_save_image(comparison_image(rows, titles, classes, palette, scale, captions=captions), path)
    return path
