"""co2s.engine.memory: live-tensor bytes counted exactly, and the fake-tensor estimate of a training
step's peak checked against measured tiny-ViT steps."""

from __future__ import annotations

import argparse

import pytest
import torch

from co2s.engine.memory import LiveTensorBytes, fake_tensors

MIB = 2**20
#: the stated margin of the estimate (docs/memory.md)
MARGIN = 0.02


def test_live_bytes_count_each_storage_once_while_it_lives():
    with LiveTensorBytes() as tensors:
        a = torch.zeros(MIB // 4)  # 1 MiB of float32
        view = a[: MIB // 8]
        a.add_(1)  # in place: the same memory
        b = a * 2  # 1 MiB more
        assert tensors.live["cpu"] == 2 * MIB
        del b
        assert tensors.live["cpu"] == MIB  # freed when the last reference goes
        c = torch.ones(MIB // 8, dtype=torch.float64)  # 1 MiB again: the peak stays at 2
        del view
    assert tensors.peak["cpu"] == 2 * MIB
    assert tensors.live["cpu"] == 2 * MIB  # a and c
    del a, c
    before = dict(tensors.live)
    torch.zeros(10)  # outside the mode: not counted
    assert tensors.live == before


@pytest.mark.parametrize("precision, checkpointing", [("32-true", False), ("bf16-mixed", True)])
def test_fake_tensor_estimate_matches_a_measured_tiny_vit_step(throughput_benchmark, tmp_path, one_torch_thread, precision,
                                                                checkpointing):
    """Two full Co2S steps of the tiny ViT pair (weights, AdamW states, activations, CutMix
    sources), measured on real tensors and estimated on fake ones: within the stated margin."""
    throughput_benchmark.write_benchmark_data(tmp_path, "tiny", 64, 2)
    peaks = {}
    for estimate in (False, True):
        args = argparse.Namespace(data_root=str(tmp_path), crop=64, batch=2, device="cpu", steps=1, warmup=1,
                                  checkpointing=checkpointing, track_memory=not estimate, estimate_memory=estimate,
                                  count_flops=False)
        result = throughput_benchmark.run_cell(args, "co2s", precision)
        assert result["memory"] == ("estimated (fake tensors)" if estimate else "measured")
        peaks[estimate] = result["peak_tensor_mib"]["cpu"]
    assert peaks[False] > 20  # weights, optimiser states and activations of two students
    assert abs(peaks[True] - peaks[False]) <= MARGIN * peaks[False], peaks


def test_fake_tensors_hold_no_memory():
    with fake_tensors(), LiveTensorBytes() as tensors:
        big = torch.zeros(2**30, dtype=torch.uint8)  # 1 GiB, counted but never allocated
        assert float(big.float().sum()) == 1.0  # values read from fake tensors are stand-ins
        assert tensors.live["cpu"] >= 2**30
    assert tensors.peak["cpu"] >= 5 * 2**30  # the uint8 GiB and its float32 copy
