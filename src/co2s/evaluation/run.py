"""Evaluation on a split (``co2s evaluate`` and the public ``evaluate``): metrics of what the
Segmenter predicts, every student and fusion side by side."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from co2s.atomic import write_text
from co2s.data.module import data_module
from co2s.errors import Co2sError, DataError
from co2s.evaluation import metrics_file
from co2s.evaluation.evaluator import score_predictions
from co2s.evaluation.metrics import format_table
from co2s.inference.segmenter import Segmenter, resolve_device


def metrics_path(split: str, out: str | os.PathLike | None, default_dir: str | os.PathLike) -> Path:
    """Where the metrics of ``split`` go: ``out`` when it is a ``.json`` path (and not a folder),
    else ``metrics_<split>.json`` (:func:`co2s.evaluation.metrics_file`) in the folder ``out``, or
    in ``default_dir`` without ``out``."""
    if out is None:
        return Path(default_dir) / metrics_file(split)
    out = Path(out)
    if out.suffix.lower() == ".json" and not out.is_dir():
        return out
    return out / metrics_file(split)


def check_metrics_path(path: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse, before anything is scored, a metrics path that is one of ``inputs`` (a checkpoint,
    a model folder's files), a folder, or (without ``overwrite``) an existing file."""
    key = os.path.normcase(path.resolve())
    for source in inputs:
        same = os.path.normcase(source.resolve()) == key
        if not same and path.exists() and source.exists():
            try:
                same = os.path.samefile(path, source)
            except OSError:
                same = False
        if same:
            same = "" if str(source) == str(path) else f" ({source})"
            raise Co2sError(f"nothing evaluated: the metrics file {path} is one of the inputs{same}; "
                            "give another --out")
    if path.is_dir():
        raise Co2sError(f"nothing evaluated: the metrics file {path} is a folder; give another --out")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise Co2sError(f"nothing evaluated: {path} exists (an earlier evaluation of this split?); "
                        "give --overwrite to replace it, or another --out")
    if path.parent.exists() and not path.parent.is_dir():
        raise Co2sError(f"nothing evaluated: {path.parent} is a file, not a folder for {path.name}; "
                        "--out takes a folder or a .json path")


def _write_metrics(path: Path, result: dict) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Co2sError(f"cannot create the folder {path.parent} for {path.name}: {exc}") from None
    return str(write_text(path, json.dumps(result, indent=2)))


def evaluate(segmenter, data=None, split: str = "test", out: str | os.PathLike | None = None,
             progress: bool = True, predictions: list[str] | None = None, *, overwrite: bool = False) -> dict:
    """Score ``segmenter`` on ``data.splits.<split>`` and return the metrics (nothing is written
    unless ``out`` is given: a folder for ``metrics_<split>.json``, or a ``.json`` path; an existing
    file is replaced only with ``overwrite``). ``data`` is a data config (default: the one the
    models were trained with); images are read with the model's own bands and scaling (its
    inference contract).

    The top-level scores are the Segmenter's prediction (its student or fusion); ``predictions``
    holds every student and fusion side by side.
    """
    data = model_data(segmenter, data or segmenter.training_config.data)
    if out is not None:
        out = metrics_path(split, out, ".")
        check_metrics_path(out, _model_files(segmenter), overwrite)
    wanted = list(dict.fromkeys([segmenter.prediction, *(predictions or segmenter.choices)]))
    dataset = data_module(data, segmenter.in_channels, progress, report=False).evaluation_set(split)
    scores_by_name = score_predictions(segmenter, dataset, wanted, progress=progress)
    scores = scores_by_name[segmenter.prediction]
    keys = ("mIoU", "OA", "mF1", "IoU", "F1", "precision", "recall")
    result = {
        **{k: scores[k] for k in keys},
        "prediction": segmenter.prediction,
        "classes": list(data.classes),
        "confusion_matrix": scores["confusion_matrix"],
        "confusion_matrix_axes": ["true", "predicted"],
        "pixels": scores["pixels"],
        "predictions": {name: {k: s[k] for k in (*keys, "confusion_matrix")} for name, s in scores_by_name.items()},
        "split": split,
        **dataset.record(),
        "window": segmenter.tile,
        "stride": segmenter.stride,
        "blend": "hann",
    }
    if out is not None:
        result["path"] = _write_metrics(out, result)
    return result


def _model_files(segmenter) -> list[Path]:
    """The files a loaded Segmenter was read from: its checkpoint, or its model folder's files."""
    source = segmenter.info.get("source") if isinstance(getattr(segmenter, "info", None), dict) else None
    if not source:
        return []
    source = Path(source)
    return sorted(source.iterdir()) if source.is_dir() else [source]


def model_data(segmenter, data):
    """``data`` reading images as the model does: its classes must be the model's; its bands and
    scaling are the model's (a warning says when the config said otherwise)."""
    if list(data.classes) != segmenter.classes:
        raise DataError(f"the data config's classes {list(data.classes)} are not the model's {segmenter.classes}")
    differ = {key: (getattr(data, key), value) for key, value in (("bands", segmenter.bands), ("scale", segmenter.scale))
              if getattr(data, key) != value}
    if not differ:
        return data
    shown = "; ".join(f"data.{k} {given!r} -> {model!r}" for k, (given, model) in differ.items())
    warnings.warn(f"images are read as the model was trained to read them: {shown}", stacklevel=3)
    return data.model_copy(update={k: model for k, (_, model) in differ.items()})


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    config=None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    prediction: str | None = None,
    overrides: list[str] | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """``co2s evaluate``: load a checkpoint (or exported model folder), score it on a split of
    ``config`` (default: the config stored in the checkpoint) and write ``metrics_<split>.json``
    (:func:`co2s.evaluation.metrics_file`): beside a training checkpoint (its run folder); for a
    model folder, which is shared and never written into, in the current folder; or in ``out`` (a
    folder, or a ``.json`` path). The path is checked before scoring: never the checkpoint or a
    file of the model folder, and an existing file only with ``overwrite``. ``overrides``
    (``--set``) apply to the config, e.g. to point ``data.root`` elsewhere."""
    segmenter = Segmenter.load(checkpoint, prediction)
    config = config if config is not None else segmenter.training_config
    if overrides:
        config = config.override(overrides)
    source = Path(checkpoint)
    is_folder = bool(segmenter.info.get("is_folder")) or source.is_dir()
    if is_folder and out is None and Path.cwd().resolve() == source.resolve():
        raise Co2sError(f"nothing evaluated: the current folder is the model folder {source.resolve()}, which is not "
                        "written into; give --out (the model folder itself, if that is what you want)")
    out = metrics_path(split, out, Path.cwd() if is_folder else source.parent)
    check_metrics_path(out, _model_files(segmenter), overwrite)
    segmenter = segmenter.to(resolve_device(device))
    result = evaluate(segmenter, config.data, split, None, progress)
    info = segmenter.info
    result.update({"checkpoint": str(source), "checkpoint_step": info.get("step"), "best": info.get("best")})
    result["path"] = _write_metrics(out, result)
    return result


def print_report(result: dict) -> None:
    unit = ("raster" if "rasters" in result else "image") + ("" if result["images"] == 1 else "s")
    print(format_table({**result}, f"{result['split']} ({result['images']} {unit}), "
                       f"checkpoint {result['checkpoint']} step {result['checkpoint_step']}, "
                       f"prediction {result['prediction']}"))
    if len(result["predictions"]) > 1:
        print("side by side: " + ", ".join(f"{name} mIoU {s['mIoU']:.2f}"
                                           for name, s in result["predictions"].items()))
    path, source = Path(result["path"]), Path(result["checkpoint"])
    note = ""
    if source.is_dir() and source.resolve() not in path.resolve().parents:
        note = " (a model folder is not written into; --out DIR chooses the folder)"
    print(f"metrics written to {path}{note}")
