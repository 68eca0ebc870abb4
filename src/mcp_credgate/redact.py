"""Value-based redaction: every secret of the credential in use, in every encoding an upstream might echo.

Forms hunted: raw, URL-encoded (quote and quote_plus, upper- or lower-case escapes), JSON-escaped (with
"/" as is or escaped; "&<>" as is or as unicode escapes; once, or twice for JSON inside a JSON string), hex,
base64 (standard and URL-safe, with and without padding, and at each of the three byte alignments so a secret
inside a longer base64 string is found too), and the base64 of `username:password` (HTTP Basic).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

from .credential import Credential

__all__ = ["MIN_DERIVED_LENGTH", "NO_REDACTION", "Redactor", "encoded_forms", "redactor_for"]

MIN_DERIVED_LENGTH = 4  # shorter secrets are still redacted raw, but their encodings would match noise


def _b64_forms(data: bytes) -> set[str]:
    """Base64 text of `data` as it appears inside any longer base64 string, for each byte alignment,
    in the standard and the URL-safe alphabet."""
    forms: set[str] = set()
    for lead in range(3):
        text = base64.b64encode(b"\0" * lead + data).decode()
        start = (0, 2, 3)[lead]  # characters that still carry bits of the lead bytes
        stable = text[start : ((lead + len(data)) // 3) * 4]
        if len(stable) >= 8:
            forms.add(stable)
        if lead == 0:
            forms |= {text, text.rstrip("=")}
    return forms | {f.replace("+", "-").replace("/", "_") for f in forms}


def _lower_escapes(text: str) -> str:
    """`a%2Fb` → `a%2fb` (every `%` of a quote() result starts an escape)."""
    head, *rest = text.split("%")
    return head + "".join("%" + part[:2].lower() + part[2:] for part in rest)


def encoded_forms(value: str) -> set[str]:
    """Every text form of one secret value that redaction replaces."""
    forms = {value}
    if len(value) < MIN_DERIVED_LENGTH:
        return forms
    raw = value.encode()
    url = {quote(value, safe=""), quote_plus(value, safe=""), quote(value)}
    json_escaped = json.dumps(value)[1:-1]
    forms |= url | {_lower_escapes(f) for f in url}  # servers may echo `%2f` for `%2F`
    json_forms = {json_escaped, json_escaped.replace("/", "\\/")}  # JSON may escape "/" (PHP's json_encode does)
    # ... and "&", "<", ">" as \u escapes (Go's encoding/json does by default)
    json_forms.add(json_escaped.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))
    # ... and JSON text inside a JSON string (a "stringified" JSON field) escapes them all once more
    forms |= json_forms | {json.dumps(f)[1:-1] for f in json_forms}
    forms |= {raw.hex(), raw.hex().upper()}
    forms |= _b64_forms(raw)
    return {f for f in forms if f}


class Redactor:
    """Replaces secret values in strings and in JSON-like structures.

    Built per call and dropped with it: no cache keeps secret values alive (not even `re`'s pattern
    cache, hence plain `str.replace`, longest form first).
    """

    __slots__ = ("_replacements", "_shortest", "_sources")

    def __init__(self, secrets: Mapping[str, str], extra: Iterable[tuple[str, str]] = ()) -> None:
        self._sources = [(name, value) for name, value in (*secrets.items(), *extra) if value]
        # No form of a value is shorter than the value itself (escapes only lengthen it; base64 and hex take
        # more characters than bytes), so a text shorter than every value cannot hold one and needs no work;
        # the forms are computed on first need.
        self._shortest = min((len(v) for _, v in self._sources), default=0)
        self._replacements: list[tuple[str, str]] | None = None

    def _forms(self) -> list[tuple[str, str]]:
        if self._replacements is None:
            replacements: dict[str, str] = {}
            for fieldname, value in self._sources:
                for form in encoded_forms(value):
                    replacements.setdefault(form, f"[redacted:{fieldname}]")
            self._replacements = sorted(replacements.items(), key=lambda kv: len(kv[0]), reverse=True)
        return self._replacements

    def __bool__(self) -> bool:
        return bool(self._sources)

    def __repr__(self) -> str:
        return f"Redactor({len(self._sources)} values)"

    def text(self, value: str) -> str:
        if not self._sources or len(value) < self._shortest:
            return value
        for form, replacement in self._forms():
            if form in value:
                value = value.replace(form, replacement)
        return value

    def obj(self, value: Any) -> Any:
        """Redact every string (keys included) of a JSON-like value. What JSON does not know (bytes, sets,
        other mappings, objects) becomes text first: it would otherwise be serialised unredacted."""
        if not self._sources:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self._key(k): self.obj(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.obj(v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, (bytes, bytearray)):
            return self.text(bytes(value).decode("utf-8", errors="replace"))
        return self.text(str(value))

    def _key(self, key: Any) -> Any:
        if key is None or isinstance(key, (bool, int, float)):
            return key
        return self.text(key if isinstance(key, str) else str(key))


NO_REDACTION = Redactor({})


def redactor_for(credential: Credential | None) -> Redactor:
    if credential is None:
        return NO_REDACTION
    secrets = credential.secrets()
    if not secrets:
        return NO_REDACTION
    # each non-secret value joined with each secret, `username:password`, so that their base64 (an HTTP
    # Basic header) is redacted too
    pairs = [(field, f"{user}:{pw}") for user in credential.public_values() for field, pw in secrets.items()]
    return Redactor(secrets, pairs)
