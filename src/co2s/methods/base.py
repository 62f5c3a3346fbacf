"""What the training engine needs from a method: its modules, optimisers, and a loss per batch.

The engine owns the loop (devices, accumulation, schedules, checkpoints, validation); a method
owns what happens to one batch, readable top to bottom in its ``training_loss``.
"""

from __future__ import annotations

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

    def setup(self, fabric) -> None:
        """Move modules and optimisers to Fabric's devices and strategy (DDP, precision...)."""
        for name, module in self.modules.items():
            module, optimizer = fabric.setup(module, self.optimizers[name])
            self.modules[name], self.optimizers[name] = module, optimizer

    def training_loss(self, batch: dict, step: int, schedule: Schedule) -> tuple[torch.Tensor, dict]:
        """Loss to back-propagate for one batch at ``step`` of the run's ``schedule``, and scalars
        to log."""
        raise NotImplementedError

    @property
    def model(self) -> nn.Module:
        """The model of a single-model method."""
        (module,) = self.modules.values()
        return module
