"""Credential files, as `credgate cred import` reads them: one record per credential, with the line it starts on.

- JSON lines (`jsonl`): an object per line, `name` and field names; blank lines are skipped.
- CSV (`csv`): a header row of `name` and field names, then a row per credential; an empty cell is no value.
- `.env` (`env`): one credential (its name given apart), `KEY=VALUE` per line, keys matched to field names
  whatever their case; `#` comments, blank lines and `export ` are allowed; a value may be quoted ('…' as it
  is, "…" with \\", \\\\ and \\n escapes).

Reading checks the file's shape only (the values are the type's to judge: `importing`). Every problem is a
`CredentialValueError` naming the source, the line and the field or column, and never a value: a bad line is
not quoted, and neither is a parser's message that would repeat part of it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .declarations import CredentialSpec
from .errors import CredentialValueError

__all__ = ["FORMATS", "CredentialRecord", "Format", "format_of", "read_records", "text_lines"]

Format = Literal["jsonl", "csv", "env"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "env")
_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".env": "env"}
_ENV_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)")
_QUOTED_IN_MESSAGE = re.compile(r"\s*:?\s*'[^']*'(?=\s+at\b|$)")  # json's quoting of what it read


@dataclass(frozen=True)
class CredentialRecord:
    """One credential as a file gives it: where it starts, its name, its values (unchecked), and the line of
    each value when the values have lines of their own (a .env file)."""

    line: int
    name: str
    values: dict[str, str]
    lines: Mapping[str, int] = field(default_factory=dict)

    def line_of(self, field_name: str) -> int:
        return self.lines.get(field_name, self.line)


def format_of(filename: str) -> Format | None:
    """The format a file's name says: `.jsonl`/`.ndjson`, `.csv`, `.env` (also `.env.production`…)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if base == ".env" or base.startswith(".env."):
        return "env"
    dot = base.rfind(".")
    return _SUFFIXES.get(base[dot:]) if dot > 0 else None


def text_lines(raw: Iterable[bytes]) -> Iterator[str]:
    """A file's lines (as a binary file gives them) decoded one by one as UTF-8, a leading BOM dropped: a
    line that does not decode raises UnicodeDecodeError when it is reached, so that its number is known."""
    for i, line in enumerate(raw):
        yield line.decode("utf-8-sig" if i == 0 else "utf-8")


def read_records(
    lines: Iterable[str], fmt: Format, spec: CredentialSpec, *, source: str, name: str | None = None
) -> Iterator[CredentialRecord]:
    """The records of a file's lines (`text_lines`, line ends kept). `name`: the credential of a .env
    file. Raises CredentialValueError on the first problem of the file's shape."""
    numbered = _Lines(lines, source)
    if fmt == "jsonl":
        return _jsonl(numbered, source)
    if fmt == "csv":
        return _csv(numbered, spec, source)
    assert name is not None, "a .env file's credential needs its name"
    return _env(numbered, spec, source, name)


class _Lines:
    """A file's lines, counted; a line that is not UTF-8 is refused with its number."""

    def __init__(self, lines: Iterable[str], source: str) -> None:
        self._lines = iter(lines)
        self.source = source
        self.number = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            line = next(self._lines)
        except UnicodeDecodeError:
            raise CredentialValueError(f"{self.source}, line {self.number + 1}: not valid UTF-8") from None
        self.number += 1
        return line

    def problem(self, line: int, text: str) -> CredentialValueError:
        return CredentialValueError(f"{self.source}, line {line}: {text}")


def _jsonl(lines: _Lines, source: str) -> Iterator[CredentialRecord]:
    for text in lines:
        n = lines.number
        if not text.strip():
            continue
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            why = _QUOTED_IN_MESSAGE.sub("", exc.msg).removesuffix(" at")
            raise lines.problem(n, f"not valid JSON ({why} at column {exc.colno})") from None
        except RecursionError:
            raise lines.problem(n, "not valid here (arrays or objects nested too deeply)") from None
        if not isinstance(loaded, dict):
            raise lines.problem(n, 'expected a JSON object of "name" and field names')
        name = loaded.pop("name", None)
        if name is None:
            raise lines.problem(n, 'the object has no "name"')
        if not isinstance(name, str):
            raise lines.problem(n, '"name" must be a string')
        yield CredentialRecord(n, name, loaded)


def _csv(lines: _Lines, spec: CredentialSpec, source: str) -> Iterator[CredentialRecord]:
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [c.strip() for c in header]
        if "name" not in columns:
            raise lines.problem(1, "the header has no 'name' column (it names each credential)")
        for column in columns:
            if columns.count(column) > 1:
                raise lines.problem(1, f"column {column!r} appears twice in the header")
            if column != "name" and spec.field(column) is None:
                known = ", ".join(f.name for f in spec.fields if f.name not in spec.managed_fields)
                raise lines.problem(1, f"type {spec.type!r} has no field {column!r} (its fields: {known})")
        start = lines.number + 1
        for row in reader:
            if row and len(row) != len(columns):
                raise lines.problem(
                    start, f"{len(row)} cells where the header has {len(columns)} (quote a value that holds a comma)"
                )
            if row:
                values = {c: v for c, v in zip(columns, row, strict=True) if c != "name" and v != ""}
                yield CredentialRecord(start, row[columns.index("name")], values)
            start = lines.number + 1
    except csv.Error as exc:  # the csv module's messages name no data
        raise lines.problem(lines.number, f"not valid CSV ({exc})") from None


def _env(lines: _Lines, spec: CredentialSpec, source: str, name: str) -> Iterator[CredentialRecord]:
    fields = {f.name.lower(): f.name for f in spec.fields}
    values: dict[str, str] = {}
    where: dict[str, int] = {}
    for text in lines:
        n = lines.number
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ENV_LINE.fullmatch(stripped)
        if m is None:
            raise lines.problem(n, "expected KEY=VALUE (or a # comment)")
        key, raw = m.group(1), m.group(2)
        field_name = fields.get(key.lower())
        if field_name is None:
            known = ", ".join(f.name for f in spec.fields if f.name not in spec.managed_fields)
            raise lines.problem(n, f"type {spec.type!r} has no field {key!r} (its fields: {known}; any case)")
        if field_name in values:
            raise lines.problem(n, f"field {field_name!r} is set already at line {where[field_name]}")
        try:
            values[field_name] = _env_value(raw)
        except _BadValue as exc:
            raise lines.problem(n, str(exc)) from None
        where[field_name] = n
    if values:
        yield CredentialRecord(min(where.values()), name, values, where)


class _BadValue(Exception):
    """A .env value's problem (its text names no part of the value)."""


def _env_value(raw: str) -> str:
    """The value of a .env line: quoted ('…' as it is, "…" with escapes) or not (up to a ` #` comment)."""
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = _closing_quote(raw, quote)
        if end is None:
            raise _BadValue("the quote that opens the value is not closed on its line (a value is one line)")
        rest = raw[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise _BadValue("text after the quoted value (a comment starts with #)")
        inner = raw[1:end]
        if quote == '"':
            inner = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1)), inner)
        return inner
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def _closing_quote(raw: str, quote: str) -> int | None:
    i = 1
    while i < len(raw):
        if quote == '"' and raw[i] == "\\":
            i += 2
            continue
        if raw[i] == quote:
            return i
        i += 1
    return None
