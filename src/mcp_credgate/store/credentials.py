"""Credentials: their rows, their values as ciphertext under each credential's data key, and decrypting them
(a whole record, or the sealed credential of a binding once the gate decides to use it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import TypeVar

from ..credential import Credential
from ..crypto import DataKey, MasterKey, OpenError
from ..errors import CiphertextError, ConflictError, NameTakenError
from .base import StoreBase, now
from .database import Database, PollingLock, Row
from .paging import Rows, names_starting_with, page_rows
from .records import CredentialInfo, Page, SealedCredential

EXPIRY_FIELD = "expires_at"  # an OAuth2 credential's token expiry, also kept in clear beside the ciphertext
EXPIRY_PENDING = "pending"  # the mark of migration 0007 on rows whose expiry is still to be copied in
ANALYZE_FROM = 10_000  # credentials added at once from which the planner's statistics are refreshed
_BATCH = 500  # rows per statement when many are read or written at once (well under any backend's limit)
T = TypeVar("T")


class Credentials(StoreBase):
    """The credentials of a store."""

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
                    "SELECT field, secret, ciphertext FROM credential_values"
                    " WHERE credential_id = ? AND field = ? AND secret = 0",
                    (row["id"], EXPIRY_FIELD),
                ).fetchall()
                try:
                    expiry = self._decrypt(row, found).get(EXPIRY_FIELD)
                except CiphertextError:
                    continue
                conn.execute(
                    "UPDATE credentials SET expires_at = ? WHERE id = ? AND expires_at = ?",
                    (expiry, row["id"], EXPIRY_PENDING),
                )

    def add_credential(
        self,
        name: str,
        type_: str,
        values: Mapping[str, str],
        secret_fields: frozenset[str],
        owner: str | None = None,
    ) -> None:
        """Add a credential: shared (a group's), or personal, owned by the user `owner`."""
        uid = uuid.uuid4().hex
        dek = DataKey.generate()
        stamp, expiry = now(), _expiry(values, secret_fields)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM credentials WHERE name = ?", (name,)).fetchone():
                raise NameTakenError(name)
            owner_id = self._owner_id(conn, owner)
            master = self._writing_key(conn)
            credential_id = conn.execute(
                "INSERT INTO credentials"
                " (name, type, uid, key_id, wrapped_dek, created_at, updated_at, expires_at, owner_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    name,
                    type_,
                    uid,
                    master.key_id,
                    master.wrap(dek.raw, uid),
                    stamp,
                    stamp,
                    expiry,
                    owner_id,
                ),
            ).fetchone()["id"]
            _write_values(conn, credential_id, uid, dek, values, secret_fields)

    def add_credentials(
        self,
        type_: str,
        credentials: Iterable[tuple[str, Mapping[str, str]]],
        secret_fields: frozenset[str],
        *,
        owner: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Add many credentials of one type (name, values already validated) in one transaction: all of them,
        or, when a name is taken (by the store or earlier in `credentials`) or anything fails, none. Written in
        batches (one statement per table and batch), each credential with its own data key; `progress` is told
        how many are written after each batch; `owner`: all are that user's. Returns how many were added."""
        added = 0
        with self._write() as conn:
            owner_id = self._owner_id(conn, owner)
            master = self._writing_key(conn)
            for batch in _batches(credentials, _BATCH):
                _insert_batch(conn, master, type_, batch, secret_fields, owner_id)
                added += len(batch)
                if progress is not None:
                    progress(added)
        if added >= ANALYZE_FROM:
            with self._lock:
                self._db.refresh_statistics(["credentials", "credential_values"])
        return added

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
            conn.execute("DELETE FROM personal_bindings WHERE credential_id = ?", (row["id"],))
            conn.execute("DELETE FROM credentials WHERE id = ?", (row["id"],))
        return bindings

    def credential_lock(self, uid: str, timeout: float = 30.0) -> PollingLock:
        """Held while a credential's OAuth2 tokens are refreshed or replaced: by one process at a time, on
        this machine (SQLite) or across replicas (PostgreSQL)."""
        return self._db.credential_lock(uid, timeout)

    def credential_info(self, name: str) -> CredentialInfo:
        with self._lock:
            row = self._credential_row(self._db, name)
            return self._infos([row["id"]])[0]

    def credentials_page(
        self,
        *,
        limit: int = 50,
        after: str | None = None,
        before: str | None = None,
        prefix: str = "",
        type_: str | None = None,
        owner: str | None = None,
    ) -> Page[CredentialInfo]:
        """A page of credentials in byte order of their names (`paging`): those whose name starts with
        `prefix`, of type `type_` and owned by the user `owner` when given, after the name `after` (else before
        `before`)."""
        with self._lock:
            found = self._found_credentials(limit, after, before, prefix, type_, owner)
            infos = self._infos([r["id"] for r in found.rows])
        return _page(infos, found, lambda info: info.name)

    def credential_names_page(
        self,
        *,
        limit: int = 50,
        after: str | None = None,
        before: str | None = None,
        prefix: str = "",
        type_: str | None = None,
        owner: str | None = None,
    ) -> Page[str]:
        """The names alone of `credentials_page` (to choose one from)."""
        with self._lock:
            found = self._found_credentials(limit, after, before, prefix, type_, owner)
        return _page([r["name"] for r in found.rows], found, lambda name: name)

    def _found_credentials(
        self, limit: int, after: str | None, before: str | None, prefix: str, type_: str | None, owner: str | None
    ) -> Rows:
        where: list[str] = []
        params: list[object] = []
        if type_ is not None:
            where.append("type = ?")
            params.append(type_)
        if owner is not None:
            where.append("owner_id = (SELECT id FROM users WHERE name = ?)")
            params.append(owner)
        return page_rows(
            self._db,
            "id, name",
            "credentials",
            "name",
            where,
            params,
            names_starting_with(prefix),
            after=after,
            before=before,
            limit=limit,
        )

    def iter_credentials(
        self, *, prefix: str = "", type_: str | None = None, owner: str | None = None, batch: int = 500
    ) -> Iterator[CredentialInfo]:
        """Every credential (whose name starts with `prefix`, of type `type_`), read a page at a time: a caller
        may stream a store of any size. Each page is read on its own, so a credential added or removed meanwhile
        may or may not be seen."""
        after = None
        while True:
            page = self.credentials_page(limit=batch, after=after, prefix=prefix, type_=type_, owner=owner)
            yield from page.items
            if page.after is None:
                return
            after = page.after

    def list_credentials(self) -> list[CredentialInfo]:
        """Every credential at once: for small stores and tests (`iter_credentials` streams)."""
        return list(self.iter_credentials())

    def credentials_named(self, names: Iterable[str]) -> dict[str, CredentialInfo]:
        """Name → what is known of these credentials without decrypting them (their bindings left out)."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        with self._lock:
            infos = self._infos(wanted, by="name", with_bindings=False)
        return {info.name: info for info in infos}

    def existing_credential_names(self, names: Iterable[str]) -> set[str]:
        """Those of `names` that a credential has."""
        wanted = list(dict.fromkeys(names))
        found: set[str] = set()
        for start in range(0, len(wanted), _BATCH):
            chunk = wanted[start : start + _BATCH]
            rows = self._query(f"SELECT name FROM credentials WHERE name IN ({', '.join('?' * len(chunk))})", chunk)
            found.update(r["name"] for r in rows)
        return found

    def _infos(self, keys: Sequence[object], *, by: str = "id", with_bindings: bool = True) -> list[CredentialInfo]:
        """What is known of the credentials whose `by` ("id" or "name") is one of `keys`, without decrypting
        them, in byte order of their names. Under the lock."""
        if not keys:
            return []
        assert by in ("id", "name")
        # Three look-ups by key rather than one join: on a just-loaded PostgreSQL table (no statistics yet) a
        # join of a few keys may be planned as a hash join over a whole table.
        creds = self._db.execute(
            "SELECT id, name, type, uid, created_at, updated_at, expires_at,"
            " (SELECT u.name FROM users u WHERE u.id = owner_id) AS owner FROM credentials"
            f" WHERE {by} IN ({', '.join('?' * len(keys))})",
            keys,
        ).fetchall()
        if not creds:
            return []
        ids = [r["id"] for r in creds]
        marks = ", ".join("?" * len(ids))
        fields: dict[int, list[Row]] = {}
        for v in self._db.execute(
            f"SELECT credential_id, field, secret FROM credential_values WHERE credential_id IN ({marks})"
            " ORDER BY credential_id, rowid",
            ids,
        ):
            fields.setdefault(v["credential_id"], []).append(v)
        binds = (
            self._db.execute(
                "SELECT b.credential_id, (SELECT name FROM groups g WHERE g.id = b.group_id) AS grp, b.target AS tool"
                f" FROM bindings b WHERE b.credential_id IN ({marks})",
                ids,
            ).fetchall()
            if with_bindings
            else []
        )
        by_cred: dict[int, list[tuple[str, str]]] = {}
        for b in binds:
            by_cred.setdefault(b["credential_id"], []).append((b["grp"], b["tool"]))
        infos = [
            CredentialInfo(
                r["name"],
                r["type"],
                tuple(v["field"] for v in fields.get(r["id"], [])),
                frozenset(v["field"] for v in fields.get(r["id"], []) if v["secret"]),
                r["created_at"],
                r["updated_at"],
                tuple(sorted(by_cred.get(r["id"], []))),
                r["uid"],
                r["expires_at"],
                r["owner"],
            )
            for r in creds
        ]
        return sorted(infos, key=lambda info: info.name)  # byte order, as the store's (Python's str order)

    def _owner_id(self, conn: Database, owner: str | None) -> int | None:
        return None if owner is None else self._user_id(conn, owner)

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

    def open_sealed(self, sealed: SealedCredential) -> Credential:
        if sealed.data_key is None:
            sealed.data_key = self._data_key(sealed.row)
        return self._decrypt(sealed.row, sealed.values, sealed.data_key)


def _expiry(values: Mapping[str, str], secret_fields: frozenset[str]) -> str | None:
    """The clear copy of a credential's `expires_at` (never of a field declared secret)."""
    return values.get(EXPIRY_FIELD) if EXPIRY_FIELD not in secret_fields else None


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


def _page(items: list[T], found: Rows, key: Callable[[T], str]) -> Page[T]:
    return Page(
        tuple(items),
        after=key(items[-1]) if items and found.more_after else None,
        before=key(items[0]) if items and found.more_before else None,
    )


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _insert_batch(
    conn: Database,
    master: MasterKey,
    type_: str,
    batch: Sequence[tuple[str, Mapping[str, str]]],
    secret_fields: frozenset[str],
    owner_id: int | None,
) -> None:
    """One batch of `add_credentials`: refused (NameTakenError) when a name is taken, by the store or twice in the
    batch; otherwise one statement for the credentials and one for their values."""
    names = [name for name, _ in batch]
    taken = {
        r["name"]
        for r in conn.execute(f"SELECT name FROM credentials WHERE name IN ({', '.join('?' * len(names))})", names)
    }
    seen: set[str] = set()
    for name in names:
        if name in taken or name in seen:
            raise NameTakenError(name)
        seen.add(name)
    stamp = now()
    rows, values = [], []
    for name, fields in batch:
        uid, dek = uuid.uuid4().hex, DataKey.generate()
        rows.append(
            (
                name,
                type_,
                uid,
                master.key_id,
                master.wrap(dek.raw, uid),
                stamp,
                stamp,
                _expiry(fields, secret_fields),
                owner_id,
            )
        )
        values.append([(field, int(field in secret_fields), dek.encrypt(uid, field, v)) for field, v in fields.items()])
    conn.executemany(
        "INSERT INTO credentials (name, type, uid, key_id, wrapped_dek, created_at, updated_at, expires_at, owner_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    ids = {
        r["name"]: r["id"]
        for r in conn.execute(f"SELECT id, name FROM credentials WHERE name IN ({', '.join('?' * len(names))})", names)
    }
    conn.executemany(
        "INSERT INTO credential_values (credential_id, field, secret, ciphertext) VALUES (?, ?, ?, ?)",
        [(ids[name], *value) for name, fields in zip(names, values, strict=True) for value in fields],
    )
