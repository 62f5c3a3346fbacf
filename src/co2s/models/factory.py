"""Build the model a config asks for."""

from __future__ import annotations

from co2s.models.base import SegmentationModel
from co2s.models.lite_unet import LiteUNet


def build_model(config) -> SegmentationModel:
    m, data = config.model, config.data
    if m.name == "lite_unet":
        return LiteUNet(
            num_classes=data.num_classes, in_channels=config.in_channels, width=m.width,
            depth=m.depth, dropout=m.dropout, mean=data.mean, std=data.std,
        )
    if m.name == "students":
        from co2s.models.student_factory import build_student

        return build_student(m.students[0], data)
    raise ValueError(f"unknown model {m.name!r}")  # unreachable: the schema restricts names
