"""Progress bars for every long job, switched off globally by ``--no-progress``, and shown only on
a terminal: redirected to a file, a bar's ``\\r`` redraws would join into one unreadable line, so
long jobs print plain lines there instead (:func:`bars_shown` says which)."""

from __future__ import annotations

import sys

from tqdm import tqdm

_enabled = True


def set_progress(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def bars_shown(enabled: bool = True) -> bool:
    """Whether a bar asked for with ``enabled`` is drawn: progress on, and stderr a terminal."""
    return _enabled and enabled and sys.stderr.isatty()


def progress_bar(iterable=None, *, desc: str, enabled: bool = True, leave: bool = False, **kwargs) -> tqdm:
    return tqdm(iterable, desc=desc, leave=leave, dynamic_ncols=True, disable=not bars_shown(enabled), **kwargs)
