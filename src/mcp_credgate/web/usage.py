"""What a group used over the last days, for its page: read from the days' totals of the calls that ran (as
`credgate usage` reads it) and laid out as charts (`charts`) for the whole group, each tool and each member, each
with the limits of exactly its scope."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from ..budgets import Limit
from ..store import Store
from .charts import Chart, daily_chart, last_days

__all__ = ["MOST_SHOWN", "USAGE_DAYS", "GroupUsage", "UsageSection", "group_usage"]

USAGE_DAYS = 30
MOST_SHOWN = 20  # tools, and members, charted on a group's page: those with limits of their own, then the busiest


@dataclass(frozen=True)
class UsageSection:
    """The charts of one scope: the whole group, a tool or a member."""

    title: str
    charts: tuple[Chart, ...]


@dataclass(frozen=True)
class GroupUsage:
    sections: tuple[UsageSection, ...]
    more_tools: int  # tools that ran calls but are not charted (beyond MOST_SHOWN)
    more_members: int


@dataclass
class _Scope:
    calls: dict[str, int]
    spent: dict[str, dict[str, int]]  # currency → day → micro-units


def group_usage(store: Store, group: str, limits: Sequence[Limit]) -> GroupUsage:
    """The group's sections: the whole group first, then each tool and each member with a limit of its own or
    calls that ran, by name (at most MOST_SHOWN of each: those with limits, then the busiest)."""
    days = last_days(datetime.fromtimestamp(store.store_epoch(), UTC).date(), USAGE_DAYS)
    since = f"{days[0][:7]}-01"  # from the start of the first day's month: a month's limit counts all of it
    tools = _scopes(store, group, since, "tool")
    users = _scopes(store, group, since, "user")
    whole = _Scope(defaultdict(int), defaultdict(lambda: defaultdict(int)))
    for scope in tools.values():
        for day, n in scope.calls.items():
            whole.calls[day] += n
        for currency, spent in scope.spent.items():
            for day, micros in spent.items():
                whole.spent[currency][day] += micros

    def of(tool: str | None, user: str | None) -> list[Limit]:
        return [lim for lim in limits if (lim.tool, lim.user, lim.agent) == (tool, user, None)]

    limited_tools = {lim.tool for lim in limits if lim.tool and not (lim.user or lim.agent)}
    limited_users = {lim.user for lim in limits if lim.user and not (lim.tool or lim.agent)}
    shown_tools, more_tools = _most_shown(tools, limited_tools, days)
    shown_users, more_users = _most_shown(users, limited_users, days)
    sections = [_section("All tools", whole, days, of(None, None), {"group": group})]
    for tool in shown_tools:
        scope = tools.get(tool) or _Scope({}, {})
        sections.append(_section(f"Tool {tool}", scope, days, of(tool, None), {"group": group, "tool": tool}))
    for user in shown_users:
        scope = users.get(user) or _Scope({}, {})
        sections.append(_section(f"Member {user}", scope, days, of(None, user), {"group": group, "user": user}))
    return GroupUsage(tuple(sections), more_tools, more_users)


def _most_shown(scopes: dict[str, _Scope], limited: set[str], days: list[str]) -> tuple[list[str], int]:
    """The names to chart, by name, and how many more there are."""

    def calls(name: str) -> int:  # in the days shown
        found = scopes.get(name)
        return sum(n for day, n in found.calls.items() if day >= days[0]) if found else 0

    ranked = sorted(set(scopes) | limited, key=lambda name: (name not in limited, -calls(name), name))
    return sorted(ranked[:MOST_SHOWN]), max(0, len(ranked) - MOST_SHOWN)


def _scopes(store: Store, group: str, since: str, by: str) -> dict[str, _Scope]:
    found: dict[str, _Scope] = {}
    for usage in store.usage(group, since, by, per_day=True):
        if usage.key is None or usage.day is None:  # calls of no user (a local agent) show in the group's
            continue
        scope = found.setdefault(usage.key, _Scope({}, {}))
        scope.calls[usage.day] = usage.calls
        for currency, micros in usage.spent.items():
            scope.spent.setdefault(currency, {})[usage.day] = micros
    return found


def _section(title: str, scope: _Scope, days: list[str], limits: list[Limit], filters: dict[str, str]) -> UsageSection:
    def href(day: str) -> str:
        return "/audit?" + urlencode({**filters, "day": day, "ran": "yes"})

    calls = [lim for lim in limits if lim.kind == "calls"]
    charts = [daily_chart(f"{title}: calls", days, scope.calls, kind="calls", limits=calls, href=href)]
    spend_limits = [lim for lim in limits if lim.kind == "spend"]
    currencies = {c for c, spent in scope.spent.items() if any(spent.values())}
    currencies |= {lim.currency or "USD" for lim in spend_limits}
    for currency in sorted(currencies):
        charts.append(
            daily_chart(
                f"{title}: spend ({currency})",
                days,
                scope.spent.get(currency, {}),
                kind="spend",
                limits=[lim for lim in spend_limits if (lim.currency or "USD") == currency],
                href=href,
                currency=currency,
            )
        )
    return UsageSection(title, tuple(charts))
