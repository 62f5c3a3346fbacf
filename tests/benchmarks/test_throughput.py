"""benchmarks/throughput.py measures what it says: full steps of each method, and FLOPs that
match an analytic count."""

from __future__ import annotations

import argparse

import torch

from co2s.config.loader import load_config
from co2s.models.student_factory import build_student


def test_co2s_cell_times_full_co2s_steps(throughput_benchmark, tmp_path, one_torch_thread):
    """The cells run on the demo preset, whose burn-in is 0.8: the timed steps must still be full
    Co2S steps (unlabelled terms and the stability loss at its weight), the counted one too."""
    throughput_benchmark.write_benchmark_data(tmp_path, "tiny", 64, 1)
    args = argparse.Namespace(data_root=str(tmp_path), crop=64, batch=1, device="cpu", steps=2, warmup=1,
                              checkpointing=False)
    result = throughput_benchmark.run_cell(args, "co2s", "32-true")
    logs = result["step_logs"]
    assert len(logs) == args.steps + 1  # timed steps, then the counted one
    weight = load_config("demo").train.semi.stability_weight
    for step in logs:
        assert step["burn_in"] == 0.0 and step["lambda"] == weight
        for student in result["students"]:  # (random students: few pixels pass tau, terms may be 0)
            assert {f"{student}/{term}" for term in ("sup", "s1", "s2", "fp", "sta")} <= step.keys()
    assert result["gflops_per_step"] > 0 and result["peak_rss_mib"] > 0


def _linear(n, d_in, d_out):
    return 2 * n * d_in * d_out


def test_counted_flops_of_a_tiny_vit_step_match_the_analytic_count(throughput_benchmark):
    """Forward and backward of a tiny DINOv3 backbone (all weights trained): per block the four
    attention projections, the two MLP layers and attention itself (4 N^2 D: scores and weighted
    values); the patch embedding once more for its weight gradient (the image needs none).
    Without the CPU attention mapping the count misses attention."""
    spec = {"name": "dino", "guidance": "queries", "backbone": {"kind": "dinov3", "arch": "tiny", "tune": "full",
                                                                "layers": [1, 2, 4]}}
    cfg = load_config("demo", ["train.method=supervised", "model.name=students", f"model.students=[{spec!r}]"])
    backbone = build_student(cfg.model.students[0], cfg.data).train().backbone
    c = backbone.model.config
    batch, size = 2, 64
    patches = (size // c.patch_size) ** 2
    n = batch * (patches + 1 + c.num_register_tokens)  # tokens in the batch
    d, inner = c.hidden_size, c.intermediate_size
    linear = 4 * _linear(n, d, d) + 2 * _linear(n, d, inner)
    attention = 4 * batch * (n // batch) ** 2 * d
    embed = 2 * batch * patches * d * 3 * c.patch_size ** 2
    # backward: linear layers twice their forward (input and weight gradients); attention 2.5 times
    # (torch counts the flash backward's recomputed scores: five matmuls for the forward's two)
    expected = c.num_hidden_layers * (3 * linear + 3.5 * attention) + 2 * embed

    x = torch.rand(batch, 3, size, size)
    with throughput_benchmark.counting_flops() as counter:
        features = backbone(x)
        sum(f.sum() for f in features.as_list()).backward()
    assert counter.get_total_flops() == expected
