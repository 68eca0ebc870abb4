"""Upstream test server with the fixtures of the MCP conformance suite.

Implements every server fixture that `@modelcontextprotocol/conformance` 0.2.0-alpha.12 exercises at 2025-11-25
and 2026-07-28 (tools, resources, prompts, completion, logging, progress, sampling, elicitation, SSE resumption,
multi-round trips with `InputRequiredResult`, `subscriptions/listen`, `Mcp-Param` headers, and the diagnostic tools
of the `server-stateless` scenario) on the low-level `mcp.server.Server` of the `mcp` 2.3 SDK, so the suite can
run against it directly and a gateway can proxy it. The extensions (tasks, skills) are not implemented.

    python conformance/upstream_server.py               # stdio (default)
    python conformance/upstream_server.py --http 8931   # Streamable HTTP at http://127.0.0.1:8931/mcp

Over HTTP the server binds 127.0.0.1 only, checks Host/Origin (DNS-rebinding protection), keeps sessions and an
in-memory event store so a client can resume an SSE stream with `Last-Event-ID`.

Handshake-era clients (2025-06-18, 2025-11-25) get sampling and elicitation as server-to-client requests on the
`tools/call` response stream; 2026-07-28 clients get an `InputRequiredResult` and retry with `input_responses`
(and the echoed `requestState`, sealed by the SDK's `RequestStateBoundary` so that a tampered one is refused).
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import re
import struct
import sys
import warnings
import wave
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_args

import anyio
import jsonschema
import mcp_types as types
import uvicorn
from mcp.server import Server, ServerRequestContext
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourceUpdated,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request

# Logging, sampling and `logging/setLevel` are deprecated as of 2026-07-28, but they are exactly what the
# conformance fixtures exercise on the 2025 protocol versions.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

SERVER_NAME = "mcp-conformance-upstream"
RESOURCE_NOT_FOUND = -32002  # an unknown resource URI up to 2025-11-25; -32602 from 2026-07-28 (SEP-2164)
# `RequestStateSecurity` wants 32 bytes or more. A fixed key, so that every instance of this server (one per
# gateway over stdio) accepts the state another minted; a real server would load a secret.
REQUEST_STATE_KEY = b"credgate-conformance-fixture-request-state-key"
RETRY_INTERVAL_MS = 500  # the `retry` field of SSE priming events: how long a client waits before reconnecting
RECONNECT_WAIT_S = 0.2  # test_reconnection: time left to the client to reconnect after the stream is closed
STEP_DELAY_S = 0.05  # pause between the log / progress notifications of the slow tools

Ctx = ServerRequestContext[Any, Any]
ToolResult = types.CallToolResult | types.InputRequiredResult
ToolFn = Callable[[Ctx, types.CallToolRequestParams, dict[str, Any]], Awaitable[ToolResult]]


# --- test data --------------------------------------------------------------------------------------------------


def _png_1x1_red() -> bytes:
    """A valid 1x1 red PNG, built rather than pasted."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence() -> bytes:
    """A valid WAV file: 10 ms of 8 kHz mono 16-bit silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x00\x00" * 80)
    return buffer.getvalue()


PNG_B64 = base64.b64encode(_png_1x1_red()).decode()
WAV_B64 = base64.b64encode(_wav_silence()).decode()
TEMPLATE_URI = re.compile(r"test://template/(?P<id>[^/]+)/data")
LOG_LEVELS: tuple[types.LoggingLevel, ...] = get_args(types.LoggingLevel)  # by ascending severity
COMPLETIONS: dict[str, list[str]] = {
    "arg1": ["paris", "park", "party", "test-value", "testing"],
    "arg2": ["world", "word", "work"],
    "id": ["1", "2", "3", "123"],
}


# `subscriptions/listen` (2026-07-28): the trigger tools publish here, the listen handler fans out to the streams.
BUS = InMemorySubscriptionBus()


# --- per-session state ------------------------------------------------------------------------------------------


@dataclass
class SessionState:
    """What one client session asked for: its log level and its resource subscriptions."""

    log_level: types.LoggingLevel = "debug"
    subscriptions: set[str] = field(default_factory=set)


_sessions: dict[str | None, SessionState] = {}


def _state(ctx: Ctx) -> SessionState:
    """The caller's session state, keyed by `Mcp-Session-Id`; stdio and sessionless 2026-07-28 HTTP share one entry."""
    key = ctx.request.headers.get("mcp-session-id") if isinstance(ctx.request, Request) else None
    return _sessions.setdefault(key, SessionState())


def _is_modern(ctx: Ctx) -> bool:
    """Whether the caller speaks 2026-07-28+: no session, no server-to-client requests."""
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


# --- helpers ----------------------------------------------------------------------------------------------------


def _text(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=is_error)


async def _log(ctx: Ctx, level: types.LoggingLevel, message: str) -> None:
    """Send a log notification on this request's stream, if the session's level lets it through."""
    if LOG_LEVELS.index(level) < LOG_LEVELS.index(_state(ctx).log_level):
        return
    await ctx.session.send_log_message(level, message, logger=SERVER_NAME, related_request_id=ctx.request_id)


def _client_can(ctx: Ctx, capability: types.ClientCapabilities) -> bool:
    return ctx.session.check_client_capability(capability)


def _ask_client(
    params: types.CallToolRequestParams,
    key: str,
    ask: types.CreateMessageRequestParams | types.ElicitRequestFormParams,
) -> types.InputResponse | types.InputRequiredResult:
    """The client's answer under `key` if the call carries one, else an `InputRequiredResult` asking for it.

    The 2026-07-28 way, whatever the version: on a handshake session `_settle` asks the client itself.
    """
    answer = (params.input_responses or {}).get(key)
    if answer is not None:
        return answer
    request: types.InputRequest = (
        types.CreateMessageRequest(params=ask)
        if isinstance(ask, types.CreateMessageRequestParams)
        else types.ElicitRequest(params=ask)
    )
    return types.InputRequiredResult(input_requests={key: request})


# What a client answers to each kind of input request.
ANSWER_TYPES: dict[type[types.InputRequest], type[types.InputResponse]] = {
    types.CreateMessageRequest: types.CreateMessageResult,
    types.ElicitRequest: types.ElicitResult,
    types.ListRootsRequest: types.ListRootsResult,
}
MAX_ROUNDS = 5  # of questions a handler may ask on a handshake session (multi_round asks two)

Params = TypeVar("Params", types.CallToolRequestParams, types.GetPromptRequestParams)
Result = TypeVar("Result")


async def _settle(
    ctx: Ctx,
    params: Params,
    handler: Callable[[Ctx, Params], Awaitable[Result | types.InputRequiredResult]],
) -> Result | types.InputRequiredResult:
    """Run a handler that may answer `InputRequiredResult`, on any protocol version.

    2026-07-28 callers get the `InputRequiredResult` and retry by themselves. Handshake sessions (2025-11-25 and
    before) have no such result: the server asks each question as a server-to-client request on this call's
    response stream (`related_request_id`) and runs the handler again with the answers, as a retrying client would.
    """
    result = await handler(ctx, params)
    for _ in range(MAX_ROUNDS):
        if _is_modern(ctx) or not isinstance(result, types.InputRequiredResult) or not result.input_requests:
            break
        metadata = ServerMessageMetadata(related_request_id=ctx.request_id)
        answers: dict[str, types.InputResponse] = {}
        for key, request in result.input_requests.items():
            answers[key] = await ctx.session.send_request(request, ANSWER_TYPES[type(request)], metadata=metadata)
        params = params.model_copy(update={"input_responses": answers, "request_state": result.request_state})
        result = await handler(ctx, params)
    if isinstance(result, types.InputRequiredResult) and not _is_modern(ctx):
        raise MCPError(types.INTERNAL_ERROR, "The handler still wants input after the client answered")
    return result


async def _elicit(ctx: Ctx, params: types.CallToolRequestParams, message: str, schema: dict[str, Any]) -> ToolResult:
    """Run one form elicitation and report the user's answer as text."""
    if not _client_can(ctx, types.ClientCapabilities(elicitation=types.ElicitationCapability())):
        return _text("Client does not support elicitation", is_error=True)
    ask = types.ElicitRequestFormParams(message=message, requested_schema=schema)
    answer = _ask_client(params, "elicitation", ask)
    if isinstance(answer, types.InputRequiredResult):
        return answer
    if not isinstance(answer, types.ElicitResult):
        return _text("Client answered the elicitation with something else", is_error=True)
    content = json.dumps(answer.content or {}, separators=(",", ":"))
    return _text(f"Elicitation completed: action={answer.action}, content={content}")


# --- tools ------------------------------------------------------------------------------------------------------

NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}


async def test_simple_text(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    return _text("This is a simple text response for testing.")


async def test_image_content(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    return types.CallToolResult(content=[types.ImageContent(data=PNG_B64, mime_type="image/png")])


async def test_audio_content(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    return types.CallToolResult(content=[types.AudioContent(data=WAV_B64, mime_type="audio/wav")])


async def test_embedded_resource(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    resource = types.TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
    )
    return types.CallToolResult(content=[types.EmbeddedResource(resource=resource)])


async def test_multiple_content_types(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    resource = types.TextResourceContents(
        uri="test://mixed-content-resource", mime_type="application/json", text='{"test":"data","value":123}'
    )
    return types.CallToolResult(
        content=[
            types.TextContent(text="Multiple content types test:"),
            types.ImageContent(data=PNG_B64, mime_type="image/png"),
            types.EmbeddedResource(resource=resource),
        ]
    )


async def test_tool_with_logging(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    await _log(ctx, "info", "Tool execution started")
    await anyio.sleep(STEP_DELAY_S)
    await _log(ctx, "info", "Tool processing data")
    await anyio.sleep(STEP_DELAY_S)
    await _log(ctx, "info", "Tool execution completed")
    return _text("Tool with logging executed successfully")


async def test_tool_with_progress(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    for step, progress in enumerate((0, 50, 100)):
        if step:
            await anyio.sleep(STEP_DELAY_S)
        await ctx.session.report_progress(progress, 100, f"Completed step {progress} of 100")
    token = (params.meta or {}).get("progress_token")
    return _text(f"Tool with progress executed successfully (progress token: {token})")


async def test_error_handling(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    return _text("This tool intentionally returns an error for testing", is_error=True)


async def test_sampling(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    if not _client_can(ctx, types.ClientCapabilities(sampling=types.SamplingCapability())):
        return _text("Client does not support sampling", is_error=True)
    message = types.SamplingMessage(role="user", content=types.TextContent(text=args["prompt"]))
    ask = types.CreateMessageRequestParams(messages=[message], max_tokens=100)
    answer = _ask_client(params, "sampling", ask)
    if isinstance(answer, types.InputRequiredResult):
        return answer
    if not isinstance(answer, types.CreateMessageResult):
        return _text("Client answered the sampling request with something else", is_error=True)
    reply = answer.content.text if isinstance(answer.content, types.TextContent) else f"<{answer.content.type}>"
    return _text(f"LLM response: {reply}")


async def test_elicitation(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    return await _elicit(ctx, params, args["message"], schema)


async def test_elicitation_sep1034_defaults(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": {"type": "boolean", "description": "Verification status", "default": True},
        },
    }
    return await _elicit(ctx, params, "Please provide user information", schema)


async def test_elicitation_sep1330_enums(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    def titled(prefix: str, titles: list[str]) -> list[dict[str, str]]:
        return [{"const": f"{prefix}{i}", "title": title} for i, title in enumerate(titles, 1)]

    options = ["option1", "option2", "option3"]
    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "description": "Untitled single-select", "enum": options},
            "titledSingle": {
                "type": "string",
                "description": "Titled single-select",
                "oneOf": titled("value", ["First Option", "Second Option", "Third Option"]),
            },
            "legacyEnum": {
                "type": "string",
                "description": "Legacy titled enum (enumNames, deprecated)",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Untitled multi-select",
                "items": {"type": "string", "enum": options},
            },
            "titledMulti": {
                "type": "array",
                "description": "Titled multi-select",
                "items": {"anyOf": titled("value", ["First Choice", "Second Choice", "Third Choice"])},
            },
        },
    }
    return await _elicit(ctx, params, "Please select values using different enum schema types", schema)


async def json_schema_2020_12_tool(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    return _text(f"Received: {json.dumps(args, sort_keys=True)}")


async def test_reconnection(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    """Close the SSE stream mid-call (SEP-1699); the result is replayed when the client resumes."""
    await _log(ctx, "info", "Before disconnect")
    # The SDK offers the callback only with an event store and a client at 2025-11-25 or later
    # (judged by the request's MCP-Protocol-Version header).
    if ctx.close_sse_stream is not None:
        await ctx.close_sse_stream()
        await anyio.sleep(RECONNECT_WAIT_S)
    await _log(ctx, "info", "After reconnect")
    return _text("Reconnection test completed")


# --- multi-round trips (SEP-2322, 2026-07-28) --------------------------------------------------------------------
# Each tool answers an `InputRequiredResult` until the client retries with the `input_responses` it asked for (and
# the `request_state` it was given). On a handshake session `_settle` asks the client and retries in its place.

NAME_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def _ask_name(message: str = "What is your name?") -> types.ElicitRequest:
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=NAME_SCHEMA))


def _ask_llm(prompt: str, max_tokens: int) -> types.CreateMessageRequest:
    message = types.SamplingMessage(role="user", content=types.TextContent(text=prompt))
    return types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    )


def _elicited(params: types.CallToolRequestParams | types.GetPromptRequestParams, key: str, field: str) -> str | None:
    """The field `field` of the accepted elicitation answer under `key`, if the client sent one."""
    answer = (params.input_responses or {}).get(key)
    if isinstance(answer, types.ElicitResult) and answer.content:
        value = answer.content.get(field)
        return str(value) if value is not None else None
    return None


async def test_input_required_result_elicitation(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    if isinstance((params.input_responses or {}).get("user_name"), types.ElicitResult):
        return _text(f"Hello, {_elicited(params, 'user_name', 'name') or 'stranger'}!")
    return types.InputRequiredResult(input_requests={"user_name": _ask_name()})


async def test_input_required_result_sampling(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    answer = (params.input_responses or {}).get("capital_question")
    if isinstance(answer, types.CreateMessageResult):
        text = answer.content.text if isinstance(answer.content, types.TextContent) else "?"
        return _text(f"Model said: {text}")
    return types.InputRequiredResult(
        input_requests={"capital_question": _ask_llm("What is the capital of France?", 100)}
    )


async def test_input_required_result_list_roots(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    answer = (params.input_responses or {}).get("client_roots")
    if isinstance(answer, types.ListRootsResult):
        return _text(f"Client exposed {len(answer.roots)} root(s): {', '.join(str(r.uri) for r in answer.roots)}")
    return types.InputRequiredResult(input_requests={"client_roots": types.ListRootsRequest()})


CONFIRM = types.ElicitRequest(
    params=types.ElicitRequestFormParams(
        message="Please confirm",
        requested_schema={"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    )
)


async def test_input_required_result_request_state(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    if "confirm" in (params.input_responses or {}) and params.request_state == "request-state-nonce":
        return _text("state-ok: confirmation received")
    return types.InputRequiredResult(input_requests={"confirm": CONFIRM}, request_state="request-state-nonce")


async def test_input_required_result_multiple_inputs(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    requests: dict[str, types.InputRequest] = {
        "user_name": _ask_name(),
        "greeting": _ask_llm("Generate a greeting", 50),
        "client_roots": types.ListRootsRequest(),
    }
    if requests.keys() <= (params.input_responses or {}).keys():
        return _text("All inputs received.")
    return types.InputRequiredResult(input_requests=requests, request_state="multiple-inputs")


async def test_input_required_result_multi_round(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    """Three rounds: name, then colour, then the answer; the state says which round the client is at."""
    state: dict[str, Any] = json.loads(params.request_state) if params.request_state else {"round": 0}
    if state.get("round") == 1 and (name := _elicited(params, "step1", "name")) is not None:
        color_schema = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
        ask = types.ElicitRequestFormParams(
            message="Step 2: What is your favorite color?", requested_schema=color_schema
        )
        return types.InputRequiredResult(
            input_requests={"step2": types.ElicitRequest(params=ask)},
            request_state=json.dumps({"round": 2, "name": name}),
        )
    if state.get("round") == 2 and (color := _elicited(params, "step2", "color")) is not None:
        return _text(f"{state.get('name')} likes {color}.")
    # first round, or an answer missing or out of order: start again
    return types.InputRequiredResult(
        input_requests={"step1": _ask_name("Step 1: What is your name?")}, request_state=json.dumps({"round": 1})
    )


async def test_input_required_result_tampered_state(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    """Plain state here: the `RequestStateBoundary` middleware seals it and refuses a tampered echo (-32602)."""
    if params.request_state is None:
        return types.InputRequiredResult(input_requests={"confirm": CONFIRM}, request_state="round-1")
    return _text(f"state-ok: {params.request_state}")


async def test_input_required_result_capabilities(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    """Asks only for what the client declared (per request on 2026-07-28)."""
    requests: dict[str, types.InputRequest] = {}
    if _client_can(ctx, types.ClientCapabilities(sampling=types.SamplingCapability())):
        requests["sample"] = _ask_llm("Say hello", 50)
    if _client_can(ctx, types.ClientCapabilities(elicitation=types.ElicitationCapability())):
        requests["ask"] = _ask_name()
    return types.InputRequiredResult(input_requests=requests, request_state="capability-gated")


# --- diagnostic tools of the server-stateless scenario (2026-07-28) ----------------------------------------------


async def test_missing_capability(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    """Needs the client's `sampling` capability. Without it: a -32021 error (HTTP 400 on 2026-07-28), not a
    tool error, naming the capability in `data.requiredCapabilities`."""
    if not _client_can(ctx, types.ClientCapabilities(sampling=types.SamplingCapability())):
        raise MCPError(
            types.MISSING_REQUIRED_CLIENT_CAPABILITY,
            "This tool requires the client 'sampling' capability",
            {"requiredCapabilities": {"sampling": {}}},
        )
    return _text("Client declared the sampling capability; proceeding.")


async def test_streaming_elicitation(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    """Asks for a name: on 2026-07-28 the response stream carries an `InputRequiredResult`, never a request."""
    return await _elicit(ctx, params, "What is your name?", NAME_SCHEMA)


async def test_logging_tool(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    """Logs once. On 2026-07-28 the SDK drops the message unless the request set `_meta[...logLevel]`."""
    await _log(ctx, "info", "Diagnostic trace logging activated")
    return _text("Logging evaluated")


async def test_x_mcp_header(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    return _text(f"region={args.get('region', '<none>')}")


async def test_trigger_tool_change(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    """Announces a tool-list change to the open `subscriptions/listen` streams (the list itself stays as it is)."""
    await BUS.publish(ToolsListChanged())
    return _text("tool list changed")


async def test_trigger_prompt_change(ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]) -> ToolResult:
    """Announces a prompt-list change to the open `subscriptions/listen` streams."""
    await BUS.publish(PromptsListChanged())
    return _text("prompt list changed")


async def test_trigger_resource_update(
    ctx: Ctx, params: types.CallToolRequestParams, args: dict[str, Any]
) -> ToolResult:
    """Announces a change of the resource `uri` to the `subscriptions/listen` streams that watch it (a gateway's
    tests use it: no scenario of the suite does)."""
    await BUS.publish(ResourceUpdated(uri=args["uri"]))
    return _text(f"{args['uri']} changed")


@dataclass(frozen=True)
class Fixture:
    """A tool: its listing and its implementation."""

    tool: types.Tool
    run: ToolFn


def _fixture(run: ToolFn, description: str, schema: dict[str, Any] = NO_ARGS) -> Fixture:
    return Fixture(types.Tool(name=run.__name__, description=description, input_schema=schema), run)


def _string_args(**descriptions: str) -> dict[str, Any]:
    properties = {name: {"type": "string", "description": text} for name, text in descriptions.items()}
    return {"type": "object", "properties": properties, "required": list(descriptions)}


# Every 2020-12 keyword the json-schema-2020-12 scenario looks for: `$schema`, `$defs` with an `$anchor`, `$ref`,
# composition (`allOf`/`anyOf`), conditionals (`if`/`then`/`else`) and `additionalProperties`.
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}
# test_x_mcp_header: `region` is mirrored into an `Mcp-Param-Region` header on 2026-07-28 (SEP-2243); the SDK's
# transport checks that header against the body, with `input_schema` below telling it which tool wants what.
X_MCP_HEADER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "region": {
            "type": "string",
            "description": "Mirrored into the Mcp-Param-Region header",
            "x-mcp-header": "Region",
        }
    },
}

FIXTURES: dict[str, Fixture] = {
    f.tool.name: f
    for f in [
        _fixture(test_simple_text, "Returns simple text content"),
        _fixture(test_image_content, "Returns image content (1x1 PNG)"),
        _fixture(test_audio_content, "Returns audio content (WAV)"),
        _fixture(test_embedded_resource, "Returns an embedded text resource"),
        _fixture(test_multiple_content_types, "Returns text, image and resource content"),
        _fixture(test_tool_with_logging, "Sends three info log notifications while it runs"),
        _fixture(test_tool_with_progress, "Reports progress 0, 50, 100 of 100 while it runs"),
        _fixture(test_error_handling, "Always returns a tool error (isError: true)"),
        _fixture(test_sampling, "Asks the client's LLM (sampling/createMessage)", _string_args(prompt="Prompt")),
        _fixture(
            test_elicitation, "Asks the user for input (elicitation/create)", _string_args(message="Message to show")
        ),
        _fixture(test_elicitation_sep1034_defaults, "Elicitation with defaults for every primitive type (SEP-1034)"),
        _fixture(test_elicitation_sep1330_enums, "Elicitation with the five enum schema variants (SEP-1330)"),
        _fixture(json_schema_2020_12_tool, "Tool with JSON Schema 2020-12 features", JSON_SCHEMA_2020_12),
        _fixture(test_reconnection, "Closes the SSE stream mid-call to test resumption (SEP-1699)"),
        _fixture(test_missing_capability, "Requires the client's sampling capability (-32021 without it)"),
        _fixture(test_streaming_elicitation, "Asks for a name; on 2026-07-28 through an InputRequiredResult"),
        _fixture(test_logging_tool, "Logs once, only when the request asked for logs"),
        _fixture(
            test_x_mcp_header, "Echoes its region argument, sent as an Mcp-Param header (SEP-2243)", X_MCP_HEADER_SCHEMA
        ),
        _fixture(test_trigger_tool_change, "Announces a tool-list change to subscriptions/listen streams"),
        _fixture(test_trigger_prompt_change, "Announces a prompt-list change to subscriptions/listen streams"),
        _fixture(
            test_trigger_resource_update,
            "Announces a resource's change to the subscriptions/listen streams watching it",
            _string_args(uri="The resource that changed"),
        ),
        _fixture(test_input_required_result_elicitation, "InputRequiredResult with one elicitation (user_name)"),
        _fixture(test_input_required_result_sampling, "InputRequiredResult with one sampling request"),
        _fixture(test_input_required_result_list_roots, "InputRequiredResult with one roots/list request"),
        _fixture(test_input_required_result_request_state, "InputRequiredResult whose requestState must come back"),
        _fixture(test_input_required_result_multiple_inputs, "InputRequiredResult with elicitation, sampling, roots"),
        _fixture(test_input_required_result_multi_round, "Three rounds of InputRequiredResult, the state evolving"),
        _fixture(test_input_required_result_tampered_state, "InputRequiredResult whose sealed state must not change"),
        _fixture(test_input_required_result_capabilities, "InputRequiredResult asking only for declared capabilities"),
    ]
}
VALIDATORS = {name: jsonschema.Draft202012Validator(f.tool.input_schema) for name, f in FIXTURES.items()}


async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[f.tool for f in FIXTURES.values()])


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> ToolResult:
    fixture = FIXTURES.get(params.name)
    if fixture is None:
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
    args = params.arguments or {}
    errors = sorted(VALIDATORS[params.name].iter_errors(args), key=lambda e: list(e.path))
    if errors:
        return _text(f"Invalid arguments: {errors[0].message}", is_error=True)
    return await _settle(ctx, params, lambda ctx, params: fixture.run(ctx, params, args))


def input_schema(name: str) -> Mapping[str, Any] | None:
    fixture = FIXTURES.get(name)
    return fixture.tool.input_schema if fixture else None


# --- resources --------------------------------------------------------------------------------------------------

STATIC_TEXT = "This is the content of the static text resource."
RESOURCES = [
    types.Resource(
        uri="test://static-text", name="static-text", description="Static text resource", mime_type="text/plain"
    ),
    types.Resource(
        uri="test://static-binary", name="static-binary", description="Static binary resource", mime_type="image/png"
    ),
    types.Resource(
        uri="test://watched-resource",
        name="watched-resource",
        description="Resource that can be subscribed to",
        mime_type="text/plain",
    ),
]
TEMPLATES = [
    types.ResourceTemplate(
        uri_template="test://template/{id}/data",
        name="template-data",
        description="Resource template with an {id} parameter",
        mime_type="application/json",
    )
]


async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=RESOURCES)


async def list_templates(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)


async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = params.uri
    contents: types.TextResourceContents | types.BlobResourceContents
    if uri == "test://static-text":
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=STATIC_TEXT)
    elif uri == "test://static-binary":
        contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG_B64)
    elif uri == "test://watched-resource":
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content")
    elif match := TEMPLATE_URI.fullmatch(uri):
        item_id = match["id"]
        data = {"id": item_id, "templateTest": True, "data": f"Data for ID: {item_id}"}
        contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(data))
    else:
        raise MCPError(
            types.INVALID_PARAMS if _is_modern(ctx) else RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri}
        )
    return types.ReadResourceResult(contents=[contents])


async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    _state(ctx).subscriptions.add(params.uri)
    return types.EmptyResult()


async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    _state(ctx).subscriptions.discard(params.uri)
    return types.EmptyResult()


# --- prompts ----------------------------------------------------------------------------------------------------


def _required(name: str, description: str) -> types.PromptArgument:
    return types.PromptArgument(name=name, description=description, required=True)


PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A simple prompt without arguments"),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two required arguments",
        arguments=[_required("arg1", "First test argument"), _required("arg2", "Second test argument")],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource",
        arguments=[_required("resourceUri", "URI of the resource to embed")],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt that includes an image"),
    types.Prompt(
        name="test_input_required_result_prompt", description="Asks for context first (InputRequiredResult, SEP-2322)"
    ),
]
CONTEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"context": {"type": "string"}},
    "required": ["context"],
}


async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS)


async def get_prompt(
    ctx: Ctx, params: types.GetPromptRequestParams
) -> types.GetPromptResult | types.InputRequiredResult:
    return await _settle(ctx, params, _get_prompt)


async def _get_prompt(
    ctx: Ctx, params: types.GetPromptRequestParams
) -> types.GetPromptResult | types.InputRequiredResult:
    prompt = next((p for p in PROMPTS if p.name == params.name), None)
    if prompt is None:
        raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
    args = params.arguments or {}
    missing = [a.name for a in prompt.arguments or [] if a.required and a.name not in args]
    if missing:
        raise MCPError(types.INVALID_PARAMS, f"Missing required arguments: {', '.join(missing)}")

    def user(content: types.TextContent | types.ImageContent | types.EmbeddedResource) -> types.PromptMessage:
        return types.PromptMessage(role="user", content=content)

    if params.name == "test_simple_prompt":
        messages = [user(types.TextContent(text="This is a simple prompt for testing."))]
    elif params.name == "test_prompt_with_arguments":
        text = f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"
        messages = [user(types.TextContent(text=text))]
    elif params.name == "test_input_required_result_prompt":
        context = _elicited(params, "user_context", "context")
        if context is None:
            ask = types.ElicitRequestFormParams(
                message="What context should the prompt use?", requested_schema=CONTEXT_SCHEMA
            )
            return types.InputRequiredResult(input_requests={"user_context": types.ElicitRequest(params=ask)})
        messages = [user(types.TextContent(text=f"Use the following context: {context}"))]
    elif params.name == "test_prompt_with_embedded_resource":
        resource = types.TextResourceContents(
            uri=args["resourceUri"], mime_type="text/plain", text="Embedded resource content for testing."
        )
        messages = [
            user(types.EmbeddedResource(resource=resource)),
            user(types.TextContent(text="Please process the embedded resource above.")),
        ]
    else:
        messages = [
            user(types.ImageContent(data=PNG_B64, mime_type="image/png")),
            user(types.TextContent(text="Please analyze the image above.")),
        ]
    return types.GetPromptResult(description=prompt.description, messages=messages)


# --- completion and logging -------------------------------------------------------------------------------------


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    """Prefix completion for the prompt arguments arg1/arg2 and the template's {id}."""
    ref, argument = params.ref, params.argument
    known = (isinstance(ref, types.PromptReference) and ref.name == "test_prompt_with_arguments") or (
        isinstance(ref, types.ResourceTemplateReference) and ref.uri == TEMPLATES[0].uri_template
    )
    candidates = COMPLETIONS.get(argument.name, []) if known else []
    values = [c for c in candidates if c.startswith(argument.value)]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


async def set_logging_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    _state(ctx).log_level = params.level
    return types.EmptyResult()


def build_server() -> Server[Any]:
    """The server with every conformance fixture registered."""
    server: Server[Any] = Server(
        SERVER_NAME,
        version="1.0.0",
        instructions="Test fixtures of the MCP conformance suite.",
        get_tool_input_schema=input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_subscriptions_listen=ListenHandler(BUS),
    )
    # Seals each outgoing `requestState` and checks each one echoed back; handlers see only their own plain state.
    security = RequestStateSecurity(keys=[REQUEST_STATE_KEY])
    server.middleware.append(RequestStateBoundary(security, default_audience=SERVER_NAME))
    # Registered apart: the constructor's `on_set_logging_level` warns that logging is deprecated at 2026-07-28.
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_logging_level)
    return server


# --- transports -------------------------------------------------------------------------------------------------


class InMemoryEventStore(EventStore):
    """Keeps the last SSE events in memory so a client can resume a stream with `Last-Event-ID`.

    The SDK's `EventStore` API carries no session id and a stream id is the JSON-RPC request id, so two sessions
    using the same request id share a stream id; event ids are global, which is enough for a test server.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: deque[tuple[EventId, StreamId, types.JSONRPCMessage | None]] = deque(maxlen=max_events)
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream_id = next((s for e, s, _ in self._events if e == last_event_id), None)
        if stream_id is None:
            return None
        for event_id, stream, message in list(self._events):
            if stream == stream_id and int(event_id) > int(last_event_id) and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


async def serve_stdio() -> None:
    server = build_server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve_http(port: int) -> None:
    # `host` set to a loopback address turns on the SDK's Host/Origin checks (DNS-rebinding protection).
    app = build_server().streamable_http_app(
        host="127.0.0.1", event_store=InMemoryEventStore(), retry_interval=RETRY_INTERVAL_MS
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    print(f"{SERVER_NAME}: http://127.0.0.1:{port}/mcp", file=sys.stderr, flush=True)
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT/mcp")
    options = parser.parse_args(argv)
    if options.http is None:
        anyio.run(serve_stdio)
    else:
        anyio.run(serve_http, options.http)


if __name__ == "__main__":
    main()
