"""The MCP server as an agent sees it: per-group tools, warnings, unknown tools, audit, and no leaks.

The SDK's in-memory `Client` talks to the gateway's low-level `Server`; tools call a real local upstream.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from mcp_credgate.server import NOT_READY_NOTE
from tests.support.gateway import (
    Transcript,
    Upstream,
    World,
    assert_no_leak,
    assert_no_leak_at_rest,
    closed_port,
    connect,
    http_tool,
    make_canary,
    python_tool,
    result_text,
    rotate_master_key,
)
from tests.support.oauth_provider import running_oauth_provider
from tests.support.oauth_world import GROUP as OAUTH_GROUP
from tests.support.oauth_world import add_acme, oauth_world

pytestmark = pytest.mark.anyio

TOKEN_A = make_canary("GA", rich=True)
TOKEN_B = make_canary("GB", rich=True)
TOKEN_C = make_canary("GC")
ALL_TOKENS = (TOKEN_A, TOKEN_B, TOKEN_C)
N_PROP = 'required = ["n"]\nproperties.n = { type = "integer", minimum = 0 }'


def declarations(up: Upstream) -> dict[str, str]:
    return {
        "whoami": http_tool("whoami", up.url("/echo"), query='{ n = "{args.n}" }', properties=N_PROP),
        "fail500": http_tool("fail500", up.url("/status/500")),
        "refused": http_tool("refused", f"http://127.0.0.1:{closed_port()}/"),
        "crash": python_tool(
            "crash",
            "tests.support.sample_handlers:raise_with_secret",
            credential='type = "svc"\nfields = [ { name = "token", kind = "token" } ]',
        ),
        "leak": python_tool(
            "leak",
            "tests.support.sample_handlers:echo_token",
            credential='type = "svc"\nfields = [ { name = "token", kind = "token" } ]',
        ),
        "clock": python_tool("clock", "mcp_credgate.examples:utc_now"),
        "unbound": http_tool(
            "unbound",
            up.url("/echo"),
            credential='type = "other"\nfields = [ { name = "api_key", kind = "api_key" } ]',
            headers='{ X-Api-Key = "{cred.api_key}" }',
        ),
    }


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream) -> Iterator[World]:
    """Group alpha (credential a) and group beta (credential b) share the credentialed tools."""
    w = World.create(tmp_path, declarations(upstream))
    w.add_credential("cred-a", "svc", {"token": TOKEN_A})
    w.add_credential("cred-b", "svc", {"token": TOKEN_B})
    w.add_credential("cred-c", "svc", {"token": TOKEN_C})
    w.allow("alpha", "whoami", "fail500", "refused", "crash", "leak", "clock", "unbound")
    w.allow("beta", "whoami", "leak")
    for tool in ("whoami", "fail500", "refused", "crash", "leak"):
        w.bind("alpha", tool, "cred-a")
    w.bind("beta", "whoami", "cred-b")
    w.bind("beta", "leak", "cred-b")
    yield w
    w.close()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_list_shows_the_groups_tools_as_declared(world: World, mode: str) -> None:
    async with world.gateway() as gw:
        async with connect(gw, "alpha", mode=mode) as client:
            alpha = {t.name: t for t in (await client.list_tools()).tools}
        async with connect(gw, "beta", mode=mode) as client:
            beta = {t.name: t for t in (await client.list_tools()).tools}

    assert sorted(alpha) == ["clock", "crash", "fail500", "leak", "refused", "unbound", "whoami"]
    assert sorted(beta) == ["leak", "whoami"]
    declared = world.catalog.tools["whoami"].decl
    assert alpha["whoami"].description == declared.description
    assert alpha["whoami"].input_schema == declared.input_schema
    assert alpha["unbound"].description == "Test tool unbound." + NOT_READY_NOTE
    assert alpha["clock"].description == "Test tool clock."


async def test_a_group_without_tools_lists_nothing(world: World) -> None:
    world.store.add_group("empty")
    async with world.gateway() as gw, connect(gw, "empty") as client:
        listing = await client.list_tools()

    assert listing.tools == []


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_tool_of_another_group_gets_the_same_error_as_an_undeclared_tool(
    world: World, upstream: Upstream, mode: str
) -> None:
    transcript = Transcript()
    async with world.gateway() as gw, connect(gw, "beta", mode=mode) as client:
        other_group = await transcript.call_refused(client, "crash", {})
        undeclared = await transcript.call_refused(client, "no_such_tool", {})

    assert type(other_group) is type(undeclared) is MCPError
    assert other_group.code == undeclared.code
    assert other_group.message == "Unknown tool: crash"
    assert undeclared.message == "Unknown tool: no_such_tool"
    assert other_group.data == undeclared.data
    assert upstream.seen() == []
    assert_no_leak(transcript.text(), *ALL_TOKENS)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_missing_binding_returns_the_structured_warning_and_sends_nothing(
    world: World, upstream: Upstream, mode: str
) -> None:
    async with world.gateway() as gw, connect(gw, "alpha", mode=mode) as client:
        result = await client.call_tool("unbound", {})

    assert result.is_error is True
    assert result.structured_content == {
        "warning": "missing_credential",
        "tool": "unbound",
        "group": "alpha",
        "credential_type": "other",
        "missing_fields": ["api_key"],
        "setup_url": "http://127.0.0.1:8765/groups/alpha/tools/unbound/setup",
        "setup_command": "credgate cred add <name> --tool unbound && credgate bind alpha unbound <name>",
    }
    text = result_text(result)
    assert "type other" in text
    assert "credgate cred add <name> --tool unbound" in text
    assert "http://127.0.0.1:8765/groups/alpha/tools/unbound/setup" in text
    assert upstream.seen() == []


async def test_bad_arguments_name_the_argument_and_reach_no_upstream(world: World, upstream: Upstream) -> None:
    async with world.gateway() as gw, connect(gw, "alpha") as client:
        wrong = await client.call_tool("whoami", {"n": -1})
        missing = await client.call_tool("whoami", {})

    assert wrong.is_error and "'n'" in result_text(wrong)
    assert missing.is_error and "'n'" in result_text(missing)
    assert upstream.seen() == []


async def test_two_groups_each_send_only_their_own_credential_over_200_interleaved_calls(
    world: World, upstream: Upstream
) -> None:
    expected = {"alpha": TOKEN_A, "beta": TOKEN_B}
    results: dict[int, tuple[str, str]] = {}
    async with world.gateway() as gw, connect(gw, "alpha") as alpha, connect(gw, "beta") as beta:
        clients = {"alpha": alpha, "beta": beta}

        async def call(n: int, group: str) -> None:
            result = await clients[group].call_tool("whoami", {"n": n})
            assert not result.is_error, result
            results[n] = (group, result.model_dump_json())

        with anyio.fail_after(60):
            for n in range(0, 100, 2):  # strictly alternating, one at a time
                await call(n, "alpha")
                await call(n + 1, "beta")
            async with anyio.create_task_group() as tg:  # then alternating, concurrently
                for n in range(100, 200):
                    tg.start_soon(call, n, "alpha" if n % 2 == 0 else "beta")

    seen = upstream.seen()
    assert len(seen) == 200
    for request in seen:
        n = int(request.query["n"])
        group = "alpha" if n % 2 == 0 else "beta"
        assert request.header("Authorization") == f"Bearer {expected[group]}", n
        assert results[n][0] == group
    for _, dumped in results.values():
        assert json.loads(dumped)["structured_content"]["headers"]["authorization"] == "Bearer [redacted:token]"
        assert_no_leak(dumped, *ALL_TOKENS)


async def test_a_rebind_takes_effect_on_the_next_call_without_restart(world: World, upstream: Upstream) -> None:
    async with world.gateway() as gw, connect(gw, "alpha") as client:
        await client.call_tool("whoami", {"n": 1})
        world.bind("alpha", "whoami", "cred-c")
        await client.call_tool("whoami", {"n": 2})
        world.store.unbind("alpha", "whoami")
        warned = await client.call_tool("whoami", {"n": 3})

    assert [s.header("Authorization") for s in upstream.seen()] == [f"Bearer {TOKEN_A}", f"Bearer {TOKEN_C}"]
    assert warned.structured_content is not None
    assert warned.structured_content["warning"] == "missing_credential"


async def test_a_key_rotation_takes_effect_on_the_next_call_without_restart(world: World, upstream: Upstream) -> None:
    async with world.gateway() as gw, connect(gw, "alpha") as client:
        before = await client.call_tool("whoami", {"n": 1})
        rotate_master_key(world.store, world.settings)
        after = await client.call_tool("whoami", {"n": 2})
        world.add_credential("cred-new", "svc", {"token": TOKEN_C})  # written under the new key
        world.bind("alpha", "whoami", "cred-new")
        newest = await client.call_tool("whoami", {"n": 3})

    assert not before.is_error
    assert not after.is_error, result_text(after)
    assert not newest.is_error, result_text(newest)
    assert [s.header("Authorization") for s in upstream.seen()] == [
        f"Bearer {TOKEN_A}",
        f"Bearer {TOKEN_A}",
        f"Bearer {TOKEN_C}",
    ]


async def test_every_outcome_leaves_an_audit_row_with_the_credential_name_only(world: World) -> None:
    async with world.gateway() as gw, connect(gw, "alpha", agent="agent-7") as client:
        await client.call_tool("whoami", {"n": 1})  # ok
        await client.call_tool("fail500", {})  # error (upstream status)
        await client.call_tool("crash", {})  # error (handler exception, with a ref)
        await client.call_tool("unbound", {})  # missing_credential
        await client.call_tool("whoami", {"n": "x"})  # invalid_arguments
        with pytest.raises(MCPError):
            await client.call_tool("no_such_tool", {})  # denied
    # aclose() has flushed the queue: every row is there now

    rows = world.audit()
    got = sorted((r.tool, r.outcome, r.credential) for r in rows)
    assert got == [
        ("crash", "error", "cred-a"),
        ("fail500", "error", "cred-a"),
        ("no_such_tool", "denied", None),
        ("unbound", "missing_credential", None),
        ("whoami", "invalid_arguments", None),
        ("whoami", "ok", "cred-a"),
    ]
    assert {r.group for r in rows} == {"alpha"}
    assert {r.agent for r in rows} == {"agent-7"}
    assert all(r.duration_ms >= 0 and r.ts for r in rows)
    assert next(r for r in rows if r.tool == "crash").ref is not None
    assert_no_leak(repr(rows), *ALL_TOKENS)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_no_byte_the_agent_receives_or_the_server_logs_holds_a_secret(
    world: World, upstream: Upstream, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)
    transcript = Transcript()
    async with world.gateway() as gw:
        async with connect(gw, "alpha", mode=mode) as alpha:
            await transcript.list_tools(alpha)
            for n in range(3):
                await transcript.call(alpha, "whoami", {"n": n})
            for tool in ("fail500", "refused", "crash", "leak", "unbound", "clock"):
                await transcript.call(alpha, tool, {})
            await transcript.call(alpha, "whoami", {"n": "bad"})
            await transcript.call_refused(alpha, "nope", {})
        async with connect(gw, "beta", mode=mode) as beta:
            await transcript.list_tools(beta)
            await transcript.call(beta, "whoami", {"n": 9})
            await transcript.call(beta, "leak", {})
            await transcript.call_refused(beta, "crash", {})

    received = transcript.text()
    assert "Bearer [redacted:token]" in received  # the scan would see a leak: the echo did come back
    assert "the token is [redacted:token]" in received
    assert_no_leak(received, *ALL_TOKENS)
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "ref:" in logged
    assert_no_leak(logged, *ALL_TOKENS)
    assert len(upstream.seen()) == 5
    assert_no_leak_at_rest(world.settings, *ALL_TOKENS)


# -- an OAuth2 refresh the provider refuses -----------------------------------------------------------------
# The provider's own words (its `error` code, its `error_description`) may repeat what it was sent.

CLIENT_SECRET = make_canary("CS")


@pytest.mark.parametrize("echo", ["refresh_token", "client_secret", "description"])
async def test_a_refused_refresh_reaches_the_agent_and_the_log_without_the_refresh_token_or_the_client_secret(
    tmp_path: Path, echo: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with running_oauth_provider(client_secret=CLIENT_SECRET) as provider, oauth_world(tmp_path, provider) as world:
        values = add_acme(world, provider, expires_in=-60)
        refresh_token = values["refresh_token"]
        description = f"refresh token {refresh_token} is not for client secret {CLIENT_SECRET}"
        provider.refuse_with = {
            "refresh_token": {"error": refresh_token, "error_description": description},
            "client_secret": {"error": CLIENT_SECRET, "error_description": description},
            "description": {"error": "invalid_client", "error_description": description},
        }[echo]
        async with world.gateway() as gw, connect(gw, OAUTH_GROUP) as client:
            result = await client.call_tool("whoami", {})

    assert provider.refresh_requests == 1
    assert result.is_error
    text = result_text(result)
    assert "could not be refreshed" in text and "(ref: " in text
    if echo == "description":
        assert "invalid_client" in text  # a provider's code that repeats nothing secret still helps
    assert_no_leak(result.model_dump_json(), refresh_token, CLIENT_SECRET, values["token"])
    assert "refused by the token endpoint" in caplog.text
    assert_no_leak(caplog.text, refresh_token, CLIENT_SECRET, values["token"])


async def test_a_store_that_cannot_be_read_fails_the_call_closed_with_a_ref_and_no_path(world: World) -> None:
    if world.store._db.shared:
        pytest.skip("a PostgreSQL connection that closed is opened again at the next statement (recovery)")
    async with world.gateway() as gw:
        gw.store.close()  # the gateway's store can no longer be read at all
        async with connect(gw, "beta") as client:
            result = await client.call_tool("whoami", {"n": 1})

    text = result_text(result)
    assert result.is_error and "was not called: the gateway cannot reach its store just now" in text
    assert re.search(r"\(ref: [\w-]+\)", text) and str(world.settings.home) not in text and "Traceback" not in text
