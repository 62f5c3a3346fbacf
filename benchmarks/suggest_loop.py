"""Do the tiles ``co2s suggest`` picks pay? The labelling loop, simulated on data whose every tile
has a mask.

From one initial labelled set (round 0, the same for every seed), two arms add ``--add`` tiles per
round from the unlabelled pool: **suggest** labels the top tiles ``co2s suggest`` ranks with the
previous round's model (its default score), **random** labels tiles drawn at random (seeded). After
each round the model is trained again from scratch with the same config and budget (iterations,
batch, seed) on the larger labelled set and scored on the test split at its last step, as
``co2s demo`` scores. "Labelling" a tile is adding its existing mask to the labelled list.

Datasets (``--dataset``):

- ``demo``: the demo's synthetic data and its Co2S pair (preset ``demo``): 16 labelled tiles, a
  pool of 96, 8 added per round, test on its 24 test tiles;
- ``ai4mars``: AI4Mars MSL from ``--data`` (default ``../shared/data``) with the built-in CNN
  (``lite_unet`` width 16, supervised, 3000 steps of 8 crops of 128 px: the size at which it learns
  AI4Mars, docs/benchmarks.md section 1): the 1/16 split of ``train.txt`` (seed 0) labelled, the
  rest the pool, 131 tiles (1/32 of train.txt) added per round, test on ``test_gold.txt``.

Before each suggest-arm round the previous model's per-tile error on the pool (1 - pixel accuracy
over the labelled pixels of the tile's mask) is measured too, and every score variant of
``scores.csv`` (default, entropy, margin, disagreement, balanced) is compared by its Spearman
correlation with that error and by the mean error of its top tiles: which score finds the tiles the
model gets wrong.

Each finished run leaves a record in ``--out/<dataset>/records`` (committed; run folders live in
``--work`` and are not); a recorded run is never trained again and an unfinished one resumes from
its ``latest.ckpt``, so the loop goes on across sittings. ``--report`` writes ``results.md`` and
``suggest_loop.png`` from the records.

    python benchmarks/suggest_loop.py --dataset demo --seeds 0 1 2        # ~1 h on 2 cores
    python benchmarks/suggest_loop.py --dataset ai4mars --seeds 0 1 2     # ~2 h
    python benchmarks/suggest_loop.py --report
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's code

import numpy as np  # noqa: E402

import co2s  # noqa: E402
from co2s.config.loader import load_config  # noqa: E402
from co2s.data.io import read_mask  # noqa: E402
from co2s.data.sources import read_split  # noqa: E402
from study_records import git_revision, mean_sd, write_record  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "suggest_loop"
VARIANTS = ("default", "entropy", "margin", "disagreement", "balanced")

DATASETS = {
    "demo": {
        "preset": "demo", "add": 8,
        # the length the recorded loop ran, kept if the demo preset's own changes
        "overrides": ["train.num_workers=0", "train.iters=900", "train.val_every=900", "train.crop_size=128",
                      "train.semi.burn_in=0.8"],
    },
    "ai4mars": {
        "preset": "ai4mars", "add": 131,
        "overrides": ["model={name: lite_unet, width: 16}", "train.method=supervised", "train.crop_size=128",
                      "train.batch_size=8", "train.iters=3000", "train.lr=0.001", "train.val_every=3000",
                      "train.val_max_images=60", "train.ckpt_every=500", "train.log_every=100",
                      "train.num_workers=0"],
    },
}


# -- data -------------------------------------------------------------------------------------


def prepare(dataset: str, work: Path, data_dir: Path) -> tuple[Path, list[str], list[str]]:
    """The data root, the initial labelled lines (``image mask``) and the pool's lines."""
    if dataset == "demo":
        from co2s.demo.synthetic import write_demo_dataset

        demo = write_demo_dataset(work / "demo_data", seed=0)
        labelled = [line for line in demo.labelled.read_text().splitlines() if line.strip()]
        pool = [f"{line.strip()} {line.strip().replace('images/', 'masks/')}"
                for line in demo.unlabelled.read_text().splitlines() if line.strip()]
        return demo.root, labelled, pool
    root = data_dir / "ai4mars-msl-256"
    if not (root / "splits" / "train.txt").is_file():
        sys.exit(f"AI4Mars not found under {root}: give --data (the folder holding ai4mars-msl-256)")
    ids = [line.strip() for line in (root / "splits" / "train.txt").read_text().splitlines() if line.strip()]
    chosen = set(random.Random(0).sample(range(len(ids)), len(ids) // 16))  # the 1/16 split, seed 0
    # bare IDs, as the preset's lists are: data.id_format makes the image and mask paths of both lists
    return root, [x for k, x in enumerate(ids) if k in chosen], [x for k, x in enumerate(ids) if k not in chosen]


def write_lists(folder: Path, labelled: list[str], pool: list[str]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    lab, unl = folder / "labelled.txt", folder / "unlabelled.txt"
    lab.write_text("".join(f"{x}\n" for x in labelled))
    unl.write_text("".join(f"{x.split()[0]}\n" for x in pool))
    return lab, unl


def config_for(spec: dict, root: Path, lists: tuple[Path, Path], run_dir: Path, seed: int, extra: list[str]):
    overrides = [f"data.root={root}", f"data.splits.labelled={lists[0]}", f"data.splits.unlabelled={lists[1]}",
                 f"out_dir={run_dir}", f"train.seed={seed}", *spec["overrides"], *extra]
    return load_config(spec["preset"], overrides)


# -- one round ----------------------------------------------------------------------------------


def train_and_test(config) -> dict:
    start = time.perf_counter()
    run = co2s.train(config, progress=False)
    seconds = time.perf_counter() - start
    metrics = co2s.evaluate_checkpoint(run.latest_checkpoint, split="test", out=Path(config.run_dir),
                                       progress=False, overwrite=True)
    return {"test_mIoU": metrics["mIoU"], "test_IoU": metrics["IoU"], "prediction": metrics["prediction"],
            "predictions": {n: p["mIoU"] for n, p in metrics["predictions"].items()},
            "step": metrics["checkpoint_step"], "train_seconds": round(seconds, 1)}


def tile_errors(checkpoint: Path, data, labelled_list: Path) -> dict[str, float]:
    """Per pool tile (by its unlabelled-list entry), 1 - pixel accuracy of the model over the
    labelled pixels of its mask (``labelled_list``: the pool as a labelled list)."""
    segmenter = co2s.Segmenter.load(checkpoint)
    errors = {}
    for sample in read_split(str(labelled_list), data, labelled=True):
        truth = read_mask(sample.mask).astype(np.int64)
        predicted = segmenter.predict(sample.image, confidence=False).classes
        keep = truth != data.ignore_index
        errors[sample.entry.split()[0]] = float((predicted[keep] != truth[keep]).mean()) if keep.any() else math.nan
    return errors


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        return r

    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else math.nan


def variants_against_error(scores_csv: Path, errors: dict[str, float], add: int) -> dict:
    """Each score variant of scores.csv: Spearman correlation with the tile error, mean error of its
    top ``add`` tiles; and the pool's mean error (what a random pick gets on average)."""
    with open(scores_csv) as f:
        rows = [r for r in csv.DictReader(f) if not math.isnan(errors.get(r["name"], math.nan))]
    out = {"pool_tiles": len(rows), "pool_mean_error": statistics.fmean(errors[r["name"]] for r in rows)}
    for v in VARIANTS:
        if v not in rows[0]:
            continue
        values = [float(r[v]) for r in rows]
        errs = [errors[r["name"]] for r in rows]
        top = sorted(range(len(rows)), key=lambda i: -values[i])[:add]
        out[v] = {"spearman": spearman(values, errs), "top_mean_error": statistics.fmean(errs[i] for i in top)}
    return out


def run_loop(dataset: str, seeds: list[int], rounds: int, work: Path, out: Path, data_dir: Path,
             extra: list[str], add: int | None = None, pool_size: int | None = None) -> None:
    spec = DATASETS[dataset]
    records = out / dataset / "records"
    records.mkdir(parents=True, exist_ok=True)
    root, initial, pool0 = prepare(dataset, work, data_dir)
    if pool_size is not None:  # a smaller pool (seeded), e.g. to try the loop quickly
        pool0 = [pool0[i] for i in sorted(random.Random(0).sample(range(len(pool0)), pool_size))]
    add = add or spec["add"]
    for seed in seeds:
        state = {"suggest": (list(initial), list(pool0)), "random": (list(initial), list(pool0))}
        for r in range(rounds + 1):
            for arm in (["shared"] if r == 0 else ["suggest", "random"]):
                name = f"{arm}_r{r}_s{seed}"
                record_path = records / f"{name}.json"
                run_dir = work / dataset / "runs" / name
                key = "suggest" if arm == "shared" else arm
                labelled, pool = state[key]
                if r > 0:
                    plan_path = records / f"{name}.plan.json"
                    if not plan_path.is_file():  # random picks need no model; suggestions were planned
                        if arm == "suggest":
                            sys.exit(f"{plan_path} is missing: remove the record of the round before to train "
                                     "it again")
                        write_record(plan_path, choose_random(pool, add, seed, r))
                    chosen = set(json.loads(plan_path.read_text())["added"])
                    labelled = labelled + [x for x in pool if x.split()[0] in chosen]
                    pool = [x for x in pool if x.split()[0] not in chosen]
                    state[arm] = (labelled, pool)
                else:
                    state["random"] = (list(labelled), list(pool))
                config = config_for(spec, root, write_lists(work / dataset / "lists" / name, labelled, pool),
                                    run_dir, seed, extra)
                if record_path.is_file():
                    print(f"{name}: recorded", flush=True)
                else:
                    print(f"{name}: training on {len(labelled)} labelled tiles", flush=True)
                    result = train_and_test(config)
                    record = {"dataset": dataset, "arm": arm, "round": r, "seed": seed, "labelled": len(labelled),
                              "pool": len(pool), "git_revision": git_revision(), **result}
                    write_record(record_path, record)
                    print(f"{name}: test mIoU {result['test_mIoU']:.2f} ({result['train_seconds']:.0f} s)", flush=True)
                # the next suggest round's picks, planned at once from this model: the loop then goes
                # on from the records alone (run folders need not outlive a sitting)
                following = records / f"suggest_r{r + 1}_s{seed}.plan.json"
                if arm != "random" and r < rounds and not following.is_file():
                    plan = choose_suggested(run_dir / "latest.ckpt", labelled, pool, add,
                                            work / dataset / f"suggest_r{r + 1}_s{seed}")
                    write_record(following, plan)


def choose_random(pool: list[str], add: int, seed: int, round_: int) -> dict:
    """``add`` tiles of the pool drawn at random (seeded by the seed and round)."""
    picked = random.Random(1000 * seed + round_).sample(range(len(pool)), add)
    return {"added": [pool[i].split()[0] for i in sorted(picked)]}


def choose_suggested(checkpoint: Path, labelled: list[str], pool: list[str], add: int, folder: Path) -> dict:
    """The top ``add`` tiles of ``co2s suggest`` with the model ``checkpoint``, and how each score
    variant fared against the model's error on the pool."""
    if not checkpoint.is_file():
        sys.exit(f"{checkpoint} is missing: its run folder is gone; remove its record to train it again")
    lists = write_lists(folder / "lists", labelled, pool)
    segmenter = co2s.Segmenter.load(checkpoint)
    config = segmenter.training_config.override([f"data.splits.labelled={lists[0]}",
                                                 f"data.splits.unlabelled={lists[1]}"])
    start = time.perf_counter()
    result = co2s.suggest(segmenter, folder / "suggest", config, budget=add, progress=False, overwrite=True)
    seconds = time.perf_counter() - start
    pool_labelled = folder / "lists" / "pool_labelled.txt"
    pool_labelled.write_text("".join(f"{x}\n" for x in pool))
    errors = tile_errors(checkpoint, config.data, pool_labelled)
    added = [s["name"] for s in result["suggestions"]]
    samples = {s.entry: s for s in read_split(str(lists[1]), config.data, labelled=False)}
    assert all(a in samples for a in added), "a suggestion is not in the pool"
    return {"added": added, "suggest_seconds": round(seconds, 1),
            "variants": variants_against_error(folder / "suggest" / "scores.csv", errors, add)}


# -- report -------------------------------------------------------------------------------------


def load_records(out: Path, dataset: str) -> tuple[list[dict], dict[str, dict]]:
    folder = out / dataset / "records"
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*_s*.json")) if ".plan" not in p.name]
    plans = {p.name.removesuffix(".plan.json"): json.loads(p.read_text()) for p in sorted(folder.glob("*.plan.json"))}
    return runs, plans


def added_class_shares(dataset: str, plans: dict[str, dict], work: Path, data_dir: Path) -> dict[str, list[float]]:
    """Per arm, the share of each class among the labelled pixels of every tile it added (all
    rounds and seeds), read from the masks; empty when the data is not here."""
    try:
        root, _, _ = prepare(dataset, work, data_dir)
    except SystemExit:
        return {}
    classes = len(load_config(DATASETS[dataset]["preset"]).data.classes)
    counts = {"suggest": np.zeros(classes), "random": np.zeros(classes)}
    for name, plan in plans.items():
        for entry in plan["added"]:
            mask = (root / entry.replace("images/", "masks/") if "/" in entry else root / "masks" / f"{entry}.png")
            values = read_mask(mask).ravel()
            counts[name.split("_")[0]] += np.bincount(values[values < classes], minlength=classes)
    return {arm: (c / c.sum()).tolist() for arm, c in counts.items() if c.sum()}


def report(out: Path, work: Path = Path("/tmp/co2s_suggest_loop"), data_dir: Path = REPO.parent / "shared" / "data"
           ) -> None:
    lines = ["# Suggest loop: labelling what co2s suggest picks vs labelling at random", "",
             "Written by `python benchmarks/suggest_loop.py --report` from the records beside it.", ""]
    plots = {}
    for dataset in DATASETS:
        runs, plans = load_records(out, dataset)
        if not runs:
            continue
        lines += [f"## {dataset}", "", "| round | labelled | suggest: test mIoU | random: test mIoU | paired gain "
                  "(suggest - random) |", "|---:|---:|---|---|---|"]
        by = {(r["arm"], r["round"], r["seed"]): r for r in runs}
        rounds = sorted({r["round"] for r in runs})
        series = {"suggest": [], "random": []}
        for k in rounds:
            if k == 0:
                shared = [r["test_mIoU"] for r in runs if r["round"] == 0]
                labelled = next(r["labelled"] for r in runs if r["round"] == 0)
                lines.append(f"| 0 | {labelled} | {mean_sd(shared)} | (same runs) | - |")
                for arm in series:
                    series[arm].append((0, shared))
                continue
            s = {r["seed"]: r for r in runs if r["arm"] == "suggest" and r["round"] == k}
            q = {r["seed"]: r for r in runs if r["arm"] == "random" and r["round"] == k}
            gains = [s[i]["test_mIoU"] - q[i]["test_mIoU"] for i in s if i in q]
            labelled = next(iter(s.values()), next(iter(q.values()), {})).get("labelled", "-")
            lines.append(f"| {k} | {labelled} | {mean_sd([r['test_mIoU'] for r in s.values()])} | "
                         f"{mean_sd([r['test_mIoU'] for r in q.values()])} | {mean_sd(gains)} |")
            series["suggest"].append((k, [r["test_mIoU"] for r in s.values()]))
            series["random"].append((k, [r["test_mIoU"] for r in q.values()]))
        plots[dataset] = series
        lines += ["", "Per seed (test mIoU; per class IoU in the records):", "",
                  "| seed | " + " | ".join(f"{a} r{k}" for k in rounds for a in (["shared"] if k == 0 else
                                                                                  ["suggest", "random"])) + " |",
                  "|---:|" + "---:|" * sum(1 if k == 0 else 2 for k in rounds)]
        for seed in sorted({r["seed"] for r in runs}):
            cells = [by.get((a, k, seed)) for k in rounds for a in (["shared"] if k == 0 else ["suggest", "random"])]
            lines.append(f"| {seed} | " + " | ".join("-" if c is None else f"{c['test_mIoU']:.1f}" for c in cells) + " |")
        steps = [p["variants"] for p in plans.values() if "variants" in p]
        if steps:
            lines += ["", f"Score variants over {len(steps)} suggest steps (each the previous model on its pool): "
                      "Spearman correlation of the tile score with the tile's error rate, and the mean error of "
                      "the tiles each variant would add, against the pool's mean error (a random pick's "
                      "expectation):", "", "| variant | Spearman rho | error of its picks | pool mean error |",
                      "|---|---|---|---|"]
            pool_error = [100 * s["pool_mean_error"] for s in steps]
            for v in VARIANTS:
                got = [s[v] for s in steps if v in s]
                if got:
                    lines.append(f"| {v} | {mean_sd([g['spearman'] for g in got], 2)} | "
                                 f"{mean_sd([100 * g['top_mean_error'] for g in got])} % | {mean_sd(pool_error)} % |")
        last = max(rounds)
        if last > 0:
            names = list(runs[0]["test_IoU"])
            lines += ["", f"Test IoU per class after round {last} (mean over seeds):", "",
                      "| arm | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
            for arm in ("suggest", "random"):
                got = [r["test_IoU"] for r in runs if r["arm"] == arm and r["round"] == last]
                if got:
                    lines.append(f"| {arm} (n={len(got)}) | " + " | ".join(
                        f"{statistics.fmean(g[c] for g in got):.1f}" for c in names) + " |")
        shares = added_class_shares(dataset, plans, work, data_dir)
        if shares:
            names = load_config(DATASETS[dataset]["preset"]).data.classes
            lines += ["", "Classes of the labelled pixels each arm added (all rounds and seeds, from the masks):", "",
                      "| arm | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
            for arm, share in shares.items():
                lines.append(f"| {arm} | " + " | ".join(f"{100 * v:.1f} %" for v in share) + " |")
        seconds = [r["train_seconds"] for r in runs]
        lines += ["", f"{len(runs)} runs, {sum(seconds) / 60:.0f} min of training "
                  f"({statistics.fmean(seconds):.0f} s per run).", ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'co2s[report]')")
        return
    if plots:
        fig, axes = plt.subplots(1, len(plots), figsize=(5 * len(plots), 3.6), squeeze=False)
        for ax, (dataset, series) in zip(axes[0], plots.items()):
            for arm, colour in (("suggest", "tab:red"), ("random", "tab:blue")):
                xs = [k for k, v in series[arm] if v]
                means = [statistics.fmean(v) for _, v in series[arm] if v]
                sds = [statistics.stdev(v) if len(v) > 1 else 0 for _, v in series[arm] if v]
                ax.errorbar(xs, means, yerr=sds, label=arm, color=colour, marker="o", capsize=3)
                for k, v in series[arm]:
                    ax.scatter([k] * len(v), v, color=colour, s=8, alpha=0.4)
            ax.set_title(dataset)
            ax.set_xlabel("round (tiles added each round)")
            ax.set_ylabel("test mIoU (%)")
            ax.set_xticks(sorted({k for k, _ in series["suggest"]}))
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "suggest_loop.png", dpi=110)
    print(f"written {out / 'results.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/co2s_suggest_loop"),
                        help="run folders and lists (not committed)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--add", type=int, help="tiles added per round (default: the dataset's)")
    parser.add_argument("--pool-size", type=int, help="rank a seeded subset of the pool (default: all of it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="more config overrides for every run (e.g. a GPU's size)")
    parser.add_argument("--report", action="store_true", help="only write results.md and the plot")
    args = parser.parse_args()
    if not args.report:
        if not args.dataset:
            parser.error("give --dataset (or --report)")
        run_loop(args.dataset, args.seeds, args.rounds, args.work, args.out, args.data, args.overrides, args.add,
                 args.pool_size)
    report(args.out, args.work, args.data)


if __name__ == "__main__":
    main()
