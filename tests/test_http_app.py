"""`credgate serve --http` as a real process on a loopback port, driven by the MCP SDK's own HTTP clients (issue 4).

Two agent groups, `alpha` and `beta`, share the tool `whoami`, each with its own credential (a canary); the
upstream is a local recording HTTP server, so every request that left the gateway can be checked for the
credential it carried. Every byte the clients receive passes through `TeeTransport`, and is scanned for the
canaries together with the server's stderr.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from click.testing import CliRunner, Result
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mcp_credgate.agents import create_agent
from mcp_credgate.cli import cli
from tests.support.gateway import (
    TOKEN_FIELDS,
    Seen,
    Upstream,
    World,
    assert_no_leak,
    assert_no_leak_at_rest,
    credgate_env,
    http_tool,
    make_canary,
    per_backend,
    result_text,
    running_upstream,
)
from tests.support.http_server import (
    JSON_HEADERS,
    Received,
    Server,
    bearer,
    connect_over_http,
    free_port,
    modern_call,
    start_server,
)

pytestmark = pytest.mark.anyio

ALPHA_SECRET = make_canary("HA", rich=True)
BETA_SECRET = make_canary("HB")
CANARIES = (ALPHA_SECRET, BETA_SECRET)
SECRET_OF = {"alpha": ALPHA_SECRET, "beta": BETA_SECRET}
TOOLS_OF = {"alpha": ["forms", "only_alpha", "whoami"], "beta": ["forms", "only_beta", "slow", "whoami"]}
LEGACY = "2025-06-18"
HANDSHAKE = "2025-11-25"  # the first protocol whose streams are primed for resumption
CROWD = 50  # concurrent agents, half in each group
CALLS_EACH = 20


@dataclass
class Setup:
    """The module's installation, upstream and server, plus the tokens of its agents."""

    world: World
    upstream: Upstream
    server: Server
    tokens: dict[str, str]  # agent → token
    group_of: dict[str, str]  # agent → group

    def cli(self, *args: str) -> Result:
        home, tools = str(self.world.settings.home), str(self.world.tools_dir)
        store = {"CREDGATE_DATABASE_URL": self.world.settings.database_url}  # this setup's, not the test's
        return CliRunner().invoke(cli, ["--home", home, "--tools-dir", tools, *args], env=store, catch_exceptions=False)

    def add_agent(self, group: str, name: str) -> str:
        result = self.cli("agent", "add", group, name, "--json")
        assert result.exit_code == 0, result.output
        token: str = json.loads(result.stdout)["token"]
        self.tokens[name], self.group_of[name] = token, group
        return token

    def revoke(self, name: str) -> None:
        result = self.cli("agent", "revoke", name)
        assert result.exit_code == 0, result.output

    def audit(self) -> list[dict[str, Any]]:
        result = self.cli("audit", "--json", "--limit", "100000")
        assert result.exit_code == 0, result.output
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def assert_clean(self, received: Received) -> None:
        """No credential in what the clients received or the server printed; no agent token in the log."""
        text, output = received.text(), self.server.output()
        assert_no_leak(text, *CANARIES)
        assert_no_leak(output, *CANARIES)
        assert_no_leak_at_rest(self.world.settings, *CANARIES)
        assert "Traceback" not in output
        for token in self.tokens.values():
            assert token not in output
            assert token[4:] not in text
        for seen in self.upstream.seen():
            assert not any(token in seen.everything() for token in self.tokens.values())


def make_world(root: Path, upstream: Upstream, database_url: str | None = None) -> World:
    svc = 'type = "svc"\n' + TOKEN_FIELDS
    who = 'required = ["who"]\nproperties.who = { type = "string" }'
    tools = {
        "whoami": http_tool(
            "whoami", upstream.url("/echo"), credential=svc, query='{ who = "{args.who}" }', properties=who
        ),
        "only_alpha": http_tool("only_alpha", upstream.url("/alpha"), credential=svc),
        "only_beta": http_tool("only_beta", upstream.url("/beta"), credential=svc),
        "forms": http_tool("forms", upstream.url("/forms"), credential=svc, headers='{ X-Token = "{cred.token}" }'),
        "slow": http_tool("slow", upstream.url("/slow"), credential=svc),
    }
    world = World.create(root, tools, database_url=database_url)
    for group, secret in SECRET_OF.items():
        world.add_credential(f"svc-{group}", "svc", {"token": secret})
        world.allow(group, *TOOLS_OF[group])
        for tool in TOOLS_OF[group]:
            world.bind(group, tool, f"svc-{group}")
    return world


@contextmanager
def running_setup(root: Path, database_url: str | None) -> Iterator[Setup]:
    """An installation, its upstream, CROWD agents and a running server."""
    with running_upstream() as upstream:
        world = make_world(root, upstream, database_url)
        tokens, group_of = {}, {}
        for i in range(CROWD):
            group = "alpha" if i % 2 == 0 else "beta"
            name = f"crowd{i:02d}"
            tokens[name], group_of[name] = create_agent(world.store, group, name), group
        server = start_server(world, root / "logs")
        try:
            yield Setup(world, upstream, server, tokens, group_of)
        finally:
            server.stop()
            world.close()


SetupFor = Callable[[str], Setup]


@pytest.fixture(scope="module")
def setup_for(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[SetupFor]:
    """The module's installation on a backend, made for the first test on it and kept to the module's end."""
    with per_backend(request.config, lambda url: running_setup(tmp_path_factory.mktemp("http"), url)) as get:
        yield get


@pytest.fixture
def env(setup_for: SetupFor, backend: str) -> Setup:
    """The module's setup on this test's backend, with the upstream's record cleared for this test."""
    setup = setup_for(backend)
    assert setup.server.process.poll() is None, setup.server.stderr()
    setup.upstream.clear()
    return setup


def only_request(upstream: Upstream) -> Seen:
    seen = upstream.seen()
    assert len(seen) == 1, [s.target for s in seen]
    return seen[0]


# -- two groups, two transports --------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["streamable", "sse"])
async def test_each_group_lists_and_calls_only_its_own_tools_with_its_own_credential(
    env: Setup, transport: str
) -> None:
    received = Received()
    for group, other in (("alpha", "beta"), ("beta", "alpha")):
        token = env.add_agent(group, f"{transport}-{group}")
        with anyio.fail_after(20):
            async with connect_over_http(env.server, token, transport, received) as client:
                listing = await client.list_tools()
                env.upstream.clear()
                called = await client.call_tool("whoami", {"who": group})
                seen = only_request(env.upstream)
                forms = await client.call_tool("forms", {})
                env.upstream.clear()
                with pytest.raises(MCPError, match=f"Unknown tool: only_{other}"):
                    await client.call_tool(f"only_{other}", {})
                refused_saw = env.upstream.seen()

        assert sorted(t.name for t in listing.tools) == TOOLS_OF[group]
        assert seen.header("Authorization") == f"Bearer {SECRET_OF[group]}"
        assert seen.query == {"who": group}
        assert not called.is_error, result_text(called)
        assert called.structured_content is not None
        assert called.structured_content["headers"]["authorization"] == "Bearer [redacted:token]"
        assert not forms.is_error and "[redacted:token]" in result_text(forms)
        assert refused_saw == []

    env.assert_clean(received)


# -- authentication --------------------------------------------------------------------------------


TOKENS_HELD_BY_NO_AGENT = ("not a token", "unknown", "truncated", "extended", "revoked")


async def test_requests_without_a_valid_token_get_401_and_run_nothing(env: Setup) -> None:
    live = env.add_agent("alpha", "auth-live")
    revoked = env.add_agent("alpha", "auth-revoked")
    env.revoke("auth-revoked")
    authorizations: dict[str, str | None] = {
        "none": None,
        "bare scheme": "Bearer",
        "basic": "Basic " + live,
        "no scheme": live,
        "not a token": "Bearer not-a-token",
        "unknown": "Bearer cgt_" + secrets.token_urlsafe(32),
        "truncated": "Bearer " + live[:-1],
        "extended": "Bearer " + live + "A",
        "revoked": "Bearer " + revoked,
    }
    headers, body = modern_call("whoami", {"who": "intruder"})
    received = Received()
    async with received.http_client() as http:
        for label, authorization in authorizations.items():
            auth = {} if authorization is None else {"Authorization": authorization}
            responses = [
                await http.post(env.server.mcp_url, content=body, headers={**headers, **auth}),
                await http.get(env.server.sse_url, headers=auth),
                await http.post(
                    f"{env.server.base}/messages/?session_id={uuid.uuid4().hex}",
                    content=body,
                    headers={**JSON_HEADERS, **auth},
                ),
            ]
            said = "invalid or revoked token" if label in TOKENS_HELD_BY_NO_AGENT else "Authentication required"
            for response in responses:
                assert response.status_code == 401, (label, response.request.url, response.text)
                assert response.headers["WWW-Authenticate"].startswith("Bearer"), label
                assert response.json()["error_description"] == said, label
                assert f'error_description="{said}"' in response.headers["WWW-Authenticate"], label
        assert env.upstream.seen() == []

        accepted = await http.post(env.server.mcp_url, content=body, headers={**headers, **bearer(live)})
    assert accepted.status_code == 200, accepted.text
    assert only_request(env.upstream).header("Authorization") == f"Bearer {ALPHA_SECRET}"
    env.assert_clean(received)


@pytest.mark.parametrize("transport", ["streamable", "sse"])
async def test_the_sdk_clients_fail_to_connect_with_an_unknown_token(env: Setup, transport: str) -> None:
    received = Received()
    failure: BaseException | None = None
    try:
        with anyio.fail_after(20):
            async with connect_over_http(env.server, "cgt_" + secrets.token_urlsafe(32), transport, received) as client:
                await client.call_tool("whoami", {"who": "unknown"})
    except Exception as exc:  # the SDK reports it as MCPError, HTTPStatusError or a group of them
        failure = exc

    assert failure is not None and not isinstance(failure, TimeoutError)
    assert "HTTP 401" in received.text()
    assert env.upstream.seen() == []
    env.assert_clean(received)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_revocation_fails_the_next_call_of_an_open_streamable_session(env: Setup, mode: str) -> None:
    name = f"revoke-{mode}"
    token = env.add_agent("beta", name)
    received = Received()
    with anyio.fail_after(20):
        async with connect_over_http(env.server, token, "streamable", received, mode=mode) as client:
            first = await client.call_tool("whoami", {"who": "before"})
            env.revoke(name)
            with pytest.raises(MCPError):
                await client.call_tool("whoami", {"who": "after"})
            with pytest.raises(MCPError):
                await client.list_tools()

    assert not first.is_error, result_text(first)
    seen = only_request(env.upstream)
    assert seen.query == {"who": "before"} and seen.header("Authorization") == f"Bearer {BETA_SECRET}"
    assert "HTTP 401" in received.text()
    env.assert_clean(received)


async def test_revocation_fails_the_next_message_of_an_open_sse_session(env: Setup) -> None:
    token = env.add_agent("beta", "revoke-sse")
    sessions: list[str] = []
    received = Received()
    _, body = modern_call("whoami", {"who": "after"}, request_id=77)
    sse = sse_client(
        env.server.sse_url,
        headers=bearer(token),
        httpx_client_factory=received.sse_factory,
        on_session_created=sessions.append,
    )
    with anyio.fail_after(20):
        async with Client(sse) as client:
            first = await client.call_tool("whoami", {"who": "before"})
            env.revoke("revoke-sse")
            async with received.http_client(token) as http:
                response = await http.post(
                    f"{env.server.base}/messages/?session_id={sessions[0]}", content=body, headers=JSON_HEADERS
                )

    assert not first.is_error, result_text(first)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert only_request(env.upstream).query == {"who": "before"}
    env.assert_clean(received)


@pytest.mark.parametrize("name", ["access_token", "token", "Authorization"])
async def test_a_token_in_the_query_string_is_refused(env: Setup, name: str) -> None:
    token = env.add_agent("alpha", f"query-{name.lower()}")
    headers, body = modern_call("whoami", {"who": "query"})
    received = Received()
    async with received.http_client() as http:
        responses = [
            await http.post(f"{env.server.mcp_url}?{name}={token}", content=body, headers=headers),
            await http.post(f"{env.server.mcp_url}?{name}={token}", content=body, headers={**headers, **bearer(token)}),
            await http.get(f"{env.server.sse_url}?{name}={token}"),
        ]

    for response in responses:
        assert response.status_code == 401, (response.request.url, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert env.upstream.seen() == []
    env.assert_clean(received)


# -- transport security ----------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1:{port}"])
async def test_a_foreign_origin_gets_403_before_authentication(env: Setup, origin: str) -> None:
    token = env.add_agent("alpha", f"origin-{secrets.token_hex(3)}")
    foreign = {"Origin": origin.format(port=env.server.port)}
    headers, body = modern_call("whoami", {"who": "origin"})
    received = Received()
    async with received.http_client() as http:
        refused = [
            await http.post(env.server.mcp_url, content=body, headers={**headers, **bearer(token), **foreign}),
            await http.post(env.server.mcp_url, content=body, headers={**headers, **foreign}),
            await http.get(env.server.sse_url, headers={**bearer(token), **foreign}),
        ]
        assert env.upstream.seen() == []
        own = {"Origin": env.server.base}
        accepted = await http.post(env.server.mcp_url, content=body, headers={**headers, **bearer(token), **own})

    assert [r.status_code for r in refused] == [403, 403, 403], [r.text for r in refused]
    assert accepted.status_code == 200, accepted.text
    assert only_request(env.upstream).query == {"who": "origin"}
    env.assert_clean(received)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "127.0.0.1"])
async def test_a_foreign_host_header_gets_403(env: Setup, host: str) -> None:
    token = env.add_agent("alpha", f"host-{secrets.token_hex(3)}")
    headers, body = modern_call("whoami", {"who": "host"})
    received = Received()
    async with received.http_client() as http:
        refused = [
            await http.post(
                env.server.mcp_url,
                content=body,
                headers={**headers, **bearer(token), "Host": host.format(port=env.server.port)},
            ),
            await http.get(env.server.sse_url, headers={**bearer(token), "Host": host.format(port=env.server.port)}),
        ]
        assert env.upstream.seen() == []
        accepted = await http.post(
            env.server.mcp_url,
            content=body,
            headers={**headers, **bearer(token), "Host": f"localhost:{env.server.port}"},
        )

    assert [r.status_code for r in refused] == [403, 403], [r.text for r in refused]
    assert accepted.status_code == 200, accepted.text
    assert only_request(env.upstream).query == {"who": "host"}
    env.assert_clean(received)


async def test_a_body_over_4_mib_gets_413(env: Setup) -> None:
    token = env.add_agent("alpha", "big-body")
    headers, _ = modern_call("whoami", {"who": "big"})
    padding = "x" * (4 * 1024 * 1024)
    _, body = modern_call("whoami", {"who": "big", "padding": padding})
    assert len(body) > 4 * 1024 * 1024

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    received = Received()
    async with received.http_client(token) as http:
        declared = await http.post(env.server.mcp_url, content=body, headers=headers)
        streamed = await http.post(env.server.mcp_url, content=chunked(), headers=headers)
        sse_post = await http.post(
            f"{env.server.base}/messages/?session_id={uuid.uuid4().hex}", content=body, headers=JSON_HEADERS
        )

    assert "content-length" not in streamed.request.headers
    assert [declared.status_code, streamed.status_code, sse_post.status_code] == [413, 413, 413]
    assert env.upstream.seen() == []
    env.assert_clean(received)


# -- sessions and audit ----------------------------------------------------------------------------


@pytest.mark.parametrize("intruder_group", ["alpha", "beta"])
async def test_a_streamable_session_of_one_agent_is_refused_to_another(env: Setup, intruder_group: str) -> None:
    owner = env.add_agent("alpha", f"owner-{intruder_group}")
    intruder = env.add_agent(intruder_group, f"intruder-{intruder_group}")
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "whoami", "arguments": {"who": "hijack"}},
    }
    received = Received()
    async with received.http_client() as http:
        opened = await http.post(env.server.mcp_url, json=initialize, headers={**JSON_HEADERS, **bearer(owner)})
        assert opened.status_code == 200, opened.text
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": LEGACY}
        ack = await http.post(
            env.server.mcp_url, json=initialized, headers={**JSON_HEADERS, **session, **bearer(owner)}
        )
        assert ack.status_code == 202, ack.text

        hijack = await http.post(env.server.mcp_url, json=call, headers={**JSON_HEADERS, **session, **bearer(intruder)})
        listing = await http.post(
            env.server.mcp_url,
            headers={**JSON_HEADERS, **session, **bearer(intruder)},
            json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        )
        assert env.upstream.seen() == []
        own = await http.post(env.server.mcp_url, json=call, headers={**JSON_HEADERS, **session, **bearer(owner)})

    assert hijack.status_code == 404, hijack.text
    assert listing.status_code == 404, listing.text
    assert own.status_code == 200 and '"result"' in own.text, own.text
    assert only_request(env.upstream).header("Authorization") == f"Bearer {ALPHA_SECRET}"
    env.assert_clean(received)


async def test_an_sse_session_of_one_agent_is_refused_to_another(env: Setup) -> None:
    owner = env.add_agent("alpha", "sse-owner")
    intruder = env.add_agent("beta", "sse-intruder")
    sessions: list[str] = []
    received = Received()
    _, body = modern_call("whoami", {"who": "hijack"}, request_id=42)
    sse = sse_client(
        env.server.sse_url,
        headers=bearer(owner),
        httpx_client_factory=received.sse_factory,
        on_session_created=sessions.append,
    )
    with anyio.fail_after(20):
        async with Client(sse) as client:
            async with received.http_client(intruder) as http:
                hijack = await http.post(
                    f"{env.server.base}/messages/?session_id={sessions[0]}", content=body, headers=JSON_HEADERS
                )
            await anyio.sleep(0.2)  # had the message been taken, its call would have reached the upstream by now
            assert env.upstream.seen() == []
            own = await client.call_tool("whoami", {"who": "owner"})

    assert hijack.status_code in (403, 404), hijack.text
    assert not own.is_error
    assert only_request(env.upstream).header("Authorization") == f"Bearer {ALPHA_SECRET}"
    env.assert_clean(received)


async def test_audit_rows_carry_the_agent_name_and_agent_list_the_last_use(env: Setup) -> None:
    tokens = {"audit-a": env.add_agent("alpha", "audit-a"), "audit-b": env.add_agent("beta", "audit-b")}
    received = Received()
    with anyio.fail_after(20):
        async with connect_over_http(env.server, tokens["audit-a"], "streamable", received) as client:
            await client.call_tool("whoami", {"who": "a"})
            with pytest.raises(MCPError):
                await client.call_tool("only_beta", {})
        async with connect_over_http(env.server, tokens["audit-b"], "sse", received) as client:
            await client.call_tool("whoami", {"who": "b"})
            await client.call_tool("whoami", {})  # invalid arguments

    expected = [
        ("audit-a", "alpha", "whoami", "svc-alpha", "ok"),
        ("audit-a", "alpha", "only_beta", None, "denied"),
        ("audit-b", "beta", "whoami", "svc-beta", "ok"),
        ("audit-b", "beta", "whoami", None, "invalid_arguments"),
    ]
    deadline = time.monotonic() + 10
    while True:
        rows = [
            (r["agent"], r["group"], r["tool"], r["credential"], r["outcome"])
            for r in reversed(env.audit())
            if r["agent"] in tokens
        ]
        if len(rows) >= len(expected) or time.monotonic() > deadline:
            break
        await anyio.sleep(0.1)
    assert rows == expected

    agents = {a["agent"]: a for a in json.loads(env.cli("agent", "list", "--json").stdout)}
    for name in tokens:
        assert agents[name]["last_used_at"] is not None
        assert agents[name]["last_used_at"] >= agents[name]["created_at"]
    env.assert_clean(received)


# -- load ------------------------------------------------------------------------------------------


async def test_fifty_concurrent_agents_each_send_exactly_their_groups_credential(env: Setup) -> None:
    crowd = {name: token for name, token in env.tokens.items() if name.startswith("crowd")}
    assert len(crowd) == CROWD and {env.group_of[n] for n in crowd} == {"alpha", "beta"}
    received = Received()
    errors: list[str] = []

    async def agent(name: str, token: str) -> None:
        async with connect_over_http(env.server, token, "streamable", received) as client:
            for i in range(CALLS_EACH):
                result = await client.call_tool("whoami", {"who": f"{name}-{i}"})
                echoed = result.structured_content or {}
                if result.is_error or echoed.get("query") != {"who": f"{name}-{i}"}:
                    errors.append(f"{name}-{i}: {result_text(result)[:200]}")

    with anyio.fail_after(45):
        async with anyio.create_task_group() as tg:
            for name, token in crowd.items():
                tg.start_soon(agent, name, token)

    assert errors == []
    seen = env.upstream.seen()
    assert len(seen) == CROWD * CALLS_EACH
    by_call = {}
    for request in seen:
        name, _, _ = request.query["who"].rpartition("-")
        assert request.header("Authorization") == f"Bearer {SECRET_OF[env.group_of[name]]}", request.query
        by_call[request.query["who"]] = request
    assert len(by_call) == CROWD * CALLS_EACH
    env.assert_clean(received)


# -- lifecycle -------------------------------------------------------------------------------------


async def test_sigterm_while_idle_exits_0_and_keeps_every_audit_row(env: Setup, tmp_path: Path) -> None:
    token = env.add_agent("beta", "sigterm-bot")
    server = start_server(env.world, tmp_path)
    received = Received()
    calls = 25
    try:
        with anyio.fail_after(20):
            http = received.http_client(token)
            url = f"http://127.0.0.1:{server.port}/mcp"
            async with http, Client(streamable_http_client(url, http_client=http)) as client:
                for i in range(calls):
                    await client.call_tool("whoami", {"who": f"term-{i}"})
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=8)
    finally:
        server.stop()

    assert returncode == 0, server.stderr()
    rows = [r for r in env.audit() if r["agent"] == "sigterm-bot"]
    assert len(rows) == calls
    assert {r["outcome"] for r in rows} == {"ok"}
    assert len(env.upstream.seen()) == calls
    stderr = server.stderr()
    assert "Traceback" not in stderr
    assert_no_leak(stderr + received.text(), *CANARIES)
    assert token not in stderr


async def test_sigterm_lets_an_in_flight_call_finish_and_audits_it(env: Setup, tmp_path: Path) -> None:
    token = env.add_agent("beta", "inflight-bot")
    server = start_server(env.world, tmp_path)
    received = Received()
    outcome: list[str] = []
    env.upstream.slow_seconds = 1.5
    try:
        with anyio.fail_after(25):
            http = received.http_client(token)
            url = f"http://127.0.0.1:{server.port}/mcp"
            async with http, Client(streamable_http_client(url, http_client=http)) as client:
                await client.list_tools()  # the client checks results against listed schemas: list now

                async def call() -> None:  # the upstream answers in 1.5 s; the graceful shutdown allows 10
                    result = await client.call_tool("slow", {})
                    outcome.append(result_text(result) if result.is_error else "ok")

                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    while not env.upstream.seen():
                        await anyio.sleep(0.02)
                    server.process.send_signal(signal.SIGTERM)
        returncode = await anyio.to_thread.run_sync(lambda: server.process.wait(timeout=15))
    finally:
        env.upstream.slow_seconds = 5.0
        server.stop()

    assert returncode == 0, server.stderr()
    assert outcome == ["ok"], outcome
    rows = [r for r in env.audit() if r["agent"] == "inflight-bot"]
    assert [(r["tool"], r["outcome"]) for r in rows] == [("slow", "ok")]
    stderr = server.stderr()
    assert "Traceback" not in stderr
    assert_no_leak(stderr + received.text(), *CANARIES)


# -- resumable streams (SEP-1699) ---------------------------------------------------------------------


async def sse_events(response: httpx2.Response) -> AsyncIterator[dict[str, str]]:
    """The events of an SSE response, each as its fields (id, data, retry)."""
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if event:
                yield event
            event = {}
            continue
        name, _, value = line.partition(":")
        event[name] = value.removeprefix(" ")


async def open_session(http: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> dict[str, str]:
    """An MCP session of the handshake protocol (2025-11-25); the headers its requests carry."""
    hello = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    opened = await http.post(url, headers=headers, json=hello)
    assert opened.status_code == 200, opened.text
    session = {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": HANDSHAKE}
    done = await http.post(url, headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert done.status_code == 202
    return session


async def test_a_call_whose_stream_broke_is_resumed_with_last_event_id_in_its_own_session_only(env: Setup) -> None:
    """A proxy that cuts an idle connection, a laptop changing networks: the call goes on, and the client that
    comes back with the last event id it saw gets the rest of that stream; another session gets nothing of it."""
    token = env.add_agent("beta", "resuming-bot")
    headers = {**JSON_HEADERS, **bearer(token)}
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}
    env.upstream.slow_seconds = 1.0
    try:
        with anyio.fail_after(30):
            async with httpx2.AsyncClient(timeout=10) as http:
                session = await open_session(http, env.server.mcp_url, headers)
                async with http.stream("POST", env.server.mcp_url, headers=session, json=call) as response:
                    priming = await anext(sse_events(response))  # then the connection breaks
                other = await open_session(http, env.server.mcp_url, headers)
                stolen: list[dict[str, str]] = []
                with anyio.move_on_after(2):
                    resumed_elsewhere = {**other, "Last-Event-ID": priming["id"]}
                    async with http.stream("GET", env.server.mcp_url, headers=resumed_elsewhere) as response:
                        stolen = [e async for e in sse_events(response) if e.get("data")]
                resume = {**session, "Last-Event-ID": priming["id"]}
                async with http.stream("GET", env.server.mcp_url, headers=resume) as response:
                    async for event in sse_events(response):
                        if event.get("data") and json.loads(event["data"]).get("id") == 7:
                            answer = json.loads(event["data"])
                            break
    finally:
        env.upstream.slow_seconds = 5.0

    assert priming["data"] == "" and priming["retry"] == "1000" and priming["id"]
    assert stolen == []
    assert answer["result"]["isError"] is False
    assert_no_leak(json.dumps(answer), *CANARIES)


def test_binding_beyond_loopback_without_an_agent_refuses_to_start(tmp_path: Path) -> None:
    with running_upstream() as upstream:
        world = make_world(tmp_path / "lonely", upstream)
        try:
            create_agent(world.store, "alpha", "gone")
            world.store.revoke_agent("gone")  # a revoked agent does not count
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mcp_credgate",
                    "serve",
                    "--http",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(free_port()),
                    "--home",
                    str(world.settings.home),
                    "--tools-dir",
                    str(world.tools_dir),
                ],
                capture_output=True,
                text=True,
                timeout=20,
                env=credgate_env(world.settings),
                stdin=subprocess.DEVNULL,
            )
        finally:
            world.close()

    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, proc.stderr
    assert "refusing" in errors[0] and "credgate agent add" in errors[0]
    assert "serving MCP" not in proc.stderr
