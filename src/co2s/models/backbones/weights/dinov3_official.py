"""Meta's DINOv3 release (a ``DinoVisionTransformer`` state dict) -> ``transformers.DINOv3ViTModel``.

:func:`convert_dinov3_official` maps a single DINOv3 file as Meta distributes it
(``dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth``, a ``torch.save``\\ d state dict) key by key and
derives the config from the tensor shapes.

Key-mapping sources: ``facebookresearch/dinov3``: ``dinov3/models/vision_transformer.py``
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

Notes: DINOv3's ``local_cls_norm`` (ViT-7B, SAT-493M ViT-L) normalises local crops during training
only and is dropped; ``cls_norm`` (untied norms) has no transformers counterpart and is refused.
transformers' DINOv3 rescales the RoPE coordinates in train mode (``pos_embed_rescale=2``, as the
official model does); :class:`co2s.models.backbones.dino.DinoV3Backbone` can switch that off.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor
from transformers import DINOv3ViTConfig

from co2s.errors import CheckpointError
from co2s.models.backbones.weights.verify import architecture_hint, list_names

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

_DINOV3_GLOBALS = ("cls_token", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
                   "rope_embed.periods", "norm.weight", "norm.bias")
_DINOV3_BLOCK_REQUIRED = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight",
                          "norm2.weight", "norm2.bias")
_DINOV3_BLOCK_OPTIONAL = ("attn.qkv.bias", "attn.qkv.bias_mask", "attn.proj.bias", "ls1.gamma", "ls2.gamma")
_DINOV3_FFN = {
    False: ("mlp.fc1.weight", "mlp.fc2.weight"),
    True: ("mlp.w1.weight", "mlp.w2.weight", "mlp.w3.weight"),
}


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
            raise CheckpointError(f"not a DINOv3 ViT state dict: {architecture_hint(keys)}")
        raise CheckpointError(f"DINOv3 state dict lacks {list_names(missing)} ({architecture_hint(keys)})")
    if "pos_embed" in keys:
        raise CheckpointError(f"not a DINOv3 ViT state dict: {architecture_hint(keys)}")

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
            f"block keys are not numbered blocks.0..blocks.{depth - 1}: "
            f"{list_names(strange or sorted(map(str, blocks)))}")
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
            parts.append(f"missing keys {list_names(block_missing)}")
        if block_unexpected or global_unexpected:
            parts.append(f"unexpected keys {list_names(block_unexpected + global_unexpected)}")
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
            f"DINOv3 tensor shapes do not fit dim {dim}, {heads} heads, FFN {hidden}: {list_names(wrong)}")

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
