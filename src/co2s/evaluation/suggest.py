"""``co2s suggest``: what to label next.

A trained model predicts the images it was not given labels for, and the places where it is least
sure (two students: where they disagree, and the entropy of the fused prediction; one model: its
entropy; :mod:`co2s.inference.uncertainty`) are ranked first: labels there are the ones the model
lacks. The prediction is the one ``co2s predict`` makes (:meth:`Segmenter.predict_box`, the same
tiles and blending), so the scores describe the map the user gets.

- **Tiles** (``data.splits``): every tile of the pool (default ``data.splits.unlabelled``), minus
  those already labelled or held out (``labelled``, ``val``, ``test`` and any ``exclude`` list),
  scored over its valid pixels. Writes ``suggestions.txt`` (the top ``budget`` tiles as list-file
  lines relative to ``data.root``: label them and add the lines, with their masks, to the labelled
  list) and ``scores.csv`` (every tile ranked, each term).
- **Scenes** (``data.scenes``): windows of ``window`` pixels placed every quarter window over each
  raster, scored over their valid pixels outside the labelled polygons; a window holding a pixel of
  a validation/test region or of an ``exclude`` vector file, or with less than
  ``data.scenes.min_valid`` of its pixels valid and unlabelled, is not suggested; the best windows
  are taken greedily, each at least ``spacing`` pixels
  from those taken before (so suggestions spread over the scene). Writes ``suggestions.gpkg`` (the
  windows as polygons in the raster's CRS, with rank, score and terms: open it in QGIS beside the
  polygons you draw) and ``scores.csv``.

Both write ``contact_sheet.png`` (the top suggestions: image, prediction, per-pixel score) and
``suggest.json`` (the settings and the ranked suggestions). Outputs are checked before anything is
predicted: never an input, an existing file only with ``overwrite``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from co2s.atomic import write_text
from co2s.data.raster import Window, bounded_gdal_cache
from co2s.data.sources import read_split, split_path
from co2s.errors import Co2sError, DataError
from co2s.evaluation.pictures import display_rgb, heat_colours, write_comparison
from co2s.evaluation.run import _model_files, model_data
from co2s.inference.streaming import VALID
from co2s.inference.uncertainty import (PREDICTED, TERMS, RegionScores, check_score, class_weights,
                                        pixel_score, pixel_terms, region_score)
from co2s.progress import progress_bar
from co2s.version import __version__

#: tiles or windows shown in contact_sheet.png (at most)
SHEET_ROWS = 12
#: longest side of a panel of the contact sheet (pixels)
SHEET_SIDE = 192
#: candidate windows of scenes step by this fraction of the window
WINDOW_STEPS = 4
#: scores written beside the terms in scores.csv (each term is its own score), to compare rankings
VARIANTS = ("default", "balanced")
OUTPUTS = {"tiles": ("suggestions.txt", "scores.csv", "contact_sheet.png", "suggest.json"),
           "scenes": ("suggestions.gpkg", "scores.csv", "contact_sheet.png", "suggest.json")}


@dataclass
class Suggestion:
    """One ranked tile or scene window."""

    rank: int
    name: str  # the tile's list-file line, or the raster's path
    image: Path
    score: float
    terms: dict[str, float]
    pixels: int  # valid (unlabelled) pixels it was scored over
    variants: dict[str, float] = field(default_factory=dict)  # the default and balanced scores too
    window: Window | None = None  # scenes: the window, raster pixels
    crs: object = None  # scenes: the raster's CRS (rasterio), None when it has none
    extra: dict = field(default_factory=dict)


def suggest(segmenter, data, out: str | os.PathLike, *, budget: int = 10, score: str = "default",
            pool: list[str] | None = None, exclude: list[str] | None = None, window: int | None = None,
            spacing: int | None = None, sheet: int = SHEET_ROWS, overwrite: bool = False,
            progress: bool = True, batch_size: int | None = None) -> dict:
    """Rank the tiles or scene windows of ``data`` by ``score`` and write the top ``budget`` to
    ``out`` (see the module's text); returns the record written to ``suggest.json``."""
    check_score(score, len(segmenter.models))
    if not isinstance(budget, int) or budget < 1:
        raise Co2sError(f"--budget must be a positive number of suggestions, got {budget}")
    data = model_data(segmenter, data)
    kind = "scenes" if data.scenes is not None else "tiles"
    if kind == "scenes" and pool:
        raise Co2sError("--pool is for tile datasets; scenes are ranked over data.scenes.rasters outside their "
                        "labels and validation/test regions (--exclude adds vector files of areas to avoid)")
    if kind == "tiles" and (window is not None or spacing is not None):
        raise Co2sError("--window and --spacing are for scenes (data.scenes); tiles are ranked whole")
    out = Path(out)
    paths = {name: out / name for name in OUTPUTS[kind]}
    options = {"budget": budget, "score": score, "prediction": segmenter.prediction,
               "models": list(segmenter.models), "batch_size": batch_size, "progress": progress}
    model_files = _model_files(segmenter)

    def check(inputs: list[Path]) -> None:  # before anything is predicted
        _check_outputs(paths, inputs + model_files, overwrite)

    if kind == "tiles":
        ranked, record = _rank_tiles(segmenter, data, pool, exclude, options, check)
    else:
        window = window or segmenter.tile - segmenter.tile % WINDOW_STEPS
        spacing = window if spacing is None else spacing
        if window < 8 or window % WINDOW_STEPS:
            raise Co2sError(f"--window must be a multiple of {WINDOW_STEPS} pixels, at least 8, got {window}")
        if spacing < 0:
            raise Co2sError(f"--spacing must be 0 or more pixels, got {spacing}")
        ranked, record = _rank_windows(segmenter, data, window, spacing, exclude, options, check)
    top = ranked[:budget]
    if not top:
        raise DataError(f"nothing to suggest: {record['why_none']}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Co2sError(f"cannot create the output folder {out}: {exc}") from None
    written = _write_outputs(kind, paths, top, ranked, segmenter, data, score, sheet, options)
    record.update({"co2s_version": __version__, "kind": kind, "checkpoint": segmenter.info.get("source"),
                   "checkpoint_step": segmenter.info.get("step"), "score": score, "budget": budget,
                   "prediction": segmenter.prediction, "suggested": len(top),
                   "outputs": {k: str(v) for k, v in written.items()},
                   "suggestions": [_as_record(s) for s in top]})
    write_text(paths["suggest.json"], json.dumps(record, indent=2))
    return record


# ---------------------------------------------------------------------------------------------
# outputs: checked before the work, written after it
# ---------------------------------------------------------------------------------------------


def _check_outputs(paths: dict[str, Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse an output that is an input or a folder, or (without ``overwrite``) one that exists."""
    keys = {os.path.normcase(p.resolve()) for p in inputs}
    for path in paths.values():
        if os.path.normcase(path.resolve()) in keys:
            raise Co2sError(f"nothing suggested: the output {path} is one of the inputs; give another --out")
        if path.is_dir():
            raise Co2sError(f"nothing suggested: the output {path} is a folder; give another --out")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise Co2sError(f"nothing suggested: {path} exists (an earlier suggestion?); give --overwrite to "
                            "replace it, or another --out")
    parent = next(iter(paths.values())).parent
    if parent.exists() and not parent.is_dir():
        raise Co2sError(f"nothing suggested: --out {parent} is a file, not a folder")


def _as_record(s: Suggestion) -> dict:
    record = {"rank": s.rank, "name": s.name, "image": str(s.image), "score": s.score, **s.terms,
              **s.variants, "pixels": s.pixels}
    if s.window is not None:
        record["window"] = {"x": s.window.x, "y": s.window.y, "width": s.window.width, "height": s.window.height}
    return {**record, **s.extra}


def _write_outputs(kind, paths, top, ranked, segmenter, data, score, sheet, options) -> dict[str, Path]:
    written = {}
    if kind == "tiles":
        lines = "".join(f"{s.name}\n" for s in top)
        written["list"] = write_text(paths["suggestions.txt"], lines)
    else:
        written["windows"] = _write_windows(paths["suggestions.gpkg"], top)
    written["scores"] = write_text(paths["scores.csv"], _csv(ranked, kind))
    if sheet and sheet > 0:
        written["contact_sheet"] = _contact_sheet(paths["contact_sheet.png"], top[:sheet], segmenter, data, score,
                                                  options)
    written["record"] = paths["suggest.json"]
    return written


def _csv(ranked: list[Suggestion], kind: str) -> str:
    terms = [t for t in TERMS if any(t in s.terms for s in ranked)]
    head = ["rank", "name" if kind == "tiles" else "raster", "score", *terms, *VARIANTS, "pixels"]
    if kind == "scenes":
        head += ["x", "y", "width", "height"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for s in ranked:
        row = [s.rank, s.name, f"{s.score:.6f}", *(f"{s.terms[t]:.6f}" for t in terms),
               *(f"{s.variants[v]:.6f}" for v in VARIANTS), s.pixels]
        if kind == "scenes":
            row += [s.window.x, s.window.y, s.window.width, s.window.height]
        writer.writerow(row)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------


def _rank_tiles(segmenter, data, pool, exclude, options, check) -> tuple[list[Suggestion], dict]:
    specs = pool or ([data.splits.unlabelled] if data.splits.unlabelled else [])
    if not specs:
        raise DataError("data.splits.unlabelled is not set: give the tiles to rank with --pool (list files or "
                        "folders)")
    inputs: list[Path] = []
    samples, seen = [], set()
    for spec in specs:
        for s in read_split(spec, data, labelled=False, name="unlabelled" if not pool else "pool"):
            key = s.image.resolve()
            if key not in seen:
                seen.add(key)
                samples.append(s)
        inputs.append(split_path(spec, data))
    excluded: set[Path] = set()
    sources = [(name, getattr(data.splits, name)) for name in ("labelled", "val", "test")
               if getattr(data.splits, name)]
    sources += [("exclude", spec) for spec in exclude or []]
    for name, spec in sources:
        excluded |= {s.image.resolve() for s in read_split(spec, data, labelled=False, name=name)}
        inputs.append(split_path(spec, data))
    candidates = [s for s in samples if s.image.resolve() not in excluded]
    check(inputs + [s.image for s in samples])
    record = {"pool": [str(s) for s in specs], "pool_tiles": len(samples),
              "excluded_tiles": len(samples) - len(candidates),
              "excluded_by": [f"{name}: {spec}" for name, spec in sources]}
    terms = pixel_terms(segmenter.prediction, list(segmenter.models))
    regions: list[RegionScores] = []
    for s in progress_bar(candidates, desc="scoring tiles", enabled=options["progress"]):
        image, valid = segmenter.as_model_input(s.image)
        _, height, width = image.shape
        region = RegionScores(segmenter.num_classes)

        def read(w: Window, image=image, valid=valid):
            rows, cols = w.slices
            return image[:, rows, cols], None if valid is None else valid[rows, cols]

        for piece, maps in segmenter.predict_box(read, height, width, Window(0, 0, width, height),
                                                 pixel_maps=terms, models=list(segmenter.models),
                                                 batch_size=options["batch_size"]):
            region.add({k: v for k, v in maps.items() if isinstance(v, np.ndarray)},
                       None if valid is None else valid[piece.slices])
        regions.append(region)
    weights = class_weights(sum(r.class_pixels for r in regions)) if regions else None
    ranked = []
    for s, region in zip(candidates, regions):
        value = region.score(options["score"], weights)
        if value is not None:
            ranked.append(Suggestion(0, s.entry, s.image, value, region.means(), region.pixels,
                                     {v: region.score(v, weights) for v in VARIANTS}))
    ranked.sort(key=lambda s: -s.score)  # stable: ties keep the pool's order
    for i, s in enumerate(ranked, start=1):
        s.rank = i
    record.update({"scored_tiles": len(ranked), "tiles_without_valid_pixels": len(candidates) - len(ranked),
                   "why_none": f"no tile left to rank ({len(samples)} in the pool, {record['excluded_tiles']} "
                               "already labelled or held out, the rest without valid pixels)"})
    if weights is not None:
        record["class_weights"] = dict(zip(segmenter.classes, map(float, weights)))
    options["weights"] = weights
    return ranked, record


# ---------------------------------------------------------------------------------------------
# scenes
# ---------------------------------------------------------------------------------------------


@dataclass
class _Cells:
    """Sums per cell (``cell`` x ``cell`` scene pixels) of one raster: the pixels counted (valid,
    not labelled, not excluded), those excluded (validation/test regions, ``--exclude`` areas),
    each term, and the default score and pixel count per predicted class."""

    cell: int
    ny: int
    nx: int
    num_classes: int
    terms: tuple[str, ...]  # the terms of the model: disagreement only for two students

    def __post_init__(self) -> None:
        shape = (self.ny, self.nx)
        self.pixels = np.zeros(shape, np.int64)
        self.excluded = np.zeros(shape, np.int64)
        self.sums = {t: np.zeros(shape) for t in self.terms}
        self.class_pixels = np.zeros((*shape, self.num_classes), np.int64)
        self.class_default = np.zeros((*shape, self.num_classes))

    def add(self, piece: Window, maps: dict[str, np.ndarray], valid: np.ndarray, labelled: np.ndarray | None,
            excluded: np.ndarray | None) -> None:
        """Add a piece's pixels to the cells it touches (only those: memory and time follow the
        piece). ``labelled`` pixels are not counted; ``excluded`` ones (validation/test regions,
        ``--exclude`` areas) also keep every window holding one from being suggested."""
        rows = (piece.y + np.arange(piece.height)) // self.cell
        cols = (piece.x + np.arange(piece.width)) // self.cell
        r0, c0 = int(rows[0]), int(cols[0])
        ny, nx = int(rows[-1]) - r0 + 1, int(cols[-1]) - c0 + 1
        index = (rows[:, None] - r0) * nx + (cols[None, :] - c0)
        cells = (slice(r0, r0 + ny), slice(c0, c0 + nx))

        def count(mask, weights=None, k: int = 1):
            where = index if k == 1 else index * k + classes
            return np.bincount(where[mask], weights=None if weights is None else weights[mask],
                               minlength=ny * nx * k).reshape((ny, nx) if k == 1 else (ny, nx, k))

        classes = maps[PREDICTED].astype(np.int64)
        keep = valid
        for mask in (labelled, excluded):
            if mask is not None:
                keep = keep & ~mask
        if excluded is not None:
            self.excluded[cells] += count(excluded)
        self.pixels[cells] += count(keep)
        for t in self.terms:
            self.sums[t][cells] += count(keep, maps[t])
        self.class_pixels[cells] += count(keep, k=self.num_classes)
        self.class_default[cells] += count(keep, pixel_score(maps, "default"), k=self.num_classes)


def _window_sums(a: np.ndarray, span_y: int, span_x: int) -> np.ndarray:
    """Sums over every ``span_y`` x ``span_x`` block of cells (the first two axes), by top-left cell."""
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1, *a.shape[2:]), a.dtype)
    c[1:, 1:] = a.cumsum(0).cumsum(1)
    return c[span_y:, span_x:] - c[:-span_y, span_x:] - c[span_y:, :-span_x] + c[:-span_y, :-span_x]


@dataclass
class _Windows:
    """The candidate windows of one raster (a window every cell, ``WINDOW_STEPS`` cells wide; a
    raster smaller than a window is one window): their sums by top-left cell and their scores
    (NaN: not a candidate, as it holds an excluded pixel or too few valid unlabelled ones)."""

    scene: object
    cell: int
    window: int
    sums: dict
    terms: dict
    scores: np.ndarray

    def box(self, cy: int, cx: int) -> Window:
        x, y = cx * self.cell, cy * self.cell
        return Window(x, y, min(self.window, self.scene.width - x), min(self.window, self.scene.height - y))

    def region(self, cy: int, cx: int, num_classes: int) -> RegionScores:
        return RegionScores(num_classes, int(self.sums["pixels"][cy, cx]),
                            {t: float(v[cy, cx]) for t, v in self.terms.items()},
                            self.sums["class_pixels"][cy, cx].copy(), self.sums["class_default"][cy, cx].copy())


def _scene_windows(scene, cells: _Cells, window: int, min_valid: float, score: str, weights) -> _Windows:
    span_y, span_x = min(WINDOW_STEPS, cells.ny), min(WINDOW_STEPS, cells.nx)
    sums = {name: _window_sums(getattr(cells, name), span_y, span_x)
            for name in ("pixels", "excluded", "class_pixels", "class_default")}
    terms = {t: _window_sums(v, span_y, span_x) for t, v in cells.sums.items()}
    ys = np.arange(sums["pixels"].shape[0]) * cells.cell
    xs = np.arange(sums["pixels"].shape[1]) * cells.cell
    area = np.minimum(window, scene.height - ys)[:, None] * np.minimum(window, scene.width - xs)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = region_score(score, sums["pixels"], terms, sums["class_default"], weights).astype(np.float64)
    usable = (sums["pixels"] > 0) & (sums["excluded"] == 0) & (sums["pixels"] >= min_valid * area)
    return _Windows(scene, cells.cell, window, sums, terms, np.where(usable, scores, np.nan))


def _label_files(data) -> list[Path]:
    """The vector files of the scenes' labels and validation/test regions (never written over)."""
    from co2s.data.sources import resolve

    cfg = data.scenes
    sources = [cfg.labels, cfg.val, cfg.test]
    return [resolve(data.root, s.vector) for s in sources if s is not None and s.vector]


def _gap(a: Window, b: Window) -> int:
    """Pixels between two windows (the larger of the horizontal and vertical gaps; < 0: overlap)."""
    return max(a.x - b.x1, b.x - a.x1, a.y - b.y1, b.y - a.y1)


def _exclusions(paths: list[str], data, scenes) -> tuple[list[Path], list[list]]:
    """``--exclude`` for scenes: vector files of areas not to suggest (polygons being labelled now,
    an earlier suggestions.gpkg), placed on each scene as labels are (one rasterisation rule)."""
    from co2s.data.scene_labels import PolygonLayer, VectorSceneLabels, parse_crs, polygons_in_pixels
    from co2s.data.sources import resolve

    files = [resolve(Path.cwd(), p) for p in paths or []]
    per_scene: list[list] = [[] for _ in scenes]
    ignore = data.ignore_index
    for path in files:
        layer = PolygonLayer(path, None, None, "--exclude", force_2d=True)
        crs = layer.crs or parse_crs(None, f"vector file {layer.described}", "vector", path)
        for i, scene in enumerate(scenes):
            pixels = polygons_in_pixels(layer.geoms, layer.fids, crs, path, scene.crs, scene.transform,
                                        str(scene.path))
            per_scene[i].append(VectorSceneLabels(pixels, np.zeros(len(pixels), np.int64), ignore, ignore))
    return files, per_scene


def _rank_windows(segmenter, data, window: int, spacing: int, exclude, options, check
                  ) -> tuple[list[Suggestion], dict]:
    from co2s.data.scenes import load_scenes

    scene_set = load_scenes(data, segmenter.in_channels, progress=options["progress"])
    scenes = scene_set.scenes
    inputs = [s.path for s in scenes]
    excluded_files, exclusions = _exclusions(exclude, data, scenes)
    check(inputs + _label_files(data) + excluded_files)
    cell = window // WINDOW_STEPS
    terms = pixel_terms(segmenter.prediction, list(segmenter.models))
    present = tuple(t for t in TERMS if t != "disagreement" or len(segmenter.models) == 2)
    ignore = data.ignore_index
    all_cells = []
    with bounded_gdal_cache():
        for scene, avoid in zip(progress_bar(scenes, desc="scoring scenes", enabled=options["progress"]),
                                exclusions):
            cells = _Cells(cell, -(-scene.height // cell), -(-scene.width // cell), segmenter.num_classes,
                           present)

            def read(w: Window, scene=scene):
                return scene.reader.read(w)

            try:
                for piece, maps in segmenter.predict_box(read, scene.height, scene.width,
                                                         Window(0, 0, scene.width, scene.height),
                                                         pixel_maps=terms, models=list(segmenter.models),
                                                         batch_size=options["batch_size"], validity=True):
                    valid = maps.pop(VALID)  # as the prediction read it: the masks are read once
                    maps = {k: v for k, v in maps.items() if isinstance(v, np.ndarray)}
                    if PREDICTED not in maps:  # a piece without a predicted pixel (no valid one)
                        continue
                    labelled = None
                    if scene.labels.touches(piece):
                        labelled = scene.labels.read(piece, piece.shape) != ignore
                    held = scene.held_out_mask(piece, piece.shape)
                    for source in avoid:
                        if source.touches(piece):
                            area = source.read(piece, piece.shape) != ignore
                            held = area if held is None else held | area
                    cells.add(piece, maps, valid, labelled, held)
            finally:
                scene.reader.close()
            all_cells.append(cells)
    weights = class_weights(sum(c.class_pixels.sum((0, 1)) for c in all_cells))
    windows = [_scene_windows(scene, cells, window, data.scenes.min_valid, options["score"], weights)
               for scene, cells in zip(scenes, all_cells)]
    # every candidate, best first (ties: raster, row, column), then taken greedily with the spacing
    flat = [(i, cy, cx) for i, w in enumerate(windows) for cy, cx in zip(*np.nonzero(np.isfinite(w.scores)))]
    values = np.array([windows[i].scores[cy, cx] for i, cy, cx in flat])
    taken: list[tuple[int, Window, int, int]] = []
    for k in np.argsort(-values, kind="stable") if len(flat) else []:
        if len(taken) == options["budget"]:
            break
        i, cy, cx = flat[k]
        box = windows[i].box(int(cy), int(cx))
        if all(j != i or _gap(other, box) >= spacing for j, other, _, _ in taken):
            taken.append((i, box, int(cy), int(cx)))
    ranked = []
    for rank, (i, box, cy, cx) in enumerate(taken, start=1):
        scene, region = scenes[i], windows[i].region(cy, cx, segmenter.num_classes)
        crs = scene.crs if scene.reader.georeferenced else None
        ranked.append(Suggestion(rank, str(scene.path), scene.path, float(windows[i].scores[cy, cx]), region.means(),
                                 region.pixels, {v: region.score(v, weights) for v in VARIANTS}, box, crs,
                                 {"crs": crs.to_string() if crs is not None else None,
                                  "bounds": list(_bounds(scene, box))}))
    record = {"rasters": [str(p) for p in inputs], "window": window, "spacing": spacing,
              "excluded_by": [str(p) for p in excluded_files],
              "candidate_windows": len(flat),
              "why_none": (f"no window of {window} px with at least {data.scenes.min_valid:.0%} of its pixels "
                           "valid and unlabelled, and none in a validation/test region or --exclude area "
                           "(a smaller --window?)")}
    record["class_weights"] = dict(zip(segmenter.classes, map(float, weights)))
    options["weights"] = weights
    return ranked, record


def _bounds(scene, w: Window) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a window in the raster's coordinates."""
    t = scene.transform
    xs, ys = [], []
    for col, row in ((w.x, w.y), (w.x1, w.y), (w.x, w.y1), (w.x1, w.y1)):
        xs.append(t.c + t.a * col + t.b * row)
        ys.append(t.f + t.d * col + t.e * row)
    return min(xs), min(ys), max(xs), max(ys)


def _write_windows(path: Path, top: list[Suggestion]) -> Path:
    """The windows as polygons (their corners in the raster's coordinates), one layer per CRS
    (``suggestions``, or ``suggestions_1``, ``suggestions_2``, ... when the rasters' CRSs differ)."""
    import shapely

    from co2s.atomic import atomic_path
    from co2s.inference.polygons import write_features

    by_crs: dict = {}
    for s in top:
        by_crs.setdefault(s.extra["crs"], []).append(s)
    try:
        with atomic_path(path, durable=False) as tmp:
            for n, items in enumerate(by_crs.values()):
                geoms = np.array([shapely.box(*s.extra["bounds"]) for s in items], object)
                columns = {"rank": np.array([s.rank for s in items], np.int32),
                           "raster": np.array([s.name for s in items], object),
                           "score": np.array([s.score for s in items]),
                           **{t: np.array([s.terms[t] for s in items]) for t in TERMS if t in items[0].terms},
                           "pixels": np.array([s.pixels for s in items], np.int64),
                           **{k: np.array([getattr(s.window, k) for s in items], np.int32)
                              for k in ("x", "y", "width", "height")}}
                layer = "suggestions" if len(by_crs) == 1 else f"suggestions_{n + 1}"
                write_features(tmp, geoms, columns, items[0].crs, "GPKG", layer, append=n > 0)
    except OSError as exc:
        if exc.errno is None:  # GDAL's own words
            raise Co2sError(f"cannot write {path}: {exc}") from exc
        raise
    return path


# ---------------------------------------------------------------------------------------------
# contact sheet
# ---------------------------------------------------------------------------------------------


def _fit(panel: np.ndarray, side: int = SHEET_SIDE) -> np.ndarray:
    """A panel (``[H, W]`` classes or ``[H, W, 3]`` colours) resized (nearest) to ``side`` on its
    longest side."""
    from PIL import Image

    h, w = panel.shape[:2]
    f = side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(panel.astype(np.uint8)).resize(size, Image.NEAREST))


def _contact_sheet(path: Path, shown: list[Suggestion], segmenter, data, score: str, options) -> Path:
    """Image, prediction and per-pixel score of each shown suggestion (predicted again: a handful)."""
    terms = pixel_terms(segmenter.prediction, list(segmenter.models))
    weights = options.get("weights")
    top = 2.0 if score in ("default", "balanced") and len(segmenter.models) == 2 else 1.0
    rows, captions = [], []
    for s in shown:
        if s.window is None:
            image, valid = segmenter.as_model_input(s.image)
            image = image.numpy()
            height, width, box = image.shape[1], image.shape[2], Window(0, 0, image.shape[2], image.shape[1])

            def read(w: Window, image=image, valid=valid):
                return image[:, w.slices[0], w.slices[1]], None if valid is None else valid[w.slices]
        else:
            from co2s.data.raster import RasterReader

            reader = RasterReader(s.image, data.bands, data.scale)
            height, width, box = reader.height, reader.width, s.window

            def read(w: Window, reader=reader):
                return reader.read(w)

            image, valid = reader.read(box)
        classes = np.zeros(box.shape, np.uint8)
        values = np.zeros(box.shape, np.float32)
        for piece, maps in segmenter.predict_box(read, height, width, box, pixel_maps=terms,
                                                 models=list(segmenter.models), batch_size=options["batch_size"]):
            local = piece.shifted(-box.x, -box.y).slices
            maps = {k: v for k, v in maps.items() if isinstance(v, np.ndarray)}
            classes[local] = maps[PREDICTED].astype(np.uint8)
            values[local] = pixel_score(maps, score, weights)
        if s.window is not None:
            reader.close()
        shown_valid = None if valid is None else np.asarray(valid)
        classes[~shown_valid if shown_valid is not None else np.zeros(box.shape, bool)] = 255
        rows.append([_fit(display_rgb(image, shown_valid)), _fit(classes),
                     _fit(heat_colours(values, top, shown_valid))])
        where = Path(s.name).name if s.window is None else (
            f"{Path(s.name).name} x {s.window.x} y {s.window.y}")
        captions.append(f"#{s.rank}  {where}  score {s.score:.3f}")
    return write_comparison(path, rows, ["image", "prediction", f"score per pixel ({score})"], segmenter.classes,
                            data.palette or _grey_palette(segmenter.num_classes), scale=1, captions=captions)


def _grey_palette(k: int) -> list[list[int]]:
    return [[int(255 * i / max(1, k - 1))] * 3 for i in range(k)]
