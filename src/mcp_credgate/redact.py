"""Value-based redaction: every secret of the credential in use, in the forms an API or an upstream may echo.

How it works, in one pass over the output plus a fixed number of decoded views of it (linear in its size):

- The values of an output (strings, and numbers and booleans compared by their JSON text) are joined in the
  order the agent reads them, so a secret split over two values or two content blocks is found like any other;
  keys, and what an MCP content block says of itself (type, annotations), are redacted each on its own.
- A multi-pattern matcher (Aho-Corasick, `ahocorasick_rs`) looks for every pattern of every secret at once:
  the value itself, case-insensitively for values of `CASE_FOLD_LENGTH` characters or more; its UTF-8 bytes
  read as Latin-1 (what percent-decoding yields for non-ASCII text); hex; and base64 at each of the three byte
  alignments, in both alphabets, of the value and of its URL- and JSON-escaped text.
- It looks again in *decoded views* of the text, one kind of escape at a time, and in the views of those
  (compositions of two): percent-decoding (whatever characters the encoder left alone, escapes in either case;
  once more with `+` as a space), JSON and JavaScript string escapes (`\\uXXXX` for every character, `\\/`,
  `\\xNN`), HTML character references; and each without its line breaks (base64 wrapped at 64 or 76 columns,
  as MIME and PEM do, indented or not). A match in a view is mapped back to the characters of the original it
  was decoded from. A view is made only where the text holds what starts its escapes.
- A base64 match redacts the whole base64 run around it: inside a larger blob, the characters next to the
  secret's would still decode to its first and last bytes.
- Once replaced, the text is looked at again: a marker's own characters could complete a secret.

Redaction is defence in depth (see the README's security section): it cannot know every transformation an
API may apply; the declared host pinning and the upstream sandbox are the boundary.
"""

from __future__ import annotations

import base64
import html
import json
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import ahocorasick_rs

from .credential import Credential

__all__ = [
    "CASE_FOLD_LENGTH",
    "FIND_BUDGET",
    "MAX_PASSES",
    "MIN_BASE64_PATTERN",
    "MIN_DERIVED_LENGTH",
    "NO_REDACTION",
    "Redactor",
    "patterns_of",
    "redactor_for",
    "shortest_pattern",
]

MIN_DERIVED_LENGTH = 4  # shorter secrets are still redacted raw, but their encodings would match noise
MAX_PASSES = 3  # then whatever still matches is replaced whole
CASE_FOLD_LENGTH = 8  # from this length a secret is found whatever the case of its letters
MIN_BASE64_PATTERN = 4  # base64 characters (24 bits) that only the secret decides, at the least
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")
_B64_LINE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


@dataclass(frozen=True, slots=True)
class _Pattern:
    field: str
    base64: bool  # a match stands for the whole base64 run around it


# -- patterns ------------------------------------------------------------------------------------


def _base64_patterns(data: bytes) -> set[str]:
    """The base64 characters that `data` alone decides, inside any longer base64 text, at each byte
    alignment, in the standard and the URL-safe alphabet."""
    found: set[str] = set()
    for lead in range(3):
        text = base64.b64encode(b"\0" * lead + data + b"\0\0").decode()
        start, end = -(-8 * lead // 6), 8 * (lead + len(data)) // 6  # characters whose 6 bits are all data's
        if end - start >= MIN_BASE64_PATTERN:
            found.add(text[start:end])
    return found | {f.replace("+", "-").replace("/", "_") for f in found}


_FINAL_SIGMA, _SIGMA = "\u03c2", "\u03c3"


def _fold(text: str) -> str:
    """Lower case, one character for one (what mapping matches back needs), and the same for a character
    wherever it stands: Python lowers a final capital sigma to U+03C2, elsewhere to U+03C3; here both are
    U+03C3."""
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = "".join(low if len(low := c.lower()) == 1 else c for c in text)
    return lowered.replace(_FINAL_SIGMA, _SIGMA) if _FINAL_SIGMA in lowered else lowered


def patterns_of(value: str) -> tuple[dict[str, bool], dict[str, bool]]:
    """The patterns of one secret value, exact and case-folded (matched against folded text), each saying
    whether it is base64. None is shorter than `shortest_pattern(value)`.

    A value of `CASE_FOLD_LENGTH` characters or more has only folded patterns, its base64 ones too: what that
    adds is the rare base64 text that differs from a secret's in case alone (redacted too: never less), and
    it leaves a credential of long secrets with one automaton, whose building is most of a small call's cost."""
    if len(value) < MIN_DERIVED_LENGTH:
        return {value: False}, {}
    raw = value.encode()
    plain = {value, raw.decode("latin-1"), raw.hex(), raw.hex().upper()}
    escaped = json.dumps(value)[1:-1]
    encoded = {  # what base64 is also taken of: a URL's or a JSON text's form of the value
        quote(value, safe=""),
        quote(value, safe="-_.!~*'()"),  # encodeURIComponent
        quote_plus(value, safe=""),
        quote(value, safe="").lower(),
        escaped,
        escaped.replace("/", "\\/"),
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    b64 = set().union(*(_base64_patterns(text.encode()) for text in {value, *encoded}))
    if len(value) < CASE_FOLD_LENGTH:
        return {p: False for p in plain} | {p: True for p in b64}, {}
    return {}, {_fold(p): False for p in plain} | {_fold(p): True for p in b64}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _automaton(patterns: Iterable[str]) -> ahocorasick_rs.AhoCorasick:
    """An automaton built per call: the NFA takes a few dozen microseconds to build (the DFA, ahocorasick-rs's
    default for few patterns, about 170) and scans as fast for the handful of patterns a credential has."""
    return ahocorasick_rs.AhoCorasick(list(patterns), implementation=ahocorasick_rs.Implementation.NoncontiguousNFA)


def shortest_pattern(value: str) -> int:
    """A bound under the length of every pattern of `value`: base64 of n bytes has at least 8n/6 - 3 characters
    that the bytes alone decide, at any alignment, and a value has at least as many bytes as characters."""
    if len(value) < MIN_DERIVED_LENGTH:
        return len(value)
    return min(len(value), max(MIN_BASE64_PATTERN, 8 * len(value) // 6 - 3))


FIND_BUDGET = 4_000_000  # characters times patterns: below, `str.find` pattern by pattern is quicker (measured)


class _Patterns:
    """Patterns and what each stands for, found in a text by `str.find` while the text is short (a small call's
    usual case: building an automaton is most of its cost) and by an automaton, built on first need, beyond."""

    __slots__ = ("_automaton", "_meaning", "_patterns")

    def __init__(self, patterns: dict[str, _Pattern]) -> None:
        self._patterns = list(patterns)
        self._meaning = list(patterns.values())
        self._automaton: ahocorasick_rs.AhoCorasick | None = None

    def find(self, text: str) -> Iterator[tuple[int, int, _Pattern]]:
        """Every match, overlapping ones included, in both ways alike (a test holds them side by side)."""
        if len(text) * len(self._patterns) <= FIND_BUDGET:
            for index, pattern in enumerate(self._patterns):
                start = text.find(pattern)
                while start >= 0:
                    yield start, start + len(pattern), self._meaning[index]
                    start = text.find(pattern, start + 1)
            return
        if self._automaton is None:
            self._automaton = _automaton(self._patterns)
        for index, start, end in self._automaton.find_matches_as_indexes(text, overlapping=True):
            yield start, end, self._meaning[index]


class _Matcher:
    """The exact patterns of a credential's values and the case-folded ones (matched against folded text)."""

    __slots__ = ("_exact", "_folded")

    def __init__(self, sources: Iterable[tuple[str, str]]) -> None:
        exact: dict[str, _Pattern] = {}
        folded: dict[str, _Pattern] = {}
        for fieldname, value in sources:
            plain, lowered = patterns_of(value)
            for pattern, base64_text in plain.items():
                exact.setdefault(pattern, _Pattern(fieldname, base64=base64_text))
            for pattern, base64_text in lowered.items():
                folded.setdefault(pattern, _Pattern(fieldname, base64=base64_text))
        self._exact = _Patterns(exact) if exact else None
        self._folded = _Patterns(folded) if folded else None

    def find(self, text: str) -> Iterator[tuple[int, int, _Pattern]]:
        """Every match, overlapping ones included: (start, end, what it stands for). A lone surrogate (which a
        JSON escape can make) has no UTF-8, which the automaton needs: it is looked at as U+FFFD, one for one."""
        if not text.isascii():
            text = _LONE_SURROGATE.sub("\ufffd", text)
        if self._exact is not None:
            yield from self._exact.find(text)
        if self._folded is not None:
            yield from self._folded.find(_fold(text))


# -- decoded views -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Decoder:
    name: str
    introducers: str  # a text without any of these characters has nothing to decode
    escape: re.Pattern[str]
    decode: Callable[[str], str]  # the text of one escape → what it stands for


_JSON_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_PERCENT = {  # "%2f", "%2F", "%aF": each hex digit in either case
    f"%{high}{low}": chr(b)
    for b in range(256)
    for high in {f"{b:02x}"[0], f"{b:02X}"[0]}
    for low in {f"{b:02x}"[1], f"{b:02X}"[1]}
}
_PERCENT["+"] = " "


def _json_escape(text: str) -> str:
    if text[1] in "uU":
        if len(text) == 12:  # a surrogate pair
            high, low = int(text[2:6], 16), int(text[8:12], 16)
            return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
        return chr(int(text[2:6], 16))
    if text[1] == "x":
        return chr(int(text[2:4], 16))
    return _JSON_SIMPLE.get(text[1], text[1])


_PERCENT_ESCAPE = r"%[0-9A-Fa-f]{2}"
_JSON_ESCAPE = (
    r"\\[uU][dD][89abAB][0-9a-fA-F]{2}\\[uU][dD][c-fC-F][0-9a-fA-F]{2}"
    r"|\\[uU][0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2}|\\[\"\\/'bfnrt]"
)
# named references end with ";" but for the four that HTML lets go without (URLs' "&size=" are not references)
_HTML_ESCAPE = r"&(?:#0*[0-9]{1,7};?|#[xX]0*[0-9a-fA-F]{1,6};?|[A-Za-z][A-Za-z0-9]{1,31};|(?:amp|lt|gt|quot)(?![\w;]))"


_DECODERS = (
    _Decoder("percent", "%", re.compile(_PERCENT_ESCAPE), _PERCENT.__getitem__),  # bytes, read as Latin-1
    _Decoder("form", "+", re.compile(_PERCENT_ESCAPE + r"|\+"), _PERCENT.__getitem__),  # ... and + as a space
    _Decoder("json", "\\", re.compile(_JSON_ESCAPE), _json_escape),
    _Decoder("html", "&", re.compile(_HTML_ESCAPE), html.unescape),
)
# line breaks, with the blanks around them (an indented YAML or folded header value) and stray carriage returns
_UNWRAP = _Decoder("unwrapped", "\n\r", re.compile(r"[ \t]*(?:\r*\n|\r)[ \t]*"), lambda text: "")


class _View:
    """A decoded form of its parent's text, and the way back: each escape decoded is a piece (its start and end
    here and in the parent); the text between pieces is the parent's, shifted."""

    __slots__ = ("_ends", "_origins", "_starts", "joins_lines", "parent", "text")

    def __init__(self, text: str, parent: _View | None = None, *, joins_lines: bool = False) -> None:
        self.text = text
        self.parent = parent
        self.joins_lines = joins_lines  # its text has lost line breaks: a base64 block is told in its parent
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._origins: list[tuple[int, int]] = []

    @classmethod
    def decoded(cls, parent: _View, decoder: _Decoder) -> _View | None:
        """The parent's text decoded, or None when there is nothing to decode."""
        if not any(c in parent.text for c in decoder.introducers):
            return None
        view = cls("", parent, joins_lines=decoder.name == "unwrapped" or parent.joins_lines)
        starts, ends, origins = view._starts, view._ends, view._origins
        shift = 0  # position in the view minus position in the parent, after the escapes so far

        def one(m: re.Match[str]) -> str:
            nonlocal shift
            escape = m.group()
            replacement = decoder.decode(escape)
            if replacement != escape:
                start, end = m.span()
                starts.append(start + shift)
                shift += len(replacement) - (end - start)
                ends.append(end + shift)
                origins.append((start, end))
            return replacement

        view.text = decoder.escape.sub(one, parent.text)
        return view if starts else None

    def _position(self, at: int, *, end: bool) -> int:
        """Where position `at` (a start, or an exclusive end) comes from in the parent."""
        i = bisect_right(self._starts, at - 1 if end else at) - 1
        if i < 0:
            return at
        piece_end = self._ends[i]
        origin_start, origin_end = self._origins[i]
        if end and at <= piece_end:
            return origin_end
        if not end and at < piece_end:
            return origin_start
        return origin_end + (at - piece_end)

    def to_root(self, start: int, end: int) -> tuple[int, int]:
        view: _View = self
        while view.parent is not None:
            start, end = view._position(start, end=False), view._position(end, end=True)
            view = view.parent
        return start, end

    def block_to_root(self, start: int, end: int) -> tuple[int, int]:
        """A base64 match grown to the base64 block around it and mapped back, grown again at each step (a
        blob wrapped in escaped line breaks has its lines only in the view that decoded them); never in a
        view without the line breaks, where the text after a blob would look like more of it."""
        view: _View = self
        while True:
            if not view.joins_lines:
                start, end = _base64_block(view.text, start, end)
            if view.parent is None:
                return start, end
            start, end = view._position(start, end=False), view._position(end, end=True)
            view = view.parent


def _views(root: _View) -> Iterator[_View]:
    """The text itself; each kind of escape decoded; each kind decoded again over each (compositions of two
    encodings, one kind at a time: decoding every kind at once would also decode what, in a secret or next to
    it, only looks like an escape of another kind); and each of these without its line breaks (wrapped base64).
    A view is made only where its text holds what starts an escape."""
    yield root
    decoded = [root]
    for first in _DECODERS:
        once = _View.decoded(root, first)
        if once is None:
            continue
        decoded.append(once)
        for second in _DECODERS:
            twice = _View.decoded(once, second)
            if twice is not None:
                decoded.append(twice)
    for view in decoded:
        if view is not root:
            yield view
        unwrapped = _View.decoded(view, _UNWRAP)
        if unwrapped is not None:
            yield unwrapped


def _line_before(text: str, start: int) -> tuple[int, int] | None:
    """The line that ends just before position `start` (a line's first character), when it is all base64."""
    if start == 0 or text[start - 1] != "\n":
        return None
    end = start - 1 - (start > 1 and text[start - 2] == "\r")
    begin = text.rfind("\n", 0, end) + 1
    return (begin, end) if _B64_LINE.fullmatch(text, begin, end) else None


def _line_after(text: str, end: int) -> tuple[int, int] | None:
    """The line that starts just after position `end` (a line's end), when it is all base64."""
    if text.startswith("\r\n", end):
        begin = end + 2
    elif text.startswith("\n", end):
        begin = end + 1
    else:
        return None
    stop = text.find("\n", begin)
    stop = len(text) if stop < 0 else stop - (stop > begin and text[stop - 1] == "\r")
    return (begin, stop) if _B64_LINE.fullmatch(text, begin, stop) else None


def _base64_block(text: str, start: int, end: int) -> tuple[int, int]:
    """The base64 text around a match: its run of base64 characters, and when that run is a whole line, the
    lines that continue it (a blob wrapped at a fixed width: full lines of one length, then a shorter one)."""
    while start > 0 and text[start - 1] in _B64_CHARS:  # "=" only pads the end: "key=QUJD" starts after it
        start -= 1
    while end < len(text) and text[end] in _B64_CHARS:
        end += 1
    while end < len(text) and text[end] == "=":
        end += 1
    at_line_start = start == 0 or text[start - 1] == "\n"
    at_line_end = end == len(text) or text[end] == "\n" or text.startswith("\r\n", end)
    if not (at_line_start and at_line_end):  # base64 inside a line of other text: the run is all of it
        return start, end
    first_break = text.find("\n", start, end)  # a match mapped back from a view without line breaks spans lines
    width = (first_break - (text[first_break - 1] == "\r") if first_break >= 0 else end) - start
    last_line = text.rfind("\n", start, end) + 1 or start
    above = _line_before(text, start)
    if above is not None and above[1] - above[0] > width:  # the match is on the last, shorter line
        width = above[1] - above[0]
    while above is not None and above[1] - above[0] == width and text[above[1] - 1] != "=":
        start = above[0]
        above = _line_before(text, start)
    below = _line_after(text, end) if end - last_line == width and text[end - 1] != "=" else None
    while below is not None and below[1] - below[0] <= width:
        end = below[1]
        if below[1] - below[0] < width or text[end - 1] == "=":
            break
        below = _line_after(text, end)
    return start, end


def _merged(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    spans.sort()
    merged: list[tuple[int, int, str]] = []
    for start, end, fieldname in spans:
        if merged and start <= merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], end), last[2])
        else:
            merged.append((start, end, fieldname))
    return merged


# -- the redactor --------------------------------------------------------------------------------

_Leaf = str | bool | int | float  # what a JSON-like value holds, as the agent reads it


def _leaf_text(leaf: _Leaf) -> str:
    if isinstance(leaf, str):
        return leaf
    try:
        return json.dumps(leaf)
    except ValueError:  # an int of more digits than Python prints: nothing JSON can carry either
        return ""


class Redactor:
    """Replaces secret values in strings and in JSON-like structures.

    Built per call and dropped with it: no cache keeps secret values alive (the automata are built on first
    need and go with the redactor).
    """

    __slots__ = ("_matcher", "_shortest", "_sources")

    def __init__(self, secrets: Mapping[str, str], extra: Iterable[tuple[str, str]] = ()) -> None:
        self._sources = [(name, value) for name, value in (*secrets.items(), *extra) if value]
        # no pattern is shorter than this: a text shorter than it cannot hold one and needs no work
        self._shortest = min((shortest_pattern(v) for _, v in self._sources), default=0)
        self._matcher: _Matcher | None = None

    def __bool__(self) -> bool:
        return bool(self._sources)

    def __repr__(self) -> str:
        return f"Redactor({len(self._sources)} values)"

    def _spans(self, text: str) -> list[tuple[int, int, str]]:
        """The stretches of `text` to replace, merged: (start, end, the field named in the marker)."""
        if self._matcher is None:
            self._matcher = _Matcher(self._sources)
        spans: list[tuple[int, int, str]] = []
        for view in _views(_View(text)):
            block = (0, -1)  # the last base64 block: another match inside it adds nothing (and costs no walk)
            for start, end, pattern in self._matcher.find(view.text):
                at = view.to_root(start, end)
                if not pattern.base64:
                    spans.append((*at, pattern.field))
                elif not block[0] <= at[0] <= at[1] <= block[1]:
                    block = view.block_to_root(start, end)
                    spans.append((*block, pattern.field))
        return _merged(spans)

    def text(self, value: str) -> str:
        if not self._sources or len(value) < self._shortest:
            return value
        redacted = self._leaves([value])[0]
        return redacted if isinstance(redacted, str) else value

    def obj(self, value: Any, *, typed: bool = False) -> Any:
        """Redact a JSON-like value: its strings, numbers and booleans read in order as one text (a secret split
        over two of them is found), and each key on its own. What JSON does not know (bytes, sets, other
        mappings, objects) becomes text first: it would otherwise be serialised unredacted.

        A redacted number or boolean becomes the marker, or with `typed` (an MCP message, whose schema wants a
        number there) zero or false."""
        if not self._sources:
            return value
        leaves: list[_Leaf] = []
        _collect(value, leaves)
        redacted = self._leaves(leaves)
        if typed:
            redacted = [
                type(old)() if isinstance(new, str) and not isinstance(old, str) else new
                for old, new in zip(leaves, redacted, strict=True)
            ]
        return _rebuild(value, iter(redacted), self._key, lambda item: self.obj(item, typed=typed))

    def _key(self, key: Any) -> Any:
        """A key, redacted on its own: a number or boolean that matches becomes the marker (JSON writes
        every key as text)."""
        if key is None:
            return key
        if isinstance(key, (bool, int, float)):
            text = _leaf_text(key)
            return key if self.text(text) == text else self.text(text)
        return self.text(key if isinstance(key, str) else str(key))

    def _leaves(self, leaves: list[_Leaf]) -> list[_Leaf]:
        """The leaves, redacted as one text; again while that finds more (a marker's own characters may
        complete a secret that starts with "]" or ends with "[")."""
        for _ in range(MAX_PASSES):
            texts = [_leaf_text(leaf) for leaf in leaves]
            joined = "".join(texts)
            if len(joined) < self._shortest:
                return leaves
            spans = self._spans(joined)
            if not spans:
                return leaves
            cut: list[_Leaf] = []
            offset = 0
            for leaf, text in zip(leaves, texts, strict=True):
                cut.append(_cut(leaf, text, offset, spans))
                offset += len(text)
            leaves = cut
        return [f"[redacted:{self._sources[0][0]}]" if isinstance(leaf, str) else leaf for leaf in leaves]


def _cut(leaf: _Leaf, text: str, offset: int, spans: list[tuple[int, int, str]]) -> _Leaf:
    """The leaf at `offset` of the joined text with its part of each span replaced by a marker."""
    end = offset + len(text)
    first = max(bisect_right(spans, (offset, end + 1)) - 1, 0)  # the last span that starts at or before it
    parts: list[str] = []
    position = offset
    for index in range(first, len(spans)):
        start, stop, fieldname = spans[index]
        if start >= end:
            break
        if stop <= offset:
            continue
        parts.append(text[position - offset : max(start, offset) - offset])
        parts.append(f"[redacted:{fieldname}]")
        position = min(stop, end)
    if not parts:
        return leaf
    if not isinstance(leaf, str):  # a number or boolean is one word: any part of it is all of it
        return parts[1]
    parts.append(text[position - offset :])
    return "".join(parts)


def _collect(value: Any, leaves: list[_Leaf]) -> None:
    """The values of a JSON-like value in reading order (keys aside: each is redacted on its own, and so is
    what an MCP content block says of itself, see `_aside`)."""
    if isinstance(value, (str, bool, int, float)):
        leaves.append(value)
    elif isinstance(value, Mapping):
        block = _is_content_block(value)
        for k, item in value.items():
            if not (block and _aside(k, item)):
                _collect(item, leaves)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _collect(item, leaves)
    elif isinstance(value, (bytes, bytearray)):
        leaves.append(bytes(value).decode("utf-8", errors="replace"))
    elif value is not None:
        leaves.append(str(value))


_CONTENT_TYPES = frozenset({"text", "image", "audio", "resource", "resource_link"})


def _is_content_block(value: Mapping[Any, Any]) -> bool:
    kind = value.get("type")
    return isinstance(kind, str) and kind in _CONTENT_TYPES


def _aside(key: Any, value: Any) -> bool:
    """What an MCP content block says of itself, its type name and its annotations and metadata: redacted on
    its own, so that the texts of two blocks read one after the other."""
    return (key == "type" and isinstance(value, str)) or (
        key in ("annotations", "_meta") and isinstance(value, Mapping)
    )


def _rebuild(value: Any, redacted: Iterator[_Leaf], key: Callable[[Any], Any], alone: Callable[[Any], Any]) -> Any:
    """`value` again, each value taken in `_collect`'s order from `redacted` (a changed number is now text),
    each key passed through `key` and what stood aside through `alone`."""
    if isinstance(value, (str, bool, int, float)):
        return next(redacted)
    if isinstance(value, Mapping):
        block = _is_content_block(value)
        return {
            key(k): alone(item) if block and _aside(k, item) else _rebuild(item, redacted, key, alone)
            for k, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_rebuild(item, redacted, key, alone) for item in value]
    if value is None:
        return None
    return next(redacted)


NO_REDACTION = Redactor({})


def redactor_for(credential: Credential | None) -> Redactor:
    if credential is None:
        return NO_REDACTION
    secrets = credential.secrets()
    if not secrets:
        return NO_REDACTION
    # each non-secret value joined with each secret, `username:password`, so that their base64 (an HTTP
    # Basic header) is redacted even when the password is too short to have base64 patterns of its own
    pairs = [(field, f"{user}:{pw}") for user in credential.public_values() for field, pw in secrets.items()]
    return Redactor(secrets, pairs)
