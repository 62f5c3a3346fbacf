"""The JSONL metrics log every run writes (one JSON object per line), and TensorBoard when installed."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from co2s.atomic import write_text
from co2s.methods.unimatch import CONFIDENT_BY_CLASS


def _parse(path: Path) -> list[dict[str, Any]]:
    """The records of a log; a torn line (a crash or a full disk mid-write) is dropped with a warning."""
    records = []
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            where = "last line" if number == len(lines) else f"line {number}"
            warnings.warn(f"{path}: {where} is not a complete JSON record (torn write?); dropped",
                          stacklevel=3)
            continue
        records.append(record)
    return records


class MetricsLog:
    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        self._tb_tried = False
        self._resumed_at: int | None = None  # TensorBoard drops its own events after this step

    def _tensorboard(self):
        """The TensorBoard writer (the `tensorboard` extra), made on first use so a resumed run
        purges the events it logs again; None when tensorboard is not installed."""
        if not self._tb_tried:
            self._tb_tried = True
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if self._resumed_at is None else self._resumed_at + 1
                self._tb = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=purge)
            except Exception:  # tensorboard is optional
                self._tb = None
        return self._tb

    def truncate_after(self, step: int) -> None:
        """Keep only what the checkpoint at ``step`` has seen: newer records are logged again when
        training continues, and the ``final`` record is written again at the end (``step`` 0 with
        no checkpoint starts the log afresh)."""
        if not self.enabled or not self.path.is_file():
            return
        self._resumed_at = step if step > 0 else None
        kept = [r for r in _parse(self.path) if r.get("step", 0) <= step and r.get("kind") != "final"]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept), durable=False)

    def records(self) -> list[dict[str, Any]]:
        """The complete records written so far (none where this process does not write the log)."""
        return _parse(self.path) if self.enabled and self.path.is_file() else []

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        tb = self._tensorboard()
        if tb is not None:
            step = record.get("step", 0)
            prefix = record.get("kind", "train")
            try:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "step":
                        tb.add_scalar(f"{prefix}/{key}", value, step)
            except Exception as exc:  # a side channel: metrics.jsonl is the record, training goes on
                warnings.warn(f"TensorBoard logging stopped: {type(exc).__name__}: {exc}", stacklevel=2)
                self._tb = None

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def take_validation(best: dict | None, per_prediction: dict[str, dict], record: dict) -> tuple[dict | None, bool]:
    """Fold one validation record into the best so far (the model selected by: first highest
    finite mIoU) and ``per_prediction`` (each student's and fusion's own best, updated in place);
    returns the best and whether this record is the new best. The one rule, for the trainer
    (best.ckpt, and a resume reading the log back) and for ``co2s report``."""
    for key, value in record.items():
        if key.startswith("mIoU/") and _finite(value):
            name = key[len("mIoU/"):]
            old = per_prediction.get(name)
            if old is None or value > old["mIoU"]:
                per_prediction[name] = {"step": record.get("step"), "mIoU": value}
    value = record.get("mIoU")
    if _finite(value) and (best is None or value > best["mIoU"]):
        return {"step": record.get("step"), "mIoU": value, "split": record.get("split", "val"),
                "prediction": record.get("selected_by")}, True
    return best, False


def best_validation(records: list[dict]) -> tuple[dict | None, dict[str, dict]]:
    """The best of the validation records ``records`` and the best per prediction
    (:func:`take_validation`)."""
    best, per_prediction = None, {}
    for record in records:
        best, _ = take_validation(best, per_prediction, record)
    return best, per_prediction


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def untaught_classes(records: list[dict], after_step: int = 0, below: float = 0.25, least: float = 0.05,
                     classes: list[str] | None = None) -> list[dict[str, Any]]:
    """Classes the unlabelled terms hardly teach: in the train records after ``after_step`` (the
    burn-in), a student whose pseudo-labels of the class were confident on less than ``below``
    times its share over all classes (when that is at least ``least``). Only confident pixels count
    in those terms, so such a class gets no pseudo-labels while the others get many: a rare class,
    or one the students confuse, which the unlabelled images then tend to wear away. And a student
    confident on less than ``least`` of its pixels overall, whom they teach nothing (``class``
    None). With ``classes``, a class a student never pseudo-labels at all is one too (``ratio`` None).
    One dict per finding: ``student`` (None for a single model), ``class``, ``ratio``, ``overall``."""
    train = [r for r in records if r.get("kind") == "train" and (r.get("step") or 0) > after_step]
    sums: dict[str, list[float]] = {}
    for record in train:
        for key, value in record.items():
            if key.rpartition("/")[2].startswith("confident_ratio") and _finite(value):  # overall and by class
                sums.setdefault(key, []).append(value)
    mean = {key: sum(values) / len(values) for key, values in sums.items()}
    found = []
    for key, ratio in mean.items():
        student, _, term = key.rpartition("/")
        if term == "confident_ratio" and ratio < least:
            found.append({"student": student or None, "class": None, "ratio": ratio, "overall": ratio})
        if not term.startswith(CONFIDENT_BY_CLASS):
            continue
        overall = mean.get(f"{student}/confident_ratio" if student else "confident_ratio")
        if overall is not None and overall >= least and ratio < below * overall:
            found.append({"student": student or None, "class": term[len(CONFIDENT_BY_CLASS):], "ratio": ratio,
                          "overall": overall})
    for prefix in dict.fromkeys(k.partition(CONFIDENT_BY_CLASS)[0] for k in mean if CONFIDENT_BY_CLASS in k):
        overall = mean.get(f"{prefix}confident_ratio")
        for name in classes or []:
            if f"{prefix}{CONFIDENT_BY_CLASS}{name}" not in mean and overall is not None and overall >= least:
                found.append({"student": prefix.rstrip("/") or None, "class": name, "ratio": None, "overall": overall})
    return found


def untaught_class_notes(records: list[dict], after_step: int = 0, classes: list[str] | None = None) -> list[str]:
    """One line per :func:`untaught_classes` finding, for the end of ``co2s train``."""
    notes = []
    for f in untaught_classes(records, after_step, classes=classes):
        whose = f"{f['student']}'s pseudo-labels" if f["student"] else "pseudo-labels"
        if f["class"] is None:
            notes.append(f"note: {whose} were confident on {f['ratio']:.0%} of the pixels in the semi-supervised "
                         f"steps: the unlabelled terms taught {f['student'] or 'the model'} next to nothing, a "
                         "supervised run in all but name (a student still learning the labels, or train.semi.tau "
                         "too high for it; docs/methods.md, 'Is the semi-supervised part acting?')")
            continue
        said = (f"{whose} never gave {f['class']}" if f["ratio"] is None
                else f"{whose} of {f['class']} were confident on {f['ratio']:.0%} of its pixels")
        notes.append(f"note: {said} in the semi-supervised steps (all classes: {f['overall']:.0%} confident): the "
                     f"unlabelled terms hardly teach {f['class']} and may wear it away; compare its IoU with a "
                     "supervised run (docs/methods.md, 'Is the semi-supervised part acting?')")
    return notes


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record of a metrics log (torn lines dropped with a warning)."""
    return _parse(Path(path))


def checkpoint_evaluations(checkpoint: str | os.PathLike, step: int | None, best: dict | None) -> dict:
    """What the run folder of a training checkpoint says of its scores, for a model card:
    ``validation`` (the run log's validation at the checkpoint's step, with per-class IoU; else the
    checkpoint's ``best`` record when it is of that step) and ``test`` (the run folder's
    ``metrics_test.json`` when ``co2s evaluate`` scored this very checkpoint at this step).
    Missing or unreadable files give nothing: a card never stops an export."""
    from co2s.evaluation import metrics_file
    from co2s.run_folder import RunFolder

    checkpoint = Path(checkpoint)
    folder = RunFolder(checkpoint.parent)
    found: dict = {}
    logged = []
    if step is not None and folder.metrics_log.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torn lines: the report and the trainer say so
            logged = [r for r in read_log(folder.metrics_log) if r.get("kind") == "val" and r.get("step") == step]
    source = f"{folder.metrics_log.name}, validation at step {step}"
    if logged:
        record = logged[-1]
        found["validation"] = {"mIoU": record.get("mIoU"), "IoU": record.get("IoU"), "step": step,
                               "prediction": record.get("selected_by"), "source": source}
    elif isinstance(best, dict) and step is not None and best.get("step") == step:
        found["validation"] = {"mIoU": best.get("mIoU"), "step": step, "prediction": best.get("prediction"),
                               "source": source}
    test = folder.path / metrics_file("test")
    try:
        metrics = json.loads(test.read_text())
    except (OSError, ValueError):
        metrics = None
    if (isinstance(metrics, dict) and step is not None and metrics.get("checkpoint_step") == step
            and Path(str(metrics.get("checkpoint"))).name == checkpoint.name):
        found["test"] = {"mIoU": metrics.get("mIoU"), "IoU": metrics.get("IoU"), "prediction": metrics.get("prediction"),
                         "step": step, "source": f"{test.name} (co2s evaluate)"}
    return found
