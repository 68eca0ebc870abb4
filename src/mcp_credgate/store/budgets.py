"""Budgets (contract §8): each group's limits, and what was used of each per window, counted exactly.

`charge` counts a call against all its limits in one write transaction, each by an update that only succeeds
while the limit still fits (`used + n <= amount`): writers run one at a time on SQLite (BEGIN IMMEDIATE), and on
PostgreSQL the update locks the window's row and checks it again as it is, so concurrent calls on any number of
gateways never count past a limit. Windows are the store's clock's (`Database.epoch`), never a replica's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import Enum

from ..budgets import Limit
from ..crypto import Keyring
from ..errors import NotFoundError, StoreBusyError
from .base import StoreBase
from .database import Database, Row

USAGE_BY = {"tool": "tool", "user": "user_name", "agent": "agent"}


@dataclass(frozen=True)
class Usage:
    """Calls that ran, and what they cost (micro-units by currency), for one tool, member or agent (and one day,
    `YYYY-MM-DD` UTC, when asked per day)."""

    key: str | None
    calls: int
    spent: dict[str, int]
    day: str | None = None


@dataclass(frozen=True)
class Exceeded:
    """The first limit a call no longer fits: what was used of it, and when its window resets."""

    limit: Limit
    used: int
    resets_at: int


class Busy(Enum):
    BUSY = "busy"


BUSY = Busy.BUSY  # `charge_at_once`: not counted, it would have waited


def _key(value: str | None) -> str:
    return value or ""


def _budget_id(conn: Database, limit: Limit) -> int | None:
    """The row of the limit's scope and kind, as it is now (None: removed)."""
    row = conn.execute(
        "SELECT b.id FROM budgets b JOIN groups g ON g.id = b.group_id WHERE g.name = ? AND b.tool = ?"
        " AND b.user_name = ? AND b.agent = ? AND b.kind = ?",
        (limit.group, _key(limit.tool), _key(limit.user), _key(limit.agent), limit.kind),
    ).fetchone()
    return int(row["id"]) if row is not None else None


def _limit(group: str, row: Row) -> Limit:
    return Limit(
        group,
        row["tool"] or None,
        row["user_name"] or None,
        row["agent"] or None,
        row["kind"],
        int(row["amount"]),
        row["per"],
        row["currency"],
    )


class Budgets(StoreBase):
    def __init__(self, db: Database, keyring: Keyring) -> None:
        super().__init__(db, keyring)
        # group → its limits, valid while the database's change marker is unchanged (as the binding cache)
        self._limits: dict[str, list[Limit]] = {}
        self._limits_version = -1

    def _drop_caches(self) -> None:
        super()._drop_caches()
        self._limits.clear()

    def set_budget(self, limit: Limit) -> None:
        """Set a limit; one of the same scope and kind is replaced (its counts with it)."""
        with self._write() as conn:
            gid = self._group_id(conn, limit.group)
            if limit.user is not None:
                self._require_member(conn, gid, self._user_id(conn, limit.user), limit.group, limit.user)
            scope = (gid, _key(limit.tool), _key(limit.user), _key(limit.agent), limit.kind)
            conn.execute(
                "DELETE FROM budgets WHERE group_id = ? AND tool = ? AND user_name = ? AND agent = ? AND kind = ?",
                scope,
            )
            conn.execute(
                "INSERT INTO budgets (group_id, tool, user_name, agent, kind, amount, per, currency)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*scope, limit.amount, limit.per, limit.currency),
            )

    def remove_budget(
        self, group: str, tool: str | None, user: str | None, agent: str | None, kind: str | None = None
    ) -> int:
        """Remove the scope's limits (of one kind, when given); how many went."""
        with self._write() as conn:
            gid = self._group_id(conn, group)
            sql = "DELETE FROM budgets WHERE group_id = ? AND tool = ? AND user_name = ? AND agent = ?"
            params: list[object] = [gid, _key(tool), _key(user), _key(agent)]
            if kind is not None:
                sql += " AND kind = ?"
                params.append(kind)
            removed = int(conn.execute(sql, params).rowcount)
        if not removed:
            raise NotFoundError(f"group {group!r} has no such limit (see `credgate budget show {group}`)")
        return removed

    def budgets(self, group: str) -> list[Limit]:
        """The group's limits (none for a group without any, or no group of that name); at call time one cheap
        version check while nothing changed."""
        with self._lock:
            version = self._db.change_marker()
            if version != self._limits_version:
                self._limits.clear()
                self._limits_version = version
            cached = self._limits.get(group)
        if cached is not None:
            return cached
        found = self._read_budgets(group)
        with self._lock:
            if self._limits_version == version:
                self._limits[group] = found
        return found

    def _read_budgets(self, group: str) -> list[Limit]:
        rows = self._query(
            "SELECT b.* FROM budgets b JOIN groups g ON g.id = b.group_id WHERE g.name = ?"
            " ORDER BY b.tool, b.user_name, b.agent, b.kind",
            (group,),
        )
        return [_limit(group, r) for r in rows]

    def usage(self, group: str, since: str, by: str, *, per_day: bool = False) -> list[Usage]:
        """The calls of the group that ran since `since` (ISO UTC), by tool, user or agent (`USAGE_BY`), and by
        day when `per_day`: whole days from their usage (`usage_days`), the part of a day `since` starts in from
        the audit rows."""
        column = USAGE_BY[by]
        start = datetime.fromisoformat(since)
        first_day = start.date() if start.time() == time() else start.date() + timedelta(days=1)
        keys = f"{column}, day" if per_day else column
        rows = self._query(
            f"SELECT {column} AS k, {'day' if per_day else 'NULL'} AS day, currency, sum(calls) AS calls,"
            f" sum(spent) AS spent FROM usage_days WHERE group_name = ? AND day >= ? GROUP BY {keys}, currency",
            (group, first_day.isoformat()),
        )
        if first_day != start.date():  # `since` is within a day: that day's calls from `since` on
            day = "substr(ts, 1, 10)"
            keys = f"{column}, {day}" if per_day else column
            rows += self._query(
                f"SELECT {column} AS k, {day if per_day else 'NULL'} AS day, currency, count(*) AS calls,"
                f" sum(cost) AS spent FROM audit WHERE group_name = ? AND ts >= ? AND ts < ? AND cost IS NOT NULL"
                f" GROUP BY {keys}, currency",
                (group, since, first_day.isoformat()),
            )
        found: dict[tuple[str | None, str | None], Usage] = {}
        for r in rows:
            key = (r["k"] or None, r["day"])  # '' in usage_days: no member, no agent
            usage = found.get(key) or Usage(key[0], 0, {}, r["day"])
            spent = {**usage.spent, r["currency"]: usage.spent.get(r["currency"], 0) + int(r["spent"])}
            found[key] = Usage(key[0], usage.calls + int(r["calls"]), spent, r["day"])
        return [found[key] for key in sorted(found, key=lambda k: (k[0] or "", k[1] or ""))]

    def relax_durability(self) -> None:
        """See `Database.relax_durability`: for the gateway's second connection, which counts and audits."""
        with self._lock:
            self._db.relax_durability()

    def store_epoch(self) -> float:
        with self._lock:
            return self._db.epoch()

    def used(self, limit: Limit, at: float | None = None) -> tuple[int, int]:
        """What was used of the limit in its current window (by the store's clock, or `at`), and when it resets."""
        with self._lock:
            start, resets = limit.window(self._db.epoch() if at is None else at)
            bid = _budget_id(self._db, limit)
            row = self._db.execute(
                "SELECT used FROM budget_usage WHERE budget_id = ? AND window_start = ?", (bid, start)
            ).fetchone()
        return (int(row["used"]) if row else 0), resets

    def charge(self, charges: Sequence[tuple[Limit, int]]) -> Exceeded | None:
        """Count a call against each limit (`n`: 1 call, or its cost), all or none: None when it fits all of them
        and was counted, else the first it does not fit (nothing counted). On PostgreSQL beside other counts and
        audit rows (never beside an admin change), holding only the counted rows: each count is one statement that
        checks its row as it is."""
        if not charges:
            return None
        try:
            with self._write(changes_setup=False, keeps_caches=True, exclusive=False) as conn:
                at = conn.epoch()
                for limit, n in charges:
                    exceeded = self._count(conn, limit, n, at)
                    if exceeded is not None:
                        raise _Refused(exceeded)
        except _Refused as refused:
            return refused.exceeded
        return None

    def charge_at_once(self, charges: Sequence[tuple[Limit, int]]) -> Exceeded | Busy | None:
        """`charge`, on the caller's thread, where that costs microseconds and never waits (SQLite, with neither
        this connection nor the database's write lock taken): an event loop counts a call without a hop to a
        worker thread, which costs more than the count. BUSY when it would wait (or wait on the network): then
        `charge` it from a worker thread."""
        if not self._lock.acquire(blocking=False):
            return BUSY
        try:
            with self._db.without_waiting() as at_once:
                return self.charge(charges) if at_once else BUSY
        except StoreBusyError:
            return BUSY
        finally:
            self._lock.release()

    def _count(self, conn: Database, limit: Limit, n: int, at: float) -> Exceeded | None:
        """Add `n` to the limit's row of the window `at` falls in (made at 0 when new) if it still fits: one
        statement, which on PostgreSQL waits for a concurrent count of the same row and checks the row again as
        that one left it."""
        start, resets = limit.window(at)
        counted = conn.execute(
            "INSERT INTO budget_usage (budget_id, window_start, used)"
            " SELECT b.id, ?, ? FROM budgets b JOIN groups g ON g.id = b.group_id WHERE g.name = ? AND b.tool = ?"
            " AND b.user_name = ? AND b.agent = ? AND b.kind = ? AND ? <= b.amount"
            " ON CONFLICT (budget_id, window_start) DO UPDATE SET used = budget_usage.used + excluded.used"
            " WHERE budget_usage.used + excluded.used"
            " <= (SELECT amount FROM budgets WHERE id = budget_usage.budget_id) RETURNING used",
            (start, n, limit.group, _key(limit.tool), _key(limit.user), _key(limit.agent), limit.kind, n),
        ).fetchone()
        if counted is not None:
            return None
        bid = _budget_id(conn, limit)
        if bid is None:  # removed since it was read: it limits nothing any more
            return None
        used = conn.execute(
            "SELECT used FROM budget_usage WHERE budget_id = ? AND window_start = ?", (bid, start)
        ).fetchone()
        return Exceeded(limit, int(used["used"]) if used else 0, resets)


class _Refused(Exception):
    """Rolls a charge back: one of its limits did not fit."""

    def __init__(self, exceeded: Exceeded) -> None:
        self.exceeded = exceeded
