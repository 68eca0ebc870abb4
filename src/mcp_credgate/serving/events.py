"""Resumable Streamable HTTP streams (SEP-1699): each MCP session's recent events, in memory, for a client that
reconnects with Last-Event-ID after its stream broke (a proxy's idle timeout, a network change) or was closed by
the server.

The SDK's session manager hands every session the one event store it holds, and a stream's id is the JSON-RPC id
of its request, which two sessions use alike: one store would replay one session's events into another. So each
session gets a store of its own (`ResumableSessions`), bounded in events and bytes, and all of them together by
one budget (`EventBudget`: the oldest events of any session go first): a client that comes back after more than
that has to call again, as after any lost stream.
"""

from __future__ import annotations

import secrets
import weakref
from collections import OrderedDict, deque
from typing import Any

from mcp.server import Server
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import JSONRPCMessage

__all__ = [
    "EVENTS_PER_SESSION",
    "EVENT_BYTES_ALL_SESSIONS",
    "EVENT_BYTES_PER_SESSION",
    "EVENT_OVERHEAD",
    "RETRY_MS",
    "EventBudget",
    "ResumableSessions",
    "SessionEvents",
]

EVENTS_PER_SESSION = 256
EVENT_BYTES_PER_SESSION = 4 * 1024 * 1024
EVENT_BYTES_ALL_SESSIONS = 256 * 1024 * 1024
EVENT_OVERHEAD = 1024  # what an event is counted as beside its message: a priming event has none
RETRY_MS = 1000  # the `retry` the streams suggest: how long a client waits before it reconnects


class EventBudget:
    """The bytes all sessions' events may take together; beyond them the oldest events of any session go. Each
    event counts its message and EVENT_OVERHEAD, so the bookkeeping itself stays within the budget's bound."""

    def __init__(self, max_bytes: int = EVENT_BYTES_ALL_SESSIONS) -> None:
        self.max_bytes = max_bytes
        self.total = 0
        self._order: deque[tuple[weakref.ref[SessionEvents], str, int]] = deque()

    def add(self, events: SessionEvents, event_id: str, size: int) -> None:
        self._order.append((weakref.ref(events), event_id, size))
        self.total += size
        while self.total > self.max_bytes and self._order:
            owner, oldest, counted = self._order.popleft()
            self.total -= counted
            kept = owner()
            if kept is not None:
                kept.forget(oldest)


class SessionEvents(EventStore):
    """One session's events, oldest forgotten first beyond `limit` events or `max_bytes` of messages. Event ids
    are a random prefix and a count: never another session's, and not to be guessed."""

    def __init__(
        self,
        limit: int = EVENTS_PER_SESSION,
        max_bytes: int = EVENT_BYTES_PER_SESSION,
        budget: EventBudget | None = None,
    ) -> None:
        self._budget = budget
        self._prefix = secrets.token_urlsafe(9)
        self._count = 0
        self._limit = limit
        self._max_bytes = max_bytes
        self._bytes = 0
        self._events: OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None, int]] = OrderedDict()

    @property
    def count(self) -> int:
        """The events kept. (Not `__len__`: the SDK tests a store for truth, and an empty one must pass.)"""
        return len(self._events)

    @property
    def size(self) -> int:
        """The bytes of the messages kept (as JSON)."""
        return self._bytes

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._count += 1
        event_id = f"{self._prefix}.{self._count}"
        size = len(message.model_dump_json(by_alias=True, exclude_none=True)) if message is not None else 0
        self._events[event_id] = (stream_id, message, size)
        self._bytes += size
        while self._events and (len(self._events) > self._limit or self._bytes > self._max_bytes):
            _, (_, _, forgotten) = self._events.popitem(last=False)
            self._bytes -= forgotten
        if self._budget is not None:
            self._budget.add(self, event_id, size + EVENT_OVERHEAD)
        return event_id

    def forget(self, event_id: EventId) -> None:
        """The budget of all sessions took this event back."""
        found = self._events.pop(event_id, None)
        if found is not None:
            self._bytes -= found[2]

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        """Send the events of `last_event_id`'s stream that came after it; None when it is not (or no longer)
        one of this session's."""
        found = self._events.get(last_event_id)
        if found is None:
            return None
        stream_id = found[0]
        later = list(self._events.items())
        start = next(i for i, (event_id, _) in enumerate(later) if event_id == last_event_id) + 1
        for event_id, (stream, message, _) in later[start:]:
            if stream == stream_id and message is not None:  # a priming event carries no message
                await send_callback(EventMessage(message, event_id))
        return stream_id


class ResumableSessions(StreamableHTTPSessionManager):
    """The SDK's session manager, with an event store of its own for each session: the manager reads
    `event_store` once as it opens a session (`_admit_session`), and here each read makes a new one."""

    def __init__(self, app: Server[Any], *, budget: EventBudget | None = None, **options: Any) -> None:
        self.budget = budget or EventBudget()
        super().__init__(app, retry_interval=RETRY_MS, **options)

    @property
    def event_store(self) -> EventStore:
        return SessionEvents(budget=self.budget)

    @event_store.setter
    def event_store(self, value: EventStore | None) -> None:
        """The manager's constructor sets one store for all sessions: there is none such here."""
