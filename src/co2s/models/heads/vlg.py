"""The language-guided decoder (the paper's "VLG" head).

Per-pixel cosine cost volume between the ViT feature map and the class guidance (CLIP text
prototypes or learnable queries), then, with the classes folded into the batch: spatial reasoning
(7x7 conv + residual ASPP on every class map alone), semantic reasoning (a transformer over the
class tokens at every 4x4-pooled location, the tokens carrying the projected guidance), and two 2x
transposed-conv stages fed with projected skip maps of earlier ViT blocks. A shared 3x3 conv gives
one logit per class map.

Details the method description leaves open follow the authors' released ``VLGHead``:

* skip order: ``skips`` are given shallow to deep (block order, as ``BackboneFeatures.skips``);
  the deeper skip feeds stage 1 and the shallower one stage 2 (the reference reverses the pyramid
  of earlier blocks, ``img_feat_pyramid[:-1][::-1]``, so with blocks [0, 4, 12] stage 1 gets block 4
  and stage 2 block 0);
* transposed-conv widths: stage ``i`` maps ``in`` channels to ``in - skip_channels[i]`` so that the
  concatenation with the projected skip is back to ``in`` (128 -> 96 (+32) for stage 1, 64 -> 48
  (+16) for stage 2); the skip projection is a 3x3 conv followed by ReLU;
* semantic transformer: pre-norm encoder layer, GELU, feed-forward width ``4 * hidden`` (512),
  dropout 0 (the reference uses 0; the head is small and trained with strong perturbations);
* the guidance projection ``Linear(D, hidden) + ReLU`` goes to the same width as the class
  features, so tokens are ``2 * hidden`` (256) wide;
* GroupNorm with 16 channels per group; bilinear resizing inside the head uses
  ``align_corners=True`` (as the reference), the final resize to ``out_size`` ``align_corners=False``.

Where this differs from the reference: the pooling uses ``ceil_mode=True`` (the reference floors,
dropping the last rows/columns when ``h`` or ``w`` is not a multiple of 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ASPP, group_norm


def cost_volume(feature: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel with every guidance row.

    ``feature`` ``[B, C, h, w]``, ``guidance`` ``[N, C]`` (or per image ``[B, N, C]``) ->
    ``[B, N, h, w]``.
    """
    if feature.shape[1] != guidance.shape[-1]:
        raise ValueError(f"feature has {feature.shape[1]} channels, guidance {guidance.shape[-1]}")
    f = F.normalize(feature, dim=1)
    g = F.normalize(guidance, dim=-1)
    if g.dim() == 2:
        return torch.einsum("bchw,nc->bnhw", f, g)
    return torch.einsum("bchw,bnc->bnhw", f, g)


class SemanticLayer(nn.Module):
    """One semantic-reasoning layer: a transformer over the class tokens at every pooled location.

    Pooling is ``avg_pool2d(kernel=pool, stride=pool, ceil_mode=True)``: ``ceil(h / pool)`` rows,
    the last window averaging only the rows/columns that exist (so maps not divisible by ``pool``,
    and maps smaller than it, keep all their pixels).
    """

    def __init__(self, hidden: int, guidance_hidden: int, heads: int, pool: int, feedforward: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = pool
        self.encoder = nn.TransformerEncoderLayer(
            d_model=hidden + guidance_hidden, nhead=heads, dim_feedforward=feedforward, dropout=dropout,
            activation="gelu", batch_first=True, norm_first=True)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, N, C, h, w]``, projected ``guidance`` ``[B, N, Cg]`` -> ``[B, N, C, h, w]``."""
        b, n, c, h, w = x.shape
        pooled = F.avg_pool2d(x.reshape(b * n, c, h, w), self.pool, self.pool, ceil_mode=True)
        hp, wp = pooled.shape[-2:]
        tokens = pooled.reshape(b, n, c, hp, wp).permute(0, 3, 4, 1, 2).reshape(b * hp * wp, n, c)
        g = guidance[:, None, None].expand(b, hp, wp, n, guidance.shape[-1]).reshape(b * hp * wp, n, -1)
        out = self.encoder(torch.cat([tokens, g], dim=-1))[..., :c]  # drop the guidance part
        out = out.reshape(b, hp, wp, n, c).permute(0, 3, 4, 1, 2).reshape(b * n, c, hp, wp)
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)
        return x + out.reshape(b, n, c, h, w)


class UpStage(nn.Module):
    """2x transposed conv, concatenation with a projected skip map (shared by all classes), two 3x3
    conv + GroupNorm + ReLU."""

    def __init__(self, in_channels: int, skip_in_channels: int, skip_channels: int, out_channels: int,
                 group_size: int = 16) -> None:
        super().__init__()
        if skip_channels >= in_channels:
            raise ValueError(f"skip width {skip_channels} must be below the stage input {in_channels}")
        self.up = nn.ConvTranspose2d(in_channels, in_channels - skip_channels, kernel_size=2, stride=2)
        self.skip_proj = nn.Sequential(
            nn.Conv2d(skip_in_channels, skip_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            group_norm(out_channels, group_size), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            group_norm(out_channels, group_size), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B*N, C, h, w]`` (image-major), ``skip`` ``[B, Cs, hs, ws]``."""
        x = self.up(x)
        s = self.skip_proj(skip)  # project once per image, before repeating for the classes
        s = F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=True)
        s = s.repeat_interleave(x.shape[0] // skip.shape[0], dim=0)
        return self.conv(torch.cat([x, s], dim=1))


class LanguageGuidedHead(nn.Module):
    """Feature map + class guidance + two skip maps -> logits ``[B, N, H, W]``.

    ``feature_dim`` must equal ``guidance_dim`` (the cost volume compares them directly). ``N``,
    the number of guidance rows, is free: nothing in the head depends on it.
    """

    uses_guidance = True

    def __init__(self, feature_dim: int, guidance_dim: int, skip_dims: Sequence[int], hidden: int = 128,
                 pool: int = 4, heads: int = 4, layers: int = 2,
                 skip_channels: Sequence[int] = (32, 16), stage_channels: Sequence[int] = (64, 32),
                 aspp_rates: Sequence[int] = (6, 12, 18), group_size: int = 16,
                 feedforward: int | None = None, dropout: float = 0.0, conv1_kernel: int = 7) -> None:
        super().__init__()
        if feature_dim != guidance_dim:
            raise ValueError(f"the cost volume needs feature_dim == guidance_dim, got {feature_dim}, {guidance_dim}")
        if len(skip_dims) != 2 or len(skip_channels) != 2 or len(stage_channels) != 2:
            raise ValueError("skip_dims, skip_channels and stage_channels need two entries each")
        self.feature_dim = feature_dim
        self.hidden = hidden
        # spatial reasoning, per class map
        self.conv1 = nn.Conv2d(1, hidden, conv1_kernel, padding=(conv1_kernel - 1) // 2)
        self.aspp = ASPP(hidden, hidden, aspp_rates, group_size=group_size, residual=True)
        # semantic reasoning, across classes
        self.guidance_proj = nn.Sequential(nn.Linear(guidance_dim, hidden), nn.ReLU(inplace=True))
        self.layers = nn.ModuleList(
            SemanticLayer(hidden, hidden, heads, pool, feedforward or 4 * hidden, dropout) for _ in range(layers))
        # upsampling: stage 1 takes the deeper skip (skips[1]), stage 2 the shallower (skips[0])
        self.up1 = UpStage(hidden, skip_dims[1], skip_channels[0], stage_channels[0], group_size)
        self.up2 = UpStage(stage_channels[0], skip_dims[0], skip_channels[1], stage_channels[1], group_size)
        self.classifier = nn.Conv2d(stage_channels[1], 1, 3, padding=1)

    def forward(self, feature: torch.Tensor, guidance: torch.Tensor, skips: Sequence[torch.Tensor],
                out_size: tuple[int, int] | None) -> torch.Tensor:
        """``feature`` ``[B, C, h, w]``, ``guidance`` ``[N, C]`` or ``[B, N, C]``, ``skips`` two maps
        ``[B, Cs_i, h_i, w_i]`` shallow to deep; logits ``[B, N, *out_size]`` (``[B, N, 4h, 4w]``
        when ``out_size`` is None)."""
        if guidance is None:
            raise ValueError("LanguageGuidedHead needs guidance")
        if len(skips) != 2:
            raise ValueError(f"expected 2 skip maps, got {len(skips)}")
        b, _, h, w = feature.shape
        if guidance.dim() == 2:
            guidance = guidance.unsqueeze(0).expand(b, -1, -1)
        guidance = guidance.to(feature.dtype)
        n = guidance.shape[1]

        x = cost_volume(feature, guidance)  # [B, N, h, w]
        x = self.aspp(self.conv1(x.reshape(b * n, 1, h, w)))  # [B*N, hidden, h, w]

        g = self.guidance_proj(guidance)  # [B, N, hidden]
        x = x.reshape(b, n, self.hidden, h, w)
        for layer in self.layers:
            x = layer(x, g)
        x = x.reshape(b * n, self.hidden, h, w)

        x = self.up1(x, skips[1])
        x = self.up2(x, skips[0])
        x = self.classifier(x)
        x = x.reshape(b, n, *x.shape[-2:])
        if out_size is not None:
            x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
        return x
