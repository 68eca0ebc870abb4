"""A lock shared by every process on this machine that uses the same data folder (POSIX `flock`).

The SQLite store uses it so that one OAuth2 refresh per credential runs at a time across gateways and admin
commands, without holding the database's write lock during a network round trip. The kernel drops the lock
when its holder dies, so a crashed process never leaves it taken.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import anyio

from .errors import StoreBusyError

POLL_SECONDS = 0.02


class FileLock:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
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

    def _timed_out(self) -> StoreBusyError:
        return StoreBusyError(f"another credgate process holds {self.path.name} for over {self.timeout:g} s; retry")

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._try():
            if time.monotonic() >= deadline:
                raise self._timed_out()
            time.sleep(POLL_SECONDS)

    async def acquire_async(self) -> None:
        """Polls rather than blocking a worker thread, so that waiting stays cancellable."""
        deadline = time.monotonic() + self.timeout
        while not self._try():
            if time.monotonic() >= deadline:
                raise self._timed_out()
            await anyio.sleep(POLL_SECONDS)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> FileLock:
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
