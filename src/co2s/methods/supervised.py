"""Supervised baseline: cross-entropy on the labelled crops, nothing else."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from co2s.methods.base import Method
from co2s.models.factory import build_model


class Supervised(Method):
    def __init__(self, config) -> None:
        super().__init__(config)
        t = config.train
        model = build_model(config)
        self.modules["model"] = model
        self.optimizers["model"] = torch.optim.AdamW(model.param_groups(t.lr, t.weight_decay), lr=t.lr)

    def training_loss(self, batch, step, total_steps):
        logits = self.modules["model"](batch["image"])
        loss = F.cross_entropy(logits, batch["mask"], ignore_index=self.config.data.ignore_index)
        return loss, {"loss": loss.detach()}

    def predictors(self):
        return {"model": self.modules["model"]}
