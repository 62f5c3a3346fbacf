"""Architecture records read from files, checked against :mod:`co2s.config.limits` before any
module is built: the records of an inference contract (``architectures``), the ``config.json`` of a
pretrained weight folder, and the ``arch`` overrides of a config. A module of absurd width or depth
would allocate gigabytes before its weights could disagree with it.

Every problem is a ``ValueError`` whose message starts with the field's dotted path; the caller
adds the file. Values must have the type a writer gives them (a JSON integer for a size: ``1e6``
and ``true`` are refused, not converted). Fields a record leaves out keep the defaults of the
class that reads them, which are within the limits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from co2s.config import limits as L

#: integer fields of a transformers ViT config: (least, most)
_VIT_SIZES: dict[str, tuple[int, int]] = {
    "hidden_size": (1, L.MAX_WIDTH), "intermediate_size": (1, L.MAX_MLP_WIDTH),
    "num_hidden_layers": (1, L.MAX_DEPTH), "num_attention_heads": (1, L.MAX_HEADS),
    "patch_size": (L.MIN_PATCH, L.MAX_PATCH), "image_size": (L.MIN_PATCH, L.MAX_IMAGE_SIZE),
    "num_channels": (1, L.MAX_IN_CHANNELS), "projection_dim": (1, L.MAX_WIDTH),
    "num_register_tokens": (0, L.MAX_REGISTERS),
}
_TEXT_SIZES: dict[str, tuple[int, int]] = {
    **{k: _VIT_SIZES[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "projection_dim")},
    "vocab_size": (1, L.MAX_VOCAB), "max_position_embeddings": (1, L.MAX_TEXT_POSITIONS),
}
_CLIP_SIZES = {"projection_dim": (1, L.MAX_WIDTH)}
_GUIDANCE = ("text", "queries", "none")
_HEADS = ("vlg", "deeplabv3plus")
_SKIPS = ("hidden", "value")
_VIT_KINDS = ("clip", "dinov3", "dinov2")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _mapping(value: Any, path: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: must be a mapping, got {_show(value)}")
    return value


def integer(value: Any, low: int, high: int, path: str) -> int:
    """``value`` if it is an integer (not a bool, not a float) within ``[low, high]``."""
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{path}: must be an integer from {low} to {high}, got {_show(value)}")
    return value


def number(value: Any, low: float, high: float, path: str, low_open: bool = False) -> float:
    """``value`` if it is a finite number within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = (type(value) in (int, float) and math.isfinite(value)
          and (low < value if low_open else low <= value) and value <= high)
    if not ok:
        upper = f" {'and at most' if low_open else 'to'} {high}" if math.isfinite(high) else ""
        raise ValueError(f"{path}: must be a finite number {'above' if low_open else 'from'} {low}{upper}, "
                         f"got {_show(value)}")
    return value


def _choice(value: Any, choices: tuple[str, ...], path: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{path}: must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def _sizes(values: Mapping, table: dict[str, tuple[int, int]], path: str) -> None:
    for key, (low, high) in table.items():
        if key in values and not (key == "intermediate_size" and values[key] is None):  # DINOv2: mlp_ratio
            integer(values[key], low, high, f"{path}{key}")
    for key, value in values.items():  # a NaN epsilon or scale would make every output NaN
        if type(value) is float and not math.isfinite(value):
            raise ValueError(f"{path}{key}: must be finite, got {value}")
    if "layer_norm_eps" in values:
        number(values["layer_norm_eps"], 0, 1, f"{path}layer_norm_eps", low_open=True)
    if "hidden_act" in values:
        from transformers.activations import ACT2FN

        if not isinstance(values["hidden_act"], str) or values["hidden_act"] not in ACT2FN:
            raise ValueError(f"{path}hidden_act: {_show(values['hidden_act'])} is no activation transformers knows")
    width, heads = values.get("hidden_size"), values.get("num_attention_heads")
    if width is not None and heads is not None and width % heads:
        raise ValueError(f"{path}hidden_size {width} is not a multiple of num_attention_heads {heads}")
    image, patch = values.get("image_size"), values.get("patch_size")
    if image is not None and patch is not None and image < patch:
        raise ValueError(f"{path}image_size {image} is smaller than patch_size {patch}")


def check_hf_config(kind: str, values: Any, path: str = "", in_channels: int | None = None) -> None:
    """The fields co2s and transformers read from a ``kind`` ViT config (the ``to_dict`` of a
    ``CLIPConfig``, ``DINOv3ViTConfig`` or ``Dinov2Config``, or a ``config.json`` that may hold only
    what differs from the defaults). ``in_channels``: the bands the model is given; a config's
    ``num_channels`` is 3 (RGB, widened on loading) or that."""
    values = _mapping(values, path.rstrip(".") or "arch")
    if kind == "clip":
        _sizes(values, _CLIP_SIZES, path)
        for tower, table in (("vision_config", _VIT_SIZES), ("text_config", _TEXT_SIZES),  # *_dict: older
                             ("vision_config_dict", _VIT_SIZES), ("text_config_dict", _TEXT_SIZES)):  # config.json
            if values.get(tower) is not None:
                _sizes(_mapping(values[tower], f"{path}{tower}"), table, f"{path}{tower}.")
        vision = values.get("vision_config") or {}
        vision_path = f"{path}vision_config."
    else:
        _sizes(values, _VIT_SIZES, path)
        vision, vision_path = values, path
    if kind == "dinov2" and "mlp_ratio" in values:
        number(values["mlp_ratio"], 0, L.MAX_MLP_RATIO, f"{path}mlp_ratio", low_open=True)
    if kind == "dinov3" and values.get("rope_periods") is not None:
        _rope_periods(values, path)
    channels = vision.get("num_channels")
    if in_channels is not None and channels is not None and channels not in (3, in_channels):
        raise ValueError(f"{vision_path}num_channels {channels} is neither 3 (RGB) nor the model's "
                         f"in_channels {in_channels}")


def _rope_periods(values: Mapping, path: str) -> None:
    """DINOv3's RoPE periods as Meta's file stores them (``backbone.rope_periods: stored``): one
    finite positive period per frequency of a head."""
    periods = values["rope_periods"]
    width, heads = values.get("hidden_size"), values.get("num_attention_heads")
    wanted = len(range(0, width // heads, 4)) if width and heads else None  # transformers: arange(0, 1, 4 / head_dim)
    if not isinstance(periods, list) or (wanted is not None and len(periods) != wanted):
        raise ValueError(f"{path}rope_periods: must be a list of {wanted or 'head_dim / 4'} periods, "
                         f"got {_show(periods)}")
    for i, period in enumerate(periods):
        number(period, 0, math.inf, f"{path}rope_periods.{i}", low_open=True)


def check_cnn_arch(arch: Any, path: str = "arch.") -> None:
    """A CNN backbone's ``stem``, ``widths``, ``depths``, ``strides``, ``group_size``, ``in_channels``."""
    arch = _mapping(arch, path.rstrip("."))
    if "stem" in arch:
        integer(arch["stem"], 1, L.MAX_CONV_CHANNELS, f"{path}stem")
    lists = {}
    for key, (low, high) in (("widths", (1, L.MAX_CONV_CHANNELS)), ("depths", (1, L.MAX_DEPTH)),
                             ("strides", (1, 2))):
        if arch.get(key) is None:
            continue
        values = arch[key]
        if not isinstance(values, (list, tuple)) or not 3 <= len(values) <= L.MAX_CNN_STAGES:
            raise ValueError(f"{path}{key}: must be a list of 3 to {L.MAX_CNN_STAGES} stages, got {_show(values)}")
        lists[key] = [integer(v, low, high, f"{path}{key}.{i}") for i, v in enumerate(values)]
    if len({len(v) for v in lists.values()}) > 1:
        raise ValueError(f"{path}widths, depths and strides: one value per stage each, got "
                         f"{', '.join(f'{len(v)} {k}' for k, v in lists.items())}")
    if sum(lists.get("depths", [])) > L.MAX_DEPTH:
        raise ValueError(f"{path}depths: at most {L.MAX_DEPTH} blocks in all, got {sum(lists['depths'])}")
    if "group_size" in arch:
        integer(arch["group_size"], 1, L.MAX_CONV_CHANNELS, f"{path}group_size")
    if "in_channels" in arch:
        integer(arch["in_channels"], 1, L.MAX_IN_CHANNELS, f"{path}in_channels")


def check_lite_unet(record: Mapping, in_channels: int) -> None:
    """A lite_unet record: ``width`` (first stage), ``depth`` (stages, each twice as wide), ``dropout``."""
    width = integer(record.get("width"), 4, L.MAX_CONV_CHANNELS, "width")
    depth = integer(record.get("depth"), 2, 6, "depth")
    if width * 2 ** (depth - 1) > L.MAX_CONV_CHANNELS:
        raise ValueError(f"width {width} and depth {depth}: the widest stage, width x 2^(depth - 1), must be at "
                         f"most {L.MAX_CONV_CHANNELS} channels")
    if number(record.get("dropout"), 0, 1, "dropout") == 1:
        raise ValueError("dropout: must be below 1, got 1")


def check_student(record: Mapping, in_channels: int) -> None:
    """A student record (:func:`co2s.models.student_factory.student_from_architecture`)."""
    backbone = _mapping(record.get("backbone"), "backbone")
    kind = _choice(backbone.get("kind"), ("cnn", *_VIT_KINDS), "backbone.kind")
    guidance = _choice(record.get("guidance"), _GUIDANCE, "guidance")
    head = _choice(record.get("head"), _HEADS, "head")
    integer(record.get("head_width"), 16, L.MAX_HEAD_WIDTH, "head_width")
    if guidance == "text" and kind != "clip":
        raise ValueError(f"guidance: text guidance needs a clip backbone, not {kind}")
    if head == "vlg" and guidance == "none":
        raise ValueError("head: the vlg head needs guidance (text or queries)")
    if backbone.get("weights") is not None:
        _mapping(backbone["weights"], "backbone.weights")
    if kind == "cnn":
        check_cnn_arch(backbone.get("arch"), "backbone.arch.")
        arch_channels = backbone["arch"].get("in_channels", 3)
        if arch_channels != in_channels:
            raise ValueError(f"backbone.arch.in_channels {arch_channels} is not the model's in_channels {in_channels}")
        return
    if in_channels < 3:
        raise ValueError(f"backbone: a {kind} student takes 3 or more bands, the model's in_channels is {in_channels}")
    check_hf_config(kind, backbone.get("arch"), "backbone.arch.", in_channels)
    layers = backbone.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= L.MAX_DEPTH + 1:
        raise ValueError(f"backbone.layers: must be a list of 1 to {L.MAX_DEPTH + 1} layer numbers, got {_show(layers)}")
    for i, layer in enumerate(layers):
        integer(layer, 0, L.MAX_DEPTH, f"backbone.layers.{i}")
    if "skips" in backbone:
        _choice(backbone["skips"], _SKIPS, "backbone.skips")


def check_architecture(record: Any, in_channels: int) -> None:
    """One model's record of an inference contract, for a model given ``in_channels`` bands."""
    record = _mapping(record, "record")
    kind = _choice(record.get("kind"), ("lite_unet", "student"), "kind")
    (check_lite_unet if kind == "lite_unet" else check_student)(record, in_channels)
