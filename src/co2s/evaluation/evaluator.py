"""Score a Segmenter on a split: every student and fusion side by side, from one pass of each model,
with confusion matrices summed over the whole split (SPEC 3.3)."""

from __future__ import annotations

import torch

from co2s.data.dataset import WholeImages
from co2s.data.scenes import SceneSet
from co2s.evaluation.metrics import confusion_metric, scores_from_confusion
from co2s.progress import progress_bar


@torch.no_grad()
def score_predictions(
    segmenter,
    dataset: WholeImages | SceneSet,
    predictions: list[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict[str, dict]:
    """Scores of each of ``predictions`` (default: every one the Segmenter can make), by name.

    Each image goes through :meth:`Segmenter.predict_many`, exactly what ``co2s predict`` writes.
    Under DDP each rank takes every ``world_size``-th image (no padding, so nothing is counted
    twice) and the torchmetrics state is summed across ranks when computed. ``dataset`` may also be
    the regions of scenes (:func:`co2s.data.scene_regions.load_regions`), scored in windows by
    :func:`co2s.evaluation.scenes.score_scene_regions`.
    """
    if isinstance(dataset, SceneSet):
        from co2s.evaluation.scenes import score_scene_regions

        return score_scene_regions(segmenter, dataset, predictions, rank, world_size, progress)
    predictions = predictions or segmenter.choices
    device = segmenter.device
    metrics = {n: confusion_metric(segmenter.num_classes, dataset.ignore_index).to(device) for n in predictions}
    for i in progress_bar(range(rank, len(dataset), world_size), desc="evaluating", enabled=progress):
        item = dataset[i]
        mask = item["mask"][None].to(device)
        out = segmenter.predict_many(item["image"], predictions, confidence=False)
        for name, prediction in out.items():
            classes = torch.from_numpy(prediction.classes).to(device=device, dtype=torch.long)
            metrics[name].update(classes[None], mask)
    return {n: scores_from_confusion(m.compute().cpu(), segmenter.classes) for n, m in metrics.items()}
