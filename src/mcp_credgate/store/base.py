"""What every part of the store uses: one open connection, the lock that serialises its use, the key ring
that opens it, write transactions and queries, and the data keys (unwrapped under the master key that wrapped
them, re-reading the key files when another process rotated it). Lives as long as the `Store` built on it.

Each concern of the store (`credentials`, `groups`, `upstreams`, `agents`, `audit`, `keys`, `maintenance`) is
a class over `StoreBase`; `core.Store` is all of them at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from ..config import Settings
from ..crypto import DataKey, Keyring, MasterKey, OpenError
from ..errors import CiphertextError, ConflictError, MasterKeyError, NotFoundError
from .database import Database, Row
from .keyfiles import load_keyring


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StoreBase:
    """One open store's connection, lock and key ring, shared by the concerns built on it."""

    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring
        self._lock = threading.RLock()
        self._key_source: tuple[Settings, Mapping[str, str] | None] | None = None  # set by `Store.open`

    def close(self) -> None:
        self._db.close()

    def _drop_caches(self) -> None:
        """Forget what this connection cached from the database: called before each write, under the lock.
        A concern that caches what it reads (`groups`: the binding cache) extends it."""

    @contextmanager
    def _write(
        self, *, changes_setup: bool = True, keeps_caches: bool = False, exclusive: bool = True
    ) -> Iterator[Database]:
        """A write transaction. `changes_setup`: it changes credentials, groups, bindings, agents or keys,
        which other connections' binding caches must see (the audit log and last-use times do not).
        `keeps_caches`: it writes nothing any cache holds (a budget's counts), so this connection's stay.
        `exclusive`: see `Database.transaction`."""
        with self._lock:
            if not keeps_caches:
                self._drop_caches()
            with self._db.transaction(exclusive=exclusive):
                if changes_setup:
                    self._db.note_change()
                yield self._db

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- rows every concern looks up -----------------------------------------------------

    def _credential_row(self, conn: Database, name: str) -> Row:
        row = conn.execute(
            "SELECT id, name, type, uid, key_id, wrapped_dek FROM credentials WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no credential named {name!r} (see `credgate cred list`)")
        return row  # type: ignore[no-any-return]

    def _group_id(self, conn: Database, name: str) -> int:
        row = conn.execute("SELECT id FROM groups WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no agent group named {name!r} (see `credgate group list`)")
        return int(row["id"])

    def _user_id(self, conn: Database, name: str) -> int:
        row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no user named {name!r} (see `credgate user list`)")
        return int(row["id"])

    @staticmethod
    def _require_member(conn: Database, group_id: int, user_id: int, group: str, user: str) -> None:
        if not conn.execute("SELECT 1 FROM members WHERE group_id = ? AND user_id = ?", (group_id, user_id)).fetchone():
            raise ConflictError(
                f"user {user!r} is not a member of group {group!r}: run `credgate group member add {group} {user}`"
            )

    # -- keys ----------------------------------------------------------------------------

    def _writing_key(self, conn: Database) -> MasterKey:
        rows = conn.execute("SELECT key_id, state FROM master_keys").fetchall()
        by_state = {r["state"]: r["key_id"] for r in rows}
        # During a rotation, new data keys go under the new key: under the old one, a rotation that dies after
        # replacing master.key would leave them with no key to open them.
        for state in ("pending", "current"):
            key_id = by_state.get(state)
            key = (self._keyring.get(key_id) or self._reloaded_key(key_id)) if key_id else None
            if key is not None:
                return key
        raise MasterKeyError("master key does not match this store")

    def _data_key(self, row: Row) -> DataKey:
        master = self._keyring.get(row["key_id"]) or self._reloaded_key(row["key_id"])
        if master is None:
            raise CiphertextError(row["name"])
        try:
            return master.unwrap(row["wrapped_dek"], row["uid"])
        except OpenError:
            raise CiphertextError(row["name"]) from None

    def _reloaded_key(self, key_id: str) -> MasterKey | None:
        """A key this process does not hold: another process (`credgate key rotate`) may have rotated the
        master key since this store was opened. Read the key files as they are now, as a restart would."""
        if self._key_source is None:
            return None
        try:
            keyring = load_keyring(*self._key_source)
        except MasterKeyError:
            return None
        master = keyring.get(key_id) if keyring is not None else None
        if keyring is not None and master is not None:
            with self._lock:
                self._keyring = keyring
        return master
