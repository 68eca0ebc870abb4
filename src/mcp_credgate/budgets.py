"""Budgets (contract §8): limits on what a group's agents may call and spend.

A limit belongs to a group and applies to all its tools or one (`tool`), to the whole group or to one member
(`user`) or agent (`agent`); it caps calls per fixed window (minute, hour, day) or spend per calendar period (day,
month), in UTC by the store's clock. Every limit that matches a call applies. Spend is counted in micro-units of
the limit's currency from each tool's declared cost (`declarations.MICROS`). A call is counted when it runs, all
its limits at once or none (`Store.charge`), so concurrent calls on any number of processes and replicas never
exceed a limit.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from .declarations import MICROS

__all__ = [
    "CALL_WINDOWS",
    "MOST",
    "SPEND_PERIODS",
    "Kind",
    "Limit",
    "exceeded_warning",
    "parse_calls",
    "parse_spend",
    "shown_spend",
]

Kind = Literal["calls", "spend"]
CALL_WINDOWS = {"minute": 60, "hour": 3600, "day": 86400}
SPEND_PERIODS = ("day", "month")
MOST = 10**18  # calls, or micro-units: as a declared cost's bound; the store's counts hold twice that
_MICRO = Decimal(1).scaleb(-6)


@dataclass(frozen=True)
class Limit:
    """One limit of a group's: its scope (None: any tool, the whole group), its kind, amount and window."""

    group: str
    tool: str | None
    user: str | None
    agent: str | None
    kind: Kind
    amount: int  # calls, or micro-units of `currency`
    per: str
    currency: str | None = None

    def applies(self, tool: str, user: str | None, agent: str | None) -> bool:
        return self.tool in (None, tool) and self.user in (None, user) and self.agent in (None, agent)

    def window(self, at: float) -> tuple[int, int]:
        """The window `at` falls in: (its start, when it resets), epoch seconds, UTC."""
        if self.per in CALL_WINDOWS:
            size = CALL_WINDOWS[self.per]
            start = int(at) // size * size
            return start, start + size
        day = datetime.fromtimestamp(at, UTC)
        if self.per == "day":
            start_day = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return int(start_day.timestamp()), int(start_day.timestamp()) + 86400
        start_month = datetime(day.year, day.month, 1, tzinfo=UTC)
        days = calendar.monthrange(day.year, day.month)[1]
        return int(start_month.timestamp()), int(start_month.timestamp()) + days * 86400

    def scope(self) -> dict[str, str]:
        return {k: v for k, v in (("tool", self.tool), ("user", self.user), ("agent", self.agent)) if v is not None}

    def as_json(self) -> dict[str, Any]:
        """The limit as contract §8 shows it: `{"calls": 10, "per": "day"}` or `{"spend": "2.00", ...}`, with
        its scope."""
        if self.kind == "calls":
            return {"calls": self.amount, "per": self.per, **self.scope()}
        return {"spend": shown_spend(self.amount), "currency": self.currency, "per": self.per, **self.scope()}

    def describe(self) -> str:
        amount = f"{self.amount} calls" if self.kind == "calls" else f"{shown_spend(self.amount)} {self.currency}"
        whose = ", ".join(f"{k} {v}" for k, v in self.scope().items()) or "all tools, the whole group"
        return f"{amount} per {self.per} ({whose})"

    def used_json(self, used: int) -> int | str:
        return used if self.kind == "calls" else shown_spend(used)


def shown_spend(micros: int) -> str:
    """Micro-units as a decimal with at least 2 places: 2000000 → "2.00", 2500 → "0.0025"."""
    text = f"{Decimal(micros) / MICROS:f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction.ljust(2, '0')}"


def parse_calls(text: str, option: str = "--calls") -> tuple[int, str]:
    """`N/WINDOW` (`100/minute`): a whole number of calls of at least 1 per minute, hour or day. `option`: what
    the text was given as, to begin a refusal with."""
    count, _, per = text.partition("/")
    if per not in CALL_WINDOWS:
        raise ValueError(f"{option}: give N/WINDOW with WINDOW one of {', '.join(CALL_WINDOWS)} (such as 100/minute)")
    count = count.strip()
    if not (count.isascii() and count.isdigit()) or len(count) > 19 or not 1 <= int(count) <= MOST:
        raise ValueError(
            f"{option}: the number of calls must be a whole number, at least 1 and at most 10^18 (such as 100/minute)"
        )
    return int(count), per


def parse_spend(text: str, option: str = "--spend") -> tuple[int, str]:
    """`X/PERIOD` (`50.00/month`): a finite decimal of at least 0 (at most 6 places) per day or month."""
    amount, _, per = text.partition("/")
    if per not in SPEND_PERIODS:
        raise ValueError(f"{option}: give X/PERIOD with PERIOD one of {', '.join(SPEND_PERIODS)} (such as 50.00/month)")
    try:
        value = Decimal(amount.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    # bounded before any arithmetic: 1e999999 overflows a decimal once in micro-units, 1e999990 takes half a
    # minute to become an int, and the store's counts hold at most 2^63 - 1 (a declared cost's bound, as here)
    if not value.is_finite() or not 0 <= value <= Decimal(MOST) / MICROS or value != value.quantize(_MICRO):
        raise ValueError(
            f"{option}: the amount must be a number of at least 0 and at most {MOST // MICROS} with at most 6"
            " decimal places (such as 50.00)"
        )
    return int(value * MICROS), per


def exceeded_warning(limit: Limit, used: int, resets_at: int, tool: str) -> dict[str, Any]:
    """The §4 result shape of a call a limit refused (contract §8)."""
    return {
        "warning": "budget_exceeded",
        "tool": tool,
        "group": limit.group,
        "limit": limit.as_json(),
        "used": limit.used_json(used),
        "resets_at": datetime.fromtimestamp(resets_at, UTC).isoformat().replace("+00:00", "Z"),
    }
