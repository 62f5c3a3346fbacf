"""Seeded synthetic aerial scenes for ``co2s demo`` (no downloads needed).

:func:`generate_scene` draws a top-down, remote-sensing-like RGB image together with its
per-pixel class mask (classes :data:`DEMO_CLASSES`).  Everything is vectorised numpy, so a
128 x 128 tile takes a few milliseconds.  The scenes are built to be learnable from local
colour, texture and shape by a small CNN, but not separable by the colour of a single pixel:

* cropland parcels (striped, each with its own tint from fresh green to ripe yellow / green-brown),
* bare-soil parcels (brown to tan to greyish, some with faint furrows),
* forest (woodlot parcels, organic patches and hedgerows; textured, self-shaded tree crowns),
* water (lakes from a thresholded smooth field and meandering rivers; blue to dark teal,
  lighter shallows, faint ripples),
* roads (asphalt or dirt, 3-7 px wide, straight or gently bending, crossing the scene),
* buildings (rotated rectangles of 6-20 px along roads; gabled roofs with a lit and a dark
  half, or flat roofs; red, orange, grey, dark or white),

then tree and building shadows (labelled as the class they fall on), illumination gradient,
colour-balance and haze jitter per scene, a slight sensor blur and Gaussian pixel noise.
Deliberate colour overlaps: bare soil / dirt road / ripe crop, grey roof / asphalt road,
dark water / shadowed forest, and everything in shadow.

:func:`write_demo_dataset` writes a small benchmark-like dataset (tiles, masks, split lists,
whole scenes) deterministically: the same seed and arguments give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from co2s.atomic import atomic_path

__all__ = [
    "DEMO_CLASSES",
    "DEMO_PALETTE",
    "DemoDataset",
    "SETTINGS",
    "SURVEY_LABELLED_PART",
    "generate_scene",
    "survey_position",
    "write_demo_dataset",
]

DEMO_CLASSES: tuple[str, ...] = ("cropland", "forest", "water", "road", "building", "bare soil")
DEMO_PALETTE: tuple[tuple[int, int, int], ...] = (
    (200, 215, 80),  # cropland: yellow-green
    (30, 100, 40),  # forest: dark green
    (40, 100, 220),  # water: blue
    (128, 128, 128),  # road: grey
    (220, 40, 40),  # building: red
    (150, 100, 55),  # bare soil: brown
)

CROPLAND, FOREST, WATER, ROAD, BUILDING, BARE_SOIL = range(6)

_FORMAT = "co2s-synthetic-demo"
_FORMAT_VERSION = 1

# Split name -> key mixed into the per-tile seeds (stable: adding tiles to one split never
# changes the tiles of another one).
_SPLITS = ("labelled", "unlabelled", "val", "test")
_SCENE_KEY = 4

#: How the tiles are spread over the survey area (``write_demo_dataset(setting=...)``):
#: ``uniform``: every split drawn alike, all under the same range of conditions;
#: ``survey``: the labelled tiles from the first :data:`SURVEY_LABELLED_PART` of the area (one
#: part of a survey flown over weeks), the unlabelled, validation and test tiles from all of it, so
#: the season, illumination, sensor gain and haze of the rest appear only in unlabelled imagery
#: (:func:`_acquire`). Scenes cross the whole area, left to right.
SETTINGS = ("uniform", "survey")
SURVEY_LABELLED_PART = 0.25


# --------------------------------------------------------------------------------------
# Noise helpers
# --------------------------------------------------------------------------------------


def _value_noise(h: int, w: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Random grid with spacing ``cell`` px, upsampled with separable smoothstep interpolation."""
    cell = max(float(cell), 1.0)
    gh = int(math.ceil(h / cell)) + 2
    gw = int(math.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw))
    oy, ox = rng.uniform(0.0, 1.0, 2)
    y = np.arange(h) / cell + oy
    x = np.arange(w) / cell + ox
    y0 = np.floor(y).astype(np.intp)
    x0 = np.floor(x).astype(np.intp)
    fy = y - y0
    fx = x - x0
    fy = fy * fy * (3.0 - 2.0 * fy)
    fx = fx * fx * (3.0 - 2.0 * fx)
    rows = grid[y0] * (1.0 - fy)[:, None] + grid[y0 + 1] * fy[:, None]  # (h, gw)
    return rows[:, x0] * (1.0 - fx)[None, :] + rows[:, x0 + 1] * fx[None, :]


def _fbm(h: int, w: int, cell: float, octaves: int, rng: np.random.Generator,
         persistence: float = 0.5) -> np.ndarray:
    """Fractal sum of value noise, roughly unit standard deviation."""
    out = np.zeros((h, w))
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        out += amp * _value_noise(h, w, cell / (2**k), rng)
        norm += amp * amp
        amp *= persistence
    return out / math.sqrt(norm)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) pixels; uncovered pixels are zero / False."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _wave(phase: np.ndarray) -> np.ndarray:
    """Cheap periodic wave in [-1, 1] with period 1 (parabolic segments, no trigonometry)."""
    p = phase - np.floor(phase)
    return 8.0 * p * (1.0 - p) - 1.0


def _soft(x: np.ndarray) -> np.ndarray:
    """Cheap tanh-like squashing into (-1, 1)."""
    return x / (1.0 + np.abs(x))


def _blur_mix(img: np.ndarray, amount: float) -> np.ndarray:
    """``(1 - amount) * img + amount * blur(img)`` with a 3 x 3 binomial blur (edges
    replicated), on [H, W] or [H, W, C] arrays."""
    v = 2.0 * img
    v[1:] += img[:-1]
    v[0] += img[0]
    v[:-1] += img[1:]
    v[-1] += img[-1]
    hv = 2.0 * v
    hv[:, 1:] += v[:, :-1]
    hv[:, 0] += v[:, 0]
    hv[:, :-1] += v[:, 1:]
    hv[:, -1] += v[:, -1]
    hv *= amount / 16.0
    hv += (1.0 - amount) * img
    return hv


def _quantile_mask(field: np.ndarray, fraction: float) -> tuple[np.ndarray, float]:
    """Pixels holding the top ``fraction`` of ``field`` and the threshold used."""
    if fraction <= 0.0:
        return np.zeros(field.shape, bool), float("inf")
    # A strided subsample is plenty for a threshold and much faster on big fields.
    step = max(1, int(math.sqrt(field.size / 4096.0)))
    thr = float(np.quantile(field[::step, ::step], 1.0 - fraction))
    return field > thr, thr


# --------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------


def _parcels(h: int, w: int, angle: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Field parcels: strips of random width along a scene-wide orientation, each cut into
    rectangles of random length, with a slight domain warp.  Returns (ids [H, W], n_ids)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    warp = rng.uniform(1.0, 4.0)
    xx = xx + warp * _value_noise(h, w, 24.0, rng)
    yy = yy + warp * _value_noise(h, w, 24.0, rng)
    c, s = math.cos(angle), math.sin(angle)
    u = xx * c + yy * s
    v = -xx * s + yy * c
    u -= u.min()
    v -= v.min()
    strip_w = rng.uniform(22.0, 55.0)
    cut_len = rng.uniform(30.0, 90.0)
    n_strips = int(v.max() / (0.5 * strip_w)) + 2
    bounds_v = np.cumsum(strip_w * rng.uniform(0.5, 1.5, n_strips))
    strip = np.minimum(np.searchsorted(bounds_v, v), n_strips - 1)
    n_cuts = int(u.max() / (0.4 * cut_len)) + 2
    cuts = np.cumsum(cut_len * rng.uniform(0.4, 1.6, (n_strips, n_cuts)), axis=1)
    cuts -= rng.uniform(0.0, cut_len, (n_strips, 1))  # stagger the cuts between strips
    # Count, per pixel, the cuts of its own strip left of it: one searchsorted over all strips
    # laid end to end (rows offset by ``big`` so that they never interleave).
    big = float(cuts.max() - cuts.min() + u.max() + 1.0)
    offsets = np.arange(n_strips) * big
    flat = (cuts + offsets[:, None]).ravel()
    idx = np.searchsorted(flat, u + offsets[strip], side="left") - strip * n_cuts
    return strip * (n_cuts + 1) + idx, n_strips * (n_cuts + 1)


def _random_polyline(h: int, w: int, angle: float, bend: float, rng: np.random.Generator
                     ) -> np.ndarray:
    """A gently bending line through a random interior point, long enough to cross the
    scene.  Returns points [N, 2] as (y, x)."""
    p0 = np.array([rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w])
    length = float(h + w)
    step = length if bend == 0.0 else max(8.0, length / 10.0)
    n = int(math.ceil(length / step)) + 1
    halves = []
    for direction in (1.0, -1.0):
        theta = angle if direction > 0 else angle + math.pi
        pts = [p0]
        p = p0
        for _ in range(n // 2 + 1):
            theta += rng.normal(0.0, bend)
            p = p + step * np.array([math.sin(theta), math.cos(theta)])
            pts.append(p)
        halves.append(np.array(pts))
    return np.concatenate([halves[1][::-1], halves[0][1:]], axis=0)


def _polyline_distance(pts: np.ndarray, h: int, w: int, reach: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: distance to the polyline, arc length of the nearest point, and the
    direction angle of the nearest segment.  Only pixels within ``reach`` of a segment's
    bounding box are computed; the distance elsewhere is ``inf``."""
    best = np.full((h, w), np.inf)
    arc = np.zeros((h, w))
    ang = np.zeros((h, w))
    s0 = 0.0
    for a, b in zip(pts[:-1], pts[1:]):
        d = b - a
        seg_len2 = float(d @ d)
        seg_len = math.sqrt(seg_len2)
        y0 = max(int(math.floor(min(a[0], b[0]) - reach)), 0)
        y1 = min(int(math.ceil(max(a[0], b[0]) + reach)) + 1, h)
        x0 = max(int(math.floor(min(a[1], b[1]) - reach)), 0)
        x1 = min(int(math.ceil(max(a[1], b[1]) + reach)) + 1, w)
        if y1 > y0 and x1 > x0:
            py = np.arange(y0, y1, dtype=np.float64)[:, None] - a[0]
            px = np.arange(x0, x1, dtype=np.float64)[None, :] - a[1]
            t = np.clip((py * d[0] + px * d[1]) / max(seg_len2, 1e-9), 0.0, 1.0)
            dist = np.hypot(py - t * d[0], px - t * d[1])
            win = best[y0:y1, x0:x1]
            better = dist < win
            np.copyto(win, dist, where=better)
            np.copyto(arc[y0:y1, x0:x1], s0 + t * seg_len, where=better)
            np.copyto(ang[y0:y1, x0:x1], math.atan2(d[0], d[1]), where=better)
        s0 += seg_len
    return best, arc, ang


# --------------------------------------------------------------------------------------
# Scene generation
# --------------------------------------------------------------------------------------

_CROP_TINTS = np.array([
    [168, 182, 92],  # yellow-green
    [110, 152, 66],  # fresh green
    [132, 130, 82],  # green-brown
    [196, 184, 118],  # ripe / dry (overlaps light bare soil)
    [142, 170, 80],
], dtype=np.float64)
_SOIL_TINTS = np.array([
    [146, 110, 78],  # brown
    [112, 88, 68],  # dark brown
    [178, 152, 118],  # tan
    [150, 140, 124],  # greyish (overlaps dirt road / asphalt)
], dtype=np.float64)
_ROOF_COLOURS = np.array([
    [176, 74, 52],  # red tiles
    [192, 112, 62],  # orange
    [138, 138, 142],  # grey (overlaps asphalt)
    [88, 86, 92],  # dark
    [206, 204, 196],  # white / light
    [150, 96, 80],  # brownish red
], dtype=np.float64)
_ROOF_P = np.array([0.3, 0.18, 0.2, 0.12, 0.1, 0.1])


def generate_scene(height: int, width: int, rng: np.random.Generator,
                   position: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic aerial scene.

    Returns ``(image, mask)``: image uint8 [H, W, 3] RGB, mask uint8 [H, W] with class
    indices 0..5 into :data:`DEMO_CLASSES`.  Deterministic given the state of ``rng``.
    ``position`` in the survey area (a number in [0, 1], or one per column) applies the acquisition conditions
    of that part of the survey area (:func:`_acquire`); it draws nothing from ``rng``, so the
    same seed gives the same ground under other conditions.
    """
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise ValueError(f"scene size must be positive, got {height} x {width}")
    rng = np.random.default_rng(rng)  # a Generator is used as is (an int seed also works)
    # The painters run in this order and each draws from ``rng`` in turn: reordering them (or the
    # draws inside them) changes every scene of a seed.
    scene = _start_scene(h, w, rng)
    border = _paint_parcels(scene)
    _paint_forest(scene, border)
    water = _paint_water(scene)
    road, road_dist, road_ang = _paint_roads(scene)
    building, shadow = _paint_buildings(scene, road | water, road_dist, road_ang)
    _paint_shadows(scene, building, road, shadow)
    if position is not None:
        _acquire(scene, position)
    return _sensor_image(scene), scene.mask


@dataclass
class _Scene:
    """A scene while it is painted: the random stream, the pixel grid, the scene-wide draws, and
    the layers so far (``img`` float RGB and the noise fields several classes share are set by
    :func:`_paint_parcels`)."""

    rng: np.random.Generator
    h: int
    w: int
    yy: np.ndarray  # row of every pixel, float
    xx: np.ndarray  # column of every pixel, float
    urban: float  # 0..1: how much road and building area
    angle: float  # orientation of the field pattern
    sun_dy: float  # direction in which shadows fall
    sun_dx: float
    mask: np.ndarray
    img: np.ndarray | None = None
    lowfreq: np.ndarray | None = None  # smooth variation, cell 28 px
    fine: np.ndarray | None = None  # per-pixel Gaussian grain
    medium: np.ndarray | None = None  # value noise, cell 2.5 px


def _start_scene(h: int, w: int, rng: np.random.Generator) -> _Scene:
    """The pixel grid and the scene-wide parameters; every pixel starts as cropland."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    urban = rng.uniform() ** 1.3
    angle = rng.uniform(0.0, math.pi)  # orientation of the field pattern
    sun = rng.uniform(0.0, 2.0 * math.pi)  # direction in which shadows fall
    sun_dy, sun_dx = math.sin(sun), math.cos(sun)
    mask = np.full((h, w), CROPLAND, np.uint8)
    return _Scene(rng, h, w, yy, xx, urban, angle, sun_dy, sun_dx, mask)


class _ParcelLooks(NamedTuple):
    """Per-parcel appearance, indexed by parcel id."""

    crop_tint: np.ndarray
    soil_tint: np.ndarray
    bright: np.ndarray
    row_angle: np.ndarray
    row_period: np.ndarray
    row_amp: np.ndarray
    furrow_amp: np.ndarray


def _paint_parcels(s: _Scene) -> np.ndarray:
    """Parcels of cropland, bare soil and woodlots (the woodlots are painted with the forest), and
    the shared noise fields. Returns the parcel borders."""
    h, w, rng = s.h, s.w, s.rng
    pid, n_pid = _parcels(h, w, s.angle, rng)
    p_forest = rng.uniform(0.04, 0.2)
    p_soil = rng.uniform(0.12, 0.35)
    draw = rng.uniform(size=n_pid)
    parcel_cls = np.where(draw < p_forest, FOREST,
                          np.where(draw < p_forest + p_soil, BARE_SOIL, CROPLAND))
    s.mask[:] = parcel_cls[pid]

    looks = _parcel_looks(n_pid, s.angle, rng)
    row_angle, row_period = looks.row_angle, looks.row_period
    phase = s.xx * (np.cos(row_angle) / row_period)[pid] + s.yy * (np.sin(row_angle) / row_period)[pid]
    rows = _wave(phase)
    s.lowfreq = _fbm(h, w, 28.0, 2, rng)
    s.fine = rng.standard_normal((h, w))
    s.medium = _value_noise(h, w, 2.5, rng)
    _paint_fields(s, pid, looks, rows)
    return _parcel_borders(s, pid)


def _parcel_looks(n_pid: int, angle: float, rng: np.random.Generator) -> _ParcelLooks:
    """Tints, brightness, and crop-row / furrow patterns of ``n_pid`` parcels."""
    mix = rng.dirichlet(np.full(len(_CROP_TINTS), 0.35), size=n_pid)
    crop_tint = mix @ _CROP_TINTS
    smix = rng.dirichlet(np.full(len(_SOIL_TINTS), 0.35), size=n_pid)
    soil_tint = smix @ _SOIL_TINTS
    bright = rng.uniform(0.85, 1.12, n_pid)
    row_angle = angle + np.where(rng.uniform(size=n_pid) < 0.7, 0.0, math.pi / 2) \
        + rng.normal(0.0, 0.05, n_pid)
    row_period = rng.uniform(3.0, 7.0, n_pid)
    row_amp = np.where(rng.uniform(size=n_pid) < 0.75, rng.uniform(0.05, 0.16, n_pid), 0.0)
    furrow_amp = np.where(rng.uniform(size=n_pid) < 0.5, rng.uniform(0.02, 0.07, n_pid), 0.0)
    return _ParcelLooks(crop_tint, soil_tint, bright, row_angle, row_period, row_amp, furrow_amp)


def _paint_fields(s: _Scene, pid: np.ndarray, looks: _ParcelLooks, rows: np.ndarray) -> None:
    """The first image: crop rows everywhere, then furrowed bare soil on its parcels."""
    lowfreq, fine, medium = s.lowfreq, s.fine, s.medium
    bright = looks.bright
    crop_mod = bright[pid] * (1.0 + looks.row_amp[pid] * rows + 0.05 * lowfreq + 0.04 * medium)
    s.img = looks.crop_tint[pid] * crop_mod[..., None]
    soil = s.mask == BARE_SOIL
    if soil.any():
        ps = pid[soil]
        soil_mod = bright[ps] * (1.0 + looks.furrow_amp[ps] * rows[soil] + 0.07 * lowfreq[soil]
                                 + 0.08 * medium[soil] + 0.03 * fine[soil])
        s.img[soil] = looks.soil_tint[ps] * soil_mod[:, None]


def _parcel_borders(s: _Scene, pid: np.ndarray) -> np.ndarray:
    """Thin grass margins between parcels, slightly different brightness (same label)."""
    border = (pid != _shift(pid, 1, 0)) | (pid != _shift(pid, 0, 1))
    border[0, :] = False
    border[:, 0] = False
    s.img[border] *= s.rng.uniform(0.8, 1.1)
    return border


def _paint_forest(s: _Scene, border: np.ndarray) -> None:
    """Woodlots, organic patches, hedgerows and scattered trees, with textured tree crowns."""
    forest, forest_field = _forest_area(s, border)
    s.mask[forest] = FOREST
    if forest.any():
        _paint_canopy(s, forest, forest_field)


def _forest_area(s: _Scene, border: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The forest pixels (woodlot parcels, patches of a smooth field, hedgerows along some parcel
    borders, single trees) and the smooth field, which also tints the canopy."""
    h, w, rng = s.h, s.w, s.rng
    forest_frac = rng.uniform(0.0, 0.35) if rng.uniform() < 0.8 else 0.0
    forest_field = _fbm(h, w, 48.0, 3, rng, persistence=0.6)
    forest_patch, _ = _quantile_mask(forest_field, forest_frac)
    forest = (s.mask == FOREST) | forest_patch
    if rng.uniform() < 0.45:  # hedgerows along some parcel borders
        hedge = border | _shift(border, 1, 1)
        hedge &= _value_noise(h, w, 16.0, rng) > rng.uniform(-0.3, 0.6)
        forest |= hedge
    if rng.uniform() < 0.5:  # scattered single trees / small groups
        trees = _value_noise(h, w, 4.5, rng) + 0.8 * _value_noise(h, w, 30.0, rng)
        forest |= trees > rng.uniform(1.8, 2.3)
    return forest, forest_field


def _paint_canopy(s: _Scene, forest: np.ndarray, forest_field: np.ndarray) -> None:
    """Self-shaded tree crowns with dark gaps, deciduous to coniferous in tone."""
    h, w, rng = s.h, s.w, s.rng
    deciduous = rng.uniform()
    forest_base = deciduous * np.array([66.0, 100.0, 52.0]) + \
        (1.0 - deciduous) * np.array([36.0, 64.0, 42.0])
    crowns = _value_noise(h, w, rng.uniform(2.0, 3.5), rng) + \
        0.5 * _value_noise(h, w, 1.3, rng)
    # Crowns lit on the side facing the sun (opposite to the shadow direction).
    lit = crowns - _shift(crowns, int(round(-1.5 * s.sun_dy)), int(round(-1.5 * s.sun_dx)))
    crown_mod = 0.78 + 0.22 * _soft(crowns) + 0.12 * _soft(lit) + 0.06 * s.lowfreq
    crown_mod[crowns < rng.uniform(-1.6, -0.9)] = 0.45  # dark gaps between crowns
    tone = 1.0 + 0.1 * forest_field[forest][:, None] * np.array([1.0, 0.6, 0.3])
    s.img[forest] = forest_base * crown_mod[forest][:, None] * tone


def _paint_water(s: _Scene) -> np.ndarray:
    """Lakes and rivers, deep to shallow, with faint ripples; returns the water pixels."""
    water, depth = _water_area(s)
    s.mask[water] = WATER
    if water.any():
        _paint_water_surface(s, water, depth)
    return water


def _water_area(s: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """The water pixels (lakes from a thresholded smooth field, sometimes a meandering river) and
    their depth, 0 at the shore to 1."""
    h, w, rng = s.h, s.w, s.rng
    water_frac = rng.uniform(0.04, 0.3) if rng.uniform() < 0.6 else 0.0
    water_field = _fbm(h, w, 64.0, 3, rng, persistence=0.45)
    water, thr = _quantile_mask(water_field, water_frac)
    depth = np.clip((water_field - thr) / 0.6, 0.0, 1.0) if water_frac > 0 else np.zeros((h, w))
    if rng.uniform() < 0.25:
        river = _random_polyline(h, w, rng.uniform(0.0, 2.0 * math.pi), 0.35, rng)
        rdist, _, _ = _polyline_distance(river, h, w, 12.0)
        rw = rng.uniform(3.0, 9.0)
        in_river = rdist < rw
        water |= in_river
        depth = np.maximum(depth, np.where(in_river, np.clip(1.0 - rdist / rw, 0.0, 1.0), 0.0))
    return water, depth


def _paint_water_surface(s: _Scene, water: np.ndarray, depth: np.ndarray) -> None:
    """Blue to dark teal in the deep, lighter shallows, faint ripples."""
    h, w, rng, xx, yy = s.h, s.w, s.rng, s.xx, s.yy
    teal = rng.uniform()
    deep = teal * np.array([28.0, 62.0, 66.0]) + (1.0 - teal) * np.array([34.0, 70.0, 112.0])
    shallow = np.array([84.0, 110.0, 102.0]) * rng.uniform(0.85, 1.1)
    ripple = 0.03 * _wave((xx * 0.7 + yy * 0.3 + 2.0 * _value_noise(h, w, 6.0, rng))
                          / rng.uniform(4.0, 8.0))
    dd = np.sqrt(depth[water])[:, None]
    s.img[water] = (shallow * (1.0 - dd) + deep * dd) * \
        (1.0 + ripple[water] + 0.03 * s.lowfreq[water])[:, None]


def _paint_roads(s: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roads crossing the scene, mostly along the field pattern, until they cover their share
    (more in urban scenes). Returns the road pixels, every pixel's distance to the nearest road and
    that road's direction there."""
    h, w, rng = s.h, s.w, s.rng
    road_target = 0.0 if rng.uniform() < 0.08 else 0.025 + 0.07 * s.urban
    road = np.zeros((h, w), bool)
    road_dist = np.full((h, w), np.inf)
    road_ang = np.zeros((h, w))
    max_roads = 1 + int(round(3 * max(h * w / (128 * 128), 1.0) ** 0.5))
    n_roads = 0
    while road.mean() < road_target and n_roads < max_roads:
        n_roads += 1
        if rng.uniform() < 0.6:  # along the field pattern
            r_angle = s.angle + (0.0 if rng.uniform() < 0.5 else math.pi / 2)
        else:
            r_angle = rng.uniform(0.0, math.pi)
        bend = 0.0 if rng.uniform() < 0.4 else rng.uniform(0.03, 0.15)
        line = _random_polyline(h, w, r_angle, bend, rng)
        dist, arc, ang = _polyline_distance(line, h, w, 26.0)
        road |= _paint_road(s, dist, arc)
        closer = dist < road_dist
        road_ang = np.where(closer, ang, road_ang)
        road_dist = np.minimum(road_dist, dist)
    s.mask[road] = ROAD
    return road, road_dist, road_ang


def _paint_road(s: _Scene, dist: np.ndarray, arc: np.ndarray) -> np.ndarray:
    """One road, 3-7 px wide around its line (``dist``: distance to it, ``arc``: length along it):
    asphalt, sometimes with a dashed centre line, or dirt; returns its pixels."""
    rng, fine, medium, lowfreq = s.rng, s.fine, s.medium, s.lowfreq
    width = rng.uniform(3.0, 7.5)
    half = width / 2.0
    on = dist <= half
    asphalt = rng.uniform() < 0.65
    d_on = dist[on]
    if asphalt:
        g = rng.uniform(92.0, 150.0)
        base = np.array([g, g, g * rng.uniform(1.0, 1.06)])
        tex = 1.0 + 0.04 * fine[on] + 0.03 * lowfreq[on]
    else:
        base = np.array([152.0, 138.0, 116.0]) * rng.uniform(0.88, 1.1)
        tex = 1.0 + 0.06 * fine[on] + 0.06 * medium[on] + 0.04 * lowfreq[on]
    tex = np.where(d_on > half - 1.0, tex * rng.uniform(0.88, 1.08), tex)  # shoulders
    road_img = base * tex[:, None]
    if asphalt and width >= 5.5 and rng.uniform() < 0.6:  # dashed centre line
        dash = (d_on < 0.6) & ((arc[on] % 12.0) < 6.0)
        road_img[dash] = (215.0, 215.0, 205.0)
    s.img[on] = road_img
    return on


@dataclass
class _Footprint:
    """A building's rotated rectangle, in the window ``img[window]`` around it."""

    window: tuple[slice, slice]
    u: np.ndarray  # coordinate along the first side (length la)
    v: np.ndarray  # coordinate along the second side (length lb)
    la: float
    lb: float
    ca: float  # cos and sin of the rotation
    sa: float
    inside: np.ndarray  # the roof
    margin: np.ndarray  # the roof and 2 px around it, kept free of other buildings
    swept: np.ndarray  # the shadow it casts


def _paint_buildings(s: _Scene, blocked: np.ndarray, road_dist: np.ndarray, road_ang: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Buildings until they cover their share (more in urban scenes), mostly beside roads and
    aligned with them, never on ``blocked`` pixels (roads, water) or each other. Returns the
    building pixels and their shadows."""
    h, w, rng = s.h, s.w, s.rng
    building_target = 0.0 if rng.uniform() < 0.15 else 0.012 + 0.15 * s.urban
    target_px = building_target * h * w
    building = np.zeros((h, w), bool)
    shadow = np.zeros((h, w), bool)
    near_road = (road_dist > 4.0) & (road_dist < 24.0) & ~blocked
    near_idx = np.flatnonzero(near_road)
    land_idx = np.flatnonzero(~blocked)
    area = 0.0
    attempts = 0
    max_attempts = 40 + int(6 * target_px / 120.0)
    while area < target_px and attempts < max_attempts and land_idx.size:
        attempts += 1
        k, b_angle = _building_site(s, near_idx, land_idx, road_ang)
        if blocked.flat[k]:  # quick reject: the centre is already taken
            continue
        fp = _footprint(s, k, b_angle, blocked, building)
        if fp is None:
            continue
        roof = _roof(s, fp)
        win_img = s.img[fp.window]
        win_img[fp.inside] = roof[fp.inside]
        building[fp.window] |= fp.inside
        shadow[fp.window] |= fp.swept
        blocked[fp.window] |= fp.margin
        area += float(fp.inside.sum())
    s.mask[building] = BUILDING
    return building, shadow


def _building_site(s: _Scene, near_idx: np.ndarray, land_idx: np.ndarray, road_ang: np.ndarray
                   ) -> tuple[int, float]:
    """A centre pixel (flat index) and orientation: mostly beside a road and aligned with it, else
    anywhere on land and aligned with the fields."""
    rng = s.rng
    if near_idx.size and rng.uniform() < 0.85:
        k = int(near_idx[rng.integers(near_idx.size)])
        b_angle = float(road_ang.flat[k]) + (0.0 if rng.uniform() < 0.8 else math.pi / 2)
    else:
        k = int(land_idx[rng.integers(land_idx.size)])
        b_angle = s.angle + (0.0 if rng.uniform() < 0.5 else math.pi / 2)
    return k, b_angle


def _footprint(s: _Scene, k: int, b_angle: float, blocked: np.ndarray, building: np.ndarray
               ) -> _Footprint | None:
    """A rectangle of 6-20 px sides around pixel ``k`` and the shadow it sweeps; ``None`` when it
    falls outside the scene or touches ``blocked`` or another building."""
    rng, h, w = s.rng, s.h, s.w
    b_angle += rng.normal(0.0, 0.04)
    cy = k // w + rng.uniform(-0.5, 0.5)
    cx = k % w + rng.uniform(-0.5, 0.5)
    la, lb = rng.uniform(6.0, 20.0), rng.uniform(6.0, 20.0)
    shadow_len = rng.uniform(1.5, 5.0)
    off_y, off_x = shadow_len * s.sun_dy, shadow_len * s.sun_dx
    r = int(math.ceil(0.5 * math.hypot(la, lb) + shadow_len)) + 3
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h)
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, w)
    if y1 <= y0 or x1 <= x0:
        return None
    window = (slice(y0, y1), slice(x0, x1))
    ly = s.yy[window] - cy
    lx = s.xx[window] - cx
    ca, sa = math.cos(b_angle), math.sin(b_angle)
    u = lx * ca + ly * sa  # along the first side (length la)
    v = ly * ca - lx * sa  # along the second side (length lb)
    inside = (np.abs(u) <= la / 2) & (np.abs(v) <= lb / 2)
    if not inside.any() or (inside & (blocked[window] | building[window])).any():
        return None
    margin = (np.abs(u) <= la / 2 + 2.0) & (np.abs(v) <= lb / 2 + 2.0)
    swept = np.zeros_like(inside)
    for t in (0.5, 1.0):  # the footprint moved along the shadow direction
        du = t * (off_x * ca + off_y * sa)
        dv = t * (off_y * ca - off_x * sa)
        swept |= (np.abs(u - du) <= la / 2) & (np.abs(v - dv) <= lb / 2)
    return _Footprint(window, u, v, la, lb, ca, sa, inside, margin, swept)


def _roof(s: _Scene, fp: _Footprint) -> np.ndarray:
    """Roof colours over the footprint's window: a gabled roof (lit and dark halves split at the
    ridge) or a flat roof with a darker rim; red, orange, grey, dark or white."""
    rng, u, v, la, lb, ca, sa = s.rng, fp.u, fp.v, fp.la, fp.lb, fp.ca, fp.sa
    across = v if la >= lb else u  # across the ridge, which runs along the longer side
    colour = _ROOF_COLOURS[rng.choice(len(_ROOF_COLOURS), p=_ROOF_P)] * rng.uniform(0.85, 1.12)
    colour = colour * (1.0 + rng.normal(0.0, 0.04, 3))
    if rng.uniform() < 0.65:  # gabled roof: lit and dark halves split at the ridge
        # The half whose outward normal points towards the sun is lit.
        normal_y, normal_x = (ca, -sa) if la >= lb else (sa, ca)
        facing = -(normal_y * s.sun_dy + normal_x * s.sun_dx)
        lit_side = across > 0 if facing > 0 else across < 0
        shade = np.where(lit_side, rng.uniform(1.08, 1.22), rng.uniform(0.72, 0.86))
        shade = np.where(np.abs(across) < 0.5, 1.15, shade)
    else:  # flat roof with a darker rim
        inner = (np.abs(u) <= la / 2 - 1.2) & (np.abs(v) <= lb / 2 - 1.2)
        shade = np.where(inner, 1.0, 0.85)
    return colour * (shade * (1.0 + 0.03 * s.fine[fp.window]))[..., None]


def _paint_shadows(s: _Scene, building: np.ndarray, road: np.ndarray, shadow: np.ndarray) -> None:
    """Darken the building shadows and the shadows of what is still forest; the label stays the
    class under the shadow."""
    h, w, rng = s.h, s.w, s.rng
    forest = s.mask == FOREST  # what is still forest after water, roads and buildings
    tree_len = rng.uniform(2.0, 5.0)
    tree_shadow = np.zeros((h, w), bool)
    for t in np.linspace(1.0, tree_len, 3):
        tree_shadow |= _shift(forest, int(round(t * s.sun_dy)), int(round(t * s.sun_dx)))
    tree_shadow &= ~forest & ~building & ~road
    tree_shadow &= s.medium > -0.9  # ragged canopy edge
    shadow &= ~building
    shadow |= tree_shadow
    shadow_tint = np.array([0.5, 0.53, 0.62]) * rng.uniform(0.85, 1.1)
    s.img[shadow] *= shadow_tint


#: late-season colours that vegetation drifts towards across the survey (texture is kept)
_LATE_CROP = np.array([192.0, 168.0, 104.0])  # ripening, towards light bare soil
_LATE_FOREST = np.array([74.0, 72.0, 42.0])  # olive-brown canopy
_HAZE_COLOUR = np.array([196.0, 200.0, 210.0])


def _acquire(s: _Scene, position: float | np.ndarray) -> None:
    """The acquisition conditions at ``position`` u in [0, 1] across the survey area (a number, or
    one value per column for a scene that crosses the area), as in a survey flown over weeks:

    * season: cropland ripens towards :data:`_LATE_CROP` (up to 60 %, closer to bare soil) and
      forest darkens towards :data:`_LATE_FOREST` (up to 45 %), each pixel keeping its brightness
      pattern;
    * illumination: a lower sun, brightness x (1.1 - 0.4 u);
    * sensor gain and balance: red x (1 + 0.12 u), blue x (1 - 0.18 u);
    * haze: up to 30 % of the haze colour.

    Applied to the painted scene before :func:`_sensor_image` adds its per-scene jitter and noise.
    """
    u = np.clip(np.broadcast_to(np.asarray(position, dtype=np.float64), (s.w,)), 0.0, 1.0)
    u = np.broadcast_to(u[None, :], (s.h, s.w))
    img = s.img
    luminance = img.mean(axis=-1, keepdims=True)
    for cls, late, strength in ((CROPLAND, _LATE_CROP, 0.6), (FOREST, _LATE_FOREST, 0.45)):
        where = s.mask == cls
        a = (strength * u[where])[:, None]
        lum = luminance[where]
        img[where] = (1.0 - a) * img[where] + a * late * (lum / late.mean())
    gain = (1.1 - 0.4 * u)[..., None] * np.stack([1.0 + 0.12 * u, np.ones_like(u), 1.0 - 0.18 * u], axis=-1)
    img *= gain
    haze = (0.3 * u)[..., None]
    img *= 1.0 - haze
    img += haze * _HAZE_COLOUR


def _sensor_image(s: _Scene) -> np.ndarray:
    """What the sensor records: illumination gradient, colour balance, haze, a slight blur and
    pixel noise, as uint8 RGB."""
    h, w, rng = s.h, s.w, s.rng
    haze = rng.uniform(0.0, 0.15)
    illum = (rng.uniform(0.8, 1.15) * (1.0 - haze)) * (1.0 + 0.08 * _value_noise(h, w, 160.0, rng))
    balance = rng.uniform(0.92, 1.08, 3)
    img = s.img
    img *= illum[..., None]
    img *= balance
    img += haze * np.array([196.0, 200.0, 210.0])
    img = _blur_mix(img, 0.55)
    img += rng.uniform(2.0, 5.5) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Dataset writing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoDataset:
    """Where :func:`write_demo_dataset` put things (list files are relative-path lists)."""

    root: Path
    labelled: Path
    unlabelled: Path
    val: Path
    test: Path
    scenes: list[Path]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    # unique: every rank of a relaunched `co2s demo` may write the same dataset at once
    with atomic_path(path, durable=False, unique=True) as tmp:
        tmp.write_bytes(data)


def _atomic_write_png(path: Path, array: np.ndarray, mode: str) -> None:
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    if img.mode != mode:
        raise AssertionError(f"expected a {mode} image, got {img.mode}")
    with atomic_path(path, durable=False, unique=True) as tmp:
        with open(tmp, "wb") as f:
            img.save(f, format="PNG", compress_level=1)


def _tile_rng(seed: int, key: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, key, index]))


def _is_complete(root: Path, meta: dict, lists: dict[str, Path], scenes: list[Path]) -> bool:
    try:
        found = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if found != meta:
        return False
    for lst in lists.values():
        try:
            lines = lst.read_text(encoding="utf-8").splitlines()
        except OSError:
            return False
        for line in lines:
            if not all((root / p).is_file() for p in line.split(" ")):
                return False
    return all(p.is_file() for p in scenes) and all(
        p.with_name(p.stem + "_mask.png").is_file() for p in scenes)


def write_demo_dataset(root: str | os.PathLike, *, seed: int = 0, tile_size: int = 128,
                       n_labelled: int = 16, n_unlabelled: int = 96, n_val: int = 16,
                       n_test: int = 24, n_scenes: int = 2,
                       scene_size: tuple[int, int] = (400, 560), setting: str = "uniform") -> DemoDataset:
    """Write the synthetic demo dataset under ``root`` (see the module docstring).

    Layout: ``images/tile_XXXX.png`` (RGB), ``masks/tile_XXXX.png`` (mode L, class indices, for
    every tile), ``splits/{labelled,val,test}.txt`` (``images/<id>.png masks/<id>.png`` lines),
    ``splits/unlabelled.txt`` (``images/<id>.png`` lines), ``scenes/scene_<k>.png`` and
    ``scenes/scene_<k>_mask.png`` (whole scenes of ``scene_size`` = (height, width)), and
    ``dataset.json`` with the arguments, written last.  If ``root`` already holds a complete
    dataset written with the same arguments, nothing is rewritten.  Every tile is its own
    independently seeded scene, so the splits never share pixels.  ``setting`` (:data:`SETTINGS`)
    says where in the survey area each split's tiles lie; the ground of a tile does not depend on
    it, only the conditions it was acquired under.
    """
    counts = {"labelled": n_labelled, "unlabelled": n_unlabelled, "val": n_val, "test": n_test}
    meta = _dataset_record(seed, tile_size, counts, n_scenes, scene_size, setting)
    root = Path(root)
    splits_dir = root / "splits"
    lists = {name: splits_dir / f"{name}.txt" for name in _SPLITS}
    scene_paths = [root / "scenes" / f"scene_{k}.png" for k in range(int(n_scenes))]
    result = DemoDataset(root=root, labelled=lists["labelled"], unlabelled=lists["unlabelled"],
                         val=lists["val"], test=lists["test"], scenes=scene_paths)
    if _is_complete(root, meta, lists, scene_paths):
        return result

    for sub in ("images", "masks", "splits", "scenes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    marker = root / "dataset.json"
    if marker.exists():  # a dataset with other arguments: no longer complete while rewriting
        marker.unlink()
    _write_tiles(root, int(seed), int(tile_size), counts, lists, setting)
    _write_scenes(scene_paths, int(seed), meta["scene_size"], setting)
    _atomic_write_bytes(marker, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return result


def _dataset_record(seed: int, tile_size: int, counts: dict[str, int], n_scenes: int,
                    scene_size: tuple[int, int], setting: str) -> dict:
    """The checked arguments as ``dataset.json`` records them; ValueError for a bad one."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    for name, n in {**counts, "scenes": n_scenes}.items():
        if int(n) != n or n < 0:
            raise ValueError(f"n_{name} must be a non-negative integer, got {n!r}")
    if int(tile_size) != tile_size or tile_size < 8:
        raise ValueError(f"tile_size must be an integer >= 8, got {tile_size!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    sh, sw = (int(v) for v in scene_size)
    if sh < 1 or sw < 1:
        raise ValueError(f"scene_size must be two positive integers, got {scene_size!r}")
    return {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "seed": int(seed),
        "tile_size": int(tile_size),
        **{f"n_{name}": int(n) for name, n in counts.items()},
        "n_scenes": int(n_scenes),
        "scene_size": [sh, sw],
        "classes": list(DEMO_CLASSES),
        "setting": setting,
    }


def survey_position(setting: str, split: str, seed: int, index: int) -> float | None:
    """Where in the survey area tile ``index`` of ``split`` lies (None: the ``uniform`` setting,
    conditions not applied). Drawn from its own stream, apart from the tile's ground."""
    if setting == "uniform":
        return None
    high = SURVEY_LABELLED_PART if split == "labelled" else 1.0
    key = _SPLITS.index(split)
    return float(np.random.default_rng(np.random.SeedSequence([seed, key, index, 1])).uniform(0.0, high))


def _write_tiles(root: Path, seed: int, t: int, counts: dict[str, int], lists: dict[str, Path],
                 setting: str) -> None:
    """Each split's tiles and masks, numbered across the splits, and its list file."""
    tile_no = 0
    for key, name in enumerate(_SPLITS):
        lines = []
        for i in range(int(counts[name])):
            tid = f"tile_{tile_no:04d}"
            tile_no += 1
            image, mask = generate_scene(t, t, _tile_rng(seed, key, i), survey_position(setting, name, seed, i))
            _atomic_write_png(root / "images" / f"{tid}.png", image, "RGB")
            _atomic_write_png(root / "masks" / f"{tid}.png", mask, "L")
            if name == "unlabelled":
                lines.append(f"images/{tid}.png")
            else:
                lines.append(f"images/{tid}.png masks/{tid}.png")
        _atomic_write_bytes(lists[name], "".join(line + "\n" for line in lines).encode("utf-8"))


def _write_scenes(scene_paths: list[Path], seed: int, scene_size: list[int], setting: str) -> None:
    """The whole scenes and their masks (in the survey setting each crosses the area, left to right)."""
    sh, sw = scene_size
    across = None if setting == "uniform" else np.linspace(0.0, 1.0, sw)
    for k, path in enumerate(scene_paths):
        image, mask = generate_scene(sh, sw, _tile_rng(seed, _SCENE_KEY, k), across)
        _atomic_write_png(path, image, "RGB")
        _atomic_write_png(path.with_name(f"scene_{k}_mask.png"), mask, "L")
