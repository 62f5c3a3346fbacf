"""The ViT architectures co2s builds without weights (``backbone.arch``) and the layers a
student's decoder reads from them (``backbone.layers``). Plain data and rules, below the models:
the config schema refuses a student that could not be built (so ``co2s presets`` does too) and
the model factory builds from the same table and the same defaults."""

from __future__ import annotations

import copy
from typing import Any

# The paper's ViT-B/16s and the SAT-493M ViT-L/16 (for summaries and scale tests), and tiny
# variants of the same code (a few layers, small width) for tests, the demo and CPU studies:
# transformers config values by backbone kind and name.
_CLIP_TEXT_B = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                    max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")
VIT_ARCHS: dict[str, dict[str, dict[str, Any]]] = {
    "clip": {
        "vit-b16": dict(
            vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                               num_attention_heads=12, patch_size=16, image_size=224, hidden_act="quick_gelu"),
            text_config=_CLIP_TEXT_B, projection_dim=512,
        ),
        "tiny": dict(
            vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                               num_attention_heads=4, patch_size=16, image_size=224, hidden_act="quick_gelu"),
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu"),
            projection_dim=32,
        ),
    },
    "dinov3": {
        "vit-b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        patch_size=16, num_register_tokens=4, layerscale_value=1.0, key_bias=False),
        "vit-l16": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        patch_size=16, num_register_tokens=4, layerscale_value=1.0, key_bias=False),
        "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     patch_size=16, num_register_tokens=4, layerscale_value=1.0, key_bias=False),
    },
    "dinov2": {
        "vit-b14": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        patch_size=14, image_size=518),
        "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     patch_size=16, image_size=224),
    },
}
VIT_ARCHS["dinov2"]["vit-b16"] = {**VIT_ARCHS["dinov2"]["vit-b14"], "patch_size": 16, "image_size": 224}


def vit_arch(kind: str, arch: str | dict[str, Any]) -> dict[str, Any]:
    """The transformers config values of ``arch``: a name of :data:`VIT_ARCHS`, or keys over
    ``base`` (a name; none: transformers' defaults), nested sections merged key by key. A
    ``ValueError`` names an unknown architecture."""
    known = VIT_ARCHS[kind]
    base = arch.get("base") if isinstance(arch, dict) else arch
    if base is not None and (not isinstance(base, str) or base not in known):
        raise ValueError(f"unknown {kind} architecture {base!r}; known: {', '.join(sorted(known))}")
    if not isinstance(arch, dict):
        return copy.deepcopy(known[arch])
    merged = copy.deepcopy(known[base]) if base else {}
    for key, value in arch.items():
        if key == "base":
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def vit_depth(kind: str, values: dict[str, Any]) -> int | None:
    """Blocks of the (vision) tower of the config values ``values``; None where they do not say
    (transformers' default then applies, and the model checks the layers when it is built)."""
    tower = values.get("vision_config") if kind == "clip" else values
    depth = tower.get("num_hidden_layers") if isinstance(tower, dict) else None
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else None


def default_layers(kind: str, depth: int) -> list[int]:
    """The paper's choice scaled to the depth: CLIP skips 0 and depth/3; DINO depth/4, 2depth/3, depth."""
    if kind == "clip":
        return [0, max(1, depth // 3)]
    return sorted({max(1, depth // 4), max(2, (2 * depth) // 3), depth})


def check_layers(kind: str, layers: list[int] | None, depth: int | None, head: str) -> None:
    """Raise a ``ValueError`` saying why a ``kind`` backbone of ``depth`` blocks (None: unknown
    until its weights are read) cannot give the ``head`` decoder its maps from ``layers`` (None:
    :func:`default_layers`). CLIP's layers are all skips, hidden states 0 (the embeddings) to
    depth - 1; DINO's are increasing block numbers 1 to depth, the last one the decoder's main map,
    the others skips. The vlg head reads two skips, DeepLabV3+ at least one."""
    given = layers is not None
    if layers is None:
        if depth is None:
            return
        layers = default_layers(kind, depth)
    what = f"layers {layers}" + ("" if given else f" (the default for {depth} block{'s' * (depth != 1)})")
    if kind == "clip":
        low, high, skips = 0, (None if depth is None else depth - 1), len(layers)
        rule = "hidden-state indices from 0 (the embeddings)"
    else:
        low, high, skips = 1, depth, len(layers) - 1
        rule = "increasing block numbers from 1"
        if list(layers) != sorted(set(layers)):
            raise ValueError(f"{what}: must be {rule}")
    if any(i < low or (high is not None and i > high) for i in layers):
        blocks = f"of {depth} block{'s' * (depth != 1)} " if depth is not None else ""
        raise ValueError(f"{what}: a {kind} backbone {blocks}takes {rule}" + (f" to {high}" if high is not None else ""))
    vlg = head == "vlg"
    if skips != 2 if vlg else skips < 1:
        count = (2 if vlg else 1) + (kind != "clip")
        maps = ("two skip maps" if vlg else "a skip map") + (" and the last map" if kind != "clip" else "")
        few = (f" ({depth} blocks are too few: give the backbone more, or head deeplabv3plus)"
               if kind != "clip" and depth is not None and depth < count else "")
        raise ValueError(f"{what}: the {head} head reads {maps}, so give {'exactly' if vlg else 'at least'} "
                         f"{count} layers{few}")
