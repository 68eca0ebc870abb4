"""Budgets in the store (`store.budgets`): limits set, replaced and removed, and calls counted exactly, all of a
call's limits or none, with many callers at once on two connections (two gateways on one SQLite folder, two
replicas on PostgreSQL)."""

from __future__ import annotations

import threading
import time

import pytest

from mcp_credgate.budgets import Limit
from mcp_credgate.config import Settings
from mcp_credgate.errors import ConflictError, NotFoundError
from mcp_credgate.store import BUSY, AuditRow, Store
from mcp_credgate.store.database import Cursor, Params
from mcp_credgate.store.schema import MIGRATIONS, POSTGRESQL, SQLITE


def calls(amount: int, *, tool: str | None = None, agent: str | None = None, per: str = "day") -> Limit:
    return Limit("g", tool, None, agent, "calls", amount, per)


@pytest.fixture
def grouped(store: Store) -> Store:
    store.add_group("g")
    return store


def test_a_limit_of_the_same_scope_and_kind_replaces_the_last_and_rm_removes_the_scopes(grouped: Store) -> None:
    grouped.set_budget(calls(10))
    grouped.set_budget(calls(20))
    grouped.set_budget(Limit("g", None, None, None, "spend", 2_000_000, "month", "USD"))
    grouped.set_budget(calls(5, tool="t"))

    assert sorted((b.kind, b.tool or "", b.amount) for b in grouped.budgets("g")) == [
        ("calls", "", 20),
        ("calls", "t", 5),
        ("spend", "", 2_000_000),
    ]
    assert grouped.remove_budget("g", None, None, None, "calls") == 1
    assert grouped.remove_budget("g", None, None, None) == 1  # the spend one is left: both kinds by default
    assert [b.tool for b in grouped.budgets("g")] == ["t"]
    with pytest.raises(NotFoundError):
        grouped.remove_budget("g", None, None, None)


def test_a_members_limit_needs_a_member_and_a_groups_limit_a_group(grouped: Store) -> None:
    grouped.add_user("ann", "0" * 64)
    with pytest.raises(ConflictError, match="not a member"):
        grouped.set_budget(Limit("g", None, "ann", None, "calls", 1, "day"))
    with pytest.raises(NotFoundError):
        grouped.set_budget(Limit("nope", None, None, None, "calls", 1, "day"))


def test_a_call_is_counted_against_all_its_limits_or_none(grouped: Store) -> None:
    whole, tool = calls(3), calls(1, tool="t")
    grouped.set_budget(whole)
    grouped.set_budget(tool)

    first = grouped.charge([(whole, 1), (tool, 1)])
    second = grouped.charge([(whole, 1), (tool, 1)])  # the tool's limit is used up

    assert first is None
    assert second is not None and second.limit == tool and second.used == 1
    assert grouped.used(whole)[0] == 1  # the refused call counted nowhere


def test_windows_are_fixed_in_utc_and_a_new_window_starts_from_nothing(grouped: Store) -> None:
    minute = calls(1, per="minute")
    grouped.set_budget(minute)
    assert grouped.charge([(minute, 1)]) is None
    used_now, resets = grouped.used(minute)

    assert used_now == 1 and resets % 60 == 0
    assert grouped.used(minute, at=resets + 1)[0] == 0


@pytest.mark.parametrize("n", [20])
def test_twenty_concurrent_calls_against_a_limit_of_ten_on_two_connections_count_exactly_ten(
    grouped: Store, settings: Settings, n: int
) -> None:
    limit = calls(10)
    grouped.set_budget(limit)
    other = Store.open(settings, env={})  # a second gateway on the same folder, or a second replica
    outcomes: list[bool] = []
    lock, start = threading.Lock(), threading.Barrier(n)

    def call(store: Store) -> None:
        start.wait()
        fitted = store.charge([(limit, 1)]) is None
        with lock:
            outcomes.append(fitted)

    try:
        threads = [threading.Thread(target=call, args=(grouped if i % 2 else other,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        other.close()

    assert outcomes.count(True) == 10 and outcomes.count(False) == 10
    assert grouped.used(limit)[0] == 10


def test_the_counting_connection_commits_without_waiting_for_the_disk_even_after_a_reconnect(
    store: Store, settings: Settings
) -> None:
    """The gateway counts on a connection of relaxed durability (a crash of the process loses no count; of the
    database server or the machine, the last moments' at most): PostgreSQL holds a count's rows until its commit,
    which must not wait for the disk. A connection the server dropped comes back relaxed."""
    db = store._db
    store.relax_durability()
    if not db.shared:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        return
    assert db.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"] == "off"
    pid = db.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
    other = Store.open(settings, env={})
    try:
        other._db.execute("SELECT pg_terminate_backend(?)", (pid,))
    finally:
        other.close()
    assert db.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"] == "off"


def test_a_count_at_once_counts_on_sqlite_without_waiting_and_leaves_postgresql_to_a_worker_thread(
    grouped: Store, settings: Settings
) -> None:
    limit = calls(5)
    grouped.set_budget(limit)
    if grouped._db.shared:  # a network round trip: never on the caller's (event loop) thread
        assert grouped.charge_at_once([(limit, 1)]) is BUSY
        assert grouped.used(limit)[0] == 0
        return
    assert grouped.charge_at_once([(limit, 1)]) is None
    other = Store.open(settings, env={})  # another gateway on the folder, in the middle of a write
    try:
        with other._db.transaction():
            started = time.monotonic()
            assert grouped.charge_at_once([(limit, 1)]) is BUSY
            assert time.monotonic() - started < 0.5  # refused at once, not after the busy timeout
    finally:
        other.close()
    held = threading.Event()
    release = threading.Event()

    def hold_the_connection() -> None:  # as the audit writer does, writing a batch
        with grouped._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_connection)
    holder.start()
    held.wait(10)
    try:
        assert grouped.charge_at_once([(limit, 1)]) is BUSY
    finally:
        release.set()
        holder.join()
    assert grouped.used(limit)[0] == 1  # only the first counted
    assert grouped.charge_at_once([(limit, 1)]) is None
    assert grouped._db.execute("PRAGMA busy_timeout").fetchone()[0] > 0  # waiting again for everything else


# -- usage ---------------------------------------------------------------------------------------------------


def ran(tool: str, at: str, user: str | None = None, cost: int = 0, currency: str = "USD") -> AuditRow:
    return AuditRow(at, "g", "bot", tool, None, "ok", 1.0, None, user, None, cost, currency)


def test_usage_counts_whole_days_from_their_totals_and_the_first_days_rest_from_its_audit_rows(
    grouped: Store,
) -> None:
    grouped.write_audit(
        [
            ran("t", "2026-11-30T23:59:59.999+00:00", cost=5),
            ran("t", "2026-12-01T08:00:00.000+00:00", user="ann", cost=10),
            ran("t", "2026-12-01T10:00:00.000+00:00", user="ann", cost=20),
            ran("u", "2026-12-02T00:00:00.000+00:00", cost=1, currency="EUR"),
            AuditRow("2026-12-02T01:00:00.000+00:00", "g", "bot", "t", None, "denied", 1.0),  # did not run
        ]
    )

    def by(since: str, key: str = "tool", *, per_day: bool = False) -> list[tuple[object, ...]]:
        return [(u.key, u.day, u.calls, u.spent) for u in grouped.usage("g", since, key, per_day=per_day)]

    assert by("2026-12-01") == [("t", None, 2, {"USD": 30}), ("u", None, 1, {"EUR": 1})]
    assert by("2026-12-01T00:00:00.000+00:00") == by("2026-12-01")
    assert by("2026-12-01T09:00:00.000+00:00") == [("t", None, 1, {"USD": 20}), ("u", None, 1, {"EUR": 1})]
    assert by("2026-11-30T12:00:00.000+00:00", per_day=True) == [
        ("t", "2026-11-30", 1, {"USD": 5}),
        ("t", "2026-12-01", 2, {"USD": 30}),
        ("u", "2026-12-02", 1, {"EUR": 1}),
    ]
    assert by("2026-12-01", "user") == [(None, None, 1, {"EUR": 1}), ("ann", None, 2, {"USD": 30})]
    assert by("2026-12-03") == []


def test_the_usage_migration_fills_the_days_from_the_audit_rows_already_written(grouped: Store) -> None:
    grouped.write_audit([ran("t", f"2026-12-0{d}T0{h}:00:00.000+00:00", cost=d * h) for d in (1, 2) for h in (1, 2)])
    before = grouped.usage("g", "2026-01-01", "tool", per_day=True)
    (migration,) = [m for m in MIGRATIONS if m.name == "0016_usage_days"]
    dialect = POSTGRESQL if grouped._db.shared else SQLITE
    fill = [statement for statement in migration.render(dialect) if statement.startswith("INSERT")]

    with grouped._write(changes_setup=False) as conn:
        conn.execute("DELETE FROM usage_days")
        for statement in fill:
            conn.execute(statement)

    assert grouped.usage("g", "2026-01-01", "tool", per_day=True) == before
    assert [(u.day, u.calls, u.spent) for u in before] == [("2026-12-01", 2, {"USD": 3}), ("2026-12-02", 2, {"USD": 6})]


def test_two_gateways_writing_audit_rows_of_the_same_days_at_once_count_every_call(
    grouped: Store, settings: Settings
) -> None:
    other = Store.open(settings, env={})
    tools = [f"t{i}" for i in range(8)]

    def write(store: Store, order: list[str]) -> None:
        for _ in range(10):
            store.write_audit([ran(tool, "2026-12-01T10:00:00.000+00:00", cost=1) for tool in order])

    try:
        writers = [
            threading.Thread(target=write, args=(grouped, tools)),
            threading.Thread(target=write, args=(other, tools[::-1])),  # the same days' rows, the other way round
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
    finally:
        other.close()
    assert [(u.key, u.calls) for u in grouped.usage("g", "2026-12-01", "tool")] == [(tool, 20) for tool in tools]


# -- counts beside the changes of limits ---------------------------------------------------------------------


def pause_after(store: Store, statement: str, seconds: float = 0.5) -> threading.Event:
    """Make the store's connection stop for `seconds` after the first statement that starts with `statement`
    (in the middle of its transaction); the event is set when it got there."""
    db, reached = store._db, threading.Event()
    run = db.execute

    def execute(sql: str, params: Params = ()) -> Cursor:
        found = run(sql, params)
        if sql.startswith(statement) and not reached.is_set():
            reached.set()
            time.sleep(seconds)
        return found

    db.execute = execute  # type: ignore[method-assign]  # a stand-in with the same signature
    return reached


def test_a_call_counted_while_its_limit_is_replaced_counts_against_the_new_limit_without_an_error(
    grouped: Store, settings: Settings
) -> None:
    """`budget set` of a limit that calls are counted against (another replica, or the dashboard): the
    replacement's DELETE cascades to the old limit's counts. A count beside it must neither fail (PostgreSQL: a
    foreign key violation, the old limit's row gone under the count's INSERT) nor count against the old limit."""
    old, new = calls(10), calls(20)
    grouped.set_budget(old)
    admin = Store.open(settings, env={})
    failed: list[BaseException] = []

    def replace() -> None:
        try:
            admin.set_budget(new)
        except BaseException as exc:
            failed.append(exc)

    try:
        deleted = pause_after(admin, "DELETE FROM budgets")
        replacing = threading.Thread(target=replace)
        replacing.start()
        assert deleted.wait(10)
        counted = grouped.charge([(old, 1)])  # the call, checked against the limit its replica had read
        replacing.join(10)
    finally:
        admin.close()

    assert failed == [] and counted is None
    assert grouped.used(new)[0] == 1  # counted against the limit in force once the replacement committed


def test_removing_limits_while_a_call_is_counted_against_them_neither_deadlocks_nor_fails(
    grouped: Store, settings: Settings
) -> None:
    """A call counted against a calls and a spend limit of the group while `budget rm` removes both: the count
    holds the first limit's counts and goes on to the second; the removal deletes both limits and then their
    counts. Both must end (PostgreSQL: neither is a deadlock's victim, which the store says is "busy")."""
    per_call, spend = calls(10), Limit("g", None, None, None, "spend", 10_000_000, "month", "USD")
    grouped.set_budget(per_call)
    assert grouped.charge([(per_call, 1)]) is None  # the calls limit has a count this day; the spend one none yet
    grouped.set_budget(spend)
    admin = Store.open(settings, env={})
    outcomes: dict[str, object] = {}

    def count() -> None:
        try:
            outcomes["charge"] = grouped.charge([(per_call, 1), (spend, 1_000_000)])
        except BaseException as exc:
            outcomes["charge"] = exc

    try:
        first_counted = pause_after(grouped, "INSERT INTO budget_usage", seconds=1.0)
        counting = threading.Thread(target=count)
        counting.start()
        assert first_counted.wait(10)
        try:
            outcomes["removed"] = admin.remove_budget("g", None, None, None)
        except BaseException as exc:
            outcomes["removed"] = exc
        counting.join(10)
    finally:
        admin.close()

    assert outcomes == {"charge": None, "removed": 2}
    assert grouped.budgets("g") == []
