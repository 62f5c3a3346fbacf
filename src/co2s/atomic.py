"""Atomic, durable file writes: write a hidden temporary beside the target, fsync it, rename it over
the target, fsync the folder. A crash or a full disk leaves either the old file or the new one,
never a torn one. Below every layer, so data, models and engine share one helper.

A write that fails is raised as an :class:`OSError` naming the file the user asked for (not its
temporary) with the errno of the fault where it can be known (:func:`write_error`), so the command
line can say in one line what went wrong (``co2s.cli.main.error_message``)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

from co2s.errors import Co2sError


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's) contents to disk; folders where the OS allows it."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. folders on Windows cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems refuse fsync on folders; a file's failed fsync (EIO, or ENOSPC on
        # network file systems) means its bytes may never reach the disk: that is raised.
        if not (flags & getattr(os, "O_DIRECTORY", 0)) and exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def refuse_special_file(path: str | os.PathLike) -> None:
    """Raise a :class:`Co2sError` when ``path`` is a device, pipe or socket (``--out /dev/null``):
    the rename that completes an atomic write would replace it (as root, the device node itself)."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise Co2sError(f"{path} is a device, pipe or socket, not a file: co2s writes its outputs as files; "
                        "choose a file path")


def temp_path(path: str | os.PathLike, unique: bool = False) -> Path:
    """The hidden temporary name a write of ``path`` goes through (``.name.tmp`` beside it); with
    ``unique``, ``.name.<pid>.tmp``, so that processes writing the same file at once (e.g. every
    rank of a relaunched command) never write into each other's temporary."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp" if unique else f".{path.name}.tmp")


def commit(tmp: str | os.PathLike, path: str | os.PathLike, durable: bool = True) -> None:
    """Rename a finished temporary over ``path``; with ``durable``, fsync the file before and the
    folder after the rename, so the new name survives a power loss."""
    refuse_special_file(path)
    try:
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)  # onto a folder: IsADirectoryError, named as path below
    except OSError as exc:
        raise write_error(exc, path, tmp) from None
    if durable:
        fsync_path(Path(path).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True, unique: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``; on error it is removed.
    ``unique``: a per-process temporary name (see :func:`temp_path`)."""
    path = Path(path)
    refuse_special_file(path)  # before anything is written
    tmp = temp_path(path, unique)
    try:
        yield tmp
        commit(tmp, path, durable)
    except BaseException as exc:
        failed_write(exc, path, tmp)


def write_text(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8, whatever the locale)."""
    with atomic_path(path, durable) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def failed_write(exc: BaseException, path: str | os.PathLike, tmp: str | os.PathLike) -> NoReturn:
    """Remove the temporary ``tmp`` of a failed write of ``path`` and raise ``exc`` as
    :func:`write_error` words it (judged before the removal: a full disk is still full then)."""
    error = write_error(exc, path, tmp)
    with contextlib.suppress(OSError):  # a read-only folder refuses even this; the error matters more
        Path(tmp).unlink(missing_ok=True)
    if error is exc:
        raise exc
    raise error from exc


def write_stream(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` with ``path`` opened for writing. An OSError of a write is raised as
    itself (naming ``path``) even where ``write`` turns it into its own error: ``torch.save``'s
    C++ writer reports a full disk as a RuntimeError ("unexpected pos") that lost the errno."""
    file = None
    try:
        with open(path, "wb") as raw:  # closing flushes: the last write may fail there
            file = _KeepsWriteErrors(raw)
            write(file)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise
    except Exception:
        if file is None or file.error is None:
            raise
        if file.error.filename is None:
            file.error.filename = os.fspath(path)
        raise file.error from None


class _KeepsWriteErrors:
    """A binary file that remembers the first OSError of its writes (see :func:`write_stream`)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


#: errors of the program, never of the file system: :func:`write_error` passes them through
_PROGRAM_ERRORS = (ArithmeticError, AssertionError, AttributeError, ImportError, LookupError, NameError,
                   TypeError, ValueError, Co2sError)
#: "(os error 28)": how Rust libraries (safetensors) word the errno; "[Errno 28]": Python's
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
#: free bytes below which a failed write is put down to a full file system
FULL_BELOW = 1 << 20


def write_error(exc: BaseException, path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> BaseException:
    """What to raise for ``exc``, raised while ``path`` was written (through the temporary
    ``tmp``): an OSError naming ``path`` with the fault's errno where it can be known, else
    ``exc`` itself. An OSError of the temporary (or of no file) is renamed to ``path`` in place.
    Libraries that lose the errno (torch.save, GDAL's "Write failed", safetensors) are read from
    their message or, failing that, from the file system itself: read-only, or full. Call it
    before the temporary is removed: a disk filled by it is full only while it exists."""
    if not isinstance(exc, Exception) or isinstance(exc, _PROGRAM_ERRORS):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.filename is None or (tmp is not None and os.fspath(exc.filename) == os.fspath(tmp)):
            exc.filename = os.fspath(path)
            if exc.filename2 is not None:  # a rename of tmp onto path: path says it
                exc.filename2 = None
        return exc
    code = _errno_in_text(exc) or file_system_fault(path)
    return exc if code is None else OSError(code, os.strerror(code), os.fspath(path))


def _errno_in_text(exc: BaseException) -> int | None:
    seen = 0
    while exc is not None and seen < 8:
        match = _ERRNO_IN_TEXT.search(str(exc))
        if match:
            return int(match.group(1) or match.group(2))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def file_system_fault(path: str | os.PathLike) -> int | None:
    """``EROFS`` when the file system that holds ``path`` is mounted read-only, ``ENOSPC`` when it
    has less than :data:`FULL_BELOW` bytes free (for root: its reserve too), else None."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return None
    if st.f_flag & getattr(os, "ST_RDONLY", 1):
        return errno.EROFS
    free = (st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    return errno.ENOSPC if free < FULL_BELOW else None
