"""The PostgreSQL half of the suite (a pytest plugin, loaded by conftest).

Finds the server (CREDGATE_TEST_DATABASE_URL, else a throw-away cluster from scripts/pg-cluster when
PostgreSQL is installed), parametrises every test over the backends, gives each PostgreSQL test a schema of
its own (through the URL's `options=-csearch_path=…`) and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_CLUSTER = REPO_ROOT / "scripts" / "pg-cluster"
POSTGRES_URL = pytest.StashKey[str | None]()
SKIP_REASON = pytest.StashKey[str]()
CLUSTER_DIR = pytest.StashKey[Path | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=("both", "sqlite", "postgresql"),
        default="both",
        help="store backend(s) to run the suite on (default: both, when PostgreSQL is there)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: about the SQLite file itself; not run on PostgreSQL")
    config.addinivalue_line("markers", "no_store: never touches a store; runs once")
    config.addinivalue_line("markers", "postgresql_only: about a shared PostgreSQL store; not run on SQLite")
    config.stash[CLUSTER_DIR] = None
    config.stash[POSTGRES_URL] = None
    config.stash[SKIP_REASON] = ""
    if config.getoption("backend") == "sqlite" or hasattr(config, "workerinput"):
        return
    url = os.environ.get("CREDGATE_TEST_DATABASE_URL")
    if not url:
        url = _start_cluster(config)
    config.stash[POSTGRES_URL] = url


def start_cluster() -> tuple[str, Path]:
    """A throw-away cluster (scripts/pg-cluster, fsync off): its URL and its folder, for `stop_cluster`.
    Raises RuntimeError with pg-cluster's last word when it cannot start one."""
    folder = Path(tempfile.mkdtemp(prefix="credgate-pg-"))
    folder.chmod(0o711)  # as root, the cluster runs as `postgres`, which must enter this folder
    done = subprocess.run(
        ["bash", str(PG_CLUSTER), "start", str(folder / "cluster"), "--fast"], capture_output=True, text=True
    )
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "pg-cluster failed")
    return done.stdout.strip(), folder


def stop_cluster(folder: Path) -> None:
    subprocess.run(["bash", str(PG_CLUSTER), "stop", str(folder / "cluster")], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def pause_cluster(folder: Path) -> None:
    """Stop the server (a fast shutdown: its sessions are ended), keeping the cluster for `resume_cluster`."""
    subprocess.run(["bash", str(PG_CLUSTER), "stop", str(folder / "cluster")], capture_output=True, check=True)


def resume_cluster(folder: Path) -> None:
    """Start a paused cluster again, on the same port."""
    subprocess.run(["bash", str(PG_CLUSTER), "resume", str(folder / "cluster")], capture_output=True, check=True)


def _start_cluster(config: pytest.Config) -> str | None:
    try:
        url, folder = start_cluster()
    except RuntimeError as exc:
        config.stash[SKIP_REASON] = (
            f"PostgreSQL half not run: set CREDGATE_TEST_DATABASE_URL or install PostgreSQL ({exc})"
        )
        return None
    config.stash[CLUSTER_DIR] = folder
    return url


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(CLUSTER_DIR, None)
    if folder is not None:
        stop_cluster(folder)


def backends(config: pytest.Config) -> list[str]:
    chosen = config.getoption("backend")
    available = ["sqlite"] + (["postgresql"] if config.stash.get(POSTGRES_URL, None) else [])
    if chosen == "postgresql" and "postgresql" not in available:
        raise pytest.UsageError(config.stash[SKIP_REASON] or "no PostgreSQL server")
    return [b for b in available if chosen in ("both", b)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("no_store") is None:
        metafunc.parametrize("backend", backends(metafunc.config), indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        on_postgres = "[postgresql" in item.nodeid or "-postgresql" in item.nodeid
        wrong_backend = item.get_closest_marker("sqlite_only" if on_postgres else "postgresql_only")
        (dropped if wrong_backend else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    url = config.stash.get(POSTGRES_URL, None)
    if url:
        terminalreporter.write_line(f"backends: sqlite and postgresql ({_without_password(url)})")
    elif config.stash.get(SKIP_REASON, ""):
        terminalreporter.write_line(config.stash[SKIP_REASON], yellow=True)


def _without_password(url: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(url)
    return f"{parts.get('host')}:{parts.get('port')}/{parts.get('dbname')}"


def database_url_for(server: str) -> tuple[str, str]:
    """A new schema on the server, and the URL that makes it the store's (its search_path)."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in server else "?"
    return f"{server}{separator}options={quote(f'-csearch_path={schema}')}", schema


def drop_schema(server: str, schema: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        # A process the test left running may still hold it; the cluster is thrown away anyway.
        with contextlib.suppress(psycopg.errors.LockNotAvailable):
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
