"""What only a PostgreSQL store has to get right (issue 10): connection problems said clearly and without
the URL's password, a server restart survived, concurrent `init`s and migrations, the advisory locks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from mcp_credgate.config import Settings
from mcp_credgate.errors import StoreBusyError
from mcp_credgate.store import Store
from tests.support.cli import CliRun
from tests.support.postgres import start_cluster, stop_cluster
from tests.support.raw_db import raw_db

pytestmark = pytest.mark.postgresql_only


def url_with(*, password: str | None = None, port: int | None = None) -> str:
    """The test's URL with another password or port."""
    url = urlsplit(os.environ["CREDGATE_DATABASE_URL"])
    user, _, address = url.netloc.partition("@")
    name, _, old_password = user.partition(":")
    host = address.rpartition(":")[0] if port is not None else address
    netloc = f"{name}:{password or old_password}@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit(url._replace(netloc=netloc))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- messages --------------------------------------------------------------------------------------------


def test_a_wrong_password_is_one_clear_line_without_the_password(run_cli: CliRun) -> None:
    result = run_cli("cred", "list", env={"CREDGATE_DATABASE_URL": url_with(password="not-the-password-93")})

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot connect to PostgreSQL at postgresql://credgate@127.0.0.1:")
    assert "not-the-password-93" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_server_is_one_clear_line(run_cli: CliRun) -> None:
    password = conninfo_to_dict(os.environ["CREDGATE_DATABASE_URL"])["password"]
    assert isinstance(password, str)
    result = run_cli("init", env={"CREDGATE_DATABASE_URL": url_with(port=closed_port())})

    assert result.exit_code == 1
    assert "PostgreSQL at postgresql://credgate@127.0.0.1:" in result.stderr and "is not answering" in result.stderr
    assert password and password not in result.output
    assert "Traceback" not in result.output


def test_a_database_without_a_store_asks_for_init(run_cli: CliRun) -> None:
    result = run_cli("group", "list")

    assert result.exit_code == 1
    assert "no credgate store at postgresql://credgate@127.0.0.1:" in result.stderr
    assert "credgate init" in result.stderr


def test_init_reports_the_database_without_its_password(run_cli: CliRun, home: Path) -> None:
    result = run_cli("init", "--json")

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["created"] is True
    assert data["database"].startswith("postgresql://credgate@127.0.0.1:")
    password = conninfo_to_dict(os.environ["CREDGATE_DATABASE_URL"])["password"]
    assert isinstance(password, str)
    assert password and password not in result.output
    assert not (home / "credgate.db").exists()  # nothing of SQLite: the data folder holds the key only
    assert run_cli("doctor").exit_code == 0


# -- concurrency ------------------------------------------------------------------------------------------


def test_two_inits_at_once_make_one_store_and_the_other_key_is_not_left_behind(tmp_path: Path) -> None:
    homes = [tmp_path / "one", tmp_path / "two"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDGATE_") or k == "CREDGATE_DATABASE_URL"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "mcp_credgate", "init", "--json", "--home", str(h)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in homes
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert sorted(p.returncode for p in processes) == [0, 1], outputs
    won = 0 if processes[0].returncode == 0 else 1
    winner, loser = homes[won], homes[1 - won]
    assert json.loads(outputs[won][0])["created"] is True
    # The other found the store made meanwhile: as a second `init` would, it says that its data folder has
    # no key for it, and the key it had made (never used) is not left behind to be mistaken for one.
    assert "no master key for this store" in outputs[1 - won][1]
    assert "Traceback" not in outputs[1 - won][1]
    assert (winner / "master.key").exists()
    assert not (loser / "master.key").exists()
    with Store.open(
        Settings(home=winner, tools_dirs=(), public_url="http://x", database_url=env["CREDGATE_DATABASE_URL"]), env={}
    ) as store:
        assert store.health() == []


def test_replicas_starting_together_apply_a_missing_migration_once(store: Store, settings: Settings) -> None:
    store.add_group("kept")
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True) as conn:  # as before the migration was there
        conn.execute("DROP TABLE change_counter")
        conn.execute("DELETE FROM _credgate_migrations WHERE name = '0005_change_counter'")
    opened: list[Store] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Store.open(settings, env={}))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with raw_db(settings) as db:
        assert (
            db.execute("SELECT COUNT(*) FROM _credgate_migrations WHERE name = '0005_change_counter'").fetchone()[0]
            == 1
        )
        assert db.execute("SELECT n FROM change_counter").fetchone()[0] == 0
    for s in opened:
        assert s.group_exists("kept")
        s.close()


def test_a_credential_lock_is_exclusive_within_one_process_too_and_gives_up_cleanly(store: Store) -> None:
    def sessions() -> int:
        with psycopg.connect(os.environ["CREDGATE_DATABASE_URL"]) as conn:
            row = conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'credgate'").fetchone()
            return int(row[0]) if row else 0

    before = sessions()
    with store.credential_lock("uid-1"):
        with pytest.raises(StoreBusyError, match="retry"):
            store.credential_lock("uid-1", timeout=0.2).acquire()
        with store.credential_lock("uid-2", timeout=0.2):  # another credential is not held up
            pass
        assert sessions() == before + 1  # the waiter that gave up closed its connection
    with store.credential_lock("uid-1", timeout=0.2):  # released
        pass
    assert sessions() == before


# -- a server restart -----------------------------------------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[tuple[str, Path]]:
    """A cluster of this test's own (it gets restarted), with its URL and its data folder's parent."""
    url, folder = start_cluster()
    try:
        yield url, folder / "cluster"
    finally:
        stop_cluster(folder)


def test_an_open_store_goes_on_after_the_server_restarts(
    own_cluster: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cluster = own_cluster
    settings = Settings(home=tmp_path / "home", tools_dirs=(), public_url="http://x", database_url=url)
    store, _ = Store.initialise(settings, env={})
    try:
        store.add_group("before")
        assert store.binding("before", "echo").allowed is False
        bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
        as_owner = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        subprocess.run(
            [
                *as_owner,
                str(bindir / "pg_ctl"),
                "-D",
                str(cluster / "data"),
                "-l",
                str(cluster / "restart.log"),
                "-m",
                "fast",
                "-w",
                "restart",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        assert store.group_exists("before")  # the dropped connection is replaced at once
        store.allow("before", ["echo"])
        assert store.binding("before", "echo").allowed is True
    finally:
        store.close()
