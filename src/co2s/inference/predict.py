"""``co2s predict`` for ordinary images: sliding-window prediction to index PNGs and colour previews.

Each input is read whole; whole-scene streaming of large GeoTIFFs builds on the same
``sliding_window_logits``.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from co2s.data.io import IMAGE_SUFFIXES, atomic_save_image, colorize, read_image, save_index_png, scale_image
from co2s.engine.checkpoint import load_models_from_checkpoint
from co2s.errors import Co2sError, DataError
from co2s.evaluation.evaluator import image_logits
from co2s.evaluation.run import default_prediction, resolve_device
from co2s.inference.fusion import FUSIONS, predictions
from co2s.progress import progress_bar


@dataclass
class PredictionResult:
    source: Path
    outputs: list[Path]
    error: str | None = None


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns, in a stable order."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
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


@torch.no_grad()
def predict_image(models: dict, image: torch.Tensor, config, device, prediction: str) -> tuple[np.ndarray, np.ndarray]:
    """Class indices and confidence (max probability) of one ``[C, H, W]`` scaled image."""
    logits = image_logits(models, image[None].to(device), config)
    fusions = [prediction] if prediction in FUSIONS else []
    score = predictions(logits, fusions)[prediction]
    prob = score if prediction in FUSIONS else score.softmax(1)
    conf, labels = prob[0].max(0)
    return labels.cpu().numpy().astype(np.uint8), conf.cpu().numpy()


def predict_files(
    checkpoint: str | os.PathLike,
    inputs: list[str],
    out_dir: str | os.PathLike,
    device: str = "auto",
    progress: bool = True,
    prediction: str | None = None,
) -> list[PredictionResult]:
    """Predict every input; one failing input is reported and the others still run.

    ``prediction``: a student's name or a fusion mode (default: the checkpoint's configured one).
    """
    models, config, _ = load_models_from_checkpoint(checkpoint)
    prediction = prediction or default_prediction(config, models)
    choices = [*models, *(FUSIONS if len(models) == 2 else ())]
    if prediction not in choices:
        raise Co2sError(f"unknown --student {prediction!r}; choose from {choices}")
    dev = resolve_device(device)
    for model in models.values():
        model.to(dev)
    in_channels = next(iter(models.values())).in_channels
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Co2sError(f"cannot create output folder {out_dir}: {exc}") from None
    palette = config.data.palette
    results = []
    for path in progress_bar(expand_inputs(inputs), desc="predicting", enabled=progress, leave=True):
        try:
            image = torch.from_numpy(scale_image(read_image(path, config.data.bands), config.data.scale))
            if image.shape[0] != in_channels:
                raise DataError(
                    f"{path}: has {image.shape[0]} band(s) but the model was trained on "
                    f"{in_channels} (see data.bands)"
                )
            labels, _ = predict_image(models, image, config, dev, prediction)
            index_path = out_dir / f"{path.stem}.png"
            save_index_png(index_path, labels, palette)
            outputs = [index_path]
            if palette:
                color_path = out_dir / f"{path.stem}_color.png"
                atomic_save_image(Image.fromarray(colorize(labels, palette)), color_path)
                outputs.append(color_path)
            results.append(PredictionResult(path, outputs))
        except Co2sError as exc:
            results.append(PredictionResult(path, [], str(exc)))
    return results
