"""What an upstream MCP server sends on its own reaches the agent it belongs to, redacted, or no agent.

Log lines, progress, sampling / elicitation / roots requests and resource updates start at the upstream.
There is one relay per running upstream, and one running upstream per group, or per agent with
`isolation = "agent"` (see `isolation`). A message reaches an agent only when it is tied to a request of
that agent's that is still waiting for its answer:

- progress, by its token (the SDK gives each request its own and drops progress for no pending request);
- over Streamable HTTP, by the response stream it came on: the SDK handles a message in the context of the
  request whose stream carried it, and `serving` marks that context with the request;
- over stdio, where nothing on the wire ties a message to a request, by elimination only: exactly one
  request is in flight on the process, it is an agent's, and that agent is the only one the process has
  ever served. The process talks to no one but this relay, so nothing else can have caused the message: not
  another agent's request, nor an earlier one of another agent's that the process is still busy with.
  With isolation = "agent" that holds for every process; with "group", until a second agent of the group
  uses the process (a stdio client is one agent of its group).

Anything else (sent while no request is in flight, after its request was answered, while two are in
flight, by a process that has served two agents, or by a remote upstream outside any request's stream)
goes to the gateway's log, redacted, and a request of the upstream is answered with an error.

Resource updates go to the agent connections that subscribed to that URI through this upstream, and with
list changes to the `subscriptions/listen` streams (2026-07-28) of the group's agents (`publish`: the group's bus),
which filter them as each agent asked.

An upstream speaking 2026-07-28 learns with each request what the agent behind it can do (`declare_for_agent`):
the client capabilities the agent declared, as far as the gateway relays them, and the log level it asked for.
Its questions to the agent then come back inside its result (an input-required round), not as requests of its
own; `for_agent` shapes them the same way either way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientRequestContext
from mcp.server.connection import allowed_log_levels
from mcp.server.context import ServerRequestContext
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from .addresses import server_of
from .redact import Redactor
from .visible import shown_escaped

logger = logging.getLogger("credgate.relay")

SETTLE_SECONDS = 5.0  # how long a result waits for the log lines and progress sent before it
LOGGED_CHARS = 2000  # of a log line no agent receives, the gateway's log keeps this much
_ModelT = TypeVar("_ModelT", bound=BaseModel)
# a parked call's way to ask its agent: (the request, the result's type, the capability it needs)
Ask = Callable[[Any, type[Any], types.ClientCapabilities], Awaitable[Any]]


def connection_of(ctx: ServerRequestContext[Any]) -> object:
    """The agent's connection behind a request: one per stdio client, per legacy HTTP session or SSE stream.
    The SDK keeps it private on the per-request session; the session itself stands in should that change."""
    return getattr(ctx.session, "_connection", ctx.session)


@dataclass(eq=False)
class AgentRequest:
    """An agent's request being relayed to an upstream, and where the upstream's own messages for it go."""

    ctx: ServerRequestContext[Any] | None  # None: a call made in-process, with no way back to its agent
    caller: tuple[str, str | None]  # (group, agent): who may see what the upstream sends during it
    forwarding: int = 0
    settled: anyio.Event = field(default_factory=anyio.Event)
    # a parked call's (`handlers.parked`): the upstream's requests become the 2026-07-28 agent's rounds
    asks: Ask | None = None


@dataclass(eq=False)
class InFlight:
    """One request to an upstream, from sending it until its answer came back."""

    relay: Relay
    agent: AgentRequest | None  # None: the gateway's own (listing the upstream's tools)
    answered: bool = False


# The request whose context a message of the upstream is handled in: over Streamable HTTP, the one whose
# response stream carried it (see the module's docstring).
_RELATED: ContextVar[InFlight | None] = ContextVar("credgate_related_request", default=None)


def forget_related_request() -> None:
    """For a task that outlives any one request (the one holding an upstream's session open): started by a
    request, it must not pass that request on to what the upstream sends outside it."""
    _RELATED.set(None)


def redacted(redactor: Redactor, model: _ModelT) -> _ModelT:
    """A copy of an MCP message with every secret value of the credential replaced (a number that was one by
    zero: the message keeps its schema)."""
    dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return type(model).model_validate(redactor.obj(dumped, typed=True))


class Relay:
    """One per running upstream: its requests in flight, the agents it has served, its resource
    subscribers. `remote`: a Streamable HTTP upstream, whose messages are tied by their stream or not at all."""

    def __init__(
        self,
        name: str,
        redactor: Redactor,
        *,
        remote: bool = False,
        own_pages: Callable[[], Collection[str]] = frozenset,
        publish: Callable[[ServerEvent], Awaitable[None]] | None = None,
    ) -> None:
        """`publish`: where the upstream's events for the listen streams of the agents it serves go."""
        self.name = name
        self._publish = publish
        self.redactor = redactor
        self._remote = remote
        self._own_pages = own_pages  # the URLs of the gateway's own pages: no upstream sends an agent there
        self._in_flight: list[InFlight] = []
        self._served: set[tuple[str, str | None]] = set()  # (group, agent) of every request it got
        self._subscribers: dict[str, dict[int, ServerRequestContext[Any]]] = {}
        self._watched: set[int] = set()  # connections whose end is hooked (see subscribe)
        self.subscriptions_changed = anyio.Event()  # set (and replaced) whenever the subscribed URIs change
        self._listening: dict[object, frozenset[str]] = {}  # agents' listen streams: the URIs each watches
        self.listened = anyio.Event()  # set (and replaced) each time the upstream acknowledged a listen stream
        # the level the group's handshake-era agents last set (logging/setLevel), for a 2026-07-28 upstream,
        # which has no such request and is told the level with each request instead; all lines until one is set
        self.log_level: types.LoggingLevel = "debug"

    # -- requests in flight ------------------------------------------------------------------

    @contextmanager
    def serving(self, request: AgentRequest | None) -> Iterator[None]:
        """Around one request to the upstream, from sending it until its answer (`request`: the agent's, or
        None for the gateway's own). Must be entered and left in the task that sends the request."""
        entry = InFlight(self, request)
        if request is not None:
            self._served.add(request.caller)
        self._in_flight.append(entry)
        token = _RELATED.set(entry)
        try:
            yield
        finally:
            entry.answered = True
            self._in_flight.remove(entry)
            _RELATED.reset(token)

    def owner(self) -> AgentRequest | str:
        """The agent request a message of the upstream is arriving for, or why there is none."""
        related = _RELATED.get()
        if related is not None and related.relay is self:
            if related.answered:
                return "its request was answered already"
            return related.agent if related.agent is not None else "it came during the gateway's own request"
        if self._remote:
            return "it came on no request's stream"
        if not self._in_flight:
            return "no request is in flight"
        if len(self._in_flight) > 1:
            return "several requests are in flight"
        only = self._in_flight[0].agent
        if only is None:
            return "only the gateway's own request is in flight"
        if len(self._served) > 1:
            return "this upstream process has served more than one agent"
        return only

    def declare_for_agent(self, meta: dict[str, Any]) -> None:
        """Rewrite the `_meta` of a 2026-07-28 request to the upstream for the agent it is sent for: the client
        capabilities the gateway relays (sampling, elicitation, roots) only as far as the agent's client declared
        them, and the agent's log level. The gateway's own requests declare none and ask for no log lines."""
        related = _RELATED.get()
        agent = related.agent if related is not None and related.relay is self else None
        ctx = agent.ctx if agent is not None else None
        declared = ctx.session.client_capabilities if ctx is not None else None
        meta[types.CLIENT_CAPABILITIES_META_KEY] = _relayed_capabilities(declared)
        level = None if ctx is None else self._log_level_of(ctx)
        if level is None:
            meta.pop(types.LOG_LEVEL_META_KEY, None)
        else:
            meta[types.LOG_LEVEL_META_KEY] = level

    def _log_level_of(self, ctx: ServerRequestContext[Any]) -> str | None:
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            level = (ctx.meta or {}).get(types.LOG_LEVEL_META_KEY)
            return level if isinstance(level, str) else None
        return self.log_level

    async def on_http_request(self, request: httpx2.Request) -> None:
        """Before each HTTP request to a remote upstream: a GET with Last-Event-ID made while an agent's request
        is in flight is its client resuming that request's stream, which the upstream closed mid-request
        (SEP-1699 polling). The agent's own stream then closes too (when its client can resume it): it resumes
        from the gateway's events as the gateway does from the upstream's, however long the upstream makes it."""
        if request.method != "GET" or "last-event-id" not in request.headers:
            return
        related = _RELATED.get()
        agent = related.agent if related is not None and related.relay is self else None
        ctx = agent.ctx if agent is not None else None
        if ctx is not None and ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()

    async def settle(self, request: AgentRequest | None) -> None:
        """Wait until what was forwarded for the request has gone, so it reaches the agent before the result."""
        if request is None:
            return
        with anyio.move_on_after(SETTLE_SECONDS):
            while request.forwarding:
                request.settled = anyio.Event()
                await request.settled.wait()

    async def _forward(self, request: AgentRequest, send: Callable[[], Awaitable[None]]) -> None:
        request.forwarding += 1
        try:
            await send()
        except Exception as exc:  # the agent went away: nothing to deliver to
            logger.debug("upstream %s: a message for the agent was not delivered (%s)", self.name, type(exc).__name__)
        finally:
            request.forwarding -= 1
            if request.forwarding == 0:
                request.settled.set()

    def progress_to(self, request: AgentRequest | None) -> ProgressFnT:
        """The progress callback of one relayed request: the upstream's progress becomes the agent's, on the
        agent's own progress token (nothing is sent when the agent asked for none)."""

        async def report(progress: float, total: float | None, message: str | None) -> None:
            ctx = request.ctx if request is not None else None
            if request is None or ctx is None:
                return
            text = self.redactor.text(message) if message is not None else None
            await self._forward(request, lambda: ctx.session.report_progress(progress, total, text))

        return report

    # -- what the upstream sends on its own ------------------------------------------------

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        request = self.owner()
        ctx = request.ctx if isinstance(request, AgentRequest) else None
        if not isinstance(request, AgentRequest) or ctx is None:
            why = request if isinstance(request, str) else "its agent cannot be reached"
            data = json.dumps(self.redactor.obj(params.data), ensure_ascii=False, default=str)[:LOGGED_CHARS]
            logger.info("upstream %s logged (%s) for no agent, %s: %s", self.name, params.level, why, data)
            return
        if params.level not in allowed_log_levels(ctx.protocol_version, ctx.meta):
            return  # a 2026-07-28 agent did not opt in to this level for this request
        notification = types.LoggingMessageNotification(params=redacted(self.redactor, params))
        await self._forward(request, lambda: ctx.session.send_notification(notification, ctx.request_id))

    def for_agent(self, request: types.InputRequest) -> types.InputRequest | types.ErrorData:
        """An upstream's question (sampling, elicitation, roots) as the agent may see it, or why it may not:
        redacted; sampling never includes context (includeContext would have the agent's client add what it has
        from this server or from all its servers: an upstream does not get to read what the agent has from
        elsewhere); a URL elicitation labelled with the upstream's name, and never one to the gateway's own pages
        (setup links, sign-in, consent: phishing through the gateway)."""
        if isinstance(request, types.CreateMessageRequest):
            asked = request.params.model_copy(update={"include_context": "none"})
            return types.CreateMessageRequest(params=redacted(self.redactor, asked))
        if isinstance(request, types.ElicitRequest):
            params = request.params
            if isinstance(params, types.ElicitRequestURLParams):
                if server_of(params.url) in {server_of(own) for own in self._own_pages()}:
                    logger.warning("upstream %s sent the agent to a page of the gateway's own: refused", self.name)
                    return types.ErrorData(
                        code=types.INVALID_PARAMS,
                        message="an upstream may not send the agent to the gateway's own pages",
                    )
                params = params.model_copy(update={"message": f"[{self.name}] {shown_escaped(params.message)}"})
            return types.ElicitRequest(params=redacted(self.redactor, params))
        return redacted(self.redactor, request)  # roots/list: its `_meta`

    async def on_sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        result_type: type[types.CreateMessageResult | types.CreateMessageResultWithTools] = (
            types.CreateMessageResultWithTools if params.tools else types.CreateMessageResult
        )
        request = self.for_agent(types.CreateMessageRequest(params=params))
        if isinstance(request, types.ErrorData):
            return request
        wanted = types.ClientCapabilities(sampling=types.SamplingCapability())
        return await self._ask("sampling", request, result_type, wanted)

    async def on_elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        request = self.for_agent(types.ElicitRequest(params=params))
        if isinstance(request, types.ErrorData):
            return request
        wanted = types.ClientCapabilities(elicitation=types.ElicitationCapability())
        return await self._ask("elicitation", request, types.ElicitResult, wanted)

    async def on_list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        wanted = types.ClientCapabilities(roots=types.RootsCapability())
        return await self._ask("roots", types.ListRootsRequest(), types.ListRootsResult, wanted)

    async def _ask(
        self, what: str, request: types.ServerRequest, result_type: type[_ModelT], wanted: types.ClientCapabilities
    ) -> _ModelT | types.ErrorData:
        """Put the upstream's request to the agent whose request it serves, on that request's channel; when
        there is none, the upstream gets an error at once (it never waits for an answer no one will give)."""
        owner = self.owner()
        if isinstance(owner, AgentRequest) and owner.asks is not None:
            answer: _ModelT | types.ErrorData = await owner.asks(request, result_type, wanted)
            return answer
        ctx = owner.ctx if isinstance(owner, AgentRequest) else None
        if ctx is None:
            why = owner if isinstance(owner, str) else "its agent cannot be reached"
            logger.warning("upstream %s asked for %s: refused, %s", self.name, what, why)
            return types.ErrorData(
                code=types.INVALID_REQUEST, message=f"{what} is unavailable: the gateway cannot tell which agent to ask"
            )
        if not ctx.session.check_client_capability(wanted):
            return types.ErrorData(code=types.METHOD_NOT_FOUND, message=f"the agent's client does not offer {what}")
        metadata = ServerMessageMetadata(related_request_id=ctx.request_id)
        try:
            return await ctx.session.send_request(request, result_type, metadata=metadata)
        except MCPError as exc:
            return exc.error

    # -- resource subscriptions --------------------------------------------------------------

    def subscribe(self, uri: str, ctx: ServerRequestContext[Any]) -> bool:
        """Note the agent's connection as a subscriber; True when it is the URI's first (subscribe upstream)."""
        connection = connection_of(ctx)
        key = id(connection)
        if key not in self._watched:  # forget its subscriptions when the connection ends
            self._watched.add(key)
            exit_stack = getattr(connection, "exit_stack", None)
            if exit_stack is not None:
                exit_stack.callback(self._forget, key)
        first = uri not in self.subscribed
        subscribers = self._subscribers.setdefault(uri, {})
        subscribers[key] = ctx
        if first:
            self._changed()
        return first

    def _changed(self) -> None:
        self.subscriptions_changed.set()
        self.subscriptions_changed = anyio.Event()

    @property
    def subscribed(self) -> list[str]:
        """The URIs someone is subscribed to through this upstream (a connection, or a listen stream)."""
        return sorted(set(self._subscribers).union(*self._listening.values()))

    @property
    def wants_list_changes(self) -> bool:
        """Whether an agent's listen stream is open through this upstream (list changes go to it)."""
        return bool(self._listening)

    def listen(self, stream: object, uris: Collection[str]) -> list[str]:
        """An agent's listen stream opened, watching `uris`; the URIs no one watched before (an upstream of the
        handshake protocol is subscribed to them; one of 2026-07-28 listens for what `subscribed` says)."""
        before = set(self.subscribed)
        self._listening[stream] = frozenset(uris)
        self._changed()
        return sorted(set(uris) - before)

    def unlisten(self, stream: object) -> list[str]:
        """An agent's listen stream ended; the URIs no one watches any more."""
        uris = self._listening.pop(stream, None)
        if uris is None:
            return []
        self._changed()
        return sorted(uris - set(self.subscribed))

    def _forget(self, key: int) -> None:
        self._watched.discard(key)
        for uri in list(self._subscribers):
            self._drop(uri, key)

    def _drop(self, uri: str, key: int) -> None:
        subscribers = self._subscribers.get(uri, {})
        subscribers.pop(key, None)
        if not subscribers and self._subscribers.pop(uri, None) is not None:
            self._changed()

    def unsubscribe(self, uri: str, ctx: ServerRequestContext[Any]) -> bool:
        """Forget the agent's subscription; True when no one is left (unsubscribe upstream)."""
        subscribers = self._subscribers.get(uri, {})
        if subscribers.pop(id(connection_of(ctx)), None) is None:
            return False
        if not subscribers:
            del self._subscribers[uri]
            self._changed()
        return uri not in self.subscribed  # an agent's listen stream may still watch it

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers or self._listening)

    async def on_message(self, message: Any) -> None:
        """The upstream's other notifications: a resource update goes to the URI's subscribers, a list change
        to the agents' listen streams."""
        if isinstance(message, types.ResourceUpdatedNotification):
            await self.resource_updated(message.params.uri)
        elif isinstance(message, types.ToolListChangedNotification):
            await self._to_listeners(ToolsListChanged())
        elif isinstance(message, types.PromptListChangedNotification):
            await self._to_listeners(PromptsListChanged())
        elif isinstance(message, types.ResourceListChangedNotification):
            await self._to_listeners(ResourcesListChanged())

    async def resource_updated(self, uri: str) -> None:
        """The upstream says a resource changed (a notification, or an event of its `subscriptions/listen`)."""
        for key, ctx in list(self._subscribers.get(uri, {}).items()):
            try:
                await ctx.session.send_resource_updated(self.redactor.text(uri))
            except Exception:  # that agent's connection is gone: drop its subscription
                self._drop(uri, key)
        if any(uri in uris for uris in self._listening.values()):
            await self._to_listeners(ResourceUpdated(uri=self.redactor.text(uri)))

    async def on_event(self, event: ServerEvent) -> None:
        """An event of the upstream's own listen stream."""
        if isinstance(event, ResourceUpdated):
            await self.resource_updated(event.uri)
        else:
            await self._to_listeners(event)

    async def _to_listeners(self, event: ServerEvent) -> None:
        """To the listen streams of the agents this upstream serves (each delivers only what its agent asked)."""
        if self._publish is not None and self._listening:
            await self._publish(event)


# What the gateway relays of an agent's client capabilities to an upstream (the relay's callbacks): sampling
# without context (`Relay.for_agent` lowers includeContext), elicitation in the modes the agent has, roots
# without list-change notices (the gateway relays none).
def _relayed_capabilities(declared: types.ClientCapabilities | None) -> dict[str, Any]:
    if declared is None:
        return {}
    relayed: dict[str, Any] = {}
    if declared.sampling is not None:
        sampling = declared.sampling.model_dump(mode="json", by_alias=True, exclude_none=True)
        sampling.pop("context", None)
        relayed["sampling"] = sampling
    if declared.elicitation is not None:
        relayed["elicitation"] = declared.elicitation.model_dump(mode="json", by_alias=True, exclude_none=True)
    if declared.roots is not None:
        relayed["roots"] = {}
    return relayed
