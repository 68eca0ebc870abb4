"""The gate's decision for each call, against a real store: unknown, bad arguments, warning, or ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_credgate.declarations import load_catalog
from mcp_credgate.gate import CredentialWarning, Gate, InvalidArguments, Ready, Unknown
from mcp_credgate.store import Store
from tests.support.gateway import (
    PUBLIC_URL,
    TOKEN_FIELDS,
    World,
    http_tool,
    make_canary,
    python_tool,
    rotate_master_key,
)
from tests.support.raw_db import raw_db

SEARCH_PROPS = (
    'required = ["query"]\n'
    'properties.query = { type = "string", minLength = 1 }\n'
    'properties.limit = { type = "integer", minimum = 1, maximum = 50 }\n'
)
TOOLS = {
    "search": http_tool(
        "search", "https://search.example.com/q", properties=SEARCH_PROPS, query='{ q = "{args.query}" }'
    ),
    "lookup": http_tool("lookup", "https://search.example.com/lookup"),
    "clock": python_tool("clock", "mcp_credgate.examples:utc_now"),
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World.create(tmp_path, TOOLS)
    w.allow("research", "search", "lookup", "clock")
    w.allow("ops", "clock")
    yield w
    w.close()


@pytest.fixture
def gate(world: World) -> Iterator[Gate]:
    """A gate on its own store connection, as the running gateway has."""
    store = Store.open(world.settings, env={})
    yield Gate(store, world.catalog, PUBLIC_URL)
    store.close()


def test_an_undeclared_tool_is_unknown(gate: Gate) -> None:
    assert gate.check("research", "no_such_tool", {}) == Unknown("no_such_tool")


def test_a_tool_of_another_group_is_unknown(gate: Gate) -> None:
    assert gate.check("ops", "search", {"query": "x"}) == Unknown("search")


def test_a_group_that_does_not_exist_sees_no_tool(gate: Gate) -> None:
    assert gate.check("nobody", "clock", {}) == Unknown("clock")
    assert gate.list_tools("nobody") == []


def test_a_denied_tool_becomes_unknown_on_the_next_call(world: World, gate: Gate) -> None:
    assert isinstance(gate.check("ops", "clock", {}), Ready)

    world.store.deny("ops", ["clock"])

    assert gate.check("ops", "clock", {}) == Unknown("clock")


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"query": 5}, "'query'"),
        ({"query": ""}, "'query'"),
        ({"query": "x", "limit": 0}, "'limit'"),
        ({"query": "x", "limit": "ten"}, "'limit'"),
        ({}, "'query'"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(gate: Gate, arguments: dict[str, object], named: str) -> None:
    decision = gate.check("research", "search", arguments)

    assert isinstance(decision, InvalidArguments)
    assert named in decision.message


def test_arguments_are_checked_before_the_credential_is_read(world: World, gate: Gate) -> None:
    world.add_credential("svc-main", "svc", {"token": make_canary("G")})
    world.bind("research", "search", "svc-main")
    with raw_db(world.settings) as db:  # the stored value no longer opens
        db.execute("UPDATE credential_values SET ciphertext = ?", (bytes(40),))

    assert isinstance(gate.check("research", "search", {"query": 7}), InvalidArguments)
    decision = gate.check("research", "search", {"query": "ok"})
    assert isinstance(decision, CredentialWarning)
    assert decision.warning == "credential_invalid"


def test_a_missing_binding_gives_the_setup_warning(gate: Gate) -> None:
    decision = gate.check("research", "search", {"query": "x"})

    assert isinstance(decision, CredentialWarning)
    assert decision.as_json() == {
        "warning": "missing_credential",
        "tool": "search",
        "group": "research",
        "credential_type": "svc",
        "missing_fields": ["token"],
        "setup_url": "http://127.0.0.1:8765/groups/research/tools/search/setup",
        "setup_command": "credgate cred add <name> --tool search && credgate bind research search <name>",
    }
    assert decision.outcome == "missing_credential"
    assert "setup" in decision.text() and decision.setup_url in decision.text()


def test_a_bound_credential_is_decrypted_at_call_time(world: World, gate: Gate) -> None:
    token = make_canary("G")
    world.add_credential("svc-main", "svc", {"token": token})
    world.bind("research", "search", "svc-main")

    decision = gate.check("research", "search", {"query": "x"})

    assert isinstance(decision, Ready)
    assert decision.credential_name == "svc-main"
    assert dict(decision.credential) == {"token": token}


def test_a_tool_without_credential_is_ready_with_an_empty_credential(gate: Gate) -> None:
    decision = gate.check("ops", "clock", {})

    assert isinstance(decision, Ready)
    assert decision.credential_name is None
    assert dict(decision.credential) == {}


def test_a_rebind_takes_effect_on_the_next_check(world: World, gate: Gate) -> None:
    first, second = make_canary("1"), make_canary("2")
    world.add_credential("one", "svc", {"token": first})
    world.add_credential("two", "svc", {"token": second})
    world.bind("research", "lookup", "one")
    before = gate.check("research", "lookup", {})

    world.bind("research", "lookup", "two")
    after = gate.check("research", "lookup", {})

    assert isinstance(before, Ready) and before.credential["token"] == first
    assert isinstance(after, Ready) and after.credential["token"] == second


def test_an_updated_value_takes_effect_on_the_next_check(world: World, gate: Gate) -> None:
    world.add_credential("one", "svc", {"token": make_canary("old")})
    world.bind("research", "lookup", "one")
    new = make_canary("new")

    world.store.update_credential("one", {"token": new}, frozenset({"token"}))

    decision = gate.check("research", "lookup", {})
    assert isinstance(decision, Ready) and decision.credential["token"] == new


def test_a_key_rotation_by_another_process_takes_effect_without_restart(world: World, gate: Gate) -> None:
    token = make_canary("K")
    world.add_credential("one", "svc", {"token": token})
    world.bind("research", "lookup", "one")
    assert isinstance(gate.check("research", "lookup", {}), Ready)

    rotate_master_key(world.store, world.settings)  # what `credgate key rotate` does

    decision = gate.check("research", "lookup", {})
    assert isinstance(decision, Ready), decision
    assert decision.credential["token"] == token


def test_an_incomplete_credential_gives_a_warning_naming_the_missing_field(world: World, tmp_path: Path) -> None:
    world.add_credential("svc-main", "svc", {"token": make_canary("I")})
    world.bind("research", "lookup", "svc-main")
    # the declaration later gains a required field the stored credential lacks
    grown = TOKEN_FIELDS.replace(" ]", ', { name = "account", kind = "text" } ]')
    (world.tools_dir / "lookup.toml").write_text(
        http_tool("lookup", "https://search.example.com/lookup", credential='type = "svc"\n' + grown)
    )
    (world.tools_dir / "search.toml").unlink()
    catalog = load_catalog(world.settings.tools_dirs)
    assert not catalog.problems
    gate = Gate(world.store, catalog, PUBLIC_URL)

    decision = gate.check("research", "lookup", {})

    assert isinstance(decision, CredentialWarning)
    assert decision.warning == "missing_credential"
    assert decision.missing_fields == ("account",)
    assert decision.as_json()["setup_command"] == "credgate cred update svc-main --from-json -"
    assert not [t for t in gate.list_tools("research") if t.tool.name == "lookup" and t.ready]


def test_a_credential_found_good_is_checked_again_against_a_changed_declaration(
    world: World, gate: Gate, tmp_path: Path
) -> None:
    world.add_credential("svc-main", "svc", {"token": make_canary("F")})
    world.bind("research", "lookup", "svc-main")
    assert isinstance(gate.check("research", "lookup", {}), Ready)  # found complete and well-formed
    # the declaration later asks a format the stored token does not have
    strict = TOKEN_FIELDS.replace('kind = "token"', 'kind = "token", pattern = "^sk-"')
    assert strict != TOKEN_FIELDS
    (world.tools_dir / "lookup.toml").write_text(
        http_tool("lookup", "https://search.example.com/lookup", credential='type = "svc"\n' + strict)
    )
    (world.tools_dir / "search.toml").unlink()
    catalog = load_catalog(world.settings.tools_dirs)
    assert not catalog.problems
    reloaded = Gate(gate.store, catalog, PUBLIC_URL)  # what a reload makes, over the same store and its cache

    decision = reloaded.check("research", "lookup", {})

    assert isinstance(decision, CredentialWarning)
    assert (decision.warning, decision.missing_fields) == ("credential_invalid", ("token",))
    assert isinstance(gate.check("research", "lookup", {}), Ready)  # the old declaration's verdict still holds


def test_the_tool_list_is_the_groups_own_with_readiness(world: World, gate: Gate) -> None:
    world.add_credential("svc-main", "svc", {"token": make_canary("L")})
    world.bind("research", "lookup", "svc-main")

    research = {t.tool.name: t.ready for t in gate.list_tools("research")}
    ops = {t.tool.name: t.ready for t in gate.list_tools("ops")}

    assert research == {"clock": True, "lookup": True, "search": False}
    assert ops == {"clock": True}
