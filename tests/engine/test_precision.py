"""`engine.precision: auto` (the paper presets): bf16-mixed on a CUDA device with bf16, else 32-true."""

import torch

from co2s.config.loader import load_config
from co2s.config.schema import EngineConfig
from co2s.engine.trainer import training_precision


def test_auto_precision_follows_the_device(monkeypatch):
    assert load_config("loveda").engine.precision == "auto"
    auto = EngineConfig(precision="auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_precision(auto) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training_precision(auto) == "bf16-mixed"
    assert training_precision(EngineConfig(precision="auto", accelerator="cpu")) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert training_precision(auto) == "32-true"
    assert training_precision(EngineConfig(precision="16-mixed")) == "16-mixed"  # given: kept
