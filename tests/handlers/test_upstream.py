"""Upstream MCP servers (handler kind "mcp", issue 9): declarations, discovery, admin commands, and calls
through the gateway to a real MCP server (tests/support/upstream_server.py) over stdio and Streamable HTTP.

Nothing is mocked: the upstream is the SDK-built fixture server, run as a child process by the gateway
(stdio) or as a separate process listening on 127.0.0.1 (Streamable HTTP). The stdio declarations start it
through a small wrapper that appends a line to a counter file on every start, so a test can tell whether
(and how often) the gateway started an upstream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from mcp import Client
from mcp.client.stdio import stdio_client

from mcp_credgate import admin, people
from mcp_credgate.cli import cli
from mcp_credgate.config import Settings
from mcp_credgate.credential import Credential
from mcp_credgate.declarations import McpHandler, load_catalog
from mcp_credgate.handlers.upstream import upstream_pool
from mcp_credgate.isolation import UpstreamScope
from mcp_credgate.people import create_user
from mcp_credgate.server import NOT_READY_NOTE
from mcp_credgate.store import Store
from tests.support import SUPPORT_DIR
from tests.support.gateway import (
    Transcript,
    World,
    assert_no_leak,
    assert_no_leak_at_rest,
    closed_port,
    connect,
    listening_process,
    load_json,
    make_canary,
    result_text,
    store_env,
    teed_serve,
)
from tests.support.samples import WEATHER_KEY, write_tool
from tests.support.sandbox import host_pid, is_running

FIXTURE = SUPPORT_DIR / "upstream_server.py"
FIXTURE_TOOLS = ["crash", "echo_token", "environment", "pid", "session", "sleep", "token_hash"]
FIX_NAMES = [f"fix_{t}" for t in FIXTURE_TOOLS]

# What a stdio child may find in its environment besides the declared variables: the SDK's default set,
# LANG (passed through on purpose), LC_CTYPE, which Python itself adds when it coerces a C locale
# (PEP 538), and PWD, which bubblewrap sets to the sandbox's working directory (its home).
SDK_DEFAULT_ENV = {"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG"}
ADDED_ENV = {"LC_CTYPE", "PWD"}
DECLARED_ENV = {"UPSTREAM_TOKEN", "DECLARED_PLAIN"}

TOKEN_A = make_canary("UA", rich=True)
TOKEN_B = make_canary("UB")
GATEWAY_CANARY = make_canary("GW")

FIXTOKEN = '[credential]\ntype = "fixtoken"\nfields = [{ name = "token", kind = "token" }]\n'


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def toml_str(text: str | Path) -> str:
    return json.dumps(str(text))  # a JSON string is a valid TOML basic string


# -- the counting wrapper and declarations --------------------------------------------------------


def counting_wrapper(folder: Path) -> tuple[Path, Path]:
    """A script that records its start in a counter file, then becomes the fixture server (exec)."""
    folder.mkdir(parents=True, exist_ok=True)
    counter = folder / "starts.txt"
    wrapper = folder / "start_fixture.py"
    wrapper.write_text(
        "import os, sys\n"
        f"with open({str(counter)!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
        f"os.execv(sys.executable, [sys.executable, {str(FIXTURE)!r}, *sys.argv[1:]])\n",
        encoding="utf-8",
    )
    return wrapper, counter


def starts(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def stdio_decl(wrapper: Path, *, name: str = "fix", extra: str = "") -> str:
    """The wrapper runs in the upstream's sandbox: the fixture it becomes (in the repository) and the folder
    it counts its starts in (its own) are declared for it to read and write."""
    return (
        f'name = "{name}"\ndescription = "The fixture upstream."\n{FIXTOKEN}'
        f'[handler]\nkind = "mcp"\ncommand = {toml_str(sys.executable)}\nargs = [{toml_str(wrapper)}]\n'
        'env = { UPSTREAM_TOKEN = "{cred.token}", DECLARED_PLAIN = "declared-value" }\n'
        f"sandbox.read = [{toml_str(FIXTURE)}]\nsandbox.write = [{toml_str(wrapper.parent)}]\n"
        f"timeout = 2\n{extra}\n"
    )


def url_decl(url: str, *, name: str = "fix") -> str:
    return (
        f'name = "{name}"\ndescription = "The fixture upstream over HTTP."\n{FIXTOKEN}'
        f'[handler]\nkind = "mcp"\nurl = "{url}"\nheaders = {{ Authorization = "Bearer {{cred.token}}" }}\n'
        "timeout = 5\n"
    )


@pytest.fixture(scope="module")
def fixture_listings() -> list[dict[str, Any]]:
    """The fixture's tools as the pool discovers them (one real start, shared by the tests that only need
    a discovered catalog)."""
    handler = McpHandler(kind="mcp", command=sys.executable, args=(str(FIXTURE),))

    async def discover() -> list[dict[str, Any]]:
        with anyio.fail_after(30):
            async with upstream_pool() as pool:
                scope = UpstreamScope.for_discovery("fix", "d")
                tools, _ = await pool.discover(scope, handler, Credential("d", "fixtoken", {}, frozenset()))
                return tools

    listings = anyio.run(discover)
    assert sorted(t["name"] for t in listings) == FIXTURE_TOOLS
    return listings


def discovered_world(root: Path, tools: dict[str, str], listings: list[dict[str, Any]]) -> World:
    world = World.create(root, tools)
    for name in world.catalog.upstreams:
        world.store.save_upstream_tools(name, listings)
    world.catalog = world.catalog.with_discovered(world.store.discovered_tools())
    assert not world.catalog.problems, world.catalog.problems
    return world


async def wait_until_no_process_named(name: str) -> None:
    with anyio.fail_after(10):
        while is_running(name):
            await anyio.sleep(0.05)


async def wait_until_gone(pid: int) -> None:
    with anyio.fail_after(10):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            await anyio.sleep(0.05)


# -- declarations ---------------------------------------------------------------------------------


def test_valid_upstreams_load_as_upstreams_not_tools(tmp_path: Path) -> None:
    folder = tmp_path / "tools.d"
    write_tool(folder, "local.toml", stdio_decl(tmp_path / "w.py", name="local"))
    write_tool(folder, "remote.toml", url_decl("https://mcp.example.com/mcp", name="remote"))
    write_tool(folder, "loop.toml", url_decl("http://127.0.0.1:9/mcp", name="loop"))

    catalog = load_catalog([folder])

    assert catalog.problems == ()
    assert sorted(catalog.upstreams) == ["local", "loop", "remote"]
    assert dict(catalog.tools) == {}
    assert list(catalog.types) == ["fixtoken"]
    local = catalog.upstreams["local"].decl.handler
    assert isinstance(local, McpHandler)
    assert local.command == sys.executable and local.url is None
    assert local.env["UPSTREAM_TOKEN"] == "{cred.token}"
    remote = catalog.upstreams["remote"].decl.handler
    assert isinstance(remote, McpHandler)
    assert remote.url == "https://mcp.example.com/mcp" and remote.command is None
    assert remote.tool_name("remote", "search") == "remote_search"


BAD_HANDLERS = {
    "both": ('command = "srv"\nurl = "https://example.com/mcp"', "handler", "give exactly one of command"),
    "neither": ('env = { A = "b" }', "handler", "give exactly one of command"),
    "args_in_env": ('command = "srv"\nenv = { A = "{args.x}" }', "handler.env.A", "{args.*} cannot be used"),
    "args_in_args": ('command = "srv"\nargs = ["-n", "{args.x}"]', "handler.args[1]", "{args.*} cannot be used"),
    "args_in_headers": (
        'url = "https://example.com/mcp"\nheaders = { H = "{args.x}" }',
        "handler.headers.H",
        "{args.*} cannot be used",
    ),
    "missing_cred_field": (
        'command = "srv"\nenv = { A = "{cred.missing}" }',
        "handler.env.A",
        "{cred.missing} names a field that type 'fixtoken' lacks",
    ),
    "missing_cred_field_in_header": (
        'url = "https://example.com/mcp"\nheaders = { Authorization = "Bearer {cred.missing}" }',
        "handler.headers.Authorization",
        "{cred.missing} names a field",
    ),
    "placeholder_in_host": (
        'url = "https://{cred.token}.example.com/mcp"',
        "handler.url",
        "a placeholder in the scheme, host or port is not allowed",
    ),
    "placeholder_in_port": (
        'url = "https://example.com:{cred.token}/mcp"',
        "handler.url",
        "a placeholder in the scheme, host or port is not allowed",
    ),
    "unknown_isolation": ('command = "srv"\nisolation = "process"', "handler.isolation", "'group' or 'agent'"),
    "max_processes_zero": ('command = "srv"\nmax_processes = 0', "handler.max_processes", "at least 1"),
    "max_processes_text": ('command = "srv"\nmax_processes = "4"', "handler.max_processes", "a whole number"),
    "max_processes_fraction": ('command = "srv"\nmax_processes = 2.5', "handler.max_processes", "a whole number"),
    "max_processes_remote": (
        'url = "https://example.com/mcp"\nmax_processes = 4',
        "handler.max_processes",
        "a remote upstream (url) runs no process here",
    ),
    "slot_timeout_without_max_processes": (
        'command = "srv"\nslot_timeout = 5',
        "handler.slot_timeout",
        "no slot to wait for without max_processes",
    ),
    "slot_timeout_zero": (
        'command = "srv"\nmax_processes = 2\nslot_timeout = 0',
        "handler.slot_timeout",
        "greater than 0",
    ),
    "credential_over_plain_http": (
        'url = "http://mcp.example.com/mcp"\nheaders = { Authorization = "Bearer {cred.token}" }',
        "handler.url",
        "a credential may be sent only over https://",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_HANDLERS))
def test_bad_upstream_declarations_are_named_with_file_and_field(tmp_path: Path, case: str) -> None:
    body, where, message = BAD_HANDLERS[case]
    folder = tmp_path / "tools.d"
    path = write_tool(
        folder,
        "bad.toml",
        'name = "bad"\n[input_schema]\ntype = "object"\nproperties.x = { type = "string" }\n'
        f'{FIXTOKEN}[handler]\nkind = "mcp"\n{body}\n',
    )

    catalog = load_catalog([folder])

    assert any(p.startswith(f"{path}: {where}: ") and message in p for p in catalog.problems), catalog.problems
    assert "bad" not in catalog.upstreams and "bad" not in catalog.tools


def test_max_processes_and_slot_timeout_are_read_apart_from_the_sandboxs_own_limit(tmp_path: Path) -> None:
    folder = tmp_path / "tools.d"
    write_tool(folder, "plain.toml", stdio_decl(tmp_path / "w.py", name="plain"))
    extra = "max_processes = 4\nslot_timeout = 7.5\nsandbox.max_processes = 64"
    write_tool(folder, "capped.toml", stdio_decl(tmp_path / "w.py", name="capped", extra=extra))

    catalog = load_catalog([folder])

    assert catalog.problems == ()
    plain, capped = (catalog.upstreams[n].decl.handler for n in ("plain", "capped"))
    assert isinstance(plain, McpHandler) and isinstance(capped, McpHandler)
    assert (plain.max_processes, plain.slot_timeout, plain.slot_wait) == (None, None, plain.timeout)
    assert (capped.max_processes, capped.slot_timeout, capped.slot_wait) == (4, 7.5, 7.5)
    assert capped.sandbox is not None and capped.sandbox.max_processes == 64  # RLIMIT_NPROC in one sandbox


def test_isolation_is_group_unless_a_declaration_says_agent(tmp_path: Path) -> None:
    folder = tmp_path / "tools.d"
    write_tool(folder, "plain.toml", stdio_decl(tmp_path / "w.py", name="plain"))
    write_tool(folder, "per_agent.toml", stdio_decl(tmp_path / "w.py", name="per_agent", extra='isolation = "agent"'))

    catalog = load_catalog([folder])

    assert catalog.problems == ()
    plain, per_agent = (catalog.upstreams[n].decl.handler for n in ("plain", "per_agent"))
    assert isinstance(plain, McpHandler) and plain.isolation == "group"
    assert isinstance(per_agent, McpHandler) and per_agent.isolation == "agent"


def test_plain_http_without_a_credential_and_to_loopback_is_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "tools.d"
    write_tool(folder, "open.toml", 'name = "open"\n[handler]\nkind = "mcp"\nurl = "http://mcp.example.com/mcp"\n')
    write_tool(folder, "loop.toml", url_decl("http://localhost:8080/mcp", name="loop"))

    catalog = load_catalog([folder])

    assert catalog.problems == ()
    assert sorted(catalog.upstreams) == ["loop", "open"]


# -- discovery through `credgate tools` -----------------------------------------------------------


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def test_tools_discovers_the_upstream_once_and_caches_its_tools(
    run_cli: Any, tools_dir: Path, settings: Settings, tmp_path: Path
) -> None:
    wrapper, counter = counting_wrapper(tmp_path / "bin")
    write_tool(tools_dir, "fix.toml", stdio_decl(wrapper))
    ok(run_cli("init"))

    first = json.loads(ok(run_cli("tools", "--json")).stdout)

    rows = {t["name"]: t for t in first["tools"] if t["source"].endswith("fix.toml")}
    assert sorted(rows) == FIX_NAMES
    assert {(r["handler"], r["credential_type"]) for r in rows.values()} == {("mcp", "fixtoken")}
    assert rows["fix_token_hash"]["description"] == "A hash of the token this upstream was given."
    assert "weather" in {t["name"] for t in first["tools"]}  # the other declarations are still there
    assert first["problems"] == []
    assert first["credential_types"]["fixtoken"]["tools"] == FIX_NAMES
    assert starts(counter) == 1
    with closing(Store.open(settings)) as store:
        cached = store.discovered_tools()
    assert sorted(str(t["name"]) for t in cached["fix"]) == FIXTURE_TOOLS
    sleep_schema = next(t for t in cached["fix"] if t["name"] == "sleep")["inputSchema"]
    assert isinstance(sleep_schema, dict) and sleep_schema["required"] == ["seconds"]

    second = ok(run_cli("tools"))
    assert "fix_token_hash  [mcp]  credential type fixtoken" in second.stdout
    assert starts(counter) == 1  # answered from the cache: no process started

    ok(run_cli("tools", "--refresh"))
    assert starts(counter) == 2


def test_tools_reports_an_upstreams_max_processes(run_cli: Any, tools_dir: Path, tmp_path: Path) -> None:
    wrapper, _ = counting_wrapper(tmp_path / "bin")
    write_tool(tools_dir, "capped.toml", stdio_decl(wrapper, name="capped", extra="max_processes = 4"))
    write_tool(tools_dir, "open.toml", stdio_decl(wrapper, name="open"))

    data = json.loads(run_cli("tools", "--json").stdout)
    text = run_cli("tools").stdout

    assert {u["name"]: u["max_processes"] for u in data["upstreams"]} == {"capped": 4, "open": None}
    assert "upstream capped  [stdio]  sandbox: on  max_processes: 4\n" in text
    assert "upstream open  [stdio]  sandbox: on\n" in text


def test_tools_applies_the_allow_list_and_the_prefix(run_cli: Any, tools_dir: Path, tmp_path: Path) -> None:
    wrapper, counter = counting_wrapper(tmp_path / "bin")
    write_tool(tools_dir, "fix.toml", stdio_decl(wrapper, extra='tools = ["token_hash", "pid", "not_there"]'))
    write_tool(tools_dir, "other.toml", stdio_decl(wrapper, name="other", extra='prefix = "up"'))
    ok(run_cli("init"))

    data = json.loads(ok(run_cli("tools", "--json")).stdout)

    names = {t["name"] for t in data["tools"] if t["handler"] == "mcp"}
    assert names == {"fix_pid", "fix_token_hash", *(f"up_{t}" for t in FIXTURE_TOOLS)}
    assert data["problems"] == []
    assert starts(counter) == 2


def test_an_upstream_that_cannot_start_is_a_problem_line_not_a_traceback(
    run_cli: Any, tools_dir: Path, tmp_path: Path
) -> None:
    gone = write_tool(
        tools_dir,
        "gone.toml",
        f'name = "gone"\n{FIXTOKEN}[handler]\nkind = "mcp"\ncommand = {toml_str(tmp_path / "no-such-server")}\n',
    )
    hang = write_tool(
        tools_dir,
        "hang.toml",
        f'name = "hang"\n[handler]\nkind = "mcp"\ncommand = {toml_str(sys.executable)}\n'
        'args = ["-c", "import time; time.sleep(30)"]\nstart_timeout = 1\n',
    )
    ok(run_cli("init"))

    started = time.monotonic()
    result = run_cli("tools", "--check")

    assert time.monotonic() - started < 20
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2, result.stderr
    assert any(
        line.startswith(f"problem: {gone}: upstream gone: ") and "could not be started" in line for line in problems
    ), problems
    assert any(
        line.startswith(f"problem: {hang}: upstream hang: ") and "did not start in time" in line for line in problems
    ), problems
    assert "weather  [http]" in result.stdout  # the rest is still listed


# -- admin: allow, deny, bind ---------------------------------------------------------------------


def test_group_allow_deny_and_bind_for_an_upstream(
    run_cli: Any, tools_dir: Path, settings: Settings, tmp_path: Path, fixture_listings: list[dict[str, Any]]
) -> None:
    wrapper, counter = counting_wrapper(tmp_path / "bin")
    write_tool(tools_dir, "fix.toml", stdio_decl(wrapper))
    ok(run_cli("init"))
    with closing(Store.open(settings)) as store:
        store.save_upstream_tools("fix", fixture_listings)
    ok(run_cli("cred", "add", "tok", "--type", "fixtoken", "--set", f"token={TOKEN_B}"))
    ok(run_cli("cred", "add", "wk", "--tool", "weather", "--set", f"api_key={WEATHER_KEY}"))
    for group in ("all", "alias", "some", "none"):
        ok(run_cli("group", "add", group))

    ok(run_cli("group", "allow", "all", "fix.*"))
    ok(run_cli("group", "allow", "alias", "fix_*"))
    ok(run_cli("group", "allow", "some", "fix_pid", "fix_token_hash"))
    whole = run_cli("group", "allow", "none", "fix")
    assert whole.exit_code == 1 and "fix.*" in whole.output
    unknown = run_cli("group", "allow", "none", "nope.*")
    assert unknown.exit_code == 1 and "nope" in unknown.output

    def show(group: str) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = json.loads(ok(run_cli("group", "show", group, "--json")).stdout)["tools"]
        return tools

    assert show("all") == [
        {
            "tool": "fix.*",
            "status": "needs_credential",
            "credential": None,
            "credential_type": "fixtoken",
            "missing_fields": ["token"],
            "scope": "shared",
            "approval": None,
        },
    ]
    assert [t["tool"] for t in show("alias")] == ["fix.*"]  # the alias is stored as NAME.*
    assert sorted(t["tool"] for t in show("some")) == ["fix_pid", "fix_token_hash"]

    refused = run_cli("bind", "all", "fix", "wk")
    assert refused.exit_code == 1 and "weatherkey" in refused.output and "fixtoken" in refused.output
    not_allowed = run_cli("bind", "none", "fix", "tok")
    assert not_allowed.exit_code == 1 and "allows no tool of 'fix'" in not_allowed.output

    ok(run_cli("bind", "all", "fix", "tok"))
    ok(run_cli("bind", "some", "fix_pid", "tok"))  # one of its tools binds the whole upstream

    assert show("all") == [
        {
            "tool": "fix.*",
            "status": "ready",
            "credential": "tok",
            "credential_type": "fixtoken",
            "missing_fields": [],
            "scope": "shared",
            "approval": None,
        },
    ]
    assert {t["tool"]: (t["status"], t["credential"]) for t in show("some")} == {
        "fix_pid": ("ready", "tok"),
        "fix_token_hash": ("ready", "tok"),
    }
    with closing(Store.open(settings)) as store:
        assert store.upstream_bindings("all") == {"fix": "tok"}
        assert store.upstream_bindings("some") == {"fix": "tok"}
        assert store.binding("all", "fix_sleep", "fix").credential == "tok"
        assert store.binding("some", "fix_sleep", "fix").allowed is False

    ok(run_cli("unbind", "some", "fix"))
    assert {t["status"] for t in show("some")} == {"needs_credential"}
    ok(run_cli("group", "deny", "alias", "fix_*"))
    assert show("alias") == []

    ok(run_cli("bind", "some", "fix", "tok"))
    ok(run_cli("group", "deny", "some", "fix_pid"))  # another of its tools is still allowed: the binding stays
    assert [(t["tool"], t["credential"]) for t in show("some")] == [("fix_token_hash", "tok")]

    denied = ok(run_cli("group", "deny", "all", "fix.*"))  # nothing of the upstream left: its binding goes
    assert "unbound: fix" in denied.stdout
    with closing(Store.open(settings)) as store:
        assert store.upstream_bindings("all") == {}
    ok(run_cli("group", "allow", "all", "fix_pid"))
    assert [(t["tool"], t["status"]) for t in show("all")] == [("fix_pid", "needs_credential")]
    assert starts(counter) == 0  # none of this starts the upstream


# -- the gateway in-process, stdio upstream ---------------------------------------------------------


@pytest.fixture
def stdio_world(tmp_path: Path, fixture_listings: list[dict[str, Any]]) -> Iterator[tuple[World, Path]]:
    wrapper, counter = counting_wrapper(tmp_path / "bin")
    world = discovered_world(tmp_path / "w", {"fix": stdio_decl(wrapper)}, fixture_listings)
    world.add_credential("tok-a", "fixtoken", {"token": TOKEN_A})
    world.add_credential("tok-b", "fixtoken", {"token": TOKEN_B})
    world.allow("ga", "fix.*")
    world.bind("ga", "fix", "tok-a")
    world.allow("gb", "fix_*")
    world.bind("gb", "fix", "tok-b")
    yield world, counter
    world.close()


@pytest.mark.anyio
async def test_two_groups_each_reach_their_own_stdio_upstream(
    stdio_world: tuple[World, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    world, counter = stdio_world
    master_key = world.settings.key_path.read_text().strip()
    monkeypatch.setenv("CREDGATE_MASTER_KEY", master_key)  # the gateway's own key: it must not reach the child
    monkeypatch.setenv("GATEWAY_ONLY_CANARY", GATEWAY_CANARY)
    transcript = Transcript()

    with anyio.fail_after(40):
        async with world.gateway() as gw, gw.running(), connect(gw, "ga") as a, connect(gw, "gb") as b:
            listing = await transcript.list_tools(a)
            hash_a = await transcript.call(a, "fix_token_hash")
            hash_b = await transcript.call(b, "fix_token_hash")
            pid_a = host_pid(result_text(await transcript.call(a, "fix_pid")))
            pid_b = host_pid(result_text(await transcript.call(b, "fix_pid")))
            echo_a = await transcript.call(a, "fix_echo_token", {"note": "n:"})
            echo_b = await transcript.call(b, "fix_echo_token", {})
            env_a = await transcript.call(a, "fix_environment")
            bad_args = await transcript.call(a, "fix_sleep", {"seconds": "long"})
            assert starts(counter) == 2  # one process per credential, reused for every later call

        await wait_until_gone(pid_a)  # stopped with the gateway
        await wait_until_gone(pid_b)

    assert sorted(t.name for t in listing.tools) == FIX_NAMES
    sleep_tool = next(t for t in listing.tools if t.name == "fix_sleep")
    assert sleep_tool.input_schema["required"] == ["seconds"]  # re-advertised as the upstream gave it
    assert not hash_a.is_error and result_text(hash_a) == sha256(TOKEN_A)
    assert not hash_b.is_error and result_text(hash_b) == sha256(TOKEN_B)
    assert pid_a != pid_b
    assert result_text(echo_a) == "n:token=[redacted:token]"
    assert result_text(echo_b) == "token=[redacted:token]"
    assert bad_args.is_error and "seconds" in result_text(bad_args)  # checked before forwarding
    assert result_text(bad_args).startswith("Invalid arguments for tool fix_sleep")

    env = load_json(env_a)
    assert set(env) <= SDK_DEFAULT_ENV | ADDED_ENV | DECLARED_ENV, sorted(env)
    assert env["DECLARED_PLAIN"] == "declared-value"
    assert env["UPSTREAM_TOKEN"] == "[redacted:token]"
    assert "CREDGATE_MASTER_KEY" not in env and "GATEWAY_ONLY_CANARY" not in env
    everything = transcript.text()
    assert_no_leak(everything, TOKEN_A, TOKEN_B, master_key, GATEWAY_CANARY)


# -- isolation: one upstream per (server, credential, group), or per agent -----------------------------


def shared_credential_world(root: Path, listings: list[dict[str, Any]], *, extra: str = "") -> tuple[World, Path]:
    """Groups ga and gb, both bound to the one credential tok-a (TOKEN_A)."""
    wrapper, counter = counting_wrapper(root / "bin")
    world = discovered_world(root / "w", {"fix": stdio_decl(wrapper, extra=extra)}, listings)
    world.add_credential("tok-a", "fixtoken", {"token": TOKEN_A})
    for group in ("ga", "gb"):
        world.allow(group, "fix.*")
        world.bind(group, "fix", "tok-a")
    return world, counter


async def process_of(client: Client) -> str:
    """The name the upstream process serving this client gave itself (in its sandbox, its pid is its own
    namespace's: the same in every process)."""
    return result_text(await client.call_tool("fix_pid", {}))


@pytest.mark.anyio
async def test_two_groups_bound_to_the_same_credential_get_two_upstream_processes(
    tmp_path: Path, fixture_listings: list[dict[str, Any]]
) -> None:
    world, counter = shared_credential_world(tmp_path, fixture_listings)
    try:
        with anyio.fail_after(40):
            async with (
                world.gateway() as gw,
                gw.running(),
                connect(gw, "ga", agent="alice") as alice,
                connect(gw, "ga", agent="ann") as ann,
                connect(gw, "gb", agent="bob") as bob,
            ):
                pids = {name: await process_of(c) for name, c in (("alice", alice), ("ann", ann), ("bob", bob))}
                hashes = {result_text(await c.call_tool("fix_token_hash", {})) for c in (alice, bob)}
                again = await process_of(alice)
    finally:
        world.close()

    assert pids["alice"] == pids["ann"] == again  # one group: one process, whichever of its agents calls
    assert pids["bob"] != pids["alice"]  # the same credential does not make two groups share one
    assert hashes == {sha256(TOKEN_A)}
    assert starts(counter) == 2


@pytest.mark.anyio
async def test_a_process_started_to_list_tools_never_serves_a_group(tmp_path: Path) -> None:
    wrapper, counter = counting_wrapper(tmp_path / "bin")
    handler = McpHandler.model_validate(
        {
            "kind": "mcp",
            "command": sys.executable,
            "args": [str(wrapper)],
            "env": {"UPSTREAM_TOKEN": "{cred.token}"},
            "sandbox": {"read": [str(FIXTURE)], "write": [str(wrapper.parent)]},  # as stdio_decl declares it
        }
    )
    credential = Credential("tok-a", "fixtoken", {"token": TOKEN_A}, frozenset({"token"}))
    with anyio.fail_after(30):
        async with upstream_pool() as pool:
            listed, _ = await pool.discover(UpstreamScope.for_discovery("fix", "tok-a"), handler, credential)
            called = await pool.call(UpstreamScope("fix", "tok-a", "ga"), handler, "token_hash", {}, credential)
            listed_for_ga, _ = await pool.discover(UpstreamScope("fix", "tok-a", "ga"), handler, credential)

    assert sorted(t["name"] for t in listed) == sorted(t["name"] for t in listed_for_ga) == FIXTURE_TOOLS
    assert result_text(called) == sha256(TOKEN_A)
    assert starts(counter) == 2  # discovery's own, then the group's (which also lists for the group)


@pytest.mark.anyio
async def test_isolation_agent_gives_each_agent_of_a_group_its_own_process(
    tmp_path: Path, fixture_listings: list[dict[str, Any]]
) -> None:
    world, counter = shared_credential_world(tmp_path, fixture_listings, extra='isolation = "agent"')
    try:
        with anyio.fail_after(40):
            async with world.gateway() as gw, gw.running():
                async with connect(gw, "ga", agent="alice") as alice, connect(gw, "ga", agent="bob") as bob:
                    first = {"alice": await process_of(alice), "bob": await process_of(bob)}
                async with connect(gw, "ga", agent="alice") as alice_again:  # a new connection, the same agent
                    alice_later = await process_of(alice_again)
                async with connect(gw, "ga") as one, connect(gw, "ga") as other, connect(gw, "gb") as elsewhere:
                    anonymous = {await process_of(one), await process_of(other)}
                    other_group = await process_of(elsewhere)
    finally:
        world.close()

    assert first["alice"] != first["bob"]
    assert alice_later == first["alice"]
    assert len(anonymous) == 1  # callers without an agent name (stdio) are one agent of their group
    assert anonymous.isdisjoint(first.values()) and other_group not in anonymous | set(first.values())
    assert starts(counter) == 4


@pytest.mark.anyio
async def test_a_changed_credential_restarts_and_idle_reaping_stops_each_groups_upstream_on_its_own(
    tmp_path: Path, fixture_listings: list[dict[str, Any]]
) -> None:
    world, counter = shared_credential_world(tmp_path, fixture_listings, extra="idle_timeout = 1.5")
    try:
        with anyio.fail_after(40):
            async with world.gateway() as gw, gw.running(), connect(gw, "ga") as a, connect(gw, "gb") as b:
                before = (await process_of(a), await process_of(b))
                world.store.update_credential("tok-a", {"token": TOKEN_B}, frozenset({"token"}))
                hashes = [result_text(await c.call_tool("fix_token_hash", {})) for c in (a, b)]
                after = (await process_of(a), await process_of(b))
                for name in before:
                    await wait_until_no_process_named(name)

                began = time.monotonic()  # gb keeps calling, ga stays idle
                while time.monotonic() - began < 4:
                    assert await process_of(b) == after[1]
                    await anyio.sleep(0.3)
                await wait_until_no_process_named(after[0])
                ga_again = await process_of(a)
    finally:
        world.close()

    assert hashes == [sha256(TOKEN_B)] * 2
    assert len(set(before + after)) == 4
    assert ga_again not in before + after
    assert starts(counter) == 5


@pytest.mark.anyio
async def test_an_upstream_never_listed_is_listed_at_a_groups_first_tools_list_with_its_credential(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Declared, but `credgate tools` never run: the first tools/list of a group with a bound credential
    starts the upstream with it, lists and caches its tools; a group with nothing bound starts nothing."""
    caplog.set_level(logging.INFO, logger="credgate")
    wrapper, counter = counting_wrapper(tmp_path / "bin")
    world = World.create(tmp_path / "w", {"fix": stdio_decl(wrapper)})
    world.add_credential("tok-a", "fixtoken", {"token": TOKEN_A})
    world.allow("ga", "fix.*")
    world.bind("ga", "fix", "tok-a")
    world.allow("gn", "fix.*")
    transcript = Transcript()

    with anyio.fail_after(40):
        async with world.gateway() as gw, gw.running():
            async with connect(gw, "gn") as unbound:
                assert (await transcript.list_tools(unbound)).tools == []
            assert starts(counter) == 0
            async with connect(gw, "ga") as a:
                listing = await transcript.list_tools(a)
                token_hash = await transcript.call(a, "fix_token_hash")
            assert starts(counter) == 1  # the process that listed the tools serves the call
            async with connect(gw, "gn") as unbound:
                unbound_listing = await transcript.list_tools(unbound)

    assert sorted(t.name for t in listing.tools) == FIX_NAMES
    assert result_text(token_hash) == sha256(TOKEN_A)
    assert sorted(t.name for t in unbound_listing.tools) == FIX_NAMES  # listed now, but not set up for gn
    assert all((t.description or "").endswith(NOT_READY_NOTE) for t in unbound_listing.tools)
    assert sorted(world.store.discovered_tools()) == ["fix"]  # cached for the next start
    assert "listed its 7 tools" in caplog.text
    assert_no_leak(transcript.text() + caplog.text, TOKEN_A)
    world.close()


@pytest.mark.anyio
async def test_an_upstream_that_cannot_be_listed_is_logged_and_not_retried_at_every_listing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="credgate")
    world = World.create(tmp_path / "w", {"fix": stdio_decl(tmp_path / "no-such-program.py")})
    world.add_credential("tok-a", "fixtoken", {"token": TOKEN_A})
    world.allow("ga", "fix.*")
    world.bind("ga", "fix", "tok-a")

    with anyio.fail_after(40):
        async with world.gateway() as gw, gw.running(), connect(gw, "ga") as a:
            first = await a.list_tools()
            second = await a.list_tools()

    assert first.tools == [] and second.tools == []
    failures = [r for r in caplog.records if "could not be listed for group ga" in r.getMessage()]
    assert len(failures) == 1, caplog.text
    assert_no_leak(caplog.text, TOKEN_A)
    world.close()


@pytest.mark.anyio
async def test_a_killed_or_hung_stdio_upstream_does_not_break_the_next_call(
    stdio_world: tuple[World, Path],
) -> None:
    world, counter = stdio_world
    transcript = Transcript()

    with anyio.fail_after(40):
        async with world.gateway() as gw, gw.running(), connect(gw, "ga") as a:
            first = host_pid(result_text(await transcript.call(a, "fix_pid")))
            os.kill(first, signal.SIGKILL)
            await wait_until_gone(first)
            after_kill = await transcript.call(a, "fix_pid")
            second = host_pid(result_text(after_kill))
            assert starts(counter) == 2

            began = time.monotonic()
            slow = await transcript.call(a, "fix_sleep", {"seconds": 6})
            waited = time.monotonic() - began
            after_timeout = await transcript.call(a, "fix_token_hash")

            crashed = await transcript.call(a, "fix_crash")
            starts_after_crash = starts(counter)
            after_crash = await transcript.call(a, "fix_pid")
            third = host_pid(result_text(after_crash))

    assert not after_kill.is_error and second != first
    assert slow.is_error and result_text(slow) == "upstream fix did not answer within 2 s"
    assert 1.5 < waited < 5
    assert not after_timeout.is_error and result_text(after_timeout) == sha256(TOKEN_A)
    assert crashed.is_error and "closed the connection during the request" in result_text(crashed)
    assert starts_after_crash == 2  # the call that ended its process is not sent again to a new one
    assert not after_crash.is_error and third not in (first, second)
    assert_no_leak(transcript.text(), TOKEN_A)


@pytest.mark.anyio
async def test_a_missing_binding_warns_without_starting_and_other_tools_are_unknown(
    tmp_path: Path, fixture_listings: list[dict[str, Any]]
) -> None:
    wrapper, counter = counting_wrapper(tmp_path / "bin")
    world = discovered_world(tmp_path / "w", {"fix": stdio_decl(wrapper)}, fixture_listings)
    world.add_credential("tok-a", "fixtoken", {"token": TOKEN_A})
    world.allow("unbound", "fix.*")
    world.allow("narrow", "fix_token_hash")
    world.bind("narrow", "fix_token_hash", "tok-a")
    transcript = Transcript()
    try:
        with anyio.fail_after(30):
            async with (
                world.gateway() as gw,
                gw.running(),
                connect(gw, "unbound") as u,
                connect(gw, "narrow") as n,
            ):
                unbound_listing = await transcript.list_tools(u)
                warned = await transcript.call(u, "fix_pid")
                narrow_listing = await transcript.list_tools(n)
                refused = await transcript.call_refused(n, "fix_pid")
                assert starts(counter) == 0
                allowed = await transcript.call(n, "fix_token_hash")
    finally:
        world.close()

    assert sorted(t.name for t in unbound_listing.tools) == FIX_NAMES
    assert all(t.description is not None and t.description.endswith(NOT_READY_NOTE) for t in unbound_listing.tools)
    assert warned.is_error
    assert warned.structured_content == {
        "warning": "missing_credential",
        "tool": "fix_pid",
        "group": "unbound",
        "credential_type": "fixtoken",
        "missing_fields": ["token"],
        "setup_url": "http://127.0.0.1:8765/groups/unbound/tools/fix_pid/setup",
        "setup_command": "credgate cred add <name> --tool fix_pid && credgate bind unbound fix_pid <name>",
    }
    assert [t.name for t in narrow_listing.tools] == ["fix_token_hash"]
    assert refused.message == "Unknown tool: fix_pid"
    assert result_text(allowed) == sha256(TOKEN_A)
    assert starts(counter) == 1
    assert_no_leak(transcript.text(), TOKEN_A)


# -- the gateway in-process, Streamable HTTP upstream -----------------------------------------------


@pytest.fixture
def http_fixture(tmp_path: Path) -> Iterator[str]:
    """The fixture server on Streamable HTTP at 127.0.0.1:PORT/mcp; yields its URL."""
    port = closed_port()
    args = [sys.executable, str(FIXTURE), "http", str(port)]
    with listening_process(args, port, tmp_path / "http_fixture.log", start_timeout=20):
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.mark.anyio
async def test_two_groups_reach_a_streamable_http_upstream_with_their_own_token(
    tmp_path: Path, http_fixture: str
) -> None:
    world = World.create(tmp_path / "w", {"fix": url_decl(http_fixture)})
    world.add_credential("tok-a", "fixtoken", {"token": TOKEN_A})
    world.add_credential("tok-b", "fixtoken", {"token": TOKEN_B})
    paths = world.cli_paths
    with anyio.fail_after(30):  # discovery over HTTP by the real command, with a credential to send
        discovery = await anyio.to_thread.run_sync(
            lambda: CliRunner().invoke(cli, [*paths, "tools", "--json", "--discover-with", "tok-a"])
        )
    assert discovery.exit_code == 0, discovery.output
    assert json.loads(discovery.stdout)["problems"] == []
    listings = world.store.discovered_tools()["fix"]
    world.catalog = world.catalog.with_discovered(world.store.discovered_tools())
    world.allow("ga", "fix.*")
    world.bind("ga", "fix", "tok-a")
    world.allow("gb", "fix_token_hash", "fix_echo_token")
    world.bind("gb", "fix", "tok-b")
    transcript = Transcript()
    try:
        with anyio.fail_after(30):
            async with world.gateway() as gw, gw.running(), connect(gw, "ga") as a, connect(gw, "gb") as b:
                hash_a = await transcript.call(a, "fix_token_hash")
                hash_b = await transcript.call(b, "fix_token_hash")
                again_a = await transcript.call(a, "fix_token_hash")
                echo_a = await transcript.call(a, "fix_echo_token", {"note": "a:"})
                echo_b = await transcript.call(b, "fix_echo_token", {"note": "b:"})
                refused = await transcript.call_refused(b, "fix_pid")
    finally:
        world.close()

    assert sorted(str(t["name"]) for t in listings) == FIXTURE_TOOLS
    assert result_text(hash_a) == result_text(again_a) == sha256(TOKEN_A)
    assert result_text(hash_b) == sha256(TOKEN_B)
    assert result_text(echo_a) == "a:token=[redacted:token]"
    assert result_text(echo_b) == "b:token=[redacted:token]"
    assert refused.message == "Unknown tool: fix_pid"
    assert_no_leak(transcript.text(), TOKEN_A, TOKEN_B)


@pytest.mark.anyio
async def test_two_groups_bound_to_the_same_credential_get_two_remote_upstream_sessions(
    tmp_path: Path, http_fixture: str, fixture_listings: list[dict[str, Any]]
) -> None:
    world = discovered_world(tmp_path / "w", {"fix": url_decl(http_fixture)}, fixture_listings)
    world.add_credential("tok-a", "fixtoken", {"token": TOKEN_A})
    for group in ("ga", "gb"):
        world.allow(group, "fix.*")
        world.bind(group, "fix", "tok-a")
    try:
        with anyio.fail_after(30):
            async with (
                world.gateway() as gw,
                gw.running(),
                connect(gw, "ga", agent="alice") as alice,
                connect(gw, "ga", agent="ann") as ann,
                connect(gw, "gb", agent="bob") as bob,
            ):
                sessions = {
                    who: result_text(await c.call_tool("fix_session", {}))
                    for who, c in (("alice", alice), ("ann", ann), ("bob", bob))
                }
    finally:
        world.close()

    assert sessions["alice"] == sessions["ann"] != sessions["bob"]
    assert "none" not in sessions.values()


# -- a real `credgate serve` process ----------------------------------------------------------------


@pytest.mark.anyio
async def test_credgate_serve_fronts_a_stdio_upstream_without_leaking(tmp_path: Path) -> None:
    wrapper, counter = counting_wrapper(tmp_path / "bin")
    world = World.create(tmp_path / "w", {"fix": stdio_decl(wrapper)})
    world.add_credential("tok-a", "fixtoken", {"token": TOKEN_A})
    master_key = world.settings.key_path.read_text().strip()
    paths = world.cli_paths
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CREDGATE_")}
    # the gateway's own secrets (on PostgreSQL, the database URL too), never an upstream's
    secrets_env = {
        "CREDGATE_MASTER_KEY": master_key,
        "GATEWAY_ONLY_CANARY": GATEWAY_CANARY,
        **store_env(world.settings),
    }
    discovery = subprocess.run(
        [sys.executable, "-m", "mcp_credgate", "tools", "--json", *paths],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base_env, **secrets_env},
        cwd=tmp_path,
    )
    assert discovery.returncode == 0, discovery.stderr
    assert {t["name"] for t in json.loads(discovery.stdout)["tools"]} == set(FIX_NAMES)
    world.allow("desk", "fix.*")
    world.bind("desk", "fix", "tok-a")
    world.close()

    stdout_copy, stderr_file = tmp_path / "stdout.bin", tmp_path / "stderr.txt"
    params = teed_serve(world, stdout_copy, secrets_env, "--group", "desk")
    transcript = Transcript()
    with stderr_file.open("w") as errlog, anyio.fail_after(40):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            listing = await transcript.list_tools(client)
            hashed = await transcript.call(client, "fix_token_hash")
            echoed = await transcript.call(client, "fix_echo_token", {"note": "n:"})
            env_result = await transcript.call(client, "fix_environment")
            pid = host_pid(result_text(await transcript.call(client, "fix_pid")))
        await wait_until_gone(pid)  # the upstream ends with the server

    assert sorted(t.name for t in listing.tools) == FIX_NAMES
    assert result_text(hashed) == sha256(TOKEN_A)
    assert result_text(echoed) == "n:token=[redacted:token]"
    env = load_json(env_result)
    assert set(env) <= SDK_DEFAULT_ENV | ADDED_ENV | DECLARED_ENV, sorted(env)
    assert "CREDGATE_MASTER_KEY" not in env and "GATEWAY_ONLY_CANARY" not in env
    assert starts(counter) == 2  # one for discovery, one for the served calls

    received = stdout_copy.read_bytes().decode("utf-8")
    assert "[redacted:token]" in received and sha256(TOKEN_A) in received
    stderr = stderr_file.read_text()
    for text in (received, stderr, transcript.text()):
        assert_no_leak(text, TOKEN_A, master_key, GATEWAY_CANARY)
    assert_no_leak_at_rest(world.settings, TOKEN_A, GATEWAY_CANARY)


@pytest.mark.anyio
async def test_a_personal_upstream_starts_each_member_with_their_own_token_and_asks_others_for_theirs(
    tmp_path: Path, fixture_listings: list[dict[str, Any]]
) -> None:
    wrapper, counter = counting_wrapper(tmp_path / "bin")
    world = discovered_world(tmp_path / "w", {"fix": stdio_decl(wrapper)}, fixture_listings)
    try:
        for user, token in (("alice", TOKEN_A), ("bob", TOKEN_B)):
            create_user(world.store, user)
            world.store.add_credential(f"{user}-tok", "fixtoken", {"token": token}, frozenset({"token"}), owner=user)
        world.store.add_group("ga")
        world.store.add_members("ga", ["alice", "bob"])
        admin.allow(world.store, world.catalog, "ga", ["fix.*"], personal=True)
        for user in ("alice", "bob"):
            people.bind_personal(world.store, world.catalog, "ga", "fix.*", f"{user}-tok", user)
        with anyio.fail_after(40):
            async with world.gateway() as gw, gw.running():
                hashes = {}
                for user in ("alice", "bob"):
                    async with connect(gw, "ga", user=user) as client:
                        hashes[user] = result_text(await client.call_tool("fix_token_hash", {}))
                async with connect(gw, "ga") as nobody:
                    unnamed = await nobody.call_tool("fix_token_hash", {})
    finally:
        world.close()

    assert hashes == {"alice": sha256(TOKEN_A), "bob": sha256(TOKEN_B)}
    assert starts(counter) == 2
    assert unnamed.is_error and (unnamed.structured_content or {})["warning"] == "user_required"


def test_denying_every_tool_of_a_personal_upstream_removes_its_members_bindings(
    tmp_path: Path, fixture_listings: list[dict[str, Any]]
) -> None:
    world = discovered_world(tmp_path / "w", {"fix": stdio_decl(tmp_path / "unused")}, fixture_listings)
    try:
        create_user(world.store, "alice")
        world.store.add_credential("alice-tok", "fixtoken", {"token": TOKEN_A}, frozenset({"token"}), owner="alice")
        world.store.add_group("ga")
        world.store.add_members("ga", ["alice"])
        admin.allow(world.store, world.catalog, "ga", ["fix.*"], personal=True)
        people.bind_personal(world.store, world.catalog, "ga", "fix_pid", "alice-tok", "alice")

        unbound = admin.deny(world.store, world.catalog, "ga", ["fix.*"])

        assert unbound == ["fix"]
        assert world.store.personal_bindings("ga") == {}
    finally:
        world.close()
