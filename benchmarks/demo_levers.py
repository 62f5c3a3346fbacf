"""Demo levers: which settings make Co2S's semi-supervised machinery act on the demo's small data.

On the synthetic demo data (``co2s.demo.write_demo_dataset``, seed 0: 16 labelled, 96 unlabelled,
16 val, 24 test tiles of 128 px, 6 classes) each configuration below (overrides of the ``demo``
preset) trains for its own fixed number of iterations, chosen so that comparable configurations
cost about the same on 2 idle cores (``--iters N`` gives all the same N; ``--budget-s S``
calibrates the iterations to S training seconds from timed steps instead). The run uses the real
engine and is scored at its last step on the test split (as ``co2s demo`` scores both its runs).

For the diagnostics only, the unlabelled list is rewritten with its masks (the demo writes a mask
for every tile): masks in an unlabelled list never reach a loss, they only feed the logged
``NAME/pseudo_label_acc`` and ``NAME/pseudo_label_acc_confident``.

Recorded per configuration (``benchmarks/results/demo_levers.json``): iterations, burn-in
iterations, training seconds; per student the confident-pixel ratio, the pseudo-label accuracy of
all and of the confident pixels, L_sta and the first strong-view term, each averaged over the last
quarter of the run (over the semi-supervised part only when that is shorter; for supervised-only
runs the same diagnostics of the weak-view predictions, which no loss uses), and the confident
ratio at the end of the burn-in; the teaching shares; test mIoU and per-class IoU of each student
and of both fusions.

    python benchmarks/demo_levers.py                          # every configuration (~1 h on 2 cores)
    python benchmarks/demo_levers.py --configs cnn8-burnin    # some of them (results are merged)
    python benchmarks/demo_levers.py --configs cnn8-sup cnn8-burnin --seed 1   # another seed
    python benchmarks/demo_levers.py --report                 # the markdown table of the JSON

Timings are wall-clock on whatever else the machine runs; the JSON says how many CPU threads
torch used.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's code

import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from co2s.api import train  # noqa: E402
from co2s.config.loader import load_config  # noqa: E402
from co2s.demo.synthetic import write_demo_dataset  # noqa: E402
from co2s.engine.metrics_log import read_log  # noqa: E402
from co2s.data.module import data_module  # noqa: E402
from co2s.engine.trainer import LogWindow, make_fabric, train_step, training_batches  # noqa: E402
from co2s.evaluation.run import evaluate_checkpoint  # noqa: E402
from co2s.methods import Schedule, build_method  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "demo_levers.json"

# -- the students ---------------------------------------------------------------------------------
#: tiny random-weight CLIP ViT (4 blocks, width 64) with random text prototypes; ``patch`` 16 or 8
def clip(patch: int = 16, lr_mult: float = 1.0, **extra) -> dict:
    return {"name": "clip", "guidance": "text", "text": {"prototypes": "random"},
            "backbone": {"kind": "clip", "arch": {"base": "tiny", "vision_config": {"patch_size": patch}},
                         "skips": "value", "tune": "full", "lr_mult": lr_mult}, **extra}


def dino(patch: int = 16, lr_mult: float = 1.0, **extra) -> dict:
    return {"name": "dino", "guidance": "queries",
            "backbone": {"kind": "dinov3", "arch": {"base": "tiny", "patch_size": patch}, "tune": "full",
                         "lr_mult": lr_mult}, **extra}


def cnn(lr_mult: float = 10.0, arch: str | dict = "tiny", **extra) -> dict:
    return {"name": "cnn", "guidance": "queries",
            "backbone": {"kind": "cnn", "arch": arch, "tune": "full", "lr_mult": lr_mult}, **extra}


def students(*items: dict) -> dict:
    return {"model": {"name": "students", "students": list(items)}}


# -- the configurations (overrides of the demo preset) --------------------------------------------
#: the CNN student the demo uses: output stride 8 (last stage dilated), narrow VLG head, queries x10
CNN8 = {"arch": {"base": "tiny", "strides": [2, 2, 1]}, "queries_lr_mult": 10.0, "head_width": 32}
PAIR16 = students(clip(16, 10.0, head_width=32), cnn(**CNN8))
PAIR = students(clip(8, 10.0, head_width=32), cnn(**CNN8))  # the demo's pair (models/co2s-cpu)
WARM = {"train.warmup_iters": 20}

#: the demo before this study: models/co2s-tiny, no warm-up, no burn-in, tau 0.8
TINY = {**students(clip(16, 1.0), dino(16, 1.0)), "train.warmup_iters": 0, "train.semi.burn_in": 0.0}

CONFIGS: dict[str, dict] = {
    "tiny": {"about": "the demo before: co2s-tiny pair (CLIP + DINOv3 ViTs, patch 16, backbones lr x1), tau 0.8",
             "iters": 200, "set": TINY},
    "tiny-burnin": {"about": "tiny + burn_in 0.6", "iters": 300, "set": {**TINY, "train.semi.burn_in": 0.6}},
    "tiny-lr10-burnin": {"about": "tiny pair, backbones lr x10, warm-up 20, burn_in 0.6", "iters": 300,
                         "set": {**students(clip(16, 10.0), dino(16, 10.0)), **WARM, "train.semi.burn_in": 0.6}},
    "tiny-p8-burnin": {"about": "tiny pair at patch 8, lr x10, warm-up 20, burn_in 0.6", "iters": 120,
                       "set": {**students(clip(8, 10.0), dino(8, 10.0)), **WARM, "train.semi.burn_in": 0.6}},
    "cnn16-vlg128-burnin": {"about": "CLIP p16 (text) + CNN tiny at 1/16 (queries), paper-width VLG heads, lr x10, "
                                     "warm-up 20, burn_in 0.6", "iters": 300,
                            "set": {**students(clip(16, 10.0), cnn(queries_lr_mult=10.0)), **WARM,
                                    "train.semi.burn_in": 0.6}},
    "clip16-cnn8-sup": {"about": "CLIP p16 (text) + CNN 1/8 (queries), VLG width 32, lr x10, warm-up 20, "
                                 "supervised only (burn_in 1.0)", "iters": 600,
                        "set": {**PAIR16, **WARM, "train.semi.burn_in": 1.0}},
    "clip16-cnn8-burnin": {"about": "clip16-cnn8 with burn_in 0.7, tau 0.8", "iters": 600,
                           "set": {**PAIR16, **WARM, "train.semi.burn_in": 0.7}},
    "cnn8-sup": {"about": "the demo pair (CLIP p8 text + CNN 1/8 queries, VLG width 32), supervised only "
                          "(burn_in 1.0)", "iters": 600, "set": {**PAIR, **WARM, "train.semi.burn_in": 1.0}},
    "cnn8": {"about": "the demo pair, no burn-in (the paper's schedule), tau 0.8", "iters": 250,
             "set": {**PAIR, **WARM, "train.semi.burn_in": 0.0}},
    "cnn8-burnin": {"about": "the demo pair, burn_in 0.7, tau 0.8", "iters": 600,
                    "set": {**PAIR, **WARM, "train.semi.burn_in": 0.7}},
    "cnn8-burnin50": {"about": "the demo pair, burn_in 0.5, tau 0.8", "iters": 600,
                      "set": {**PAIR, **WARM, "train.semi.burn_in": 0.5}},
    "cnn8-burnin-tau95": {"about": "cnn8-burnin at tau 0.95 (the paper's)", "iters": 600,
                          "set": {**PAIR, **WARM, "train.semi.burn_in": 0.7, "train.semi.tau": 0.95}},
    "cnn8-burnin-tau5": {"about": "cnn8-burnin at tau 0.5", "iters": 600,
                         "set": {**PAIR, **WARM, "train.semi.burn_in": 0.7, "train.semi.tau": 0.5}},
    "cnndl-burnin": {"about": "CLIP p16 (text, VLG) + CNN 1/16 with DeepLabV3+ (no guidance, width 64), burn_in 0.7",
                     "iters": 600, "set": {**students(clip(16, 10.0, head_width=32),
                                                      cnn(guidance="none", head="deeplabv3plus", head_width=64)),
                                           **WARM, "train.semi.burn_in": 0.7}},
    "lite_unet-sup": {"about": "reference: the built-in CNN, supervised, lr 0.003", "iters": 600,
                      "set": {"model": {"name": "lite_unet", "width": 16}, "train.method": "supervised",
                              "train.lr": 0.003}},
}


def demo_data(root: Path) -> Path:
    """The demo dataset and a copy of its unlabelled list with masks (diagnostics only)."""
    dataset = write_demo_dataset(root, seed=0)
    lines = dataset.unlabelled.read_text().splitlines()
    with_masks = [f"{line} {line.replace('images/', 'masks/')}" for line in lines]
    (root / "splits" / "unlabelled_masks.txt").write_text("\n".join(with_masks) + "\n")
    return root


def base_config(name: str, data: Path, run_dir: Path, iters: int, seed: int = 0):
    spec = CONFIGS[name]["set"]
    config = load_config("demo", {"data.root": str(data), "data.splits.unlabelled": "splits/unlabelled_masks.txt",
                                  "out_dir": str(run_dir), "train.seed": seed, "train.iters": iters,
                                  "train.val_every": iters, "train.ckpt_every": iters,
                                  "train.log_every": 10, "train.crop_size": 128})  # the recorded runs' crop
    return config.override(spec)


def step_seconds(config, burn_in: bool, steps: int = 4) -> float:
    """Seconds of one training step (data included): the fastest of ``steps`` after one warm-up
    step, so that other load on the machine inflates the estimate as little as possible."""
    over = {"train.iters": 10_000}
    if config.train.method != "supervised":
        over["train.semi.burn_in"] = 1.0 if burn_in else 0.0
    config = config.override(over)
    fabric = make_fabric(config)
    fabric.seed_everything(0, verbose=False)
    method = build_method(config)
    method.setup(fabric)
    data = data_module(config.data, config.in_channels, report=False)
    crops, pairs = data.setup_training(config.train, method.uses_unlabelled).train_datasets(config.train)
    b = config.train.batch_size
    counter = itertools.count()

    def batches():
        while True:
            i = next(counter)
            x = default_collate([crops[(j % len(crops), j)] for j in range(i * b, i * b + b)])
            u = (default_collate([pairs[(j % len(pairs), j)] for j in range(i * b, i * b + b)])
                 if pairs is not None else None)
            yield next(training_batches([x], [u] if u is not None else None))

    stream, window, times, schedule = batches(), LogWindow(), [], Schedule.for_run(config, 10_000)
    for m in method.modules.values():
        m.train()
    with method.running():  # as the trainer runs steps (on a CPU the students in parallel threads)
        for step in range(steps + 1):
            start = time.perf_counter()
            train_step(fabric, method, stream, step, schedule, window)
            times.append(time.perf_counter() - start)
    return min(times[1:])


def effective(config) -> dict:
    """The settings that differ between configurations, as the run used them."""
    t, m = config.train, config.model
    models = ([{"name": s.name, "kind": s.backbone.kind, "arch": s.backbone.arch, "guidance": s.guidance,
                "head": s.head, "head_width": s.head_width, "lr_mult": s.backbone.lr_mult,
                "queries_lr_mult": s.queries_lr_mult} for s in m.students] if m.name == "students"
              else [{"name": m.name, "width": m.width}])
    return {"method": t.method, "lr": t.lr, "warmup_iters": t.warmup_iters, "batch_size": t.batch_size,
            "crop_size": t.crop_size, "tau": t.semi.tau, "burn_in": t.semi.burn_in, "models": models}


def _tail_mean(records: list[dict], key: str, since: int) -> float | None:
    values = [r[key] for r in records if r.get("kind") == "train" and r["step"] > since and key in r]
    return round(statistics.fmean(values), 4) if values else None


def run_config(name: str, data: Path, work: Path, budget_s: float | None, iters: int | None, seed: int = 0) -> dict:
    run_dir = work / (name if not seed else f"{name}-seed{seed}")
    if iters is None and not budget_s:
        iters, calibration = CONFIGS[name]["iters"], None
    elif iters is None:
        probe = base_config(name, data, run_dir, 100)
        t_full = 0.0 if probe.train.method == "supervised" else step_seconds(probe, burn_in=False)
        t_burn = step_seconds(probe, burn_in=True)
        f = probe.train.semi.burn_in if probe.train.method != "supervised" else 1.0
        per_step = f * t_burn + (1 - f) * t_full
        iters = max(20, int(budget_s / per_step) // 10 * 10)
        calibration = {"s_per_supervised_step": round(t_burn, 3), "s_per_full_step": round(t_full, 3)}
    else:
        calibration = None
    config = base_config(name, data, run_dir, iters, seed)
    print(f"{name}: {CONFIGS[name]['about']}; {iters} iterations, seed {seed}", flush=True)
    start = time.perf_counter()
    run = train(config, progress=False)
    seconds = time.perf_counter() - start
    metrics = evaluate_checkpoint(run.latest_checkpoint, split="test", progress=False,
                                  out=run_dir / "test_metrics.json", overwrite=True)
    records = read_log(run_dir / "metrics.jsonl")
    semi = config.train.method != "supervised"
    burn = round(config.train.semi.burn_in * iters) if semi else iters
    since = max(burn, iters - iters // 4) if burn < iters else iters - iters // 4
    names = [s.name for s in config.model.students] if config.model.name == "students" else []
    per_student = {}
    for s in names if semi else []:
        at_burn_end = [r for r in records if r.get("kind") == "train" and r["step"] <= max(burn, 10)]
        per_student[s] = {
            "confident_ratio": _tail_mean(records, f"{s}/confident_ratio", since),
            "confident_ratio_end_of_burn_in": (round(at_burn_end[-1].get(f"{s}/confident_ratio", 0.0), 4)
                                               if at_burn_end and 0 < burn < iters else None),
            "pseudo_label_acc": _tail_mean(records, f"{s}/pseudo_label_acc", since),
            "pseudo_label_acc_confident": _tail_mean(records, f"{s}/pseudo_label_acc_confident", since),
            "sta": _tail_mean(records, f"{s}/sta", since),
            "unsup_s1": _tail_mean(records, f"{s}/s1", since),
        }
    shares = {k: _tail_mean(records, k, since) for k in ("no_teaching", *[f"{s}_teaches" for s in names])} \
        if len(names) == 2 else {}
    test = {pred: {"mIoU": round(r["mIoU"], 2), "IoU": {c: round(v, 2) for c, v in r["IoU"].items()}}
            for pred, r in metrics["predictions"].items()}
    return {
        "about": CONFIGS[name]["about"], "overrides": CONFIGS[name]["set"], "effective": effective(config),
        "seed": seed, "iters": iters,
        "burn_in_iters": burn if semi else None, "tau": config.train.semi.tau if semi else None,
        "calibration": calibration, "train_seconds": round(seconds, 1), "best": run.best,
        "students": per_student, "teaching_shares_last_quarter": shares,
        "test_prediction": metrics["prediction"], "test": test,
    }


def report(results: dict) -> str:
    rows = ["| configuration | iters (burn-in) | train s | confident ratio | pseudo-label acc (confident) "
            "| test mIoU per student | fused (conf.) | road / building IoU (fused) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        studs = r["students"]
        conf = " / ".join(f"{s} {v['confident_ratio']:.2f}" for s, v in studs.items()
                          if v["confident_ratio"] is not None) or "-"
        acc = " / ".join(f"{s} {v['pseudo_label_acc_confident']:.2f}" for s, v in studs.items()
                         if v["pseudo_label_acc_confident"] is not None) or "-"
        main = r["test_prediction"]
        per = " / ".join(f"{p} {t['mIoU']:.1f}" for p, t in r["test"].items() if p not in ("mean", "confidence"))
        fused = r["test"].get("confidence", r["test"][main])
        iou = fused["IoU"]
        burn = f" ({r['burn_in_iters']})" if r["burn_in_iters"] else ""
        rows.append(f"| {name} | {r['iters']}{burn} | {r['train_seconds']:.0f} | {conf} | {acc} | {per} | "
                    f"{fused['mIoU']:.1f} | {iou.get('road', 0):.1f} / {iou.get('building', 0):.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--budget-s", type=float, default=None,
                        help="calibrate the iterations to this many training seconds instead of each "
                        "configuration's own iterations")
    parser.add_argument("--iters", type=int, default=None, help="the same iterations for every configuration")
    parser.add_argument("--seed", type=int, default=0, help="training seed (results keyed NAME-seedN when not 0)")
    parser.add_argument("--data", default=None, help="demo data folder (default: a temporary one)")
    parser.add_argument("--work", default=None, help="run folders (default: a temporary one)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--report", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    if args.report:
        print(report(results))
        return
    tmp = Path(tempfile.mkdtemp(prefix="demo_levers_"))
    data = demo_data(Path(args.data) if args.data else tmp / "data")
    work = Path(args.work) if args.work else tmp / "runs"
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "budget_s": args.budget_s, "fixed_iters": args.iters}
    for name in args.configs:
        key = name if not args.seed else f"{name}-seed{args.seed}"
        results["runs"][key] = run_config(name, data, work, args.budget_s, args.iters, args.seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(report({"runs": {key: results["runs"][key]}}).splitlines()[-1], flush=True)
    print(report(results))


if __name__ == "__main__":
    main()
