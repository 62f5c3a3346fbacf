"""Build students from config: backbone (a ViT loaded and verified, or a named architecture with
random weights; or the random-init CNN), guidance (text prototypes or learnable queries) and
decoder."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    DINOv3ViTConfig,
    DINOv3ViTModel,
)

from co2s.config.architectures import default_layers, vit_arch
from co2s.errors import ConfigError
from co2s.models.backbones.base import Backbone
from co2s.models.backbones.clip import ClipBackbone
from co2s.models.architecture_limits import check_cnn_arch, check_hf_config
from co2s.models.backbones.cnn import CnnBackbone, cnn_arch
from co2s.models.backbones.dino import DinoV2Backbone, DinoV3Backbone
from co2s.models.families import Overrides, Resolved, for_random_weights
from co2s.models.guidance import LearnableQueries, TextGuidance, clip_text_prototypes, load_prototypes
from co2s.models.heads import DeepLabV3PlusHead, LanguageGuidedHead
from co2s.models.multispectral import band_normalisation, widen_patch_embedding
from co2s.models.student import Student

def fetch_pretrained(model_cfg) -> None:
    """Fetch the Hub weights the students name (``backbone.weights``, ``text.model``) into the
    cache before anything slow, so a mistyped or unreachable id stops a run in seconds, not after
    its data are checked."""
    from co2s.models.backbones.weights.dispatch import fetch_hub_weights

    sources = []
    for student in getattr(model_cfg, "students", None) or []:
        sources.append(student.backbone.weights)
        if student.text is not None:
            sources.append(student.text.model)
    fetch_hub_weights([s for s in sources if s])


def _arch_config(kind: str, arch) -> dict[str, Any]:
    """The config values of a named or overridden architecture (the table and its merge rule are
    co2s.config.architectures', which the schema checks configs with)."""
    try:
        return vit_arch(kind, arch)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_CLASSES = {"clip": (CLIPConfig, CLIPModel), "dinov3": (DINOv3ViTConfig, DINOv3ViTModel),
            "dinov2": (Dinov2Config, Dinov2Model)}


def _random_model(kind: str, arch, act: str | None = None):
    """``arch`` with random weights; ``act`` (``backbone.act``) replaces a CLIP's activation."""
    config_class, model_class = _CLASSES[kind]
    values = _arch_config(kind, arch)
    if act is not None:
        for tower in ("vision_config", "text_config"):
            values[tower] = {**values.get(tower, {}), "hidden_act": act}
    try:
        check_hf_config(kind, values, "backbone.arch.")
    except ValueError as exc:
        raise ConfigError(f"{kind} student: {exc}") from None
    return model_class(config_class(**values))


def _model_from_saved_config(kind: str, saved: dict[str, Any]):
    """The architecture recorded in a co2s checkpoint, with placeholder weights to be loaded
    (its sizes checked first: the record comes from a file)."""
    config_class, model_class = _CLASSES[kind]
    check_hf_config(kind, saved, "arch.")
    return model_class(config_class.from_dict(saved))


def build_cnn_backbone(cfg, saved_arch: dict[str, Any] | None = None, in_channels: int = 3) -> CnnBackbone:
    """The random-init CNN of ``cfg.arch`` (or of a checkpoint's record), with ``in_channels`` bands."""
    try:
        record = dict(saved_arch) if saved_arch is not None else {"in_channels": in_channels, **cnn_arch(cfg.arch)}
        check_cnn_arch(record, "arch.")  # before any layer is allocated
        backbone = CnnBackbone(**record)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"backbone kind cnn: {exc}") from None
    backbone.set_tuning(cfg.tune, cfg.tune_last)
    return backbone


def _wrap_backbone(kind: str, model, layers, skips: str = "hidden", rope_rescale: bool = False) -> Backbone:
    """The co2s backbone around a transformers ViT: the maps its decoder reads (``layers``: None
    for the paper's choice scaled to the depth)."""
    if kind == "clip":
        depth = model.config.vision_config.num_hidden_layers
        layers = layers if layers is not None else default_layers("clip", depth)
        return ClipBackbone(model.vision_model, model.visual_projection, tuple(layers), skips)
    layers = layers if layers is not None else default_layers("dino", model.config.num_hidden_layers)
    if kind == "dinov3":
        return DinoV3Backbone(model, tuple(layers), rope_rescale=rope_rescale)
    return DinoV2Backbone(model, tuple(layers))


def build_backbone(cfg, saved_arch: dict[str, Any] | None = None
                   ) -> tuple[Backbone, torch.nn.Module, dict[str, torch.Tensor] | None, Resolved]:
    """The wrapped backbone, the transformers model it came from, the reference weights it must
    hold (None for random initialisation) and what its weight family decided (heads, activation,
    normalisation: :mod:`co2s.models.families`). ``saved_arch`` (from a co2s checkpoint) rebuilds
    the architecture without reading the pretrained files: the checkpoint holds the weights.
    ViTs only (the CNN: :func:`build_cnn_backbone`)."""
    reference = None
    overrides = Overrides.of(cfg)
    if saved_arch is not None:
        model, family = _model_from_saved_config(cfg.kind, saved_arch), for_random_weights(cfg.kind, overrides)
    elif cfg.weights:
        from co2s.models.backbones.weights import load_backbone_weights

        model, reference, family = load_backbone_weights(cfg.kind, cfg.weights, overrides=overrides)
    else:
        if overrides.heads is not None:
            raise ConfigError("backbone.heads describes a weights file; for random weights set arch")
        family = for_random_weights(cfg.kind, overrides)
        model = _random_model(cfg.kind, cfg.arch, family.act)
    try:  # layers are checked against the depth, known only now
        backbone = _wrap_backbone(cfg.kind, model, cfg.layers, cfg.skips, cfg.rope_rescale)
    except ValueError as exc:
        raise ConfigError(f"backbone.layers of the {cfg.kind} student ({cfg.weights or cfg.arch}): {exc}") from None
    backbone.mean, backbone.std = family.mean, family.std
    backbone.checkpointing = cfg.checkpointing
    backbone.set_tuning(cfg.tune, cfg.tune_last)
    return backbone, model, reference, family


def _text_guidance(student_cfg, clip_model, data, placeholder: bool = False) -> TextGuidance:
    text = student_cfg.text
    dim = clip_model.config.projection_dim
    if placeholder:  # filled by the checkpoint's state dict
        return TextGuidance(torch.ones(data.num_classes, dim))
    if text.prototypes == "random":
        # Only for random-weight test/CPU students: a random text tower would mean no more.
        g = torch.Generator().manual_seed(0)
        return TextGuidance(torch.randn(data.num_classes, dim, generator=g))
    if text.prototypes:
        return TextGuidance(load_prototypes(text.prototypes, data.classes, dim))
    return TextGuidance(clip_text_prototypes(data, student_cfg, clip_model=clip_model).prototypes)


def _head(backbone: Backbone, kind: str, head: str, width: int, num_classes: int) -> torch.nn.Module:
    """The decoder: the language-guided head (``width`` 128: the paper's) or DeepLabV3+."""
    if head == "vlg":
        return LanguageGuidedHead(backbone.feature_dim, backbone.feature_dim, tuple(backbone.skip_dims),
                                  hidden=width, skip_channels=(width // 4, width // 8),
                                  stage_channels=(width // 2, width // 4))
    # ViT skips share the last map's resolution; the CNN's low-level skip is finer: fuse there.
    return DeepLabV3PlusHead(backbone.feature_dim, tuple(backbone.skip_dims), num_classes, channels=2 * width,
                             fuse_scale=None if kind == "cnn" else 1)


def _architecture(kind: str, backbone: Backbone, hf_model, guidance: str, head: str, head_width: int,
                  family: Resolved | None) -> dict:
    """A student's architecture record (the inference contract's): everything
    :func:`student_from_architecture` needs, nothing about training; and where the backbone's
    weights came from (their family, licence and normalisation) for model folders and summaries."""
    if kind == "cnn":
        record = {"kind": "cnn", "arch": dict(backbone.arch)}
    else:
        record = {"kind": kind, "arch": hf_model.config.to_dict(),
                  "layers": list(backbone.skip_layers if kind == "clip" else backbone.layers)}
        if kind == "clip":
            record["skips"] = backbone.skip_mode
        if family is not None:
            record["weights"] = family.record()
    return {"kind": "student", "backbone": record, "guidance": guidance, "head": head, "head_width": head_width}


def build_student(student_cfg, data, saved_arch: dict[str, Any] | None = None,
                  in_channels: int = 3) -> Student:
    """A student from config; with ``saved_arch`` (a format-1 checkpoint's record) no weight
    file is read.

    ``in_channels`` > 3 widens a ViT's patch embedding once its weights are loaded (the CNN is
    built with that many input bands).
    """
    kind = student_cfg.backbone.kind
    if kind == "cnn":
        backbone, hf_model, reference, family = (build_cnn_backbone(student_cfg.backbone, saved_arch, in_channels),
                                                 None, None, None)
    else:
        backbone, hf_model, reference, family = build_backbone(student_cfg.backbone, saved_arch)
    mean, std = band_normalisation(backbone.mean, backbone.std, data, in_channels)
    n = data.num_classes
    if student_cfg.guidance == "text":
        guidance = _text_guidance(student_cfg, hf_model, data, placeholder=saved_arch is not None)
    elif student_cfg.guidance == "queries":
        guidance = LearnableQueries(n, backbone.feature_dim)
    else:
        guidance = None
    head = _head(backbone, kind, student_cfg.head, student_cfg.head_width, n)
    student = Student(backbone, head, guidance, n, {
        "backbone": student_cfg.backbone.lr_mult, "decoder": student_cfg.decoder_lr_mult,
        "queries": student_cfg.queries_lr_mult,
    }, in_channels, mean, std)
    if reference is not None:
        # Guard against a later step re-initialising pretrained weights (SPEC 2.9.3).
        from co2s.models.backbones.weights import verify_weights

        verify_weights(hf_model, reference, str(student_cfg.backbone.weights))
    if hf_model is not None:
        widen_patch_embedding(hf_model, kind, in_channels)  # after the check
    student.architecture = _architecture(kind, backbone, hf_model, student_cfg.guidance, student_cfg.head,
                                         student_cfg.head_width, family if saved_arch is None else None)
    return student


def student_from_architecture(record: dict[str, Any], num_classes: int, in_channels: int) -> Student:
    """A student of the architecture ``record`` (:func:`_architecture`) with placeholder weights,
    to be loaded from a checkpoint or model folder: no pretrained file is read."""
    b = record["backbone"]
    kind = b["kind"]
    if kind == "cnn":
        backbone, hf_model = CnnBackbone(**b["arch"]), None
    elif kind in _CLASSES:
        hf_model = _model_from_saved_config(kind, b["arch"])
        backbone = _wrap_backbone(kind, hf_model, b["layers"], b.get("skips", "hidden"))
    else:
        raise ValueError(f"unknown backbone kind {kind!r}")
    guidance_kind = record["guidance"]
    if guidance_kind == "text":
        if kind != "clip":
            raise ValueError(f"text guidance needs a CLIP backbone, not {kind}")
        guidance = TextGuidance(torch.ones(num_classes, hf_model.config.projection_dim))
    elif guidance_kind == "queries":
        guidance = LearnableQueries(num_classes, backbone.feature_dim)
    elif guidance_kind == "none":
        guidance = None
    else:
        raise ValueError(f"unknown guidance {guidance_kind!r}")
    if record["head"] not in ("vlg", "deeplabv3plus"):
        raise ValueError(f"unknown head {record['head']!r}")
    head = _head(backbone, kind, record["head"], int(record["head_width"]), num_classes)
    if hf_model is not None:
        widen_patch_embedding(hf_model, kind, in_channels)
    student = Student(backbone, head, guidance, num_classes, None, in_channels,
                      [0.0] * in_channels, [1.0] * in_channels)  # the weights hold mean and std
    student.eval()
    student.architecture = dict(record)
    return student
