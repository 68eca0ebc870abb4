"""An upstream's input-required rounds (2026-07-28), relayed to the agent (contract §7).

An upstream speaking 2026-07-28 puts its questions (sampling, elicitation, roots) inside its result, with a
`requestState` of its own that the client sends back with the answers when it asks again. The agent gets the
questions (shaped by `Relay.for_agent`) and a state of the gateway's instead (`RoundState`): the upstream's state
inside, sealed privately with a key of the store's (the agent can neither read nor change it; any replica opens
it), bound to the caller (group, agent, user), what was asked (a tool, a prompt, a resource) and a hash of its
arguments, expiring, and spent once by its nonce (the store's `spend_nonce`): the upstream's state goes back to the
request it was made for, once. The agent's answers themselves are its own to give: they go to the upstream with
or without a state (but for the gateway's own questions, `GATEWAY_INPUTS`).

A call that needed approval was approved before its first round, and its state says so: its later rounds are not
put to the person again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio.to_thread
import mcp_types as types

from .caller import Caller
from .sealing import seal_private, unseal_private
from .store import Store

__all__ = [
    "GATEWAY_INPUTS",
    "ROUND_SECONDS",
    "UNRELAYED_ROUND",
    "Answers",
    "RoundState",
    "Rounds",
    "arguments_digest",
]

ROUND_SECONDS = 600  # an agent answers a round within this long, or asks afresh
GATEWAY_INPUTS = "credgate_"  # the keys of the gateway's own questions (setup, approval) start so: no upstream's may
UNRELAYED_ROUND = (
    "its round could not be relayed (a key reserved for the gateway's own questions, or a state over 32 KiB)"
)
_KEY_PURPOSE = "relayed round state"
_LONGEST_STATE = 64 * 1024  # an upstream's own state included
_LONGEST_UPSTREAM_STATE = 32 * 1024  # sealed, it grows by a third and then some


def arguments_digest(arguments: Mapping[str, Any] | None) -> str:
    canonical = json.dumps(arguments or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Answers:
    """What a 2026-07-28 retry brings back from its round: the client's responses, by key, and the state."""

    responses: Mapping[str, Any] = field(default_factory=dict)
    state: str | None = None

    def for_upstream(self) -> dict[str, Any] | None:
        """The responses to the upstream's questions (none of the gateway's own), or None when there are none."""
        return {k: v for k, v in self.responses.items() if not k.startswith(GATEWAY_INPUTS)} or None


@dataclass(frozen=True)
class RoundState:
    """Whose request of what a relayed round belongs to, the upstream's own state, and until when it holds."""

    group: str
    agent: str | None
    user: str | None
    asked: str  # the tool's name, or "prompts/get NAME", "resources/read URI"
    arguments: str  # `arguments_digest`
    upstream_state: str | None
    approved: bool
    expires_at: float
    nonce: str

    def fits(self, caller: Caller, asked: str, arguments: Mapping[str, Any] | None) -> bool:
        same = (self.group, self.agent, self.user, self.asked) == (caller.group, caller.agent, caller.user, asked)
        return same and self.arguments == arguments_digest(arguments) and self.expires_at > time.time()


class Rounds:
    """Seals and opens round states with the store's key, and spends them there (in a worker thread)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def begin(
        self,
        caller: Caller,
        asked: str,
        arguments: Mapping[str, Any] | None,
        upstream_round: types.InputRequiredResult,
        approved: bool = False,
    ) -> types.InputRequiredResult | None:
        """The upstream's round as the agent gets it: with a state of the gateway's for the upstream's. None when
        the upstream used a key of the gateway's own questions (its answer would be taken for the gateway's), or
        its state is too long to come back sealed."""
        if any(key.startswith(GATEWAY_INPUTS) for key in upstream_round.input_requests or {}):
            return None
        if len(upstream_round.request_state or "") > _LONGEST_UPSTREAM_STATE:
            return None
        state = RoundState(
            caller.group,
            caller.agent,
            caller.user,
            asked,
            arguments_digest(arguments),
            upstream_round.request_state,
            approved,
            time.time() + ROUND_SECONDS,
            secrets.token_urlsafe(16),
        )
        sealed = await anyio.to_thread.run_sync(self._seal, state)
        return upstream_round.model_copy(update={"request_state": sealed})

    def _seal(self, state: RoundState) -> str:
        return seal_private(asdict(state), self._store.derived_key(_KEY_PURPOSE))

    async def resume(
        self, sealed: str, caller: Caller, asked: str, arguments: Mapping[str, Any] | None
    ) -> RoundState | None:
        """The round `sealed` answers, if the gateway made it for this very request (caller, what, arguments),
        it has not expired, and it is spent now for the first time; else None (changed, another's, used)."""
        return await anyio.to_thread.run_sync(self._resume, sealed, caller, asked, arguments)

    def _resume(
        self, sealed: str, caller: Caller, asked: str, arguments: Mapping[str, Any] | None
    ) -> RoundState | None:
        key = self._store.derived_key(_KEY_PURPOSE)
        fields = unseal_private(sealed, key) if len(sealed) <= _LONGEST_STATE else None
        try:
            state = RoundState(**fields) if fields is not None else None
        except TypeError:
            return None
        if state is None or not state.fits(caller, asked, arguments):
            return None
        return state if self._store.spend_nonce(state.nonce, state.expires_at, time.time()) else None
