"""Egress injection end to end (issue 27): a real gateway runs a Python upstream (tests/support/egress_upstream.py)
under `inject = "egress"` in its sandbox; the upstream calls a real HTTPS API on 127.0.0.1 under a host name of its
own with httpx, requests and urllib. The API sees the real token; the upstream holds only its placeholder (its
environment, command line, files and memory); its attempts to send the placeholder anywhere else are blocked and
audited; an echo of the token reaches the upstream as the placeholder and the agent as `[redacted:token]`.

The data, tools and state folders lie outside /tmp (`folder_outside_tmp`), as in the sandbox's own tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_credgate.credential import Credential
from mcp_credgate.handlers.egress import PLACEHOLDER_KEY_PURPOSE, EgressKit, stand_ins
from mcp_credgate.isolation import upstream_scope
from tests.support import SUPPORT_DIR
from tests.support.egress_api import Api, https_api
from tests.support.gateway import Transcript, World, assert_no_leak, connect, make_canary, result_text
from tests.support.sandbox import folder_outside_tmp

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.anyio,
]

API = "api.egress.test"
OTHER = "elsewhere.egress.test"
TOKEN = make_canary("EG")
UPSTREAM = SUPPORT_DIR / "egress_upstream.py"


def egress_decl(
    *,
    egress: bool = True,
    command: str = sys.executable,
    args: Sequence[str] = (str(UPSTREAM),),
    env: Mapping[str, str] | None = None,
    read: Sequence[str] = (),
) -> str:
    """The upstream's declaration; `egress=False`: the same upstream given its real token (the control).
    `command`, `args`: another upstream (the Node one), given `env` besides API_TOKEN and API_URL and `read` as
    its sandbox.read."""
    variables = {"API_TOKEN": "{cred.token}", "API_URL": f"https://{API}", **(env or {})}
    rendered_env = ", ".join(f"{name} = {json.dumps(value)}" for name, value in variables.items())
    injected = f'inject = "egress"\n[handler.egress]\nhosts = ["{API}"]\n' if egress else ""
    sandbox = f"[handler.sandbox]\nread = {json.dumps(list(read))}\n" if read else ""
    return (
        'name = "eg"\ndescription = "An upstream that holds a placeholder."\n'
        '[credential]\ntype = "egtoken"\nfields = [{ name = "token", kind = "token" }]\n'
        f'[handler]\nkind = "mcp"\ncommand = {json.dumps(command)}\nargs = {json.dumps(list(args))}\n'
        f"env = {{ {rendered_env} }}\ntimeout = 40\nstart_timeout = 30\n" + injected + sandbox
    )


@pytest.fixture
def outside() -> Iterator[Path]:
    with folder_outside_tmp() as root:
        yield root


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with https_api(tmp_path_factory.mktemp("api"), [API, OTHER], TOKEN) as serving:
        yield serving


def egress_world(
    root: Path, monkeypatch: pytest.MonkeyPatch, api: Api, *, egress: bool = True, decl: str | None = None
) -> World:
    """Group g with the token bound to upstream eg (`decl`, by default `egress_decl(egress=egress)`); the
    gateway's egress proxies trust the API's CA and find its host names on 127.0.0.1 (what DNS and the system's
    trust store do outside a test)."""
    monkeypatch.setenv("CREDGATE_STATE_DIR", str(root / "state"))
    made = EgressKit.new

    def new(*args: Any, **kwargs: Any) -> EgressKit:
        resolve = {API: ("127.0.0.1", api.port), OTHER: ("127.0.0.1", api.port)}
        return replace(made(*args, **kwargs), upstream_ca=api.ca_file, resolve=resolve)

    monkeypatch.setattr(EgressKit, "new", new)
    world = World.create(root, {"eg": decl or egress_decl(egress=egress)})
    world.add_credential("tok", "egtoken", {"token": TOKEN})
    world.allow("g", "eg.*")
    world.bind("g", "eg", "tok")
    return world


def the_placeholder(world: World) -> str:
    """The placeholder group g's upstream holds for the token, as the gateway draws it."""
    spec = world.catalog.upstreams["eg"].credential
    assert spec is not None
    kit = EgressKit.new(world.store.derived_key(PLACEHOLDER_KEY_PURPOSE), lambda _: spec.fields)
    scope = upstream_scope("eg", "tok", group="g", agent=None, isolation="group")
    return stand_ins(kit, scope, Credential("tok", "egtoken", {"token": TOKEN}, frozenset({"token"})))["token"]


async def test_the_api_gets_the_real_token_while_the_upstream_holds_only_its_placeholder(
    outside: Path, monkeypatch: pytest.MonkeyPatch, api: Api
) -> None:
    world = egress_world(outside, monkeypatch, api)
    placeholder = the_placeholder(world)
    transcript = Transcript()

    with anyio.fail_after(120):
        async with world.gateway() as gw, gw.running(), connect(gw, "g") as agent:
            await transcript.list_tools(agent)
            calls = {c: await transcript.call(agent, "eg_call", {"client": c}) for c in ("httpx", "requests", "urllib")}
            held = json.loads(result_text(await transcript.call(agent, "eg_holds")))

    for client, result in calls.items():
        assert result_text(result).startswith("200 "), (client, result_text(result))
        assert "[redacted:token]" in result_text(result)  # the API echoed the token: the upstream saw a placeholder
    authorizations = [r["headers"].get("authorization") for r in api.received[-3:]]
    assert authorizations == [f"Bearer {TOKEN}"] * 3
    assert held["token"] != TOKEN and "HTTPS_PROXY" in held["variables"] and "SSL_CERT_FILE" in held["variables"]
    assert held["token"] == "[redacted:token]"  # the agent does not see the placeholder either
    assert placeholder not in transcript.text()
    assert_no_leak(transcript.text(), TOKEN)
    world.close()


async def test_the_placeholder_is_the_same_after_a_restart_and_is_all_the_upstream_holds(
    outside: Path, monkeypatch: pytest.MonkeyPatch, api: Api
) -> None:
    world = egress_world(outside, monkeypatch, api)
    expected = hashlib.sha256(the_placeholder(world).encode()).hexdigest()
    held = []

    with anyio.fail_after(120):
        for _ in range(2):  # a gateway, then another on the same store
            async with world.gateway() as gw, gw.running(), connect(gw, "g") as agent:
                await agent.list_tools()
                held.append(json.loads(result_text(await agent.call_tool("eg_holds", {}))))
                assert result_text(await agent.call_tool("eg_call", {"client": "httpx"})).startswith("200 ")
                if len(held) == 1:
                    scanned = scan_upstream(outside / "state", TOKEN)

    assert [h["sha256"] for h in held] == [expected, expected]
    assert scanned == {"environ": False, "cmdline": False, "memory": False, "files": False, "forwarder": False}
    world.close()


async def test_the_control_an_upstream_given_its_real_token_holds_it_where_the_scan_looks(
    outside: Path, monkeypatch: pytest.MonkeyPatch, api: Api
) -> None:
    """The scan above can fail: the same upstream under inject = "env" holds the token in its environment and
    its memory."""
    world = egress_world(outside, monkeypatch, api, egress=False)

    with anyio.fail_after(120):
        async with world.gateway() as gw, gw.running(), connect(gw, "g") as agent:
            await agent.list_tools()
            await agent.call_tool("eg_holds", {})
            scanned = scan_upstream(outside / "state", TOKEN)

    assert scanned["environ"] and scanned["memory"]
    world.close()


def scan_upstream(state: Path, secret: str, script: str = UPSTREAM.name) -> dict[str, bool]:
    """Whether the running egress upstream (the process running `script`), as the host sees it, holds `secret`
    anywhere: its environment, command line, memory (every readable mapping), its home's files, and its
    forwarder's (pid 1 of its sandbox) environment and command line."""
    needle = secret.encode()
    pid = next(
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and script.encode() in read_or_empty(p / "cmdline")
        and b"egress_forwarder" not in read_or_empty(p / "cmdline")
    )
    parent = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return {
        "environ": needle in read_or_empty(Path(f"/proc/{pid}/environ")),
        "cmdline": needle in read_or_empty(Path(f"/proc/{pid}/cmdline")),
        "memory": needle in memory_of(pid),
        "files": any(needle in read_or_empty(f) for f in state.rglob("*") if f.is_file()),
        "forwarder": needle
        in read_or_empty(Path(f"/proc/{parent}/environ")) + read_or_empty(Path(f"/proc/{parent}/cmdline")),
    }


def read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def memory_of(pid: int) -> bytes:
    """Every readable mapping of a process, as root reads it (a memory dump)."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                memory.seek(start)
                chunks.append(memory.read(end - start))
            except (OSError, OverflowError, ValueError):
                continue  # [vvar] and the like
    return b"".join(chunks)


async def test_the_upstream_cannot_send_the_token_anywhere_else_and_each_attempt_is_audited(
    outside: Path, monkeypatch: pytest.MonkeyPatch, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    world = egress_world(outside, monkeypatch, api)
    placeholder = the_placeholder(world)
    caplog.set_level(logging.INFO, logger="credgate")
    transcript = Transcript()
    before = len(api.received)

    with anyio.fail_after(120):
        async with world.gateway() as gw, gw.running(), connect(gw, "g") as agent:
            await transcript.list_tools(agent)
            outcomes = {
                how: result_text(await transcript.call(agent, "eg_leak", {"how": how, "target": target}))
                for how, target in (
                    ("connect", OTHER),  # a host not declared, the token inside its TLS: the CONNECT is refused
                    ("query", f"{OTHER}:8080"),  # the placeholder in a plain request's query: seen and blocked
                    ("in-host", OTHER),  # the placeholder in the host name a CONNECT asks for
                    ("direct", f"127.0.0.1:{api.port}"),  # past the proxy, to the API's real address
                )
            }

    assert outcomes["connect"].startswith("failed: ") and outcomes["query"] == "answered 403"
    assert outcomes["in-host"].startswith("failed: ") and outcomes["direct"].startswith("failed: ")
    assert len(api.received) == before  # nothing reached the API (which also answers as OTHER)
    rows = [(r.tool, r.credential, r.outcome) for r in world.audit() if r.outcome.startswith("egress_")]
    assert sorted(rows) == sorted(
        [("eg", "tok", "egress_denied"), ("eg", "tok", "egress_blocked"), ("eg", "tok", "egress_blocked")]
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "blocked as an exfiltration attempt" in logged and "[placeholder]" in logged
    assert placeholder not in logged and TOKEN not in logged
    assert placeholder not in transcript.text()
    assert_no_leak(transcript.text() + logged, TOKEN)
    world.close()


async def test_an_egress_upstream_does_not_start_when_the_gateway_runs_without_sandboxes(
    outside: Path, monkeypatch: pytest.MonkeyPatch, api: Api
) -> None:
    world = egress_world(outside, monkeypatch, api)
    world.store.save_upstream_tools("eg", [{"name": "holds", "inputSchema": {"type": "object"}}])
    world.catalog = world.catalog.with_discovered(world.store.discovered_tools())
    world.settings = replace(world.settings, sandbox=False)

    with anyio.fail_after(60):
        async with world.gateway() as gw, gw.running(), connect(gw, "g") as agent:
            refused = await agent.call_tool("eg_holds", {})

    assert refused.is_error
    text = result_text(refused)
    assert text.startswith("upstream eg could not be started: ") and 'inject = "egress" needs the sandbox' in text
    assert "\n" not in text
    world.close()
