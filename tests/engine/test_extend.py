"""`co2s train --extend ITERS`: a finished run continued to a new total, with its burn-in kept and
its learning-rate decay continued towards the new total."""

from __future__ import annotations

import json

import pytest
import yaml

from co2s import api
from co2s.config.loader import load_config
from co2s.errors import ConfigError
from co2s.run_folder import RunFolder
from tests.conftest import tiny_config_dict, write_tiny_dataset


def _config(tmp_path, run: str, iters: int):
    root = tmp_path / "data"
    if not root.exists():
        write_tiny_dataset(root, n=8)
    raw = tiny_config_dict(root, tmp_path / run, method="fixmatch", iters=iters, val_every=100,
                           semi={"burn_in": 0.5})
    raw["data"]["splits"]["unlabelled"] = "val.txt"
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(str(path))


def _train_records(run_dir) -> dict[int, dict]:
    lines = RunFolder(run_dir).metrics_log.read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r.get("kind") == "train"}


def test_extend_keeps_the_burn_in_and_continues_the_decay(tmp_path, capsys):
    config = _config(tmp_path, "run", iters=6)
    api.train(config, progress=False)
    run_dir = tmp_path / "run"
    assert max(_train_records(run_dir)) == 6

    run = api.train(config, progress=False, extend=10)
    assert run.steps == 10 and run.burn_in_steps == 3  # a fresh 10-step run would burn in for 5
    assert "resuming" in capsys.readouterr().out
    records = _train_records(run_dir)
    # burn_in is the share of burn-in steps since the last record (steps 3-4: one of two)
    assert [records[s]["burn_in"] for s in (2, 4, 6, 8, 10)] == [1.0, 0.5, 0.0, 0.0, 0.0]
    stored = yaml.safe_load(RunFolder(run_dir).config.read_text())
    assert stored["train"]["iters"] == 10 and stored["train"]["semi"]["burn_in_steps"] == 3

    # the decay towards 10 steps from step 6: the lr of a 10-step run at the same steps
    fresh = api.train(_config(tmp_path, "fresh", iters=10), progress=False)
    assert fresh.burn_in_steps == 5
    fresh_records = _train_records(tmp_path / "fresh")
    for step in (8, 10):
        assert records[step]["lr"] == pytest.approx(fresh_records[step]["lr"], rel=1e-6)
    assert records[6]["lr"] != pytest.approx(fresh_records[8]["lr"])

    # the same extension again resumes (nothing left to do); without --extend it is refused with a hint
    assert api.train(config, progress=False, extend=10).steps == 10
    with pytest.raises(ConfigError, match=r"extended to 10 steps: add --extend 10"):
        api.train(config, progress=False)


def test_extend_refuses_a_shorter_total_and_an_empty_folder(tmp_path):
    config = _config(tmp_path, "run", iters=4)
    with pytest.raises(ConfigError, match="holds no checkpoint to continue"):
        api.train(config, progress=False, extend=8)
    api.train(config, progress=False)
    for iters in (3, 4):
        with pytest.raises(ConfigError, match=r"is 4 steps long; give a larger total"):
            api.train(config, progress=False, extend=iters)
    other = _config(tmp_path, "run", iters=4).model_copy(update={"name": "renamed"})
    with pytest.raises(ConfigError, match="different config"):  # --extend changes the length only
        api.train(other, progress=False, extend=8)


def test_a_run_going_on_in_another_precision_says_so(tmp_path, capsys):
    """``engine.precision: auto`` decides per machine: a run started in bf16 on a GPU and resumed
    on a CPU would silently go on in fp32; it is said, with how to keep the precision."""
    from co2s.engine.trainer import training_precision

    import warnings

    config = _config(tmp_path, "run", iters=2).override({"engine.precision": "auto"})
    assert training_precision(config.engine) == "32-true"  # auto, on this CPU
    run = api.train(config, progress=False)
    info = RunFolder(run.run_dir).run_info
    records = [json.loads(line) for line in info.read_text().splitlines()]
    assert records[-1]["precision"] == "32-true"
    records[-1]["precision"] = "bf16-mixed"  # as a GPU start would have recorded it
    info.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.warns(UserWarning, match=rf"trained in bf16-mixed precision until step {run.steps} and goes on in "
                      r"32-true \(engine.precision auto, on this machine\); set engine.precision=bf16-mixed"):
        api.train(config, progress=False, extend=run.steps + 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same precision as the last start: nothing to say
        api.train(config, progress=False, extend=run.steps + 4)
