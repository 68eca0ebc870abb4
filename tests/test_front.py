"""The rest of MCP for upstream servers (Front, Relay): resources, prompts, completion and logging relayed per
group; what an upstream sends on its own (log lines, progress, sampling, elicitation, resource updates,
cancellations) routed to the agent request it belongs to, redacted, and never to another agent.

Nothing is mocked. Upstreams are real processes: the conformance suite's fixture server
(conformance/upstream_server.py) and tests/support/front_upstream.py, which echoes its token everywhere a gateway must
redact it and records what it saw (the `events` tool, and $FRONT_DIR/events.jsonl). They run over stdio,
started by the gateway, and once over Streamable HTTP on 127.0.0.1. Agents are the SDK's `Client`: in memory
against `build_server(...)` (`mode="legacy"` for the handshake-era features: sampling, elicitation,
logging/setLevel, subscriptions), and once through a real `credgate serve --group G` process.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from click.testing import CliRunner
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.session import ElicitationFnT, SamplingFnT
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from pydantic import BaseModel

from mcp_credgate import admin
from mcp_credgate import front as front_module
from mcp_credgate.agents import create_agent
from mcp_credgate.caller import Caller
from mcp_credgate.cli import cli
from mcp_credgate.credential import Credential
from mcp_credgate.declarations import McpHandler, load_catalog
from mcp_credgate.errors import DeclarationError
from mcp_credgate.gateway import Gateway
from mcp_credgate.handlers.upstream import upstream_pool
from mcp_credgate.isolation import UpstreamScope
from mcp_credgate.server import build_server
from tests.support import REPO_ROOT, SUPPORT_DIR
from tests.support.gateway import (
    World,
    assert_no_leak,
    assert_no_leak_at_rest,
    closed_port,
    listening_process,
    make_canary,
    python_tool,
    result_text,
    store_env,
    teed_serve,
)
from tests.support.http_server import bearer, start_server
from tests.support.sandbox import host_pid

pytestmark = [
    pytest.mark.anyio,
    # logging/setLevel, resources/subscribe, sampling: handshake-era features the SDK marks deprecated
    pytest.mark.filterwarnings(f"ignore::{MCPDeprecationWarning.__module__}.{MCPDeprecationWarning.__name__}"),
]

FIXTURE = SUPPORT_DIR / "front_upstream.py"
CONFORMANCE = REPO_ROOT / "conformance" / "upstream_server.py"

TOKEN = make_canary("FR", rich=True)  # the credential of the `fr` upstream: its fixture echoes it everywhere
OTHER_TOKEN = make_canary("FO")
REDACTED = "[redacted:token]"
RESOURCE_NOT_FOUND = -32002

FRTOKEN = '[credential]\ntype = "frtoken"\nfields = [{ name = "token", kind = "token" }]\n'
FIXTURE_RESOURCES = ["front://static", "front://binary", "front://secret", "front://watched-a", "front://watched-b"]
CONFORMANCE_RESOURCES = ["test://static-text", "test://static-binary", "test://watched-resource"]
CONFORMANCE_PROMPTS = [
    "test_simple_prompt",
    "test_prompt_with_arguments",
    "test_prompt_with_embedded_resource",
    "test_prompt_with_image",
    "test_input_required_result_prompt",
]
STATIC_TEXT = "This is the content of the static text resource."  # conformance/upstream_server.py
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def toml_str(text: str | Path) -> str:
    return json.dumps(str(text))  # a JSON string is a valid TOML basic string


# -- declarations and discovery ----------------------------------------------------------------------

# A variant of an upstream: the arguments it is started with. The fixture's `--features` choose what it
# announces (tools always).
VARIANTS: dict[str, list[str]] = {
    "fixture": [str(FIXTURE)],
    "fixture_prompts_only": [str(FIXTURE), "--features", "prompts"],
    "fixture_no_subscribe": [str(FIXTURE), "--features", "resources"],
    "conformance": [str(CONFORMANCE)],
}


def fixture_decl(name: str, variant: str, front_dir: Path, *, extra: str = "") -> str:
    """A stdio declaration of the fixture server: its token from the credential, recording into front_dir."""
    args = ", ".join(toml_str(a) for a in VARIANTS[variant])
    return (
        f'name = "{name}"\ndescription = "The front fixture upstream."\n{FRTOKEN}'
        f'[handler]\nkind = "mcp"\ncommand = {toml_str(sys.executable)}\nargs = [{args}]\n'
        f'env = {{ UPSTREAM_TOKEN = "{{cred.token}}", FRONT_DIR = {toml_str(front_dir)} }}\n'
        f"sandbox.write = [{toml_str(front_dir)}]\n"  # where it records what it saw
        f"timeout = 30\n{extra}\n"
    )


def conformance_decl(name: str, *, extra: str = "") -> str:
    """The conformance suite's fixture server: no credential."""
    return (
        f'name = "{name}"\ndescription = "The conformance fixtures."\n'
        f'[handler]\nkind = "mcp"\ncommand = {toml_str(sys.executable)}\nargs = [{toml_str(CONFORMANCE)}]\n'
        f"timeout = 30\n{extra}\n"
    )


Discovered = dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]


@pytest.fixture(scope="module")
def discovered() -> Discovered:
    """Each variant's tools and announced capabilities, as the pool discovers them (one start each, shared by
    the module: a test's store gets them as `credgate tools` would have cached them)."""

    async def discover_all() -> Discovered:
        found: Discovered = {}

        async def one(variant: str, pool: Any) -> None:
            handler = McpHandler(kind="mcp", command=sys.executable, args=tuple(VARIANTS[variant]))
            scope = UpstreamScope.for_discovery(variant, "d")
            found[variant] = await pool.discover(scope, handler, Credential("d", "frtoken", {}, frozenset()))

        with anyio.fail_after(60):
            async with upstream_pool() as pool, anyio.create_task_group() as tg:
                for variant in VARIANTS:
                    tg.start_soon(one, variant, pool)
        return found

    return anyio.run(discover_all)


def front_world(
    root: Path, discovered: Discovered, upstreams: dict[str, tuple[str, str]], tools: dict[str, str] | None = None
) -> World:
    """A credgate installation declaring `upstreams` (name → (declaration, variant)), their discovery cached."""
    world = World.create(root, {**{name: decl for name, (decl, _) in upstreams.items()}, **(tools or {})})
    for name, (_, variant) in upstreams.items():
        listings, capabilities = discovered[variant]
        world.store.save_upstream_tools(name, listings, capabilities)
    world.catalog = world.catalog.with_discovered(world.store.discovered_tools())
    assert not world.catalog.problems, world.catalog.problems
    return world


def fr_world(tmp_path: Path, discovered: Discovered, front_dir: Path, *, extra: str = "") -> World:
    """The fixture upstream `fr`, allowed as a whole to group `g` with credential `tok` (its TOKEN)."""
    world = front_world(
        tmp_path / "w", discovered, {"fr": (fixture_decl("fr", "fixture", front_dir, extra=extra), "fixture")}
    )
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.allow("g", "fr.*")
    world.bind("g", "fr", "tok")
    return world


def prefixed_and_plain_world(tmp_path: Path, discovered: Discovered) -> World:
    """The conformance fixtures twice: `conf` (prefix: the declaration's name) allowed to group `prefixed`,
    `bare` (prefix = "") to group `plain`."""
    world = front_world(
        tmp_path / "w",
        discovered,
        {
            "conf": (conformance_decl("conf"), "conformance"),
            "bare": (conformance_decl("bare", extra='prefix = ""'), "conformance"),
        },
    )
    world.allow("prefixed", "conf.*")
    world.allow("plain", "bare.*")
    return world


@pytest.fixture
def front_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "front"
    folder.mkdir()
    return folder


def recorded(front_dir: Path, kind: str) -> list[dict[str, Any]]:
    """What the fixture upstream(s) recorded in the folder, of one kind."""
    path = front_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


# -- agents ------------------------------------------------------------------------------------------


@dataclass
class Agent:
    """An agent's client and everything it received: results, errors, log lines, progress, notifications,
    and the requests the server sent it (sampling, elicitation)."""

    client: Client | None = None
    received: list[str] = field(default_factory=list)  # everything, as JSON (for the leak scans)
    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    notifications: list[types.ServerNotification] = field(default_factory=list)
    sampled: list[types.CreateMessageRequestParams] = field(default_factory=list)
    elicited: list[types.ElicitRequestParams] = field(default_factory=list)
    progress: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    _arrival: anyio.Event = field(default_factory=anyio.Event)

    @property
    def mcp(self) -> Client:
        assert self.client is not None
        return self.client

    def keep(self, model: BaseModel) -> None:
        self.received.append(model.model_dump_json())
        self._arrival.set()
        self._arrival = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Until what this agent has received satisfies `condition` (woken by each arrival)."""
        while not condition():
            await self._arrival.wait()

    async def ask(self, request: Awaitable[Any]) -> Any:
        """A request answered with a result."""
        result = await request
        self.keep(result)
        return result

    async def refused(self, request: Awaitable[Any]) -> MCPError:
        """A request answered with a JSON-RPC error (raises AssertionError for a result)."""
        try:
            result = await request
        except MCPError as exc:
            self.keep(exc.error)
            return exc
        raise AssertionError(f"expected a JSON-RPC error, got {result!r}")

    async def call(self, name: str, args: dict[str, Any] | None = None) -> types.CallToolResult:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            self.progress.append((progress, total, message))
            self.keep(
                types.ProgressNotificationParams(progress_token=0, progress=progress, total=total, message=message)
            )

        result: types.CallToolResult = await self.ask(
            self.mcp.call_tool(name, args or {}, progress_callback=on_progress)
        )
        return result

    def updated(self) -> list[str]:
        return [n.params.uri for n in self.notifications if isinstance(n, types.ResourceUpdatedNotification)]

    def everything(self) -> str:
        return "\n".join(self.received)


async def answer_paris(
    ctx: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(text="Paris"), model="test-model")


async def answer_ann(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ann", "username": "ann", "email": "ann@example.com"})


DEFAULT: Any = object()


@asynccontextmanager
async def agent_client(
    server: Any,
    *,
    mode: str = "legacy",
    sampling: SamplingFnT | None = DEFAULT,
    elicitation: ElicitationFnT | None = DEFAULT,
    log_level: types.LoggingLevel | None = None,
) -> AsyncIterator[Agent]:
    """A client whose callbacks record what it receives; `sampling` / `elicitation`: the callback answering
    those requests (by default "Paris" and "Ann"), or None for a client that does not offer them."""
    a = Agent()
    answer_sampling = answer_paris if sampling is DEFAULT else sampling
    answer_elicitation = answer_ann if elicitation is DEFAULT else elicitation

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        a.logs.append(params)
        a.keep(params)

    async def on_message(message: Any) -> None:
        if isinstance(message, BaseModel):
            a.notifications.append(message)  # type: ignore[arg-type]
            a.keep(message)

    async def on_sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        a.sampled.append(params)
        a.keep(params)
        assert answer_sampling is not None  # offered only then
        return await answer_sampling(context, params)

    async def on_elicitation(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        a.elicited.append(params)
        a.keep(params)
        assert answer_elicitation is not None  # offered only then
        return await answer_elicitation(context, params)

    async with Client(
        server,
        mode=mode,
        cache=None,
        logging_callback=on_log,
        message_handler=on_message,
        sampling_callback=on_sampling if answer_sampling is not None else None,
        elicitation_callback=on_elicitation if answer_elicitation is not None else None,
        log_level=log_level,
    ) as client:
        a.client = client
        yield a


def agent(gw: Gateway, group: str, *, name: str | None = None, **options: Any) -> Any:
    """An agent of `group` against the gateway's MCP server, in memory."""
    caller = Caller(group, name)
    return agent_client(build_server(gw, lambda ctx: caller), **options)


def capabilities(a: Agent) -> dict[str, Any]:
    dumped: dict[str, Any] = a.mcp.server_capabilities.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


# -- 1. resources -----------------------------------------------------------------------------------


async def test_resources_are_listed_and_read_through_the_gateway_with_their_uris_unchanged(
    tmp_path: Path, discovered: Discovered
) -> None:
    world = front_world(tmp_path / "w", discovered, {"conf": (conformance_decl("conf"), "conformance")})
    world.allow("g", "conf.*")
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g") as legacy, agent(gw, "g", mode="auto") as a:
                for client in (legacy, a):
                    listed = await client.ask(client.mcp.list_resources())
                    templates = await client.ask(client.mcp.list_resource_templates())
                    assert [str(r.uri) for r in listed.resources] == CONFORMANCE_RESOURCES
                    assert [t.uri_template for t in templates.resource_templates] == ["test://template/{id}/data"]
                text = await a.ask(a.mcp.read_resource("test://static-text"))
                binary = await a.ask(a.mcp.read_resource("test://static-binary"))
                templated = await a.ask(a.mcp.read_resource("test://template/123/data"))
                via_legacy = await legacy.ask(legacy.mcp.read_resource("test://template/7/data"))
                unknown = await a.refused(a.mcp.read_resource("test://no-such-resource"))  # the upstream's answer
                unknown_here = await a.refused(a.mcp.read_resource("other://elsewhere"))  # the gateway's
                unknown_legacy = await legacy.refused(legacy.mcp.read_resource("other://elsewhere"))
    finally:
        world.close()

    [contents] = text.contents
    assert isinstance(contents, types.TextResourceContents)
    assert (str(contents.uri), contents.mime_type, contents.text) == ("test://static-text", "text/plain", STATIC_TEXT)
    [blob] = binary.contents
    assert isinstance(blob, types.BlobResourceContents) and blob.mime_type == "image/png"
    assert base64.b64decode(blob.blob).startswith(PNG_MAGIC)
    [item] = templated.contents
    assert isinstance(item, types.TextResourceContents) and str(item.uri) == "test://template/123/data"
    assert json.loads(item.text) == {"id": "123", "templateTest": True, "data": "Data for ID: 123"}
    assert json.loads(via_legacy.contents[0].text)["id"] == "7"
    # an unknown resource is Invalid params on 2026-07-28 (SEP-2164), -32002 before
    assert unknown.code == unknown_here.code == types.INVALID_PARAMS and unknown_legacy.code == RESOURCE_NOT_FOUND


async def test_an_unbound_upstream_answers_with_the_setup_warning_and_reads_are_audited(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    """A read or a prompt that only an upstream without its credential could answer gets the setup warning
    (contract §4: setup_url and setup_command name the upstream, and both work); once bound, reads of its
    content leave audit rows like tool calls."""
    world = front_world(tmp_path / "w", discovered, {"fr": (fixture_decl("fr", "fixture", front_dir), "fixture")})
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.allow("g", "fr.*")
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g", name="ann") as a:
                listed = await a.ask(a.mcp.list_resources())
                unread = await a.refused(a.mcp.read_resource("front://static"))
                no_prompt = await a.refused(a.mcp.get_prompt("fr_greet", {"name": "Ann"}))
                world.bind("g", "fr", "tok")  # what the warning's command does (`credgate bind g fr <name>`)
                read = await a.ask(a.mcp.read_resource("front://static"))
                prompt = await a.ask(a.mcp.get_prompt("fr_greet", {"name": "Ann"}))
        setup_page = admin.require_tool(world.catalog, "fr")  # the page the setup_url opens finds its subject
        rows = {(r.group, r.agent, r.tool, r.credential, r.outcome) for r in world.audit()}  # flushed at close
    finally:
        world.close()

    assert listed.resources == []  # a list leaves the unbound upstream out
    for refusal in (unread, no_prompt):
        warning = refusal.error.data
        assert refusal.code == types.INVALID_REQUEST and "Nothing was sent" in refusal.message
        assert warning["warning"] == "missing_credential" and (warning["tool"], warning["group"]) == ("fr", "g")
        assert warning["setup_url"].endswith("/groups/g/tools/fr/setup")
        assert warning["setup_command"] == "credgate cred add <name> --tool fr && credgate bind g fr <name>"
    assert setup_page.name == "fr" and setup_page.credential is not None
    assert read.contents[0].text.startswith("front static text") and prompt.messages  # front_upstream.STATIC
    assert ("g", "ann", "fr:resources/read", "tok", "ok") in rows
    assert ("g", "ann", "fr:prompts/get", "tok", "ok") in rows
    assert_no_leak("\n".join(a.received), TOKEN)


# -- 2, 3. prompts and completion --------------------------------------------------------------------


async def test_prompts_are_exported_with_the_prefix_and_kept_unchanged_with_an_empty_one(
    tmp_path: Path, discovered: Discovered
) -> None:
    world = prefixed_and_plain_world(tmp_path, discovered)
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "prefixed") as p, agent(gw, "plain") as b:
                prefixed = await p.ask(p.mcp.list_prompts())
                plain = await b.ask(b.mcp.list_prompts())
                tools = await b.ask(b.mcp.list_tools())
                args = {"arg1": "alpha", "arg2": "beta"}
                got = await p.ask(p.mcp.get_prompt("conf_test_prompt_with_arguments", args))
                got_plain = await b.ask(b.mcp.get_prompt("test_prompt_with_arguments", args))
                simple = await p.ask(p.mcp.get_prompt("conf_test_simple_prompt"))
                unknown = await p.refused(p.mcp.get_prompt("conf_no_such_prompt"))
                unprefixed = await p.refused(p.mcp.get_prompt("test_simple_prompt"))
                missing = await p.refused(p.mcp.get_prompt("conf_test_prompt_with_arguments", {"arg1": "x"}))
                unknown_plain = await b.refused(b.mcp.get_prompt("no_such_prompt"))
    finally:
        world.close()

    assert [x.name for x in prefixed.prompts] == [f"conf_{n}" for n in CONFORMANCE_PROMPTS]
    assert [x.name for x in plain.prompts] == CONFORMANCE_PROMPTS
    with_args = next(x for x in prefixed.prompts if x.name == "conf_test_prompt_with_arguments")
    assert [(a.name, a.required) for a in with_args.arguments or []] == [("arg1", True), ("arg2", True)]
    assert "test_simple_text" in {t.name for t in tools.tools}  # an empty prefix keeps the tool names too
    for result in (got, got_plain):
        [message] = result.messages
        assert message.content.text == "Prompt with arguments: arg1='alpha', arg2='beta'"
    assert simple.messages[0].content.text == "This is a simple prompt for testing."
    # the upstream's own answer (it names the prompt as the upstream knows it)
    assert unknown.code == types.INVALID_PARAMS and "no_such_prompt" in unknown.message
    assert unprefixed.code == types.INVALID_PARAMS  # only the exported name is the group's
    assert missing.code == types.INVALID_PARAMS and "arg2" in missing.message  # the upstream's own error
    assert unknown_plain.code == types.INVALID_PARAMS


async def test_completion_of_a_prompt_argument_by_its_exported_name_and_of_a_template(
    tmp_path: Path, discovered: Discovered
) -> None:
    world = prefixed_and_plain_world(tmp_path, discovered)
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "prefixed") as p, agent(gw, "plain") as b:
                prompt = types.PromptReference(name="conf_test_prompt_with_arguments")
                by_prompt = await p.ask(p.mcp.complete(prompt, {"name": "arg1", "value": "pa"}))
                by_context = await p.ask(p.mcp.complete(prompt, {"name": "arg2", "value": "wor"}, {"arg1": "paris"}))
                template = types.ResourceTemplateReference(uri="test://template/{id}/data")
                by_template = await p.ask(p.mcp.complete(template, {"name": "id", "value": "1"}))
                plain = types.PromptReference(name="test_prompt_with_arguments")
                by_plain = await b.ask(b.mcp.complete(plain, {"name": "arg1", "value": "te"}))
                upstream_name = await p.refused(
                    p.mcp.complete(
                        types.PromptReference(name="test_prompt_with_arguments"), {"name": "arg1", "value": ""}
                    )
                )
    finally:
        world.close()

    assert by_prompt.completion.values == ["paris", "park", "party"]
    assert by_context.completion.values == ["world", "word", "work"]
    assert by_template.completion.values == ["1", "123"]
    assert by_plain.completion.values == ["test-value", "testing"]
    assert upstream_name.code == types.INVALID_PARAMS  # under its upstream name the prompt is not the group's


# -- 4. logging and progress ------------------------------------------------------------------------


async def test_set_level_reaches_the_upstream_and_its_log_lines_and_progress_reach_the_agent_first(
    tmp_path: Path, discovered: Discovered
) -> None:
    world = front_world(tmp_path / "w", discovered, {"conf": (conformance_decl("conf"), "conformance")})
    world.allow("g", "conf.*")
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g") as a:
                assert await a.ask(a.mcp.set_logging_level("debug")) == types.EmptyResult()
                logged = await a.call("conf_test_tool_with_logging")
                logs_before_result = list(a.logs)  # what had arrived when call_tool returned
                progressed = await a.call("conf_test_tool_with_progress")
                progress_before_result = list(a.progress)

                await a.ask(a.mcp.set_logging_level("error"))  # the upstream filters its own lines now
                quiet = await a.call("conf_test_tool_with_logging")
                logs_after_error_level = list(a.logs)
                await a.ask(a.mcp.set_logging_level("debug"))

                # a 2026-07-28 agent gets the lines of the requests that opt in (its `log_level`) only
                async with agent(gw, "g", mode="auto", log_level="info") as modern:
                    await modern.call("conf_test_tool_with_logging")
                async with agent(gw, "g", mode="auto") as silent:
                    await silent.call("conf_test_tool_with_logging")
    finally:
        world.close()

    assert result_text(logged) == "Tool with logging executed successfully"
    assert [(x.level, x.logger, x.data) for x in logs_before_result] == [
        ("info", "mcp-conformance-upstream", "Tool execution started"),
        ("info", "mcp-conformance-upstream", "Tool processing data"),
        ("info", "mcp-conformance-upstream", "Tool execution completed"),
    ]
    assert not progressed.is_error
    assert progress_before_result == [
        (0, 100, "Completed step 0 of 100"),
        (50, 100, "Completed step 50 of 100"),
        (100, 100, "Completed step 100 of 100"),
    ]
    assert not quiet.is_error and logs_after_error_level == logs_before_result
    assert [x.data for x in modern.logs] == [x.data for x in logs_before_result]
    assert silent.logs == []


# -- 5. sampling and elicitation ------------------------------------------------------------------


async def test_sampling_and_elicitation_requests_of_the_upstream_are_answered_by_the_agent(
    tmp_path: Path, discovered: Discovered
) -> None:
    world = front_world(tmp_path / "w", discovered, {"conf": (conformance_decl("conf"), "conformance")})
    world.allow("g", "conf.*")
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running():
                async with agent(gw, "g") as a:
                    sampled = await a.call("conf_test_sampling", {"prompt": "What is the capital of France?"})
                    elicited = await a.call("conf_test_elicitation", {"message": "Who are you?"})
                async with agent(gw, "g", sampling=None, elicitation=None) as plain:
                    began = time.monotonic()
                    no_sampling = await plain.call("conf_test_sampling", {"prompt": "anyone?"})
                    no_elicitation = await plain.call("conf_test_elicitation", {"message": "anyone?"})
                    waited = time.monotonic() - began
    finally:
        world.close()

    [request] = a.sampled
    assert request.messages[0].content.text == "What is the capital of France?"
    assert request.max_tokens == 100
    assert not sampled.is_error and result_text(sampled) == "LLM response: Paris"
    [form] = a.elicited
    assert form.message == "Who are you?"
    assert isinstance(form, types.ElicitRequestFormParams) and form.requested_schema["required"] == [
        "username",
        "email",
    ]
    assert not elicited.is_error
    assert result_text(elicited) == (
        'Elicitation completed: action=accept, content={"name":"Ann","username":"ann","email":"ann@example.com"}'
    )
    # no callback, no hang: the upstream's request is refused, the tool ends with an error result
    assert no_sampling.is_error and no_elicitation.is_error
    assert waited < 15
    assert plain.sampled == [] and plain.elicited == []


async def test_an_upstreams_url_elicitation_reaches_the_agent_labelled_and_never_to_the_gateways_own_pages(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = fr_world(tmp_path, discovered, front_dir)
    own = world.settings.public_url  # the gateway's own pages (here http://127.0.0.1:8765)
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g") as a:
                sign_in = "Sign in there"
                elsewhere = await a.call("fr_send_to", {"url": "https://login.example.com/device", "message": sign_in})
                phished = [
                    await a.call("fr_send_to", {"url": url, "message": sign_in})
                    for url in (f"{own}/setup/abc", "http://localhost:8765/login", "http://[::1]:8765/oauth/consent")
                ]
                # a carriage return would let the message overwrite its label in a terminal: shown escaped
                forged = "\rcredgate: sign in again \u202eereh"
                other_local = await a.call("fr_send_to", {"url": "http://127.0.0.1:9999/callback", "message": forged})
    finally:
        world.close()

    assert result_text(elsewhere) == "user went: action=accept"
    first, last = a.elicited
    assert isinstance(first, types.ElicitRequestURLParams) and first.url == "https://login.example.com/device"
    assert first.message == "[fr] Sign in there"  # whose page it is: the upstream's, by its name
    assert isinstance(last, types.ElicitRequestURLParams) and last.url == "http://127.0.0.1:9999/callback"
    assert last.message == "[fr] \\u000dcredgate: sign in again \\u202eereh"
    for refused in phished:
        assert result_text(refused) == (
            "elicitation refused: code=-32602, message=an upstream may not send the agent to the gateway's own pages"
        )
    assert result_text(other_local) == "user went: action=accept"


async def test_an_agent_without_sampling_gets_a_clean_refusal_back_to_the_upstream(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = fr_world(tmp_path, discovered, front_dir)
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "g", sampling=None, elicitation=None) as legacy,
            ):
                refused = await legacy.call("fr_ask_llm", {"prompt": "hello?"})
                refused_form = await legacy.call("fr_ask_user", {"message": "name?"})
    finally:
        world.close()

    assert refused.is_error
    assert result_text(refused) == (
        f"sampling refused: code={types.METHOD_NOT_FOUND}, message=the agent's client does not offer sampling"
    )
    assert result_text(refused_form) == (
        f"elicitation refused: code={types.METHOD_NOT_FOUND}, message=the agent's client does not offer elicitation"
    )


# -- 5b. an upstream's input-required rounds (2026-07-28) --------------------------------------------


async def answer_ann_green(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ann", "color": "green", "context": "tests"})


def confirmed() -> dict[str, types.InputResponse]:
    return {"confirm": types.ElicitResult(action="accept", content={"ok": True})}


async def test_a_2026_agent_answers_an_upstreams_rounds_and_a_handshake_agent_is_asked_them_as_requests(
    tmp_path: Path, discovered: Discovered
) -> None:
    """The upstream speaks 2026-07-28: its questions come inside its results. An agent of that protocol gets them
    as rounds of its own (its client answers and retries, round after round); a handshake-era agent is asked
    them as requests during the call, as with an upstream of its own era."""
    world = front_world(tmp_path / "w", discovered, {"conf": (conformance_decl("conf"), "conformance")})
    world.allow("g", "conf.*")
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running():
                async with agent(gw, "g", mode="auto", elicitation=answer_ann_green) as modern:
                    named = await modern.call("conf_test_input_required_result_elicitation")
                    sampled = await modern.call("conf_test_input_required_result_sampling")
                    three_rounds = await modern.call("conf_test_input_required_result_multi_round")
                    prompt = await modern.ask(modern.mcp.get_prompt("conf_test_input_required_result_prompt"))
                async with agent(gw, "g") as legacy:
                    named_legacy = await legacy.call("conf_test_input_required_result_elicitation")
    finally:
        world.close()

    assert result_text(named) == "Hello, Ann!" and result_text(named_legacy) == "Hello, Ann!"
    assert result_text(sampled) == "Model said: Paris"
    assert result_text(three_rounds) == "Ann likes green."
    assert len(modern.elicited) == 4  # one, two (the last of three rounds is the result), the prompt's one
    assert prompt.messages and legacy.elicited and isinstance(legacy.elicited[0], types.ElicitRequestFormParams)


async def test_a_handshake_upstreams_requests_reach_a_2026_agent_as_rounds_while_its_call_waits(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    """An upstream of the handshake protocols asks in the middle of a call; a 2026-07-28 agent cannot take a
    request then, so the call waits in the gateway and each question is a round of the agent's, redacted."""
    world = front_world(tmp_path / "w", discovered, {"fr": (fixture_decl("fr", "fixture", front_dir), "fixture")})
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.allow("g", "fr.*")
    world.bind("g", "fr", "tok")
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running():
                async with agent(gw, "g", mode="auto") as a:
                    sampled = await a.call("fr_ask_llm", {"prompt": "Capital of France?"})
                    elicited = await a.call("fr_ask_user", {"message": "Who are you?"})
                    asked = await a.mcp.session.call_tool("fr_ask_llm", {"prompt": "again"}, allow_input_required=True)
                async with agent(gw, "g", mode="auto", sampling=None) as plain:
                    refused = await plain.call("fr_ask_llm", {"prompt": "anyone?"})
    finally:
        world.close()

    assert result_text(sampled) == "model said: Paris"
    assert result_text(elicited).startswith("user said: action=accept")
    [sampling] = a.sampled[:1]
    assert "Capital of France?" in sampling.messages[0].content.text and TOKEN not in a.everything()
    assert isinstance(asked, types.InputRequiredResult) and asked.request_state
    assert [type(r).__name__ for r in (asked.input_requests or {}).values()] == ["CreateMessageRequest"]
    assert refused.is_error and "sampling refused" in result_text(refused)  # its client offers no sampling


async def test_a_parked_calls_round_answered_on_another_replica_is_told_to_call_again(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = front_world(tmp_path / "w", discovered, {"fr": (fixture_decl("fr", "fixture", front_dir), "fixture")})
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.allow("g", "fr.*")
    world.bind("g", "fr", "tok")
    paris = types.CreateMessageResult(role="assistant", content=types.TextContent(text="Paris"), model="m")
    answer: dict[str, types.InputResponse] = {"upstream_1": paris}
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as one,
                one.running(),
                world.gateway() as other,
                other.running(),
                agent(one, "g", mode="auto") as here,
                agent(other, "g", mode="auto") as there,
            ):
                asked = await here.mcp.session.call_tool("fr_ask_llm", {"prompt": "?"}, allow_input_required=True)
                assert isinstance(asked, types.InputRequiredResult)
                elsewhere = await there.mcp.session.call_tool(
                    "fr_ask_llm", {"prompt": "?"}, input_responses=answer, request_state=asked.request_state
                )
    finally:
        world.close()

    assert elsewhere.is_error and "call the tool again" in result_text(elsewhere)


async def test_a_rounds_state_is_the_gateways_own_bound_to_its_caller_and_spent_once(
    tmp_path: Path, discovered: Discovered
) -> None:
    world = front_world(tmp_path / "w", discovered, {"conf": (conformance_decl("conf"), "conformance")})
    world.allow("g", "conf.*")
    tool = "conf_test_input_required_result_request_state"
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "g", name="ann", mode="auto") as ann,
                agent(gw, "g", name="bob", mode="auto") as bob,
            ):
                asked = await ann.mcp.session.call_tool(tool, {}, allow_input_required=True)
                assert isinstance(asked, types.InputRequiredResult) and asked.request_state is not None
                state = asked.request_state

                def retry(who: Agent, state: str) -> Awaitable[Any]:
                    return who.mcp.session.call_tool(
                        tool, {}, input_responses=confirmed(), request_state=state, allow_input_required=True
                    )

                by_another = await bob.refused(retry(bob, state))
                flipped = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
                tampered = await ann.refused(retry(ann, flipped))
                answered = await retry(ann, state)
                replayed = await ann.refused(retry(ann, state))
                # without a state, the answers alone go to the upstream: it asks again (its state is missing)
                stateless = await ann.mcp.session.call_tool(
                    tool, {}, input_responses=confirmed(), allow_input_required=True
                )
    finally:
        world.close()

    assert list(asked.input_requests or {}) == ["confirm"]
    for refused in (by_another, tampered, replayed):
        assert (refused.code, refused.message) == (types.INVALID_PARAMS, "Invalid or expired requestState")
    assert isinstance(answered, types.CallToolResult) and result_text(answered) == "state-ok: confirmation received"
    assert isinstance(stateless, types.InputRequiredResult)


async def test_an_upstream_needing_a_capability_the_agents_client_lacks_refuses_it_by_name(
    tmp_path: Path, discovered: Discovered
) -> None:
    """Each 2026-07-28 request tells the upstream what the agent's own client can do, not what the gateway could
    relay: an upstream that needs sampling from an agent without it answers -32021, and the agent gets that."""
    world = front_world(tmp_path / "w", discovered, {"conf": (conformance_decl("conf"), "conformance")})
    world.allow("g", "conf.*")
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running():
                async with agent(gw, "g", mode="auto", sampling=None) as plain:
                    refused = await plain.refused(plain.mcp.call_tool("conf_test_missing_capability", {}))
                    asked_for = await plain.mcp.session.call_tool(
                        "conf_test_input_required_result_capabilities", {}, allow_input_required=True
                    )
                async with agent(gw, "g", mode="auto") as sampler:
                    allowed = await sampler.call("conf_test_missing_capability")
    finally:
        world.close()

    assert refused.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
    assert refused.error.data == {"requiredCapabilities": {"sampling": {}}}
    assert isinstance(asked_for, types.InputRequiredResult)
    assert "sample" not in (asked_for.input_requests or {})  # the upstream asked only what the client offers
    assert result_text(allowed) == "Client declared the sampling capability; proceeding."


# -- 6. subscriptions -------------------------------------------------------------------------------


async def test_resource_updates_reach_the_subscribed_agents_until_they_unsubscribe(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = front_world(tmp_path / "w", discovered, {"fr": (fixture_decl("fr", "fixture", front_dir), "fixture")})
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.add_credential("other", "frtoken", {"token": OTHER_TOKEN})
    world.allow("g", "fr.*")
    world.bind("g", "fr", "tok")
    world.allow("h", "fr.*")
    world.bind("h", "fr", "other")  # another credential: another upstream session
    a_uri, b_uri = "front://watched-a", "front://watched-b"

    async def wait_for_update(who: Agent, uri: str, count: int) -> None:
        await who.wait_until(lambda: who.updated().count(uri) >= count)

    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "g", name="one") as one,
                agent(gw, "g", name="two") as two,
                agent(gw, "h", name="elsewhere") as elsewhere,
            ):
                assert capabilities(one)["resources"]["subscribe"] is True
                await one.ask(one.mcp.subscribe_resource(a_uri))
                await two.ask(two.mcp.subscribe_resource(a_uri))  # the upstream is asked once
                await elsewhere.ask(elsewhere.mcp.subscribe_resource(b_uri))
                await one.call("fr_touch", {"uris": [a_uri]})
                await wait_for_update(one, a_uri, 1)
                await wait_for_update(two, a_uri, 1)

                await one.ask(one.mcp.unsubscribe_resource(a_uri))  # two still listens: no unsubscribe upstream
                await one.ask(one.mcp.subscribe_resource(b_uri))
                await one.call("fr_touch", {"uris": [a_uri, b_uri]})
                await wait_for_update(one, b_uri, 1)  # sent after a_uri's: a_uri has been handled
                await wait_for_update(two, a_uri, 2)

                await two.ask(two.mcp.unsubscribe_resource(a_uri))  # the last one: unsubscribed upstream
                await one.call("fr_touch", {"uris": [a_uri, b_uri]})
                await wait_for_update(one, b_uri, 2)
                seen = json.loads(result_text(await one.call("fr_events", {"kind": "subscribe", "count": 2})))
                gone = json.loads(result_text(await one.call("fr_events", {"kind": "unsubscribe", "count": 1})))
    finally:
        world.close()

    assert one.updated() == [a_uri, b_uri, b_uri]  # nothing for a_uri once it unsubscribed
    assert two.updated() == [a_uri, a_uri]
    assert elsewhere.updated() == []  # subscribed through another session, which was never touched
    assert [e["uri"] for e in seen] == [a_uri, b_uri]  # this session's upstream: once per URI
    assert [e["uri"] for e in gone] == [a_uri]
    # the other credential's upstream process got the other subscription
    assert sorted(e["uri"] for e in recorded(front_dir, "subscribe")) == [a_uri, b_uri, b_uri]


async def test_a_2026_upstreams_resource_updates_reach_subscribed_agents_through_one_listen_stream(
    tmp_path: Path, discovered: Discovered
) -> None:
    """An upstream of 2026-07-28 has no resources/subscribe: what agents subscribe to through the gateway is one
    subscriptions/listen stream of the gateway's, opened again as the URIs change."""
    world = front_world(tmp_path / "w", discovered, {"conf": (conformance_decl("conf"), "conformance")})
    world.allow("g", "conf.*")
    watched, other = "test://watched-resource", "test://static-text"

    async def touch(who: Agent, uri: str) -> None:
        await who.call("conf_test_trigger_resource_update", {"uri": uri})

    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g", name="one") as one:
                await one.ask(one.mcp.subscribe_resource(watched))
                while not one.updated():  # the stream opens on its own: touch until it is there
                    await touch(one, watched)
                    with anyio.move_on_after(0.5):
                        await one.wait_until(lambda: bool(one.updated()))
                await touch(one, other)  # nobody subscribed to it
                await one.ask(one.mcp.subscribe_resource(other))
                before = len(one.updated())
                while one.updated()[before:].count(other) == 0:
                    await touch(one, other)
                    with anyio.move_on_after(0.5):
                        await one.wait_until(lambda: other in one.updated()[before:])
                await one.ask(one.mcp.unsubscribe_resource(watched))
                await one.ask(one.mcp.unsubscribe_resource(other))
                after = len(one.updated())
                await touch(one, watched)
                await anyio.sleep(0.5)
    finally:
        world.close()

    assert set(one.updated()[:before]) == {watched}  # the unsubscribed URI's update reached no one
    assert len(one.updated()) == after  # nothing once it unsubscribed


async def test_a_2026_agents_listen_stream_gets_what_it_asked_for_from_the_groups_upstreams(
    tmp_path: Path, discovered: Discovered
) -> None:
    """subscriptions/listen through the gateway: the group's upstreams of 2026-07-28 listen on the agent's behalf,
    and its stream delivers the list changes and resource updates it asked for, nothing else, and nothing of
    another group's upstreams."""
    world = front_world(tmp_path / "w", discovered, {"conf": (conformance_decl("conf"), "conformance")})
    world.allow("g", "conf.*")
    world.allow("h", "conf.*")
    watched = "test://watched-resource"

    async def next_within(events: Any, seconds: float) -> list[Any]:
        with anyio.move_on_after(seconds):
            return [await anext(aiter(events))]
        return []

    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "g", mode="auto") as a,
                agent(gw, "h", mode="auto") as b,
            ):
                capabilities_now = a.mcp.server_capabilities
                async with (
                    a.mcp.listen(tools_list_changed=True, resource_subscriptions=[watched]) as events,
                    b.mcp.listen(tools_list_changed=True) as others,
                ):
                    honored = events.honored
                    await b.call("conf_test_trigger_tool_change")  # the other group's upstream
                    theirs = await next_within(others, 10)
                    await a.call("conf_test_trigger_prompt_change")  # not asked for
                    await a.call("conf_test_trigger_resource_update", {"uri": "test://static-text"})  # not asked
                    early = await next_within(events, 1)  # none of those reaches it
                    await a.call("conf_test_trigger_tool_change")
                    await a.call("conf_test_trigger_resource_update", {"uri": watched})
                    got = await next_within(events, 10) + await next_within(events, 10)
                    more_of_theirs = await next_within(others, 1)
    finally:
        world.close()

    assert capabilities_now.tools is not None and capabilities_now.tools.list_changed is True
    assert honored.tools_list_changed is True and honored.resource_subscriptions == [watched]
    assert [type(e).__name__ for e in theirs] == ["ToolsListChanged"] and more_of_theirs == []
    assert early == []
    assert [type(e).__name__ for e in got] == ["ToolsListChanged", "ResourceUpdated"]
    assert got[1].uri == watched


async def test_a_2026_agent_listens_to_a_handshake_upstreams_resource_which_the_gateway_subscribes_for_it(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = front_world(tmp_path / "w", discovered, {"fr": (fixture_decl("fr", "fixture", front_dir), "fixture")})
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.allow("g", "fr.*")
    world.bind("g", "fr", "tok")
    watched = "front://watched-a"
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g", mode="auto") as a:
                async with a.mcp.listen(resource_subscriptions=[watched]) as events:
                    await a.call("fr_touch", {"uris": ["front://watched-b", watched]})
                    updated = await anext(aiter(events))
                gone = json.loads(result_text(await a.call("fr_events", {"kind": "unsubscribe", "count": 1})))
                seen = json.loads(result_text(await a.call("fr_events", {"kind": "subscribe", "count": 1})))
    finally:
        world.close()

    assert type(updated).__name__ == "ResourceUpdated" and updated.uri == watched
    assert [e["uri"] for e in seen] == [watched] and [e["uri"] for e in gone] == [watched]


async def test_a_listen_stream_subscribes_an_upstream_only_to_its_own_resources_not_to_another_upstreams(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    """resources/subscribe routes a URI to the upstream that owns it (`_owner_of`); a listen stream's
    URIs must be routed the same way. Otherwise every upstream of the group is subscribed to every URI an agent
    watches (a hostile upstream learns which of another upstream's resources the agent follows, and may send
    updates for them), and one listen with many URIs is a subscribe request per URI to each upstream."""
    world = front_world(
        tmp_path / "w",
        discovered,
        {
            "fr": (fixture_decl("fr", "fixture", front_dir), "fixture"),
            "conf": (conformance_decl("conf"), "conformance"),
        },
    )
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.allow("g", "fr.*")
    world.allow("g", "conf.*")
    world.bind("g", "fr", "tok")
    theirs = "test://watched-resource"  # the conformance upstream's, never listed by `fr`
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "g", mode="auto") as a,
                a.mcp.listen(resource_subscriptions=[theirs, "front://watched-a"]),
            ):
                seen = json.loads(result_text(await a.call("fr_events", {"kind": "subscribe", "count": 2})))
    finally:
        world.close()

    assert [e["uri"] for e in seen] == ["front://watched-a"]


async def test_one_agent_cannot_take_every_listen_slot_of_its_group(
    tmp_path: Path, discovered: Discovered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each agent holds at most LISTEN_STREAMS_PER_AGENT listen streams (2 here): one more is refused at once,
    before any upstream is asked, and the other agents of its group keep their room."""
    monkeypatch.setattr(front_module, "LISTEN_STREAMS_PER_AGENT", 2)
    world = front_world(tmp_path / "w", discovered, {"conf": (conformance_decl("conf"), "conformance")})
    world.allow("g", "conf.*")
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "g", name="greedy", mode="auto") as greedy,
                agent(gw, "g", name="other", mode="auto") as other,
                greedy.mcp.listen(tools_list_changed=True),
                greedy.mcp.listen(tools_list_changed=True),
            ):
                with pytest.raises(MCPError) as third:
                    async with greedy.mcp.listen(tools_list_changed=True):
                        pass
                async with other.mcp.listen(tools_list_changed=True) as events:
                    honored = events.honored
    finally:
        world.close()

    assert "listen streams" in third.value.error.message
    assert honored.tools_list_changed is True


async def stops_within(pid: int, seconds: float) -> bool:
    """Whether the process ends within `seconds`."""
    with anyio.move_on_after(seconds):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            await anyio.sleep(0.05)
    return False


@pytest.mark.sqlite_only  # about the relay, not the store: once is enough (it waits out idle timeouts)
async def test_the_subscriptions_of_an_agent_that_went_away_do_not_keep_its_upstream_running(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = fr_world(tmp_path, discovered, front_dir, extra="idle_timeout = 0.5")
    try:
        async with world.gateway() as gw, gw.running():
            async with agent(gw, "g") as unsubscribed:
                first = host_pid(result_text(await unsubscribed.call("fr_pid")))
                await unsubscribed.ask(unsubscribed.mcp.subscribe_resource("front://watched-a"))
                await unsubscribed.ask(unsubscribed.mcp.unsubscribe_resource("front://watched-a"))
            assert await stops_within(first, 8), "an idle upstream was not stopped"  # the control

            async with agent(gw, "g") as gone:
                second = host_pid(result_text(await gone.call("fr_pid")))
                await gone.ask(gone.mcp.subscribe_resource("front://watched-a"))
            # the agent's connection closed without unsubscribing: nothing is left to deliver updates to
            with anyio.fail_after(5):
                while not await stops_within(second, 1):
                    pass
    finally:
        world.close()


# -- 7. cancellation --------------------------------------------------------------------------------


async def test_an_agent_that_cancels_its_call_cancels_the_upstream_request(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = fr_world(tmp_path, discovered, front_dir)
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g") as a:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(a.call, "fr_block")
                    await a.wait_until(lambda: [x.data for x in a.logs] == ["blocking"])  # the upstream is in it
                    tg.cancel_scope.cancel()  # the agent gives up on it
                cancelled = json.loads(result_text(await a.call("fr_events", {"kind": "cancelled", "count": 1})))
                started = json.loads(result_text(await a.call("fr_events", {"kind": "blocking", "count": 1})))
                after = await a.call("fr_hello")
    finally:
        world.close()

    assert [e["request_id"] for e in cancelled] == [e["request_id"] for e in started]  # that very request
    assert [e["request_id"] for e in recorded(front_dir, "cancelled")] == [cancelled[0]["request_id"]]
    assert len(recorded(front_dir, "start")) == 1  # cancelled by notification, not by ending the process
    assert result_text(after) == "hello"


async def test_an_upstream_that_withdraws_its_sampling_request_cancels_the_agents_one(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = fr_world(tmp_path, discovered, front_dir)
    asked, withdrawn = anyio.Event(), anyio.Event()

    async def never_answer(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        asked.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            withdrawn.set()
            raise
        raise AssertionError("unreachable")

    outcome: list[types.CallToolResult] = []
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "g", sampling=never_answer) as a,
                anyio.create_task_group() as tg,
            ):

                async def call() -> None:
                    outcome.append(await a.call("fr_ask_then_withdraw"))

                tg.start_soon(call)
                await asked.wait()  # the agent's sampling callback is running
                await a.call("fr_release")  # the upstream now cancels its sampling request
                await withdrawn.wait()  # ... and so the agent's one is cancelled
    finally:
        world.close()

    assert [r.content[0].text for r in outcome] == ["the sampling request was withdrawn"]  # type: ignore[union-attr]
    assert len(a.sampled) == 1 and a.sampled[0].messages[0].content.text == "never mind"
    assert len(recorded(front_dir, "withdrawn")) == 1


# -- 8, 9. group policy and capabilities -------------------------------------------------------------


async def test_only_a_group_allowing_the_whole_upstream_reaches_its_resources_and_prompts(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = front_world(
        tmp_path / "w",
        discovered,
        {
            "fr": (fixture_decl("fr", "fixture", front_dir), "fixture"),
            "conf": (conformance_decl("conf"), "conformance"),
        },
    )
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.allow("one_tool", "fr_hello")
    world.bind("one_tool", "fr_hello", "tok")
    world.allow("whole", "fr.*")
    world.bind("whole", "fr", "tok")
    world.allow("other", "conf.*")
    world.allow("both", "fr.*", "conf.*")
    world.bind("both", "fr", "tok")
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "one_tool") as narrow,
                agent(gw, "whole") as whole,
                agent(gw, "other") as other,
                agent(gw, "both") as both,
            ):
                narrow_caps = capabilities(narrow)
                refusals = [
                    await narrow.refused(narrow.mcp.list_resources()),
                    await narrow.refused(narrow.mcp.list_resource_templates()),
                    await narrow.refused(narrow.mcp.read_resource("front://static")),
                    await narrow.refused(narrow.mcp.list_prompts()),
                    await narrow.refused(narrow.mcp.get_prompt("fr_greet", {"name": "x"})),
                    await narrow.refused(
                        narrow.mcp.complete(types.PromptReference(name="fr_greet"), {"name": "name", "value": ""})
                    ),
                    await narrow.refused(narrow.mcp.set_logging_level("debug")),
                ]
                narrow_hello = await narrow.call("fr_hello")

                whole_resources = await whole.ask(whole.mcp.list_resources())
                whole_prompts = await whole.ask(whole.mcp.list_prompts())
                whole_read = await whole.ask(whole.mcp.read_resource("front://static"))
                whole_other = await whole.refused(whole.mcp.read_resource("test://static-text"))
                other_resources = await other.ask(other.mcp.list_resources())
                other_prompts = await other.ask(other.mcp.list_prompts())
                other_other = await other.refused(other.mcp.read_resource("front://static"))

                # a group with both: each URI goes to the upstream that lists it or whose template matches it
                both_resources = await both.ask(both.mcp.list_resources())
                routed = [
                    await both.ask(both.mcp.read_resource(uri))
                    for uri in ("test://static-text", "front://static", "front://items/42", "test://template/9/data")
                ]
                both_unknown = await both.refused(both.mcp.read_resource("front://items"))
                greeting = await both.ask(both.mcp.get_prompt("fr_greet", {"name": "Ann"}))
                names = await both.ask(
                    both.mcp.complete(types.PromptReference(name="fr_greet"), {"name": "name", "value": "al"})
                )
                item_ids = await both.ask(
                    both.mcp.complete(
                        types.ResourceTemplateReference(uri="front://items/{id}"), {"name": "id", "value": "1"}
                    )
                )
                data_ids = await both.ask(
                    both.mcp.complete(
                        types.ResourceTemplateReference(uri="test://template/{id}/data"), {"name": "id", "value": "1"}
                    )
                )
    finally:
        world.close()

    assert set(narrow_caps) == {"tools"}
    assert [e.code for e in refusals] == [types.METHOD_NOT_FOUND] * len(refusals)
    assert refusals[0].message == "Method not found: resources/list"
    assert result_text(narrow_hello) == "hello"  # its one tool still works

    assert [str(r.uri) for r in whole_resources.resources] == FIXTURE_RESOURCES
    assert [x.name for x in whole_prompts.prompts] == ["fr_greet", "fr_leaky", "fr_broken"]
    assert whole_read.contents[0].text == "front static text (front://static)"
    assert whole_other.code == RESOURCE_NOT_FOUND  # not its upstream's resource
    assert [str(r.uri) for r in other_resources.resources] == CONFORMANCE_RESOURCES
    assert [x.name for x in other_prompts.prompts] == [f"conf_{n}" for n in CONFORMANCE_PROMPTS]
    assert other_other.code == RESOURCE_NOT_FOUND

    assert [str(r.uri) for r in both_resources.resources] == CONFORMANCE_RESOURCES + FIXTURE_RESOURCES
    texts = [r.contents[0].text for r in routed]
    assert texts[:3] == [STATIC_TEXT, "front static text (front://static)", "item 42"]
    assert json.loads(texts[3])["id"] == "9"
    assert both_unknown.code == RESOURCE_NOT_FOUND
    assert greeting.messages[0].content.text == "Hello, Ann."
    assert names.completion.values == ["alice", "albert"]
    assert item_ids.completion.values == ["1", "12"]  # each template's completion from its own upstream
    assert data_ids.completion.values == ["1", "123"]


async def test_capabilities_are_tools_plus_exactly_what_the_groups_upstreams_announced(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = front_world(
        tmp_path / "w",
        discovered,
        {
            "fr": (fixture_decl("fr", "fixture", front_dir), "fixture"),
            "lean": (fixture_decl("lean", "fixture_prompts_only", front_dir), "fixture_prompts_only"),
            "nosub": (fixture_decl("nosub", "fixture_no_subscribe", front_dir), "fixture_no_subscribe"),
        },
        tools={
            "echo": python_tool(
                "echo", "mcp_credgate.examples:echo", properties='properties.text = { type = "string" }'
            )
        },
    )
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.allow("plain", "echo")
    for group, upstream in (("full", "fr"), ("lean", "lean"), ("nosub", "nosub")):
        world.allow(group, f"{upstream}.*")
        world.bind(group, upstream, "tok")
    announced = {variant: set(caps) for variant, (_, caps) in discovered.items()}
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running():
                caps = {}
                for group in ("plain", "full", "lean", "nosub"):
                    async with agent(gw, group) as a:
                        caps[group] = capabilities(a)
                async with agent(gw, "full", mode="auto") as modern:
                    modern_caps = capabilities(modern)
                starts_before_use = len(recorded(front_dir, "start"))
                async with agent(gw, "lean") as lean:
                    lean_resources = await lean.refused(lean.mcp.list_resources())
                    lean_prompts = await lean.ask(lean.mcp.list_prompts())
                async with agent(gw, "nosub") as nosub:
                    nosub_subscribe = await nosub.refused(nosub.mcp.subscribe_resource("front://watched-a"))
                    nosub_resources = await nosub.ask(nosub.mcp.list_resources())

                # what an upstream announces when it starts again is what a group is offered next
                world.store.save_upstream_capabilities("lean", {"tools": {}, "prompts": {}, "logging": {}})
                async with agent(gw, "lean") as again:
                    lean_again = capabilities(again)
    finally:
        world.close()

    assert announced["fixture"] == {"tools", "resources", "prompts", "completions", "logging"}
    assert discovered["fixture"][1]["resources"]["subscribe"] is True
    assert announced["fixture_prompts_only"] == {"tools", "prompts"}
    assert announced["fixture_no_subscribe"] == {"tools", "resources"}
    assert discovered["fixture_no_subscribe"][1]["resources"].get("subscribe") is False

    assert caps["plain"] == {"tools": {}}
    assert set(caps["full"]) == announced["fixture"]
    assert caps["full"]["resources"] == {"subscribe": True}
    assert set(caps["lean"]) == announced["fixture_prompts_only"]
    assert set(caps["nosub"]) == announced["fixture_no_subscribe"]
    assert caps["nosub"]["resources"] == {}  # no subscribe it cannot relay
    assert set(modern_caps) == announced["fixture"]
    assert modern_caps["resources"]["subscribe"] is True  # 2026-07-28 subscribes by subscriptions/listen
    assert starts_before_use == 0  # offered from the store: no upstream was started to answer the handshakes
    assert lean_resources.code == types.METHOD_NOT_FOUND
    assert [x.name for x in lean_prompts.prompts] == ["lean_greet", "lean_leaky", "lean_broken"]
    assert nosub_subscribe.code == types.METHOD_NOT_FOUND
    assert len(nosub_resources.resources) == len(FIXTURE_RESOURCES)
    assert set(lean_again) == {"tools", "prompts", "logging"}


# -- 10. redaction, through a real `credgate serve` --------------------------------------------------


async def test_credgate_serve_redacts_the_token_in_everything_an_upstream_sends(
    tmp_path: Path, front_dir: Path
) -> None:
    world = World.create(tmp_path / "w", {"fr": fixture_decl("fr", "fixture", front_dir)})
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    master_key = world.settings.key_path.read_text().strip()
    paths = world.cli_paths
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CREDGATE_")}
    secrets_env = {"CREDGATE_MASTER_KEY": master_key, **store_env(world.settings)}
    discovery = subprocess.run(  # the real discovery, with the credential: it caches tools and capabilities
        [sys.executable, "-m", "mcp_credgate", "tools", "--json", "--discover-with", "tok", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base_env, **secrets_env},
        cwd=tmp_path,
    )
    assert discovery.returncode == 0, discovery.stderr
    assert set(world.store.upstream_capabilities()["fr"]) == {"tools", "resources", "prompts", "completions", "logging"}
    world.allow("desk", "fr.*")
    world.bind("desk", "fr", "tok")
    world.close()

    stdout_copy, stderr_file = tmp_path / "stdout.bin", tmp_path / "stderr.txt"
    params = teed_serve(world, stdout_copy, secrets_env, "--group", "desk", "--log-level", "debug")
    with stderr_file.open("w") as errlog, anyio.fail_after(60):
        async with agent_client(stdio_client(params, errlog=errlog)) as a:
            caps = capabilities(a)
            tools = await a.ask(a.mcp.list_tools())
            resources = await a.ask(a.mcp.list_resources())
            secret = await a.ask(a.mcp.read_resource("front://secret"))
            boom = await a.refused(a.mcp.read_resource("front://boom"))
            prompts = await a.ask(a.mcp.list_prompts())
            leaky = await a.ask(a.mcp.get_prompt("fr_leaky"))
            broken = await a.refused(a.mcp.get_prompt("fr_broken"))
            completed = await a.ask(a.mcp.complete(types.PromptReference(name="fr_leaky"), {"name": "x", "value": ""}))
            await a.ask(a.mcp.set_logging_level("debug"))
            chatty = await a.call("fr_chatty")
            sampled = await a.call("fr_ask_llm", {"prompt": "Say it back"})
            elicited = await a.call("fr_ask_user", {"message": "Your name?"})
            failed = await a.call("fr_fail")
            pid = result_text(await a.call("fr_pid"))
    assert [e["pid"] for e in recorded(front_dir, "start")][1:] == [pid]  # one for discovery, one for serving

    hello = next(t for t in tools.tools if t.name == "fr_hello")
    assert hello.description == f"Says hello (configured with token {REDACTED})."
    assert "subscribe" in caps["resources"] and "logging" in caps
    described = {str(r.uri): r.description for r in resources.resources}
    assert described["front://secret"] == f"Holds the token {REDACTED}."
    assert secret.contents[0].text == f"the token is {REDACTED}"
    assert boom.code == types.INTERNAL_ERROR and boom.message == f"boom while holding token {REDACTED}"
    assert boom.error.data == {"token": REDACTED}
    assert [x.name for x in prompts.prompts] == ["fr_greet", "fr_leaky", "fr_broken"]
    assert leaky.messages[0].content.text == f"Use the token {REDACTED} wisely."
    assert broken.code == types.INVALID_PARAMS and broken.message == f"broken prompt, token {REDACTED}"
    assert completed.completion.values == [REDACTED]
    assert result_text(chatty) == "chatty done"
    assert [x.data for x in a.logs] == ["chatty: one", "chatty: two", f"chatty: the token is {REDACTED}"]
    assert [m for _, _, m in a.progress] == [f"step {n} of 3, token {REDACTED}" for n in (1, 2, 3)]
    said = a.sampled[0].messages[0].content
    assert isinstance(said, types.TextContent) and said.text == f"Say it back (token {REDACTED})"
    assert result_text(sampled) == "model said: Paris"
    assert a.elicited[0].message == f"Your name? (token {REDACTED})"
    assert (
        result_text(elicited)
        == 'user said: action=accept, content={"email": "ann@example.com", "name": "Ann", "username": "ann"}'
    )
    assert failed.is_error and "ref: " in result_text(failed)

    received = stdout_copy.read_bytes().decode("utf-8")
    stderr = stderr_file.read_text()
    assert REDACTED in received
    assert "front-upstream: about to fail with token [redacted:token]" in stderr  # the upstream's stderr, redacted
    for text in (received, stderr, a.everything()):
        assert_no_leak(text, TOKEN, master_key)
    assert_no_leak_at_rest(world.settings, TOKEN)


# -- 11. attribution: what an upstream sends on its own reaches an agent only when tied to its request ---

UNANSWERABLE = (
    f"refused: code={types.INVALID_REQUEST}, "
    "message=sampling is unavailable: the gateway cannot tell which agent to ask"
)


async def test_what_an_upstream_sends_while_two_agents_calls_are_in_flight_reaches_neither(
    tmp_path: Path, discovered: Discovered, front_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = fr_world(tmp_path, discovered, front_dir)  # isolation = "group": alice and bob share one process
    caplog.set_level(logging.INFO, logger="credgate")
    results: dict[str, types.CallToolResult] = {}
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "g", name="alice") as a,
                agent(gw, "g", name="bob") as b,
            ):
                async with anyio.create_task_group() as tg:
                    for tag, who in (("A", a), ("B", b)):

                        async def call(tag: str = tag, who: Agent = who) -> None:
                            results[tag] = await who.call("fr_rendezvous", {"n": 2, "run": "both", "tag": tag})

                        tg.start_soon(call)
                crossed = (list(a.logs), list(b.logs), list(a.sampled), list(b.sampled))
                # one call in flight now, but the process has served two agents: nothing ties the line to hers
                solo = await a.call("fr_rendezvous", {"n": 1, "run": "solo", "tag": "A"})
                pids = {result_text(await a.call("fr_pid")), result_text(await b.call("fr_pid"))}
    finally:
        world.close()

    for tag in ("A", "B"):
        assert results[tag].is_error
        assert result_text(results[tag]) == f"{tag}: sampling {UNANSWERABLE}"
    assert crossed == ([], [], [], [])
    assert result_text(solo) == f"A: sampling {UNANSWERABLE}"
    assert a.logs == a.sampled == b.logs == b.sampled == []
    assert "A: logged while 2 calls were in flight" in caplog.text  # kept in the gateway's log
    assert "A: logged while 1 calls were in flight" in caplog.text
    assert "asked for sampling: refused, several requests are in flight" in caplog.text
    assert "asked for sampling: refused, this upstream process has served more than one agent" in caplog.text
    assert len(pids) == 1  # the two agents of the group did share one upstream process
    assert_no_leak(caplog.text + a.everything() + b.everything(), TOKEN)


async def test_an_upstream_process_of_one_agent_gives_it_what_it_sends_during_its_call(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = fr_world(tmp_path, discovered, front_dir, extra='isolation = "agent"')
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, "g", name="alice") as a,
                agent(gw, "g", name="bob") as b,
            ):
                bob_pid = result_text(await b.call("fr_pid"))
                solo = await a.call("fr_rendezvous", {"n": 1, "run": "solo", "tag": "A"})
                alice_pid = result_text(await a.call("fr_pid"))
    finally:
        world.close()

    assert alice_pid != bob_pid
    assert result_text(solo) == "A: model said: Paris"
    assert [x.data for x in a.logs] == ["A: logged while 1 calls were in flight"]
    assert b.logs == [] and b.sampled == []


# (isolation, alice's group, bob's group): bob's call is in flight while alice's upstream sends on its own
LATE: dict[str, tuple[str, str, str]] = {
    "another agent of the group, on the same process": ("group", "g", "g"),
    "another group, on its own process": ("group", "g", "h"),
    "another agent, on its own process": ("agent", "g", "g"),
}


@pytest.mark.parametrize("case", list(LATE))
async def test_what_an_upstream_sends_after_a_call_returned_reaches_nobody_but_the_log(
    tmp_path: Path, discovered: Discovered, front_dir: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    isolation, alice_group, bob_group = LATE[case]
    world = fr_world(tmp_path, discovered, front_dir, extra=f'isolation = "{isolation}"')
    world.allow("h", "fr.*")
    world.bind("h", "fr", "tok")  # the same credential as g's
    caplog.set_level(logging.INFO, logger="credgate")
    try:
        with anyio.fail_after(60):
            async with (
                world.gateway() as gw,
                gw.running(),
                agent(gw, alice_group, name="alice") as a,
                agent(gw, bob_group, name="bob") as b,
            ):
                lingering = await a.call("fr_linger", {"tag": "A"})
                late = json.loads(result_text(await b.call("fr_wake", {"tag": "A"})))
                pids = (result_text(await a.call("fr_pid")), result_text(await b.call("fr_pid")))
    finally:
        world.close()

    assert result_text(lingering) == "A: lingering"
    assert late == [{"kind": "late", "tag": "A", "outcome": UNANSWERABLE}]  # an error back, not a hang
    assert a.logs == a.sampled == a.progress == []
    assert b.logs == b.sampled == b.progress == []
    assert f"A: sent after its call returned, token {REDACTED}" in caplog.text  # the gateway's log, redacted
    assert "upstream fr asked for sampling: refused" in caplog.text
    assert (pids[0] == pids[1]) == (case == "another agent of the group, on the same process")
    assert_no_leak(caplog.text + a.everything() + b.everything(), TOKEN)


async def test_a_relayed_sampling_request_asks_the_agent_for_no_context_whatever_the_upstream_wanted(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = fr_world(tmp_path, discovered, front_dir)
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g") as a:
                answers = [
                    result_text(await a.call("fr_ask_with_context", {"context": context}))
                    for context in ("allServers", "thisServer", "none")
                ]
    finally:
        world.close()

    assert answers == ["model said: Paris"] * 3
    assert [p.include_context for p in a.sampled] == ["none"] * 3


# -- 12. prefix collisions --------------------------------------------------------------------------


def test_two_upstreams_with_an_empty_prefix_and_a_common_tool_name_are_a_load_error_naming_the_files(
    tmp_path: Path, discovered: Discovered, front_dir: Path
) -> None:
    world = World.create(
        tmp_path / "w",
        {
            "one": fixture_decl("one", "fixture", front_dir, extra='prefix = ""'),
            "two": fixture_decl("two", "fixture", front_dir, extra='prefix = ""'),
        },
    )
    for name in ("one", "two"):
        world.store.save_upstream_tools(name, *discovered["fixture"])
    try:
        catalog = load_catalog(world.settings.tools_dirs).with_discovered(world.store.discovered_tools())
        paths = world.cli_paths
        checked = CliRunner().invoke(cli, [*paths, "tools", "--check"])
        served = CliRunner().invoke(cli, [*paths, "serve", "--group", "nobody"])
        with pytest.raises(DeclarationError):
            Gateway.open(world.settings, catalog)
    finally:
        world.close()

    one, two = world.tools_dir / "one.toml", world.tools_dir / "two.toml"
    clash = [p for p in catalog.problems if "'hello'" in p]
    assert clash == [f"{two}: upstream tool 'hello': its name 'hello' is taken by {one}"]
    assert len(catalog.problems) == len(discovered["fixture"][0])  # every tool of the second one clashes
    assert checked.exit_code == 1
    assert f"problem: {two}: upstream tool 'hello': its name 'hello' is taken by {one}" in checked.stderr
    assert served.exit_code == 1 and str(two) in served.output and "Traceback" not in served.output
    assert recorded(front_dir, "start") == []  # answered from the cache


# -- Streamable HTTP upstream ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fixture server on Streamable HTTP at 127.0.0.1:PORT/mcp for the whole module; yields its URL."""
    folder = tmp_path_factory.mktemp("http_upstream")
    port = closed_port()
    args = [sys.executable, str(FIXTURE), "--http", str(port)]
    with listening_process(args, port, folder / "server.log", env={**os.environ, "FRONT_DIR": str(folder)}):
        yield f"http://127.0.0.1:{port}/mcp"


def web_world(root: Path, discovered: Discovered, url: str) -> World:
    """The fixture over Streamable HTTP as upstream `web`, its token from the credential bound to group `g`."""
    decl = (
        f'name = "web"\n{FRTOKEN}[handler]\nkind = "mcp"\nurl = "{url}"\n'
        'headers = { Authorization = "Bearer {cred.token}" }\ntimeout = 30\n'
    )
    world = front_world(root, discovered, {"web": (decl, "fixture")})
    world.add_credential("tok", "frtoken", {"token": TOKEN})
    world.allow("g", "web.*")
    world.bind("g", "web", "tok")
    return world


async def test_a_streamable_http_upstream_relays_resources_prompts_logs_sampling_and_updates(
    tmp_path: Path, discovered: Discovered, http_upstream: str
) -> None:
    world = web_world(tmp_path / "w", discovered, http_upstream)
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g") as a:
                resources = await a.ask(a.mcp.list_resources())
                secret = await a.ask(a.mcp.read_resource("front://secret"))
                item = await a.ask(a.mcp.read_resource("front://items/5"))
                greeting = await a.ask(a.mcp.get_prompt("web_greet", {"name": "Ann"}))
                await a.ask(a.mcp.set_logging_level("debug"))
                chatty = await a.call("web_chatty")
                sampled = await a.call("web_ask_llm", {"prompt": "over HTTP?"})
                await a.ask(a.mcp.subscribe_resource("front://watched-a"))
                await a.call("web_touch", {"uris": ["front://watched-a"]})
                await a.wait_until(lambda: a.updated() != [])
                await a.ask(a.mcp.unsubscribe_resource("front://watched-a"))
    finally:
        world.close()

    assert [str(r.uri) for r in resources.resources] == FIXTURE_RESOURCES
    assert secret.contents[0].text == f"the token is {REDACTED}"  # the bearer token the gateway sent
    assert item.contents[0].text == "item 5"
    assert greeting.messages[0].content.text == "Hello, Ann."
    assert result_text(chatty) == "chatty done"
    assert [x.data for x in a.logs] == ["chatty: one", "chatty: two", f"chatty: the token is {REDACTED}"]
    assert [p for p, _, _ in a.progress] == [1, 2, 3]
    assert result_text(sampled) == "model said: Paris"
    assert a.sampled[0].messages[0].content.text == f"over HTTP? (token {REDACTED})"
    assert a.updated() == ["front://watched-a"]
    assert_no_leak(a.everything(), TOKEN)


async def test_an_http_upstream_that_closes_a_calls_stream_has_the_agents_closed_too_and_both_resume(
    tmp_path: Path, discovered: Discovered, http_upstream: str
) -> None:
    """SEP-1699 polling through the gateway: the upstream (of the handshake protocol, as here) closes the stream
    of a call it is still working on; the gateway resumes it, and closes the agent's stream of that call too, so
    the agent resumes from the gateway's events in turn, and nobody holds a connection open meanwhile."""
    world = web_world(tmp_path / "w", discovered, http_upstream)
    token = create_agent(world.store, "g", "poller")
    server = start_server(world, tmp_path / "logs")
    resumed: list[str] = []

    async def note_resumption(request: httpx2.Request) -> None:
        if request.method == "GET" and "last-event-id" in request.headers:
            resumed.append(request.headers["last-event-id"])

    try:
        with anyio.fail_after(60):
            http = httpx2.AsyncClient(headers=bearer(token), event_hooks={"request": [note_resumption]})
            transport = streamable_http_client(server.mcp_url, http_client=http)
            async with http, Client(transport, mode="legacy") as client:
                polled = await client.call_tool("web_poll", {})
    finally:
        server.stop()
        world.close()

    assert result_text(polled) == "polled"
    assert resumed  # the agent's client came back for the rest of its call's stream
    assert_no_leak(server.output(), TOKEN)


async def test_what_a_remote_upstream_sends_outside_any_requests_stream_reaches_nobody_but_the_log(
    tmp_path: Path, discovered: Discovered, http_upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    world = web_world(tmp_path / "w", discovered, http_upstream)
    caplog.set_level(logging.INFO, logger="credgate")
    tag = f"R-{tmp_path.name}"  # the upstream serves the whole module
    try:
        with anyio.fail_after(60):
            async with world.gateway() as gw, gw.running(), agent(gw, "g", name="alice") as a:
                await a.call("web_linger", {"tag": tag})
                # her own call is the only one in flight, but the upstream sends on no request's stream
                late = json.loads(result_text(await a.call("web_wake", {"tag": tag})))
    finally:
        world.close()

    assert late == [{"kind": "late", "tag": tag, "outcome": UNANSWERABLE}]
    assert a.logs == a.sampled == a.progress == []
    assert f"{tag}: sent after its call returned, token {REDACTED}" in caplog.text
    assert_no_leak(caplog.text + a.everything(), TOKEN)
