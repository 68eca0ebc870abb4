"""The python handlers' timeouts: one timer for all the calls running (see mcp_credgate.deadlines)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextvars import Context
from typing import Any, TypeVarTuple, Unpack

import anyio
import pytest

from mcp_credgate.deadlines import Deadlines

pytestmark = [pytest.mark.anyio, pytest.mark.no_store]

Ts = TypeVarTuple("Ts")


@pytest.fixture
async def timers_set() -> AsyncIterator[list[Any]]:
    """The callbacks of the timers set on the running loop from now on."""
    callbacks: list[Any] = []
    loop = asyncio.get_running_loop()
    real_call_at = loop.call_at

    def call_at(
        when: float, callback: Callable[[Unpack[Ts]], object], *args: *Ts, context: Context | None = None
    ) -> asyncio.TimerHandle:
        callbacks.append(callback)
        return real_call_at(when, callback, *args, context=context)

    loop.call_at = call_at  # type: ignore[method-assign]  # a stand-in on this loop only, deleted below
    yield callbacks
    del loop.call_at


def timers_of(deadlines: Deadlines, callbacks: list[Any]) -> int:
    return sum(1 for c in callbacks if getattr(c, "__self__", None) is deadlines)


async def test_a_call_past_its_deadline_raises_timeout_at_the_deadline_and_the_task_goes_on() -> None:
    deadlines = Deadlines()
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        await deadlines.run(0.2, anyio.sleep(5))
    elapsed = time.monotonic() - started
    await anyio.sleep(0.01)  # not cancelled any more
    after = await deadlines.run(1, _answer(0.01))

    assert 0.15 < elapsed < 1.5
    assert after == 42


async def test_a_call_done_in_time_returns_its_result_and_raises_its_own_errors() -> None:
    deadlines = Deadlines()

    assert await deadlines.run(1, _answer(0)) == 42
    with pytest.raises(ValueError, match="its own"):
        await deadlines.run(1, _fail())


async def test_a_shorter_deadline_than_the_timer_waits_for_moves_the_timer() -> None:
    deadlines = Deadlines()
    outcomes: dict[str, str] = {}
    took: dict[str, float] = {}

    async def call(name: str, seconds: float, work: float) -> None:
        started = time.monotonic()
        try:
            await deadlines.run(seconds, anyio.sleep(work))
            outcomes[name] = "done"
        except TimeoutError:
            outcomes[name] = "timeout"
        took[name] = time.monotonic() - started

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "long", 5, 0.6)  # the timer waits for 5 s …
            await anyio.sleep(0.05)
            tg.start_soon(call, "short", 0.2, 3)  # … this one needs it at 0.2 s
            tg.start_soon(call, "middle", 0.4, 3)

    assert outcomes == {"long": "done", "short": "timeout", "middle": "timeout"}
    assert 0.15 < took["short"] < took["middle"] < 1.5


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    deadlines = Deadlines()
    seen: list[str] = []

    async def call() -> None:
        try:
            await deadlines.run(5, anyio.sleep(5))
        except TimeoutError:
            seen.append("timeout")
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()  # an agent's cancel
        assert await deadlines.run(1, _answer(0)) == 42

    assert seen == ["cancelled"]


async def test_quick_calls_one_after_another_share_one_timer(timers_set: list[Any]) -> None:
    deadlines = Deadlines()

    for _ in range(500):
        await deadlines.run(30, _answer(0))

    assert timers_of(deadlines, timers_set) == 1


async def test_with_no_call_running_the_timer_is_not_set_again(timers_set: list[Any]) -> None:
    deadlines = Deadlines()
    for _ in range(20):
        await deadlines.run(0.1, _answer(0))

    await anyio.sleep(0.5)  # the timer fires once, finds nothing running

    assert timers_of(deadlines, timers_set) == 1


async def test_a_call_still_running_when_the_timer_fires_for_another_gets_its_own_turn(
    timers_set: list[Any],
) -> None:
    deadlines = Deadlines()
    await deadlines.run(0.1, _answer(0))  # sets the timer for 0.1 s from now
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        await deadlines.run(0.3, anyio.sleep(5))  # still running when it fires: the timer is set again

    assert 0.25 < time.monotonic() - started < 1.5
    assert timers_of(deadlines, timers_set) == 2


async def _answer(delay: float) -> int:
    await anyio.sleep(delay)
    return 42


async def _fail() -> None:
    await anyio.sleep(0)
    raise ValueError("its own error")
