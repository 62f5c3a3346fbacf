"""How much memory a training step or a prediction tile needs: the bytes of live tensors, counted
as torch allocates and frees them, on any device (a CPU run tells what a GPU would hold).

:class:`LiveTensorBytes` is a dispatch mode that sees every tensor an operation returns (forward,
backward and optimiser step alike), counts its storage once while the storage lives, and keeps the
peak per device. Tensors made before the mode is entered are not seen: enter it before the model,
the optimiser and the batches are built. The count is what ``torch.cuda.max_memory_allocated``
reports on a GPU, less the caching allocator's rounding (blocks of 512 bytes) and the workspaces of
CUDA libraries; the CUDA context and allocator fragmentation come on top (docs/memory.md).

Under :func:`fake_tensors` the same code runs on fake tensors: every shape, dtype and storage
size as in the real run, no data and no arithmetic, so the peak of a step too large or too slow
for this machine is estimated in seconds. The step reads tensor values only for its logs and its
finite-loss check (the losses branch on no value), which get stand-ins there (:class:`_NoValues`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Live and peak bytes of the tensors created while the mode is active, per device type."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._storages: dict[int, weakref.ref] = {}

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        seen = self._storages.get(key)
        if seen is not None and seen() is storage:
            return  # a view or an in-place result: the same memory
        device, size = tensor.device.type, storage.nbytes()

        def freed(_, key=key, device=device, size=size) -> None:
            self.live[device] -= size
            self._storages.pop(key, None)

        self._storages[key] = weakref.ref(storage, freed)
        self.live[device] = self.live.get(device, 0) + size
        self.peak[device] = max(self.peak.get(device, 0), self.live[device])

    def __enter__(self):
        # nn.TransformerEncoderLayer's inference fast path is one fused op that fails on mixed dtypes
        # under CPU autocast inside a dispatch mode; the regular path holds the same tensors.
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.backends.mha.set_fastpath_enabled(self._fastpath)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._count(value)
        return out

    def add(self, *tensors: torch.Tensor) -> None:
        """Count tensors made before the mode was entered (e.g. batches already on the device)."""
        for tensor in tensors:
            self._count(tensor)

    def reset_peak(self) -> None:
        """Start a new peak from what is live now (e.g. after building the model)."""
        self.peak = dict(self.live)


class _NoValues(TorchDispatchMode):
    """Values read from fake tensors (``.item()``, ``float()``, ``bool()``, ``.tolist()``): 1, 1.0
    or False. No element is found (``any()``: a rejection-sampling init ends; the finite-loss check,
    which asks whether any value is not finite, passes); counts and steps are 1 (the optimiser's
    bias correction divides by a function of its step)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return False if dtype == torch.bool else 1.0 if dtype.is_floating_point else 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def fake_tensors() -> Iterator[None]:
    """Tensors made inside are fake (torch's FakeTensorMode): real shapes, dtypes and storage
    sizes, no memory and no compute. Modules must be built inside (their parameters fake too)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), _NoValues():
        yield
