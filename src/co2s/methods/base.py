"""What the training engine needs from a method: its modules, optimisers, and a loss per model
per batch.

The engine owns the loop (devices, accumulation, schedules, checkpoints, validation); a method
owns what happens to one batch, readable top to bottom in its ``training_loss``. Work that is each
model's alone (a student's forward terms, its backward pass) goes through :meth:`Method.each_model`
and :meth:`Method.backward`, which run it in parallel threads on a CPU (:func:`model_threads`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from co2s.config.schema import METHOD_FACTS
from co2s.methods.schedule import Schedule
from co2s.models.factory import build_models


class Method:
    """A training method; what it needs of the data and how many models it trains are its
    ``METHOD_FACTS`` (``co2s.config.schema``), which the config validates with first."""

    def __init__(self, config, lr_scale: float = 1.0) -> None:
        """The config's models (``model``, or students by name), one AdamW each."""
        self.config = config
        facts = METHOD_FACTS[config.train.method]
        self.uses_unlabelled, self.num_models = facts.uses_unlabelled, facts.models
        t = config.train
        self.modules: dict[str, nn.Module] = build_models(config)
        if len(self.modules) != self.num_models:
            raise ValueError(f"{type(self).__name__} trains {self.num_models} model(s), the config gives "
                             f"{len(self.modules)}: {list(self.modules)}")
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            name: torch.optim.AdamW(model.param_groups(t.lr * lr_scale, t.weight_decay), lr=t.lr * lr_scale)
            for name, model in self.modules.items()
        }
        self._fabric = None
        self._threads = 0  # torch threads per model when they run in parallel (setup decides)
        self._threads_outside = 0  # torch threads outside the models' own work (running sets it)
        self._pool: ThreadPoolExecutor | None = None

    def setup(self, fabric) -> None:
        """Move modules and optimisers to Fabric's devices and strategy (DDP, precision...)."""
        for name, module in self.modules.items():
            module, optimizer = fabric.setup(module, self.optimizers[name])
            self.modules[name], self.optimizers[name] = module, optimizer
        self._fabric = fabric
        self._threads = model_threads(fabric, self.modules, self.config.train.parallel_models)

    @property
    def parallel(self) -> dict | None:
        """How the models' own work runs, for the run's record: ``{"models", "threads_per_model"}``
        in parallel threads, None one model after the other (:func:`model_threads`)."""
        return {"models": len(self.modules), "threads_per_model": self._threads} if self._threads else None

    @contextmanager
    def running(self) -> Iterator[None]:
        """The training loop's context: with parallel models, a thread per model and torch's
        intra-op threads shared among them (restored after)."""
        if not self._threads:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        self._threads_outside = before
        self._pool = ThreadPoolExecutor(len(self.modules), thread_name_prefix="co2s-model")
        try:
            yield
        finally:
            self._pool.shutdown()
            self._pool = None
            torch.set_num_threads(before)

    @contextmanager
    def all_threads(self) -> Iterator[None]:
        """Inside :meth:`running`, torch's threads given back whole for work that runs the models
        one after the other (validation), and shared again after."""
        if self._pool is None:
            yield
            return
        torch.set_num_threads(self._threads_outside)
        try:
            yield
        finally:
            torch.set_num_threads(self._threads)

    def each_model(self, work: Callable[[nn.Module, torch.Generator], Any]) -> dict[str, Any]:
        """``work(model, generator)`` for every model, by name: in parallel threads inside
        :meth:`running` when :func:`model_threads` allows, else one after the other. Each call gets
        its own generator for its random draws, seeded from torch's global one here, in order:
        the same seed gives the same run either way."""
        seeds = torch.randint(0, 2**62, (len(self.modules),)).tolist()
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        items = list(zip(self.modules.values(), generators))
        if self._pool is None:
            results = [work(model, g) for model, g in items]
        else:
            results = list(self._pool.map(lambda item: work(*item), items))
        return dict(zip(self.modules, results))

    def backward(self, losses: dict[str, torch.Tensor], scale: float = 1.0) -> None:
        """Back-propagate each model's loss (times ``scale``): their graphs are disjoint, so in
        parallel threads as :meth:`each_model` runs."""
        fabric = self._fabric
        if self._pool is None:
            for loss in losses.values():
                fabric.backward(loss * scale)
        else:
            list(self._pool.map(lambda loss: fabric.backward(loss * scale), losses.values()))

    def training_loss(self, batch: dict, step: int, schedule: Schedule) -> tuple[dict[str, torch.Tensor], dict]:
        """Each model's loss to back-propagate for one batch at ``step`` of the run's
        ``schedule`` (by model name; no gradient of one reaches another model), and scalars to
        log."""
        raise NotImplementedError

    @property
    def model(self) -> nn.Module:
        """The model of a single-model method."""
        (module,) = self.modules.values()
        return module

    @property
    def model_name(self) -> str:
        """The name of a single-model method's model (the key of its loss)."""
        (name,) = self.modules
        return name


def draws_random_numbers(module: nn.Module) -> bool:
    """Whether ``module`` draws random numbers of its own in training: a dropout layer with
    ``p > 0``, or a Hugging Face model whose config asks for dropout or drop-path. Those draws come
    from torch's global generator, in whatever order parallel threads reach them."""
    dropouts = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
    for m in module.modules():
        if isinstance(m, dropouts) and m.p > 0:
            return True
        config = getattr(m, "config", None)
        if hasattr(config, "to_dict") and _asks_for_dropout(config.to_dict()):
            return True
    return False


def _asks_for_dropout(values: dict) -> bool:
    for key, value in values.items():
        if isinstance(value, dict) and _asks_for_dropout(value):
            return True
        named = isinstance(key, str) and ("dropout" in key or "drop_path" in key)
        if named and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return True
    return False


def model_threads(fabric, modules: dict[str, nn.Module], enabled: bool = True) -> int:
    """torch threads per model when the models' own work runs in parallel threads, 0 when it runs
    one model after the other.

    On a CPU two small students gain little from torch's intra-op threads and more from running
    side by side, one thread each (the demo's pair on 2 cores: a burn-in step 0.166 s one after
    the other, 0.127 s side by side; a Co2S step 0.696 s against 0.603 s; docs/training.md). So: with ``train.parallel_models``, several models, one process on a CPU
    with at least one torch thread per model, and no random draws inside the models (the
    feature-perturbation dropout draws from :meth:`Method.each_model`'s generators). On a GPU the
    kernels of one model already fill the device."""
    n, threads = len(modules), torch.get_num_threads()
    if not enabled or n < 2 or fabric.device.type != "cpu" or fabric.world_size > 1 or threads < n:
        return 0
    if any(draws_random_numbers(m) for m in modules.values()):
        return 0
    return threads // n
