"""CLIP ViT vision tower as a dense student backbone (the "global" student of Co2S).

The map compared with text prototypes is CLIP's joint-space embedding of every patch, obtained the
MaskCLIP way: the last block's attention is replaced by its value path (value projection, output
projection, residual; then the MLP with its residual), followed by the final layer norm, the
visual projection and L2 normalisation. Earlier hidden states give the skip maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from co2s.models.backbones.base import CLIP_MEAN, CLIP_STD, BackboneFeatures, ViTBackbone, to_map


class ClipBackbone(ViTBackbone):
    """``skip_layers`` are hidden-state indices: 0 is the embedding output (after the pre-norm),
    ``k`` the output of block ``k`` (1-based); the paper's code uses 0 and 4."""

    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self, vision: CLIPVisionModel, projection: torch.nn.Linear,
                 skip_layers: tuple[int, ...] = (0, 4)) -> None:
        super().__init__()
        self.vision = vision
        self.projection = projection  # CLIPModel.visual_projection: hidden -> joint space, no bias
        config: CLIPVisionConfig = vision.config
        self.depth = config.num_hidden_layers
        self.skip_layers = tuple(i for i in skip_layers)
        if any(not 0 <= i < self.depth for i in self.skip_layers):
            raise ValueError(f"CLIP skip layers {self.skip_layers} must lie in 0..{self.depth - 1}")
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

    def dense_last_block(self, hidden: torch.Tensor) -> torch.Tensor:
        """MaskCLIP: the last block with attention replaced by its value path."""
        block = self.vision.encoder.layers[-1]
        attn = block.self_attn
        x = hidden + attn.out_proj(attn.v_proj(block.layer_norm1(hidden)))
        return x + block.mlp(block.layer_norm2(x))

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        hidden = self.vision.embeddings(x, interpolate_pos_encoding=True)
        hidden = self.vision.pre_layrnorm(hidden)
        skips = {}
        if 0 in self.skip_layers:
            skips[0] = hidden
        for index, layer in enumerate(self.vision.encoder.layers[:-1], start=1):
            hidden = layer(hidden, None)
            if index in self.skip_layers:
                skips[index] = hidden
        dense = self.vision.post_layernorm(self.dense_last_block(hidden))
        dense = F.normalize(self.projection(dense[:, 1:]), dim=-1)
        return BackboneFeatures(
            skips=[to_map(skips[i][:, 1:], h, w) for i in self.skip_layers],
            last=to_map(dense, h, w),
        )


