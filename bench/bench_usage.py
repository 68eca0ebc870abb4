"""Benchmark: a group's usage (its dashboard page's charts, `credgate usage`) with a month of a busy group's calls
vs a quiet group's, side by side in one run (issue 25).

Two SQLite stores: one whose group ran --calls calls over the last 30 days (20 tools, 100 members, 50 agents),
one whose group ran 1,000. Each is asked, in turns, for the group page's usage (`web.usage.group_usage`: by tool
and by member, per day) and for what `credgate usage GROUP --by tool` prints; and, for the pair before migration
0016, the same numbers read from the audit rows themselves.

    python bench/bench_usage.py [--calls 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mcp_credgate.config import Settings
from mcp_credgate.store import AuditRow, Store
from mcp_credgate.web.usage import group_usage

BATCH = 50_000


def filled_store(folder: Path, calls: int) -> Store:
    store, _ = Store.initialise(Settings.resolve(home=folder, env={}), env={})
    store.add_group("g")
    now = datetime.now(UTC)
    rows: list[AuditRow] = []
    for i in range(calls):
        at = (now - timedelta(seconds=i * 30 * 86400 / calls)).isoformat(timespec="milliseconds")
        rows.append(
            AuditRow(at, "g", f"a{i % 50}", f"t{i % 20}", None, "ok", 1.0, None, f"u{i % 100}", None, 1000, "USD")
        )
        if len(rows) == BATCH:
            store.write_audit(rows)
            rows = []
    store.write_audit(rows)
    return store


def from_audit_rows(store: Store) -> None:
    """What `usage` read before migration 0016: every audit row of the group since the start."""
    since = (datetime.now(UTC) - timedelta(days=31)).isoformat()
    store._query(
        "SELECT tool AS k, currency, count(*) AS calls, sum(cost) AS spent FROM audit"
        " WHERE group_name = ? AND ts >= ? AND cost IS NOT NULL GROUP BY tool, currency",
        ("g", since),
    )


def median_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls the busy group ran in 30 days")
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        quiet, busy = filled_store(Path(tmp) / "quiet", 1000), filled_store(Path(tmp) / "busy", opts.calls)
        since = (datetime.now(UTC) - timedelta(days=30)).date().isoformat()
        asks: dict[str, Callable[[Store], object]] = {
            "group page usage": lambda s: group_usage(s, "g", []),
            "credgate usage --by tool": lambda s: s.usage("g", since, "tool"),
            "the audit rows (before 0016)": from_audit_rows,
        }
        print(f"SQLite; a group with {opts.calls:,} calls in 30 days vs one with 1,000 (median of {opts.repeat})")
        print(f"{'':32}{'busy ms':>10}{'quiet ms':>10}{'ratio':>8}")
        for name, ask in asks.items():
            busy_ms = median_ms(lambda: ask(busy), opts.repeat)  # noqa: B023 - called at once
            quiet_ms = median_ms(lambda: ask(quiet), opts.repeat)  # noqa: B023
            print(f"{name:32}{busy_ms:10.1f}{quiet_ms:10.1f}{busy_ms / quiet_ms:8.2f}")
        quiet.close()
        busy.close()


if __name__ == "__main__":
    main()
