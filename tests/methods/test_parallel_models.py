"""The students in parallel threads on a CPU (``train.parallel_models``): chosen only where their
random draws stay ordered, the same step as one model after the other, and torch's thread count
given back after training."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from torch import nn

from co2s.engine.trainer import make_fabric
from co2s.methods import Schedule, build_method
from co2s.methods.base import draws_random_numbers, model_threads
from tests.methods.test_co2s_step import _batch, _co2s_config, unl  # noqa: F401  (unl: a fixture)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_parallel_threads_are_chosen_only_where_safe(unl, tmp_path, two_threads):
    config = _co2s_config(unl, tmp_path)
    fabric = make_fabric(config)
    modules = build_method(config).modules
    assert not any(draws_random_numbers(m) for m in modules.values())
    assert model_threads(fabric, modules) == 1
    assert model_threads(fabric, modules, enabled=False) == 0
    assert model_threads(fabric, {"clip": modules["clip"]}) == 0  # one model: nothing to share
    torch.set_num_threads(4)
    assert model_threads(fabric, modules) == 2
    torch.set_num_threads(1)
    assert model_threads(fabric, modules) == 0  # fewer threads than models

    torch.set_num_threads(2)
    # Draws of the models' own (a dropout layer; a Hugging Face config asking for dropout) would come
    # from the global generator in whatever order the threads reach them: one after the other then.
    modules["dino"].head.add_module("extra_dropout", nn.Dropout(0.1))
    assert draws_random_numbers(modules["dino"]) and model_threads(fabric, modules) == 0
    modules = build_method(config).modules
    hf = next(m for m in modules["clip"].modules() if hasattr(getattr(m, "config", None), "to_dict"))
    hf.config.attention_dropout = 0.1
    assert draws_random_numbers(modules["clip"]) and model_threads(fabric, modules) == 0


def _step(config, batch, step: int):
    """One Co2S step through the method's own seams (as train_step runs it): losses, each
    model's gradient, and the threads each model's forward ran in."""
    torch.manual_seed(0)  # the same initial weights for every variant
    method = build_method(config)
    method.setup(make_fabric(config))
    threads: dict[str, set[str]] = {name: set() for name in method.modules}
    for name, module in method.modules.items():
        module.register_forward_pre_hook(
            lambda m, args, name=name: threads[name].add(threading.current_thread().name))
    with method.running():
        inside = torch.get_num_threads()
        torch.manual_seed(1)  # the same draws (generators of each_model, CutMix-free batch)
        losses, logs = method.training_loss(batch, step, Schedule.for_run(config, 10))
        method.backward(losses)
    grads = {name: torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
             for name, m in method.modules.items()}
    return {k: v.detach() for k, v in losses.items()}, grads, threads, inside, method.parallel


def test_a_step_in_parallel_threads_is_the_step_one_model_after_the_other(unl, tmp_path, two_threads):
    parallel = _co2s_config(unl, tmp_path)
    sequential = parallel.override({"train.parallel_models": False})
    batch = _batch(parallel)
    for step in (3, 7):  # every term with its feature-perturbation dropout, L_sta acting
        p_losses, p_grads, p_threads, p_inside, p_plan = _step(parallel, batch, step)
        s_losses, s_grads, s_threads, s_inside, s_plan = _step(sequential, batch, step)
        assert p_plan == {"models": 2, "threads_per_model": 1} and s_plan is None
        assert p_inside == 1 and s_inside == 2  # torch's 2 threads shared between the 2 students
        assert all(names and all(n.startswith("co2s-model") for n in names) for names in p_threads.values())
        assert all(names == {threading.main_thread().name} for names in s_threads.values())
        for name in p_losses:
            torch.testing.assert_close(p_losses[name], s_losses[name], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(p_grads[name], s_grads[name], rtol=1e-4, atol=1e-6)
    assert torch.get_num_threads() == 2  # given back after running()


def test_training_records_the_parallel_models_and_gives_the_threads_back(unl, tmp_path, two_threads, monkeypatch):
    from co2s.api import train
    from co2s.engine import trainer

    validating = []  # torch's thread count while validation runs the students one after the other
    score = trainer.score_predictions
    monkeypatch.setattr(trainer, "score_predictions",
                        lambda *a, **k: validating.append(torch.get_num_threads()) or score(*a, **k))
    (unl / "unl_only.txt").write_text("images/t4.png\nimages/t5.png\n")  # not in the labelled list
    config = _co2s_config(unl, tmp_path).override(
        {"data.splits.unlabelled": "unl_only.txt", "train.iters": 2, "train.val_every": 2, "train.ckpt_every": 2})
    run = train(config, progress=False)
    info = json.loads((run.run_dir / "run_info.jsonl").read_text().splitlines()[-1])
    assert info["parallel_models"] == {"models": 2, "threads_per_model": 1}
    assert validating == [2]  # every thread for validation, not the students' share
    assert torch.get_num_threads() == 2
