"""Handlers of the example tools in the repository's `tools.d/` (they work offline)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def echo(args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    """Return the text it was given."""
    return str(args.get("text", ""))


def utc_now(args: Mapping[str, Any], credential: Mapping[str, str]) -> dict[str, str]:
    """The current time in UTC, ISO 8601."""
    return {"utc": datetime.now(UTC).isoformat(timespec="seconds")}


def account_login(args: Mapping[str, Any], credential: Mapping[str, str]) -> dict[str, Any]:
    """Pretend to sign in with a username and password; shows the handler got both, never the password."""
    password = credential["password"]
    return {
        "signed_in_as": credential["username"],
        "password_fingerprint": hashlib.sha256(password.encode()).hexdigest()[:12],
        "scope": args.get("scope", "read"),
    }
