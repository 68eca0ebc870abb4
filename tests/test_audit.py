"""The audit log: rows written off the call path, in batches, by a writer that outlives its failures."""

from __future__ import annotations

import sqlite3
import time

import pytest

import mcp_credgate.audit as audit_module
from mcp_credgate.audit import AuditLog
from mcp_credgate.store import AuditRow


# found in a security review: an unexpected error in the audit writer stopped all later auditing
@pytest.mark.no_store  # a stand-in writer raising a driver error, whatever the backend
def test_rows_wait_while_the_store_cannot_be_written_and_are_all_written_in_order_once_it_can(
    caplog: pytest.LogCaptureFixture,
) -> None:
    written: list[AuditRow] = []
    failures = {"left": 8}  # about a second of a full disk

    def write(rows: list[AuditRow]) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        written.extend(rows)

    log = AuditLog(write)
    log.record("g", None, "first", None, "ok", time.perf_counter())
    time.sleep(audit_module.FLUSH_SECONDS * 2)
    log.record("g", None, "second", None, "ok", time.perf_counter())
    assert log.backlog == 2 and not written  # kept, not dropped
    deadline = time.monotonic() + 10
    while log.backlog and time.monotonic() < deadline:
        time.sleep(0.05)
    log.close()

    assert [r.tool for r in written] == ["first", "second"] and log.dropped == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot be written (database or disk is full): kept in memory" in m for m in messages)
    assert any("written again" in m for m in messages)


@pytest.mark.no_store
def test_beyond_the_backlog_rows_are_dropped_counted_and_said_never_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit_module, "BACKLOG", 3)

    def write(rows: list[AuditRow]) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    log = AuditLog(write)
    for i in range(5):
        log.record("g", None, f"t{i}", None, "ok", time.perf_counter())

    assert (log.backlog, log.dropped) == (3, 2)
    assert any("audit backlog full (3 rows): 1 rows dropped" in r.getMessage() for r in caplog.records)
    log.close()
    assert any("3 audit rows not written" in r.getMessage() for r in caplog.records)
