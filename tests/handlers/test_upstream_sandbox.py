"""A hostile stdio upstream in its sandbox (issue 20), through a real gateway: it tries to read the data folder,
the key file, the gateway's /proc entries and other processes', the database at a path it guesses, the other
group's upstream home; to signal and ptrace the gateway and the other upstream; to write outside its home.
Every attempt fails and nothing of it reaches an agent; what it may do (its home, its /tmp) works, and a
restarted upstream finds its home again.

The upstream is tests/support/hostile_upstream.py, run by the gateway under bubblewrap. The data folder,
tools folder and state folder lie outside /tmp (`folder_outside_tmp`), so that the sandbox hides them on
purpose, not by its own /tmp.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from tests.support import REPO_ROOT, SUPPORT_DIR
from tests.support.gateway import Transcript, World, assert_no_leak, connect, make_canary, result_text
from tests.support.sandbox import folder_outside_tmp, host_pid

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

HOSTILE = SUPPORT_DIR / "hostile_upstream.py"
HTOKEN = '[credential]\ntype = "htoken"\nfields = [{ name = "token", kind = "token" }]\n'
TOKEN_A = make_canary("HA")
TOKEN_B = make_canary("HB")
B_NOTE = make_canary("NOTE")


def hostile_decl(extra: str = "") -> str:
    return (
        f'name = "bad"\ndescription = "A hostile upstream."\n{HTOKEN}'
        f'[handler]\nkind = "mcp"\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(str(HOSTILE))}]\n'
        'env = { UPSTREAM_TOKEN = "{cred.token}" }\ntimeout = 30\nstart_timeout = 30\n' + extra
    )


@pytest.fixture
def outside() -> Iterator[Path]:
    with folder_outside_tmp() as root:
        yield root


def hostile_world(root: Path, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> World:
    """Groups ga and gb, each with its own credential for the hostile upstream (so each its own process)."""
    monkeypatch.setenv("CREDGATE_STATE_DIR", str(root / "state"))
    world = World.create(root, {"bad": hostile_decl(extra)})
    world.add_credential("tok-a", "htoken", {"token": TOKEN_A})
    world.add_credential("tok-b", "htoken", {"token": TOKEN_B})
    for group, cred in (("ga", "tok-a"), ("gb", "tok-b")):
        world.allow(group, "bad.*")
        world.bind(group, "bad", cred)
    return world


@pytest.mark.anyio
async def test_a_hostile_upstream_reaches_nothing_of_the_gateways_and_nothing_reaches_an_agent(
    outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = hostile_world(outside, monkeypatch)
    settings = world.settings
    master_key = settings.key_path.read_text().strip()
    state = outside / "state"
    transcript = Transcript()

    with anyio.fail_after(90):
        async with world.gateway() as gw, gw.running(), connect(gw, "ga") as a, connect(gw, "gb") as b:
            await transcript.list_tools(a)
            await transcript.list_tools(b)
            assert result_text(await transcript.call(b, "bad_keep", {"name": "b-note", "text": B_NOTE})) == "kept"
            b_pid = host_pid(result_text(await transcript.call(b, "bad_name")))
            b_home = next(p.parent for p in state.rglob("b-note"))
            plan = {
                "read": [
                    str(settings.key_path),
                    str(settings.database_path),
                    str(settings.database_path) + "-wal",
                    str(Path.home() / ".local" / "share" / "credgate" / "credgate.db"),  # a guess at the default
                    str(settings.tools_dirs[0] / "bad.toml"),
                    str(REPO_ROOT / "pyproject.toml"),  # the gateway's working directory
                    str(b_home / "b-note"),
                    f"/proc/{os.getpid()}/environ",
                    f"/proc/{os.getpid()}/cmdline",
                    f"/proc/{os.getpid()}/cwd",
                    f"/proc/{os.getpid()}/fd/0",
                    f"/proc/{b_pid}/environ",
                ],
                "list": [str(settings.home), str(settings.tools_dirs[0]), str(state / "bad")],
                "write": [
                    str(settings.home / "planted"),
                    str(settings.tools_dirs[0] / "planted.toml"),
                    str(REPO_ROOT / "planted"),
                    str(b_home / "planted"),
                    str(state / "bad" / "planted"),
                    "/etc/planted",
                    "/var/tmp/credgate-planted",
                ],
                "signal": [os.getpid(), b_pid],
                "ptrace": [os.getpid(), b_pid],
            }
            attacked = await transcript.call(a, "bad_attack", {"plan": json.dumps(plan)})
            own = await transcript.call(a, "bad_keep", {"name": "a-note", "text": "mine"})
            crashed = await transcript.call(a, "bad_crash")
            after_restart = await transcript.call(a, "bad_recall", {"name": "a-note"})

    assert not attacked.is_error, result_text(attacked)
    found = json.loads(result_text(attacked))
    for kind in ("read", "signal", "ptrace"):
        for target, outcome in found[kind].items():
            assert outcome.startswith("refused: "), (kind, target, outcome)
    for target, outcome in found["write"].items():
        assert not Path(target).exists(), target  # nothing it wrote reached the machine
        if not Path(target).is_relative_to("/tmp"):  # under /tmp it may write: that /tmp is its own, in memory
            assert outcome.startswith("refused: "), ("write", target, outcome)
    listed: dict[str, str] = found["list"]
    for folder in (settings.home, settings.tools_dirs[0]):
        assert listed[str(folder)] in ("got: []", "refused: FileNotFoundError"), listed
    assert json.loads(listed[str(state / "bad")].removeprefix("got: ")) == own_homes(state, b_home)  # its own only
    seen = {int(path.split("/")[2]) for path in found["processes"]}
    assert os.getpid() not in seen and b_pid not in seen and len(seen) <= 3, seen
    for outcome in found["parent"].values():  # its parent in there is bubblewrap's, not the gateway
        assert str(settings.home) not in outcome
    assert not (settings.home / "planted").exists() and not (REPO_ROOT / "planted").exists()
    assert not Path("/var/tmp/credgate-planted").exists()

    assert result_text(own) == "kept"
    assert crashed.is_error
    assert json.loads(result_text(after_restart)) == {"home": "mine", "tmp": None}  # /tmp is new at each start
    assert_no_leak(transcript.text(), master_key, TOKEN_B, B_NOTE)
    world.close()


def own_homes(state: Path, other: Path) -> list[str]:
    """The names of the upstream homes under state/bad other than `other`."""
    return [p.name for p in (state / "bad").iterdir() if p != other]


@pytest.mark.anyio
@pytest.mark.parametrize("switch", ["declaration", "global"])
async def test_without_its_sandbox_the_same_upstream_reads_the_master_key(
    outside: Path, monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    """The control: the attack is real, and `sandbox = false` or the global switch really turn it off."""
    world = hostile_world(outside, monkeypatch, "sandbox = false\n" if switch == "declaration" else "")
    if switch == "global":
        world.settings = replace(world.settings, sandbox=False)
    master_key = world.settings.key_path.read_text().strip()
    plan = {"read": [str(world.settings.key_path)]}

    with anyio.fail_after(60):
        async with world.gateway() as gw, gw.running(), connect(gw, "ga") as a:
            await a.list_tools()
            attacked = await a.call_tool("bad_attack", {"plan": json.dumps(plan)})

    assert master_key in result_text(attacked)
    world.close()


@pytest.mark.anyio
async def test_without_bubblewrap_the_upstream_refuses_to_start_with_one_line_and_starts_nothing(
    outside: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = hostile_world(outside, monkeypatch)
    world.store.save_upstream_tools("bad", [{"name": "name", "inputSchema": {"type": "object"}}])
    world.catalog = world.catalog.with_discovered(world.store.discovered_tools())
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap there
    caplog.set_level(logging.INFO, logger="credgate")

    with anyio.fail_after(60):
        async with world.gateway() as gw, gw.running(), connect(gw, "ga") as a:
            refused = await a.call_tool("bad_name", {})

    assert refused.is_error
    text = result_text(refused)
    assert text.startswith("upstream bad could not be started: ") and "bubblewrap" in text, text
    logged = [r.getMessage() for r in caplog.records if "bubblewrap" in r.getMessage()]
    assert logged and all("\n" not in line for line in logged)
    assert "sandbox = false" in logged[0] and "CREDGATE_SANDBOX=off" in logged[0]
    assert not (outside / "state" / "bad").exists() or not any((outside / "state" / "bad").iterdir())
    world.close()
