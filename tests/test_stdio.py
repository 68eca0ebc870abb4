"""`credgate serve --group G` as a real subprocess, driven by the MCP SDK's stdio client.

The server's stdout passes through `tests/support/stdout_tee.py`, so the test holds every byte the client received;
its stderr goes to a file. Both are scanned for the canaries.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_credgate.server import NOT_READY_NOTE
from tests.support.gateway import (
    TOKEN_FIELDS,
    Transcript,
    Upstream,
    World,
    assert_no_leak,
    assert_no_leak_at_rest,
    credgate_env,
    http_tool,
    make_canary,
    python_tool,
    result_text,
    store_env,
    teed_serve,
)

pytestmark = pytest.mark.anyio

TOKEN = make_canary("IO", rich=True)
OTHER_TOKEN = make_canary("IX")
HANDLERS = """
def explode(args, credential):
    raise RuntimeError("rejected " + credential["token"])
"""


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream) -> Iterator[World]:
    svc = 'type = "svc"\n' + TOKEN_FIELDS
    tools = {
        "whoami": http_tool(
            "whoami",
            upstream.url("/echo"),
            query='{ n = "{args.n}" }',
            properties='properties.n = { type = "integer" }',
        ),
        "explode": python_tool("explode", "stdio_handlers:explode", credential=svc),
        "unbound": http_tool("unbound", upstream.url("/echo"), credential='type = "other"\n' + TOKEN_FIELDS),
        "hidden": http_tool("hidden", upstream.url("/echo")),
    }
    w = World.create(tmp_path, tools, files={"stdio_handlers.py": HANDLERS})
    w.add_credential("svc-main", "svc", {"token": TOKEN})
    w.add_credential("svc-other", "svc", {"token": OTHER_TOKEN})
    w.allow("desk", "whoami", "explode", "unbound")
    w.bind("desk", "whoami", "svc-main")
    w.bind("desk", "explode", "svc-main")
    w.allow("elsewhere", "hidden")
    w.bind("elsewhere", "hidden", "svc-other")
    yield w
    w.close()


def serve_args(world: World, *extra: str) -> list[str]:
    return ["-m", "mcp_credgate", "serve", *extra, *world.cli_paths]


async def test_serve_over_stdio_runs_the_groups_tools_without_leaking(
    world: World, upstream: Upstream, tmp_path: Path
) -> None:
    stdout_copy, stderr_file = tmp_path / "stdout.bin", tmp_path / "stderr.txt"
    params = teed_serve(world, stdout_copy, store_env(world.settings), "--group", "desk")
    transcript = Transcript()
    with stderr_file.open("w") as errlog, anyio.fail_after(30):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            listing = await transcript.list_tools(client)
            called = await transcript.call(client, "whoami", {"n": 5})
            warned = await transcript.call(client, "unbound", {})
            failed = await transcript.call(client, "explode", {})
            bad = await transcript.call(client, "whoami", {"n": "five"})
            unknown = await transcript.call_refused(client, "hidden", {})

    tools = {t.name: t for t in listing.tools}
    assert sorted(tools) == ["explode", "unbound", "whoami"]
    assert (tools["unbound"].description or "").endswith(NOT_READY_NOTE)
    assert tools["whoami"].input_schema == world.catalog.tools["whoami"].decl.input_schema

    [seen] = upstream.seen()
    assert seen.header("Authorization") == f"Bearer {TOKEN}"
    assert seen.query == {"n": "5"}
    assert not called.is_error
    assert called.structured_content is not None
    assert called.structured_content["headers"]["authorization"] == "Bearer [redacted:token]"

    assert warned.is_error
    assert warned.structured_content == {
        "warning": "missing_credential",
        "tool": "unbound",
        "group": "desk",
        "credential_type": "other",
        "missing_fields": ["token"],
        "setup_url": "http://127.0.0.1:8765/groups/desk/tools/unbound/setup",
        "setup_command": "credgate cred add <name> --tool unbound && credgate bind desk unbound <name>",
    }
    assert bad.is_error and "'n'" in result_text(bad)
    assert unknown.message == "Unknown tool: hidden"

    match = re.search(r"ref: ([0-9a-f]+)", result_text(failed))
    assert failed.is_error and match is not None
    stderr = stderr_file.read_text()
    assert match.group(1) in stderr and "[redacted:token]" in stderr

    received = stdout_copy.read_bytes().decode("utf-8")
    assert "Bearer [redacted:token]" in received
    for text in (received, transcript.text(), stderr):
        assert_no_leak(text, TOKEN, OTHER_TOKEN)
    assert_no_leak_at_rest(world.settings, TOKEN, OTHER_TOKEN)


async def test_serve_takes_the_group_from_credgate_group(world: World, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=serve_args(world),
        env={"CREDGATE_GROUP": "elsewhere", **store_env(world.settings)},
        cwd=tmp_path,
    )
    with (tmp_path / "stderr.txt").open("w") as errlog, anyio.fail_after(30):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            listing = await client.list_tools()

    assert [t.name for t in listing.tools] == ["hidden"]


def run_serve(world: World, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *serve_args(world, *args)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**credgate_env(world.settings), **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def assert_refused_with_one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_serve_without_a_group_refuses_to_start(world: World) -> None:
    line = assert_refused_with_one_line(run_serve(world))

    assert "--group" in line


def test_serve_with_an_unknown_group_refuses_to_start(world: World) -> None:
    line = assert_refused_with_one_line(run_serve(world, "--group", "ghosts"))

    assert "ghosts" in line


def test_serve_with_an_unknown_group_from_the_environment_refuses_to_start(world: World) -> None:
    line = assert_refused_with_one_line(run_serve(world, env={"CREDGATE_GROUP": "ghosts"}))

    assert "ghosts" in line


def test_serve_with_a_bad_declaration_refuses_naming_file_and_field(world: World) -> None:
    (world.tools_dir / "broken.toml").write_text(
        'name = "broken"\n[handler]\nkind = "http"\nurl = "https://example.com/"\ncolour = "red"\n'
    )

    line = assert_refused_with_one_line(run_serve(world, "--group", "desk"))

    assert "broken.toml" in line and "colour" in line
