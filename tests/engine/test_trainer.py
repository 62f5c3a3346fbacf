import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

from co2s.config.loader import validate
from co2s.models.loading import load_trained_models, read_checkpoint
from co2s.engine.metrics_log import read_log
from co2s.api import train
from co2s.errors import CheckpointError, ConfigError
from tests.conftest import tiny_config_dict


def test_training_writes_run_directory(tiny_config):
    result = train(tiny_config, progress=False)
    run = result.run_dir
    assert result.steps == 6
    for name in ("config.yaml", "run_info.jsonl", "metrics.jsonl", "latest.ckpt", "best.ckpt"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries
    info = json.loads((run / "run_info.jsonl").read_text().splitlines()[0])
    assert info["co2s_version"] and "git_revision" in info
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["iters"] == 6
    log = read_log(run / "metrics.jsonl")
    train_steps = [r["step"] for r in log if r["kind"] == "train"]
    val_steps = [r["step"] for r in log if r["kind"] == "val"]
    assert train_steps == [2, 4, 6] and val_steps == [3, 6]
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["images_per_sec"] > 0 for r in log if r["kind"] == "train")
    ckpt = read_checkpoint(run / "latest.ckpt")
    assert ckpt["step"] == 6 and ckpt["config"]["train"]["iters"] == 6
    assert result.best["split"] == "val" and result.best["step"] in (3, 6)
    loaded = load_trained_models(run / "best.ckpt")
    assert loaded.contract.classes == ["c0", "c1", "c2"] and not loaded.models["model"].training
    assert loaded.training_config["train"]["iters"] == 6


def test_finished_run_is_not_retrained_and_other_config_is_refused(tiny_dataset, tmp_path):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=4)
    train(validate(cfg), progress=False)
    before = (tmp_path / "run" / "latest.ckpt").stat().st_mtime_ns
    assert train(validate(cfg), progress=False).steps == 4
    assert (tmp_path / "run" / "latest.ckpt").stat().st_mtime_ns == before
    cfg["train"]["lr"] = 0.5
    with pytest.raises(ConfigError, match=r"already holds a run with a different config:\n  train\.lr: 0\.01 -> 0\.5"):
        train(validate(cfg), progress=False)


def test_a_run_saved_before_a_setting_existed_still_resumes(tiny_dataset, tmp_path):
    """An older release's config.yaml lacks the settings added since: they take their defaults
    (train.parallel_models is True by default, absent in the file), and the run resumes."""
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=4)
    train(validate(cfg), progress=False)
    saved = tmp_path / "run" / "config.yaml"
    raw = yaml.safe_load(saved.read_text())
    del raw["train"]["parallel_models"]
    saved.write_text(yaml.safe_dump(raw))
    assert train(validate(cfg), progress=False).steps == 4  # not refused as "a different config"
    raw["train"]["lr"] = 0.5  # a real difference is still refused
    saved.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.5 -> 0\.01"):
        train(validate(cfg), progress=False)


def test_bad_checkpoints_give_clear_errors(tmp_path, tiny_config):
    train(tiny_config, progress=False)
    data = (tiny_config.run_dir and open(f"{tiny_config.run_dir}/latest.ckpt", "rb").read())
    (tmp_path / "trunc.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint .*trunc\.ckpt is truncated"):
        read_checkpoint(tmp_path / "trunc.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a co2s checkpoint"):
        read_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "none.ckpt")


def _launch(config_path, env):
    return subprocess.Popen(
        [sys.executable, "-m", "co2s.cli.main", "train", str(config_path), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


STALL_S = 300  # a run whose folder has not changed for this long is stuck: the test fails


def _folder_state(run_dir):
    if not run_dir.is_dir():
        return None
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.iterdir() if p.is_file())


def _wait(proc, run_dir) -> str:
    """The child's output once it exits, however long a loaded machine makes it take: no budget
    for the whole run, only a watchdog that fails the test when the run folder stops changing for
    STALL_S (a hang), since a working run writes its log and checkpoints every few steps."""
    chunks = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    seen, changed = None, time.monotonic()
    while proc.poll() is None:
        try:
            proc.wait(timeout=2)  # returns the moment it exits
        except subprocess.TimeoutExpired:
            state = _folder_state(run_dir)
            if state != seen:
                seen, changed = state, time.monotonic()
            elif time.monotonic() - changed > STALL_S:
                proc.kill()
                proc.wait()
                reader.join()
                pytest.fail(f"co2s train into {run_dir} wrote nothing for {STALL_S} s; killed it:\n"
                            + "".join(chunks)[-3000:])
    reader.join()
    return chunks[0]


CO2S_TINY = {"name": "students", "students": [
    {"name": "clip", "backbone": {"kind": "clip", "arch": "tiny", "tune": "attention"}, "guidance": "text",
     "text": {"prototypes": "random"}},
    {"name": "dino", "backbone": {"kind": "dinov3", "arch": "tiny", "tune": "attention"}, "guidance": "queries"}]}


KILL_AFTER = 10  # the trainer's test hook kills the run (SIGKILL) right after this step's checkpoint


@pytest.mark.slow
@pytest.mark.timeout(0)  # no wall-clock budget under load: _wait's watchdog catches a hang
@pytest.mark.parametrize("method,iters", [("supervised", 30), ("co2s", 20)])
def test_sigkilled_run_resumes_to_identical_weights(tiny_dataset, tmp_path, method, iters):
    """Kill -9 mid-run, restart: it resumes from `latest` and ends where an unbroken run ends.

    The kill is deterministic: CO2S_TEST_KILL_AFTER_STEP makes the trainer SIGKILL itself after
    step 10, once that step's checkpoint is on disk (ckpt_every 5), wherever the machine's load."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    configs = {}
    (tiny_dataset / "train.txt").write_text("".join(f"images/t{i}.png masks/t{i}.png\n" for i in range(3)))
    (tiny_dataset / "unl.txt").write_text("images/t3.png\nimages/t4.png\nimages/t5.png\n")
    for name in ("straight", "killed"):
        cfg = tiny_config_dict(tiny_dataset, tmp_path / name, iters=iters, ckpt_every=5,
                               val_every=1000, deterministic=True, method=method)
        if method == "co2s":
            cfg["model"] = CO2S_TINY
            cfg["data"]["splits"]["unlabelled"] = "unl.txt"
            cfg["train"]["semi"] = {"tau": 0.5}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        configs[name] = path

    proc = _launch(configs["killed"], {**env, "CO2S_TEST_KILL_AFTER_STEP": str(KILL_AFTER)})
    out = _wait(proc, tmp_path / "killed")
    assert proc.returncode == -signal.SIGKILL, out
    latest = tmp_path / "killed" / "latest.ckpt"
    assert read_checkpoint(latest)["step"] == KILL_AFTER

    resumed = _launch(configs["killed"], env)
    out = _wait(resumed, tmp_path / "killed")
    assert resumed.returncode == 0, out
    assert int(out.split("from step ")[1].split()[0]) == KILL_AFTER

    straight = _launch(configs["straight"], env)
    out2 = _wait(straight, tmp_path / "straight")
    assert straight.returncode == 0, out2

    a = read_checkpoint(tmp_path / "straight" / "latest.ckpt")
    b = read_checkpoint(latest)
    assert a["step"] == b["step"] == iters
    names = ["model"] if method == "supervised" else ["clip", "dino"]
    for name in names:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
        assert a[f"opt_{name}"]["state"].keys() == b[f"opt_{name}"]["state"].keys()
    # the log holds each step once, even across the crash
    steps = [r["step"] for r in read_log(tmp_path / "killed" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == iters
    assert steps == list(range(2, iters + 1, 2))  # log_every 2: none lost, none twice
