"""A run forked at another run's burn-in (``fork_at_burn_in``): it resumes from the burn-in
checkpoint and ends with exactly the weights of a run that trained those steps itself; the
source's validations go along only with the weights of their best."""

from __future__ import annotations

import json

import torch

from co2s.api import train
from co2s.config.loader import validate
from co2s.engine.metrics_log import read_log
from co2s.engine.run_dir import fork_at_burn_in
from co2s.models.loading import read_checkpoint
from co2s.run_folder import RunFolder
from tests.conftest import tiny_config_dict


def _config(root, run, burn_in):
    (root / "unl.txt").write_text("images/t4.png\nimages/t5.png\n")
    cfg = tiny_config_dict(root, run, iters=6, val_every=100, ckpt_every=100, log_every=1, deterministic=True,
                           method="fixmatch")
    cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    cfg["train"]["semi"] = {"tau": 0.0, "burn_in": burn_in}
    return validate(cfg)


def test_a_forked_baseline_ends_with_the_weights_of_one_trained_from_scratch(tiny_dataset, tmp_path, capsys):
    semi = train(_config(tiny_dataset, tmp_path / "semi", 0.5), progress=False)
    assert read_checkpoint(RunFolder(semi.run_dir).burn_in)["step"] == 3
    assert fork_at_burn_in(semi.run_dir, tmp_path / "forked", 3)
    assert not fork_at_burn_in(semi.run_dir, tmp_path / "forked", 3)  # it has a checkpoint: left alone
    capsys.readouterr()
    forked = train(_config(tiny_dataset, tmp_path / "forked", 1.0), progress=False)  # the supervised baseline
    assert "from step 3" in capsys.readouterr().out
    straight = train(_config(tiny_dataset, tmp_path / "straight", 1.0), progress=False)
    a, b = read_checkpoint(RunFolder(forked.run_dir).latest), read_checkpoint(RunFolder(straight.run_dir).latest)
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    steps = [r["step"] for r in read_log(RunFolder(forked.run_dir).metrics_log) if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the burn-in's records came along, once


def test_co2s_detached_forked_at_the_co2s_burn_in_is_the_run_trained_from_step_0(tiny_dataset, tmp_path):
    """benchmarks/ssl_study.py forks co2s-detached from co2s: the stability gradient acts only after
    the burn-in, so the forked run ends with the weights of one that trained its burn-in itself."""
    (tiny_dataset / "unl.txt").write_text("images/t4.png\nimages/t5.png\n")

    def config(run, stability_gradient):
        cfg = tiny_config_dict(tiny_dataset, tmp_path / run, iters=6, val_every=100, ckpt_every=100,
                               deterministic=True, method="co2s")
        cfg["data"]["splits"]["unlabelled"] = "unl.txt"
        cfg["model"] = {"name": "students", "students": [
            {"name": "clip", "backbone": {"kind": "clip", "arch": "tiny", "tune": "full"}, "guidance": "text",
             "text": {"prototypes": "random"}},
            {"name": "cnn", "backbone": {"kind": "cnn", "arch": "tiny"}, "guidance": "queries"}]}
        cfg["train"]["semi"] = {"tau": 0.0, "burn_in": 0.5, "stability_gradient": stability_gradient}
        return validate(cfg)

    co2s = train(config("co2s", True), progress=False)
    assert fork_at_burn_in(co2s.run_dir, tmp_path / "forked", 3)
    forked = train(config("forked", False), progress=False)
    straight = train(config("straight", False), progress=False)
    a, b = read_checkpoint(RunFolder(forked.run_dir).latest), read_checkpoint(RunFolder(straight.run_dir).latest)
    assert all(torch.equal(a[name][k], b[name][k]) for name in ("clip", "cnn") for k in a[name])
    c = read_checkpoint(RunFolder(co2s.run_dir).latest)  # and the stability gradient did act after the fork
    assert not all(torch.equal(a[name][k], c[name][k]) for name in ("clip", "cnn") for k in a[name])


def _source(folder, best_step):
    """A run folder with a burn-in checkpoint at step 4 and validations at 2, 4 and 6, the best at
    ``best_step`` (its weights in best.ckpt)."""
    folder.mkdir()
    for name, content in (("burn_in.ckpt", b"burn-in"), ("best.ckpt", b"best"), ("latest.ckpt", b"latest")):
        (folder / name).write_bytes(content)
    records = [{"step": s, "kind": "train", "loss": 1.0} for s in range(1, 7)]
    records += [{"step": s, "kind": "val", "mIoU": 50.0 + (10 if s == best_step else 0)} for s in (2, 4, 6)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sorted(records, key=lambda r: r["step"])))
    return folder


def test_the_sources_validations_come_along_only_with_the_weights_of_their_best(tmp_path):
    early = _source(tmp_path / "early", best_step=2)
    assert fork_at_burn_in(early, tmp_path / "a", 4)
    assert (tmp_path / "a" / "latest.ckpt").read_bytes() == b"burn-in"
    assert (tmp_path / "a" / "best.ckpt").read_bytes() == b"best"  # the best (step 2) is before the fork
    kept = read_log(tmp_path / "a" / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in kept if r["kind"] == "val"] == [("val", 2), ("val", 4)]
    assert max(r["step"] for r in kept) == 4

    late = _source(tmp_path / "late", best_step=6)  # best.ckpt holds step 6: not the fork's to keep
    assert fork_at_burn_in(late, tmp_path / "b", 4)
    assert not (tmp_path / "b" / "best.ckpt").exists()
    assert [r["kind"] for r in read_log(tmp_path / "b" / "metrics.jsonl")] == ["train"] * 4

    assert not fork_at_burn_in(tmp_path / "b", tmp_path / "c", 4)  # no burn-in checkpoint
    assert not (tmp_path / "c").exists()
