"""Whether two configs describe the same run: what resume, run directories and checkpoint loading
compare (paths by where they resolve to, not by how they are spelled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


#: config keys that say where the run lives, not what it is: a moved run directory still resumes
_LOCATION_KEYS = ("out_dir",)


def _same_value(old: Any, new: Any) -> bool:
    """Equal, or two spellings of the same path (``runs/x``, ``./runs/x``, ``/abs/runs/x``)."""
    if old == new:
        return True
    if isinstance(old, str) and isinstance(new, str):
        try:
            return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            return False
    return False


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs between two config dicts, comparing paths
    by where they resolve to and ignoring where the run directory itself is."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if not prefix and key in _LOCATION_KEYS:
                continue
            out += config_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in config_differences(a, b, f"{prefix}{i}.")]
    return [] if _same_value(old, new) else [f"{prefix.rstrip('.')}: {_shown(old)} -> {_shown(new)}"]


def _shown(value: Any, limit: int = 60) -> str:
    """``value`` as a config difference shows it: whole when short, else summarised (a student
    list restated in full would bury the line that matters)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        keys = list(value)
        return "{" + ", ".join(map(str, keys[:4])) + (", ..." if len(keys) > 4 else "") + "}"
    return text[: limit - 3] + "..."
