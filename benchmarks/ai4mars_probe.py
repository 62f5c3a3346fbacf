"""How learnable AI4Mars is from local grey statistics alone: a per-pixel probe, no CNN.

A small MLP (one hidden layer of 64) is fitted, full-batch, on pixels of ``--train-images``
random images of ``train.txt``, using hand-made features of each pixel. The features are the grey
value and the local mean and standard deviation in boxes of 5, 15, 31 and 63 px. With ``--relative``,
each image is first standardised by its own mean and std, which removes what GroupNorm removes from a
CNN's view of a crop. The probe is scored on pixels of ``--test-images`` random ``test_gold.txt``
images.

It was written to tell a data problem from a training-budget problem: CPU students trained for
a few hundred small steps stayed at the class-prior loss. The probe's score says what local
statistics alone can reach on this data (docs/benchmarks.md, section 1).

    python benchmarks/ai4mars_probe.py               # absolute grey features
    python benchmarks/ai4mars_probe.py --relative    # per-image standardised features
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from co2s.config.loader import load_config  # noqa: E402
from co2s.data.io import read_image, read_mask  # noqa: E402
from co2s.data.sources import read_split  # noqa: E402

BOXES = (5, 15, 31, 63)
PIXELS_PER_IMAGE = 2000


def box_mean(a: np.ndarray, k: int) -> np.ndarray:
    t = torch.from_numpy(a)[None, None]
    return F.avg_pool2d(F.pad(t, (k // 2,) * 4, mode="replicate"), k, 1)[0, 0].numpy()


def features(image: np.ndarray, relative: bool) -> np.ndarray:
    """``[H*W, 1 + 2*len(BOXES)]``: grey value, then local mean and std per box size."""
    grey = image[0].astype(np.float32) / 255
    if relative:
        grey = (grey - grey.mean()) / (grey.std() + 1e-3)
    out = [grey]
    for k in BOXES:
        mean = box_mean(grey, k)
        out += [mean, np.sqrt(np.maximum(box_mean(grey * grey, k) - mean * mean, 0))]
    return np.stack(out, -1).reshape(-1, len(out))


def pixels(config, split: str, count: int, relative: bool, rng: np.random.Generator):
    samples = read_split(getattr(config.data.splits, split), config.data, labelled=True, name=split)
    xs, ys = [], []
    for i in rng.choice(len(samples), min(count, len(samples)), replace=False):
        labels = read_mask(samples[i].mask).ravel()
        keep = np.flatnonzero(labels != config.data.ignore_index)
        if keep.size:
            pick = rng.choice(keep, min(PIXELS_PER_IMAGE, keep.size), replace=False)
            xs.append(features(read_image(samples[i].image), relative)[pick])
            ys.append(labels[pick])
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)).long()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("CO2S_DATA_DIR", str(REPO.parent / "shared/data"))
                   + "/ai4mars-msl-256")
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--test-images", type=int, default=150)
    p.add_argument("--relative", action="store_true", help="standardise each image first (what GroupNorm sees)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not Path(args.data, "splits/train.txt").is_file():
        sys.exit(f"AI4Mars data not found at {args.data} (give --data or CO2S_DATA_DIR)")
    config = load_config("ai4mars", [f"data.root={args.data}"])
    rng = np.random.default_rng(args.seed)
    x, y = pixels(config, "train", args.train_images, args.relative, rng)
    x_test, y_test = pixels(config, "test", args.test_images, args.relative, rng)
    mean, std = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(args.seed)
    probe = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimiser = torch.optim.Adam(probe.parameters(), 1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        loss = F.cross_entropy(probe((x - mean) / std), y)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        pred = probe((x_test - mean) / std).argmax(1)
    classes = config.data.classes
    iou = [float(((pred == c) & (y_test == c)).sum() / max(int(((pred == c) | (y_test == c)).sum()), 1)) * 100
           for c in range(len(classes))]
    prior = np.bincount(y.numpy(), minlength=len(classes)) / len(y)
    print(f"train pixels {len(y)}, final train loss {loss.item():.3f} (class-prior entropy "
          f"{-(prior[prior > 0] * np.log(prior[prior > 0])).sum():.3f})")
    print(f"test pixels {len(y_test)}: accuracy {(pred == y_test).float().mean().item() * 100:.1f} %, "
          f"mIoU {np.mean(iou):.1f} %, IoU " + ", ".join(f"{c} {v:.1f}" for c, v in zip(classes, iou)))


if __name__ == "__main__":
    main()
