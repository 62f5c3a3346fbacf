"""The weight families co2s knows: architecture, activation, normalisation, licence, per release.

State dicts rarely say which family they are (the satellite and web DINOv3 ViT-L files have
identical shapes; RemoteCLIP, GeoRSCLIP and SkyCLIP use OpenAI's key names), and the facts that
differ between families (attention heads, QuickGELU or exact GELU, input mean and std) cannot be
read from the tensors. So they come from this one table:

* a file is matched to a family by its name or Hub id where they say it (:func:`identify`), and
  the match is checked against the tensors' shape;
* where neither says it, the shape alone decides if it is one family's; if several families have
  that shape, ``backbone.family`` must name one (the error lists them);
* a shape no family has is refused, naming the keys that describe it (``backbone.heads``,
  ``backbone.act``, ``backbone.mean``/``std``); heads are never guessed from the width.

The precedence rule, applied in :func:`resolve` and nowhere else: a student's own
``backbone.act``/``mean``/``std`` win, then the family's; ``data.mean``/``std`` only reach the bands
after the ones the backbone was pretrained on (:mod:`co2s.models.multispectral`).

Sources: openai/CLIP ``clip/model.py`` (heads = width / 64 holds for OpenAI's own files only,
QuickGELU) and ``clip/clip.py`` (mean/std); open_clip ``model_configs/*.json`` (``head_width``,
``mlp_ratio``; exact GELU unless ``-quickgelu``); the RemoteCLIP, RS5M (GeoRSCLIP) and SkyScript
(SkyCLIP) READMEs and loading code; facebookresearch/dinov3 ``hub/backbones.py`` and README
(SAT-493M normalisation); facebookresearch/dinov2 ``hub/backbones.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from co2s.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT493M_MEAN = (0.430, 0.411, 0.296)
SAT493M_STD = (0.213, 0.156, 0.143)

ACTIVATIONS = ("quick_gelu", "gelu")

DINOV3_NOTICE = ("DINOv3 is licensed under the DINOv3 License, Copyright (c) Meta Platforms, Inc. and "
                 "affiliates. All Rights Reserved. Redistribution must include a copy of the DINOv3 License "
                 "(https://github.com/facebookresearch/dinov3/blob/main/LICENSE.md).")


@dataclass(frozen=True)
class Variant:
    """One released architecture of a family: the vision tower's shape and what the shape cannot
    tell (heads, activation); ``names``: regular expressions matched against the file path or Hub
    id (case-insensitive)."""

    name: str
    width: int
    depth: int
    patch: int
    heads: int
    act: str
    names: tuple[str, ...] = ()
    text_heads: int | None = None  # CLIP text tower

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.width, self.depth, self.patch

    def describe(self) -> dict:
        return {"variant": self.name, "width": self.width, "depth": self.depth, "heads": self.heads,
                "patch": self.patch, "act": self.act}


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # clip | dinov3 | dinov2
    title: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    citation: str
    variants: tuple[Variant, ...]
    notice: str | None = None  # text a redistribution must carry
    note: str = ""

    def record(self) -> dict:
        """What a model folder and ``co2s model-summary`` say of the family."""
        return {"family": self.name, "title": self.title, "licence": self.licence, "citation": self.citation,
                **({"notice": self.notice} if self.notice else {})}


def _clip_names(*stems: str) -> tuple[str, ...]:
    return tuple(rf"(^|[/\\]){stem}$" for stem in stems)


def _hub(*ids: str) -> tuple[str, ...]:
    """Hub ids as given (``owner/name``) or as a cache folder (``models--owner--name``)."""
    return tuple(rf"(^|[/\\]|models--){re.escape(i.split('/')[0])}(/|--){re.escape(i.split('/')[1])}($|[/\\@])"
                 for i in ids)


_OPENAI = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
FAMILIES: tuple[Family, ...] = (
    Family(
        "openai", "clip", "OpenAI CLIP", CLIP_MEAN, CLIP_STD, "MIT", _OPENAI,
        (Variant("ViT-B/32", 768, 12, 32, 12, "quick_gelu", _clip_names(r"ViT-B-32\.pt") + _hub("openai/clip-vit-base-patch32"), 8),
         Variant("ViT-B/16", 768, 12, 16, 12, "quick_gelu", _clip_names(r"ViT-B-16\.pt") + _hub("openai/clip-vit-base-patch16"), 8),
         Variant("ViT-L/14", 1024, 24, 14, 16, "quick_gelu",
                 _clip_names(r"ViT-L-14(-336px)?\.pt") + _hub("openai/clip-vit-large-patch14",
                                                             "openai/clip-vit-large-patch14-336"), 12)),
        note="QuickGELU, as OpenAI trained them; the Co2S authors' code runs exact GELU (backbone.act: gelu)",
    ),
    Family(
        "remoteclip", "clip", "RemoteCLIP", CLIP_MEAN, CLIP_STD, "not stated in the release (ask the authors)",
        "Liu et al., RemoteCLIP: A Vision Language Foundation Model for Remote Sensing, IEEE TGRS 2024",
        (Variant("ViT-B/32", 768, 12, 32, 12, "gelu", _clip_names(r"RemoteCLIP-ViT-B-32\.pt"), 8),
         Variant("ViT-L/14", 1024, 24, 14, 16, "gelu", _clip_names(r"RemoteCLIP-ViT-L-14\.pt"), 12)),
        note="the authors load it into open_clip's ViT-B-32 / ViT-L-14 (exact GELU)",
    ),
    Family(
        "georsclip", "clip", "GeoRSCLIP (RS5M)", CLIP_MEAN, CLIP_STD,
        "code MIT; weights not stated in the release",
        "Zhang et al., RS5M and GeoRSCLIP: A Large Scale Vision-Language Dataset and A Large Vision-Language "
        "Model for Remote Sensing, IEEE TGRS 2024",
        (Variant("ViT-B/32", 768, 12, 32, 12, "quick_gelu", _clip_names(r"RS5M_ViT-B-32(_RET-2)?\.pt"), 8),
         Variant("ViT-L/14", 1024, 24, 14, 16, "quick_gelu", _clip_names(r"RS5M_ViT-L-14(_RET-2)?\.pt"), 12),
         Variant("ViT-H/14", 1280, 32, 14, 16, "gelu", _clip_names(r"RS5M_ViT-H-14(_RET-2)?\.pt"), 16)),
        note="B/32 and L/14 continue OpenAI's weights (pretrained='openai': QuickGELU); H/14 continues "
             "LAION-2B (exact GELU)",
    ),
    Family(
        "skyclip", "clip", "SkyCLIP (SkyScript)", CLIP_MEAN, CLIP_STD, "MIT",
        "Wang et al., SkyScript: A Large and Semantically Diverse Vision-Language Dataset for Remote Sensing, "
        "AAAI 2024",
        (Variant("ViT-B/32", 768, 12, 32, 12, "gelu", (r"SkyCLIP_ViT_B32[^/\\]*[/\\][^/\\]+\.pt$",), 8),
         Variant("ViT-L/14", 1024, 24, 14, 16, "quick_gelu", (r"SkyCLIP_ViT_L14[^/\\]*[/\\][^/\\]+\.pt$",), 12)),
        note="B/32 continues LAION-2B (exact GELU); L/14 continues OpenAI's (--force-quick-gelu). Released "
             "as open_clip training checkpoints (state_dict with a module. prefix)",
    ),
    Family(
        "openclip-laion", "clip", "OpenCLIP (LAION-2B)", CLIP_MEAN, CLIP_STD, "MIT",
        "Cherti et al., Reproducible scaling laws for contrastive language-image learning, CVPR 2023",
        (Variant("ViT-H/14", 1280, 32, 14, 16, "gelu", _hub("laion/CLIP-ViT-H-14-laion2B-s32B-b79K"), 16),
         Variant("ViT-g/14", 1408, 40, 14, 16, "gelu", _hub("laion/CLIP-ViT-g-14-laion2B-s12B-b42K",
                                                           "laion/CLIP-ViT-g-14-laion2B-s34B-b88K"), 16),
         Variant("ViT-bigG/14", 1664, 48, 14, 16, "gelu", _hub("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"), 20)),
        note="heads = width / head_width (80, 88, 104), never width / 64",
    ),
    Family(
        "dinov3-lvd1689m", "dinov3", "DINOv3 (web, LVD-1689M)", IMAGENET_MEAN, IMAGENET_STD, "DINOv3 License",
        "Simeoni et al., DINOv3, arXiv 2508.10104, 2025",
        tuple(Variant(name, w, d, 16, h, "gelu" if not gated else "silu",
                      (rf"dinov3_{arch}_pretrain_lvd1689m",) + _hub(f"facebook/dinov3-{arch}-pretrain-lvd1689m"))
              for name, arch, w, d, h, gated in (
                  ("ViT-S/16", "vits16", 384, 12, 6, False), ("ViT-S+/16", "vits16plus", 384, 12, 6, True),
                  ("ViT-B/16", "vitb16", 768, 12, 12, False), ("ViT-L/16", "vitl16", 1024, 24, 16, False),
                  ("ViT-H+/16", "vith16plus", 1280, 32, 20, True), ("ViT-7B/16", "vit7b16", 4096, 40, 32, True))),
        notice=DINOV3_NOTICE,
    ),
    Family(
        "dinov3-sat493m", "dinov3", "DINOv3 (satellite, SAT-493M)", SAT493M_MEAN, SAT493M_STD, "DINOv3 License",
        "Simeoni et al., DINOv3, arXiv 2508.10104, 2025",
        (Variant("ViT-L/16", 1024, 24, 16, 16, "gelu",
                 (r"dinov3_vitl16_pretrain_sat493m",) + _hub("facebook/dinov3-vitl16-pretrain-sat493m")),
         Variant("ViT-7B/16", 4096, 40, 16, 32, "silu",
                 (r"dinov3_vit7b16_pretrain_sat493m",) + _hub("facebook/dinov3-vit7b16-pretrain-sat493m"))),
        notice=DINOV3_NOTICE,
        note="normalised with the SAT-493M mean and std, not ImageNet's",
    ),
    Family(
        "dinov2", "dinov2", "DINOv2", IMAGENET_MEAN, IMAGENET_STD, "Apache-2.0",
        "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024",
        tuple(Variant(name, w, d, 14, h, "gelu" if size != "giant" else "silu",
                      (rf"dinov2_vit{size[0]}14(_reg4)?_pretrain",)
                      + _hub(f"facebook/dinov2-{size}", f"facebook/dinov2-with-registers-{size}"))
              for name, size, w, d, h in (("ViT-S/14", "small", 384, 12, 6), ("ViT-B/14", "base", 768, 12, 12),
                                          ("ViT-L/14", "large", 1024, 24, 16), ("ViT-g/14", "giant", 1536, 40, 24))),
    ),
)
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}
#: the family whose conventions random-weight architectures follow (there are no weights to match)
RANDOM_WEIGHTS = {"clip": "openai", "dinov3": "dinov3-lvd1689m", "dinov2": "dinov2"}


@dataclass(frozen=True)
class Overrides:
    """A student's own statements about its weights (``backbone.family/heads/act/mean/std``)."""

    family: str | None = None
    heads: int | tuple[int, int] | None = None  # CLIP: both towers, or (vision, text)
    act: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    rope_periods: str = "exact"  # DINOv3 .pth: "stored" keeps the file's own (Meta's code)

    @classmethod
    def of(cls, backbone) -> Overrides:
        heads = tuple(backbone.heads) if isinstance(backbone.heads, (list, tuple)) else backbone.heads
        return cls(backbone.family, heads, backbone.act, tuple(backbone.mean) if backbone.mean else None,
                   tuple(backbone.std) if backbone.std else None, backbone.rope_periods)

    @property
    def vision_heads(self) -> int | None:
        return self.heads[0] if isinstance(self.heads, tuple) else self.heads

    @property
    def text_heads(self) -> int | None:
        return self.heads[1] if isinstance(self.heads, tuple) else self.heads


@dataclass(frozen=True)
class Resolved:
    """What building the backbone needs, decided once: the family and variant (None for an
    architecture described by the user), heads, activation and the pretrained bands' mean/std."""

    family: Family | None
    variant: Variant | None
    heads: int | None
    act: str | None
    mean: tuple[float, ...] | None  # None only where the caller needs no normalisation (text only)
    std: tuple[float, ...] | None
    sources: dict = field(default_factory=dict)  # where each value came from, for the summary
    origin: dict = field(default_factory=dict)  # a Hub id's {"hub": repo id, "revision": commit sha}

    def record(self) -> dict:
        out = self.family.record() if self.family else {"family": None}  # random or user-described
        if self.variant:
            out["variant"] = self.variant.name
        return {**out, "act": self.act, "mean": list(self.mean or ()), "std": list(self.std or ()),
                "from": dict(self.sources), **({"origin": dict(self.origin)} if self.origin else {})}


def _describe(shape: tuple[int, int, int]) -> str:
    return f"width {shape[0]}, depth {shape[1]}, patch {shape[2]}"


def identify(kind: str, where: str, shape: tuple[int, int, int], declared: str | None = None
             ) -> tuple[Family, Variant] | None:
    """The family and variant of weights of ``kind`` found at ``where`` (file path or Hub id, as
    given and as resolved) with vision ``shape`` = (width, depth, patch); None when no family has
    that shape and nothing names one. Raises :class:`ConfigError` when the name or
    ``declared`` family contradicts the shape, or when several families fit and none is named."""
    families = [f for f in FAMILIES if f.kind == kind]
    if declared is not None:
        family = BY_NAME.get(declared)
        if family is None or family.kind != kind:
            raise ConfigError(f"backbone.family {declared!r} is not a {kind} family; known: "
                              f"{', '.join(f.name for f in families)}")
        variant = next((v for v in family.variants if v.shape == shape), None)
        if variant is None:
            raise ConfigError(
                f"{where}: {_describe(shape)} is none of {family.title}'s architectures "
                f"({', '.join(f'{v.name}: {_describe(v.shape)}' for v in family.variants)})")
        return family, variant
    named = [(f, v) for f in families for v in f.variants if any(re.search(p, where, re.I) for p in v.names)]
    if named:
        fitting = [(f, v) for f, v in named if v.shape == shape]
        if not fitting:
            f, v = named[0]
            raise ConfigError(f"{where}: the name says {f.title} {v.name} ({_describe(v.shape)}), but the "
                              f"weights have {_describe(shape)}; rename the file or set backbone.family")
        return fitting[0]
    by_shape = [(f, v) for f in families for v in f.variants if v.shape == shape]
    if len({f.name for f, _ in by_shape}) == 1:
        return by_shape[0]
    if by_shape:
        raise ConfigError(
            f"{where}: {_describe(shape)} is the {by_shape[0][1].name} of several weight families, which "
            f"differ in activation or normalisation; set backbone.family to one of "
            f"{', '.join(f.name for f, _ in by_shape)} (docs/weights.md)")
    return None


def resolve(kind: str, where: str, shape: tuple[int, int, int], overrides: Overrides,
            needs: tuple[str, ...] = ("mean", "std"), file_heads: int | None = None,
            file_act: str | None = None) -> Resolved:
    """Everything the family decides for pretrained weights of ``kind`` at ``where``, with the
    student's ``overrides`` applied (the one precedence rule). ``needs``: what the caller cannot
    read from the weights themselves (an OpenAI-format CLIP file: heads and act too);
    ``file_heads``/``file_act``: what the weights' own config says (a save_pretrained folder, or
    DINOv3's RoPE periods), checked against the family."""
    found = identify(kind, where, shape, overrides.family)
    family, variant = found if found else (None, None)
    if variant is not None and file_heads is not None and file_heads != variant.heads:
        raise ConfigError(f"{where}: {family.title} {variant.name} has {variant.heads} attention heads, the "
                          f"weights' config says {file_heads}")
    if variant is None:
        missing = [f"backbone.{k}" for k in needs if getattr(overrides, k) is None
                   and not (k == "heads" and file_heads) and not (k == "act" and file_act)]
        if missing:
            known = ", ".join(f"{f.name} ({', '.join(v.name for v in f.variants)})"
                              for f in FAMILIES if f.kind == kind)
            raise ConfigError(
                f"{where}: {_describe(shape)} is no known {kind} architecture ({known}); to load it anyway "
                f"set {', '.join(missing)} (docs/weights.md)")
    sources = {}

    def pick(key, own, from_family, from_file=None):
        for origin, value in (("backbone", own), ("weights", from_file), ("family", from_family)):
            if value is not None:
                sources[key] = origin
                return value
        return None

    heads = pick("heads", overrides.vision_heads, variant.heads if variant else None, file_heads)
    act = pick("act", overrides.act, variant.act if variant else None, file_act)
    mean = pick("mean", overrides.mean, family.mean if family else None)
    std = pick("std", overrides.std, family.std if family else None)
    return Resolved(family, variant, heads, act, mean and tuple(mean), std and tuple(std), sources)


def for_random_weights(kind: str, overrides: Overrides) -> Resolved:
    """Random weights belong to no family (no licence, no citation); their inputs are normalised
    as the family the student names (``backbone.family``: sizing a SAT student without its file),
    else as their kind's usual family (``RANDOM_WEIGHTS``), unless the student gives mean/std."""
    usual = BY_NAME.get(overrides.family or RANDOM_WEIGHTS[kind], BY_NAME[RANDOM_WEIGHTS[kind]])
    return Resolved(None, None, overrides.vision_heads, overrides.act,
                    tuple(overrides.mean or usual.mean), tuple(overrides.std or usual.std),
                    {"mean": "backbone" if overrides.mean else usual.name,
                     "std": "backbone" if overrides.std else usual.name})
