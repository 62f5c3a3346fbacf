"""Weights read from a file (a model folder's ``model.safetensors``, a checkpoint's state dicts)
checked against the models they are for, before they are loaded.

``load_state_dict`` would cast int32 tensors into float parameters without a word, and would load
NaN; its errors list every key. Here the file's tensors are compared, by name, shape and dtype,
with the models their contract describes (built on the ``meta`` device, so nothing is allocated),
before the file's data is read; then every floating tensor must be finite. Each problem is one
:class:`CheckpointError` line naming the file and the tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from co2s.errors import CheckpointError

#: safetensors dtype codes of the floating types a weight may be stored in (read as torch's)
_SAFETENSORS_FLOATS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_TORCH_FLOATS = {torch.float64, torch.float32, torch.float16, torch.bfloat16}


class TensorInfo(NamedTuple):
    shape: tuple[int, ...]
    dtype: str
    floating: bool


def _names(keys: list[str], most: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Name, shape and dtype of every tensor of a safetensors file, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            infos = {}
            for key in f.keys():
                piece = f.get_slice(key)
                code = piece.get_dtype()
                infos[key] = TensorInfo(tuple(piece.get_shape()), _SAFETENSORS_FLOATS.get(code, code),
                                        code in _SAFETENSORS_FLOATS)
    except (SafetensorError, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: unreadable (truncated or corrupt?): {first}") from None
    return infos


def tensor_infos(state: dict, where: str, name: str) -> dict[str, TensorInfo]:
    """Name, shape and dtype of the tensors of one model's state dict (a checkpoint's)."""
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{where}: weights of {name!r}: entries {_names(bad)} are not tensors")
    return {k: TensorInfo(tuple(v.shape), str(v.dtype).removeprefix("torch."), v.dtype in _TORCH_FLOATS)
            for k, v in state.items()}


def group_by_model(infos: dict[str, TensorInfo], names: list[str], where: str, record: str) -> dict[str, dict]:
    """A folder's tensors (``<model>.<key>``) by model name; a tensor of no model is refused."""
    grouped: dict[str, dict] = {name: {} for name in names}
    for key, info in infos.items():
        name, _, rest = key.partition(".")
        if name not in grouped:
            raise CheckpointError(f"{where}: tensor {key!r} belongs to no model of {record}")
        grouped[name][rest] = info
    return grouped


def expected_tensors(models: dict[str, torch.nn.Module]) -> dict[str, dict[str, TensorInfo]]:
    """What each model's state dict holds (models on the meta device will do)."""
    return {name: {k: TensorInfo(tuple(v.shape), str(v.dtype).removeprefix("torch."), v.is_floating_point())
                   for k, v in model.state_dict().items()}
            for name, model in models.items()}


def check_fit(expected: dict[str, dict[str, TensorInfo]], stored: dict[str, dict[str, TensorInfo]],
              where: str, kinds: dict[str, str], source: str) -> None:
    """The stored tensors are exactly those the models need: every model present, no key missing
    or extra, every shape equal and every floating parameter stored as floating point.
    ``kinds``: what each model is called in messages (``student``, ``model``); ``source``: what
    the models were built from (the contract's file)."""
    for name, wanted in expected.items():
        held = stored.get(name) or {}
        if not held:
            others = sorted(n for n, s in stored.items() if s)
            raise CheckpointError(f"{where}: the {kinds.get(name, 'model')} {name!r} is missing from the file "
                                  f"(it holds weights of {_names(others) if others else 'no model'})")
        missing = [f"{name}.{k}" for k in wanted if k not in held]
        if missing:
            raise CheckpointError(f"{where}: {len(missing)} tensor(s) of {name!r} are missing: {_names(missing)}")
        extra = [f"{name}.{k}" for k in held if k not in wanted]
        if extra:
            raise CheckpointError(f"{where}: tensor(s) {_names(extra)} are no part of the {kinds.get(name, 'model')} "
                                  f"{name!r} that {source} describes")
        for key, want in wanted.items():
            got = held[key]
            if got.shape != want.shape:
                raise CheckpointError(f"{where}: tensor '{name}.{key}' has shape {list(got.shape)}, but the model "
                                      f"{source} describes needs {list(want.shape)} (the two files disagree)")
            if want.floating and not got.floating:
                raise CheckpointError(f"{where}: tensor '{name}.{key}' is stored as {got.dtype}; weights must be "
                                      "floating point (float32, float16, bfloat16 or float64)")
            if not want.floating and got.dtype != want.dtype:
                raise CheckpointError(f"{where}: tensor '{name}.{key}' is stored as {got.dtype}, not {want.dtype}")


def check_finite(states: dict[str, dict[str, torch.Tensor]], where: str) -> None:
    """Every floating tensor holds finite values only (a NaN weight makes every prediction NaN)."""
    for name, state in states.items():
        for key, value in state.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{where}: tensor '{name}.{key}' holds NaN or infinite values")
