"""OpenAI's CLIP release (``clip/model.py`` names, e.g. ``ViT-B-16.pt``) -> ``transformers.CLIPModel``.

:func:`convert_openai_clip` maps the tensors of a single OpenAI CLIP file (read from its
TorchScript archive by :func:`~.readers.read_torchscript_tensors`) and derives the config from the
shapes.

Key-mapping sources: ``openai/CLIP`` ``clip/model.py`` (``VisionTransformer``, ``Transformer``,
``ResidualAttentionBlock`` with ``nn.MultiheadAttention``) and transformers'
``models/clip/convert_clip_original_pytorch_to_hf.py`` (``in_proj`` chunked into q, k, v; ``proj`` /
``text_projection`` transposed into the ``Linear`` projections). open_clip, RemoteCLIP, GeoRSCLIP
and SkyCLIP files use the same names, but the shapes cannot tell the attention heads (OpenAI:
width / 64; open_clip: width / head_width) or the activation: the caller gives them, from
:mod:`co2s.models.families` (:func:`openai_clip_shape` is what it matches there).
"""

from __future__ import annotations

import math
import re

from torch import Tensor
from transformers import CLIPConfig

from co2s.errors import CheckpointError
from co2s.models.backbones.weights.verify import architecture_hint, list_names

#: scalar buffers of OpenAI's TorchScript CLIP that are not weights (clip.model.build_model drops them)
OPENAI_CLIP_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")

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


def openai_clip_shape(state: dict[str, Tensor]) -> tuple[int, int, int]:
    """(width, depth, patch) of the vision tower of a state dict in OpenAI's names, what the weight
    families are matched on; (0, 0, 0) when the keys are not there (the converter says why)."""
    conv = state.get("visual.conv1.weight")
    if conv is None or conv.dim() != 4:
        return 0, 0, 0
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.", k))}
    return int(conv.shape[0]), len(blocks), int(conv.shape[-1])


def convert_openai_clip(state: dict[str, Tensor], vision_heads: int, text_heads: int,
                        act: str) -> tuple[CLIPConfig, dict[str, Tensor]]:
    """Map a CLIP ViT state dict in OpenAI's names (``clip/model.py``, as in ``ViT-B-16.pt`` and
    the open_clip-based releases) to ``transformers.CLIPModel`` names; the sizes come from the
    shapes, the heads and activation (``quick_gelu`` or ``gelu``) from the caller, LayerNorm eps
    1e-5 as in both code bases.

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
        hint = (architecture_hint(keys) if "visual.conv1.weight" not in keys
                else "keys present: " + list_names(sorted(keys), 8))
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
            parts.append(f"missing keys {list_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {list_names(unexpected)}")
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
    for tower, w, heads in (("vision", width, vision_heads), ("text", t_width, text_heads)):
        if heads < 1 or w % heads:
            raise CheckpointError(f"the {tower} tower's width {w} does not split into {heads} attention heads")

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
        raise CheckpointError(f"OpenAI CLIP tensor shapes are inconsistent: {list_names(wrong)}")

    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=t_width, intermediate_size=t_mlp,
                         num_hidden_layers=len(t_blocks), num_attention_heads=text_heads,
                         max_position_embeddings=context, hidden_act=act, layer_norm_eps=1e-5,
                         projection_dim=embed, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0),
        vision_config=dict(hidden_size=width, intermediate_size=v_mlp, num_hidden_layers=len(v_blocks),
                           num_attention_heads=vision_heads, image_size=grid * patch, patch_size=patch,
                           num_channels=channels, hidden_act=act, layer_norm_eps=1e-5,
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
