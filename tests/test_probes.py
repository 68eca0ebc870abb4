"""Health probes (contract §9) of a real `credgate serve --http`: `/healthz` and `/readyz` answer whatever Host a
probe sends and without a token, every other path keeps its guard, the bodies name only the failing check, and
readiness follows the key file going away and coming back without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mcp_credgate.probes import probe_routes, store_checks
from mcp_credgate.store import Store
from mcp_credgate.web.app import build_dashboard_app
from mcp_credgate.web.session import new_admin_secret
from tests.support.gateway import World, python_tool
from tests.support.http_server import Server, start_server

POD = {"Host": "10.42.0.7:8765"}  # what a kubelet probe sends: the pod's address, no Origin, no token


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[World, Server]]:
    world = World.create(tmp_path / "site", {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")})
    world.allow("ops", "clock")
    server = start_server(world, tmp_path / "server")
    try:
        yield world, server
    finally:
        server.stop()
        world.close()


def get(server: Server, path: str, **headers: str) -> httpx2.Response:
    return httpx2.get(f"{server.base}{path}", headers=headers, timeout=10)


def test_probes_answer_any_host_without_a_token_and_say_nothing_of_the_installation(
    served: tuple[World, Server],
) -> None:
    world, server = served
    alive, ready = get(server, "/healthz", **POD), get(server, "/readyz", **POD)

    assert (alive.status_code, alive.json()) == (200, {"status": "alive"})
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": ["store", "key", "declarations", "audit"]}
    for body in (alive.text, ready.text):
        for telltale in ("sqlite", "postgres", "credgate.db", str(world.settings.home), "version"):
            assert telltale not in body.lower()
    assert ready.headers["cache-control"] == "no-store"


def test_every_other_path_keeps_its_host_check_and_its_token(served: tuple[World, Server]) -> None:
    _world, server = served
    assert get(server, "/mcp", **POD).status_code == 403
    assert get(server, "/groups", **POD).status_code == 403
    assert get(server, "/healthz/../groups", **POD).status_code == 403
    refused = httpx2.post(f"{server.base}/readyz", headers=POD, timeout=10)
    assert refused.status_code == 403  # only a probe's GET passes unguarded
    assert get(server, "/mcp").status_code == 401


def test_a_key_file_gone_while_serving_is_not_ready_and_ready_again_once_back(served: tuple[World, Server]) -> None:
    world, server = served
    key = world.settings.key_path
    saved = key.read_bytes()
    key.unlink()
    try:
        gone = get(server, "/readyz", **POD)
        assert (gone.status_code, gone.json()) == (503, {"status": "not ready", "failing": "key"})
    finally:
        key.write_bytes(saved)
        key.chmod(0o600)
    assert get(server, "/readyz", **POD).status_code == 200
    assert "not ready: key" in _eventually(server, "not ready: key")  # the log says why; the body does not


def _eventually(server: Server, text: str) -> str:
    deadline = time.monotonic() + 5
    while text not in server.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.stderr()


@pytest.mark.no_store
def test_the_dashboards_own_app_has_the_probes_too(world_dashboard: tuple[World, TestClient]) -> None:
    world, client = world_dashboard
    assert client.get("/healthz", headers=POD).json() == {"status": "alive"}
    assert client.get("/readyz", headers=POD).json() == {"status": "ready", "checks": ["store", "key"]}
    assert client.get("/groups", headers=POD).status_code == 403
    world.store.close()


@pytest.fixture
def world_dashboard(tmp_path: Path) -> Iterator[tuple[World, TestClient]]:
    world = World.create(tmp_path / "site", {})
    new_admin_secret(world.store)
    app = build_dashboard_app(world.settings, world.catalog, host="127.0.0.1", port=8765)
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        yield world, client
    world.close()


def test_a_store_that_no_longer_answers_is_not_ready(store: Store) -> None:
    if store._db.shared:
        pytest.skip("a PostgreSQL connection that closed is opened again at the next statement (recovery)")
    app = Starlette(routes=probe_routes(store_checks(store)))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        store.close()
        gone = client.get("/readyz")
    assert (gone.status_code, gone.json()) == (503, {"status": "not ready", "failing": "store"})
