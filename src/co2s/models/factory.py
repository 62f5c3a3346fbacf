"""Build the models a config's ``model`` section describes."""

from __future__ import annotations

from co2s.models.base import SegmentationModel
from co2s.models.lite_unet import LiteUNet


def build_models(config, architectures: dict | None = None) -> dict[str, SegmentationModel]:
    """Every model of ``config.model``, by name: ``model`` for the built-in CNN, each student by
    its own name. Methods check how many they need (co2s two, the others one).

    ``architectures`` (from a checkpoint or exported folder) rebuilds ViT students without their
    pretrained files.
    """
    architectures = architectures or {}
    m, data = config.model, config.data
    if m.name == "lite_unet":
        model = LiteUNet(num_classes=data.num_classes, in_channels=config.in_channels, width=m.width,
                         depth=m.depth, dropout=m.dropout, mean=data.mean, std=data.std)
        return {"model": model}
    from co2s.models.student_factory import build_student

    return {s.name: build_student(s, data, architectures.get(s.name), config.in_channels) for s in m.students}
