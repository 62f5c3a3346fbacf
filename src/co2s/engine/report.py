"""``co2s report RUN``: the pictures of a training run and one self-contained HTML page.

It reads what a run folder holds (:mod:`co2s.run_folder`): the train and validation records of
``metrics.jsonl``, ``config.yaml``, ``run_info.jsonl`` and every ``metrics_<split>.json`` that
``co2s evaluate`` wrote there, and writes PNG figures and ``index.html`` (relative links, no
network) into ``RUN/report/`` or another folder. It writes only into an empty or new folder or
one that holds an earlier report (named in its manifest, ``.co2s-report.json``), and replaces
only the files that report wrote. It lives with the engine, which writes what it reads; matplotlib
(the ``report`` extra) is imported when a report is drawn, never with the package.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml

from co2s.atomic import atomic_path, write_text
from co2s.engine.metrics_log import best_validation, read_log, untaught_classes
from co2s.methods.unimatch import CONFIDENT_BY_CLASS
from co2s.errors import Co2sError
from co2s.evaluation import METRICS_FILE
from co2s.run_folder import RunFolder
from co2s.version import __version__

REPORT_DIR = "report"  # the default folder, inside the run folder
INDEX = "index.html"
MANIFEST = ".co2s-report.json"  # the files the report in a folder wrote: the only ones it replaces
GENERATOR = "co2s report"
INSTALL = "pip install 'co2s[report]'"
MIN_MATPLOTLIB = (3, 7)

#: per-student diagnostics of the train records, drawn apart from the loss terms
CONFIDENT = "confident_ratio"
PSEUDO_LABEL_ACC = ("pseudo_label_acc", "pseudo_label_acc_confident")
SCHEDULE = ("lambda",)  # the stability weight of Co2S; `burn_in` is drawn as a shaded span
NOT_PLOTTED = ("burn_in",)
THROUGHPUT = "images_per_sec"
NO_TEACHING = "no_teaching"
TEACHES = "_teaches"

_DPI = 100
_MANY_POINTS = 40  # up to this many points a curve shows its markers (a single point stays visible)


# -- the run folder ---------------------------------------------------------------------------

def check_run_folder(run_dir: str | os.PathLike) -> RunFolder:
    """The run folder at ``run_dir``, or a :class:`Co2sError` of one line saying why it is not one."""
    path = Path(run_dir)
    folder = RunFolder(path)
    if not path.exists():
        raise Co2sError(f"no run folder {path}: it does not exist")
    if not path.is_dir():
        hint = " (give the folder that holds it)" if path.suffix in (".ckpt", ".jsonl", ".yaml", ".json") else ""
        raise Co2sError(f"{path} is a file, not a run folder{hint}")
    if not folder.metrics_log.is_file():
        if folder.config.is_file():
            raise Co2sError(f"{path} holds no {folder.metrics_log.name} yet: the run has logged nothing to report")
        raise Co2sError(f"{path} is not a run folder: it has no {folder.metrics_log.name} (co2s train writes it)")
    return folder


def _check_out_dir(out: Path, planned: list[str]) -> set[str]:
    """The files an earlier report wrote in ``out`` (empty for a new or empty folder); refuses a
    folder holding anything else, unless a manifest says it is a report folder, and a planned file
    there that the manifest does not name."""
    if out.exists() and not out.is_dir():
        raise Co2sError(f"nothing written: {out} is a file, not a folder for the report; give another --out")
    if not out.exists():
        return set()
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return set()
    manifest = out / MANIFEST
    owned = _read_manifest(manifest) if manifest.is_file() else None
    if owned is None:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise Co2sError(f"nothing written: {out} holds files that co2s report did not write ({shown}); "
                        "give an empty or new folder with --out")
    strangers = [name for name in planned if name not in owned and (out / name).exists()]
    if strangers:
        raise Co2sError(f"nothing written: {out / strangers[0]} was not written by co2s report; "
                        "move it away or give another --out")
    return owned


def _read_manifest(path: Path) -> set[str] | None:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    files = manifest.get("files")
    if not isinstance(files, list):
        return None
    # only plain names in the folder itself: a manifest never makes the report touch files elsewhere
    return {f for f in files if isinstance(f, str) and f == Path(f).name and f not in ("", ".", "..", MANIFEST)}


def _write_manifest(out: Path, run: Path, files: list[str]) -> None:
    write_text(out / MANIFEST, json.dumps({"generator": GENERATOR, "co2s_version": __version__,
                                           "run": str(run), "files": sorted(files)}, indent=2) + "\n",
               durable=False)


# -- matplotlib, imported on use ---------------------------------------------------------------

def _matplotlib():
    """``(Figure, FigureCanvasAgg, rc_context)``; a :class:`Co2sError` naming the extra when
    matplotlib is missing or too old. Figures are drawn on their own Agg canvas: the backend pyplot
    uses (a notebook's) is left as it is."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise Co2sError(f"co2s report draws with matplotlib, which is not installed: {INSTALL}") from None
    version = tuple(int(p) for p in re.findall(r"\d+", matplotlib.__version__)[:2])
    if version < MIN_MATPLOTLIB:
        raise Co2sError(f"co2s report needs matplotlib >= {'.'.join(map(str, MIN_MATPLOTLIB))} (this is "
                        f"{matplotlib.__version__}): {INSTALL}")
    return Figure, FigureCanvasAgg, matplotlib.rc_context


# -- what the logs hold ------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class _Series:
    """One curve: its label and its (step, value) points."""

    label: str
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def _series(records: list[dict], key: str, label: str) -> _Series:
    s = _Series(label)
    for r in records:
        value = r.get(key)
        if _is_number(value) and _is_number(r.get("step")):
            s.steps.append(r["step"])
            s.values.append(float(value))
    return s


@dataclass
class _Panel:
    title: str
    series: list[_Series]
    ylabel: str = ""
    unit_range: bool = False  # a share or ratio: the y axis spans 0..1


@dataclass
class _Plot:
    """A figure to draw: its file, heading, caption and what draws it."""

    name: str
    title: str
    caption: str
    draw: Callable[[Any], None]
    size: tuple[float, float]


def _train_keys(train: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for r in train:
        for k, v in r.items():
            if k not in ("step", "kind") and _is_number(v):
                keys.setdefault(k, None)
    return list(keys)


def _split_key(key: str) -> tuple[str | None, str]:
    """``clip/sup`` -> ``("clip", "sup")``; ``sup`` -> ``(None, "sup")``."""
    student, sep, term = key.partition("/")
    return (student, term) if sep else (None, key)


def _student_panels(train: list[dict], keys: list[str], terms: list[str], total_label: str,
                    unit_range: bool = False, ylabel: str = "") -> list[_Panel]:
    """One panel per term, each student's curve (``student/term``) side by side with the
    unprefixed one (``term``: the sum or the single model)."""
    panels = []
    for term in terms:
        series = []
        if term in keys:
            students = any(_split_key(k)[1] == term and _split_key(k)[0] for k in keys)
            series.append(_series(train, term, total_label if students else term))
        series += [_series(train, k, _split_key(k)[0]) for k in keys
                   if _split_key(k)[0] is not None and _split_key(k)[1] == term]
        series = [s for s in series if s.steps]
        if series:
            panels.append(_Panel(term, series, ylabel, unit_range))
    return panels


def _classify(keys: list[str]) -> dict[str, list[str]]:
    """The train keys by figure: loss terms (every term that is not one of the others), confident
    ratio (overall, and by class), pseudo-label accuracy, teaching shares, learning rates, schedule,
    throughput."""
    groups: dict[str, list[str]] = {g: [] for g in ("loss", "confident", "by_class", "pseudo", "teaching", "lr",
                                                     "schedule", "throughput")}
    for key in keys:
        student, term = _split_key(key)
        if key == "lr" or student == "lr":
            groups["lr"].append(key)
        elif student is None and (key.endswith(TEACHES) or key == NO_TEACHING):
            groups["teaching"].append(key)
        elif term == CONFIDENT:
            groups["confident"].append(key)
        elif term.startswith(CONFIDENT_BY_CLASS):
            groups["by_class"].append(key)
        elif term in PSEUDO_LABEL_ACC:
            groups["pseudo"].append(key)
        elif student is None and key in SCHEDULE:
            groups["schedule"].append(key)
        elif student is None and key == THROUGHPUT:
            groups["throughput"].append(key)
        elif student is None and key in NOT_PLOTTED:
            continue
        else:
            groups["loss"].append(key)
    return groups


def _terms(keys: list[str], first: tuple[str, ...] = ()) -> list[str]:
    found = list(dict.fromkeys(_split_key(k)[1] for k in keys))
    return [t for t in first if t in found] + [t for t in found if t not in first]


def _burn_in_end(train: list[dict], run_info: list[dict]) -> float | None:
    """The step the supervised burn-in ended at, when the run had one."""
    for info in reversed(run_info):
        if _is_number(info.get("burn_in_steps")):
            return float(info["burn_in_steps"]) or None
    steps = [r["step"] for r in train if _is_number(r.get("burn_in")) and r["burn_in"] > 0 and _is_number(r.get("step"))]
    return float(max(steps)) if steps else None


# -- drawing ------------------------------------------------------------------------------------

class _Colours:
    """One colour per name (student, fusion, term) in every figure; totals in black."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(dict.fromkeys(names))

    def __call__(self, name: str) -> str:
        if name in ("total", "all"):
            return "black"
        if name not in self.names:
            self.names.append(name)
        return f"C{self.names.index(name) % 10}"


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator  # imported by _matplotlib() before anything is drawn

    return MaxNLocator(integer=True)


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def _draw_series(ax, series: list[_Series], colours: _Colours, burn_in: float | None) -> None:
    if burn_in:
        ax.axvspan(0, burn_in, color="0.9", zorder=0, label="burn-in" if len(series) > 1 else None)
    for s in series:
        marker = "o" if len(s.steps) <= _MANY_POINTS else None
        ax.plot(s.steps, s.values, marker=marker, markersize=3, linewidth=1.2, label=s.label,
                color=colours(s.label))
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.grid(True, alpha=0.3)
    if len(series) > 1 or burn_in:
        ax.legend(fontsize=8)


def _panels_plot(name: str, title: str, caption: str, panels: list[_Panel], colours: _Colours,
                 burn_in: float | None) -> _Plot:
    rows, cols = _grid(len(panels))

    def draw(fig) -> None:
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            _draw_series(ax, panel.series, colours, burn_in)
            ax.set_title(panel.title)
            if panel.ylabel:
                ax.set_ylabel(panel.ylabel)
            if panel.unit_range:
                ax.set_ylim(-0.03, 1.03)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)

    return _Plot(name, title, caption, draw, (4.4 * cols, 3.2 * rows))


def _training_plots(train: list[dict], val: list[dict], run_info: list[dict], colours: _Colours) -> list[_Plot]:
    keys = _train_keys(train)
    groups = _classify(keys)
    burn_in = _burn_in_end(train, run_info)
    shaded = " The grey span is the supervised burn-in." if burn_in else ""
    plots = []
    panels = _student_panels(train, groups["loss"], _terms(groups["loss"], ("loss",)), "total")
    if panels:
        plots.append(_panels_plot(
            "loss.png", "Loss terms",
            "Every loss term of the train records, one panel per term (mean over each log period of "
            "train.log_every steps); with two students each student's term side by side, and for "
            "`loss` the total that is backpropagated." + shaded, panels, colours, burn_in))
    mious = [k for k in dict.fromkeys(k for r in val for k in r) if k.startswith("mIoU/")]
    if val:
        series = [_series(val, k, k[len("mIoU/"):]) for k in mious] or [_series(val, "mIoU", "mIoU")]
        series = [s for s in series if s.steps]
        best, _ = best_validation(val)
        if series:
            def draw(fig, series=series, best=best) -> None:
                ax = fig.subplots()
                _draw_series(ax, series, colours, burn_in)
                if best is not None:
                    ax.plot([best["step"]], [best["mIoU"]], marker="*", markersize=14, color="gold",
                            markeredgecolor="black", linestyle="none",
                            label=f"best {best['mIoU']:.2f} (step {best['step']})")
                    ax.legend(fontsize=8)
                ax.set_ylabel("mIoU (%)")
                ax.set_title("validation mIoU")

            plots.append(_Plot(
                "val_miou.png", "Validation mIoU",
                "mIoU (percent) on the validation split at each validation, for every prediction the "
                "run can make (each student and each fusion); the star is the best of the prediction "
                "that selects best.ckpt." + shaded, draw, (7.0, 4.2)))
    for group, name, title, caption, terms, unit, ylabel in (
        ("confident", "confident_ratio.png", "Confident ratio",
         "Share of the valid unlabelled pixels whose weak-view confidence reaches train.semi.tau "
         "(the pixels that give pseudo-labels), per student.", None, True, "share of pixels"),
        ("pseudo", "pseudo_label_accuracy.png", "Pseudo-label accuracy",
         "Where the unlabelled images have masks on disk (a diagnostic: they never reach a loss): the "
         "share of pseudo-labels that are right, of all pixels and of the confident ones.", None, True,
         "accuracy"),
    ):
        panels = _student_panels(train, groups[group], terms or _terms(groups[group], PSEUDO_LABEL_ACC),
                                 "all", unit, ylabel)
        if panels:
            plots.append(_panels_plot(name, title, caption + shaded, panels, colours, burn_in))
    if groups["by_class"]:
        students = list(dict.fromkeys(_split_key(k)[0] for k in groups["by_class"]))
        panels = [_Panel(student or "confident ratio by class",
                         [s for k in groups["by_class"] if _split_key(k)[0] == student
                          for s in [_series(train, k, _split_key(k)[1][len(CONFIDENT_BY_CLASS):])] if s.steps],
                         "share of the class's pixels", True) for student in students]
        plots.append(_panels_plot(
            "confident_by_class.png", "Confident ratio by class",
            "Of the valid unlabelled pixels a student pseudo-labels with a class, the share at or above "
            "train.semi.tau, per class (`confident_ratio:<class>`). The unlabelled terms count only those "
            "pixels: a class whose curve stays near 0 while the others' rise gets no pseudo-labels and "
            "tends to be worn away (co2s train notes it at the end)." + shaded, panels, colours, burn_in))
    if groups["teaching"]:
        series = [_series(train, k, k) for k in groups["teaching"]]
        panels = [_Panel("teaching shares", [s for s in series if s.steps], "share of pixels", True)]
        plots.append(_panels_plot(
            "teaching.png", "Teaching shares",
            "Co2S arbitration on the weak view: the share of valid unlabelled pixels where DINO teaches "
            "CLIP (`dino_teaches`), CLIP teaches DINO (`clip_teaches`), or neither is confident "
            "(`no_teaching`). Where both are confident with equal confidence both teach, so the shares "
            "can add up to more than 1." + shaded, panels, colours, burn_in))
    if groups["lr"]:
        series = [_series(train, k, k) for k in groups["lr"]]
        plots.append(_panels_plot(
            "learning_rate.png", "Learning rate",
            "The learning rate of the last step of each log period: `lr` for a single model, else one curve "
            "per optimiser and parameter group (`lr/<model>/<group>`, no-decay groups left out); poly "
            "decay with warm-up (train.poly_power, train.warmup_iters).",
            [_Panel("learning rate", [s for s in series if s.steps], "lr")], colours, None))
    if groups["schedule"]:
        panels = [_Panel("stability weight λ", [_series(train, k, k) for k in groups["schedule"]], "λ")]
        plots.append(_panels_plot(
            "stability_weight.png", "Stability weight",
            "λ(t), the weight of the Co2S stability loss (train.semi.stability_weight, ramped over "
            "train.semi.stability_ramp of the steps after the burn-in)." + shaded, panels, colours, burn_in))
    if groups["throughput"]:
        panels = [_Panel("throughput", [_series(train, THROUGHPUT, "images/s")], "labelled images / s")]
        plots.append(_panels_plot(
            "throughput.png", "Throughput",
            "Labelled images per second over each log period, across all processes; the checkpoint "
            "writes and validations after a period's record count in the next period's time, which "
            "shows as dips.", panels, colours, None))
    return plots


def _file_stem(split: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", split) or "_"


@dataclass
class _Evaluation:
    """A metrics_<split>.json of the run folder."""

    path: Path
    split: str
    metrics: dict | None = None
    problem: str | None = None
    plots: list[_Plot] = field(default_factory=list)


def _read_evaluations(folder: RunFolder) -> list[_Evaluation]:
    prefix, suffix = METRICS_FILE.split("{split}")
    found = []
    for path in sorted(folder.path.glob(f"{prefix}*{suffix}")):
        if not path.is_file():
            continue
        evaluation = _Evaluation(path, path.name[len(prefix): len(path.name) - len(suffix)])
        try:
            metrics = json.loads(path.read_text(errors="replace"))
        except (OSError, ValueError) as exc:
            evaluation.problem = f"unreadable ({type(exc).__name__}: {exc})"
        else:
            if not isinstance(metrics, dict) or not isinstance(metrics.get("IoU"), dict):
                evaluation.problem = "not a metrics file of co2s evaluate (no per-class IoU)"
            else:
                evaluation.metrics = metrics
        if evaluation.problem:
            warnings.warn(f"{path}: {evaluation.problem}; left out of the report", stacklevel=3)
        found.append(evaluation)
    return found


def _iou_plot(e: _Evaluation, stem: str, colours: _Colours) -> _Plot:
    m = e.metrics
    classes = [str(c) for c in (m.get("classes") or list(m["IoU"]))]
    main = str(m.get("prediction") or "model")
    predictions = m.get("predictions") if isinstance(m.get("predictions"), dict) else {}
    rows = {main: m, **{str(k): v for k, v in predictions.items() if k != main and isinstance(v, dict)}}
    n, k = len(classes), len(rows)

    def draw(fig) -> None:
        ax = fig.subplots()
        width = 0.8 / k
        for i, (name, scores) in enumerate(rows.items()):
            iou = scores.get("IoU") or {}
            values = [iou.get(c) for c in classes]
            xs = [j + (i - (k - 1) / 2) * width for j in range(n)]
            miou = scores.get("mIoU")
            label = f"{name} (mIoU {miou:.2f})" if _is_number(miou) else name
            ax.bar([x for x, v in zip(xs, values) if _is_number(v)], [v for v in values if _is_number(v)],
                   width=width, label=label, color=colours(name),
                   edgecolor="black" if name == main else None, linewidth=0.8)
            for x, v in zip(xs, values):
                if not _is_number(v):
                    ax.text(x, 1, "n/a", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(n))
        _class_labels(ax.set_xticklabels, classes, n > 6 or max(map(len, classes), default=0) > 10)
        ax.set_ylim(0, 100)
        ax.set_ylabel("IoU (%)")
        ax.set_title(f"per-class IoU, split {e.split}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)

    return _Plot(f"iou_{stem}.png", f"Per-class IoU ({e.split})",
                 f"IoU per class (percent) on the split {e.split}, from {e.path.name}: the reported "
                 f"prediction {main} (outlined) and every other prediction side by side; n/a: a class with "
                 "neither ground truth nor prediction.", draw, (max(6.5, min(22.0, 0.45 * n * k + 2.5)), 4.6))


def _class_labels(setter, classes: list[str], rotate: bool) -> None:
    if rotate:
        setter(classes, rotation=40, ha="right", rotation_mode="anchor")
    else:
        setter(classes)


def _confusion(m: dict, classes: list[str]) -> list[list[float]] | str:
    """The row-normalised ``[true, predicted]`` matrix, or why there is none."""
    matrix = m.get("confusion_matrix")
    if matrix is None:
        return "it holds no confusion matrix (written by an older co2s evaluate)"
    n = len(classes)
    if (not isinstance(matrix, list) or len(matrix) != n
            or any(not isinstance(row, list) or len(row) != n or not all(map(_is_number, row)) for row in matrix)):
        return f"its confusion matrix is not {n} x {n} numbers (one row per class)"
    if m.get("confusion_matrix_axes", ["true", "predicted"]) == ["predicted", "true"]:
        matrix = [list(col) for col in zip(*matrix)]
    out = []
    for row in matrix:
        total = sum(row)
        out.append([v / total if total > 0 else math.nan for v in row])
    return out


def _confusion_plot(e: _Evaluation, stem: str, matrix: list[list[float]], classes: list[str]) -> _Plot:
    n = len(classes)
    main = str(e.metrics.get("prediction") or "model")

    def draw(fig) -> None:
        ax = fig.subplots()
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        _class_labels(ax.set_xticklabels, classes, n > 4 or max(map(len, classes), default=0) > 10)
        ax.set_yticklabels(classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"confusion matrix ({main}), split {e.split}")
        if n <= 20:
            size = 9 if n <= 8 else 7 if n <= 14 else 5
            for i, row in enumerate(matrix):
                for j, v in enumerate(row):
                    text = "–" if math.isnan(v) else f"{100 * v:.0f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=size,
                            color="white" if not math.isnan(v) and v > 0.6 else "black")

    side = max(5.0, min(16.0, 0.55 * n + 3.0))
    return _Plot(f"confusion_{stem}.png", f"Confusion matrix ({e.split})",
                 f"Confusion matrix of the reported prediction {main} on the split {e.split}, each row "
                 "(true class) divided by its pixels: the diagonal is the recall of each class, the rest "
                 "of a row where its pixels went (numbers in percent; – a class without pixels).",
                 draw, (side + 1.2, side))


def _evaluation_plots(evaluations: list[_Evaluation], colours: _Colours) -> None:
    stems: set[str] = set()
    for e in evaluations:
        if e.metrics is None:
            continue
        stem = _file_stem(e.split)
        while stem in stems:
            stem += "_"
        stems.add(stem)
        e.plots.append(_iou_plot(e, stem, colours))
        classes = [str(c) for c in (e.metrics.get("classes") or list(e.metrics["IoU"]))]
        matrix = _confusion(e.metrics, classes)
        if isinstance(matrix, str):
            e.problem = f"no confusion matrix: {matrix}"
        else:
            e.plots.append(_confusion_plot(e, stem, matrix, classes))


def _save(plot: _Plot, out: Path, mpl) -> None:
    Figure, FigureCanvasAgg, rc_context = mpl
    # class names and keys are text, never TeX: "$" or "_" in a name must not become math
    with rc_context({"text.parse_math": False, "text.usetex": False}):
        fig = Figure(figsize=plot.size, dpi=_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        plot.draw(fig)
        with atomic_path(out / plot.name, durable=False) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight", pad_inches=0.1)


# -- the page -------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd; padding: 3px 8px;
text-align: left; vertical-align: top; } th { background: #f4f4f4; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.note { color: #8a5a00; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows if v not in (None, ""))
    return f"<table>{body}</table>"


def _figure(plot: _Plot) -> str:
    return (f'<figure id="{_e(Path(plot.name).stem)}"><img src="{_e(plot.name)}" alt="{_e(plot.title)}">'
            f"<figcaption><b>{_e(plot.title)}.</b> {_code(_e(plot.caption))}</figcaption></figure>")


def _code(escaped: str) -> str:
    """`name` in an escaped caption as <code>name</code>."""
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", escaped)


def _number(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else "n/a"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def _run_classes(config_text: str | None) -> list[str] | None:
    """``data.classes`` of the run's config.yaml, for the same untaught-class findings as the end
    of ``co2s train``; None when the file is missing or unreadable (the log alone then speaks)."""
    with contextlib.suppress(yaml.YAMLError, AttributeError, TypeError):
        classes = (yaml.safe_load(config_text or "") or {}).get("data", {}).get("classes")
        return [str(c) for c in classes] if isinstance(classes, list) else None
    return None


def _summary(folder: RunFolder, records: list[dict], train: list[dict], val: list[dict],
             run_info: list[dict], classes: list[str] | None = None) -> str:
    last = run_info[-1] if run_info else {}
    final = next((r for r in reversed(records) if r.get("kind") == "final"), None)
    steps = max((r["step"] for r in records if _is_number(r.get("step"))), default=0)
    total = last.get("total_steps")
    best, _ = best_validation(val)
    rows: list[tuple[str, Any]] = [
        ("run folder", folder.path.resolve()),
        ("steps", f"{steps} of {total}" if _is_number(total) else steps),
        ("finished", "yes" if final is not None else "no (no final record yet)"),
        ("best validation", None if best is None else
         f"mIoU {_number(best['mIoU'])} at step {best.get('step')} ({best.get('prediction') or 'mIoU'}, "
         f"split {best.get('split', 'val')})"),
        ("validations", len(val) or "none (no val split, or none ran yet)"),
        ("train records", f"{len(train)} (one per train.log_every steps)"),
    ]
    if final is not None and "ranks_in_sync" in final:
        rows.append(("weights in sync across processes", f"{final['ranks_in_sync']} ({final.get('ranks')} "
                                                         "process(es))"))
    burn_in = last.get("burn_in_steps")
    untaught = untaught_classes(train, int(burn_in) if _is_number(burn_in) else 0, classes=classes)
    if untaught:
        rows.append(("classes the unlabelled terms hardly teach", "; ".join(
            f"{f['class'] or 'every class'} ({(f['student'] + ': ') if f['student'] else ''}"
            + ("never pseudo-labelled" if f["ratio"] is None else f"{f['ratio']:.0%} of its pseudo-labels confident")
            + f", all classes {f['overall']:.0%})" for f in untaught)))
    rates = [r[THROUGHPUT] for r in train if _is_number(r.get(THROUGHPUT))]
    if rates:
        rows.append(("throughput", f"{sum(rates) / len(rates):.2f} labelled images/s (mean of the log periods)"))
    if run_info:
        first = run_info[0]
        rows.append(("started", first.get("started")))
        with contextlib.suppress(OSError):
            mtime = folder.metrics_log.stat().st_mtime
            rows.append(("last record written", time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(mtime))))
            with contextlib.suppress(TypeError, ValueError):
                began = datetime.strptime(str(first.get("started")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
                rows.append(("wall time", f"{_duration(max(0.0, mtime - began))} from the first start to the "
                                          "last record (pauses between restarts included)"))
        rows.append(("starts", f"{len(run_info)} (resumed {len(run_info) - 1} time(s))"))
        for key, label in (("co2s_version", "co2s version"), ("git_revision", "git revision"),
                           ("torch", "torch"), ("python", "python"), ("host", "host"),
                           ("world_size", "processes"), ("burn_in_steps", "burn-in steps")):
            rows.append((label, last.get(key)))
        command = last.get("command")
        if isinstance(command, list):
            rows.append(("command", " ".join(str(c) for c in command)))
    _, per = best_validation(val)
    text = _table(rows)
    if len(per) > 1:
        text += ("<p>Best validation mIoU of each prediction:</p><table><tr><th>prediction</th><th>mIoU</th>"
                 "<th>step</th></tr>" + "".join(f"<tr><td>{_e(n)}</td><td>{_number(b['mIoU'])}</td><td>{_e(b['step'])}</td></tr>"
                                                 for n, b in per.items()) + "</table>")
    if len(run_info) > 1:
        text += ("<details><summary>every start</summary><table><tr><th>started</th><th>from step</th>"
                 "<th>co2s</th><th>git revision</th><th>host</th><th>processes</th></tr>"
                 + "".join("<tr>" + "".join(f"<td>{_e(i.get(k, ''))}</td>" for k in
                                            ("started", "resumed_from_step", "co2s_version", "git_revision",
                                             "host", "world_size")) + "</tr>" for i in run_info)
                 + "</table></details>")
    return text


def _evaluation_section(e: _Evaluation) -> str:
    parts = [f"<h2>Evaluation: {_e(e.split)}</h2>", f"<p>From <code>{_e(e.path.name)}</code>.</p>"]
    m = e.metrics
    if m is not None:
        rows = [("prediction reported", m.get("prediction")), ("mIoU", _number(m.get("mIoU"))),
                ("overall accuracy", _number(m.get("OA"))), ("mF1", _number(m.get("mF1"))),
                ("labelled pixels", m.get("pixels")), ("images", m.get("images")),
                ("checkpoint", m.get("checkpoint")), ("checkpoint step", m.get("checkpoint_step"))]
        parts.append(_table(rows))
        predictions = m.get("predictions")
        if isinstance(predictions, dict) and len(predictions) > 1:
            parts.append("<table><tr><th>prediction</th><th>mIoU</th><th>OA</th><th>mF1</th></tr>" + "".join(
                f"<tr><td>{_e(n)}</td><td>{_number(s.get('mIoU'))}</td><td>{_number(s.get('OA'))}</td>"
                f"<td>{_number(s.get('mF1'))}</td></tr>" for n, s in predictions.items() if isinstance(s, dict))
                + "</table>")
    if e.problem:
        parts.append(f'<p class="note">{_e(e.path.name)}: {_e(e.problem)}.</p>')
    parts += [_figure(p) for p in e.plots]
    return "\n".join(parts)


def _page(folder: RunFolder, records, train, val, run_info, plots, evaluations, config_text) -> str:
    name = folder.path.resolve().name
    body = [f"<h1>co2s report: {_e(name)}</h1>",
            f"<p>Run folder <code>{_e(folder.path.resolve())}</code>, written by co2s {_e(__version__)} "
            f"on {_e(time.strftime('%Y-%m-%d %H:%M'))}.</p>",
            "<h2>Run</h2>", _summary(folder, records, train, val, run_info, _run_classes(config_text)),
            "<h2>Training</h2>"]
    if not train:
        body.append('<p class="note">No train records yet.</p>')
    if not val:
        body.append('<p class="note">No validation records (the config has no val split, or no validation '
                    "ran yet).</p>")
    body += [_figure(p) for p in plots]
    if not evaluations:
        body.append("<h2>Evaluation</h2><p>No metrics_&lt;split&gt;.json in the run folder: "
                    "<code>co2s evaluate --checkpoint RUN/best.ckpt</code> writes one.</p>")
    body += [_evaluation_section(e) for e in evaluations]
    body.append("<h2>Config</h2>")
    if config_text is None:
        body.append(f'<p class="note">No {_e(folder.config.name)} in the run folder.</p>')
    else:
        body.append(f"<p>The effective config the run trained under ({_e(folder.config.name)}):</p>"
                    f"<pre>{_e(config_text)}</pre>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta name="generator" content="{_e(GENERATOR)} {_e(__version__)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>co2s report: {_e(name)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# -- the entry point ----------------------------------------------------------------------------------

def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Draw the report of the run folder ``run_dir`` into ``out_dir`` (default ``RUN/report/``) and
    return the path of its ``index.html``.

    PNGs: every loss term of the train records (``loss.png``), validation mIoU of each prediction
    (``val_miou.png``), the confident ratio, pseudo-label accuracy, teaching shares, learning rate,
    stability weight and throughput where the records hold them, and for every
    ``metrics_<split>.json`` in the run folder the per-class IoU (``iou_<split>.png``) and the
    row-normalised confusion matrix (``confusion_<split>.png``). ``index.html`` links them (relative
    links) and holds the run's summary and its config.

    Raises :class:`~co2s.errors.Co2sError` (one line, nothing written) when ``run_dir`` is not a run
    folder, when ``out_dir`` holds files that no report wrote, or when matplotlib is missing. In a
    folder of an earlier report only the files that report wrote are replaced or removed.
    """
    folder = check_run_folder(run_dir)
    out = Path(out_dir) if out_dir is not None else folder.path / REPORT_DIR
    if out.exists() and out.is_dir() and out.resolve() == folder.path.resolve():
        raise Co2sError(f"nothing written: the report does not go into the run folder {out} itself; "
                        f"give another --out (default {folder.path / REPORT_DIR})")
    mpl = _matplotlib()

    records = read_log(folder.metrics_log)
    train = sorted((r for r in records if r.get("kind", "train") == "train"), key=lambda r: _step(r))
    val = sorted((r for r in records if r.get("kind") == "val"), key=lambda r: _step(r))
    run_info = read_log(folder.run_info) if folder.run_info.is_file() else []
    config_text = folder.config.read_text(errors="replace") if folder.config.is_file() else None

    students = [s for s in (_split_key(k)[0] for k in _train_keys(train)) if s and s != "lr"]
    colours = _Colours(students)
    plots = _training_plots(train, val, run_info, colours)
    evaluations = _read_evaluations(folder)
    _evaluation_plots(evaluations, colours)
    everything = plots + [p for e in evaluations for p in e.plots]
    planned = [p.name for p in everything] + [INDEX]

    previous = _check_out_dir(out, planned)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Co2sError(f"nothing written: cannot create the report folder {out}: {exc.strerror or exc}") from None
    # Named before any is written: a report stopped half-way still owns what it wrote.
    _write_manifest(out, folder.path.resolve(), sorted(previous | set(planned)))
    for plot in everything:
        _save(plot, out, mpl)
    page = _page(folder, records, train, val, run_info, plots, evaluations, config_text)
    write_text(out / INDEX, page, durable=False)
    for stale in sorted(previous - set(planned)):
        with contextlib.suppress(OSError):  # gone, or replaced by a folder: not ours to remove
            (out / stale).unlink()
    _write_manifest(out, folder.path.resolve(), planned)
    return out / INDEX


def _step(record: dict) -> float:
    step = record.get("step")
    return step if _is_number(step) else math.inf
