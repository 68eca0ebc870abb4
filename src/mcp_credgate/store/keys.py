"""The store's master keys: their check rows, the key derived for other uses (the dashboard's sessions), and
the database steps of a rotation to a new master key. `rotation` drives those steps and does the file work
(master.key.new, master.key, fsync); nothing here writes a file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..crypto import Keyring, MasterKey
from .base import StoreBase, now
from .database import Database


class KeyRows:
    """The master keys' rows inside one write transaction (the store's write lock held), where a rotation
    decides on its new key, so that two rotations at once agree on one. Lives for one `Keys.deciding_key`
    block."""

    def __init__(self, conn: Database) -> None:
        self._conn = conn

    @property
    def shared(self) -> bool:
        """Whether several machines may serve from the store (a new key must reach them all first)."""
        return self._conn.shared

    def pending_id(self) -> str | None:
        """The id of the key a rotation under way is moving to."""
        row = self._conn.execute("SELECT key_id FROM master_keys WHERE state = 'pending'").fetchone()
        return None if row is None else str(row["key_id"])

    def states(self) -> dict[str, str]:
        """Key id → 'current' or 'pending', for every key the store knows."""
        return {r["key_id"]: r["state"] for r in self._conn.execute("SELECT key_id, state FROM master_keys")}

    def add_pending(self, key: MasterKey) -> None:
        self._conn.execute(
            "INSERT INTO master_keys (key_id, check_blob, state, created_at) VALUES (?, ?, 'pending', ?)",
            (key.key_id, key.check_blob(), now()),
        )

    def replace_pending(self, key: MasterKey) -> None:
        """Make `key` the only pending key (a pending key whose file never reached the disk was never used)."""
        self._conn.execute("DELETE FROM master_keys WHERE state = 'pending'")
        self.add_pending(key)


class Keys(StoreBase):
    """The master keys of a store."""

    def derived_key(self, purpose: str) -> bytes:
        """A key derived from the store's current master key: the same on every replica, and it changes
        with a key rotation."""
        with self._lock:
            rows = self._db.execute("SELECT key_id FROM master_keys WHERE state = 'current'").fetchall()
            key = self._keyring.get(rows[0]["key_id"]) if rows else None
            return (key or self._keyring.primary).derive(purpose)

    # -- the database steps of a rotation (see `rotation`) --------------------------------

    @property
    def keyring(self) -> Keyring:
        """The keys this store holds now (read again from the key files when the store meets one it lacks)."""
        return self._keyring

    def master_key(self, key_id: str) -> MasterKey | None:
        """The master key with this id: held, or read from the key files as they are now (another process may
        have begun a rotation since this store was opened)."""
        return self._keyring.get(key_id) or self._reloaded_key(key_id)

    @contextmanager
    def deciding_key(self) -> Iterator[KeyRows]:
        """Step 1: one write transaction over the master keys' rows."""
        with self._write() as conn:
            yield KeyRows(conn)

    def hold_key(self, key: MasterKey) -> None:
        """Hold `key` beside the keys held, so that data keys wrapped under it open."""
        self._keyring = Keyring(self._keyring.primary, [*self._keyring.keys.values(), key], self._keyring.given)

    def rewrap_data_keys(self, key: MasterKey, batch: int = 100) -> int:
        """Step 2: re-wrap up to `batch` data keys not yet under `key`, one transaction each. Returns how many
        were found (0: none is left)."""
        rows = self._query(
            "SELECT id, name, uid, key_id, wrapped_dek FROM credentials WHERE key_id != ? LIMIT ?", (key.key_id, batch)
        )
        for row in rows:
            dek = self._data_key(row)
            with self._write() as conn:
                conn.execute(
                    "UPDATE credentials SET key_id = ?, wrapped_dek = ? WHERE id = ? AND key_id = ?",
                    (key.key_id, key.wrap(dek.raw, row["uid"]), row["id"], row["key_id"]),
                )
        return len(rows)

    def make_current(self, key: MasterKey) -> None:
        """Step 4: one transaction drops every other key's row and makes `key` current; from then on this store
        holds `key` as its primary."""
        with self._write() as conn:
            # A credential added meanwhile by another process is still under the old key. Re-wrap it here, under
            # the write lock: failing instead would leave it under a key whose file was just replaced.
            left = conn.execute(
                "SELECT id, name, uid, key_id, wrapped_dek FROM credentials WHERE key_id != ?", (key.key_id,)
            ).fetchall()
            for row in left:
                dek = self._data_key(row)
                conn.execute(
                    "UPDATE credentials SET key_id = ?, wrapped_dek = ? WHERE id = ?",
                    (key.key_id, key.wrap(dek.raw, row["uid"]), row["id"]),
                )
            conn.execute("DELETE FROM master_keys WHERE key_id != ?", (key.key_id,))
            conn.execute("UPDATE master_keys SET state = 'current' WHERE key_id = ?", (key.key_id,))
        self._keyring = Keyring(key, self._keyring.keys.values())
