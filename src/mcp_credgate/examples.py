"""Handlers of the example tools in the repository's `tools.d/` (they work offline).

They show how to write a tool, so they return nothing computed from a secret: not the value, nor its hash,
prefix, length or masked form (a short unsalted hash of a password is cracked by a word list).
"""

from __future__ import annotations

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
    """Pretend to sign in with a username and password. A real handler sends the password to its service here;
    what it returns says that it had one, and nothing about its value."""
    return {
        "signed_in_as": credential["username"],
        "password_received": "password" in credential,
        "scope": args.get("scope", "read"),
    }
