"""One training run per run folder: an OS lock on ``.co2s.lock`` inside it.

Two ``co2s train`` into one folder would both append to ``metrics.jsonl`` and overwrite each
other's checkpoints (with different configs, mix two runs), so rank 0 takes an exclusive
``fcntl.flock`` (``msvcrt.locking`` on Windows) before it writes or truncates anything there; a
second run is refused at once with :class:`~co2s.errors.RunLockedError`. The kernel drops the lock
when its process ends, however it ends (SIGKILL, OOM, power loss), so a crash never leaves a stale
lock to delete by hand. The file holds the holder's pid and host for that message only; it is left
in place after the run (removing it could let a second run lock a new file while a third still
waits on the old one).

Limits: ``flock`` is advisory (only co2s honours it), and network file systems may not honour it
across hosts (older NFS clients lock locally only; some FUSE/SMB mounts ignore it), so two
machines sharing a folder over such a mount are not kept apart.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from co2s.errors import RunLockedError

LOCK_FILE = ".co2s.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # locks the file's first byte; the record is written after it, from byte 1
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # BlockingIOError (flock), PermissionError (msvcrt)
        return False
    return True


class RunLock:
    """The held lock of a run folder; :meth:`release` (or the end of the process) frees it."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` naming the holder; writes only the lock
        file (and creates the folder), and nothing at all when refused."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            try:  # from byte 1: msvcrt keeps byte 0 (the locked one) unreadable to others
                os.lseek(fd, 1, os.SEEK_SET)
                holder = os.read(fd, 512).decode(errors="replace").strip()
            finally:
                os.close(fd)
            pid, _, host = holder.partition(" ")
            raise RunLockedError(
                f"run folder {self.run_dir} is in use by another training run (pid {pid or '?'} on "
                f"host {host or '?'}); wait for it to end or choose another output directory (--out)")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f" {os.getpid()} {platform.node()}\n".encode())  # byte 0: a pad, see above
        self._fd = fd
        return self

    def release(self) -> None:
        """Free the lock (closing the file frees it; the file stays, see the module notes)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
