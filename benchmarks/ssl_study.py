"""Semi-supervised study on real data (AI4Mars MSL): every method at equal budget, seeds, fusions.

For each labelled fraction and seed it writes a seeded split of ``train.txt`` (labelled part, the
rest unlabelled), trains every method with the same iterations, batch, crop, learning rate and
student architectures, selects the checkpoint on a fixed subset of ``val.txt`` and scores it on
``test_gold.txt``. With the default students (``models/co2s-cpu-mars``: a CLIP ViT with text
prototypes, ``clip``, and the CNN with learnable queries, ``cnn``; the pair both of whose students
learn AI4Mars, with a 200-iteration warm-up and gradients clipped to norm 1) the methods
(``--methods``) are:

    supervised-clip  supervised-cnn         labelled images only, each student architecture
    fixmatch-cnn                             one CutMixed strong view (the stronger student)
    unimatch-clip    unimatch-cnn            two strong views + feature perturbation
    co2s                                     both students, L_sta with the student's gradient
    co2s-detached                            the authors' released code: L_sta detached

Two-student runs are scored per student and per fusion (mean, confidence). Every semi-supervised
run shares the supervised burn-in (``--burn-in``, a fraction of ``--iters``) and the threshold.
Each run is a ``co2s train`` + ``co2s evaluate`` subprocess in its own run folder, so an
interrupted study resumes where it stopped (unfinished runs resume from ``latest.ckpt``). A
finished run leaves a small record in ``--out``/records (committed with the results; run folders
are not), and a recorded run is never trained again: a study too long for one sitting goes on in
a fresh clone of the repository. The unlabelled lists carry their masks: those never reach a loss, they only
feed the logged pseudo-label accuracy (of all and of the confident pixels).

Outputs in ``--out``: ``results.json`` (every run: config, seed, per-class IoU, mIoU per student
and fusion, best validation, time, training curves), ``results.md`` (mean +- spread over seeds,
per-class IoU, each gap to the supervised run of the same student against the seed spread, the
pseudo-label diagnostics and teaching shares), and plots ``miou_vs_fraction.png`` and
``co2s_training.png`` (pseudo-label accuracy, confident ratio, teaching shares over training).

    python benchmarks/ssl_study.py --jobs 2                     # the CPU size (see docs/benchmarks.md)
    python benchmarks/ssl_study.py --report-only                 # tables and plots from finished runs
    python benchmarks/ssl_study.py --students models/co2s-vitb16 --crop 512 --batch 4 --burn-in 0 \
        --iters 20000 --lr 2e-5 --tau 0.95 --val-every 2000 --threads 0 --set engine.precision=bf16-mixed

The default size (CPU students without pretrained weights, crop 128, 3000 iterations of 8 + 8
images) is the smallest at which a random-init CNN learns AI4Mars (docs/benchmarks.md, section 1):
on a 2-core CPU it is about 12-16 hours of runs, so it is meant to go on across sittings (or run on a
GPU, which ``engine.accelerator: auto`` picks). At 500 iterations of 2 images the students stay at the
class-prior loss. The paper's students need a GPU and their pretrained weights
(``models/co2s-vitb16``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

from co2s.config.loader import config_to_dict, load_config
from co2s.config.schema import best_on_validation
from co2s.data.sources import read_split
from co2s.data.splits import make_splits, ratio_tag
from co2s.models.loading import portable_config
from co2s.engine.metrics_log import read_log
from co2s.engine.run_dir import fork_at_burn_in
from co2s.models.loading import read_checkpoint
from co2s.run_folder import RunFolder
from study_records import git_revision, parse_until, run_sitting, write_record

REPO = Path(__file__).resolve().parents[1]


def _recorded(path: Path) -> str:
    """A path as results record it: relative to the repository (no machine's absolute paths)."""
    path = Path(path).resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name

#: method name -> train.method, students ({a}: the preset's first student, {b}: its second), semi
#: overrides. Names are resolved against the students preset (co2s-cpu: clip and cnn).
METHODS = {
    "supervised-{a}": ("supervised", ["{a}"], {}),
    "supervised-{b}": ("supervised", ["{b}"], {}),
    "fixmatch-{b}": ("fixmatch", ["{b}"], {}),
    "unimatch-{a}": ("unimatch", ["{a}"], {}),
    "unimatch-{b}": ("unimatch", ["{b}"], {}),
    "co2s": ("co2s", ["{a}", "{b}"], {"stability_gradient": True}),
    "co2s-detached": ("co2s", ["{a}", "{b}"], {"stability_gradient": False}),
}
#: beside the comparison the study is for (each student supervised and with UniMatch, Co2S with and
#: without the stability gradient): a sitting starts them only when no run of that comparison is left
EXTRAS = {"fixmatch-{b}"}
#: method -> the method whose burn-in is its own: the same students and config but for what acts only
#: after the burn-in, so it continues from that run's burn_in.ckpt (engine.run_dir.fork_at_burn_in)
#: instead of repeating the same computation; when that run has none yet it trains from step 0
FORKS = {"co2s-detached": "co2s"}
#: what a two-student run's validation selects best.ckpt by, unless --set eval.prediction says
#: otherwise: the package default when the study began. Pinned here so that a default set from this
#: study's evidence (eval.prediction auto, co2s.config.schema) cannot change how its remaining runs are chosen
SELECTED_BY = "confidence"
PREDICTION_KINDS = ("{a}", "{b}", "mean", "confidence")  # of a two-student run, in table order
CURVE_KEYS = ("{a}/pseudo_label_acc", "{b}/pseudo_label_acc", "{a}/pseudo_label_acc_confident",
              "{b}/pseudo_label_acc_confident", "{a}/confident_ratio", "{b}/confident_ratio",
              "{a}_teaches", "{b}_teaches", "no_teaching", "burn_in",
              "pseudo_label_acc", "pseudo_label_acc_confident", "confident_ratio")


class Names:
    """The study's method, prediction and curve names for one students preset (first, second)."""

    def __init__(self, a: str, b: str) -> None:
        self.a, self.b = a, b
        self.methods = {self.name(k): (m, [self.name(x) for x in st], semi) for k, (m, st, semi) in METHODS.items()}
        self.predictions = tuple(self.name(k) for k in PREDICTION_KINDS)
        self.curve_keys = tuple(self.name(k) for k in CURVE_KEYS)

    def name(self, template: str) -> str:
        return template.format(a=self.a, b=self.b)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("CO2S_DATA_DIR", str(REPO.parent / "shared/data"))
                   + "/ai4mars-msl-256", help="the AI4Mars MSL folder (default: ../shared/data/ai4mars-msl-256)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/ssl_study_v3"))
    p.add_argument("--fractions", nargs="+", default=["1/16", "1/8"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", help="default: all (names with the preset's student names, e.g. "
                   "supervised-clip supervised-cnn fixmatch-cnn unimatch-clip unimatch-cnn co2s co2s-detached)")
    p.add_argument("--students", default="models/co2s-cpu-mars", help="model preset with two students")
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--burn-in", type=float, default=0.6,
                   help="supervised burn-in of the semi-supervised runs, fraction of iters (0: the paper)")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up iterations (train.warmup_iters)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="train.grad_clip (0: none)")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="labelled (and unlabelled) images per step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tau", type=float, default=0.8, help="pseudo-label confidence threshold")
    p.add_argument("--val-every", type=int, help="default: 0.8 x iters, so that every run chooses between its "
                   "checkpoints at 80 %% and 100 %% of training, after the burn-in")
    p.add_argument("--val-images", type=int, default=300, help="fixed subset: the first N of val.txt "
                   "(300: about 20 s per validation on 2 cores)")
    p.add_argument("--eval-window", type=int, default=256, help="test window (256 = whole AI4Mars image)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any further config override, applied to every run (e.g. engine.precision=bf16-mixed)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's default)")
    p.add_argument("--until", help="start only runs expected to end by then (HH:MM today, or an ISO date-time; "
                   "expected from the recorded wall times of each method): a machine that goes away at a known "
                   "time loses no run half done")
    p.add_argument("--report-only", action="store_true", help="only collect finished runs into tables/plots")
    return p.parse_args(argv)


def base_config(args) -> dict:
    """The shared config of every run, resolved from the presets into one explicit dict."""
    data = Path(args.data)
    if not (data / "splits/train.txt").is_file():
        sys.exit(f"AI4Mars data not found at {data} (give --data or CO2S_DATA_DIR); see ../shared/data/README")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"preset": ["ai4mars", args.students]}, f)
    try:
        config = load_config(f.name, [
            # each run sets its own method and labelled/unlabelled lists (run_config)
            f"data.root={data}", "data.validate_files=exists", "train.method=co2s",
            "data.splits.unlabelled=splits/train.txt",
            f"train.crop_size={args.crop}", f"train.batch_size={args.batch}", f"train.iters={args.iters}",
            f"train.lr={args.lr}", f"train.semi.tau={args.tau}", f"train.semi.burn_in={args.burn_in}",
            f"train.warmup_iters={args.warmup}",
            f"train.grad_clip={args.grad_clip or 'null'}",
            f"train.val_every={args.val_every or max(1, args.iters * 4 // 5)}",
            f"train.val_max_images={args.val_images}", "train.log_every=10", "train.num_workers=0",
            f"eval.window={args.eval_window}", *args.overrides,
        ])
    finally:
        os.unlink(f.name)
    return config_to_dict(config)


def study_names(base: dict) -> Names:
    students = [s["name"] for s in base["model"]["students"]]
    if len(students) != 2:
        sys.exit(f"the students preset needs two students; it has {students}")
    return Names(*students)


def run_config(base: dict, names: Names, method: str, split_dir: Path, seed: int) -> dict:
    train_method, students, semi = names.methods[method]
    cfg = json.loads(json.dumps(base))  # deep copy
    by_name = {s["name"]: s for s in cfg["model"]["students"]}
    missing = [n for n in students if n not in by_name]
    if missing:
        sys.exit(f"the students preset has no student named {missing}; it has {sorted(by_name)}")
    cfg["model"]["students"] = [by_name[n] for n in students]
    cfg["name"] = f"{method}-{split_dir.name}"
    cfg["data"]["splits"]["labelled"] = str(split_dir / "labelled.txt")
    cfg["data"]["splits"]["unlabelled"] = str(split_dir / "unlabelled.txt")
    cfg["train"]["method"] = train_method
    cfg["train"]["seed"] = seed
    cfg["train"]["semi"].update(semi)
    if len(students) == 2 and cfg["eval"].get("prediction") is None:
        cfg["eval"]["prediction"] = SELECTED_BY
    return cfg


def write_splits(base: dict, fractions: list[str], seeds: list[int], out: Path) -> dict[tuple, Path]:
    """Seeded labelled/unlabelled lists of train.txt per (fraction, seed); the split seed is the run seed."""
    config = load_config_dict(base)
    samples = read_split(config.data.splits.train, config.data, labelled=False, name="train")
    dirs = {}
    for fraction in fractions:
        for seed in seeds:
            d = out / "splits" / f"{ratio_tag(fraction)}_seed{seed}"
            if not (d / "split.json").is_file():
                make_splits(samples, fraction, seed, d, source=str(config.data.splits.train))
            dirs[fraction, seed] = d
    return dirs


def load_config_dict(raw: dict):
    from co2s.config.loader import validate

    return validate(raw, "study config")


def execute(run_dir: Path, cfg: dict, threads: int, fork_from: Path | None = None) -> dict:
    """Train (or resume) and evaluate one run in subprocesses; returns its record. ``fork_from``:
    a run folder whose burn-in this run shares (:data:`FORKS`): it starts from its end."""
    done = run_dir / "study_run.json"
    if done.is_file():
        return json.loads(done.read_text())
    forked, fork_note = {}, run_dir / "study_fork.json"
    if fork_note.is_file():  # forked before an interruption
        forked = json.loads(fork_note.read_text())
    elif fork_from is not None and RunFolder(fork_from).burn_in.is_file():
        step = read_checkpoint(RunFolder(fork_from).burn_in)["step"]
        if fork_at_burn_in(fork_from, run_dir, step):
            forked = {"forked_from": _recorded(fork_from), "fork_step": step}
            fork_note.write_text(json.dumps(forked))
    run_dir.mkdir(parents=True, exist_ok=True)
    # where this sitting starts: 0, the fork, or a resumed checkpoint (then the times below are of
    # part of the run, and do not tell what a whole run costs)
    start_step = read_checkpoint(RunFolder(run_dir).latest)["step"] if RunFolder(run_dir).latest.is_file() else 0
    cfg_path = run_dir.parent / f"{run_dir.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cli = [sys.executable, "-m", "co2s.cli.main"]
    log = (run_dir.parent / f"{run_dir.name}.log").open("a")
    t0 = time.time()
    steps = [
        [*cli, "train", str(cfg_path), "--out", str(run_dir), "--no-progress"],
        [*cli, "evaluate", "--checkpoint", str(run_dir / "best.ckpt"), "--split", "test",
         "--out", str(run_dir / "test_metrics.json"), "--overwrite", "--no-progress"],
    ]
    times = []
    for command in steps:
        start = time.time()
        proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        times.append(time.time() - start)
        if proc.returncode:
            return {"run_dir": _recorded(run_dir), "error": f"{command[3]} exited {proc.returncode}; see {log.name}"}
    record = {"run_dir": _recorded(run_dir), "train_s": round(times[0], 1), "evaluate_s": round(times[1], 1),
              "wall_s": round(time.time() - t0, 1), "git_revision": git_revision(), "start_step": start_step,
              **forked}  # a forked run's times are of its steps after the fork
    write_record(done, record)
    return record


def expected_seconds(records: list[dict], method: str, forked: bool, source: str | None) -> float | None:
    """What a run of ``method`` is expected to take: the longest whole recorded run of it (forked
    ones when it will fork, with ``source`` the method it forks from), 10 % more. A run that trains
    from step 0 costs what its source costs. Runs recorded after a resume time part of a run and do
    not count; with no whole run of the method recorded, the longest of any method (conservative)."""
    def walls(m: str, fork: bool) -> list[float]:
        return [r["timing"]["wall_s"] for r in records if r.get("status") == "done" and r["method"] == m
                and ("fork_step" in r["timing"]) == fork
                # (records from before start_step was kept began at 0, or at their fork)
                and r["timing"].get("start_step", r["timing"].get("fork_step", 0)) == r["timing"].get("fork_step", 0)]
    found = walls(method, forked) or (walls(source, False) if source and not forked else [])
    if not found:
        found = [r["timing"]["wall_s"] for r in records if r.get("status") == "done"
                 and "fork_step" not in r["timing"] and not r["timing"].get("start_step")]
    return 1.1 * max(found) if found else None


def collect(run_dir: Path, names: Names, method: str, fraction: str, seed: int) -> dict:
    """Everything the report needs from a finished run folder."""
    record = {"method": method, "fraction": fraction, "seed": seed, "run_dir": _recorded(run_dir)}
    status = run_dir / "study_run.json"
    if not status.is_file():
        return {**record, "status": "missing"}
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    log = read_log(run_dir / "metrics.jsonl")
    vals = [r for r in log if r["kind"] == "val"]
    best = max(vals, key=lambda r: r["mIoU"]) if vals else None
    record.update(
        status="done",
        timing=json.loads(status.read_text()),
        # the revisions the trainer ran (one per start and resume): the study process's own revision
        # is of its start, and a long study outlives commits
        trained_at=sorted({r["git_revision"][:7] for r in map(json.loads, (run_dir / "run_info.jsonl").open())
                           if r.get("git_revision")}) if (run_dir / "run_info.jsonl").is_file() else None,
        config=portable_config(yaml.safe_load((run_dir / "config.yaml").read_text())),  # no machine paths
        test={name: {"mIoU": p["mIoU"], "OA": p["OA"], "IoU": p["IoU"]}
              for name, p in metrics["predictions"].items()},
        test_prediction=metrics["prediction"],
        checkpoint_step=metrics["checkpoint_step"],
        best_val={"step": best["step"], "mIoU": best["mIoU"]} if best else None,
        val_seconds=[r["seconds"] for r in vals if "seconds" in r],  # the cost of checkpoint selection
        # every validation's score of each prediction (students, fusions): the evidence for the
        # default prediction, chosen on validation data only
        val=[{"step": r["step"], **{k.split("/", 1)[1]: r[k] for k in r if k.startswith("mIoU/")}} for r in vals],
        curve=[{"step": r["step"], **{k: r[k] for k in names.curve_keys if k in r}}
               for r in log if r["kind"] == "train"],
    )
    return record


def rows(records: list[dict], names: Names) -> list[tuple[str, str, str]]:
    """(row label, method, prediction) in table order: single-student runs, then each prediction of co2s."""
    out = []
    for method in names.methods:
        found = [r for r in records if r["method"] == method and r["status"] == "done"]
        if not found:
            continue
        preds = [p for p in names.predictions if p in found[0]["test"]]
        if len(found[0]["test"]) == 1:
            out.append((method, method, next(iter(found[0]["test"]))))
        else:
            out += [(f"{method} ({p}{' fusion' if p in ('mean', 'confidence') else ''})", method, p) for p in preds]
    return out


def cell(records, method, prediction, fraction, key=("mIoU",)) -> list[float]:
    """One value per finished seed, in seed order."""
    values = []
    for r in sorted(records, key=lambda r: r["seed"]):
        if r["method"] == method and r["fraction"] == fraction and r["status"] == "done":
            v = r["test"][prediction]
            for k in key:
                v = v[k]
            values.append(v)
    return values


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def gap(records, method, prediction, baseline, fraction) -> str:
    """Mean gap to the supervised baseline with the seed spread of the paired differences, and
    whether the gap exceeds that spread (same seed = same labelled split, so the runs pair)."""
    by_seed = {r["seed"]: r["test"][prediction]["mIoU"] for r in records
               if r["method"] == method and r["fraction"] == fraction and r["status"] == "done"}
    base = {r["seed"]: r["test"][next(iter(r["test"]))]["mIoU"] for r in records
            if r["method"] == baseline and r["fraction"] == fraction and r["status"] == "done"}
    diffs = [by_seed[k] - base[k] for k in sorted(by_seed) if k in base]
    if len(diffs) < 2:
        return "-" if not diffs else f"{diffs[0]:+.2f} (n=1)"
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    # One paired standard deviation: with 3 seeds a coarse screen, not a significance test.
    verdict = "|gap| > 1 sd" if abs(mean) > sd else "within 1 sd"
    return f"{mean:+.2f} ± {sd:.2f} ({verdict}; {sum(d > 0 for d in diffs)}/{len(diffs)} seeds better)"


def diagnostics(record: dict, names: Names) -> dict[str, float]:
    """Means over the semi-supervised part of training (after the burn-in) of the logged
    pseudo-label diagnostics, and the share of logged steps with a confident ratio above zero."""
    curve = [c for c in record["curve"] if not c.get("burn_in")]
    out = {}
    prefixes = [f"{names.a}/", f"{names.b}/"] if record["method"].startswith("co2s") else [""]
    for pre in prefixes:
        for key in ("confident_ratio", "pseudo_label_acc", "pseudo_label_acc_confident"):
            values = [c[pre + key] for c in curve if pre + key in c]
            if values:
                out[pre + key] = statistics.mean(values)
        ratios = [c[pre + "confident_ratio"] for c in curve if pre + "confident_ratio" in c]
        if ratios:
            out[pre + "steps_confident"] = sum(v > 0 for v in ratios) / len(ratios)
    for key in (f"{names.a}_teaches", f"{names.b}_teaches", "no_teaching"):
        values = [c[key] for c in curve if key in c]
        if values:
            out[key] = statistics.mean(values)
    return out


def best_val_per_prediction(record: dict) -> dict[str, float]:
    """Each prediction's best validation mIoU over the run's validations (as ``best.ckpt`` would
    be chosen if that prediction selected it)."""
    out: dict[str, float] = {}
    for v in record.get("val", []):
        for k, x in v.items():
            if k != "step":
                out[k] = max(out.get(k, x), x)
    return out


def validation_choice(records: list[dict], names: Names, fractions: list[str]) -> list[str]:
    """Markdown: the validation mIoU of each prediction of the two-student runs, and the prediction
    that validation alone would make the default (SPEC: chosen on validation, never on test)."""
    runs = [r for r in records if r["status"] == "done" and len(r.get("test", {})) > 1 and r.get("val")]
    if not runs:
        return []
    preds = [p for p in names.predictions if any(p in best_val_per_prediction(r) for r in runs)]
    lines = ["", "Validation mIoU (%) of each prediction of the two-student runs, each at its own best "
             "validation (mean ± spread over seeds); what chooses the default prediction, without "
             "looking at test:", "", "| method | fraction | " + " | ".join(preds) + " |",
             "|---|---|" + "---|" * len(preds)]
    pooled: dict[str, list[float]] = {p: [] for p in preds}
    for method in names.methods:
        for f in fractions:
            found = [best_val_per_prediction(r) for r in runs if r["method"] == method and r["fraction"] == f]
            if not found:
                continue
            lines.append(f"| {method} | {f} | " + " | ".join(fmt([d[p] for d in found if p in d]) for p in preds) + " |")
            if method == "co2s":
                for p in preds:
                    pooled[p] += [d[p] for d in found if p in d]
    means = {p: statistics.mean(v) for p, v in pooled.items() if v}
    if means:
        best = max(means, key=means.get)
        lines += ["", f"Best prediction of co2s by mean validation mIoU over every fraction and seed: **{best}** "
                  f"({means[best]:.2f}; " + ", ".join(f"{p} {m:.2f}" for p, m in means.items() if p != best) + ")."]
    lines += ["", "Per run, the prediction that scored highest on validation at the tested checkpoint's step "
              "(what `eval.prediction: auto`, the package default for two students, predicts with those "
              "weights) and its test mIoU, against the confidence fusion the study selected checkpoints by:",
              "", "| method | fraction | validation's choice per seed (test mIoU) | choice: test mIoU | "
              "confidence fusion: test mIoU |", "|---|---|---|---|---|"]
    for method in names.methods:
        for f in fractions:
            found = sorted((r for r in runs if r["method"] == method and r["fraction"] == f), key=lambda r: r["seed"])
            picks = []
            for r in found:
                at = [v for v in r["val"] if v["step"] == r["checkpoint_step"]]
                if at:
                    choice = best_on_validation({k: v for k, v in at[0].items() if k != "step"})
                    picks.append((r["seed"], choice, r["test"][choice]["mIoU"], r["test"]["confidence"]["mIoU"]))
            if picks:
                lines.append(f"| {method} | {f} | " + ", ".join(f"seed {s}: {c} ({t:.1f})" for s, c, t, _ in picks)
                             + f" | {fmt([p[2] for p in picks])} | {fmt([p[3] for p in picks])} |")
    return lines


def wall_times(records: list[dict], names: Names, fractions: list[str]) -> list[str]:
    """Minutes of train + evaluate per run, by method and fraction, marked where a run's sitting
    did not start at step 0 (a fork from its source's burn-in, or a resumed checkpoint, whose
    time is only part of a run); whole runs are what a user would wait for."""
    done = [r for r in records if r["status"] == "done"]
    if not done:
        return []
    lines = ["", "Wall time per run (minutes of train + evaluate; f: after the fork at step N of "
             "the source run, r: a sitting resumed at step N, only part of the run; two runs shared the "
             "2 cores):", "", "| method | " + " | ".join(f"{f} labelled" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    for method in names.methods:
        cells = []
        for f in fractions:
            runs = sorted((r for r in done if r["method"] == method and r["fraction"] == f), key=lambda r: r["seed"])
            marks = []
            for r in runs:
                timing = r["timing"]
                minutes = f"{timing['wall_s'] / 60:.0f}"
                if timing.get("fork_step"):
                    minutes += f" (f {timing['fork_step']})"
                elif timing.get("start_step"):
                    minutes += f" (r {timing['start_step']})"
                marks.append(f"seed {r['seed']}: {minutes}")
            cells.append(", ".join(marks) or "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    total = sum(r["timing"]["wall_s"] for r in done)
    lines += ["", f"Wall time: {total / 3600:.2f} h over {len(done)} runs (sum of the runs' wall times; "
              "with --jobs > 1 they overlap)."]
    return lines


def markdown(records: list[dict], names: Names, fractions: list[str], classes: list[str], settings: dict) -> str:
    lines = ["# AI4Mars MSL semi-supervised study", "",
             "Test mIoU (%) on test_gold.txt, mean ± sample standard deviation over seeds "
             f"(seeds: {settings['seeds']}); checkpoint chosen on the first {settings['val_images']} "
             "images of val.txt.", "",
             "| method | " + " | ".join(f"{f} labelled" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    table_rows = rows(records, names)
    for label, method, pred in table_rows:
        lines.append(f"| {label} | " + " | ".join(fmt(cell(records, method, pred, f)) for f in fractions) + " |")

    lines += ["", "Gap to the supervised run of the same student (same seeds, same labelled split), "
              "mean ± spread of the paired differences over seeds; fusions against the better supervised "
              "student of each fraction's mean:", "",
              "| method | " + " | ".join(f"{f} labelled" for f in fractions) + " |",
              "|---|" + "---|" * len(fractions)]
    sup = {n: f"supervised-{n}" for n in (names.a, names.b)}
    for label, method, pred in table_rows:
        if method.startswith("supervised"):
            continue
        cells = []
        for f in fractions:
            student = pred if pred in sup else next((n for n in (names.a, names.b) if method.endswith(f"-{n}")), None)
            if student is None:  # a fusion: against the better supervised student at this fraction
                means = {n: statistics.mean(v) for n in sup if (v := cell(records, sup[n], n, f))}
                student = max(means, key=means.get) if means else names.a
            cells.append(gap(records, method, pred, sup[student], f))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for fraction in fractions:
        lines += ["", f"Per-class test IoU (%), {fraction} labelled:", "",
                  "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for label, method, pred in table_rows:
            lines.append(f"| {label} | " + " | ".join(
                fmt(cell(records, method, pred, fraction, ("IoU", c))) for c in classes) + " |")

    semi = [r for r in records if r["status"] == "done" and not r["method"].startswith("supervised")]
    keys = sorted({k for r in semi for k in diagnostics(r, names)})
    if semi and not keys:
        lines += ["", "Pseudo-label diagnostics: no step was logged after the burn-in (train.log_every "
                  "longer than the semi-supervised part)."]
    elif semi:
        lines += ["", "Pseudo-label diagnostics over the semi-supervised part of training (after the burn-in), "
                  "means over logged steps and seeds: confident_ratio = share of valid unlabelled pixels "
                  f"at or above tau {settings['tau']}; pseudo_label_acc(_confident) = agreement of the "
                  "weak-view pseudo-labels with the masks the study keeps aside (all / confident pixels only); "
                  "steps_confident = share of logged steps with a confident ratio above zero; *_teaches = "
                  "teaching shares of the stability loss.", "",
                  "| method | fraction | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for method in names.methods:
            for f in fractions:
                found = [diagnostics(r, names) for r in semi if r["method"] == method and r["fraction"] == f]
                if found:
                    lines.append(f"| {method} | {f} | " + " | ".join(
                        f"{statistics.mean(d[k] for d in found if k in d):.3f}" if any(k in d for d in found)
                        else "-" for k in keys) + " |")

    lines += validation_choice(records, names, fractions)

    lines += wall_times(records, names, fractions)
    lines += ["", "Run settings: " + json.dumps(settings), ""]
    missing = [f"{r['method']} {r['fraction']} seed {r['seed']}" for r in records if r["status"] != "done"]
    if missing:
        lines += ["Missing runs: " + ", ".join(missing), ""]
    return "\n".join(lines)


def moving_mean(values, width: int):
    """Centred moving average that skips missing (NaN) values; NaN where a window has none."""
    import numpy as np

    present = ~np.isnan(values)
    kernel = np.ones(width)
    total = np.convolve(np.where(present, values, 0.0), kernel, mode="same")
    count = np.convolve(present.astype(float), kernel, mode="same")
    return np.divide(total, count, out=np.full(len(values), np.nan), where=count > 0)


def burn_in_end(record: dict) -> int:
    """The iteration a run's supervised burn-in ended at (the trainer's own rule)."""
    from co2s.methods.schedule import Schedule

    config = load_config_dict(record["config"])
    return Schedule.for_run(config, config.train.iters).burn_in


def plots(records: list[dict], names: Names, fractions: list[str], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -c constraints.txt '.[bench]'): no plots")
        return []

    import numpy as np

    # one panel per student, one for the fusions (with both supervised students as the reference);
    # every seed a dot, the mean a bar: the seed spread is what the gaps are read against
    table = rows(records, names)
    panels = {f"{names.a} student": [], f"{names.b} student": [], "fusions": []}
    for label, method, pred in table:
        if pred in (names.a, names.b):
            panels[f"{pred} student"].append((label, method, pred))
            if method.startswith("supervised"):
                panels["fusions"].append((label, method, pred))
        else:
            panels["fusions"].append((label, method, pred))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), sharey=True)
    for ax, (title, members) in zip(axes, panels.items()):
        width = 0.8 / max(len(members), 1)
        for i, (label, method, pred) in enumerate(members):
            colour = plt.cm.tab20(table.index((label, method, pred)) % 20)  # one colour per row everywhere
            for x, f in enumerate(fractions):
                values = cell(records, method, pred, f)
                if not values:
                    continue
                at = x - 0.4 + width * (i + 0.5)
                ax.scatter([at] * len(values), values, s=14, color=colour, alpha=0.7,
                           label=label if x == 0 or not cell(records, method, pred, fractions[0]) else None)
                ax.hlines(statistics.mean(values), at - width * 0.4, at + width * 0.4, color=colour, lw=2)
        ax.set_xticks(range(len(fractions)), [f"{f} labelled" for f in fractions])
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)  # below: no dot hidden
    axes[0].set_ylabel("test mIoU (%): dots seeds, bars means")
    fig.tight_layout()
    paths = [out / "miou_vs_fraction.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    co2s_runs = [r for r in records if r["method"].startswith("co2s") and r["status"] == "done"]
    if co2s_runs:
        # rows: fractions; columns: the diagnostics; per method and student the mean over seeds
        # (a moving average over 9 logged steps), the band the seeds' range: 42 raw curves are noise
        a, b = names.a, names.b
        panels = [("accuracy of confident pseudo-labels", "{}/pseudo_label_acc_confident"),
                  ("confident pixel ratio", "{}/confident_ratio"), ("teaching share", "{}_teaches")]
        burn_in = burn_in_end(co2s_runs[0])
        fig, axes = plt.subplots(len(fractions), 3, figsize=(15, 3.6 * len(fractions)), squeeze=False)
        methods = sorted({r["method"] for r in co2s_runs})
        for row, f in zip(axes, fractions):
            for ax, (title, template) in zip(row, panels):
                for i, method in enumerate(methods):
                    runs = [r for r in co2s_runs if r["method"] == method and r["fraction"] == f]
                    for j, student in enumerate((a, b)):
                        key = template.format(student)
                        curves = [{c["step"]: c[key] for c in r["curve"] if key in c} for r in runs]
                        steps = sorted(set().union(*curves))  # a run logs accuracy only with confident pixels
                        if not steps:
                            continue
                        values = np.array([[c.get(t, np.nan) for t in steps] for c in curves])
                        smooth = np.array([moving_mean(v, 9) for v in values])
                        colour = plt.cm.tab10(2 * i + j)
                        with np.errstate(all="ignore"), warnings.catch_warnings():
                            warnings.simplefilter("ignore", RuntimeWarning)  # a step no seed logged
                            ax.plot(steps, np.nanmean(smooth, axis=0), color=colour, lw=1.2,
                                    ls="-" if method == "co2s" else "--", label=f"{method}, {student} student")
                            ax.fill_between(steps, np.nanmin(smooth, axis=0), np.nanmax(smooth, axis=0),
                                            color=colour, alpha=0.15)
                if burn_in:
                    ax.axvline(burn_in, color="grey", lw=0.8, ls=":")
                ax.set_title(f"{title}, {f} labelled")
                ax.set_xlabel("iteration (dotted: end of the burn-in)")
                ax.grid(alpha=0.3)
        handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines() if not h.get_label().startswith("_")}
        seeds = sorted({r["seed"] for r in co2s_runs})
        fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=4, fontsize=8,
                   title=f"mean over seeds {seeds} (moving average of 9 logged steps); band: their range")
        fig.tight_layout(rect=(0, 0, 1, 0.9))
        paths.append(out / "co2s_training.png")
        fig.savefig(paths[1], dpi=120)
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(args)
    names = study_names(base)
    methods = args.methods or list(names.methods)
    unknown = [m for m in methods if m not in names.methods]
    if unknown:
        sys.exit(f"unknown methods {unknown}; with {args.students}: {list(names.methods)}")
    split_dirs = write_splits(base, args.fractions, args.seeds, out)
    # seed-major, so that a partial study already covers every fraction and method once
    plan = [(m, f, s) for s in args.seeds for f in args.fractions for m in methods]

    def run_dir(m, f, s):
        return out / "runs" / m / f"{ratio_tag(f)}_seed{s}"

    def record_path(m, f, s):
        return out / "records" / m / f"{ratio_tag(f)}_seed{s}.json"

    settings = {"students": args.students, "iters": args.iters, "burn_in": args.burn_in, "warmup": args.warmup,
                **({"grad_clip": args.grad_clip} if args.grad_clip else {}),
                "crop": args.crop, "batch": args.batch, "lr": args.lr, "tau": args.tau,
                "val_images": args.val_images, "eval_window": args.eval_window, "overrides": args.overrides}
    # The per-run records (committed, unlike the run folders) carry a study across machines and
    # sessions: a recorded run is never trained again. They must all come from the same settings.
    settings_file = out / "records" / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        sys.exit(f"{settings_file} holds runs of other settings ({settings_file.read_text().strip()}); "
                 "give another --out")

    read: dict[Path, dict] = {}  # a record is written once, whole, and never changed: read each once

    def recorded() -> list[dict]:
        for path in (out / "records").glob("*/*.json"):
            if path not in read:
                read[path] = json.loads(path.read_text())
        return list(read.values())

    if not args.report_only:
        settings_file.parent.mkdir(parents=True, exist_ok=True)
        settings_file.write_text(json.dumps(settings, indent=1) + "\n")

        def job(item):
            m, f, s = item
            if record_path(m, f, s).is_file():
                print(f"{m} {f} seed {s}: recorded", flush=True)
                return
            source = FORKS.get(m)
            record = execute(run_dir(m, f, s), run_config(base, names, m, split_dirs[f, s], s), args.threads,
                             run_dir(source, f, s) if source else None)
            if "error" not in record:
                write_record(record_path(m, f, s), collect(run_dir(m, f, s), names, m, f, s))
            status = record.get("error") or f"{record['wall_s']:.0f} s"
            print(f"[{time.strftime('%H:%M:%S')}] {m} {f} seed {s}: {status}", flush=True)

        until = parse_until(args.until)

        def expected(item):
            m, f, s = item
            source = FORKS.get(m)
            forks = source is not None and RunFolder(run_dir(source, f, s)).burn_in.is_file()
            return expected_seconds(recorded(), m, forks, source)

        def waits_for(item):
            m, f, s = item
            source = FORKS.get(m)  # a fork waits for its source's burn-in rather than repeat it
            return (source, f, s) if source in methods else None

        todo = [item for item in plan if not record_path(*item).is_file()]
        print(f"{len(plan)} runs, {len(plan) - len(todo)} recorded, {args.jobs} at a time -> {out}"
              + (f"; starting only runs expected to end by {time.ctime(until)}" if until else ""), flush=True)
        # the comparison's runs before the extras; seed-major (a partial study covers every fraction
        # and method of a seed first); the longest first within a seed, which packs a sitting with a
        # deadline best
        extras = {names.name(m) for m in EXTRAS}
        left = run_sitting(todo, job, jobs=args.jobs, expected=expected, waits_for=waits_for, until=until,
                           priority=lambda item: (item[0] in extras, item[2], -(expected(item) or 0)))
        if left:
            print(f"[{time.strftime('%H:%M:%S')}] left for another sitting ({len(left)}): "
                  + ", ".join(f"{m} {f} seed {s}" for m, f, s in left), flush=True)

    records = [json.loads(record_path(m, f, s).read_text()) if record_path(m, f, s).is_file()
               else collect(run_dir(m, f, s), names, m, f, s) for m, f, s in plan]
    settings = {**settings, "seeds": args.seeds}
    (out / "results.json").write_text(json.dumps({"settings": settings, "runs": records}, indent=1))
    (out / "results.md").write_text(markdown(records, names, args.fractions, base["data"]["classes"], settings))
    made = plots(records, names, args.fractions, out)
    print((out / "results.md").read_text())
    print("wrote", ", ".join(str(p) for p in [out / "results.json", out / "results.md", *made]))
    return 0 if all(r["status"] == "done" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
