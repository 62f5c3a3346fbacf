"""Class guidance for the decoders: frozen CLIP text prototypes (explicit) or learnable queries
(implicit), both ``[num_classes, D]``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from co2s.atomic import atomic_path
from co2s.errors import CheckpointError, ConfigError

PROMPT_TEMPLATE = "a photo of a {}"


def concept_lists(classes: list[str], concepts: dict[str, list[str]]) -> list[list[str]]:
    """Per class: the class name first, then its concepts (duplicates dropped, order kept)."""
    out = []
    for name in classes:
        seen: list[str] = []
        for c in [name, *concepts.get(name, [])]:
            if c not in seen:
                seen.append(c)
        out.append(seen)
    return out


@torch.no_grad()
def text_prototypes(clip_model, tokenizer, concepts: list[list[str]], template: str = PROMPT_TEMPLATE,
                    batch_size: int = 64, source: str = "") -> torch.Tensor:
    """``[N, D]``: per class, the CLIP text embeddings of ``template`` over its concepts,
    averaged, then L2-normalised (SPEC 2.2).

    The tokenizer is checked against the text tower first (:func:`co2s.models.text_encoder.encode_prompts`:
    same vocabulary size, every prompt ending with the end-of-text token the tower pools at;
    over-long prompts truncated with a warning); ``source`` names it in errors.
    """
    from co2s.models.text_encoder import encode_prompts

    clip_model.eval()
    device = next(clip_model.parameters()).device
    text_config = clip_model.config.text_config
    source = source or str(getattr(tokenizer, "name_or_path", "") or "(tokenizer)")
    prototypes = []
    for names in concepts:
        prompts = [template.format(c) for c in names]
        chunks = []
        for i in range(0, len(prompts), batch_size):
            tokens = encode_prompts(tokenizer, prompts[i : i + batch_size], text_config, source)
            out = clip_model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                               attention_mask=tokens["attention_mask"].to(device))
            chunks.append(out if isinstance(out, torch.Tensor) else out.pooler_output)
        prototypes.append(torch.cat(chunks).float().mean(0))
    return F.normalize(torch.stack(prototypes), dim=-1).cpu()


class ClipTextPrototypes(NamedTuple):
    """Class prototypes and where they came from (for the saved file's metadata)."""

    prototypes: torch.Tensor
    clip_source: str
    tokenizer_source: str
    template: str


def clip_text_prototypes(data, student: Any = None, *, clip: str | None = None, tokenizer: str | None = None,
                         template: str | None = None, clip_model: Any = None) -> ClipTextPrototypes:
    """The class prototypes of ``data`` (its classes and concepts) computed with CLIP weights:
    what ``co2s embed-text`` saves and what a CLIP student with text guidance computes at start-up.

    ``student`` is a student config, or a sequence of them (the config's students: the first CLIP
    one is used). Each source is the first one given of:

    * CLIP weights: ``clip``, ``student.text.model``, ``student.backbone.weights``;
    * tokenizer: ``tokenizer``, ``student.text.tokenizer``, the CLIP source (a folder or Hub id
      holding both; OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` or a folder with it also works);
    * template: ``template``, ``student.text.template``, ``"a photo of a {}"``.

    ``clip_model``: a ``CLIPModel`` already loaded from ``student.backbone.weights``, reused when
    those are the CLIP source. Raises :class:`ConfigError` when there is no CLIP source and
    :class:`CheckpointError` for unusable weights or a tokenizer that does not fit them.
    """
    if isinstance(student, Sequence) and not isinstance(student, str):
        student = next((s for s in student if s.backbone.kind == "clip"), None)
    text = student.text if student is not None else None
    weights = student.backbone.weights if student is not None else None
    clip_source = clip or (text.model if text is not None else None) or weights
    if clip_source is None:
        who = f"student {student.name!r}: " if student is not None else ""
        raise ConfigError(
            f"{who}text prototypes need CLIP weights: set backbone.weights or text.model of the CLIP "
            "student (or --clip), or point text.prototypes at a file from `co2s embed-text`")
    tokenizer_source = tokenizer or (text.tokenizer if text is not None else None) or clip_source
    template = template or (text.template if text is not None else PROMPT_TEMPLATE)
    from co2s.models.text_encoder import load_tokenizer

    loaded = load_tokenizer(tokenizer_source)  # first: it fails fast, the weights take long to load
    if clip_model is None or clip_source != weights:
        from co2s.models.backbones.weights import load_backbone_weights
        from co2s.models.families import Overrides

        # The student's backbone.family/heads/act describe the CLIP its prototypes come from (its
        # weights, text.model or --clip); only the text tower is used, so no normalisation is needed.
        overrides = Overrides.of(student.backbone) if student is not None else None
        clip_model = load_backbone_weights("clip", clip_source, overrides=overrides, text_only=True).model

    prototypes = text_prototypes(clip_model, loaded, concept_lists(data.classes, data.concepts), template,
                                 source=str(tokenizer_source))
    return ClipTextPrototypes(prototypes, str(clip_source), str(tokenizer_source), template)


def save_prototypes(path: str | os.PathLike, prototypes: torch.Tensor, classes: list[str],
                    source: str = "", template: str = PROMPT_TEMPLATE) -> Path:
    """Write a safetensors file with the prototypes and, as metadata, the class names."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"classes": json.dumps(list(classes)), "template": template, "source": str(source)}
    with atomic_path(path) as tmp:
        save_file({"prototypes": prototypes.contiguous().float()}, str(tmp), metadata=meta)
    return path


def load_prototypes(path: str | os.PathLike, classes: list[str], dim: int | None = None) -> torch.Tensor:
    """Read prototypes saved by ``co2s embed-text``; the class list (and dimension) must match."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"text prototype file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensor = f.get_tensor("prototypes")
    except (SafetensorError, OSError, KeyError) as exc:
        raise CheckpointError(f"cannot read text prototypes {path}: {exc}") from None
    saved = json.loads(meta.get("classes", "[]"))
    if saved != list(classes):
        raise CheckpointError(f"{path}: prototypes are for classes {saved}, the config has {list(classes)}")
    if dim is not None and tensor.shape[1] != dim:
        raise CheckpointError(f"{path}: prototypes are {tensor.shape[1]}-d, the CLIP student needs {dim}-d")
    return tensor.float()


class TextGuidance(nn.Module):
    """Frozen text prototypes (a buffer: saved with the model, never trained)."""

    trainable = False
    #: computed from the run's own class list and concepts: never taken from other weights
    built_from_config = ("prototypes",)

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=-1))

    def forward(self) -> torch.Tensor:
        return self.prototypes


class LearnableQueries(nn.Module):
    """One learnable embedding per class, initialised N(0, 0.02) (SPEC 2.2)."""

    trainable = True
    class_rows = ("queries",)  # co2s.models.transfer: rows follow class names

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_classes, dim) * 0.02)

    def forward(self) -> torch.Tensor:
        return self.queries
