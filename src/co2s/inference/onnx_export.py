"""Export a :class:`~co2s.inference.segmenter.Segmenter` to ONNX: raw tiles in, probabilities and
each student's logits out.

The graph holds everything ``co2s predict`` does to one tile (:class:`TileGraph`): input ``image``
``[N, C, tile, tile]`` float32, the contract's bands with their values as stored in the file; inside,
the division by the scale and each student's normalisation; outputs ``probabilities`` (the default
prediction's class probabilities, fused for a pair: what a tool that blends probabilities reads),
then ``logits_<name>`` per student the prediction needs. ``co2s predict`` blends *logits* across
overlapping tiles (Hann-weighted) and fuses after blending, so reproducing it needs the logits; the
recipe in docs/prediction.md does that with numpy and is tested against ``co2s predict``.

Scale ``auto`` divides by the file's data type's range, which a float32 graph input cannot show,
so an ``auto`` model needs the scale of the images it will get at export (``scale``); a number
in the contract is the graph's.

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
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
LOGITS_PREFIX = "logits_"
#: protobuf's limit on one file; larger models keep their weights in ``<file>.data`` beside it
_SINGLE_FILE_LIMIT = 2**31 - 2**24


class TileGraph(nn.Module):
    """What the ONNX file computes: raw band values ``[N, C, h, w]`` in; the probabilities of
    ``segmenter``'s prediction and the logits of each model it needs out (a tuple, in that order).

    The division by ``scale`` is ``co2s.data.raster.scale_image``'s (float32 by float32); each
    model normalises its input itself, so its normalisation is in the graph with its weights."""

    def __init__(self, segmenter, scale: float) -> None:
        super().__init__()
        self.prediction = segmenter.prediction
        self.models = nn.ModuleDict({name: segmenter.models[name] for name in segmenter.prediction_models})
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_NAME, *(f"{LOGITS_PREFIX}{name}" for name in self.models)]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image / self.scale
        logits = {name: model(x) for name, model in self.models.items()}
        return (class_probabilities(logits, self.prediction), *logits.values())


def graph_scale(contract_scale: float | str, scale: float | None) -> float:
    """The number the graph divides by: the contract's, or for ``auto`` the one given at export.

    ``auto`` means the range of each file's data type (255 for uint8, 65535 for uint16, 1 for
    float), which a float32 graph input does not carry; guessing would silently mis-scale other
    images, so the exporter is told. A given scale that contradicts the contract's is refused."""
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise Co2sError(f"--scale must be a positive number, got {scale}")
    if contract_scale == "auto":
        if scale is None:
            raise Co2sError("the model scales images by their data type (data.scale auto: 255 for uint8, 65535 for "
                            "uint16, 1 for float), which an ONNX input cannot show: give the scale of the images "
                            "the graph will get, e.g. --scale 255")
        return float(scale)
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


def _metadata(segmenter, graph: TileGraph, tile: int, scale: float) -> dict[str, str]:
    from co2s.version import __version__

    contract = segmenter.contract
    return {
        "co2s.version": __version__,
        "co2s.prediction": segmenter.prediction,
        "co2s.classes": json.dumps(list(segmenter.classes)),
        "co2s.palette": json.dumps(segmenter.palette) if segmenter.palette is not None else "null",
        "co2s.tile": str(tile),
        "co2s.stride": str(segmenter.tiling(tile)[1]),
        "co2s.input": "float32 [N, C, tile, tile]: the bands co2s.bands (1-based; null: all) with their values "
                      "as stored in the file, masked values and invalid pixels 0; the graph divides by co2s.scale "
                      "and normalises (co2s.normalisation) itself",
        "co2s.bands": json.dumps(segmenter.bands),
        "co2s.scale": json.dumps(scale),
        "co2s.normalisation": json.dumps({name: contract.normalisation[name].model_dump() for name in graph.models}),
        "co2s.outputs": json.dumps(graph.output_names),
        "co2s.blend": f"co2s predict blends the {LOGITS_PREFIX}* outputs of overlapping tiles: each weighted by "
                      f"a separable Hann window (sin^2(pi (i + 0.5) / tile), at least {BLEND_FLOOR}), summed and "
                      "divided by the summed weights, then turned into co2s.prediction's probabilities "
                      "(softmax, or the fusion of the two students); probabilities is that of one tile",
    }


def export_onnx(segmenter, path: str | os.PathLike, tile: int, opset: int = DEFAULT_OPSET,
                batch_size: int | None = None, scale: float | None = None) -> Path:
    """Write ``segmenter`` (its prediction mode) as an ONNX :class:`TileGraph` at ``path``; returns
    ``path``.

    ``tile``: the fixed height and width of the input; ``batch_size``: a fixed batch size, or
    ``None`` for any; ``scale``: what the graph divides raw values by, required when the model's
    scale is ``auto`` (:func:`graph_scale`). The file is written atomically (a temporary beside
    it, then renamed); the classes, palette, prediction, bands, scale and tiling are stored as
    metadata properties (``co2s.*``)."""
    _require_exporter()
    if tile < 1:
        raise Co2sError(f"tile must be a positive number of pixels, got {tile}")
    scale = graph_scale(segmenter.scale, scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = TileGraph(segmenter, scale).to(segmenter.device)
    example_batch = batch_size or 2  # a dynamic batch dimension must not be traced with 1
    example = torch.rand(example_batch, segmenter.in_channels, tile, tile, device=segmenter.device) * scale
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
