"""Approvals (contract §7): before a call of a tool that requires it runs, the person behind the agent is asked,
through the agent's client, with the tool and its arguments.

On the handshake protocols the question is a form elicitation sent inside the call: its answer belongs to that
call by construction. On 2026-07-28 it is an input-required round: the result carries the question and a state
credgate signs (`ApprovalState`), bound to the caller (group, agent, user), the tool, a hash of the arguments and
an expiry, with a nonce the store spends once; the retry brings the answer and the state back, and a state for
another call or caller, seen before, changed or expired, approves nothing.

A client that answers elicitations by itself can approve by itself: an approval proves what the agent's client
said, not that a person read it (the README's threat model says so).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import mcp_types as types

from .caller import Caller
from .rounds import arguments_digest
from .sealing import seal, unseal
from .store import Store
from .visible import shown_escaped

__all__ = [
    "APPROVAL_INPUT",
    "APPROVAL_SECONDS",
    "ApprovalState",
    "approval_form",
    "question",
]

APPROVAL_INPUT = "credgate_approval"  # the key of the question among a 2026-07-28 round's input requests
APPROVAL_SECONDS = 300
_KEY_PURPOSE = "approval state"


def question(tool: str, arguments: dict[str, Any]) -> str:
    shown = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    return f"Approve this call? The agent asks to run the tool {tool} with the arguments {shown_escaped(shown)}"


def approval_form(tool: str, arguments: dict[str, Any]) -> types.ElicitRequestFormParams:
    """The question as a form elicitation with no fields: to accept is to approve."""
    return types.ElicitRequestFormParams(
        message=question(tool, arguments), requested_schema={"type": "object", "properties": {}}
    )


@dataclass(frozen=True)
class ApprovalState:
    """What a 2026-07-28 approval round's state says: whose call of what it asked about, until when."""

    group: str
    agent: str | None
    user: str | None
    tool: str
    arguments: str  # `arguments_digest`
    expires_at: float
    nonce: str

    @classmethod
    def asking(cls, caller: Caller, tool: str, arguments: dict[str, Any]) -> ApprovalState:
        expires_at = time.time() + APPROVAL_SECONDS
        digest = arguments_digest(arguments)
        return cls(caller.group, caller.agent, caller.user, tool, digest, expires_at, secrets.token_urlsafe(16))

    def seal(self, store: Store) -> str:
        return seal(asdict(self), store.derived_key(_KEY_PURPOSE))

    @classmethod
    def approves(cls, sealed: str | None, store: Store, caller: Caller, tool: str, arguments: dict[str, Any]) -> bool:
        """Whether `sealed` is a state credgate made for this very call (caller, tool, arguments), not expired,
        and spent now for the first time."""
        fields = unseal(sealed, store.derived_key(_KEY_PURPOSE)) if sealed and len(sealed) < 4096 else None
        try:
            state = cls(**fields) if fields is not None else None
        except TypeError:
            return False
        if state is None or state.expires_at <= time.time():
            return False
        same = (state.group, state.agent, state.user, state.tool) == (caller.group, caller.agent, caller.user, tool)
        if not same or state.arguments != arguments_digest(arguments):
            return False
        return store.spend_nonce(state.nonce, state.expires_at, time.time())
