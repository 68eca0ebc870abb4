"""A 2026-07-28 agent's call to an upstream of the handshake protocols, parked between rounds.

Such an upstream asks its questions (sampling, elicitation, roots) as requests in the middle of a call, and a
2026-07-28 agent has no channel for a request then. So the call goes on in a task of the gateway's own; each
question ends the agent's request as an input-required round, and the agent's retry brings the answer to the
waiting upstream and waits again, for the result or the next question. A parked call lives in the process that
runs it (a retry that reaches another replica finds nothing there: the agent calls again), waits for an answer at
most ROUND_SECONDS (then the upstream gets an error answer), and is forgotten once its result has been taken or
no one came for it in that time.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import mcp_types as types
from pydantic import BaseModel, ValidationError

from ..isolation import UpstreamScope

__all__ = ["ROUND_SECONDS", "ParkedCall", "Question"]

ROUND_SECONDS = 600.0
_ModelT = TypeVar("_ModelT", bound=BaseModel)


@dataclass(eq=False)
class Question:
    """One of the upstream's requests, waiting for the agent's answer."""

    key: str
    request: types.InputRequest
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: Any = None


class ParkedCall:
    """The upstream call, its questions one at a time, and its end (a result, or an error)."""

    def __init__(
        self, caller: tuple[str, str | None], scope: UpstreamScope, declared: types.ClientCapabilities | None
    ) -> None:
        self.id = secrets.token_urlsafe(32)  # never leaves the gateway but sealed in the agent's round state
        self.caller = caller  # (group, agent): only their retry answers it
        self.scope = scope
        self.declared = declared
        self.touched = time.monotonic()
        self._asked, self._waiting = anyio.create_memory_object_stream[Question](1)
        self._question: Question | None = None
        self._count = 0
        self._ended = anyio.Event()
        self._result: types.CallToolResult | BaseException | None = None

    # -- the upstream's side (the relay, in the call's task) -----------------------------------

    async def ask(
        self, request: types.InputRequest, result_type: type[_ModelT], wanted: types.ClientCapabilities
    ) -> _ModelT | types.ErrorData:
        """Put a question to the agent at its next round; its answer, or an error when none came in time (or its
        client declared no way to answer it)."""
        if not _declares(self.declared, wanted):
            return types.ErrorData(code=types.METHOD_NOT_FOUND, message="the agent's client does not offer it")
        self._count += 1
        question = Question(f"upstream_{self._count}", request)
        await self._asked.send(question)
        with anyio.move_on_after(ROUND_SECONDS):
            await question.answered.wait()
        if not question.answered.is_set():
            return types.ErrorData(code=types.INVALID_REQUEST, message="the agent did not answer in time")
        try:
            dumped = question.answer.model_dump(mode="json", by_alias=True, exclude_none=True)
            return result_type.model_validate(dumped)
        except (AttributeError, ValidationError):
            return types.ErrorData(code=types.INVALID_PARAMS, message="the agent's answer is not of the kind asked")

    def end(self, outcome: types.CallToolResult | BaseException) -> None:
        self._result = outcome
        self._ended.set()

    # -- the agent's side (its requests, round after round) -------------------------------------

    def answer(self, responses: dict[str, Any] | None) -> None:
        """The agent's retry: the answer to the question of the last round, if it gave one."""
        self.touched = time.monotonic()
        question, self._question = self._question, None
        if question is not None and responses and question.key in responses:
            question.answer = responses[question.key]
            question.answered.set()

    async def next(self) -> Question | types.CallToolResult:
        """The next question, or the call's result (an error of the call leaves as itself)."""
        async with anyio.create_task_group() as tg:
            found: list[Question] = []

            async def question() -> None:
                found.append(await self._waiting.receive())
                tg.cancel_scope.cancel()

            async def ended() -> None:
                await self._ended.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(question)
            tg.start_soon(ended)
        self.touched = time.monotonic()
        if found:
            self._question = found[0]
            return found[0]
        if isinstance(self._result, BaseException):
            raise self._result
        assert self._result is not None
        return self._result

    @property
    def stale(self) -> bool:
        """No agent came back for it in a round's time."""
        return time.monotonic() - self.touched > ROUND_SECONDS


def _declares(declared: types.ClientCapabilities | None, wanted: types.ClientCapabilities) -> bool:
    """Whether the agent's client declared each capability `wanted` names (sampling, elicitation, roots)."""
    return declared is not None and all(
        getattr(declared, name) is not None
        for name in ("sampling", "elicitation", "roots")
        if getattr(wanted, name) is not None
    )
