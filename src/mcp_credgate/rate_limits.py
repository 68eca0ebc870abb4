"""Counting attempts per key (a client address, a user) in fixed windows: enough to make guessing and flooding
slow, kept in memory (each replica counts its own)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimit"]


class RateLimit:
    """At most `limit` attempts per key in each window of `window` seconds. Thread-safe. Keys are forgotten
    when their window ends; past `max_keys` keys, the oldest windows are dropped first (a flood of new keys
    costs memory no further)."""

    def __init__(
        self, limit: int, window: float, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._counts: dict[str, tuple[float, int]] = {}  # key → (window start, attempts in it)
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count an attempt for `key`: whether it is within the limit."""
        now = self.clock()
        with self._lock:
            start, count = self._counts.get(key, (now, 0))
            if now - start >= self.window:
                start, count = now, 0
            self._counts.pop(key, None)  # re-inserted last: the dict stays in order of window start
            self._counts[key] = (start, count + 1)
            while len(self._counts) > self.max_keys:
                del self._counts[next(iter(self._counts))]
            return count < self.limit

    def retry_after(self, key: str) -> int:
        """Seconds until `key`'s window ends (at least 1)."""
        with self._lock:
            start, _ = self._counts.get(key, (self.clock(), 0))
        return max(1, int(self.window - (self.clock() - start)) + 1)
