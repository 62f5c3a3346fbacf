"""Evaluate models on a split: sliding-window logits, argmax, confusion matrices over the split."""

from __future__ import annotations

from collections.abc import Callable

import torch

from co2s.data.dataset import WholeImages
from co2s.evaluation.metrics import confusion_metric, scores_from_confusion
from co2s.inference.fusion import predictions
from co2s.inference.sliding_window import default_stride, sliding_window_logits
from co2s.progress import progress_bar

Predictor = Callable[[torch.Tensor], torch.Tensor]


def window_and_stride(config) -> tuple[int, int]:
    window = config.eval.window or config.train.crop_size
    return window, config.eval.stride or default_stride(window)


@torch.no_grad()
def image_logits(models: dict[str, Predictor], image: torch.Tensor, config) -> dict[str, torch.Tensor]:
    """Sliding-window logits of ``image`` ``[1, C, H, W]`` for every model."""
    window, stride = window_and_stride(config)
    return {name: sliding_window_logits(model, image, config.data.num_classes, window, stride,
                                        config.eval.batch_size)
            for name, model in models.items()}


@torch.no_grad()
def evaluate_all(
    models: dict[str, Predictor],
    dataset: WholeImages,
    config,
    fusions: list[str] = (),
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict[str, dict]:
    """Scores of every model and, for two models, every fusion mode, keyed by name.

    Each student's logits are computed once per image; the fusions reuse them. Under DDP each
    rank takes every ``world_size``-th image (no padding, so nothing is counted twice) and the
    torchmetrics state is summed across ranks when computed.
    """
    data = config.data
    names = list(models) + (list(fusions) if len(models) == 2 else [])
    metrics = {n: confusion_metric(data.num_classes, data.ignore_index).to(device) for n in names}
    for i in progress_bar(range(rank, len(dataset), world_size), desc="evaluating", enabled=progress):
        item = dataset[i]
        mask = item["mask"][None].to(device)
        scores = predictions(image_logits(models, item["image"][None].to(device), config), list(fusions))
        for name, score in scores.items():
            metrics[name].update(score.argmax(1), mask)
    return {n: scores_from_confusion(m.compute().cpu(), data.classes) for n, m in metrics.items()}
