"""A run survives what real runs meet: interrupts before the first checkpoint, reruns of finished
runs, torn log lines, moved or differently spelled run directories, bad checkpoint files and a
loss that stops being finite."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import co2s.engine.trainer as trainer_module
from co2s.cli.main import main
from co2s.config.loader import validate
from co2s.models.loading import read_checkpoint
from co2s.engine.metrics_log import read_log
from co2s.api import train
from co2s.errors import CheckpointError, TrainingError
from tests.conftest import tiny_config_dict


REAL_STEP = trainer_module.train_step


def _interrupt_at(monkeypatch, at_step: int) -> None:
    """Make training raise KeyboardInterrupt (as Ctrl-C would) when it reaches ``at_step``."""
    real = REAL_STEP

    def step(fabric, method, batches, step, schedule, sums):
        if step == at_step:
            raise KeyboardInterrupt
        return real(fabric, method, batches, step, schedule, sums)

    monkeypatch.setattr(trainer_module, "train_step", step)


def _kinds(run):
    return [(r["kind"], r["step"]) for r in read_log(run / "metrics.jsonl")]


def test_interrupt_before_first_checkpoint_restarts_cleanly(tiny_dataset, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    cfg = tiny_config_dict(tiny_dataset, run, iters=6, ckpt_every=100, val_every=100, log_every=1)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _interrupt_at(monkeypatch, 3)
    assert main(["train", str(path), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "nothing to resume yet" in err and "resume from" not in err
    assert not (run / "latest.ckpt").exists()
    assert [s for k, s in _kinds(run)] == [1, 2, 3]

    # no checkpoint: a changed config is allowed, and the old records are not kept twice
    monkeypatch.undo()
    cfg["train"]["lr"] = 0.02
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--no-progress"]) == 0
    steps = [s for k, s in _kinds(run) if k == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.02


def test_interrupt_after_a_checkpoint_promises_a_resume(tiny_dataset, tmp_path, monkeypatch, capsys):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=6, ckpt_every=2, val_every=100)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _interrupt_at(monkeypatch, 3)
    assert main(["train", str(path), "--no-progress"]) == 130
    assert "rerun the same command to resume from" in capsys.readouterr().err


def test_finished_run_rerun_adds_no_second_final_record(tiny_config):
    train(tiny_config, progress=False)
    train(tiny_config, progress=False)
    kinds = _kinds(Path(tiny_config.run_dir))
    assert [k for k in kinds if k[0] == "final"] == [("final", 6)]
    assert len(kinds) == len(set(kinds))


def test_torn_last_log_line_is_dropped_with_a_warning(tiny_dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_config_dict(tiny_dataset, run, iters=6, ckpt_every=2, val_every=100, log_every=1)
    _interrupt_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(validate(cfg), progress=False)
    monkeypatch.undo()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "kind": "tr')  # power loss mid-line
    with pytest.warns(UserWarning, match="last line is not a complete JSON record"):
        train(validate(cfg), progress=False)
    steps = [s for k, s in _kinds(run) if k == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_run_directory_spelled_differently_or_moved_resumes(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config_dict(tiny_dataset, "./runs/a", iters=6, ckpt_every=2, val_every=100)
    cfg["data"]["root"] = "./data"  # relative data root, as users write it
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(validate(cfg), progress=False)
    _interrupt_at(monkeypatch, 5)
    cfg["out_dir"] = str(tmp_path / "runs" / "a")  # same folder, absolute
    cfg["data"]["root"] = str(tmp_path / "data")
    with pytest.raises(KeyboardInterrupt):
        train(validate(cfg), progress=False)
    assert "resuming" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "runs" / "a" / "latest.ckpt")["step"] == 4

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    shutil.move(tmp_path / "runs" / "a", tmp_path / "moved")
    cfg["out_dir"] = "moved"
    result = train(validate(cfg), progress=False)
    assert "from step 4" in capsys.readouterr().out
    assert result.steps == 6


def test_non_finite_loss_stops_naming_step_and_files_and_writes_nothing(tiny_dataset, tmp_path):
    # a real user mistake: data.scale far too small makes inputs overflow inside the model
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=6, ckpt_every=1)
    cfg["data"]["scale"] = 1e-36
    with pytest.raises(TrainingError) as info:
        train(validate(cfg), progress=False)
    message = str(info.value)
    assert "step 1" in message and "not finite" in message
    assert "images/t" in message and ".png" in message
    assert not (tmp_path / "run" / "latest.ckpt").exists()
    assert not (tmp_path / "run" / "best.ckpt").exists()


def test_non_finite_weights_are_never_written(tiny_config, tmp_path):
    from lightning_fabric import Fabric

    from co2s.engine.checkpoint import save_checkpoint, write_model_checkpoint
    from co2s.models.factory import build_models

    model = build_models(tiny_config)["model"]
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite weights in model"):
        write_model_checkpoint(tmp_path / "m.ckpt", tiny_config, {"model": model})
    with pytest.raises(TrainingError, match="non-finite weights"):
        save_checkpoint(Fabric(accelerator="cpu", devices=1), tmp_path / "latest.ckpt",
                        {"step": 1, "model": model})
    assert not list(tmp_path.glob("*.ckpt")) and not list(tmp_path.glob(".*.tmp"))


class _Foreign:  # a class torch.load(weights_only=True) refuses to rebuild
    pass


def test_bad_checkpoint_files_say_what_is_wrong_and_point_to_best(tiny_config, tmp_path):
    train(tiny_config, progress=False)
    run = Path(tiny_config.run_dir)
    intact = (run / "latest.ckpt").read_bytes()

    cases = {
        "empty": (b"", "is empty"),
        "truncated": (intact[: len(intact) // 2], "is truncated"),
        "text": (b"just some text, not a checkpoint\n", "is not a PyTorch checkpoint file"),
    }
    for name, (content, words) in cases.items():
        (run / "latest.ckpt").write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(run / "latest.ckpt")
        assert words in str(info.value), (name, str(info.value))
        assert "best.ckpt exists" in str(info.value)
        assert "weights_only" not in str(info.value)

    torch.save({"model": _Foreign()}, run / "latest.ckpt")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(run / "latest.ckpt")
    assert "Python objects besides tensors" in str(info.value) and "weights_only" not in str(info.value)

    # resuming from the damaged latest says how to go on
    (run / "latest.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot resume.*Delete .*latest.ckpt"):
        train(tiny_config, progress=False)

    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a co2s checkpoint"):
        read_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(run)
