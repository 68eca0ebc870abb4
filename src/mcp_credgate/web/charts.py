"""Usage charts of a group's page: what was used per day over the last days, as bars, with the limits drawn.

Each chart is laid out here, in the units of an SVG viewBox, and drawn by the template (`_chart.html`): the page
needs no JavaScript. A bar links to the calls it counts on the audit page. A limit is drawn where a day's bar can
be measured against it: a limit per day as a line at its amount; a spend limit per month as a line, with the
month's running total beside it (the bars are days, the limit is the month's). Limits per minute or per hour do
not compare with a day's bar: they are named under the chart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from ..budgets import Limit, shown_spend

__all__ = ["GAP", "HEIGHT", "TOP", "WIDTH", "Bar", "Chart", "Rule", "daily_chart", "last_days"]

WIDTH = 600.0  # the viewBox's; bars fill it below TOP
HEIGHT = 140.0
TOP = 22.0  # room above the tallest bar or line for a limit's label
GAP = 2.0  # between bars


@dataclass(frozen=True)
class Bar:
    day: str
    value: int
    x: float
    y: float
    width: float
    height: float
    title: str  # what the bar counts, said in words (its tooltip, and its text for screen readers)
    href: str | None  # the audit page's calls of that day (None: there are none)


@dataclass(frozen=True)
class Rule:
    """A limit drawn across the chart (or, with `points`, the month's running total drawn under it)."""

    y: float
    text: str
    points: str = ""  # "x,y x,y …": a polyline of the running total, drawn with the month's limit


@dataclass(frozen=True)
class Chart:
    title: str
    kind: str  # "calls" or "spend"
    total: str  # the chart's days together, in words
    top: str  # the value the chart's scale reaches (the tallest bar, limit or total), in words
    bars: tuple[Bar, ...]
    rules: tuple[Rule, ...]
    not_drawn: tuple[str, ...]  # the chart's limits that a day's bar does not measure against
    first_day: str
    last_day: str

    width: float = WIDTH
    height: float = HEIGHT

    @property
    def label(self) -> str:
        return f"{self.title}: {self.total} over {len(self.bars)} days, {self.first_day} to {self.last_day}"


def last_days(today: date, count: int = 30) -> list[str]:
    """`count` days up to and including `today`, oldest first, as `YYYY-MM-DD`."""
    return [(today - timedelta(days=count - 1 - i)).isoformat() for i in range(count)]


def daily_chart(
    title: str,
    days: Sequence[str],
    values: Mapping[str, int],
    *,
    kind: str,
    limits: Sequence[Limit],
    href: Callable[[str], str],
    currency: str | None = None,
) -> Chart:
    """A chart of one value per day of `days` (`values` by day: calls, or micro-units of `currency` spent) with
    `limits`, those of the chart's scope and kind."""
    shown = _shown(kind, currency)
    month_limits = [lim for lim in limits if lim.per == "month"]
    running = _running_month_totals(days, values) if month_limits else []
    drawn = [lim for lim in limits if lim.per in ("day", "month")]
    top = max([values.get(d, 0) for d in days] + running + [lim.amount for lim in drawn] + [1])
    scale = (HEIGHT - TOP) / top  # the top stands at TOP, under the room for a label
    step = WIDTH / len(days)
    bars = tuple(
        Bar(
            day,
            value,
            x=round(i * step + GAP / 2, 2),
            y=round(HEIGHT - value * scale, 2),
            width=round(step - GAP, 2),
            height=round(value * scale, 2),
            title=f"{day}: {shown(value)}",
            href=href(day) if value else None,
        )
        for i, day in enumerate(days)
        for value in [values.get(day, 0)]
    )
    rules = [Rule(round(HEIGHT - lim.amount * scale, 2), f"limit {shown(lim.amount)} per {lim.per}") for lim in drawn]
    if running:
        points = " ".join(
            f"{round((i + 0.5) * step, 2)},{round(HEIGHT - total * scale, 2)}" for i, total in enumerate(running)
        )
        rules.append(Rule(round(HEIGHT - running[-1] * scale, 2), "this month so far", points))
    total = sum(values.get(d, 0) for d in days)
    return Chart(
        title,
        kind,
        shown(total),
        shown(top),
        bars,
        tuple(rules),
        tuple(lim.describe() for lim in limits if lim not in drawn),
        days[0],
        days[-1],
    )


def _shown(kind: str, currency: str | None) -> Callable[[int], str]:
    if kind == "calls":
        return lambda n: f"{n} call" if n == 1 else f"{n} calls"
    return lambda micros: f"{shown_spend(micros)} {currency}"


def _running_month_totals(days: Sequence[str], values: Mapping[str, int]) -> list[int]:
    """Each day's total since the start of its month (`values` may hold days of the first month before the first
    day shown: they count)."""
    totals: list[int] = []
    month = days[0][:7]
    running = sum(v for d, v in values.items() if d < days[0] and d[:7] == month)
    for day in days:
        if day[:7] != month:
            running, month = 0, day[:7]
        running += values.get(day, 0)
        totals.append(running)
    return totals
