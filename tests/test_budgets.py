"""Budgets (contract §8): limits parsed and shown, and enforced at call time through the gateway, before anything
is sent. Counting across processes and replicas is tested in tests/store/test_budgets.py."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from mcp import Client

from mcp_credgate.budgets import Limit, parse_calls, parse_spend, shown_spend
from mcp_credgate.caller import Caller
from mcp_credgate.cli import cli
from mcp_credgate.server import build_server
from mcp_credgate.store import AuditRow
from tests.support.gateway import World, python_tool, result_text

HANDLERS = """
CALLS = []

def search(args, credential):
    CALLS.append(args)
    return {"found": args.get("q", "")}

def broken(args, credential):
    raise RuntimeError("the API is down")
"""
QUERY = '[input_schema.properties.q]\ntype = "string"\n'


# -- limits as written and shown ---------------------------------------------------------------------------------


def test_limits_are_read_as_written_and_shown_exactly() -> None:
    assert parse_calls("100/minute") == (100, "minute")
    assert parse_spend("50.00/month") == (50_000_000, "month")
    assert parse_spend("0.0025/day") == (2500, "day")
    assert (shown_spend(2_000_000), shown_spend(2500), shown_spend(0)) == ("2.00", "0.0025", "0.00")


@pytest.mark.parametrize(
    ("calls", "spend"),
    [
        ("0/day", None),
        ("-5/day", None),
        ("ten/day", None),
        ("5/week", None),
        ("5", None),
        (None, "-1/month"),
        (None, "nan/month"),
        (None, "inf/month"),
        (None, "1.0000001/month"),
        (None, "5/year"),
    ],
)
def test_bad_limits_are_refused_with_one_line(calls: str | None, spend: str | None) -> None:
    with pytest.raises(ValueError) as refused:
        parse_calls(calls) if calls is not None else parse_spend(spend or "")
    assert "\n" not in str(refused.value) and str(refused.value).startswith(("--calls", "--spend"))


def test_windows_are_fixed_in_utc_and_a_month_is_its_calendar_month() -> None:
    at = datetime(2026, 2, 14, 13, 37, 5, tzinfo=UTC).timestamp()
    month = Limit("g", None, None, None, "spend", 1, "month", "USD").window(at)
    minute = Limit("g", None, None, None, "calls", 1, "minute").window(at)

    assert month == (datetime(2026, 2, 1, tzinfo=UTC).timestamp(), datetime(2026, 3, 1, tzinfo=UTC).timestamp())
    assert minute == (at - 5, at + 55)


# -- through the gateway --------------------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    tools = {
        "search": "cost = 0.25\n" + python_tool("search", "budget_handlers:search", properties=QUERY),
        "broken": python_tool("broken", "budget_handlers:broken"),
        "euro": 'cost = 1\ncurrency = "EUR"\n' + python_tool("euro", "budget_handlers:search", properties=QUERY),
    }
    w = World.create(tmp_path, tools, files={"budget_handlers.py": HANDLERS})
    w.allow("desk", "search", "broken")
    yield w
    w.close()


def budget(world: World, *args: str) -> str:
    result = CliRunner().invoke(cli, [*world.cli_paths, "budget", *args])
    assert result.exit_code == 0, result.output
    return result.output


@asynccontextmanager
async def desk(world: World, agent: str = "bot") -> AsyncIterator[Client]:
    async with (
        world.gateway() as gw,
        gw.running(),
        Client(build_server(gw, lambda ctx: Caller("desk", agent))) as client,
    ):
        yield client


def audit(world: World, tool: str, count: int) -> list[AuditRow]:
    deadline = time.monotonic() + 5
    while True:
        rows = world.store.read_audit(tool=tool)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.mark.anyio
async def test_a_call_past_its_limit_is_refused_with_the_limit_what_was_used_and_when_it_resets(world: World) -> None:
    budget(world, "set", "desk", "--calls", "2/day")
    with anyio.fail_after(30):
        async with desk(world) as client:
            results = [await client.call_tool("search", {"q": str(i)}) for i in range(3)]

    refused = results[2]
    assert [r.is_error for r in results] == [False, False, True]
    assert refused.structured_content is not None
    assert refused.structured_content["warning"] == "budget_exceeded"
    assert refused.structured_content["limit"] == {"calls": 2, "per": "day"}
    assert refused.structured_content["used"] == 2
    resets = datetime.fromisoformat(refused.structured_content["resets_at"].replace("Z", "+00:00"))
    assert resets.hour == 0 and resets.minute == 0 and resets > datetime.now(UTC)
    assert "was not called" in result_text(refused)
    assert [r.outcome for r in reversed(audit(world, "search", 3))] == ["ok", "ok", "over_budget"]  # newest first


@pytest.mark.anyio
async def test_spend_counts_each_calls_declared_cost_and_a_failed_call_counts_too(world: World) -> None:
    budget(world, "set", "desk", "--tool", "search", "--spend", "0.50/month")
    budget(world, "set", "desk", "--tool", "broken", "--calls", "1/day")
    with anyio.fail_after(30):
        async with desk(world) as client:
            spent = [await client.call_tool("search", {"q": "x"}) for _ in range(3)]
            failed = [await client.call_tool("broken", {}) for _ in range(2)]

    assert [r.is_error for r in spent] == [False, False, True]  # 0.25 + 0.25 fits 0.50; a third does not
    assert spent[2].structured_content is not None
    assert spent[2].structured_content["limit"] == {
        "spend": "0.50",
        "currency": "USD",
        "per": "month",
        "tool": "search",
    }
    assert spent[2].structured_content["used"] == "0.50"
    assert "failed" in result_text(failed[0]) and failed[1].structured_content["warning"] == "budget_exceeded"


@pytest.mark.anyio
async def test_calls_refused_for_other_reasons_do_not_count(world: World) -> None:
    budget(world, "set", "desk", "--calls", "1/day")
    with anyio.fail_after(30):
        async with desk(world) as client:
            invalid = await client.call_tool("search", {"q": 5})  # not a string: refused before it runs
            ran = await client.call_tool("search", {"q": "x"})

    assert invalid.is_error and not ran.is_error


@pytest.mark.anyio
async def test_an_agents_limit_binds_that_agent_only(world: World) -> None:
    world.store.add_agent("desk", "bot", "0" * 64)
    budget(world, "set", "desk", "--agent", "bot", "--calls", "1/hour")
    with anyio.fail_after(30):
        async with desk(world, "bot") as bot, desk(world, "other") as other:
            bots = [await bot.call_tool("search", {"q": "x"}) for _ in range(2)]
            others = [await other.call_tool("search", {"q": "x"}) for _ in range(2)]

    assert [r.is_error for r in bots] == [False, True] and [r.is_error for r in others] == [False, False]


def test_budget_show_gives_each_limit_with_what_was_used_and_rm_removes_it(world: World) -> None:
    budget(world, "set", "desk", "--calls", "100/minute")
    budget(world, "set", "desk", "--tool", "search", "--spend", "2/month")
    shown = budget(world, "show", "desk", "--json")
    removed = budget(world, "rm", "desk", "--tool", "search")

    assert '"calls": 100' in shown and '"spend": "2.00"' in shown and '"used": 0' in shown
    assert "removed 1 limit(s)" in removed
    assert '"spend"' not in budget(world, "show", "desk", "--json")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calls", "0/day"], "at least 1"),
        (["--calls", "5/week"], "WINDOW one of minute, hour, day"),
        (["--spend", "-1/month"], "at least 0"),
        (["--calls", "1/day", "--spend", "1/day"], "one of --calls"),
        ([], "one of --calls"),
        (["--user", "ann", "--agent", "bot", "--calls", "1/day"], "not both"),
        (["--tool", "nope", "--calls", "1/day"], "no tool named 'nope'"),
        (["--agent", "ghost", "--calls", "1/day"], "ghost"),
    ],
)
def test_bad_budget_options_are_one_line_and_change_nothing(world: World, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, [*world.cli_paths, "budget", "set", "desk", *args])

    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1, result.output
    assert world.store.budgets("desk") == []


def test_a_spend_limit_over_tools_of_two_currencies_is_refused(world: World) -> None:
    world.allow("desk", "euro")
    result = CliRunner().invoke(cli, [*world.cli_paths, "budget", "set", "desk", "--spend", "5/month"])

    assert result.exit_code == 1 and "different currencies (EUR, USD)" in result.output


# -- usage ---------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_usage_counts_the_calls_that_ran_and_their_cost_by_tool_and_by_agent(world: World) -> None:
    budget(world, "set", "desk", "--tool", "broken", "--calls", "1/day")
    with anyio.fail_after(30):
        async with desk(world, "bot") as bot, desk(world, "other") as other:
            for client in (bot, bot, other):
                await client.call_tool("search", {"q": "x"})
            await bot.call_tool("search", {"q": 5})  # invalid: it did not run
            await bot.call_tool("broken", {})  # ran and failed: it counts
            await bot.call_tool("broken", {})  # over budget: it did not run
    audit(world, "broken", 2)

    by_tool = usage(world, "desk", "--json")
    by_agent = usage(world, "desk", "--by", "agent", "--json")
    text = usage(world, "desk")

    assert by_tool["usage"] == [
        {"tool": "broken", "calls": 1, "spent": {"USD": "0.00"}},
        {"tool": "search", "calls": 3, "spent": {"USD": "0.75"}},
    ]
    assert by_agent["usage"] == [
        {"agent": "bot", "calls": 3, "spent": {"USD": "0.50"}},
        {"agent": "other", "calls": 1, "spent": {"USD": "0.25"}},
    ]
    assert "search  3 calls  0.75 USD" in text
    assert usage(world, "desk", "--since", "2999-01-01", "--json")["usage"] == []


def test_usage_refuses_a_bad_date_with_one_line(world: World) -> None:
    result = CliRunner().invoke(cli, [*world.cli_paths, "usage", "desk", "--since", "last week"])

    assert result.exit_code == 2 and "give a date" in result.output


def usage(world: World, *args: str) -> Any:
    result = CliRunner().invoke(cli, [*world.cli_paths, "usage", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


@pytest.mark.anyio
async def test_a_tool_in_another_currency_than_its_spend_limit_is_refused_and_counts_nothing(world: World) -> None:
    budget(world, "set", "desk", "--spend", "5/month")  # the group's tools cost in USD
    world.allow("desk", "euro")  # allowed later, costing in EUR
    with anyio.fail_after(30):
        async with desk(world) as client:
            refused = await client.call_tool("euro", {"q": "x"})

    [limit] = world.store.budgets("desk")
    assert refused.is_error and refused.structured_content is not None
    assert refused.structured_content["warning"] == "budget_exceeded"
    assert world.store.used(limit)[0] == 0
