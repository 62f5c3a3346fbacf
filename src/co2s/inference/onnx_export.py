"""Export a :class:`~co2s.inference.segmenter.Segmenter` to ONNX: one tile in, class probabilities out.

The graph is ``Segmenter.forward`` for its prediction mode (one model, or a fusion of two
students): input ``image`` ``[N, C, tile, tile]`` float32, *scaled* the way the config reads images
(``data.scale``) but not normalised (normalisation is inside each model, so it is in the graph);
output ``probabilities`` ``[N, K, tile, tile]``. The batch size is free unless ``batch_size`` fixes
it; the tile size is fixed. Tiling and blending of larger images stay with the caller (as
``Segmenter.predict`` does it: Hann-weighted windows of ``tile`` at the configured stride).

The exporter is torch's ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``, the
default since torch 2.9; it needs ``onnxscript``): it exports the built-in CNN and the CLIP, DINOv3
(RoPE) and DINOv2 (interpolated position embeddings) students as they are, matching PyTorch within
1e-6 on the tests' tiny models. The TorchScript exporter also handles them here but is deprecated.

Needs the optional extra: ``pip install 'co2s[onnx]'``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from co2s.atomic import commit
from co2s.errors import Co2sError

DEFAULT_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
#: protobuf's limit on one file; larger models keep their weights in ``<file>.data`` beside it
_SINGLE_FILE_LIMIT = 2**31 - 2**24


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


def _metadata(segmenter, tile: int) -> dict[str, str]:
    from co2s.version import __version__

    return {
        "co2s.version": __version__,
        "co2s.prediction": segmenter.prediction,
        "co2s.classes": json.dumps(list(segmenter.classes)),
        "co2s.palette": json.dumps(segmenter.palette) if segmenter.palette is not None else "null",
        "co2s.tile": str(tile),
        "co2s.stride": str(segmenter.tiling(tile)[1]),
        "co2s.input": "float32 [N, C, tile, tile], scaled as data.scale reads images, not normalised",
        "co2s.bands": json.dumps(segmenter.bands),
        "co2s.scale": json.dumps(segmenter.scale),
    }


def export_onnx(segmenter, path: str | os.PathLike, tile: int, opset: int = DEFAULT_OPSET,
                batch_size: int | None = None) -> Path:
    """Write ``segmenter`` (its prediction mode) as an ONNX model at ``path``; returns ``path``.

    ``tile``: the fixed height and width of the input; ``batch_size``: a fixed batch size, or
    ``None`` for any. The file is written atomically (a temporary beside it, then renamed); the
    classes, palette, prediction mode and tiling are stored as metadata properties (``co2s.*``).
    """
    _require_exporter()
    if tile < 1:
        raise Co2sError(f"tile must be a positive number of pixels, got {tile}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example_batch = batch_size or 2  # a dynamic batch dimension must not be traced with 1
    example = torch.rand(example_batch, segmenter.in_channels, tile, tile, device=segmenter.device)
    dynamic = None if batch_size else ({0: torch.export.Dim("batch")},)
    was_training = segmenter.training
    segmenter.eval()
    try:
        with _quiet():
            program = torch.onnx.export(
                segmenter, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, verbose=False,
            )
    except Exception as exc:  # the exporter's errors are long; keep the first lines
        first = "\n".join(str(exc).strip().splitlines()[:6])
        raise Co2sError(f"ONNX export of prediction {segmenter.prediction!r} failed: {first}") from exc
    finally:
        segmenter.train(was_training)
    program.model.metadata_props.update(_metadata(segmenter, tile))
    _save(program, path)
    return path


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
