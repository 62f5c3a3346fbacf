"""One run per run folder (co2s.engine.run_lock), and checkpoints that survive a kill at any point:
``burn_in.ckpt`` committed before ``latest`` of its step, no temporaries left after a restart, and
nothing written outside the run folder (no staging in $TMPDIR).

The runs are real ``co2s train`` processes; the tests wait on events (a process's exit, a file
appearing), with generous timeouts only as a safety net that fails the test with a message."""

from __future__ import annotations

import hashlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from co2s.api import train
from co2s.config.loader import validate
from co2s.models.loading import read_checkpoint
from tests.conftest import tiny_config_dict

SAFETY_S = 300  # a stuck test fails after this; no test waits on it when things work


def _write_config(tmp_path: Path, root: Path, name: str = "run", **train_args) -> Path:
    cfg = tiny_config_dict(root, tmp_path / name, **{"val_every": 1000, **train_args})
    if train_args.get("method") == "fixmatch":
        (root / "unl.txt").write_text("images/t4.png\nimages/t5.png\n")
        cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "co2s.cli.main", "train", str(config), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=SAFETY_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"co2s train (pid {proc.pid}) still running after {SAFETY_S} s")


def _wait_until(ready, what: str, proc: subprocess.Popen) -> None:
    """Poll ``ready()`` until true; fail with the run's output if the run ends first ("co2s train ended
    before {what}"), or kill it if it has not got there within SAFETY_S."""
    deadline = time.monotonic() + SAFETY_S
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"co2s train ended (rc {proc.returncode}) before {what}:\n{out}{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"co2s train did not get to {what} within {SAFETY_S} s")
        time.sleep(0.05)


def _wait_for_file(path: Path, proc: subprocess.Popen) -> None:
    _wait_until(path.is_file, f"writing {path}", proc)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*tmp"))


@pytest.mark.slow
def test_second_run_into_a_held_folder_is_refused_and_writes_nothing(tiny_dataset, tmp_path):
    config = _write_config(tmp_path, tiny_dataset, iters=100_000, ckpt_every=1)
    first = _launch(config)
    run_dir = tmp_path / "run"
    try:
        _wait_for_file(run_dir / "latest.ckpt", first)
        first.send_signal(signal.SIGSTOP)  # frozen mid-run: it holds the lock and writes nothing
        before = _hashes(run_dir)
        second = _launch(config, CO2S_TEST_KILL_AFTER_STEP="1")  # a run let through dies at once
        out, err = _finish(second)
        assert _hashes(run_dir) == before
    finally:
        first.kill()
        first.communicate(timeout=SAFETY_S)
    assert second.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: run folder {run_dir} is in use by another training run "
                               f"(pid {first.pid} on host {platform.node()})"), err


@pytest.mark.slow
def test_lock_of_a_sigkilled_run_does_not_block_the_next(tiny_dataset, tmp_path):
    config = _write_config(tmp_path, tiny_dataset, iters=4, ckpt_every=1)
    killed = _launch(config, CO2S_TEST_KILL_AFTER_STEP="2")
    out, err = _finish(killed)
    assert killed.returncode == -signal.SIGKILL, out + err
    assert (tmp_path / "run" / ".co2s.lock").read_text().split() == [str(killed.pid), platform.node()]
    resumed = _launch(config)
    out, err = _finish(resumed)
    assert resumed.returncode == 0, out + err
    assert "resuming" in out and "from step 2" in out
    assert read_checkpoint(tmp_path / "run" / "latest.ckpt")["step"] == 4


@pytest.mark.slow
def test_kill_between_burn_in_and_latest_commits_keeps_burn_in(tiny_dataset, tmp_path):
    """burn_in.ckpt (step 2) is committed first; a kill right after it leaves latest at step 1,
    and the restart redoes step 2. Nothing is staged in $TMPDIR, nothing left behind."""
    config = _write_config(tmp_path, tiny_dataset, iters=4, ckpt_every=1, method="fixmatch",
                           semi={"burn_in": 0.5})
    staging = tmp_path / "tmpdir"
    staging.mkdir()
    # torch makes its (empty) inductor cache folder in $TMPDIR on import: elsewhere, please
    tmp_env = {"TMPDIR": str(staging), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    killed = _launch(config, CO2S_TEST_KILL_AT="committed:burn_in.ckpt", **tmp_env)
    out, err = _finish(killed)
    assert killed.returncode == -signal.SIGKILL, out + err
    run_dir = tmp_path / "run"
    assert read_checkpoint(run_dir / "burn_in.ckpt")["step"] == 2
    assert read_checkpoint(run_dir / "latest.ckpt")["step"] == 1
    resumed = _launch(config, **tmp_env)
    out, err = _finish(resumed)
    assert resumed.returncode == 0, out + err
    assert read_checkpoint(run_dir / "burn_in.ckpt")["step"] == 2
    assert read_checkpoint(run_dir / "latest.ckpt")["step"] == 4
    assert _temporaries(run_dir) == [] and list(staging.iterdir()) == []


@pytest.mark.slow
def test_restart_recovers_a_whole_burn_in_temporary_and_removes_the_rest(tiny_dataset, tmp_path):
    """The state the old order (latest committed first) left after a kill between the two
    commits: latest at the burn-in's step, burn_in.ckpt only as its complete temporary; plus torn
    temporaries of latest and best. The restart commits the first and removes the others."""
    config = _write_config(tmp_path, tiny_dataset, iters=4, ckpt_every=1, method="fixmatch",
                           semi={"burn_in": 0.5})
    killed = _launch(config, CO2S_TEST_KILL_AFTER_STEP="2")
    out, err = _finish(killed)
    assert killed.returncode == -signal.SIGKILL, out + err
    run_dir = tmp_path / "run"
    os.replace(run_dir / "burn_in.ckpt", run_dir / ".burn_in.ckpt.tmp")
    (run_dir / ".latest.ckpt.tmp").write_bytes(b"torn")
    (run_dir / ".best.ckpt.12345.tmp").write_bytes(b"")
    resumed = _launch(config)
    out, err = _finish(resumed)
    assert resumed.returncode == 0, out + err
    assert "from step 2" in out
    assert read_checkpoint(run_dir / "burn_in.ckpt")["step"] == 2
    assert _temporaries(run_dir) == []


def test_training_stages_nothing_in_the_temp_dir(tiny_dataset, tmp_path, monkeypatch):
    """With $TMPDIR (and so tempfile's dir) missing, training still writes its checkpoints: Fabric's
    default writer staged them there (fsspec) and failed."""
    missing = tmp_path / "no-such-dir"
    monkeypatch.setenv("TMPDIR", str(missing))
    monkeypatch.setattr(tempfile, "tempdir", str(missing))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # not a checkpoint
    config = validate(tiny_config_dict(tiny_dataset, tmp_path / "run", iters=4, ckpt_every=2, val_every=2))
    assert train(config, progress=False).steps == 4
    run_dir = tmp_path / "run"
    assert read_checkpoint(run_dir / "latest.ckpt")["step"] == 4 and (run_dir / "best.ckpt").is_file()
    assert _temporaries(run_dir) == [] and not missing.exists()


def test_the_lock_is_released_when_training_ends(tiny_dataset, tmp_path):
    """In one process, train twice into one folder (the API, the demo): the first run's lock is
    gone once it returns, and a lock held elsewhere refuses the run before it writes."""
    from co2s.engine.run_lock import RunLock
    from co2s.errors import RunLockedError

    config = validate(tiny_config_dict(tiny_dataset, tmp_path / "run", iters=2, val_every=1000))
    train(config, progress=False)
    assert train(config, progress=False).steps == 2
    held = RunLock(tmp_path / "run").acquire()
    try:
        before = _hashes(tmp_path / "run")
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on host "):
            train(config, progress=False)
        assert _hashes(tmp_path / "run") == before
    finally:
        held.release()
