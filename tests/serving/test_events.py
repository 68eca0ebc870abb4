"""Each Streamable HTTP session's events, kept for a client that resumes its stream (`serving.events`). The
resumption itself, through a real `credgate serve --http`, is in tests/test_http_app.py."""

from __future__ import annotations

import mcp_types as types
import pytest
from mcp.server.streamable_http import EventMessage

from mcp_credgate.serving.events import SessionEvents

pytestmark = pytest.mark.anyio


def result(request_id: int, text: str = "done") -> types.JSONRPCMessage:
    return types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result={"text": text})


async def replayed(events: SessionEvents, after: str) -> tuple[str | None, list[EventMessage]]:
    sent: list[EventMessage] = []

    async def send(message: EventMessage) -> None:
        sent.append(message)

    return await events.replay_events_after(after, send), sent


async def test_a_resumed_stream_gets_what_came_after_its_last_event_on_that_stream_only() -> None:
    events = SessionEvents()
    priming = await events.store_event("1", None)
    other = await events.store_event("2", result(2, "another request's"))
    mine = await events.store_event("1", result(1))

    stream, sent = await replayed(events, priming)

    assert stream == "1"
    assert [(m.event_id, m.message) for m in sent] == [(mine, result(1))]
    assert other not in {m.event_id for m in sent}


async def test_event_ids_are_each_sessions_own() -> None:
    first, second = SessionEvents(), SessionEvents()
    mine = await first.store_event("1", None)
    await first.store_event("1", result(1))
    await second.store_event("1", None)

    stream, sent = await replayed(second, mine)  # the same stream id (a request id), another session

    assert (stream, sent) == (None, [])
    theirs = await second.store_event("1", None)
    assert mine.rsplit(".", 1)[0] != theirs.rsplit(".", 1)[0]  # a prefix of its own


async def test_an_empty_store_still_counts_as_one() -> None:
    """The SDK tests a store for truth before it primes a stream."""
    assert SessionEvents()


@pytest.mark.parametrize(("limit", "max_bytes"), [(3, 10**6), (100, 200)])
async def test_the_oldest_events_go_beyond_the_bounds(limit: int, max_bytes: int) -> None:
    events = SessionEvents(limit=limit, max_bytes=max_bytes)
    ids = [await events.store_event("1", result(i, "x" * 20)) for i in range(10)]

    assert events.count <= limit and events.size <= max_bytes
    assert (await replayed(events, ids[0]))[0] is None  # forgotten: the client has to call again
    stream, sent = await replayed(events, ids[-2])
    assert stream == "1" and [m.event_id for m in sent] == [ids[-1]]


# -- review24 ----------------------------------------------------------------------------------------------------

ALL_SESSIONS_BYTES = 512 * 1024 * 1024  # what the gateway may keep of past events across all sessions, at most


async def test_the_events_kept_across_all_sessions_are_bounded_not_only_each_sessions() -> None:
    """Before resumable streams a session kept no past messages; now each keeps up to EVENT_BYTES_PER_SESSION
    for as long as it lives (30 minutes idle), and the manager admits up to `max_sessions` of them (the SDK's
    10 000 by default): one authenticated client opening sessions and reading large results in each would have
    the gateway hold max_sessions x EVENT_BYTES_PER_SESSION (40 GiB). The total must have a bound of its own."""
    from mcp.server import Server

    from mcp_credgate.serving.events import EVENT_BYTES_PER_SESSION, ResumableSessions

    manager = ResumableSessions(Server("review"))

    assert manager.max_sessions is not None
    assert manager.max_sessions * EVENT_BYTES_PER_SESSION <= ALL_SESSIONS_BYTES
