"""The store's master keys: their check rows, the key derived for other uses (the dashboard's sessions), and
the rotation to a new master key."""

from __future__ import annotations

import os
from contextlib import suppress

from ..config import Settings
from ..crypto import Keyring, MasterKey, write_key_file
from ..errors import MasterKeyError
from . import sqlite
from .base import StoreBase, now
from .database import Database
from .keyfiles import read_staged_key


class Keys(StoreBase):
    """The master keys of a store."""

    def derived_key(self, purpose: str) -> bytes:
        """A key derived from the store's current master key: the same on every replica, and it changes
        with a key rotation."""
        with self._lock:
            rows = self._db.execute("SELECT key_id FROM master_keys WHERE state = 'current'").fetchall()
            key = self._keyring.get(rows[0]["key_id"]) if rows else None
            return (key or self._keyring.primary).derive(purpose)

    def rotate_master_key(self, settings: Settings, key_from_env: bool) -> MasterKey:
        """Re-wrap every data key under a new master key. Safe to kill at any point and run again.

        1. the new key (the one staged ahead: `key new`'s master.key.new or CREDGATE_MASTER_KEY=OLD,NEW; else
           a fresh one, written to master.key.new and fsync-ed) gets its check row in the store as 'pending';
        2. each credential's data key is re-wrapped, one transaction each;
        3. `master.key.new` replaces `master.key` (atomic rename), unless the key comes from the env;
        4. one transaction drops the old key's row and makes the new one current.
        A crash before 4 leaves a store that the old key set, or the new key, still opens.
        """
        new_key: MasterKey | None = None
        # Decided under the write lock, so that two rotations at once agree on one new key; a pending key this
        # process does not hold (another process began the rotation after this store was opened) is read from
        # master.key.new, never thrown away: data keys may already be wrapped under it.
        with self._write() as conn:
            pending = conn.execute("SELECT key_id FROM master_keys WHERE state = 'pending'").fetchone()
            if pending is not None:
                new_key = self._keyring.get(pending["key_id"]) or self._reloaded_key(pending["key_id"])
            if new_key is None:
                new_key = self._staged_key(conn, settings)
                if new_key is not None:
                    conn.execute(
                        "INSERT INTO master_keys (key_id, check_blob, state, created_at) VALUES (?, ?, 'pending', ?)",
                        (new_key.key_id, new_key.check_blob(), now()),
                    )
            if new_key is None and self._db.shared:
                raise MasterKeyError(
                    "a shared store's new master key must reach every replica before the rotation: make it with "
                    "`credgate key new`, give it to every replica (CREDGATE_MASTER_KEY=OLD,NEW or the "
                    "master.key.new file), then run `credgate key rotate` with both keys"
                )
            if new_key is None:
                if settings.pending_key_path.exists():
                    settings.pending_key_path.unlink()  # never used: its row was not yet written
                new_key = MasterKey.generate()
                write_key_file(settings.pending_key_path, new_key)
                sqlite.fsync_dir(settings.home)
                conn.execute("DELETE FROM master_keys WHERE state = 'pending'")
                conn.execute(
                    "INSERT INTO master_keys (key_id, check_blob, state, created_at) VALUES (?, ?, 'pending', ?)",
                    (new_key.key_id, new_key.check_blob(), now()),
                )
        self._keyring = Keyring(self._keyring.primary, [*self._keyring.keys.values(), new_key], self._keyring.given)
        while True:
            rows = self._query(
                "SELECT id, name, uid, key_id, wrapped_dek FROM credentials WHERE key_id != ? LIMIT 100",
                (new_key.key_id,),
            )
            if not rows:
                break
            for row in rows:
                dek = self._data_key(row)
                with self._write() as conn:
                    conn.execute(
                        "UPDATE credentials SET key_id = ?, wrapped_dek = ? WHERE id = ? AND key_id = ?",
                        (new_key.key_id, new_key.wrap(dek.raw, row["uid"]), row["id"], row["key_id"]),
                    )
        # Only this rotation's key replaces master.key: a file staged since by `key new` (for a later
        # rotation) must not take the place of the key the store is about to need.
        staged = read_staged_key(settings)
        if not key_from_env and staged is not None and staged.key_id == new_key.key_id:
            with suppress(FileNotFoundError):  # a concurrent rotation to the same key moved it first
                os.replace(settings.pending_key_path, settings.key_path)
            sqlite.fsync_dir(settings.home)
        with self._write() as conn:
            # A credential added meanwhile by another process is still under the old key. Re-wrap it here, under
            # the write lock: failing instead would leave it under a key whose file was just replaced.
            left = conn.execute(
                "SELECT id, name, uid, key_id, wrapped_dek FROM credentials WHERE key_id != ?", (new_key.key_id,)
            ).fetchall()
            for row in left:
                dek = self._data_key(row)
                conn.execute(
                    "UPDATE credentials SET key_id = ?, wrapped_dek = ? WHERE id = ?",
                    (new_key.key_id, new_key.wrap(dek.raw, row["uid"]), row["id"]),
                )
            conn.execute("DELETE FROM master_keys WHERE key_id != ?", (new_key.key_id,))
            conn.execute("UPDATE master_keys SET state = 'current' WHERE key_id = ?", (new_key.key_id,))
        self._keyring = Keyring(new_key, self._keyring.keys.values())
        return new_key

    def _staged_key(self, conn: Database, settings: Settings) -> MasterKey | None:
        """The next key, made beforehand (`credgate key new`) and handed to every replica: master.key.new, or
        the key listed after the store's current one in CREDGATE_MASTER_KEY=OLD,NEW. (A key the store merely
        does not know may be one it retired: never rotate back to it.)"""
        known = {r["key_id"]: r["state"] for r in conn.execute("SELECT key_id, state FROM master_keys")}
        staged = self._keyring.next_key
        if staged is not None and staged.key_id not in known:
            with suppress(FileNotFoundError), open(settings.pending_key_path, "rb") as file:
                os.fsync(file.fileno())  # durable before anything is wrapped under it
            return staged
        given = [k.key_id for k in self._keyring.given]
        current = [i for i, key_id in enumerate(given) if known.get(key_id) == "current"]
        after = [self._keyring.given[i] for i in range(current[0] + 1, len(given))] if current else []
        return next((k for k in after if k.key_id not in known), None)

    def stage_master_key(self, settings: Settings) -> tuple[MasterKey, bool]:
        """Make the next master key in master.key.new (or keep the one already there). Returns it and whether
        it is new. Nothing in the store changes until `rotate_master_key`."""
        staged = read_staged_key(settings)
        if staged is not None:
            return staged, False
        settings.pending_key_path.unlink(missing_ok=True)  # half written: that key never reached anyone
        key = MasterKey.generate()
        write_key_file(settings.pending_key_path, key)
        sqlite.fsync_dir(settings.home)
        return key, True
