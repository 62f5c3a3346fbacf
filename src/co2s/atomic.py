"""Atomic, durable file writes: write a hidden temporary beside the target, fsync it, rename it over
the target, fsync the folder. A crash or a full disk leaves either the old file or the new one,
never a torn one. Below every layer, so data, models and engine share one helper."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's) contents to disk; folders where the OS allows it."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. folders on Windows cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike, unique: bool = False) -> Path:
    """The hidden temporary name a write of ``path`` goes through (``.name.tmp`` beside it); with
    ``unique``, ``.name.<pid>.tmp``, so that processes writing the same file at once (e.g. every
    rank of a relaunched command) never write into each other's temporary."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp" if unique else f".{path.name}.tmp")


def commit(tmp: str | os.PathLike, path: str | os.PathLike, durable: bool = True) -> None:
    """Rename a finished temporary over ``path``; with ``durable``, fsync the file before and the
    folder after the rename, so the new name survives a power loss."""
    if durable:
        fsync_path(tmp)
    os.replace(tmp, path)
    if durable:
        fsync_path(Path(path).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True, unique: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``; on error it is removed.
    ``unique``: a per-process temporary name (see :func:`temp_path`)."""
    path = Path(path)
    tmp = temp_path(path, unique)
    try:
        yield tmp
        commit(tmp, path, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    """Atomically replace ``path`` with ``text``."""
    with atomic_path(path, durable) as tmp:
        Path(tmp).write_text(text)
    return Path(path)
