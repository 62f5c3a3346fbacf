import math

import torch

from co2s.evaluation.metrics import confusion_metric, scores_from_confusion


def test_scores_from_a_hand_computed_confusion_matrix():
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # rows true, cols predicted; class 2 absent
    s = scores_from_confusion(cm, ["a", "b", "c"])
    assert math.isclose(s["IoU"]["a"], 100 * 5 / 8)
    assert math.isclose(s["IoU"]["b"], 100 * 3 / 6)
    assert s["IoU"]["c"] is None  # undefined, left out of the mean
    assert math.isclose(s["mIoU"], 100 * (5 / 8 + 3 / 6) / 2)
    assert math.isclose(s["OA"], 100 * 8 / 11)
    assert math.isclose(s["F1"]["a"], 100 * 10 / 13)
    assert math.isclose(s["F1"]["b"], 100 * 6 / 9)
    assert s["pixels"] == 11 and s["confusion_matrix"] == cm.tolist()


def test_confusion_metric_sums_over_images_and_skips_ignore():
    metric = confusion_metric(3, ignore_index=255)
    metric.update(torch.tensor([[0, 1, 2, 1]]), torch.tensor([[0, 1, 255, 2]]))
    metric.update(torch.tensor([[2, 2]]), torch.tensor([[2, 0]]))
    expected = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 1, 1]])
    assert torch.equal(metric.compute(), expected)
    s = scores_from_confusion(metric.compute(), ["a", "b", "c"])
    # per-split IoU (1/2, 1/2, 1/3), not an average of per-image IoUs
    assert math.isclose(s["mIoU"], 100 * (1 / 2 + 1 / 2 + 1 / 3) / 3)
