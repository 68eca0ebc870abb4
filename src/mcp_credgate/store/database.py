"""What the store needs of a database backend: one connection, transactions that one writer at a time
runs, a marker that moves when another connection commits a change, a lock per credential shared by every
process, and the backend's own health check and backup.

`Store` talks only to this interface; `sqlite.py` and `postgres.py` implement it. SQL is written once, with
`?` placeholders and in the dialect both backends speak; each backend turns driver errors into
`StoreBusyError` (retry) or `StoreError`, so no driver exception leaves the store.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio

from ..errors import StoreBusyError

Row = Mapping[str, Any]
Params = Sequence[object]
POLL_SECONDS = 0.02


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Result:
    """The rows of a statement, fetched whole inside the backend's error mapping (SQLite reports some damage
    only while rows are being stepped through)."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class Database(ABC):
    """One open connection. Not safe for concurrent use: `Store` serialises calls with its own lock."""

    where: str  # for messages: a file path, or a URL without its password
    shared = False  # True when several machines may serve from it (a new master key must reach them all first)

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    @abstractmethod
    def transaction(self, *, exclusive: bool = True) -> AbstractContextManager[None]:
        """A write transaction; writers from every process run one at a time. Commits at the end, rolls back
        on any exception. `exclusive=False`: a transaction whose statements are safe beside each other
        (appending audit rows; counting a budget by an update that checks the row as it is), which PostgreSQL runs
        beside the others of its kind, holding only the rows it writes, but never beside an exclusive writer
        (one that deletes a limit deletes its counts; SQLite has one writer all the same)."""

    @contextmanager
    def without_waiting(self) -> Iterator[bool]:
        """Yields whether its statements may run on the caller's thread: True (SQLite) with a busy timeout of 0
        for their duration, so that a write lock held elsewhere fails them at once (StoreBusyError) instead of
        waiting; False where every statement is a network round trip (PostgreSQL)."""
        yield False

    @abstractmethod
    def relax_durability(self) -> None:
        """For a connection whose writes may be lost to a power cut but not to a crash of the process (budget
        counts, audit rows): commit without waiting for the disk where the backend allows it."""

    @abstractmethod
    def epoch(self) -> float:
        """The store's clock, in seconds since 1970 (UTC): what decides a budget's window on every replica."""

    @abstractmethod
    def change_marker(self) -> int:
        """Moves whenever another connection commits a change (this one's own writes are known to the store)."""

    def note_change(self) -> None:
        """Inside a write transaction that changes credentials, groups, bindings or agents: make other
        connections' `change_marker` move."""
        self.execute("UPDATE change_counter SET n = n + 1 WHERE id = 1")

    @abstractmethod
    def refresh_statistics(self, tables: Sequence[str]) -> None:
        """After many rows were written at once, outside any transaction: let the query planner know the tables
        as they are now."""

    @abstractmethod
    def pending_migrations(self) -> list[str]: ...

    @abstractmethod
    def migrate(self) -> None: ...

    @abstractmethod
    def credential_lock(self, uid: str, timeout: float) -> PollingLock: ...

    @abstractmethod
    def health(self) -> list[str]:
        """Damage the backend itself can detect, one line each."""

    @abstractmethod
    def backup(self, target: Path) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class PollingLock(ABC):
    """An exclusive lock between processes, taken by polling a non-blocking try: waiting never blocks a
    worker thread and stays cancellable. Usable with `with` and `async with`."""

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout

    @abstractmethod
    def _try(self) -> bool: ...

    @abstractmethod
    def release(self) -> None: ...

    def _timed_out(self) -> StoreBusyError:
        return StoreBusyError(f"another credgate process holds {self.name} for over {self.timeout:g} s; retry")

    @abstractmethod
    def _give_up(self) -> None:
        """Waiting ended without the lock (timed out, cancelled): free what the tries held."""

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while not self._try():
                if time.monotonic() >= deadline:
                    raise self._timed_out()
                time.sleep(POLL_SECONDS)
        except BaseException:
            self._give_up()
            raise

    async def acquire_async(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while not self._try():
                if time.monotonic() >= deadline:
                    raise self._timed_out()
                await anyio.sleep(POLL_SECONDS)
        except BaseException:
            self._give_up()
            raise

    def __enter__(self) -> PollingLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> PollingLock:
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
