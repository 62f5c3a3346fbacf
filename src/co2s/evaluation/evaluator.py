"""Score a Segmenter on an evaluation set: every student and fusion side by side, from one pass of
each model, with confusion matrices summed over the whole split (SPEC 3.3).

Tiles and scene regions take the same road (:mod:`co2s.data.evaluation_sets`): each region is
predicted by :meth:`Segmenter.predict_box`, exactly as ``co2s predict`` predicts the image or
raster it belongs to, so a score is a score of what ``co2s predict`` writes.
"""

from __future__ import annotations

import warnings

import torch

from co2s.evaluation.metrics import confusion_metric, scores_from_confusion
from co2s.inference.streaming import VALID
from co2s.progress import progress_bar


@torch.no_grad()
def score_predictions(segmenter, dataset, predictions: list[str] | None = None, rank: int = 0,
                      world_size: int = 1, progress: bool = True) -> dict[str, dict]:
    """Scores of each of ``predictions`` (default: every one the Segmenter can make), by name, on
    an evaluation set (:class:`~co2s.data.evaluation_sets.TileEvaluationSet` or
    :class:`~co2s.data.evaluation_sets.SceneEvaluationSet`). Under DDP each rank scores its share
    and the torchmetrics state is summed across ranks when computed."""
    predictions = predictions or segmenter.choices
    device = segmenter.device
    metrics = {n: confusion_metric(segmenter.num_classes, dataset.ignore_index).to(device) for n in predictions}
    for region in progress_bar(dataset.regions(rank, world_size), desc="evaluating", enabled=progress):
        try:
            for piece, pieces in segmenter.predict_box(region.read, region.height, region.width, region.window,
                                                       predictions, validity=True):
                labels = region.labels(piece, pieces.pop(VALID))
                if labels is None:
                    continue
                target = torch.as_tensor(labels)[None].to(device)
                for name, prediction in pieces.items():
                    classes = torch.from_numpy(prediction.classes).to(device=device, dtype=torch.long)
                    metrics[name].update(classes[None], target)
        finally:
            region.close()
    with warnings.catch_warnings():  # a rank may have had nothing to score (its sums are still summed)
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        return {n: scores_from_confusion(m.compute().cpu(), segmenter.classes) for n, m in metrics.items()}
