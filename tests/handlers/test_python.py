"""`python` handlers through the real gateway and the SDK's in-memory client."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import sample_handlers
from tests.support.gateway import (
    TOKEN_FIELDS,
    Transcript,
    World,
    assert_no_leak,
    connect,
    make_canary,
    python_tool,
    result_text,
)

pytestmark = pytest.mark.anyio

SVC = 'type = "svc"\n' + TOKEN_FIELDS
N_PROP = 'properties.n = { type = "integer" }'
TAG_PROP = 'properties.tag = { type = "string" }'
TOOLS = {
    "py_sync": python_tool("py_sync", "tests.support.sample_handlers:sync_report", credential=SVC, properties=N_PROP),
    "py_async": python_tool(
        "py_async", "tests.support.sample_handlers:async_report", credential=SVC, properties=N_PROP
    ),
    "py_nocred": python_tool("py_nocred", "tests.support.sample_handlers:sync_report"),
    "py_list": python_tool("py_list", "tests.support.sample_handlers:returns_list"),
    "py_leak": python_tool("py_leak", "tests.support.sample_handlers:echo_token", credential=SVC),
    "py_repr": python_tool("py_repr", "tests.support.sample_handlers:show_credential", credential=SVC),
    "py_raise": python_tool("py_raise", "tests.support.sample_handlers:raise_with_secret", credential=SVC),
    "py_async_raise": python_tool(
        "py_async_raise", "tests.support.sample_handlers:async_raise_with_secret", credential=SVC
    ),
    "py_overwrite": python_tool("py_overwrite", "tests.support.sample_handlers:overwrite_credential", credential=SVC),
    "py_slow": python_tool(
        "py_slow", "tests.support.sample_handlers:sleep_long", credential=SVC, extra="timeout = 0.3"
    ),
    "py_slow_sync": python_tool("py_slow_sync", "tests.support.sample_handlers:sleep_long_sync", extra="timeout = 0.3"),
    "py_wait": python_tool("py_wait", "tests.support.sample_handlers:wait_for_cancel", properties=TAG_PROP),
}
TOKEN = make_canary("PY", rich=True)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World.create(tmp_path, TOOLS)
    w.add_credential("svc-main", "svc", {"token": TOKEN})
    w.allow_and_bind("dev", TOOLS, {"svc": "svc-main"})
    yield w
    w.close()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    async with world.gateway() as gw, connect(gw, "dev") as c:
        yield c


async def test_a_sync_handler_runs_in_a_worker_thread_with_the_credential(client: Client) -> None:
    result = await client.call_tool("py_sync", {"n": 3})

    assert not result.is_error
    assert result.structured_content == {
        "args": {"n": 3},
        "fields": ["token"],
        "token_length": len(TOKEN),
        "in_worker_thread": True,
    }


async def test_an_async_handler_runs_on_the_event_loop_with_the_credential(client: Client) -> None:
    result = await client.call_tool("py_async", {"n": 4})

    assert not result.is_error
    assert result.structured_content == {
        "args": {"n": 4},
        "fields": ["token"],
        "token_length": len(TOKEN),
        "in_worker_thread": False,
    }


async def test_a_tool_without_credential_gets_an_empty_mapping(client: Client) -> None:
    result = await client.call_tool("py_nocred", {})

    assert result.structured_content is not None
    assert result.structured_content["fields"] == []


async def test_a_non_dict_return_value_becomes_json_text(client: Client) -> None:
    result = await client.call_tool("py_list", {})

    assert not result.is_error
    assert result_text(result) == "[1, 2, 3]"
    assert result.structured_content is None


async def test_a_secret_returned_by_the_handler_is_redacted(client: Client) -> None:
    result = await client.call_tool("py_leak", {})

    assert result_text(result) == "the token is [redacted:token]"
    assert_no_leak(result.model_dump_json(), TOKEN)


async def test_the_credential_repr_masks_the_secret(client: Client) -> None:
    result = await client.call_tool("py_repr", {})

    assert "Credential(" in result_text(result)
    assert "[redacted:token]" not in result_text(result)  # masked by the repr, not rescued by redaction
    assert_no_leak(result.model_dump_json(), TOKEN)


@pytest.mark.parametrize("tool", ["py_raise", "py_async_raise"])
async def test_an_exception_reaches_the_agent_as_a_generic_error_with_a_reference(
    client: Client, caplog: pytest.LogCaptureFixture, tool: str
) -> None:
    caplog.set_level(logging.DEBUG)

    result = await client.call_tool(tool, {})

    text = result_text(result)
    assert result.is_error
    match = re.search(r"ref: ([0-9a-f]+)", text)
    assert match is not None, text
    assert "Error" not in text and "token" not in text  # no exception class, no message
    assert_no_leak(result.model_dump_json(), TOKEN)
    ref = match.group(1)
    logged = [r for r in caplog.records if ref in r.getMessage()]
    assert logged, "the server log has no line with the reference"
    details = "\n".join(r.getMessage() for r in logged)
    assert "Traceback" in details and "[redacted:token]" in details
    assert_no_leak(caplog.text, TOKEN)


async def test_a_handler_cannot_change_the_credential(client: Client) -> None:
    first = await client.call_tool("py_overwrite", {})
    after = await client.call_tool("py_sync", {"n": 1})

    assert first.is_error and "ref:" in result_text(first)
    assert after.structured_content is not None
    assert after.structured_content["token_length"] == len(TOKEN)


async def test_a_handler_over_its_timeout_is_an_error_and_the_gateway_goes_on(client: Client) -> None:
    with anyio.fail_after(10):
        slow = await client.call_tool("py_slow", {})
        after = await client.call_tool("py_sync", {"n": 2})

    assert slow.is_error and "ref:" in result_text(slow)
    assert not after.is_error


async def test_a_sync_handler_over_its_timeout_is_an_error_at_the_timeout(client: Client) -> None:
    started = time.monotonic()
    with anyio.fail_after(10):
        slow = await client.call_tool("py_slow_sync", {})
    elapsed = time.monotonic() - started

    assert slow.is_error and "ref:" in result_text(slow)
    assert elapsed < 2.5  # the worker thread is abandoned: the agent does not wait for its 3 s sleep


async def test_an_agent_that_cancels_its_call_cancels_the_handler(world: World) -> None:
    sample_handlers.WAITING.clear()
    sample_handlers.CANCELLED.clear()
    with anyio.fail_after(10):
        async with world.gateway() as gw, connect(gw, "dev") as c:
            async with anyio.create_task_group() as tg:
                tg.start_soon(c.call_tool, "py_wait", {"tag": "first"})
                while sample_handlers.WAITING != ["first"]:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()  # the agent gives up on it: the SDK client sends notifications/cancelled
            while sample_handlers.CANCELLED != ["first"]:
                await anyio.sleep(0.01)
            after = await c.call_tool("py_sync", {"n": 3})

    assert not after.is_error  # the gateway goes on


async def test_python_outcomes_are_audited_without_values(world: World) -> None:
    transcript = Transcript()
    async with world.gateway() as gw, connect(gw, "dev", agent="bot-1") as c:
        await transcript.call(c, "py_sync", {"n": 1})
        await transcript.call(c, "py_raise", {})

    rows = world.audit()
    outcomes = {(r.tool, r.outcome, r.credential, r.agent) for r in rows}
    assert outcomes == {("py_sync", "ok", "svc-main", "bot-1"), ("py_raise", "error", "svc-main", "bot-1")}
    failed = next(r for r in rows if r.outcome == "error")
    assert failed.ref is not None and failed.ref in transcript.text()
    assert_no_leak(repr(rows), TOKEN)


# -- found in a security review: structured content with values JSON cannot carry was not redacted -----------------
# A token of its own, plain (as when the review found it).

PLAIN_TOKEN = make_canary("RV")
LEAKY = {
    name: python_tool(name, f"tests.support.sample_handlers:{name}", credential=SVC)
    for name in ("leaky_bytes", "leaky_set", "leaky_mapping")
}


@pytest.fixture
async def leaky_client(tmp_path: Path) -> AsyncIterator[Client]:
    w = World.create(tmp_path, LEAKY)
    w.add_credential("svc-main", "svc", {"token": PLAIN_TOKEN})
    w.allow_and_bind("dev", LEAKY, {"svc": "svc-main"})
    try:
        async with w.gateway() as gw, connect(gw, "dev") as c:
            yield c
    finally:
        w.close()


@pytest.mark.parametrize("tool", ["leaky_bytes", "leaky_set", "leaky_mapping"])
async def test_structured_content_with_non_json_values_is_redacted(leaky_client: Client, tool: str) -> None:
    result = await leaky_client.call_tool(tool, {})

    assert_no_leak(result.model_dump_json(), PLAIN_TOKEN)
    assert "redacted" in result_text(result) or "••••" in result_text(result)


# -- issue 19: a numeric secret echoed as a JSON number, a secret split over two content blocks ----------------

NUMERIC_TOKEN = "80461379215"
CARELESS = {
    name: python_tool(name, f"tests.support.sample_handlers:{name}", credential=SVC)
    for name in ("echo_pin_as_number", "split_token", "split_into_two_values")
}


@pytest.fixture
async def careless_client(tmp_path: Path) -> AsyncIterator[Client]:
    w = World.create(tmp_path, CARELESS)
    w.add_credential("svc-main", "svc", {"token": NUMERIC_TOKEN})
    w.allow_and_bind("dev", CARELESS, {"svc": "svc-main"})
    try:
        async with w.gateway() as gw, connect(gw, "dev") as c:
            yield c
    finally:
        w.close()


async def test_a_numeric_secret_returned_as_a_json_number_is_redacted_in_text_and_structured_content(
    careless_client: Client,
) -> None:
    result = await careless_client.call_tool("echo_pin_as_number", {})

    assert result.structured_content == {"account": "[redacted:token]", "ok": True}
    assert NUMERIC_TOKEN not in result.model_dump_json()


async def test_a_secret_split_over_two_content_blocks_is_redacted_in_both(careless_client: Client) -> None:
    result = await careless_client.call_tool("split_token", {})

    assert [block.text for block in result.content] == ["a: [redacted:token]", "[redacted:token] :b"]  # type: ignore[union-attr]
    assert_no_leak(result.model_dump_json(), NUMERIC_TOKEN)


async def test_a_secret_split_over_two_values_is_redacted_in_the_structure_and_in_its_json_text(
    careless_client: Client,
) -> None:
    result = await careless_client.call_tool("split_into_two_values", {})

    assert result.structured_content == {"a": "[redacted:token]", "b": "[redacted:token]"}
    assert json.loads(result_text(result)) == result.structured_content
    assert NUMERIC_TOKEN[:4] not in result.model_dump_json()
