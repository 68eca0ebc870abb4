"""People (contract §5): users, members and personal credentials. The CLI's commands and refusals, what the
gate answers a member, a non-member and an agent acting for nobody, and two users of one group calling through
a real `serve --http` process, each with their own credential."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from mcp_credgate.agents import create_agent
from mcp_credgate.people import create_user, user_secret_hash
from mcp_credgate.store import Store
from tests.support.cli import CliRun, assert_ok, assert_refused
from tests.support.gateway import (
    TOKEN_FIELDS,
    Upstream,
    World,
    assert_no_leak,
    assert_no_leak_at_rest,
    connect,
    http_tool,
    make_canary,
    result_text,
    store_env,
    teed_serve,
)
from tests.support.http_server import Received, bearer, connect_over_http, start_server
from tests.support.raw_db import raw_db
from tests.support.samples import WEATHER_KEY

ALICE_KEY, BOB_KEY, SHARED_KEY = "wk_alice0123456789", "wk_bob0123456789ab", "wk_shared0123456789"


def as_json(result: Any) -> Any:
    assert_ok(result)
    return json.loads(result.stdout)


@pytest.fixture
def cli(run_cli: CliRun) -> CliRun:
    """An initialised home; users alice and bob, members of group `team`, which allows weather as personal."""
    assert_ok(run_cli("init"))
    for name in ("alice", "bob", "carol"):
        assert_ok(run_cli("user", "add", name))
    assert_ok(run_cli("group", "add", "team"))
    assert_ok(run_cli("group", "member", "add", "team", "alice", "bob"))
    assert_ok(run_cli("group", "allow", "team", "weather", "--personal"))
    assert_ok(run_cli("group", "allow", "team", "echo", "forecast"))
    return run_cli


def add_key(cli: CliRun, name: str, key: str, owner: str | None = None, tool: str = "weather") -> None:
    owned = ["--owner", owner] if owner else []
    assert_ok(cli("cred", "add", name, "--tool", tool, "--set", f"api_key={key}", *owned))


# -- users -------------------------------------------------------------------------------------------------


def test_a_user_gets_a_sign_in_secret_once_and_only_its_hash_is_stored(cli: CliRun, settings: Any) -> None:
    shown = as_json(cli("user", "add", "dave", "--email", "dave@example.com", "--json"))

    secret = shown["secret"]
    assert secret.startswith("cgu_") and len(secret) > 40
    with Store.open(settings) as store:
        assert store.user_by_secret_hash(user_secret_hash(secret)) == ("dave", False, user_secret_hash(secret))
        assert store.user("dave").email == "dave@example.com"
    assert_no_leak_at_rest(settings, secret)
    assert secret not in cli("user", "show", "dave", "--json").stdout


def test_a_new_secret_replaces_the_old_one(cli: CliRun, settings: Any) -> None:
    old = as_json(cli("user", "add", "dave", "--json"))["secret"]

    new = as_json(cli("user", "secret", "dave", "--json"))["secret"]

    with Store.open(settings) as store:
        assert store.user_by_secret_hash(user_secret_hash(old)) is None
        assert store.user_by_secret_hash(user_secret_hash(new)) is not None


def test_user_add_refuses_a_taken_name_a_bad_name_and_a_bad_email(cli: CliRun) -> None:
    assert_refused(cli("user", "add", "alice"), "exists already")
    assert cli("user", "add", "no spaces").exit_code == 2
    assert cli("user", "add", "dave", "--email", "not an address").exit_code == 2


def test_every_store_has_the_built_in_admin_and_its_last_admin_cannot_be_removed(cli: CliRun) -> None:
    users = {u["name"]: u for u in as_json(cli("user", "list", "--json"))}

    assert users["admin"]["admin"] is True
    assert users["alice"]["groups"] == ["team"] and users["carol"]["groups"] == []
    assert_refused(cli("user", "rm", "admin"), "last admin")
    assert_ok(cli("user", "add", "root", "--admin"))
    assert_ok(cli("user", "rm", "admin"))
    assert_refused(cli("user", "rm", "root"), "last admin")


def test_removing_a_user_who_owns_credentials_needs_force_which_deletes_them_unbinds_and_revokes(
    cli: CliRun, settings: Any
) -> None:
    add_key(cli, "alice-wk", ALICE_KEY, owner="alice")
    assert_ok(cli("bind", "team", "weather", "alice-wk", "--user", "alice"))
    assert_ok(cli("agent", "add", "team", "alice-bot", "--user", "alice"))

    assert_refused(cli("user", "rm", "alice"), "owns 1 credential", "alice-wk", "--force")
    removed = as_json(cli("user", "rm", "alice", "--force", "--json"))

    assert removed["revoked_agents"] == ["alice-bot"]
    assert removed["unbound"] == [{"group": "team", "tool": "weather"}]
    assert removed["deleted_credentials"] == ["alice-wk"]
    assert as_json(cli("cred", "list", "--json")) == []
    assert as_json(cli("agent", "list", "--json"))[0]["revoked_at"] is not None
    assert_no_leak_at_rest(settings, ALICE_KEY)


def test_a_name_added_again_after_removal_inherits_nothing(cli: CliRun) -> None:
    add_key(cli, "alice-wk", ALICE_KEY, owner="alice")
    assert_ok(cli("bind", "team", "weather", "alice-wk", "--user", "alice"))
    assert_ok(cli("user", "rm", "alice", "--force"))

    assert_ok(cli("user", "add", "alice"))

    shown = as_json(cli("user", "show", "alice", "--json"))
    assert shown["groups"] == [] and shown["credentials"] == [] and shown["agents"] == []
    assert_refused(cli("bind", "team", "weather", "alice-wk", "--user", "alice"), "no credential named")


# -- memberships and scopes --------------------------------------------------------------------------------


def test_members_are_added_and_removed_and_unknown_names_are_refused(cli: CliRun) -> None:
    assert_refused(cli("group", "member", "add", "team", "nobody"), "no user named 'nobody'")
    assert_refused(cli("group", "member", "add", "nogroup", "alice"), "no agent group named 'nogroup'")
    assert_refused(cli("group", "member", "rm", "team", "carol"), "not a member")

    assert_ok(cli("group", "member", "rm", "team", "bob"))

    assert as_json(cli("group", "show", "team", "--json"))["members"] == ["alice"]


def test_a_personal_tool_takes_only_personal_bindings_and_a_shared_tool_only_shared_ones(cli: CliRun) -> None:
    add_key(cli, "alice-wk", ALICE_KEY, owner="alice")
    add_key(cli, "shared-wk", SHARED_KEY)

    assert_refused(cli("bind", "team", "weather", "shared-wk"), "personal in group 'team'", "--user")
    assert_refused(cli("bind", "team", "weather", "shared-wk", "--user", "alice"), "not alice's")
    assert_refused(cli("bind", "team", "forecast", "alice-wk", "--user", "alice"), "shared in group 'team'")
    assert_refused(cli("bind", "team", "forecast", "alice-wk"), "alice's own")
    assert_refused(cli("unbind", "team", "weather"), "personal in group 'team'")
    assert_ok(cli("bind", "team", "weather", "alice-wk", "--user", "alice"))
    assert_ok(cli("bind", "team", "forecast", "shared-wk"))


def test_a_personal_binding_takes_a_credential_of_its_own_user_who_is_a_member(cli: CliRun) -> None:
    add_key(cli, "alice-wk", ALICE_KEY, owner="alice")
    add_key(cli, "carol-wk", "wk_carol0123456789", owner="carol")

    assert_refused(cli("bind", "team", "weather", "alice-wk", "--user", "bob"), "not bob's")
    assert_refused(cli("bind", "team", "weather", "carol-wk", "--user", "carol"), "not a member of group 'team'")
    assert_refused(cli("bind", "team", "weather", "alice-wk", "--user", "nobody"), "no user named")
    assert_refused(cli("unbind", "team", "weather", "--user", "alice"), "no personal credential of 'alice'")


def test_making_a_tool_personal_with_a_shared_binding_needs_force_which_unbinds(cli: CliRun) -> None:
    add_key(cli, "shared-wk", SHARED_KEY)
    assert_ok(cli("bind", "team", "forecast", "shared-wk"))

    assert_refused(cli("group", "allow", "team", "forecast", "--personal"), "--force")
    assert as_json(cli("group", "show", "team", "--json"))["tools"][1]["credential"] == "shared-wk"
    changed = as_json(cli("group", "allow", "team", "forecast", "--personal", "--force", "--json"))

    assert changed["unbound"] == ["forecast"]
    tools = {t["tool"]: t for t in as_json(cli("group", "show", "team", "--json"))["tools"]}
    assert tools["forecast"]["scope"] == "personal"


def test_a_tool_that_needs_no_credential_cannot_be_personal(cli: CliRun) -> None:
    assert_refused(cli("group", "allow", "team", "echo", "--personal"), "needs no credential")


def test_an_agent_acts_only_for_a_member(cli: CliRun) -> None:
    assert_refused(cli("agent", "add", "team", "carol-bot", "--user", "carol"), "not a member")
    assert_refused(cli("agent", "add", "team", "x-bot", "--user", "nobody"), "no user named")

    added = as_json(cli("agent", "add", "team", "alice-bot", "--user", "alice", "--json"))

    assert added["user"] == "alice"
    assert as_json(cli("agent", "list", "--json"))[0]["user"] == "alice"


def test_serve_acts_only_for_a_member_and_only_over_stdio(cli: CliRun) -> None:
    assert_refused(cli("serve", "--group", "team", "--user", "carol"), "not a member")
    assert_refused(cli("serve", "--group", "team", "--user", "nobody"), "no user named")
    assert cli("serve", "--http", "--user", "alice").exit_code == 2


def test_group_show_gives_each_members_status_for_a_personal_tool(cli: CliRun) -> None:
    add_key(cli, "alice-wk", ALICE_KEY, owner="alice")
    assert_ok(cli("bind", "team", "weather", "alice-wk", "--user", "alice"))

    shown = as_json(cli("group", "show", "team", "--json"))
    text = cli("group", "show", "team").stdout

    weather = {t["tool"]: t for t in shown["tools"]}["weather"]
    assert weather["scope"] == "personal"
    assert weather["members"] == {"alice": "ready", "bob": "needs_credential"}
    assert {t["tool"]: t["scope"] for t in shown["tools"]}["echo"] == "shared"
    assert "alice  ready  credential alice-wk" in text and "bob  needs credential" in text


def test_cred_list_shows_owners_and_filters_by_owner(cli: CliRun) -> None:
    add_key(cli, "alice-wk", ALICE_KEY, owner="alice")
    add_key(cli, "shared-wk", SHARED_KEY)

    assert [(c["name"], c["owner"]) for c in as_json(cli("cred", "list", "--json"))] == [
        ("alice-wk", "alice"),
        ("shared-wk", None),
    ]
    assert [c["name"] for c in as_json(cli("cred", "list", "--owner", "alice", "--json"))] == ["alice-wk"]
    assert_refused(cli("cred", "list", "--owner", "nobody"), "no user named")
    assert_refused(cli("cred", "add", "x", "--tool", "weather", "--set", f"api_key={WEATHER_KEY}", "--owner", "zed"))


def test_cred_import_owner_makes_every_credential_of_the_file_that_users(cli: CliRun, tmp_path: Path) -> None:
    lines = tmp_path / "keys.jsonl"
    lines.write_text('{"name": "a1", "api_key": "wk_aaaaaaaaaa"}\n{"name": "a2", "api_key": "wk_bbbbbbbbbb"}\n')

    assert_refused(cli("cred", "import", str(lines), "--tool", "weather", "--owner", "nobody"), "no user named")
    assert_ok(cli("cred", "import", str(lines), "--tool", "weather", "--owner", "alice"))

    assert [c["name"] for c in as_json(cli("cred", "list", "--owner", "alice", "--json"))] == ["a1", "a2"]


def test_doctor_reports_a_binding_of_a_user_who_left_and_warns_of_members_without_their_credential(
    cli: CliRun,
) -> None:
    add_key(cli, "alice-wk", ALICE_KEY, owner="alice")
    assert_ok(cli("bind", "team", "weather", "alice-wk", "--user", "alice"))
    healthy = as_json(cli("doctor", "--json"))
    assert healthy["problems"] == []
    assert any("member bob has no usable personal credential for 'weather'" in w for w in healthy["warnings"])

    assert_ok(cli("group", "member", "rm", "team", "alice"))
    found = cli("doctor", "--json")

    assert found.exit_code == 1
    problems = json.loads(found.stdout)["problems"]
    assert any("alice's personal credential alice-wk" in p and "no longer a member" in p for p in problems)


# -- calls, in process ---------------------------------------------------------------------------------------

KEYS = {"alice": make_canary("alice"), "bob": make_canary("bob")}


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream) -> Iterator[World]:
    """Group team (alice and bob members, carol not) allows `whoami` as personal; alice and bob each bound their
    own token; `shared_echo` is shared with a group token."""
    svc = 'type = "svc"\n' + TOKEN_FIELDS
    tools = {
        "whoami": http_tool("whoami", upstream.url("/who"), credential=svc),
        "shared_echo": http_tool("shared_echo", upstream.url("/shared"), credential=svc),
    }
    w = World.create(tmp_path, tools)
    for name in ("alice", "bob", "carol"):
        create_user(w.store, name)
    w.store.add_group("team")
    w.store.add_members("team", ["alice", "bob"])
    admin_allow(w, "whoami", personal=True)
    admin_allow(w, "shared_echo")
    for name, key in KEYS.items():
        w.store.add_credential(f"{name}-tok", "svc", {"token": key}, frozenset({"token"}), owner=name)
        w.store.bind_personal("team", "whoami", name, f"{name}-tok")
    w.add_credential("team-tok", "svc", {"token": make_canary("team")})
    w.bind("team", "shared_echo", "team-tok")
    yield w
    w.close()


def admin_allow(world: World, tool: str, *, personal: bool = False) -> None:
    from mcp_credgate import admin

    admin.allow(world.store, world.catalog, "team", [tool], personal=personal)


@pytest.mark.anyio
async def test_each_member_calling_a_personal_tool_sends_their_own_token(world: World, upstream: Upstream) -> None:
    async with world.gateway() as gw:
        for name in ("alice", "bob"):
            upstream.clear()
            async with connect(gw, "team", user=name) as client:
                result = await client.call_tool("whoami", {})
            assert not result.is_error, result_text(result)
            [seen] = upstream.seen()
            other = KEYS["bob" if name == "alice" else "alice"]
            assert seen.header("Authorization") == f"Bearer {KEYS[name]}"
            assert other not in seen.everything()
            assert_no_leak(result.model_dump_json(), *KEYS.values())

    rows = world.audit()
    assert {(r.user, r.credential) for r in rows} == {("alice", "alice-tok"), ("bob", "bob-tok")}


@pytest.mark.anyio
async def test_an_agent_acting_for_nobody_gets_user_required_and_a_shared_tool_still_works(
    world: World, upstream: Upstream
) -> None:
    async with world.gateway() as gw, connect(gw, "team") as client:
        personal = await client.call_tool("whoami", {})
        shared = await client.call_tool("shared_echo", {})

    warning = personal.structured_content or {}
    assert personal.is_error and warning["warning"] == "user_required"
    assert warning["setup_command"] == "credgate agent add team <agent> --user <user>"
    assert not shared.is_error
    assert [s.path for s in upstream.seen()] == ["/shared"]


@pytest.mark.anyio
async def test_a_member_without_a_credential_gets_a_personal_warning_with_their_own_setup_page(
    world: World, upstream: Upstream
) -> None:
    world.store.unbind_personal("team", "whoami", "bob")

    async with world.gateway() as gw, connect(gw, "team", user="bob") as client:
        listing = await client.list_tools()
        result = await client.call_tool("whoami", {})

    warning = result.structured_content or {}
    assert warning["warning"] == "missing_credential"
    assert warning["scope"] == "personal" and warning["user"] == "bob"
    assert warning["setup_url"].endswith("/users/bob/groups/team/tools/whoami/setup")
    assert warning["setup_command"] == (
        "credgate cred add <name> --tool whoami --owner bob && credgate bind team whoami <name> --user bob"
    )
    assert "Not set up yet" in ({t.name: t for t in listing.tools}["whoami"].description or "")
    assert upstream.seen() == []


@pytest.mark.anyio
async def test_a_user_who_is_not_a_member_is_refused_and_a_removed_member_at_the_next_call(
    world: World, upstream: Upstream
) -> None:
    async with world.gateway() as gw:
        async with connect(gw, "team", user="carol") as client:
            carol = await client.call_tool("shared_echo", {})
        async with connect(gw, "team", user="alice") as client:
            first = await client.call_tool("whoami", {})
            world.store.remove_members("team", ["alice"])
            second = await client.call_tool("whoami", {})

    assert carol.is_error and "not a member of agent group team" in result_text(carol)
    assert not first.is_error
    assert second.is_error and "not a member" in result_text(second)
    assert [s.path for s in upstream.seen()] == ["/who"]


# -- through a real `serve --http` -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_two_users_of_one_group_over_http_each_reach_the_api_with_their_own_token(
    world: World, upstream: Upstream, tmp_path: Path
) -> None:
    tokens = {name: create_agent(world.store, "team", f"{name}-bot", user=name) for name in KEYS}
    server = start_server(world, tmp_path / "logs")
    received = Received()
    try:
        with anyio.fail_after(30):
            for name in ("alice", "bob", "alice"):
                upstream.clear()
                async with connect_over_http(server, tokens[name], "streamable", received) as client:
                    result = await client.call_tool("whoami", {})
                assert not result.is_error, result_text(result)
                [seen] = upstream.seen()
                assert seen.header("Authorization") == f"Bearer {KEYS[name]}"
            world.store.remove_members("team", ["bob"])
            async with httpx2.AsyncClient() as http:
                refused = await http.post(server.mcp_url, headers=bearer(tokens["bob"]), json={})
        assert refused.status_code == 401
    finally:
        server.stop()
    assert_no_leak(received.text() + server.output(), *KEYS.values())
    with raw_db(world.settings) as db:
        rows = db.execute("SELECT user_name, credential FROM audit ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [("alice", "alice-tok"), ("bob", "bob-tok"), ("alice", "alice-tok")]


@pytest.mark.anyio
async def test_two_stdio_processes_acting_for_two_members_each_send_their_own_token(
    world: World, upstream: Upstream, tmp_path: Path
) -> None:
    received = ""
    for name in ("alice", "bob"):
        stdout_copy = tmp_path / f"stdout-{name}.bin"
        params = teed_serve(world, stdout_copy, store_env(world.settings), "--group", "team", "--user", name)
        upstream.clear()
        with (tmp_path / f"stderr-{name}.txt").open("w") as errlog, anyio.fail_after(30):
            async with Client(stdio_client(params, errlog=errlog)) as client:
                result = await client.call_tool("whoami", {})
        assert not result.is_error, result_text(result)
        [seen] = upstream.seen()
        assert seen.header("Authorization") == f"Bearer {KEYS[name]}"
        received += stdout_copy.read_bytes().decode(errors="replace")
        received += (tmp_path / f"stderr-{name}.txt").read_text()
    assert_no_leak(received, *KEYS.values())
