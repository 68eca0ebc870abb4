"""Tampering (issue 7): a stored credential altered behind credgate's back is refused, by name, and nothing else.

A real store (SQLite or PostgreSQL), an in-process gateway and a local recording upstream. Each case alters one
credential's row with a plain database connection (as an attacker with write access to the database, or a bad
disk, would) while a gateway serves: a bit flipped in a value's nonce, ciphertext or tag, in a wrapped data key, in a
key id or uid; a value copied from another credential or into another field; a wrapped data key copied from
another credential. Afterwards, both in the running gateway (whose binding cache held the credential) and in a
freshly started one:

* the tampered credential's tool answers with the structured `credential_invalid` warning (isError) that names
  the credential (and the field, where one value is at fault), and nothing is sent upstream for it;
* no secret comes back to the agent in any form (leak scan over every byte received);
* the other credentials' tools keep working, each with its own secret;
* `credgate cred show` of the tampered credential exits 1 with one clear line naming it, no traceback, and
  `credgate cred show` of the others still works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mcp import Client

from mcp_credgate.cli import cli
from mcp_credgate.crypto import NONCE_BYTES
from tests.support.gateway import (
    TOKEN_FIELDS,
    Transcript,
    Upstream,
    World,
    assert_no_leak,
    connect,
    credgate_env,
    http_tool,
    make_canary,
)
from tests.support.raw_db import RawDb, raw_db

pytestmark = pytest.mark.anyio

TOKENS = {"svc-a": make_canary("TA", rich=True), "svc-b": make_canary("TB"), "svc-c": make_canary("TC", rich=True)}
USERNAME = make_canary("UD")  # not a secret field: it may come back in the echo
PASSWORD = make_canary("PD", rich=True)
SECRETS = (*TOKENS.values(), PASSWORD)
ACCT = 'type = "acct"\nfields = [ { name = "username", kind = "username" }, { name = "password", kind = "password" } ]'
TOOL_OF = {"svc-a": "tool_a", "svc-b": "tool_b", "svc-c": "tool_c", "acct-d": "tool_d"}
GROUP = "ops"
TAG_BYTES = 16

Mutate = Callable[[RawDb], None]


# -- the alterations -------------------------------------------------------------------------------


def _flip(blob: bytes, index: int) -> bytes:
    data = bytearray(blob)
    data[index] ^= 0x01
    return bytes(data)


def _cred_id(db: RawDb, name: str) -> int:
    return int(db.execute("SELECT id FROM credentials WHERE name = ?", (name,)).fetchone()[0])


def _value(db: RawDb, cred: str, field: str) -> bytes:
    row = db.execute(
        "SELECT ciphertext FROM credential_values WHERE credential_id = ? AND field = ?", (_cred_id(db, cred), field)
    ).fetchone()
    return bytes(row[0])


def _set_value(db: RawDb, cred: str, field: str, blob: bytes) -> None:
    db.execute(
        "UPDATE credential_values SET ciphertext = ? WHERE credential_id = ? AND field = ?",
        (blob, _cred_id(db, cred), field),
    )


def _column(db: RawDb, cred: str, column: str) -> Any:
    return db.execute(f"SELECT {column} FROM credentials WHERE name = ?", (cred,)).fetchone()[0]


def _set_column(db: RawDb, cred: str, column: str, value: object) -> None:
    db.execute(f"UPDATE credentials SET {column} = ? WHERE name = ?", (value, cred))


def flip_value(cred: str, field: str, where: str) -> Mutate:
    def mutate(db: RawDb) -> None:
        blob = _value(db, cred, field)
        index = {"nonce": 3, "ciphertext": NONCE_BYTES + 2, "tag": len(blob) - 5}[where]
        assert where != "ciphertext" or index < len(blob) - TAG_BYTES
        _set_value(db, cred, field, _flip(blob, index))

    return mutate


def truncate_value(cred: str, field: str) -> Mutate:
    return lambda db: _set_value(db, cred, field, _value(db, cred, field)[:-TAG_BYTES])


def flip_dek(cred: str, where: str) -> Mutate:
    def mutate(db: RawDb) -> None:
        blob = bytes(_column(db, cred, "wrapped_dek"))
        index = {"nonce": 0, "ciphertext": NONCE_BYTES + 17, "tag": len(blob) - 1}[where]
        _set_column(db, cred, "wrapped_dek", _flip(blob, index))

    return mutate


def flip_text(cred: str, column: str) -> Mutate:
    def mutate(db: RawDb) -> None:
        text = str(_column(db, cred, column))
        _set_column(db, cred, column, text[:-1] + chr(ord(text[-1]) ^ 0x01))

    return mutate


def copy_value(src: str, src_field: str, dst: str, dst_field: str) -> Mutate:
    return lambda db: _set_value(db, dst, dst_field, _value(db, src, src_field))


def copy_dek(src: str, dst: str) -> Mutate:
    return lambda db: _set_column(db, dst, "wrapped_dek", _column(db, src, "wrapped_dek"))


def copy_dek_and_values(src: str, dst: str) -> Mutate:
    def mutate(db: RawDb) -> None:
        copy_dek(src, dst)(db)
        copy_value(src, "token", dst, "token")(db)

    return mutate


def swap_field_names(cred: str, first: str, second: str) -> Mutate:
    def mutate(db: RawDb) -> None:
        cid = _cred_id(db, cred)
        db.execute("UPDATE credential_values SET field = '~' WHERE credential_id = ? AND field = ?", (cid, first))
        db.execute("UPDATE credential_values SET field = ? WHERE credential_id = ? AND field = ?", (first, cid, second))
        db.execute("UPDATE credential_values SET field = ? WHERE credential_id = ? AND field = '~'", (second, cid))

    return mutate


@dataclass(frozen=True)
class Case:
    target: str  # the credential altered
    fields: frozenset[str]  # the field(s) the warning may name; empty: the whole credential (its data key)
    mutate: Mutate


ANY_ACCT_FIELD = frozenset({"username", "password"})
CASES: dict[str, Case] = {
    "value-nonce-bit": Case("svc-a", frozenset({"token"}), flip_value("svc-a", "token", "nonce")),
    "value-ciphertext-bit": Case("svc-a", frozenset({"token"}), flip_value("svc-a", "token", "ciphertext")),
    "value-tag-bit": Case("svc-a", frozenset({"token"}), flip_value("svc-a", "token", "tag")),
    "value-tag-cut-off": Case("svc-c", frozenset({"token"}), truncate_value("svc-c", "token")),
    "secret-field-value-bit": Case("acct-d", frozenset({"password"}), flip_value("acct-d", "password", "ciphertext")),
    "dek-nonce-bit": Case("svc-b", frozenset(), flip_dek("svc-b", "nonce")),
    "dek-ciphertext-bit": Case("svc-b", frozenset(), flip_dek("svc-b", "ciphertext")),
    "dek-tag-bit": Case("svc-b", frozenset(), flip_dek("svc-b", "tag")),
    "key-id-bit": Case("svc-c", frozenset(), flip_text("svc-c", "key_id")),
    "key-id-emptied": Case("acct-d", frozenset(), lambda db: _set_column(db, "acct-d", "key_id", "")),
    "uid-bit": Case("svc-a", frozenset(), flip_text("svc-a", "uid")),
    "value-copied-from-another-credential": Case(
        "svc-a", frozenset({"token"}), copy_value("svc-b", "token", "svc-a", "token")
    ),
    "value-copied-into-another-field": Case(
        "acct-d", frozenset({"username"}), copy_value("acct-d", "password", "acct-d", "username")
    ),
    "field-names-swapped": Case("acct-d", ANY_ACCT_FIELD, swap_field_names("acct-d", "username", "password")),
    "dek-copied-from-another-credential": Case("svc-c", frozenset(), copy_dek("svc-a", "svc-c")),
    "dek-and-value-copied-from-another-credential": Case("svc-b", frozenset(), copy_dek_and_values("svc-c", "svc-b")),
}


# -- the installation --------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream) -> Iterator[World]:
    svc = 'type = "svc"\n' + TOKEN_FIELDS
    tools = {
        tool: http_tool(tool, upstream.url(f"/{tool}"), credential=svc, headers='{ X-Token = "{cred.token}" }')
        for cred, tool in TOOL_OF.items()
        if cred.startswith("svc")
    }
    tools["tool_d"] = http_tool(
        "tool_d",
        upstream.url("/tool_d"),
        credential=ACCT,
        headers='{ X-User = "{cred.username}", X-Pass = "{cred.password}" }',
    )
    w = World.create(tmp_path, tools)
    for name, token in TOKENS.items():
        w.add_credential(name, "svc", {"token": token})
    w.add_credential("acct-d", "acct", {"username": USERNAME, "password": PASSWORD})
    w.allow(GROUP, *TOOL_OF.values())
    for cred, tool in TOOL_OF.items():
        w.bind(GROUP, tool, cred)
    yield w
    w.close()


def sent_secret(upstream: Upstream, tool: str) -> list[tuple[str | None, ...]]:
    return [
        (s.header("X-Token"), s.header("X-User"), s.header("X-Pass")) for s in upstream.seen() if s.path == f"/{tool}"
    ]


def expected_secret(cred: str) -> tuple[str | None, ...]:
    return (None, USERNAME, PASSWORD) if cred == "acct-d" else (TOKENS[cred], None, None)


async def call_every_tool(client: Client, transcript: Transcript, upstream: Upstream, tampered: str | None) -> None:
    upstream.clear()
    for cred, tool in TOOL_OF.items():
        result = await transcript.call(client, tool, {})
        if cred == tampered:
            continue  # checked by the caller
        assert not result.is_error, (tool, result)
        assert sent_secret(upstream, tool) == [expected_secret(cred)], tool


def check_refusal(transcript: Transcript, upstream: Upstream, case: Case) -> None:
    tool = TOOL_OF[case.target]
    assert sent_secret(upstream, tool) == [], "a request was sent upstream with a tampered credential"
    refused = transcript.chunks[-len(TOOL_OF) + list(TOOL_OF).index(case.target)]
    from mcp_types import CallToolResult

    result = CallToolResult.model_validate_json(refused)
    assert result.is_error
    warning = result.structured_content
    assert warning is not None
    assert warning["warning"] == "credential_invalid"
    assert warning["tool"] == tool and warning["group"] == GROUP
    assert warning["credential_type"] == ("acct" if case.target == "acct-d" else "svc")
    assert warning["setup_command"].split()[:4] == ["credgate", "cred", "update", case.target]
    if case.fields:
        assert len(warning["missing_fields"]) == 1 and warning["missing_fields"][0] in case.fields, warning
    else:
        assert warning["missing_fields"] == [], warning
    text = result.content[0].text  # type: ignore[union-attr]
    assert case.target in text and tool in text and "Nothing was sent" in text


def run_credgate(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mcp_credgate",
            "--home",
            str(world.settings.home),
            "--tools-dir",
            str(world.tools_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        env=credgate_env(world.settings),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("case_name", list(CASES))
async def test_a_tampered_credential_is_refused_by_name_and_the_others_keep_working(
    world: World, upstream: Upstream, case_name: str
) -> None:
    case = CASES[case_name]
    transcript = Transcript()
    async with world.gateway() as gw, connect(gw, GROUP) as client:
        await call_every_tool(client, transcript, upstream, tampered=None)  # warms the binding cache

        with raw_db(world.settings) as db:
            case.mutate(db)

        await call_every_tool(client, transcript, upstream, tampered=case.target)
        check_refusal(transcript, upstream, case)

    # a gateway started after the tampering (a restart) refuses the same credential and serves the others
    async with world.gateway() as gw, connect(gw, GROUP) as client:
        await call_every_tool(client, transcript, upstream, tampered=case.target)
        check_refusal(transcript, upstream, case)

    assert_no_leak(transcript.text(), *SECRETS)
    refusals = [r for r in world.audit() if r.tool == TOOL_OF[case.target] and r.outcome != "ok"]
    assert [(r.outcome, r.credential) for r in refusals] == [("error", case.target)] * 2

    shown = run_credgate(world, "cred", "show", case.target)
    assert shown.returncode == 1, shown
    assert shown.stdout == ""
    lines = shown.stderr.strip().splitlines()
    assert len(lines) == 1, shown.stderr
    assert "Traceback" not in shown.stderr and "internal error" not in shown.stderr
    assert f"'{case.target}'" in lines[0]
    if len(case.fields) == 1:
        assert f"field '{next(iter(case.fields))}'" in lines[0], lines[0]
    assert_no_leak(shown.stderr, *SECRETS, USERNAME)

    runner = CliRunner()
    base = ["--home", str(world.settings.home), "--tools-dir", str(world.tools_dir)]
    for other in TOOL_OF:
        if other != case.target:
            result = runner.invoke(cli, [*base, "--json", "cred", "show", other], catch_exceptions=False)
            assert result.exit_code == 0, result.output
    listed = runner.invoke(cli, [*base, "cred", "list"], catch_exceptions=False)
    assert listed.exit_code == 0 and all(name in listed.stdout for name in TOOL_OF), listed.output

    # the remedy the refusal names (`credgate cred update NAME --from-json -`, every field) sets it up again
    fresh = (
        {"username": "fresh-user", "password": "fresh password"}
        if case.target == "acct-d"
        else {"token": "fresh-token"}
    )
    updated = runner.invoke(
        cli, [*base, "cred", "update", case.target, "--from-json", "-"], input=json.dumps(fresh), catch_exceptions=False
    )
    assert updated.exit_code == 0, updated.output
    async with world.gateway() as gw, connect(gw, GROUP) as client:
        upstream.clear()
        repaired = await client.call_tool(TOOL_OF[case.target], {})
    assert not repaired.is_error, repaired
    sent = sent_secret(upstream, TOOL_OF[case.target])
    assert sent == [(None, "fresh-user", "fresh password") if case.target == "acct-d" else ("fresh-token", None, None)]


async def test_a_partial_update_of_a_credential_whose_data_key_does_not_open_is_refused(world: World) -> None:
    with raw_db(world.settings) as db:
        flip_dek("acct-d", "tag")(db)
    base = ["--home", str(world.settings.home), "--tools-dir", str(world.tools_dir)]

    result = CliRunner().invoke(cli, [*base, "cred", "update", "acct-d", "--set", "password=only-this-one"])

    assert result.exit_code == 1
    assert "'acct-d'" in result.stderr and "every field" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
