"""``co2s predict``: images and whole scenes, one checkpoint, one call.

Plain PNG/JPEG/BMP images are read whole and give an index PNG (with the palette) and a colour
PNG. Every other raster (GeoTIFF, VRT, ...) is predicted as a scene, streamed in windows into
GeoTIFFs (``co2s.inference.scene``). Both use the same tile grid, blending and options.

Every output path of a call is named by :func:`output_paths` and checked by :func:`plan_outputs`
before anything is predicted: an output is never one of the call's inputs, two inputs never write
the same file, and an existing file is replaced only with ``overwrite``.
"""

from __future__ import annotations

import errno
import glob
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from co2s.atomic import file_system_fault
from co2s.data.io import (
    PLAIN_IMAGE_SUFFIXES,
    SCENE_SUFFIXES,
    atomic_save_image,
    colorize,
    image_files,
    placed_on_the_ground,
    save_index_png,
)
from co2s.errors import Co2sError, DataError
from co2s.inference.polygons import FORMATS
from co2s.inference.scene import PredictOptions, predict_scene
from co2s.inference.segmenter import resolve_device
from co2s.progress import progress_bar


@dataclass
class PredictionResult:
    source: Path
    outputs: list[Path]
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images and rasters) and glob patterns, in a stable order."""
    suffixes = PLAIN_IMAGE_SUFFIXES | SCENE_SUFFIXES
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += image_files(p, suffixes)
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item))
            if not matches:
                raise DataError(f"no file matches {item!r}")
            paths += matches
        else:
            paths.append(p)
    if not paths:
        raise DataError("no input images given")
    return paths


def is_plain_image(path: Path) -> bool:
    """A PNG, JPEG or BMP without georeferencing: predicted whole into PNGs. With a world file or
    ``.aux.xml`` beside it, it is a scene (GeoTIFF out, placed as the input is): written as a
    bare PNG, its prediction would lose where it lies without a word."""
    return path.suffix.lower() in PLAIN_IMAGE_SUFFIXES and not placed_on_the_ground(path)


def output_paths(path: Path, out_dir: Path, options: PredictOptions, palette: bool, plain: bool) -> dict[str, Path]:
    """The files ``co2s predict`` writes for the input ``path`` into ``out_dir``, by kind: the one
    place they are named (the writers take them from here).

    Plain images: ``<stem>.png`` (class indices) and, with a palette, ``<stem>_color.png``. Scenes:
    ``<stem>_classes.tif``, with ``options.confidence`` ``<stem>_confidence.tif``, with
    ``options.preview`` ``<stem>_preview.png`` and with ``options.polygons`` ``<stem>_polygons.gpkg``
    (or ``.geojson``).
    """
    stem = path.stem
    if plain:  # is_plain_image(path), asked once per file by the caller
        return {"classes": out_dir / f"{stem}.png", **({"color": out_dir / f"{stem}_color.png"} if palette else {})}
    names = {"classes": out_dir / f"{stem}_classes.tif"}
    if options.confidence:
        names["confidence"] = out_dir / f"{stem}_confidence.tif"
    if options.preview:
        names["preview"] = out_dir / f"{stem}_preview.png"
    if options.polygons:
        names["polygons"] = out_dir / f"{stem}_polygons.{FORMATS[options.polygons][0]}"
    return names


def _file_key(path: Path) -> str:
    return os.path.normcase(path.resolve())


def _file_id(path: Path) -> tuple[int, int] | None:
    """Device and inode of an existing file (what ``os.path.samefile`` compares), else None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def plan_outputs(paths: list[Path], out_dir: Path, options: PredictOptions, palette: bool, plain: dict[Path, bool],
                 overwrite: bool = False) -> dict[Path, dict[str, Path]]:
    """The output paths of every input (:func:`output_paths`; ``plain``: :func:`is_plain_image` of
    each), or a :class:`DataError` naming the first conflict: an output that is one of the inputs
    (resolved paths, or ``os.path.samefile`` where both exist; never allowed), two inputs writing
    the same file, or an output that exists already (allowed with ``overwrite``). Nothing is
    written."""
    plan = {path: output_paths(path, out_dir, options, palette, plain[path]) for path in paths}
    inputs = {_file_key(p): p for p in paths}
    input_ids = {i: p for p in paths if (i := _file_id(p)) is not None}
    problems: list[str] = []
    if options.polygons:
        problems += [f"{path} is a plain image, without the georeferencing --polygons maps regions in; "
                     "polygons are written for rasters such as GeoTIFF" for path in paths if plain[path]]
    writer: dict[str, Path] = {}
    for path, outputs in plan.items():
        for out in outputs.values():
            key, out_id = _file_key(out), _file_id(out)
            source = inputs.get(key) or (input_ids.get(out_id) if out_id is not None else None)
            if source is not None:
                same = "" if str(source) == str(out) else f" ({source})"
                problems.append(f"{out} is one of the inputs{same}: the output of {path} would be written over "
                                "it; choose another --out folder")
            elif key in writer:
                problems.append(f"{out} would be written twice in one call, as an output of {writer[key]} and "
                                f"of {path}; predict them into separate --out folders")
            elif out.is_dir():
                problems.append(f"{out} (an output of {path}) is a folder; choose another --out folder")
            elif (out_id is not None or out.is_symlink()) and not overwrite:
                problems.append(f"{out} exists (an output of {path} would replace it); give --overwrite to "
                                "replace earlier outputs, or choose another --out folder")
            writer.setdefault(key, path)
    if problems:
        more = f" (and {len(problems) - 1} more conflict(s))" if len(problems) > 1 else ""
        raise DataError(f"nothing predicted: {problems[0]}{more}")
    return plan


def _predict_plain_image(path: Path, segmenter, outputs: dict[str, Path], options: PredictOptions) -> list[Path]:
    image, valid = segmenter.as_model_input(path)
    labels = segmenter.predict(image, options.prediction, tile=options.tile, overlap=options.overlap,
                               tta=options.tta, precision=options.precision, batch_size=options.batch_size,
                               valid=valid, confidence=False).classes
    palette = segmenter.palette
    save_index_png(outputs["classes"], labels, palette)
    if "color" in outputs:
        atomic_save_image(Image.fromarray(colorize(labels, palette)), outputs["color"])
    return list(outputs.values())


def _writable_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Co2sError(f"cannot create output folder {out_dir}: {exc}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        why = "read-only file system" if file_system_fault(out_dir) == errno.EROFS else "permission denied"
        raise Co2sError(f"cannot write to output folder {out_dir}: {why}")


def predict_files(
    source,
    inputs: list[str],
    out_dir: str | os.PathLike,
    device: str = "auto",
    progress: bool = True,
    prediction: str | None = None,
    options: PredictOptions | None = None,
    overwrite: bool = False,
) -> list[PredictionResult]:
    """Predict every input with a Segmenter (or the checkpoint / exported model folder ``source``);
    one failing input is reported and the others still run.

    ``prediction``: a student's name or a fusion mode (default: the Segmenter's). Before anything is
    predicted, every output path is checked (:func:`plan_outputs`): a conflict stops the call with a
    :class:`DataError` and nothing written; ``overwrite`` lets earlier outputs be replaced (never an
    input).
    """
    from co2s.inference.segmenter import Segmenter

    options = options or PredictOptions()
    segmenter = source if isinstance(source, Segmenter) else Segmenter.load(source, prediction=prediction)
    segmenter = segmenter.to(resolve_device(device))
    options = replace(options, prediction=segmenter.resolve(prediction or options.prediction))
    segmenter.check_options([options.prediction], options.tile, options.overlap, options.precision, options.tta,
                            options.batch_size)  # bad options stop before any file
    paths = list({_file_key(p): p for p in expand_inputs(inputs)}.values())  # each file once
    out_dir = Path(out_dir)
    plain = {path: is_plain_image(path) for path in paths}  # one GDAL open per file (world files)
    plan = plan_outputs(paths, out_dir, options, bool(segmenter.palette), plain, overwrite)
    _writable_folder(out_dir)
    results = []
    for path in progress_bar(paths, desc="predicting", enabled=progress and len(paths) > 1, leave=True):
        try:
            if plain[path]:
                outputs, notes = _predict_plain_image(path, segmenter, plan[path], options), []
            else:
                outputs, notes = predict_scene(path, segmenter, plan[path], options, progress)
            results.append(PredictionResult(path, outputs, warnings=notes))
        except Co2sError as exc:
            results.append(PredictionResult(path, [], str(exc)))
    return results
