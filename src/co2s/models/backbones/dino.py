"""DINOv3 (and DINOv2) ViTs as dense student backbones (the "local" student of Co2S).

Patch maps of chosen blocks, each passed through the final layer norm, with the class and
register tokens removed. DINOv3 uses RoPE, so any input size works; in training mode
transformers' DINOv3 jitters and rescales the RoPE coordinates (``pos_embed_rescale``), which the
``rope_rescale`` switch turns off.
"""

from __future__ import annotations

import torch
from transformers import Dinov2Model, DINOv3ViTModel

from co2s.models.backbones.base import BackboneFeatures, ViTBackbone, to_map


class _DinoFamily(ViTBackbone):
    """``layers``: hidden-state indices, ``k`` = output of block ``k`` (1-based); the last one
    feeds the cost volume, the others are skips (the paper: 3, 8, 12 for ViT-B/16)."""

    def freeze_unused(self) -> None:
        # The mask token only serves masked-image modelling in pretraining: never used here, so it
        # would get no gradient (and DDP without find_unused_parameters would fail) under full tuning.
        self.model.embeddings.mask_token.requires_grad = False

    def _check_layers(self, layers, depth: int) -> tuple[int, ...]:
        layers = tuple(layers)
        if any(not 1 <= i <= depth for i in layers) or list(layers) != sorted(set(layers)):
            raise ValueError(f"layers {layers} must be increasing block numbers in 1..{depth}")
        return layers


class DinoV3Backbone(_DinoFamily):
    def __init__(self, model: DINOv3ViTModel, layers: tuple[int, ...] = (3, 8, 12),
                 rope_rescale: bool = False) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.layers = self._check_layers(layers, config.num_hidden_layers)
        self.prefix = 1 + config.num_register_tokens
        self.patch_size = config.patch_size
        self.feature_dim = config.hidden_size
        self.skip_dims = tuple(config.hidden_size for _ in self.layers[:-1])
        if not rope_rescale:
            # Used only in train mode; the attribute lives on the shared config object.
            config.pos_embed_rescale = None
        periods = getattr(config, "rope_periods", None)
        if periods:  # backbone.rope_periods: stored, the file's own periods as Meta's code uses them
            with torch.no_grad():
                model.rope_embeddings.inv_freq.copy_(1 / torch.tensor(periods, dtype=torch.float32))

    def blocks(self):
        return list(self.model.model.layer)

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = x[..., : h * self.patch_size, : w * self.patch_size]
        hidden = self.model.embeddings(x.to(self.model.embeddings.patch_embeddings.weight.dtype))
        rope = self.model.rope_embeddings(x)
        maps = []
        for index, layer in enumerate(self.model.model.layer[: self.layers[-1]], start=1):
            hidden = self.run_block(layer, hidden, position_embeddings=rope)
            if index in self.layers:
                maps.append(to_map(self.model.norm(hidden)[:, self.prefix :], h, w))
        return BackboneFeatures(skips=maps[:-1], last=maps[-1])


class DinoV2Backbone(_DinoFamily):
    def __init__(self, model: Dinov2Model, layers: tuple[int, ...] = (3, 8, 12)) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.layers = self._check_layers(layers, config.num_hidden_layers)
        self.patch_size = config.patch_size
        self.feature_dim = config.hidden_size
        self.skip_dims = tuple(config.hidden_size for _ in self.layers[:-1])

    def blocks(self):
        return list(self.model.encoder.layer)

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = x[..., : h * self.patch_size, : w * self.patch_size]
        hidden = self.model.embeddings(x)  # interpolates its position embeddings to any size
        maps = []
        for index, layer in enumerate(self.model.encoder.layer[: self.layers[-1]], start=1):
            hidden = self.run_block(layer, hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            if index in self.layers:
                maps.append(to_map(self.model.layernorm(hidden)[:, 1:], h, w))
        return BackboneFeatures(skips=maps[:-1], last=maps[-1])
