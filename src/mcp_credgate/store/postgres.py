"""The shared backend: PostgreSQL, for several gateway replicas on one store (psycopg 3).

- Writers serialise on a transaction-level advisory lock, so every write transaction runs alone, as with
  SQLite's `BEGIN IMMEDIATE`: the store's read-check-write sequences need no other care. Counts and audit rows
  (`exclusive=False`) take it shared: beside each other, never beside another writer.
- `change_counter` moves with every change to credentials, groups, bindings or agents; each replica reads it
  at each call and drops its binding cache when it moved, so a change is seen at the next call everywhere.
- A credential's lock (one OAuth2 refresh at a time) is a session advisory lock on a connection of its own;
  PostgreSQL drops it when the holder's connection ends, so a crashed replica never leaves it taken.
- The master key stays outside the database, as with SQLite.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from ..errors import StoreBusyError, StoreError, StoreFaultError
from .database import Cursor, Database, Params, PollingLock
from .schema import MIGRATIONS, POSTGRESQL

LOCK_TIMEOUT = "5s"
CONNECT_TIMEOUT_S = 10
RELAXED = "SET synchronous_commit = off"  # see `PostgresDatabase.relax_durability`
# pg_advisory_xact_lock key of the one-writer-at-a-time lock (the bytes of "credgate").
WRITE_LOCK_KEY = int.from_bytes(b"credgate", "big", signed=True)


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(an unreadable URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """The store writes `?` (SQLite's style); psycopg wants `%s`, and a literal % doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


# libpq's words when the server is not there to answer (stopped, starting, failing over, unreachable)
_NOT_ANSWERING = (
    "connection refused",
    "timeout expired",
    "shutting down",
    "starting up",
    "recovery mode",
    "not yet accepting",
    "no route to host",
    "network is unreachable",
    "could not translate host name",
    "terminating connection",
)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _reason(exc: BaseException) -> str:
    """libpq's reason alone: 'connection failed: connection to server at "h", port 5432 failed: Connection
    refused' → 'Connection refused'."""
    line = _first_line(exc).rsplit("failed: ", 1)[-1]
    return " ".join(line.removeprefix("FATAL:").split()) or type(exc).__name__


def _not_answering(where: str, exc: BaseException) -> StoreFaultError | None:
    if not any(words in str(exc).lower() for words in _NOT_ANSWERING):
        return None
    return StoreFaultError(
        f"PostgreSQL at {where} is not answering ({_reason(exc)}): start it, or wait for its failover to finish, "
        "then retry (the store is not damaged: do not restore a backup for this)"
    )


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    where = describe(url)
    try:
        conn = psycopg.connect(
            url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_S, application_name="credgate"
        )
    except psycopg.ProgrammingError:  # a malformed URL: never echo it, it may hold a password
        raise StoreError("CREDGATE_DATABASE_URL is not a valid PostgreSQL URL") from None
    except psycopg.Error as exc:
        raise _not_answering(where, exc) or StoreError(
            f"cannot connect to PostgreSQL at {where}: {_reason(exc)}"
        ) from None
    conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    return conn


class PostgresDatabase(Database):
    shared = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = describe(url)
        self.conn = connect(url)
        self._in_transaction = False
        self._relaxed = False  # `relax_durability` was asked: each new connection is relaxed too

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        try:
            yield
        except (pg_errors.LockNotAvailable, pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
            raise StoreBusyError("the store is busy (another credgate process is writing); retry") from None
        except psycopg.OperationalError as exc:
            if self.conn.closed:  # a restart, a failover, pg_terminate_backend
                raise StoreBusyError(
                    f"the connection to PostgreSQL at {self.where} was lost ({_reason(exc)}): retry once it answers "
                    "(a change is made whole or not at all)"
                ) from None
            raise StoreBusyError(f"PostgreSQL at {self.where} did not answer ({_reason(exc)}); retry") from None
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {_first_line(exc)}") from None

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        """The connection, opened again if the server dropped it (a restart, a failover) between
        transactions; the statement that found it dropped failed with StoreBusyError."""
        if self.conn.closed and not self._in_transaction:
            self.conn = connect(self.url)
            if self._relaxed:
                self.conn.execute(RELAXED)
        return self.conn

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        with self._mapped_errors():
            try:
                return self._connection().execute(_placeholders(sql), tuple(params))
            except psycopg.OperationalError:
                # The server dropped the connection (a restart, a failover): outside a transaction nothing
                # was done yet, so the statement runs again once on a new connection.
                if self._in_transaction or not self.conn.closed:
                    raise
                return self._connection().execute(_placeholders(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with self._mapped_errors(), self._connection().cursor() as cur:
            cur.executemany(_placeholders(sql), [tuple(r) for r in rows])

    @contextmanager
    def transaction(self, *, exclusive: bool = True) -> Iterator[None]:
        self.execute("BEGIN")
        self._in_transaction = True
        try:
            # shared: counts and audit rows run beside each other, never beside a writer that holds it alone
            # (`budget set`/`rm` deleting a limit's row and its counts while a count holds some: a foreign key
            # violation, or a deadlock)
            lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            self.execute(f"SELECT {lock}(?)", (WRITE_LOCK_KEY,))
            yield
            self.execute("COMMIT")
        except BaseException:
            if not self.conn.closed:
                with self._mapped_errors():
                    self.conn.execute("ROLLBACK")
            raise
        finally:
            self._in_transaction = False

    def refresh_statistics(self, tables: Sequence[str]) -> None:
        """ANALYZE: without it, a table loaded in one go keeps the statistics of its empty self until autovacuum
        comes by (a minute or more), and joins of a few rows may be planned over the whole table meanwhile."""
        self.execute(f"ANALYZE {', '.join(tables)}")

    def relax_durability(self) -> None:
        """Commit without waiting for the server's disk (`synchronous_commit = off`, this session only): a crash
        of the PostgreSQL server (not of a gateway) may lose the last fraction of a second of counts and audit
        rows, never corrupt them. Rows a count updates are held until its commit: waiting for the disk there
        would make every call of a group wait for the one before it."""
        self._relaxed = True
        self.execute(RELAXED)

    def epoch(self) -> float:
        return float(self.execute("SELECT extract(epoch FROM clock_timestamp()) AS t").fetchone()["t"])

    def change_marker(self) -> int:
        return int(self.execute("SELECT n FROM change_counter WHERE id = 1").fetchone()["n"])

    def _applied(self) -> set[str]:
        if self.execute("SELECT to_regclass('_credgate_migrations') AS t").fetchone()["t"] is None:
            return set()
        return {r["name"] for r in self.execute("SELECT name FROM _credgate_migrations")}

    def pending_migrations(self) -> list[str]:
        applied = self._applied()
        return [m.name for m in MIGRATIONS if m.name not in applied]

    def migrate(self) -> None:
        """Each pending migration in a transaction of its own (PostgreSQL's DDL is transactional), under the
        write lock: replicas starting together apply each exactly once."""
        with self.transaction():
            self.execute("CREATE TABLE IF NOT EXISTS _credgate_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
        for migration in MIGRATIONS:
            with self.transaction():
                if migration.name in self._applied():
                    continue
                for statement in migration.render(POSTGRESQL):
                    self.execute(statement)
                self.execute(
                    "INSERT INTO _credgate_migrations (name, applied_at) VALUES (?, ?)",
                    (migration.name, datetime.now(UTC).isoformat(timespec="milliseconds")),
                )

    def credential_lock(self, uid: str, timeout: float) -> AdvisoryLock:
        key = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big", signed=True)
        return AdvisoryLock(self.url, key, timeout)

    def health(self) -> list[str]:
        """PostgreSQL checks its own pages and foreign keys; that it answers is what is left to check."""
        self.execute("SELECT 1")
        return []

    def backup(self, target: Path) -> None:
        raise StoreError(
            f"the store is on PostgreSQL ({self.where}): back it up with pg_dump (keep the master key apart from "
            "the dump, as with `credgate backup`)"
        )

    def close(self) -> None:
        self.conn.close()


class AdvisoryLock(PollingLock):
    """A session advisory lock on a connection of its own (kept while waiting): a second holder in the same
    process conflicts as one in another process does (a session may take its own advisory lock again)."""

    def __init__(self, url: str, key: int, timeout: float) -> None:
        super().__init__(f"the credential lock {key:x}", timeout)
        self.url = url
        self.key = key
        self._conn: psycopg.Connection[dict[str, Any]] | None = None

    def _try(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url)
        try:
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (self.key,)).fetchone()
        except psycopg.Error as exc:
            self._give_up()
            raise StoreBusyError(f"PostgreSQL did not answer ({_reason(exc)}); retry") from None
        return bool(row and row["ok"])

    def _give_up(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()  # ending the session releases its advisory locks

    def release(self) -> None:
        self._give_up()


def store_exists(url: str) -> bool:
    db = PostgresDatabase(url)
    try:
        return holds_store(db)
    finally:
        db.close()


def holds_store(db: PostgresDatabase) -> bool:
    """Whether `credgate init` made a store in this database (its schema and the master key's check row)."""
    if db.execute("SELECT to_regclass('master_keys') AS t").fetchone()["t"] is None:
        return False
    return db.execute("SELECT 1 FROM master_keys LIMIT 1").fetchone() is not None


def create_database(url: str, first_key_row: tuple[str, bytes, str]) -> bool:
    """The schema and the master key's check row, in one transaction; False (and nothing written) when
    another `credgate init` made the store first."""
    db = PostgresDatabase(url)
    try:
        db.migrate()
        with db.transaction():
            if holds_store(db):
                return False
            db.execute(
                "INSERT INTO master_keys (key_id, check_blob, state, created_at) VALUES (?, ?, 'current', ?)",
                first_key_row,
            )
        return True
    finally:
        db.close()
