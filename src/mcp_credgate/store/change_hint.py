"""A hint beside the SQLite file that spares a gateway asking SQLite, call after call, whether the setup changed.

Asking (`PRAGMA data_version`) opens a read transaction: two lock calls on the `-shm`, the dearest step of a call
through the gateway. Instead, every credgate process that commits a setup change (credentials, groups, bindings,
agents, keys) then writes 8 fresh random bytes to `<database>.changes`. A connection that reads there the bytes it
read when it last asked SQLite knows that no such commit has ended since. Why that holds: a reader asks SQLite
only after reading the hint, and a writer writes it only after committing; so a commit whose hint was written
before the reader's read was seen by the question that followed, and one whose hint came later left other bytes.
Random bytes, not a count: writers need no read-modify-write between them, and a reader only needs "not what I
read before" (no write of fresh random bytes can hide another).

It is a hint: a reader still asks SQLite at least every `RECHECK_SECONDS`, which bounds how long it misses a change
that came with no hint (an edit with another tool, a writer that died between its commit and its hint).

Readers read the bytes through a shared mapping of the file, without a system call. Like SQLite's `-shm`, the file
must therefore never shrink while a process maps it (reading past its end is a bus error): nothing here
truncates it, writers overwrite its 8 bytes in place. The file is credgate's own, never one of SQLite's (see
sqlite.py's docstring), so opening and closing it touches no lock of SQLite's.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

RECHECK_SECONDS = 1.0
SIZE = 8


def hint_path(database: Path) -> Path:
    return database.with_name(database.name + ".changes")


class ChangeHint:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(self._fd).st_size < SIZE:  # new (or cut short): fresh bytes hide no other writer's
                self.announce()
            self._map: mmap.mmap | None = mmap.mmap(self._fd, SIZE, prot=mmap.PROT_READ)
        except BaseException:
            os.close(self._fd)
            raise

    def read(self) -> bytes | None:
        """The hint's bytes; None once closed (the reader asks SQLite then)."""
        return self._map[:SIZE] if self._map is not None else None

    def announce(self) -> None:
        """After a commit that changed the setup: readers ask SQLite at their next check. Raises OSError."""
        if os.pwrite(self._fd, os.urandom(SIZE), 0) != SIZE:
            raise OSError(errno.EIO, "short write")

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            os.close(self._fd)
