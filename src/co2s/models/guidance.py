"""Class guidance for the decoders: frozen CLIP text prototypes (explicit) or learnable queries
(implicit), both ``[num_classes, D]``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from co2s.errors import CheckpointError

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
                    batch_size: int = 64) -> torch.Tensor:
    """``[N, D]``: per class, the CLIP text embeddings of ``template`` over its concepts,
    averaged, then L2-normalised (SPEC 2.2)."""
    clip_model.eval()
    device = next(clip_model.parameters()).device
    prototypes = []
    for names in concepts:
        prompts = [template.format(c) for c in names]
        chunks = []
        for i in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[i : i + batch_size], padding=True, return_tensors="pt").to(device)
            out = clip_model.get_text_features(input_ids=tokens["input_ids"],
                                               attention_mask=tokens["attention_mask"])
            chunks.append(out if isinstance(out, torch.Tensor) else out.pooler_output)
        prototypes.append(torch.cat(chunks).float().mean(0))
    return F.normalize(torch.stack(prototypes), dim=-1).cpu()


def save_prototypes(path: str | os.PathLike, prototypes: torch.Tensor, classes: list[str],
                    source: str = "", template: str = PROMPT_TEMPLATE) -> Path:
    """Write a safetensors file with the prototypes and, as metadata, the class names."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    meta = {"classes": json.dumps(list(classes)), "template": template, "source": str(source)}
    save_file({"prototypes": prototypes.contiguous().float()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
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

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=-1))

    def forward(self) -> torch.Tensor:
        return self.prototypes


class LearnableQueries(nn.Module):
    """One learnable embedding per class, initialised N(0, 0.02) (SPEC 2.2)."""

    trainable = True

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_classes, dim) * 0.02)

    def forward(self) -> torch.Tensor:
        return self.queries
