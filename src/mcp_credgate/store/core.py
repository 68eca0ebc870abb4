"""The store: credentials, groups, bindings, agents and the audit log, over either backend.

Names, types, field names, groups and bindings are plain, queryable columns; field values exist
only as AES-GCM ciphertext under their credential's data key (see `crypto`). Each change is one write
transaction, and writers run one at a time, so a failed or concurrent write leaves the store as it was.
Every SQL statement of credgate lives in this package; the backend (`sqlite.py`, `postgres.py`) is chosen
by the settings and nothing outside the package knows which one it is.

`Store` is a thin composition: each concern is a module of its own over the shared `base.StoreBase`
(connection, lock, key ring, transactions, data keys):

- `credentials`: credentials and their values;  `groups`: groups, allowed tools, bindings, the binding cache;
- `upstreams`: upstream servers' discovered tools;  `agents`: agents and the admin secret;
- `grants`: remote clients' OAuth sign-ins (clients, codes, tokens; each grant an agent);
- `setup_links`: single-use links to a call's setup page (contract §7);  `approvals`: approvals spent;
- `users`: users, their memberships of groups and their personal bindings;
- `audit`: the audit log;  `keys`: the master keys and a rotation's database steps;  `maintenance`: backup
  and health;  `rotation`: the rotation's protocol and its key files, driving `keys`;
- `records`: the frozen records handed out;  `keyfiles`: the key files;  `opening`: finding and checking a
  store before it is opened.

One `Store` lives as long as its connection: open it once per process (or per app) and close it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ..config import Settings
from ..crypto import Keyring, MasterKey, write_key_file
from ..errors import MasterKeyError, NotInitialisedError, StoreBusyError, StoreError, StoreFaultError
from . import rotation, sqlite
from .agents import Agents
from .approvals import Approvals
from .audit import Audit
from .base import now
from .budgets import Budgets
from .credentials import Credentials
from .database import Database
from .grants import Grants
from .groups import Groups
from .keyfiles import load_keyring
from .keys import Keys
from .maintenance import Maintenance
from .opening import check_keyring, open_existing, postgres_backend, store_exists, store_location
from .setup_links import SetupLinks
from .upstreams import Upstreams
from .users import Users

logger = logging.getLogger("credgate.store")


class Store(
    Credentials, Groups, Users, Upstreams, Agents, Grants, SetupLinks, Approvals, Budgets, Audit, Keys, Maintenance
):
    """One open store: a connection, the key ring that opens it, and the operations on it (one class per
    concern, each over `StoreBase`; they share the connection, its lock and the key ring)."""

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def initialise(cls, settings: Settings, env: Mapping[str, str] | None = None) -> tuple[Store, bool]:
        """Create the data folder, key and database as needed. Returns (store, created_anything)."""
        env = os.environ if env is None else env
        created = False
        home = settings.home
        if not home.exists():
            home.mkdir(mode=0o700, parents=True)
            home.chmod(0o700)
            created = True
        if store_exists(settings):
            return cls.open(settings, env), created  # never a new key over an existing store
        keyring = load_keyring(settings, env)
        new_key_file = keyring is None
        if keyring is None:
            key = MasterKey.generate()
            write_key_file(settings.key_path, key)
            keyring = Keyring(key)
        first_key_row = (keyring.primary.key_id, keyring.primary.check_blob(), now())
        if settings.database_url:
            if not postgres_backend().create_database(settings.database_url, first_key_row):
                # Another `credgate init` made the store meanwhile, under its own key: this one was never used.
                if new_key_file:
                    settings.key_path.unlink()
                return cls.open(settings, env), created
        else:
            sqlite.create_database(settings.database_path, first_key_row)
        return cls.open(settings, env), True

    @classmethod
    def open(cls, settings: Settings, env: Mapping[str, str] | None = None, *, frozen_on_fault: bool = False) -> Store:
        """Open an existing store, refusing (before anything is written) a key that does not open it.
        `frozen_on_fault`: for a command's reads, a SQLite store that a full disk or a read-only filesystem keeps
        from being opened as usual is opened read-only from its file alone, where that file holds all of it;
        its first write is refused with the fault (never for a gateway: a frozen view never sees new writes)."""
        try:
            return cls._open(settings, env, open_existing(settings))
        except StoreFaultError as fault:
            if not (frozen_on_fault and not settings.database_url and sqlite.can_open_frozen(settings.database_path)):
                raise
            frozen = sqlite.SqliteDatabase(settings.database_path, frozen=fault)
            logger.warning("%s; showing the store as it is on disk, read-only", fault)
            return cls._open(settings, env, frozen)

    @classmethod
    def _open(cls, settings: Settings, env: Mapping[str, str] | None, db: Database) -> Store:
        where = store_location(settings)
        mismatch = f"master key does not match this store ({where})"
        try:
            try:
                keyring = load_keyring(settings, env)
            except MasterKeyError as exc:  # malformed or truncated
                raise MasterKeyError(f"{mismatch}: {exc}") from None
            if keyring is None:
                raise MasterKeyError(
                    f"no master key for this store ({where}): {settings.key_path} does not exist and "
                    "CREDGATE_MASTER_KEY is not set; restore the key file from where you keep its copy, or set "
                    "CREDGATE_MASTER_KEY (a new key is never generated over an existing store)"
                )
            check_keyring(db, keyring, settings)
            if db.pending_migrations():
                db.migrate()
        except (StoreBusyError, StoreFaultError):
            db.close()
            raise
        except (MasterKeyError, NotInitialisedError):
            db.close()
            raise
        except StoreError as exc:
            db.close()
            raise StoreError(f"{where} is not a readable credgate store ({exc})") from None
        except BaseException:
            db.close()
            raise
        store = cls(db, keyring)
        store._key_source = (settings, env)
        store._copy_pending_expiries()
        return store

    # -- readiness (`probes`) ---------------------------------------------------------------------

    def check_reachable(self) -> None:
        """Raise StoreError unless the store answers a read."""
        with self._lock:
            self._db.execute("SELECT key_id FROM master_keys LIMIT 1").fetchone()

    def check_key(self) -> None:
        """Raise MasterKeyError unless the key this store was opened with is still where it came from and still
        opens the store (a key file removed or replaced while serving)."""
        if self._key_source is None:
            return
        settings, env = self._key_source
        keyring = load_keyring(settings, env)
        if keyring is None:
            raise MasterKeyError(f"master key missing: {settings.key_path} is gone and CREDGATE_MASTER_KEY is not set")
        with self._lock:
            check_keyring(self._db, keyring, settings)

    # -- the master key's rotation (in `rotation`; kept here for callers that hold a store) ---------

    def rotate_master_key(self, settings: Settings, key_from_env: bool) -> MasterKey:
        """`rotation.rotate_master_key` on this store."""
        return rotation.rotate_master_key(self, settings, key_from_env=key_from_env)

    def stage_master_key(self, settings: Settings) -> tuple[MasterKey, bool]:
        """`rotation.stage_master_key`: files only, this store is not changed."""
        return rotation.stage_master_key(settings)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
