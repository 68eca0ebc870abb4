"""The swap rules of egress injection (issue 27): where the proxy puts real values in place of placeholders on the
way out, where it puts placeholders back in place of real values on the way in, and where it looks for a
placeholder sent toward a host that was not declared.

On the way out (toward a declared host only) a placeholder is replaced

- in every header value, `Authorization: Basic` included (its `user:pass` is decoded, swapped and encoded again);
- in the query string: each name and value percent-decoded, and encoded again where a placeholder was found
  (the rest of the target is left byte for byte as it came);
- in the top-level fields of a JSON object body that the rules name (`body_fields`), and nowhere else in a body:
  a free-text body swap would let anything the declared API echoes, stores or forwards carry the real value out.

On the way in every real value is replaced by its placeholder again, in header values and in the body, so that an
API that echoes the token cannot hand it to the upstream.

Nothing here logs, and `EgressRules`'s repr names the placeholders' count, never a value.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote

__all__ = ["EgressRules", "placeholder_field", "restore", "swap_body", "swap_header", "swap_target"]


@dataclass(frozen=True)
class EgressRules:
    """What the proxy of one upstream does.

    `swaps`: placeholder → real value. `hosts`: the declared hosts, lowercase, matched exactly (`api.example.com`,
    or `api.example.com:8443` for that port only), reached over TLS (CONNECT). `plain_hosts`: `host:port`s to which
    a plain http:// request is swapped too (the real value then crosses the network in clear: declared one by one,
    with the port). `other`: what becomes of a CONNECT to any other host (`deny`: 403; `tunnel`: a raw TCP tunnel
    the proxy cannot see inside). `body_fields`: the top-level fields of a JSON object body in which a placeholder
    is swapped (none by default: no body swap at all)."""

    swaps: Mapping[str, str] = field(repr=False)
    hosts: frozenset[str]
    other: Literal["deny", "tunnel"] = "deny"
    body_fields: frozenset[str] = frozenset()
    plain_hosts: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if any(not placeholder or not real for placeholder, real in self.swaps.items()):
            raise ValueError("a placeholder and its real value must both be non-empty")
        if any(host != host.lower() or not host for host in self.hosts | self.plain_hosts):
            raise ValueError("declared hosts are lowercase and non-empty")
        if self.other not in ("deny", "tunnel"):
            raise ValueError('egress.other is "deny" or "tunnel"')

    def __repr__(self) -> str:
        return (
            f"EgressRules(swaps=<{len(self.swaps)} placeholders>, hosts={sorted(self.hosts)!r}, "
            f"other={self.other!r}, body_fields={sorted(self.body_fields)!r}, plain_hosts={sorted(self.plain_hosts)!r})"
        )

    def declares(self, host: str, port: int) -> bool:
        """Whether `host:port` is declared for TLS (CONNECT)."""
        name = host.lower().removesuffix(".")
        return name in self.hosts or f"{name}:{port}" in self.hosts

    def declares_plain(self, host: str, port: int) -> bool:
        """Whether `host:port` is declared for plain http://."""
        return f"{host.lower().removesuffix('.')}:{port}" in self.plain_hosts


def _replace(text: str, pairs: Iterable[tuple[str, str]]) -> str:
    # longest first: a placeholder that holds another is replaced whole
    for old, new in sorted(pairs, key=lambda pair: -len(pair[0])):
        text = text.replace(old, new)
    return text


def _has_any(text: str, needles: Iterable[str]) -> bool:
    return any(needle in text for needle in needles)


_DECODED_AT_ONCE = 65536  # characters percent-decoded in one go (one C call holds the GIL throughout)


def _has_any_decoded(text: str, needles: list[str]) -> bool:
    """Whether `text` percent-decoded (`+` as a space) holds one of `needles`. Decoded a window at a time, the
    windows overlapping by as much as an encoded needle can take: decoding megabytes in one call held the GIL,
    and the gateway's event loop with it, for seconds, even from a thread."""
    if "%" not in text and "+" not in text:
        return False
    overlap = 3 * max(map(len, needles), default=0)
    for start in range(0, len(text), _DECODED_AT_ONCE):
        if _has_any(unquote(text[start : start + _DECODED_AT_ONCE + overlap].replace("+", " ")), needles):
            return True
    return False


def _basic(value: str) -> str | None:
    """The decoded `user:pass` of a Basic authorization value, or None for anything else."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        return base64.b64decode(token.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return None


def swap_header(rules: EgressRules, name: bytes, value: bytes) -> bytes:
    """A header value with every placeholder replaced by its real value (a Basic authorization's decoded
    `user:pass` too)."""
    text = value.decode("latin-1")
    if name.lower() in (b"authorization", b"proxy-authorization") and (pair := _basic(text)) is not None:
        if _has_any(pair, rules.swaps):
            swapped = _replace(pair, rules.swaps.items()).encode("latin-1")
            return b"Basic " + base64.b64encode(swapped)
        return value
    return _replace(text, rules.swaps.items()).encode("latin-1")


_QUERY_PART = re.compile(r"[^&=;]+")


def swap_target(rules: EgressRules, target: bytes) -> bytes:
    """A request target with placeholders replaced in its query string (each name and value percent-decoded;
    encoded again only where a placeholder was found)."""
    text = target.decode("latin-1")
    path, mark, query = text.partition("?")
    if not mark:
        return target

    def one(match: re.Match[str]) -> str:
        part = match.group(0)
        decoded = unquote(part.replace("+", " "))
        if not _has_any(decoded, rules.swaps):
            return part
        return quote(_replace(decoded, rules.swaps.items()), safe="")

    fragment_mark = query.find("#")
    fragment = query[fragment_mark:] if fragment_mark >= 0 else ""
    query = query[:fragment_mark] if fragment_mark >= 0 else query
    return (path + "?" + _QUERY_PART.sub(one, query) + fragment).encode("latin-1")


def swap_body(rules: EgressRules, content_type: bytes, body: bytes) -> bytes:
    """A request body with placeholders replaced in the named top-level string fields of a JSON object, and
    nowhere else. Any other body (no named fields, not JSON, not an object) is given back unchanged."""
    if not rules.body_fields or not body or b"json" not in content_type.lower():
        return body
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    if not isinstance(document, dict):
        return body
    changed = False
    for name in rules.body_fields:
        value = document.get(name)
        if isinstance(value, str) and _has_any(value, rules.swaps):
            document[name] = _replace(value, rules.swaps.items())
            changed = True
    if not changed:
        return body
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def restore(rules: EgressRules, data: bytes, sent: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """`data` (a response's header value or body) with every real value replaced by its placeholder: as it is,
    JSON-escaped and percent-encoded (the forms an echo most often takes); and first each of `sent`, (what the
    proxy sent, what the client had sent) — a Basic authorization's token, whose real value is base64 inside."""
    pairs: list[tuple[bytes, bytes]] = list(sent)
    for placeholder, real in rules.swaps.items():
        forms = {real, json.dumps(real)[1:-1], quote(real, safe="")}
        pairs.extend((form.encode(), placeholder.encode()) for form in forms)
    for old, new in sorted(pairs, key=lambda pair: -len(pair[0])):
        data = data.replace(old, new)
    return data


def placeholder_field(
    rules: EgressRules, target: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> str | None:
    """Where a request holds a placeholder (`request target`, `header <name>`, `body`), or None: what the proxy
    checks of a request toward a host that was not declared. Looks at the raw bytes and at their percent-decoded
    form, and inside a Basic authorization. Names the place, never the value."""
    needles = list(rules.swaps)

    def holds(data: bytes) -> bool:
        text = data.decode("latin-1")
        return _has_any(text, needles) or _has_any_decoded(text, needles)

    if holds(target):
        return "request target"
    for name, value in headers:
        text = value.decode("latin-1")
        if holds(value) or ((pair := _basic(text)) is not None and _has_any(pair, needles)):
            return f"header {name.decode('latin-1').lower()}"
    if body and holds(body):
        return "body"
    return None
