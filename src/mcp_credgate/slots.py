"""How many upstream processes of one declaration may be alive at once (`max_processes`), and the calls that
wait for one of them.

    slots = ProcessSlots(4)
    if not await slots.take(wait=60.0, make_room=stop_an_idle_one):
        ...                     # none came free in time
    ...                         # start the process; once it has exited:
    slots.give_back()

App-lifetime: one per declaration, in the upstream pool. A slot is held from before its process starts until
after it has exited, so the processes alive at once, stopping ones included, never outnumber the slots.
Waiters are served first come, first served: a slot given back goes to the longest waiter, not to whoever
asks next. A limit of None: no limit (`take` never waits), the processes still counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["ProcessSlots"]


class ProcessSlots:
    """The slots of one declaration's upstream processes (not thread-safe: one event loop's tasks)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._held = 0
        self._waiters: deque[anyio.Event] = deque()

    @property
    def held(self) -> int:
        """Slots held: processes starting, running or stopping."""
        return self._held

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return len(self._waiters)

    def resize(self, limit: int | None) -> None:
        """A new limit (the declaration was read again): waiters take the slots a higher one frees."""
        self.limit = limit
        while self._waiters and self._free():
            self._held += 1
            self._waiters.popleft().set()

    async def take(self, wait: float, make_room: Callable[[], None]) -> bool:
        """A slot: at once if one is free and no one waits before us; else `make_room()` is asked to stop
        idle processes (their slots come back once they have exited) and the call waits up to `wait`
        seconds. False: none came free in time. A call cancelled while it waits holds nothing: a slot handed
        to it meanwhile goes on to the next waiter."""
        if self._free() and not self._waiters:
            self._held += 1
            return True
        granted = anyio.Event()
        self._waiters.append(granted)
        try:
            make_room()
            with anyio.move_on_after(wait):
                await granted.wait()
        except BaseException:
            self._leave(granted)
            raise
        if not granted.is_set():
            self._waiters.remove(granted)
            return False
        return True

    def give_back(self) -> None:
        """A process has exited: its slot goes to the longest waiter, or is free."""
        if self._waiters and (self.limit is None or self._held <= self.limit):
            self._waiters.popleft().set()  # handed over: still held
        else:
            self._held -= 1

    def _free(self) -> bool:
        return self.limit is None or self._held < self.limit

    def _leave(self, granted: anyio.Event) -> None:
        if granted.is_set():
            self.give_back()
        else:
            self._waiters.remove(granted)
