"""Small records that travel through a client and come back (a sign-in request through the consent page, an
approval or an upstream's state through a 2026-07-28 round), with a key of the store's (`Store.derived_key`), so
that nothing in them can be changed and any replica can read them: `seal`ed, JSON in base64url and an
HMAC-SHA256 of it (the client may read it); `seal_private`, encrypted and authenticated with AES-GCM (it may not:
an upstream's state is the upstream's, and may hold what the upstream holds)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["seal", "seal_private", "unseal", "unseal_private"]

_NONCE_BYTES = 12


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


def seal_private(fields: dict[str, Any], key: bytes) -> str:
    nonce = os.urandom(_NONCE_BYTES)
    return _b64(nonce + AESGCM(key).encrypt(nonce, json.dumps(fields, separators=(",", ":")).encode(), None))


def unseal_private(sealed: str, key: bytes) -> dict[str, Any] | None:
    """The fields, if `sealed` was made by `seal_private` with `key`; else None."""
    try:
        blob = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        fields = json.loads(AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], None))
    except (ValueError, InvalidTag):
        return None
    return fields if isinstance(fields, dict) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
