"""Evaluate a model on a split: sliding-window logits, argmax, confusion matrix over the split."""

from __future__ import annotations

from collections.abc import Callable

import torch

from co2s.data.dataset import WholeImages
from co2s.evaluation.metrics import confusion_metric, scores_from_confusion
from co2s.progress import progress_bar
from co2s.inference.sliding_window import default_stride, sliding_window_logits


def window_and_stride(config) -> tuple[int, int]:
    window = config.eval.window or config.train.crop_size
    return window, config.eval.stride or default_stride(window)


@torch.no_grad()
def evaluate(
    predict_logits: Callable[[torch.Tensor], torch.Tensor],
    dataset: WholeImages,
    config,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict:
    """Scores of ``predict_logits`` (tiles in, logits out) on ``dataset``.

    Under DDP each rank takes every ``world_size``-th image (no padding, so nothing is counted
    twice); the torchmetrics state is summed across ranks when it is computed.
    """
    data = config.data
    window, stride = window_and_stride(config)
    metric = confusion_metric(data.num_classes, data.ignore_index).to(device)
    indices = range(rank, len(dataset), world_size)
    for i in progress_bar(indices, desc="evaluating", enabled=progress):
        item = dataset[i]
        image = item["image"][None].to(device)
        mask = item["mask"][None].to(device)
        logits = sliding_window_logits(
            predict_logits, image, data.num_classes, window, stride, config.eval.batch_size
        )
        metric.update(logits.argmax(1), mask)
    confusion = metric.compute()
    return scores_from_confusion(confusion.cpu(), data.classes)
