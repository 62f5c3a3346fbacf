"""`train.init_from`: a new run starts from another run's trained weights; rows of class-indexed
tensors follow the class names, frozen text prototypes stay as built for the new class list."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from co2s import api
from co2s.config.loader import load_config
from co2s.errors import CheckpointError
from co2s.models.guidance import LearnableQueries, TextGuidance
from co2s.models.lite_unet import LiteUNet
from co2s.models.loading import load_trained_models
from co2s.models.transfer import transfer_weights
from tests.conftest import tiny_config_dict, write_tiny_dataset


class _Guided(nn.Module):
    def __init__(self, n: int, prototypes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.queries = LearnableQueries(n, 4)
        self.text = TextGuidance(torch.randn(n, 4) if prototypes is None else prototypes)
        self.proj = nn.Linear(4, 4)


def test_rows_follow_class_names_and_prototypes_stay_as_built():
    torch.manual_seed(0)
    source = _Guided(3)
    target = _Guided(4)
    built = target.text.prototypes.clone()
    fresh_row = target.queries.queries[3].detach().clone()
    done = transfer_weights(target, source.state_dict(), ["b", "a", "z", "new"], ["a", "b", "z"], "test")
    q, sq = target.queries.queries.detach(), source.queries.queries.detach()
    assert torch.equal(q[0], sq[1]) and torch.equal(q[1], sq[0]) and torch.equal(q[2], sq[2])
    assert torch.equal(q[3], fresh_row)  # a new class starts fresh
    assert torch.equal(target.text.prototypes, built)
    assert torch.equal(target.proj.weight, source.proj.weight)
    assert done.kept == 2 and done.class_rows == ["queries.queries"] and done.rebuilt == ["text.prototypes"]


def test_another_architecture_is_refused():
    with pytest.raises(CheckpointError, match=r"^x: another architecture than this run's \(missing "):
        transfer_weights(LiteUNet(3, width=8, depth=3), LiteUNet(3, width=8, depth=2).state_dict(),
                         ["a", "b", "c"], ["a", "b", "c"], "x")
    with pytest.raises(CheckpointError, match=r"has shape .* \(another architecture or band count\)"):
        transfer_weights(LiteUNet(3, in_channels=4, width=8, depth=3),
                         LiteUNet(3, width=8, depth=3).state_dict(), ["a", "b", "c"], ["a", "b", "c"], "x")


def _config(tmp_path, name: str, classes: list[str], **train):
    root = tmp_path / "data"
    if not root.exists():
        write_tiny_dataset(root, n=6)
    raw = tiny_config_dict(root, tmp_path / name, **train)
    raw["data"]["classes"] = classes
    raw["train"].pop("val_every")
    raw["data"]["splits"].pop("val")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(str(path))


def test_a_run_starts_from_another_runs_weights_with_renamed_classes(tmp_path, capsys):
    api.train(_config(tmp_path, "first", ["c0", "c1", "c2"], iters=4), progress=False)
    first = load_trained_models(tmp_path / "first" / "latest.ckpt").models["model"].state_dict()
    api.export(tmp_path / "first" / "latest.ckpt", tmp_path / "folder")
    for source in (tmp_path / "first" / "latest.ckpt", tmp_path / "folder"):
        name = f"second_{source.name.replace('.', '_')}"
        # one step at a learning rate too small to move anything: the weights are what init_from loaded
        config = _config(tmp_path, name, ["c2", "c0", "road"], iters=1, lr=1e-12, init_from=str(source))
        api.train(config, progress=False)
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("init_from"))
        assert "class rows of 2 shared classes kept, new ['road'] initialised fresh, ['c1'] dropped" in line
        second = load_trained_models(tmp_path / name / "latest.ckpt").models["model"].state_dict()
        for key in ("classifier.weight", "classifier.bias"):
            assert torch.allclose(second[key][0], first[key][2], atol=1e-6)
            assert torch.allclose(second[key][1], first[key][0], atol=1e-6)
            assert not torch.allclose(second[key][2], first[key][1], atol=1e-3)
        other = next(k for k in first if not k.startswith("classifier"))
        assert torch.allclose(second[other], first[other], atol=1e-6)


def test_init_from_a_missing_file_or_other_models(tmp_path):
    with pytest.raises(CheckpointError, match=r"train.init_from: .*nowhere.ckpt does not exist"):
        api.train(_config(tmp_path, "a", ["c0", "c1", "c2"], iters=1, init_from=str(tmp_path / "nowhere.ckpt")),
                  progress=False)


def test_the_normalisation_is_the_new_runs():
    """mean/std come from the new run's config, never silently from the source's weights."""
    source = LiteUNet(3, width=8, depth=3, mean=[0.1] * 3, std=[0.2] * 3)
    target = LiteUNet(3, width=8, depth=3, mean=[0.5] * 3, std=[0.25] * 3)
    done = transfer_weights(target, source.state_dict(), ["a", "b", "c"], ["a", "b", "c"], "x")
    assert torch.allclose(target.mean, torch.full((1, 3, 1, 1), 0.5))
    assert torch.allclose(target.std, torch.full((1, 3, 1, 1), 0.25))
    assert sorted(done.rebuilt) == ["mean", "std"]
    assert torch.equal(target.classifier.weight, source.classifier.weight)
