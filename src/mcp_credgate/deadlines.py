"""Timeouts for the gateway's python handler calls, kept by one timer.

`asyncio.timeout` schedules a timer of its own for each call and cancels it afterwards: for a quick handler
that is most of what the timeout costs. Here a call only enters a set and leaves it. The one timer waits for
the earliest deadline of the calls running (it is moved when a new call needs it sooner); when it fires it
cancels the calls past their deadline, which raise TimeoutError, and waits for the next deadline if a call is
still running. With no call running no timer is left: an idle gateway is not woken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["Deadlines"]

T = TypeVar("T")


class _Call:
    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False


class Deadlines:
    """One per gateway (it runs on one event loop)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: set[_Call] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, seconds: float, awaitable: Awaitable[T]) -> T:
        """`await awaitable`; past `seconds` it is cancelled and TimeoutError raised. A cancellation from
        elsewhere (an agent's cancel) stays a cancellation, as with `asyncio.timeout`."""
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()  # not get_running_loop(): on Python 3.11 each asks the system for the process id
        if loop is not self._loop:  # first use, or another loop than before: nothing of the old one applies
            self._loop, self._calls, self._timer = loop, set(), None
        call = _Call(task, loop.time() + seconds)
        cancelling = task.cancelling()
        self._calls.add(call)
        if self._timer is None or call.deadline < self._timer.when():
            self._arm(call.deadline)
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if call.expired and task.uncancel() <= cancelling:
                raise TimeoutError(f"still running after {seconds:g} s") from None
            raise
        finally:
            self._calls.discard(call)
        if call.expired:  # it finished as its deadline passed: take the cancel request back
            task.uncancel()
        return result

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        assert self._loop is not None
        self._timer = None
        now = self._loop.time()
        upcoming: float | None = None
        for call in self._calls:
            if call.expired:
                continue
            if call.deadline <= now:
                call.expired = True
                call.task.cancel()
            elif upcoming is None or call.deadline < upcoming:
                upcoming = call.deadline
        if upcoming is not None:
            self._arm(upcoming)
