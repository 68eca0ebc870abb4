"""Concurrency (issue 7): admin writes from real processes and key rotation while the gateway serves calls.

An in-process gateway serves 50 concurrent callers (an http tool against the local recording upstream,
with a bound canary credential) while real `python -m mcp_credgate` processes write to the same store:

* two admin lanes, each a sequence of real processes: add 10 credentials, then bind/unbind one of them
  repeatedly: every call answers ok with its canary, every admin command exits 0, and afterwards the store
  is intact and every added credential decrypts;
* `credgate key rotate` over ~200 credentials: no call fails, the rotation exits 0, afterwards every
  credential decrypts with the key files on disk and the gateway's next call still works.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_credgate.store import Store
from tests.support.gateway import (
    TOKEN_FIELDS,
    Upstream,
    World,
    connect,
    credgate_env,
    http_tool,
    load_json,
    make_canary,
    result_text,
)
from tests.support.raw_db import raw_db

pytestmark = pytest.mark.anyio

TOKEN = make_canary("CC")
CALLERS = 50
SVC = 'type = "svc"\n' + TOKEN_FIELDS
N_PROP = 'required = ["n"]\nproperties.n = { type = "integer", minimum = 0 }'


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream) -> Iterator[World]:
    """Group `load` calls `whoami` with credential svc-main; groups adm1/adm2 may use `other` (admin lanes)."""
    w = World.create(
        tmp_path / "w",
        {
            "whoami": http_tool(
                "whoami", upstream.url("/echo"), credential=SVC, query='{ n = "{args.n}" }', properties=N_PROP
            ),
            "other": http_tool("other", upstream.url("/other"), credential=SVC),
        },
    )
    w.add_credential("svc-main", "svc", {"token": TOKEN})
    w.allow("load", "whoami")
    w.bind("load", "whoami", "svc-main")
    w.allow("adm1", "other")
    w.allow("adm2", "other")
    yield w
    w.close()


def credgate(world: World, *args: str) -> subprocess.Popen[str]:
    """A real `credgate` process on the world's store (no other CREDGATE_* from the environment)."""
    return subprocess.Popen(
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
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=credgate_env(world.settings),
        cwd=world.tools_dir.parent,
    )


async def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for a process without blocking the event loop; (exit code, stdout + stderr)."""
    try:
        out, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30), abandon_on_cancel=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out + err


class Load:
    """CALLERS tasks calling `whoami` until `stop` is set (each at least `minimum` times).

    The answer is checked here (ok, for this call, secret redacted); `canaries_upstream` checks that the
    upstream received the real canary for every answered call.
    """

    def __init__(self, client: Client, minimum: int = 1) -> None:
        self.client = client
        self.minimum = minimum
        self.stop = anyio.Event()
        self.problems: list[str] = []
        self.answered = 0
        self.ns: set[int] = set()  # the `n` of every call answered ok
        self._n = 0

    async def call_once(self) -> None:
        self._n += 1
        n = self._n
        result = await self.client.call_tool("whoami", {"n": n})
        if result.is_error:
            self.problems.append(f"call {n}: error {result_text(result)[:300]}")
            return
        echo: dict[str, Any] = load_json(result)
        if echo["query"] != {"n": str(n)} or TOKEN in result_text(result):
            self.problems.append(f"call {n}: wrong answer {echo['target']}")
            return
        self.answered += 1
        self.ns.add(n)

    async def caller(self) -> None:
        done = 0
        while done < self.minimum or not self.stop.is_set():
            await self.call_once()
            done += 1


def canaries_upstream(load: Load, upstream: Upstream) -> None:
    got = {
        int(s.query["n"])
        for s in upstream.seen()
        if s.path == "/echo" and s.header("Authorization") == f"Bearer {TOKEN}"
    }
    missing = load.ns - got
    assert not missing, f"{len(missing)} answered calls did not reach the upstream with their canary"


def integrity_ok(world: World) -> None:
    with raw_db(world.settings) as db:
        assert db.integrity_problems() == []


async def test_admin_writes_from_two_processes_while_the_gateway_serves_50_calls(
    world: World, upstream: Upstream
) -> None:
    results: dict[str, list[tuple[list[str], int, str]]] = {"adm1": [], "adm2": []}

    overlap: list[int] = []

    async def lane(group: str, load: Load) -> None:
        start = load.answered
        names = [f"{group}-c{i}" for i in range(10)]
        commands = [["cred", "add", name, "--type", "svc", f"--set=token=tok-{name}"] for name in names]
        for _ in range(2):
            commands += [["bind", group, "other", names[0]], ["unbind", group, "other"]]
        commands.append(["bind", group, "other", names[-1]])
        for args in commands:
            code, output = await finish(credgate(world, *args))
            results[group].append((args, code, output))
        overlap.append(load.answered - start)

    with anyio.fail_after(60):
        async with world.gateway() as gw, connect(gw, "load") as client:
            load = Load(client)
            async with anyio.create_task_group() as tg:
                for _ in range(CALLERS):
                    tg.start_soon(load.caller)
                async with anyio.create_task_group() as admins:
                    admins.start_soon(lane, "adm1", load)
                    admins.start_soon(lane, "adm2", load)
                load.stop.set()

    print(f"admin lanes: {load.answered} calls answered, {overlap} while each lane ran")
    assert load.problems == [], load.problems[:5]
    assert load.answered >= CALLERS
    canaries_upstream(load, upstream)
    assert min(overlap) >= CALLERS, f"the admin writes did not overlap the calls ({overlap} answered meanwhile)"
    for group, runs in results.items():
        assert len(runs) == 15
        for args, code, output in runs:
            assert code == 0, f"{group}: {args} exited {code}: {output}"
            assert "locked" not in output.lower()

    integrity_ok(world)
    with Store.open(world.settings, env={}) as store:
        names = {info.name for info in store.list_credentials()}
        for group in ("adm1", "adm2"):
            for i in range(10):
                name = f"{group}-c{i}"
                assert name in names
                assert store.read_credential(name)["token"] == f"tok-{name}"
            assert store.allowed_tools(group) == {"other": f"{group}-c9"}
        assert store.read_credential("svc-main")["token"] == TOKEN


async def test_key_rotation_under_call_load_loses_no_call(world: World, upstream: Upstream) -> None:
    for i in range(200):
        world.add_credential(f"bulk{i}", "svc", {"token": f"bulk-token-{i}"})
    old_key = world.settings.key_path.read_bytes()
    if world.settings.database_url:  # a shared store rotates only to a key every replica holds first
        staged = credgate(world, "key", "new")
        assert staged.wait(30) == 0, staged.communicate()
    rotation: dict[str, Any] = {}

    async def rotate(load: Load) -> None:
        await anyio.sleep(0.3)  # the callers are under way first
        start = load.answered
        rotation["code"], rotation["output"] = await finish(credgate(world, "key", "rotate"))
        rotation["overlap"] = load.answered - start

    with anyio.fail_after(60):
        async with world.gateway() as gw, connect(gw, "load") as client:
            load = Load(client, minimum=2)
            async with anyio.create_task_group() as tg:
                for _ in range(CALLERS):
                    tg.start_soon(load.caller)
                await rotate(load)
                load.stop.set()
            assert rotation["code"] == 0, rotation["output"]
            # the gateway's next call, after the rotation, still gets its credential
            before = load.answered
            await load.call_once()
            assert load.answered == before + 1, load.problems[-1:]

    print(f"rotation: {load.answered} calls answered, {rotation['overlap']} during the rotation")
    assert load.problems == [], load.problems[:5]
    assert rotation["overlap"] >= CALLERS, f"the rotation overlapped only {rotation['overlap']} calls"
    assert world.settings.key_path.read_bytes() != old_key, "the key file was not replaced"
    assert not world.settings.pending_key_path.exists()
    canaries_upstream(load, upstream)

    integrity_ok(world)
    with raw_db(world.settings) as db:
        keys = db.execute("SELECT key_id, state FROM master_keys").fetchall()
        used = {r[0] for r in db.execute("SELECT key_id FROM credentials")}
    assert len(keys) == 1 and keys[0][1] == "current"
    assert used == {keys[0][0]}
    with Store.open(world.settings, env={}) as store:
        assert store.read_credential("svc-main")["token"] == TOKEN
        for i in range(200):
            assert store.read_credential(f"bulk{i}")["token"] == f"bulk-token-{i}"
