"""How much memory a training step or a prediction tile needs: the bytes of live tensors, counted
as torch allocates and frees them, on any device (a CPU run tells what a GPU would hold).

:class:`LiveTensorBytes` is a dispatch mode that sees every tensor an operation returns (forward,
backward and optimiser step alike), counts its storage once while the storage lives, and keeps the
peak per device. Tensors made before the mode is entered are not seen: enter it before the model,
the optimiser and the batches are built. The count is what ``torch.cuda.max_memory_allocated``
reports on a GPU, less the caching allocator's rounding (blocks of 512 bytes) and the workspaces of
CUDA libraries; the CUDA context and allocator fragmentation come on top (docs/memory.md).

:func:`linear_in_batch` extrapolates a peak to larger batches from two measured batch sizes: every
activation scales with the batch (attention is per image), the weights, gradients and optimiser
states do not.
"""

from __future__ import annotations

import weakref

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

    def reset_peak(self) -> None:
        """Start a new peak from what is live now (e.g. after building the model)."""
        self.peak = dict(self.live)


def linear_in_batch(at_1: float, at_2: float, batch: int) -> float:
    """A peak at ``batch`` from the peaks measured at batch 1 and 2."""
    return at_1 + (batch - 1) * (at_2 - at_1)
