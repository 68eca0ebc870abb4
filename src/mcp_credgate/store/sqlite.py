"""The embedded backend: one SQLite file in the data folder (WAL, mode 0600).

Writers serialise on `BEGIN IMMEDIATE`; `PRAGMA data_version` tells a connection that another one committed,
and `change_counter` whether it changed the setup; the change hint (change_hint.py) spares asking while no setup
change was announced. The per-credential lock is a POSIX `flock` on one of a fixed set of files under
`<home>/locks`.

Nothing here opens a file of the database (`-wal`, `-shm`) beside SQLite: closing any descriptor of a file drops
every POSIX lock the process holds on it, SQLite's included (another process would then take this one's
`-shm` for abandoned and truncate it under SQLite's mapping: a bus error).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlite_utils import Database as SqliteUtilsDatabase
from sqlite_utils.migrations import Migrations

from ..errors import ConflictError, NotFoundError, StoreBusyError, StoreError, StoreFaultError
from .change_hint import RECHECK_SECONDS, ChangeHint, hint_path
from .database import Cursor, Database, Params, Result
from .faults import sqlite_fault
from .filelock import FileLock
from .schema import MIGRATIONS, SQLITE, Migration

BUSY_TIMEOUT_MS = 5000
LOCK_STRIPES = 64

logger = logging.getLogger("credgate.store")


def _sqlite_utils_migration(migration: Migration) -> Callable[[SqliteUtilsDatabase], None]:
    def apply(db: SqliteUtilsDatabase) -> None:
        for statement in migration.render(SQLITE):
            db.execute(statement)

    return apply


migrations = Migrations("credgate")
for _migration in MIGRATIONS:
    migrations(name=_migration.name)(_sqlite_utils_migration(_migration))


def is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def connect_frozen(path: Path) -> sqlite3.Connection:
    """Read-only, without the `-shm` file or any lock (`immutable`): exact only while the write-ahead log is empty
    and nothing writes (`can_open_frozen`)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def can_open_frozen(path: Path) -> bool:
    """Whether the database file alone holds the whole store: its write-ahead log is absent or empty (every
    commit checkpointed into the file: the last connection closed cleanly)."""
    try:
        return path.with_name(path.name + "-wal").stat().st_size == 0
    except FileNotFoundError:
        return True
    except OSError:
        return False


def create_private_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _mapped_errors(where: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        if is_busy(exc):
            raise StoreBusyError(
                f"the store was locked by another process for longer than {BUSY_TIMEOUT_MS // 1000} s (another "
                f"credgate writing, or a tool holding {where} open); retry"
            ) from None
        fault = sqlite_fault(Path(where), exc)
        if fault is not None:
            raise fault from None
        raise StoreError(f"{where}: {exc}") from None


def open_change_hint(database: Path) -> ChangeHint | None:
    """The store's change hint, created when missing; None (SQLite is asked on every check) when it cannot be."""
    try:
        return ChangeHint(hint_path(database))
    except OSError as exc:
        logger.warning("no change hint (%s): the store's setup is re-read more often", exc.strerror)
        return None


def _announce(hint: ChangeHint) -> None:
    try:
        hint.announce()
    except OSError as exc:  # committed all the same: gateways see it at their next recheck
        logger.warning(
            "change hint not written (%s): gateways see this change within %g s", exc.strerror, RECHECK_SECONDS
        )


class SqliteDatabase(Database):
    """`hint`: the store's change hint, for a connection to the store itself (not to a scratch copy).
    `frozen`: the fault that keeps the store from being opened as usual, for a read-only connection to its file
    alone (`connect_frozen`): every write is refused with that fault."""

    def __init__(self, path: Path, hint: ChangeHint | None = None, frozen: StoreFaultError | None = None) -> None:
        self.path = path
        self.where = str(path)
        self._frozen = frozen
        with _mapped_errors(self.where):
            self.conn = connect(path) if frozen is None else connect_frozen(path)
        self._hint = hint
        self._hint_seen: bytes | None = None  # the hint when SQLite was last asked
        self._recheck_at = 0.0
        self._data_version = -1
        self._marker = 0
        self._noted_change = False

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        with _mapped_errors(self.where):
            cursor = self.conn.execute(sql, params)
            return Result(cursor.fetchall(), cursor.rowcount)

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with _mapped_errors(self.where):
            self.conn.executemany(sql, rows)

    @contextmanager
    def transaction(self, *, exclusive: bool = True) -> Iterator[None]:
        if self._frozen is not None:
            raise self._frozen
        with _mapped_errors(self.where):
            self.conn.execute("BEGIN IMMEDIATE")
        self._noted_change = False
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        try:
            with _mapped_errors(self.where):
                self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        if self._noted_change and self._hint is not None:
            _announce(self._hint)

    def note_change(self) -> None:
        super().note_change()
        self._noted_change = True

    @contextmanager
    def without_waiting(self) -> Iterator[bool]:
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            yield True
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def relax_durability(self) -> None:
        # WAL: a commit is in the log (and the OS) at once, on disk at the next checkpoint; a crash of the
        # process loses nothing, a power cut the last commits at most
        self.execute("PRAGMA synchronous = NORMAL")

    def epoch(self) -> float:
        return time.time()  # the store lives on this machine: its clock is the store's

    def change_marker(self) -> int:
        """`change_counter`, read again only when `PRAGMA data_version` says another connection committed
        something: most commits (audit rows, last-use times) change no setup and leave the counter alone.
        SQLite is not asked at all while the change hint holds what it held when it last was (and the last
        time is less than RECHECK_SECONDS ago)."""
        hint = self._hint.read() if self._hint is not None else None  # read before asking SQLite, never after
        now = time.monotonic()
        if hint is not None and hint == self._hint_seen and now < self._recheck_at:
            return self._marker
        version = int(self.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._data_version = version
            self._marker = int(self.execute("SELECT n FROM change_counter WHERE id = 1").fetchone()[0])
        self._hint_seen, self._recheck_at = hint, now + RECHECK_SECONDS
        return self._marker

    def refresh_statistics(self, tables: Sequence[str]) -> None:
        """Nothing: the store keeps no SQLite statistics (no ANALYZE), so its planner goes by the indexes alone,
        whatever the tables' sizes, as tests/store/test_query_plans.py checks."""

    def pending_migrations(self) -> list[str]:
        with _mapped_errors(self.where):
            return [m.name for m in migrations.pending(SqliteUtilsDatabase(self.conn))]

    def migrate(self) -> None:
        if self._frozen is not None:
            raise self._frozen
        with _mapped_errors(self.where):
            migrations.apply(SqliteUtilsDatabase(self.conn))

    def credential_lock(self, uid: str, timeout: float) -> FileLock:
        """Credentials share a fixed set of lock files (by their uid's hash), so the folder never grows."""
        folder = self.path.parent / "locks"
        folder.mkdir(mode=0o700, exist_ok=True)
        stripe = int(hashlib.sha256(uid.encode()).hexdigest(), 16) % LOCK_STRIPES
        return FileLock(folder / f"credential-{stripe:02x}.lock", timeout)

    def health(self) -> list[str]:
        problems = []
        integrity = [r[0] for r in self.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems += [f"database integrity: {line}" for line in integrity[:10]]
        for r in self.execute("PRAGMA foreign_key_check"):
            problems.append(f"database foreign keys: a row of {r[0]} points to a missing row of {r[2]}")
        return problems

    def backup(self, target: Path) -> None:
        """A consistent copy through SQLite's online backup API (fine while a gateway serves). The file is
        created 0600 and must not exist yet."""
        if target.exists():
            raise ConflictError(f"{target} exists already; choose a new file")
        if not target.parent.is_dir():
            raise NotFoundError(f"no folder {target.parent} to write the backup in")
        scratch = target.with_name(target.name + ".partial")
        scratch.unlink(missing_ok=True)
        create_private_file(scratch)
        try:
            dest = sqlite3.connect(scratch)
            try:
                with _mapped_errors(self.where):
                    self.conn.backup(dest)
                dest.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            finally:
                dest.close()
            if target.exists():
                raise ConflictError(f"{target} exists already; choose a new file")
            os.rename(scratch, target)
        finally:
            scratch.unlink(missing_ok=True)

    def close(self) -> None:
        self.conn.close()
        if self._hint is not None:
            self._hint.close()


def create_database(path: Path, first_key_row: tuple[str, bytes, str]) -> None:
    """A new store file with the schema and the master key's check row. Built under a temporary name and
    renamed when complete: an init that dies half-way leaves no half-made store behind to be refused later,
    only a scratch file the next init replaces."""
    scratch = path.with_name(path.name + ".init")
    for leftover in (scratch, scratch.with_name(scratch.name + "-wal"), scratch.with_name(scratch.name + "-shm")):
        leftover.unlink(missing_ok=True)
    create_private_file(scratch)
    db = SqliteDatabase(scratch)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.migrate()
        with db.transaction():
            db.execute(
                "INSERT INTO master_keys (key_id, check_blob, state, created_at) VALUES (?, ?, 'current', ?)",
                first_key_row,
            )
    finally:
        db.close()  # the last connection checkpoints and removes the -wal and -shm files
    os.rename(scratch, path)
    fsync_dir(path.parent)


def restore_database(path: Path, source: Path, check: Callable[[SqliteDatabase], None]) -> Path:
    """Replace the store file with a backup that passes its integrity check and `check` (the key check).
    The replaced file is kept aside; returns where (or `path` when there was none)."""
    if not source.is_file():
        raise NotFoundError(f"no backup file at {source}")
    scratch = path.with_name(path.name + ".restore")
    scratch.unlink(missing_ok=True)
    create_private_file(scratch)
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
        dest = SqliteDatabase(scratch)
        try:
            try:
                src.backup(dest.conn)
            except sqlite3.DatabaseError:
                raise StoreError(f"{source} is not a credgate backup (not a SQLite database)") from None
            try:
                integrity = [r[0] for r in dest.conn.execute("PRAGMA integrity_check")]
            except sqlite3.DatabaseError as exc:  # damage bad enough to stop the check itself
                integrity = [str(exc)]
            expected = src.execute("PRAGMA page_count").fetchone()[0] * src.execute("PRAGMA page_size").fetchone()[0]
            if source.stat().st_size < expected:  # SQLite reads a cut-off end as zeros: the check above passes
                integrity = [f"the file is truncated ({source.stat().st_size} of {expected} bytes)"]
            if integrity != ["ok"]:
                raise StoreError(f"{source} fails its integrity check: {integrity[0]}")
            check(dest)
            dest.execute("PRAGMA journal_mode = WAL")
        finally:
            src.close()
            dest.close()
        aside = None
        if path.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            aside = path.with_name(f"{path.name}.replaced-{stamp}")
            n = 0
            while aside.exists():  # a restore earlier in the same second kept its store here: keep it too
                n += 1
                aside = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
            os.rename(path, aside)
            for suffix in ("-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    os.rename(side, aside.with_name(aside.name + suffix))
        os.rename(scratch, path)
        fsync_dir(path.parent)
        return aside or path
    finally:
        scratch.unlink(missing_ok=True)
