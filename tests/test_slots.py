"""The slots of one declaration's upstream processes (`max_processes`): who gets one, who waits, who gives up.

The processes themselves are tests/handlers/test_upstream_limits.py's; here the bookkeeping alone, in process.
"""

from __future__ import annotations

import anyio
import pytest

from mcp_credgate.slots import ProcessSlots

pytestmark = [pytest.mark.no_store, pytest.mark.anyio]


def nothing() -> None:
    pass


async def test_slots_are_taken_up_to_the_limit_then_a_taker_waits_and_gives_up() -> None:
    slots = ProcessSlots(2)
    asked: list[int] = []

    with anyio.fail_after(5):
        assert await slots.take(1, nothing) and await slots.take(1, nothing)
        refused = await slots.take(0.05, lambda: asked.append(slots.waiting))

    assert not refused
    assert asked == [1]  # asked to make room while it waited
    assert (slots.held, slots.waiting) == (2, 0)


async def test_a_slot_given_back_goes_to_the_longest_waiter_not_to_a_newcomer() -> None:
    slots = ProcessSlots(1)
    served: list[str] = []

    async def waiter(name: str) -> None:
        assert await slots.take(5, nothing)
        served.append(name)

    with anyio.fail_after(5):
        await slots.take(1, nothing)
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "first")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter, "second")
            await anyio.wait_all_tasks_blocked()
            slots.give_back()
            assert not await slots.take(0.01, nothing)  # a newcomer does not jump the queue
            await anyio.wait_all_tasks_blocked()
            assert served == ["first"]
            slots.give_back()

    assert served == ["first", "second"]
    assert (slots.held, slots.waiting) == (1, 0)


async def test_a_waiter_cancelled_after_its_slot_was_handed_over_passes_it_on() -> None:
    slots = ProcessSlots(1)
    served: list[str] = []
    cancelled = anyio.CancelScope()

    async def waiter(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            assert await slots.take(5, nothing)
            served.append(name)

    with anyio.fail_after(5):
        await slots.take(1, nothing)
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "first", cancelled)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter, "second", anyio.CancelScope())
            await anyio.wait_all_tasks_blocked()
            cancelled.cancel()  # the first waiter is cancelled …
            slots.give_back()  # … and handed the slot before it runs again

    assert served == ["second"]
    assert (slots.held, slots.waiting) == (1, 0)


async def test_a_higher_limit_serves_the_waiters_and_none_is_no_limit() -> None:
    slots = ProcessSlots(1)
    served: list[int] = []

    async def waiter(i: int) -> None:
        assert await slots.take(5, nothing)
        served.append(i)

    with anyio.fail_after(5):
        await slots.take(1, nothing)
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(waiter, i)
            await anyio.wait_all_tasks_blocked()
            slots.resize(None)

    assert sorted(served) == [0, 1, 2]
    assert (slots.held, slots.waiting) == (4, 0)
