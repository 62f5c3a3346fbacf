"""Export a :class:`~co2s.inference.segmenter.Segmenter` to ONNX: a model that runs in the GIS
plugins that run ONNX segmentation models (QGIS Deepness, GeoDeep) and in any ONNX runtime.

The graph holds everything ``co2s predict`` does to one tile (:class:`TileGraph`). Input ``image``
``[N, C, tile, tile]`` float32: the contract's bands with their values **divided by 255**, which
is what Deepness feeds a model (every data type: ``tile / 255``, then its optional
standardisation, written here as the identity) and what GeoDeep feeds one for uint8 imagery.
Inside: back to the stored values (``* 255``), the model's own scale and each student's
normalisation, and for a pair the fusion: what the plugins' metadata keys cannot express (uint16
scales, more than three bands, two students) stays in the graph. Output ``probabilities``: the
default prediction's class probabilities ``[N, K, tile, tile]``, the one output those plugins read
(Deepness makes a layer of every output; GeoDeep reads the first). With ``logits``, also
``logits_<name>`` per student the prediction needs: ``co2s predict`` blends *logits* across
overlapping tiles (Hann-weighted) and fuses after blending, so reproducing it exactly needs them;
the recipe in docs/prediction.md does that and is tested against ``co2s predict``.

Metadata (:func:`plugin_metadata`): the keys Deepness and GeoDeep read, JSON-encoded as they parse
them: ``model_type`` "Segmentor", ``class_names`` ``{"0": name, ...}``, ``resolution`` (cm per
pixel, from the contract's ground sample distance; left out when unknown), ``tiles_size``
(``tile_size`` too: the key Deepness's code reads), ``tiles_overlap`` (percent), ``seg_thresh`` 0
(plain argmax: a threshold would turn uncertain pixels into class 0), ``seg_small_segment`` 0 (no
morphological clean-up), ``standardization_mean``/``std`` 0/1 per channel; and co2s's own
(``co2s.*``: classes, palette, bands, scale, tiling, blending).

Scale ``auto`` divides by the file's data type's range, which a float32 graph input cannot show,
so an ``auto`` model's graph divides by its training images' range (the contract's
``auto_scale``), or by the scale given at export for other imagery (``scale``; needed when the
training images' types differed); a number in the contract is the graph's.

The file holds no trace of the machine that wrote it: torch's per-node provenance (source file
paths, stack traces, module names) is stripped before saving; the ``co2s.*`` metadata properties
describe the input, outputs and tiling.

The exporter is torch's ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``; it needs
``onnxscript``). Needs the optional extra: ``pip install 'co2s[onnx]'``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from co2s.atomic import commit
from co2s.errors import Co2sError
from co2s.inference.fusion import class_probabilities
from co2s.inference.tiling import BLEND_FLOOR

DEFAULT_OPSET = 18
#: the IR version written: 9 is the newest onnxruntime 1.17 reads (the version QGIS Deepness installs)
IR_VERSION = 9
#: the graph's input is the band values divided by this (what QGIS Deepness and GeoDeep feed)
INPUT_RANGE = 255.0
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
LOGITS_PREFIX = "logits_"
#: protobuf's limit on one file; larger models keep their weights in ``<file>.data`` beside it
_SINGLE_FILE_LIMIT = 2**31 - 2**24


class TileGraph(nn.Module):
    """What the ONNX file computes: band values divided by 255 ``[N, C, h, w]`` in; the
    probabilities of ``segmenter``'s prediction out, and with ``logits`` the logits of each model it
    needs (a tuple, in that order).

    ``x * 255 / scale`` gives back the stored values and then divides as
    ``co2s.data.raster.scale_image`` does (float32); each model normalises its input itself, so its
    normalisation is in the graph with its weights."""

    def __init__(self, segmenter, scale: float, logits: bool = False) -> None:
        super().__init__()
        self.prediction, self.logits = segmenter.prediction, logits
        self.models = nn.ModuleDict({name: segmenter.models[name] for name in segmenter.prediction_models})
        self.register_buffer("range", torch.tensor(INPUT_RANGE, dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_NAME, *(f"{LOGITS_PREFIX}{name}" for name in self.models if self.logits)]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image * self.range / self.scale
        logits = {name: model(x) for name, model in self.models.items()}
        probabilities = class_probabilities(logits, self.prediction)
        return (probabilities, *logits.values()) if self.logits else (probabilities,)


def graph_scale(contract, scale: float | None) -> float:
    """The number the graph divides by: the ``contract``'s scale, or for ``auto`` the one given
    at export, else the one its training images had (``contract.auto_scale``).

    ``auto`` means the range of each file's data type (255 for uint8, 65535 for uint16, 1 for
    float), which a float32 graph input does not carry; when the training images' types differed
    or are unknown (a model of an older co2s), guessing would silently mis-scale other images, so
    the exporter is told. A given scale that contradicts a numeric contract scale is refused."""
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise Co2sError(f"--scale must be a positive number, got {scale}")
    contract_scale = contract.scale
    if contract_scale == "auto":
        if scale is None and contract.auto_scale is None:
            raise Co2sError("the model scales images by their data type (data.scale auto: 255 for uint8, 65535 for "
                            "uint16, 1 for float), and its training images did not all have one type (or it was "
                            "not recorded): give the scale of the images the graph will get, e.g. --scale 255")
        return float(scale if scale is not None else contract.auto_scale)
    if scale is not None and float(scale) != float(contract_scale):
        raise Co2sError(f"the model reads images divided by {contract_scale}; --scale {scale} would feed it "
                        "other values (leave --scale out)")
    return float(contract_scale)


def _require_exporter() -> None:
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter translates with it)
    except ImportError:
        raise Co2sError("ONNX export needs the optional packages onnx and onnxscript: "
                        "pip install 'co2s[onnx]'") from None
    if "dynamic_shapes" not in inspect.signature(torch.onnx.export).parameters:
        raise Co2sError("ONNX export needs torch's torch.export-based exporter (torch >= 2.9; "
                        f"this is {torch.__version__})")


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's chatter (e.g. "torchvision is not installed", pytree deprecations)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def plugin_metadata(contract, tile: int, stride: int) -> dict[str, str]:
    """The metadata keys QGIS Deepness and GeoDeep read (module docstring), as the strings they
    parse; ``resolution`` only when the contract knows its ground sample distance."""
    keys = {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({str(i): name for i, name in enumerate(contract.classes)}),
        "tiles_size": json.dumps(tile),
        "tile_size": json.dumps(tile),
        "tiles_overlap": json.dumps(round(100 * (tile - stride) / tile)),
        "seg_thresh": json.dumps(0.0),
        "seg_small_segment": json.dumps(0),
        "standardization_mean": json.dumps([0.0] * contract.in_channels),
        "standardization_std": json.dumps([1.0] * contract.in_channels),
    }
    if contract.gsd is not None:
        keys["resolution"] = json.dumps(round(contract.gsd * 100, 4))
    return keys


def _metadata(segmenter, graph: TileGraph, tile: int, scale: float) -> dict[str, str]:
    from co2s.version import __version__

    contract = segmenter.contract
    stride = segmenter.tiling(tile)[1]
    return {
        **plugin_metadata(contract, tile, stride),
        "co2s.version": __version__,
        "co2s.prediction": segmenter.prediction,
        "co2s.classes": json.dumps(list(segmenter.classes)),
        "co2s.palette": json.dumps(segmenter.palette) if segmenter.palette is not None else "null",
        "co2s.tile": str(tile),
        "co2s.stride": str(stride),
        "co2s.gsd": json.dumps(contract.gsd),
        "co2s.input": "float32 [N, C, tile, tile]: the bands co2s.bands (1-based; null: all) with their values "
                      "as stored in the file divided by 255, masked values and invalid pixels 0; the graph "
                      "multiplies by 255, divides by co2s.scale and normalises (co2s.normalisation) itself",
        "co2s.bands": json.dumps(segmenter.bands),
        "co2s.scale": json.dumps(scale),
        "co2s.normalisation": json.dumps({name: contract.normalisation[name].model_dump() for name in graph.models}),
        "co2s.outputs": json.dumps(graph.output_names),
        "co2s.blend": f"co2s predict blends the {LOGITS_PREFIX}* outputs (co2s export --logits) of overlapping "
                      "tiles: each weighted by "
                      f"a separable Hann window (sin^2(pi (i + 0.5) / tile), at least {BLEND_FLOOR}), summed and "
                      "divided by the summed weights, then turned into co2s.prediction's probabilities "
                      "(softmax, or the fusion of the two students); probabilities is that of one tile",
    }


def export_onnx(segmenter, path: str | os.PathLike, tile: int, opset: int = DEFAULT_OPSET,
                batch_size: int | None = None, scale: float | None = None, logits: bool = False) -> Path:
    """Write ``segmenter`` (its prediction mode) as an ONNX :class:`TileGraph` at ``path``; returns
    ``path``.

    ``tile``: the fixed height and width of the input (the plugins read their tile size from it);
    ``batch_size``: a fixed batch size, or ``None`` for any; ``scale``: what the stored values are
    divided by, for a model of scale ``auto`` (:func:`graph_scale`; default: its training images'); ``logits``: also
    output each student's logits. The file is written atomically (a temporary beside it, then
    renamed) with the metadata of the module docstring."""
    _require_exporter()
    if tile < 1:
        raise Co2sError(f"tile must be a positive number of pixels, got {tile}")
    scale = graph_scale(segmenter.contract, scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = TileGraph(segmenter, scale, logits).to(segmenter.device)
    example_batch = batch_size or 2  # a dynamic batch dimension must not be traced with 1
    example = torch.rand(example_batch, segmenter.in_channels, tile, tile, device=segmenter.device)
    dynamic = None if batch_size else ({0: torch.export.Dim("batch")},)
    was_training = segmenter.training
    segmenter.eval()
    try:
        with _quiet():
            program = torch.onnx.export(
                graph.eval(), (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=graph.output_names, dynamic_shapes=dynamic, verbose=False,
            )
    except Exception as exc:  # the exporter's errors are long; keep the first lines
        first = "\n".join(str(exc).strip().splitlines()[:6])
        raise Co2sError(f"ONNX export of prediction {segmenter.prediction!r} failed: {first}") from exc
    finally:
        segmenter.train(was_training)
    _strip_provenance(program.model)
    program.model.ir_version = min(program.model.ir_version, IR_VERSION)
    program.model.metadata_props.update(_metadata(segmenter, graph, tile, scale))
    _save(program, path)
    return path


def _strip_provenance(model) -> None:
    """Drop what the exporter records about where each node came from (``pkg.torch.*`` stack
    traces with the exporting machine's absolute source paths, module names, FX nodes) and doc
    strings: the file should hold the computation and co2s's own metadata, nothing of the machine."""
    model.doc_string = None
    model.metadata_props.clear()
    for graph in [*model.graphs(), *model.functions.values()]:
        graph.doc_string = None
        graph.metadata_props.clear()
        values = [*graph.inputs, *graph.outputs]
        if hasattr(graph, "initializers"):
            values += list(graph.initializers.values())
        for node in graph:
            node.doc_string = None
            node.metadata_props.clear()
            values += list(node.outputs)
        for value in values:
            value.doc_string = None
            value.metadata_props.clear()


def _save(program, path: Path) -> None:
    """Write into a hidden temporary folder beside ``path``, then rename into place (the weights
    file of a large model first, the model last), so a crash never leaves a torn model."""
    import onnx_ir

    size = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
               if v.const_value is not None)
    data_name = f"{path.name}.data" if size > _SINGLE_FILE_LIMIT else None
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        onnx_ir.save(program.model, tmp_dir / path.name, external_data=data_name)
        if data_name:
            commit(tmp_dir / data_name, path.with_name(data_name))
        commit(tmp_dir / path.name, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
