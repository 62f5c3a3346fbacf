"""Ctrl-C (a real SIGINT) keeps the training done so far: the step's checkpoint is written before
its validation, a first Ctrl-C (or SIGTERM) finishes and saves the current step, and a resume validates again a
step whose validation was cut short. Logs without a terminal get one plain line per log period."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import co2s.engine.trainer as trainer_module
from co2s.cli.main import main
from co2s.engine.metrics_log import read_log
from co2s.models.loading import read_checkpoint
from tests.conftest import tiny_config_dict
from tests.engine.test_run_lock import SAFETY_S, _finish, _wait_for_file, _wait_until

REAL_STEP = trainer_module.train_step
REAL_SCORE = trainer_module.score_predictions


def _config(tmp_path, dataset, name, **train):
    cfg = tiny_config_dict(dataset, tmp_path / name, **{"iters": 6, "val_every": 3, "ckpt_every": 100,
                                                        "log_every": 1, "deterministic": True, **train})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _sigint_in_validation(monkeypatch, at_step):
    """The process sends itself SIGINT once the validation of ``at_step`` has started."""
    def score(segmenter, val_set, **kwargs):
        if trainer_module_state["step"] == at_step and not trainer_module_state["sent"]:
            trainer_module_state["sent"] = True
            os.kill(os.getpid(), signal.SIGINT)
        return REAL_SCORE(segmenter, val_set, **kwargs)

    def step(fabric, method, batches, step, schedule, sums):
        trainer_module_state["step"] = step + 1
        return REAL_STEP(fabric, method, batches, step, schedule, sums)

    trainer_module_state = {"step": 0, "sent": False}
    monkeypatch.setattr(trainer_module, "score_predictions", score)
    monkeypatch.setattr(trainer_module, "train_step", step)


def _vals(run):
    return [r["step"] for r in read_log(Path(run) / "metrics.jsonl") if r["kind"] == "val"]


def _same_weights(a, b):
    a, b = read_checkpoint(a), read_checkpoint(b)
    assert a["step"] == b["step"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["best"] == b["best"] and a["best_per_prediction"] == b["best_per_prediction"]


def test_ctrl_c_during_validation_keeps_the_training_and_validates_again(tiny_dataset, tmp_path, monkeypatch, capsys):
    killed = _config(tmp_path, tiny_dataset, "killed")
    _sigint_in_validation(monkeypatch, at_step=3)
    assert main(["train", str(killed), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to resume from" in err
    run = tmp_path / "killed"
    assert read_checkpoint(run / "latest.ckpt")["step"] == 3  # written before the validation
    assert _vals(run) == []  # the cut validation left no record

    monkeypatch.undo()
    assert main(["train", str(killed), "--no-progress"]) == 0
    assert "from step 3" in capsys.readouterr().out
    assert _vals(run) == [3, 6]  # step 3 validated again, once

    straight = _config(tmp_path, tiny_dataset, "straight")
    assert main(["train", str(straight), "--no-progress"]) == 0
    for name in ("latest.ckpt", "best.ckpt"):
        _same_weights(tmp_path / "straight" / name, run / name)


@pytest.mark.parametrize("signum, code, said", [
    (signal.SIGINT, 130, "interrupted"),  # Ctrl-C
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),  # a scheduler's pre-emption, kill, docker stop
])
def test_a_first_signal_in_a_step_finishes_and_saves_that_step(tiny_dataset, tmp_path, monkeypatch, capsys,
                                                               signum, code, said):
    path = _config(tmp_path, tiny_dataset, "run", val_every=100)
    handler = signal.getsignal(signum)

    def step(fabric, method, batches, step, schedule, sums):
        if step == 1:  # the signal arrives in the middle of step 2
            os.kill(os.getpid(), signum)
        return REAL_STEP(fabric, method, batches, step, schedule, sums)

    monkeypatch.setattr(trainer_module, "train_step", step)
    assert main(["train", str(path), "--no-progress"]) == code
    captured = capsys.readouterr()
    assert f"{said}: finishing this step and saving it" in captured.out + captured.err
    assert f"{said}; rerun the same command to resume from {tmp_path / 'run' / 'latest.ckpt'}" in captured.err
    assert read_checkpoint(tmp_path / "run" / "latest.ckpt")["step"] == 2  # not a ckpt_every step
    assert signal.getsignal(signum) is handler  # given back
    monkeypatch.undo()
    assert main(["train", str(path), "--no-progress"]) == 0
    assert "from step 2" in capsys.readouterr().out


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen) -> None:
    _wait_until(lambda: any(r["kind"] == "train" and r["step"] >= step for r in _records(run)),
                f"step {step}", proc)


def _records(run: Path) -> list[dict]:
    try:
        return read_log(run / "metrics.jsonl")
    except FileNotFoundError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the loading workers in /proc (Linux)")
@pytest.mark.parametrize("signum, code, said", [
    (signal.SIGINT, 130, "interrupted"),  # Ctrl-C in a terminal reaches the whole foreground group
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),  # a scheduler signals every process of the job
])
def test_a_signal_to_the_whole_job_with_loading_workers_stops_it_in_one_line(tiny_dataset, tmp_path,
                                                                             signum, code, said):
    """The loading workers get the signal too, and before the main process: the run goes on (the
    step that the main process finishes needs its batches; a worker that ended on the signal made
    the run die with "worker exited unexpectedly"), then stops as Ctrl-C stops it (how to resume,
    no traceback), and no worker is left."""
    path = _config(tmp_path, tiny_dataset, "run", iters=100_000, val_every=100_000, ckpt_every=5, num_workers=2)
    proc = subprocess.Popen([sys.executable, "-m", "co2s.cli.main", "train", str(path), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = tmp_path / "run"
    _wait_for_file(run / "latest.ckpt", proc)  # the workers are loading by now
    workers = _children(proc.pid)
    assert workers, "no loading workers found"
    for pid in workers:
        os.kill(pid, signum)
    reached = max(r["step"] for r in _records(run) if r["kind"] == "train")
    _wait_for_step(run, reached + 8, proc)  # past every batch loaded before the signal
    os.killpg(proc.pid, signum)
    _, err = _finish(proc)
    assert proc.returncode == code, err
    assert f"{said}; rerun the same command to resume from" in err and "Traceback" not in err
    deadline = time.monotonic() + SAFETY_S
    while time.monotonic() < deadline:  # the workers end with the run (they may take a moment to go)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("data-loading workers outlived the run")


def test_a_finished_run_is_not_validated_again(tiny_config, capsys):
    from co2s.api import train

    train(tiny_config, progress=False)
    before = _vals(tiny_config.run_dir)
    train(tiny_config, progress=False)
    assert _vals(tiny_config.run_dir) == before


def test_without_a_terminal_each_log_period_is_one_plain_line(tiny_dataset, tmp_path, capsys):
    path = _config(tmp_path, tiny_dataset, "run", val_every=100, log_every=2)
    assert main(["train", str(path)]) == 0  # pytest's capture is not a terminal: no bars
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("step ") and "val mIoU" not in line]
    assert [line.split(":")[0] for line in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert all("loss " in line and "images_per_sec " in line for line in lines)
    assert "\r" not in captured.err + captured.out
