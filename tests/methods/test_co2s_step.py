"""The Co2S step on tiny students: the stability loss couples the students only when its
student side keeps the gradient, and the CutMix source is always a different image."""

import copy

import pytest
import torch

from co2s.config.loader import validate
from co2s.data.dataset import UnlabelledPairs
from co2s.data.sources import read_split
from co2s.methods import Schedule, build_method
from tests.conftest import tiny_config_dict, weak_params


def _co2s_config(root, tmp_path, **semi):
    cfg = tiny_config_dict(root, tmp_path / "run", iters=10)
    cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    cfg["model"] = {"name": "students", "students": [
        {"name": "clip", "backbone": {"kind": "clip", "arch": "tiny", "tune": "full"}, "guidance": "text",
         "text": {"prototypes": "random"}},
        {"name": "dino", "backbone": {"kind": "dinov3", "arch": "tiny", "tune": "full"}, "guidance": "queries"}]}
    cfg["train"].update(method="co2s", semi={"tau": 0.0, **semi})  # tau 0: every pixel is confident
    return validate(cfg)


@pytest.fixture
def unl(tiny_dataset):
    (tiny_dataset / "unl.txt").write_text("images/t4.png\nimages/t5.png\nimages/t0.png\n")
    return tiny_dataset


def _batch(config):
    data = config.data
    weak = weak_params((32, 32))
    pairs = UnlabelledPairs(read_split("unl.txt", data, labelled=False), data, weak)
    from co2s.data.dataset import LabelledCrops

    lab = LabelledCrops(read_split("train.txt", data, labelled=True), data, weak)
    items = [{**lab[(i, 10 + i)], **pairs[(i, 20 + i)]} for i in range(2)]
    return {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor)
            else [it[k] for it in items] for k in items[0]}


def _grads(config, modules, batch, step=5, total=10):
    method = build_method(config)
    method.modules = {k: copy.deepcopy(m) for k, m in modules.items()}
    torch.manual_seed(0)  # same dropout masks in every variant
    losses, logs = method.training_loss(batch, step, Schedule.for_run(config, total))
    sum(losses.values()).backward()
    return {k: torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
            for k, m in method.modules.items()}, logs


def test_stability_gradient_couples_the_students_and_the_reference_switch_does_not(unl, tmp_path):
    on = _co2s_config(unl, tmp_path)
    torch.manual_seed(0)
    modules = build_method(on).modules
    batch = _batch(on)
    g_on, logs = _grads(on, modules, batch)
    g_off, _ = _grads(_co2s_config(unl, tmp_path, stability=False), modules, batch)
    g_ref, logs_ref = _grads(_co2s_config(unl, tmp_path, stability_gradient=False), modules, batch)
    assert logs["lambda"] > 0 and logs["clip/sta"] > 0 and logs["dino/sta"] > 0
    assert logs["clip_teaches"] + logs["dino_teaches"] >= 1.0 - 1e-6  # tau 0: every pixel arbitrated
    for name in ("clip", "dino"):
        assert not torch.allclose(g_on[name], g_off[name])  # L_sta adds a gradient to each student
        torch.testing.assert_close(g_ref[name], g_off[name])  # the released behaviour adds none
    assert logs_ref["clip/sta"] == pytest.approx(logs["clip/sta"])  # same value, no gradient


def test_cutmix_source_is_a_different_image(unl, tmp_path):
    config = _co2s_config(unl, tmp_path)
    samples = read_split("unl.txt", config.data, labelled=False)
    pairs = UnlabelledPairs(samples, config.data, weak_params((32, 32), scale_range=(1.0, 1.0), hflip_p=0))
    partners = {pairs.partner(i, seed) for i in range(3) for seed in range(50)}
    assert all(pairs.partner(i, s) != i for i in range(3) for s in range(50))
    assert partners == {0, 1, 2}  # every image serves as a source for others
    for i in range(3):
        item = pairs[(i, 7)]
        assert not torch.equal(item["u_w"], item["mix_w"])


def test_single_image_unlabelled_split_is_refused(unl, tmp_path):
    from co2s.errors import DataError

    config = _co2s_config(unl, tmp_path)
    with pytest.raises(DataError, match="at least 2 images"):
        UnlabelledPairs(read_split("unl.txt", config.data, labelled=False)[:1], config.data, weak_params((32, 32)))
