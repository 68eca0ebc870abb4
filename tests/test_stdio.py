"""`credgate serve --group G` as a real subprocess, driven by the MCP SDK's stdio client.

The server's stdout passes through `tests/support/stdout_tee.py`, so the test holds every byte the client received;
its stderr goes to a file. Both are scanned for the canaries.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import httpx2
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
import os, sys

def explode(args, credential):
    raise RuntimeError("rejected " + credential["token"])

def noisy(args, credential):
    print("stray line on stdout")
    sys.stdout.flush()
    os.write(1, b"stray bytes on fd 1\\n")
    return {"stdin": os.read(0, 100).decode()}
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
        "noisy": python_tool("noisy", "stdio_handlers:noisy"),
        "unbound": http_tool("unbound", upstream.url("/echo"), credential='type = "other"\n' + TOKEN_FIELDS),
        "hidden": http_tool("hidden", upstream.url("/echo")),
    }
    w = World.create(tmp_path, tools, files={"stdio_handlers.py": HANDLERS})
    w.add_credential("svc-main", "svc", {"token": TOKEN})
    w.add_credential("svc-other", "svc", {"token": OTHER_TOKEN})
    w.allow("desk", "whoami", "explode", "unbound", "noisy")
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
            link = (warned.structured_content or {}).get("setup_url", "")
            async with httpx2.AsyncClient() as http:  # the link opens while the gateway runs (contract §7)
                page = await http.get(link)

    tools = {t.name: t for t in listing.tools}
    assert sorted(tools) == ["explode", "noisy", "unbound", "whoami"]
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
        "setup_url": link,
        "setup_command": "credgate cred add <name> --tool unbound && credgate bind desk unbound <name>",
    }
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/setup/[\w-]{43}", link)  # its own page server's single-use link
    assert page.status_code == 200 and "Set up <code>unbound</code>" in page.text
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


async def test_stray_output_of_a_handler_misses_the_wire_and_it_reads_no_agent_input(
    world: World, tmp_path: Path
) -> None:
    """While serving over pipes (the wire read and written on the loop, serving/pipes.py), fd 0 reads nothing
    and fd 1 goes to stderr, as under the SDK's own wire."""
    stdout_copy, stderr_file = tmp_path / "stdout.bin", tmp_path / "stderr.txt"
    params = teed_serve(world, stdout_copy, store_env(world.settings), "--group", "desk")
    with stderr_file.open("w") as errlog, anyio.fail_after(30):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            first = await client.call_tool("noisy", {})
            second = await client.call_tool("noisy", {})

    assert not first.is_error and not second.is_error
    assert first.structured_content == second.structured_content == {"stdin": ""}
    received = stdout_copy.read_bytes().decode("utf-8")
    stderr = stderr_file.read_text()
    assert "stray" not in received
    assert stderr.count("stray line on stdout") == 2 and stderr.count("stray bytes on fd 1") == 2


MESSAGES = [
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    },
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {"n": 7}}},
    {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
]


def converse(argv: list[str], env: dict[str, str], lines: list[bytes], stdout_file: Path | None) -> dict[int, Any]:
    """Send the lines one by one to `credgate serve`, each request once the one before it was answered; its
    stdout a pipe, or `stdout_file`. Returns the answers by id."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(stdout_file.open("wb")) if stdout_file is not None else subprocess.PIPE
        proc = stack.enter_context(
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.DEVNULL, env=env)
        )
        assert proc.stdin is not None
        received: queue.Queue[bytes] = queue.Queue()
        if stdout_file is None:
            assert proc.stdout is not None
            threading.Thread(target=read_lines, args=(proc.stdout, received), daemon=True).start()
        else:
            stack.enter_context(tail_into(stdout_file, received))
        answers: dict[int, Any] = {}
        for line in lines:
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
            wanted = json.loads(line).get("id") if line.startswith(b"{") else None
            while wanted is not None and wanted not in answers:
                message = json.loads(received.get(timeout=30))
                answers[message["id"]] = message.get("result", message.get("error"))
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    return answers


def read_lines(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    for line in stream:
        lines.put(line)


@contextlib.contextmanager
def tail_into(path: Path, lines: queue.Queue[bytes]) -> Iterator[None]:
    """Put each line written to the file into `lines`, until the block ends."""
    done = threading.Event()

    def follow() -> None:
        with path.open("rb") as f:
            pending = b""
            while not done.is_set():
                pending += f.read()
                *whole, pending = pending.split(b"\n")
                for line in whole:
                    lines.put(line)
                time.sleep(0.01)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_the_wire_answers_alike_over_pipes_and_over_a_file(world: World, upstream: Upstream, tmp_path: Path) -> None:
    """Pipes are read and written on the loop (serving/pipes.py); a file or a terminal by the SDK's threaded
    wire. A line of invalid UTF-8 between two requests is answered alike by both."""
    lines = [json.dumps(m).encode() for m in MESSAGES]
    lines.insert(2, b"\xff\xfe not json")
    argv = [sys.executable, *serve_args(world, "--group", "desk")]
    env = credgate_env(world.settings)

    by_pipe = converse(argv, env, lines, None)
    by_file = converse(argv, env, lines, tmp_path / "out.txt")

    assert sorted(by_pipe) == [1, 2, 3]
    assert by_pipe[2]["structuredContent"]["query"] == {"n": "7"}
    assert [t["name"] for t in by_pipe[3]["tools"]] == ["explode", "noisy", "unbound", "whoami"]
    assert by_pipe == by_file


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
