"""Failed sign-ins counted per key in a sliding window: past the limit, a key waits until its oldest failure
leaves the window. The dashboard counts per client address and per account of the OpenID provider
(`web.pages.signin`, `web.pages.sso` say why those keys).

In memory, per process (app lifetime): replicas count apart, so N replicas allow N times the limit. Memory is
bounded: at most `max_keys` keys, the ones idle longest forgotten first. Thread-safe (pages run in worker
threads).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["FailureWindow", "address_key"]


class FailureWindow:
    """At most `limit` failures per `window` seconds for each key."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, key: str) -> float:
        """Seconds `key` must wait before its next attempt is looked at (0: it may try now)."""
        with self._lock:
            times = self._current(key, self._clock())
            if times is None or len(times) < self.limit:
                return 0.0
            return max(0.0, times[0] + self.window - self._clock())

    def fail(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            times = self._current(key, now)
            if times is None:
                times = self._failures[key] = deque()
                while len(self._failures) > self.max_keys:
                    self._failures.popitem(last=False)
            times.append(now)
            while len(times) > self.limit:
                times.popleft()
            self._failures.move_to_end(key)

    def _current(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times


def address_key(host: str | None) -> str:
    """The key of a client address: an IPv6 address counts by its /64 (one site's, which it may change at
    will), an IPv4 address by itself; no address (a test client, a Unix socket) is one key."""
    if not host:
        return "address:unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"address:{host[:64]}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"address:{ip.ipv4_mapped}"
        return f"address:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"address:{ip}"
