"""The model card (``README.md``) of an exported model folder: what a colleague who did not train the
model needs to use it well, written from the inference contract the folder holds (so the card
cannot disagree with what the model does), the training config it travels with, and the
evaluations of the checkpoint it was exported from.

Written by :func:`co2s.models.loading.write_model_folder`, the one writer of model folders."""

from __future__ import annotations

from typing import Any

from co2s.models.contract import InferenceContract


def _get(record: Any, *keys: str) -> Any:
    """``record[k1][k2]...`` of a plain training-config record, or None where it has no such key."""
    for key in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def _pct(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def model_card(contract: InferenceContract, *, step: int | None = None, training_config: dict | None = None,
               evaluations: dict | None = None, onnx: dict | None = None) -> str:
    """The card as Markdown. ``evaluations``: ``{"validation": record, "test": metrics}`` where
    known (a validation record of the run's log, a ``co2s evaluate`` metrics file);
    ``onnx``: what ``model.onnx`` holds when it is written beside (its tile, and whether its
    ``resolution`` key could be written)."""
    from co2s.version import __version__

    models = contract.model_names
    kind = "two students" if len(models) == 2 else "one model"
    lines = ["# co2s model", "",
             f"A semantic segmentation model of {contract.num_classes} classes ({kind}: {', '.join(models)}; "
             f"prediction `{contract.prediction}`), exported by co2s {__version__}"
             + (f" after {step} training iterations." if step is not None else "."), "",
             "Use it with `co2s predict --checkpoint THIS_FOLDER IMAGES --out OUT` (add `--polygons` for a "
             "GeoPackage of the regions), from Python with `co2s.Segmenter.load(THIS_FOLDER)`"
             + (", or `model.onnx` in QGIS (Deepness) and GeoDeep (docs/prediction.md)." if onnx else "."), "",
             "## Classes", "", "| index | class | colour |", "|---:|---|---|"]
    palette = contract.palette or [None] * contract.num_classes
    lines += [f"| {i} | {name} | {_hex(rgb) if rgb else '–'} |"
              for i, (name, rgb) in enumerate(zip(contract.classes, palette))]
    lines += ["", "Outputs: class indices as above; 255 is nodata (no valid input pixel).", ""]

    lines += ["## Input", ""]
    bands = (f"bands {contract.bands} (1-based) of each file" if contract.bands is not None
             else f"all {contract.in_channels} bands of each file, in order")
    scale = ("divided by their data type's range (255 for uint8, 65535 for uint16, 1 for float: `scale: auto`"
             + (f"; {contract.auto_scale:g} for its training images" if contract.auto_scale is not None else "")
             + ")" if contract.scale == "auto" else f"divided by {contract.scale:g}")
    lines += [f"- {contract.in_channels} channel(s): {bands}; values {scale}.",
              "- Ground sample distance: " + (f"{contract.gsd:.4g} m per pixel (imagery at another resolution "
                                              "should be resampled to it)." if contract.gsd is not None
                                              else "unknown (the training imagery was not georeferenced and "
                                              "data.gsd was not set)."),
              f"- Tiles: {contract.tiling.window} px, stride {contract.tiling.stride} px, blended with Hann "
              "weights; pixels of value nodata (or masked, or not finite in every band) are nodata.",
              "- Normalisation after scaling (held in the weights too):"]
    for name, norm in contract.normalisation.items():
        mean = ", ".join(f"{v:.4g}" for v in norm.mean)
        std = ", ".join(f"{v:.4g}" for v in norm.std)
        lines.append(f"  - `{name}`: mean [{mean}], std [{std}]")
    lines.append("")

    lines += ["## Architecture and pretrained weights", ""]
    cited = []
    for name, architecture in contract.architectures.items():
        backbone = architecture.get("backbone") or {}
        weights = backbone.get("weights") or {}
        arch = backbone.get("arch") or {}
        line = f"- `{name}`: {architecture.get('kind', 'model')}"
        if backbone:
            shape = (f" ViT width {arch.get('hidden_size')}, depth {arch.get('num_hidden_layers')}, patch "
                     f"{arch.get('patch_size')}" if "hidden_size" in arch else "")
            line += (f", {backbone.get('kind')} backbone{shape}, {architecture.get('head')} head, guidance "
                     f"{architecture.get('guidance')}")
        elif architecture.get("kind") == "lite_unet":
            line += f" (width {architecture.get('width')}, depth {architecture.get('depth')})"
        if weights.get("family"):
            line += f", fine-tuned from {weights.get('title')} (licence: {weights.get('licence')})"
            cited.append(weights)
        elif backbone:
            line += ", trained from random initialisation"
        lines.append(line)
    if cited:
        lines += ["", "The pretrained weights' licences apply to this model too (NOTICE.md holds the notices "
                  "they require). Cite:", ""]
        lines += [f"- {w.get('title')}: {w.get('citation')}" for w in cited]
    lines.append("")

    lines += ["## Training", ""]
    if training_config:
        method = _get(training_config, "train", "method") or "?"
        splits = _get(training_config, "data", "splits") or {}
        scenes = _get(training_config, "data", "scenes")
        lines += [f"- Method: `{method}`" + (" (Co2S: CLIP and DINOv3 students, confidence-arbitrated "
                                             "stability; Co2S, IEEE TGRS 2026)" if method == "co2s" else ""),
                  f"- Iterations: {_get(training_config, 'train', 'iters') or '?'}, batch size "
                  f"{_get(training_config, 'train', 'batch_size') or '?'}, crop "
                  f"{_get(training_config, 'train', 'crop_size') or '?'} px, seed "
                  f"{_get(training_config, 'train', 'seed')}"]
        for split in ("labelled", "unlabelled", "val", "test"):
            if isinstance(splits, dict) and splits.get(split):
                lines.append(f"- data.splits.{split}: `{splits[split]}`")
        if isinstance(scenes, dict):
            labels = scenes.get("labels") or {}
            lines.append(f"- Scenes: rasters `{scenes.get('rasters')}`, labels "
                         f"`{labels.get('vector') or labels.get('masks')}`")
    else:
        lines.append("- Not recorded (the folder was exported without its training config).")
    lines.append("")

    lines += ["## Evaluation", ""]
    evaluations = evaluations or {}
    rows = [(split, record) for split, record in evaluations.items() if isinstance(record, dict)]
    if rows:
        header = "| class | " + " | ".join(f"IoU {split} (%)" for split, _ in rows) + " |"
        lines += [" ; ".join(f"{split}: mIoU {_pct(r.get('mIoU'))} % ({r.get('prediction') or contract.prediction}"
                             + (f", step {r.get('step')}" if r.get("step") is not None else "") + ")"
                             for split, r in rows), "", header, "|---|" + "---:|" * len(rows)]
        for name in contract.classes:
            lines.append(f"| {name} | " + " | ".join(_pct((r.get("IoU") or {}).get(name)) for _, r in rows) + " |")
        sources = [f"{split}: {r['source']}" for split, r in rows if r.get("source")]
        if sources:
            lines += ["", "From " + "; ".join(sources) + "."]
    else:
        lines.append("No evaluation recorded with the checkpoint this folder was exported from (`co2s evaluate "
                     "--split test` beside the checkpoint before exporting puts its scores here).")
    lines.append("")

    if onnx:
        lines += ["## model.onnx", "",
                  f"One {onnx['tile']} px tile in (float32, the bands above divided by 255, as QGIS Deepness and "
                  "GeoDeep feed a model), the class probabilities out; the scaling, normalisation and "
                  "fusion are inside the graph. Its metadata holds the keys Deepness and GeoDeep read "
                  "(model_type, class_names, tiles_size, tiles_overlap"
                  + (", resolution" if onnx.get("resolution") else "; no resolution: the ground sample distance "
                     "is unknown, so set it in the plugin") + ") and co2s's own (`co2s.*`).", ""]
    return "\n".join(lines)
