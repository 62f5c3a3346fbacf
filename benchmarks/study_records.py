"""What the benchmark studies share: the git revision a record was made at, atomic record files,
mean ± spread in the tables, and sittings that start only the runs that end before a deadline (the
scripts in this folder import it; it imports nothing of co2s)."""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _checkout_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=REPO).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


# Read when a study starts (the scripts import this module first): a study runs for hours, and its
# records must name the code it imported, not a commit made in the checkout meanwhile.
_AT_START = _checkout_revision()


def git_revision() -> str:
    """The checkout's short revision when this process started, with ``+dirty`` when ``src`` then
    differed from it."""
    return _AT_START


def write_record(path: Path, record: dict) -> None:
    """Write ``record`` as JSON so that an interrupted write never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, path)


def mean_sd(values: list[float], digits: int = 1) -> str:
    """``mean ± sample standard deviation (n=...)``, ``-`` for no values."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f} (n={len(values)})"


def parse_until(text: str | None, now: datetime.datetime | None = None) -> float | None:
    """``--until``: ``HH:MM`` (today, local time) or an ISO date-time, as epoch seconds; ``None``
    for no deadline. A time already past is an error, not a sitting that starts nothing."""
    if not text:
        return None
    now = now or datetime.datetime.now()
    try:
        if len(text) <= 5 and ":" in text:
            hour, minute = (int(x) for x in text.split(":"))
            when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        else:
            when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"--until {text!r}: give HH:MM or an ISO date-time (2026-12-07T21:00)") from None
    if when <= now:
        raise SystemExit(f"--until {text!r} is already past ({now:%Y-%m-%d %H:%M})")
    return when.timestamp()


def run_sitting(items: list, work: Callable, *, jobs: int, expected: Callable, priority: Callable,
                waits_for: Callable = lambda item: None, until: float | None = None,
                clock: Callable[[], float] = time.time) -> list:
    """Run ``work(item)`` for the study's pending runs on ``jobs`` worker threads; return those left
    for another sitting.

    Each free worker takes, among the runs it may start, the first by ``priority``. With a deadline
    (``until``, epoch seconds) it may start only runs expected to end before it (``expected(item)``
    seconds, read when the worker looks: it may change as runs finish), so that a machine that goes
    away at a known time (a session's end, where nothing but committed records survives) loses no
    run half done. ``waits_for(item)``: a run that must end first (a fork's source) or ``None``; the
    item is not started while that one is pending or running, and a worker with nothing to start
    waits only while a run that could free one is running.
    """
    cond = threading.Condition()
    pending, running = list(items), set()

    def startable(item) -> bool:
        source = waits_for(item)
        if source is not None and (source in pending or source in running):
            return False
        if until is None:
            return True
        cost = expected(item)
        return cost is not None and clock() + cost <= until

    def take():
        with cond:
            while True:
                ready = [item for item in pending if startable(item)]
                if ready:
                    item = min(ready, key=priority)
                    pending.remove(item)
                    running.add(item)
                    return item
                if not running:
                    return None
                cond.wait()

    def worker() -> None:
        while (item := take()) is not None:
            try:
                work(item)
            finally:
                with cond:
                    running.discard(item)
                    cond.notify_all()

    threads = [threading.Thread(target=worker, name=f"study-worker-{i}") for i in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return pending
