"""The public Python API: configure, train, evaluate, predict, export, split. The CLI is a thin
layer over these functions; ``import co2s`` exposes them (loaded on first use, so importing the
package stays fast).

    import co2s

    config = co2s.load_config(["ai4mars", "models/co2s-tiny"], {"train.method": "co2s", ...})
    run = co2s.train(config)
    segmenter = co2s.Segmenter.load(run.best_checkpoint)
    metrics = co2s.evaluate(segmenter, split="test")
    prediction = segmenter.predict(image)  # [C, H, W] scaled image -> classes, confidence

Each function shows a distinct warning once per call (a per-file warning does not repeat for
every file; :mod:`co2s.warnings_once`).
"""

from __future__ import annotations

import os
from pathlib import Path

from co2s.config.loader import load_config
from co2s.engine.run_dir import Run
from co2s.errors import Co2sError
from co2s.inference.predict import PredictionResult, predict_files
from co2s.inference.scene import PredictOptions
from co2s.inference.segmenter import Prediction, Segmenter
from co2s.warnings_once import warning_once_per_call

__all__ = ["Prediction", "PredictOptions", "PredictionResult", "Run", "Segmenter", "embed_text", "evaluate",
           "evaluate_checkpoint", "export", "load_config", "make_splits", "model_summary", "predict", "preset",
           "prepare", "presets", "report", "suggest", "train"]


@warning_once_per_call
def train(config, out: str | os.PathLike | None = None, progress: bool = True, *,
          extend: int | None = None) -> Run:
    """Train (or resume) the run ``config`` describes, in ``out`` (default ``config.run_dir``);
    ``extend``: continue that run to a new total of ``extend`` steps (docs/training.md)."""
    from co2s.engine.trainer import Trainer  # the engine (Lightning Fabric) is imported only to train

    return Trainer(config, out, progress, extend).fit()


@warning_once_per_call
def prepare(dataset: str, source: str | os.PathLike, out: str | os.PathLike | None = None, *,
            splits: str | os.PathLike | None = None, link: bool = True, progress: bool = True) -> dict:
    """``co2s prepare``: a paper dataset's official release in its preset's layout (default ``out``:
    the preset's ``data.root``); see :func:`co2s.data.prepare.prepare_dataset`."""
    from co2s.data.prepare import default_out, prepare_dataset

    return prepare_dataset(dataset, source, out or default_out(dataset), splits=splits, link=link,
                           progress=progress)


@warning_once_per_call
def report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``co2s report``: the pictures and ``index.html`` of a run folder (default ``RUN/report``);
    see :func:`co2s.engine.report.write_report`."""
    from co2s.engine.report import write_report

    return write_report(run_dir, out)


@warning_once_per_call
def evaluate(segmenter, data=None, split: str = "test", out: str | os.PathLike | None = None,
             progress: bool = True, predictions: list[str] | None = None, *, overwrite: bool = False) -> dict:
    """Score ``segmenter`` on a split of ``data`` (default: its training config's data); with
    ``out`` (a folder for ``metrics_<split>.json``, or a ``.json`` path) also write the metrics,
    replacing an existing file only with ``overwrite``; see :func:`co2s.evaluation.run.evaluate`."""
    from co2s.evaluation.run import evaluate as run

    return run(segmenter, data, split, out, progress, predictions, overwrite=overwrite)


@warning_once_per_call
def evaluate_checkpoint(checkpoint: str | os.PathLike, config=None, split: str = "test",
                        out: str | os.PathLike | None = None, device: str = "auto", progress: bool = True,
                        prediction: str | None = None, overrides: list[str] | None = None, *,
                        overwrite: bool = False) -> dict:
    """``co2s evaluate``: score a checkpoint or model folder and write ``metrics_<split>.json``
    beside a training checkpoint, in the current folder for a model folder, or in ``out`` (a folder,
    or a ``.json`` path); an existing file is replaced only with ``overwrite``, an input never; see
    :func:`co2s.evaluation.run.evaluate_checkpoint`."""
    from co2s.evaluation.run import evaluate_checkpoint as run

    return run(checkpoint, config, split, out, device, progress, prediction, overrides, overwrite=overwrite)


@warning_once_per_call
def predict(model, inputs: list[str | os.PathLike], out_dir: str | os.PathLike, *, device: str = "auto",
            prediction: str | None = None, progress: bool = True, overwrite: bool = False,
            **options) -> list[PredictionResult]:
    """Predict image files, folders or globs into ``out_dir`` (PNG for plain images, GeoTIFF for
    rasters of any size) with a :class:`Segmenter`, a checkpoint or an exported model folder.
    ``options``: the fields of :class:`PredictOptions` (tile, overlap, tta, precision, ...).

    Every output path is checked before anything is predicted: an output that is an input, two
    inputs writing the same file, or (without ``overwrite``) an existing file raise a ``DataError``
    and nothing is written."""
    return predict_files(model, [str(i) for i in inputs], out_dir, device, progress, prediction,
                         PredictOptions(**options), overwrite=overwrite)


@warning_once_per_call
def export(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, prediction: str | None = None,
           onnx: bool = False, tile: int | None = None, scale: float | None = None, logits: bool = False,
           gsd: float | None = None) -> dict[str, Path]:
    """Write a model folder to share (weights-only safetensors, a small JSON config around the
    inference contract, and the model card ``README.md`` with the run's validation and test scores
    where its folder holds them) from a training checkpoint; with ``onnx``, also ``model.onnx``
    for a fixed ``tile`` (default: the evaluation window), ready for QGIS Deepness and GeoDeep
    (:mod:`co2s.inference.onnx_export`; ``scale``: what the graph divides stored values by, for
    a model of scale ``auto`` whose training images' range is not recorded or for other imagery;
    ``logits`` adds each student's logits). ``gsd`` (metres per pixel) sets the ground sample
    distance the model records, for imagery whose files do not say it. Returns the written paths."""
    import math
    import warnings

    from co2s.engine.metrics_log import checkpoint_evaluations

    if scale is not None and not onnx:
        raise Co2sError("--scale is the ONNX graph's scale: give it with --onnx")
    if logits and not onnx:
        raise Co2sError("--logits adds outputs to model.onnx: give it with --onnx")
    if gsd is not None and not (isinstance(gsd, (int, float)) and math.isfinite(gsd) and gsd > 0):
        raise Co2sError(f"--gsd must be a positive number of metres per pixel, got {gsd}")
    segmenter = Segmenter.load(checkpoint, prediction=prediction)
    if gsd is not None:
        segmenter.contract = segmenter.contract.model_copy(update={"gsd": float(gsd)})
    evaluations = ({} if segmenter.info.get("is_folder")
                   else checkpoint_evaluations(checkpoint, segmenter.info.get("step"), segmenter.info.get("best")))
    written: dict[str, Path] = {}
    described = None
    if onnx:
        from co2s.inference.onnx_export import export_onnx, graph_scale

        chosen = graph_scale(segmenter.contract, scale)  # refuse before anything is written
        trained = segmenter.contract.auto_scale
        if trained is not None and chosen != trained:
            warnings.warn(f"the model's training images were divided by {trained:g} (their data type's range); "
                          f"model.onnx divides by {chosen:g} (--scale): right only for imagery of that range",
                          stacklevel=3)  # the caller of export, past warning_once_per_call
        tile = tile or segmenter.tile
        written["onnx"] = export_onnx(segmenter, Path(out_dir) / "model.onnx", tile, scale=scale, logits=logits)
        described = {"tile": tile, "resolution": segmenter.contract.gsd is not None}
        if segmenter.contract.gsd is None:
            warnings.warn("the model's ground sample distance is unknown (its training imagery was not "
                          "georeferenced and data.gsd was not set): model.onnx has no resolution key, so QGIS "
                          "Deepness uses what its panel says and GeoDeep assumes 10 cm/px; give --gsd METRES "
                          "to record it", stacklevel=3)
    written = {"folder": segmenter.save_pretrained(out_dir, evaluations, described), **written}
    return written


@warning_once_per_call
def suggest(checkpoint, out: str | os.PathLike, config=None, *, budget: int = 10, score: str = "default",
            pool: list[str] | None = None, exclude: list[str] | None = None, window: int | None = None,
            spacing: int | None = None, sheet: int = 12, prediction: str | None = None, device: str = "auto",
            batch_size: int | None = None, overwrite: bool = False, progress: bool = True,
            overrides: list[str] | None = None) -> dict:
    """``co2s suggest``: what to label next. Rank the unlabelled tiles (``pool``, default
    ``data.splits.unlabelled``, minus the labelled, validation, test and ``exclude`` lists) or the
    windows of scenes (``window`` pixels, ``spacing`` apart, outside labels and held-out regions)
    by how unsure the model is there (``score``: default, entropy, margin, disagreement, balanced;
    :mod:`co2s.inference.uncertainty`), and write the top ``budget`` into ``out``
    (:mod:`co2s.evaluation.suggest`). ``checkpoint``: a checkpoint, a model folder or a
    :class:`Segmenter`; ``config``: the data (default: the checkpoint's own, with ``overrides``:
    ``--set`` strings such as ``data.root=/new/place``)."""
    from co2s.evaluation.suggest import suggest as run
    from co2s.inference.segmenter import resolve_device

    segmenter = checkpoint if isinstance(checkpoint, Segmenter) else Segmenter.load(checkpoint, prediction)
    if prediction is not None and isinstance(checkpoint, Segmenter):
        segmenter.contract = segmenter.contract.with_prediction(prediction)
    config = config if config is not None else segmenter.training_config
    data = (config.override(overrides) if overrides else config).data
    segmenter = segmenter.to(resolve_device(device))
    return run(segmenter, data, out, budget=budget, score=score, pool=pool, exclude=exclude, window=window,
               spacing=spacing, sheet=sheet, overwrite=overwrite, progress=progress, batch_size=batch_size)


@warning_once_per_call
def model_summary(config, *, random_weights: bool = False, input_size: int | None = None) -> dict:
    """Parameters (total, trainable) and feature shapes of each model of ``config``
    (``co2s model-summary``); ``random_weights`` builds the architectures without reading weights."""
    from co2s.models.summary import model_summary as summary

    return summary(config, load_weights=not random_weights, input_size=input_size)


@warning_once_per_call
def embed_text(config, out: str | os.PathLike, *, clip: str | None = None, tokenizer: str | None = None,
               template: str | None = None) -> tuple[Path, tuple[int, int]]:
    """CLIP text prototypes of the classes of ``config`` saved to ``out`` (``co2s embed-text``);
    returns the path and the prototypes' shape."""
    from co2s.models.guidance import clip_text_prototypes, save_prototypes

    result = clip_text_prototypes(config.data, config.model.students, clip=clip, tokenizer=tokenizer,
                                  template=template)
    path = save_prototypes(out, result.prototypes, config.data.classes, result.clip_source, result.template)
    return Path(path), tuple(result.prototypes.shape)


def presets() -> list[str]:
    """The packaged presets and model fragments (``co2s presets``)."""
    from co2s.config.loader import model_presets, preset_names

    return preset_names() + model_presets()


def preset(name: str, overrides: list[str] | None = None) -> str:
    """A preset or YAML file fully resolved and validated, as YAML (``co2s presets NAME``)."""
    from co2s.config.loader import dump_yaml

    return dump_yaml(load_config(name, overrides))


@warning_once_per_call
def make_splits(source: str | None, ratio: str, seed: int, out_dir: str | os.PathLike, *,
                config=None, root: str | None = None, stratify: bool = False, by: str | None = None,
                block: float | None = None, buffer: float | None = None, attribute: str | None = None,
                layer: str | None = None, where: str | None = None) -> dict:
    """Seeded splits for a labelled ``ratio`` such as ``1/8``.

    Tiles: labelled/unlabelled lists of ``source`` (a list file or folder; default
    ``data.splits.train`` of ``config``). A vector label file (``source`` a .gpkg, .geojson, .shp,
    ...; default with ``config``: ``data.scenes.labels.vector``): ``labelled.gpkg`` and
    ``held_out.gpkg`` by feature ``count`` or ``area`` (``by``, default area), optionally
    spatially blocked (``block``, ``buffer``: CRS units) and stratified by class (``attribute``).
    """
    from co2s.data.splitting import write_splits

    return write_splits(source, ratio, seed, out_dir, data=config.data if config is not None else None, root=root,
                        stratify=stratify, by=by, block=block, buffer=buffer, attribute=attribute, layer=layer,
                        where=where)
