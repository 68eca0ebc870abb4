"""The audit trail writer: calls enqueue rows, one background thread writes them in batches.

A call never waits for SQLite: `record` is a deque append. Rows are flushed every FLUSH_SECONDS or
BATCH rows, and on `close`, so a clean shutdown loses none.

While the store cannot be written (a full disk, a read-only filesystem, PostgreSQL away), rows wait in memory
and are written once it can again, oldest first, up to BACKLOG rows; beyond that each new row is dropped,
counted and said in the log (never silently). `backlog` is what readiness checks (`/readyz`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from .store import AuditRow

__all__ = ["BACKLOG", "BATCH", "FLUSH_SECONDS", "LOUD_EVERY", "AuditLog", "Outcome"]

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2
BATCH = 200
BACKLOG = 100_000  # rows kept in memory while the store cannot be written (about 42 MB, measured)
LOUD_EVERY = 10.0  # seconds between log lines about rows waiting or dropped

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
        self._in_flight = 0  # rows the writer took from `_pending` and is writing
        self.dropped = 0  # rows dropped since the start: the backlog was full
        self._failing_since: float | None = None  # when writing began to fail (None: it works)
        self._said_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="credgate-audit", daemon=True)
        self._thread.start()

    @property
    def failing(self) -> bool:
        """Whether the last write of audit rows failed (and none has worked since)."""
        return self._failing_since is not None

    @property
    def backlog(self) -> int:
        """Rows waiting to be written (those being written included)."""
        return len(self._pending) + self._in_flight

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
        if self.backlog >= BACKLOG:
            self.dropped += 1
            self._say(logging.ERROR, f"audit backlog full ({BACKLOG} rows): {self.dropped} rows dropped so far")
            return
        self._pending.append(
            (time.time(), group, agent, tool, credential, outcome, duration_ms, ref, user, approval, spent)
        )

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self._drain()
        self._drain()
        if self._pending:
            logger.error(
                "%d audit rows not written: the store could not be written when credgate stopped", self.backlog
            )

    def _drain(self) -> None:
        while self._pending:
            self._in_flight = size = min(BATCH, len(self._pending))
            batch = [self._pending.popleft() for _ in range(size)]
            written = self._flush([_row(*item) for item in batch])
            if not written:
                self._pending.extendleft(reversed(batch))  # first again, in their order: tried at the next tick
            self._in_flight = 0
            if not written:
                return

    def _flush(self, batch: list[AuditRow]) -> bool:
        for attempt in range(3):
            try:
                self._write(batch)
            # busy: another process holds the write lock; try again. Anything else (disk full, I/O error) is
            # tried again too: an exception escaping here would end the writer, and every later row with it.
            except Exception as exc:
                if attempt == 2:
                    self._failing(exc)
                    return False
                time.sleep(0.1 * (attempt + 1))
            else:
                if self._failing_since is not None:
                    logger.warning(
                        "audit rows are written again (after %.0f s); %d dropped meanwhile",
                        time.monotonic() - self._failing_since,
                        self.dropped,
                    )
                    self._failing_since = None
                return True
        return False

    def _failing(self, exc: Exception) -> None:
        if self._failing_since is None:
            self._failing_since = self._said_at = time.monotonic()
            logger.error("audit rows cannot be written (%s): kept in memory and retried", _one_line(exc))
        else:
            self._say(logging.ERROR, f"audit rows still cannot be written ({_one_line(exc)}): {self.backlog} waiting")

    def _say(self, level: int, text: str) -> None:
        """Log `text`, at most once every LOUD_EVERY seconds."""
        now = time.monotonic()
        if now - self._said_at >= LOUD_EVERY:
            self._said_at = now
            logger.log(level, "%s", text)

    def close(self) -> None:
        """Flush what is queued and stop the writer."""
        self._stop.set()
        self._thread.join(timeout=30)


def _one_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
