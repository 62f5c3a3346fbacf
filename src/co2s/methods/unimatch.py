"""UniMatch (one student): weak-to-strong consistency on two CutMixed strong views plus a
feature-perturbation stream (SPEC 2.4). ``unimatch_terms`` is the per-student part that Co2S
runs for each of its students; ``supervised_terms`` replaces it during a supervised burn-in
(``train.semi.burn_in``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from co2s.data.transforms import apply_cutmix
from co2s.methods.base import Method
from co2s.methods.losses import (
    masked_cross_entropy,
    pseudo_labels,
    supervised_cross_entropy,
    unimatch_loss,
)


@dataclass
class StudentTerms:
    sup: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    fp: torch.Tensor
    # The student's own logits on u_w, with their gradient (for L_sta), and their detached
    # confidence; None on the burn-in steps that do not measure the unlabelled images.
    weak_logits: torch.Tensor | None
    confidence: torch.Tensor | None
    logs: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def source_pseudo_labels(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and confidences of the CutMix source images, predicted in eval mode."""
    model.eval()
    labels, conf = pseudo_labels(model(images))
    model.train()
    return labels, conf


def unimatch_terms(model, batch: dict, tau: float, fp_dropout: float, data,
                   generator: torch.Generator | None = None) -> StudentTerms:
    """Every loss term of one student on one batch, top to bottom as in SPEC 2.4 (the feature
    perturbation's dropout drawn from ``generator``; ``data``: the data config, for its
    ``ignore_index`` and ``classes``)."""
    x, y, u_w, valid = batch["image"], batch["mask"], batch["u_w"], batch["u_valid"]

    # 1. Pseudo-labels of the CutMix source u' (a different batch): eval mode, no gradient.
    mix_labels, mix_conf = source_pseudo_labels(model, batch["mix_w"])

    # 2. One forward of [x, u_w], with the feature-perturbation stream (dropout2d on every map).
    logits, logits_fp = model(torch.cat([x, u_w]), perturb_features=True, dropout=fp_dropout, generator=generator)
    pred_x, pred_w = logits.split([len(x), len(u_w)])
    pred_w_fp = logits_fp[len(x):]
    labels_w, conf_w = pseudo_labels(pred_w)  # detached

    # 3. CutMix the strong views with u' and mix labels, confidences and validity the same way.
    mixed = {}
    for i in ("1", "2"):
        box = batch[f"box{i}"]
        mixed[i] = (
            apply_cutmix(batch[f"u_s{i}"], batch[f"mix_s{i}"], box),
            apply_cutmix(labels_w, mix_labels, box),
            apply_cutmix(conf_w, mix_conf, box),
            apply_cutmix(valid, batch["mix_valid"], box),
        )

    # 4. One forward of both strong views.
    pred_s1, pred_s2 = model(torch.cat([mixed["1"][0], mixed["2"][0]])).chunk(2)

    # 5. Losses: supervised CE; strong and feature-perturbed CE against the confident pseudo-labels,
    #    divided by the number of valid pixels.
    sup = supervised_cross_entropy(pred_x, y, data.ignore_index)
    s1 = masked_cross_entropy(pred_s1, *mixed["1"][1:], tau)
    s2 = masked_cross_entropy(pred_s2, *mixed["2"][1:], tau)
    fp = masked_cross_entropy(pred_w_fp, labels_w, conf_w, valid, tau)
    return StudentTerms(sup, s1, s2, fp, pred_w, conf_w,
                        pseudo_label_logs(labels_w, conf_w, valid, batch.get("u_gt"), tau, data))


def supervised_terms(model, batch: dict, tau: float, data, measure: bool = True) -> StudentTerms:
    """The burn-in step of one student: the supervised CE only. The unsupervised terms are zeros
    without a graph (s1, s2, fp: nothing is forwarded for them). With ``measure``
    (:meth:`Schedule.measures_unlabelled`) the weak view is forwarded without gradient, only for the
    logs (confident ratio, pseudo-label accuracy) and the arbitration shares; nothing unlabelled
    reaches the loss."""
    x, y, u_w, valid = batch["image"], batch["mask"], batch["u_w"], batch["u_valid"]
    sup = supervised_cross_entropy(model(x), y, data.ignore_index)
    zero = torch.zeros((), device=sup.device, dtype=sup.dtype)
    if not measure:
        return StudentTerms(sup, zero, zero, zero, None, None)
    with torch.no_grad():
        pred_w = model(u_w)
    labels_w, conf_w = pseudo_labels(pred_w)
    return StudentTerms(sup, zero, zero, zero, pred_w, conf_w,
                        pseudo_label_logs(labels_w, conf_w, valid, batch.get("u_gt"), tau, data))


#: the per-class confident ratio's key: ``confident_ratio:<class>`` (read by co2s.engine.metrics_log)
CONFIDENT_BY_CLASS = "confident_ratio:"


def pseudo_label_logs(labels, conf, valid, gt, tau, data) -> dict[str, float]:
    """Confident-pixel ratio, overall and of each class's pseudo-labels (``confident_ratio:<class>``,
    for the classes pseudo-labelled at all in the batch), and, where the unlabelled images have
    masks on disk, pseudo-label accuracy (a diagnostic: the masks never reach a loss).

    The per-class ratio tells a class the unlabelled terms never teach: only confident pixels
    count in them, and a class that is predicted but never confident (a rare class, or one the
    students confuse) gets no pseudo-labels while the others get many."""
    valid = valid.bool()
    confident = valid & (conf >= tau)
    counts = [valid.sum(), confident.sum()]
    if gt is not None:
        known, right = valid & (gt != data.ignore_index), labels == gt
        counts += [known.sum(), (known & right).sum(), (known & confident).sum(), (known & confident & right).sum()]
    # per class: pixels pseudo-labelled with it, and those confident (index_add_: no device sync)
    k, flat = len(data.classes), labels.flatten()
    by_class = torch.zeros(2, k, dtype=torch.long, device=labels.device)
    by_class[0].index_add_(0, flat, valid.flatten().long())
    by_class[1].index_add_(0, flat, confident.flatten().long())
    # one read of the device per step, after the losses are queued
    values = torch.cat([torch.stack(counts), by_class.flatten()]).tolist()
    head, labelled, confident_k = values[:-2 * k], values[-2 * k:-k], values[-k:]
    n_valid, n_confident, *known_counts = head
    logs = {"confident_ratio": n_confident / max(n_valid, 1)}
    logs.update({f"{CONFIDENT_BY_CLASS}{name}": c / n for name, n, c in zip(data.classes, labelled, confident_k) if n})
    if known_counts:
        n_known, n_right, n_known_confident, n_confident_right = known_counts
        if n_known:
            logs["pseudo_label_acc"] = n_right / n_known
        if n_known_confident:
            logs["pseudo_label_acc_confident"] = n_confident_right / n_known_confident
    return logs


def student_terms(model, batch: dict, semi, data, schedule, step: int,
                  generator: torch.Generator | None = None) -> StudentTerms:
    """One student's terms at ``step``: every UniMatch term, or during the burn-in the supervised
    one alone (with the weak view's diagnostics where the schedule measures them)."""
    if schedule.in_burn_in(step):
        return supervised_terms(model, batch, semi.tau, data, schedule.measures_unlabelled(step))
    return unimatch_terms(model, batch, semi.tau, semi.fp_dropout, data, generator)


class UniMatch(Method):

    def training_loss(self, batch, step, schedule):
        semi = self.config.train.semi
        burn_in = schedule.in_burn_in(step)
        (name, t), = self.each_model(
            lambda model, generator: student_terms(model, batch, semi, self.config.data, schedule,
                                                   step, generator)).items()
        loss = unimatch_loss(t.sup, t.s1, t.s2, t.fp, semi.loss_weights)
        return {name: loss}, {"loss": loss.detach(), "sup": t.sup.detach(), "s1": t.s1.detach(),
                      "s2": t.s2.detach(), "fp": t.fp.detach(), "burn_in": float(burn_in), **t.logs}
