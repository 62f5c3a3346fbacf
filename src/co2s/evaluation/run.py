"""``co2s evaluate``: score a checkpoint on a split and write ``metrics.json`` beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from co2s.data.dataset import WholeImages
from co2s.data.labels import LabelEncoder
from co2s.data.sources import read_split, validate_samples
from co2s.engine.checkpoint import load_models_from_checkpoint
from co2s.errors import DataError
from co2s.evaluation.evaluator import evaluate_all, window_and_stride
from co2s.inference.fusion import FUSIONS
from co2s.evaluation.metrics import format_table


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_prediction(config, models: dict) -> str:
    """What a checkpoint predicts by default: the configured fusion for two students."""
    return config.train.semi.fusion if len(models) == 2 else next(iter(models))


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    config=None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    prediction: str | None = None,
) -> dict:
    """Evaluate ``checkpoint`` on ``data.splits.<split>``; returns and writes the metrics.

    The top-level scores are those of ``prediction`` (default: the configured fusion for a
    two-student checkpoint); ``predictions`` holds every student and fusion side by side.
    """
    models, config, ckpt = load_models_from_checkpoint(checkpoint, config)
    spec = getattr(config.data.splits, split, None)
    if not spec:
        raise DataError(f"data.splits.{split} is not set; give it in the config or with --set")
    samples = read_split(spec, config.data, labelled=True, name=split)
    validate_samples(samples, LabelEncoder.from_config(config.data), "exists")
    dev = resolve_device(device)
    for model in models.values():
        model.to(dev)
    fusions = list(FUSIONS) if len(models) == 2 else []
    prediction = prediction or default_prediction(config, models)
    if prediction not in [*models, *fusions]:
        raise DataError(f"unknown prediction {prediction!r}; choose from {[*models, *fusions]}")
    all_scores = evaluate_all(models, WholeImages(samples, config.data), config, fusions, dev,
                              progress=progress)
    scores = all_scores[prediction]
    window, stride = window_and_stride(config)
    keys = ("mIoU", "OA", "mF1", "IoU", "F1", "precision", "recall")
    result = {
        **{k: scores[k] for k in keys},
        "prediction": prediction,
        "classes": config.data.classes,
        "confusion_matrix": scores["confusion_matrix"],
        "confusion_matrix_axes": ["true", "predicted"],
        "pixels": scores["pixels"],
        "predictions": {name: {k: s[k] for k in (*keys, "confusion_matrix")} for name, s in all_scores.items()},
        "split": split,
        "split_source": str(spec),
        "images": len(samples),
        "checkpoint": str(Path(checkpoint)),
        "checkpoint_step": int(ckpt["step"]),
        "best": ckpt.get("best"),
        "window": window,
        "stride": stride,
    }
    out = Path(out) if out else Path(checkpoint).with_name("metrics.json")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    result["path"] = str(out)
    return result


def print_report(result: dict) -> None:
    print(format_table({**result}, f"{result['split']} ({result['images']} images), "
                       f"checkpoint {result['checkpoint']} step {result['checkpoint_step']}, "
                       f"prediction {result['prediction']}"))
    if len(result["predictions"]) > 1:
        print("side by side: " + ", ".join(f"{name} mIoU {s['mIoU']:.2f}"
                                           for name, s in result["predictions"].items()))
    print(f"metrics written to {result['path']}")
