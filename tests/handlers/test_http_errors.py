"""Errors an `http` handler raises itself once a credential is in the request: one text, whatever the secret.

Whatever depends only on the arguments is checked first, with every credential rendered empty, and named
precisely. A failure after that (a stored value the request cannot carry, a URL that the credential makes too
long) is one generic text with a reference id, so that no argument tells two secrets apart: growing an
argument a character at a time must not find the length of a secret in the URL.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client

from mcp_credgate.credential import Credential
from mcp_credgate.declarations import HttpHandler, load_catalog
from mcp_credgate.handlers import ToolOutput, http
from mcp_credgate.handlers.http import make_client, run_http
from mcp_credgate.logs import request_id
from tests.support.gateway import (
    Upstream,
    World,
    connect,
    http_tool,
    result_text,
)

pytestmark = pytest.mark.anyio

STR = '{ type = "string" }'
PAD = f"properties.pad = {STR}"
REF = re.compile(r"\(ref: [0-9a-f]{8}\)")
HTTPX_URL_LIMIT = 65536


def token(length: int) -> str:
    """A secret of exactly `length` characters that percent-encoding leaves as it is."""
    return secrets.token_hex(length)[:length]


SHORT, LONG = token(10), token(40)


GENERIC = re.compile(r"the request to 127\.0\.0\.1 could not be sent \(ref: [0-9a-f]{8}\)")


def generic(result: types.CallToolResult) -> bool:
    return GENERIC.fullmatch(result_text(result)) is not None


def outcome(result: types.CallToolResult) -> tuple[bool, str]:
    return bool(result.is_error), REF.sub("(ref: …)", result_text(result))


def tools(up: Upstream) -> dict[str, str]:
    return {
        "in_query": http_tool(
            "in_query", up.url("/q"), headers="{}", query='{ pad = "{args.pad}", key = "{cred.token}" }', properties=PAD
        ),
        "in_path": http_tool(
            "in_path", up.url("/p/{cred.token}/x"), headers="{}", query='{ pad = "{args.pad}" }', properties=PAD
        ),
        "in_header": http_tool(
            "in_header", up.url("/h"), headers='{ X-Key = "k {cred.token}", X-Pad = "{args.pad}" }', properties=PAD
        ),
    }


def base_length(up: Upstream, tool: str) -> int:
    """The URL's length with an empty argument and an empty credential."""
    return {"in_query": len(up.url("/q?pad=&key=")), "in_path": len(up.url("/p//x?pad="))}[tool]


class Callers:
    """One client per group; group `gN` has the tools bound to a credential whose token is N characters long."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.clients: dict[str, Client] = {}

    async def call(self, group: str, tool: str, args: dict[str, str]) -> types.CallToolResult:
        return await self.clients[group].call_tool(tool, args)


def bind(world: World, group: str, name: str, values: dict[str, str]) -> None:
    world.add_credential(name, "svc", values)
    world.allow(group, *world.catalog.tools)
    for tool in world.catalog.tools:
        world.bind(group, tool, name)


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream) -> Iterator[World]:
    w = World.create(tmp_path, tools(upstream))
    bind(w, "g10", "short", {"token": SHORT})
    bind(w, "g40", "long", {"token": LONG})
    bind(w, "gutf", "utf", {"token": "caf\u00e9-token"})
    bind(w, "ghuge", "huge", {"token": token(60_000)})
    yield w
    w.close()


@pytest.fixture
async def callers(world: World) -> AsyncIterator[Callers]:
    c = Callers(world)
    async with world.gateway() as gw, AsyncExitStack() as stack:
        for group in ("g10", "g40", "gutf", "ghuge"):
            c.clients[group] = await stack.enter_async_context(connect(gw, group))
        yield c


@pytest.mark.parametrize("tool", ["in_query", "in_path"])
async def test_no_argument_length_tells_a_short_secret_from_a_long_one(
    callers: Callers, upstream: Upstream, tool: str
) -> None:
    base = base_length(upstream, tool)
    lengths = [
        *range(8192 - base - 50, 8192 - base + 5),  # credgate's own cap on what the arguments add
        *range(HTTPX_URL_LIMIT - base - 50, HTTPX_URL_LIMIT - base + 5),  # where httpx2 gives up
    ]

    differing = []
    for n in lengths:
        args = {"pad": "a" * n}
        short = outcome(await callers.call("g10", tool, args))
        long = outcome(await callers.call("g40", tool, args))
        if short != long:
            differing.append((n, short[0], short[1][:120], long[0], long[1][:120]))

    assert differing == []


async def test_a_url_the_arguments_make_too_long_is_refused_naming_the_cap(
    callers: Callers, upstream: Upstream
) -> None:
    result = await callers.call("g10", "in_query", {"pad": "a" * 8200})

    assert result.is_error
    assert result_text(result) == "request refused: the arguments make the URL longer than 8192 characters"
    assert upstream.seen() == []


# A value with CR or LF never leaves the store (it is refused when stored, and a stored one that no longer
# validates is `credential_invalid`): these run the handler itself, with such a value in hand.


async def run(folder: Path, tool: str, value: str, args: dict[str, str]) -> ToolOutput:
    catalog = load_catalog([folder])
    declared = catalog.tools[tool]
    assert isinstance(declared.decl.handler, HttpHandler)
    credential = Credential("unfit", "svc", {"token": value}, frozenset({"token"}))
    async with make_client() as client:
        return await run_http(client, declared.decl.handler, declared.credential, args, credential)


@pytest.fixture
def unfit(tmp_path: Path, upstream: Upstream) -> Path:
    """The tools' declarations, for `run`."""
    folder = tmp_path / "unfit.d"
    folder.mkdir()
    for name, text in tools(upstream).items():
        (folder / f"{name}.toml").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("tool", ["in_query", "in_header"])
@pytest.mark.parametrize("value", ["abc\r\ndef", "abc\ndef-and-longer", "abc\x00def"])
async def test_a_credential_value_with_a_line_break_gives_the_generic_text(
    upstream: Upstream, unfit: Path, tool: str, value: str
) -> None:
    token = request_id.set("0badc0de")
    try:
        output = await run(unfit, tool, value, {"pad": "x"})
    finally:
        request_id.reset(token)

    assert output.is_error
    assert output.text == "the request to 127.0.0.1 could not be sent (ref: 0badc0de)"
    assert upstream.seen() == []


async def test_without_a_call_ref_the_generic_text_makes_one(upstream: Upstream, unfit: Path) -> None:
    output = await run(unfit, "in_query", "abc\r\ndef", {"pad": "x"})

    assert GENERIC.fullmatch(output.text)


async def test_an_unfit_argument_is_named_before_an_unfit_credential_value_is_found(
    upstream: Upstream, unfit: Path
) -> None:
    for tool in ("in_query", "in_header"):
        output = await run(unfit, tool, "abc\r\ndef", {"pad": "a\nb"})

        assert output.text == "request refused: argument 'pad' contains CR, LF or NUL", tool
    assert upstream.seen() == []


async def test_the_cause_is_logged_under_the_ref_without_the_value(
    upstream: Upstream, unfit: Path, caplog: pytest.LogCaptureFixture
) -> None:
    value = "secretpart\r\nX-Evil: 1"
    token = request_id.set("5eed5eed")
    try:
        with caplog.at_level(logging.INFO):
            await run(unfit, "in_header", value, {"pad": "x"})
    finally:
        request_id.reset(token)

    lines = "\n".join(r.getMessage() for r in caplog.records if r.name == "credgate.http")
    assert "(ref: 5eed5eed)" in lines and "CR, LF or NUL" in lines, lines
    assert "secretpart" not in lines and "Evil" not in lines


async def test_a_stored_value_a_header_cannot_carry_gives_the_generic_text(
    callers: Callers, upstream: Upstream
) -> None:
    result = await callers.call("gutf", "in_header", {"pad": "x"})

    assert generic(result), result_text(result)
    assert upstream.seen() == []


async def test_an_argument_a_header_cannot_carry_is_still_named(callers: Callers, upstream: Upstream) -> None:
    result = await callers.call("gutf", "in_header", {"pad": "caf\u00e9"})

    assert result.is_error
    assert result_text(result) == "request refused: header 'X-Pad' would carry non-ASCII text"
    assert upstream.seen() == []


@pytest.mark.parametrize("control", ["\x0b", "\x0c", "\x01", "\x7f"])
async def test_an_argument_with_a_control_character_in_a_header_is_named(
    callers: Callers, upstream: Upstream, control: str
) -> None:
    result = await callers.call("g10", "in_header", {"pad": f"a{control}b"})

    assert result.is_error
    assert "'pad'" in result_text(result) and result_text(result).startswith("request refused: ")
    assert upstream.seen() == []


@pytest.mark.parametrize("pad", [" padded", "padded ", "\tpadded"])
async def test_a_header_argument_with_outer_whitespace_is_sent_trimmed(
    callers: Callers, upstream: Upstream, pad: str
) -> None:
    result = await callers.call("g10", "in_header", {"pad": pad})

    assert not result.is_error, result_text(result)
    [seen] = upstream.seen()
    assert seen.header("X-Pad") == "padded"


async def test_a_credential_too_long_for_any_url_gives_the_generic_text_whatever_the_arguments(
    callers: Callers, upstream: Upstream
) -> None:
    results = [await callers.call("ghuge", "in_query", {"pad": "a" * n}) for n in (0, 1, 1000, 5000, 8000)]

    assert all(generic(r) for r in results), [result_text(r)[:200] for r in results]
    assert len({outcome(r) for r in results}) == 1
    assert upstream.seen() == []


def test_the_url_budget_leaves_room_for_httpx2s_own_limit() -> None:
    from httpx2 import _urlparse

    assert _urlparse.MAX_URL_LENGTH == HTTPX_URL_LIMIT
    assert http.MAX_ARGUMENTS_URL + http.MAX_CREDENTIAL_URL <= HTTPX_URL_LIMIT
