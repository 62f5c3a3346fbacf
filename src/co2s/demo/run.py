"""``co2s demo``: synthetic aerial scenes -> train -> evaluate -> predict, in one output folder.

Everything is generated locally (no downloads). The summary compares the trained model with
what a constant (majority-class) and a uniformly random predictor score on the same test split.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from co2s.api import train
from co2s.atomic import write_text
from co2s.config.loader import load_config
from co2s.demo.synthetic import write_demo_dataset
from co2s.evaluation.metrics import scores_from_confusion
from co2s.evaluation.run import evaluate_checkpoint, print_report
from co2s.inference.predict import predict_files


def reference_scores(confusion: list[list[int]], classes: list[str]) -> dict:
    """mIoU of a majority-class predictor and the expected mIoU of a uniform random one."""
    cm = np.asarray(confusion, dtype=np.int64)
    truth = cm.sum(1)
    constant = np.zeros_like(cm)
    constant[:, truth.argmax()] = truth
    k = len(classes)
    rand = np.repeat(truth[:, None] / k, k, axis=1)  # expected counts of uniform guessing
    import torch

    return {
        "constant_mIoU": scores_from_confusion(torch.from_numpy(constant), classes)["mIoU"],
        "random_mIoU": scores_from_confusion(torch.from_numpy(rand), classes)["mIoU"],
    }


def run_demo(out_dir: str | os.PathLike = "demo_output", overrides: list[str] | None = None,
             seed: int = 0, progress: bool = True) -> dict:
    start = time.perf_counter()
    out = Path(out_dir)
    dataset = write_demo_dataset(out / "data", seed=seed)
    config = load_config("demo", [f"data.root={dataset.root}", f"out_dir={out / 'run'}",
                                  f"train.seed={seed}", *(overrides or [])])
    print(f"demo data in {dataset.root}; training {config.train.method} "
          f"({config.model.name}) for {config.train.iters} iterations")
    result = train(config, progress=progress)
    checkpoint = result.run_dir / ("best.ckpt" if result.best else "latest.ckpt")
    metrics = evaluate_checkpoint(checkpoint, split="test", progress=progress)
    print_report(metrics)
    predictions = predict_files(checkpoint, [str(p) for p in dataset.scenes], out / "predictions",
                                progress=progress)
    summary = {
        "test_mIoU": metrics["mIoU"],
        "test_OA": metrics["OA"],
        **reference_scores(metrics["confusion_matrix"], metrics["classes"]),
        "checkpoint": str(checkpoint),
        "metrics": metrics["path"],
        "predictions": [str(p) for r in predictions for p in r.outputs],
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(f"test mIoU {summary['test_mIoU']:.2f} % (constant predictor "
          f"{summary['constant_mIoU']:.2f} %, random {summary['random_mIoU']:.2f} %); "
          f"predictions in {out / 'predictions'}; {summary['seconds']} s")
    return summary
