"""The project's state-folder lock: one index run at a time (released by the OS if the process dies)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


class ProjectBusy(Exception):
    """Another process is indexing this folder."""


class StateLock:
    """An exclusive lock on the state folder for the duration of an index run (released by the
    OS when the process dies, so a killed run never leaves it stuck)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def __enter__(self):
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path)  # not ours to keep: only this lock file belongs at this name
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(self._fd)
        except OSError:
            os.close(self._fd)
            raise ProjectBusy(f"another process is indexing {self.path.parent}; wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        os.close(self._fd)  # closing releases the lock
        return False


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_fd(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
else:
    import fcntl

    def _lock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
