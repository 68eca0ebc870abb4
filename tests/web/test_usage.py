"""A group's usage for its page (`web.usage`): read from the audit rows of calls that ran, charted for the whole
group, each tool and each member, at most MOST_SHOWN of each (those with limits of their own first)."""

from __future__ import annotations

from datetime import UTC, datetime

from mcp_credgate.budgets import Limit
from mcp_credgate.store import AuditRow, Store
from mcp_credgate.web.usage import MOST_SHOWN, group_usage


def ran(store: Store, tool: str, calls: int, user: str | None = None) -> None:
    at = datetime.fromtimestamp(store.store_epoch(), UTC).isoformat()
    store.write_audit([AuditRow(at, "g", "bot", tool, None, "ok", 1.0, None, user, None, 0, "USD")] * calls)


def test_the_busiest_tools_and_members_are_charted_and_those_with_limits_of_their_own_always(store: Store) -> None:
    store.add_group("g")
    for i in range(MOST_SHOWN + 5):
        ran(store, f"tool{i:02d}", i + 1, user=f"user{i:02d}")
    quiet = Limit("g", "quiet", None, None, "calls", 5, "day")  # a limit, no calls yet
    store.set_budget(quiet)

    usage = group_usage(store, "g", [quiet])

    titles = [s.title for s in usage.sections]
    tools = [t for t in titles if t.startswith("Tool ")]
    members = [t for t in titles if t.startswith("Member ")]
    assert titles[0] == "All tools"
    assert tools == sorted(["Tool quiet", *(f"Tool tool{i:02d}" for i in range(25 - MOST_SHOWN + 1, 25))])
    assert members == [f"Member user{i:02d}" for i in range(25 - MOST_SHOWN, 25)]
    assert (usage.more_tools, usage.more_members) == (6, 5)
    assert usage.sections[0].charts[0].total == f"{sum(range(1, 26))} calls"


def test_calls_of_no_user_count_in_the_groups_chart_but_chart_no_member(store: Store) -> None:
    store.add_group("g")
    ran(store, "clock", 3)  # a local agent's: no user

    usage = group_usage(store, "g", [])

    assert [s.title for s in usage.sections] == ["All tools", "Tool clock"]
    assert usage.sections[0].charts[0].total == "3 calls"
