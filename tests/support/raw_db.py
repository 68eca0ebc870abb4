"""Direct SQL on a test's store, behind the store's back: to tamper with it, or to look at what it holds.

`raw_db(settings)` opens the SQLite file or the PostgreSQL schema of the test, whichever backend it runs on.
Statements use `?` placeholders; rows are plain tuples. Leaving the `with` block commits (rolls back on an
exception) and closes. A commit that wrote also moves the store's change counter, as the store's own writes
do, so running gateways see the edit at their next call.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from mcp_credgate.config import Settings
from mcp_credgate.store.change_hint import ChangeHint, hint_path
from mcp_credgate.store.postgres import WRITE_LOCK_KEY


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
            self._path = settings.database_path

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        if not sql.lstrip().upper().startswith(("SELECT", "PRAGMA")):
            self._wrote = True
        if self._sqlite is not None:
            return self._sqlite.execute(sql, params)
        assert self._pg is not None
        return self._pg.execute(sql.replace("?", "%s"), tuple(params))

    def tables(self) -> list[str]:
        """The store's tables (on PostgreSQL, those of the test's schema)."""
        if self.postgres:
            sql = (
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1"
        return [r[0] for r in self.execute(sql)]

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in a stable order: what the store holds, whatever its backend."""
        return {
            table: sorted((tuple(r) for r in self.execute(f'SELECT * FROM "{table}"')), key=repr)
            for table in self.tables()
        }

    def integrity_problems(self) -> list[str]:
        """What is wrong with the store as a database: SQLite's own integrity and foreign key checks; on
        PostgreSQL (which checks its pages and keys itself), any row whose foreign key finds no row."""
        if not self.postgres:
            problems = [r[0] for r in self.execute("PRAGMA integrity_check") if r[0] != "ok"]
            return problems + [
                f"{r[0]} row {r[1]} points to a missing {r[2]} row" for r in self.execute("PRAGMA foreign_key_check")
            ]
        references = self.execute(
            "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, p.attname"
            " FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
            " JOIN pg_attribute p ON p.attrelid = c.confrelid AND p.attnum = c.confkey[1]"
            " WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace"
        ).fetchall()
        assert references, "no foreign keys in the schema"
        problems = []
        for child, column, parent, key in references:
            orphans = self.execute(
                f"SELECT COUNT(*) FROM {child} c WHERE c.{column} IS NOT NULL"
                f" AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{key} = c.{column})"
            ).fetchone()[0]
            if orphans:
                problems.append(f"{orphans} {child} rows point to a missing {parent} row")
        return problems

    def commit(self) -> None:
        """Commit, moving `change_counter` as the store's own writes do, so running gateways see the edit."""
        wrote = self._wrote
        if wrote and "change_counter" in self.tables():
            self.execute("UPDATE change_counter SET n = n + 1")
        self._wrote = False
        if self._sqlite is not None:
            self._sqlite.commit()
            if wrote:
                hint = ChangeHint(hint_path(self._path))  # announced as the store's own writes are
                hint.announce()
                hint.close()
        else:
            assert self._pg is not None
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


@contextmanager
def holding_the_write_lock(settings: Settings) -> Iterator[None]:
    """Another process's writer, holding the store's write lock until the block ends: the store's writes wait
    for it, then give up after their busy timeout (SQLite's `BEGIN IMMEDIATE`; PostgreSQL's advisory lock)."""
    db = RawDb(settings)
    try:
        if db.postgres:
            db.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))  # in psycopg's implicit transaction
        else:
            db.execute("BEGIN IMMEDIATE")
        yield
    finally:
        db.close()  # ends the transaction unwritten, releasing the lock


def store_contents(settings: Settings) -> object:
    """What a refused command must leave as it was: the SQLite file byte for byte, or on PostgreSQL every row
    of every table."""
    if settings.database_url:
        with raw_db(settings) as db:
            return db.dump()
    return hashlib.sha256(settings.database_path.read_bytes()).hexdigest()


def data_folder_files(settings: Settings) -> list[str]:
    """The files a closed store leaves in its data folder: the key file, and on SQLite the database and its
    change hint."""
    return ["master.key"] if settings.database_url else ["credgate.db", "credgate.db.changes", "master.key"]
