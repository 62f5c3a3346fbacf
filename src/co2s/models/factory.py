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


def _record_errors() -> tuple[type[Exception], ...]:
    """What building a record that passed its checks may still raise (an unusual combination)."""
    from huggingface_hub.errors import StrictDataclassError  # transformers' config validation

    return KeyError, TypeError, ValueError, AttributeError, IndexError, StrictDataclassError


def models_from_contract(contract, where: str = "model") -> dict[str, SegmentationModel]:
    """The models of an :class:`~co2s.models.contract.InferenceContract`, with placeholder
    weights (load them next; under ``torch.device("meta")`` nothing is allocated); a record co2s
    cannot build is a :class:`CheckpointError`. The contract's records are within the limits
    (:mod:`co2s.models.architecture_limits`), so building them is bounded in time and memory."""
    models = {}
    for name, record in contract.architectures.items():
        try:
            if record["kind"] == "lite_unet":
                model = _lite_unet(contract.num_classes, contract.in_channels, record["width"],
                                   record["depth"], float(record["dropout"]))
            else:
                from co2s.models.student_factory import student_from_architecture

                model = student_from_architecture(record, contract.num_classes, contract.in_channels)
        except Exception as exc:
            if not isinstance(exc, _record_errors()):  # e.g. a failed allocation (torch: RuntimeError),
                raise  # which must never pass for a bad record
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{where}: cannot build model {name!r} from its architecture record: {first}"
                                  ) from None
        models[name] = model.eval()
    return models
