"""Small signed records that travel through a client and come back (a sign-in request through the consent
page, an approval through a 2026-07-28 round): JSON, base64url, and an HMAC-SHA256 of it with a key of the
store's (`Store.derived_key`), so that nothing in them can be changed and any replica can read them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

__all__ = ["seal", "unseal"]


def seal(fields: dict[str, Any], key: bytes) -> str:
    body = _b64(json.dumps(fields, separators=(",", ":")).encode())
    return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def unseal(sealed: str, key: bytes) -> dict[str, Any] | None:
    """The fields, if `sealed` was made by `seal` with `key`; else None."""
    body, _, signature = sealed.partition(".")
    expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return None
    try:
        fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
