"""How uncertain a prediction is, per pixel and per region: what ``co2s suggest`` ranks by.

Per pixel, from the blended logits the map itself is made of (:func:`pixel_terms`), each in [0, 1]:

- ``entropy``: the entropy of the prediction's class probabilities over ln K (K classes): 0 when
  one class takes everything, 1 when all are equally likely;
- ``margin``: 1 minus the gap between its two most probable classes;
- ``disagreement`` (two students): 1 where the students' predicted classes differ, else 0.

A region's score is the mean of its pixels' score over its valid pixels (:class:`RegionScores`).
The scores (``SCORES``, one place):

- ``default``: disagreement + entropy for two students (the share of pixels where they disagree
  plus the mean normalised entropy of the fused prediction), entropy alone for one model;
- ``entropy``, ``margin``, ``disagreement``: one term alone;
- ``balanced``: the default, each pixel weighed by the rarity of its predicted class over the whole
  pool (:func:`class_weights`), so that uncertain pixels of classes the model rarely predicts count
  more: a labelling budget then buys examples of rare classes first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from co2s.errors import Co2sError
from co2s.inference.fusion import class_probabilities

SCORES = ("default", "entropy", "margin", "disagreement", "balanced")
TERMS = ("entropy", "margin", "disagreement")
#: the predicted class of each pixel, carried with the terms (the balanced score weighs by it)
PREDICTED = "predicted"


def check_score(score: str, num_models: int) -> None:
    if score not in SCORES:
        raise Co2sError(f"unknown score {score!r}; choose from {', '.join(SCORES)}")
    if score == "disagreement" and num_models != 2:
        raise Co2sError("--score disagreement needs a model of two students; this one has one model")


def pixel_terms(prediction: str, models: list[str]):
    """``pixel_maps`` for :meth:`Segmenter.predict_box`: the per-pixel terms of ``prediction``
    (a model's name or a fusion), and the disagreement of the students when there are two."""

    def terms(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        probs = class_probabilities(logits, prediction)[0]  # [K, h, w]
        k = probs.shape[0]
        out = {PREDICTED: probs.argmax(0).float()}
        if k < 2:  # one class: nothing to be unsure of
            out["entropy"] = out["margin"] = torch.zeros_like(probs[0])
        else:
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(0) / math.log(k)
            top = probs.topk(2, dim=0).values
            out["entropy"], out["margin"] = entropy.clamp(0, 1), (1 - (top[0] - top[1])).clamp(0, 1)
        if len(models) == 2:
            a, b = (logits[m][0].argmax(0) for m in models)
            out["disagreement"] = (a != b).float()
        return out

    return terms


def pixel_score(maps: dict[str, np.ndarray], score: str, weights: np.ndarray | None = None) -> np.ndarray:
    """The per-pixel score ``score`` from the maps of :func:`pixel_terms` (the balanced score
    needs the class ``weights``)."""
    if score in ("entropy", "margin", "disagreement"):
        return maps[score]
    value = maps["entropy"] + maps["disagreement"] if "disagreement" in maps else maps["entropy"]
    if score == "balanced":
        value = value * weights[maps[PREDICTED].astype(np.int64)]
    return value


def class_weights(predicted_pixels: np.ndarray) -> np.ndarray:
    """Per class, ``min(1, (1/K) / share)`` of the pixels predicted as it: classes at or below an
    even share weigh 1, a class predicted on half of a 6-class pool weighs 1/3."""
    total = predicted_pixels.sum()
    k = len(predicted_pixels)
    if total == 0:
        return np.ones(k)
    share = predicted_pixels / total
    return np.minimum(1.0, (1.0 / k) / np.maximum(share, 1e-12))


def region_score(score: str, pixels, sums: dict, class_default, weights: np.ndarray | None = None):
    """The ``score`` of regions from their sums over their counted pixels: ``pixels``, each term's
    sum (``sums``) and the default score's sum per predicted class (``class_default``, classes on
    the last axis); arrays of many regions or the numbers of one."""
    if score == "balanced":
        total = (class_default * weights).sum(-1)
    elif score == "default":
        total = class_default.sum(-1)
    else:
        total = sums[score]
    return total / pixels


@dataclass
class RegionScores:
    """Sums over the valid pixels of one region: each term, and the default per-pixel score per
    predicted class (so the balanced score can be taken once the pool's class weights are known)."""

    num_classes: int
    pixels: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    class_pixels: np.ndarray = None
    class_default: np.ndarray = None

    def __post_init__(self) -> None:
        if self.class_pixels is None:
            self.class_pixels = np.zeros(self.num_classes, np.int64)
            self.class_default = np.zeros(self.num_classes, np.float64)

    def add(self, maps: dict[str, np.ndarray], valid: np.ndarray | None) -> None:
        """Add the pixels of a piece (``valid``: those to count, None: all)."""
        keep = np.ones(maps[PREDICTED].shape, bool) if valid is None else valid
        n = int(keep.sum())
        if n == 0:
            return
        self.pixels += n
        for term in TERMS:
            if term in maps:
                self.sums[term] = self.sums.get(term, 0.0) + float(maps[term][keep].sum(dtype=np.float64))
        classes = maps[PREDICTED][keep].astype(np.int64)
        self.class_pixels += np.bincount(classes, minlength=self.num_classes)
        self.class_default += np.bincount(classes, weights=pixel_score(maps, "default")[keep],
                                          minlength=self.num_classes)

    def merge(self, other: RegionScores) -> None:
        self.pixels += other.pixels
        for term, value in other.sums.items():
            self.sums[term] = self.sums.get(term, 0.0) + value
        self.class_pixels += other.class_pixels
        self.class_default += other.class_default

    def means(self) -> dict[str, float]:
        """The mean of each term over the counted pixels (empty without pixels)."""
        return {t: v / self.pixels for t, v in self.sums.items()} if self.pixels else {}

    def score(self, score: str, weights: np.ndarray | None = None) -> float | None:
        """The region's ``score`` (None without a counted pixel)."""
        if not self.pixels:
            return None
        return float(region_score(score, self.pixels, self.sums, self.class_default, weights))
