"""Segmentation metrics from a confusion matrix summed over the whole split (SPEC 3.3).

IoU per class is intersection over union of the summed counts (not an average over images); a
class with no ground truth and no prediction has an undefined IoU and is left out of the mean.
The running matrix is a torchmetrics metric, so it is summed across processes under DDP.
"""

from __future__ import annotations

import math

import torch


def confusion_metric(num_classes: int, ignore_index: int = 255):
    """Accumulator of ``[true, predicted]`` counts (a torchmetrics ``MulticlassConfusionMatrix``);
    update with predicted labels and targets. torchmetrics is imported here, on first use: it
    takes most of a second to import, which predicting alone should not pay."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index, normalize="none")


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def scores_from_confusion(confusion: torch.Tensor, class_names: list[str]) -> dict:
    """mIoU, OA (percent), per-class IoU/F1/precision/recall (percent) from ``[true, pred]`` counts."""
    cm = confusion.double()
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    f1 = torch.where(gt + pred > 0, 2 * tp / (gt + pred).clamp(min=1), torch.full_like(tp, float("nan")))
    precision = torch.where(pred > 0, tp / pred.clamp(min=1), torch.full_like(tp, float("nan")))
    recall = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    per = lambda t: {n: _nan_to_none(float(v) * 100) for n, v in zip(class_names, t)}  # noqa: E731
    return {
        "mIoU": float(torch.nanmean(iou)) * 100 if (union > 0).any() else float("nan"),
        "OA": float(tp.sum() / total) * 100 if total > 0 else float("nan"),
        "mF1": float(torch.nanmean(f1)) * 100 if (gt + pred > 0).any() else float("nan"),
        "IoU": per(iou),
        "F1": per(f1),
        "precision": per(precision),
        "recall": per(recall),
        "pixels": int(total),
        "confusion_matrix": confusion.long().tolist(),
    }


def format_table(scores: dict, title: str = "") -> str:
    """A readable per-class table for the terminal."""
    names = list(scores["IoU"])
    width = max(12, *(len(n) for n in names))
    fmt = lambda v: "   n/a" if v is None else f"{v:6.2f}"  # noqa: E731
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  {'IoU':>6}  {'F1':>6}")
    lines += [f"{n:<{width}}  {fmt(scores['IoU'][n])}  {fmt(scores['F1'][n])}" for n in names]
    lines.append(f"{'mean':<{width}}  {fmt(scores['mIoU'])}  {fmt(scores['mF1'])}")
    lines.append(f"overall accuracy: {scores['OA']:.2f} %   ({scores['pixels']} labelled pixels)")
    return "\n".join(lines)
