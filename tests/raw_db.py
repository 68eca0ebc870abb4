"""Direct SQL on a test's store, behind the store's back: to tamper with it, or to look at what it holds.

`raw_db(settings)` opens the SQLite file or the PostgreSQL schema of the test, whichever backend it runs on.
Statements use `?` placeholders; rows are plain tuples. Leaving the `with` block commits (rolls back on an
exception) and closes. On PostgreSQL a commit also moves the store's change counter, so gateways see the
edit at their next call as they would on SQLite (whose `PRAGMA data_version` moves with any commit).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import psycopg

from mcp_credgate.config import Settings


class RawDb:
    def __init__(self, settings: Settings) -> None:
        self.postgres = settings.database_url is not None
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Any] | None = None
        self._wrote = False
        if settings.database_url:
            self._pg = psycopg.connect(settings.database_url)
        else:
            self._sqlite = sqlite3.connect(settings.database_path)

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        if self._sqlite is not None:
            return self._sqlite.execute(sql, params)
        assert self._pg is not None
        if not sql.lstrip().upper().startswith(("SELECT", "PRAGMA")):
            self._wrote = True
        return self._pg.execute(sql.replace("?", "%s"), tuple(params))

    def commit(self) -> None:
        if self._sqlite is not None:
            self._sqlite.commit()
            return
        assert self._pg is not None
        if self._wrote:
            self._pg.execute("UPDATE change_counter SET n = n + 1")
            self._wrote = False
        self._pg.commit()

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()

    def __enter__(self) -> RawDb:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            self.close()


def raw_db(settings: Settings) -> RawDb:
    return RawDb(settings)
