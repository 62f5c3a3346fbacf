"""Reading checkpoint files without executing code from them.

* ``.safetensors``: the format holds only tensors and a JSON header; read with ``safetensors``.
* Any other file is first inspected as a zip archive. A PyTorch *state dict* (``torch.save``,
  zip or legacy format) is read with ``torch.load(path, map_location="cpu", weights_only=True)``,
  whose unpickler only rebuilds tensors and plain containers and refuses every other global.
* OpenAI's CLIP files are **TorchScript archives**, not state dicts: ``clip.load`` opens them with
  ``torch.jit.load`` and, for ``jit=False``, rebuilds its Python model from the archive's
  ``state_dict()``; transformers' ``convert_clip_original_pytorch_to_hf.py`` goes through
  ``clip.load(..., jit=False)``. ``torch.load(..., weights_only=True)`` refuses such archives
  ("Cannot use weights_only=True with TorchScript archives"), and ``torch.jit.load`` is not an
  option: it compiles the TorchScript source stored under ``code/`` in the archive and runs the
  ``__setstate__`` methods that source may define while the objects are restored, i.e. it
  executes code taken from the file. We therefore read such an archive ourselves
  (:func:`read_torchscript_tensors`): Python's ``zipfile`` opens it, nothing under ``code/`` or
  ``constants.pkl`` is read, and ``data.pkl`` (the pickled module tree) goes through a restricted
  unpickler whose ``find_class`` resolves exactly these names: ``torch._utils._rebuild_tensor_v2``
  and ``torch._utils._rebuild_parameter`` (replaced by our own functions that only make a strided
  view of a byte buffer after checking that every argument is an int and the view fits), the
  ``torch.<Dtype>Storage`` names (turned into dtype markers, never instantiated),
  ``collections.OrderedDict``, the pure list builders of ``torch.jit._pickle``, and any
  ``__torch__.*`` class, which becomes one inert placeholder class that only stores the state
  handed to it. Every other global raises ``UnpicklingError``. ``persistent_load`` only reads the
  archive's ``data/<key>`` records as raw bytes of a whitelisted dtype and checks their length.
  The pickle machine itself cannot call anything that ``find_class`` did not return, so no code
  from the file runs. The tensors are the attributes of the module tree, i.e. the parameters and
  buffers ``state_dict()`` would give, plus the scalar buffers ``input_resolution``,
  ``context_length`` and ``vocab_size`` that ``clip.model.build_model`` also discards.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from co2s.errors import CheckpointError
from co2s.models.backbones.weights.verify import list_names


#: what a weight file may be (every message that refuses one says it)
ACCEPTED_FORMATS = (".safetensors, a PyTorch state dict of tensors (torch.save(model.state_dict())), "
                    "an OpenAI CLIP .pt, a save_pretrained folder or a Hub id (docs/weights.md)")
#: the class torch's safe unpickler refused, in its message: "Unsupported global: GLOBAL a.b.C"
_PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file, read without executing code from it.

    ``.safetensors`` via safetensors; TorchScript archives via :func:`read_torchscript_tensors`;
    anything else via ``torch.load(weights_only=True)``, which must yield a flat ``{name: tensor}``
    dict. Raises :class:`CheckpointError` for a missing, truncated, corrupt or non-state-dict file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (truncated download?)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        return read_torchscript_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            # Never relay torch's text: it advises weights_only=False, i.e. running the file's code.
            found = _PICKLED_GLOBAL.search(text)
            raise CheckpointError(
                f"{path}: holds pickled Python code or objects besides tensors"
                f"{f' ({found.group(1)})' if found else ''}, which co2s does not load (unpickling them "
                f"can run code); give the weights as {ACCEPTED_FORMATS}"
            ) from None
        raise CheckpointError(f"{path}: cannot be read (truncated or corrupt?): {exc}") from None
    except Exception as exc:  # zip reader errors, EOF, etc.
        reason = str(exc).split(". ")[0] or type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt?): {reason}") from None
    return _as_flat_state_dict(state, path)


def _as_flat_state_dict(state: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    if isinstance(state.get("state_dict"), dict) and not isinstance(state["state_dict"], Tensor):
        # An open_clip training checkpoint ({epoch, name, state_dict, optimizer[, scaler]}, as SkyCLIP
        # releases them): the model's weights, saved from a DistributedDataParallel wrapper.
        state = _without_prefix(state["state_dict"], "module.")
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise CheckpointError(
            f"{path}: not a flat state dict of tensors (entries {list_names(bad, 6)} are not tensors; "
            "a training checkpoint must have its model weights extracted first)"
        )
    return dict(state)


def _without_prefix(state: dict, prefix: str) -> dict:
    """``state`` with ``prefix`` removed from its keys when every key has it (a DDP-wrapped save)."""
    if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in names)


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    """Stand-in for a ``torch.<Dtype>Storage`` global: only carries the dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _ScriptObject:
    """Inert stand-in for every ``__torch__.*`` class: keeps the state it is given, nothing else."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


def _rebuild_tensor(storage: Tensor, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> Tensor:
    if not isinstance(storage, Tensor) or storage.dim() != 1:
        raise pickle.UnpicklingError("tensor without a storage record")
    size, stride = tuple(size), tuple(stride)
    if not (isinstance(offset, int) and all(isinstance(s, int) and s >= 0 for s in size + stride)
            and len(size) == len(stride) and offset >= 0):
        raise pickle.UnpicklingError("malformed tensor geometry")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.numel():
        raise pickle.UnpicklingError("tensor extends beyond its storage (truncated archive?)")
    return torch.as_strided(storage, size, stride, offset)


def _rebuild_parameter(data: Tensor, requires_grad: Any = False, hooks: Any = None) -> Tensor:
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return data


def _build_list(items: Any) -> list:
    return list(items)


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """Rebuilds only tensors and inert placeholders from a TorchScript ``data.pkl``."""

    _TORCH_FUNCTIONS = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
        **{("torch.jit._pickle", n): _build_list for n in (
            "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "build_genericlist")},
    }

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = self._TORCH_FUNCTIONS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        raise pickle.UnpicklingError(f"refused global {module}.{name} (only tensors are read)")

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and pid[2].isalnum()
                and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}/data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage record data/{key} is missing") from None
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) < numel * itemsize:
                raise pickle.UnpicklingError(f"storage record data/{key} is short (truncated archive?)")
            buffer = bytearray(raw[: numel * itemsize])
            self._storages[key] = torch.frombuffer(buffer, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        return self._storages[key]


def read_torchscript_tensors(path: str | Path) -> dict[str, Tensor]:
    """The tensor attributes of a TorchScript archive's module tree, by dotted name, read with the
    restricted unpickler described in the module docstring (no TorchScript code is loaded)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            data_pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(data_pkl) != 1:
                raise CheckpointError(f"{path}: TorchScript archive without a single data.pkl")
            prefix = data_pkl[0].split("/")[0]
            unpickler = _TorchScriptUnpickler(io.BytesIO(archive.read(data_pkl[0])), archive, prefix)
            root = unpickler.load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError,
            AttributeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read the TorchScript archive's tensors: {exc}") from None
    tensors: dict[str, Tensor] = {}
    _collect_tensors(root, "", tensors, depth=0)
    if not tensors:
        raise CheckpointError(f"{path}: the TorchScript archive holds no tensors")
    return tensors


def _collect_tensors(obj: Any, name: str, out: dict[str, Tensor], depth: int) -> None:
    if depth > 64:
        raise CheckpointError("TorchScript module tree nested too deeply")
    if isinstance(obj, Tensor):
        out[name] = obj
    elif isinstance(obj, _ScriptObject):
        _collect_tensors(obj.__dict__.get("_state"), name, out, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str):
                _collect_tensors(value, f"{name}.{key}" if name else key, out, depth + 1)
