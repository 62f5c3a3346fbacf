"""Build the model a config asks for."""

from __future__ import annotations

from co2s.models.base import SegmentationModel
from co2s.models.lite_unet import LiteUNet


def build_models(config, architectures: dict | None = None) -> dict[str, SegmentationModel]:
    """The model(s) a method trains, by name: the two students for ``co2s``, else ``model``.

    ``architectures`` (from a checkpoint) rebuilds ViT students without their pretrained files.
    """
    architectures = architectures or {}
    if config.train.method == "co2s":
        from co2s.models.student_factory import build_student

        return {s.name: build_student(s, config.data, architectures.get(s.name), config.in_channels)
                for s in config.model.students}
    return {"model": build_model(config, architectures.get("model"))}


def build_model(config, saved_arch: dict | None = None) -> SegmentationModel:
    m, data = config.model, config.data
    if m.name == "lite_unet":
        return LiteUNet(
            num_classes=data.num_classes, in_channels=config.in_channels, width=m.width,
            depth=m.depth, dropout=m.dropout, mean=data.mean, std=data.std,
        )
    if m.name == "students":
        from co2s.models.student_factory import build_student

        return build_student(m.students[0], data, saved_arch, config.in_channels)
    raise ValueError(f"unknown model {m.name!r}")  # unreachable: the schema restricts names
