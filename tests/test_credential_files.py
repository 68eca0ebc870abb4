"""Reading credential files: which format a name says, and what JSON lines, CSV and .env lines become (the
command and its refusals are in test_importing.py)."""

from __future__ import annotations

import pytest

from mcp_credgate.credential_files import CredentialRecord, format_of, read_records, text_lines
from mcp_credgate.declarations import Catalog
from mcp_credgate.errors import CredentialValueError

pytestmark = pytest.mark.no_store


@pytest.mark.parametrize(
    "filename, fmt",
    [
        ("keys.jsonl", "jsonl"),
        ("dir.d/KEYS.NDJSON", "jsonl"),
        ("keys.csv", "csv"),
        (".env", "env"),
        ("/srv/app/.env", "env"),
        (".env.production", "env"),
        ("prod.env", "env"),
        ("keys.json", None),
        ("keys", None),
        ("csv", None),
        ("env.txt", None),
    ],
)
def test_the_format_a_files_name_says(filename: str, fmt: str | None) -> None:
    assert format_of(filename) == fmt


def records(text: str, fmt: str, catalog: Catalog, name: str | None = None) -> list[CredentialRecord]:
    lines = text_lines(text.encode().splitlines(keepends=True))
    return list(read_records(lines, fmt, catalog.types["account"], source="f", name=name))  # type: ignore[arg-type]


def test_dotenv_values_quoted_or_not_with_comments_and_export(catalog: Catalog) -> None:
    text = (
        "\ufeff# a comment\n"
        "export USERNAME=alice # who\n"
        "\n"
        'password = "a \\"quoted\\" # value"   # the password\n'
        "Note='single #quoted \\n kept as is'\n"
    )
    (record,) = records(text, "env", catalog, name="acct")
    assert record.name == "acct"
    assert record.values == {
        "username": "alice",
        "password": 'a "quoted" # value',
        "note": "single #quoted \\n kept as is",
    }
    assert record.line == 2 and record.line_of("password") == 4 and record.line_of("note") == 5


def test_csv_rows_keep_their_first_lines_number_across_quoted_line_breaks(catalog: Catalog) -> None:
    text = 'name,username,password\r\na,"multi\nline",p1\r\nb,u,p2\r\n\r\nc,u,"p3"\r\n'
    found = records(text, "csv", catalog)
    assert [(r.line, r.name) for r in found] == [(2, "a"), (4, "b"), (6, "c")]
    assert found[0].values == {"username": "multi\nline", "password": "p1"}


def test_json_lines_numbers_count_blank_lines(catalog: Catalog) -> None:
    text = '{"name": "a", "password": "p"}\n\n  \n{"name": "b", "username": "u"}\n'
    assert [(r.line, r.name, r.values) for r in records(text, "jsonl", catalog)] == [
        (1, "a", {"password": "p"}),
        (4, "b", {"username": "u"}),
    ]


def test_a_parsers_message_that_would_quote_the_line_is_cut(catalog: Catalog) -> None:
    with pytest.raises(CredentialValueError) as refused:
        records('{"name": "a", "password": "secret\x01value"}\n', "jsonl", catalog)
    assert str(refused.value) == "f, line 1: not valid JSON (Invalid control character at column 34)"
