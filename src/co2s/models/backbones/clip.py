"""CLIP ViT vision tower as a dense student backbone (the "global" student of Co2S).

The map compared with text prototypes is CLIP's joint-space embedding of every patch, obtained the
MaskCLIP way: the last block's attention is replaced by its value path (value projection, output
projection, residual; then the MLP with its residual), followed by the final layer norm, the
visual projection and L2 normalisation.

The skip maps come from earlier blocks, in one of two modes (``skip_mode``); either way a skip
index ``i`` names hidden state ``i`` (0: the embeddings after the pre-norm, ``k``: output of block
``k``, 1-based):

* ``hidden``: hidden state ``i`` itself;
* ``value`` (the paper's code): the value path of block ``i + 1`` applied to hidden state ``i``,
  ``x = h + out_proj(v_proj(ln_1 h))``, then ``x + mlp(ln_2 x)``; no ``ln_post``. With ``(0, 4)``
  these are blocks 1 and 5.

The value path of a skip block uses only weights that the normal forward through that block uses
as well, so no parameter becomes unused; only the last block's queries and
keys are never used (:meth:`ClipBackbone.freeze_unused`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from co2s.models.backbones.base import BackboneFeatures, ViTBackbone, to_map

SkipMode = Literal["hidden", "value"]


class ClipBackbone(ViTBackbone):
    """``skip_layers`` are hidden-state indices (see the module docstring; the paper's code uses
    0 and 4 with ``skip_mode="value"``)."""

    def __init__(self, vision: CLIPVisionModel, projection: torch.nn.Linear,
                 skip_layers: tuple[int, ...] = (0, 4), skip_mode: SkipMode = "hidden") -> None:
        super().__init__()
        self.vision = vision
        self.projection = projection  # CLIPModel.visual_projection: hidden -> joint space, no bias
        config: CLIPVisionConfig = vision.config
        self.depth = config.num_hidden_layers
        self.skip_layers = tuple(i for i in skip_layers)
        if any(not 0 <= i < self.depth for i in self.skip_layers):
            raise ValueError(f"CLIP skip layers {self.skip_layers} must lie in 0..{self.depth - 1}")
        if skip_mode not in ("hidden", "value"):
            raise ValueError(f"CLIP skip mode must be 'hidden' or 'value', not {skip_mode!r}")
        self.skip_mode = skip_mode
        self.patch_size = config.patch_size
        self.feature_dim = projection.out_features
        self.skip_dims = tuple(config.hidden_size for _ in self.skip_layers)

    def blocks(self):
        return list(self.vision.encoder.layers)

    def freeze_unused(self) -> None:
        # The dense path never uses the last block's queries and keys.
        last = self.vision.encoder.layers[-1].self_attn
        for p in [*last.q_proj.parameters(), *last.k_proj.parameters()]:
            p.requires_grad = False

    @staticmethod
    def value_path(block, hidden: torch.Tensor) -> torch.Tensor:
        """``block`` with its attention replaced by the value path (MaskCLIP)."""
        attn = block.self_attn
        x = hidden + attn.out_proj(attn.v_proj(block.layer_norm1(hidden)))
        return x + block.mlp(block.layer_norm2(x))

    def dense_last_block(self, hidden: torch.Tensor) -> torch.Tensor:
        """MaskCLIP: the last block with attention replaced by its value path."""
        return self.value_path(self.vision.encoder.layers[-1], hidden)

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        hidden = self.vision.embeddings(x, interpolate_pos_encoding=True)
        hidden = self.vision.pre_layrnorm(hidden)  # hidden state 0
        layers = self.vision.encoder.layers
        skips = {}
        for index, layer in enumerate(layers):  # ``hidden`` is hidden state ``index`` here
            if index in self.skip_layers:
                skips[index] = hidden if self.skip_mode == "hidden" else self.value_path(layer, hidden)
            if index == self.depth - 1:
                break
            hidden = self.run_block(layer, hidden, None)
        dense = self.vision.post_layernorm(self.dense_last_block(hidden))
        dense = F.normalize(self.projection(dense[:, 1:]), dim=-1)
        return BackboneFeatures(
            skips=[to_map(skips[i][:, 1:], h, w) for i in self.skip_layers],
            last=to_map(dense, h, w),
        )
