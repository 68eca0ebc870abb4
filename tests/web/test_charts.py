"""Usage charts laid out (`web.charts`): a bar per day scaled to the tallest bar or limit, limits per day and per
month drawn, the rest named, and each bar linking to its calls."""

from __future__ import annotations

from datetime import date

from mcp_credgate.budgets import Limit
from mcp_credgate.web.charts import HEIGHT, TOP, WIDTH, daily_chart, last_days

DAYS = last_days(date(2026, 12, 3), 5)  # 2026-11-29 … 2026-12-03


def href(day: str) -> str:
    return f"/audit?day={day}"


def calls_limit(amount: int, per: str) -> Limit:
    return Limit("g", None, None, None, "calls", amount, per)


def spend_limit(amount: int, per: str) -> Limit:
    return Limit("g", None, None, None, "spend", amount, per, "USD")


def test_last_days_end_today_oldest_first_across_a_month() -> None:
    assert DAYS == ["2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03"]


def test_each_day_is_a_bar_scaled_to_the_tallest_and_only_days_with_calls_link_to_them() -> None:
    chart = daily_chart(
        "All tools: calls", DAYS, {"2026-11-30": 4, "2026-12-02": 2}, kind="calls", limits=[], href=href
    )

    assert [b.value for b in chart.bars] == [0, 4, 0, 2, 0]
    tallest, half = chart.bars[1], chart.bars[3]
    assert tallest.y == TOP and tallest.height == HEIGHT - TOP  # the tallest reaches the top, under its label
    assert half.height == tallest.height / 2 and half.y + half.height == HEIGHT
    assert [b.href for b in chart.bars] == [None, "/audit?day=2026-11-30", None, "/audit?day=2026-12-02", None]
    assert tallest.title == "2026-11-30: 4 calls" and chart.total == "6 calls"
    assert all(b.x + b.width <= WIDTH for b in chart.bars) and chart.bars[0].x < chart.bars[1].x
    assert chart.label == "All tools: calls: 6 calls over 5 days, 2026-11-29 to 2026-12-03"


def test_a_limit_per_day_is_a_line_at_its_amount_and_sets_the_scale_when_above_every_bar() -> None:
    chart = daily_chart("t", DAYS, {"2026-12-03": 5}, kind="calls", limits=[calls_limit(10, "day")], href=href)

    (rule,) = chart.rules
    assert rule.y == TOP and rule.text == "limit 10 calls per day" and not rule.points
    assert chart.bars[-1].height == (HEIGHT - TOP) / 2


def test_limits_per_minute_or_hour_are_named_under_the_chart_not_drawn() -> None:
    minute = calls_limit(3, "minute")
    chart = daily_chart("t", DAYS, {"2026-12-03": 50}, kind="calls", limits=[minute], href=href)

    assert chart.rules == ()
    assert chart.not_drawn == (minute.describe(),)
    assert chart.bars[-1].y == TOP  # a limit not drawn does not scale the chart


def test_a_months_spend_limit_is_drawn_with_the_months_running_total_which_restarts_each_month() -> None:
    spent = {"2026-11-10": 3_000_000, "2026-11-30": 1_000_000, "2026-12-01": 500_000, "2026-12-03": 250_000}
    month = spend_limit(5_000_000, "month")
    chart = daily_chart("t", DAYS, spent, kind="spend", limits=[month], href=href, currency="USD")

    limit, running = chart.rules
    assert limit.text == "limit 5.00 USD per month" and limit.y == TOP
    scale = (HEIGHT - TOP) / 5_000_000
    totals = [3_000_000, 4_000_000, 500_000, 500_000, 750_000]  # November's earlier spend counts in its total
    assert [float(p.split(",")[1]) for p in running.points.split()] == [round(HEIGHT - t * scale, 2) for t in totals]
    assert chart.total == "1.75 USD"  # only the days shown
    assert chart.bars[2].title == "2026-12-01: 0.50 USD"
