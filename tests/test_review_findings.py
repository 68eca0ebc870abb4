"""Regression tests for defects found in a security review (one section per finding)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mcp import Client

import mcp_credgate.audit as audit_module
import mcp_credgate.store.rotation as store_module
from mcp_credgate import admin
from mcp_credgate.audit import AuditLog
from mcp_credgate.config import Settings
from mcp_credgate.declarations import Catalog
from mcp_credgate.handlers.http import MAX_ERROR_BODY
from mcp_credgate.redact import Redactor
from mcp_credgate.store import AuditRow, Store
from tests.support.cli import CliRun
from tests.support.gateway import (
    Upstream,
    World,
    _Handler,
    assert_no_leak,
    connect,
    http_tool,
    make_canary,
    python_tool,
    result_text,
    rotate_master_key,
    running_upstream,
)
from tests.support.samples import ACCOUNT

TOKEN = make_canary("RV")  # plain: its position in an echoed JSON body is predictable
STR = '{ type = "string" }'

HANDLERS = """
def leaky_bytes(args, credential):
    return {"raw": credential["token"].encode()}


def leaky_set(args, credential):
    return {"tokens": {credential["token"]}}


def leaky_mapping(args, credential):
    return {"credential": credential}
"""


@pytest.fixture
def away() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream, away: Upstream) -> Iterator[World]:
    upstream.redirects["/hop-away-put"] = away.url("/landed")
    cred = 'type = "svc"\nfields = [ { name = "token", kind = "token" } ]'
    tools = {
        "fail400": http_tool(
            "fail400", upstream.url("/status/400"), query='{ pad = "{args.pad}" }', properties=f"properties.pad = {STR}"
        ),
        "put_hop": http_tool(
            "put_hop",
            upstream.url("/hop-away-put"),
            method="PUT",
            headers="{}",
            extra='json = { key = "{cred.token}" }',
        ),
        "leaky_bytes": python_tool("leaky_bytes", "review_leaky_handlers:leaky_bytes", credential=cred),
        "leaky_set": python_tool("leaky_set", "review_leaky_handlers:leaky_set", credential=cred),
        "leaky_mapping": python_tool("leaky_mapping", "review_leaky_handlers:leaky_mapping", credential=cred),
    }
    w = World.create(tmp_path, tools, files={"review_leaky_handlers.py": HANDLERS})
    w.add_credential("svc-main", "svc", {"token": TOKEN})
    w.allow_and_bind("dev", tools, {"svc": "svc-main"})
    yield w
    w.close()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    async with world.gateway() as gw, connect(gw, "dev") as c:
        yield c


# -- 1. an error body cut before redaction kept part of the secret ------------------------------


@pytest.mark.anyio
async def test_an_error_body_cut_through_a_secret_leaks_no_part_of_it(client: Client, upstream: Upstream) -> None:
    await client.call_tool("fail400", {"pad": ""})
    start = _Handler._echo(upstream.seen()[-1]).decode().index(TOKEN)
    # the pad appears twice in the echo (target and query) before the Authorization header
    cut_inside = MAX_ERROR_BODY - 12
    pad = (cut_inside - start) // 2
    upstream.clear()

    result = await client.call_tool("fail400", {"pad": "a" * pad})

    echoed = _Handler._echo(upstream.seen()[-1]).decode()
    position = echoed.index(TOKEN)
    assert position < MAX_ERROR_BODY < position + len(TOKEN)  # the cut really falls inside the secret
    assert result.is_error
    text = result.model_dump_json()
    assert TOKEN[: MAX_ERROR_BODY - position] not in text
    assert_no_leak(text, TOKEN)


# -- 2. a cross-origin redirect re-sent a body that carries the credential -----------------------


@pytest.mark.anyio
async def test_a_redirect_to_another_origin_never_carries_a_credential_in_the_body(
    client: Client, upstream: Upstream, away: Upstream
) -> None:
    result = await client.call_tool("put_hop", {})

    assert TOKEN in upstream.seen()[0].body.decode()  # the declared origin got it
    for seen in away.seen():
        assert TOKEN not in seen.everything()
    assert_no_leak(result.model_dump_json(), TOKEN)


# -- 3. structured content of a python handler was not redacted for non-JSON values ------------


@pytest.mark.anyio
@pytest.mark.parametrize("tool", ["leaky_bytes", "leaky_set", "leaky_mapping"])
async def test_structured_content_with_non_json_values_is_redacted(client: Client, tool: str) -> None:
    result = await client.call_tool(tool, {})

    assert_no_leak(result.model_dump_json(), TOKEN)
    assert "redacted" in result_text(result) or "••••" in result_text(result)


# -- 4. a credential added while a rotation finishes bricked the store ----------------------------


def _add(store: Store, catalog: Catalog, name: str, values: dict[str, str]) -> None:
    admin.add_credential(store, catalog.types["account"], name, values)


def test_a_credential_added_during_a_rotation_leaves_a_store_that_opens(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotating, _ = Store.initialise(settings, env={})
    _add(rotating, catalog, "before", ACCOUNT)
    other = Store.open(settings, env={})  # e.g. `credgate cred add` in another terminal
    late = {"username": "late", "password": "added during the rotation"}
    real_replace = os.replace

    def replace_after_a_concurrent_add(src: object, dst: object) -> None:
        _add(other, catalog, "late", late)  # lands after the re-wrap loop, before the final step
        real_replace(src, dst)  # type: ignore[arg-type]

    with monkeypatch.context() as mp:
        mp.setattr(store_module.os, "replace", replace_after_a_concurrent_add)
        rotate_master_key(rotating, settings)
    rotating.close()
    other.close()

    with Store.open(settings, env={}) as reopened:
        assert dict(reopened.read_credential("before")) == ACCOUNT
        assert dict(reopened.read_credential("late")) == late


# -- 5. a rotation by a process that opened the store earlier threw the pending key away ---------


def test_a_rotation_from_a_process_opened_earlier_keeps_the_pending_key(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = Store.initialise(settings, env={})
    added = {}
    for i in range(4):
        values = {"username": f"user{i}", "password": f"pw-{i}-{os.urandom(6).hex()}"}
        _add(first, catalog, f"acct{i}", values)
        added[f"acct{i}"] = values
    second = Store.open(settings, env={})  # opened before the first rotation began

    calls = {"n": 0}
    real_wrap = store_module.MasterKey.wrap

    def wrap_then_die(self: object, *args: object) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the first rotation dies with two data keys re-wrapped
        return real_wrap(self, *args)  # type: ignore[arg-type]

    with monkeypatch.context() as mp:
        mp.setattr(store_module.MasterKey, "wrap", wrap_then_die)
        with pytest.raises(KeyboardInterrupt):
            rotate_master_key(first, settings)
    first.close()

    second.rotate_master_key(settings, key_from_env=False)
    second.close()

    with Store.open(settings, env={}) as reopened:
        assert {n: dict(reopened.read_credential(n)) for n in added} == added


# -- 6. JSON with HTML-safe escapes (Go's encoding/json default) --------------------------------


def test_a_secret_in_html_safe_json_escapes_is_redacted() -> None:
    redactor = Redactor({"password": "pa&ss<wo>rd-1234"})

    out = redactor.text('{"error":"bad password pa\\u0026ss\\u003cwo\\u003erd-1234"}')

    assert out == '{"error":"bad password [redacted:password]"}'


# -- 7. `--set` without FIELD= echoed the start of the value ------------------------------------


def test_a_set_without_a_field_name_does_not_echo_the_value(run_cli: CliRun) -> None:
    run_cli("init")
    value = "d2tfc2VjcmV0dmFsdWVfMTIz=="  # a base64 secret given without `api_key=`

    result = run_cli("cred", "add", "w", "--tool", "weather", "--set", value)

    assert result.exit_code == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert value.rstrip("=") not in result.stdout + result.stderr


def test_a_credential_added_during_a_rotation_that_then_dies_leaves_a_store_that_opens(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotating, _ = Store.initialise(settings, env={})
    _add(rotating, catalog, "before", ACCOUNT)
    other = Store.open(settings, env={})
    late = {"username": "late", "password": "added during the rotation"}
    real_replace = os.replace

    def add_then_replace_then_die(src: object, dst: object) -> None:
        _add(other, catalog, "late", late)
        real_replace(src, dst)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # the rotation dies before its final transaction

    with monkeypatch.context() as mp:
        mp.setattr(store_module.os, "replace", add_then_replace_then_die)
        with pytest.raises(KeyboardInterrupt):
            rotate_master_key(rotating, settings)
    rotating.close()
    other.close()

    with Store.open(settings, env={}) as reopened:
        assert dict(reopened.read_credential("late")) == late
        reopened.rotate_master_key(settings, key_from_env=False)
    with Store.open(settings, env={}) as final:
        assert dict(final.read_credential("before")) == ACCOUNT
        assert dict(final.read_credential("late")) == late


@pytest.mark.sqlite_only  # each rotation makes its own key; a shared store's rotate to the key staged before (below)
def test_two_rotations_at_once_agree_on_one_key(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = Store.initialise(settings, env={})
    added = {}
    for i in range(4):
        values = {"username": f"user{i}", "password": f"pw-{i}-{os.urandom(6).hex()}"}
        _add(first, catalog, f"acct{i}", values)
        added[f"acct{i}"] = values
    second = Store.open(settings, env={})
    errors: list[BaseException] = []

    def rotate_second() -> None:
        try:
            second.rotate_master_key(settings, key_from_env=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=rotate_second)
    real_write_key_file = store_module.write_key_file

    def start_the_other_rotation_first(path: Path, key: object) -> None:
        if not thread.is_alive() and thread.ident is None:
            thread.start()
            time.sleep(0.3)  # the other rotation has begun (and waits if this one holds the write lock)
        real_write_key_file(path, key)  # type: ignore[arg-type]

    with monkeypatch.context() as mp:
        mp.setattr(store_module, "write_key_file", start_the_other_rotation_first)
        first.rotate_master_key(settings, key_from_env=False)
        thread.join(30)
    first.close()
    second.close()

    assert not errors, errors
    with Store.open(settings, env={}) as reopened:
        assert {n: dict(reopened.read_credential(n)) for n in added} == added


@pytest.mark.postgresql_only
def test_two_rotations_at_once_on_a_shared_store_agree_on_the_staged_key(settings: Settings, catalog: Catalog) -> None:
    first, _ = Store.initialise(settings, env={})
    added = {}
    for i in range(20):
        values = {"username": f"user{i}", "password": f"pw-{i}-{os.urandom(6).hex()}"}
        _add(first, catalog, f"acct{i}", values)
        added[f"acct{i}"] = values
    staged, _ = first.stage_master_key(settings)  # `credgate key new`, then both admins run `credgate key rotate`
    first.close()
    rotated: dict[str, str] = {}
    errors: list[BaseException] = []

    def rotate(name: str) -> None:
        try:
            with Store.open(settings, env={}) as store:
                rotated[name] = store.rotate_master_key(settings, key_from_env=False).key_id
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=rotate, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not errors, errors
    assert rotated == {"first": staged.key_id, "second": staged.key_id}
    assert settings.key_path.read_text().strip() == staged.to_text()
    with Store.open(settings, env={}) as reopened:
        assert {n: dict(reopened.read_credential(n)) for n in added} == added
        keys = [(r["key_id"], r["state"]) for r in reopened._db.execute("SELECT key_id, state FROM master_keys")]
        assert keys == [(staged.key_id, "current")]


# -- 8. an unexpected error in the audit writer stopped all later auditing -----------------------


@pytest.mark.no_store  # a stand-in writer raising a driver error, whatever the backend
def test_the_audit_writer_survives_an_unexpected_write_error() -> None:
    written: list[AuditRow] = []
    failures = {"left": 5}

    def write(rows: list[AuditRow]) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        written.extend(rows)

    log = AuditLog(write)
    log.record("g", None, "first", None, "ok", time.perf_counter())
    time.sleep(audit_module.FLUSH_SECONDS * 2 + 1.6)  # the first batch fails all its attempts
    log.record("g", None, "second", None, "ok", time.perf_counter())
    log.close()

    assert [r.tool for r in written] == ["second"]
