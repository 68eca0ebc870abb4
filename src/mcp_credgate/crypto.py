"""Master keys, data keys and AES-256-GCM envelopes.

Layout: each credential has its own random data key (DEK). The DEK is wrapped by a master key;
the wrapped DEK and the master key's id are stored beside the credential, so a key rotation
re-wraps DEKs without touching the values. Every ciphertext carries associated data that names
what it belongs to (credential uid, field, key id), so a blob copied to another row or field
fails to open instead of yielding the wrong secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import MasterKeyError

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "DataKey",
    "Keyring",
    "MasterKey",
    "OpenError",
    "read_key_file",
    "write_key_file",
]

KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_CHECK_PLAINTEXT = b"credgate master key check v1"


class OpenError(Exception):
    """A blob did not open under the key and associated data given. Carries no detail on purpose."""


def _seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def _open(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + 16:
        raise OpenError
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise OpenError from None


class MasterKey:
    """A 32-byte master key. Its repr shows only the key id."""

    __slots__ = ("_aead", "_raw", "key_id")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise MasterKeyError("a master key must be 32 bytes")
        self._raw = raw
        self._aead = AESGCM(raw)
        self.key_id = hmac.new(raw, b"credgate key id v1", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, source: str) -> MasterKey:
        """Parse base64url text (padding optional); `source` says where it came from, for the error."""
        cleaned = text.strip()
        try:
            raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != KEY_BYTES:
            raise MasterKeyError(f"master key from {source} is malformed: expected base64url of 32 random bytes")
        return cls(raw)

    def to_text(self) -> str:
        return base64.urlsafe_b64encode(self._raw).decode()

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    def _aad(self, purpose: str, *parts: str) -> bytes:
        return "|".join(("credgate", purpose, "v1", self.key_id, *parts)).encode()

    def check_blob(self) -> bytes:
        """A blob stored in the database that only this key opens: proves key and store belong together."""
        return _seal(self._aead, _KEY_CHECK_PLAINTEXT, self._aad("keycheck"))

    def opens_check(self, blob: bytes) -> bool:
        try:
            return _open(self._aead, blob, self._aad("keycheck")) == _KEY_CHECK_PLAINTEXT
        except OpenError:
            return False

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for another purpose (signing dashboard sessions…), bound to this master key."""
        return hmac.new(self._raw, f"credgate derived key v1|{purpose}".encode(), hashlib.sha256).digest()

    def wrap(self, dek: bytes, credential_uid: str) -> bytes:
        return _seal(self._aead, dek, self._aad("dek", credential_uid))

    def unwrap(self, blob: bytes, credential_uid: str) -> DataKey:
        return DataKey(_open(self._aead, blob, self._aad("dek", credential_uid)))


class DataKey:
    """One credential's data key; encrypts that credential's field values."""

    __slots__ = ("_aead", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._aead = AESGCM(raw)

    @classmethod
    def generate(cls) -> DataKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @property
    def raw(self) -> bytes:
        return self._raw

    def __repr__(self) -> str:
        return "DataKey(…)"

    @staticmethod
    def _aad(credential_uid: str, field: str) -> bytes:
        return f"credgate|value|v1|{credential_uid}|{field}".encode()

    def encrypt(self, credential_uid: str, field: str, value: str) -> bytes:
        return _seal(self._aead, value.encode(), self._aad(credential_uid, field))

    def decrypt(self, credential_uid: str, field: str, blob: bytes) -> str:
        return _open(self._aead, blob, self._aad(credential_uid, field)).decode()


class Keyring:
    """The master keys this process holds: the given ones (the primary first: CREDGATE_MASTER_KEY's list,
    or the key file) and the next one of a rotation (master.key.new)."""

    def __init__(
        self,
        primary: MasterKey,
        others: Iterable[MasterKey] = (),
        given: Iterable[MasterKey] | None = None,
        next_key: MasterKey | None = None,
    ) -> None:
        self.primary = primary
        self.given = tuple(given) if given is not None else (primary,)
        self.next_key = next_key
        self.keys = {k.key_id: k for k in (primary, *others, *self.given, *([next_key] if next_key else []))}

    def get(self, key_id: str) -> MasterKey | None:
        return self.keys.get(key_id)

    def __repr__(self) -> str:
        return f"Keyring(primary={self.primary.key_id!r}, keys={sorted(self.keys)!r})"


def write_key_file(path: Path, key: MasterKey) -> None:
    """Create the key file 0600 from the first byte on (never chmod-ed after the content is in)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key.to_text() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: Path) -> MasterKey | None:
    """The key in the file; None when there is no file. Any other OSError (a permission, an I/O error) is the
    caller's to name: it is no fault of the key."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise MasterKeyError(f"master key file {path} is not a key (not text)") from None
    return MasterKey.from_text(text, str(path))
