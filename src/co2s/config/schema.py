"""Typed configuration: every YAML key a run reads is declared here, with its default.

Unknown keys are errors (``extra="forbid"``) so a typo never silently falls back to a default.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Union, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from co2s.config import limits
from co2s.config.architectures import check_layers, vit_arch, vit_depth
from co2s.config.migrate import migrate
from co2s.config.overrides import apply_overrides, expand_env
from co2s.errors import ConfigError


class _Strict(BaseModel):
    # Unknown keys are errors; a validated config is immutable (``Config.override`` makes a new
    # one and re-runs every validator, so no check can be bypassed by assignment).
    model_config = ConfigDict(extra="forbid", frozen=True)


RGB = tuple[int, int, int]

#: how two students are fused at inference (SPEC 2.6); a prediction mode is one of these or a
#: student's name. The one definition: config validation, inference and the CLI read it from here.
Fusion = Literal["mean", "confidence"]
FUSIONS: tuple[str, ...] = get_args(Fusion)
#: ``eval.prediction: auto``, the default for two students: per run, the prediction (either student
#: or either fusion) that scores highest on validation, which then selects best.ckpt and is what the
#: trained model predicts. SPEC 2.6 makes the default "the mode that wins on validation in the
#: project's study"; that study (docs/benchmarks.md section 1) found the winner depends on the pair
#: and the run (on AI4Mars the CPU pair's CNN student alone won most Co2S runs, a fusion some), so
#: the choice is made on each run's own validation.
AUTO_PREDICTION = "auto"
#: what ``auto`` predicts for two students when no validation has chosen (a run without a val
#: split, or before its first validation): SPEC 2.6's interim default
UNVALIDATED_FUSION = "confidence"


def prediction_choices(model_names: list[str]) -> list[str]:
    """What a set of trained models can predict: each model, and both fusions for two students."""
    return [*model_names, *(FUSIONS if len(model_names) == 2 else ())]


def resolve_prediction(requested: str | None, model_names: list[str], validated: str | None = None) -> str:
    """The prediction to make: ``requested``; unset, ``auto`` for two students, else the only
    model; ``auto`` is ``validated`` (what won the validation the weights were chosen by, see
    :func:`best_on_validation`), else ``UNVALIDATED_FUSION``. The one place that decides it
    (config, validation, checkpoints, evaluate, predict, export)."""
    from co2s.errors import Co2sError

    choices = prediction_choices(model_names)
    if requested is None:
        requested = AUTO_PREDICTION if len(model_names) == 2 else model_names[0]
    if requested == AUTO_PREDICTION:
        if len(model_names) == 1:
            return model_names[0]
        requested = validated if validated in choices else UNVALIDATED_FUSION
    if requested not in choices:
        raise Co2sError(f"unknown prediction {requested!r}; choose from {choices}")
    return requested


def best_on_validation(scores: dict[str, float]) -> str | None:
    """The prediction with the highest finite validation mIoU (the first of equals, in the order
    scored: students, then fusions), as ``auto`` chooses it; None when no score is finite."""
    finite = {name: value for name, value in scores.items() if math.isfinite(value)}
    return max(finite, key=finite.get) if finite else None


class MethodFacts(NamedTuple):
    """What the config and the engine need to know of a training method."""

    models: int  # how many models it trains
    uses_unlabelled: bool  # whether it draws from the unlabelled images


#: the one table of method facts: the schema validates with it, the methods and the data read it
METHOD_FACTS: dict[str, MethodFacts] = {
    "supervised": MethodFacts(models=1, uses_unlabelled=False),
    "fixmatch": MethodFacts(models=1, uses_unlabelled=True),
    "unimatch": MethodFacts(models=1, uses_unlabelled=True),
    "co2s": MethodFacts(models=2, uses_unlabelled=True),
}
MethodName = Literal["supervised", "fixmatch", "unimatch", "co2s"]
assert set(get_args(MethodName)) == set(METHOD_FACTS)


def default_stride(window: int) -> int:
    """The evaluation stride of a window (SPEC 3.3): a sixth of the window overlaps."""
    return max(1, int(window * 5 / 6))


class IdFormat(_Strict):
    """Templates for list files whose lines are bare IDs (e.g. AI4Mars: ``NLA_3976...M1``)."""

    image: str = Field(description="image path template relative to the data root, with {id}")
    mask: str | None = Field(default=None, description="mask path template with {id}")

    @field_validator("image", "mask")
    @classmethod
    def _has_placeholder(cls, value: str | None) -> str | None:
        if value is not None and "{id}" not in value:
            raise ValueError(f"template {value!r} must contain '{{id}}'")
        return value


class SplitsConfig(_Strict):
    """Where each split's samples come from.

    Each entry is a list file (lines ``image [mask]`` relative to ``data.root``, or bare IDs when
    ``data.id_format`` is set) or a folder (``images/`` + ``masks/`` or ``labels/`` matched by stem;
    a folder of images alone is read as unlabelled). Relative entries resolve against ``data.root``.
    """

    train: str | None = Field(default=None, description="full training list (source for `co2s splits`)")
    labelled: str | None = Field(default=None, description="labelled training samples")
    unlabelled: str | None = Field(default=None, description="unlabelled training images")
    val: str | None = Field(default=None, description="validation split (checkpoint selection)")
    test: str | None = Field(default=None, description="test split (final report)")


class SceneLabelsConfig(_Strict):
    """Labels of the scenes: a vector file (polygons with a class attribute, e.g. drawn in QGIS)
    rasterised onto each window, or raster mask(s) on any grid and CRS, warped onto each scene."""

    vector: str | None = Field(
        default=None,
        description="vector file of labelled polygons (GeoPackage, GeoJSON, Shapefile, FlatGeobuf, "
        "... anything GDAL reads), relative to data.root; reprojected to each raster's CRS",
    )
    layer: str | None = Field(default=None, description="vector: layer to read; null: the file's only layer")
    attribute: str | None = Field(
        default=None,
        description="vector: attribute holding each polygon's class: a name of data.classes or a "
        "class index (ignore_index marks a polygon as explicitly unlabelled)",
    )
    where: str | None = Field(
        default=None,
        description="vector: read only the features matching this OGR SQL filter (as QGIS's provider "
        "feature filter), e.g. \"split = 'train'\": one file with a split attribute for every split",
    )
    raster: list[str] | None = Field(
        default=None,
        description="raster mask(s), paths or globs relative to data.root, on any grid and CRS "
        "(warped onto each scene, nearest); values go through label_map / reduce_zero_label; "
        "nodata, ignore_index and pixels outside every mask are unlabelled",
    )
    #: whether a vector source must name its class attribute (held-out regions default to the labels')
    _attribute_required: ClassVar[bool] = True
    complete: bool = Field(
        default=False,
        description="vector: the polygons label everything: valid scene pixels outside every "
        "polygon are `background`; false (default): they are unlabelled (ignore)",
    )
    background: str | None = Field(
        default=None, description="with complete: true, the class (a name of data.classes) of pixels "
        "outside every polygon",
    )
    repair: bool = Field(
        default=False,
        description="vector: remake invalid polygons (self-intersections, holes crossing their shell) "
        "valid with shapely.make_valid, and say how many; false (default): they are an error",
    )

    @field_validator("raster", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> SceneLabelsConfig:
        if (self.vector is None) == (self.raster is None):
            raise ValueError("give exactly one of vector (a vector file) or raster (raster masks)")
        if self.vector is not None and not self.attribute and self._attribute_required:
            raise ValueError("vector labels need attribute: the field holding each polygon's class")
        if self.raster is not None:
            given = [k for k in ("layer", "attribute", "where", "background") if getattr(self, k) is not None]
            given += ["repair"] if self.repair else []
            if given or self.complete:
                raise ValueError(f"{', '.join(given or ['complete'])}: for vector labels only (a raster "
                                 "mask says itself which pixels are unlabelled)")
            if not self.raster:
                raise ValueError("raster: give at least one mask")
        if self.complete and self.background is None:
            raise ValueError("complete: true needs background: the class of pixels outside every polygon")
        if self.background is not None and not self.complete:
            raise ValueError("background is used with complete: true only (else pixels outside the "
                             "polygons are unlabelled)")
        return self


class SceneRegionsConfig(SceneLabelsConfig):
    """Held-out regions of the scenes, scored for validation (`val`) or test (`test`):
    polygons of a vector file (the pixels inside them, with their classes), raster masks (their
    labelled pixels), or whole rasters with their labels (`rasters` + either). Scored with the
    tile grid of whole-scene prediction, in windows; never trained on (see docs/data.md#scenes)."""

    rasters: list[str] | None = Field(
        default=None,
        description="rasters the regions lie on, paths or globs relative to data.root; null: "
        "data.scenes.rasters (held-out areas of the training scenes)",
    )
    attribute: str | None = Field(
        default=None, description="vector: attribute holding each polygon's class; null: that of "
        "data.scenes.labels",
    )
    _attribute_required: ClassVar[bool] = False

    @field_validator("rasters", mode="before")
    @classmethod
    def _rasters_one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _some_rasters(self) -> SceneRegionsConfig:
        if self.rasters is not None and not self.rasters:
            raise ValueError("rasters: give at least one raster, or leave it out for data.scenes.rasters")
        return self


class ScenesConfig(_Strict):
    """Whole rasters (GeoTIFF/COG of any size) as the training source (SPEC 3.1b): labelled crops
    come from windows holding labelled pixels, unlabelled crops from the rest of the scenes; every
    crop is a windowed read, so memory is bounded by the crop, not the scene."""

    rasters: list[str] = Field(
        min_length=1, description="scene rasters, paths or globs relative to data.root"
    )
    labels: SceneLabelsConfig = Field(description="where the labels come from (vector or raster)")
    exclude_labelled: bool = Field(
        default=True,
        description="unlabelled crops avoid labelled pixels (windows holding none are preferred; "
        "labelled pixels of a crop are never pseudo-labelled)",
    )
    samples_per_epoch: int | None = Field(
        default=None, ge=1,
        description="crops per epoch of each pool (labelled, unlabelled); null: as many as cover the "
        "pool once at scale 1 (labelled pixels / crop_size^2, scene pixels / crop_size^2)",
    )
    min_valid: float = Field(
        default=0.5, ge=0, le=1,
        description="unlabelled crops: least share of valid pixels (not nodata, not padding) a window "
        "needs; windows with less are redrawn",
    )
    val: SceneRegionsConfig | None = Field(
        default=None,
        description="validation regions (checkpoint selection, co2s evaluate --split val), instead of "
        "data.splits.val; never trained on",
    )
    test: SceneRegionsConfig | None = Field(
        default=None,
        description="test regions (co2s evaluate --split test), instead of data.splits.test; never "
        "trained on",
    )

    @field_validator("rasters", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class DataConfig(_Strict):
    root: str = Field(default=".", description="data root; list-file paths are relative to it")
    classes: list[str] = Field(min_length=1, max_length=limits.MAX_CLASSES, description="class names, in index order")
    concepts: dict[str, list[str]] = Field(
        default_factory=dict, description="optional synonyms per class (for text guidance)"
    )
    palette: list[RGB] | None = Field(default=None, description="RGB colour per class")
    ignore_index: int = Field(default=255, ge=0, le=65535, description="label value never trained on nor scored")
    reduce_zero_label: bool = Field(
        default=False, description="0 becomes ignore, other values shift down by one"
    )
    label_map: dict[int, int] = Field(
        default_factory=dict, description="remap raw mask values before anything else"
    )
    color_masks: bool = Field(
        default=False, description="masks are RGB colour-coded with `palette`"
    )
    ignore_colors: list[RGB] = Field(
        default_factory=list,
        description="colour-coded masks: colours that mean ignore (e.g. a black 'no label' border); "
        "other colours outside `palette` count as unmatched in the label check",
    )
    id_format: IdFormat | None = Field(default=None, description="templates for list files of bare IDs: {image: images/{id}.jpg, mask: masks/{id}.png}")
    splits: SplitsConfig = Field(default_factory=SplitsConfig)
    bands: list[int] | None = Field(
        default=None, max_length=limits.MAX_IN_CHANNELS, description="1-based band indices to read, in order; null reads all"
    )
    scale: float | Literal["auto"] = Field(
        default="auto",
        description="divide raw values by this; auto: 255 for uint8, 65535 for uint16, 1 for float",
    )
    gsd: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                              description="ground sample distance of the imagery, metres per pixel; "
                              "null: read from the training rasters' georeferencing (recorded in the "
                              "model for the ONNX resolution that QGIS plugins rescale by)")
    mean: list[float] | None = Field(default=None, max_length=limits.MAX_IN_CHANNELS,
                                     description="per-band mean after scaling")
    std: list[float] | None = Field(default=None, max_length=limits.MAX_IN_CHANNELS,
                                    description="per-band std after scaling")
    validate_files: Literal["full", "exists", "none"] = Field(
        default="full",
        description="up-front check: full reads every mask and image header (sizes, band counts, "
        "label values, the label check); exists only stats files",
    )
    label_check: Literal["error", "warn"] = Field(
        default="error",
        description="with validate_files: full, a class with no pixel in the labelled split or a mask "
        "with more than max_unmatched_colors of colours outside the palette stops the run (error) "
        "or is only reported (warn: e.g. a rare class absent from a small labelled split)",
    )
    max_unmatched_colors: float = Field(
        default=0.01, ge=0, le=1,
        description="color_masks: largest share of a labelled mask's pixels whose colour is neither "
        "in palette nor in ignore_colors (they become ignore) before the label check reports it",
    )
    scenes: ScenesConfig | None = Field(
        default=None,
        description="whole rasters with sparse labels as the training source, instead of "
        "splits.labelled / splits.unlabelled (docs/data.md#scenes)",
    )

    @field_validator("palette", "ignore_colors")
    @classmethod
    def _colours(cls, value: list[RGB] | None) -> list[RGB] | None:
        # palettes become PNG palettes and GeoTIFF colour tables: one byte per channel
        bad = next((c for c in value or [] if not all(0 <= v <= 255 for v in c)), None)
        if bad is not None:
            raise ValueError(f"colour {list(bad)}: each channel must be from 0 to 255")
        return value

    @field_validator("scale")
    @classmethod
    def _positive_scale(cls, value: float | str) -> float | str:
        # raw values are divided by it: 0 or NaN would make every image one constant
        if value != "auto" and not (math.isfinite(value) and value > 0):
            raise ValueError(f"must be a finite number above 0, or 'auto'; got {value}")
        return value

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        from collections import Counter  # linear: list.count per name was quadratic

        dupes = sorted(c for c, n in Counter(value).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate class names: {dupes}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        n = len(self.classes)
        if self.palette is not None and len(self.palette) != n:
            raise ValueError(f"palette has {len(self.palette)} colours for {n} classes")
        if self.color_masks and self.palette is None:
            raise ValueError("color_masks needs a palette")
        both = sorted({tuple(c) for c in self.ignore_colors} & {tuple(c) for c in self.palette or []})
        if self.color_masks and both:
            raise ValueError(f"ignore_colors {both} are also class colours in palette")
        unknown = sorted(set(self.concepts) - set(self.classes))
        if unknown:
            raise ValueError(f"concepts given for unknown classes: {unknown}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std):
                raise ValueError("mean and std must have the same length")
            if any(s <= 0 for s in self.std):
                raise ValueError("std values must be positive")
            from math import isfinite

            if not all(isfinite(v) for v in self.mean + self.std):
                raise ValueError("mean and std values must be finite")
            if self.bands is not None and len(self.bands) != len(self.mean):
                raise ValueError(f"{len(self.bands)} bands selected but {len(self.mean)} mean values")
        if self.bands is not None and any(b < 1 for b in self.bands):
            raise ValueError("bands are 1-based indices")
        if n > self.ignore_index and self.ignore_index < 256:
            raise ValueError(f"ignore_index {self.ignore_index} collides with a class index")
        return self

    @model_validator(mode="after")
    def _one_training_source(self) -> DataConfig:
        if self.scenes is None:
            return self
        tiles = [k for k in ("labelled", "unlabelled") if getattr(self.splits, k)]
        if tiles:
            raise ValueError(f"data.scenes and data.splits.{tiles[0]} are both set: training reads one "
                             "source, the scenes (their labelled and unlabelled areas) or the tile splits")
        labels = self.scenes.labels
        if labels.background is not None and labels.background not in self.classes:
            raise ValueError(f"scenes.labels.background {labels.background!r} is not in classes {self.classes}")
        for split in ("val", "test"):
            regions = getattr(self.scenes, split)
            if regions is None:
                continue
            if getattr(self.splits, split):
                raise ValueError(f"data.scenes.{split} and data.splits.{split} are both set: give one "
                                 f"{split} source, the scene regions or the tile split")
            if regions.vector is not None and regions.attribute is None and labels.attribute is None:
                raise ValueError(f"scenes.{split}.attribute: the attribute holding each polygon's class "
                                 "(the training labels are rasters, so there is none to default to)")
            if regions.background is not None and regions.background not in self.classes:
                raise ValueError(f"scenes.{split}.background {regions.background!r} is not in classes "
                                 f"{self.classes}")
        if labels.raster is not None and self.color_masks:
            raise ValueError("scenes.labels.raster: colour-coded masks (color_masks) are not supported "
                             "for scenes; give single-band index masks")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class BackboneConfig(_Strict):
    """A student backbone: a pretrained ViT (where its weights come from and which of them train),
    or the random-init CNN (``kind: cnn``)."""

    kind: Literal["clip", "dinov3", "dinov2", "cnn"] = Field(
        description="backbone family; cnn: a small ResNet-like CNN with random weights"
    )
    weights: str | None = Field(
        default=None,
        description="Hub id (owner/name[@revision]; downloaded on first use, docs/weights.md), "
        "save_pretrained folder, official DINOv3 .pth, OpenAI-format CLIP .pt; null builds the architecture `arch` with random weights (cnn: always null)",
    )
    arch: str | dict[str, Any] = Field(
        default="vit-b16",
        description="architecture when weights is null: vit-b16, tiny (dinov3: vit-l16), or config keys; cnn: tiny "
        "(its default), small, or {base, stem, widths, depths, strides}",
    )
    layers: list[int] | None = Field(
        default=None,
        description="hidden-state indices used (0 = embeddings, k = block k); clip: skips [0, 4]; "
        "dino: [3, 8, 12] (skips, then the cost-volume map)",
    )
    skips: Literal["hidden", "value"] = Field(
        default="hidden",
        description="clip only: what a skip index i in `layers` gives; hidden: hidden state i; value: "
        "the value path of block i+1 on hidden state i (h + out_proj(v_proj(ln_1 h)), then its MLP "
        "with residual; the paper's code, with layers [0, 4])",
    )
    tune: Literal["frozen", "attention", "last_n", "full"] = Field(
        default="attention", description="which backbone weights train (paper: attention; cnn: full, "
        "its default, last_n or frozen)"
    )
    tune_last: int = Field(default=0, ge=0, description="blocks trained with tune: last_n")
    lr_mult: float = Field(default=0.01, ge=0, description="backbone learning rate x base lr")
    rope_rescale: bool = Field(
        default=False, description="DINOv3: keep transformers' random RoPE rescaling in training"
    )
    family: str | None = Field(
        default=None,
        description="weight family of `weights` when its name does not say it (docs/weights.md: openai, "
        "remoteclip, georsclip, skyclip, openclip-laion, dinov3-lvd1689m, dinov3-sat493m, dinov2)",
    )
    mean: list[float] | None = Field(
        default=None, description="input mean of the bands the backbone was pretrained on (RGB); null: "
        "the weight family's"
    )
    std: list[float] | None = Field(default=None, description="input std of those bands; null: the family's")
    act: Literal["quick_gelu", "gelu"] | None = Field(
        default=None, description="clip: MLP activation; null: the family's (OpenAI: quick_gelu; the Co2S "
        "authors' code runs OpenAI's weights with gelu)"
    )
    heads: int | list[int] | None = Field(
        default=None, description="clip: attention heads of weights no family describes (both towers, or "
        "[vision, text]); the family's otherwise"
    )
    checkpointing: bool = Field(
        default=False, description="ViTs: activation checkpointing; each block's activations are recomputed in "
        "the backward pass instead of kept (less memory, about a third more compute; docs/memory.md)"
    )
    rope_periods: Literal["exact", "stored"] = Field(
        default="exact", description="DINOv3 .pth: exact RoPE periods from the base (transformers), or the "
        "file's own bf16-rounded ones (stored; Meta's code)"
    )

    @model_validator(mode="before")
    @classmethod
    def _cnn_defaults(cls, value: Any) -> Any:
        # The ViT defaults (arch vit-b16, attention-only tuning) mean nothing for the CNN.
        if isinstance(value, dict) and value.get("kind") == "cnn":
            value = {"arch": "tiny", "tune": "full", **value}
        return value

    @model_validator(mode="after")
    def _tune_last(self) -> BackboneConfig:
        if self.tune == "last_n" and self.tune_last < 1:
            raise ValueError("tune: last_n needs tune_last >= 1")
        if self.skips == "value" and self.kind != "clip":
            raise ValueError(f"skips: value is for clip backbones only ({self.kind} skips are hidden states)")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and (len(values) != 3 or (key == "std" and min(values) <= 0)):
                raise ValueError(f"{key}: three values for the RGB bands the backbone was pretrained on"
                                 + (", all positive" if key == "std" else ""))
        heads = self.heads if isinstance(self.heads, list) else [self.heads] if self.heads is not None else []
        if self.heads is not None and (not 1 <= len(heads) <= 2 or min(heads) < 1):
            raise ValueError("heads: a positive number, or [vision, text]")
        for key, kinds in (("act", ("clip",)), ("heads", ("clip",)), ("family", ("clip", "dinov3", "dinov2"))):
            if getattr(self, key) is not None and self.kind not in kinds:
                raise ValueError(f"{key}: for {' or '.join(kinds)} backbones, not {self.kind}")
        if self.checkpointing and self.kind == "cnn":
            raise ValueError("checkpointing: for ViT backbones (clip, dinov3, dinov2), not cnn")
        if self.rope_periods == "stored" and self.kind != "dinov3":
            raise ValueError(f"rope_periods: stored is for dinov3 backbones, not {self.kind}")
        if self.kind == "cnn":
            if self.weights is not None:
                raise ValueError("kind: cnn has no pretrained weights (random initialisation): leave weights null")
            if self.tune == "attention":
                raise ValueError("kind: cnn has no attention layers: tune full, last_n or frozen")
            if self.layers is not None:
                raise ValueError("kind: cnn takes no layers (its skips are the two stages before the last)")
        return self


class TextConfig(_Strict):
    """Where the CLIP student's class prototypes come from (SPEC 2.2)."""

    prototypes: str | None = Field(
        default=None,
        description="file written by `co2s embed-text`; null computes them at start-up; "
        "'random': seeded random vectors, only for random-weight test students",
    )
    model: str | None = Field(
        default=None, description="CLIP weights for the text tower; null = the backbone's weights"
    )
    tokenizer: str | None = Field(
        default=None,
        description="folder with vocab.json + merges.txt (or tokenizer.json), OpenAI's "
        "bpe_simple_vocab_16e6.txt.gz or a folder holding it, or a Hub id; null = the text "
        "model's source; must fit the text tower (same vocabulary size and end-of-text token)",
    )
    template: str = Field(default="a photo of a {}", description="prompt per concept; {} is the concept")


class StudentConfig(_Strict):
    name: str = Field(description="short name used in logs and metrics (e.g. clip, dino)")
    backbone: BackboneConfig
    guidance: Literal["text", "queries", "none"] = Field(
        default="queries", description="text: frozen CLIP text prototypes (CLIP only); queries: learnable class queries; none"
    )
    head: Literal["vlg", "deeplabv3plus"] = Field(
        default="vlg", description="vlg: the language-guided decoder; deeplabv3plus: the no-guidance ablation"
    )
    text: TextConfig = Field(default_factory=TextConfig)
    head_width: int = Field(
        default=128, ge=16, le=limits.MAX_HEAD_WIDTH,
        description="decoder width: vlg hidden channels (upsampling stages width/2, width/4, skip "
        "projections width/4, width/8); deeplabv3plus uses 2 x width. 128 is the paper's; narrower "
        "is cheaper on CPU",
    )
    decoder_lr_mult: float = Field(default=10.0, ge=0, description="decoder learning rate x base lr")
    queries_lr_mult: float = Field(default=1.0, ge=0, description="learnable queries learning rate x base lr")

    @model_validator(mode="after")
    def _consistent(self) -> StudentConfig:
        if self.guidance == "text" and self.backbone.kind != "clip":
            raise ValueError("text guidance needs a CLIP backbone (its joint image-text space)")
        if self.head == "vlg" and self.guidance == "none":
            raise ValueError("the vlg head needs guidance (text or queries); use head: deeplabv3plus")
        backbone = self.backbone
        if backbone.kind != "cnn":  # the layers must exist and feed the head (depth known unless weights say it)
            depth = None if backbone.weights else vit_depth(backbone.kind, vit_arch(backbone.kind, backbone.arch))
            try:
                check_layers(backbone.kind, backbone.layers, depth, self.head)
            except ValueError as exc:
                raise ValueError(f"backbone.{exc}") from None
        return self


class LiteUNetConfig(_Strict):
    """The built-in CNN (a small U-Net): fast, no pretrained weights needed."""

    name: Literal["lite_unet"] = Field(default="lite_unet", description="lite_unet: the built-in CNN")
    width: int = Field(default=32, ge=4, description="channels of the first stage")
    depth: int = Field(default=4, ge=2, le=6, description="encoder stages")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="dropout before the classifier")
    in_channels: int | None = Field(
        default=None, ge=1, le=limits.MAX_IN_CHANNELS, description="input bands; null infers from data.bands / data.mean / 3"
    )

    @model_validator(mode="after")
    def _bounded(self) -> LiteUNetConfig:
        if self.width * 2 ** (self.depth - 1) > limits.MAX_CONV_CHANNELS:  # each stage doubles the width
            raise ValueError(f"width {self.width} at depth {self.depth}: the widest stage, width x 2^(depth - 1), "
                             f"must be at most {limits.MAX_CONV_CHANNELS} channels")
        return self


class StudentsConfig(_Strict):
    """ViT students (SPEC 2.1): one for the single-model methods, two for co2s."""

    name: Literal["students"] = Field(description="students: pretrained ViT students")
    students: list[StudentConfig] = Field(
        min_length=1, max_length=2, description="the students; co2s takes two (global, then local), "
        "supervised / fixmatch / unimatch exactly one"
    )
    in_channels: int | None = Field(
        default=None, ge=1, le=limits.MAX_IN_CHANNELS, description="input bands; null infers from data.bands / data.mean / 3"
    )

    @model_validator(mode="after")
    def _names(self) -> StudentsConfig:
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"student names must differ: {names}")
        bad = [n for n in names if not n.isidentifier() or n in FUSIONS]
        if bad:
            raise ValueError(f"student names must be identifiers other than {list(FUSIONS)}: {bad}")
        return self


def _model_kind(value: Any) -> str | None:
    """The union tag: ``model.name``, default ``lite_unet`` when the section does not say."""
    if isinstance(value, dict):
        return value.get("name", "lite_unet")
    return getattr(value, "name", None)


#: ``model``: a union discriminated by ``name``; each variant accepts only its own keys
ModelConfig = Annotated[
    Union[Annotated[LiteUNetConfig, Tag("lite_unet")], Annotated[StudentsConfig, Tag("students")]],
    Discriminator(_model_kind, custom_error_type="model_name",
                  custom_error_message="model.name must be lite_unet or students"),
]


class EngineConfig(_Strict):
    """Devices and precision, handed to Lightning Fabric."""

    accelerator: str = Field(default="auto", description="cpu, cuda, mps, auto")
    devices: int | str = Field(default=1, description="devices per node (int, 'auto', or list string)")
    num_nodes: int = Field(default=1, ge=1, description="machines (DDP across nodes)")
    strategy: str = Field(default="auto", description="auto, ddp, fsdp, ...")
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "auto"] = Field(
        default="32-true", description="Fabric precision; bf16-mixed on recent GPUs; auto: bf16-mixed on a "
        "CUDA device that supports bf16, else 32-true (the paper presets)"
    )


class LossWeightsConfig(_Strict):
    """Per-student UniMatch total: ``scale * (sup*L_sup + s1*L_s1 + s2*L_s2 + fp*L_fp)`` (SPEC 2.4)."""

    sup: float = Field(default=1.0, ge=0, description="supervised cross-entropy")
    s1: float = Field(default=0.25, ge=0, description="first strong view")
    s2: float = Field(default=0.25, ge=0, description="second strong view")
    fp: float = Field(default=0.5, ge=0, description="feature-perturbation stream")
    scale: float = Field(default=0.5, ge=0, description="factor on the whole sum")


class StrongViewConfig(_Strict):
    """Photometric strong view on top of the weak view (SPEC 2.4; the geometry never changes)."""

    jitter: tuple[float, float, float, float] = Field(
        default=(0.5, 0.5, 0.5, 0.25), description="colour jitter: brightness, contrast, saturation, hue (hue <= 0.5)"
    )
    jitter_p: float = Field(default=0.8, ge=0, le=1, description="probability of the colour jitter")
    grayscale_p: float = Field(default=0.2, ge=0, le=1, description="probability of grayscale")
    blur_p: float = Field(default=0.5, ge=0, le=1, description="probability of Gaussian blur")
    blur_sigma: tuple[float, float] = Field(default=(0.1, 2.0), description="blur sigma range")

    @model_validator(mode="after")
    def _ranges(self) -> StrongViewConfig:
        if min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError("jitter values must be >= 0, and hue <= 0.5")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError("blur_sigma must be an increasing pair of positive numbers")
        return self


class CutMixConfig(_Strict):
    """CutMix boxes of the strong views (SPEC 2.4)."""

    p: float = Field(default=0.5, ge=0, le=1, description="probability of a box")
    area: tuple[float, float] = Field(default=(0.02, 0.4), description="box area, fraction of the crop")
    aspect: tuple[float, float] = Field(default=(0.3, 1 / 0.3), description="box aspect ratio (h / w) range")

    @model_validator(mode="after")
    def _ranges(self) -> CutMixConfig:
        if not 0 < self.area[0] <= self.area[1] <= 1:
            raise ValueError("area must be an increasing pair within (0, 1]")
        if not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError("aspect must be an increasing pair of positive numbers")
        return self


class AugmentConfig(_Strict):
    """Training views beyond the weak view's rescale range (``train.scale_range``)."""

    hflip_p: float = Field(default=0.5, ge=0, le=1, description="probability of a horizontal flip")
    strong: StrongViewConfig = Field(default_factory=StrongViewConfig)
    cutmix: CutMixConfig = Field(default_factory=CutMixConfig)


class SemiConfig(_Strict):
    """Semi-supervised settings (SPEC 2.4, 2.5, 2.8)."""

    tau: float = Field(default=0.95, ge=0, le=1, description="pseudo-label confidence threshold")
    unlabelled_batch_size: int | None = Field(
        default=None, ge=1, description="unlabelled images per device per step; null = batch_size"
    )
    stability: bool = Field(default=True, description="co2s: the cross-student stability loss")
    stability_gradient: bool = Field(
        default=True,
        description="the student side of L_sta keeps its gradient; false reproduces the authors' "
        "released code (detached, no interaction)",
    )
    stability_weight: float = Field(default=0.5, ge=0, description="lambda after the ramp")
    stability_ramp: float = Field(
        default=0.2, ge=0, le=1,
        description="ramp length, fraction of iters (of the iters after burn_in when that is set)",
    )
    burn_in: float = Field(
        default=0.0, ge=0, le=1,
        description="supervised burn-in, fraction of iters: before it only the supervised CE trains "
        "(no unlabelled CE terms s1/s2/fp, no stability loss; lambda ramps from its end); 1.0 = the "
        "whole run (a supervised baseline of the same students); 0 = the paper",
    )
    burn_in_steps: int | None = Field(
        default=None, ge=0,
        description="the burn-in as a step count, in place of the fraction; `co2s train --extend` "
        "sets it so an extended run keeps the burn-in it had",
    )
    fp_dropout: float = Field(default=0.5, ge=0, lt=1, description="feature-perturbation dropout2d")
    loss_weights: LossWeightsConfig = Field(default_factory=LossWeightsConfig)


class TrainConfig(_Strict):
    method: MethodName = Field(
        default="supervised", description="training method (docs/methods.md)"
    )
    crop_size: int = Field(default=256, ge=limits.MIN_TILE, le=limits.MAX_TILE,
                           description="square training crop; the default evaluation window")
    batch_size: int = Field(default=2, ge=1, description="labelled images per device per step")
    semi: SemiConfig = Field(default_factory=SemiConfig)
    lr_reference_batch: int | None = Field(
        default=None, ge=1,
        description="linear lr scaling: lr x global batch / this (paper: 8 for WHDLD, 4 otherwise); "
        "null uses lr as given",
    )
    iters: int | None = Field(default=None, ge=1, description="total iterations (wins over epochs)")
    init_from: str | None = Field(
        default=None,
        description="a co2s checkpoint or model folder whose trained weights start this run (at step 0; "
        "same models, any class list: rows of shared classes kept, new classes fresh; docs/training.md)",
    )
    epochs: int | None = Field(default=None, ge=1, description="passes over the training set")
    lr: float = Field(default=1e-3, gt=0, description="base learning rate (AdamW)")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay; none on norms and biases")
    poly_power: float = Field(default=0.9, ge=0, description="poly decay power over all iterations")
    warmup_iters: int = Field(default=0, ge=0, description="linear warm-up iterations (paper: none)")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimiser step")
    grad_clip: float | None = Field(
        default=None, gt=0,
        description="clip each model's gradient to this global L2 norm before its step (paper: none); "
        "the norm before clipping is logged as NAME/grad_norm",
    )
    parallel_models: bool = Field(
        default=True,
        description="on a CPU (one process), run the students' forward and backward passes in parallel "
        "threads, each with its share of torch's threads; their random draws stay reproducible "
        "(docs/training.md)",
    )
    scale_range: tuple[float, float] = Field(default=(0.5, 2.0), description="weak view: random rescale of the long side")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    val_every: int = Field(default=500, ge=1, description="validate every N iterations")
    val_max_images: int | None = Field(
        default=None, ge=1, description="validate on the first N images of the val split"
    )
    ckpt_every: int = Field(default=100, ge=1, description="write `latest` every N iterations")
    log_every: int = Field(default=20, ge=1, description="write a metrics.jsonl train record every N iterations")
    num_workers: int = Field(default=2, ge=0, description="data-loader worker processes")
    seed: int = Field(default=0, description="seed of weights, sampling and augmentation")
    deterministic: bool = Field(default=False, description="deterministic algorithms: bit-identical reruns and resumes, slower")

    @model_validator(mode="after")
    def _has_length(self) -> TrainConfig:
        if self.iters is None and self.epochs is None:
            raise ValueError("set train.iters or train.epochs")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError("scale_range must be 0 < low <= high")
        return self


class EvalConfig(_Strict):
    window: int | None = Field(default=None, ge=limits.MIN_TILE, le=limits.MAX_TILE,
                               description="sliding window; null = crop_size")
    stride: int | None = Field(default=None, ge=1, description="null = int(window * 5 / 6)")
    batch_size: int = Field(default=4, ge=1, le=limits.MAX_BATCH_SIZE, description="windows per forward pass")
    prediction: str | None = Field(
        default=None,
        description="what validation selects best.ckpt by and the model predicts by default: a model's name; "
        "for two students a fusion (mean; confidence: per pixel, the more confident student) or auto (the "
        "student or fusion that scores highest on this run's validation); null = auto for two students, "
        f"the only model otherwise; auto without a validation = {UNVALIDATED_FUSION} (was train.semi.fusion)",
    )


class Config(_Strict):
    """A whole run: what to learn from (data), what to train (model), and how (train, engine)."""

    name: str = Field(default="run", description="run name; default output folder runs/<name>")
    out_dir: str | None = Field(default=None, description="run directory; null = runs/<name>")
    data: DataConfig
    model: ModelConfig = Field(default_factory=LiteUNetConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @model_validator(mode="after")
    def _method_fits_model(self) -> Config:
        method, model = self.train.method, self.model
        facts = METHOD_FACTS[method]
        if facts.models == 2:
            if model.name != "students" or len(model.students) != 2:
                raise ValueError(f"train.method {method} needs model.name: students with two students")
        elif model.name == "students" and len(model.students) != 1:
            names = [s.name for s in model.students]
            raise ValueError(f"train.method {method} trains one model, but model.students has "
                             f"{len(names)} ({', '.join(names)}): keep one, e.g. --set "
                             f"'model.students=[...]', or use train.method co2s")
        if facts.uses_unlabelled and not (self.data.splits.unlabelled or self.data.scenes):
            raise ValueError(f"train.method {method} needs data.splits.unlabelled (or data.scenes)")
        choices = [*prediction_choices(self.model_names), AUTO_PREDICTION]
        if self.eval.prediction is not None and self.eval.prediction not in choices:
            raise ValueError(f"eval.prediction must be one of {choices}, got {self.eval.prediction!r}")
        problem = limits.tiling_problem(*self.tiling, self.eval.batch_size)
        if problem:
            raise ValueError(f"eval: {problem}")
        return self

    @property
    def uses_unlabelled(self) -> bool:
        """Whether ``train.method`` trains on the unlabelled images."""
        return METHOD_FACTS[self.train.method].uses_unlabelled

    @property
    def model_names(self) -> list[str]:
        """The models this config trains, by name: ``model`` for the built-in CNN, else each student's."""
        return ["model"] if self.model.name == "lite_unet" else [s.name for s in self.model.students]

    @property
    def tiling(self) -> tuple[int, int]:
        """The evaluation tiling: ``eval.window`` (default the training crop) and ``eval.stride``
        (default ``int(window * 5 / 6)``, SPEC 3.3)."""
        window = self.eval.window or self.train.crop_size
        return window, self.eval.stride or default_stride(window)

    @classmethod
    def from_raw(cls, raw: dict[str, Any], origin: str = "config", stored: bool = False) -> Config:
        """Validate plain data (a YAML mapping): ``${VAR}`` expanded, old key spellings migrated
        (with a deprecation warning unless ``stored``: a config an older release wrote); every
        problem is one :class:`ConfigError` naming ``origin`` and the key paths."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: a config must be a mapping, got {type(raw).__name__}")
        try:
            return cls.model_validate(expand_env(migrate(raw, origin, warn=not stored)))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, origin)) from None

    def override(self, overrides: dict[str, Any] | list[str] | None = None) -> Config:
        """A new config with ``overrides`` applied (``{"train.iters": 500}`` or
        ``["train.iters=500"]``, as ``--set``), every validator run again."""
        return Config.from_raw(apply_overrides(self.model_dump(mode="json"), overrides or []),
                               "config (with overrides)")

    @property
    def run_dir(self) -> str:
        return self.out_dir or f"runs/{self.name}"

    @property
    def in_channels(self) -> int:
        if self.model.in_channels is not None:
            return self.model.in_channels
        if self.data.bands is not None:
            return len(self.data.bands)
        if self.data.mean is not None:
            return len(self.data.mean)
        return 3


#: tags of the ``model`` union that pydantic puts in error locations (``model.students.students.0``)
_UNION_TAGS = {"lite_unet", "students"}


def _error_path(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "model" and parts[1] in _UNION_TAGS:
        parts.pop(1)  # the union variant, not a key the user wrote
    return ".".join(parts) or "(top level)"


def format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid config {origin}:"]
    for err in exc.errors():
        path = _error_path(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        elif err["type"] == "missing":
            msg = "required value missing"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)
