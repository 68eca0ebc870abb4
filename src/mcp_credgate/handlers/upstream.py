"""`mcp` handlers: upstream MCP servers, started (stdio) or connected to (Streamable HTTP) with a credential.

One running upstream per scope (`isolation.UpstreamScope`): per (server, credential, group), never one
process or remote session shared by two groups, and with `isolation = "agent"` per agent of the group too.
Started on first use, reused, started again after a crash (with a back-off) or a change of its credential,
stopped when idle and on shutdown. A stdio child gets only the declared environment on top of the SDK's small default
one (HOME, PATH, SHELL, TERM, USER, LOGNAME) and LANG: the gateway's own variables, its master key above
all, never reach it. It runs in a sandbox (`sandbox.SandboxPolicy`: bubblewrap) unless its declaration or the
gateway turned that off; a sandbox that cannot be set up refuses the start, never runs it unsandboxed. Its
stderr is logged line by line, redacted. A remote upstream's HTTP connections serve call after call
(`keepalive`), within its own session only.

An upstream is spoken to in the newest protocol it offers: 2026-07-28 when it does (each request then says what
the agent behind it can do, `Relay.declare_for_agent`; an agent of that protocol too gets the upstream's
input-required rounds as they are, `UpstreamPool.call`), else the handshake protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar, overload

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx2
import mcp_types as types
from anyio.abc import TaskGroup
from mcp import Client, StdioServerParameters
from mcp.client._transport import Transport
from mcp.client.stdio import get_default_environment, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ServerEvent, SubscriptionLost
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from ..config import Settings
from ..credential import Credential
from ..declarations import McpHandler, SandboxSpec
from ..errors import PlaceholderError, SandboxError
from ..isolation import UpstreamScope, upstream_scope
from ..redact import Redactor, redactor_for
from ..relay import AgentRequest, Relay, forget_related_request, redacted
from ..sandbox import SandboxPolicy
from ..slots import ProcessSlots
from .egress import EgressKit, egress_way, placeholder_redactor, stand_ins
from .http import render
from .keepalive import KeepAliveTransport
from .parked import ParkedCall, Question

logger = logging.getLogger("credgate.upstream")

RESTART_BACKOFF = (0.0, 0.5, 1.0, 2.0, 5.0)
GONE = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)
_T = TypeVar("_T")
Publish = Callable[[str, ServerEvent], Awaitable[None]]  # (group, event): to the group's agents' listen streams
Rounds = tuple[types.InputResponses | None, str | None]  # a 2026-07-28 agent's answers, the upstream's state


class UpstreamError(Exception):
    """The upstream could not be started or reached; the message names the upstream, never a value."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamBusy(UpstreamError):
    """All of the declaration's `max_processes` were busy for as long as a call may wait for one."""


def _passed_through() -> dict[str, str]:
    """LANG is the one variable of the gateway's own a child gets, beside the SDK's default set."""
    return {"LANG": os.environ["LANG"]} if "LANG" in os.environ else {}


def _render_all(items: Mapping[str, str], credential: Credential) -> dict[str, str]:
    return {k: render(v, {}, credential) for k, v in items.items()}


def connect(
    name: str,
    handler: McpHandler,
    credential: Credential,
    relay: Relay,
    *,
    scope: UpstreamScope,
    sandbox: SandboxPolicy | None = None,
    egress: tuple[EgressKit, Credential] | None = None,
) -> AbstractAsyncContextManager[Client]:
    """A client session to the upstream, with the credential placed where the declaration says; what the
    upstream sends on its own goes to `relay`. `scope` is whom this upstream serves (its server, credential,
    group and, with isolation = "agent", agent). A stdio upstream runs in the sandbox `sandbox` describes (its
    home kept per scope) unless `sandbox` is None or off, or its declaration opts out. `egress`: for a
    declaration with inject = "egress", the kit and the credential as the upstream holds it (`stand_ins`)."""
    if handler.inject == "egress":
        if sandbox is None or not sandbox.enabled or handler.sandbox is None:
            raise SandboxError(
                'inject = "egress" needs the sandbox, and this gateway runs upstreams without one '
                "(CREDGATE_SANDBOX=off or --no-sandbox): it was not started"
            )
        if egress is None:
            raise SandboxError('inject = "egress" needs an egress proxy, which this command does not run')
        return _egress_session(name, handler, credential, relay, scope, sandbox, egress)
    if handler.command is not None:
        params = StdioServerParameters(
            command=render(handler.command, {}, credential),
            args=[render(a, {}, credential) for a in handler.args],
            env={**_passed_through(), **_render_all(handler.env, credential)},
        )
        if sandbox is not None and sandbox.enabled and handler.sandbox is not None:
            home = sandbox.home(name, credential.name, scope.group, scope.agent)
            return _stdio_session(name, _sandboxed(name, params, sandbox, handler.sandbox, home), relay)
        return _stdio_session(name, _as_is(params), relay)
    assert handler.url is not None
    http = httpx2.AsyncClient(
        headers=_render_all(handler.headers, credential),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx2.Timeout(handler.timeout, read=handler.timeout + 5),
        transport=KeepAliveTransport(httpx2.AsyncHTTPTransport(trust_env=False)),
        event_hooks={"request": [relay.on_http_request]},
    )
    return _http_session(render(handler.url, {}, credential), http, relay)


@asynccontextmanager
async def _egress_session(
    name: str,
    handler: McpHandler,
    credential: Credential,
    relay: Relay,
    scope: UpstreamScope,
    sandbox: SandboxPolicy,
    egress: tuple[EgressKit, Credential],
) -> AsyncIterator[Client]:
    """A stdio upstream started with placeholders (`shown`) where its declaration puts {cred.FIELD}, in a
    sandbox whose only way out is its own egress proxy, which holds the real values (`handlers.egress`)."""
    kit, shown = egress
    assert handler.command is not None and handler.egress is not None and handler.sandbox is not None
    params = StdioServerParameters(
        command=render(handler.command, {}, shown),
        args=[render(a, {}, shown) for a in handler.args],
        env={**_passed_through(), **_render_all(handler.env, shown)},
    )
    home = sandbox.home(name, credential.name, scope.group, scope.agent)
    folder = await anyio.to_thread.run_sync(sandbox.egress_folder)
    async with egress_way(kit, scope, handler.egress, credential, shown, folder) as way:
        wrapped = _sandboxed(name, params, sandbox, handler.sandbox, home, egress=way)
        async with _stdio_session(name, wrapped, relay) as client:
            yield client


def _as_is(params: StdioServerParameters) -> Callable[[], Awaitable[StdioServerParameters]]:
    async def params_() -> StdioServerParameters:
        return params

    return params_


def _sandboxed(
    name: str,
    params: StdioServerParameters,
    policy: SandboxPolicy,
    options: SandboxSpec,
    home: Path,
    *,
    egress: Path | None = None,
) -> Callable[[], Awaitable[StdioServerParameters]]:
    """The parameters that run the upstream in its sandbox, worked out (files read, its home made) in a thread.
    The SDK's default environment (HOME, PATH…) is merged in first: the sandbox sets HOME, finds the command
    on that PATH. `egress`: the folder of its egress proxy (`handlers.egress.egress_way`)."""

    def wrap() -> StdioServerParameters:
        env = {**get_default_environment(), **(params.env or {})}
        wrapped = policy.wrap(name, params.command, params.args, env, options, home, egress=egress)
        return StdioServerParameters(command=wrapped.argv[0], args=list(wrapped.argv[1:]), env=wrapped.env)

    async def params_() -> StdioServerParameters:
        return await anyio.to_thread.run_sync(wrap)

    return params_


def _client(transport: Transport, relay: Relay) -> Client:
    """The handshake protocol (a long-lived session: server-to-client requests, log lines, subscriptions),
    no response cache (every agent request is asked anew), and the relay's callbacks."""
    return Client(
        transport,
        mode="auto",
        cache=None,
        sampling_callback=relay.on_sampling,
        elicitation_callback=relay.on_elicitation,
        list_roots_callback=relay.on_list_roots,
        logging_callback=relay.on_log,
        message_handler=relay.on_message,
    )


@asynccontextmanager
async def _http_session(url: str, http: httpx2.AsyncClient, relay: Relay) -> AsyncIterator[Client]:
    async with http, _client(streamable_http_client(url, http_client=http), relay) as client:
        _declare_per_request(client, relay)
        yield client


@asynccontextmanager
async def _stdio_session(
    name: str, make_params: Callable[[], Awaitable[StdioServerParameters]], relay: Relay
) -> AsyncIterator[Client]:
    params = await make_params()  # SandboxError: before any process or pipe exists
    read_fd, write_fd = os.pipe()
    errlog = os.fdopen(write_fd, "w")
    reader = threading.Thread(target=_log_lines, args=(name, os.fdopen(read_fd), relay.redactor), daemon=True)
    reader.start()
    try:
        async with _client(stdio_client(params, errlog=errlog), relay) as client:
            _declare_per_request(client, relay)
            yield client
    finally:
        errlog.close()  # the child's copy closes when it exits: then the reader sees the end


def _declare_per_request(client: Client, relay: Relay) -> None:
    """On 2026-07-28 every request carries the client's capabilities and log level in its `_meta`, and the SDK
    stamps the session's own on each: the relay's callbacks would claim sampling, elicitation and roots for an
    agent that has none (an upstream may then run what it must refuse, -32021). The stamp is the SDK's private
    hook; the relay rewrites what it wrote for the agent each request is sent for. Should the hook go, requests
    keep the session's declaration and the relay still refuses to ask an agent what its client cannot answer."""
    session = client.session
    stamp = getattr(session, "_stamp", None)
    if client.protocol_version not in MODERN_PROTOCOL_VERSIONS or stamp is None:
        return

    def for_agent(data: dict[str, Any], opts: Any) -> None:
        stamp(data, opts)
        meta = (data.get("params") or {}).get("_meta")
        if isinstance(meta, dict):
            relay.declare_for_agent(meta)

    session._stamp = for_agent


def modern(client: Client) -> bool:
    """Whether the upstream speaks 2026-07-28 with the gateway: no session, rounds instead of requests."""
    return client.protocol_version in MODERN_PROTOCOL_VERSIONS


LISTEN_RETRY_SECONDS = 1.0


async def _relay_subscriptions(name: str, client: Client, relay: Relay) -> None:
    """A 2026-07-28 upstream has no resources/subscribe: what agents subscribe to through the gateway (resources
    by connection, and the listen streams of 2026-07-28 agents with list changes) is one `subscriptions/listen`
    stream of the gateway's, opened again whenever that changes (it replays nothing: an agent refetches what it
    depends on, as after any update) and after the upstream drops it."""
    while True:
        changed, uris, lists = relay.subscriptions_changed, relay.subscribed, relay.wants_list_changes
        if not (uris or lists):
            await changed.wait()
            continue
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_when_set, changed, tg.cancel_scope)
            if await _listen(name, client, relay, uris, lists):
                await changed.wait()  # closed by the upstream: open again once the URIs change
            tg.cancel_scope.cancel()


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _listen(name: str, client: Client, relay: Relay, uris: list[str], lists: bool) -> bool:
    """Relay the upstream's events until its stream ends: True when the upstream closed it, False (after a
    pause) when it was lost. `lists`: list changes too."""
    try:
        async with client.listen(
            tools_list_changed=lists,
            prompts_list_changed=lists,
            resources_list_changed=lists,
            resource_subscriptions=uris,
        ) as events:
            relay.listened.set()
            relay.listened = anyio.Event()
            async for event in events:
                await relay.on_event(event)
        return True
    except (MCPError, SubscriptionLost, TimeoutError, *GONE) as exc:
        logger.info("upstream %s: its subscription stream ended (%s)", name, type(exc).__name__)
        await anyio.sleep(LISTEN_RETRY_SECONDS)
        return False


def _log_lines(name: str, stream: IO[str], redactor: Redactor) -> None:
    with stream:
        for line in stream:
            logger.info("upstream %s: %s", name, redactor.text(line.rstrip("\n"))[:2000])


@dataclass(eq=False)  # one running upstream each: told apart by identity (kept in sets)
class Session:
    """A running upstream: its client, its relay, and the event that stops the task holding it open."""

    key: UpstreamScope
    fingerprint: bytes
    relay: Relay
    client: Client | None = None
    error: BaseException | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)
    stop: anyio.Event = field(default_factory=anyio.Event)
    last_used: float = field(default_factory=time.monotonic)  # the last request began
    last_done: float = field(default_factory=time.monotonic)  # the last request ended: idle since
    idle_timeout: float = 300.0
    in_flight: int = 0  # requests sent and not yet answered (or being sent)

    @property
    def idle(self) -> bool:
        """Running, with no request in flight, no subscriber, and not asked to stop: it may be stopped."""
        running = self.client is not None and not self.stop.is_set()
        return running and self.in_flight == 0 and not self.relay.has_subscribers

    @property
    def modern(self) -> bool:
        return modern(self.live)

    @property
    def live(self) -> Client:
        """The client of a running session (a closed one is retired before use)."""
        if self.client is None:
            raise UpstreamError(f"upstream {self.key.server} is not running")
        return self.client


def _announced(client: Client) -> dict[str, Any]:
    """The capabilities an upstream announced at its handshake, as JSON."""
    return client.server_capabilities.model_dump(mode="json", by_alias=True, exclude_none=True)


def shown_to_agent(result: types.InputRequiredResult, relay: Relay) -> types.InputRequiredResult | str:
    """An upstream's round as the agent may see it (`Relay.for_agent`: each question shaped), redacted whole,
    its keys and `_meta` included, or why it may not be seen (a question the agent may not see, a key that holds
    a secret: the agent's answers come back by key). The upstream's own state is kept as it is, for the gateway
    to seal (`rounds`): it goes back to the upstream, never to the agent."""
    shown: types.InputRequests = {}
    for key, request in (result.input_requests or {}).items():
        shaped = relay.for_agent(request)
        if isinstance(shaped, types.ErrorData):
            return f"upstream {relay.name}: {shaped.message}"
        shown[key] = shaped
    clean = redacted(relay.redactor, result.model_copy(update={"input_requests": shown or None, "request_state": None}))
    if set(clean.input_requests or {}) != set(shown):
        return f"upstream {relay.name}: a key of its round's questions holds a secret value"
    return clean.model_copy(update={"request_state": result.request_state})


def _placeholders_redacted(handler: McpHandler, session: Session, result: _T) -> _T:
    """A result of an egress upstream with its placeholders redacted as its real values are (the redaction of
    every tool's result, later, knows the real values only); any other result as it is."""
    if handler.inject != "egress" or not isinstance(result, types.CallToolResult):
        return result
    text = result.model_dump_json()  # every form of a placeholder is URL-safe: as it is in the JSON, if anywhere
    if session.relay.redactor.text(text) == text:
        return result
    return redacted(session.relay.redactor, result)


def _last_done(session: Session) -> float:
    return session.last_done


def _error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def _closed(session: Session) -> bool:
    """Whether the client already saw its connection end. The SDK keeps this on its dispatcher, with no
    public accessor; should that change, this says False and the call itself reports the closed connection."""
    dispatcher = getattr(session.client.session, "_dispatcher", None) if session.client is not None else None
    return session.client is None or bool(getattr(dispatcher, "_closed", False))


SETTLE_AFTER_IDLE = 0.02  # seconds: a session idle this long may have died since (killed, crashed)
SETTLE_STEPS = 10  # event-loop turns that a connection's end takes from the pipe to the SDK's dispatcher


async def _closed_meanwhile(session: Session) -> bool:
    """Whether the connection ended since the last request: the end of a process that died while idle can
    still be on its way from the pipe to the SDK's dispatcher (a few turns of the event loop, more on a busy
    machine), and a request sent meanwhile would fail as if the upstream had died during it. So a session idle
    for a while gets those turns first; back-to-back requests do not wait."""
    if _closed(session):
        return True
    if time.monotonic() - session.last_used < SETTLE_AFTER_IDLE:
        return False
    for _ in range(SETTLE_STEPS):
        await anyio.lowlevel.checkpoint()
        if _closed(session):
            return True
    return False


def _check_scope(scope: UpstreamScope, handler: McpHandler, credential: Credential, agent: AgentRequest | None) -> None:
    """A request goes only to the upstream of its caller's own scope. A mismatch is a bug of the gateway's,
    refused before anything is sent (ValueError)."""
    if scope.credential != credential.name:
        raise ValueError(f"upstream {scope.server}: the scope names another credential than the one given")
    if agent is None:
        return
    group, who = agent.caller
    if scope != upstream_scope(scope.server, scope.credential, group=group, agent=who, isolation=handler.isolation):
        raise ValueError(f"upstream {scope.server}: a request of group {group} for another scope ({scope})")


class UpstreamPool:
    def __init__(
        self,
        task_group: TaskGroup,
        on_start: Callable[[str, dict[str, Any]], None] | None = None,
        sandbox: SandboxPolicy | None = None,
        own_pages: Callable[[], Collection[str]] = frozenset,
        publish: Publish | None = None,
        egress: EgressKit | None = None,
    ) -> None:
        """`on_start(name, capabilities)` learns what each upstream announced when it starts. `sandbox`: how
        stdio upstreams are sandboxed (by default as the environment's settings say: on). `own_pages`: the
        gateway's own pages, where no upstream may send an agent (`Relay.for_agent`). `publish(group, event)`:
        where an upstream's events for the listen streams of a group's agents go. `egress`: what upstreams
        declared with inject = "egress" need (without it they are not started)."""
        self._tg = task_group
        self._own_pages = own_pages
        self._publish = publish
        self._on_start = on_start
        self._egress = egress
        self._sandbox = sandbox if sandbox is not None else SandboxPolicy.of(Settings.resolve())
        self._sessions: dict[UpstreamScope, Session] = {}
        self._locks: dict[UpstreamScope, anyio.Lock] = {}
        self._failures: dict[UpstreamScope, int] = {}
        self._slots: dict[str, ProcessSlots] = {}  # per declaration: its max_processes
        self._parked: dict[str, ParkedCall] = {}  # 2026-07-28 agents' calls between rounds, by id
        self._holding: set[Session] = set()  # sessions whose process may be alive (their task still runs)
        self._fingerprint_key = secrets.token_bytes(32)
        self._declared: dict[int, tuple[McpHandler, str]] = {}  # by id: each handler's dump, made once
        self._reaper = anyio.CancelScope()
        task_group.start_soon(self._reap_idle)

    def _fingerprint(self, handler: McpHandler, credential: Credential) -> bytes:
        """Tells a changed credential or declaration from the running one without keeping its values (keyed per
        process). A handler's dump is made once per handler object (a reload makes new ones): dumping it on
        every call was a tenth of the gateway's time on the proxy path."""
        known = self._declared.get(id(handler))
        if known is None or known[0] is not handler:
            if len(self._declared) > 1024:  # handlers of reloads long gone
                self._declared.clear()
            known = self._declared[id(handler)] = (handler, repr(handler.model_dump()))
        text = repr((known[1], sorted(credential.items())))
        return hmac.new(self._fingerprint_key, text.encode(), hashlib.sha256).digest()

    @overload
    async def call(
        self,
        scope: UpstreamScope,
        handler: McpHandler,
        remote_tool: str,
        args: dict[str, Any],
        credential: Credential,
        agent: AgentRequest | None = None,
        rounds: None = None,
    ) -> types.CallToolResult: ...

    @overload
    async def call(
        self,
        scope: UpstreamScope,
        handler: McpHandler,
        remote_tool: str,
        args: dict[str, Any],
        credential: Credential,
        agent: AgentRequest | None,
        rounds: Rounds | None,
    ) -> types.CallToolResult | types.InputRequiredResult: ...

    async def call(
        self,
        scope: UpstreamScope,
        handler: McpHandler,
        remote_tool: str,
        args: dict[str, Any],
        credential: Credential,
        agent: AgentRequest | None = None,
        rounds: Rounds | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Call a tool of the scope's upstream; its progress becomes the agent's. No answer in time is an error
        result. `rounds`, for an agent of 2026-07-28 (its answers to the upstream's last round and the upstream's
        state): an upstream of that protocol too hands its input-required rounds back as they are, for the agent
        to answer; one of the handshake protocols asks its questions as requests during the call, which is then
        parked between the agent's rounds (`handlers.parked`). Otherwise the upstream's questions are put to the
        agent as requests during the call."""
        if rounds is not None and agent is not None:
            responses, state = rounds
            parked = self._parked.get(state or "")
            if parked is not None and parked.caller == agent.caller and parked.scope == scope:
                parked.answer(responses)  # the agent's retry of a parked call's round
                return await self._next_round(parked)
            if not (await self.session(scope, handler, credential)).modern:
                if state is not None:  # a parked call's round, but not (any longer) one of this process's
                    return _error_result(
                        f"upstream {scope.server}: the call this answers is not waiting here (it ran on another "
                        "gateway process, or waited too long): call the tool again"
                    )
                return await self._park(scope, handler, remote_tool, args, credential, agent)

        async def send(session: Session) -> types.CallToolResult | types.InputRequiredResult:
            progress = session.relay.progress_to(agent)
            if rounds is None or not session.modern:
                return _placeholders_redacted(
                    handler, session, await session.live.call_tool(remote_tool, args, progress_callback=progress)
                )
            responses, state = rounds
            result = await session.live.session.call_tool(
                remote_tool,
                args,
                progress_callback=progress,
                input_responses=responses,
                request_state=state,
                allow_input_required=True,
            )
            if not isinstance(result, types.InputRequiredResult):
                return _placeholders_redacted(handler, session, result)
            shown = shown_to_agent(result, session.relay)
            return _error_result(shown) if isinstance(shown, str) else shown

        try:
            return await self.request(scope, handler, credential, send, agent)
        except UpstreamTimeout as exc:
            return _error_result(str(exc))

    async def _park(
        self,
        scope: UpstreamScope,
        handler: McpHandler,
        remote_tool: str,
        args: dict[str, Any],
        credential: Credential,
        agent: AgentRequest,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Run a 2026-07-28 agent's call to a handshake-protocol upstream in a task of the pool's, its questions
        becoming the agent's rounds."""
        self._forget_stale_parked()
        declared = agent.ctx.session.client_capabilities if agent.ctx is not None else None
        parked = ParkedCall(agent.caller, scope, declared)
        self._parked[parked.id] = parked
        behind = AgentRequest(None, agent.caller, asks=parked.ask)  # no request of the agent's stays open

        async def run() -> None:
            try:

                async def send(session: Session) -> types.CallToolResult:
                    return _placeholders_redacted(handler, session, await session.live.call_tool(remote_tool, args))

                result = await self.request(scope, handler, credential, send, behind)
                parked.end(result)
            except UpstreamTimeout as exc:
                parked.end(_error_result(str(exc)))
            except Exception as exc:
                parked.end(exc)

        self._tg.start_soon(run)
        return await self._next_round(parked)

    async def _next_round(self, parked: ParkedCall) -> types.CallToolResult | types.InputRequiredResult:
        """The parked call's next question, as a round whose state is the parked call's id (the gateway seals
        it), or its result (the parked call is then forgotten)."""
        try:
            found = await parked.next()
        except BaseException:
            self._parked.pop(parked.id, None)
            raise
        if isinstance(found, Question):
            return types.InputRequiredResult(input_requests={found.key: found.request}, request_state=parked.id)
        self._parked.pop(parked.id, None)
        return found

    def _forget_stale_parked(self) -> None:
        for key in [k for k, p in self._parked.items() if p.stale]:
            del self._parked[key]

    async def request(
        self,
        scope: UpstreamScope,
        handler: McpHandler,
        credential: Credential,
        send: Callable[[Session], Awaitable[_T]],
        agent: AgentRequest | None = None,
    ) -> _T:
        """Send one request to the scope's upstream, on behalf of `agent` (the relay decides whether what
        the upstream sends meanwhile is the agent's; no agent: the gateway's own request). A session whose
        connection is already closed (the process died since the last request) is replaced first; a
        request whose connection closes while it runs is not sent again (it may have had effects):
        UpstreamError, and the next request starts a new upstream. An error answer of the upstream leaves
        as its MCPError."""
        _check_scope(scope, handler, credential, agent)
        name = scope.server
        session = await self._in_use(scope, handler, credential)
        try:
            with anyio.fail_after(handler.timeout):
                with session.relay.serving(agent):  # until the answer: what comes later is no one's
                    result = await send(session)
                await session.relay.settle(agent)
                return result
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {name} did not answer within {handler.timeout:g} s") from None
        except (MCPError, *GONE) as exc:
            if isinstance(exc, MCPError) and exc.code != types.CONNECTION_CLOSED:
                raise
            self._retire(session)
            raise UpstreamError(f"upstream {name} closed the connection during the request") from None
        finally:
            self._done_with(session)

    async def discover(
        self, scope: UpstreamScope, handler: McpHandler, credential: Credential
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The upstream's tools and the capabilities it announced, as JSON: listed by the scope's upstream
        (`UpstreamScope.for_discovery` outside any agent's request), as the gateway's own request."""
        _check_scope(scope, handler, credential, None)
        session = await self._in_use(scope, handler, credential)
        try:
            with anyio.fail_after(handler.start_timeout), session.relay.serving(None):
                listed = await session.live.list_tools()
        finally:
            self._done_with(session)
        tools = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed.tools]
        return tools, _announced(session.live)

    async def _in_use(self, scope: UpstreamScope, handler: McpHandler, credential: Credential) -> Session:
        """The scope's running upstream, marked in use until `_done_with`: no idle stop takes it meanwhile.
        One whose connection ended since its last request (it died while idle) is replaced first."""
        session = await self.session(scope, handler, credential)
        session.in_flight += 1  # no await since `session` returned: no other task saw it idle meanwhile
        if await _closed_meanwhile(session):
            self._done_with(session)
            self._retire(session)
            session = await self.session(scope, handler, credential)
            session.in_flight += 1
        session.last_used = time.monotonic()
        return session

    def _done_with(self, session: Session) -> None:
        """A request has ended: its upstream is idle from now on, unless another is in flight. A call that
        waits for a slot of the same declaration then gets the least recently used idle one's."""
        session.in_flight -= 1
        session.last_done = time.monotonic()
        if session.in_flight == 0:
            self._make_room(session.key.server)

    def _make_room(self, name: str) -> None:
        """Stop as many idle upstreams of the declaration as calls wait for a slot, least recently used
        first; those already stopping count (their slots are on the way)."""
        slots = self._slots.get(name)
        if slots is None or slots.waiting == 0:
            return
        stopping = sum(1 for s in self._holding if s.key.server == name and s.stop.is_set())
        idle = sorted((s for s in self._sessions.values() if s.key.server == name and s.idle), key=_last_done)
        for session in idle[: max(0, slots.waiting - stopping)]:
            logger.info("stopping idle upstream %s: a call waits for one of its max_processes", session.key)
            self._retire(session)

    async def _slot(self, name: str, handler: McpHandler) -> None:
        """One of the declaration's `max_processes`, held until the process has exited (`_hold` gives it
        back). UpstreamBusy when none comes free within the handler's `slot_wait`."""
        slots = self._slots.get(name)
        if slots is None:
            slots = self._slots[name] = ProcessSlots(handler.max_processes)
        elif slots.limit != handler.max_processes:
            slots.resize(handler.max_processes)
        if not await slots.take(handler.slot_wait, lambda: self._make_room(name)):
            raise UpstreamBusy(
                f"upstream {name}: all of its {handler.max_processes} processes are busy "
                f"(max_processes = {handler.max_processes}); none came free within {handler.slot_wait:g} s"
            )

    async def session(self, scope: UpstreamScope, handler: McpHandler, credential: Credential) -> Session:
        """The running upstream of the scope, started (or restarted after a change of its credential or
        declaration) when needed. Never another scope's: the scope is the whole key. Starting one waits for
        one of the declaration's `max_processes` (UpstreamBusy when none comes free in time)."""
        key, name = scope, scope.server
        fingerprint = self._fingerprint(handler, credential)
        async with self._locks.setdefault(key, anyio.Lock()):
            current = self._sessions.get(key)
            if current is not None and current.fingerprint == fingerprint and current.client is not None:
                return current
            if current is not None:
                self._retire(current)  # the credential changed: its process must not serve the new one
            failures = self._failures.get(key, 0)
            await anyio.sleep(RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)])
            # discovery's upstream serves no group: none of its events is anyone's
            publish = partial(self._publish, key.group) if self._publish and key.group is not None else None
            remote = handler.url is not None
            egress = self._stand_ins(key, handler, credential)
            redactor = redactor_for(credential) if egress is None else placeholder_redactor(credential, egress[1])
            relay = Relay(name, redactor, remote=remote, own_pages=self._own_pages, publish=publish)
            session = Session(key, fingerprint, relay, idle_timeout=handler.idle_timeout)
            await self._slot(name, handler)  # from here until its process has exited (`_hold`)
            self._holding.add(session)
            self._tg.start_soon(self._hold, handler, credential, session, egress)
            with anyio.move_on_after(handler.start_timeout):
                await session.ready.wait()
            if session.client is None:
                session.stop.set()
                self._failures[key] = failures + 1
                why = "did not start in time" if session.error is None else "could not be started"
                if isinstance(session.error, SandboxError):  # says why and what to do, never a value
                    why += f": {session.relay.redactor.text(str(session.error))}"
                raise UpstreamError(f"upstream {name} {why}")
            self._failures.pop(key, None)
            self._sessions[key] = session
            return session

    def _stand_ins(
        self, scope: UpstreamScope, handler: McpHandler, credential: Credential
    ) -> tuple[EgressKit, Credential] | None:
        """For inject = "egress": the kit and the credential as the upstream holds it (placeholders)."""
        if handler.inject != "egress" or self._egress is None:
            return None
        try:
            return self._egress, stand_ins(self._egress, scope, credential)
        except PlaceholderError as exc:  # names the field and why, never a value
            raise UpstreamError(f"upstream {scope.server} could not be started: {exc}") from None

    async def _hold(
        self,
        handler: McpHandler,
        credential: Credential,
        session: Session,
        egress: tuple[EgressKit, Credential] | None = None,
    ) -> None:
        """Keeps one upstream session open (its context must be entered and left in the same task). Its
        tasks belong to no request, whichever request started it: the relay must not think otherwise."""
        forget_related_request()
        name = session.key.server
        try:
            async with connect(
                name, handler, credential, session.relay, scope=session.key, sandbox=self._sandbox, egress=egress
            ) as client:
                session.client = client
                self._started(name, client)
                session.ready.set()
                async with anyio.create_task_group() as tg:
                    if modern(client):
                        tg.start_soon(_relay_subscriptions, name, client, session.relay)
                    await session.stop.wait()
                    tg.cancel_scope.cancel()
        except SandboxError as exc:
            session.error = exc
            logger.error("upstream %s could not be started: %s", name, session.relay.redactor.text(str(exc)))
        except Exception as exc:
            session.error = exc
            logger.warning("upstream %s ended: %s", name, type(exc).__name__)
        finally:
            session.client = None
            session.ready.set()
            if self._sessions.get(session.key) is session:
                del self._sessions[session.key]
            self._holding.discard(session)
            self._slots[name].give_back()  # its process has exited (the SDK waits for it)

    def _started(self, name: str, client: Client) -> None:
        if self._on_start is None:
            return
        try:
            self._on_start(name, _announced(client))
        except Exception as exc:  # the upstream serves on; what it offers is refreshed at its next start
            logger.warning("upstream %s: its capabilities were not recorded (%s)", name, type(exc).__name__)

    def _retire(self, session: Session) -> None:
        session.stop.set()
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]

    async def _reap_idle(self) -> None:
        with self._reaper:
            while True:
                await anyio.sleep(1.0)
                self._stop_idle()

    def _stop_idle(self) -> None:
        now = time.monotonic()
        for session in list(self._sessions.values()):
            if now - session.last_done > session.idle_timeout and session.idle:
                logger.info("stopping idle upstream %s", session.key)
                self._retire(session)
        for key in [k for k, lock in self._locks.items() if k not in self._sessions and not lock.locked()]:
            del self._locks[key]  # one per scope ever used would add up (an OAuth client is an agent)

    def close(self) -> None:
        """Stop every upstream; the task group then ends as their sessions close."""
        self._reaper.cancel()
        for session in list(self._sessions.values()):
            self._retire(session)


@asynccontextmanager
async def upstream_pool(
    on_start: Callable[[str, dict[str, Any]], None] | None = None,
    sandbox: SandboxPolicy | None = None,
    own_pages: Callable[[], Collection[str]] = frozenset,
    publish: Publish | None = None,
    egress: EgressKit | None = None,
) -> AsyncIterator[UpstreamPool]:
    """The pool's tasks never raise (`_hold` keeps its error): an exception of the body leaves as itself,
    not wrapped in the task group's ExceptionGroup, so callers can catch UpstreamError, GatewayError …"""
    try:
        async with anyio.create_task_group() as tg:
            pool = UpstreamPool(tg, on_start, sandbox, own_pages, publish, egress)
            try:
                yield pool
            finally:
                pool.close()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
