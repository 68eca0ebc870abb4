"""An upstream's input-required rounds relayed to the agent: the gateway's state for them (`rounds.Rounds`).

The whole relay, with real clients and a real 2026-07-28 upstream, is in tests/test_front.py (section 5b)."""

from __future__ import annotations

import base64
import json
import time

import mcp_types as types
import pytest

from mcp_credgate.caller import Caller
from mcp_credgate.credential import Credential
from mcp_credgate.handlers.upstream import shown_to_agent
from mcp_credgate.redact import redactor_for
from mcp_credgate.relay import Relay
from mcp_credgate.rounds import Answers, Rounds
from mcp_credgate.store import Store

pytestmark = pytest.mark.anyio

ANN = Caller("g", "ann", "ann-user")
UPSTREAM_STATE = "upstream-state-with-what-the-upstream-holds-s3cr3t"


def upstream_round(keys: tuple[str, ...] = ("confirm",)) -> types.InputRequiredResult:
    ask = types.ElicitRequest(
        params=types.ElicitRequestFormParams(message="Sure?", requested_schema={"type": "object", "properties": {}})
    )
    return types.InputRequiredResult(input_requests=dict.fromkeys(keys, ask), request_state=UPSTREAM_STATE)


async def begun(rounds: Rounds, caller: Caller = ANN, asked: str = "t", arguments: dict[str, int] | None = None) -> str:
    asking = await rounds.begin(caller, asked, arguments or {"n": 1}, upstream_round())
    assert asking is not None and asking.request_state is not None
    return asking.request_state


async def test_the_agent_gets_the_upstreams_questions_with_a_state_it_cannot_read(store: Store) -> None:
    rounds = Rounds(store)
    asking = await rounds.begin(ANN, "t", {"n": 1}, upstream_round())

    assert asking is not None and list(asking.input_requests or {}) == ["confirm"]
    state = asking.request_state
    assert state is not None and UPSTREAM_STATE not in state
    assert b"s3cr3t" not in base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))


async def test_the_state_brings_the_upstreams_own_back_to_the_same_request_once(store: Store) -> None:
    rounds = Rounds(store)
    state = await begun(rounds)

    resumed = await rounds.resume(state, ANN, "t", {"n": 1})
    again = await rounds.resume(state, ANN, "t", {"n": 1})

    assert resumed is not None and resumed.upstream_state == UPSTREAM_STATE and not resumed.approved
    assert again is None  # spent


@pytest.mark.parametrize(
    ("caller", "asked", "arguments"),
    [
        (Caller("g", "bob", "ann-user"), "t", {"n": 1}),  # another agent
        (Caller("g", "ann", "bob-user"), "t", {"n": 1}),  # another person
        (Caller("h", "ann", "ann-user"), "t", {"n": 1}),  # another group
        (ANN, "u", {"n": 1}),  # another tool
        (ANN, "t", {"n": 2}),  # other arguments
    ],
)
async def test_a_state_answers_no_other_request(
    store: Store, caller: Caller, asked: str, arguments: dict[str, int]
) -> None:
    rounds = Rounds(store)
    state = await begun(rounds)

    assert await rounds.resume(state, caller, asked, arguments) is None
    assert await rounds.resume(state, ANN, "t", {"n": 1}) is not None  # the refusal did not spend it


async def test_a_changed_foreign_or_expired_state_answers_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = Rounds(store)
    state = await begun(rounds)
    flipped = state[:10] + ("A" if state[10] != "A" else "B") + state[11:]
    forged = base64.urlsafe_b64encode(json.dumps({"group": "g"}).encode()).decode()

    assert await rounds.resume(flipped, ANN, "t", {"n": 1}) is None
    assert await rounds.resume(forged, ANN, "t", {"n": 1}) is None
    assert await rounds.resume("x" * 100_000, ANN, "t", {"n": 1}) is None
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    assert await rounds.resume(state, ANN, "t", {"n": 1}) is None


async def test_an_upstream_may_not_ask_under_a_key_of_the_gateways_own_questions(store: Store) -> None:
    asking = await Rounds(store).begin(ANN, "t", {}, upstream_round(("confirm", "credgate_approval")))

    assert asking is None


async def test_an_upstream_state_too_long_to_come_back_sealed_is_not_relayed(store: Store) -> None:
    rounds = Rounds(store)
    longest = upstream_round().model_copy(update={"request_state": "s" * 32 * 1024})
    too_long = upstream_round().model_copy(update={"request_state": "s" * (32 * 1024 + 1)})

    asking = await rounds.begin(ANN, "t", {}, longest)
    assert asking is not None and await rounds.resume(asking.request_state or "", ANN, "t", {}) is not None
    assert await rounds.begin(ANN, "t", {}, too_long) is None


def test_the_upstream_gets_the_agents_answers_but_never_those_to_the_gateways_own_questions() -> None:
    accept = types.ElicitResult(action="accept")
    answers = Answers({"confirm": accept, "credgate_approval": accept, "credgate_setup": accept}, "state")

    assert answers.for_upstream() == {"confirm": accept}
    assert Answers({"credgate_setup": accept}).for_upstream() is None


# -- what a hostile upstream's round may carry to the agent --------------------------------------------------


async def test_an_upstreams_round_reaches_the_agent_with_no_secret_in_its_meta_or_roots_request(store: Store) -> None:
    """Everything of an upstream's round that the agent gets (`shown_to_agent`, then `Rounds.begin`, as
    `UpstreamPool.call` and `Front._in_rounds` do) is redacted like any other message of the upstream's: the
    result's `_meta` and a roots/list request's `_meta` too, not only the sampling and elicitation params; a
    round whose question key holds a secret is refused (the agent's answers come back by key)."""
    secret = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    relay = Relay("up", redactor_for(Credential("c", "t", {"token": secret}, frozenset({"token"}))))
    ask = types.ElicitRequest(
        params=types.ElicitRequestFormParams(message="Sure?", requested_schema={"type": "object", "properties": {}})
    )

    def hostile(key: str) -> types.InputRequiredResult:
        return types.InputRequiredResult.model_validate(
            {
                "inputRequests": {
                    key: ask.model_dump(mode="json", by_alias=True, exclude_none=True),
                    "roots": {"method": "roots/list", "params": {"_meta": {"leak": secret}}},
                },
                "requestState": f"upstream-state-{secret}",
                "_meta": {"leak": secret},
            }
        )

    shown = shown_to_agent(hostile("confirm"), relay)
    by_key = shown_to_agent(hostile(f"key-{secret}"), relay)
    assert isinstance(shown, types.InputRequiredResult)
    asking = await Rounds(store).begin(ANN, "t", {}, shown)

    assert asking is not None and sorted(asking.input_requests or {}) == ["confirm", "roots"]
    assert secret not in asking.model_dump_json(by_alias=True, exclude_none=True)
    assert isinstance(by_key, str) and secret not in by_key
    resumed = await Rounds(store).resume(asking.request_state or "", ANN, "t", {})
    assert resumed is not None and resumed.upstream_state == f"upstream-state-{secret}"  # back to the upstream whole
