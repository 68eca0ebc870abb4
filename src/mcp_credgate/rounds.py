"""An upstream's input-required rounds (2026-07-28), relayed to the agent (contract §7).

An upstream speaking 2026-07-28 puts its questions (sampling, elicitation, roots) inside its result, with a
`requestState` of its own that the client sends back with the answers when it calls again. The agent gets the
questions (shaped by `Relay.for_agent`) and a state of the gateway's instead (`RoundState`): the upstream's state
inside, sealed privately with a key of the store's (the agent can neither read nor change it; any replica opens
it), bound to the caller (group, agent, user), the tool and a hash of its arguments, expiring, and spent once by
its nonce (the store's `spend_nonce`): the answers go back to the call that was asked, once.

A call that needed approval was approved before its first round, and its state says so: its later rounds are not
put to the person again.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from .approvals import arguments_digest
from .caller import Caller
from .sealing import seal_private, unseal_private
from .store import Store

__all__ = ["ROUND_SECONDS", "RoundState"]

ROUND_SECONDS = 600  # an agent answers a round within this long, or calls afresh
_KEY_PURPOSE = "relayed round state"
_LONGEST_STATE = 64 * 1024  # an upstream's own state included


@dataclass(frozen=True)
class RoundState:
    """Whose call of what a relayed round belongs to, the upstream's own state, and until when it holds."""

    group: str
    agent: str | None
    user: str | None
    tool: str
    arguments: str  # `arguments_digest`
    upstream_state: str | None
    approved: bool
    expires_at: float
    nonce: str

    @classmethod
    def begun(
        cls, caller: Caller, tool: str, arguments: dict[str, Any], upstream_state: str | None, approved: bool
    ) -> RoundState:
        return cls(
            caller.group,
            caller.agent,
            caller.user,
            tool,
            arguments_digest(arguments),
            upstream_state,
            approved,
            time.time() + ROUND_SECONDS,
            secrets.token_urlsafe(16),
        )

    def seal(self, store: Store) -> str:
        return seal_private(asdict(self), store.derived_key(_KEY_PURPOSE))

    @classmethod
    def resumed(
        cls, sealed: str, store: Store, caller: Caller, tool: str, arguments: dict[str, Any]
    ) -> RoundState | None:
        """The round `sealed` closes, if the gateway made it for this very call (caller, tool, arguments), it
        has not expired, and it is spent now for the first time; else None (changed, another call's, used)."""
        fields = unseal_private(sealed, store.derived_key(_KEY_PURPOSE)) if len(sealed) <= _LONGEST_STATE else None
        try:
            state = cls(**fields) if fields is not None else None
        except TypeError:
            return None
        if state is None or state.expires_at <= time.time():
            return None
        same = (state.group, state.agent, state.user, state.tool) == (caller.group, caller.agent, caller.user, tool)
        if not same or state.arguments != arguments_digest(arguments):
            return None
        return state if store.spend_nonce(state.nonce, state.expires_at, time.time()) else None
