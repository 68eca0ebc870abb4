"""The audit trail writer: calls enqueue rows, one background thread writes them in batches.

A call never waits for SQLite: `record` is a deque append. Rows are flushed every FLUSH_SECONDS or
BATCH rows, and on `close`, so a clean shutdown loses none.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from .store import AuditRow

__all__ = ["BATCH", "FLUSH_SECONDS", "AuditLog", "Outcome"]

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2
BATCH = 200

# ok | error | missing_credential | denied | invalid_arguments | declined | approval_required | over_budget
Outcome = str
# What a call enqueues: cheap to build on the call path; the writer thread turns it into an AuditRow.
_Pending = tuple[
    float, str, str | None, str, str | None, Outcome, float, str | None, str | None, str | None, tuple[int, str] | None
]


def _row(
    ts: float,
    group: str,
    agent: str | None,
    tool: str,
    cred: str | None,
    outcome: str,
    ms: float,
    ref: str | None,
    user: str | None,
    approval: str | None,
    spent: tuple[int, str] | None,
) -> AuditRow:
    stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    cost, currency = spent if spent is not None else (None, None)
    return AuditRow(stamp, group, agent, tool, cred, outcome, round(ms, 3), ref, user, approval, cost, currency)


class AuditLog:
    """Calls append to a deque (no lock, no thread wake-up); the writer thread wakes every FLUSH_SECONDS,
    takes what is there and writes it in one transaction. Waking the writer on every row would cost each
    call a thread switch."""

    def __init__(self, write: Callable[[list[AuditRow]], None]) -> None:
        self._write = write
        self._pending: deque[_Pending] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="credgate-audit", daemon=True)
        self._thread.start()

    def record(
        self,
        group: str,
        agent: str | None,
        tool: str,
        credential: str | None,
        outcome: Outcome,
        started: float,
        ref: str | None = None,
        user: str | None = None,
        approval: str | None = None,
        spent: tuple[int, str] | None = None,
    ) -> None:
        """`spent`: a call that ran, what it cost (micro-units, currency): usage and budgets derive from it."""
        duration_ms = (time.perf_counter() - started) * 1000
        self._pending.append(
            (time.time(), group, agent, tool, credential, outcome, duration_ms, ref, user, approval, spent)
        )

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            self._flush([_row(*item) for item in batch])

    def _flush(self, batch: list[AuditRow]) -> None:
        for attempt in range(5):
            try:
                self._write(batch)
                return
            # busy: another process holds the write lock; try again. Anything else (disk full, I/O error) is
            # tried again too: an exception escaping here would end the writer, and every later row with it.
            except Exception as exc:
                if attempt == 4:
                    logger.error("could not write %d audit rows: %s", len(batch), exc)
                time.sleep(0.1 * (attempt + 1))

    def close(self) -> None:
        """Flush what is queued and stop the writer."""
        self._stop.set()
        self._thread.join(timeout=30)
