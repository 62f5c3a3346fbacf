"""Build models: from a config's ``model`` section (training), or from the architecture records of
an inference contract (loading a trained model: no pretrained file needed). Every model built here
carries ``architecture``, the record the contract keeps, so both roads build the same modules."""

from __future__ import annotations

from co2s.errors import CheckpointError
from co2s.models.base import SegmentationModel
from co2s.models.lite_unet import LiteUNet


def _lite_unet(num_classes: int, in_channels: int, width: int, depth: int, dropout: float,
               mean=None, std=None) -> LiteUNet:
    model = LiteUNet(num_classes=num_classes, in_channels=in_channels, width=width, depth=depth,
                     dropout=dropout, mean=mean, std=std)
    model.architecture = {"kind": "lite_unet", "width": width, "depth": depth, "dropout": dropout}
    return model


def build_models(config, architectures: dict | None = None) -> dict[str, SegmentationModel]:
    """Every model of ``config.model``, by name: ``model`` for the built-in CNN, each student by
    its own name. Methods check how many they need (co2s two, the others one).

    ``architectures`` (the ``arch_config`` records of format-1 checkpoints and folders) rebuilds
    ViT students without their pretrained files.
    """
    architectures = architectures or {}
    m, data = config.model, config.data
    if m.name == "lite_unet":
        return {"model": _lite_unet(data.num_classes, config.in_channels, m.width, m.depth, m.dropout,
                                    data.mean, data.std)}
    from co2s.models.student_factory import build_student

    return {s.name: build_student(s, data, architectures.get(s.name), config.in_channels) for s in m.students}


def models_from_contract(contract, where: str = "model") -> dict[str, SegmentationModel]:
    """The models of an :class:`~co2s.models.contract.InferenceContract`, with placeholder
    weights (load them next); a record co2s cannot build is a :class:`CheckpointError`."""
    models = {}
    for name, record in contract.architectures.items():
        try:
            kind = record.get("kind")
            if kind == "lite_unet":
                model = _lite_unet(contract.num_classes, contract.in_channels, int(record["width"]),
                                   int(record["depth"]), float(record["dropout"]))
            elif kind == "student":
                from co2s.models.student_factory import student_from_architecture

                model = student_from_architecture(record, contract.num_classes, contract.in_channels)
            else:
                raise ValueError(f"unknown model kind {kind!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{where}: cannot build model {name!r} from its architecture record: "
                                  f"{type(exc).__name__}: {exc}") from None
        models[name] = model.eval()
    return models
