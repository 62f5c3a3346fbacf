"""A model folder is an untrusted file: every case of the tampered-folder corpus
(``tampered_folders.py``: wrong types, absurd sizes, NaN, disagreeing fields, damaged weights) is
refused by ``co2s predict`` with exit code 2 and one ``error:`` line naming the file and the
reason, no traceback, nothing in the folder changed, nothing predicted, within 10 s of CPU and
without allocating beyond 1 GiB over what the process held (a MemoryError fails the case). The
untouched folders predict under the same cap."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.tampered_folders import CASES, CONFIG, WEIGHTS

REPO = Path(__file__).resolve().parents[2]
CPU_LIMIT_S = 10.0


def _problems(result: dict) -> list[str]:
    """What is wrong with one case's outcome (empty: as required)."""
    if result["exception"]:
        return [f"raised {result['exception']}"]
    lines = result["stderr"].splitlines()
    problems = []
    if result["changed"]:
        problems.append("the folder changed")
    if result["cpu_s"] >= CPU_LIMIT_S:
        problems.append(f"took {result['cpu_s']} s of CPU")
    if result["expect"] == "ok":
        if result["code"] != 0 or not result["outputs"]:
            problems.append(f"a control case did not predict: exit {result['code']}, stderr {lines}")
        return problems
    folder = Path(result["folder"])
    named = {"json": str(folder / CONFIG), "weights": str(folder / WEIGHTS), "folder": str(folder)}[result["expect"]]
    if result["code"] != 2:
        problems.append(f"exit code {result['code']}")
    if len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"stderr is not one 'error:' line: {lines[:3]}")
    elif named not in lines[0]:
        problems.append(f"the error does not name {named}: {lines[0][:300]}")
    elif result["needle"] not in lines[0]:
        problems.append(f"the error does not say {result['needle']!r}: {lines[0][:300]}")
    if "Traceback" in result["stderr"]:
        problems.append("a traceback")
    if re.search(r"out of memory|allocate", result["stderr"], re.I):
        problems.append("it allocated before refusing")
    if result["outputs"]:
        problems.append(f"predicted {result['outputs']}")
    return problems


@pytest.mark.slow
def test_every_tampered_folder_is_refused_in_one_line_without_allocating(tmp_path):
    assert len([c for c in CASES if c.names != "ok"]) >= 50 and len({c.name for c in CASES}) == len(CASES)
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}  # few arenas: a stable address space
    run = subprocess.run([sys.executable, "-m", "tests.models.tampered_folders", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert [r["name"] for r in results] == [c.name for c in CASES]
    failing = {r["name"]: _problems(r) for r in results if _problems(r)}
    assert not failing, "\n".join(f"{name}: {'; '.join(p)}" for name, p in failing.items())

