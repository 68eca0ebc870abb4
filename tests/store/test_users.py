"""The store's users, memberships and personal bindings, on both backends: a store made before people existed
gets them (and the built-in admin) at its next open; a user is a row, not a name."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlite_utils import Database as SqliteUtilsDatabase
from sqlite_utils.migrations import Migrations

from mcp_credgate.config import Settings
from mcp_credgate.errors import ConflictError, NotFoundError
from mcp_credgate.store import BUILT_IN_ADMIN, Store, postgres, sqlite
from mcp_credgate.store.schema import MIGRATIONS, SQLITE, Migration
from tests.support.raw_db import raw_db


def test_a_store_made_before_people_gets_the_built_in_admin_and_everything_else_unchanged(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = [m for m in MIGRATIONS if m.name < "0009"]
    old = Migrations("credgate")
    for migration in before:
        old(name=migration.name)(_applying(migration))
    with monkeypatch.context() as patch:
        patch.setattr(sqlite, "migrations", old)
        patch.setattr(postgres, "MIGRATIONS", tuple(before))
        made, _ = Store.initialise(settings, env={})
        made.close()
    with raw_db(settings) as db:  # what the store of before held: a group, its tool, an agent (old columns only)
        db.execute("INSERT INTO groups (name, description, created_at) VALUES ('ops', '', '2026-01-01')")
        db.execute("INSERT INTO group_tools (group_id, tool) SELECT id, 'echo' FROM groups WHERE name = 'ops'")
        db.execute(
            "INSERT INTO agents (name, group_id, token_hash, created_at) SELECT 'bot', id, 'h', '2026-01-01'"
            " FROM groups WHERE name = 'ops'"
        )
        db.commit()

    with Store.open(settings, env={}) as store:
        assert not store._db.pending_migrations()
        assert [u.name for u in store.iter_users()] == [BUILT_IN_ADMIN]
        assert store.user(BUILT_IN_ADMIN).admin
        binding = store.binding("ops", "echo")
        assert binding.allowed and not binding.personal
        assert store.personal_tools("ops") == frozenset()
        found = store.agent_by_token_hash("h")
        assert found is not None and found.user is None


def _applying(migration: Migration) -> Callable[[SqliteUtilsDatabase], None]:
    def apply(db: SqliteUtilsDatabase) -> None:
        for statement in migration.render(SQLITE):
            db.execute(statement)

    return apply


def test_users_and_members(store: Store) -> None:
    store.add_user("alice", "h-alice", email="alice@example.com")
    store.add_group("ops")

    assert store.add_members("ops", ["alice", "alice"]) == ["alice"]
    assert store.add_members("ops", ["alice"]) == []
    assert store.user("alice").groups == ("ops",)
    assert list(store.iter_members("ops")) == ["alice"]
    with pytest.raises(ConflictError, match="exists already"):
        store.add_user("alice", "h2")
    with pytest.raises(NotFoundError, match="no user named 'bob'"):
        store.add_members("ops", ["bob"])
    with pytest.raises(NotFoundError, match="not a member"):
        store.remove_members("ops", ["admin"])


def test_a_user_added_again_is_a_new_user_with_nothing_of_the_old_one(store: Store) -> None:
    store.add_user("alice", "h1")
    store.add_group("ops")
    store.add_members("ops", ["alice"])
    store.add_agent("ops", "alice-bot", "agent-hash", "alice")
    store.remove_user("alice")

    store.add_user("alice", "h2")

    assert store.user("alice").groups == ()
    assert store.agent("alice-bot").user is None and store.agent("alice-bot").revoked_at is not None
    assert store.agent_by_token_hash("agent-hash") is None
    assert store.user_by_secret_hash("h1") is None


def test_an_agent_of_a_user_who_left_the_group_is_found_no_more(store: Store) -> None:
    store.add_user("alice", "h1")
    store.add_group("ops")
    store.add_members("ops", ["alice"])
    store.add_agent("ops", "alice-bot", "agent-hash", "alice")
    assert store.agent_by_token_hash("agent-hash") is not None

    store.remove_members("ops", ["alice"])

    assert store.agent_by_token_hash("agent-hash") is None
    store.add_members("ops", ["alice"])
    found = store.agent_by_token_hash("agent-hash")
    assert found is not None and found.user == "alice"
