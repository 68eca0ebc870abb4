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
def test_the_audit_writer_survives_an_unexpected_write_error() -> None:
    written: list[AuditRow] = []
    failures = {"left": 5}

    def write(rows: list[AuditRow]) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        written.extend(rows)

    log = AuditLog(write)
    log.record("g", None, "first", None, "ok", time.perf_counter())
    time.sleep(audit_module.FLUSH_SECONDS * 2 + 1.6)  # the first batch fails all its attempts
    log.record("g", None, "second", None, "ok", time.perf_counter())
    log.close()

    assert [r.tool for r in written] == ["second"]
