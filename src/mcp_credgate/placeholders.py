"""Placeholders: what an upstream holds instead of a real secret when credgate puts the secret on the wire itself
(egress injection, issue 27).

A placeholder stands for one field of one credential, for one upstream server and group. It must

- be the same on every call and after every restart, so that the proxy recognises it without keeping a list:
  it is drawn from an HMAC-SHA256, under a key derived from the master key, of the length-prefixed
  (server, credential, group, field) — length-prefixed so that no two different tuples give the same message;
- look like the real thing, so that the upstream's own checks accept it: a field with a `pattern` gets a string
  that passes it (`re.search`, as `CredentialField.check_value` checks real values), drawn with `rstr`;
  a field without one gets `cgph_` and 32 base32 characters, easy to recognise in a log;
- be distinct from every other placeholder: a draw needs at least `MIN_LENGTH` characters and `MIN_BITS` bits of
  chance, and eight draws for the pattern must all differ; a pattern too narrow for that (`^\\d{4}$`) is refused
  with a `PlaceholderError` rather than given placeholders that could stand for two secrets at once;
- never hold the real value (`avoid`): an upstream that could read the secret out of its placeholder would hold
  the secret after all;
- travel unchanged through environment variables, arguments, header values, query strings and JSON: draws use
  URL-unreserved characters where the pattern leaves the choice (`.`, `\\S`, `[^x]`…) and a draw with whitespace
  or a control character is not taken.

Stable across restarts of the same installation: the draws follow `random.Random`, whose sequence for a seed
Python keeps, and `rstr`, whose way of reading a pattern a new version could change (a new placeholder after an
upgrade is harmless: the upstream is started with whatever `placeholder` answers).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import random
import re
import string
from collections import Counter
from typing import TYPE_CHECKING, TypeVar

import rstr

from .declarations import CredentialField
from .errors import CredentialValueError, PlaceholderError

if TYPE_CHECKING:
    from _typeshed import SupportsLenAndGetItem

__all__ = ["MIN_BITS", "MIN_LENGTH", "PREFIX", "placeholder"]

PREFIX = "cgph_"  # a placeholder of a field without a pattern: PREFIX and 32 base32 characters (160 bits)
MIN_LENGTH = 16  # characters of a placeholder drawn from a pattern
MIN_BITS = 64  # bits of chance in one draw: thousands of placeholders, no two alike (birthday bound ~2^-40)
_DRAWS = 16  # draws tried for one placeholder before giving up
_PROBES = 8  # placeholders drawn for a pattern, once, to tell whether it is too narrow
_T = TypeVar("_T")

_URL_SAFE = string.ascii_letters + string.digits + "-._~"
# rstr's alphabets for what a pattern leaves open: URL-unreserved characters rather than all of string.printable
# (whose whitespace and `%&+/=?#` would need escaping somewhere along the way)
_ALPHABETS = {
    "printable": _URL_SAFE,
    "nonwhitespace": _URL_SAFE,
    "nondigits": string.ascii_letters + "-._~",
    "nonword": "-.~",
}

_WHY = {
    "construct": "it uses a construct placeholders cannot be drawn from",
    "mismatch": "the strings drawn from it do not pass it",
    "characters": "it asks for whitespace or control characters",
    "short": f"it is too narrow for placeholders that cannot collide (shorter than {MIN_LENGTH} characters)",
    "narrow": "it is too narrow for placeholders that cannot collide (too few distinct values)",
    "avoid": "every placeholder drawn holds the real value",
}


def placeholder(
    secret: bytes,
    *,
    server: str,
    credential: str,
    group: str,
    field: CredentialField,
    avoid: str | None = None,
) -> str:
    """The placeholder of `field` of `credential` for the upstream `server` in `group`.

    `secret` is the key the placeholders are drawn under (`MasterKey.derive("egress placeholders")`): without it
    nobody can tell which placeholder stands for what, and a new master key gives new placeholders. `avoid` is
    the real value: a placeholder that holds it is passed over for the next draw (so the answer depends on it;
    the proxy, which knows the real value, asks with it too). Raises PlaceholderError, naming the field and why,
    when the field's pattern admits no placeholder credgate can stand behind.
    """
    if len(secret) < 32:
        raise ValueError("the placeholder key must be at least 32 bytes (MasterKey.derive gives 32)")
    seed = hmac.new(
        secret, b"".join(map(_part, ("credgate placeholder v1", server, credential, group, field.name))), "sha256"
    ).digest()
    misses: Counter[str] = Counter()
    for attempt in range(_DRAWS):
        draw_seed = _derive(seed, "draw", attempt)
        if field.pattern is None:
            drawn: str = PREFIX + base64.b32encode(draw_seed[:20]).decode().lower()
        else:
            refusal = _refusal(field.pattern)
            if refusal is not None:
                raise PlaceholderError(_message(field, refusal))
            miss = _draw(field.pattern, draw_seed)
            if miss.reason is not None:
                misses[miss.reason] += 1
                continue
            drawn = miss.value
            try:
                field.check_value(drawn)  # the field's other rules (a date that exists, for a date's pattern)
            except CredentialValueError:
                misses["mismatch"] += 1
                continue
        if avoid and avoid in drawn:
            misses["avoid"] += 1
            continue
        return drawn
    raise PlaceholderError(_message(field, misses.most_common(1)[0][0]))


class _Draw:
    """One string drawn for a pattern, or the reason it was not fit (a key of `_WHY`)."""

    __slots__ = ("reason", "value")

    def __init__(self, value: str = "", reason: str | None = None) -> None:
        self.value = value
        self.reason = reason


class _Chance(random.Random):
    """A `random.Random` that adds up the bits of chance of what it is asked (`rstr` picks every character and
    every repeat count through `choice` and `randint`). A choice among equal options counts nothing, so `a{16}`
    has no chance at all; options that differ but give the same text (`(a|a)`) are caught by the probes' check
    that eight draws all differ."""

    def __init__(self, seed: bytes) -> None:
        super().__init__(int.from_bytes(seed, "big"))
        self.bits = 0.0

    def choice(self, seq: SupportsLenAndGetItem[_T]) -> _T:
        distinct = len({repr(seq[i]) for i in range(len(seq))})
        self.bits += math.log2(distinct) if distinct else 0.0
        return super().choice(seq)

    def randint(self, a: int, b: int) -> int:
        self.bits += math.log2(b - a + 1) if b >= a else 0.0
        return super().randint(a, b)


def _draw(pattern: str, seed: bytes) -> _Draw:
    chance = _Chance(seed)
    try:
        value = rstr.Rstr(chance, **_ALPHABETS).xeger(pattern)
    except Exception:
        # rstr reads any pattern the `re` parser gives it: what it has no case for (atomic groups, possessive
        # repeats, conditionals) or cannot satisfy (`[^\x00-\x7f]`) ends in KeyError, IndexError and the like
        return _Draw(reason="construct")
    if re.search(pattern, value) is None:
        return _Draw(reason="mismatch")
    if not all("!" <= c <= "~" for c in value):
        return _Draw(reason="characters")
    if len(value) < MIN_LENGTH:
        return _Draw(reason="short")
    if chance.bits < MIN_BITS:
        return _Draw(reason="narrow")
    return _Draw(value)


@functools.lru_cache(maxsize=256)
def _refusal(pattern: str) -> str | None:
    """Why no placeholder is drawn for `pattern` (a key of `_WHY`), or None. Decided by the pattern alone, with
    seeds of its own: a pattern is refused for every credential or for none."""
    seed = hashlib.sha256(_part("credgate placeholder probe v1") + _part(pattern)).digest()
    found: list[str] = []
    misses: Counter[str] = Counter()
    for probe in range(_PROBES):
        for attempt in range(_DRAWS):
            drawn = _draw(pattern, _derive(seed, f"probe {probe}", attempt))
            if drawn.reason is None:
                found.append(drawn.value)
                break
            misses[drawn.reason] += 1
        else:
            return misses.most_common(1)[0][0]
    return None if len(set(found)) == len(found) else "narrow"


def _message(field: CredentialField, reason: str) -> str:
    shown = f"the pattern {field.pattern}" if field.pattern is not None else "it"
    return f"field {field.name!r}: no placeholder can be made for {shown}: {_WHY[reason]}"


def _part(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(4, "big") + data


def _derive(seed: bytes, purpose: str, number: int) -> bytes:
    return hmac.new(seed, _part(purpose) + number.to_bytes(4, "big"), "sha256").digest()
