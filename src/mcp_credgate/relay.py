"""What an upstream MCP server sends on its own reaches the agent it belongs to, redacted.

Log lines, progress, sampling / elicitation / roots requests and resource updates start at the upstream.
An upstream session is shared by every agent whose group binds the same credential, and stdio carries no
link from such a message to the request that caused it (progress alone names its request, by its token).
So a message goes to the agent request in flight on that session. When requests of *different* agents
are in flight at once it cannot be attributed: a log line then stays in the gateway's log and a request
of the upstream is refused. Nothing of one agent's calls ever reaches another agent.

Resource updates go to the agent connections that subscribed to that URI through this session.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.client.session import ClientRequestContext
from mcp.server.connection import allowed_log_levels
from mcp.server.context import ServerRequestContext
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel

from .redact import Redactor

logger = logging.getLogger("credgate.relay")

SETTLE_SECONDS = 5.0  # how long a result waits for the log lines and progress sent before it
_ModelT = TypeVar("_ModelT", bound=BaseModel)


def connection_of(ctx: ServerRequestContext[Any]) -> object:
    """The agent's connection behind a request: one per stdio client, per legacy HTTP session or SSE stream.
    The SDK keeps it private on the per-request session; the session itself stands in should that change."""
    return getattr(ctx.session, "_connection", ctx.session)


@dataclass(eq=False)
class AgentRequest:
    """An agent's request being relayed to an upstream, and where the upstream's own messages for it go."""

    ctx: ServerRequestContext[Any]
    caller: tuple[str, str | None]  # (group, agent): who may see what the upstream sends during it
    forwarding: int = 0
    settled: anyio.Event = field(default_factory=anyio.Event)


def redacted(redactor: Redactor, model: _ModelT) -> _ModelT:
    """A copy of an MCP message with every secret value of the credential replaced (a number that was one by
    zero: the message keeps its schema)."""
    dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return type(model).model_validate(redactor.obj(dumped, typed=True))


class Relay:
    """One per upstream session: its in-flight agent requests and its resource subscribers."""

    def __init__(self, name: str, redactor: Redactor) -> None:
        self.name = name
        self.redactor = redactor
        self._in_flight: list[AgentRequest] = []
        self._subscribers: dict[str, dict[int, ServerRequestContext[Any]]] = {}
        self._watched: set[int] = set()  # connections whose end is hooked (see subscribe)

    # -- requests in flight ------------------------------------------------------------------

    @contextmanager
    def serving(self, request: AgentRequest | None) -> Iterator[None]:
        if request is None:
            yield
            return
        self._in_flight.append(request)
        try:
            yield
        finally:
            self._in_flight.remove(request)

    def owner(self) -> AgentRequest | None:
        """The request an unattributed message belongs to: the latest one in flight, when every request in
        flight is the same agent's; otherwise none."""
        if not self._in_flight:
            return None
        latest = self._in_flight[-1]
        return latest if all(r.caller == latest.caller for r in self._in_flight) else None

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
            if request is None:
                return
            text = self.redactor.text(message) if message is not None else None
            await self._forward(request, lambda: request.ctx.session.report_progress(progress, total, text))

        return report

    # -- what the upstream sends on its own ------------------------------------------------

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        request = self.owner()
        if request is None:
            logger.info("upstream %s logged (%s) outside any one agent's request", self.name, params.level)
            return
        if params.level not in allowed_log_levels(request.ctx.protocol_version, request.ctx.meta):
            return  # a 2026-07-28 agent did not opt in to this level for this request
        notification = types.LoggingMessageNotification(params=redacted(self.redactor, params))
        await self._forward(
            request, lambda: request.ctx.session.send_notification(notification, request.ctx.request_id)
        )

    async def on_sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        result_type: type[types.CreateMessageResult | types.CreateMessageResultWithTools] = (
            types.CreateMessageResultWithTools if params.tools else types.CreateMessageResult
        )
        request = types.CreateMessageRequest(params=redacted(self.redactor, params))
        wanted = types.ClientCapabilities(sampling=types.SamplingCapability())
        return await self._ask("sampling", request, result_type, wanted)

    async def on_elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        request = types.ElicitRequest(params=redacted(self.redactor, params))
        wanted = types.ClientCapabilities(elicitation=types.ElicitationCapability())
        return await self._ask("elicitation", request, types.ElicitResult, wanted)

    async def on_list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        wanted = types.ClientCapabilities(roots=types.RootsCapability())
        return await self._ask("roots", types.ListRootsRequest(), types.ListRootsResult, wanted)

    async def _ask(
        self, what: str, request: types.ServerRequest, result_type: type[_ModelT], wanted: types.ClientCapabilities
    ) -> _ModelT | types.ErrorData:
        """Put the upstream's request to the agent whose request it serves, on that request's channel."""
        owner = self.owner()
        if owner is None:
            why = "several agents' requests are in flight" if self._in_flight else "no agent request is in flight"
            logger.info("upstream %s asked for %s: refused, %s", self.name, what, why)
            return types.ErrorData(
                code=types.INVALID_REQUEST, message=f"{what} is unavailable: the gateway cannot tell which agent to ask"
            )
        if not owner.ctx.session.check_client_capability(wanted):
            return types.ErrorData(code=types.METHOD_NOT_FOUND, message=f"the agent's client does not offer {what}")
        metadata = ServerMessageMetadata(related_request_id=owner.ctx.request_id)
        try:
            return await owner.ctx.session.send_request(request, result_type, metadata=metadata)
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
        subscribers = self._subscribers.setdefault(uri, {})
        first = not subscribers
        subscribers[key] = ctx
        return first

    def _forget(self, key: int) -> None:
        self._watched.discard(key)
        for uri in list(self._subscribers):
            self._drop(uri, key)

    def _drop(self, uri: str, key: int) -> None:
        subscribers = self._subscribers.get(uri, {})
        subscribers.pop(key, None)
        if not subscribers:
            self._subscribers.pop(uri, None)

    def unsubscribe(self, uri: str, ctx: ServerRequestContext[Any]) -> bool:
        """Forget the agent's subscription; True when no one is left (unsubscribe upstream)."""
        subscribers = self._subscribers.get(uri, {})
        if subscribers.pop(id(connection_of(ctx)), None) is None:
            return False
        if not subscribers:
            del self._subscribers[uri]
            return True
        return False

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    async def on_message(self, message: Any) -> None:
        """The upstream's other notifications: a resource update goes to the URI's subscribers."""
        if not isinstance(message, types.ResourceUpdatedNotification):
            return
        uri = message.params.uri
        for key, ctx in list(self._subscribers.get(uri, {}).items()):
            try:
                await ctx.session.send_resource_updated(self.redactor.text(uri))
            except Exception:  # that agent's connection is gone: drop its subscription
                self._drop(uri, key)
