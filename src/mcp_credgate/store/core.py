"""The store: credentials, groups, bindings, agents and the audit log, over either backend.

Names, types, field names, groups and bindings are plain, queryable columns; field values exist
only as AES-GCM ciphertext under their credential's data key (see `crypto`). Each change is one write
transaction, and writers run one at a time, so a failed or concurrent write leaves the store as it was.
Every SQL statement of credgate lives in this package; the backend (`sqlite.py`, `postgres.py`) is chosen
by the settings and nothing outside the package knows which one it is.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from ..allow import AllowEntry
from ..config import Settings
from ..credential import Credential
from ..crypto import DataKey, Keyring, MasterKey, OpenError, read_key_file, write_key_file
from ..errors import (
    CiphertextError,
    ConflictError,
    MasterKeyError,
    NotFoundError,
    NotInitialisedError,
    StoreBusyError,
    StoreError,
)
from . import sqlite
from .database import Database, PollingLock, Row

EXPIRY_FIELD = "expires_at"  # an OAuth2 credential's token expiry, also kept in clear beside the ciphertext
EXPIRY_PENDING = "pending"  # the mark of migration 0007 on rows whose expiry is still to be copied in


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class CredentialInfo:
    """What may be shown about a credential without decrypting it."""

    name: str
    type: str
    fields: tuple[str, ...]
    secret_fields: frozenset[str]
    created_at: str
    updated_at: str
    bindings: tuple[tuple[str, str], ...] = ()  # (group, tool)
    uid: str = ""
    expires_at: str | None = None  # an OAuth2 token's expiry: clear metadata, not a secret


@dataclass(frozen=True)
class GroupInfo:
    name: str
    description: str
    created_at: str
    tools: Mapping[str, str | None] = field(default_factory=dict)  # tool (or `UPSTREAM.*`) → bound credential
    upstreams: Mapping[str, str] = field(default_factory=dict)  # upstream MCP server → bound credential


@dataclass
class SealedCredential:
    """A credential's row and value ciphertexts, read but not decrypted. While the binding cache keeps it,
    it keeps its unwrapped data key too (key material, not a value: values are decrypted per call). A new
    one is read after any change to the store."""

    row: Row
    values: tuple[Row, ...]
    data_key: DataKey | None = None
    vetted_for: object = None  # the gate's: the declaration its values were found complete and well-formed for

    def __repr__(self) -> str:
        return f"SealedCredential({self.row['name']!r})"

    @property
    def type(self) -> str:
        return str(self.row["type"])

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(v["field"] for v in self.values)

    @property
    def expires_at(self) -> str | None:
        return self.row["expires_at"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Binding:
    """What a (group, tool) pair resolves to at call time."""

    allowed: bool
    credential: str | None = None  # the bound credential's name; None when nothing is bound
    sealed: SealedCredential | None = None


@dataclass(frozen=True)
class AuditRow:
    ts: str
    group: str
    agent: str | None
    tool: str
    credential: str | None
    outcome: str
    duration_ms: float
    ref: str | None = None


@dataclass(frozen=True)
class AgentInfo:
    name: str
    group: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


def load_keyring(settings: Settings, env: Mapping[str, str] | None = None) -> Keyring | None:
    """The env key(s), else the key file; plus the next key (master.key.new) of a rotation.

    CREDGATE_MASTER_KEY may hold several keys, comma-separated (`OLD,NEW` while a new key is rolled out to
    replicas): the store is opened by whichever of them it knows."""
    env = os.environ if env is None else env
    text = env.get("CREDGATE_MASTER_KEY")
    keys = [MasterKey.from_text(part, "CREDGATE_MASTER_KEY") for part in text.split(",")] if text else []
    if not keys:
        from_file = read_key_file(settings.key_path)
        keys = [from_file] if from_file is not None else []
    if not keys:
        return None
    return Keyring(keys[0], given=keys, next_key=read_staged_key(settings))


def read_staged_key(settings: Settings) -> MasterKey | None:
    """The next key, in master.key.new: None when there is none, or when a rotation or `key new` died while
    writing it (that key was never used: its row goes into the store only after the file is synced)."""
    try:
        return read_key_file(settings.pending_key_path)
    except MasterKeyError:
        return None


def _postgres() -> ModuleType:
    """The PostgreSQL backend, imported only when a store is there (psycopg is an optional dependency)."""
    try:
        from . import postgres
    except ImportError:
        raise StoreError(
            "a PostgreSQL store needs psycopg: pip install 'mcp-credgate[postgres]' (or unset CREDGATE_DATABASE_URL)"
        ) from None
    return postgres


def _open_existing(settings: Settings) -> Database:
    """A connection to the store `credgate init` made; NotInitialisedError when there is none. SQLite's
    file is looked for first (connecting would create it); PostgreSQL is asked on the connection kept."""
    missing = NotInitialisedError(f"no credgate store at {store_location(settings)}: run `credgate init` first")
    if not settings.database_url:
        if not settings.database_path.exists():
            raise missing
        return sqlite.SqliteDatabase(settings.database_path, sqlite.open_change_hint(settings.database_path))
    postgres = _postgres()
    db: Database = postgres.PostgresDatabase(settings.database_url)
    if not postgres.holds_store(db):
        db.close()
        raise missing
    return db


def store_exists(settings: Settings) -> bool:
    """Whether `credgate init` has made the store (without opening it: no key needed)."""
    if settings.database_url:
        return bool(_postgres().store_exists(settings.database_url))
    return settings.database_path.exists()


def store_location(settings: Settings) -> str:
    """Where the store is, for messages: the SQLite file, or the PostgreSQL URL without its password."""
    if settings.database_url:
        return str(_postgres().describe(settings.database_url))
    return str(settings.database_path)


class Store:
    """One open store: a connection, the key ring that opens it, and the operations on it."""

    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring
        self._lock = threading.RLock()
        # (group, tool) → Binding, valid while the database's change marker is unchanged (no change committed
        # by another connection) and this connection wrote nothing. It holds ciphertext only, never a value.
        self._bindings: dict[tuple[str, str], Binding] = {}
        self._bindings_version = -1
        self._key_source: tuple[Settings, Mapping[str, str] | None] | None = None  # set by `open`

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
            if not _postgres().create_database(settings.database_url, first_key_row):
                # Another `credgate init` made the store meanwhile, under its own key: this one was never used.
                if new_key_file:
                    settings.key_path.unlink()
                return cls.open(settings, env), created
        else:
            sqlite.create_database(settings.database_path, first_key_row)
        return cls.open(settings, env), True

    @classmethod
    def open(cls, settings: Settings, env: Mapping[str, str] | None = None) -> Store:
        """Open an existing store, refusing (before anything is written) a key that does not open it."""
        where = store_location(settings)
        db = _open_existing(settings)
        mismatch = f"master key does not match this store ({where})"
        try:
            try:
                keyring = load_keyring(settings, env)
            except MasterKeyError as exc:  # malformed or truncated
                raise MasterKeyError(f"{mismatch}: {exc}") from None
            if keyring is None:
                raise MasterKeyError(
                    f"{mismatch}: no key found: {settings.key_path} does not exist and CREDGATE_MASTER_KEY is "
                    "not set; restore the key file or set CREDGATE_MASTER_KEY (a new key is never generated over "
                    "an existing store)"
                )
            _check_keyring(db, keyring, settings)
            if db.pending_migrations():
                db.migrate()
        except StoreBusyError:
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

    def close(self) -> None:
        self._db.close()

    def _copy_pending_expiries(self) -> None:
        """Copy in the clear expiry of the credentials migration 0007 marked (an index finds them: nothing to
        do costs one lookup). A credential whose value does not open stays marked, for a later try."""
        pending = self._query(
            "SELECT id, name, type, uid, key_id, wrapped_dek FROM credentials WHERE expires_at = ?", (EXPIRY_PENDING,)
        )
        if not pending:
            return
        with self._write() as conn:
            for row in pending:
                found = conn.execute(
                    "SELECT ciphertext FROM credential_values WHERE credential_id = ? AND field = ? AND secret = 0",
                    (row["id"], EXPIRY_FIELD),
                ).fetchone()
                try:
                    expiry = (
                        self._data_key(row).decrypt(row["uid"], EXPIRY_FIELD, found["ciphertext"]) if found else None
                    )
                except (CiphertextError, OpenError, UnicodeDecodeError):
                    continue
                conn.execute(
                    "UPDATE credentials SET expires_at = ? WHERE id = ? AND expires_at = ?",
                    (expiry, row["id"], EXPIRY_PENDING),
                )

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self, *, changes_setup: bool = True) -> Iterator[Database]:
        """A write transaction. `changes_setup`: it changes credentials, groups, bindings, agents or keys,
        which other connections' binding caches must see (the audit log and last-use times do not)."""
        with self._lock:
            self._bindings.clear()
            with self._db.transaction():
                if changes_setup:
                    self._db.note_change()
                yield self._db

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

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

    # -- credentials ---------------------------------------------------------------------

    def _credential_row(self, conn: Database, name: str) -> Row:
        row = conn.execute(
            "SELECT id, name, type, uid, key_id, wrapped_dek FROM credentials WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no credential named {name!r} (see `credgate cred list`)")
        return row  # type: ignore[no-any-return]

    def add_credential(self, name: str, type_: str, values: Mapping[str, str], secret_fields: frozenset[str]) -> None:
        uid = uuid.uuid4().hex
        dek = DataKey.generate()
        stamp, expiry = now(), _expiry(values, secret_fields)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM credentials WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"a credential named {name!r} exists already (use `credgate cred update {name}`)")
            master = self._writing_key(conn)
            credential_id = conn.execute(
                "INSERT INTO credentials (name, type, uid, key_id, wrapped_dek, created_at, updated_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    name,
                    type_,
                    uid,
                    master.key_id,
                    master.wrap(dek.raw, uid),
                    stamp,
                    stamp,
                    expiry,
                ),
            ).fetchone()["id"]
            _write_values(conn, credential_id, uid, dek, values, secret_fields)

    def update_credential(
        self,
        name: str,
        values: Mapping[str, str],
        secret_fields: frozenset[str],
        *,
        remove: Iterable[str] = (),
        uid: str | None = None,
    ) -> None:
        """Set some fields and drop others, in one transaction. With `uid`, only if NAME is still that record
        (not deleted and added again meanwhile)."""
        with self._write() as conn:
            row = self._credential_row(conn, name)
            if uid is not None and row["uid"] != uid:
                raise ConflictError(f"credential {name!r} was replaced meanwhile")
            rebuilt = False
            try:
                dek = self._data_key(row)
            except CiphertextError:
                # Its data key no longer opens (altered or corrupt), so its old values are lost: given every
                # field anew, the credential gets a new data key (the remedy its error names); else it stays refused.
                stored = [
                    r["field"]
                    for r in conn.execute("SELECT field FROM credential_values WHERE credential_id = ?", (row["id"],))
                ]
                if not set(stored) <= set(values):
                    raise CiphertextError(name) from None
                master, dek, rebuilt = self._writing_key(conn), DataKey.generate(), True
                conn.execute("DELETE FROM credential_values WHERE credential_id = ?", (row["id"],))
                conn.execute(
                    "UPDATE credentials SET key_id = ?, wrapped_dek = ? WHERE id = ?",
                    (master.key_id, master.wrap(dek.raw, row["uid"]), row["id"]),
                )
            _write_values(conn, row["id"], row["uid"], dek, values, secret_fields)
            conn.executemany(
                "DELETE FROM credential_values WHERE credential_id = ? AND field = ?",
                [(row["id"], f) for f in remove if f not in values],
            )
            conn.execute("UPDATE credentials SET updated_at = ? WHERE id = ?", (now(), row["id"]))
            if EXPIRY_FIELD in values or EXPIRY_FIELD in remove or rebuilt:
                conn.execute(
                    "UPDATE credentials SET expires_at = ? WHERE id = ?", (_expiry(values, secret_fields), row["id"])
                )

    def remove_credential(self, name: str, force: bool = False) -> list[tuple[str, str]]:
        """Delete a credential; a bound one only with force, which unbinds it. Returns the bindings removed."""
        with self._write() as conn:
            row = self._credential_row(conn, name)
            bindings = _bindings_of(conn, row["id"])
            if bindings and not force:
                where = ", ".join(f"{g}/{t}" for g, t in bindings)
                raise ConflictError(f"credential {name!r} is bound ({where}); unbind it first or use --force")
            conn.execute("UPDATE group_tools SET credential_id = NULL WHERE credential_id = ?", (row["id"],))
            conn.execute("DELETE FROM group_upstreams WHERE credential_id = ?", (row["id"],))
            conn.execute("DELETE FROM credentials WHERE id = ?", (row["id"],))
        return bindings

    def credential_lock(self, uid: str, timeout: float = 30.0) -> PollingLock:
        """Held while a credential's OAuth2 tokens are refreshed or replaced: by one process at a time, on
        this machine (SQLite) or across replicas (PostgreSQL)."""
        return self._db.credential_lock(uid, timeout)

    def credential_info(self, name: str) -> CredentialInfo:
        with self._lock:
            row = self._credential_row(self._db, name)
        return self._infos(f"WHERE c.id = {int(row['id'])}")[0]

    def list_credentials(self) -> list[CredentialInfo]:
        return self._infos("")

    def credentials_named(self, names: Iterable[str]) -> dict[str, CredentialInfo]:
        """Name → what is known of these credentials without decrypting them (their bindings left out)."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        where = f"WHERE c.name IN ({', '.join('?' * len(wanted))})"
        return {info.name: info for info in self._infos(where, wanted, with_bindings=False)}

    def _infos(self, where: str, params: Sequence[object] = (), *, with_bindings: bool = True) -> list[CredentialInfo]:
        rows = self._query(
            "SELECT c.id, c.name, c.type, c.uid, c.created_at, c.updated_at, c.expires_at, v.field, v.secret"
            f" FROM credentials c LEFT JOIN credential_values v ON v.credential_id = c.id {where}"
            " ORDER BY c.name, v.rowid",
            params,
        )
        binds = (
            self._query(
                "SELECT b.credential_id, g.name AS grp, b.target AS tool FROM bindings b"
                " JOIN groups g ON g.id = b.group_id ORDER BY g.name, b.target"
            )
            if with_bindings
            else []
        )
        by_cred: dict[int, list[tuple[str, str]]] = {}
        for b in binds:
            by_cred.setdefault(b["credential_id"], []).append((b["grp"], b["tool"]))
        infos: dict[int, CredentialInfo] = {}
        for r in rows:
            info = infos.get(r["id"]) or CredentialInfo(
                r["name"],
                r["type"],
                (),
                frozenset(),
                r["created_at"],
                r["updated_at"],
                tuple(by_cred.get(r["id"], [])),
                r["uid"],
                r["expires_at"],
            )
            if r["field"] is not None:
                info = replace(
                    info,
                    fields=(*info.fields, r["field"]),
                    secret_fields=info.secret_fields | ({r["field"]} if r["secret"] else set()),
                )
            infos[r["id"]] = info
        return list(infos.values())

    def read_credential(self, name: str) -> Credential:
        """Decrypt a whole record. Raises CiphertextError if any stored value no longer opens."""
        with self._lock:
            row = self._credential_row(self._db, name)
            values = self._db.execute(
                "SELECT field, secret, ciphertext FROM credential_values WHERE credential_id = ?", (row["id"],)
            ).fetchall()
        return self._decrypt(row, values)

    def _decrypt(self, row: Row, values: Iterable[Row], dek: DataKey | None = None) -> Credential:
        dek = dek or self._data_key(row)
        plain: dict[str, str] = {}
        secret: set[str] = set()
        for v in values:
            try:
                plain[v["field"]] = dek.decrypt(row["uid"], v["field"], v["ciphertext"])
            except (OpenError, UnicodeDecodeError):
                raise CiphertextError(row["name"], v["field"]) from None
            if v["secret"]:
                secret.add(v["field"])
        return Credential(row["name"], row["type"], plain, frozenset(secret), row["uid"])

    # -- groups and bindings -------------------------------------------------------------

    def _group_id(self, conn: Database, name: str) -> int:
        row = conn.execute("SELECT id FROM groups WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no agent group named {name!r} (see `credgate group list`)")
        return int(row["id"])

    def add_group(self, name: str, description: str = "") -> None:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM groups WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"an agent group named {name!r} exists already")
            conn.execute(
                "INSERT INTO groups (name, description, created_at) VALUES (?, ?, ?)", (name, description, now())
            )

    def remove_group(self, name: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM groups WHERE id = ?", (self._group_id(conn, name),))

    def group_exists(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM groups WHERE name = ?", (name,)))

    def list_groups(self) -> list[GroupInfo]:
        return [self.group(r["name"]) for r in self._query("SELECT name FROM groups ORDER BY name")]

    def group(self, name: str) -> GroupInfo:
        rows = self._query(
            "SELECT g.name, g.description, g.created_at, gt.tool, c.name AS cred FROM groups g"
            " LEFT JOIN group_tools gt ON gt.group_id = g.id LEFT JOIN credentials c ON c.id = gt.credential_id"
            " WHERE g.name = ? ORDER BY gt.tool",
            (name,),
        )
        if not rows:
            raise NotFoundError(f"no agent group named {name!r} (see `credgate group list`)")
        tools = {r["tool"]: r["cred"] for r in rows if r["tool"] is not None}
        return GroupInfo(
            rows[0]["name"], rows[0]["description"], rows[0]["created_at"], tools, self.upstream_bindings(name)
        )

    def upstream_bindings(self, group: str) -> dict[str, str]:
        """Upstream MCP server → the credential bound for all its tools, in this group."""
        rows = self._query(
            "SELECT gu.upstream, c.name FROM groups g JOIN group_upstreams gu ON gu.group_id = g.id"
            " JOIN credentials c ON c.id = gu.credential_id WHERE g.name = ? ORDER BY gu.upstream",
            (group,),
        )
        return {r["upstream"]: r["name"] for r in rows}

    def bind_upstream(self, group: str, upstream: str, credential: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            cred = self._credential_row(conn, credential)
            conn.execute(
                "INSERT INTO group_upstreams (group_id, upstream, credential_id) VALUES (?, ?, ?)"
                " ON CONFLICT (group_id, upstream) DO UPDATE SET credential_id = excluded.credential_id",
                (gid, upstream, cred["id"]),
            )

    def unbind_upstream(self, group: str, upstream: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            cur = conn.execute("DELETE FROM group_upstreams WHERE group_id = ? AND upstream = ?", (gid, upstream))
            if cur.rowcount == 0:
                raise NotFoundError(f"upstream {upstream!r} has no credential bound in group {group!r}")

    def save_upstream_tools(
        self,
        upstream: str,
        listings: Sequence[Mapping[str, object]],
        capabilities: Mapping[str, object] | None = None,
    ) -> None:
        """Replace the cached tool list of an upstream MCP server (name, description, inputSchema) and the
        capabilities it announced (tools alone when not given)."""
        stamp = now()
        with self._write() as conn:
            conn.execute("DELETE FROM upstream_tools WHERE upstream = ?", (upstream,))
            conn.executemany(
                "INSERT INTO upstream_tools (upstream, tool, listing, discovered_at) VALUES (?, ?, ?, ?)",
                [(upstream, str(t["name"]), json.dumps(t), stamp) for t in listings],
            )
            _save_capabilities(conn, upstream, {"tools": {}} if capabilities is None else capabilities, stamp)

    def save_upstream_capabilities(self, upstream: str, capabilities: Mapping[str, object]) -> None:
        """Record what a running upstream announced, when it differs from what was cached."""
        if self.upstream_capabilities().get(upstream) != capabilities:
            with self._write() as conn:
                _save_capabilities(conn, upstream, capabilities, now())

    def discovered_tools(self) -> dict[str, list[dict[str, object]]]:
        out: dict[str, list[dict[str, object]]] = {}
        for r in self._query("SELECT upstream, listing FROM upstream_tools ORDER BY upstream, tool"):
            out.setdefault(r["upstream"], []).append(json.loads(r["listing"]))
        return out

    def upstream_capabilities(self) -> dict[str, dict[str, object]]:
        """Upstream MCP server → the capabilities it announced when last started or discovered."""
        rows = self._query("SELECT upstream, capabilities FROM upstream_servers ORDER BY upstream")
        return {r["upstream"]: json.loads(r["capabilities"]) for r in rows}

    def allow(self, group: str, tools: Iterable[str]) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            conn.executemany(
                "INSERT INTO group_tools (group_id, tool) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(gid, t) for t in tools],
            )

    def deny(self, group: str, tools: Iterable[str]) -> list[str]:
        """Remove tools from a group (their bindings go too). Returns the tools that were bound."""
        with self._write() as conn:
            gid = self._group_id(conn, group)
            tools = list(tools)
            marks = ",".join("?" * len(tools))
            bound = [
                r["tool"]
                for r in conn.execute(
                    f"SELECT tool FROM group_tools WHERE group_id = ? AND tool IN ({marks})"
                    " AND credential_id IS NOT NULL",
                    (gid, *tools),
                )
            ]
            conn.execute(f"DELETE FROM group_tools WHERE group_id = ? AND tool IN ({marks})", (gid, *tools))
        return bound

    def bind(self, group: str, tool: str, credential: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            cred = self._credential_row(conn, credential)
            cur = conn.execute(
                "UPDATE group_tools SET credential_id = ? WHERE group_id = ? AND tool = ?", (cred["id"], gid, tool)
            )
            if cur.rowcount == 0:
                raise ConflictError(
                    f"group {group!r} does not allow tool {tool!r}: run `credgate group allow {group} {tool}` first"
                )

    def unbind(self, group: str, tool: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            cur = conn.execute(
                "UPDATE group_tools SET credential_id = NULL WHERE group_id = ? AND tool = ?"
                " AND credential_id IS NOT NULL",
                (gid, tool),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"tool {tool!r} has no credential bound in group {group!r}")

    def allowed_tools(self, group: str) -> dict[str, str | None]:
        """Tool → bound credential name, for the group's allowed tools (empty if the group is unknown)."""
        rows = self._query(
            "SELECT gt.tool, c.name AS cred FROM groups g JOIN group_tools gt ON gt.group_id = g.id"
            " LEFT JOIN credentials c ON c.id = gt.credential_id WHERE g.name = ?",
            (group,),
        )
        return {r["tool"]: r["cred"] for r in rows}

    def binding(self, group: str, tool: str, upstream: str | None = None) -> Binding:
        """At call time: is the tool allowed for the group, and what does its bound credential hold (still
        sealed: `open_sealed` decrypts it once the caller decides to use it)? One cheap version check while
        nothing changed, one query otherwise: a rebind by any process is seen at the next call.

        A tool of an upstream MCP server is allowed by name or by `UPSTREAM.*`, and its credential is the
        one bound to the upstream."""
        with self._lock:
            version = self._db.change_marker()
            if version != self._bindings_version:
                self._bindings.clear()
                self._bindings_version = version
            cached = self._bindings.get((group, tool))
            if cached is not None:
                return cached
        if upstream is None:
            rows = self._query(
                "SELECT gt.credential_id AS cid, c.name, c.type, c.uid, c.key_id, c.wrapped_dek, c.expires_at,"
                " v.field, v.secret, v.ciphertext FROM groups g JOIN group_tools gt ON gt.group_id = g.id"
                " LEFT JOIN credentials c ON c.id = gt.credential_id"
                " LEFT JOIN credential_values v ON v.credential_id = c.id WHERE g.name = ? AND gt.tool = ?",
                (group, tool),
            )
        else:
            rows = self._query(
                "SELECT c.id AS cid, c.name, c.type, c.uid, c.key_id, c.wrapped_dek, c.expires_at, v.field, v.secret,"
                " v.ciphertext"
                " FROM groups g LEFT JOIN group_upstreams gu ON gu.group_id = g.id AND gu.upstream = ?"
                " LEFT JOIN credentials c ON c.id = gu.credential_id"
                " LEFT JOIN credential_values v ON v.credential_id = c.id WHERE g.name = ?"
                " AND EXISTS (SELECT 1 FROM group_tools gt WHERE gt.group_id = g.id AND gt.tool IN (?, ?))",
                (upstream, group, tool, str(AllowEntry.of_upstream(upstream))),
            )
        if not rows:
            found = Binding(allowed=False)
        elif rows[0]["cid"] is None:
            found = Binding(allowed=True)
        else:
            values = tuple(r for r in rows if r["field"] is not None)
            found = Binding(allowed=True, credential=rows[0]["name"], sealed=SealedCredential(rows[0], values))
        with self._lock:
            if self._bindings_version == version:
                self._bindings[(group, tool)] = found
        return found

    def open_sealed(self, sealed: SealedCredential) -> Credential:
        if sealed.data_key is None:
            sealed.data_key = self._data_key(sealed.row)
        return self._decrypt(sealed.row, sealed.values, sealed.data_key)

    # -- the dashboard's admin secret ----------------------------------------------------

    def set_admin_secret_hash(self, secret_hash: str) -> None:
        """Replace the admin secret (its hash): sessions signed under the old one end with it."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO admin_secret (id, secret_hash, created_at) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, created_at = excluded.created_at",
                (secret_hash, now()),
            )

    def admin_secret_hash(self) -> str | None:
        rows = self._query("SELECT secret_hash FROM admin_secret WHERE id = 1")
        return str(rows[0]["secret_hash"]) if rows else None

    def derived_key(self, purpose: str) -> bytes:
        """A key derived from the store's current master key: the same on every replica, and it changes
        with a key rotation."""
        with self._lock:
            rows = self._db.execute("SELECT key_id FROM master_keys WHERE state = 'current'").fetchall()
            key = self._keyring.get(rows[0]["key_id"]) if rows else None
            return (key or self._keyring.primary).derive(purpose)

    # -- agents --------------------------------------------------------------------------

    def add_agent(self, group: str, name: str, token_hash: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            if conn.execute("SELECT 1 FROM agents WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"an agent named {name!r} exists already")
            conn.execute(
                "INSERT INTO agents (name, group_id, token_hash, created_at) VALUES (?, ?, ?, ?)",
                (name, gid, token_hash, now()),
            )

    def list_agents(self) -> list[AgentInfo]:
        rows = self._query(
            "SELECT a.name, g.name AS grp, a.created_at, a.last_used_at, a.revoked_at"
            " FROM agents a JOIN groups g ON g.id = a.group_id ORDER BY g.name, a.name"
        )
        return [AgentInfo(r["name"], r["grp"], r["created_at"], r["last_used_at"], r["revoked_at"]) for r in rows]

    def revoke_agent(self, name: str) -> None:
        with self._write() as conn:
            cur = conn.execute("UPDATE agents SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now(), name))
            if cur.rowcount == 0:
                if conn.execute("SELECT 1 FROM agents WHERE name = ?", (name,)).fetchone():
                    raise ConflictError(f"agent {name!r} is already revoked")
                raise NotFoundError(f"no agent named {name!r} (see `credgate agent list`)")

    def agent_by_token_hash(self, token_hash: str) -> tuple[str, str, str] | None:
        """(agent, group, stored hash) of a live agent with this token hash, or None."""
        rows = self._query(
            "SELECT a.name, g.name AS grp, a.token_hash FROM agents a JOIN groups g ON g.id = a.group_id"
            " WHERE a.token_hash = ? AND a.revoked_at IS NULL",
            (token_hash,),
        )
        return (rows[0]["name"], rows[0]["grp"], rows[0]["token_hash"]) if rows else None

    def touch_agent(self, name: str) -> None:
        with self._write(changes_setup=False) as conn:
            conn.execute("UPDATE agents SET last_used_at = ? WHERE name = ?", (now(), name))

    # -- backup, restore and health ----------------------------------------------------------

    def backup(self, target: Path) -> None:
        """A consistent copy of a SQLite store, safe while a gateway serves (the master key is not in it)."""
        with self._lock:
            self._db.backup(target)

    def health(self) -> list[str]:
        """What the backend's own checks find, and pending schema migrations."""
        with self._lock:
            problems = self._db.health()
            pending = self._db.pending_migrations()
        if pending:
            problems.append(f"database schema: migrations not applied: {', '.join(pending)}")
        return problems

    def bound_targets(self) -> list[tuple[str, str, str]]:
        """(group, tool or upstream, credential) of every binding, and (group, allowed entry, "") rows."""
        rows = self._query(
            "SELECT g.name AS grp, b.target, c.name AS cred FROM bindings b JOIN groups g ON g.id = b.group_id"
            " JOIN credentials c ON c.id = b.credential_id"
            " UNION ALL SELECT g.name, gt.tool, '' FROM group_tools gt JOIN groups g ON g.id = gt.group_id"
            " ORDER BY 1, 2"
        )
        return [(r["grp"], r["target"], r["cred"]) for r in rows]

    # -- audit ---------------------------------------------------------------------------

    def write_audit(self, rows: Sequence[AuditRow]) -> None:
        if not rows:
            return
        with self._write(changes_setup=False) as conn:
            conn.executemany(
                "INSERT INTO audit (ts, group_name, agent, tool, credential, outcome, duration_ms, ref)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.ts, r.group, r.agent, r.tool, r.credential, r.outcome, r.duration_ms, r.ref) for r in rows],
            )

    def read_audit(
        self, group: str | None = None, tool: str | None = None, limit: int = 50, outcome: str | None = None
    ) -> list[AuditRow]:
        clauses, params = [], []
        for column, value in (("group_name", group), ("tool", tool), ("outcome", outcome)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            "SELECT ts, group_name, agent, tool, credential, outcome, duration_ms, ref FROM audit"
            f" {where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [
            AuditRow(
                r["ts"],
                r["group_name"],
                r["agent"],
                r["tool"],
                r["credential"],
                r["outcome"],
                r["duration_ms"],
                r["ref"],
            )
            for r in rows
        ]


def _expiry(values: Mapping[str, str], secret_fields: frozenset[str]) -> str | None:
    """The clear copy of a credential's `expires_at` (never of a field declared secret)."""
    return values.get(EXPIRY_FIELD) if EXPIRY_FIELD not in secret_fields else None


def _save_capabilities(conn: Database, upstream: str, capabilities: Mapping[str, object], stamp: str) -> None:
    conn.execute(
        "INSERT INTO upstream_servers (upstream, capabilities, discovered_at) VALUES (?, ?, ?)"
        " ON CONFLICT (upstream) DO UPDATE SET capabilities = excluded.capabilities,"
        " discovered_at = excluded.discovered_at",
        (upstream, json.dumps(capabilities, sort_keys=True), stamp),
    )


def _write_values(
    conn: Database,
    credential_id: int | None,
    uid: str,
    dek: DataKey,
    values: Mapping[str, str],
    secret_fields: frozenset[str],
) -> None:
    conn.executemany(
        "INSERT INTO credential_values (credential_id, field, secret, ciphertext) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (credential_id, field) DO UPDATE SET secret = excluded.secret, ciphertext = excluded.ciphertext",
        [(credential_id, f, int(f in secret_fields), dek.encrypt(uid, f, v)) for f, v in values.items()],
    )


def _bindings_of(conn: Database, credential_id: int) -> list[tuple[str, str]]:
    return [
        (r["name"], r["tool"])
        for r in conn.execute(
            "SELECT g.name, b.target AS tool FROM bindings b JOIN groups g ON g.id = b.group_id"
            " WHERE b.credential_id = ? ORDER BY g.name, b.target",
            (credential_id,),
        )
    ]


def _check_keyring(conn: Database, keyring: Keyring, settings: Settings) -> None:
    """A given key (CREDGATE_MASTER_KEY's, or the key file) must open its check row, and every key of the store
    that a credential uses must be in the ring. A credential whose key id the store does not know is a damaged
    row, refused when it is read (it must not lock every other credential out)."""
    try:
        checks = {r["key_id"]: r["check_blob"] for r in conn.execute("SELECT key_id, check_blob FROM master_keys")}
    except StoreBusyError:
        raise
    except StoreError:
        raise StoreError(f"{store_location(settings)} is not a credgate store (no key table)") from None
    in_use = {r["key_id"] for r in conn.execute("SELECT DISTINCT key_id FROM credentials")}
    opens = any(k.key_id in checks and k.opens_check(checks[k.key_id]) for k in keyring.given)
    if not opens or not (in_use & set(checks)) <= set(keyring.keys):
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
            _check_keyring(db, keyring, settings)
        except MasterKeyError:
            raise MasterKeyError(
                f"the current master key does not open the backup {source}: restore it with the key it was "
                "made with (CREDGATE_MASTER_KEY or the key file)"
            ) from None
        except StoreError:  # its message names the live store, not this file
            raise StoreError(f"{source} is not a credgate backup (no key table)") from None

    return sqlite.restore_database(settings.database_path, source, opens_with_current_key)
