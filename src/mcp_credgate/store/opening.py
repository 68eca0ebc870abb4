"""Finding and checking a store before it is opened: whether `credgate init` made one, where it is (for
messages), a connection to it, the check that a key ring opens it, and restoring a SQLite backup. Plain
functions: `Store.open` and `Store.initialise` (in `core`) build on them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from ..config import Settings
from ..crypto import Keyring
from ..errors import MasterKeyError, NotInitialisedError, StoreBusyError, StoreError, StoreFaultError
from . import sqlite
from .database import Database
from .faults import os_fault
from .keyfiles import load_keyring


def postgres_backend() -> ModuleType:
    """The PostgreSQL backend, imported only when a store is there (psycopg is an optional dependency)."""
    try:
        from . import postgres
    except ImportError:
        raise StoreError(
            "a PostgreSQL store needs psycopg: pip install 'mcp-credgate[postgres]' (or unset CREDGATE_DATABASE_URL)"
        ) from None
    return postgres


def open_existing(settings: Settings) -> Database:
    """A connection to the store `credgate init` made; NotInitialisedError when there is none. SQLite's
    file is looked for first (connecting would create it); PostgreSQL is asked on the connection kept."""
    missing = NotInitialisedError(f"no credgate store at {store_location(settings)}: run `credgate init` first")
    if not settings.database_url:
        try:
            settings.database_path.stat()
        except FileNotFoundError:
            raise missing from None
        except OSError as exc:  # the folder is not ours to read: not "no store"
            raise os_fault(settings.database_path, exc) from None
        return sqlite.SqliteDatabase(settings.database_path, sqlite.open_change_hint(settings.database_path))
    postgres = postgres_backend()
    db: Database = postgres.PostgresDatabase(settings.database_url)
    if not postgres.holds_store(db):
        db.close()
        raise missing
    return db


def store_exists(settings: Settings) -> bool:
    """Whether `credgate init` has made the store (without opening it: no key needed)."""
    if settings.database_url:
        return bool(postgres_backend().store_exists(settings.database_url))
    return settings.database_path.exists()


def store_location(settings: Settings) -> str:
    """Where the store is, for messages: the SQLite file, or the PostgreSQL URL without its password."""
    if settings.database_url:
        return str(postgres_backend().describe(settings.database_url))
    return str(settings.database_path)


def check_keyring(conn: Database, keyring: Keyring, settings: Settings) -> None:
    """A given key (CREDGATE_MASTER_KEY's, or the key file) must open its check row, and every key of the store
    that a credential uses must be in the ring. A credential whose key id the store does not know is a damaged
    row, refused when it is read (it must not lock every other credential out)."""
    try:
        checks = {r["key_id"]: r["check_blob"] for r in conn.execute("SELECT key_id, check_blob FROM master_keys")}
    except (StoreBusyError, StoreFaultError):  # the store could not be read: that says nothing of what it is
        raise
    except StoreError:
        raise StoreError(f"{store_location(settings)} is not a credgate store (no key table)") from None
    opens = any(k.key_id in checks and k.opens_check(checks[k.key_id]) for k in keyring.given)
    # A key of the store that the ring lacks must wrap no credential (one indexed look-up per such key).
    unheld_in_use = any(
        conn.execute("SELECT 1 FROM credentials WHERE key_id = ? LIMIT 1", (key_id,)).fetchone()
        for key_id in checks
        if key_id not in keyring.keys
    )
    if not opens or unheld_in_use:
        raise MasterKeyError(
            f"master key does not match this store ({store_location(settings)}): set CREDGATE_MASTER_KEY or "
            f"{settings.key_path} to the key this store was created with"
        )


def restore_store(settings: Settings, source: Path, env: Mapping[str, str] | None = None) -> Path:
    """Replace a SQLite store with a backup that passes its integrity check and that the current master key
    opens. The replaced database is kept aside; returns where."""
    if settings.database_url:
        raise StoreError(f"the store is on PostgreSQL ({store_location(settings)}): restore it with pg_restore or psql")
    keyring = load_keyring(settings, env)
    if keyring is None:
        raise MasterKeyError(f"master key missing: set CREDGATE_MASTER_KEY or restore {settings.key_path}")

    def opens_with_current_key(db: Database) -> None:
        try:
            check_keyring(db, keyring, settings)
        except MasterKeyError:
            raise MasterKeyError(
                f"the current master key does not open the backup {source}: restore it with the key it was "
                "made with (CREDGATE_MASTER_KEY or the key file)"
            ) from None
        except StoreError:  # its message names the live store, not this file
            raise StoreError(f"{source} is not a credgate backup (no key table)") from None

    return sqlite.restore_database(settings.database_path, source, opens_with_current_key)
