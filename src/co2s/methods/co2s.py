"""Co2S: two heterogeneous students trained with UniMatch terms each, plus the confidence-
arbitrated stability loss through which the confident student teaches the other (SPEC 2.4-2.5).
With ``train.semi.burn_in`` the first part of the run trains the supervised CE alone."""

from __future__ import annotations

import torch

from co2s.methods.base import Method
from co2s.methods.losses import (
    arbitration_masks,
    stability_loss,
    stability_weight,
    teaching_shares,
    unimatch_loss,
)
from co2s.methods.unimatch import student_terms


class Co2S(Method):

    def training_loss(self, batch, step, schedule):
        semi = self.config.train.semi
        a_name, b_name = self.modules  # "global" (CLIP), "local" (DINO)

        # Supervised burn-in (train.semi.burn_in, default none): before it ends only L_sup trains;
        # the unlabelled CE terms and L_sta are zero and lambda stays 0.
        in_burn_in = schedule.in_burn_in(step)

        # Each student's UniMatch terms: supervised, two strong views, feature perturbation (each
        # student's own work: in parallel threads on a CPU, Method.each_model).
        terms = self.each_model(
            lambda model, generator: student_terms(model, batch, semi, self.config.data, schedule, step, generator))
        a, b = terms[a_name], terms[b_name]

        # Arbitration on the weak view: where exactly one student is confident, or both are and
        # one is at least as confident, that one teaches the other. During the burn-in the shares
        # are still logged where the weak view is measured: they say what L_sta would do.
        measured = a.confidence is not None
        if measured:
            a_learns, b_learns = arbitration_masks(a.confidence, b.confidence, semi.tau, batch["u_valid"])
        if in_burn_in:
            sta_a = sta_b = torch.zeros((), device=a.sup.device)
            lam = 0.0
        else:
            detach = not semi.stability_gradient  # True reproduces the released code: no interaction
            sta_a = stability_loss(a.weak_logits, b.weak_logits, a_learns, detach_student=detach)
            sta_b = stability_loss(b.weak_logits, a.weak_logits, b_learns, detach_student=detach)
            # lambda(t) ramps over the iterations after the burn-in (all of them without one).
            lam = (stability_weight(*schedule.after_burn_in(step), semi.stability_weight, semi.stability_ramp)
                   if semi.stability else 0.0)

        loss_a = unimatch_loss(a.sup, a.s1, a.s2, a.fp, semi.loss_weights) + lam * sta_a
        loss_b = unimatch_loss(b.sup, b.s1, b.s2, b.fp, semi.loss_weights) + lam * sta_b
        logs = {"loss": (loss_a + loss_b).detach(), "lambda": lam, "burn_in": float(in_burn_in)}
        if measured:
            shares = teaching_shares(a_learns, b_learns, batch["u_valid"])
            logs.update({f"{b_name}_teaches": shares["dino_teaches"], f"{a_name}_teaches": shares["clip_teaches"],
                         "no_teaching": shares["no_teaching"]})
        for name, t, sta, total in ((a_name, a, sta_a, loss_a), (b_name, b, sta_b, loss_b)):
            logs.update({f"{name}/loss": total.detach(), f"{name}/sup": t.sup.detach(),
                         f"{name}/s1": t.s1.detach(), f"{name}/s2": t.s2.detach(),
                         f"{name}/fp": t.fp.detach(), f"{name}/sta": sta.detach(),
                         **{f"{name}/{k}": v for k, v in t.logs.items()}})
        # L_sta's teacher is detached: no gradient of one student's loss reaches the other.
        return {a_name: loss_a, b_name: loss_b}, logs
