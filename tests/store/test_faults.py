"""Faults under a SQLite store, made real (issue 26): a full disk (a 2 MB tmpfs filled up), a read-only filesystem
(a read-only bind mount) and a folder that is not ours (owned by another user, with the process's capability to
override file modes dropped by `setpriv`, since root ignores modes). Each command says the fault itself in one
line and exits 1, never "not a credgate store"; the store is whole once the fault is gone; a gateway keeps serving
and writes every audit row once it can.

Needs root (mounts, setpriv): `.ci/run` runs as root; elsewhere these tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from mcp_credgate.agents import create_agent
from mcp_credgate.store import Store
from tests.support.faults import assert_refused_saying, clock_calls, credgate
from tests.support.gateway import World, http_tool, python_tool
from tests.support.http_server import start_server

pytestmark = [
    pytest.mark.no_store,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("mount") is None or shutil.which("setpriv") is None,
        reason="fault tests skipped: they mount filesystems and drop capabilities (root, mount, setpriv)",
    ),
]

NOT_OURS = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")  # root, but held to file modes
CALLS = 300  # more audit rows than the free pages of a 2 MB disk's database can take
READING = {("cred", "list"): "svc-key", ("group", "list"): "ops", ("group", "show", "ops"): "clock"}  # → shown


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted at the end. SQLite stores only (the env's PostgreSQL URL is dropped)."""
    monkeypatch.delenv("CREDGATE_DATABASE_URL", raising=False)
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def world(small_disk: Path) -> Iterator[World]:
    """A store on the small disk with a group allowed a tool; no connection of the test's left open."""
    tools = {
        "clock": python_tool("clock", "mcp_credgate.examples:utc_now"),
        "api": http_tool("api", "http://127.0.0.1:9"),
    }
    w = World.create(small_disk / "site", tools)
    w.add_credential("svc-key", "svc", {"token": "tok-" + "x" * 16})
    w.allow("ops", "clock")
    w.store.close()
    yield w


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
    return filler


def test_on_a_full_disk_reading_commands_work_and_writing_ones_say_the_disk_is_full(
    world: World, small_disk: Path
) -> None:
    filler = fill(small_disk)

    for args, shown in READING.items():  # the store's file holds all of it: read as it is on disk, read-only
        result = credgate(world, *args)
        assert result.returncode == 0 and shown in result.stdout, result.stderr
        assert f"the disk holding {world.settings.home} is full" in result.stderr  # said all the same
    assert_refused_saying(credgate(world, "group", "add", "more"), f"the disk holding {world.settings.home} is full")
    doctor = credgate(world, "doctor")
    assert doctor.returncode == 1 and "problem: the disk holding" in doctor.stdout, doctor.stdout
    assert "not a credgate store" not in doctor.stdout

    filler.unlink()
    assert credgate(world, "group", "add", "more").returncode == 0
    assert credgate(world, "doctor").returncode == 0  # integrity checked: whole


def test_on_a_read_only_filesystem_reading_commands_work_and_writing_ones_say_so(
    world: World, small_disk: Path
) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        for args, shown in READING.items():
            assert shown in credgate(world, *args).stdout
        result = credgate(world, "group", "add", "more")
        assert_refused_saying(result, f"{world.settings.home} is on a read-only filesystem")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert "more" not in credgate(world, "group", "list").stdout


def test_a_folder_that_is_not_ours_is_named_with_its_mode_and_owner(world: World) -> None:
    home = world.settings.home
    os.chown(home, 65534, 65534)
    try:
        for args in READING:
            result = credgate(world, *args, prefix=NOT_OURS)
            assert_refused_saying(result, f"permission denied on {home} (mode 0700, owner ")
            assert "credgate runs as root" in result.stderr
        doctor = credgate(world, "doctor", prefix=NOT_OURS)
        assert doctor.returncode == 1 and f"permission denied on {home}" in doctor.stdout
        assert "Traceback" not in doctor.stderr and "internal error" not in doctor.stderr
    finally:
        os.chown(home, 0, 0)
    assert "ops" in credgate(world, "group", "list").stdout


def test_a_key_file_that_is_not_ours_is_named_as_such_not_as_a_wrong_key(world: World) -> None:
    key = world.settings.key_path
    os.chown(key, 65534, 65534)
    try:
        result = credgate(world, "cred", "list", prefix=NOT_OURS)
        assert_refused_saying(result, f"permission denied on {key} (mode 0600, owner nobody)")
        assert "does not match" not in result.stderr
    finally:
        os.chown(key, 0, 0)
    assert "svc-key" in credgate(world, "cred", "list").stdout


def test_a_gateway_on_a_full_disk_keeps_serving_and_writes_every_audit_row_once_space_is_back(
    world: World, small_disk: Path, tmp_path: Path
) -> None:
    """(A read-only filesystem cannot be made under a serving gateway: the kernel refuses to remount read-only
    while a file is open for writing. The full disk is the fault a gateway meets.)"""
    with Store.open(world.settings, env={}) as store:
        token = create_agent(store, "ops", "bot")
    server = start_server(world, tmp_path / "server")
    try:
        filler = fill(small_disk)
        answers = anyio.run(clock_calls, server, token, CALLS)
        assert all("not called" not in a and "failed" not in a for a in answers), answers
        ready = httpx2.get(f"{server.base}/readyz", timeout=10)
        assert ready.status_code == 200  # the rows waiting are well under the backlog's bound
        filler.unlink()
        deadline = time.monotonic() + 20
        while _audited(world) < CALLS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _audited(world) == CALLS
        assert "audit rows cannot be written" in server.stderr() and "written again" in server.stderr()
    finally:
        server.stop()


def _audited(world: World) -> int:
    with Store.open(world.settings, env={}) as store:
        return len(store.read_audit(tool="clock", limit=10 * CALLS))


def test_with_audit_required_a_gateway_on_a_full_disk_refuses_calls_until_it_can_audit_them(
    world: World, small_disk: Path, tmp_path: Path
) -> None:
    with Store.open(world.settings, env={}) as store:
        token = create_agent(store, "ops", "bot")
    server = start_server(world, tmp_path / "server", "--audit", "required")
    try:
        filler = fill(small_disk)
        deadline = time.monotonic() + 30
        refused = ""
        while not refused and time.monotonic() < deadline:  # once the writer finds it cannot write
            answers = anyio.run(clock_calls, server, token, CALLS // 10)
            refused = next((a for a in answers if "cannot be audited" in a), "")
        assert "was not called: its call cannot be audited just now; retry later (ref: " in refused
        filler.unlink()
        deadline = time.monotonic() + 30
        while "cannot be audited" in anyio.run(clock_calls, server, token, 1)[0]:
            assert time.monotonic() < deadline, "calls still refused once the disk has room again"
            time.sleep(0.2)
    finally:
        server.stop()
