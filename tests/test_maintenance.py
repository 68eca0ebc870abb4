"""`credgate backup`, `restore` and `doctor` (issue 7).

Backups are taken while an in-process gateway serves calls, from a second store connection and from a real
`credgate` process; restores are refused for backups the key cannot open and for damaged files; the doctor
names each problem with its fix on one line. Backup and restore copy the SQLite file: on PostgreSQL they
point to pg_dump and pg_restore instead, and the doctor's checks of the file are SQLite's own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from mcp_credgate.cli import cli
from mcp_credgate.config import Settings
from mcp_credgate.crypto import MasterKey
from mcp_credgate.store import AuditRow, Store, store_location
from tests.support.cli import CliRun, assert_ok, assert_refused, out
from tests.support.gateway import TOKEN_FIELDS, World, connect, leaks, make_canary, python_tool
from tests.support.raw_db import data_folder_files, raw_db, store_contents
from tests.support.samples import ACCOUNT, WEATHER_KEY, write_tool

OTHER_WEATHER_KEY = "wk_fedcba9876543210"


# -- helpers ---------------------------------------------------------------------------------


def doctor_problems(run: CliRun, env: Mapping[str, str] | None = None) -> list[str]:
    """Run `credgate doctor`: exit 1, only `problem: ` lines on stdout, nothing on stderr. Returns them."""
    result = run("doctor", env=env)
    assert result.exit_code == 1, out(result)
    assert "Traceback" not in out(result)
    assert result.stderr == "", result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines, "doctor exited 1 without naming a problem"
    assert all(line.startswith("problem: ") for line in lines), lines
    return [line.removeprefix("problem: ") for line in lines]


def assert_doctor_ok(run: CliRun) -> None:
    result = run("doctor")
    assert_ok(result)
    assert result.stdout.strip() == "ok: no problem found", result.stdout


def fix_commands(problem: str) -> list[list[str]]:
    """The `credgate ...` commands a problem line gives as its fix (argument lists, `credgate` dropped)."""
    return [cmd.split()[1:] for cmd in re.findall(r"`(credgate [^`<]+)`", problem)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(home: Path) -> dict[str, str]:
    """Every file of the data folder with its digest: "changes nothing" means this is unchanged."""
    return {p.name: sha256(p) for p in sorted(home.iterdir()) if p.is_file()}


def settings_for(home: Path, tools_dir: Path) -> Settings:
    return Settings(
        home=home,
        tools_dirs=(tools_dir,),
        public_url="http://127.0.0.1:8765",
        database_url=os.environ.get("CREDGATE_DATABASE_URL"),
    )


def read_all(home: Path, tools_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Every credential of the store in `home`, decrypted (raises if any does not open)."""
    with Store.open(settings_for(home, tools_dir), env=env or {}) as store:
        return {info.name: dict(store.read_credential(info.name)) for info in store.list_credentials()}


def open_copy(db_file: Path, key_file: Path, where: Path) -> Store:
    """Open a copy of a database file (a backup, a replaced store) with a key file, as a store of its own."""
    home = where / "home"
    home.mkdir(parents=True, mode=0o700)
    (home / "credgate.db").write_bytes(db_file.read_bytes())
    (home / "master.key").write_bytes(key_file.read_bytes())
    return Store.open(Settings(home=home, tools_dirs=(), public_url="http://127.0.0.1:8765"), env={})


def integrity(db_file: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def key_forms(key_file: Path) -> dict[str, bytes]:
    """The master key as bytes that could sit in a file: raw, the key file's text, other encodings."""
    text = key_file.read_text(encoding="ascii").strip()
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert len(raw) == 32
    return {
        "raw": raw,
        "key file text": text.encode(),
        "unpadded": text.rstrip("=").encode(),
        "standard base64": base64.b64encode(raw),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
    }


def assert_no_key_or_secret(data: bytes, key_file: Path, *secrets: str, quick: tuple[str, ...] = ()) -> None:
    """No form of the master key; each secret in no form `leaks` knows (raw, URL, JSON, hex, any base64);
    the `quick` ones (many) only as raw, hex or aligned base64 bytes."""
    for form, needle in key_forms(key_file).items():
        assert needle not in data, f"the master key is in the file ({form})"
    text = data.decode("latin-1")
    for secret in secrets:
        found = leaks(text, secret)
        assert not found, f"secret {secret[:8]}… found as {found}"
    for secret in quick:
        raw = secret.encode()
        for needle in (raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")):
            assert needle not in data, f"secret {secret[:8]}… is in the file"


@pytest.fixture
def cli_home(run_cli: CliRun) -> CliRun:
    assert_ok(run_cli("init"))
    return run_cli


@pytest.fixture
def team(cli_home: CliRun) -> CliRun:
    """`wk` (weatherkey) bound to weather in group `team` (allows echo, weather, login); `acct` (account)."""
    run = cli_home
    assert_ok(run("cred", "add", "wk", "--type", "weatherkey", "--set", f"api_key={WEATHER_KEY}"))
    assert_ok(run("cred", "add", "acct", "--tool", "login", "--from-json", "-", input=json.dumps(ACCOUNT)))
    assert_ok(run("group", "add", "team"))
    assert_ok(run("group", "allow", "team", "echo", "weather", "login"))
    assert_ok(run("bind", "team", "weather", "wk"))
    return run


@pytest.fixture
def other_cli(tmp_path: Path, tools_dir: Path) -> Iterator[tuple[CliRun, Path]]:
    """A second, independent installation (its own home and master key), same declarations."""
    other_home = tmp_path / "other-home"
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: Mapping[str, str] | None = None) -> Result:
        return runner.invoke(
            cli,
            ["--home", str(other_home), "--tools-dir", str(tools_dir), *args],
            input=input,
            env=dict(env or {}),
            catch_exceptions=False,
        )

    yield run, other_home


# -- backup ----------------------------------------------------------------------------------


@pytest.mark.sqlite_only  # a copy of the SQLite file
def test_backup_is_created_0600_even_under_umask_0(team: CliRun, home: Path, tools_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "backups"
    out_dir.mkdir()
    target = out_dir / "credgate-backup.db"
    old_umask = os.umask(0)
    try:
        result = team("backup", str(target))
    finally:
        os.umask(old_umask)
    assert_ok(result)
    assert str(target) in result.stdout
    assert "master key" in result.stdout  # the hint to keep the key apart
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in out_dir.iterdir()) == [target.name]  # no -journal, -wal or .partial left
    assert integrity(target) == ["ok"]
    with open_copy(target, home / "master.key", tmp_path / "check") as copy:
        assert dict(copy.read_credential("wk")) == {"api_key": WEATHER_KEY}
        assert dict(copy.read_credential("acct")) == ACCOUNT
        assert copy.group("team").tools == {"echo": None, "weather": "wk", "login": None}


@pytest.mark.sqlite_only  # a copy of the SQLite file
def test_backup_refuses_an_existing_target_and_leaves_it_alone(team: CliRun, tmp_path: Path) -> None:
    target = tmp_path / "taken.db"
    target.write_bytes(b"someone else's file\n")
    target.chmod(0o640)
    assert_refused(team("backup", str(target)), str(target), "exists already")
    assert target.read_bytes() == b"someone else's file\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("taken")) == ["taken.db"]


@pytest.mark.sqlite_only  # a copy of the SQLite file
def test_backup_holds_no_master_key_and_no_secret(team: CliRun, home: Path, tmp_path: Path) -> None:
    canaries = [make_canary("BK1", rich=True), make_canary("BK2")]
    for n, canary in enumerate(canaries):
        values = {"username": f"user{n}", "password": canary, "note": canary}
        assert_ok(team("cred", "add", f"canary{n}", "--tool", "login", "--from-json", "-", input=json.dumps(values)))
    target = tmp_path / "b.db"
    assert_ok(team("backup", str(target)))
    data = target.read_bytes()
    assert b"canary0" in data  # the names are plain columns: the scan does read the right file
    assert_no_key_or_secret(data, home / "master.key", *canaries, ACCOUNT["password"], WEATHER_KEY)
    with open_copy(target, home / "master.key", tmp_path / "check") as copy:
        assert copy.read_credential("canary0")["password"] == canaries[0]


@pytest.mark.sqlite_only  # a copy of the SQLite file
@pytest.mark.anyio
async def test_backup_while_the_gateway_serves_is_consistent_and_complete(tmp_path: Path) -> None:
    """Calls run in a task group while a second store (in-process) and a real `credgate backup` process back
    up the store, and an admin thread keeps adding credentials: each backup opens, passes its integrity check,
    decrypts every credential it holds with the key, and holds a gap-free prefix of the admin's additions."""
    token = make_canary("SRV", rich=True)
    world = World.create(
        tmp_path,
        {
            "probe": python_tool(
                "probe", "tests.support.sample_handlers:sync_report", credential='type = "svc"\n' + TOKEN_FIELDS
            )
        },
    )
    extras: dict[str, str] = {}
    try:
        world.add_credential("svc-main", "svc", {"token": token})
        world.allow("team", "probe")
        world.bind("team", "probe", "svc-main")
        backups = {"in_process": tmp_path / "b-store.db", "process": tmp_path / "b-cli.db"}
        stop = threading.Event()
        calls_done = 0
        failures: list[str] = []
        procs: list[subprocess.CompletedProcess[bytes]] = []

        def admin_writer() -> None:
            with Store.open(world.settings, env={}) as admin_store:
                n = 0
                while not stop.is_set() and n < 200:
                    value = make_canary(f"X{n}")
                    admin_store.add_credential(f"extra{n:03d}", "svc", {"token": value}, frozenset({"token"}))
                    extras[f"extra{n:03d}"] = value
                    n += 1

        def backup_in_process() -> None:
            with Store.open(world.settings, env={}) as other:
                other.backup(backups["in_process"])

        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDGATE_")}
        base = [sys.executable, "-m", "mcp_credgate", "--home", str(world.settings.home)]
        base += ["--tools-dir", str(world.tools_dir)]

        async with world.gateway() as gw, connect(gw, "team") as client:

            async def caller() -> None:
                nonlocal calls_done
                while not stop.is_set():
                    result = await client.call_tool("probe", {"n": calls_done})
                    if result.is_error:
                        failures.append(result.model_dump_json())
                    calls_done += 1

            async def cli_backup() -> None:
                procs.append(
                    await anyio.run_process(
                        [*base, "backup", str(backups["process"])], check=False, env=env, cwd=tmp_path
                    )
                )

            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(caller)
                    tg.start_soon(anyio.to_thread.run_sync, admin_writer)
                    # the gateway is busy, and its audit writer has flushed, before the backups start
                    while calls_done < 20 or not world.store.read_audit(limit=1):
                        await anyio.sleep(0.01)
                    before, extras_before = calls_done, len(extras)
                    async with anyio.create_task_group() as backing_up:
                        backing_up.start_soon(cli_backup)
                        backing_up.start_soon(anyio.to_thread.run_sync, backup_in_process)
                    during = calls_done - before
                    stop.set()
        [proc] = procs
        proc_out = (proc.stdout + proc.stderr).decode()
        assert proc.returncode == 0, proc_out
        assert "Traceback" not in proc_out
        assert not failures, failures[:3]
        assert during > 0, "no call completed while the backups ran"
    finally:
        world.close()

    key_file = world.settings.key_path
    for label, path in backups.items():
        assert path.stat().st_mode & 0o777 == 0o600, label
        assert integrity(path) == ["ok"], label
        with open_copy(path, key_file, tmp_path / f"check-{label}") as copy:
            names = [info.name for info in copy.list_credentials()]
            opened = {name: copy.read_credential(name)["token"] for name in names}
            assert copy.read_audit(limit=1), f"{label}: no audit row: the backup was not taken under load"
        assert opened.pop("svc-main") == token, label
        assert opened == {name: extras[name] for name in opened}, label
        assert sorted(opened) == [f"extra{n:03d}" for n in range(len(opened))], f"{label}: gaps in {sorted(opened)}"
        assert len(opened) >= extras_before, f"{label}: misses credentials added before the backup began"
        some = list(extras.values())[:3]
        assert_no_key_or_secret(path.read_bytes(), key_file, token, *some, quick=tuple(extras.values()))


# -- restore ---------------------------------------------------------------------------------


@pytest.mark.sqlite_only  # a copy of the SQLite file
def test_restore_round_trip_brings_the_old_state_back_and_keeps_the_replaced_store(
    team: CliRun, home: Path, tools_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "b.db"
    before_creds = read_all(home, tools_dir)
    before_groups = json.loads(team("group", "list", "--json").stdout)
    assert_ok(team("backup", str(target)))

    assert_ok(team("cred", "update", "wk", "--set", f"api_key={OTHER_WEATHER_KEY}"))
    assert_ok(team("cred", "rm", "acct"))
    assert_ok(team("cred", "add", "wk2", "--type", "weatherkey", "--set", f"api_key={OTHER_WEATHER_KEY}"))
    assert_ok(team("group", "add", "ops"))
    assert_ok(team("unbind", "team", "weather"))
    changed = sha256(home / "credgate.db")
    assert read_all(home, tools_dir) != before_creds

    result = team("restore", str(target))
    assert_ok(result)
    assert (
        read_all(home, tools_dir)
        == before_creds
        == {
            "wk": {"api_key": WEATHER_KEY},
            "acct": ACCOUNT,
        }
    )
    assert json.loads(team("group", "list", "--json").stdout) == before_groups
    assert (home / "credgate.db").stat().st_mode & 0o777 == 0o600
    names = sorted(p.name for p in home.iterdir())
    replaced = [n for n in names if n.startswith("credgate.db.replaced-")]
    assert len(replaced) == 1, names
    assert replaced[0] in result.stdout
    assert not [n for n in names if n.endswith(".restore")], names
    assert sha256(home / replaced[0]) == changed  # the replaced store, kept as it was
    with open_copy(home / replaced[0], home / "master.key", tmp_path / "aside") as aside:
        assert dict(aside.read_credential("wk")) == {"api_key": OTHER_WEATHER_KEY}
        assert aside.group_exists("ops")
    assert_doctor_ok(team)


@pytest.mark.sqlite_only  # a copy of the SQLite file
def test_restore_never_overwrites_a_store_kept_aside_earlier(team: CliRun, home: Path, tmp_path: Path) -> None:
    """Two restores within one second must keep both replaced stores: files already named like this
    second's (and the next few seconds') aside name stay as they are."""
    target = tmp_path / "b.db"
    assert_ok(team("backup", str(target)))
    assert_ok(team("group", "add", "ops"))
    current = sha256(home / "credgate.db")
    start = datetime.now(UTC)
    earlier = {}
    for seconds in range(-1, 4):
        stamp = (start + timedelta(seconds=seconds)).strftime("%Y%m%dT%H%M%SZ")
        path = home / f"credgate.db.replaced-{stamp}"
        path.write_bytes(f"kept aside by an earlier restore at {stamp}\n".encode())
        earlier[path] = path.read_bytes()
    assert_ok(team("restore", str(target)))
    for path, content in earlier.items():
        assert path.read_bytes() == content, f"{path.name} was overwritten"
    kept = [p for p in home.iterdir() if p.name.startswith("credgate.db.replaced-") and p not in earlier]
    assert len(kept) == 1, sorted(p.name for p in home.iterdir())
    assert sha256(kept[0]) == current


@pytest.mark.sqlite_only  # a copy of the SQLite file
@pytest.mark.parametrize("how", ["another store", "before a key rotation"])
def test_restore_refuses_a_backup_the_current_key_cannot_open(
    team: CliRun, home: Path, tmp_path: Path, other_cli: tuple[CliRun, Path], how: str
) -> None:
    target = tmp_path / "foreign.db"
    if how == "another store":
        other, _ = other_cli
        assert_ok(other("init"))
        assert_ok(other("cred", "add", "wk", "--type", "weatherkey", "--set", f"api_key={OTHER_WEATHER_KEY}"))
        assert_ok(other("backup", str(target)))
    else:
        assert_ok(team("backup", str(target)))
        assert_ok(team("key", "rotate"))
    before = snapshot(home)
    line = assert_refused(team("restore", str(target)), "master key", str(target))
    assert "Traceback" not in line
    assert snapshot(home) == before  # sha256 of credgate.db (and every other file) unchanged, no file added
    assert_doctor_ok(team)


def _truncations(data: bytes) -> dict[str, bytes]:
    page = int.from_bytes(data[16:18], "big")
    return {
        "half": data[: len(data) // 2],
        "last page cut off": data[: len(data) - page],
        "last 100 bytes cut off": data[: len(data) - 100],
        "header only": data[:100],
    }


@pytest.mark.sqlite_only  # a copy of the SQLite file
def test_restore_refuses_damaged_and_missing_files_and_changes_nothing(
    team: CliRun, home: Path, tools_dir: Path, tmp_path: Path
) -> None:
    for n in range(40):  # a store of many pages, credentials last (the end of the file holds ciphertext)
        assert_ok(team("cred", "add", f"k{n:02d}", "--type", "weatherkey", "--set", f"api_key=wk_{n:02d}{'a' * 300}"))
    good = tmp_path / "good.db"
    assert_ok(team("backup", str(good)))
    data = good.read_bytes()
    page = int.from_bytes(data[16:18], "big")
    assert len(data) // page > 8
    damaged: dict[str, bytes] = {f"truncated ({k})": v for k, v in _truncations(data).items()}
    rng = random.Random(7)
    damaged["random bytes"] = rng.randbytes(len(data))
    damaged["empty"] = b""
    middle = (len(data) // page // 2) * page
    damaged["a page in the middle overwritten"] = data[:middle] + rng.randbytes(page) + data[middle + page :]
    assert_ok(team("group", "add", "after-backup"))
    before = snapshot(home)
    for label, content in damaged.items():
        path = tmp_path / f"damaged-{len(content)}-{label.split()[0]}.db"
        path.write_bytes(content)
        result = team("restore", str(path))
        assert result.exit_code == 1, f"{label}: {out(result)}"
        assert_refused(result, str(path))
        assert snapshot(home) == before, label
    assert_refused(team("restore", str(tmp_path / "no-such-backup.db")), "no-such-backup.db")
    assert_refused(team("restore", str(tmp_path)))  # a folder is not a backup either
    assert snapshot(home) == before
    assert_doctor_ok(team)
    assert_ok(team("restore", str(good)))  # and the good backup still restores
    assert read_all(home, tools_dir)["k39"] == {"api_key": f"wk_39{'a' * 300}"}


@pytest.mark.sqlite_only  # a copy of the SQLite file
def test_restore_in_a_real_process_refuses_random_bytes_in_one_line(
    team: CliRun, home: Path, tools_dir: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(random.Random(3).randbytes(50_000))
    before = snapshot(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDGATE_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcp_credgate",
            "--home",
            str(home),
            "--tools-dir",
            str(tools_dir),
            "restore",
            str(junk),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(junk) in lines[0] and "internal error" not in lines[0], proc.stderr
    assert snapshot(home) == before


@pytest.mark.postgresql_only
def test_backup_and_restore_of_a_postgresql_store_point_to_its_own_tools_and_change_nothing(
    team: CliRun, home: Path, settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "some.db").write_bytes(b"a file that is not the store\n")
    before, files = store_contents(settings), sorted(tmp_path.rglob("*"))
    backup = assert_refused(team("backup", str(tmp_path / "b.db")), "PostgreSQL", "pg_dump", "master key")
    restore = assert_refused(team("restore", str(tmp_path / "some.db")), "PostgreSQL", "pg_restore")
    assert store_location(settings) in backup and store_location(settings) in restore
    assert store_contents(settings) == before
    assert sorted(tmp_path.rglob("*")) == files  # no backup file, nothing kept aside
    assert sorted(p.name for p in home.iterdir()) == data_folder_files(settings)
    assert_doctor_ok(team)


# -- doctor ----------------------------------------------------------------------------------


def test_doctor_is_ok_on_a_healthy_store(team: CliRun) -> None:
    assert_doctor_ok(team)
    data = json.loads(team("doctor", "--json").stdout)
    assert data == {"problems": [], "warnings": [], "upstreams_hold": {}}


def test_doctor_reports_file_modes_too_open_with_the_chmod_fix(team: CliRun, settings: Settings) -> None:
    files = [settings.home / name for name in data_folder_files(settings)]  # the key, and the SQLite file
    for path in files:
        path.chmod(0o644)
    problems = doctor_problems(team)
    assert len(problems) == len(files), problems
    for path in files:
        [line] = [p for p in problems if f"{path} is mode 644" in p]
        assert f"chmod 600 {path}" in line
    for path in files:
        path.chmod(0o600)
    assert_doctor_ok(team)


def test_doctor_reports_a_wrong_master_key(team: CliRun) -> None:
    wrong = {"CREDGATE_MASTER_KEY": MasterKey.generate().to_text()}
    [problem] = doctor_problems(team, env=wrong)
    assert "master key does not match this store" in problem
    assert "CREDGATE_MASTER_KEY" in problem  # the fix: set it to the key the store was made with
    assert_doctor_ok(team)


def test_doctor_reports_a_binding_to_a_tool_removed_from_tools_d(team: CliRun, tools_dir: Path) -> None:
    (tools_dir / "weather.toml").unlink()
    problems = doctor_problems(team)
    bound = [p for p in problems if "credential wk is bound to 'weather'" in p]
    assert len(bound) == 1, problems
    assert "not declared" in bound[0] and "`credgate unbind team weather`" in bound[0]
    assert all("weather" in p for p in problems), problems  # nothing else is wrong
    for problem in problems:
        for command in fix_commands(problem):
            assert_ok(team(*command))
    assert_doctor_ok(team)


def test_doctor_reports_an_allowed_tool_removed_from_tools_d(team: CliRun, tools_dir: Path) -> None:
    (tools_dir / "echo.toml").unlink()
    [problem] = doctor_problems(team)
    assert "group team: allows 'echo', which is not declared" in problem
    assert "`credgate group deny team echo`" in problem
    for command in fix_commands(problem):
        assert_ok(team(*command))
    assert_doctor_ok(team)


def test_doctor_reports_a_credential_whose_type_no_tool_declares(team: CliRun, tools_dir: Path) -> None:
    text = (tools_dir / "login.toml").read_text()
    (tools_dir / "login.toml").write_text(text.replace('type = "account"', 'type = "account2"'))
    [problem] = doctor_problems(team)
    assert "credential acct" in problem and "'account'" in problem
    assert "`credgate cred rm acct`" in problem
    for command in fix_commands(problem):
        assert_ok(team(*command))
    assert_doctor_ok(team)


def test_doctor_reports_a_binding_whose_tool_changed_its_type(team: CliRun, tools_dir: Path) -> None:
    text = (tools_dir / "weather.toml").read_text()
    (tools_dir / "weather.toml").write_text(text.replace('type = "weatherkey"', 'type = "weatherkey2"'))
    [problem] = doctor_problems(team)
    assert "credential wk (type weatherkey) is bound to 'weather', which needs type weatherkey2" in problem
    assert "credgate bind team weather" in problem
    (tools_dir / "weather.toml").write_text(text)
    assert_doctor_ok(team)


def test_doctor_reports_a_declarations_problem(team: CliRun, tools_dir: Path) -> None:
    broken = write_tool(tools_dir, "broken.toml", 'name = "broken"\ndescription = "unterminated\n')
    [problem] = doctor_problems(team)
    assert "broken.toml" in problem and "TOML" in problem
    assert "credgate tools --check" in problem
    broken.unlink()
    assert_doctor_ok(team)


def test_doctor_reports_several_problems_one_line_each(team: CliRun, home: Path, tools_dir: Path) -> None:
    (home / "master.key").chmod(0o644)
    (tools_dir / "echo.toml").unlink()
    write_tool(tools_dir, "broken.toml", "this is = = not toml\n")
    problems = doctor_problems(team)
    assert len(problems) == 3, problems
    assert sum("master.key is mode 644" in p for p in problems) == 1
    assert sum("allows 'echo'" in p for p in problems) == 1
    assert sum("broken.toml" in p for p in problems) == 1


@pytest.mark.sqlite_only  # bytes of the SQLite file overwritten; PostgreSQL checks its own pages
def test_doctor_reports_a_store_that_fails_its_integrity_check(team: CliRun, home: Path, tools_dir: Path) -> None:
    """Some bytes in the middle of the database (an audit page: most pages are) overwritten while nothing
    holds the file open: the doctor says so in one line, with exit 1 and no traceback."""
    with Store.open(settings_for(home, tools_dir), env={}) as store:
        rows = [
            AuditRow(
                f"2025-01-01T00:00:{n % 60:02d}.000+00:00", "team", None, "weather", "wk", "ok", 1.5, f"ref{n:06d}"
            )
            for n in range(3000)
        ]
        store.write_audit(rows)
    db = home / "credgate.db"
    assert not (home / "credgate.db-wal").exists()  # closed: checkpointed, nothing holds it open
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    pages = len(data) // page
    assert pages > 20
    middle = (pages // 2) * page
    garbage = bytearray(random.Random(11).randbytes(page))
    garbage[0] = 0x55  # not a b-tree page type
    data[middle : middle + page] = garbage
    db.write_bytes(bytes(data))
    problems = doctor_problems(team)
    damaged = [p for p in problems if re.search(r"integrity|malformed|not a readable", p)]
    assert damaged, problems
    assert all("internal error" not in p for p in problems)
    assert len(problems) <= 10, problems


def test_doctor_reports_a_credential_that_no_longer_decrypts(run_cli: CliRun, settings: Settings) -> None:
    assert run_cli("init").exit_code == 0
    assert (
        run_cli(
            "cred", "add", "wk", "--tool", "weather", "--from-json", "-", input='{"api_key": "wk_Zq9secretish01"}'
        ).exit_code
        == 0
    )
    with raw_db(settings) as db:
        db.execute("UPDATE credential_values SET ciphertext = ?", (bytes(40),))
    result = run_cli("doctor")

    assert result.exit_code == 1
    assert "credential 'wk' does not open" in result.output
    assert "credgate cred update wk" in result.output
