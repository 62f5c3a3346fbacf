"""The random-init CNN student backbone (``backbone.kind: cnn``): map sizes at odd input sizes,
tuning policies, config rules, learning-rate groups and the architecture record a checkpoint
rebuilds it from. The shared model checks (gradients, perturbation stream, export) run it through
tests/models/harness.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from co2s.config.loader import validate
from co2s.errors import ConfigError
from co2s.models.backbones.cnn import CNN_ARCHS, CnnBackbone, cnn_arch
from co2s.models.factory import build_models
from co2s.models.student_factory import build_student
from tests.conftest import tiny_config_dict


def _config(backbone: dict | None = None, guidance: str = "queries", head: str = "vlg", classes: int = 3, **data):
    cfg = tiny_config_dict(Path("cnn-data"), Path("cnn-run"), classes=classes)
    cfg["data"].update(data)
    cfg["model"] = {"name": "students", "students": [
        {"name": "cnn", "backbone": {"kind": "cnn", **(backbone or {})}, "guidance": guidance, "head": head}]}
    return validate(cfg)


def _student(**kwargs):
    config = _config(**kwargs)
    torch.manual_seed(0)
    return build_models(config)["cnn"], config


@pytest.mark.parametrize("size", [(37, 53), (50, 33), (128, 128), (17, 9)])
def test_maps_at_quarter_eighth_sixteenth_of_odd_sizes_and_logits_of_the_input_size(size):
    backbone = CnnBackbone.from_arch("tiny")
    features = backbone(torch.rand(2, 3, *size))
    h, w = size
    expected = []
    for _ in range(4):  # stem and three stride-2 stages: 3x3 convs with padding 1 -> ceil(n / 2)
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        expected.append((h, w))
    widths = CNN_ARCHS["tiny"]["widths"]
    assert [tuple(f.shape[-2:]) for f in features.skips] == expected[1:3]
    assert tuple(features.last.shape[-2:]) == expected[3]
    assert [f.shape[1] for f in features.skips] == widths[:2] and features.last.shape[1] == widths[2]
    assert backbone.skip_dims == tuple(widths[:2]) and backbone.feature_dim == widths[2]
    for head in ("vlg", "deeplabv3plus"):
        student, _ = _student(guidance="queries" if head == "vlg" else "none", head=head)
        with torch.no_grad():
            assert student.eval()(torch.rand(1, 3, *size)).shape == (1, 3, *size)


def test_defaults_are_the_tiny_arch_tuned_full_and_vit_only_settings_are_refused():
    backbone = _config().model.students[0].backbone
    assert (backbone.arch, backbone.tune, backbone.weights) == ("tiny", "full", None)
    for bad, match in [({"tune": "attention"}, "no attention"), ({"weights": "some/file.pt"}, "no pretrained"),
                       ({"layers": [1, 2, 3]}, "takes no layers"), ({"skips": "value"}, "clip backbones only")]:
        with pytest.raises(ConfigError, match=match):
            _config(bad)
    with pytest.raises(ConfigError, match="unknown cnn architecture"):
        _student(backbone={"arch": "huge"})
    with pytest.raises(ConfigError, match="unknown cnn architecture keys"):
        _student(backbone={"arch": {"width": 3}})
    with pytest.raises(ValueError, match="no attention"):
        CnnBackbone.from_arch("tiny").set_tuning("attention")


def test_arch_dict_overrides_a_base():
    assert cnn_arch({"base": "small", "depths": [1, 1, 1]}) == {**CNN_ARCHS["small"], "depths": [1, 1, 1]}
    backbone = CnnBackbone.from_arch({"widths": [8, 16, 32, 48], "depths": [1, 1, 1, 1], "strides": [2, 2, 2, 2]})
    features = backbone(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features.skips] == [16, 32] and features.last.shape[1] == 48
    assert features.last.shape[-1] == 2  # four stride-2 stages after the stem: 1/32
    with pytest.raises(ValueError, match="strides"):  # four widths, the base's three strides
        CnnBackbone.from_arch({"widths": [8, 16, 32, 48], "depths": [1, 1, 1, 1]})


def test_a_stride_one_last_stage_keeps_the_resolution_and_dilates():
    backbone = CnnBackbone.from_arch({"base": "tiny", "strides": [2, 2, 1]})
    features = backbone(torch.rand(2, 3, 37, 53))
    assert [tuple(f.shape[-2:]) for f in features.skips] == [(10, 14), (5, 7)]
    assert tuple(features.last.shape[-2:]) == (5, 7)  # 1/8, as the deeper skip
    last_stage = backbone.stages[-1]
    assert all(block.conv1.dilation == (2, 2) and block.conv2.dilation == (2, 2) for block in last_stage)
    assert backbone.stages[0][0].conv1.dilation == (1, 1)
    student, _ = _student(backbone={"arch": {"base": "tiny", "strides": [2, 2, 1]}})
    with torch.no_grad():
        assert student.eval()(torch.rand(1, 3, 37, 53)).shape == (1, 3, 37, 53)


@pytest.mark.parametrize("policy,last_n", [("full", 0), ("frozen", 0), ("last_n", 2)])
def test_tuning_policies(policy, last_n):
    student, _ = _student(backbone={"tune": policy, "tune_last": last_n})
    blocks = student.backbone.blocks()
    assert blocks[0] is student.backbone.stem and blocks[-1] is student.backbone.project
    assert len(blocks) == 2 + sum(CNN_ARCHS["tiny"]["depths"])
    trainable = [any(p.requires_grad for p in b.parameters()) for b in blocks]
    frozen = [all(not p.requires_grad for p in b.parameters()) for b in blocks]
    if policy == "full":
        assert all(p.requires_grad for p in student.backbone.parameters())
    elif policy == "frozen":
        assert not any(p.requires_grad for p in student.backbone.parameters())
    else:
        assert trainable == [False] * (len(blocks) - 2) + [True, True]
        assert all(frozen[:-2])
    # decoder and queries always train
    assert all(p.requires_grad for p in student.head.parameters())
    assert all(p.requires_grad for p in student.guidance.parameters())


def test_param_groups_scale_backbone_decoder_and_queries():
    cfg = _config(backbone={"lr_mult": 10.0}).model_dump()
    student_cfg = cfg["model"]["students"][0]
    student_cfg.update(decoder_lr_mult=5.0, queries_lr_mult=2.0)
    config = validate({**cfg, "model": cfg["model"]})
    student = build_models(config)["cnn"]
    groups = student.param_groups(1e-3, 0.01)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["backbone"] == pytest.approx(1e-2) and lrs["backbone/no_decay"] == pytest.approx(1e-2)
    assert lrs["decoder"] == pytest.approx(5e-3) and lrs["queries"] == pytest.approx(2e-3)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in student.parameters() if p.requires_grad}
    assert student.guidance.queries.shape == (3, CNN_ARCHS["tiny"]["widths"][-1])


def test_architecture_record_rebuilds_the_same_network_with_more_bands():
    config = _config(bands=[1, 2, 3, 4], backbone={"arch": {"base": "tiny", "stem": 16}})
    assert config.in_channels == 4
    student = build_student(config.model.students[0], config.data, in_channels=4)
    record = student.architecture["backbone"]["arch"]
    assert record == {**CNN_ARCHS["tiny"], "stem": 16, "group_size": 8, "in_channels": 4}
    assert record["strides"] == [2, 2, 2]
    rebuilt = build_student(config.model.students[0], config.data, saved_arch=record, in_channels=4)
    rebuilt.load_state_dict(student.state_dict())
    x = torch.rand(1, 4, 40, 40)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), student.eval()(x))
    assert student.std.numel() == 4  # the fourth band normalised too (mean of the RGB values)


def test_head_width_narrows_the_decoder():
    cfg = _config().model_dump()
    cfg["model"]["students"][0]["head_width"] = 32
    narrow = build_models(validate(cfg))["cnn"]
    wide, _ = _student()
    assert narrow.head.hidden == 32 and wide.head.hidden == 128  # 128: the paper's
    assert narrow.head.classifier.in_channels == 8 and wide.head.classifier.in_channels == 32
    assert sum(p.numel() for p in narrow.head.parameters()) < sum(p.numel() for p in wide.head.parameters()) / 8
    dl_cfg = _config(guidance="none", head="deeplabv3plus").model_dump()
    dl_cfg["model"]["students"][0]["head_width"] = 32
    dl = build_models(validate(dl_cfg))["cnn"]
    assert dl.head.classifier.in_channels == 64 and dl.head.fuse_scale is None
    with torch.no_grad():
        assert narrow.eval()(torch.rand(1, 3, 37, 53)).shape == dl.eval()(torch.rand(1, 3, 37, 53)).shape == (1, 3, 37, 53)
