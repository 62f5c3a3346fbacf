"""co2s.engine.memory: live-tensor bytes counted exactly, and the linear-in-batch estimate of a
training step's peak checked against measured tiny-ViT steps."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from co2s.engine.memory import LiveTensorBytes, linear_in_batch

REPO = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("co2s_throughput_benchmark", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_estimate_matches_a_measured_tiny_vit_step(throughput, tmp_path, one_torch_thread):
    """Two full Co2S steps of the tiny ViT pair (weights, AdamW states, activations, CutMix
    sources) measured at batch 1, 2 and 4: batch 4 estimated from 1 and 2 is within the margin."""
    throughput.write_benchmark_data(tmp_path, "tiny", 64, 4)
    peaks = {}
    for batch in (1, 2, 4):
        args = argparse.Namespace(data_root=str(tmp_path), crop=64, batch=batch, device="cpu", steps=1, warmup=1,
                                  checkpointing=False, track_memory=True, count_flops=False)
        peaks[batch] = throughput.run_cell(args, "co2s", "32-true")["peak_tensor_mib"]["cpu"]
    assert peaks[1] < peaks[2] < peaks[4]
    estimate = linear_in_batch(peaks[1], peaks[2], 4)
    assert abs(estimate - peaks[4]) <= MARGIN * peaks[4], (estimate, peaks)
