"""``co2s demo``: synthetic aerial scenes -> train -> evaluate -> predict, in one output folder.

Everything is generated locally (no downloads). The demo trains the configured semi-supervised
run (Co2S with two students by default) and, with the same students, labels, iterations and seed,
a supervised baseline: the same config with ``train.semi.burn_in: 1.0``, i.e. the supervised
cross-entropy alone for the whole run, the unlabelled images never reaching a loss. Up to the end of
the semi-supervised run's burn-in the two runs are the same computation, so the baseline continues
from that run's ``burn_in.ckpt``. Both are scored at their last step on the test split; the summary shows the two mIoUs and per-class IoUs, what the unlabelled images
added, and what a constant (majority-class) and a uniformly random predictor score.
``comparison.png`` shows test tiles side by side: image, ground truth, supervised, Co2S.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from co2s import api
from co2s.atomic import write_text
from co2s.data.io import read_image, read_mask
from co2s.data.sources import read_split
from co2s.evaluation.pictures import write_comparison
from co2s.demo.synthetic import SETTINGS, SURVEY_LABELLED_PART, write_demo_dataset
from co2s.errors import ConfigError
from co2s.engine.metrics_log import read_log
from co2s.engine.run_dir import fork_at_burn_in
from co2s.run_folder import RunFolder
from co2s.evaluation import metrics_file
from co2s.evaluation.metrics import scores_from_confusion
from co2s.evaluation.run import print_report

#: test tiles shown in comparison.png
COMPARISON_TILES = 4


def reference_scores(confusion: list[list[int]], classes: list[str]) -> dict:
    """mIoU of a majority-class predictor and the expected mIoU of a uniform random one."""
    cm = np.asarray(confusion, dtype=np.int64)
    truth = cm.sum(1)
    constant = np.zeros_like(cm)
    constant[:, truth.argmax()] = truth
    k = len(classes)
    rand = np.repeat(truth[:, None] / k, k, axis=1)  # expected counts of uniform guessing
    import torch

    return {
        "constant_mIoU": scores_from_confusion(torch.from_numpy(constant), classes)["mIoU"],
        "random_mIoU": scores_from_confusion(torch.from_numpy(rand), classes)["mIoU"],
    }


def _scores(metrics: dict, checkpoint: Path, seconds: float) -> dict:
    """What the summary keeps of one run's test metrics."""
    return {
        "mIoU": metrics["mIoU"], "OA": metrics["OA"], "IoU": metrics["IoU"], "prediction": metrics["prediction"],
        "mIoU_by_prediction": {name: s["mIoU"] for name, s in metrics["predictions"].items()},
        "checkpoint": str(checkpoint), "metrics": metrics["path"], "train_seconds": round(seconds, 1),
        "checkpoint_step": metrics.get("checkpoint_step"),
    }


def _semi_diagnostics(config, run) -> dict:
    """The semi-supervised machinery at the end of training, from ``metrics.jsonl``: per model the
    confident-pixel ratio at tau and the unlabelled loss terms, and the teaching shares (means over
    the last quarter of the run's train records)."""
    t = config.train
    records = [r for r in read_log(run.folder.metrics_log) if r.get("kind") == "train"]
    total = records[-1]["step"] if records else 0
    tail = [r for r in records if r["step"] > total - max(1, total // 4)] or records[-1:]
    keys = sorted({k for r in tail for k in r if k.endswith(("confident_ratio", "/s1", "/sta", "_teaches"))
                   or k in ("no_teaching", "s1")})
    return {"tau": t.semi.tau, "burn_in_iters": run.burn_in_steps, "iters": total,
            "last_quarter": {k: float(np.mean([r[k] for r in tail if k in r])) for k in keys}}


def _show_tiles(config, count: int) -> list:
    """The test tiles with the most classes in their masks (ties: list order)."""
    samples = read_split(config.data.splits.test, config.data, labelled=True, name="test")
    masks = [read_mask(s.mask) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: -len(np.unique(masks[i])))
    return [(samples[i], masks[i]) for i in order[:count]]


def write_comparison_png(path: Path, config, checkpoints: dict[str, Path]) -> Path:
    """Image, ground truth and each checkpoint's prediction for a few test tiles."""
    segmenters = {title: api.Segmenter.load(ckpt) for title, ckpt in checkpoints.items()}
    rows = []
    for sample, mask in _show_tiles(config, COMPARISON_TILES):
        image = read_image(sample.image)  # [C, H, W] uint8 for the demo's PNG tiles
        rgb = np.ascontiguousarray(np.moveaxis(image[:3], 0, -1)).astype(np.uint8)
        rows.append([rgb, mask, *(s.predict(sample.image).classes for s in segmenters.values())])
    return write_comparison(path, rows, ["image", "ground truth", *segmenters], config.data.classes,
                            config.data.palette)


def _iou_table(classes: list[str], rows: dict[str, dict]) -> str:
    """Per-class IoU and mIoU, one line per run (values in %), and the difference of the last two."""
    width = max(len(name) for name in [*rows, "added by the unlabelled images"]) + 2
    cols = [*classes, "mIoU"]
    lines = [" " * width + "".join(f"{c[:10]:>11}" for c in cols)]
    values = {name: [r["IoU"][c] for c in classes] + [r["mIoU"]] for name, r in rows.items()}
    for name, v in values.items():
        lines.append(f"{name:<{width}}" + "".join(f"{x:11.1f}" for x in v))
    if len(values) == 2:
        (_, a), (_, b) = values.items()
        lines.append(f"{'added by the unlabelled images':<{width}}"
                     + "".join(f"{(y - x) + 0.0:+11.1f}".replace("-0.0", "+0.0") for x, y in zip(a, b)))
    return "\n".join(lines)


def _demo_outputs(out: Path) -> list[Path]:
    """What the demo writes after training, which a rerun into ``out`` replaces."""
    return [out / "run" / metrics_file("test"), out / "supervised" / metrics_file("test"), out / "predictions",
            out / "comparison.png", out / "summary.json"]


def describe_setting(setting: str, labelled: int) -> str:
    """One line saying how the demo's tiles are spread over the survey area."""
    if setting == "survey":
        return (f"setting survey: the {labelled} labelled tiles come from the first "
                f"{SURVEY_LABELLED_PART:.0%} of the survey area; the unlabelled, validation and test tiles "
                "from all of it, so the later season, lower sun, sensor gain and haze of the rest are seen "
                "only in unlabelled imagery")
    return (f"setting uniform: the {labelled} labelled tiles, the unlabelled, validation and test tiles are "
            "drawn alike from the whole area")


def run_demo(out_dir: str | os.PathLike = "demo_output", overrides: list[str] | None = None,
             seed: int = 0, progress: bool = True, baseline: bool = True, setting: str = "uniform",
             labelled: int = 16) -> dict:
    """Generate the data (``setting`` and ``labelled`` tiles: :func:`write_demo_dataset`), train the
    demo config and (``baseline``, for a semi-supervised method) its supervised baseline, evaluate
    both on the test split, predict the scenes and write ``summary.json`` and ``comparison.png``.
    Returns the summary.

    Rerun into the same folder, it replaces its own earlier outputs there (the test metrics, the
    predictions, ``comparison.png``, ``summary.json``) and prints one line saying so."""
    if setting not in SETTINGS:
        raise ConfigError(f"demo setting {setting!r}: choose one of {', '.join(SETTINGS)}")
    if int(labelled) != labelled or labelled < 1:
        raise ConfigError(f"demo labelled tiles: a positive number, got {labelled!r}")
    start = time.perf_counter()
    out = Path(out_dir)
    earlier = [p for p in _demo_outputs(out) if p.exists()]
    if earlier:
        print(f"replacing the earlier demo outputs in {out}: "
              + ", ".join(str(p.relative_to(out)) for p in earlier))
    dataset = write_demo_dataset(out / "data", seed=seed, setting=setting, n_labelled=labelled)
    print(describe_setting(setting, labelled))
    config = api.load_config("demo", [f"data.root={dataset.root}", f"out_dir={out / 'run'}",
                                  f"train.seed={seed}", *(overrides or [])])
    semi = config.uses_unlabelled
    model = ", ".join(f"{s.name}: {s.backbone.kind}" for s in config.model.students) \
        if config.model.name == "students" else config.model.name
    print(f"demo data in {dataset.root}; training {config.train.method} ({model}) for "
          f"{config.train.iters} iterations"
          + (f", the first {config.train.semi.burn_in:.0%} supervised (burn-in)" if semi and config.train.semi.burn_in
             else ""))
    runs: dict[str, tuple] = {}
    t0 = time.perf_counter()
    result = api.train(config, progress=progress)
    runs[config.train.method] = (config, result.latest_checkpoint, time.perf_counter() - t0)
    if semi and baseline:
        base = config.override({"train.semi.burn_in": 1.0, "out_dir": str(out / "supervised")})
        fork_step = result.burn_in_steps
        forked = fork_step if fork_at_burn_in(result.run_dir, out / "supervised", fork_step) else 0
        print(f"supervised baseline: the same students, labels, seed and {base.train.iters} iterations, "
              "the unlabelled images never in a loss (train.semi.burn_in: 1.0)"
              + (f"; steps 1-{forked} are the Co2S run's burn-in, continued from its burn_in.ckpt" if forked
                 else ""))
        t0 = time.perf_counter()
        base_result = api.train(base, progress=progress)
        runs["supervised"] = (base, base_result.latest_checkpoint, time.perf_counter() - t0)

    scores = {}
    for name, (cfg, checkpoint, seconds) in runs.items():
        metrics = api.evaluate_checkpoint(checkpoint, split="test", progress=progress, overwrite=True)
        if name == config.train.method:
            main_metrics = metrics
            print_report(metrics)
        scores[name] = _scores(metrics, checkpoint, seconds)
    main = scores[config.train.method]
    checkpoint = Path(main["checkpoint"])
    predictions = api.predict(checkpoint, dataset.scenes, out / "predictions", progress=progress, overwrite=True)
    shown = ({f"supervised (test mIoU {scores['supervised']['mIoU']:.1f})": runs["supervised"][1]}
             if "supervised" in runs and semi else {})
    shown[f"{config.train.method} (test mIoU {main['mIoU']:.1f})"] = checkpoint
    comparison = write_comparison_png(out / "comparison.png", config, shown)

    summary = {
        "setting": {"name": setting, "labelled_tiles": labelled, "description": describe_setting(setting, labelled)},
        "test_mIoU": main["mIoU"],
        "test_OA": main["OA"],
        **reference_scores(main_metrics["confusion_matrix"], main_metrics["classes"]),
        "method": config.train.method,
        config.train.method: main,
    }
    if "supervised" in scores and semi:
        sup = scores["supervised"]
        shared = (f"continued from the {config.train.method} run's burn_in.ckpt (step {fork_step})"
                  if fork_step and RunFolder(result.run_dir).burn_in.is_file() else "trained from scratch")
        summary["supervised"] = {**sup, "how": "the same students, labelled crops, iterations and seed; "
                                 f"supervised cross-entropy only (train.semi.burn_in: 1.0), {shared}; "
                                 "both scored at their last step"}
        summary["unlabelled_gain"] = {
            "mIoU": main["mIoU"] - sup["mIoU"],
            "IoU": {c: main["IoU"][c] - sup["IoU"][c] for c in main["IoU"]},
        }
    if semi:
        summary["semi_supervised"] = {**_semi_diagnostics(config, result), "notes": list(result.notes)}
    summary.update({
        "checkpoint": str(checkpoint),
        "metrics": main["metrics"],
        "predictions": [str(p) for r in predictions for p in r.outputs],
        "comparison": str(comparison),
        "seconds": round(time.perf_counter() - start, 1),
    })
    write_text(out / "summary.json", json.dumps(summary, indent=2))

    classes = list(config.data.classes)
    table = {f"{n} ({'labels only' if n == 'supervised' else 'labels + unlabelled' if semi else 'labels'})": s
             for n, s in sorted(scores.items(), key=lambda kv: kv[0] != "supervised")}
    print(f"\ntest IoU (%), {main_metrics['images']} tiles; prediction: {main['prediction']}")
    print(_iou_table(classes, table))
    if semi:
        d = summary["semi_supervised"]["last_quarter"]
        ratios = ", ".join(f"{k.split('/')[0]} {v:.2f}" for k, v in d.items() if k.endswith("confident_ratio"))
        print(f"confident pixels at tau {config.train.semi.tau} (last quarter of the run): {ratios}")
        for note in result.notes:  # classes the unlabelled terms hardly taught (co2s.engine.metrics_log)
            print(note)
    print(f"constant predictor {summary['constant_mIoU']:.2f} %, random {summary['random_mIoU']:.2f} %; "
          f"predictions in {out / 'predictions'}; side by side in {comparison}; {summary['seconds']} s")
    return summary
