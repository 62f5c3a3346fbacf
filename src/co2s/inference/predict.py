"""``co2s predict``: images and whole scenes, one checkpoint, one call.

Plain PNG/JPEG/BMP images are read whole and give an index PNG (with the palette) and a colour
PNG. Every other raster (GeoTIFF, VRT, ...) is predicted as a scene, streamed in windows into
GeoTIFFs (``co2s.inference.scene``). Both use the same tile grid, blending and options.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from co2s.data.io import (
    PLAIN_IMAGE_SUFFIXES,
    SCENE_SUFFIXES,
    atomic_save_image,
    colorize,
    read_model_input,
    save_index_png,
)
from co2s.errors import Co2sError, DataError
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
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in suffixes)
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
    return path.suffix.lower() in PLAIN_IMAGE_SUFFIXES


def _predict_plain_image(path: Path, segmenter, out_dir: Path, options: PredictOptions) -> list[Path]:
    image, valid = read_model_input(path, segmenter.bands, segmenter.scale)
    if image.shape[0] != segmenter.in_channels:
        raise DataError(f"{path}: has {image.shape[0]} band(s) but the model was trained on {segmenter.in_channels} "
                        "(see data.bands)")
    labels = segmenter.predict(image, options.prediction, tile=options.tile, overlap=options.overlap,
                               tta=options.tta, precision=options.precision, batch_size=options.batch_size,
                               valid=valid, confidence=False).classes
    palette = segmenter.palette
    index_path = out_dir / f"{path.stem}.png"
    save_index_png(index_path, labels, palette)
    outputs = [index_path]
    if palette:
        color_path = out_dir / f"{path.stem}_color.png"
        atomic_save_image(Image.fromarray(colorize(labels, palette)), color_path)
        outputs.append(color_path)
    return outputs


def _writable_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Co2sError(f"cannot create output folder {out_dir}: {exc}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise Co2sError(f"cannot write to output folder {out_dir}: permission denied")


def predict_files(
    source,
    inputs: list[str],
    out_dir: str | os.PathLike,
    device: str = "auto",
    progress: bool = True,
    prediction: str | None = None,
    options: PredictOptions | None = None,
) -> list[PredictionResult]:
    """Predict every input with a Segmenter (or the checkpoint / exported model folder ``source``);
    one failing input is reported and the others still run.

    ``prediction``: a student's name or a fusion mode (default: the Segmenter's).
    """
    from co2s.inference.segmenter import Segmenter

    options = options or PredictOptions()
    segmenter = source if isinstance(source, Segmenter) else Segmenter.load(source, prediction=prediction)
    segmenter = segmenter.to(resolve_device(device))
    options = replace(options, prediction=prediction or options.prediction or segmenter.prediction)
    segmenter.check_options([options.prediction], options.tile, options.overlap, options.precision, options.tta,
                            options.batch_size)  # bad options stop before any file
    paths = expand_inputs(inputs)
    out_dir = Path(out_dir)
    _writable_folder(out_dir)
    results, first_of_name = [], {}
    for path in progress_bar(paths, desc="predicting", enabled=progress and len(paths) > 1, leave=True):
        try:
            name = (path.stem, is_plain_image(path))
            if name in first_of_name:
                raise DataError(f"{path}: its outputs would overwrite those of {first_of_name[name]} "
                                "(same file name); predict it into another --out folder")
            first_of_name[name] = path
            if is_plain_image(path):
                outputs, notes = _predict_plain_image(path, segmenter, out_dir, options), []
            else:
                outputs, notes = predict_scene(path, segmenter, out_dir, options, progress)
            results.append(PredictionResult(path, outputs, warnings=notes))
        except Co2sError as exc:
            results.append(PredictionResult(path, [], str(exc)))
    return results
