"""Shared fixtures: a temporary data folder, a few declared tools, an initialised store, CLI runners.

Everything is real: a SQLite file under `tmp_path`, TOML files written by the fixtures, the real CLI.

Every test runs twice, on SQLite and on PostgreSQL (`[sqlite]` / `[postgresql]`): the store fixtures and
`CREDGATE_DATABASE_URL` point at a fresh PostgreSQL schema for the second. The server is the one
`CREDGATE_TEST_DATABASE_URL` names (`.ci/run` starts one), else a throw-away cluster that `scripts/pg-cluster`
starts for the session when PostgreSQL is installed; without either, the PostgreSQL half is left out and
the summary says so. `--backend sqlite|postgresql` runs one half. Marks: `sqlite_only` (about the SQLite file
itself), `no_store` (never touches a store: runs once).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mcp_credgate.cli import cli
from mcp_credgate.config import DEFAULT_PUBLIC_URL, Settings
from mcp_credgate.declarations import Catalog, load_catalog
from mcp_credgate.store import Store
from tests.support.cli import CliRun, ProcRun
from tests.support.gateway import Upstream, credgate_env, running_upstream
from tests.support.postgres import (  # the hooks that run the suite on both backends
    POSTGRES_URL,
    database_url_for,
    drop_schema,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_terminal_summary,
    pytest_unconfigure,
)
from tests.support.samples import SAMPLE_TOOLS, database_url, write_tool

__all__ = [  # the PostgreSQL plugin's hooks, re-exported for pytest to find
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_terminal_summary",
    "pytest_unconfigure",
]


@pytest.fixture(autouse=True)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The store backend of this run of the test. No test sees the developer's own CREDGATE_* settings; on
    PostgreSQL, CREDGATE_DATABASE_URL names a schema of its own."""
    for name in list(os.environ):
        if name.startswith("CREDGATE_"):
            monkeypatch.delenv(name)
    name = getattr(request, "param", "sqlite")
    if name != "postgresql":
        yield name
        return
    server = request.config.stash[POSTGRES_URL]
    assert server is not None
    url, schema = database_url_for(server)
    monkeypatch.setenv("CREDGATE_DATABASE_URL", url)
    try:
        yield name
    finally:
        drop_schema(server, schema)


@pytest.fixture(scope="session", autouse=True)
def upstream_homes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The upstreams' sandbox homes (contract §1's state folder) for the whole run: a temporary folder, never
    the developer's own ~/.local/state. Child processes inherit it."""
    folder = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(folder))
        yield folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The data folder (not created yet: `credgate init` / `Store.initialise` create it)."""
    return tmp_path / "home"


@pytest.fixture
def tools_dir(tmp_path: Path) -> Path:
    """A tools.d folder holding SAMPLE_TOOLS."""
    folder = tmp_path / "tools.d"
    for filename, text in SAMPLE_TOOLS.items():
        write_tool(folder, filename, text)
    return folder


@pytest.fixture
def settings(home: Path, tools_dir: Path) -> Settings:
    return Settings(home=home, tools_dirs=(tools_dir,), public_url=DEFAULT_PUBLIC_URL, database_url=database_url())


@pytest.fixture
def catalog(tools_dir: Path) -> Catalog:
    cat = load_catalog([tools_dir])
    assert not cat.problems, cat.problems
    return cat


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """An initialised store (key file in the home folder), closed after the test."""
    opened, created = Store.initialise(settings, env={})
    assert created
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def run_cli(home: Path, tools_dir: Path) -> CliRun:
    """Invoke `credgate --home HOME --tools-dir TOOLS ARGS...` in-process with click's CliRunner.

    Keyword arguments: input (stdin text), env (extra environment variables).
    """
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: Mapping[str, str] | None = None) -> Result:
        return runner.invoke(
            cli,
            ["--home", str(home), "--tools-dir", str(tools_dir), *args],
            input=input,
            env=dict(env or {}),
            catch_exceptions=False,
        )

    return run


@pytest.fixture
def run_credgate(home: Path, tools_dir: Path, tmp_path: Path) -> ProcRun:
    """Run `python -m mcp_credgate --home HOME --tools-dir TOOLS ARGS...` as a real process."""

    def run(
        *args: str, input: str | None = None, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**credgate_env(), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "mcp_credgate", "--home", str(home), "--tools-dir", str(tools_dir), *args],
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=tmp_path,
            timeout=timeout,
        )

    return run


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A local HTTP server on 127.0.0.1 that records every request and echoes it back."""
    with running_upstream() as server:
        yield server
