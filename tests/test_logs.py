"""Structured logs: JSON lines on request, one request id per call shared by log, audit row and error text."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mcp_credgate.logs import configure_logging
from tests.support.gateway import TOKEN_FIELDS, World, assert_no_leak, connect, make_canary, python_tool, result_text

pytestmark = pytest.mark.anyio

TOKEN = make_canary("LG")
SVC = 'type = "svc"\n' + TOKEN_FIELDS


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What configure_logging writes to stderr; the root logger is put back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield lambda: capsys.readouterr().err
    root.handlers[:], root.level = saved[0], saved[1]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    tools = {
        "boom": python_tool("boom", "tests.support.sample_handlers:raise_with_secret", credential=SVC),
        "echo": python_tool("echo", "tests.support.sample_handlers:echo_token", credential=SVC),
    }
    world = World.create(tmp_path, tools)
    world.add_credential("c", "svc", {"token": TOKEN})
    world.store.add_group("g")
    for tool in tools:
        world.allow("g", tool)
        world.bind("g", tool, "c")
    yield world
    world.close()


async def test_json_lines_carry_the_calls_ref_which_the_agent_and_the_audit_row_share(
    world: World, stderr: Callable[[], str]
) -> None:
    configure_logging("json", "debug")
    async with world.gateway() as gw, connect(gw, "g") as client:
        failed = await client.call_tool("boom", {})
        await client.call_tool("echo", {})

    ref = re.search(r"ref: ([0-9a-f]{8})", result_text(failed))
    assert ref is not None
    err = stderr()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    errors = [e for e in lines if e["level"] == "error" and e["logger"] == "credgate.server"]
    assert [e["request_id"] for e in errors] == [ref.group(1)]
    calls = [e for e in lines if e["message"].startswith("call ")]
    assert len(calls) == 2 and len({e["request_id"] for e in calls}) == 2
    assert any(e["request_id"] == ref.group(1) and "outcome=error" in e["message"] for e in calls)
    rows = {r.tool: r for r in world.audit()}
    assert rows["boom"].ref == ref.group(1) and rows["echo"].ref == next(
        e["request_id"] for e in calls if "tool=echo" in e["message"]
    )
    assert_no_leak(err, TOKEN)  # DEBUG included


async def test_text_logs_name_the_ref_and_info_level_logs_no_call(world: World, stderr: Callable[[], str]) -> None:
    configure_logging("text", "info")
    async with world.gateway() as gw, connect(gw, "g") as client:
        failed = await client.call_tool("boom", {})
        await client.call_tool("echo", {})

    ref = re.search(r"ref: ([0-9a-f]{8})", result_text(failed))
    assert ref is not None
    text = stderr()
    assert f"[ref {ref.group(1)}]" in text
    assert "call group=" not in text
    assert_no_leak(text, TOKEN)
