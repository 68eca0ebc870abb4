"""The store: file modes, encryption at rest, key checks, atomic writes, rotation, audit (on SQLite and
PostgreSQL; a few tests are about the SQLite file itself)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mcp_credgate import admin
from mcp_credgate.config import Settings
from mcp_credgate.crypto import DataKey, MasterKey, write_key_file
from mcp_credgate.declarations import Catalog
from mcp_credgate.errors import (
    CiphertextError,
    ConflictError,
    CredentialValueError,
    MasterKeyError,
    NotFoundError,
    NotInitialisedError,
)
from mcp_credgate.store import AuditRow, Store, now, rotation, store_exists
from mcp_credgate.store import sqlite as sqlite_backend
from mcp_credgate.store.change_hint import RECHECK_SECONDS, ChangeHint, hint_path
from mcp_credgate.store.database import Cursor, Params
from mcp_credgate.store.schema import MIGRATIONS, Dialect, Migration
from tests.support.gateway import rotate_master_key
from tests.support.raw_db import data_folder_files, raw_db, store_contents
from tests.support.samples import ACCOUNT, WEATHER_KEY

CANARY = "CANARY-q7Kp3mW9vT2sZx81-end"
MISMATCH = "master key does not match this store"
MISSING = "no master key for this store"


# -- helpers ---------------------------------------------------------------------------------


def add(store: Store, catalog: Catalog, name: str, type_: str, values: dict[str, str]) -> None:
    admin.add_credential(store, catalog.types[type_], name, values)


def add_accounts(store: Store, catalog: Catalog, count: int) -> dict[str, dict[str, str]]:
    """`count` account credentials with distinct values; returns name → values."""
    added = {}
    for i in range(count):
        values = {"username": f"user{i}", "password": f"pw-{i}-{os.urandom(6).hex()}"}
        add(store, catalog, f"acct{i}", "account", values)
        added[f"acct{i}"] = values
    return added


def snapshot(settings: Settings) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, read through a separate connection."""
    with raw_db(settings) as db:
        return db.dump()


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def encoded_forms(secret: str) -> set[bytes]:
    """The secret as raw bytes, base64 (std and urlsafe, padded or not, at every byte alignment), hex."""
    raw = secret.encode()
    forms = {raw, raw.hex().encode(), raw.hex().upper().encode(), binascii.hexlify(raw, " ")}
    for lead in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * lead + raw)
            forms.add(text)
            forms.add(text.rstrip(b"="))
            inner = text[4 if lead else 0 :].rstrip(b"=")[:-4]  # the part that depends on the secret alone
            forms.add(inner)
    return {f for f in forms if len(f) >= 8}


def hits(paths: list[Path], secret: str) -> list[str]:
    return hits_in_data({path.name: path.read_bytes() for path in paths}, secret)


def hits_in_data(data: dict[str, bytes], secret: str) -> list[str]:
    return [f"{where}: {form!r}" for where, blob in data.items() for form in encoded_forms(secret) if form in blob]


def db_files(settings: Settings) -> list[Path]:
    base = settings.database_path
    candidates = (base, base.with_name(base.name + "-wal"), base.with_name(base.name + "-shm"))
    return [p for p in candidates if p.exists()]


def stored_rows(settings: Settings) -> dict[str, bytes]:
    """Table name → every value of every row of it, as bytes (text UTF-8 encoded, blobs as they are)."""

    def as_bytes(value: object) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    with raw_db(settings) as db:
        return {table: b"\n".join(as_bytes(v) for row in rows for v in row) for table, rows in db.dump().items()}


def stored_data(settings: Settings) -> dict[str, bytes]:
    """Everything the store holds: the SQLite files byte for byte, or every row of the PostgreSQL schema."""
    if settings.database_url:
        return stored_rows(settings)
    return {path.name: path.read_bytes() for path in db_files(settings)}


@pytest.fixture
def zero_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- init ------------------------------------------------------------------------------------


def test_init_creates_folder_0700_and_files_0600_whatever_the_umask(
    settings: Settings, catalog: Catalog, zero_umask: None
) -> None:
    store, created = Store.initialise(settings, env={})
    try:
        add(store, catalog, "acct", "account", ACCOUNT)  # a write, so the -wal and -shm files exist
        assert created
        assert stat.S_IMODE(settings.home.stat().st_mode) == 0o700
        names = {p.name for p in settings.home.iterdir()}
        database_files = set() if settings.database_url else {"credgate.db", "credgate.db-wal", "credgate.db-shm"}
        assert {"master.key", *database_files} <= names
        for path in settings.home.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        store.close()


@pytest.mark.sqlite_only  # WAL and PRAGMAs of the file
def test_init_uses_wal_and_foreign_keys(store: Store, settings: Settings) -> None:
    conn = sqlite3.connect(settings.database_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store._db.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_second_init_changes_nothing(settings: Settings) -> None:
    first, created = Store.initialise(settings, env={})
    first.close()
    before, rows_before = file_digests(settings.home), snapshot(settings)

    second, created_again = Store.initialise(settings, env={})
    second.close()

    assert created
    assert not created_again
    assert file_digests(settings.home) == before
    assert snapshot(settings) == rows_before


def test_init_with_the_key_in_the_environment_writes_no_key_file(settings: Settings) -> None:
    key = MasterKey.generate()
    env = {"CREDGATE_MASTER_KEY": key.to_text()}

    store, _ = Store.initialise(settings, env=env)
    store.close()

    assert not settings.key_path.exists()
    Store.open(settings, env=env).close()
    with pytest.raises(MasterKeyError):
        Store.open(settings, env={})


def test_open_before_init_is_refused(settings: Settings) -> None:
    with pytest.raises(NotInitialisedError) as excinfo:
        Store.open(settings, env={})
    assert "credgate init" in str(excinfo.value)
    assert not settings.home.exists()


# -- encryption at rest ----------------------------------------------------------------------


@pytest.mark.sqlite_only  # the database files byte for byte; see the next test for the rows, on both backends
def test_canary_secret_never_reaches_the_database_files(store: Store, settings: Settings, catalog: Catalog) -> None:
    add(store, catalog, "canary", "account", {"username": "alice", "password": CANARY})
    store.update_credential(
        "canary", {"password": CANARY + "-v2", "note": CANARY + "-note"}, catalog.types["account"].secret_fields
    )
    store.rotate_master_key(settings, key_from_env=False)
    assert store.read_credential("canary")["password"] == CANARY + "-v2"

    open_files = db_files(settings)
    assert settings.database_path.with_name("credgate.db-wal") in open_files  # read while the WAL exists
    assert hits(open_files, CANARY) == []
    assert hits(open_files, CANARY + "-v2") == []

    store.close()
    closed_files = db_files(settings)
    assert hits(closed_files, CANARY) == []
    assert hits(closed_files, CANARY + "-v2") == []


def test_canary_secret_never_reaches_any_row_of_the_store(store: Store, settings: Settings, catalog: Catalog) -> None:
    add(store, catalog, "canary", "account", {"username": "alice", "password": CANARY})
    store.update_credential(
        "canary", {"password": CANARY + "-v2", "note": CANARY + "-note"}, catalog.types["account"].secret_fields
    )
    store.write_audit([AuditRow(now(), "team", None, "login", "canary", "ok", 1.0, None)])
    assert store.read_credential("canary")["password"] == CANARY + "-v2"

    rows = stored_rows(settings)
    assert {"credentials", "credential_values", "audit"} <= set(rows)
    assert b"canary" in rows["credentials"] and b"canary" in rows["audit"]  # the scan reads the rows' values
    for value in (CANARY, CANARY + "-v2", CANARY + "-note"):
        assert hits_in_data(rows, value) == []


def test_canary_search_finds_a_planted_value() -> None:
    # The search itself must work: each encoded form is found inside a blob that carries it.
    for form in encoded_forms(CANARY):
        assert hits_in(b"prefix" + form + b"suffix", CANARY)


def hits_in(data: bytes, secret: str) -> bool:
    return any(form in data for form in encoded_forms(secret))


def test_metadata_is_plain_sql(store: Store, settings: Settings, catalog: Catalog) -> None:
    add(store, catalog, "acct", "account", ACCOUNT)
    with raw_db(settings) as db:
        row = db.execute("SELECT name, type FROM credentials").fetchone()
        fields = {r[0] for r in db.execute("SELECT field FROM credential_values")}
    assert row == ("acct", "account")
    assert fields == {"username", "password"}


def test_master_key_is_not_in_the_database(store: Store, settings: Settings, catalog: Catalog) -> None:
    add(store, catalog, "acct", "account", ACCOUNT)
    key_text = settings.key_path.read_text().strip()
    raw = base64.urlsafe_b64decode(key_text)

    data = stored_data(settings)
    assert data
    for blob in data.values():
        assert raw not in blob
        assert key_text.rstrip("=").encode() not in blob


# -- the master key must open the store -------------------------------------------------------


@pytest.fixture
def closed_store(store: Store, settings: Settings, catalog: Catalog) -> Settings:
    """A store holding one credential, closed again (so the database file is checkpointed)."""
    add(store, catalog, "acct", "account", ACCOUNT)
    store.close()
    return settings


def refused_open(settings: Settings, env: dict[str, str]) -> str:
    before_db = store_contents(settings)
    before_files = file_digests(settings.home)
    with pytest.raises(MasterKeyError) as excinfo:
        Store.open(settings, env=env)
    assert store_contents(settings) == before_db
    assert file_digests(settings.home) == before_files
    return str(excinfo.value)


def test_wrong_key_in_the_environment_is_refused(closed_store: Settings) -> None:
    message = refused_open(closed_store, {"CREDGATE_MASTER_KEY": MasterKey.generate().to_text()})

    assert MISMATCH in message
    assert "\n" not in message


def test_wrong_key_file_is_refused(closed_store: Settings) -> None:
    closed_store.key_path.write_text(MasterKey.generate().to_text() + "\n")

    assert MISMATCH in refused_open(closed_store, {})


def test_truncated_key_file_is_refused(closed_store: Settings) -> None:
    text = closed_store.key_path.read_text().strip()
    closed_store.key_path.write_text(text[:30] + "\n")

    message = refused_open(closed_store, {})

    assert MISMATCH in message
    assert text[:30] not in message


def test_truncated_key_in_the_environment_is_refused(closed_store: Settings) -> None:
    text = closed_store.key_path.read_text().strip()

    message = refused_open(closed_store, {"CREDGATE_MASTER_KEY": text[:-8]})

    assert MISMATCH in message
    assert text[:-8] not in message


def test_key_with_bytes_cut_off_and_refilled_is_refused(closed_store: Settings) -> None:
    raw = base64.urlsafe_b64decode(closed_store.key_path.read_text().strip())
    refilled = base64.urlsafe_b64encode(raw[:24] + b"\0" * 8).decode()

    assert MISMATCH in refused_open(closed_store, {"CREDGATE_MASTER_KEY": refilled})


def test_missing_key_is_refused(closed_store: Settings) -> None:
    closed_store.key_path.unlink()

    message = refused_open(closed_store, {})

    assert MISSING in message and MISMATCH not in message  # missing, not wrong
    assert str(closed_store.key_path) in message


def test_init_never_generates_a_key_over_an_existing_store(closed_store: Settings) -> None:
    closed_store.key_path.unlink()
    before = store_contents(closed_store)

    with pytest.raises(MasterKeyError):
        Store.initialise(closed_store, env={})

    assert not closed_store.key_path.exists()
    assert store_contents(closed_store) == before


def test_init_with_a_wrong_key_is_refused(closed_store: Settings) -> None:
    closed_store.key_path.write_text(MasterKey.generate().to_text() + "\n")

    with pytest.raises(MasterKeyError) as excinfo:
        Store.initialise(closed_store, env={})
    assert MISMATCH in str(excinfo.value)


def test_right_key_opens_and_reads(closed_store: Settings) -> None:
    with Store.open(closed_store, env={}) as store:
        assert dict(store.read_credential("acct")) == ACCOUNT


# -- ciphertexts are bound to their credential and field --------------------------------------


def test_ciphertext_copied_to_another_credential_does_not_open(
    store: Store, settings: Settings, catalog: Catalog
) -> None:
    add(store, catalog, "first", "weatherkey", {"api_key": WEATHER_KEY})
    add(store, catalog, "second", "weatherkey", {"api_key": "wk_secondKEY12345"})
    add(store, catalog, "third", "weatherkey", {"api_key": "wk_thirdKEY123456"})
    with raw_db(settings) as db:
        db.execute(
            "UPDATE credential_values SET ciphertext = (SELECT v.ciphertext FROM credential_values v"
            " JOIN credentials c ON c.id = v.credential_id WHERE c.name = 'first')"
            " WHERE credential_id = (SELECT id FROM credentials WHERE name = 'second')"
        )

    with pytest.raises(CiphertextError) as excinfo:
        store.read_credential("second")

    assert excinfo.value.credential == "second"
    assert "'second'" in str(excinfo.value)
    assert WEATHER_KEY not in str(excinfo.value)
    assert store.read_credential("first")["api_key"] == WEATHER_KEY
    assert store.read_credential("third")["api_key"] == "wk_thirdKEY123456"


def test_ciphertext_copied_to_another_field_does_not_open(store: Store, settings: Settings, catalog: Catalog) -> None:
    add(store, catalog, "acct", "account", ACCOUNT)
    add(store, catalog, "other", "account", {"username": "bob", "password": "bobs password"})
    with raw_db(settings) as db:
        db.execute(
            "UPDATE credential_values SET ciphertext = (SELECT ciphertext FROM credential_values"
            " WHERE credential_id = 1 AND field = 'password') WHERE credential_id = 1 AND field = 'username'"
        )

    with pytest.raises(CiphertextError) as excinfo:
        store.read_credential("acct")

    assert excinfo.value.field == "username"
    assert "'acct'" in str(excinfo.value)
    assert ACCOUNT["password"] not in str(excinfo.value)
    assert store.read_credential("other")["username"] == "bob"


def test_wrapped_data_key_copied_to_another_credential_does_not_open(
    store: Store, settings: Settings, catalog: Catalog
) -> None:
    add(store, catalog, "first", "weatherkey", {"api_key": WEATHER_KEY})
    add(store, catalog, "second", "weatherkey", {"api_key": "wk_secondKEY12345"})
    with raw_db(settings) as db:
        db.execute(
            "UPDATE credentials SET wrapped_dek = (SELECT wrapped_dek FROM credentials WHERE name = 'first')"
            " WHERE name = 'second'"
        )

    with pytest.raises(CiphertextError) as excinfo:
        store.read_credential("second")
    assert excinfo.value.credential == "second"
    assert store.read_credential("first")["api_key"] == WEATHER_KEY


# -- writes are all or nothing ----------------------------------------------------------------


def test_duplicate_add_is_refused_and_changes_nothing(store: Store, settings: Settings, catalog: Catalog) -> None:
    add(store, catalog, "acct", "account", ACCOUNT)
    before = snapshot(settings)

    with pytest.raises(ConflictError) as excinfo:
        add(store, catalog, "acct", "account", {"username": "mallory", "password": "other password"})

    assert "acct" in str(excinfo.value)
    assert snapshot(settings) == before
    assert dict(store.read_credential("acct")) == ACCOUNT


def test_invalid_values_are_refused_before_anything_is_written(
    store: Store, settings: Settings, catalog: Catalog
) -> None:
    add(store, catalog, "acct", "account", ACCOUNT)
    before = snapshot(settings)

    with pytest.raises(CredentialValueError):
        add(store, catalog, "bad", "weatherkey", {"api_key": "not-a-weather-key"})
    with pytest.raises(CredentialValueError):
        add(store, catalog, "bad", "account", {"username": "x"})
    with pytest.raises(CredentialValueError):
        admin.update_credential(store, catalog, "acct", {"password": "line\nbreak"})
    with pytest.raises(CredentialValueError):
        admin.update_credential(store, catalog, "acct", {"colour": "blue"})

    assert snapshot(settings) == before


def test_a_write_failing_half_way_leaves_no_half_record(
    store: Store, settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(settings)
    real_encrypt = DataKey.encrypt

    def encrypt_then_fail(self: DataKey, uid: str, field: str, value: str) -> bytes:
        if field == "password":
            raise RuntimeError("simulated failure")
        return real_encrypt(self, uid, field, value)

    monkeypatch.setattr(DataKey, "encrypt", encrypt_then_fail)
    with pytest.raises(RuntimeError):
        add(store, catalog, "acct", "account", ACCOUNT)
    monkeypatch.undo()

    assert snapshot(settings) == before
    with pytest.raises(NotFoundError):
        store.read_credential("acct")


def test_update_changes_only_the_given_fields(store: Store, catalog: Catalog) -> None:
    add(store, catalog, "acct", "account", ACCOUNT)

    admin.update_credential(store, catalog, "acct", {"password": "a new password"})

    assert dict(store.read_credential("acct")) == {"username": "alice", "password": "a new password"}


def test_unknown_credential_is_not_found(store: Store, catalog: Catalog) -> None:
    with pytest.raises(NotFoundError):
        store.read_credential("ghost")
    with pytest.raises(NotFoundError):
        admin.update_credential(store, catalog, "ghost", {"password": "x"})
    with pytest.raises(NotFoundError):
        store.remove_credential("ghost")


# -- groups and bindings ----------------------------------------------------------------------


@pytest.fixture
def bound(store: Store, catalog: Catalog) -> Store:
    """Group `team` allows echo and weather; credential `wk` is bound to weather."""
    add(store, catalog, "wk", "weatherkey", {"api_key": WEATHER_KEY})
    store.add_group("team", "the team")
    admin.allow(store, catalog, "team", ["echo", "weather"])
    admin.bind(store, catalog, "team", "weather", "wk")
    return store


def test_group_lists_its_tools_and_bound_credentials(bound: Store) -> None:
    info = bound.group("team")

    assert info.description == "the team"
    assert info.tools == {"echo": None, "weather": "wk"}
    assert bound.allowed_tools("team") == {"echo": None, "weather": "wk"}
    assert bound.allowed_tools("nobody") == {}
    assert bound.credential_info("wk").bindings == (("team", "weather"),)
    assert [g.name for g in bound.list_groups()] == ["team"]


def test_remove_of_a_bound_credential_is_refused_unless_forced(bound: Store) -> None:
    with pytest.raises(ConflictError) as excinfo:
        bound.remove_credential("wk")
    assert "team/weather" in str(excinfo.value)
    assert bound.read_credential("wk")["api_key"] == WEATHER_KEY

    removed = bound.remove_credential("wk", force=True)

    assert removed == [("team", "weather")]
    assert bound.group("team").tools == {"echo": None, "weather": None}
    with pytest.raises(NotFoundError):
        bound.read_credential("wk")


def test_deny_removes_the_binding(bound: Store, catalog: Catalog) -> None:
    assert bound.deny("team", ["weather"]) == ["weather"]

    assert bound.group("team").tools == {"echo": None}
    assert bound.credential_info("wk").bindings == ()
    admin.allow(bound, catalog, "team", ["weather"])
    assert bound.group("team").tools["weather"] is None
    bound.remove_credential("wk")  # no longer bound: no force needed


def test_bind_refuses_another_type_and_a_tool_not_allowed(bound: Store, catalog: Catalog) -> None:
    add(bound, catalog, "acct", "account", ACCOUNT)
    admin.allow(bound, catalog, "team", ["login"])

    with pytest.raises(ConflictError) as excinfo:
        admin.bind(bound, catalog, "team", "login", "wk")
    assert "weatherkey" in str(excinfo.value)
    assert "account" in str(excinfo.value)
    with pytest.raises(ConflictError) as excinfo:
        admin.bind(bound, catalog, "team", "forecast", "wk")
    assert "does not allow" in str(excinfo.value)
    assert bound.group("team").tools == {"echo": None, "login": None, "weather": "wk"}


def test_group_statuses(bound: Store, catalog: Catalog) -> None:
    admin.allow(bound, catalog, "team", ["login"])

    statuses = {
        s.tool: (s.status, s.credential, s.missing_fields) for s in admin.group_statuses(bound, catalog, "team")
    }

    assert statuses == {
        "echo": ("no_credential_needed", None, ()),
        "login": ("needs_credential", None, ("username", "password")),
        "weather": ("ready", "wk", ()),
    }


def test_unbind(bound: Store) -> None:
    bound.unbind("team", "weather")

    assert bound.group("team").tools["weather"] is None
    with pytest.raises(NotFoundError):
        bound.unbind("team", "weather")


def test_group_names_are_unique_and_removal_drops_bindings(bound: Store) -> None:
    with pytest.raises(ConflictError):
        bound.add_group("team")

    bound.remove_group("team")

    assert bound.list_groups() == []
    assert bound.credential_info("wk").bindings == ()
    with pytest.raises(NotFoundError):
        bound.group("team")


# -- key rotation -----------------------------------------------------------------------------


def test_rotation_keeps_every_credential_readable_and_retires_the_old_key(
    store: Store, settings: Settings, catalog: Catalog
) -> None:
    added = add_accounts(store, catalog, 5)
    old_text = settings.key_path.read_text().strip()

    new_key = rotate_master_key(store, settings)

    assert {n: dict(store.read_credential(n)) for n in added} == added
    store.close()
    assert settings.key_path.read_text().strip() == new_key.to_text()
    assert not settings.pending_key_path.exists()
    with Store.open(settings, env={}) as reopened:
        assert {n: dict(reopened.read_credential(n)) for n in added} == added
    message = refused_open(settings, {"CREDGATE_MASTER_KEY": old_text})
    assert MISMATCH in message


def test_rotation_with_the_key_in_the_environment(settings: Settings, catalog: Catalog) -> None:
    old = MasterKey.generate()
    store, _ = Store.initialise(settings, env={"CREDGATE_MASTER_KEY": old.to_text()})
    added = add_accounts(store, catalog, 3)

    new_key = rotate_master_key(store, settings, key_from_env=True, env={"CREDGATE_MASTER_KEY": old.to_text()})
    store.close()

    assert settings.pending_key_path.read_text().strip() == new_key.to_text()
    assert not settings.key_path.exists()
    with Store.open(settings, env={"CREDGATE_MASTER_KEY": new_key.to_text()}) as reopened:
        assert {n: dict(reopened.read_credential(n)) for n in added} == added
    assert MISMATCH in refused_open(settings, {"CREDGATE_MASTER_KEY": old.to_text()})


def test_rotating_twice_works(store: Store, settings: Settings, catalog: Catalog) -> None:
    added = add_accounts(store, catalog, 2)

    first = rotate_master_key(store, settings)
    second = rotate_master_key(store, settings)

    assert first.key_id != second.key_id
    assert {n: dict(store.read_credential(n)) for n in added} == added


def test_rotation_of_an_empty_store(store: Store, settings: Settings, catalog: Catalog) -> None:
    rotate_master_key(store, settings)
    store.close()

    with Store.open(settings, env={}) as reopened:
        add(reopened, catalog, "acct", "account", ACCOUNT)
        assert dict(reopened.read_credential("acct")) == ACCOUNT


class SimulatedCrash(Exception):
    """Stands for the process dying at that point."""


def crash_after(count: int, real: Callable[..., object]) -> Callable[..., object]:
    """A stand-in for `real` that raises right after its call number `count` has run."""
    calls = {"n": 0}

    def fake(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        result = real(*args, **kwargs)
        if calls["n"] == count:
            raise SimulatedCrash
        return result

    return fake


def crash_before(count: int, real: Callable[..., object]) -> Callable[..., object]:
    """A stand-in for `real` that raises instead of running its call number `count`."""
    calls = {"n": 0}

    def fake(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == count:
            raise SimulatedCrash
        return real(*args, **kwargs)

    return fake


def empty_key_file_then_crash(path: Path, key: MasterKey) -> None:
    """The process died after creating master.key.new but before its content reached the disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    raise SimulatedCrash


CrashInstaller = Callable[[pytest.MonkeyPatch], None]

# name → (how to crash, what it leaves: master.key.new exists, master_keys states, data keys re-wrapped)
CRASH_POINTS: dict[str, tuple[CrashInstaller, tuple[bool, list[str], int]]] = {
    # master.key.new created, nothing written into it yet
    "while_writing_the_new_key_file": (
        lambda mp: mp.setattr(rotation, "write_key_file", empty_key_file_then_crash),
        (True, ["current"], 0),
    ),
    # master.key.new written and synced; no pending row yet
    "after_writing_the_new_key_file": (
        lambda mp: mp.setattr(sqlite_backend, "fsync_dir", crash_after(1, sqlite_backend.fsync_dir)),
        (True, ["current"], 0),
    ),
    # pending row committed; no data key re-wrapped yet
    "after_inserting_the_pending_row": (
        lambda mp: mp.setattr(MasterKey, "wrap", crash_before(1, MasterKey.wrap)),
        (True, ["current", "pending"], 0),
    ),
    # some data keys re-wrapped, others not
    "after_rewrapping_some_credentials": (
        lambda mp: mp.setattr(MasterKey, "wrap", crash_before(3, MasterKey.wrap)),
        (True, ["current", "pending"], 2),
    ),
    # master.key.new renamed over master.key; the final transaction not run
    "after_renaming_the_key_file": (
        lambda mp: mp.setattr(sqlite_backend, "fsync_dir", crash_after(2, sqlite_backend.fsync_dir)),
        (False, ["current", "pending"], 5),
    ),
}


@pytest.mark.parametrize("crash_point", list(CRASH_POINTS))
def test_rotation_survives_a_crash_at_every_step(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, crash_point: str
) -> None:
    store, _ = Store.initialise(settings, env={})
    added = add_accounts(store, catalog, 5)
    old_text = settings.key_path.read_text().strip()
    old_id = MasterKey.from_text(old_text, "test").key_id
    install_crash, expected_state = CRASH_POINTS[crash_point]

    with monkeypatch.context() as mp:
        install_crash(mp)
        with pytest.raises(SimulatedCrash):
            rotate_master_key(store, settings)
    store.close()

    # The crash really happened at that step.
    with raw_db(settings) as db:
        states = sorted(r[0] for r in db.execute("SELECT state FROM master_keys"))
        rewrapped = db.execute("SELECT COUNT(*) FROM credentials WHERE key_id != ?", (old_id,)).fetchone()[0]
    assert (settings.pending_key_path.exists(), states, rewrapped) == expected_state

    # The key files as the crash left them open the store, and every credential decrypts.
    with Store.open(settings, env={}) as after_crash:
        assert {n: dict(after_crash.read_credential(n)) for n in added} == added
        late = {"username": "late", "password": "added after the crash"}
        add(after_crash, catalog, "late", "account", late)
        added["late"] = late

    # Running rotate again finishes the job.
    with Store.open(settings, env={}) as again:
        new_key = rotate_master_key(again, settings)
        assert {n: dict(again.read_credential(n)) for n in added} == added

    assert not settings.pending_key_path.exists()
    assert settings.key_path.read_text().strip() == new_key.to_text()
    assert new_key.to_text() != old_text
    with Store.open(settings, env={}) as final:
        assert {n: dict(final.read_credential(n)) for n in added} == added
        assert [(r["key_id"], r["state"]) for r in final._db.execute("SELECT key_id, state FROM master_keys")] == [
            (new_key.key_id, "current")
        ]
    assert MISMATCH in refused_open(settings, {"CREDGATE_MASTER_KEY": old_text})


# -- audit -----------------------------------------------------------------------------------


def test_audit_rows_are_read_back_newest_first_with_filters(store: Store) -> None:
    rows = [
        AuditRow(f"2024-01-01T00:00:0{i}.000+00:00", group, "agent1", tool, cred, outcome, 1.5 * i, ref)
        for i, (group, tool, cred, outcome, ref) in enumerate(
            [
                ("research", "weather", "wk", "ok", None),
                ("research", "echo", None, "ok", None),
                ("ops", "weather", "wk2", "error", "ref-1"),
                ("research", "weather", None, "missing_credential", None),
            ]
        )
    ]
    store.write_audit(rows)
    store.write_audit([])

    assert store.read_audit() == list(reversed(rows))
    assert store.read_audit(group="research") == [rows[3], rows[1], rows[0]]
    assert store.read_audit(tool="weather") == [rows[3], rows[2], rows[0]]
    assert store.read_audit(group="research", tool="weather") == [rows[3], rows[0]]
    assert store.read_audit(limit=2) == [rows[3], rows[2]]
    assert store.read_audit(group="nobody") == []
    assert store.read_audit(group="ops")[0].ref == "ref-1"


def test_an_init_that_dies_half_way_leaves_no_store_and_the_next_init_succeeds(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_render = Migration.render

    def die_at_the_second_migration(migration: Migration, dialect: Dialect) -> list[str]:
        if migration.name == MIGRATIONS[1].name:
            raise KeyboardInterrupt  # as if the process were stopped while the schema is made
        return real_render(migration, dialect)

    monkeypatch.setattr(Migration, "render", die_at_the_second_migration)
    with pytest.raises(KeyboardInterrupt):
        Store.initialise(settings)
    assert not store_exists(settings)

    monkeypatch.undo()
    store, created = Store.initialise(settings)
    with store:
        assert created
        assert store.list_credentials() == []
    assert sorted(p.name for p in settings.home.iterdir()) == data_folder_files(settings)


# -- seeing other connections' commits ----------------------------------------------------------------------------


def _two_connections(
    tmp_path: Path, hinted: bool = False
) -> tuple[sqlite_backend.SqliteDatabase, sqlite_backend.SqliteDatabase]:
    """Two connections to one database, as two processes have them: with the change hint (each its own
    descriptor of it) when `hinted`."""
    path = tmp_path / "changes.db"

    def hint() -> ChangeHint | None:
        return ChangeHint(hint_path(path)) if hinted else None

    writer = sqlite_backend.SqliteDatabase(path, hint())
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE t (n INTEGER)")
    writer.execute("CREATE TABLE change_counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)")
    writer.execute("INSERT INTO change_counter (id, n) VALUES (1, 0)")
    return sqlite_backend.SqliteDatabase(path, hint()), writer


def _traced(db: sqlite_backend.SqliteDatabase) -> list[str]:
    """The statements the connection runs from now on."""
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    return statements


def _setup_change(db: sqlite_backend.SqliteDatabase) -> None:
    """A commit as the store makes for a change to credentials, groups or bindings."""
    with db.transaction():
        db.execute("INSERT INTO t VALUES (0)")
        db.note_change()


@pytest.mark.sqlite_only
@pytest.mark.parametrize("hinted", [False, True], ids=["asking-sqlite", "with-the-change-hint"])
def test_every_setup_change_of_another_connection_moves_the_change_marker_and_other_commits_do_not(
    tmp_path: Path, hinted: bool
) -> None:
    reader, writer = _two_connections(tmp_path, hinted)
    seen = reader.change_marker()
    for i in range(300):
        writer.execute("INSERT INTO t VALUES (?)", (i,))  # an audit row, say
        assert reader.change_marker() == seen, i
        _setup_change(writer)
        if i % 50 == 49:
            writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL starts over: the next commit must show too
        now = reader.change_marker()
        assert now != seen, i
        assert reader.change_marker() == now
        seen = now
    reader.close()
    writer.close()


@pytest.mark.sqlite_only
def test_the_change_counter_is_read_only_after_another_connection_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = _two_connections(tmp_path)
    reader.change_marker()
    statements: list[str] = []
    real_execute = reader.execute

    def recording_execute(sql: str, params: Params = ()) -> Cursor:
        statements.append(sql)
        return real_execute(sql, params)

    monkeypatch.setattr(reader, "execute", recording_execute)

    for _ in range(3):
        reader.change_marker()
    quiet = list(statements)
    statements.clear()
    writer.execute("INSERT INTO t VALUES (1)")
    reader.change_marker()

    assert quiet == ["PRAGMA data_version"] * 3
    assert statements == ["PRAGMA data_version", "SELECT n FROM change_counter WHERE id = 1"]
    reader.close()
    writer.close()


@pytest.mark.sqlite_only
def test_while_the_change_hint_holds_sqlite_is_not_asked_and_a_setup_change_is_seen_at_the_next_check(
    tmp_path: Path,
) -> None:
    reader, writer = _two_connections(tmp_path, hinted=True)
    seen = reader.change_marker()
    statements = _traced(reader)

    for i in range(100):
        writer.execute("INSERT INTO t VALUES (?)", (i,))  # commits that change no setup announce nothing
        assert reader.change_marker() == seen
    assert statements == []

    _setup_change(writer)
    assert reader.change_marker() != seen
    assert statements == ["PRAGMA data_version", "SELECT n FROM change_counter WHERE id = 1"]
    statements.clear()
    reader.change_marker()
    assert statements == []
    reader.close()
    writer.close()


@pytest.mark.sqlite_only
def test_a_setup_change_with_no_hint_is_seen_at_the_first_check_after_the_recheck_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit by another tool, or by a writer that died between its commit and its hint."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # the module store.sqlite reads its clock from
    reader, writer = _two_connections(tmp_path, hinted=True)
    seen = reader.change_marker()
    writer.execute("UPDATE change_counter SET n = n + 1 WHERE id = 1")  # no hint announced

    clock[0] += RECHECK_SECONDS * 0.9
    assert reader.change_marker() == seen
    clock[0] += RECHECK_SECONDS * 0.2
    assert reader.change_marker() == seen + 1
    reader.close()
    writer.close()


@pytest.mark.sqlite_only
def test_a_hint_that_cannot_be_written_keeps_the_commit_and_says_so_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = _two_connections(tmp_path, hinted=True)
    seen = reader.change_marker()

    def full_disk(self: ChangeHint) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ChangeHint, "announce", full_disk)
    _setup_change(writer)

    assert writer.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1
    assert f"gateways see this change within {RECHECK_SECONDS:g} s" in caplog.text
    assert "No space left on device" in caplog.text
    assert reader.change_marker() == seen  # until the recheck
    reader.close()
    writer.close()


def test_a_change_hint_cut_short_is_made_whole_with_fresh_bytes_and_a_closed_one_reads_as_unknown(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db.changes"
    path.write_bytes(b"abc")
    hint = ChangeHint(path)
    first = hint.read()
    assert first is not None and len(first) == 8 and first[:3] != b"abc"
    other = ChangeHint(path)
    other.announce()
    assert hint.read() == other.read() != first
    other.close()
    hint.close()
    hint.close()
    assert hint.read() is None


@pytest.mark.sqlite_only
def test_the_store_announces_its_setup_changes_and_no_other_commit(store: Store, settings: Settings) -> None:
    hint = hint_path(settings.database_path)
    assert stat.S_IMODE(hint.stat().st_mode) == 0o600
    store.add_group("first")
    announced = hint.read_bytes()
    assert len(announced) == 8

    store.write_audit([AuditRow(now(), "first", None, "login", None, "ok", 1.0, None)])
    store.touch_agent("nobody")
    assert hint.read_bytes() == announced
    store.add_group("second")
    assert hint.read_bytes() not in (announced, b"")


# -- an OAuth2 token's expiry, kept in clear beside its ciphertext (what readiness reads) --------------------

OAUTH_SECRET = frozenset({"token", "client_secret", "refresh_token"})


def clear_expiry(settings: Settings, name: str) -> object:
    with raw_db(settings) as db:
        return db.execute("SELECT expires_at FROM credentials WHERE name = ?", (name,)).fetchone()[0]


def test_an_expiry_is_kept_in_clear_and_follows_every_update(store: Store, settings: Settings) -> None:
    store.add_credential("acme", "acme", {"token": "t-1", "expires_at": "2030-01-01T00:00:00Z"}, OAUTH_SECRET)
    assert clear_expiry(settings, "acme") == "2030-01-01T00:00:00Z"
    assert store.credentials_named(["acme"])["acme"].expires_at == "2030-01-01T00:00:00Z"

    store.update_credential("acme", {"expires_at": "2031-01-01T00:00:00Z"}, OAUTH_SECRET)
    assert clear_expiry(settings, "acme") == "2031-01-01T00:00:00Z"
    store.update_credential("acme", {"token": "t-2"}, OAUTH_SECRET)
    assert clear_expiry(settings, "acme") == "2031-01-01T00:00:00Z"
    store.update_credential("acme", {"token": "t-3"}, OAUTH_SECRET, remove=["expires_at"])
    assert clear_expiry(settings, "acme") is None
    assert store.credentials_named(["acme"])["acme"].expires_at is None


def test_a_field_named_expires_at_that_is_declared_secret_never_leaves_the_ciphertext(
    store: Store, settings: Settings
) -> None:
    store.add_credential("odd", "odd", {"expires_at": "s3cr3t-expiry"}, frozenset({"expires_at"}))
    store.update_credential("odd", {"expires_at": "s3cr3t-expiry-2"}, frozenset({"expires_at"}))
    assert clear_expiry(settings, "odd") is None
    assert store.read_credential("odd")["expires_at"] == "s3cr3t-expiry-2"


def test_expiries_marked_by_the_migration_are_copied_in_at_the_next_open(store: Store, settings: Settings) -> None:
    """Migration 0007 marks rows whose expiry was encrypted only; the next open (which has the key) fills them."""
    store.add_credential("acme", "acme", {"token": "t-1", "expires_at": "2030-01-01T00:00:00Z"}, OAUTH_SECRET)
    store.add_credential("plain", "plain", {"key": "k-1"}, frozenset({"key"}))
    with raw_db(settings) as db:
        db.execute("UPDATE credentials SET expires_at = 'pending'")

    with Store.open(settings):
        pass

    assert clear_expiry(settings, "acme") == "2030-01-01T00:00:00Z"
    assert clear_expiry(settings, "plain") is None


# -- found in a security review: rotations racing other writers -----------------------------------------------
# A credential added while a rotation finished bricked the store; a rotation by a process that opened the store
# earlier threw the pending key away; two rotations at once.


def _add(store: Store, catalog: Catalog, name: str, values: dict[str, str]) -> None:
    admin.add_credential(store, catalog.types["account"], name, values)


def test_a_credential_added_during_a_rotation_leaves_a_store_that_opens(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotating, _ = Store.initialise(settings, env={})
    _add(rotating, catalog, "before", ACCOUNT)
    other = Store.open(settings, env={})  # e.g. `credgate cred add` in another terminal
    late = {"username": "late", "password": "added during the rotation"}
    real_replace = os.replace

    def replace_after_a_concurrent_add(src: object, dst: object) -> None:
        _add(other, catalog, "late", late)  # lands after the re-wrap loop, before the final step
        real_replace(src, dst)  # type: ignore[arg-type]

    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", replace_after_a_concurrent_add)
        rotate_master_key(rotating, settings)
    rotating.close()
    other.close()

    with Store.open(settings, env={}) as reopened:
        assert dict(reopened.read_credential("before")) == ACCOUNT
        assert dict(reopened.read_credential("late")) == late


def test_a_rotation_from_a_process_opened_earlier_keeps_the_pending_key(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = Store.initialise(settings, env={})
    added = {}
    for i in range(4):
        values = {"username": f"user{i}", "password": f"pw-{i}-{os.urandom(6).hex()}"}
        _add(first, catalog, f"acct{i}", values)
        added[f"acct{i}"] = values
    second = Store.open(settings, env={})  # opened before the first rotation began

    calls = {"n": 0}
    real_wrap = MasterKey.wrap

    def wrap_then_die(self: object, *args: object) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the first rotation dies with two data keys re-wrapped
        return real_wrap(self, *args)  # type: ignore[arg-type]

    with monkeypatch.context() as mp:
        mp.setattr(MasterKey, "wrap", wrap_then_die)
        with pytest.raises(KeyboardInterrupt):
            rotate_master_key(first, settings)
    first.close()

    second.rotate_master_key(settings, key_from_env=False)
    second.close()

    with Store.open(settings, env={}) as reopened:
        assert {n: dict(reopened.read_credential(n)) for n in added} == added


def test_a_credential_added_during_a_rotation_that_then_dies_leaves_a_store_that_opens(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotating, _ = Store.initialise(settings, env={})
    _add(rotating, catalog, "before", ACCOUNT)
    other = Store.open(settings, env={})
    late = {"username": "late", "password": "added during the rotation"}
    real_replace = os.replace

    def add_then_replace_then_die(src: object, dst: object) -> None:
        _add(other, catalog, "late", late)
        real_replace(src, dst)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # the rotation dies before its final transaction

    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", add_then_replace_then_die)
        with pytest.raises(KeyboardInterrupt):
            rotate_master_key(rotating, settings)
    rotating.close()
    other.close()

    with Store.open(settings, env={}) as reopened:
        assert dict(reopened.read_credential("late")) == late
        reopened.rotate_master_key(settings, key_from_env=False)
    with Store.open(settings, env={}) as final:
        assert dict(final.read_credential("before")) == ACCOUNT
        assert dict(final.read_credential("late")) == late


@pytest.mark.sqlite_only  # each rotation makes its own key; a shared store's rotate to the key staged before (below)
def test_two_rotations_at_once_agree_on_one_key(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = Store.initialise(settings, env={})
    added = {}
    for i in range(4):
        values = {"username": f"user{i}", "password": f"pw-{i}-{os.urandom(6).hex()}"}
        _add(first, catalog, f"acct{i}", values)
        added[f"acct{i}"] = values
    second = Store.open(settings, env={})
    errors: list[BaseException] = []

    def rotate_second() -> None:
        try:
            second.rotate_master_key(settings, key_from_env=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=rotate_second)
    real_write_key_file = write_key_file  # what store.rotation calls, replaced there below

    def start_the_other_rotation_first(path: Path, key: object) -> None:
        if not thread.is_alive() and thread.ident is None:
            thread.start()
            time.sleep(0.3)  # the other rotation has begun (and waits if this one holds the write lock)
        real_write_key_file(path, key)  # type: ignore[arg-type]

    with monkeypatch.context() as mp:
        mp.setattr(rotation, "write_key_file", start_the_other_rotation_first)
        first.rotate_master_key(settings, key_from_env=False)
        thread.join(30)
    first.close()
    second.close()

    assert not errors, errors
    with Store.open(settings, env={}) as reopened:
        assert {n: dict(reopened.read_credential(n)) for n in added} == added


@pytest.mark.postgresql_only
def test_two_rotations_at_once_on_a_shared_store_agree_on_the_staged_key(settings: Settings, catalog: Catalog) -> None:
    first, _ = Store.initialise(settings, env={})
    added = {}
    for i in range(20):
        values = {"username": f"user{i}", "password": f"pw-{i}-{os.urandom(6).hex()}"}
        _add(first, catalog, f"acct{i}", values)
        added[f"acct{i}"] = values
    staged, _ = first.stage_master_key(settings)  # `credgate key new`, then both admins run `credgate key rotate`
    first.close()
    rotated: dict[str, str] = {}
    errors: list[BaseException] = []

    def rotate(name: str) -> None:
        try:
            with Store.open(settings, env={}) as store:
                rotated[name] = store.rotate_master_key(settings, key_from_env=False).key_id
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=rotate, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not errors, errors
    assert rotated == {"first": staged.key_id, "second": staged.key_id}
    assert settings.key_path.read_text().strip() == staged.to_text()
    with Store.open(settings, env={}) as reopened:
        assert {n: dict(reopened.read_credential(n)) for n in added} == added
        keys = [(r["key_id"], r["state"]) for r in reopened._db.execute("SELECT key_id, state FROM master_keys")]
        assert keys == [(staged.key_id, "current")]
