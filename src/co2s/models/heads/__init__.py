"""Decoder heads for the ViT students: ``forward(feature, guidance, skips, out_size) -> logits``."""

from .deeplabv3plus import DeepLabV3PlusHead
from .vlg import LanguageGuidedHead, cost_volume

__all__ = ["DeepLabV3PlusHead", "LanguageGuidedHead", "cost_volume"]
