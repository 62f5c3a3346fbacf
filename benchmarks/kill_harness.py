"""Kill harness: SIGKILL `co2s train` at random moments and at every checkpoint write, resume it,
and check that nothing was lost (a benchmark, not a test).

    python benchmarks/kill_harness.py --trials 100        # continues from the committed records
    python benchmarks/kill_harness.py --report            # the figures of the records so far

One reference run trains a tiny Co2S pair (two students, supervised burn-in, validation, all three
checkpoints: ``latest``, ``best``, ``burn_in``) without interruption. Each trial trains the same
config into a fresh folder, kills it one to three times and resumes until it finishes; then it
checks what a user would lose:

- lost checkpoints: a checkpoint of the reference run that the trial's folder lacks;
- leftover files: checkpoint temporaries (``.<name>.tmp``) left in the run folder, anything left in
  the trial's own ``$TMPDIR``;
- bit-identical ends: every checkpoint (weights, optimiser states, step, best record, RNG states;
  everything but the stored config, which names the folder) hashes as the reference's, and the
  training log holds every logged step exactly once.

Kinds of kill, in turn per trial:

- ``aimed``: the trainer's test hook (``CO2S_TEST_KILL_AT``, :mod:`co2s.engine.checkpoint`) kills at
  one phase of one checkpoint write: ``torn`` (the temporary half written), ``written`` (whole, not
  renamed), ``committed`` (just renamed), for every write the reference run makes (``latest`` at each
  ``ckpt_every``, ``burn_in`` at the end of the burn-in, ``best`` at the first validation): the first
  ``3 x writes`` trials cover each once;
- ``random``: a kill at a uniform moment of the reference run's wall time (startup included);
- ``watch``: the harness polls the run folder and kills the moment the k-th checkpoint temporary
  appears (k random): a real kill inside ``torch.save`` or between it and the rename.

Half of the non-aimed trials are killed again (at a random moment) while resuming. Records:
``benchmarks/results/kill_harness/trials.jsonl`` (one line per trial, appended as it finishes; a new
invocation continues after the last recorded trial) and ``meta.json`` (the config and the reference
fingerprints, which a later invocation must reproduce, or it stops).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import yaml  # noqa: E402

from co2s.demo.synthetic import write_demo_dataset  # noqa: E402
from co2s.engine.checkpoint import KILL_PHASES  # noqa: E402
from co2s.engine.run_lock import LOCK_FILE  # noqa: E402
from co2s.models.loading import read_checkpoint  # noqa: E402
from co2s.run_folder import BEST, BURN_IN, LATEST, METRICS_LOG  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "kill_harness"
CHECKPOINTS = (LATEST, BEST, BURN_IN)
MAX_KILLS = 3

# The run under test: a tiny two-student Co2S run whose 24 steps write every kind of checkpoint.
TRAIN = {"method": "co2s", "crop_size": 32, "batch_size": 2, "iters": 24, "val_every": 8, "ckpt_every": 4,
         "log_every": 2, "num_workers": 0, "lr": 0.001, "deterministic": True,
         "semi": {"tau": 0.5, "burn_in": 0.5}}


def run_config(data_root: Path, run_dir: Path) -> dict:
    return {"preset": "models/co2s-tiny", "name": "kill-harness", "out_dir": str(run_dir),
            "data": {"root": str(data_root), "classes": ["a", "b", "c", "d", "e", "f"],
                     "splits": {"labelled": "splits/labelled.txt", "unlabelled": "splits/unlabelled.txt",
                                "val": "splits/val.txt", "test": "splits/test.txt"}},
            "train": TRAIN, "eval": {"batch_size": 4}, "engine": {"accelerator": "cpu"}}


def checkpoint_writes(burn_in_step: int) -> list[tuple[str, int]]:
    """Every checkpoint write of the run, as (file, step): what the aimed kills aim at (``best``
    only at the first validation, the one write of it that is certain)."""
    iters, every = TRAIN["iters"], TRAIN["ckpt_every"]
    return ([(LATEST, s) for s in range(every, iters + 1, every)] + [(BURN_IN, burn_in_step)]
            + [(BEST, TRAIN["val_every"])])


def fingerprint(path: Path) -> str:
    """A hash of everything a checkpoint holds but its config (which names the run folder)."""
    ckpt = read_checkpoint(path)
    digest = hashlib.sha256()

    def walk(value, key=""):
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            digest.update(str((value.dtype, tuple(value.shape))).encode())
            digest.update(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                          if value.numel() else b"")
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(value[k], f"{key}/{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        else:
            digest.update(repr(value).encode())

    walk({k: v for k, v in ckpt.items() if k != "config"})
    return digest.hexdigest()


def fingerprints(run_dir: Path) -> dict[str, str]:
    return {name: fingerprint(run_dir / name) for name in CHECKPOINTS if (run_dir / name).is_file()}


def logged_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / METRICS_LOG).read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r.get("kind") == "train"]


def temporaries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE)


class Trainer:
    """Launches `co2s train` on one config with a private $TMPDIR, as a subprocess to kill."""

    def __init__(self, config: Path, tmpdir: Path, scratch: Path) -> None:
        self.config, self.tmpdir = config, tmpdir
        tmpdir.mkdir(parents=True, exist_ok=True)
        # torch makes its (empty) inductor cache folder in $TMPDIR on import: not ours to count
        self.env = {**os.environ, "PYTHONHASHSEED": "0", "TMPDIR": str(tmpdir),
                    "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor")}
        self.env.pop("CO2S_TEST_KILL_AT", None)

    def start(self, kill_at: str | None = None) -> subprocess.Popen:
        env = {**self.env, **({"CO2S_TEST_KILL_AT": kill_at} if kill_at else {})}
        return subprocess.Popen([sys.executable, "-m", "co2s.cli.main", "train", str(self.config), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)


def _state(run_dir: Path) -> dict:
    """What the run folder holds at the moment of a kill."""
    if not run_dir.is_dir():
        return {"latest_step": None, "temporaries": []}
    try:
        step = read_checkpoint(run_dir / LATEST)["step"] if (run_dir / LATEST).is_file() else None
    except Exception:  # noqa: BLE001 - a record, not a check: the end is checked below
        step = "unreadable"
    return {"latest_step": step, "temporaries": temporaries(run_dir)}


def _kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return False  # finished first
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True


def _kill_at_temporary(proc: subprocess.Popen, run_dir: Path, k: int) -> bool:
    """Kill when the k-th checkpoint temporary appears (a new appearance after an absence)."""
    seen, present = 0, False
    while proc.poll() is None:
        try:
            now = any(e.name.endswith(".tmp") and ".ckpt" in e.name for e in os.scandir(run_dir))
        except FileNotFoundError:
            now = False
        if now and not present:
            seen += 1
            if seen == k:
                proc.kill()
                proc.wait()
                return True
        present = now
        time.sleep(0.0005)
    return False


def plan(trial: int, seed: int, reference: dict) -> dict:
    """The kills of one trial, a function of (seed, trial, reference) only, so a continued harness
    plans the same."""
    rng = random.Random(seed * 100_003 + trial)
    writes, reference_s = reference["writes"], reference["wall_s"]
    aimed = [(phase, name, step) for name, step in writes for phase in KILL_PHASES]
    if trial < len(aimed):
        phase, name, step = aimed[trial]
        kills = [{"kind": "aimed", "at": f"{phase}:{name}@{step}"}]
    else:
        first = rng.choice(["random", "watch"])
        kills = [{"kind": "random", "after_s": round(rng.uniform(0, reference_s), 3)} if first == "random"
                 else {"kind": "watch", "temporary": rng.randint(1, len(writes))}]
    if trial >= len(aimed) and rng.random() < 0.5:  # killed again while resuming
        for _ in range(rng.randint(1, MAX_KILLS - 1)):
            kills.append({"kind": "random", "after_s": round(rng.uniform(0, reference_s), 3)})
    return {"trial": trial, "kills": kills}


def run_trial(trial_plan: dict, work: Path, data_root: Path, reference: dict) -> dict:
    folder = work / f"trial_{trial_plan['trial']:04d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run_dir = folder / "run"
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(run_config(data_root, run_dir)))
    trainer = Trainer(config, folder / "tmp", work)
    start = time.perf_counter()
    kills = []
    for kill in trial_plan["kills"]:
        if kill["kind"] == "aimed":
            proc = trainer.start(kill_at=kill["at"])
            proc.wait()
            landed = proc.returncode == -signal.SIGKILL
            if not landed:
                return {**trial_plan, "error": f"the aimed kill {kill['at']} never happened: no such write"}
        else:
            proc = trainer.start()
            landed = (_kill_after(proc, kill["after_s"]) if kill["kind"] == "random"
                      else _kill_at_temporary(proc, run_dir, kill["temporary"]))
        output = proc.stdout.read().decode(errors="replace")
        proc.stdout.close()
        if not landed and proc.returncode != 0:
            return {**trial_plan, "error": f"attempt failed with {proc.returncode}: {output[-2000:]}"}
        kills.append({**kill, "landed": landed, **(_state(run_dir) if landed else {})})
        if not landed:
            break  # it finished before the kill: nothing left to resume
    if kills[-1]["landed"]:
        proc = trainer.start()
        output = proc.communicate()[0].decode(errors="replace")
        if proc.returncode != 0:
            return {**trial_plan, "kills": kills, "error": f"resume failed with {proc.returncode}: {output[-2000:]}"}
    got = fingerprints(run_dir)
    steps = logged_steps(run_dir)
    record = {
        **trial_plan, "kills": kills, "wall_s": round(time.perf_counter() - start, 2),
        "lost": sorted(set(reference["fingerprints"]) - set(got)),
        "extra": sorted(set(got) - set(reference["fingerprints"])),
        "differ": sorted(n for n in got if n in reference["fingerprints"] and got[n] != reference["fingerprints"][n]),
        "leftover_run_dir": temporaries(run_dir),
        "leftover_tmpdir": sorted(p.name for p in trainer.tmpdir.iterdir()),
        "log_steps_once": steps == reference["logged_steps"],
    }
    record["ok"] = (not record["lost"] and not record["extra"] and not record["differ"]
                    and not record["leftover_run_dir"] and not record["leftover_tmpdir"] and record["log_steps_once"])
    if record["ok"]:
        shutil.rmtree(folder)  # kept for inspection otherwise
    return record


def reference_run(work: Path, data_root: Path) -> dict:
    folder = work / "reference"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(run_config(data_root, folder / "run")))
    trainer = Trainer(config, folder / "tmp", work)
    start = time.perf_counter()
    proc = trainer.start()
    output = proc.communicate()[0].decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{output[-3000:]}")
    got = fingerprints(folder / "run")
    if set(got) != set(CHECKPOINTS):
        raise SystemExit(f"the reference run wrote {sorted(got)}, not every checkpoint: the harness needs all")
    burn_in_step = int(read_checkpoint(folder / "run" / BURN_IN)["step"])
    return {"wall_s": round(time.perf_counter() - start, 2), "fingerprints": got,
            "logged_steps": logged_steps(folder / "run"), "writes": checkpoint_writes(burn_in_step)}


def summarise(records: list[dict]) -> dict:
    kills = [k for r in records for k in r.get("kills", []) if k.get("landed")]
    mid_write = [k for k in kills if any(".ckpt" in t for t in k.get("temporaries", []))]
    return {
        "trials": len(records),
        "failed_attempts": sum("error" in r for r in records),
        "kills": len(kills),
        "kills_by_kind": {kind: sum(k["kind"] == kind for k in kills) for kind in ("aimed", "random", "watch")},
        "aimed_by_phase": {p: sum(k["kind"] == "aimed" and k["at"].startswith(p + ":") for k in kills)
                           for p in KILL_PHASES},
        "kills_with_a_checkpoint_temporary_on_disk": len(mid_write),
        "kills_before_any_checkpoint": sum(k.get("latest_step") is None for k in kills),
        "trials_killed_more_than_once": sum(sum(k.get("landed", False) for k in r.get("kills", [])) > 1
                                            for r in records),
        "trials_finished_before_their_kill": sum(not r["kills"][0]["landed"] for r in records if r.get("kills")),
        "lost_checkpoints": sum(len(r.get("lost", [])) for r in records),
        "leftover_files": sum(len(r.get("leftover_run_dir", [])) + len(r.get("leftover_tmpdir", []))
                              for r in records),
        "bit_identical_ends": sum(r.get("ok", False) for r in records),
        "median_trial_s": sorted(r["wall_s"] for r in records if "wall_s" in r)[len(records) // 2] if records else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100, help="trials in all (recorded ones count)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plans")
    parser.add_argument("--results", type=Path, default=RESULTS, help="records folder")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--report", action="store_true", help="print the figures of the records and stop")
    args = parser.parse_args()

    trials_file, meta_file = args.results / "trials.jsonl", args.results / "meta.json"
    records = [json.loads(line) for line in trials_file.read_text().splitlines()] if trials_file.is_file() else []
    if args.report:
        print(json.dumps(summarise(records), indent=2))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="co2s-kill-harness-"))
    data_root = work / "data"
    write_demo_dataset(data_root, tile_size=32, n_labelled=4, n_unlabelled=8, n_val=4, n_test=4,
                       n_scenes=1, scene_size=(64, 64))
    reference = reference_run(work, data_root)
    meta = {"train": TRAIN, "seed": args.seed, "writes": reference["writes"],
            "fingerprints": reference["fingerprints"], "logged_steps": reference["logged_steps"]}
    if meta_file.is_file():
        old = json.loads(meta_file.read_text())
        if {k: old.get(k) for k in meta} != json.loads(json.dumps(meta)):
            raise SystemExit(f"{meta_file} records another config or reference (a change in the code or "
                             "the machine?); move the records away to start again")
    args.results.mkdir(parents=True, exist_ok=True)
    meta_file.write_text(json.dumps({**meta, "reference_wall_s": reference["wall_s"]}, indent=1) + "\n")
    print(f"reference run: {reference['wall_s']} s; {len(records)} trials recorded", flush=True)

    for trial in range(len(records), args.trials):
        record = run_trial(plan(trial, args.seed, reference), work, data_root, reference)
        with trials_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        records.append(record)
        kills = ", ".join(f"{k['kind']}{'' if k['landed'] else ' (finished first)'}" for k in record.get("kills", []))
        print(f"trial {trial}: {'ok' if record.get('ok') else 'FAILED'} ({kills}; {record.get('wall_s')} s)",
              flush=True)
    print(json.dumps(summarise(records), indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
