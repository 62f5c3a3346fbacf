"""A side-by-side picture of test tiles: image, ground truth and two models' predictions, drawn with
Pillow only (matplotlib is optional and not installed by default)."""

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


def comparison_image(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], classes: Sequence[str],
                     palette: Sequence[Sequence[int]], scale: int = 2, gap: int = 6) -> Image.Image:
    """One row per tile: the RGB image (``[H, W, 3]`` uint8), then class maps (``[H, W]`` indices,
    coloured with ``palette``); a title over each column and a legend of the classes below."""
    if not rows:
        raise ValueError("no tiles to show")
    pad = gap
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = _text_height(probe) + 4
    panels = [[Image.fromarray(p if p.ndim == 3 else colorize(p, [list(c) for c in palette]))
               for p in row] for row in rows]
    panels = [[im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in row] for row in panels]
    width = max(sum(im.width for im in row) + gap * (len(row) - 1) for row in panels) + 2 * pad
    height_rows = sum(max(im.height for im in row) for row in panels) + gap * (len(panels) - 1)
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
    for row in panels:
        x = pad
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


def write_comparison(path: str | os.PathLike, rows, titles, classes, palette, scale: int = 2) -> Path:
    """:func:`comparison_image` saved as a PNG (atomically)."""
    path = Path(path)
    atomic_save_image(comparison_image(rows, titles, classes, palette, scale), path)
    return path
