"""Load pretrained ViT weights into ``transformers`` modules, offline, and prove they arrived intact.

One entry point, :func:`load_backbone_weights`, decides by what ``source`` is:

* a directory written by ``save_pretrained`` (``config.json`` + ``model.safetensors``, sharded or
  not, or ``pytorch_model.bin``), or a Hugging Face Hub id that is already in the local cache
  (looked up with ``huggingface_hub.try_to_load_from_cache``: no network access, no download).
  ``transformers.CLIPModel`` / ``DINOv3ViTModel`` / ``Dinov2Model`` load it with
  ``local_files_only=True``; the model type in ``config.json`` must match the requested kind;
* a single DINOv3 file as Meta distributes it (``dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth``):
  a ``torch.save``\\ d state dict of the ``dinov3`` repository's ``DinoVisionTransformer``, mapped key
  by key by :func:`convert_dinov3_official`;
* a single OpenAI CLIP file (``ViT-B-16.pt``), mapped by :func:`convert_openai_clip`.

Every loader returns the model (``eval()`` mode, float32) and a *reference* state dict in the
module's own key names. :func:`verify_weights` compares a module with that reference and raises
:class:`~co2s.errors.CheckpointError` naming every missing, unexpected or changed tensor; call it
again after building the segmentor, so that a later re-initialisation of pretrained weights (one
defect of the original authors' code) cannot go unnoticed. For a saved directory the reference is
itself checked against the file: the loaded module, written back in the file's layout with
transformers' own reverse renaming (what ``save_pretrained`` does), must equal every tensor of the
file, and transformers must report no missing, unexpected or mis-shaped key.

Reading files without executing code
------------------------------------
* ``.safetensors``: the format holds only tensors and a JSON header; read with ``safetensors``.
* Any other file is first inspected as a zip archive. A PyTorch *state dict* (``torch.save``,
  zip or legacy format) is read with ``torch.load(path, map_location="cpu", weights_only=True)``,
  whose unpickler only rebuilds tensors and plain containers and refuses every other global.
* OpenAI's CLIP files are **TorchScript archives**, not state dicts: ``clip.load`` opens them with
  ``torch.jit.load`` and, for ``jit=False``, rebuilds its Python model from the archive's
  ``state_dict()``; transformers' ``convert_clip_original_pytorch_to_hf.py`` goes through
  ``clip.load(..., jit=False)``. ``torch.load(..., weights_only=True)`` refuses such archives
  ("Cannot use weights_only=True with TorchScript archives"), and ``torch.jit.load`` is not an
  option: it compiles the TorchScript source stored under ``code/`` in the archive and runs the
  ``__setstate__`` methods that source may define while the objects are restored, i.e. it
  executes code taken from the file. We therefore read such an archive ourselves
  (:func:`read_torchscript_tensors`): Python's ``zipfile`` opens it, nothing under ``code/`` or
  ``constants.pkl`` is read, and ``data.pkl`` (the pickled module tree) goes through a restricted
  unpickler whose ``find_class`` resolves exactly these names: ``torch._utils._rebuild_tensor_v2``
  and ``torch._utils._rebuild_parameter`` (replaced by our own functions that only make a strided
  view of a byte buffer after checking that every argument is an int and the view fits), the
  ``torch.<Dtype>Storage`` names (turned into dtype markers, never instantiated),
  ``collections.OrderedDict``, the pure list builders of ``torch.jit._pickle``, and any
  ``__torch__.*`` class, which becomes one inert placeholder class that only stores the state
  handed to it. Every other global raises ``UnpicklingError``. ``persistent_load`` only reads the
  archive's ``data/<key>`` records as raw bytes of a whitelisted dtype and checks their length.
  The pickle machine itself cannot call anything that ``find_class`` did not return, so no code
  from the file runs. The tensors are the attributes of the module tree, i.e. the parameters and
  buffers ``state_dict()`` would give, plus the scalar buffers ``input_resolution``,
  ``context_length`` and ``vocab_size`` that ``clip.model.build_model`` also discards.

Key-mapping sources
-------------------
* DINOv3: ``facebookresearch/dinov3``: ``dinov3/models/vision_transformer.py``
  (``DinoVisionTransformer``: ``cls_token`` (1, 1, D), ``storage_tokens`` (1, R, D), ``mask_token``
  (1, D), ``patch_embed.proj``, ``rope_embed.periods`` (persistent buffer of head_dim / 4 periods
  ``base ** (4 i / head_dim)``, computed in the RoPE dtype, bfloat16 by default: the released files
  hold it in bf16, every other tensor in float32; see :func:`_rope_base`), ``blocks.N``, ``norm``,
  optional ``cls_norm`` / ``local_cls_norm``),
  its layers (``SelfAttentionBlock``: ``norm1``, ``attn.qkv`` (q, k, v stacked, a
  ``LinearKMaskedBias`` with persistent ``bias_mask`` when ``mask_k_bias``), ``attn.proj``,
  ``ls1.gamma``, ``norm2``, ``mlp.fc1/fc2`` (``Mlp``) or ``mlp.w1/w2/w3`` (``SwiGLUFFN``:
  ``w3(silu(w1 x) * w2 x)``), ``ls2.gamma``), and ``dinov3/hub/backbones.py`` for the released
  variants (all with ``layernormbf16``, i.e. LayerNorm eps 1e-5, RoPE base 100, 4 storage tokens,
  ``mask_k_bias=True``, layer scale). Cross-checked with transformers'
  ``models/dinov3_vit/convert_dinov3_vit_to_hf.py`` (drops ``bias_mask`` and the key bias).
* OpenAI CLIP: ``openai/CLIP`` ``clip/model.py`` (``VisionTransformer``, ``Transformer``,
  ``ResidualAttentionBlock`` with ``nn.MultiheadAttention``, ``build_model``: heads = width / 64)
  and transformers' ``models/clip/convert_clip_original_pytorch_to_hf.py`` (``in_proj`` chunked
  into q, k, v; ``proj`` / ``text_projection`` transposed into the ``Linear`` projections).

Notes: DINOv3's ``local_cls_norm`` (ViT-7B, SAT-493M ViT-L) normalises local crops during training
only and is dropped; ``cls_norm`` (untied norms) has no transformers counterpart and is refused.
transformers' DINOv3 rescales the RoPE coordinates in train mode (``pos_embed_rescale=2``, as the
official model does); :class:`co2s.models.backbones.dino.DinoV3Backbone` can switch that off.
"""

from __future__ import annotations

import collections
import json
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    Dinov2Model,
    DINOv3ViTConfig,
    DINOv3ViTModel,
    PreTrainedModel,
)

from co2s.errors import CheckpointError

Kind = Literal["clip", "dinov3", "dinov2"]

#: transformers class and accepted ``model_type`` values of ``config.json`` per kind
HF_MODELS: dict[str, tuple[type[PreTrainedModel], tuple[str, ...]]] = {
    "clip": (CLIPModel, ("clip",)),
    "dinov3": (DINOv3ViTModel, ("dinov3_vit",)),
    "dinov2": (Dinov2Model, ("dinov2",)),
}

#: the released DINOv3 ViTs (dinov3/hub/backbones.py): embed dim, depth, heads, gated (SwiGLU) FFN
DINOV3_VARIANTS: dict[str, tuple[int, int, int, bool]] = {
    "vits16": (384, 12, 6, False),
    "vits16plus": (384, 12, 6, True),
    "vitb16": (768, 12, 12, False),
    "vitl16": (1024, 24, 16, False),
    "vitl16plus": (1024, 24, 16, True),
    "vith16plus": (1280, 32, 20, True),
    "vit7b16": (4096, 40, 32, True),
}

#: scalar buffers of OpenAI's TorchScript CLIP that are not weights (clip.model.build_model drops them)
OPENAI_CLIP_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".pkl")


# --------------------------------------------------------------------------------------------
# entry point


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
        return _load_hf_directory(kind, path, str(source))
    if path.is_file():
        return _load_single_file(kind, path)
    text = str(source)
    if (not path.exists() and _HUB_ID.match(text) and not text.startswith((".", "/", "~"))
            and path.suffix not in _FILE_SUFFIXES):
        return _load_hf_directory(kind, _cached_hub_snapshot(text, cache_dir), text)
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
    _check_keys_and_shapes(expected, reference, str(path))
    model.load_state_dict(reference, strict=True)
    verify_weights(model, reference, str(path))
    return model, reference


# --------------------------------------------------------------------------------------------
# verification


def verify_weights(module: nn.Module, reference: dict[str, Tensor], source: str, prefix: str = "") -> None:
    """Check that ``module`` holds exactly the ``reference`` tensors.

    Reference key ``k`` is looked up as ``prefix + k`` among the module's state-dict entries (and
    buffers); module entries under ``prefix`` that the reference lacks count as unexpected, entries
    outside ``prefix`` are ignored. Values are compared exactly (same shape, dtype and values,
    NaNs in the same places). Raises :class:`CheckpointError` naming ``source`` and every missing,
    unexpected and changed tensor, e.g. after a re-initialisation of pretrained weights.
    """
    state = module.state_dict()
    buffers = dict(module.named_buffers())
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, changed = [], []
    for key, ref in reference.items():
        value = own.get(key, buffers.get(prefix + key))
        if value is None:
            missing.append(prefix + key)
            continue
        reason = _difference(value, ref)
        if reason:
            changed.append(f"{prefix + key} ({reason})")
    unexpected = [prefix + k for k in own if k not in reference]
    _raise_if_any(f"{source}: the model does not hold the pretrained weights", [
        (changed, f"{len(changed)} tensor(s) differ from the checkpoint"),
        (missing, f"{len(missing)} checkpoint tensor(s) missing from the model"),
        (unexpected, f"{len(unexpected)} model tensor(s) not in the checkpoint"),
    ])


def reference_subset(reference: dict[str, Tensor], prefix: str, new_prefix: str = "") -> dict[str, Tensor]:
    """The entries of ``reference`` under ``prefix``, re-keyed with ``new_prefix`` instead, e.g.
    ``reference_subset(ref, "vision_model.", "vision.vision_model.")`` for a wrapper module."""
    return {new_prefix + k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}


def _difference(value: Tensor, ref: Tensor) -> str:
    value = value.detach()
    if tuple(value.shape) != tuple(ref.shape):
        return f"shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
    if value.dtype != ref.dtype:
        return f"dtype {value.dtype}, expected {ref.dtype}"
    value = value.to("cpu")
    ref = ref.detach().to("cpu")
    if torch.equal(value, ref):
        return ""
    if value.is_floating_point() or value.is_complex():
        nan_v, nan_r = torch.isnan(value), torch.isnan(ref)
        if torch.equal(nan_v, nan_r) and torch.equal(value[~nan_v], ref[~nan_r]):
            return ""
        finite = ~(nan_v | nan_r)
        if finite.any():
            delta = (value[finite].double() - ref[finite].double()).abs().max().item()
            return f"values differ, max |difference| {delta:.3g}"
    return "values differ"


def _raise_if_any(headline: str, problems: list[tuple[list[str], str]]) -> None:
    """One CheckpointError listing every non-empty group of problem names, or nothing."""
    parts = [f"{label}: {_names(items)}" for items, label in problems if items]
    if parts:
        raise CheckpointError(f"{headline}; " + "; ".join(parts))


def _names(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _check_keys_and_shapes(expected: dict[str, Tensor], converted: dict[str, Tensor], source: str) -> None:
    """Converted state dict vs. a freshly built model: same names and shapes, or a named error."""
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    shapes = [
        f"{k}: {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    _raise_if_any(f"{source}: converted weights do not fit the model", [
        (missing, "no value for model tensors"),
        (unexpected, "no model tensor for"),
        (shapes, "shape mismatch"),
    ])


# --------------------------------------------------------------------------------------------
# saved directories and the Hub cache


def _cached_hub_snapshot(repo_id: str, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=None if cache_dir is None else str(cache_dir))
    if not isinstance(found, str):
        where = cache_dir if cache_dir is not None else "the Hugging Face cache (HF_HOME / HF_HUB_CACHE)"
        raise CheckpointError(
            f"{repo_id}: no such local file or directory, and as a Hub id not found in {where}; "
            f"nothing is downloaded: fetch it beforehand (e.g. `hf download {repo_id}`) or give a "
            "local directory or file"
        )
    return Path(found).parent


def _load_hf_directory(kind: str, directory: Path, label: str) -> tuple[PreTrainedModel, dict[str, Tensor]]:
    model_cls, model_types = HF_MODELS[kind]
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{label}: no config.json in {directory}; not a save_pretrained directory")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, OSError, AttributeError) as exc:
        raise CheckpointError(f"{label}: config.json is unreadable or not a JSON object: {exc}") from None
    if model_type not in model_types:
        raise CheckpointError(
            f"{label}: config.json has model_type {model_type!r}, but a {kind} backbone needs "
            f"{' or '.join(repr(t) for t in model_types)} ({model_cls.__name__})"
        )
    file_tensors = _read_hf_weight_files(directory, label)
    try:
        model, info = model_cls.from_pretrained(
            str(directory), local_files_only=True, output_loading_info=True, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many types; the user needs the message
        raise CheckpointError(f"{label}: transformers could not load {model_cls.__name__}: {exc}") from None
    problems = []
    for what in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = sorted(str(n) for n in info.get(what, ()) if not str(n).endswith("position_ids"))
        if names:
            problems.append(f"{what.replace('_', ' ')}: {_names(names)}")
    if info.get("error_msgs"):
        problems.append("errors: " + "; ".join(map(str, info["error_msgs"])))
    if problems:
        raise CheckpointError(f"{label}: the weights do not fit {model_cls.__name__}: " + "; ".join(problems))
    model.eval()
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _check_against_file(model, reference, file_tensors, label)
    verify_weights(model, reference, label)
    return model, reference


def _read_hf_weight_files(directory: Path, label: str) -> dict[str, Tensor]:
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, OSError, TypeError) as exc:
                raise CheckpointError(f"{label}: unreadable {index_name}: {exc}") from None
            tensors: dict[str, Tensor] = {}
            for shard in shards:
                tensors.update(read_state_dict(directory / shard))
            return tensors
        if (directory / single).is_file():
            return read_state_dict(directory / single)
    raise CheckpointError(f"{label}: no model.safetensors or pytorch_model.bin in {directory}")


def _check_against_file(model: PreTrainedModel, reference: dict[str, Tensor], file_tensors: dict[str, Tensor],
                        label: str) -> None:
    """The loaded module, written back in the file's layout, must equal the file tensor by tensor."""
    from transformers.core_model_loading import revert_weight_conversion

    as_saved = revert_weight_conversion(model, dict(reference))
    missing = sorted(k for k in as_saved if k not in file_tensors)
    extra = sorted(k for k in file_tensors if k not in as_saved and not k.endswith("position_ids"))
    changed = []
    for key, value in as_saved.items():
        if key in file_tensors:
            stored = file_tensors[key]
            if tuple(stored.shape) != tuple(value.shape):
                changed.append(f"{key} (shape {tuple(stored.shape)} in the file, {tuple(value.shape)} loaded)")
            else:
                reason = _difference(value, stored.to(value.dtype))
                if reason:
                    changed.append(f"{key} ({reason})")
    if missing or extra or changed:
        parts = []
        if missing:
            parts.append(f"not in the file (left at their initial values): {_names(missing)}")
        if extra:
            parts.append(f"file tensors that were not loaded: {_names(extra)}")
        if changed:
            parts.append(f"loaded values differ from the file: {_names(changed)}")
        raise CheckpointError(f"{label}: loading did not reproduce the file; " + "; ".join(parts))


# --------------------------------------------------------------------------------------------
# safe readers


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file, read without executing code from it.

    ``.safetensors`` via safetensors; TorchScript archives via :func:`read_torchscript_tensors`;
    anything else via ``torch.load(weights_only=True)``, which must yield a flat ``{name: tensor}``
    dict. Raises :class:`CheckpointError` for a missing, truncated, corrupt or non-state-dict file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (truncated download?)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        return read_torchscript_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                f"{path}: holds Python objects besides tensors; refused, since unpickling them could "
                f"execute code ({text.splitlines()[0] if text else 'unpickling error'})"
            ) from None
        raise CheckpointError(f"{path}: cannot be read (truncated or corrupt?): {exc}") from None
    except Exception as exc:  # zip reader errors, EOF, etc.
        reason = str(exc).split(". ")[0] or type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt?): {reason}") from None
    return _as_flat_state_dict(state, path)


def _as_flat_state_dict(state: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise CheckpointError(
            f"{path}: not a flat state dict of tensors (entries {_names(bad, 6)} are not tensors; "
            "a training checkpoint must have its model weights extracted first)"
        )
    return dict(state)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in names)


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    """Stand-in for a ``torch.<Dtype>Storage`` global: only carries the dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _ScriptObject:
    """Inert stand-in for every ``__torch__.*`` class: keeps the state it is given, nothing else."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


def _rebuild_tensor(storage: Tensor, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> Tensor:
    if not isinstance(storage, Tensor) or storage.dim() != 1:
        raise pickle.UnpicklingError("tensor without a storage record")
    size, stride = tuple(size), tuple(stride)
    if not (isinstance(offset, int) and all(isinstance(s, int) and s >= 0 for s in size + stride)
            and len(size) == len(stride) and offset >= 0):
        raise pickle.UnpicklingError("malformed tensor geometry")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.numel():
        raise pickle.UnpicklingError("tensor extends beyond its storage (truncated archive?)")
    return torch.as_strided(storage, size, stride, offset)


def _rebuild_parameter(data: Tensor, requires_grad: Any = False, hooks: Any = None) -> Tensor:
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return data


def _build_list(items: Any) -> list:
    return list(items)


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """Rebuilds only tensors and inert placeholders from a TorchScript ``data.pkl``."""

    _TORCH_FUNCTIONS = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
        **{("torch.jit._pickle", n): _build_list for n in (
            "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "build_genericlist")},
    }

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = self._TORCH_FUNCTIONS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        raise pickle.UnpicklingError(f"refused global {module}.{name} (only tensors are read)")

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and pid[2].isalnum()
                and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}/data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage record data/{key} is missing") from None
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) < numel * itemsize:
                raise pickle.UnpicklingError(f"storage record data/{key} is short (truncated archive?)")
            buffer = bytearray(raw[: numel * itemsize])
            self._storages[key] = torch.frombuffer(buffer, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        return self._storages[key]


def read_torchscript_tensors(path: str | Path) -> dict[str, Tensor]:
    """The tensor attributes of a TorchScript archive's module tree, by dotted name, read with the
    restricted unpickler described in the module docstring (no TorchScript code is loaded)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            data_pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(data_pkl) != 1:
                raise CheckpointError(f"{path}: TorchScript archive without a single data.pkl")
            prefix = data_pkl[0].split("/")[0]
            import io

            unpickler = _TorchScriptUnpickler(io.BytesIO(archive.read(data_pkl[0])), archive, prefix)
            root = unpickler.load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError,
            AttributeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read the TorchScript archive's tensors: {exc}") from None
    tensors: dict[str, Tensor] = {}
    _collect_tensors(root, "", tensors, depth=0)
    if not tensors:
        raise CheckpointError(f"{path}: the TorchScript archive holds no tensors")
    return tensors


def _collect_tensors(obj: Any, name: str, out: dict[str, Tensor], depth: int) -> None:
    if depth > 64:
        raise CheckpointError("TorchScript module tree nested too deeply")
    if isinstance(obj, Tensor):
        out[name] = obj
    elif isinstance(obj, _ScriptObject):
        _collect_tensors(obj.__dict__.get("_state"), name, out, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str):
                _collect_tensors(value, f"{name}.{key}" if name else key, out, depth + 1)


# --------------------------------------------------------------------------------------------
# DINOv3 (Meta's release) -> transformers DINOv3ViTModel

_DINOV3_GLOBALS = ("cls_token", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
                   "rope_embed.periods", "norm.weight", "norm.bias")
_DINOV3_BLOCK_REQUIRED = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight",
                          "norm2.weight", "norm2.bias")
_DINOV3_BLOCK_OPTIONAL = ("attn.qkv.bias", "attn.qkv.bias_mask", "attn.proj.bias", "ls1.gamma", "ls2.gamma")
_DINOV3_FFN = {
    False: ("mlp.fc1.weight", "mlp.fc2.weight"),
    True: ("mlp.w1.weight", "mlp.w2.weight", "mlp.w3.weight"),
}


def _architecture_hint(keys: set[str]) -> str:
    """A guess at what a state dict that does not fit is, for the error message."""
    if "pos_embed" in keys or ("register_tokens" in keys and "rope_embed.periods" not in keys):
        return ("it looks like a DINOv2 checkpoint (learned position embedding 'pos_embed', no RoPE "
                "'rope_embed.periods'); load DINOv2 as kind 'dinov2' from a save_pretrained directory")
    if "rope_embed.periods" in keys or "storage_tokens" in keys:
        return "it looks like a DINOv3 checkpoint (load it as kind 'dinov3')"
    if "visual.conv1.weight" in keys or "token_embedding.weight" in keys:
        return "it looks like an OpenAI CLIP checkpoint"
    if any(k.startswith(("embeddings.", "model.layer.", "layer.", "vision_model.", "encoder.layer.")) for k in keys):
        return ("it uses transformers key names; pass the save_pretrained directory (with config.json) "
                "instead of the weight file")
    if any(re.match(r"^(layer[1-4]\.|bn1\.|fc\.|downsample_layers\.|stages\.|stem\.)", k) for k in keys):
        return "it looks like a convolutional network (ResNet/ConvNeXt), not a ViT"
    return "keys present: " + _names(sorted(keys), 8)


def convert_dinov3_official(state: dict[str, Tensor]) -> tuple[DINOv3ViTConfig, dict[str, Tensor]]:
    """Map a state dict of the ``dinov3`` repository's ``DinoVisionTransformer`` to
    ``transformers.DINOv3ViTModel`` names; the config is derived from the tensor shapes.

    Raises :class:`CheckpointError` (without the file name; the caller adds it) for another
    architecture, missing/renamed/unexpected keys (listed) and shape mismatches.
    """
    keys = set(state)
    missing = [k for k in _DINOV3_GLOBALS if k not in keys]
    block_keys = [k for k in keys if k.startswith("blocks.")]
    if missing or not block_keys:
        if len(missing) >= 3 or not block_keys:
            raise CheckpointError(f"not a DINOv3 ViT state dict: {_architecture_hint(keys)}")
        raise CheckpointError(f"DINOv3 state dict lacks {_names(missing)} ({_architecture_hint(keys)})")
    if "pos_embed" in keys:
        raise CheckpointError(f"not a DINOv3 ViT state dict: {_architecture_hint(keys)}")

    cls_token = state["cls_token"]
    if cls_token.dim() != 3 or cls_token.shape[:2] != (1, 1):
        raise CheckpointError(f"cls_token has shape {tuple(cls_token.shape)}, expected (1, 1, dim)")
    dim = cls_token.shape[-1]
    patch_w = state["patch_embed.proj.weight"]
    if patch_w.dim() != 4 or patch_w.shape[0] != dim or patch_w.shape[2] != patch_w.shape[3]:
        raise CheckpointError(
            f"patch_embed.proj.weight has shape {tuple(patch_w.shape)}, expected ({dim}, channels, p, p)")
    channels, patch = patch_w.shape[1], patch_w.shape[2]
    periods = state["rope_embed.periods"]
    if periods.dim() != 1 or periods.numel() == 0 or dim % (4 * periods.numel()):
        raise CheckpointError(f"rope_embed.periods has shape {tuple(periods.shape)}, which does not divide dim {dim}")
    head_dim = 4 * periods.numel()
    heads = dim // head_dim

    # blocks: numbering, per-block key sets
    blocks: dict[int, dict[str, Tensor]] = {}
    strange = []
    for key in block_keys:
        match = re.match(r"^blocks\.(\d+)\.(.+)$", key)
        if match is None:
            strange.append(key)
            continue
        blocks.setdefault(int(match.group(1)), {})[match.group(2)] = state[key]
    depth = len(blocks)
    if strange or sorted(blocks) != list(range(depth)):
        raise CheckpointError(
            f"block keys are not numbered blocks.0..blocks.{depth - 1}: {_names(strange or sorted(map(str, blocks)))}")
    gated = any("mlp.w1.weight" in b for b in blocks.values())
    ffn = _DINOV3_FFN[gated]
    ffn_bias = tuple(k.replace(".weight", ".bias") for k in ffn)
    known = set(_DINOV3_BLOCK_REQUIRED) | set(_DINOV3_BLOCK_OPTIONAL) | set(ffn) | set(ffn_bias)
    optional_present = {s for b in blocks.values() for s in b if s in _DINOV3_BLOCK_OPTIONAL or s in ffn_bias}
    wanted = set(_DINOV3_BLOCK_REQUIRED) | set(ffn) | optional_present
    block_missing, block_unexpected = [], []
    for i, b in sorted(blocks.items()):
        block_missing += [f"blocks.{i}.{s}" for s in sorted(wanted - set(b))]
        block_unexpected += [f"blocks.{i}.{s}" for s in sorted(set(b) - known)]
    global_unexpected = sorted(k for k in keys - set(block_keys) - set(_DINOV3_GLOBALS)
                               if k != "storage_tokens" and not k.startswith("local_cls_norm."))
    if "cls_norm.weight" in keys:
        raise CheckpointError("has 'cls_norm' (untied class-token norm), which transformers' DINOv3ViTModel lacks")
    if block_missing or block_unexpected or global_unexpected:
        parts = []
        if block_missing:
            parts.append(f"missing keys {_names(block_missing)}")
        if block_unexpected or global_unexpected:
            parts.append(f"unexpected keys {_names(block_unexpected + global_unexpected)}")
        raise CheckpointError("DINOv3 state dict does not match DinoVisionTransformer: " + "; ".join(parts))

    first = blocks[0]
    hidden = first[ffn[0]].shape[0]
    registers = state["storage_tokens"].shape[1] if "storage_tokens" in state else 0
    has_qkv_bias = "attn.qkv.bias" in optional_present
    has_ls = "ls1.gamma" in optional_present
    expected_shapes = {
        "cls_token": (1, 1, dim), "mask_token": (1, dim), "patch_embed.proj.bias": (dim,),
        "rope_embed.periods": (head_dim // 4,), "norm.weight": (dim,), "norm.bias": (dim,),
        "storage_tokens": (1, registers, dim),
        "local_cls_norm.weight": (dim,), "local_cls_norm.bias": (dim,),
    }
    block_shapes = {
        "norm1.weight": (dim,), "norm1.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,), "attn.qkv.bias_mask": (3 * dim,),
        "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,), "ls1.gamma": (dim,), "ls2.gamma": (dim,),
    }
    if gated:
        block_shapes.update({"mlp.w1.weight": (hidden, dim), "mlp.w2.weight": (hidden, dim),
                             "mlp.w3.weight": (dim, hidden),
                             "mlp.w1.bias": (hidden,), "mlp.w2.bias": (hidden,), "mlp.w3.bias": (dim,)})
    else:
        block_shapes.update({"mlp.fc1.weight": (hidden, dim), "mlp.fc2.weight": (dim, hidden),
                             "mlp.fc1.bias": (hidden,), "mlp.fc2.bias": (dim,)})
    for i in range(depth):
        expected_shapes.update({f"blocks.{i}.{s}": shape for s, shape in block_shapes.items()})
    wrong = [f"{k}: {tuple(v.shape)}, expected {expected_shapes[k]}"
             for k, v in sorted(state.items()) if k in expected_shapes and tuple(v.shape) != expected_shapes[k]]
    if wrong:
        raise CheckpointError(
            f"DINOv3 tensor shapes do not fit dim {dim}, {heads} heads, FFN {hidden}: {_names(wrong)}")

    variant = next((n for n, v in DINOV3_VARIANTS.items() if v[:2] == (dim, depth) and v[3] == gated), None)
    if variant is not None and DINOV3_VARIANTS[variant][2] != heads:
        raise CheckpointError(
            f"dim {dim}, depth {depth} is DINOv3 {variant} with {DINOV3_VARIANTS[variant][2]} heads, but "
            f"rope_embed.periods implies {heads} (head dim {head_dim})")
    rope_base = _rope_base(periods, head_dim)

    # effective q/k/v biases: the official LinearKMaskedBias multiplies the bias by bias_mask
    key_bias = False
    biases: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    if has_qkv_bias:
        for i, b in blocks.items():
            bias = b["attn.qkv.bias"]
            if "attn.qkv.bias_mask" in b:
                bias = bias * b["attn.qkv.bias_mask"].to(bias.dtype)
                if not torch.isfinite(bias).all():
                    raise CheckpointError(f"blocks.{i}.attn.qkv.bias_mask is not finite (uninitialised buffer?)")
            q_b, k_b, v_b = bias.chunk(3)
            key_bias = key_bias or bool((k_b != 0).any())
            biases[i] = (q_b, k_b, v_b)

    config = DINOv3ViTConfig(
        patch_size=patch, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=depth,
        num_attention_heads=heads, hidden_act="silu" if gated else "gelu", layer_norm_eps=1e-5,
        rope_theta=rope_base, image_size=224, num_channels=channels,
        query_bias=has_qkv_bias, key_bias=key_bias, value_bias=has_qkv_bias,
        proj_bias="attn.proj.bias" in optional_present, mlp_bias=ffn_bias[0] in optional_present,
        layerscale_value=1.0, use_gated_mlp=gated, num_register_tokens=registers,
        pos_embed_shift=None, pos_embed_jitter=None, pos_embed_rescale=2.0,
    )
    out: dict[str, Tensor] = {
        "embeddings.cls_token": cls_token,
        "embeddings.mask_token": state["mask_token"].reshape(1, 1, dim),
        "embeddings.register_tokens": state["storage_tokens"] if registers else cls_token.new_zeros(1, 0, dim),
        "embeddings.patch_embeddings.weight": patch_w,
        "embeddings.patch_embeddings.bias": state["patch_embed.proj.bias"],
        "norm.weight": state["norm.weight"],
        "norm.bias": state["norm.bias"],
    }
    ffn_names = (("w1", "gate_proj"), ("w2", "up_proj"), ("w3", "down_proj")) if gated else \
        (("fc1", "up_proj"), ("fc2", "down_proj"))
    for i, b in blocks.items():
        p = f"model.layer.{i}."
        q_w, k_w, v_w = b["attn.qkv.weight"].chunk(3)
        out.update({p + "attention.q_proj.weight": q_w, p + "attention.k_proj.weight": k_w,
                    p + "attention.v_proj.weight": v_w, p + "attention.o_proj.weight": b["attn.proj.weight"]})
        if has_qkv_bias:
            q_b, k_b, v_b = biases[i]
            out[p + "attention.q_proj.bias"] = q_b
            out[p + "attention.v_proj.bias"] = v_b
            if key_bias:
                out[p + "attention.k_proj.bias"] = k_b
        if "attn.proj.bias" in b:
            out[p + "attention.o_proj.bias"] = b["attn.proj.bias"]
        for n in ("norm1", "norm2"):
            out[p + f"{n}.weight"], out[p + f"{n}.bias"] = b[f"{n}.weight"], b[f"{n}.bias"]
        for j in (1, 2):
            out[p + f"layer_scale{j}.lambda1"] = b[f"ls{j}.gamma"] if has_ls else torch.ones(dim, dtype=cls_token.dtype)
        for src, dst in ffn_names:
            out[p + f"mlp.{dst}.weight"] = b[f"mlp.{src}.weight"]
            if f"mlp.{src}.bias" in b:
                out[p + f"mlp.{dst}.bias"] = b[f"mlp.{src}.bias"]
    return config, out


def _rope_base(periods: Tensor, head_dim: int) -> float:
    """The base of ``periods = base ** (4 i / head_dim)`` (the official ``base`` parametrisation).

    Accepted: the exact values (within 1e-5, relative), or the values rounded to the RoPE dtype of
    the ``dinov3`` code: bfloat16 by default, which the released files keep (float16 also exists).
    A rounded buffer may be stored in its own dtype or as float32 holding the rounded values, and
    may be rounded once (``exact.to(bf16)``) or computed by the official ``_init_weights`` in that
    dtype (``base ** (2 * arange(n, dtype) / (head_dim / 2))``, whose exponent is rounded too
    when head_dim is not a power of two). Only the base is taken from the file: transformers
    computes its own exact frequencies from ``rope_theta``.
    """
    stored = periods.double()
    n = stored.numel()
    candidates = [100.0]
    if n > 1 and stored[-1] > 0:
        estimate = float(stored[-1] ** (head_dim / (4 * (n - 1))))
        # a bf16-rounded last period gives the base only to ~3 digits: also try it rounded
        candidates += [estimate] + [float(f"{estimate:.{d}g}") for d in (1, 2, 3)]
    exponents = torch.arange(n, dtype=torch.float64) * 4 / head_dim
    for base in candidates:
        exact = base ** exponents
        if torch.allclose(stored, exact, rtol=1e-5, atol=0):
            return round(base, 6)
        for dtype in (torch.bfloat16, torch.float16):
            rounded = exact.to(dtype).double()
            computed = (base ** (2 * torch.arange(n, dtype=dtype) / (head_dim // 2))).double()
            if torch.equal(stored, rounded) or torch.equal(stored, computed):
                return round(base, 6)
    raise CheckpointError(
        "rope_embed.periods do not follow base ** (4 i / head_dim), exactly or rounded to bf16/fp16 "
        "(min/max-period RoPE is not supported by transformers' DINOv3ViTModel): "
        f"{stored[:4].tolist()}...")


# --------------------------------------------------------------------------------------------
# OpenAI CLIP -> transformers CLIPModel

_CLIP_GLOBALS = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                 "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias",
                 "visual.proj", "token_embedding.weight", "positional_embedding", "ln_final.weight",
                 "ln_final.bias", "text_projection", "logit_scale")
_CLIP_BLOCK = {  # OpenAI ResidualAttentionBlock suffix -> transformers CLIPEncoderLayer suffix
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
}
_CLIP_QKV = ("attn.in_proj_weight", "attn.in_proj_bias")


def convert_openai_clip(state: dict[str, Tensor]) -> tuple[CLIPConfig, dict[str, Tensor]]:
    """Map an OpenAI CLIP ViT state dict (``clip/model.py`` names, as in ``ViT-B-16.pt`` or
    open_clip's OpenAI files) to ``transformers.CLIPModel`` names; the config is derived from the
    shapes (heads = width / 64, quick_gelu, LayerNorm eps 1e-5, as OpenAI's ``build_model``).

    The text config uses ``eos_token_id = vocab_size - 1`` (``<|endoftext|>`` is the largest id), so
    transformers pools the text at the first end-of-text token, as OpenAI's ``argmax`` does for
    tokenizer output. Raises :class:`CheckpointError` for another architecture, missing/renamed/
    unexpected keys (listed) and shape mismatches.
    """
    keys = {k for k in state if k not in OPENAI_CLIP_NON_WEIGHTS and not k.endswith(".attn_mask")}
    if "visual.proj" not in keys and any(k.startswith(("visual.attnpool.", "visual.layer1.")) for k in keys):
        raise CheckpointError("this is a ResNet CLIP (RN50...), only ViT CLIP models are supported")
    missing = [k for k in _CLIP_GLOBALS if k not in keys]
    if len(missing) >= 4:
        hint = (_architecture_hint(keys) if "visual.conv1.weight" not in keys
                else "keys present: " + _names(sorted(keys), 8))
        raise CheckpointError(f"not an OpenAI CLIP ViT state dict: {hint}")

    towers = {"visual.transformer.resblocks.": "vision_model.encoder.layers.",
              "transformer.resblocks.": "text_model.encoder.layers."}
    layers: dict[str, dict[int, dict[str, Tensor]]] = {t: {} for t in towers}
    unexpected = []
    for key in sorted(keys):
        if key in _CLIP_GLOBALS:
            continue
        for tower in towers:
            match = re.match(re.escape(tower) + r"(\d+)\.(.+)$", key)
            if match and match.group(2) in (*_CLIP_BLOCK, *_CLIP_QKV):
                layers[tower].setdefault(int(match.group(1)), {})[match.group(2)] = state[key]
                break
        else:
            unexpected.append(key)
    for tower, blocks in layers.items():
        if sorted(blocks) != list(range(len(blocks))) or not blocks:
            missing.append(f"{tower}0..N (found blocks {sorted(blocks)})")
            continue
        for i, b in blocks.items():
            missing += [f"{tower}{i}.{s}" for s in (*_CLIP_QKV, *_CLIP_BLOCK) if s not in b]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_names(unexpected)}")
        raise CheckpointError("OpenAI CLIP state dict does not match clip.model.CLIP: " + "; ".join(parts))

    conv = state["visual.conv1.weight"]
    if conv.dim() != 4 or conv.shape[2] != conv.shape[3]:
        raise CheckpointError(f"visual.conv1.weight has shape {tuple(conv.shape)}, expected (width, channels, p, p)")
    width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
    positions = state["visual.positional_embedding"].shape[0]
    grid = math.isqrt(max(positions - 1, 0))
    if grid * grid + 1 != positions:
        raise CheckpointError(f"visual.positional_embedding has {positions} rows, not grid ** 2 + 1")
    embed = state["visual.proj"].shape[-1]
    t_width = state["ln_final.weight"].shape[0]
    context, vocab = state["positional_embedding"].shape[0], state["token_embedding.weight"].shape[0]
    v_blocks, t_blocks = layers["visual.transformer.resblocks."], layers["transformer.resblocks."]
    v_mlp, t_mlp = v_blocks[0]["mlp.c_fc.weight"].shape[0], t_blocks[0]["mlp.c_fc.weight"].shape[0]
    if width % 64 or t_width % 64:
        raise CheckpointError(
            f"widths {width} (vision) and {t_width} (text) must be multiples of 64 (OpenAI: heads = width / 64)")

    def block_shapes(w: int, mlp: int) -> dict[str, tuple[int, ...]]:
        return {"attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,),
                "attn.out_proj.weight": (w, w), "attn.out_proj.bias": (w,), "ln_1.weight": (w,), "ln_1.bias": (w,),
                "mlp.c_fc.weight": (mlp, w), "mlp.c_fc.bias": (mlp,), "mlp.c_proj.weight": (w, mlp),
                "mlp.c_proj.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,)}

    expected = {
        "visual.class_embedding": (width,), "visual.positional_embedding": (positions, width),
        "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,), "visual.ln_post.weight": (width,),
        "visual.ln_post.bias": (width,), "visual.proj": (width, embed), "token_embedding.weight": (vocab, t_width),
        "positional_embedding": (context, t_width), "ln_final.bias": (t_width,), "text_projection": (t_width, embed),
        "logit_scale": (),
    }
    for tower, w, mlp in (("visual.transformer.resblocks.", width, v_mlp), ("transformer.resblocks.", t_width, t_mlp)):
        for i in layers[tower]:
            expected.update({f"{tower}{i}.{s}": shape for s, shape in block_shapes(w, mlp).items()})
    wrong = [f"{k}: {tuple(state[k].shape)}, expected {shape}" for k, shape in expected.items()
             if tuple(state[k].shape) != shape]
    if wrong:
        raise CheckpointError(f"OpenAI CLIP tensor shapes are inconsistent: {_names(wrong)}")

    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=t_width, intermediate_size=t_mlp,
                         num_hidden_layers=len(t_blocks), num_attention_heads=t_width // 64,
                         max_position_embeddings=context, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                         projection_dim=embed, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0),
        vision_config=dict(hidden_size=width, intermediate_size=v_mlp, num_hidden_layers=len(v_blocks),
                           num_attention_heads=width // 64, image_size=grid * patch, patch_size=patch,
                           num_channels=channels, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                           projection_dim=embed),
        projection_dim=embed,
    )
    out: dict[str, Tensor] = {
        "vision_model.embeddings.patch_embedding.weight": conv,
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t().contiguous(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t().contiguous(),
        "logit_scale": state["logit_scale"],
    }
    for tower, target in towers.items():
        for i, b in layers[tower].items():
            p = f"{target}{i}."
            for suffix, weight in zip(("weight", "bias"), _CLIP_QKV):
                q, k, v = b[weight].chunk(3)
                out.update({p + f"self_attn.q_proj.{suffix}": q, p + f"self_attn.k_proj.{suffix}": k,
                            p + f"self_attn.v_proj.{suffix}": v})
            out.update({p + dst: b[src] for src, dst in _CLIP_BLOCK.items()})
    return config, out
