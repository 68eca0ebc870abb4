"""The audit log: one row per tool call, written in batches, read newest first. Writing it is not a change of
setup: binding caches stay valid."""

from __future__ import annotations

from collections.abc import Sequence

from .base import StoreBase
from .records import AuditRow


class Audit(StoreBase):
    """The audit log of a store."""

    def write_audit(self, rows: Sequence[AuditRow]) -> None:
        if not rows:
            return
        with self._write(changes_setup=False) as conn:
            conn.executemany(
                "INSERT INTO audit (ts, group_name, agent, tool, credential, outcome, duration_ms, ref)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.ts, r.group, r.agent, r.tool, r.credential, r.outcome, r.duration_ms, r.ref) for r in rows],
            )

    def read_audit(
        self, group: str | None = None, tool: str | None = None, limit: int = 50, outcome: str | None = None
    ) -> list[AuditRow]:
        clauses, params = [], []
        for column, value in (("group_name", group), ("tool", tool), ("outcome", outcome)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            "SELECT ts, group_name, agent, tool, credential, outcome, duration_ms, ref FROM audit"
            f" {where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [
            AuditRow(
                r["ts"],
                r["group_name"],
                r["agent"],
                r["tool"],
                r["credential"],
                r["outcome"],
                r["duration_ms"],
                r["ref"],
            )
            for r in rows
        ]
