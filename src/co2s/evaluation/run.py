"""``co2s evaluate``: score a checkpoint on a split and write ``metrics.json`` beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from co2s.data.dataset import WholeImages
from co2s.data.labels import LabelEncoder
from co2s.data.sources import read_split, validate_samples
from co2s.engine.checkpoint import load_model_from_checkpoint
from co2s.errors import DataError
from co2s.evaluation.evaluator import evaluate, window_and_stride
from co2s.evaluation.metrics import format_table


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    config=None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Evaluate ``checkpoint`` on ``data.splits.<split>``; returns and writes the metrics."""
    model, config, ckpt = load_model_from_checkpoint(checkpoint, config)
    spec = getattr(config.data.splits, split, None)
    if not spec:
        raise DataError(f"data.splits.{split} is not set; give it in the config or with --set")
    samples = read_split(spec, config.data, labelled=True, name=split)
    validate_samples(samples, LabelEncoder.from_config(config.data), "exists")
    dev = resolve_device(device)
    model.to(dev)
    scores = evaluate(model, WholeImages(samples, config.data), config, dev, progress=progress)
    window, stride = window_and_stride(config)
    result = {
        "mIoU": scores["mIoU"],
        "OA": scores["OA"],
        "mF1": scores["mF1"],
        "IoU": scores["IoU"],
        "F1": scores["F1"],
        "precision": scores["precision"],
        "recall": scores["recall"],
        "classes": config.data.classes,
        "confusion_matrix": scores["confusion_matrix"],
        "confusion_matrix_axes": ["true", "predicted"],
        "pixels": scores["pixels"],
        "split": split,
        "split_source": str(spec),
        "images": len(samples),
        "checkpoint": str(Path(checkpoint)),
        "checkpoint_step": int(ckpt["step"]),
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
                       f"checkpoint {result['checkpoint']} step {result['checkpoint_step']}"))
    print(f"metrics written to {result['path']}")
