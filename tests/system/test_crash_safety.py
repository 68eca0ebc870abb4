"""Crash safety (issue 7): `kill -9` a real `credgate` process at seeded random points, then check the store.

Each operation (`cred add`, `cred update`, `cred rm`, `bind`, `key rotate`) runs many times against one store,
as `python -m mcp_credgate` subprocesses; most runs are killed with SIGKILL. Kill points are random and seeded
(`random.Random(seed)`): mostly a random delay after the process opened the store (its `-wal` file appears, or
on PostgreSQL its connection), where the writing happens, sometimes a random delay from the spawn. After every
run:

* `PRAGMA integrity_check` is ok and `PRAGMA foreign_key_check` is empty (on PostgreSQL: no row's foreign key
  points nowhere);
* the store equals the model before the command or the model after it, exactly (credentials with all their
  values, bindings): a command that exited 0 before the kill must be fully there, a killed one fully there or
  fully absent, never half;
* every credential decrypts with the key files as left on disk (`Store.open`, then `read_credential`);
* on a copy of the data folder, `credgate key rotate` completes and everything still decrypts, under one key
  (SQLite: there the data folder holds the whole store).

The kills of `key rotate` are about SQLite's rotation (which makes the new key itself, in master.key.new).

One more run kills `credgate serve --group` under call load from a stdio MCP client; the store and its audit
table must be sound afterwards.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from click.testing import CliRunner
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_credgate import admin
from mcp_credgate.cli import cli
from mcp_credgate.config import Settings
from mcp_credgate.declarations import load_catalog
from mcp_credgate.store import Store
from tests.support.gateway import TOKEN_FIELDS, Upstream, World, credgate_env, http_tool, make_canary, store_env
from tests.support.raw_db import raw_db
from tests.support.samples import WEATHER_KEY

KILLED = -signal.SIGKILL


# -- the model: what the store holds, as the user sees it --------------------------------------------


@dataclass(frozen=True)
class Model:
    creds: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # name → (type, values)
    bindings: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (group, tool) → credential

    def with_cred(self, name: str, type_: str, values: dict[str, str]) -> Model:
        return replace(self, creds={**self.creds, name: (type_, values)})


def db_checks(settings: Settings) -> None:
    """Integrity and foreign keys, on a plain connection (which also recovers a WAL left by the kill)."""
    with raw_db(settings) as db:
        assert db.integrity_problems() == []


def read_model(settings: Settings) -> Model:
    """Everything decrypted with the key files as they are on disk (no CREDGATE_MASTER_KEY)."""
    with Store.open(settings, env={}) as store:
        creds = {}
        for info in store.list_credentials():
            cred = store.read_credential(info.name)
            creds[info.name] = (cred.type, dict(cred.items()))
        rows = store._query(
            "SELECT g.name AS grp, gt.tool, c.name AS cred FROM group_tools gt JOIN groups g ON g.id = gt.group_id"
            " LEFT JOIN credentials c ON c.id = gt.credential_id"
        )
        bindings = {(r["grp"], r["tool"]): r["cred"] for r in rows}
    return Model(creds, bindings)


def key_state(settings: Settings) -> tuple[list[tuple[str, str]], set[str]]:
    with raw_db(settings) as db:
        keys = sorted(db.execute("SELECT key_id, state FROM master_keys").fetchall())
        used = {r[0] for r in db.execute("SELECT key_id FROM credentials")}
    return keys, used


def rotate_a_copy(settings: Settings, scratch: Path, expected: Model) -> None:
    """`credgate key rotate` completes on a copy of the data folder as the kill left it; all still decrypts."""
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(settings.home, scratch)
    copy = replace(settings, home=scratch)
    result = CliRunner().invoke(
        cli,
        ["--home", str(scratch), "--tools-dir", str(settings.tools_dirs[0]), "key", "rotate"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert not copy.pending_key_path.exists()
    keys, used = key_state(copy)
    assert [state for _, state in keys] == ["current"] and used <= {keys[0][0]}
    db_checks(copy)
    assert read_model(copy) == expected


def rotate_for_real(settings: Settings, timeout: float) -> subprocess.CompletedProcess[str]:
    """`credgate key rotate` as a real process on the store; on a shared (PostgreSQL) store after `credgate key
    new`, as a shared store rotates only to a key made first."""

    def credgate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mcp_credgate",
                "--home",
                str(settings.home),
                "--tools-dir",
                str(settings.tools_dirs[0]),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=credgate_env(settings),
        )

    if settings.database_url:
        staged = credgate("key", "new")
        assert staged.returncode == 0, staged.stderr
    return credgate("key", "rotate")


# -- killing a real process ---------------------------------------------------------------------------


@dataclass
class Killer:
    """Runs `credgate` subprocesses and kills them at seeded random points."""

    settings: Settings
    rng: random.Random
    window: float = 0.1  # seconds from "store opened" to exit, measured by `calibrate`
    startup: float = 0.4  # seconds from spawn to "store opened"
    kills: int = 0
    acknowledged: int = 0
    _pg: psycopg.Connection[tuple[Any, ...]] | None = None

    def _spawn(self, args: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mcp_credgate",
                "--home",
                str(self.settings.home),
                "--tools-dir",
                str(self.settings.tools_dirs[0]),
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=credgate_env(self.settings),
        )

    def _wal(self) -> Path:
        return self.settings.database_path.with_name(self.settings.database_path.name + "-wal")

    def _sessions(self) -> set[int]:
        """On PostgreSQL, the server processes of credgate's connections (empty on SQLite)."""
        if self.settings.database_url is None:
            return set()
        if self._pg is None:
            self._pg = psycopg.connect(self.settings.database_url, autocommit=True)  # each query a fresh look
        rows = self._pg.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'credgate'")
        return {pid for (pid,) in rows}

    def _opened(self, earlier_sessions: set[int]) -> bool:
        """The process has the store open: its -wal file appeared, or its PostgreSQL connection."""
        if self.settings.database_url is None:
            return self._wal().exists()
        return bool(self._sessions() - earlier_sessions)

    def _wait_for_open(self, proc: subprocess.Popen[str], deadline: float, earlier: set[int]) -> float | None:
        while proc.poll() is None and time.monotonic() < deadline:
            if self._opened(earlier):
                return time.monotonic()
            time.sleep(0.0005)
        return None

    def _stop_watching(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    def calibrate(self, args: list[str]) -> int:
        """One run to completion, timing its phases: that run is an acknowledged change."""
        assert self.settings.database_url or not self._wal().exists()
        earlier, spawned = self._sessions(), time.monotonic()
        proc = self._spawn(args)
        opened = self._wait_for_open(proc, spawned + 60, earlier) or spawned
        self._stop_watching()
        _, stderr = proc.communicate(timeout=60)
        ended = time.monotonic()
        assert proc.returncode == 0, stderr
        self.startup, self.window = opened - spawned, max(ended - opened, 0.02)
        self.acknowledged += 1
        return 0

    def run(self, args: list[str]) -> int:
        """Run once and SIGKILL it at a random point; returns its exit status (0: it finished first)."""
        assert self.settings.database_url or not self._wal().exists(), "a previous check left the store open"
        earlier, spawned = self._sessions(), time.monotonic()
        proc = self._spawn(args)
        if self.rng.random() < 0.8:  # a random point after the store is open: where the writes happen
            delay = self.rng.uniform(0, self.window)
            opened = self._wait_for_open(proc, spawned + 60, earlier)
            start: float = opened if opened is not None else time.monotonic()
        else:  # a random point of the whole run, start-up included
            delay = self.rng.uniform(0, (self.startup + self.window) * 1.05)
            start = spawned
        self._stop_watching()
        while proc.poll() is None and time.monotonic() < start + delay:
            time.sleep(0.0005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        elif start is not spawned:  # it was quicker than the calibration run: aim at its own pace
            self.window = max(min(self.window, time.monotonic() - start), 0.02)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode in (0, KILLED), stderr
        if proc.returncode == KILLED:
            self.kills += 1
        else:
            self.acknowledged += 1
        return proc.returncode


# -- the operations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    prepare: Callable[[Store, Settings, int], Model]  # (store, settings, runs) → the model as prepared
    command: Callable[[int], list[str]]  # run i → credgate arguments
    apply: Callable[[Model, int], Model]  # what run i changes, if it happens


def _account(i: int, tag: str) -> dict[str, str]:
    return {"username": f"user{i}", "password": f"{tag} password {i}", "note": f"{tag} note {i}"}


def _add_accounts(store: Store, settings: Settings, names: list[str], tag: str) -> Model:
    spec = load_catalog(settings.tools_dirs).types["account"]
    model = Model()
    for i, name in enumerate(names):
        admin.add_credential(store, spec, name, _account(i, tag))
        model = model.with_cred(name, "account", _account(i, tag))
    return model


def _prepare_add(store: Store, settings: Settings, runs: int) -> Model:
    return _add_accounts(store, settings, ["existing"], "old")


def _apply_add(model: Model, i: int) -> Model:
    return model.with_cred(f"new{i}", "account", _account(i, "new"))


def _prepare_update(store: Store, settings: Settings, runs: int) -> Model:
    return _add_accounts(store, settings, ["acct", "bystander"], "start")


def _apply_update(model: Model, i: int) -> Model:
    values = {**model.creds["acct"][1], "password": f"password {i}", "note": f"note {i}"}
    return model.with_cred("acct", "account", values)


def _prepare_rm(store: Store, settings: Settings, runs: int) -> Model:
    catalog = load_catalog(settings.tools_dirs)
    model = _add_accounts(store, settings, [f"r{i}" for i in range(runs)] + ["keep"], "rm")
    bindings: dict[tuple[str, str], str | None] = {}
    for i in range(runs):
        store.add_group(f"g{i}")
        admin.allow(store, catalog, f"g{i}", ["login"])
        admin.bind(store, catalog, f"g{i}", "login", f"r{i}")
        bindings[(f"g{i}", "login")] = f"r{i}"
    return replace(model, bindings=bindings)


def _apply_rm(model: Model, i: int) -> Model:
    creds = {k: v for k, v in model.creds.items() if k != f"r{i}"}
    return Model(creds, {**model.bindings, (f"g{i}", "login"): None})


def _weather_key(i: int) -> str:
    return f"wk_{i:04d}{WEATHER_KEY[3:]}"


def _prepare_bind(store: Store, settings: Settings, runs: int) -> Model:
    catalog = load_catalog(settings.tools_dirs)
    model = Model()
    for i in range(runs):
        admin.add_credential(store, catalog.types["weatherkey"], f"w{i}", {"api_key": _weather_key(i)})
        model = model.with_cred(f"w{i}", "weatherkey", {"api_key": _weather_key(i)})
    store.add_group("b")
    admin.allow(store, catalog, "b", ["weather", "forecast"])
    admin.bind(store, catalog, "b", "forecast", "w0")
    return replace(model, bindings={("b", "weather"): None, ("b", "forecast"): "w0"})


def _apply_bind(model: Model, i: int) -> Model:
    return replace(model, bindings={**model.bindings, ("b", "weather"): f"w{i}"})


def _prepare_rotate(size: int) -> Callable[[Store, Settings, int], Model]:
    def prepare(store: Store, settings: Settings, runs: int) -> Model:
        return _add_accounts(store, settings, [f"k{i}" for i in range(size)], "rot")

    return prepare


OPERATIONS = {
    "cred-add": Operation(
        _prepare_add,
        lambda i: [
            "cred",
            "add",
            f"new{i}",
            "--type",
            "account",
            *(f"--set={k}={v}" for k, v in _account(i, "new").items()),
        ],
        _apply_add,
    ),
    "cred-update": Operation(
        _prepare_update,
        lambda i: ["cred", "update", "acct", f"--set=password=password {i}", f"--set=note=note {i}"],
        _apply_update,
    ),
    "cred-rm": Operation(_prepare_rm, lambda i: ["cred", "rm", f"r{i}", "--force"], _apply_rm),
    "bind": Operation(_prepare_bind, lambda i: ["bind", "b", "weather", f"w{i}"], _apply_bind),
    "key-rotate": Operation(_prepare_rotate(500), lambda i: ["key", "rotate"], lambda model, i: model),
    "key-rotate-many": Operation(_prepare_rotate(2000), lambda i: ["key", "rotate"], lambda model, i: model),
}

# (operation, seed, runs): the first run of each is a calibration run to completion, the rest are killed
VARIANTS = [
    pytest.param("cred-add", 101, 10, id="cred-add"),
    pytest.param("cred-update", 202, 10, id="cred-update"),
    pytest.param("cred-rm", 303, 10, id="cred-rm"),
    pytest.param("bind", 404, 10, id="bind"),
    pytest.param("key-rotate", 505, 8, id="key-rotate", marks=pytest.mark.sqlite_only),
    pytest.param("key-rotate-many", 606, 10, id="key-rotate-many", marks=[pytest.mark.slow, pytest.mark.sqlite_only]),
]

CRASH_POINTS: dict[str, int] = {}  # operation → SIGKILLs delivered (a report for -s runs)


@pytest.fixture
def crash_settings(settings: Settings) -> Iterator[Settings]:
    store, _ = Store.initialise(settings, env={})
    store.close()
    yield settings


@pytest.mark.parametrize(("operation", "seed", "runs"), VARIANTS)
def test_a_killed_command_leaves_the_store_whole(
    crash_settings: Settings, tmp_path: Path, operation: str, seed: int, runs: int
) -> None:
    settings = crash_settings
    op = OPERATIONS[operation]
    with Store.open(settings, env={}) as store:
        model = op.prepare(store, settings, runs)
    assert read_model(settings) == model
    killer = Killer(settings, random.Random(seed))
    rotating = operation.startswith("key-rotate")

    outcomes: Counter[str] = Counter()  # for a rotation, "there" means: killed half-way, a pending key left
    for i in range(runs):
        before, after = model, op.apply(model, i)
        status = killer.calibrate(op.command(i)) if i == 0 else killer.run(op.command(i))

        db_checks(settings)
        found = read_model(settings)  # decrypts everything with the key files as left on disk
        keys, used = key_state(settings)
        if status == 0:
            assert found == after, f"run {i}: an acknowledged {operation} is not (all) there"
        else:
            assert found in (before, after), f"run {i}: a killed {operation} left a half-made change"
            landed = len(keys) > 1 if rotating else found == after != before
            outcomes["killed, change there" if landed else "killed, change absent"] += 1
        assert sorted(state for _, state in keys) in (["current"], ["current", "pending"]), keys
        assert used <= {key_id for key_id, _ in keys}
        if rotating and status == 0:
            assert [state for _, state in keys] == ["current"] and not settings.pending_key_path.exists()
        if settings.database_url is None:  # the data folder holds the whole store
            rotate_a_copy(settings, tmp_path / "rotated", found)
        model = found

    CRASH_POINTS[operation] = killer.kills
    print(f"{operation} (seed {seed}): {killer.acknowledged} finished first, {dict(outcomes)}")
    assert killer.kills >= 2, "the runs should mostly be killed"

    # and the real store, as the last kill left it, rotates to the end too
    rotated = rotate_for_real(settings, timeout=120)
    assert rotated.returncode == 0, rotated.stderr
    db_checks(settings)
    assert read_model(settings) == model


# -- a gateway killed under load ------------------------------------------------------------------------

PID_THEN_EXEC = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); os.execv(sys.executable, sys.argv[2:])"
TOKEN = make_canary("CS")


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_gateway_killed_under_call_load_leaves_a_sound_store_and_audit(
    tmp_path: Path, upstream: Upstream
) -> None:
    rng = random.Random(707)
    svc = 'type = "svc"\n' + TOKEN_FIELDS
    world = World.create(
        tmp_path / "w",
        {
            "whoami": http_tool(
                "whoami",
                upstream.url("/echo"),
                credential=svc,
                query='{ n = "{args.n}" }',
                properties='properties.n = { type = "integer" }',
            ),
        },
    )
    world.add_credential("svc-main", "svc", {"token": TOKEN})
    world.allow("load", "whoami")
    world.bind("load", "whoami", "svc-main")
    world.close()
    settings = world.settings

    pidfile = tmp_path / "serve.pid"
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-c",
            PID_THEN_EXEC,
            str(pidfile),
            sys.executable,
            "-m",
            "mcp_credgate",
            "serve",
            "--group",
            "load",
            "--home",
            str(settings.home),
            "--tools-dir",
            str(world.tools_dir),
        ],
        env={"PYTHONUNBUFFERED": "1", **store_env(settings)},
        cwd=tmp_path,
    )
    started_at = datetime.now(UTC)
    sent = 0
    done: list[float] = []
    killed_at = 0.0

    async def caller(client: Client) -> None:
        nonlocal sent
        while not killed_at:
            sent += 1
            with anyio.move_on_after(5):
                result = await client.call_tool("whoami", {"n": sent})
                if not killed_at:
                    assert not result.is_error, result
                    done.append(time.monotonic())

    async def kill_later() -> None:
        nonlocal killed_at
        await anyio.sleep(rng.uniform(1.5, 2.5))
        killed_at = time.monotonic()
        os.kill(int(pidfile.read_text()), signal.SIGKILL)

    with (tmp_path / "stderr.txt").open("w") as errlog, anyio.fail_after(60):
        try:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                await client.list_tools()
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(caller, client)
                    tg.start_soon(kill_later)
        except Exception:  # the server died under the client: its streams end mid-call
            pass
    assert killed_at, "the gateway was not killed"
    print(f"serve: killed after {len(done)} answered calls ({sent} sent)")
    assert len(done) >= 20, "too little load before the kill"

    db_checks(settings)
    with Store.open(settings, env={}) as store:
        audit = store.read_audit(limit=100_000)
        assert store.read_credential("svc-main")["token"] == TOKEN
    flushed_by_then = sum(1 for t in done if t < killed_at - 1.0)  # the writer flushes every 0.2 s
    assert flushed_by_then <= len(audit) <= sent
    assert len(audit) <= len(upstream.seen())
    for row in audit:
        assert (row.group, row.agent, row.tool, row.credential, row.outcome) == (
            "load",
            None,
            "whoami",
            "svc-main",
            "ok",
        )
        assert row.ref is None or re.fullmatch(r"[0-9a-f]{8}", row.ref), row.ref  # a request id, where kept
        assert row.duration_ms >= 0
        assert started_at <= datetime.fromisoformat(row.ts) <= datetime.now(UTC)

    rotated = rotate_for_real(settings, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    db_checks(settings)
    with Store.open(settings, env={}) as store:
        assert store.read_credential("svc-main")["token"] == TOKEN
