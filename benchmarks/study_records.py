"""What the benchmark studies share: the git revision a record was made at, atomic record files, and
mean ± spread in the tables (the scripts in this folder import it; it imports nothing of co2s)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
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
