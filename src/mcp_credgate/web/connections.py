"""OAuth2 connections started from the dashboard, each waiting (minutes at most) for the provider's redirect."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .. import oauth

PENDING_SECONDS = 600


@dataclass
class PendingConnection:
    """An OAuth2 connection started from the dashboard, waiting for the provider's redirect."""

    request: oauth.AuthorizationRequest
    name: str
    type: str
    client: dict[str, str] = field(repr=False)  # client id and secret for the code exchange
    given: dict[str, str] = field(repr=False)  # what the form gave, stored with the tokens
    uid: str | None  # the credential reconnected (None: a new one)
    bind_to: tuple[str, str] | None  # (group, tool) for the setup page
    owner: str | None = None  # a personal credential's user (then `bind_to` is that user's personal binding)
    link: str | None = None  # the setup link it was started from: spent once connected
    started: float = field(default_factory=time.monotonic)


class PendingConnections:
    """The connections under way, by their `state`; each is taken once, and forgotten after `PENDING_SECONDS`.
    Pages run in worker threads: a lock keeps the table whole."""

    def __init__(self) -> None:
        self._by_state: dict[str, PendingConnection] = {}
        self._lock = threading.Lock()

    def add(self, connection: PendingConnection) -> None:
        now = time.monotonic()
        with self._lock:
            self._by_state = {k: v for k, v in self._by_state.items() if now - v.started < PENDING_SECONDS}
            self._by_state[connection.request.state] = connection

    def take(self, state: str) -> PendingConnection | None:
        """The connection `state` names, if it is known and still fresh; it is forgotten either way."""
        with self._lock:
            pending = self._by_state.pop(state, None) if state else None
        if pending is None or time.monotonic() - pending.started > PENDING_SECONDS:
            return None
        return pending
