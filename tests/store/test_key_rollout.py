"""A master key staged ahead of its rotation (issue 10): `credgate key new`, CREDGATE_MASTER_KEY=OLD,NEW.

On both backends: the staged key is the one the rotation moves to, a store opens with either key of the
pair, a retired key is never rotated back to, and a malformed key in the list is refused clearly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcp_credgate.config import Settings
from mcp_credgate.crypto import MasterKey, read_key_file
from mcp_credgate.store import Store
from mcp_credgate.store import sqlite as sqlite_backend
from tests.support.cli import CliRun
from tests.support.raw_db import raw_db
from tests.support.samples import ACCOUNT


def ok(result: object) -> str:
    assert getattr(result, "exit_code", 1) == 0, getattr(result, "output", result)
    return str(getattr(result, "stdout", ""))


def add_account(run_cli: CliRun, name: str, env: dict[str, str] | None = None) -> None:
    ok(run_cli("cred", "add", name, "--type", "account", "--from-json", "-", input=json.dumps(ACCOUNT), env=env))


def key_rows(settings: Settings) -> list[tuple[str, str]]:
    with raw_db(settings) as db:
        return sorted((r[0], r[1]) for r in db.execute("SELECT key_id, state FROM master_keys"))


def test_key_new_stages_the_key_that_key_rotate_then_moves_to(run_cli: CliRun, settings: Settings) -> None:
    ok(run_cli("init"))
    add_account(run_cli, "before")
    old = MasterKey.from_text(settings.key_path.read_text(), "test")

    made = json.loads(ok(run_cli("key", "new", "--json")))
    again = json.loads(ok(run_cli("key", "new", "--json")))  # a second `key new` keeps the staged key
    assert made["created"] is True and again["created"] is False and again["key_id"] == made["key_id"]
    assert key_rows(settings) == [(old.key_id, "current")]  # the store does not change until the rotation
    add_account(run_cli, "meanwhile")  # written under the current key meanwhile

    out = json.loads(ok(run_cli("key", "rotate", "--json")))

    assert out["key_id"] == made["key_id"]
    assert key_rows(settings) == [(made["key_id"], "current")]
    assert MasterKey.from_text(settings.key_path.read_text(), "test").key_id == made["key_id"]
    assert not settings.pending_key_path.exists()
    for name in ("before", "meanwhile"):
        assert ACCOUNT["username"] in ok(run_cli("cred", "show", name))


def test_a_store_opens_with_either_key_of_old_new_and_rotates_to_the_new_one(
    run_cli: CliRun, settings: Settings
) -> None:
    ok(run_cli("init"))
    add_account(run_cli, "acct")
    old = settings.key_path.read_text().strip()
    new = MasterKey.generate().to_text()
    settings.key_path.unlink()  # the keys come from the environment alone now, as on a replica

    for ring in (f"{old},{new}", f"{new},{old}"):  # either order opens it: the store knows the old one
        ok(run_cli("cred", "show", "acct", env={"CREDGATE_MASTER_KEY": ring}))
    out = json.loads(ok(run_cli("key", "rotate", "--json", env={"CREDGATE_MASTER_KEY": f"{old},{new}"})))

    assert out["key_id"] == MasterKey.from_text(new, "test").key_id
    assert out["key_file"] is None  # nothing to copy: every replica already holds the new key
    assert key_rows(settings) == [(out["key_id"], "current")]
    ok(run_cli("cred", "show", "acct", env={"CREDGATE_MASTER_KEY": new}))
    ok(run_cli("cred", "show", "acct", env={"CREDGATE_MASTER_KEY": f"{old},{new}"}))
    refused = run_cli("cred", "show", "acct", env={"CREDGATE_MASTER_KEY": old})
    assert refused.exit_code == 1 and "master key does not match" in refused.stderr

    # Rotating again with the same pair never goes back to the retired old key.
    again = run_cli("key", "rotate", "--json", env={"CREDGATE_MASTER_KEY": f"{old},{new}"})
    if settings.database_url:  # a shared store: a new key must be handed out first
        assert again.exit_code == 1 and "every replica" in again.stderr
        assert key_rows(settings) == [(out["key_id"], "current")]
    else:  # SQLite: a fresh key, left in master.key.new for the variable
        fresh = json.loads(ok(again))["key_id"]
        assert fresh not in (out["key_id"], MasterKey.from_text(old, "test").key_id)
        assert key_rows(settings) == [(fresh, "current")]


def test_a_malformed_key_in_the_list_is_refused_without_echoing_it(run_cli: CliRun, settings: Settings) -> None:
    ok(run_cli("init"))
    old = settings.key_path.read_text().strip()

    result = run_cli("cred", "list", env={"CREDGATE_MASTER_KEY": f"{old},not-a-key-{old[:10]}"})

    assert result.exit_code == 1
    assert "malformed" in result.stderr and "CREDGATE_MASTER_KEY" in result.stderr
    assert old not in result.output and old[:10] not in result.output


@pytest.mark.sqlite_only  # the crash point is SQLite's own key generation; the code after it is shared
def test_a_key_staged_after_a_rotation_died_never_replaces_the_key_the_store_needs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = Store.initialise(settings, env={})
    store.add_credential("c", "svc", {"token": "secret-value"}, frozenset({"token"}))
    calls = {"n": 0}
    real_fsync_dir = sqlite_backend.fsync_dir

    def die_after_the_rename(path: Path) -> None:
        real_fsync_dir(path)
        calls["n"] += 1
        if calls["n"] == 2:  # right after master.key.new (the rotation's key) was renamed over master.key
            raise KeyboardInterrupt

    monkeypatch.setattr(sqlite_backend, "fsync_dir", die_after_the_rename)
    with pytest.raises(KeyboardInterrupt):
        store.rotate_master_key(settings, key_from_env=False)
    monkeypatch.undo()
    store.close()

    with Store.open(settings, env={}) as s:  # `credgate key new`: a key for a later rotation
        staged, made = s.stage_master_key(settings)
        assert made
    with Store.open(settings, env={}) as s:  # `credgate key rotate` finishes the rotation that died
        finished = s.rotate_master_key(settings, key_from_env=False)
    assert finished.key_id != staged.key_id

    with Store.open(settings, env={}) as s:
        assert s.read_credential("c")["token"] == "secret-value"
    pending = read_key_file(settings.pending_key_path)
    assert pending is not None and pending.key_id == staged.key_id  # still staged for next time


def test_key_new_replaces_a_staged_file_left_half_written(run_cli: CliRun, settings: Settings) -> None:
    ok(run_cli("init"))
    settings.pending_key_path.write_text("half-writ")  # a `key new` that died while writing

    made = json.loads(ok(run_cli("key", "new", "--json")))

    assert made["created"] is True
    pending = read_key_file(settings.pending_key_path)
    assert pending is not None and pending.key_id == made["key_id"]
