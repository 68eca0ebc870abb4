"""The audit log: one row per tool call, written in batches, read newest first a page at a time (by row id,
each filter served by an index of its own). Writing it is not a change of setup: binding caches stay valid."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, timedelta

from .base import StoreBase
from .database import Row
from .paging import KeyRange, page_rows
from .records import AuditRow, Page

_FIRST_ID = KeyRange[int](low=0)  # every row's id is above it: each page's statement is bounded on the id


class Audit(StoreBase):
    """The audit log of a store."""

    def write_audit(self, rows: Sequence[AuditRow]) -> None:
        """Append rows, and add the calls that ran among them to their days' usage (`usage_days`)."""
        if not rows:
            return
        used = _usage_by_day(rows)
        with self._write(changes_setup=False, exclusive=False) as conn:  # rows of its own: beside other counts
            conn.executemany(
                "INSERT INTO audit (ts, group_name, agent, tool, credential, outcome, duration_ms, ref, user_name,"
                " approval, cost, currency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        *(r.ts, r.group, r.agent, r.tool, r.credential, r.outcome, r.duration_ms, r.ref, r.user),
                        *(r.approval, r.cost, r.currency),
                    )
                    for r in rows
                ],
            )
            # in the order of the key, as every writer: two replicas adding to the same days never deadlock
            conn.executemany(
                "INSERT INTO usage_days (group_name, day, tool, user_name, agent, currency, calls, spent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (group_name, day, tool, user_name, agent, currency)"
                " DO UPDATE SET calls = usage_days.calls + excluded.calls, spent = usage_days.spent + excluded.spent",
                [(*key, calls, spent) for key, (calls, spent) in sorted(used.items())],
            )

    def audit_page(
        self,
        *,
        limit: int = 50,
        after: str | None = None,
        before: str | None = None,
        group: str | None = None,
        tool: str | None = None,
        outcome: str | None = None,
        user: str | None = None,
        day: date | None = None,
        ran: bool = False,
    ) -> Page[AuditRow]:
        """A page of the log, newest first: the rows of `group`, `tool`, `outcome`, `user` and `day` (UTC; each
        when given), of calls that ran only when `ran`, older than the row `after` names (else newer than
        `before`). A key that is no row's id gives an empty page."""
        try:
            after_id = int(after) if after is not None else None
            before_id = int(before) if before is not None else None
        except ValueError:
            return Page(())
        clauses, params = [], []
        for column, value in (("group_name", group), ("tool", tool), ("outcome", outcome), ("user_name", user)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if day is not None:
            clauses.append("ts >= ?")
            params.append(day.isoformat())
            if day < date.max:  # the last day there is has no day after it: its calls are all from it on
                clauses.append("ts < ?")
                params.append((day + timedelta(days=1)).isoformat())
        if ran:
            clauses.append("cost IS NOT NULL")  # a call that ran recorded what it cost, 0 included
        with self._lock:
            found = page_rows(
                self._db,
                "id, ts, group_name, agent, tool, credential, outcome, duration_ms, ref, user_name, approval, cost,"
                " currency",
                "audit",
                "id",
                clauses,
                params,
                _FIRST_ID,
                after=after_id,
                before=before_id,
                limit=limit,
                descending=True,
            )
        rows = [_audit_row(r) for r in found.rows]
        return Page(
            tuple(rows),
            after=str(rows[-1].id) if rows and found.more_after else None,
            before=str(rows[0].id) if rows and found.more_before else None,
        )

    def iter_audit(
        self,
        group: str | None = None,
        tool: str | None = None,
        limit: int | None = None,
        outcome: str | None = None,
        batch: int = 500,
        user: str | None = None,
    ) -> Iterator[AuditRow]:
        """The log newest first (at most `limit` rows), read a page at a time."""
        after, left = None, limit
        while left is None or left > 0:
            size = batch if left is None else min(batch, left)
            page = self.audit_page(limit=size, after=after, group=group, tool=tool, outcome=outcome, user=user)
            yield from page.items
            if left is not None:
                left -= len(page.items)
            if page.after is None:
                return
            after = page.after

    def read_audit(
        self, group: str | None = None, tool: str | None = None, limit: int = 50, outcome: str | None = None
    ) -> list[AuditRow]:
        return list(self.iter_audit(group, tool, limit, outcome))


def _usage_by_day(rows: Sequence[AuditRow]) -> dict[tuple[str, ...], tuple[int, int]]:
    """The calls that ran among `rows` (those with a cost), counted and costed by group, day, tool, member, agent
    and currency ('' for none)."""
    used: dict[tuple[str, ...], tuple[int, int]] = {}
    for r in rows:
        if r.cost is None:
            continue
        key = (r.group, r.ts[:10], r.tool, r.user or "", r.agent or "", r.currency or "")
        calls, spent = used.get(key, (0, 0))
        used[key] = (calls + 1, spent + r.cost)
    return used


def _audit_row(r: Row) -> AuditRow:
    return AuditRow(
        r["ts"],
        r["group_name"],
        r["agent"],
        r["tool"],
        r["credential"],
        r["outcome"],
        r["duration_ms"],
        r["ref"],
        r["user_name"],
        r["approval"],
        r["cost"],
        r["currency"],
        id=int(r["id"]),
    )
