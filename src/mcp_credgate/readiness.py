"""Is this tool ready for this group? One pure answer, asked by every surface.

`tools/list` (the not-set-up note), `credgate group show`, the dashboard and `tools/call` (before it decrypts
anything) all call `verdict`, with what the store knows of the bound credential without decrypting it: its
type, its field names and the OAuth2 token's expiry (kept as clear metadata: an expiry is not a secret).
What only decryption can tell (a value that no longer opens or no longer matches its pattern) is the call's
to find, and it answers `credential_invalid` then, as the verdict's `invalid` does.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from .declarations import CredentialSpec, Tool, Upstream

__all__ = [
    "READY_STATUSES",
    "REFRESH_MARGIN",
    "Status",
    "StoredCredential",
    "TokenCondition",
    "Verdict",
    "credential_verdict",
    "parse_time",
    "token_condition",
    "verdict",
]

Status = Literal["ready", "needs_credential", "incomplete", "invalid", "expired", "no_credential_needed", "undeclared"]
READY_STATUSES: frozenset[Status] = frozenset({"ready", "no_credential_needed"})
TokenCondition = Literal["fresh", "refresh", "expired"]
REFRESH_MARGIN = 60.0  # seconds: a token that expires within this is refreshed before use


class StoredCredential(Protocol):
    """What the store can tell of a credential without decrypting it."""

    @property
    def type(self) -> str: ...

    @property
    def fields(self) -> Collection[str]: ...

    @property
    def expires_at(self) -> str | None: ...


@dataclass(frozen=True)
class Verdict:
    status: Status
    missing_fields: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.status in READY_STATUSES


_NO_CREDENTIAL_NEEDED = Verdict("no_credential_needed")
_READY = Verdict("ready")


def verdict(tool: Tool | Upstream | None, credential: StoredCredential | None, now: datetime) -> Verdict:
    """The status of a tool a group allows, given the credential bound to it (None: nothing is bound)."""
    if tool is None:
        return Verdict("undeclared")
    spec = tool.credential
    if spec is None:
        return _NO_CREDENTIAL_NEEDED
    if credential is None:
        return Verdict("needs_credential", tuple(spec.missing_fields(())))
    return credential_verdict(spec, credential, now)


def credential_verdict(spec: CredentialSpec, credential: StoredCredential, now: datetime) -> Verdict:
    """The status of a bound credential for a declared credential type."""
    if credential.type != spec.type:
        return Verdict("invalid")
    missing = spec.missing_fields(credential.fields)
    if missing:
        return Verdict("incomplete", tuple(missing))
    if spec.oauth is not None:
        fields = credential.fields
        condition = token_condition(credential.expires_at, "refresh_token" in fields, "refresh_error" in fields, now)
        if condition == "expired":
            return Verdict("expired")
    return _READY


def token_condition(
    expires_at: str | None, can_refresh: bool, refused: bool, now: datetime, margin: float = REFRESH_MARGIN
) -> TokenCondition:
    """`fresh`: use the access token as it is; `refresh`: refresh it first; `expired`: it cannot be used.
    `can_refresh`: a refresh token is stored; `refused`: the provider refused it (`refresh_error`)."""
    expires = parse_time(expires_at or "")
    if expires is None:
        return "fresh"  # the provider gave no lifetime: the token is used until an API refuses it
    remaining = (expires - now).total_seconds()
    if remaining > margin:
        return "fresh"
    if refused:
        return "expired"  # refused once (invalid_grant): the same answer until new tokens are stored
    if can_refresh:
        return "refresh"
    return "fresh" if remaining > 0 else "expired"


def parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
