"""Two real `credgate serve --http` replicas on one PostgreSQL store (issue 10).

Each replica is a process of its own with a data folder of its own (as on two machines: nothing but the
database is shared; the master key comes from CREDGATE_MASTER_KEY). The admin works through the CLI, as a
third process would. Checked: changes to credentials and bindings are seen by both replicas at their next
call, revocation at the next request, audit rows of both land in the shared table, one OAuth2 refresh for
20 concurrent calls across both, a master key rotation while both serve, and a dashboard session that any
replica accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from click.testing import CliRunner, Result
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client

from mcp_credgate.agents import create_agent
from mcp_credgate.cli import cli
from mcp_credgate.crypto import MasterKey
from mcp_credgate.web.session import new_admin_secret
from tests.support.gateway import (
    Upstream,
    World,
    assert_no_leak,
    http_tool,
    make_canary,
    result_text,
)
from tests.support.http_server import Server, bearer, free_port, modern_call, start_server, wait_listening
from tests.support.oauth_provider import running_oauth_provider
from tests.support.oauth_world import GROUP as OAUTH_GROUP
from tests.support.oauth_world import add_acme, oauth_world, stored, whoami_ok

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql_only]

GROUP = "desk"


# -- replicas ----------------------------------------------------------------------------------------


class Replica:
    """One `credgate serve --http` process on the shared store, with a data folder of its own and the master
    key in CREDGATE_MASTER_KEY; it keeps its port (and its log) across restarts."""

    def __init__(self, world: World, folder: Path, master_key: str) -> None:
        self.world, self.folder, self.master_key = world, folder, master_key
        self.port = free_port()
        self.server: Server | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> Replica:
        self.server = start_server(
            self.world, self.folder, "--public-url", self.base, home=self.folder / "home",
            env={"CREDGATE_MASTER_KEY": self.master_key}, port=self.port, wait=wait,
        )  # fmt: skip
        return self

    def wait_listening(self) -> None:
        assert self.server is not None
        wait_listening(self.server)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def restart(self, master_key: str) -> None:
        self.stop()
        self.master_key = master_key
        self.start()

    def log(self) -> str:
        return self.server.output() if self.server is not None else ""


def admin(world: World, *args: str, master_key: str | None = None) -> Result:
    """The CLI as an admin runs it, on a machine of its own (its own data folder) unless told otherwise."""
    env = {"CREDGATE_MASTER_KEY": master_key} if master_key else {}
    base = ["--home", str(world.settings.home), "--tools-dir", str(world.tools_dir)]
    return CliRunner().invoke(cli, [*base, *args], env=env, catch_exceptions=False)


def admin_ok(world: World, *args: str, master_key: str | None = None) -> str:
    result = admin(world, *args, master_key=master_key)
    assert result.exit_code == 0, result.output
    return result.stdout


async def stateless_call(replica: Replica, token: str, tool: str = "whoami") -> httpx2.Response:
    """A stand-alone tools/call of the stateless protocol: no session, so any replica may answer."""
    headers, body = modern_call(tool, {})
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(replica.base + "/mcp", headers={**headers, **bearer(token)}, content=body)


def result_of(response: httpx2.Response) -> types.CallToolResult:
    assert response.status_code == 200, (response.status_code, response.text)
    text = response.text
    if "text/event-stream" in response.headers.get("content-type", ""):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    message = json.loads(text)
    assert "result" in message, message
    return types.CallToolResult.model_validate(message["result"])


@asynccontextmanager
async def session(replica: Replica, token: str) -> AsyncIterator[Client]:
    """A Streamable HTTP session held open with one replica (its binding cache stays warm)."""
    http = httpx2.AsyncClient(headers=bearer(token), timeout=30)
    async with http, Client(streamable_http_client(replica.base + "/mcp", http_client=http)) as client:
        yield client


# -- an installation with two replicas ------------------------------------------------------------------


ONE, TWO, THREE = make_canary("R1"), make_canary("R2"), make_canary("R3")


@contextmanager
def two_replicas(tmp_path: Path, upstream: Upstream) -> Iterator[tuple[World, Replica, Replica, str, str]]:
    """`whoami` sends its credential's token to the upstream; group desk has it bound to svc-one (ONE).
    Returns the world, replicas a and b, and the master key they were given."""
    world = World.create(tmp_path / "admin", {"whoami": http_tool("whoami", upstream.url("/echo"))})
    world.add_credential("svc-one", "svc", {"token": ONE})
    world.allow(GROUP, "whoami")
    world.bind(GROUP, "whoami", "svc-one")
    key = world.settings.key_path.read_text().strip()
    a = Replica(world, tmp_path / "a", key)
    b = Replica(world, tmp_path / "b", key)
    try:
        a.start(wait=False)
        b.start()  # both start at once: they apply the schema and read the store side by side
        a.wait_listening()
        yield world, a, b, key, create_agent(world.store, GROUP, "agent")
    finally:
        a.stop()
        b.stop()
        world.close()
        for replica in (a, b):
            assert "Traceback" not in replica.log(), replica.log()


def token_seen(upstream: Upstream) -> str:
    """The bearer token of the upstream's last request."""
    seen = upstream.seen()[-1]
    return dict((k.lower(), v) for k, v in seen.headers)["authorization"].removeprefix("Bearer ")


async def token_used_by(client: Client, upstream: Upstream) -> str:
    result = await client.call_tool("whoami", {})
    assert not result.is_error, result_text(result)
    return token_seen(upstream)


# -- 1. changes through the CLI, seen by both at their next call -------------------------------------------


async def test_credential_and_binding_changes_are_seen_by_both_replicas_at_their_next_call(
    tmp_path: Path, upstream: Upstream
) -> None:
    with two_replicas(tmp_path, upstream) as (world, a, b, _, token):
        async with session(a, token) as on_a, session(b, token) as on_b:
            assert await token_used_by(on_a, upstream) == ONE  # both caches are warm now
            assert await token_used_by(on_b, upstream) == ONE

            admin_ok(world, "cred", "update", "svc-one", "--set", f"token={TWO}")
            assert await token_used_by(on_a, upstream) == TWO
            assert await token_used_by(on_b, upstream) == TWO

            admin_ok(world, "cred", "add", "svc-two", "--type", "svc", "--set", f"token={THREE}")
            admin_ok(world, "bind", GROUP, "whoami", "svc-two")
            assert await token_used_by(on_b, upstream) == THREE
            assert await token_used_by(on_a, upstream) == THREE

            admin_ok(world, "unbind", GROUP, "whoami")
            for client in (on_a, on_b):
                text = result_text(await client.call_tool("whoami", {}))
                assert "none is bound" in text and "/groups/desk/tools/whoami/setup" in text

            admin_ok(world, "bind", GROUP, "whoami", "svc-one")
            assert await token_used_by(on_a, upstream) == TWO
            admin_ok(world, "cred", "rm", "svc-one", "--force")
            for client in (on_b, on_a):
                assert "none is bound" in result_text(await client.call_tool("whoami", {}))

            admin_ok(world, "group", "deny", GROUP, "whoami")
            for client in (on_a, on_b):
                assert "whoami" not in {t.name for t in (await client.list_tools()).tools}
        assert_no_leak(a.log() + b.log(), ONE, TWO, THREE)


# -- 2. revocation, the stateless protocol, the audit -------------------------------------------------------


async def test_stateless_calls_go_to_either_replica_and_a_revoked_agent_is_refused_by_both(
    tmp_path: Path, upstream: Upstream
) -> None:
    with two_replicas(tmp_path, upstream) as (world, a, b, _, token):
        other = create_agent(world.store, GROUP, "other")
        for i in range(6):  # a load balancer's round robin, without sticky sessions
            replica = (a, b)[i % 2]
            result = result_of(await stateless_call(replica, token))
            assert not result.is_error, result_text(result)
        assert token_seen(upstream) == ONE

        admin_ok(world, "agent", "revoke", "agent")
        for replica in (a, b):
            refused = await stateless_call(replica, token)
            assert refused.status_code == 401, refused.text
            assert not result_of(await stateless_call(replica, other)).is_error


async def test_people_changes_are_seen_by_both_replicas_at_their_next_call(tmp_path: Path, upstream: Upstream) -> None:
    with two_replicas(tmp_path, upstream) as (world, a, b, _, _token):
        admin_ok(world, "user", "add", "alice")
        admin_ok(world, "group", "member", "add", GROUP, "alice")
        admin_ok(world, "group", "allow", GROUP, "whoami", "--personal", "--force")
        admin_ok(world, "cred", "add", "alice-one", "--type", "svc", "--set", f"token={TWO}", "--owner", "alice")
        admin_ok(world, "bind", GROUP, "whoami", "alice-one", "--user", "alice")
        alice = create_agent(world.store, GROUP, "alice-bot", user="alice")
        async with session(a, alice) as on_a, session(b, alice) as on_b:
            assert await token_used_by(on_a, upstream) == TWO
            assert await token_used_by(on_b, upstream) == TWO

            admin_ok(world, "cred", "add", "alice-two", "--type", "svc", "--set", f"token={THREE}", "--owner", "alice")
            admin_ok(world, "bind", GROUP, "whoami", "alice-two", "--user", "alice")
            assert await token_used_by(on_b, upstream) == THREE
            assert await token_used_by(on_a, upstream) == THREE

        admin_ok(world, "group", "member", "rm", GROUP, "alice")
        for replica in (a, b):
            refused = await stateless_call(replica, alice)
            assert refused.status_code == 401, refused.text
        assert_no_leak(a.log() + b.log(), TWO, THREE)


async def test_audit_rows_of_both_replicas_land_in_the_shared_table(tmp_path: Path, upstream: Upstream) -> None:
    with two_replicas(tmp_path, upstream) as (world, a, b, _, _token):
        on_a, on_b = create_agent(world.store, GROUP, "via-a"), create_agent(world.store, GROUP, "via-b")
        for _ in range(5):
            assert not result_of(await stateless_call(a, on_a)).is_error
        for _ in range(7):
            assert not result_of(await stateless_call(b, on_b)).is_error
        a.stop()
        b.stop()  # a stopping replica flushes its audit rows
        rows = json.loads(admin_ok(world, "audit", "--json", "--limit", "1000"))
    by_agent: dict[str, int] = {}
    for row in rows:
        assert row["tool"] == "whoami" and row["outcome"] == "ok" and row["credential"] == "svc-one"
        by_agent[row["agent"]] = by_agent.get(row["agent"], 0) + 1
    assert by_agent == {"via-a": 5, "via-b": 7}
    assert len({row["ref"] for row in rows}) == 12


# -- 3. one OAuth2 refresh across replicas --------------------------------------------------------------


async def test_20_concurrent_calls_across_two_replicas_make_exactly_one_refresh(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        old = add_acme(world, provider, expires_in=-5)
        provider.expire_access_tokens()
        provider.token_delay = 0.5  # the refresh is still running when the other replica's calls arrive
        token = create_agent(world.store, OAUTH_GROUP, "agent")
        key = world.settings.key_path.read_text().strip()
        a, b = Replica(world, tmp_path / "a", key).start(), Replica(world, tmp_path / "b", key).start()
        try:
            results: list[types.CallToolResult] = []

            async def call(replica: Replica) -> None:
                results.append(result_of(await stateless_call(replica, token)))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for _ in range(10):
                        tg.start_soon(call, a)
                        tg.start_soon(call, b)
        finally:
            a.stop()
            b.stop()
        assert len(results) == 20
        for result in results:
            whoami_ok(result)
        assert provider.refresh_requests == 1, provider.token_requests
        new = stored(world)
        assert new["token"] == provider.current_access_token
        assert new["refresh_token"] == provider.current_refresh_token != old["refresh_token"]
        logs = a.log() + b.log()
        assert "Traceback" not in logs
        assert_no_leak(logs, old["token"], old["refresh_token"], new["token"], new["refresh_token"], "acme-secret")


# -- 4. a master key rotation while both serve ------------------------------------------------------------


async def test_a_master_key_rotation_while_replicas_serve(tmp_path: Path, upstream: Upstream) -> None:
    with two_replicas(tmp_path, upstream) as (world, a, b, old, token):

        async def both_work(expected: str = ONE) -> None:
            for replica in (a, b):
                result = result_of(await stateless_call(replica, token))
                assert not result.is_error, (replica.folder.name, result_text(result), replica.log())
                assert token_seen(upstream) == expected

        await both_work()
        # Without the new key on every replica first, a shared store refuses to rotate.
        refused = admin(world, "key", "rotate", master_key=old)
        assert refused.exit_code == 1 and "every replica" in refused.stderr
        await both_work()

        # 1. the next key is made ahead; b gets OLD,NEW; a still holds only the old key and keeps working,
        #    also with a credential added meanwhile.
        made = json.loads(admin_ok(world, "key", "new", "--json", master_key=old))
        new = world.settings.pending_key_path.read_text().strip()
        assert made["key_id"] == MasterKey.from_text(new, "test").key_id
        b.restart(f"{old},{new}")
        admin_ok(world, "cred", "update", "svc-one", "--set", f"token={TWO}", master_key=f"{old},{new}")
        await both_work(TWO)

        # 2. a gets the new key too; the rotation runs while both serve, neither restarts.
        a.restart(f"{old},{new}")
        out = admin_ok(world, "key", "rotate", master_key=f"{old},{new}")
        assert made["key_id"] in out
        await both_work(TWO)
        admin_ok(world, "cred", "update", "svc-one", "--set", f"token={THREE}", master_key=f"{old},{new}")
        await both_work(THREE)

        # 3. the old key is dropped everywhere; a replica still given only the old key is refused clearly.
        a.restart(new)
        b.restart(new)
        await both_work(THREE)
        stale = Replica(world, tmp_path / "stale", old).start(wait=False)
        assert stale.server is not None
        assert stale.server.process.wait(timeout=30) != 0
        assert "master key does not match" in stale.log()
        assert "Traceback" not in stale.log()
        for key in (old, new):
            assert key not in a.log() + b.log() + stale.log()


# -- 5. the dashboard behind a load balancer --------------------------------------------------------------


async def test_a_dashboard_session_made_on_one_replica_works_on_the_other_and_its_changes_reach_both(
    tmp_path: Path, upstream: Upstream
) -> None:
    with two_replicas(tmp_path, upstream) as (world, a, b, _, token):
        admin_ok(world, "cred", "add", "svc-two", "--type", "svc", "--set", f"token={TWO}")
        secret = new_admin_secret(world.store)
        async with httpx2.AsyncClient(timeout=30) as on_a:
            login = await on_a.post(a.base + "/login", data={"secret": secret}, headers={"Origin": a.base})
            assert login.status_code == 303, login.text
        async with httpx2.AsyncClient(timeout=30, cookies=login.cookies) as on_b, session(a, token) as agent_on_a:
            assert await token_used_by(agent_on_a, upstream) == ONE
            page = await on_b.get(b.base + f"/groups/{GROUP}")
            assert page.status_code == 200, page.text
            csrf = re.search(r'name="csrf" value="([^"]*)"', page.text)
            assert csrf, page.text

            rebound = await on_b.post(
                b.base + f"/groups/{GROUP}/bind",
                data={"csrf": csrf.group(1), "tool": "whoami", "credential": "svc-two"},
                headers={"Origin": b.base},
            )
            assert rebound.status_code == 303, rebound.text
            assert await token_used_by(agent_on_a, upstream) == TWO  # a rebind made through b, seen by a

            revoked = await on_b.post(
                b.base + f"/groups/{GROUP}/revoke",
                data={"csrf": csrf.group(1), "agent": "agent"},
                headers={"Origin": b.base},
            )
            assert revoked.status_code == 303, revoked.text
        assert (await stateless_call(a, token)).status_code == 401
