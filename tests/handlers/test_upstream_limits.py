"""How many upstream processes run at once (`max_processes`, issue 21) and when idle ones stop (`idle_timeout`).

Real processes of the fixture server (tests/support/upstream_server.py), each in its sandbox, started by the
gateway's upstream pool; one scope per group, as `credgate serve` gives each group its own. Processes are
counted from /proc, by a marker in their command line, never from the pool's own bookkeeping.
"""

from __future__ import annotations

import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_credgate.credential import Credential
from mcp_credgate.declarations import McpHandler
from mcp_credgate.handlers.upstream import UpstreamBusy, UpstreamPool, upstream_pool
from mcp_credgate.isolation import UpstreamScope
from tests.handlers.test_upstream import FIXTURE, counting_wrapper, discovered_world, stdio_decl
from tests.support.gateway import Transcript, assert_no_leak, connect, make_canary, result_text
from tests.support.sandbox import is_running

pytestmark = [pytest.mark.no_store, pytest.mark.anyio]

PROC = Path("/proc")
CREDENTIAL = Credential("tok", "fixtoken", {"token": "tok-limits-0123456789"}, frozenset({"token"}))


def handler(marker: str, **options: Any) -> McpHandler:
    """The fixture upstream; `marker` in its command line tells this test's processes from any other's."""
    return McpHandler.model_validate(
        {
            "kind": "mcp",
            "command": sys.executable,
            "args": [str(FIXTURE), marker],
            "env": {"UPSTREAM_TOKEN": "{cred.token}"},
            "sandbox": {"read": [str(FIXTURE)]},
            "timeout": 10,
            **options,
        }
    )


def scope(group: str) -> UpstreamScope:
    return UpstreamScope("fix", CREDENTIAL.name, group)


def live_processes(marker: str) -> int:
    """The fixture servers alive with `marker` in their command line (not the sandbox's own bwrap)."""
    count = 0
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile
        if marker.encode() in argv and str(FIXTURE).encode() in argv[:2] and "zombie" not in state:
            count += 1
    return count


@contextmanager
def most_processes_seen(marker: str) -> Iterator[list[int]]:
    """The highest count of live processes seen while the block runs, sampled from /proc every few ms."""
    seen = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen[0] = max(seen[0], live_processes(marker))
            done.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


async def name_of(pool: UpstreamPool, group: str, up: McpHandler) -> str:
    """The name the group's upstream process gave itself (unique per process)."""
    return result_text(await pool.call(scope(group), up, "pid", {}, CREDENTIAL))


async def sleep_in(pool: UpstreamPool, group: str, up: McpHandler, seconds: float) -> str:
    return result_text(await pool.call(scope(group), up, "sleep", {"seconds": seconds}, CREDENTIAL))


async def wait_until_stopped(name: str) -> None:
    with anyio.fail_after(10):
        while is_running(name):
            await anyio.sleep(0.05)


async def test_never_more_live_processes_than_max_processes() -> None:
    marker = f"m{secrets.token_hex(4)}"
    up = handler(marker, max_processes=2)
    answers: list[str] = []

    async def one(group: str) -> None:
        answers.append(await sleep_in(pool, group, up, 0.3))

    with anyio.fail_after(60), most_processes_seen(marker) as seen:
        async with upstream_pool() as pool, anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, f"g{i}")

    assert answers == ["slept"] * 6  # each group got a process in turn
    assert seen[0] == 2


async def test_a_new_scope_beyond_the_cap_stops_the_least_recently_used_idle_upstream() -> None:
    marker = f"m{secrets.token_hex(4)}"
    up = handler(marker, max_processes=2)

    with anyio.fail_after(60):
        async with upstream_pool() as pool:
            a = await name_of(pool, "ga", up)
            b = await name_of(pool, "gb", up)
            assert await name_of(pool, "ga", up) == a  # a is now used more recently than b
            c = await name_of(pool, "gc", up)
            await wait_until_stopped(b)
            assert is_running(a) and is_running(c)
            assert live_processes(marker) == 2
            a_again = await name_of(pool, "ga", up)

    assert a_again == a


async def test_a_call_waits_a_bounded_time_then_gets_one_line_naming_the_upstream_and_the_cap() -> None:
    marker = f"m{secrets.token_hex(4)}"
    up = handler(marker, max_processes=1, slot_timeout=0.5)
    busy = anyio.Event()

    async def long_call() -> None:
        busy.set()
        assert await sleep_in(pool, "ga", up, 3) == "slept"

    with anyio.fail_after(60):
        async with upstream_pool() as pool, anyio.create_task_group() as tg:
            await name_of(pool, "ga", up)  # started: the one slot is held
            tg.start_soon(long_call)
            await busy.wait()
            with pytest.raises(UpstreamBusy) as refused:
                await name_of(pool, "gb", up)
            assert live_processes(marker) == 1  # the call in flight kept its process

    assert str(refused.value) == (
        "upstream fix: all of its 1 processes are busy (max_processes = 1); none came free within 0.5 s"
    )


async def test_a_process_whose_call_ends_makes_room_for_a_waiting_call() -> None:
    marker = f"m{secrets.token_hex(4)}"
    up = handler(marker, max_processes=1)

    with anyio.fail_after(60), most_processes_seen(marker) as seen:
        async with upstream_pool() as pool, anyio.create_task_group() as tg:
            a = await name_of(pool, "ga", up)
            tg.start_soon(sleep_in, pool, "ga", up, 1.0)
            await anyio.sleep(0.2)  # ga's call is in flight: gb waits for it to end
            b = await name_of(pool, "gb", up)
            assert not is_running(a)

    assert a != b
    assert seen[0] == 1


async def test_a_waiting_call_that_is_cancelled_takes_no_slot_and_stops_nothing() -> None:
    marker = f"m{secrets.token_hex(4)}"
    up = handler(marker, max_processes=1)

    with anyio.fail_after(60):
        async with upstream_pool() as pool:
            a = await name_of(pool, "ga", up)
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleep_in, pool, "ga", up, 1.0)
                await anyio.sleep(0.2)
                with anyio.move_on_after(0.3):  # gb gives up while ga's call is in flight
                    await name_of(pool, "gb", up)
            assert is_running(a)  # ga's call ended with no one waiting: its process stays
            assert await name_of(pool, "ga", up) == a
            c = await name_of(pool, "gc", up)  # the slot was not lost: gc gets it (ga, idle, makes room)
            assert live_processes(marker) == 1

    assert c != a


async def test_an_idle_upstream_stops_after_idle_timeout_while_another_is_busy() -> None:
    marker = f"m{secrets.token_hex(4)}"
    up = handler(marker, idle_timeout=1)

    with anyio.fail_after(60):
        async with upstream_pool() as pool:
            idle = await name_of(pool, "ga", up)
            busy = await name_of(pool, "gb", up)
            with anyio.move_on_after(10):
                while is_running(idle):  # gb calls all the while
                    assert await name_of(pool, "gb", up) == busy
                    await anyio.sleep(0.02)
            stopped = not is_running(idle)
            assert await name_of(pool, "gb", up) == busy

    assert stopped


async def test_a_call_longer_than_idle_timeout_keeps_its_process() -> None:
    marker = f"m{secrets.token_hex(4)}"
    up = handler(marker, idle_timeout=1)

    with anyio.fail_after(60):
        async with upstream_pool() as pool:
            name = await name_of(pool, "ga", up)
            slept = await sleep_in(pool, "ga", up, 2.5)
            after = await name_of(pool, "ga", up)

    assert slept == "slept"
    assert after == name


@pytest.fixture(scope="module")
def fixture_tools() -> list[dict[str, Any]]:
    """The fixture's tools as the pool lists them, for a gateway's catalog."""

    async def discover() -> list[dict[str, Any]]:
        with anyio.fail_after(30):
            async with upstream_pool() as pool:
                discovery = UpstreamScope.for_discovery("fix", CREDENTIAL.name)
                tools, _ = await pool.discover(discovery, handler("listing"), CREDENTIAL)
                return tools

    return anyio.run(discover)


async def test_an_agent_beyond_the_cap_gets_that_line_as_its_tool_error(
    tmp_path: Path, fixture_tools: list[dict[str, Any]]
) -> None:
    wrapper, _ = counting_wrapper(tmp_path / "bin")
    decl = stdio_decl(wrapper, extra="max_processes = 1\nslot_timeout = 0.5")
    world = discovered_world(tmp_path / "w", {"fix": decl}, fixture_tools)
    tokens = {"ga": make_canary("LA"), "gb": make_canary("LB")}
    for group, token in tokens.items():
        world.add_credential(f"tok-{group}", "fixtoken", {"token": token})
        world.allow(group, "fix.*")
        world.bind(group, "fix", f"tok-{group}")
    transcript = Transcript()
    slept: list[str] = []

    async def long_call() -> None:
        slept.append(result_text(await transcript.call(a, "fix_sleep", {"seconds": 1.5})))

    try:
        with anyio.fail_after(40):
            async with world.gateway() as gw, gw.running(), connect(gw, "ga") as a, connect(gw, "gb") as b:
                await transcript.call(a, "fix_pid")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(long_call)
                    await anyio.sleep(0.2)
                    refused = await transcript.call(b, "fix_token_hash")
    finally:
        world.close()

    assert refused.is_error
    assert result_text(refused) == (
        "upstream fix: all of its 1 processes are busy (max_processes = 1); none came free within 0.5 s"
    )
    assert slept == ["slept"]
    assert_no_leak(transcript.text(), *tokens.values())
