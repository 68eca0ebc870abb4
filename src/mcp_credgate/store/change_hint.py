"""A hint beside the SQLite file that spares a gateway asking SQLite, call after call, whether the setup changed.

Asking (`PRAGMA data_version`) opens a read transaction: two lock calls on the `-shm`, the dearest step of a call
through the gateway. Instead, every credgate process that commits a setup change (credentials, groups, bindings,
agents, keys) then writes 8 fresh random bytes to `<database>.changes`. A connection that reads there the bytes it
read when it last asked SQLite knows that no such commit has ended since. Why that holds: a reader asks SQLite
only after reading the hint, and a writer writes it only after committing; so a commit whose hint was written
before the reader's read was seen by the question that followed, and one whose hint came later left other bytes.
Random bytes, not a count: writers need no read-modify-write between them, and a reader only needs "not what I
read before".

It is a hint: a reader still asks SQLite at least every `RECHECK_SECONDS`, which bounds how long it misses a change
that came with no hint (an edit with another tool, a writer that died between its commit and its hint).

The file is credgate's own, opened once and kept: it is never one of SQLite's files (see sqlite.py's docstring).
"""

from __future__ import annotations

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

    def read(self) -> bytes | None:
        """The hint's bytes; None when they cannot be read (the reader asks SQLite then)."""
        try:
            return os.pread(self._fd, SIZE, 0)
        except OSError:
            return None

    def announce(self) -> None:
        """After a commit that changed the setup: readers ask SQLite at their next check. Raises OSError."""
        os.pwrite(self._fd, os.urandom(SIZE), 0)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
