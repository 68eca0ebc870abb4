"""Each Streamable HTTP session's events, kept for a client that resumes its stream (`serving.events`). The
resumption itself, through a real `credgate serve --http`, is in tests/test_http_app.py."""

from __future__ import annotations

import mcp_types as types
import pytest
from mcp.server import Server
from mcp.server.streamable_http import EventMessage

from mcp_credgate.serving.events import EventBudget, ResumableSessions, SessionEvents

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


async def test_the_events_kept_across_all_sessions_are_bounded_not_only_each_sessions() -> None:
    """Each session keeps up to EVENT_BYTES_PER_SESSION, and a client may open many sessions: all of them
    together keep no more than the manager's budget, the oldest events of any session going first."""
    manager = ResumableSessions(Server("review"), budget=EventBudget(max_bytes=64 * 1024))
    sessions = [events for _ in range(20) if isinstance(events := manager.event_store, SessionEvents)]
    big = result(1, "x" * 4000)
    kept: list[tuple[SessionEvents, str]] = []
    for events in sessions:
        kept += [(events, await events.store_event("1", big)) for _ in range(5)]

    assert manager.budget.total <= 64 * 1024
    assert sum(events.size for events in sessions) <= 64 * 1024
    assert (await replayed(sessions[0], kept[0][1]))[0] is None  # the oldest went first
    last, last_id = kept[-2]
    assert (await replayed(last, last_id))[1]  # the newest are there to resume
