"""The master key's files and variable: the key ring a process opens the store with (CREDGATE_MASTER_KEY,
else master.key) and the next key of a rotation (master.key.new). Read afresh on each call: nothing here
keeps state."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..config import Settings
from ..crypto import Keyring, MasterKey, read_key_file
from ..errors import MasterKeyError
from .faults import os_fault


def load_keyring(settings: Settings, env: Mapping[str, str] | None = None) -> Keyring | None:
    """The env key(s), else the key file; plus the next key (master.key.new) of a rotation.

    CREDGATE_MASTER_KEY may hold several keys, comma-separated (`OLD,NEW` while a new key is rolled out to
    replicas): the store is opened by whichever of them it knows."""
    env = os.environ if env is None else env
    text = env.get("CREDGATE_MASTER_KEY")
    keys = [MasterKey.from_text(part, "CREDGATE_MASTER_KEY") for part in text.split(",")] if text else []
    if not keys:
        from_file = _read(settings.key_path)
        keys = [from_file] if from_file is not None else []
    if not keys:
        return None
    return Keyring(keys[0], given=keys, next_key=read_staged_key(settings))


def read_staged_key(settings: Settings) -> MasterKey | None:
    """The next key, in master.key.new: None when there is none, or when a rotation or `key new` died while
    writing it (that key was never used: its row goes into the store only after the file is synced)."""
    try:
        return _read(settings.pending_key_path)
    except MasterKeyError:
        return None


def _read(path: Path) -> MasterKey | None:
    try:
        return read_key_file(path)
    except OSError as exc:  # the file is there but cannot be read: said as the fault it is, not as a wrong key
        raise os_fault(path, exc) from None
