"""Approvals (contract §7, issue 24), with the SDK's client on both protocol eras: a call that needs a person's
approval is first put to the agent's client with the tool and its arguments (shown escaped); accepted, it runs
and its audit row says "approved"; declined, nothing runs; a client that cannot ask gets the §4 shape; a
2026-07-28 approval is bound to its call and spent once, so it approves no other call, nor the same one twice.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from mcp_credgate import admin
from mcp_credgate.approvals import APPROVAL_INPUT, question
from mcp_credgate.caller import Caller
from mcp_credgate.gateway import Gateway
from mcp_credgate.server import build_server
from mcp_credgate.store import AuditRow
from tests.support.gateway import TOKEN_FIELDS, World, python_tool, result_text

pytestmark = pytest.mark.anyio

HANDLERS = """
def transfer(args, credential):
    return {"sent": args["amount"], "to": args.get("to", "")}
"""
SVC = 'type = "svc"\n' + TOKEN_FIELDS
AMOUNT = '[input_schema.properties.amount]\ntype = "integer"\n[input_schema.properties.to]\ntype = "string"\n'


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    tools = {
        "transfer": python_tool("transfer", "approval_handlers:transfer", credential=SVC, properties=AMOUNT),
        "wire": "approval = true\n" + python_tool("wire", "approval_handlers:transfer", properties=AMOUNT),
        "unbound": python_tool("unbound", "approval_handlers:transfer", credential=SVC, properties=AMOUNT),
    }
    w = World.create(tmp_path, tools, files={"approval_handlers.py": HANDLERS})
    w.add_credential("svc-main", "svc", {"token": "tok-approvals-1234"})
    w.allow("desk", "wire")  # no --approval: its declaration requires it all the same
    admin.allow(w.store, w.catalog, "desk", ["transfer", "unbound"], approval=True)
    w.bind("desk", "transfer", "svc-main")
    yield w
    w.close()


class Person:
    """The agent's client's answers to questions: `answer` to each, and what it was asked."""

    def __init__(self, answer: str = "accept") -> None:
        self.answer = answer
        self.asked: list[types.ElicitRequestParams] = []

    async def __call__(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        self.asked.append(params)
        return types.ElicitResult(action=self.answer)  # type: ignore[arg-type]


@asynccontextmanager
async def agent(world: World, mode: str, person: Person | None) -> AsyncIterator[Client]:
    async with world.gateway() as gw, gw.running():
        server = build_server(gw, lambda ctx: Caller("desk", "bot"))
        async with Client(server, mode=mode, elicitation_callback=person) as client:
            yield client


def audit(world: World, tool: str) -> list[AuditRow]:
    deadline = time.monotonic() + 5
    while True:
        rows = world.store.read_audit(tool=tool)
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_an_approved_call_runs_and_its_audit_row_says_approved(world: World, mode: str) -> None:
    person = Person("accept")
    with anyio.fail_after(30):
        async with agent(world, mode, person) as client:
            result = await client.call_tool("transfer", {"amount": 5, "to": "ann"})
            declared = await client.call_tool("wire", {"amount": 7})
    assert not result.is_error and result.structured_content == {"sent": 5, "to": "ann"}
    assert not declared.is_error
    first, second = person.asked
    assert isinstance(first, types.ElicitRequestFormParams)
    assert first.message == question("transfer", {"amount": 5, "to": "ann"})
    assert "transfer" in first.message and '"amount": 5' in first.message and '"to": "ann"' in first.message
    assert second.message == question("wire", {"amount": 7})
    [row] = audit(world, "transfer")
    assert (row.outcome, row.approval, row.agent) == ("ok", "approved", "bot")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_declined_call_runs_nothing_and_is_audited_declined(world: World, mode: str) -> None:
    person = Person("decline")
    with anyio.fail_after(30):
        async with agent(world, mode, person) as client:
            result = await client.call_tool("transfer", {"amount": 5})
    assert result.is_error and result_text(result) == "The call of transfer was declined: nothing was run."
    assert len(person.asked) == 1
    [row] = audit(world, "transfer")
    assert (row.outcome, row.approval) == ("declined", None)


async def test_a_client_that_cannot_ask_gets_approval_required_and_nothing_runs(world: World) -> None:
    with anyio.fail_after(30):
        async with agent(world, "legacy", None) as client:
            result = await client.call_tool("transfer", {"amount": 5})
    assert result.is_error
    assert result.structured_content == {"warning": "approval_required", "tool": "transfer", "group": "desk"}
    assert "cannot ask for it" in result_text(result)
    [row] = audit(world, "transfer")
    assert row.outcome == "approval_required"


async def test_a_missing_credential_comes_before_the_question(world: World) -> None:
    person = Person("accept")
    with anyio.fail_after(30):
        async with agent(world, "legacy", person) as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("unbound", {"amount": 5})
    assert refused.value.error.code == types.URL_ELICITATION_REQUIRED  # the fix for the credential, not the question
    assert person.asked == []


async def test_a_2026_approval_approves_its_own_call_once_and_no_other(world: World) -> None:
    accept: types.InputResponses = {APPROVAL_INPUT: types.ElicitResult(action="accept")}
    with anyio.fail_after(30):
        async with agent(world, "auto", Person()) as client:
            session = client.session
            asked = await session.call_tool("transfer", {"amount": 5}, allow_input_required=True)
            assert isinstance(asked, types.InputRequiredResult) and asked.request_state
            state = asked.request_state
            other = await session.call_tool("transfer", {"amount": 500}, input_responses=accept, request_state=state)
            tampered = await session.call_tool(
                "transfer", {"amount": 5}, input_responses=accept, request_state=state[:-2] + "AA"
            )
            own = await session.call_tool("transfer", {"amount": 5}, input_responses=accept, request_state=state)
            again = await session.call_tool("transfer", {"amount": 5}, input_responses=accept, request_state=state)
            none = await session.call_tool("transfer", {"amount": 5}, input_responses=accept)
    [form] = (asked.input_requests or {}).values()
    assert isinstance(form, types.ElicitRequest) and isinstance(form.params, types.ElicitRequestFormParams)
    for refused in (other, tampered, again, none):
        assert refused.is_error and "does not belong to this call" in result_text(refused)
    assert not own.is_error and own.structured_content == {"sent": 5, "to": ""}
    outcomes = sorted((r.outcome, r.approval) for r in audit(world, "transfer"))
    assert outcomes == [("declined", None)] * 4 + [("ok", "approved")]


async def test_an_approval_is_bound_to_its_caller(world: World) -> None:
    accept: types.InputResponses = {APPROVAL_INPUT: types.ElicitResult(action="accept")}
    with anyio.fail_after(30):
        async with (
            world.gateway() as gw,
            gw.running(),
            _as(gw, Caller("desk", "bot")) as bot,
            _as(gw, Caller("desk", "other-bot")) as other,
        ):
            asked = await bot.session.call_tool("transfer", {"amount": 5}, allow_input_required=True)
            assert isinstance(asked, types.InputRequiredResult)
            stolen = await other.session.call_tool(
                "transfer", {"amount": 5}, input_responses=accept, request_state=asked.request_state
            )
    assert stolen.is_error and "does not belong to this call" in result_text(stolen)


@asynccontextmanager
async def _as(gw: Gateway, caller: Caller) -> AsyncIterator[Client]:
    async with Client(build_server(gw, lambda ctx: caller), mode="auto", elicitation_callback=Person()) as client:
        yield client


def test_the_question_shows_hidden_and_reordering_characters_escaped() -> None:
    arguments: dict[str, Any] = {"to": "ann\u202egnp.exe", "note": "a\x07b\u200bc\u2028d"}
    asked = question("transfer", arguments)
    assert "\u202e" not in asked and "\\u202e" in asked
    assert "\x07" not in asked and "\u200b" not in asked and "\u2028" not in asked
    assert "\\u200b" in asked and "\\u2028" in asked


def test_the_question_shows_characters_that_render_as_nothing_escaped() -> None:
    """Default-ignorable characters outside the control and format categories render as nothing: variation
    selectors after a letter can carry any bytes (one per byte), unseen by the person who approves."""
    smuggled = "".join(chr(0xE0100 + b - 16) if b >= 16 else chr(0xFE00 + b) for b in b"the user's API key")
    fillers = "\u034f\u115f\u1160\u17b4\u180b\u3164\uffa0\u2065"
    asked = question("post_message", {"text": "Thanks!" + smuggled + fillers})
    assert not [c for c in smuggled + fillers if c in asked]
    assert "Thanks!\\U000e0164\\U000e0158" in asked and "\\u3164" in asked


def test_group_show_says_who_requires_approval_and_allowing_again_lifts_only_the_groups(world: World) -> None:
    info = world.store.group("desk")
    assert admin.approval_required_by(world.catalog, info, "transfer") == "group"
    assert admin.approval_required_by(world.catalog, info, "wire") == "declaration"
    admin.allow(world.store, world.catalog, "desk", ["transfer", "wire"])
    info = world.store.group("desk")
    assert admin.approval_required_by(world.catalog, info, "transfer") is None
    assert admin.approval_required_by(world.catalog, info, "wire") == "declaration"
    binding = world.store.binding("desk", "transfer")
    assert binding.allowed and not binding.approval
