"""FixMatch with CutMix (one student, one strong view), as in the UniMatch code base."""

from __future__ import annotations

import torch

from co2s.data.transforms import apply_cutmix
from co2s.methods.base import Method
from co2s.methods.losses import masked_cross_entropy, pseudo_labels, supervised_cross_entropy
from co2s.methods.unimatch import pseudo_label_logs, source_pseudo_labels, supervised_terms


class FixMatch(Method):

    def training_loss(self, batch, step, schedule):
        model, semi = self.model, self.config.train.semi
        x, y, u_w, valid = batch["image"], batch["mask"], batch["u_w"], batch["u_valid"]
        if schedule.in_burn_in(step):  # supervised burn-in: no unlabelled CE
            t = supervised_terms(model, batch, semi.tau, self.config.data,
                                 schedule.measures_unlabelled(step))
            loss = t.sup / 2
            return {self.model_name: loss}, {"loss": loss.detach(), "sup": t.sup.detach(), "s1": t.s1, "burn_in": 1.0,
                                             **t.logs}

        mix_labels, mix_conf = source_pseudo_labels(model, batch["mix_w"])

        pred_x, pred_w = model(torch.cat([x, u_w])).split([len(x), len(u_w)])
        labels_w, conf_w = pseudo_labels(pred_w)

        box = batch["box1"]
        u_s = apply_cutmix(batch["u_s1"], batch["mix_s1"], box)
        pred_s = model(u_s)

        sup = supervised_cross_entropy(pred_x, y, self.config.data.ignore_index)
        unsup = masked_cross_entropy(pred_s, apply_cutmix(labels_w, mix_labels, box),
                                     apply_cutmix(conf_w, mix_conf, box),
                                     apply_cutmix(valid, batch["mix_valid"], box), semi.tau)
        loss = (sup + unsup) / 2
        logs = pseudo_label_logs(labels_w, conf_w, valid, batch.get("u_gt"), semi.tau, self.config.data)
        return {self.model_name: loss}, {"loss": loss.detach(), "sup": sup.detach(), "s1": unsup.detach(),
                                         "burn_in": 0.0, **logs}
