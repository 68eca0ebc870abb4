"""Setup links (contract §7): the page where one call's missing credential is fixed, for that call alone.

A link is single use and expires in minutes; the store keeps its hash, so the link itself is the key to the
page where no one signs in (the stdio gateway's own page server, on loopback). Served over HTTP, the page
also needs the right person's sign-in (an admin; for a personal tool, its user). The link's elicitation id is
the public name a client knows it by: once the page has saved, the client that was sent the link hears
`notifications/elicitation/complete` for it, if it is still connected to this process (`Completions`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import anyio.from_thread

from .store import SetupLinkRecord, Store

__all__ = ["LINK_SECONDS", "MAX_WAITING", "Completions", "FixedPages", "IssuedLink", "PageServer", "SetupLinks"]

LINK_SECONDS = 600
MAX_WAITING = 10_000  # clients waiting to hear that their link was used
log = logging.getLogger("credgate.setup_links")


@dataclass(frozen=True)
class IssuedLink:
    url: str
    elicitation_id: str


_Notify = Callable[[], Coroutine[Any, Any, None]]


class PageServer(Protocol):
    """Where setup links point. `own`: the gateway serves their pages itself, where the link alone opens its
    page (the stdio gateway, unless a public URL names a dashboard); its links stand in for a warning's
    `setup_url` too, which would otherwise name a page nobody serves."""

    @property
    def own(self) -> bool: ...

    @property
    def listening(self) -> str | None:
        """Its base URL once it serves."""

    async def base_url(self) -> str: ...


@dataclass(frozen=True)
class FixedPages:
    """The pages of a server that is up already: the dashboard of `serve --http`, or one a public URL names."""

    url: str
    own: bool = False

    @property
    def listening(self) -> str | None:
        return self.url

    async def base_url(self) -> str:
        return self.url


class Completions:
    """Who to tell when a link's page has saved: elicitation id → an async notice, kept until the link expires,
    `most` of them (the oldest dropped first: an agent calling in a loop fills no memory). In process only: a
    link opened on another replica is not heard of here (the client's retry works all the same)."""

    def __init__(self, clock: Callable[[], float] = time.time, most: int = MAX_WAITING) -> None:
        self._clock = clock
        self._most = most
        self._waiting: dict[str, tuple[float, _Notify]] = {}  # in the order given, which is that of expiry
        self._lock = threading.Lock()  # `complete` runs in the pages' worker threads

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, elicitation_id: str, notify: _Notify) -> None:
        now = self._clock()
        with self._lock:
            while self._waiting:
                oldest = next(iter(self._waiting))
                if self._waiting[oldest][0] > now and len(self._waiting) < self._most:
                    break
                del self._waiting[oldest]
            self._waiting[elicitation_id] = (now + LINK_SECONDS, notify)

    def complete(self, elicitation_id: str) -> None:
        """Send the notice, from a worker thread of the event loop that waits for it (the pages run there)."""
        with self._lock:
            found = self._waiting.pop(elicitation_id, None)
        if found is None:
            return
        try:
            anyio.from_thread.run(found[1])
        except Exception as exc:  # the client went away: nobody to tell
            log.debug("elicitation %s completed, not notified: %s", elicitation_id, type(exc).__name__)


class SetupLinks:
    def __init__(
        self, store: Store, completions: Completions | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.completions = completions if completions is not None else Completions(clock)
        self._clock = clock

    def issue(self, base_url: str, group: str, tool: str, user: str | None) -> IssuedLink:
        """A new link to set up `tool` for `group` (a personal tool: for `user`), on the page server at `base_url`."""
        token, elicitation_id = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
        self.store.add_setup_link(_hash(token), elicitation_id, group, tool, user, self._clock() + LINK_SECONDS)
        return IssuedLink(f"{base_url.rstrip('/')}/setup/{token}", elicitation_id)

    def find(self, token: str) -> SetupLinkRecord | None:
        """The link, used or not; None if it is unknown or expired."""
        record = self.store.setup_link(_hash(token))
        return record if record is not None and record.expires_at > self._clock() else None

    def use(self, token: str) -> bool:
        """Spend the link (True for the one caller that did) and tell its client, if it waits here."""
        record = self.spend(token)
        if record is None:
            return False
        self.completions.complete(record.elicitation_id)
        return True

    def spend(self, token: str) -> SetupLinkRecord | None:
        """Spend the link without telling its client yet (`Completions.complete` once saved): its record for the
        one caller that did, None if it is unknown, used or expired."""
        record = self.store.setup_link(_hash(token))
        if record is None or not self.store.use_setup_link(_hash(token), self._clock()):
            return None
        return record


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
