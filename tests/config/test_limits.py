"""The bounds on what co2s reads (co2s.config.limits): stated in docs/models.md, generous enough
for every released weight family, applied to configs and to the config.json of weight folders
before anything is allocated. Model folders and checkpoints: tests/models/test_tampered_folders.py
and tests/models/test_contract.py."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from co2s.config import limits
from co2s.config.loader import validate
from co2s.errors import CheckpointError, ConfigError
from co2s.models.architecture_limits import check_hf_config
from co2s.models.families import FAMILIES

REPO = Path(__file__).resolve().parents[2]


def test_the_limits_table_of_the_docs_states_every_constant():
    """docs/models.md's "Limits on what co2s reads" lists each constant of co2s.config.limits with
    its value, and nothing else."""
    text = (REPO / "docs" / "models.md").read_text()
    section = text.split("## Limits on what co2s reads", 1)[1].split("\n## ", 1)[0]
    stated = {}
    for row in (line for line in section.splitlines() if line.startswith("| `")):
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        name = re.fullmatch(r"`(\w+)`", cells[0])
        assert name and len(cells) == 4, row
        stated[name.group(1)] = cells[2]
    constants = {k: v for k, v in vars(limits).items() if k.isupper()}
    assert set(stated) == set(constants)
    for name, value in constants.items():
        numbers = [int(n) for n in re.findall(r"\d+", stated[name])]
        assert value in numbers, f"docs/models.md states {name} as {stated[name]!r}, the code has {value}"


@pytest.mark.parametrize("family, variant", [(f, v) for f in FAMILIES for v in f.variants],
                         ids=lambda x: getattr(x, "name", ""))
def test_every_released_weight_family_is_within_the_limits(family, variant):
    tower = {"hidden_size": variant.width, "num_hidden_layers": variant.depth, "num_attention_heads": variant.heads,
             "patch_size": variant.patch, "intermediate_size": 4 * variant.width}
    check_hf_config(family.kind, {"vision_config": tower} if family.kind == "clip" else tower)


@pytest.mark.parametrize("window, stride, batch, problem", [
    (4096, 512, 4, None), (16, 2, 1, None), (1024, 1024, 64, None),
    (4097, 4000, 1, "window"), (15, 15, 1, "window"),
    (256, 31, 4, "stride"), (256, 32, 4, None), (256, 257, 4, "stride"),
    (1024, 900, 65, "batch_size"), (32, 26, limits.MAX_BATCH_SIZE + 1, "batch_size"),
])
def test_the_tiling_rule(window, stride, batch, problem):
    found = limits.tiling_problem(window, stride, batch)
    assert (found is None) if problem is None else (found.startswith(problem) or problem in found), found


def _config(tmp_path, **sections) -> dict:
    raw = {"data": {"root": str(tmp_path), "classes": ["a", "b"]}, "model": {"width": 8, "depth": 2},
           "train": {"crop_size": 32, "iters": 1}}
    for key, value in sections.items():
        section, _, field = key.partition("__")
        raw.setdefault(section, {})[field] = value
    return raw


@pytest.mark.parametrize("change, message", [
    (dict(eval__window=10**6), "eval.window"),
    (dict(eval__window=64, eval__stride=1), "stride 1 must be from 8"),
    (dict(eval__window=64, eval__stride=65), "stride 65"),
    (dict(train__crop_size=10**5), "train.crop_size"),
    (dict(eval__batch_size=10**6), "eval.batch_size"),
    (dict(model__width=1024, model__depth=4), "widest stage"),
    (dict(model__in_channels=10**5), "model.in_channels"),
    (dict(data__classes=[f"c{i}" for i in range(300)]), "data.classes"),
    (dict(data__mean=[0.5, float("nan"), 0.5], data__std=[1.0, 1.0, 1.0]), "finite"),
])
def test_a_config_out_of_bounds_is_refused(tmp_path, change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(_config(tmp_path, **change))


def test_duplicate_classes_are_found_in_linear_time(tmp_path):
    """A million class names (the check was quadratic: hours) are refused at once; duplicates
    within the bound are named."""
    start = time.process_time()
    with pytest.raises(ConfigError, match="data.classes"):
        validate(_config(tmp_path, data__classes=["a"] * 10**6))
    assert time.process_time() - start < 10
    with pytest.raises(ConfigError, match=r"duplicate class names: \['b'\]"):
        validate(_config(tmp_path, data__classes=["a", "b", "c", "b"]))


def test_an_absurd_random_architecture_is_refused_before_it_is_built(tmp_path):
    from co2s.models.factory import build_models

    raw = _config(tmp_path)
    raw["model"] = {"name": "students", "students": [{"name": "dino", "backbone": {
        "kind": "dinov3", "arch": {"base": "tiny", "hidden_size": 10**6, "num_attention_heads": 1}}}]}
    start = time.process_time()
    with pytest.raises(ConfigError, match="hidden_size: must be an integer from 1 to 8192, got 1000000"):
        build_models(validate(raw))
    assert time.process_time() - start < 10


@pytest.mark.parametrize("kind, values, field", [
    ("dinov2", {"hidden_size": 10**6}, "hidden_size"),
    ("dinov3", {"num_hidden_layers": 1e5}, "num_hidden_layers"),
    ("clip", {"text_config": {"vocab_size": 10**9}}, "text_config.vocab_size"),
    ("clip", {"vision_config": {"patch_size": 2}}, "vision_config.patch_size"),
])
def test_a_weight_folders_config_json_is_bounded_before_transformers_builds_it(tmp_path, kind, values, field):
    from co2s.models.backbones.weights import load_backbone_weights

    model_type = {"clip": "clip", "dinov3": "dinov3_vit", "dinov2": "dinov2"}[kind]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, **values}))
    with pytest.raises(CheckpointError, match=f"config.json field {re.escape(field)}: must be an integer") as info:
        load_backbone_weights(kind, tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
