"""Rotating the master key: the protocol, and the key files it writes (master.key.new, then master.key, each
made durable by an fsync of the data folder). The store's side of it, its rows and data keys, is in `keys`:
this module drives it through a few small methods and holds nothing between calls.

`stage_master_key` (`credgate key new`) makes the next key ahead of a rotation and touches files only;
`rotate_master_key` (`credgate key rotate`) moves a store onto it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import suppress

from ..config import Settings
from ..crypto import Keyring, MasterKey, write_key_file
from ..errors import MasterKeyError
from . import sqlite
from .keyfiles import read_staged_key
from .keys import KeyRows, Keys


def rotate_master_key(store: Keys, settings: Settings, *, key_from_env: bool) -> MasterKey:
    """Re-wrap every data key under a new master key. Safe to kill at any point and run again.

    1. the new key (the one staged ahead: `key new`'s master.key.new or CREDGATE_MASTER_KEY=OLD,NEW; else
       a fresh one, written to master.key.new and fsync-ed) gets its check row in the store as 'pending';
    2. each credential's data key is re-wrapped, one transaction each;
    3. `master.key.new` replaces `master.key` (atomic rename), unless the key comes from the env;
    4. one transaction drops the old key's row and makes the new one current.
    A crash before 4 leaves a store that the old key set, or the new key, still opens.
    """
    # Decided under the write lock, so that two rotations at once agree on one new key; a pending key this
    # process does not hold (another process began the rotation after this store was opened) is read from
    # master.key.new, never thrown away: data keys may already be wrapped under it.
    with store.deciding_key() as rows:
        new_key = _new_key(store, rows, settings)
    store.hold_key(new_key)
    while store.rewrap_data_keys(new_key):
        pass
    # Only this rotation's key replaces master.key: a file staged since by `key new` (for a later
    # rotation) must not take the place of the key the store is about to need.
    staged = read_staged_key(settings)
    if not key_from_env and staged is not None and staged.key_id == new_key.key_id:
        with suppress(FileNotFoundError):  # a concurrent rotation to the same key moved it first
            os.replace(settings.pending_key_path, settings.key_path)
        sqlite.fsync_dir(settings.home)
    store.make_current(new_key)
    return new_key


def _new_key(store: Keys, rows: KeyRows, settings: Settings) -> MasterKey:
    """Step 1, inside the transaction of `rows`: the key of the rotation under way, else the key staged
    ahead, else (a store on this machine only) a fresh key, durable in master.key.new before its row is
    written."""
    pending = rows.pending_id()
    new_key = store.master_key(pending) if pending is not None else None
    if new_key is None:
        new_key = _staged_key(store.keyring, rows.states(), settings)
        if new_key is not None:
            rows.add_pending(new_key)
    if new_key is None and rows.shared:
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
        rows.replace_pending(new_key)
    return new_key


def _staged_key(keyring: Keyring, known: Mapping[str, str], settings: Settings) -> MasterKey | None:
    """The next key, made beforehand (`credgate key new`) and handed to every replica: master.key.new, or
    the key listed after the store's current one in CREDGATE_MASTER_KEY=OLD,NEW. (A key the store merely
    does not know (`known`: key id → state) may be one it retired: never rotate back to it.)"""
    staged = keyring.next_key
    if staged is not None and staged.key_id not in known:
        with suppress(FileNotFoundError), open(settings.pending_key_path, "rb") as file:
            os.fsync(file.fileno())  # durable before anything is wrapped under it
        return staged
    given = [k.key_id for k in keyring.given]
    current = [i for i, key_id in enumerate(given) if known.get(key_id) == "current"]
    after = [keyring.given[i] for i in range(current[0] + 1, len(given))] if current else []
    return next((k for k in after if k.key_id not in known), None)


def stage_master_key(settings: Settings) -> tuple[MasterKey, bool]:
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
