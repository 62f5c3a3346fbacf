"""Supervised baseline: cross-entropy on the labelled crops, nothing else."""

from __future__ import annotations

from co2s.methods.base import Method
from co2s.methods.losses import supervised_cross_entropy


class Supervised(Method):
    def training_loss(self, batch, step, schedule):
        logits = self.model(batch["image"])
        loss = supervised_cross_entropy(logits, batch["mask"], self.config.data.ignore_index)
        return {self.model_name: loss}, {"loss": loss.detach()}
