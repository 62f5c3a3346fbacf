"""train.grad_clip: each optimiser steps with its model's gradient clipped to the norm, and the norm
before clipping is logged."""

import math

import torch

from co2s.config.loader import validate
from co2s.engine.trainer import LogWindow, make_fabric, train_step
from co2s.methods import Schedule, build_method
from tests.conftest import tiny_config_dict


def _steps(tmp_path, tiny_dataset, grad_clip):
    raw = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=2, method="supervised")
    raw["train"]["grad_clip"] = grad_clip
    config = validate(raw)
    torch.manual_seed(0)
    fabric = make_fabric(config)
    method = build_method(config)
    method.setup(fabric)
    norms = []  # the gradient each optimiser step sees

    def at_step(opt, args, kwargs):
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    for opt in method.optimizers.values():
        opt.register_step_pre_hook(at_step)
    generator = torch.Generator().manual_seed(1)
    batches = iter([{"image": torch.randn(2, 3, 32, 32, generator=generator),
                     "mask": torch.randint(0, 3, (2, 32, 32), generator=generator)}] * 2)
    window = LogWindow()
    for step in range(2):
        train_step(fabric, method, batches, step, Schedule(2), window)
    return norms, window.means()


def test_grad_clip_bounds_the_gradient_and_logs_the_norm_before(tmp_path, tiny_dataset):
    free, free_means = _steps(tmp_path / "free", tiny_dataset, None)
    assert "grad_norm" not in free_means and min(free) > 1e-3  # the gradients clipping will shrink
    clipped, means = _steps(tmp_path / "clipped", tiny_dataset, 1e-3)
    assert all(n <= 1e-3 * (1 + 1e-4) for n in clipped)
    assert all(math.isclose(n, 1e-3, rel_tol=1e-4) for n in clipped)  # scaled to the norm, not zeroed
    # the logged value is the norm before clipping, averaged over the steps of the log window
    assert math.isclose(means["grad_norm"], (free[0] + free[1]) / 2, rel_tol=0.05)
