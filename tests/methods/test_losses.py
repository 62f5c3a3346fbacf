import math

import pytest
import torch

from co2s.config.schema import LossWeightsConfig
from co2s.methods.losses import (
    arbitration_masks,
    masked_cross_entropy,
    pseudo_labels,
    stability_loss,
    stability_weight,
    supervised_cross_entropy,
    teaching_shares,
    unimatch_loss,
)


def logits_from_probs(pixels):
    """[1, K, 1, N] logits whose softmax is exactly the given per-pixel probabilities."""
    p = torch.tensor(pixels, dtype=torch.float64).T  # [K, N]
    return p.log().float().reshape(1, p.shape[0], 1, p.shape[1])


# Seven pixels, tau = 0.7: the cases of the arbitration rule, in this order.
CONF_CLIP = [0.9, 0.8, 0.8, 0.9, 0.3, 0.3, 0.9]
CONF_DINO = [0.8, 0.9, 0.8, 0.3, 0.9, 0.4, 0.8]
VALID = [True, True, True, True, True, True, False]
#            clip>dino  dino>clip  tie   only clip  only dino  neither  invalid
CLIP_LEARNS = [False, True, True, False, True, False, False]
DINO_LEARNS = [True, False, True, True, False, False, False]


def _row(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype).reshape(1, 1, -1)


def test_arbitration_truth_table():
    clip_learns, dino_learns = arbitration_masks(
        _row(CONF_CLIP), _row(CONF_DINO), 0.7, valid=_row(VALID, torch.bool)
    )
    assert clip_learns.dtype == torch.bool and clip_learns.shape == (1, 1, 7)
    assert clip_learns.flatten().tolist() == CLIP_LEARNS
    assert dino_learns.flatten().tolist() == DINO_LEARNS


def test_arbitration_without_valid_and_threshold_inclusive():
    clip_learns, dino_learns = arbitration_masks(_row(CONF_CLIP), _row(CONF_DINO), 0.7)
    assert clip_learns.flatten().tolist() == CLIP_LEARNS[:6] + [False]
    assert dino_learns.flatten().tolist() == DINO_LEARNS[:6] + [True]
    # A confidence equal to tau counts as confident.
    clip_learns, dino_learns = arbitration_masks(_row([0.75]), _row([0.5]), 0.75)
    assert clip_learns.flatten().tolist() == [False]
    assert dino_learns.flatten().tolist() == [True]


def test_teaching_shares():
    clip_learns, dino_learns = arbitration_masks(
        _row(CONF_CLIP), _row(CONF_DINO), 0.7, valid=_row(VALID, torch.bool)
    )
    shares = teaching_shares(clip_learns, dino_learns, _row(VALID, torch.bool))
    # 6 valid pixels: clip learns at 3 of them, dino at 3, nobody at 1 (the tie counts in both).
    assert shares == pytest.approx({"dino_teaches": 3 / 6, "clip_teaches": 3 / 6, "no_teaching": 1 / 6})
    assert all(isinstance(v, float) for v in shares.values())
    empty = teaching_shares(clip_learns, dino_learns, torch.zeros(1, 1, 7, dtype=torch.bool))
    assert empty == {"dino_teaches": 0.0, "clip_teaches": 0.0, "no_teaching": 0.0}


STUDENT = [[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]
TEACHER = [[0.1, 0.6, 0.3], [0.25, 0.5, 0.25], [0.6, 0.2, 0.2], [0.8, 0.1, 0.1]]
MASK = torch.tensor([True, True, False, False]).reshape(1, 1, 4)


def test_stability_loss_hand_worked():
    loss = stability_loss(logits_from_probs(STUDENT), logits_from_probs(TEACHER), MASK)
    pixel0 = ((0.7 - 0.1) ** 2 + (0.2 - 0.6) ** 2 + (0.1 - 0.3) ** 2) / 3
    pixel1 = ((0.5 - 0.25) ** 2 + (0.25 - 0.5) ** 2 + (0.25 - 0.25) ** 2) / 3
    expected = (pixel0 + pixel1) / 2  # = 0.685 / 6
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.685 / 6)


def test_stability_loss_gradient_reaches_student_only():
    student = logits_from_probs(STUDENT).requires_grad_()
    teacher = logits_from_probs(TEACHER).requires_grad_()
    loss = stability_loss(student, teacher, MASK)
    loss.backward()
    assert teacher.grad is None
    grad = student.grad[0, :, 0, :]  # [K, N]
    assert (grad[:, :2].abs().sum(dim=0) > 0).all()
    assert torch.equal(grad[:, 2:], torch.zeros_like(grad[:, 2:]))


def test_stability_loss_detach_student_gives_no_gradient():
    student = logits_from_probs(STUDENT).requires_grad_()
    teacher = logits_from_probs(TEACHER).requires_grad_()
    loss = stability_loss(student, teacher, MASK, detach_student=True)
    assert not loss.requires_grad
    assert loss.grad_fn is None
    # Same value, only the gradient differs.
    assert loss.item() == pytest.approx(0.685 / 6, abs=1e-6)


def test_stability_loss_empty_mask():
    student = logits_from_probs(STUDENT).requires_grad_()
    teacher = logits_from_probs(TEACHER)
    empty = torch.zeros(1, 1, 4, dtype=torch.bool)
    loss = stability_loss(student, teacher, empty)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))
    detached = stability_loss(student, teacher, empty, detach_student=True)
    assert detached.item() == 0.0 and not detached.requires_grad


def test_masked_cross_entropy_divides_by_valid_pixels():
    # a: confident, label 0, p=0.8; b: confident, label 1, p=0.75;
    # c: valid but not confident; d: invalid, label 255.
    logits = logits_from_probs([[0.8, 0.2], [0.25, 0.75], [0.5, 0.5], [0.9, 0.1]]).requires_grad_()
    labels = torch.tensor([0, 1, 0, 255]).reshape(1, 1, 4)
    confidence = torch.tensor([0.9, 0.8, 0.5, 0.99]).reshape(1, 1, 4)
    valid = torch.tensor([True, True, True, False]).reshape(1, 1, 4)
    loss = masked_cross_entropy(logits, labels, confidence, valid, tau=0.7)
    ce_a, ce_b = -math.log(0.8), -math.log(0.75)
    assert loss.item() == pytest.approx((ce_a + ce_b) / 3, abs=1e-6)
    assert loss.item() != pytest.approx((ce_a + ce_b) / 2, abs=1e-3)
    loss.backward()
    assert torch.equal(logits.grad[..., 2:], torch.zeros_like(logits.grad[..., 2:]))


def test_masked_cross_entropy_no_valid_pixel():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.full((1, 2, 2), 255)
    loss = masked_cross_entropy(logits, labels, torch.ones(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool), 0.5)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_pseudo_labels():
    logits = logits_from_probs([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]).requires_grad_()
    labels, confidence = pseudo_labels(logits)
    assert labels.dtype == torch.int64
    assert labels.flatten().tolist() == [1, 0]
    assert confidence.flatten().tolist() == pytest.approx([0.7, 0.6], abs=1e-6)
    assert not confidence.requires_grad


def test_supervised_cross_entropy():
    logits = logits_from_probs([[0.8, 0.2], [0.25, 0.75], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 255]).reshape(1, 1, 3)
    loss = supervised_cross_entropy(logits, labels)
    assert loss.item() == pytest.approx((-math.log(0.8) - math.log(0.75)) / 2, abs=1e-6)
    logits.requires_grad_()
    all_ignored = supervised_cross_entropy(logits, torch.full((1, 1, 3), 255))
    assert all_ignored.item() == 0.0
    all_ignored.backward()


def test_unimatch_loss_weights():
    sup, s1, s2, fp = (torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0))
    # The config's defaults are UniMatch's: 0.5 * (1 * 1 + 0.25 * 2 + 0.25 * 3 + 0.5 * 4).
    assert unimatch_loss(sup, s1, s2, fp, LossWeightsConfig()).item() == pytest.approx(2.125)
    custom = LossWeightsConfig(sup=1.0, s1=0.0, s2=0.0, fp=0.0, scale=1.0)
    assert unimatch_loss(sup, s1, s2, fp, weights=custom).item() == pytest.approx(1.0)


def test_stability_weight_ramp():
    # total 100, fraction 0.2 -> ramp over 20 steps
    assert stability_weight(0, 100, 0.5, 0.2) == 0.0
    assert stability_weight(5, 100, 0.5, 0.2) == pytest.approx(0.25 * (1 - math.sqrt(2) / 2))
    assert stability_weight(10, 100, 0.5, 0.2) == pytest.approx(0.25)
    assert stability_weight(20, 100, 0.5, 0.2) == pytest.approx(0.5)
    assert stability_weight(99, 100, 0.5, 0.2) == pytest.approx(0.5)
    ramp = [stability_weight(s, 100, 0.5, 0.2) for s in range(21)]
    assert all(a < b for a, b in zip(ramp, ramp[1:]))
    assert stability_weight(19, 100, 0.5, 0.2) < 0.5
    assert stability_weight(0, 100, 0.5, ramp_fraction=0.0) == 0.5
    assert stability_weight(0, 100, max_weight=1.0, ramp_fraction=0.0) == 1.0
