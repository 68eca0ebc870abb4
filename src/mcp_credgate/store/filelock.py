"""A lock shared by every process on this machine that uses the same data folder (POSIX `flock`).

The SQLite store uses it so that one OAuth2 refresh per credential runs at a time across gateways and admin
commands, without holding the database's write lock during a network round trip. The kernel drops the lock
when its holder dies, so a crashed process never leaves it taken.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .database import PollingLock


class FileLock(PollingLock):
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        super().__init__(path.name, timeout)
        self.path = path
        self._fd: int | None = None

    def _try(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def _give_up(self) -> None:
        """A failed try closes its descriptor at once: nothing is held between tries."""

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
