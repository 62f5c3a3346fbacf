"""The supervised burn-in (``train.semi.burn_in``): before it ends only the supervised CE trains
(the unlabelled CE terms and the stability loss are zero, lambda is 0); after it every term acts and
lambda ramps from the burn-in's end. tau 0 makes every pixel confident, so without the switch the
unlabelled terms could not be zero."""

from __future__ import annotations

import copy

import pytest
import torch

from co2s.errors import ConfigError
from co2s.methods import Schedule, build_method
from co2s.methods.losses import stability_weight, supervised_cross_entropy
from tests.methods.test_co2s_step import _batch, _co2s_config, unl  # noqa: F401  (unl: a fixture)

TOTAL = 10


def _loss_and_grads(config, modules, batch, step):
    method = build_method(config)
    method.modules = {k: copy.deepcopy(m) for k, m in modules.items()}
    torch.manual_seed(0)
    losses, logs = method.training_loss(batch, step, Schedule.for_run(config, TOTAL))
    loss = sum(losses.values())
    loss.backward()
    grads = {k: [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in m.parameters()]
             for k, m in method.modules.items()}
    return loss, logs, grads, method.modules


def test_the_burn_in_is_a_rounded_fraction_of_the_run_for_methods_with_unlabelled_images(unl, tmp_path):
    def burn_in(fraction, total):
        return Schedule.for_run(_co2s_config(unl, tmp_path, burn_in=fraction), total).burn_in

    assert [burn_in(f, 10) for f in (0.0, 0.25, 0.5, 1.0)] == [0, 2, 5, 10]
    assert burn_in(0.5, 0) == 0
    supervised = _co2s_config(unl, tmp_path, burn_in=0.5).override(
        {"train.method": "supervised", "model": {"name": "lite_unet"}})
    assert Schedule.for_run(supervised, 10).burn_in == 0  # no unlabelled images: nothing to burn in
    schedule = Schedule(10, 3)
    assert [schedule.in_burn_in(s) for s in (0, 2, 3, 9)] == [True, True, False, False]
    assert schedule.after_burn_in(5) == (2, 7)
    with pytest.raises(ValueError):
        Schedule(4, 5)


def test_burn_in_fraction_is_checked(unl, tmp_path):
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="burn_in"):
            _co2s_config(unl, tmp_path, burn_in=bad)


def test_co2s_trains_only_the_supervised_terms_before_the_burn_in_ends(unl, tmp_path):
    plain, burn = _co2s_config(unl, tmp_path), _co2s_config(unl, tmp_path, burn_in=0.5)
    torch.manual_seed(0)
    modules = build_method(plain).modules
    batch = _batch(plain)
    names = list(modules)

    # Without the switch, at the same step, every unlabelled term acts (tau 0: all pixels confident).
    _, logs, _, _ = _loss_and_grads(plain, modules, batch, step=2)
    assert logs["burn_in"] == 0.0 and logs["lambda"] > 0
    for n in names:
        assert logs[f"{n}/s1"] > 0 and logs[f"{n}/s2"] > 0 and logs[f"{n}/fp"] > 0 and logs[f"{n}/sta"] > 0

    # In the burn-in: a step gives zeros for them, and the gradient is exactly the one of the
    # weighted supervised CE alone. Step 3 closes a log window (log_every 2): its diagnostics are
    # measured.
    assert Schedule.for_run(burn, TOTAL).measures_unlabelled(3)
    loss, logs, grads, copies = _loss_and_grads(burn, modules, batch, step=3)
    assert logs["burn_in"] == 1.0 and logs["lambda"] == 0.0
    for n in names:
        assert logs[f"{n}/s1"] == logs[f"{n}/s2"] == logs[f"{n}/fp"] == logs[f"{n}/sta"] == 0.0
        assert logs[f"{n}/sup"] > 0
        assert logs[f"{n}/confident_ratio"] == 1.0  # the diagnostics are still logged
    assert logs[f"{names[0]}_teaches"] + logs[f"{names[1]}_teaches"] > 0  # shares: what L_sta would do
    weights = burn.train.semi.loss_weights
    expected_loss = 0
    for n in names:
        model = copy.deepcopy(modules[n])
        sup = weights.scale * weights.sup * supervised_cross_entropy(model(batch["image"]), batch["mask"])
        sup.backward()
        expected_loss = expected_loss + sup.detach()
        for p, g in zip(model.parameters(), grads[n]):
            expected = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-5, atol=1e-6)

    # After the burn-in (5 of 10 steps) every term acts again, lambda ramping from the burn-in's end.
    _, logs, _, _ = _loss_and_grads(burn, modules, batch, step=5)
    assert logs["burn_in"] == 0.0 and logs["lambda"] == 0.0  # first step after: the ramp starts at 0
    _, logs, _, _ = _loss_and_grads(burn, modules, batch, step=7)
    assert logs["lambda"] == pytest.approx(stability_weight(2, 5, 0.5, 0.2)) and logs["lambda"] > 0
    for n in names:
        assert logs[f"{n}/s1"] > 0 and logs[f"{n}/fp"] > 0 and logs[f"{n}/sta"] > 0


def _forwards_per_module(method) -> dict[str, list[int]]:
    """The batch size of every forward of each of ``method``'s models, as they happen."""
    calls: dict[str, list[int]] = {name: [] for name in method.modules}
    for name, module in method.modules.items():
        module.register_forward_hook(lambda m, args, out, name=name: calls[name].append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("method", ["co2s", "unimatch", "fixmatch"])
def test_burn_in_steps_forward_the_unlabelled_images_only_when_a_log_window_closes(unl, tmp_path, method):
    """The weak-view forward of the burn-in feeds only the logs: it runs on the step that closes
    each log window and nowhere else, and the loss is the same either way."""
    config = _co2s_config(unl, tmp_path, burn_in=0.5)
    if method != "co2s":
        config = config.override({"train.method": method, "model.students": [config.model.students[1].model_dump()]})
    schedule = Schedule.for_run(config, TOTAL)  # burn-in: steps 0-4; log_every 2
    assert [schedule.closes_log_window(s) for s in range(TOTAL)] == [False, True] * 5
    assert [schedule.measures_unlabelled(s) for s in range(TOTAL)] == [False, True, False, True, False] + [True] * 5
    assert Schedule(7, 7, log_every=3).closes_log_window(6)  # the last step always closes one
    torch.manual_seed(0)
    method_ = build_method(config)
    batch = _batch(config)
    calls = _forwards_per_module(method_)
    losses = {}
    for step in (2, 3):  # 2: not measured; 3: closes a window
        for sizes in calls.values():
            sizes.clear()
        step_losses, logs = method_.training_loss(batch, step, schedule)
        losses[step] = sum(step_losses.values()).detach()
        diagnostics = {k for k in logs if k.endswith(("confident_ratio", "_teaches", "no_teaching"))}
        labelled, weak = len(batch["image"]), len(batch["u_w"])
        if step == 2:
            assert all(sizes == [labelled] for sizes in calls.values()), calls
            assert not diagnostics
        else:
            assert all(sizes == [labelled, weak] for sizes in calls.values()), calls
            assert diagnostics >= {f"{n}/confident_ratio" if method == "co2s" else "confident_ratio"
                                   for n in method_.modules}
            if method == "co2s":
                assert "no_teaching" in diagnostics
    torch.testing.assert_close(losses[2], losses[3])


def test_train_records_average_each_value_over_the_steps_that_measured_it(unl, tmp_path):
    """A burn-in log window of 2 steps measures its diagnostics once: the record carries that
    value (tau 0: every pixel confident, ratio 1), not half of it."""
    from co2s.api import train
    from co2s.engine.metrics_log import read_log

    (unl / "unl_only.txt").write_text("images/t4.png\nimages/t5.png\n")  # not in the labelled list
    config = _co2s_config(unl, tmp_path, burn_in=0.5).override(
        {"data.splits.unlabelled": "unl_only.txt", "train.iters": 4, "train.log_every": 2, "train.val_every": 4,
         "train.ckpt_every": 4})
    run = train(config, progress=False)
    records = [r for r in read_log(run.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [(r["step"], r["burn_in"]) for r in records] == [(2, 1.0), (4, 0.0)]
    for record in records:
        assert record["clip/confident_ratio"] == 1.0 and record["dino/confident_ratio"] == 1.0
        assert record["clip_teaches"] + record["dino_teaches"] + record["no_teaching"] == pytest.approx(1.0, abs=0.01)  # ties count twice


@pytest.mark.parametrize("method", ["unimatch", "fixmatch"])
def test_single_student_methods_honour_the_burn_in(unl, tmp_path, method):
    def config(**semi):
        cfg = _co2s_config(unl, tmp_path, **semi)
        return cfg.override({"train.method": method, "model.students": [cfg.model.students[1].model_dump()]})

    plain, burn = config(), config(burn_in=1.0)
    torch.manual_seed(0)
    modules = build_method(plain).modules
    batch = _batch(plain)
    _, logs, _, _ = _loss_and_grads(plain, modules, batch, step=2)
    assert logs["s1"] > 0 and logs["burn_in"] == 0.0
    _, logs, _, _ = _loss_and_grads(burn, modules, batch, step=9)  # burn_in 1.0: the whole run
    assert logs["s1"] == 0.0 and logs["burn_in"] == 1.0 and logs["sup"] > 0
    if method == "unimatch":
        assert logs["s2"] == logs["fp"] == 0.0


def test_training_keeps_the_state_at_the_end_of_the_burn_in(unl, tmp_path):
    from co2s.api import train
    from co2s.engine.metrics_log import read_log
    from co2s.models.loading import read_checkpoint

    (unl / "unl_only.txt").write_text("images/t4.png\nimages/t5.png\n")  # not in the labelled list
    config = _co2s_config(unl, tmp_path, burn_in=0.5, tau=0.8).override(
        {"data.splits.unlabelled": "unl_only.txt", "train.iters": 4, "train.log_every": 1, "train.val_every": 4, "train.ckpt_every": 4})
    run = train(config, progress=False)
    assert run.burn_in_steps == 2
    assert int(read_checkpoint(run.run_dir / "burn_in.ckpt")["step"]) == 2
    flags = [r["burn_in"] for r in read_log(run.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert flags == [1.0, 1.0, 0.0, 0.0]
