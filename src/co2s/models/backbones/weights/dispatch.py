"""The one entry point, :func:`load_backbone_weights`: which loader a ``source`` goes to.

* a directory written by ``save_pretrained`` (``config.json`` + ``model.safetensors``, sharded or
  not, or ``pytorch_model.bin``), or a Hugging Face Hub id that is already in the local cache
  (looked up with ``huggingface_hub.try_to_load_from_cache``: no network access, no download):
  :mod:`.hf_folders`;
* a single DINOv3 file as Meta distributes it (``dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth``):
  a ``torch.save``\\ d state dict of the ``dinov3`` repository's ``DinoVisionTransformer``, mapped key
  by key by :func:`~.dinov3_official.convert_dinov3_official`;
* a single OpenAI CLIP file (``ViT-B-16.pt``), mapped by :func:`~.openai_clip.convert_openai_clip`.

A single file is read by :func:`~.readers.read_state_dict`, converted, loaded into a freshly built
transformers model and verified against the converted tensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from torch import Tensor
from transformers import CLIPModel, DINOv3ViTModel, PreTrainedModel

from co2s.errors import CheckpointError
from co2s.models.backbones.weights.dinov3_official import convert_dinov3_official
from co2s.models.backbones.weights.hf_folders import HF_MODELS, cached_hub_snapshot, load_hf_directory
from co2s.models.backbones.weights.openai_clip import convert_openai_clip
from co2s.models.backbones.weights.readers import read_state_dict
from co2s.models.backbones.weights.verify import check_keys_and_shapes, verify_weights

Kind = Literal["clip", "dinov3", "dinov2"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".pkl")


def load_backbone_weights(
    kind: Kind, source: str | Path, *, cache_dir: str | Path | None = None
) -> tuple[PreTrainedModel, dict[str, Tensor]]:
    """Load a ``kind`` backbone from ``source`` and return ``(model, reference)``.

    ``source`` is a ``save_pretrained`` directory, a Hub id present in the local cache
    (``cache_dir`` overrides the default Hub cache), or a single official file (DINOv3 ``.pth``,
    OpenAI CLIP ``.pt``; also those tensors as ``.safetensors``). ``model`` is the transformers
    model in eval mode with float32 weights (``CLIPModel`` for ``clip``: vision tower,
    ``visual_projection``, text tower and ``text_projection``); ``reference`` maps each of its
    state-dict keys to the tensor it must hold (see :func:`verify_weights`).
    Raises :class:`CheckpointError` naming the file and the problem.
    """
    if kind not in HF_MODELS:
        raise CheckpointError(f"unknown backbone kind {kind!r}; expected one of {sorted(HF_MODELS)}")
    path = Path(source).expanduser()
    if path.is_dir():
        return load_hf_directory(kind, path, str(source))
    if path.is_file():
        return _load_single_file(kind, path)
    text = str(source)
    if (not path.exists() and _HUB_ID.match(text) and not text.startswith((".", "/", "~"))
            and path.suffix not in _FILE_SUFFIXES):
        return load_hf_directory(kind, cached_hub_snapshot(text, cache_dir), text)
    raise CheckpointError(f"{source}: no such file or directory")


def _load_single_file(kind: str, path: Path) -> tuple[PreTrainedModel, dict[str, Tensor]]:
    if kind == "dinov2":
        raise CheckpointError(
            f"{path}: single-file DINOv2 checkpoints are not supported; give a save_pretrained "
            "directory or a cached Hub id (e.g. facebook/dinov2-base)"
        )
    state = read_state_dict(path)
    try:
        if kind == "dinov3":
            config, converted = convert_dinov3_official(state)
            model_cls: type[PreTrainedModel] = DINOv3ViTModel
        else:
            config, converted = convert_openai_clip(state)
            model_cls = CLIPModel
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = model_cls(config)
    model.eval()
    expected = model.state_dict()
    reference = {k: v.to(expected[k].dtype) if k in expected else v for k, v in converted.items()}
    check_keys_and_shapes(expected, reference, str(path))
    model.load_state_dict(reference, strict=True)
    verify_weights(model, reference, str(path))
    return model, reference
