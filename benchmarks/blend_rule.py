"""Evidence for the one tiling rule: Hann-weighted tile blending (what the Segmenter, evaluation and
prediction use) against the paper's uniform window averaging (SPEC 3.3), on the same checkpoint,
split, windows and stride. Reports, per prediction (each student, each fusion), the share of
pixels where the two rules disagree and the mIoU under each.

    python benchmarks/blend_rule.py --checkpoint demo_output/run/best.ckpt --split test \\
        --out benchmarks/results/blend_rule_demo.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from co2s import Segmenter
from co2s.data.dataset import WholeImages
from co2s.data.sources import read_split
from co2s.evaluation.metrics import confusion_metric, scores_from_confusion
from co2s.inference.fusion import class_probabilities
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test oracle: tests/inference/oracle.py
from tests.inference.oracle import sliding_window_logits  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-images", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    segmenter = Segmenter.load(args.checkpoint)
    config = segmenter.training_config
    data = (config.override(args.overrides) if args.overrides else config).data
    samples = read_split(getattr(data.splits, args.split), data, labelled=True)[: args.max_images]
    dataset = WholeImages(samples, data)
    names = segmenter.choices
    metrics = {(rule, n): confusion_metric(data.num_classes, data.ignore_index) for rule in ("hann", "uniform")
               for n in names}
    differ, total = dict.fromkeys(names, 0), 0
    for i in range(len(dataset)):
        item = dataset[i]
        mask = item["mask"][None]
        valid = mask != data.ignore_index
        hann = segmenter.predict_many(item["image"], names, confidence=False)
        with torch.no_grad():
            logits = {m: sliding_window_logits(model, item["image"][None], data.num_classes, segmenter.tile,
                                               segmenter.stride, segmenter.batch_size)
                      for m, model in segmenter.models.items()}
        total += int(valid.sum())
        for n in names:
            h = torch.from_numpy(hann[n].classes).long()[None]
            u = class_probabilities(logits, n).argmax(1)
            differ[n] += int(((h != u) & valid).sum())
            metrics["hann", n].update(h, mask)
            metrics["uniform", n].update(u, mask)
    result = {"checkpoint": Path(args.checkpoint).name,  # no machine paths in results
              "split": args.split, "images": len(dataset),
              "window": segmenter.tile, "stride": segmenter.stride, "labelled_pixels": total,
              "predictions": {n: {"pixels_differ_pct": 100 * differ[n] / max(total, 1),
                                  "mIoU_hann": scores_from_confusion(metrics["hann", n].compute(), data.classes)["mIoU"],
                                  "mIoU_uniform": scores_from_confusion(metrics["uniform", n].compute(),
                                                                        data.classes)["mIoU"]}
                              for n in names}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
