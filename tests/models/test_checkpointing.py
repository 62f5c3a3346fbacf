"""Activation checkpointing (``backbone.checkpointing``): the same gradients, fewer kept activations."""

import pytest
import torch

from co2s.config.loader import load_config
from co2s.errors import ConfigError
from co2s.models.student_factory import build_student


def _student(kind: str, checkpointing: bool):
    backbone = {"kind": kind, "arch": "tiny", "tune": "full", "checkpointing": checkpointing}
    guidance = "text" if kind == "clip" else "queries"
    spec = {"name": kind, "backbone": backbone, "guidance": guidance, **(
        {"text": {"prototypes": "random"}} if kind == "clip" else {})}
    cfg = load_config("demo", ["train.method=supervised", "model.name=students", f"model.students=[{spec!r}]"])
    torch.manual_seed(0)
    return build_student(cfg.model.students[0], cfg.data).train()


def _backbone_activation_bytes(student, x) -> int:
    """Bytes autograd keeps for the backward of a training forward of the backbone alone
    (distinct storages, weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in student.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        student.backbone(student.normalize(x))
    return sum(storages.values())


@pytest.mark.parametrize("kind", ["clip", "dinov3", "dinov2"])
def test_checkpointing_keeps_gradients_and_drops_block_activations(kind):
    plain, checkpointed = _student(kind, False), _student(kind, True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 64)
    loss_plain, loss_ckpt = plain(x).square().mean(), checkpointed(x).square().mean()
    assert torch.equal(loss_plain, loss_ckpt)
    loss_plain.backward()
    loss_ckpt.backward()
    grads = {n: p.grad for n, p in checkpointed.named_parameters() if p.grad is not None}
    assert grads.keys() == {n for n, p in plain.named_parameters() if p.grad is not None}
    assert any(".layers." in n or ".layer." in n for n in grads)  # the blocks' weights do train
    for name, p in plain.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)
    # the blocks' inner activations are not kept, only each block's input
    kept_plain, kept_ckpt = _backbone_activation_bytes(plain, x), _backbone_activation_bytes(checkpointed, x)
    assert kept_ckpt < 0.5 * kept_plain, (kept_ckpt, kept_plain)  # 4 blocks; CLIP keeps its value paths
    # inference and no-grad forwards are untouched
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), checkpointed.eval()(x))


def test_checkpointing_is_for_vits():
    spec = {"name": "cnn", "backbone": {"kind": "cnn", "checkpointing": True}, "guidance": "none"}
    with pytest.raises(ConfigError, match="checkpointing: for ViT backbones"):
        load_config("demo", ["train.method=supervised", "model.name=students", f"model.students=[{spec!r}]"])
