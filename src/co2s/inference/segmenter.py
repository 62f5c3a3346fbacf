"""``Segmenter``: a trained model ready to use, and the one inference path of the package.

A Segmenter holds the trained model(s), what to predict with them (one student, or a fusion of
two), how images are read (bands, scaling; normalisation travels inside each model) and how they
are tiled. Validation during training, ``co2s evaluate``, ``co2s predict`` on images and on whole
scenes all call :meth:`Segmenter.predict_many` / :meth:`Segmenter.predict` (regions of scenes:
:meth:`Segmenter.predict_box`, the whole scene's tile grid restricted to the region), so a score
in ``metrics_<split>.json`` is a score of exactly what ``co2s predict`` writes.

Tiling rule: windows of ``eval.window`` (default the training crop) at ``eval.stride`` (default
``int(window * 5 / 6)``, SPEC 3.3), each tile's logits added with a separable Hann weight and
normalised. The paper averages overlapping windows uniformly; the Hann weight gives the centre of
a tile, where it sees the most context, the most say, and hands over smoothly between tiles, so
large scenes have no seams. Measured on AI4Mars test_gold (322 images of 256 px, 128 px windows,
3 x 3 tiles each; ``benchmarks/blend_rule.py``) the rules disagree on 5.0 % of labelled pixels
and Hann scores 16.95 mIoU against 14.96 for uniform averaging, so one rule, the seamless one,
serves both jobs and evaluation never scores something predict does not write.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from co2s.data.raster import Window
from co2s.errors import Co2sError, DataError
from co2s.config.schema import prediction_choices
from co2s.inference.fusion import class_probabilities
from co2s.models.contract import InferenceContract, contract_for
from co2s.inference.streaming import check_precision, stream_prediction_maps, tile_logits
from co2s.inference.tiling import TileGrid, overlap_to_stride


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise Co2sError(f"unknown device {device!r}: {exc}") from None


@dataclass
class Prediction:
    """Class indices ``[H, W]`` (uint8) and the probability of the predicted class ``[H, W]``."""

    classes: np.ndarray
    confidence: np.ndarray | None


class Segmenter(nn.Module):
    """Trained model(s) + their inference contract: prediction mode, how to read and tile images.

    ``forward(x)`` maps scaled images ``[B, C, h, w]`` to class probabilities ``[B, K, h, w]`` in
    one pass (one tile, no blending); ``predict(image)`` does tiled, blended inference
    of an image of any size. ``contract`` (:class:`~co2s.models.contract.InferenceContract`) says
    the classes, palette, bands, scaling, tiling and the default ``prediction`` (a model's name or a
    fusion); ``training_config`` is the config the models were trained under, when known.
    """

    def __init__(self, models: Mapping[str, nn.Module], contract: InferenceContract,
                 training_config=None) -> None:
        super().__init__()
        self.models = nn.ModuleDict(dict(models))
        if list(self.models) != contract.model_names:
            raise Co2sError(f"models {list(self.models)} are not the contract's {contract.model_names}")
        self.contract = contract
        self._training_config = training_config  # a Config, a stored record (dict), or None
        self.info: dict = {}  # where it was loaded from: the step trained, the best validation

    @classmethod
    def from_config(cls, models: Mapping[str, nn.Module], config, prediction: str | None = None) -> Segmenter:
        """The Segmenter of models built from (and trained under) ``config``."""
        return cls(models, contract_for(dict(models), config, prediction), config)

    # -- what it is ------------------------------------------------------------------------
    @property
    def prediction(self) -> str:
        return self.contract.prediction

    @property
    def classes(self) -> list[str]:
        return list(self.contract.classes)

    @property
    def num_classes(self) -> int:
        return self.contract.num_classes

    @property
    def palette(self):
        return self.contract.palette

    @property
    def bands(self) -> list[int] | None:
        return self.contract.bands

    @property
    def scale(self):
        return self.contract.scale

    @property
    def in_channels(self) -> int:
        return self.contract.in_channels

    @property
    def tile(self) -> int:
        return self.contract.tiling.window

    @property
    def stride(self) -> int:
        return self.contract.tiling.stride

    @property
    def batch_size(self) -> int:
        return self.contract.tiling.batch_size

    @property
    def choices(self) -> list[str]:
        """Every prediction this Segmenter can make: each model, and both fusions for two."""
        return prediction_choices(list(self.models))

    def resolve(self, prediction: str | None) -> str:
        """``prediction`` by its name: None or ``auto`` is this model's own (the one its training's
        validation chose, see :func:`co2s.config.schema.resolve_prediction`)."""
        return self.contract.with_prediction(prediction).prediction

    @property
    def prediction_models(self) -> list[str]:
        """The models the default prediction runs: itself, or both students for a fusion."""
        return self._needed([self.prediction])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def training_config(self):
        """The validated config the models were trained under (old key spellings migrated): what
        evaluating on the run's own splits needs. A model folder does not carry a usable one."""
        from co2s.config.loader import validate
        from co2s.errors import ConfigError

        if self._training_config is None or self.info.get("is_folder"):
            raise ConfigError(f"{self.info.get('source', 'this model')} is an exported model folder: it carries "
                              "no training config to read the data from; give a config (co2s evaluate CONFIG "
                              "--checkpoint FOLDER)")
        if isinstance(self._training_config, dict):
            self._training_config = validate(self._training_config,
                                             f"config stored in {self.info.get('source', 'the checkpoint')}",
                                             stored=True)
        return self._training_config

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | os.PathLike, prediction: str | None = None) -> Segmenter:
        """From a training checkpoint (``best.ckpt``) or an exported model folder, in eval mode;
        ``prediction`` replaces the default one."""
        from co2s.models.loading import load_trained_models

        loaded = load_trained_models(source)
        segmenter = cls(loaded.models, loaded.contract.with_prediction(prediction), loaded.training_config).eval()
        segmenter.info = {"step": loaded.step, "best": loaded.best, "source": str(source),
                          "is_folder": loaded.is_folder}
        return segmenter

    from_pretrained = load

    def save_pretrained(self, directory: str | os.PathLike, evaluations: dict | None = None,
                        onnx: dict | None = None) -> Path:
        """Write the weights (safetensors), the inference contract and the model card: a model
        folder to share (:func:`co2s.models.loading.write_model_folder`)."""
        from co2s.config.loader import config_to_dict
        from co2s.models.loading import write_model_folder

        training = self._training_config
        if training is not None and not isinstance(training, dict):
            training = config_to_dict(training)
        return write_model_folder(directory, dict(self.models), self.contract, self.info.get("step"), training,
                                  evaluations, onnx)

    # -- prediction ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = {name: self.models[name](x) for name in self.prediction_models}
        return class_probabilities(logits, self.prediction)

    def tiling(self, tile: int | None = None, overlap: float | None = None) -> tuple[int, int]:
        """Tile size and stride: the configured ones, or ``tile`` with ``overlap`` pixels (>= 1) or
        fraction of the tile (< 1); a tile alone keeps the default overlap (a sixth)."""
        return overlap_to_stride(self.tile, self.stride, tile, overlap)

    def _needed(self, predictions: list[str]) -> list[str]:
        for p in predictions:
            if p not in self.choices:
                raise Co2sError(f"unknown prediction {p!r}; choose from {self.choices}")
        if all(p in self.models for p in predictions):
            return list(dict.fromkeys(predictions))
        return list(self.models)

    def check_options(self, predictions: list[str], tile: int | None = None, overlap: float | None = None,
                      precision: str = "fp32", tta: bool = False, batch_size: int | None = None) -> None:
        """Raise :class:`Co2sError` for options this Segmenter cannot predict with (an unknown
        prediction, a bad tile or overlap, a precision the device lacks, a batch size below 1)."""
        self._needed(predictions)
        self.tiling(tile, overlap)
        check_precision(precision, self.device)
        if batch_size is not None and batch_size < 1:
            raise Co2sError(f"--batch-size must be at least 1, got {batch_size}")

    def tile_predictors(self, predictions: list[str], precision: str = "fp32", tta: bool = False) -> dict:
        """Tile-to-logits functions of the models ``predictions`` need (one student, or both)."""
        device = self.device
        return {name: tile_logits(self.models[name], device, precision, tta) for name in self._needed(predictions)}

    def as_model_input(self, image) -> tuple[torch.Tensor, np.ndarray | None]:
        """Model input ``[C, H, W]`` float and its valid pixels (None: all valid, or unknown) from a
        tensor, a NumPy array or an image file (read with the model's bands and scaling by the
        package's one invalid-pixel rule, as training read its images)."""
        if isinstance(image, (str, os.PathLike)):
            from co2s.data.io import alpha_band_count, read_model_input
            from co2s.data.raster import said_bands

            array, valid = read_model_input(image, self.bands, self.scale)
            if array.shape[0] != self.in_channels:
                alpha = alpha_band_count(image) if self.bands is None else 0
                raise DataError(f"{image}: has {said_bands(array.shape[0], alpha)} but the model was trained "
                                f"on {self.in_channels} (see data.bands)")
            return torch.from_numpy(array), valid
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        return image.float(), None

    @torch.no_grad()
    def predict_many(self, image: torch.Tensor, predictions: list[str] | None = None, *, tile: int | None = None,
                     overlap: float | None = None, tta: bool = False, precision: str = "fp32",
                     batch_size: int | None = None, valid: np.ndarray | None = None,
                     confidence: bool = True) -> dict[str, Prediction]:
        """Several predictions of one image (a scaled ``[C, H, W]`` tensor or array, or a file)
        from one pass of each model.

        ``valid`` (``[H, W]`` bool) marks pixels with data; tiles without any are skipped (a file's
        own invalid pixels are found when it is read).
        """
        predictions = predictions or [self.prediction]
        image, file_valid = self.as_model_input(image)
        valid = file_valid if valid is None else valid
        if image.dim() != 3:
            raise Co2sError(f"predict takes one image [C, H, W], got shape {tuple(image.shape)}")
        if image.shape[0] != self.in_channels:
            raise Co2sError(f"the image has {image.shape[0]} band(s), the model takes {self.in_channels}")
        _, height, width = image.shape
        out = {p: Prediction(np.empty((height, width), np.uint8),
                             np.empty((height, width), np.float32) if confidence else None)
               for p in predictions}

        def read(window: Window):
            rows, cols = window.slices
            return image[:, rows, cols], None if valid is None else valid[rows, cols]

        for window, pieces in self.predict_box(read, height, width, Window(0, 0, width, height), predictions,
                                               tile=tile, overlap=overlap, tta=tta, precision=precision,
                                               batch_size=batch_size, confidence=confidence):
            for p, piece in pieces.items():
                out[p].classes[window.slices] = piece.classes
                if confidence:
                    out[p].confidence[window.slices] = piece.confidence
        return out

    @torch.no_grad()
    def predict_box(self, read, height: int, width: int, box: Window,
                    predictions: list[str] | None = None, *, tile: int | None = None,
                    overlap: float | None = None, tta: bool = False, precision: str = "fp32",
                    batch_size: int | None = None, confidence: bool = False, on_progress=None,
                    pixel_maps=None, models: list[str] | None = None, validity: bool = False
                    ) -> Iterator[tuple[Window, dict[str, "Prediction | np.ndarray"]]]:
        """The one prediction generator: images (:meth:`predict_many`), region scoring
        (:mod:`co2s.evaluation.evaluator`) and whole scenes (:mod:`co2s.inference.scene`) all drive it.

        The pixels of the window ``box`` of an image or raster of ``height x width`` exactly as
        predicting all of it gives them: the tiles of the whole grid that cover the box, read with
        ``read(window)`` (returns the model input and its validity, as for
        :func:`stream_prediction_maps`; a tile without a valid pixel is skipped) and blended. Yields
        ``(window, {prediction: Prediction})`` pieces, clipped to the box, panel by panel and top to
        bottom; memory depends on the tiles, not the image. ``on_progress(tiles, pixels)`` reports.
        ``pixel_maps`` (:data:`co2s.inference.streaming.PixelMaps`) adds float maps of the blended
        logits of ``models`` (default: those the predictions need), as arrays by name; ``validity``
        adds each piece's valid pixels from the reads (:data:`co2s.inference.streaming.VALID`)."""
        predictions = predictions or [self.prediction]
        self.check_options(predictions, tile, overlap, precision, tta, batch_size)
        grid, origin = TileGrid.over(height, width, *self.tiling(tile, overlap)).covering(box)

        def local(window: Window):
            return read(window.shifted(origin.x, origin.y))

        predictors = self.tile_predictors(predictions + list(models or []), precision, tta)
        for piece, pieces in stream_prediction_maps(local, grid, predictors, self.num_classes, predictions,
                                                    batch_size or self.batch_size, self.device, confidence,
                                                    on_progress, pixel_maps=pixel_maps, validity=validity):
            piece = piece.shifted(origin.x, origin.y)
            inside = piece.intersection(box)
            if inside is None:
                continue
            rows, cols = inside.shifted(-piece.x, -piece.y).slices
            yield inside, {p: (v[rows, cols] if isinstance(v, np.ndarray)
                               else Prediction(v[0][rows, cols], None if v[1] is None else v[1][rows, cols]))
                           for p, v in pieces.items()}

    def predict(self, image: torch.Tensor, prediction: str | None = None, **options) -> Prediction:
        """Tiled, blended prediction of one image of any size: a scaled ``[C, H, W]`` tensor or
        array, or an image file (see :meth:`predict_many` for the options)."""
        prediction = self.resolve(prediction)
        return self.predict_many(image, [prediction], **options)[prediction]
