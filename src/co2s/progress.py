"""Progress bars for every long job, switched off globally by ``--no-progress``."""

from __future__ import annotations

from tqdm import tqdm

_enabled = True


def set_progress(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def progress_bar(iterable=None, *, desc: str, enabled: bool = True, leave: bool = False, **kwargs) -> tqdm:
    return tqdm(iterable, desc=desc, leave=leave, dynamic_ncols=True,
                disable=not (_enabled and enabled), **kwargs)
