"""The inference contract: everything needed to use a trained model, nothing about how it was trained.

A model folder (``co2s export``) and a checkpoint both hold one. Loading a model for prediction
reads the contract only, never the training config, so a renamed training key cannot break a
shared model. Its fields:

- ``classes``, ``palette``: what the output indices mean and how they are drawn;
- ``bands`` (1-based, None: all), ``scale`` and ``in_channels``: how a file becomes model input
  (with the invalid-pixel rule of :mod:`co2s.data.raster`);
- ``normalisation``: each model's per-band mean and std (the weights hold them too, as buffers;
  the contract says them for readers that do not run co2s, and loading checks they agree);
- ``tiling``: window, stride and batch size of sliding-window prediction;
- ``gsd``: the ground sample distance (metres per pixel) of the imagery it was trained on, from
  ``data.gsd`` or the training rasters' georeferencing; None when unknown (version 2);
- ``auto_scale``: with ``scale: auto``, what the training images were divided by (their data
  type's range), for users of the model that see no file type (an ONNX graph); None when they
  differed or it is unknown (version 3);
- ``prediction``: what the model predicts by default (a model's name, or a fusion of two);
- ``architectures``: per model, the record its architecture is rebuilt from
  (:func:`co2s.models.factory.models_from_contract`); pretrained files are never needed.

``CONTRACT_VERSION`` changes when a field changes meaning; a reader refuses a newer contract and
reads older ones (an absent field means the old behaviour).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from co2s.config import limits
from co2s.config.schema import FUSIONS, prediction_choices, resolve_prediction
from co2s.errors import CheckpointError
from co2s.models.architecture_limits import check_architecture

#: 2: ``gsd`` (1: none; read as unknown); 3: ``auto_scale`` (2: none; read as unknown)
CONTRACT_VERSION = 3

# A contract is read from files anyone may write: numbers must have the JSON type a writer gives
# them (``"32"``, ``32.5`` or ``true`` for an integer are refused, not converted) and be finite,
# and every size is bounded (co2s.config.limits) before anything is built from it.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Channel = Annotated[int, Strict(), Field(ge=0, le=255)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tiling(_Record):
    window: Int
    stride: Int
    batch_size: Int

    @model_validator(mode="after")
    def _bounded(self) -> Tiling:
        problem = limits.tiling_problem(self.window, self.stride, self.batch_size)
        if problem:
            raise ValueError(problem)
        return self


class Normalisation(_Record):
    mean: list[Float] = Field(max_length=limits.MAX_IN_CHANNELS)
    std: list[Annotated[Float, Field(gt=0)]] = Field(max_length=limits.MAX_IN_CHANNELS)


class InferenceContract(_Record):
    version: Annotated[Int, Field(ge=1)] = CONTRACT_VERSION
    classes: list[Annotated[str, Strict()]] = Field(min_length=1, max_length=limits.MAX_CLASSES)
    palette: list[tuple[Channel, Channel, Channel]] | None = Field(default=None, max_length=limits.MAX_CLASSES)
    bands: list[Annotated[Int, Field(ge=1)]] | None = Field(default=None, max_length=limits.MAX_IN_CHANNELS)
    scale: Annotated[Float, Field(gt=0)] | Literal["auto"] = "auto"
    in_channels: Annotated[Int, Field(ge=1, le=limits.MAX_IN_CHANNELS)]
    normalisation: dict[str, Normalisation] = Field(max_length=limits.MAX_MODELS)
    tiling: Tiling
    gsd: Annotated[Float, Field(gt=0)] | None = None
    auto_scale: Annotated[Float, Field(gt=0)] | None = None
    prediction: Annotated[str, Strict()]
    architectures: dict[str, dict[str, Any]] = Field(min_length=1, max_length=limits.MAX_MODELS)

    @model_validator(mode="after")
    def _consistent(self) -> InferenceContract:
        if len(set(self.classes)) != len(self.classes):  # a set: linear in the number of classes
            raise ValueError("classes: a class name appears twice")
        bad = [n for n in self.architectures if not n.isidentifier() or n in FUSIONS]
        if bad:  # a name prefixes its tensors' keys and is a prediction choice
            raise ValueError(f"architectures: model names must be identifiers other than {list(FUSIONS)}, "
                             f"got {bad}")
        if self.palette is not None and len(self.palette) != len(self.classes):
            raise ValueError(f"palette: {len(self.palette)} colours for {len(self.classes)} classes")
        if self.auto_scale is not None and self.scale != "auto":
            raise ValueError(f"auto_scale {self.auto_scale} is given for scale {self.scale}; it belongs to scale auto")
        if self.bands is not None and len(self.bands) != self.in_channels:
            raise ValueError(f"bands {self.bands} do not give in_channels {self.in_channels} bands (1-based)")
        if set(self.normalisation) != set(self.architectures):
            raise ValueError(f"normalisation is given for {sorted(self.normalisation)}, architectures for "
                             f"{sorted(self.architectures)}")
        for name, norm in self.normalisation.items():
            if len(norm.mean) != self.in_channels or len(norm.std) != self.in_channels:
                raise ValueError(f"normalisation.{name}: mean/std need {self.in_channels} values")
        choices = prediction_choices(self.model_names)
        if self.prediction not in choices:
            raise ValueError(f"prediction {self.prediction!r:.40} is not one of {choices}")
        return self

    @property
    def model_names(self) -> list[str]:
        return list(self.architectures)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # -- reading and writing ----------------------------------------------------------------
    @classmethod
    def from_record(cls, record: Any, where: str) -> InferenceContract:
        """The contract of a folder or checkpoint; every problem is a :class:`CheckpointError`
        naming ``where`` and the field. Its sizes are bounded (:mod:`co2s.config.limits`), its
        architecture records included (:mod:`co2s.models.architecture_limits`; a contract made
        in memory may describe models of its own), before anything is built from it."""
        if not isinstance(record, dict):
            raise CheckpointError(f"{where}: the inference contract is not a mapping")
        version = record.get("version", CONTRACT_VERSION)
        if type(version) is int and version > CONTRACT_VERSION:
            raise CheckpointError(f"{where}: inference contract version {version!r} is newer than this co2s "
                                  f"reads ({CONTRACT_VERSION}); upgrade co2s")
        try:
            contract = cls.model_validate(record)
        except ValidationError as exc:
            err = exc.errors()[0]
            message = err["msg"].removeprefix("Value error, ")
            # without pydantic's union tags (``scale.constrained-float``): the keys a writer wrote
            field = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and ("-" in p or "[" in p)))
            raise CheckpointError(f"{where}: inference contract " + (f"field {field}: {message}" if field else message)
                                  ) from None
        for name, architecture in contract.architectures.items():  # read from a file: bounded before any build
            try:
                check_architecture(architecture, contract.in_channels)
            except ValueError as exc:
                raise CheckpointError(f"{where}: inference contract architectures.{name}.{exc}") from None
        return contract

    def to_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_prediction(self, prediction: str | None) -> InferenceContract:
        """The same contract predicting ``prediction`` by default (None, or ``auto``: unchanged,
        the prediction its training chose)."""
        if prediction is None:
            return self
        resolved = resolve_prediction(prediction, self.model_names, validated=self.prediction)
        return self.model_copy(update={"prediction": resolved})


def contract_for(models: dict, config, prediction: str | None = None, gsd: float | None = None,
                 auto_scale: float | None = None) -> InferenceContract:
    """The contract of ``models`` (built from, and trained under, ``config``); ``prediction``
    defaults to ``eval.prediction``, resolved (:func:`~co2s.config.schema.resolve_prediction`;
    the trainer passes ``auto``'s choice as ``prediction``); ``gsd``
    to ``data.gsd`` (the trainer passes the ones its data module resolved, ``auto_scale`` too)."""
    modules = {name: getattr(m, "module", m) for name, m in models.items()}  # Fabric/DDP wrappers
    missing = [name for name, m in modules.items() if getattr(m, "architecture", None) is None]
    if missing:
        raise CheckpointError(f"model(s) {missing} have no architecture record (not built by co2s.models)")
    window, stride = config.tiling
    first = next(iter(modules.values()))
    return InferenceContract(
        classes=list(config.data.classes), palette=config.data.palette, bands=config.data.bands,
        scale=config.data.scale, in_channels=first.in_channels,
        normalisation={name: Normalisation(mean=m.mean.flatten().tolist(), std=m.std.flatten().tolist())
                       for name, m in modules.items()},
        tiling=Tiling(window=window, stride=stride, batch_size=config.eval.batch_size),
        gsd=gsd if gsd is not None else config.data.gsd,
        auto_scale=auto_scale if config.data.scale == "auto" else None,
        prediction=resolve_prediction(prediction or config.eval.prediction, list(modules)),
        architectures={name: m.architecture for name, m in modules.items()},
    )
