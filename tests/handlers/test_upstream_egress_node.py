"""Egress injection end to end with a Node upstream (issue 27): a real gateway runs tests/support/egress_upstream.mjs
under Node 24 (tests/node24: older Node's fetch and https ignore the proxy variables) with `inject = "egress"` in
its sandbox. Its fetch and its https module (the global agent, and an agent of its own made with `proxyEnv`) call
the real HTTPS API of tests/handlers/test_upstream_egress.py through the gateway's proxy, which Node follows
because the sandbox sets NODE_USE_ENV_PROXY=1 and trusts through NODE_EXTRA_CA_CERTS. The API sees the real token;
the upstream holds only its placeholder; its attempts to send it elsewhere fail and are audited. An agent the
program makes without `proxyEnv` gets no proxy from Node: it reaches nothing.

The setup, the API and the scans are test_upstream_egress.py's. Without npm the module skips, except in CI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import anyio
import pytest

from tests.handlers import test_upstream_egress as python_egress
from tests.handlers.test_upstream_egress import OTHER, TOKEN, egress_decl, egress_world, scan_upstream, the_placeholder
from tests.support import SUPPORT_DIR
from tests.support.egress_api import Api
from tests.support.gateway import Transcript, World, assert_no_leak, connect, result_text
from tests.support.node import NODE_MODULES, node24_for_tests, node_for_tests

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.anyio,
]

UPSTREAM = SUPPORT_DIR / "egress_upstream.mjs"
api = python_egress.api  # its fixtures, used here by name: the HTTPS API, a folder outside /tmp
outside = python_egress.outside
CLIENTS = ("fetch", "https", "agent")  # fetch; https.get with the global agent; with an agent of its own (proxyEnv)


@pytest.fixture(scope="module")
def node24() -> Path:
    """Node 24, and the MCP SDK the upstream imports (tests/node): installed before any gateway starts, the
    first `npm ci` can take a minute."""
    node_for_tests()
    return node24_for_tests()


def node_world(root: Path, monkeypatch: pytest.MonkeyPatch, api: Api, node24: Path) -> World:
    """egress_world with the Node upstream: its sandbox may read tests/node's packages, found through
    NODE_MODULES_DIR (an ES module ignores NODE_PATH)."""
    modules = str(NODE_MODULES.resolve())
    decl = egress_decl(command=str(node24), args=[str(UPSTREAM)], env={"NODE_MODULES_DIR": modules}, read=[modules])
    return egress_world(root, monkeypatch, api, decl=decl)


async def test_fetch_and_https_in_a_node_24_upstream_reach_the_api_with_the_real_token_while_it_holds_a_placeholder(
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
    api: Api,
    node24: Path,
) -> None:
    world = node_world(outside, monkeypatch, api, node24)
    placeholder = the_placeholder(world)
    transcript = Transcript()
    before = len(api.received)

    with anyio.fail_after(120):
        async with world.gateway() as gw, gw.running(), connect(gw, "g") as agent:
            await transcript.list_tools(agent)
            calls = {c: result_text(await transcript.call(agent, "eg_call", {"client": c})) for c in CLIENTS}
            held = json.loads(result_text(await transcript.call(agent, "eg_holds")))
            scanned = scan_upstream(outside / "state", TOKEN, UPSTREAM.name)
            control = scan_upstream(outside / "state", placeholder, UPSTREAM.name)  # the scan finds what it holds

    for client, text in calls.items():
        assert text.startswith("200 "), (client, text)
        assert "[redacted:token]" in text  # the API echoed the token: the upstream saw a placeholder
    authorizations = [r["headers"].get("authorization") for r in api.received[before:]]
    assert authorizations == [f"Bearer {TOKEN}"] * len(CLIENTS)
    assert held["node"].startswith("v24.")
    assert held["set"] == {"NODE_USE_ENV_PROXY": True, "HTTPS_PROXY": True, "NODE_EXTRA_CA_CERTS": True}
    assert held["sha256"] == hashlib.sha256(placeholder.encode()).hexdigest()
    assert held["token"] == "[redacted:token]"  # the agent does not see the placeholder either
    assert scanned == {"environ": False, "cmdline": False, "memory": False, "files": False, "forwarder": False}
    assert control["environ"] and control["memory"]
    assert placeholder not in transcript.text()
    assert_no_leak(transcript.text(), TOKEN)
    world.close()


async def test_a_node_upstream_cannot_send_the_token_to_another_host_and_each_attempt_is_audited(
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
    api: Api,
    node24: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = node_world(outside, monkeypatch, api, node24)
    placeholder = the_placeholder(world)
    caplog.set_level(logging.INFO, logger="credgate")
    transcript = Transcript()
    before = len(api.received)

    with anyio.fail_after(120):
        async with world.gateway() as gw, gw.running(), connect(gw, "g") as agent:
            await transcript.list_tools(agent)
            outcomes = json.loads(result_text(await transcript.call(agent, "eg_leak", {"target": OTHER})))

    assert outcomes["header"] == "failed: UND_ERR_ABORTED"  # a host not declared: the proxy refuses the CONNECT
    assert outcomes["fetch-query"] == "failed: UND_ERR_ABORTED"  # fetch tunnels plain http too: refused alike
    assert outcomes["http-query"] == "answered 403"  # the placeholder in a plain request's query: seen and blocked
    assert outcomes["in-host"] == "failed: ERR_PROXY_TUNNEL"  # the placeholder in the host name a CONNECT asks for
    assert len(api.received) == before  # nothing reached the API (which also answers as OTHER)
    rows = [(r.tool, r.credential, r.outcome) for r in world.audit() if r.outcome.startswith("egress_")]
    assert sorted(rows) == [("eg", "tok", "egress_blocked")] * 2 + [("eg", "tok", "egress_denied")] * 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "blocked as an exfiltration attempt" in logged
    assert placeholder not in logged and TOKEN not in logged
    assert placeholder not in transcript.text()
    assert_no_leak(transcript.text() + logged, TOKEN)
    world.close()


async def test_an_https_agent_a_node_program_makes_without_proxy_env_reaches_nothing(
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
    api: Api,
    node24: Path,
) -> None:
    """Node gives the proxy to its global agents only: `new https.Agent()` goes straight out, where the sandbox
    has no network. The call fails (the program must pass `proxyEnv: process.env`); nothing leaves."""
    world = node_world(outside, monkeypatch, api, node24)
    before = len(api.received)

    with anyio.fail_after(120):
        async with world.gateway() as gw, gw.running(), connect(gw, "g") as agent:
            await agent.list_tools()
            outcome = result_text(await agent.call_tool("eg_call", {"client": "bare-agent"}))

    assert outcome.startswith("failed: "), outcome
    assert len(api.received) == before
    assert not [r for r in world.audit() if r.outcome.startswith("egress_")]  # it never reached the proxy
    world.close()
