"""The tiling rule of the package, one module: where tiles go (``window_starts``, ``TileGrid``,
panels), how their logits are weighted (``blend_weight``: a separable Hann window, SPEC 3.3 and 4)
and how ``--tile`` / ``--overlap`` become a tile and a stride. The Segmenter (images, region
scoring, whole scenes) and the streaming kernel (:mod:`co2s.inference.streaming`) read it here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from co2s.config import limits
from co2s.config.schema import default_stride
from co2s.data.raster import Window
from co2s.errors import Co2sError


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)``; the last window is flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


#: the smallest blend weight: a pixel covered by a single tile (an edge) keeps a positive one
BLEND_FLOOR = 1e-3


def blend_weight(height: int, width: int, floor: float = BLEND_FLOOR) -> torch.Tensor:
    """A separable Hann window ``[height, width]``: 1 at the centre, falling smoothly towards the
    edges, where a tile sees the least context. Overlapping tiles then hand over gradually (no
    seams). Floored at ``floor`` so a pixel covered by a single tile keeps a positive weight."""

    def hann(n: int) -> torch.Tensor:
        return torch.sin(torch.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n).square().clamp_min(floor)

    return (hann(height)[:, None] * hann(width)[None, :]).float()


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
        """Tiles of ``tile`` at ``stride`` over an image, the last ones flush with its edges; an image
        smaller than a tile is one tile."""
        th, tw = min(tile, height), min(tile, width)
        return cls(height, width, th, tw, tuple(window_starts(height, th, stride)),
                   tuple(window_starts(width, tw, stride)))

    def covering(self, window: Window) -> tuple[TileGrid, Window]:
        """The tiles of this grid that cover ``window``, as a grid over their own window, and that
        window. Every pixel of ``window`` is covered by the same tiles, added in the same order, so
        streaming this grid predicts it exactly as streaming the whole grid does (region scoring,
        SPEC 3.3 and 4)."""
        top, left, bottom, right = window.y, window.x, window.y1, window.x1
        if not (0 <= top < bottom <= self.height and 0 <= left < right <= self.width):
            raise Co2sError(f"window rows [{top}, {bottom}) x columns [{left}, {right}) is not inside the "
                            f"{self.height} x {self.width} grid")
        ys = [y for y in self.ys if y < bottom and y + self.tile_h > top]
        xs = [x for x in self.xs if x < right and x + self.tile_w > left]
        oy, ox = ys[0], xs[0]
        grid = TileGrid(ys[-1] + self.tile_h - oy, xs[-1] + self.tile_w - ox, self.tile_h, self.tile_w,
                        tuple(y - oy for y in ys), tuple(x - ox for x in xs))
        return grid, Window(ox, oy, grid.width, grid.height)

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def panels(self, width: int) -> list[Panel]:
        """Vertical panels of ``width`` output columns, each with every tile column that covers it
        (a tile straddling a panel border is predicted for both panels)."""
        cuts = [*range(0, self.width, width), self.width]
        return [Panel(a, b, tuple(x for x in self.xs if x < b and x + self.tile_w > a))
                for a, b in zip(cuts, cuts[1:])]

    def tiles_to_predict(self, panel_width: int) -> int:
        return len(self.ys) * sum(len(p.xs) for p in self.panels(panel_width))


@dataclass(frozen=True)
class Panel:
    left: int  # output columns [left, right)
    right: int
    xs: tuple[int, ...]  # starts of the tile columns covering them


def overlap_to_stride(window: int, stride: int, tile: int | None = None,
                      overlap: float | None = None) -> tuple[int, int]:
    """Tile size and stride from the configured ``window``/``stride`` and optional overrides:
    ``tile`` defaults to ``window``; ``overlap`` is in pixels (>= 1) or a fraction of the tile
    (< 1); without it the configured stride holds for the configured window, else a sixth overlaps.
    Both within the bounds of a configured tiling (:func:`co2s.config.limits.tiling_problem`): a
    huge tile or an overlap of nearly the whole tile is refused, not run out of memory or time."""
    tile = tile or window
    if tile < 1:
        raise Co2sError(f"--tile must be a positive number of pixels, got {tile}")
    if overlap is None:
        stride = stride if tile == window else default_stride(tile)
    else:
        pixels = round(overlap * tile) if overlap < 1 else overlap
        if pixels != int(pixels) or not 0 <= pixels < tile:
            raise Co2sError(f"--overlap {overlap}: give whole pixels below the tile size {tile}, or a "
                            "fraction of the tile in [0, 1)")
        stride = tile - int(pixels)
    problem = limits.tiling_problem(tile, stride, 1)
    if problem:
        given = " ".join(f"--{k} {v}" for k, v in (("tile", tile), ("overlap", overlap)) if v is not None)
        raise Co2sError(f"{given}: {problem.replace('window', 'tile')}")
    return tile, stride
