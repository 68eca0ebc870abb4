"""An upstream MCP server for the front/relay tests (tests/test_front.py): everything but tools that an upstream
can offer, its secret token echoed where a gateway must redact it, and what it saw recorded.

    python tests/support/front_upstream.py [--features LIST]               # stdio; token from UPSTREAM_TOKEN
    python tests/support/front_upstream.py --http PORT [--features LIST]   # Streamable HTTP on 127.0.0.1:PORT/mcp;
                                                                   # token from the Authorization header

`--features` (comma-separated, default all): resources, subscribe, prompts, completions, logging. Tools are
always served; a feature left out is not announced (the low-level `Server` announces what has a handler).

It speaks the handshake protocol only, as servers written before 2026-07-28 do: server/discover is not found
(answered before the SDK's server sees it, which would commit the connection to 2026-07-28), and its questions
to the agent are requests of its own, on the back channel that protocol has.

What it saw (starts, log levels set, subscriptions, cancellations) is kept in memory (the `events` tool
waits for and returns it) and appended as JSON lines to $FRONT_DIR/events.jsonl when FRONT_DIR is set.

Tools:
    hello                   "hello"; its description carries the token (a listing a gateway must redact)
    pid                     this process's name, unique (its comm): in a sandbox its pid means nothing
                            outside; `tests.support.sandbox.host_pid` finds the pid the host knows it by
    chatty                  3 log lines (one with the token) and 3 progress steps (messages with the token)
    ask_llm {prompt}        sampling/createMessage with the prompt and the token; "model said: …" or
                            "sampling refused: code=…, message=…"
    ask_user {message}      elicitation/create with the message and the token; "user said: …" or "… refused: …"
    send_to {url, message}  a URL-mode elicitation/create of that URL; "user went: …" or "… refused: …"
    ask_then_withdraw       a sampling request the upstream cancels itself once `release` is called
    release                 lets `ask_then_withdraw` cancel its request
    block                   logs "blocking", then waits until cancelled (recorded as a "cancelled" event)
    rendezvous {n, run, tag}  waits until n calls of the run are in flight at once, then logs a line and asks
                            for sampling; returns what came back once all n have had their answer
    ask_with_context {context}  sampling/createMessage with includeContext = context; "model said: …"
    linger {tag}            returns at once; once woken (`wake` with its tag, in this process or any other
                            writing to the same FRONT_DIR), sends a log line, a progress step on the call's
                            old token and a sampling request (includeContext "allServers"), none tied to a
                            request, and records a "late" event with what came back of the sampling request
    wake {tag}              wakes the lingering call of that tag (here or in a process sharing FRONT_DIR) and
                            waits until its "late" event was recorded (it stays in flight meanwhile); returns
                            the "late" events of the tag
    touch {uris}            sends notifications/resources/updated for each URI (subscribed or not)
    fail                    raises an exception whose text holds the token
    events {kind, count}    waits (up to 10 s) until `count` events of `kind` were seen, returns them as JSON
    poll                    over HTTP, closes its response stream (SEP-1699 polling; the client resumes it with
                            Last-Event-ID), then answers "polled" after a moment; elsewhere "not polled"
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import SessionMessage

warnings.filterwarnings("ignore", category=MCPDeprecationWarning)  # logging and sampling are handshake-era

Ctx = ServerRequestContext[Any, Any]
RESOURCE_NOT_FOUND = -32002
LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
BINARY = bytes(range(256))
ALL_FEATURES = ("resources", "subscribe", "prompts", "completions", "logging")

# -- what it saw ---------------------------------------------------------------------------------

_events: list[dict[str, Any]] = []
_level: types.LoggingLevel = "debug"
_meetings: dict[str, tuple[int, anyio.Event]] = {}
# made once the event loop runs (see init_events, serve_stdio, serve_http)
_changed: anyio.Event
_release: anyio.Event
_wakes: dict[str, anyio.Event] = {}
_background: anyio.abc.TaskGroup  # what outlives the request that started it (`linger`)


def init_events() -> None:
    global _changed, _release
    _changed, _release = anyio.Event(), anyio.Event()


NAME = f"f{secrets.token_hex(7)}"
with open("/proc/self/comm", "w") as _comm:  # what the host sees as this process's name
    _comm.write(NAME)


def record(kind: str, **data: Any) -> None:
    global _changed
    event = {"kind": kind, **data}
    _events.append(event)
    folder = os.environ.get("FRONT_DIR")
    if folder:
        with open(os.path.join(folder, "events.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
    if "_changed" in globals():
        _changed.set()
        _changed = anyio.Event()


def token(ctx: Ctx | None) -> str:
    """Over HTTP the bearer token the gateway sent; over stdio the one in the environment."""
    request = ctx.request if ctx is not None else None
    header = request.headers.get("authorization", "") if request is not None else ""
    return header.removeprefix("Bearer ") if header else os.environ.get("UPSTREAM_TOKEN", "")


def text(value: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=value)], is_error=is_error)


async def log(ctx: Ctx, level: types.LoggingLevel, message: str) -> None:
    if LEVELS.index(level) >= LEVELS.index(_level):
        await ctx.session.send_log_message(level, message, logger="front-upstream", related_request_id=ctx.request_id)


# -- tools ---------------------------------------------------------------------------------------


def _schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


STRING = {"type": "string"}
TOOLS = {
    "hello": _schema(),
    "pid": _schema(),
    "chatty": _schema(),
    "ask_llm": _schema(prompt=STRING),
    "ask_user": _schema(message=STRING),
    "send_to": _schema(url=STRING, message=STRING),
    "ask_then_withdraw": _schema(),
    "release": _schema(),
    "block": _schema(),
    "rendezvous": _schema(n={"type": "integer"}, run=STRING, tag=STRING),
    "ask_with_context": _schema(context=STRING),
    "linger": _schema(tag=STRING),
    "wake": _schema(tag=STRING),
    "touch": _schema(uris={"type": "array", "items": STRING}),
    "fail": _schema(),
    "events": _schema(kind=STRING, count={"type": "integer"}),
    "poll": _schema(),
}


async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    def describe(name: str) -> str:
        return f"Says hello (configured with token {token(ctx)})." if name == "hello" else f"The {name} tool."

    return types.ListToolsResult(
        tools=[types.Tool(name=n, description=describe(n), input_schema=s) for n, s in TOOLS.items()]
    )


async def ask_llm(ctx: Ctx, prompt: str) -> types.CallToolResult:
    message = types.SamplingMessage(role="user", content=types.TextContent(text=f"{prompt} (token {token(ctx)})"))
    try:
        answer = await ctx.session.create_message([message], max_tokens=50, related_request_id=ctx.request_id)
    except MCPError as exc:
        return text(f"sampling refused: code={exc.code}, message={exc.message}", is_error=True)
    reply = answer.content.text if isinstance(answer.content, types.TextContent) else answer.content.type
    return text(f"model said: {reply}")


async def ask_user(ctx: Ctx, message: str) -> types.CallToolResult:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    try:
        answer = await ctx.session.elicit_form(
            f"{message} (token {token(ctx)})", schema, related_request_id=ctx.request_id
        )
    except MCPError as exc:
        return text(f"elicitation refused: code={exc.code}, message={exc.message}", is_error=True)
    return text(f"user said: action={answer.action}, content={json.dumps(answer.content, sort_keys=True)}")


async def send_to(ctx: Ctx, url: str, message: str) -> types.CallToolResult:
    try:
        answer = await ctx.session.elicit_url(message, url, "up-1", related_request_id=ctx.request_id)
    except MCPError as exc:
        return text(f"elicitation refused: code={exc.code}, message={exc.message}", is_error=True)
    return text(f"user went: action={answer.action}")


async def ask_then_withdraw(ctx: Ctx) -> types.CallToolResult:
    message = types.SamplingMessage(role="user", content=types.TextContent(text="never mind"))
    async with anyio.create_task_group() as tg:

        async def withdraw() -> None:
            await _release.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(withdraw)
        await ctx.session.create_message([message], max_tokens=5, related_request_id=ctx.request_id)
        return text("the sampling request was answered")  # not expected: the agent never answers
    record("withdrawn")
    return text("the sampling request was withdrawn")


async def block(ctx: Ctx) -> types.CallToolResult:
    record("blocking", request_id=ctx.request_id)
    await log(ctx, "info", "blocking")
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        record("cancelled", request_id=ctx.request_id)
        raise
    raise AssertionError("unreachable")


async def meet(place: str, n: int) -> bool:
    """Wait until `n` calls reached `place` (False after 10 s)."""
    count, everyone = _meetings.get(place, (0, anyio.Event()))
    _meetings[place] = (count + 1, everyone)
    if count + 1 >= n:
        everyone.set()
    with anyio.move_on_after(10):
        await everyone.wait()
    return everyone.is_set()


async def rendezvous(ctx: Ctx, n: int, run: str, tag: str) -> types.CallToolResult:
    """Once `n` calls of this run are in flight, log a line and ask for sampling; return only when every
    one of them has had its answer (so that all stay in flight meanwhile)."""
    if not await meet(f"{run}:arrived", n):
        return text(f"{tag}: not all {n} calls arrived", is_error=True)
    await log(ctx, "warning", f"{tag}: logged while {n} calls were in flight")
    sampled = await ask_llm(ctx, f"{tag}: which agent?")
    await meet(f"{run}:answered", n)
    return text(f"{tag}: {sampled.content[0].text}", is_error=bool(sampled.is_error))  # type: ignore[union-attr]


async def ask_with_context(ctx: Ctx, context: types.IncludeContext) -> types.CallToolResult:
    message = types.SamplingMessage(role="user", content=types.TextContent(text="what do you know?"))
    try:
        answer = await ctx.session.create_message(
            [message], max_tokens=5, include_context=context, related_request_id=ctx.request_id
        )
    except MCPError as exc:
        return text(f"sampling refused: code={exc.code}, message={exc.message}", is_error=True)
    reply = answer.content.text if isinstance(answer.content, types.TextContent) else answer.content.type
    return text(f"model said: {reply}")


def _wake_file(tag: str) -> str | None:
    folder = os.environ.get("FRONT_DIR")
    return os.path.join(folder, f"wake-{tag}") if folder else None


async def _woken(tag: str) -> None:
    woken, wake_file = _wakes.setdefault(tag, anyio.Event()), _wake_file(tag)
    while not woken.is_set() and not (wake_file is not None and os.path.exists(wake_file)):
        with anyio.move_on_after(0.05):
            await woken.wait()


async def linger(ctx: Ctx, tag: str) -> types.CallToolResult:
    """What an upstream may do after a call returned: send on its own, tied to no request."""
    session = ctx.session
    meta: dict[str, Any] = dict(ctx.meta or {})
    progress_token = meta.get("progress_token", meta.get("progressToken"))

    async def later() -> None:
        await _woken(tag)
        await session.send_log_message("warning", f"{tag}: sent after its call returned, token {token(ctx)}")
        if progress_token is not None:
            await session.send_progress_notification(progress_token, 1, 1, f"{tag}: late progress")
        message = types.SamplingMessage(role="user", content=types.TextContent(text=f"{tag}: who is there?"))
        try:
            answer = await session.create_message([message], max_tokens=5, include_context="allServers")
            outcome = f"answered: {answer.content.text if isinstance(answer.content, types.TextContent) else '?'}"
        except MCPError as exc:
            outcome = f"refused: code={exc.code}, message={exc.message}"
        record("late", tag=tag, outcome=outcome)

    _background.start_soon(later)
    return text(f"{tag}: lingering")


def _late_events(tag: str) -> list[dict[str, Any]]:
    """The "late" events of a tag, of every process writing to FRONT_DIR (of this one only without it)."""
    folder = os.environ.get("FRONT_DIR")
    path = os.path.join(folder, "events.jsonl") if folder else None
    if path is None:
        seen = _events
    elif os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            seen = list(map(json.loads, f.read().splitlines()))
    else:
        seen = []
    return [e for e in seen if e["kind"] == "late" and e["tag"] == tag]


async def wake(tag: str) -> types.CallToolResult:
    _wakes.setdefault(tag, anyio.Event()).set()
    wake_file = _wake_file(tag)
    if wake_file is not None:
        with open(wake_file, "w", encoding="utf-8"):
            pass
    with anyio.move_on_after(10):
        while not _late_events(tag):
            await anyio.sleep(0.05)
    return text(json.dumps(_late_events(tag)))


async def events(kind: str, count: int) -> types.CallToolResult:
    with anyio.move_on_after(10):
        while sum(e["kind"] == kind for e in _events) < count:
            await _changed.wait()
    return text(json.dumps([e for e in _events if e["kind"] == kind]))


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    name = params.name
    if name == "hello":
        return text("hello")
    if name == "pid":
        return text(NAME)
    if name == "chatty":
        await log(ctx, "debug", "chatty: one")
        for step in (1, 2, 3):
            await ctx.session.report_progress(step, 3, f"step {step} of 3, token {token(ctx)}")
        await log(ctx, "info", "chatty: two")
        await log(ctx, "warning", f"chatty: the token is {token(ctx)}")
        return text("chatty done")
    if name == "ask_llm":
        return await ask_llm(ctx, args["prompt"])
    if name == "ask_user":
        return await ask_user(ctx, args["message"])
    if name == "send_to":
        return await send_to(ctx, args["url"], args["message"])
    if name == "ask_then_withdraw":
        return await ask_then_withdraw(ctx)
    if name == "release":
        _release.set()
        return text("released")
    if name == "block":
        return await block(ctx)
    if name == "rendezvous":
        return await rendezvous(ctx, int(args["n"]), str(args["run"]), str(args["tag"]))
    if name == "ask_with_context":
        return await ask_with_context(ctx, args["context"])
    if name == "linger":
        return await linger(ctx, str(args["tag"]))
    if name == "wake":
        return await wake(str(args["tag"]))
    if name == "touch":
        for uri in args["uris"]:
            await ctx.session.send_resource_updated(uri)
        return text("touched")
    if name == "fail":
        print(f"front-upstream: about to fail with token {token(ctx)}", file=sys.stderr, flush=True)
        raise RuntimeError(f"failed while holding token {token(ctx)}")
    if name == "events":
        return await events(args["kind"], int(args["count"]))
    if name == "poll":
        if ctx.close_sse_stream is None:
            return text("not polled")
        await ctx.close_sse_stream()
        await anyio.sleep(0.3)
        return text("polled")
    raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")


# -- resources -----------------------------------------------------------------------------------

STATIC = "front static text"
RESOURCE_URIS = ("front://static", "front://binary", "front://secret", "front://watched-a", "front://watched-b")
TEMPLATE = "front://items/{id}"


async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    def describe(uri: str) -> str:
        return f"Holds the token {token(ctx)}." if uri == "front://secret" else f"The resource {uri}."

    resources = [types.Resource(uri=u, name=u.removeprefix("front://"), description=describe(u)) for u in RESOURCE_URIS]
    return types.ListResourcesResult(resources=resources)


async def list_templates(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(
        resource_templates=[types.ResourceTemplate(uri_template=TEMPLATE, name="items", mime_type="text/plain")]
    )


async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    contents: types.TextResourceContents | types.BlobResourceContents
    if uri == "front://static" or uri.startswith("front://watched-"):
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=f"{STATIC} ({uri})")
    elif uri == "front://binary":
        blob = base64.b64encode(BINARY).decode()
        contents = types.BlobResourceContents(uri=uri, mime_type="application/octet-stream", blob=blob)
    elif uri == "front://secret":
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=f"the token is {token(ctx)}")
    elif uri == "front://boom":
        raise MCPError(types.INTERNAL_ERROR, f"boom while holding token {token(ctx)}", {"token": token(ctx)})
    elif uri.startswith("front://items/"):
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=f"item {uri.rsplit('/', 1)[1]}")
    else:
        raise MCPError(RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
    return types.ReadResourceResult(contents=[contents])


async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    record("subscribe", uri=str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    record("unsubscribe", uri=str(params.uri))
    return types.EmptyResult()


# -- prompts, completion, logging ----------------------------------------------------------------

PROMPTS = [
    types.Prompt(name="greet", arguments=[types.PromptArgument(name="name", required=True)]),
    types.Prompt(name="leaky", description="A prompt that quotes the token."),
    types.Prompt(name="broken", description="A prompt that fails, quoting the token."),
]
NAMES = ["alice", "albert", "bob"]


async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS)


async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    args = params.arguments or {}
    if params.name == "greet":
        if "name" not in args:
            raise MCPError(types.INVALID_PARAMS, "Missing required argument: name")
        says = f"Hello, {args['name']}."
    elif params.name == "leaky":
        says = f"Use the token {token(ctx)} wisely."
    elif params.name == "broken":
        raise MCPError(types.INVALID_PARAMS, f"broken prompt, token {token(ctx)}")
    else:
        raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
    message = types.PromptMessage(role="user", content=types.TextContent(text=says))
    return types.GetPromptResult(description=f"prompt {params.name}", messages=[message])


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    ref = params.ref
    values: list[str] = []
    if isinstance(ref, types.PromptReference) and ref.name == "greet" and params.argument.name == "name":
        values = [n for n in NAMES if n.startswith(params.argument.value)]
    elif isinstance(ref, types.PromptReference) and ref.name == "leaky":
        values = [token(ctx)]
    elif isinstance(ref, types.ResourceTemplateReference) and ref.uri == TEMPLATE:
        values = [i for i in ("1", "12", "2") if i.startswith(params.argument.value)]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


async def set_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    global _level
    _level = params.level
    record("set_level", level=params.level)
    return types.EmptyResult()


def build_server(features: set[str]) -> Server[Any]:
    resources = "resources" in features
    prompts = "prompts" in features
    server: Server[Any] = Server(
        "front-upstream",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources if resources else None,
        on_list_resource_templates=list_templates if resources else None,
        on_read_resource=read_resource if resources else None,
        on_subscribe_resource=subscribe if resources and "subscribe" in features else None,
        on_unsubscribe_resource=unsubscribe if resources and "subscribe" in features else None,
        on_list_prompts=list_prompts if prompts else None,
        on_get_prompt=get_prompt if prompts else None,
        on_completion=complete if "completions" in features else None,
    )
    if "logging" in features:
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    return server


def _is_discover(message: Any) -> bool:
    root = getattr(getattr(message, "message", None), "root", getattr(message, "message", None))
    return isinstance(root, types.JSONRPCRequest) and root.method == "server/discover"


@asynccontextmanager
async def handshake_only(read_stream: Any, write_stream: Any) -> AsyncIterator[Any]:
    """The stdio read stream with server/discover answered "not found" on the way, as an older server would."""
    send, receive = anyio.create_memory_object_stream[Any](16)

    async def pass_on() -> None:
        async with send:
            async for message in read_stream:
                if not _is_discover(message):
                    await send.send(message)
                    continue
                error = types.JSONRPCError(
                    jsonrpc="2.0",
                    id=message.message.id,
                    error=types.ErrorData(code=types.METHOD_NOT_FOUND, message="Method not found"),
                )
                await write_stream.send(SessionMessage(error))

    async with anyio.create_task_group() as tg:
        tg.start_soon(pass_on)
        yield receive
        tg.cancel_scope.cancel()


def handshake_only_http(app: Any) -> Any:
    """The HTTP app with a server/discover POST refused as a server before 2026-07-28 refuses a request
    outside any session."""

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            event = await receive()
            chunks.append(event.get("body", b""))
            more = event.get("more_body", False)
        body = b"".join(chunks)
        try:
            method = json.loads(body).get("method")
        except (ValueError, AttributeError):
            method = None
        if method == "server/discover":
            error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Missing session ID"}}
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": json.dumps(error).encode()})
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return guarded


class Events(EventStore):
    """Every event, for resumed streams (a test server: nothing is ever forgotten)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, types.JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        self._events.append((stream_id, message))
        return str(len(self._events))

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        if not last_event_id.isdigit() or not 0 < int(last_event_id) <= len(self._events):
            return None
        stream_id = self._events[int(last_event_id) - 1][0]
        for number, (stream, message) in enumerate(self._events[int(last_event_id) :], int(last_event_id) + 1):
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, str(number)))
        return stream_id


async def serve_stdio(server: Server[Any]) -> None:
    global _background
    init_events()
    async with anyio.create_task_group() as _background:
        async with stdio_server() as (read_stream, write_stream), handshake_only(read_stream, write_stream) as read:
            await server.run(read, write_stream, server.create_initialization_options())
        _background.cancel_scope.cancel()


async def serve_http(server: Server[Any], port: int) -> None:
    global _background
    import uvicorn

    init_events()
    # resumable streams: the `poll` tool closes its stream and the client comes back for the rest
    app = handshake_only_http(server.streamable_http_app(host="127.0.0.1", event_store=Events()))
    async with anyio.create_task_group() as _background:
        await uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")).serve()
        _background.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT")
    parser.add_argument("--features", default=",".join(ALL_FEATURES))
    options = parser.parse_args()
    features = {f for f in options.features.split(",") if f}
    record("start", pid=NAME, features=sorted(features))
    server = build_server(features)
    if options.http is None:
        anyio.run(serve_stdio, server)
    else:
        anyio.run(serve_http, server, options.http)


if __name__ == "__main__":
    main()
