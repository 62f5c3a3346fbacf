"""Which classes a student's confident pseudo-labels carry, against the masks of the unlabelled images.

The study's diagnostics (``pseudo_label_acc_confident``, ``confident_ratio``) are pooled over classes.
A pooled 85 % can hide a class that is rarely confident, or confidently called something else: the
unlabelled terms then teach the students to give that class up. This script predicts ``--images``
random images of a run's unlabelled split with one student of a checkpoint (whole images, the
test window, no augmentation: close to, not the same as, the weak view training labels) and
reports per class:

- ``true``: share of the labelled pixels of the masks the study keeps aside (never a loss);
- ``predicted``: share of all pseudo-labels (confident or not) given to the class;
- ``confident``: share of the confident pseudo-labels (confidence >= tau) given to the class;
- ``precision``: confident pseudo-labels of the class that are right;
- ``recall``: pixels of the class that get a confident, right pseudo-label.

    python benchmarks/pseudo_labels_by_class.py benchmarks/results/ssl_study_v3/runs/co2s/1_8_seed2 \\
        --checkpoint burn_in.ckpt --prediction cnn
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from co2s.config.loader import load_config  # noqa: E402
from co2s.data.io import read_mask  # noqa: E402
from co2s.data.sources import read_split  # noqa: E402
from co2s.inference.segmenter import Segmenter  # noqa: E402


def class_counts(segmenter: Segmenter, prediction: str, samples, tau: float, ignore_index: int,
                 num_classes: int) -> np.ndarray:
    """``[4, K]`` pixel counts: true, confident pseudo-labels, confident and right, all pseudo-labels."""
    counts = np.zeros((4, num_classes), np.int64)
    for sample in samples:
        pred = segmenter.predict(sample.image, prediction)
        mask = read_mask(sample.mask)
        known = mask != ignore_index
        truth, labels = mask[known], pred.classes[known]
        confident = pred.confidence[known] >= tau
        counts[0] += np.bincount(truth, minlength=num_classes)[:num_classes]
        counts[1] += np.bincount(labels[confident], minlength=num_classes)
        counts[2] += np.bincount(labels[confident & (labels == truth)], minlength=num_classes)
        counts[3] += np.bincount(labels, minlength=num_classes)
    return counts


def table(counts: np.ndarray, classes: list[str]) -> dict:
    true, confident, right, predicted = counts.astype(float)
    share = lambda a: a / max(a.sum(), 1)  # noqa: E731
    return {"confident_ratio": confident.sum() / max(true.sum(), 1),
            "right_when_confident": right.sum() / max(confident.sum(), 1),
            "classes": {c: {"true": share(true)[i], "predicted": share(predicted)[i], "confident": share(confident)[i],
                            "precision": right[i] / confident[i] if confident[i] else None,
                            "recall": right[i] / true[i] if true[i] else None}
                        for i, c in enumerate(classes)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a study run folder (config.yaml and its checkpoints)")
    p.add_argument("--checkpoint", default="burn_in.ckpt", help="file in the run folder (default: burn_in.ckpt, "
                   "the students as the unlabelled terms start)")
    p.add_argument("--prediction", help="a student's name or a fusion (default: the checkpoint's own)")
    p.add_argument("--images", type=int, default=300, help="N random images of the unlabelled split")
    p.add_argument("--seed", type=int, default=0, help="which N (the same for every run compared)")
    p.add_argument("--tau", type=float, help="confidence threshold (default: the run's train.semi.tau)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    config = load_config(str(args.run / "config.yaml"))
    samples = read_split(config.data.splits.unlabelled, config.data, labelled=False, name="unlabelled",
                         keep_masks=True)
    samples = [s for s in samples if s.mask is not None]
    pick = np.random.default_rng(args.seed).permutation(len(samples))[: args.images]  # the lists run in sol order
    samples = [samples[i] for i in sorted(pick)]
    segmenter = Segmenter.load(args.run / args.checkpoint, args.prediction)
    prediction = segmenter.resolve(args.prediction)
    tau = config.train.semi.tau if args.tau is None else args.tau
    counts = class_counts(segmenter, prediction, samples, tau, config.data.ignore_index, segmenter.num_classes)
    result = {"run": str(args.run.resolve().relative_to(REPO)) if args.run.resolve().is_relative_to(REPO)
              else str(args.run), "checkpoint": args.checkpoint, "step": segmenter.info["step"],
              "prediction": prediction, "tau": tau, "images": len(samples), "image_seed": args.seed,
              **table(counts, segmenter.classes)}
    print(f"{result['run']} {args.checkpoint} (step {result['step']}), {prediction}, tau {tau}, "
          f"{len(samples)} unlabelled images: {result['confident_ratio']:.2f} of labelled pixels confident, "
          f"{result['right_when_confident']:.2f} of those right")
    print(f"{'class':<12}{'true':>8}{'predicted':>11}{'confident':>11}{'precision':>11}{'recall':>8}")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for name, row in result["classes"].items():
        print(f"{name:<12}{row['true']:>8.2f}{row['predicted']:>11.2f}{row['confident']:>11.2f}{fmt(row['precision']):>11}{fmt(row['recall']):>8}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
