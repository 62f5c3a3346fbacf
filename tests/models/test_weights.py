"""Loading ViT weights from every supported format, offline, and verifying them afterwards.

Each format is produced here from a tiny random model of the real architecture; the official
formats are written with the official key names, which are also checked against hard-coded key
patterns of the real released files (``dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth``, OpenAI's
``ViT-B-16.pt``), derived from facebookresearch/dinov3 (``dinov3/models/vision_transformer.py``,
its layers, ``dinov3/hub/backbones.py``) and openai/CLIP (``clip/model.py``).
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel

from co2s.errors import CheckpointError
from co2s.models.backbones.weights import (
    convert_dinov3_official,
    convert_openai_clip,
    load_backbone_weights,
    read_state_dict,
    read_torchscript_tensors,
    reference_subset,
    verify_weights,
)
from co2s.models.backbones.weights.openai_clip import openai_clip_shape
from co2s.models.families import identify
from tests.conftest import tiny_overrides, tiny_weights

# --------------------------------------------------------------------------------------------
# key patterns of the real released files ({i} = block index), with their shapes

#: dinov3_vitb16_pretrain_lvd1689m: DinoVisionTransformer(embed_dim=768, depth=12, num_heads=12,
#: ffn_ratio=4, ffn_layer="mlp", n_storage_tokens=4, mask_k_bias=True, layerscale_init=1e-5,
#: qkv/proj/ffn biases, patch 16, RoPE base 100 -> periods of head_dim / 4 = 16)
DINOV3_VITB16_KEYS = {
    "cls_token": (1, 1, 768),
    "storage_tokens": (1, 4, 768),
    "mask_token": (1, 768),
    "patch_embed.proj.weight": (768, 3, 16, 16),
    "patch_embed.proj.bias": (768,),
    "rope_embed.periods": (16,),
    "norm.weight": (768,),
    "norm.bias": (768,),
    "blocks.{i}.norm1.weight": (768,),
    "blocks.{i}.norm1.bias": (768,),
    "blocks.{i}.attn.qkv.weight": (2304, 768),
    "blocks.{i}.attn.qkv.bias": (2304,),
    "blocks.{i}.attn.qkv.bias_mask": (2304,),
    "blocks.{i}.attn.proj.weight": (768, 768),
    "blocks.{i}.attn.proj.bias": (768,),
    "blocks.{i}.ls1.gamma": (768,),
    "blocks.{i}.norm2.weight": (768,),
    "blocks.{i}.norm2.bias": (768,),
    "blocks.{i}.mlp.fc1.weight": (3072, 768),
    "blocks.{i}.mlp.fc1.bias": (3072,),
    "blocks.{i}.mlp.fc2.weight": (768, 3072),
    "blocks.{i}.mlp.fc2.bias": (768,),
    "blocks.{i}.ls2.gamma": (768,),
}
DINOV3_VITB16_DEPTH = 12
#: the one tensor of the released files that is not float32: DinoVisionTransformer's RoPE dtype
#: defaults to bf16 (``pos_embed_rope_dtype="bf16"``) and the training builder
#: (``dinov3/models/__init__.py``: ``build_model``) keeps that default, so the buffer
#: ``RopePositionEmbedding.periods`` is computed and saved in bfloat16. Parameters (kept in float32 by
#: the training's mixed precision) and ``bias_mask`` (``full_like(bias)``) are float32.
DINOV3_BF16_KEYS = ("rope_embed.periods",)

#: OpenAI ViT-B/16 (clip/model.py with embed_dim 512; vision: 224 px, patch 16, width 768, 12 layers;
#: text: context 77, vocab 49408, width 512, 12 layers). {t} = "visual.transformer" or "transformer".
OPENAI_VITB16_KEYS = {
    "visual.class_embedding": (768,),
    "visual.positional_embedding": (197, 768),
    "visual.proj": (768, 512),
    "visual.conv1.weight": (768, 3, 16, 16),
    "visual.ln_pre.weight": (768,),
    "visual.ln_pre.bias": (768,),
    "visual.ln_post.weight": (768,),
    "visual.ln_post.bias": (768,),
    "positional_embedding": (77, 512),
    "text_projection": (512, 512),
    "logit_scale": (),
    "token_embedding.weight": (49408, 512),
    "ln_final.weight": (512,),
    "ln_final.bias": (512,),
}
OPENAI_BLOCK_KEYS = {  # per tower width w, MLP 4 w
    "attn.in_proj_weight": lambda w: (3 * w, w),
    "attn.in_proj_bias": lambda w: (3 * w,),
    "attn.out_proj.weight": lambda w: (w, w),
    "attn.out_proj.bias": lambda w: (w,),
    "ln_1.weight": lambda w: (w,),
    "ln_1.bias": lambda w: (w,),
    "mlp.c_fc.weight": lambda w: (4 * w, w),
    "mlp.c_fc.bias": lambda w: (4 * w,),
    "mlp.c_proj.weight": lambda w: (w, 4 * w),
    "mlp.c_proj.bias": lambda w: (w,),
    "ln_2.weight": lambda w: (w,),
    "ln_2.bias": lambda w: (w,),
}
#: the scalar buffers of the TorchScript file that clip.model.build_model drops
OPENAI_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def openai_vitb16_shapes() -> dict[str, tuple[int, ...]]:
    shapes = dict(OPENAI_VITB16_KEYS)
    for tower, width in (("visual.transformer", 768), ("transformer", 512)):
        for i in range(12):
            shapes.update({f"{tower}.resblocks.{i}.{s}": f(width) for s, f in OPENAI_BLOCK_KEYS.items()})
    return shapes


def dinov3_pattern_shapes(depth: int, scale: dict[int, int] | None = None) -> dict[str, tuple[int, ...]]:
    """The vitb16 key patterns expanded for ``depth`` blocks, sizes optionally replaced by ``scale``."""
    scale = scale or {}
    out = {}
    for pattern, shape in DINOV3_VITB16_KEYS.items():
        for i in range(depth) if "{i}" in pattern else [None]:
            out[pattern.format(i=i)] = tuple(scale.get(s, s) for s in shape)
    return out


def lazy_zeros(shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor of ``shape`` that takes no memory (for full-size key/shape checks)."""
    return torch.zeros(()).expand(shape)


# --------------------------------------------------------------------------------------------
# tiny source models

DIM, HEADS, REGISTERS, PATCH = 64, 2, 4, 16


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter gets distinct random values, so no mapping error hides behind an init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def tiny_dinov3(gated: bool = False, seed: int = 0, depth: int = 2) -> DINOv3ViTModel:
    config = DINOv3ViTConfig(
        hidden_size=DIM, intermediate_size=96 if gated else 128, num_hidden_layers=depth, num_attention_heads=HEADS,
        num_register_tokens=REGISTERS, patch_size=PATCH, image_size=32, use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu", layer_norm_eps=1e-5, rope_theta=100.0,
    )
    return randomise(DINOv3ViTModel(config), seed)


def tiny_dinov2() -> Dinov2Model:
    config = Dinov2Config(hidden_size=DIM, intermediate_size=128, num_hidden_layers=2, num_attention_heads=HEADS,
                          patch_size=PATCH, image_size=32)
    return randomise(Dinov2Model(config))


def tiny_clip() -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=50, max_position_embeddings=8, bos_token_id=48, eos_token_id=49, pad_token_id=0),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=PATCH, image_size=32),
        projection_dim=24,
    )
    return randomise(CLIPModel(config))


def official_rope_periods(head_dim: int, base: float = 100.0, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``base ** (2 i / (head_dim / 2))`` computed the way the dinov3 code does it: in the dtype of the
    ``periods`` buffer (bfloat16 for the released models, see DINOV3_BF16_KEYS)."""
    return base ** (2 * torch.arange(head_dim // 4, dtype=dtype) / (head_dim // 2))


def export_dinov3_official(model: DINOv3ViTModel) -> dict[str, torch.Tensor]:
    """A transformers DINOv3 in the naming of Meta's DinoVisionTransformer checkpoints, with a
    non-zero (masked) key bias and a bias_mask as in the released files."""
    c = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dim = c.hidden_size
    head_dim = dim // c.num_attention_heads
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "storage_tokens": sd["embeddings.register_tokens"],
        "mask_token": sd["embeddings.mask_token"].reshape(1, dim),
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
        # RopePositionEmbedding._init_weights, base 100, evaluated in the buffer's dtype (bf16), as saved
        "rope_embed.periods": official_rope_periods(head_dim),
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    for i in range(c.num_hidden_layers):
        h, b = f"model.layer.{i}.", f"blocks.{i}."
        out[b + "norm1.weight"], out[b + "norm1.bias"] = sd[h + "norm1.weight"], sd[h + "norm1.bias"]
        out[b + "norm2.weight"], out[b + "norm2.bias"] = sd[h + "norm2.weight"], sd[h + "norm2.bias"]
        out[b + "attn.qkv.weight"] = torch.cat([sd[h + f"attention.{x}_proj.weight"] for x in "qkv"])
        garbage_k_bias = torch.linspace(-1, 1, dim)  # masked out by bias_mask, must not reach the model
        out[b + "attn.qkv.bias"] = torch.cat(
            [sd[h + "attention.q_proj.bias"], garbage_k_bias, sd[h + "attention.v_proj.bias"]])
        out[b + "attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
        out[b + "attn.proj.weight"] = sd[h + "attention.o_proj.weight"]
        out[b + "attn.proj.bias"] = sd[h + "attention.o_proj.bias"]
        out[b + "ls1.gamma"], out[b + "ls2.gamma"] = sd[h + "layer_scale1.lambda1"], sd[h + "layer_scale2.lambda1"]
        pairs = (("w1", "gate_proj"), ("w2", "up_proj"), ("w3", "down_proj")) if c.use_gated_mlp else \
            (("fc1", "up_proj"), ("fc2", "down_proj"))
        for official, hf in pairs:
            out[b + f"mlp.{official}.weight"] = sd[h + f"mlp.{hf}.weight"]
            out[b + f"mlp.{official}.bias"] = sd[h + f"mlp.{hf}.bias"]
    return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def official_dinov3_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """DinoVisionTransformer's eval forward (normed tokens), written from the dinov3 sources for
    this test: masked qkv bias, RoPE on patch tokens only, layer scale, MLP or SwiGLU."""
    dim = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    b, _, hp, wp = t.shape
    t = t.flatten(2).transpose(1, 2)
    cls = sd["cls_token"] + 0 * sd["mask_token"]
    prefix = 1 + sd["storage_tokens"].shape[1]
    t = torch.cat([cls.expand(b, -1, -1), sd["storage_tokens"].expand(b, -1, -1), t], dim=1)
    coords_h, coords_w = torch.arange(0.5, hp) / hp, torch.arange(0.5, wp) / wp
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1) * 2.0 - 1.0
    angles = (2 * math.pi * coords[:, :, None] / sd["rope_embed.periods"][None, None, :]).flatten(1, 2).tile(2)
    sin, cos = angles.sin(), angles.cos()
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    n = t.shape[1]
    for i in range(depth):
        p = lambda s: sd[f"blocks.{i}.{s}"]  # noqa: E731
        h = F.layer_norm(t, (dim,), p("norm1.weight"), p("norm1.bias"), 1e-5)
        qkv = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias") * p("attn.qkv.bias_mask"))
        q, k, v = qkv.reshape(b, n, 3, heads, dim // heads).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))
        q = torch.cat([q[:, :, :prefix], q[:, :, prefix:] * cos + rotate_half(q[:, :, prefix:]) * sin], dim=2)
        k = torch.cat([k[:, :, :prefix], k[:, :, prefix:] * cos + rotate_half(k[:, :, prefix:]) * sin], dim=2)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, dim)
        t = t + F.linear(a, p("attn.proj.weight"), p("attn.proj.bias")) * p("ls1.gamma")
        h = F.layer_norm(t, (dim,), p("norm2.weight"), p("norm2.bias"), 1e-5)
        if f"blocks.{i}.mlp.w1.weight" in sd:
            gate = F.silu(F.linear(h, p("mlp.w1.weight"), p("mlp.w1.bias")))
            m = F.linear(gate * F.linear(h, p("mlp.w2.weight"), p("mlp.w2.bias")), p("mlp.w3.weight"), p("mlp.w3.bias"))
        else:
            up = F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias")))
            m = F.linear(up, p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        t = t + m * p("ls2.gamma")
    return F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], 1e-5)


# OpenAI CLIP in its own module layout (clip/model.py names), written for this test


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x):  # [L, N, D], sequence first
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, resolution: int, patch: int, width: int, layers: int, out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, width // 64)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAIClip(nn.Module):
    def __init__(self, embed=24, resolution=32, patch=16, width=128, layers=2, context=8, vocab=50, t_width=128,
                 t_layers=2):
        super().__init__()
        self.visual = VisionTransformer(resolution, patch, width, layers, embed)
        mask = torch.full((context, context), float("-inf")).triu_(1)
        self.transformer = Transformer(t_width, t_layers, t_width // 64, mask)
        self.token_embedding = nn.Embedding(vocab, t_width)
        self.positional_embedding = nn.Parameter(torch.randn(context, t_width))
        self.ln_final = nn.LayerNorm(t_width)
        self.text_projection = nn.Parameter(torch.randn(t_width, embed))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        # the TorchScript release carries these as tensors too
        self.register_buffer("input_resolution", torch.tensor(resolution))
        self.register_buffer("context_length", torch.tensor(context))
        self.register_buffer("vocab_size", torch.tensor(vocab))

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.ln_final(self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        return self.visual(image), self.encode_text(text)


def export_openai_clip(model: CLIPModel) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel in OpenAI's state-dict naming."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
        "logit_scale": sd["logit_scale"],
    }
    for tower, hf, layers in (("visual.transformer", "vision_model", model.config.vision_config.num_hidden_layers),
                              ("transformer", "text_model", model.config.text_config.num_hidden_layers)):
        for i in range(layers):
            o, h = f"{tower}.resblocks.{i}.", f"{hf}.encoder.layers.{i}."
            out[o + "attn.in_proj_weight"] = torch.cat([sd[h + f"self_attn.{x}_proj.weight"] for x in "qkv"])
            out[o + "attn.in_proj_bias"] = torch.cat([sd[h + f"self_attn.{x}_proj.bias"] for x in "qkv"])
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[o + a + ".weight"], out[o + a + ".bias"] = sd[h + b + ".weight"], sd[h + b + ".bias"]
    return out


def clip_inputs(vocab: int = 50, context: int = 8, image: int = 32):
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, image, image, generator=gen)
    ids = torch.randint(1, vocab - 2, (2, context), generator=gen)
    ids[0, 5:], ids[1, 3:] = 0, 0
    ids[0, 4], ids[1, 2] = vocab - 1, vocab - 1  # <|endoftext|>, the largest id
    return pixels, ids


def _features(out):
    return out.pooler_output if hasattr(out, "pooler_output") else out


@torch.no_grad()
def image_features(model: CLIPModel, pixels):
    return _features(model.get_image_features(pixel_values=pixels))


@torch.no_grad()
def text_features(model: CLIPModel, ids):
    return _features(model.get_text_features(input_ids=ids))


# --------------------------------------------------------------------------------------------
# save_pretrained directories and the Hub cache


def test_hf_directory_dinov3(tmp_path):
    source = tiny_dinov3()
    source.save_pretrained(tmp_path)
    model, reference, _ = load_backbone_weights("dinov3", tmp_path, overrides=tiny_overrides("dinov3"))
    assert isinstance(model, DINOv3ViTModel) and not model.training
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        assert torch.equal(model(x).last_hidden_state, source(x).last_hidden_state)
    assert set(reference) == set(source.state_dict())
    verify_weights(model, reference, str(tmp_path))


def test_hf_directory_dinov2(tmp_path):
    source = tiny_dinov2()
    source.save_pretrained(tmp_path)
    model, reference, _ = load_backbone_weights("dinov2", str(tmp_path), overrides=tiny_overrides("dinov2"))
    assert isinstance(model, Dinov2Model)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x).last_hidden_state, source(x).last_hidden_state)
    verify_weights(model, reference, str(tmp_path))


def test_hf_directory_clip(tmp_path):
    source = tiny_clip()
    source.save_pretrained(tmp_path)
    model, reference, _ = load_backbone_weights("clip", tmp_path, overrides=tiny_overrides("clip", 2))
    assert isinstance(model, CLIPModel)
    pixels, ids = clip_inputs()
    assert torch.equal(image_features(model, pixels), image_features(source, pixels))
    assert torch.equal(text_features(model, ids), text_features(source, ids))
    big = torch.randn(1, 3, 48, 64)  # away from the configured size: interpolated positions
    with torch.no_grad():
        a = model.vision_model(pixel_values=big, interpolate_pos_encoding=True).last_hidden_state
        b = source.vision_model(pixel_values=big, interpolate_pos_encoding=True).last_hidden_state
    assert torch.equal(a, b)
    assert {"visual_projection.weight", "text_projection.weight", "logit_scale"} <= set(reference)


def test_hub_id_resolved_from_local_cache_only(tmp_path, monkeypatch):
    """A cache written by hand (no file list cached): with the Hub unreachable (a closed local
    port, never the internet) what is on disk serves; the absent repository is a clear error.
    Downloads: tests/models/test_hub_download.py."""
    from huggingface_hub import constants

    from tests.hub_server import closed_port_url

    url = closed_port_url()
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    source = tiny_dinov2()
    snapshot = tmp_path / "hub" / "models--co2s-test--tiny-dinov2" / "snapshots" / "0123abcd"
    source.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    model, _, family = load_backbone_weights("dinov2", "co2s-test/tiny-dinov2", cache_dir=tmp_path / "hub", overrides=tiny_overrides("dinov2"))
    assert family.origin == {"hub": "co2s-test/tiny-dinov2", "revision": "0123abcd"}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).last_hidden_state, source(x).last_hidden_state)
    with pytest.raises(CheckpointError, match=r"co2s-test/absent: it is not in the Hugging Face cache \(.*hub\), and "
                                              r"nothing is downloaded: the Hub .* cannot be reached.*`hf download "
                                              r"co2s-test/absent`"):
        load_backbone_weights("dinov2", "co2s-test/absent", cache_dir=tmp_path / "hub", overrides=tiny_overrides("dinov2"))


def test_hf_directory_of_another_model_type(tmp_path):
    tiny_dinov2().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"model_type 'dinov2'.*dinov3_vit"):
        load_backbone_weights("dinov3", tmp_path, overrides=tiny_overrides("dinov3"))


def test_hf_directory_with_a_tensor_missing(tmp_path):
    tiny_dinov3().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["layer.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"up_proj\.weight"):
        load_backbone_weights("dinov3", tmp_path, overrides=tiny_overrides("dinov3"))


# --------------------------------------------------------------------------------------------
# official DINOv3 files


@pytest.mark.parametrize("gated", [False, True])
def test_official_dinov3_pth(tmp_path, gated):
    source = tiny_dinov3(gated=gated)
    official = export_dinov3_official(source)
    path = tmp_path / "dinov3_tiny_pretrain.pth"
    torch.save(official, path)
    model, reference, _ = load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_register_tokens, c.patch_size) == \
        (DIM, 2, HEADS, REGISTERS, PATCH)
    assert c.use_gated_mlp is gated and c.key_bias is False and c.rope_theta == 100.0
    x = torch.randn(2, 3, 48, 32)  # 3 x 2 patches: RoPE coordinates normalised per side
    with torch.no_grad():
        out = model(x).last_hidden_state
        assert torch.equal(out, source(x).last_hidden_state)
        # against the official forward written from the dinov3 sources (different kernels: allclose);
        # transformers computes exact RoPE frequencies from rope_theta, the file holds bf16-rounded ones
        exact = {**official, "rope_embed.periods": official_rope_periods(DIM // HEADS, dtype=torch.float64).float()}
        torch.testing.assert_close(out, official_dinov3_forward(exact, x, HEADS), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, official_dinov3_forward(official, x, HEADS), rtol=0, atol=0.1)
    verify_weights(model, reference, str(path))


@pytest.mark.parametrize("stored", ["bf16 tensor", "float32 holding bf16 values"])
def test_official_dinov3_bf16_rope_periods_as_released(tmp_path, stored):
    """The released files hold rope_embed.periods rounded to bf16 (DINOV3_BF16_KEYS); they load,
    verify, and build a student, with transformers' exact frequencies (rope_theta 100)."""
    from co2s.config.loader import load_config
    from co2s.models.student_factory import build_student

    official = export_dinov3_official(tiny_dinov3(depth=3))
    periods = official["rope_embed.periods"]
    assert periods.dtype == torch.bfloat16
    exact = official_rope_periods(DIM // HEADS, dtype=torch.float64)
    assert not torch.allclose(periods.double(), exact, rtol=1e-5, atol=0)  # really rounded
    if stored != "bf16 tensor":
        official["rope_embed.periods"] = periods.float()
    path = tmp_path / "dinov3_tiny_pretrain.pth"  # a tiny shape: no released name
    torch.save(official, path)
    model, reference, _ = load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))
    assert model.config.rope_theta == 100.0
    inv_freq = dict(model.named_buffers())["rope_embeddings.inv_freq"]
    torch.testing.assert_close(inv_freq.double(), 1 / exact, rtol=1e-6, atol=0)
    verify_weights(model, reference, str(path))

    cfg = load_config("demo", ["train.method=supervised", "model.name=students", "model.students=" + repr([
        {"name": "dino", "backbone": {"kind": "dinov3", "weights": str(path), "layers": [1, 2, 3],
                                      **tiny_weights("dinov3")},
         "guidance": "queries"}])])
    student = build_student(cfg.model.students[0], cfg.data)
    verify_weights(student.backbone.model, reference, str(path))


@pytest.mark.parametrize("head_dim", [48, 128])
def test_official_dinov3_rope_periods_computed_in_bf16(head_dim):
    """Periods computed by the dinov3 code in bf16 arithmetic are accepted for any head dim (when
    it is not a power of two, the exponent is rounded too) and give back the base."""
    dim = 2 * head_dim
    shapes = dinov3_pattern_shapes(1, {768: dim, 2304: 3 * dim, 3072: 2 * dim})
    state = {k: torch.randn(shape) for k, shape in shapes.items()}
    state["blocks.0.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    state["rope_embed.periods"] = official_rope_periods(head_dim)
    config, _ = convert_dinov3_official(state)
    assert config.rope_theta == 100.0 and config.num_attention_heads == 2


def test_official_dinov3_export_has_the_real_key_set():
    """The fixture writes exactly the released vitb16 file's key patterns (sizes scaled down)."""
    official = export_dinov3_official(tiny_dinov3())
    scale = {768: DIM, 2304: 3 * DIM, 3072: 128, 16: PATCH}
    expected = dinov3_pattern_shapes(2, scale)
    expected["rope_embed.periods"] = (DIM // HEADS // 4,)
    assert {k: tuple(v.shape) for k, v in official.items()} == expected
    assert {k: v.dtype for k, v in official.items()} == \
        {k: torch.bfloat16 if k in DINOV3_BF16_KEYS else torch.float32 for k in expected}


def test_real_size_dinov3_vitb16_key_set_converts_to_the_hub_config():
    """The hard-coded real vitb16 key/shape list (no memory: expanded zeros) maps onto a
    transformers DINOv3ViTModel of the facebook/dinov3-vitb16 configuration, name by name."""
    state = {k: lazy_zeros(s) for k, s in dinov3_pattern_shapes(DINOV3_VITB16_DEPTH).items()}
    state["rope_embed.periods"] = official_rope_periods(64)  # bf16, as in the released file
    for i in range(DINOV3_VITB16_DEPTH):
        state[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(768), torch.zeros(768), torch.ones(768)])
    config, converted = convert_dinov3_official(state)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
            config.num_register_tokens, config.patch_size, config.use_gated_mlp, config.hidden_act,
            config.key_bias, config.layer_norm_eps, config.rope_theta) == \
        (768, 12, 12, 3072, 4, 16, False, "gelu", False, 1e-5, 100.0)
    with torch.device("meta"):
        target = DINOv3ViTModel(config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == \
        {k: tuple(v.shape) for k, v in target.state_dict().items()}


def test_official_dinov3_rope_periods_checked():
    official = export_dinov3_official(tiny_dinov3())
    official["rope_embed.periods"] = torch.linspace(0.5, 40.0, 8)  # min/max-period parametrisation
    with pytest.raises(CheckpointError, match="rope_embed.periods"):
        convert_dinov3_official(official)
    # bf16 values a little off the formula (more than the rounding, not geometric) are refused as well
    wobble = torch.tensor([1.0, 1.02] * 4, dtype=torch.float64)
    off = official_rope_periods(DIM // HEADS, dtype=torch.float64) * wobble
    official["rope_embed.periods"] = off.to(torch.bfloat16)
    with pytest.raises(CheckpointError, match="rope_embed.periods"):
        convert_dinov3_official(official)


def test_official_dinov3_extra_norms():
    official = export_dinov3_official(tiny_dinov3())
    official["local_cls_norm.weight"], official["local_cls_norm.bias"] = torch.ones(DIM), torch.zeros(DIM)
    config, converted = convert_dinov3_official(official)  # training-only norm of local crops: dropped
    assert not any("local_cls_norm" in k for k in converted)
    official["cls_norm.weight"], official["cls_norm.bias"] = torch.ones(DIM), torch.zeros(DIM)
    with pytest.raises(CheckpointError, match="cls_norm"):
        convert_dinov3_official(official)


def test_truncated_file(tmp_path):
    path = tmp_path / "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"
    torch.save(export_dinov3_official(tiny_dinov3()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"dinov3_vitb16_pretrain_lvd1689m-73cec8be\.pth.*truncated or corrupt"):
        load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="absent.pth: no such file"):
        load_backbone_weights("dinov3", tmp_path / "absent.pth", overrides=tiny_overrides("dinov3"))
    with pytest.raises(CheckpointError, match="weights/absent.pth: no such file"):
        load_backbone_weights("dinov3", "weights/absent.pth", overrides=tiny_overrides("dinov3"))  # a relative path, not a Hub id


def dinov2_official_state() -> dict[str, torch.Tensor]:
    """A state dict in the dinov2 repository's naming (learned pos_embed, register_tokens, no RoPE)."""
    state = export_dinov3_official(tiny_dinov3())
    state["register_tokens"] = state.pop("storage_tokens")
    del state["rope_embed.periods"]
    state["pos_embed"] = torch.randn(1, 5, DIM)
    for key in [k for k in state if k.endswith("bias_mask")]:
        del state[key]
    return state


def test_wrong_architecture_given_as_dinov3(tmp_path):
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(dinov2_official_state(), path)
    with pytest.raises(CheckpointError, match=r"dinov2_vitb14_reg4_pretrain\.pth.*DINOv2"):
        load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))
    resnet = {"conv1.weight": torch.randn(8, 3, 7, 7), "bn1.weight": torch.ones(8), "bn1.bias": torch.zeros(8),
              "layer1.0.conv1.weight": torch.randn(8, 8, 1, 1), "fc.weight": torch.randn(10, 8)}
    torch.save(resnet, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"resnet\.pth.*(ResNet|convolutional)"):
        load_backbone_weights("dinov3", tmp_path / "resnet.pth", overrides=tiny_overrides("dinov3"))
    torch.save(export_openai_clip(tiny_clip()), tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match="CLIP"):
        load_backbone_weights("dinov3", tmp_path / "clip.pt", overrides=tiny_overrides("dinov3"))


def test_renamed_and_missing_keys_are_named(tmp_path):
    state = export_dinov3_official(tiny_dinov3())
    state["blocks.1.attn.out.weight"] = state.pop("blocks.1.attn.proj.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"renamed\.pth.*missing keys blocks\.1\.attn\.proj\.weight.*"
                                              r"unexpected keys blocks\.1\.attn\.out\.weight"):
        load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))
    state = export_dinov3_official(tiny_dinov3())
    del state["norm.bias"]
    with pytest.raises(CheckpointError, match=r"lacks norm\.bias"):
        convert_dinov3_official(state)


def test_shape_mismatch_is_named():
    state = export_dinov3_official(tiny_dinov3())
    state["blocks.0.mlp.fc2.weight"] = torch.randn(DIM, 100)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc2\.weight: \(64, 100\), expected \(64, 128\)"):
        convert_dinov3_official(state)


def test_wrapped_training_checkpoint_is_refused(tmp_path):
    path = tmp_path / "train.pth"
    torch.save({"teacher": export_dinov3_official(tiny_dinov3()), "iteration": 5}, path)
    with pytest.raises(CheckpointError, match="not a flat state dict"):
        load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))


# --------------------------------------------------------------------------------------------
# OpenAI CLIP files


def test_openai_clip_plain_state_dict(tmp_path):
    """open_clip-style plain ``torch.save`` of the OpenAI names: read with weights_only."""
    source = tiny_clip()
    path = tmp_path / "ViT-tiny.pt"
    torch.save(export_openai_clip(source), path)
    model, reference, _ = load_backbone_weights("clip", path, overrides=tiny_overrides("clip", 2))
    pixels, ids = clip_inputs()
    assert torch.equal(image_features(model, pixels), image_features(source, pixels))
    assert torch.equal(text_features(model, ids), text_features(source, ids))
    assert model.config.vision_config.hidden_act == "quick_gelu"
    assert model.config.text_config.eos_token_id == 49
    verify_weights(model, reference, str(path))


def make_torchscript_clip(path: Path, **arch) -> OpenAIClip:
    """A TorchScript archive like OpenAI's release (traced, half-precision weights); returns the
    source module with its weights rounded to float16 as stored. ``arch``: OpenAIClip arguments."""
    torch.manual_seed(0)
    source = OpenAIClip(**arch).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.mul_(0.3)
            p.copy_(p.half().float())
    pixels, ids = clip_inputs(arch.get("vocab", 50), arch.get("context", 8), arch.get("resolution", 32))
    traced = torch.jit.trace(copy.deepcopy(source), (pixels, ids), check_trace=False)
    traced.half()  # shares parameters with the traced copy only
    traced.save(str(path))
    return source


def test_openai_clip_torchscript_archive(tmp_path, monkeypatch):
    path = tmp_path / "ViT-tiny.pt"  # OpenAI's archive layout at a tiny size (no family's name)
    source = make_torchscript_clip(path)
    assert "constants.pkl" in " ".join(zipfile.ZipFile(path).namelist())

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be used")

    monkeypatch.setattr(torch.jit, "load", refuse)
    tensors = read_torchscript_tensors(path)
    expected = source.state_dict()
    assert set(tensors) == set(expected)
    assert tensors["visual.proj"].dtype == torch.float16 and tensors["input_resolution"].dtype == torch.int64
    for key, value in expected.items():
        assert torch.equal(tensors[key].to(value.dtype), value), key

    model, reference, _ = load_backbone_weights("clip", path, overrides=tiny_overrides("clip", 2))
    c = model.config
    assert (c.vision_config.hidden_size, c.vision_config.num_attention_heads, c.vision_config.image_size,
            c.text_config.max_position_embeddings, c.text_config.vocab_size, c.projection_dim) == \
        (128, 2, 32, 8, 50, 24)
    pixels, ids = clip_inputs()
    with torch.no_grad():
        image, text = source(pixels, ids)  # the OpenAI-layout forward
    torch.testing.assert_close(image_features(model, pixels), image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text_features(model, ids), text, rtol=1e-5, atol=1e-5)
    assert model.visual_projection.weight.dtype == torch.float32
    verify_weights(model, reference, str(path))


def test_openai_export_has_the_real_key_set():
    official = export_openai_clip(tiny_clip())
    scale = {768: 128, 512: 128, 2304: 384, 1536: 384, 3072: 512, 2048: 512, 197: 5, 77: 8, 49408: 50, 16: 16}
    expected = {k: tuple(scale.get(s, s) for s in shape) for k, shape in openai_vitb16_shapes().items()
                if ".resblocks." not in k or int(k.split(".resblocks.")[1].split(".")[0]) < 2}
    expected["visual.proj"] = (128, 24)
    expected["text_projection"] = (128, 24)
    assert {k: tuple(v.shape) for k, v in official.items()} == expected


def test_real_size_openai_vitb16_key_set_converts_to_the_hub_config():
    state = {k: lazy_zeros(s) for k, s in openai_vitb16_shapes().items()}
    state.update({k: torch.tensor(v) for k, v in zip(OPENAI_JIT_EXTRAS, (224, 77, 49408))})
    family, variant = identify("clip", "/weights/ViT-B-16.pt", openai_clip_shape(state))
    assert (family.name, variant.name) == ("openai", "ViT-B/16")
    config, converted = convert_openai_clip(state, variant.heads, variant.text_heads, variant.act)
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size, v.image_size,
            v.hidden_act) == (768, 3072, 12, 12, 16, 224, "quick_gelu")
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.max_position_embeddings,
            t.vocab_size, t.eos_token_id) == (512, 2048, 12, 8, 77, 49408, 49407)
    assert config.projection_dim == 512
    with torch.device("meta"):
        target = CLIPModel(config)
    assert {k: tuple(x.shape) for k, x in converted.items()} == \
        {k: tuple(x.shape) for k, x in target.state_dict().items()}


def test_openai_clip_renamed_key(tmp_path):
    state = export_openai_clip(tiny_clip())
    state["visual.transformer.resblocks.1.mlp.fc.weight"] = state.pop("visual.transformer.resblocks.1.mlp.c_fc.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    block = r"visual\.transformer\.resblocks\.1\.mlp\."
    expected = rf"renamed\.pt.*missing keys {block}c_fc\.weight.*unexpected keys {block}fc\.weight"
    with pytest.raises(CheckpointError, match=expected):
        load_backbone_weights("clip", path, overrides=tiny_overrides("clip", 2))


def test_truncated_torchscript_archive(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    make_torchscript_clip(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=r"ViT-B-16\.pt.*(truncated|corrupt)"):
        load_backbone_weights("clip", path, overrides=tiny_overrides("clip", 2))


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_in_a_file_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    # a TorchScript-looking archive whose data.pkl calls os.system
    archive = tmp_path / "evil_jit.pt"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"visual.proj": _Payload(marker)}, protocol=2))
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        zf.writestr("evil/version", "3\n")
    with pytest.raises(CheckpointError, match="refused global"):
        read_state_dict(archive)
    # a plain pickle checkpoint with the same payload: torch.load(weights_only=True) refuses it
    plain = tmp_path / "evil.pth"
    with open(plain, "wb") as f:
        pickle.dump({"cls_token": _Payload(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"evil\.pth"):
        read_state_dict(plain)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# verify_weights


def test_verify_weights_catches_reinitialisation(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(export_dinov3_official(tiny_dinov3()), path)
    model, reference, _ = load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))
    verify_weights(model, reference, str(path))

    with torch.no_grad():
        model.embeddings.register_tokens.zero_()
    with pytest.raises(CheckpointError, match=r"tiny\.pth.*1 tensor\(s\) differ.*embeddings\.register_tokens"):
        verify_weights(model, reference, str(path))

    model, reference, _ = load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))
    model.model.layer[1].mlp.up_proj.reset_parameters()  # what a stray init_weights() does
    with pytest.raises(CheckpointError) as info:
        verify_weights(model, reference, str(path))
    assert "model.layer.1.mlp.up_proj.weight" in str(info.value)
    assert "model.layer.1.mlp.up_proj.bias" in str(info.value)
    assert "model.layer.0" not in str(info.value)


def test_verify_weights_inside_a_wrapper_and_for_a_tower(tmp_path):
    source = tiny_clip()
    source.save_pretrained(tmp_path)
    model, reference, _ = load_backbone_weights("clip", tmp_path, overrides=tiny_overrides("clip", 2))

    class Segmentor(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = model.vision_model
            self.projection = model.visual_projection
            self.head = nn.Conv2d(24, 3, 1)

    seg = Segmentor()
    vision = reference_subset(reference, "vision_model.")
    verify_weights(seg, vision, "clip", prefix="backbone.")
    verify_weights(seg, reference_subset(reference, "visual_projection."), "clip", prefix="projection.")
    with pytest.raises(CheckpointError, match=r"missing from the model: backbone\.extra"):
        verify_weights(seg, {**vision, "extra": vision["post_layernorm.weight"]}, "clip", prefix="backbone.")
    partial = {k: v for k, v in vision.items() if k != "post_layernorm.bias"}
    with pytest.raises(CheckpointError, match=r"not in the checkpoint: backbone\.post_layernorm\.bias"):
        verify_weights(seg, partial, "clip", prefix="backbone.")
    seg.backbone.post_layernorm.half()
    with pytest.raises(CheckpointError, match=r"backbone\.post_layernorm\.weight \(dtype torch\.float16"):
        verify_weights(seg, vision, "clip", prefix="backbone.")
