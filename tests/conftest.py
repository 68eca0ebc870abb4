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
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from gateway_support import Upstream, credgate_env, running_upstream
from postgres_support import (  # the hooks that run the suite on both backends
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

from mcp_credgate.cli import cli
from mcp_credgate.config import DEFAULT_PUBLIC_URL, Settings
from mcp_credgate.declarations import Catalog, load_catalog
from mcp_credgate.store import Store

__all__ = [
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_terminal_summary",
    "pytest_unconfigure",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_TOOLS_DIR = REPO_ROOT / "tools.d"

# The tools every test can rely on (see `tools_dir`):
#   echo      python handler, no credential
#   weather   http handler, credential type "weatherkey" (api_key, secret, pattern ^wk_…)
#   forecast  http handler, the same type "weatherkey" (shares its credentials with `weather`)
#   login     python handler, credential type "account" (username: not secret; password: secret;
#             note: optional text)
SAMPLE_TOOLS: dict[str, str] = {
    "echo.toml": """
        name = "echo"
        description = "Echo the given text back."

        [input_schema]
        type = "object"
        required = ["text"]
        properties.text = { type = "string" }

        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
    """,
    "weather.toml": """
        name = "weather"
        description = "Current weather for a city."

        [input_schema]
        type = "object"
        properties.city = { type = "string" }

        [credential]
        type = "weatherkey"
        fields = [
          { name = "api_key", kind = "api_key", required = true, pattern = '^wk_[A-Za-z0-9]{8,}$' },
        ]

        [handler]
        kind = "http"
        url = "https://weather.example.com/v1/current"
        query = { city = "{args.city}" }
        headers = { "X-Api-Key" = "{cred.api_key}" }
    """,
    "forecast.toml": """
        name = "forecast"
        description = "Weather forecast for a city."

        [input_schema]
        type = "object"
        properties.city = { type = "string" }

        [credential]
        type = "weatherkey"
        fields = [
          { name = "api_key", kind = "api_key", required = true, pattern = '^wk_[A-Za-z0-9]{8,}$' },
        ]

        [handler]
        kind = "http"
        url = "https://weather.example.com/v1/forecast"
        query = { city = "{args.city}" }
        headers = { "X-Api-Key" = "{cred.api_key}" }
    """,
    "login.toml": """
        name = "login"
        description = "Sign in to the demo account service."

        [credential]
        type = "account"
        fields = [
          { name = "username", kind = "username" },
          { name = "password", kind = "password" },
          { name = "note", kind = "text", required = false },
        ]

        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:account_login"
    """,
}

# Values that pass the sample types' validation.
WEATHER_KEY = "wk_0123456789abcdef"
ACCOUNT = {"username": "alice", "password": "correct horse battery staple"}


def write_tool(folder: Path, filename: str, text: str) -> Path:
    """Write one declaration file (the text is dedented, so tests may indent it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


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


def database_url() -> str | None:
    """The PostgreSQL URL of this test's store (None on SQLite), for settings built by hand."""
    return os.environ.get("CREDGATE_DATABASE_URL")


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


CliRun = Callable[..., Result]


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


ProcRun = Callable[..., subprocess.CompletedProcess[str]]


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
