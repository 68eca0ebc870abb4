"""A master key staged ahead of its rotation (issue 10): `credgate key new`, CREDGATE_MASTER_KEY=OLD,NEW.

On both backends: the staged key is the one the rotation moves to, a store opens with either key of the
pair, a retired key is never rotated back to, and a malformed key in the list is refused clearly.
"""

from __future__ import annotations

import json

from conftest import ACCOUNT, CliRun
from raw_db import raw_db

from mcp_credgate.config import Settings
from mcp_credgate.crypto import MasterKey


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
