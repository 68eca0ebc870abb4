"""Faults under a PostgreSQL store, made real (issue 26): the server stopped and started again (under admin
commands and while a gateway serves), and connections killed by `pg_terminate_backend`. They run on a cluster
of their own (the suite's shared server is never stopped). Each command says the fault in one line and exits 1;
a gateway refuses calls with a ref while the server is away and serves again once it is back, without a restart;
every call that ran is audited; a change cut off midway is not half made.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import psycopg
import pytest
from mcp import MCPError

from mcp_credgate.agents import create_agent
from mcp_credgate.store import Store
from mcp_credgate.store.postgres import WRITE_LOCK_KEY, describe
from tests.support.faults import assert_refused_saying, clock_calls, credgate
from tests.support.gateway import World, connect, credgate_env, python_tool
from tests.support.http_server import start_server
from tests.support.postgres import database_url_for, pause_cluster, resume_cluster, start_cluster, stop_cluster

pytestmark = pytest.mark.no_store

READING = (("cred", "list"), ("group", "list"), ("group", "show", "ops"))
RAN = "utc"  # in the clock tool's answer
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "clock", "arguments": {}}}


@dataclass
class Cluster:
    url: str
    folder: Path
    running: bool = True

    @property
    def password(self) -> str:
        return str(psycopg.conninfo.conninfo_to_dict(self.url)["password"])

    def pause(self) -> None:
        pause_cluster(self.folder)
        self.running = False

    def resume(self) -> None:
        resume_cluster(self.folder)
        self.running = True

    def terminate(self, application: str = "credgate") -> int:
        """Ends every session of the application; how many there were."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (application,)
            ).fetchall()
        return len(rows)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if request.config.getoption("backend") == "sqlite":
        pytest.skip("PostgreSQL fault tests not run: --backend sqlite")
    try:
        url, folder = start_cluster()
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL fault tests not run: no cluster could be started ({exc})")
    yield Cluster(url, folder)
    stop_cluster(folder)


@pytest.fixture
def world(cluster: Cluster, tmp_path: Path) -> Iterator[World]:
    """A store of its own on the cluster, a group allowed the clock; the cluster running again at the end."""
    url, _ = database_url_for(cluster.url)
    w = World.create(tmp_path, {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")}, database_url=url)
    w.allow("ops", "clock")
    w.store.close()
    yield w
    if not cluster.running:
        cluster.resume()


def assert_refused_without_the_password(result: subprocess.CompletedProcess[str], words: str, cluster: Cluster) -> None:
    assert_refused_saying(result, words)
    assert cluster.password not in result.stderr + result.stdout


def test_with_the_server_stopped_each_command_says_postgresql_is_not_answering(world: World, cluster: Cluster) -> None:
    where = describe(cluster.url)
    cluster.pause()
    for args in (*READING, ("group", "add", "more")):
        result = credgate(world, *args)
        assert_refused_without_the_password(
            result, f"PostgreSQL at {where} is not answering (Connection refused)", cluster
        )
        assert "do not restore a backup" in result.stderr
    doctor = credgate(world, "doctor")
    assert doctor.returncode == 1 and f"PostgreSQL at {where} is not answering" in doctor.stdout, doctor.stdout
    assert "Traceback" not in doctor.stderr and cluster.password not in doctor.stdout + doctor.stderr

    cluster.resume()
    assert "ops" in credgate(world, "group", "list").stdout
    assert credgate(world, "doctor").returncode == 0


def test_an_admin_change_whose_connection_is_killed_midway_says_so_and_is_not_made(
    world: World, cluster: Cluster
) -> None:
    holder = psycopg.connect(world.settings.database_url or "", autocommit=True)
    holder.execute("BEGIN")
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))  # the change waits for the write lock
    change = subprocess.Popen(
        [sys.executable, "-m", "mcp_credgate", *world.cli_paths, "group", "add", "more"],
        env=credgate_env(world.settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_a_credgate_session_waiting_on_a_lock(cluster)
        assert cluster.terminate() >= 1
        _, stderr = change.communicate(timeout=60)
    finally:
        holder.close()
        change.kill()
    result = subprocess.CompletedProcess(change.args, change.returncode, "", stderr)
    assert_refused_without_the_password(result, "the connection to PostgreSQL at", cluster)
    assert "was lost (terminating connection due to administrator command)" in stderr
    assert "more" not in credgate(world, "group", "list").stdout
    assert credgate(world, "group", "add", "more").returncode == 0  # and nothing is left in its way


def _wait_for_a_credgate_session_waiting_on_a_lock(cluster: Cluster) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        while not conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'credgate' AND wait_event_type = 'Lock'"
        ).fetchone():
            assert time.monotonic() < deadline, "the change never waited for the write lock"
            time.sleep(0.05)


def test_a_gateway_refuses_calls_while_the_server_is_away_and_serves_again_once_it_is_back(
    world: World, cluster: Cluster, tmp_path: Path
) -> None:
    with Store.open(world.settings, env={}) as store:
        token = create_agent(store, "ops", "bot")
    server = start_server(world, tmp_path / "server")
    try:
        assert all(RAN in a for a in anyio.run(clock_calls, server, token, 20, 60))
        cluster.pause()
        for _ in range(3):  # the token cannot be checked: 503 with a ref, no detail
            refused = httpx2.post(server.mcp_url, headers=_mcp_headers(token), json=CALL, timeout=30)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "5", refused.text
            assert "retry later (ref: " in refused.text
            assert "PostgreSQL" not in refused.text and "127.0.0.1" not in refused.text
        ready = httpx2.get(f"{server.base}/readyz", timeout=30)
        assert ready.status_code == 503 and "store" in ready.text and "127.0.0.1" not in ready.text

        cluster.resume()
        deadline = time.monotonic() + 30
        while RAN not in anyio.run(clock_calls, server, token, 1, 60)[0]:  # no restart of the gateway
            assert time.monotonic() < deadline, "calls still refused once PostgreSQL is back"
            time.sleep(0.2)
        assert all(RAN in a for a in anyio.run(clock_calls, server, token, 20, 60))
        assert httpx2.get(f"{server.base}/readyz", timeout=30).status_code == 200
        _wait_until_audited(world, ran=20 + 1 + 20)
        log = server.stderr()
        assert "not served: the store cannot be used (ref: " in log and "is not answering" in log
        assert "Traceback" not in log and cluster.password not in server.output()
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_listing_the_store_cannot_answer_just_now_tells_the_agent_a_ref_never_where_the_store_is(
    world: World, cluster: Cluster, mode: str
) -> None:
    """tools/list and the rest read the group's tools from the store at each request: with the server away
    (a stdio gateway, which checks no token first), the agent gets a JSON-RPC error with a ref; the store's
    message, naming its server, goes to the log alone (the SDK would echo an exception's text in legacy mode)."""
    where = describe(cluster.url)

    async def listings() -> list[str]:
        said = []
        async with world.gateway() as gateway, connect(gateway, "ops", mode=mode) as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["clock"]
            cluster.pause()
            for listing in (client.list_tools, client.list_resources, client.list_prompts):
                with pytest.raises(MCPError) as refused:
                    await listing()
                said.append(refused.value.error.message)
            cluster.resume()
            assert [t.name for t in (await client.list_tools()).tools] == ["clock"]  # no new session needed
        return said

    for message in anyio.run(listings):
        assert "cannot reach its store just now; retry later (ref: " in message, message
        assert where not in message and "PostgreSQL" not in message and "127.0.0.1" not in message


def test_connections_killed_by_pg_terminate_backend_while_a_gateway_serves_cost_no_call_and_no_audit_row(
    world: World, cluster: Cluster, tmp_path: Path
) -> None:
    with Store.open(world.settings, env={}) as store:
        token = create_agent(store, "ops", "bot")
    server = start_server(world, tmp_path / "server")
    stop = threading.Event()
    kills: list[int] = []

    def kill_every_so_often() -> None:
        while not stop.wait(0.1):
            kills.append(cluster.terminate())

    killer = threading.Thread(target=kill_every_so_often)
    try:
        killer.start()
        answers = anyio.run(clock_calls, server, token, 300, 60)
        stop.set()
        killer.join()
        assert sum(kills) >= 5, kills
        assert all(RAN in a for a in answers), [a for a in answers if RAN not in a][:3]
        _wait_until_audited(world, ran=300)
    finally:
        stop.set()
        server.stop()


def _mcp_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}


def _wait_until_audited(world: World, ran: int) -> None:
    """Every call that ran has its audit row (the writer may still hold some in memory for a moment)."""
    deadline = time.monotonic() + 30
    while (found := _audited_ran(world)) < ran:
        assert time.monotonic() < deadline, f"{found} of {ran} calls that ran are audited"
        time.sleep(0.2)
    assert found == ran


def _audited_ran(world: World) -> int:
    with Store.open(world.settings, env={}) as store:
        return sum(1 for row in store.read_audit(tool="clock", limit=10_000) if row.outcome == "ok")
