"""Checks every segmentation model must pass, run over the built-in CNN and the tiny CLIP, DINOv3
and DINOv2 students with each head (tests/models/harness.py); the ONNX equivalence of the same
cases is in tests/inference/test_onnx.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from co2s.inference.segmenter import Segmenter
from co2s.models.backbones.base import ATTENTION_NAMES
from tests.models.harness import (
    MODEL_CASES,
    NUM_CLASSES,
    ODD_SIZES,
    SEGMENTER_CASES,
    build_model,
    build_segmenter,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("case", [c.param for c in MODEL_CASES])
def test_odd_input_sizes_give_finite_logits_of_the_input_size(case):
    model = build_model(case)
    for height, width in ODD_SIZES:
        with torch.no_grad():
            logits = model(torch.rand(2, 3, height, width))
        assert logits.shape == (2, NUM_CLASSES, height, width), (height, width)
        assert torch.isfinite(logits).all(), (height, width)


@pytest.mark.parametrize("case", [c.param for c in MODEL_CASES])
def test_feature_perturbation_stream(case):
    """Two outputs of the input's shape; the clean one is the plain forward; the perturbed one
    differs when dropout acts and equals the clean one at dropout 0 (eval mode: no other noise)."""
    model = build_model(case)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        plain = model(x)
        out = model(x, perturb_features=True)
        still = model(x, perturb_features=True, dropout=0.0)
    assert isinstance(out, tuple) and len(out) == 2
    clean, perturbed = out
    assert clean.shape == perturbed.shape == (2, NUM_CLASSES, 48, 48)
    assert torch.isfinite(perturbed).all()
    torch.testing.assert_close(clean, plain, rtol=1e-5, atol=1e-5)
    assert (clean - perturbed).abs().max() > 1e-4, "dropout2d on the features changed nothing"
    torch.testing.assert_close(still[0], still[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in MODEL_CASES])
def test_gradients_reach_every_trainable_parameter_and_no_frozen_one(case):
    model = build_model(case).train()
    x = torch.rand(2, 3, 48, 48)
    y = torch.randint(0, NUM_CLASSES, (2, 48, 48))
    clean, perturbed = model(x, perturb_features=True)
    (F.cross_entropy(clean, y) + F.cross_entropy(perturbed, y)).backward()
    named = dict(model.named_parameters())
    missing = [n for n, p in named.items() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without a gradient: {missing}"
    zero_or_bad = [n for n, p in named.items() if p.requires_grad and not (
        torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0)]
    assert not zero_or_bad, f"zero or non-finite gradients: {zero_or_bad}"
    leaked = [n for n, p in named.items() if not p.requires_grad and p.grad is not None]
    assert not leaked, f"frozen parameters with a gradient: {leaked}"
    if case.tune == "attention":
        backbone = {n: p for n, p in named.items() if n.startswith("backbone.")}
        trainable = [n for n, p in backbone.items() if p.requires_grad]
        assert trainable and len(trainable) < len(backbone)
        # only q, k, v and output projections train (whole names: e.g. ".self_attn.k_proj.weight")
        assert all(any(f".{a}." in n for a in ATTENTION_NAMES) for n in trainable), trainable


@pytest.mark.parametrize("case", [c.param for c in MODEL_CASES])
def test_param_groups_hold_exactly_the_trainable_parameters_once(case):
    model = build_model(case)
    groups = model.param_groups(1e-3, 1e-4)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}), "a parameter is in two groups"
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(g["lr"] > 0 and g["params"] for g in groups)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        if g["weight_decay"] == 0:  # the no-decay groups: biases, norms and other 1-d parameters
            continue
        assert all(p.ndim > 1 and not names[id(p)].endswith(".bias") for p in g["params"])
    torch.optim.AdamW(groups)  # a valid optimiser spec


@pytest.mark.parametrize("case", [c.param for c in SEGMENTER_CASES])
def test_export_and_load_round_trip_gives_identical_logits(case, tmp_path):
    segmenter = build_segmenter(case)
    segmenter.save_pretrained(tmp_path / "exported")
    loaded = Segmenter.load(tmp_path / "exported")
    assert loaded.prediction == segmenter.prediction and list(loaded.models) == list(segmenter.models)
    assert not loaded.training
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        for name, model in segmenter.models.items():
            assert torch.equal(loaded.models[name](x), model(x)), name
        assert torch.equal(loaded(x), segmenter(x))
