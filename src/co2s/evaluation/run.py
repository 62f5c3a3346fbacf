"""Evaluation on a split (``co2s evaluate`` and the public ``evaluate``): metrics of what the
Segmenter predicts, every student and fusion side by side."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from co2s.atomic import write_text
from co2s.data.module import data_module
from co2s.errors import DataError
from co2s.evaluation.evaluator import score_predictions
from co2s.evaluation.metrics import format_table
from co2s.inference.segmenter import Segmenter, resolve_device


def evaluate(segmenter, data=None, split: str = "test", out: str | os.PathLike | None = None,
             progress: bool = True, predictions: list[str] | None = None) -> dict:
    """Score ``segmenter`` on ``data.splits.<split>`` and return the metrics (nothing is written
    unless ``out`` is given). ``data`` is a data config (default: the one the models were trained
    with); images are read with the model's own bands and scaling (its inference contract).

    The top-level scores are the Segmenter's prediction (its student or fusion); ``predictions``
    holds every student and fusion side by side.
    """
    data = model_data(segmenter, data or segmenter.training_config.data)
    wanted = list(dict.fromkeys([segmenter.prediction, *(predictions or segmenter.choices)]))
    dataset = data_module(data, segmenter.in_channels, progress, report=False).evaluation_set(split)
    scores_by_name = score_predictions(segmenter, dataset, wanted, progress=progress)
    scores = scores_by_name[segmenter.prediction]
    keys = ("mIoU", "OA", "mF1", "IoU", "F1", "precision", "recall")
    result = {
        **{k: scores[k] for k in keys},
        "prediction": segmenter.prediction,
        "classes": list(data.classes),
        "confusion_matrix": scores["confusion_matrix"],
        "confusion_matrix_axes": ["true", "predicted"],
        "pixels": scores["pixels"],
        "predictions": {name: {k: s[k] for k in (*keys, "confusion_matrix")} for name, s in scores_by_name.items()},
        "split": split,
        **dataset.record(),
        "window": segmenter.tile,
        "stride": segmenter.stride,
        "blend": "hann",
    }
    if out is not None:
        result["path"] = str(write_text(Path(out), json.dumps(result, indent=2)))
    return result


def model_data(segmenter, data):
    """``data`` reading images as the model does: its classes must be the model's; its bands and
    scaling are the model's (a warning says when the config said otherwise)."""
    if list(data.classes) != segmenter.classes:
        raise DataError(f"the data config's classes {list(data.classes)} are not the model's {segmenter.classes}")
    differ = {key: (getattr(data, key), value) for key, value in (("bands", segmenter.bands), ("scale", segmenter.scale))
              if getattr(data, key) != value}
    if not differ:
        return data
    shown = "; ".join(f"data.{k} {given!r} -> {model!r}" for k, (given, model) in differ.items())
    warnings.warn(f"images are read as the model was trained to read them: {shown}", stacklevel=3)
    return data.model_copy(update={k: model for k, (_, model) in differ.items()})


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    config=None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    prediction: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """``co2s evaluate``: load a checkpoint (or exported model folder), score it on a split of
    ``config`` (default: the config stored in the checkpoint) and write ``metrics.json`` beside it
    (or to ``out``). ``overrides`` (``--set``) apply to that config, e.g. to point ``data.root``
    elsewhere."""
    segmenter = Segmenter.load(checkpoint, prediction)
    config = config if config is not None else segmenter.training_config
    if overrides:
        config = config.override(overrides)
    segmenter = segmenter.to(resolve_device(device))
    source = Path(checkpoint)
    out = Path(out) if out else (source / "metrics.json" if source.is_dir() else source.with_name("metrics.json"))
    result = evaluate(segmenter, config.data, split, None, progress)
    info = segmenter.info
    result.update({"checkpoint": str(source), "checkpoint_step": info.get("step"), "best": info.get("best")})
    result["path"] = str(write_text(out, json.dumps(result, indent=2)))
    return result


def print_report(result: dict) -> None:
    unit = "rasters" if "rasters" in result else "images"
    print(format_table({**result}, f"{result['split']} ({result['images']} {unit}), "
                       f"checkpoint {result['checkpoint']} step {result['checkpoint_step']}, "
                       f"prediction {result['prediction']}"))
    if len(result["predictions"]) > 1:
        print("side by side: " + ", ".join(f"{name} mIoU {s['mIoU']:.2f}"
                                           for name, s in result["predictions"].items()))
    print(f"metrics written to {result['path']}")
