"""Where things live: the data folder, the tool declarations, the public URL, the upstreams' sandbox homes
(contract §1), whether upstreams run sandboxed, for several replicas the PostgreSQL store, and the
organisation's OpenID provider the dashboard signs in through (`serve --http` and `dashboard` set it)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from .errors import SandboxError, StoreError
from .sso import SsoSettings

__all__ = [
    "DATABASE_NAME",
    "DEFAULT_PUBLIC_URL",
    "KEY_FILE_NAME",
    "PENDING_KEY_FILE_NAME",
    "Settings",
    "database_url_has_password",
    "default_home",
    "default_state_dir",
    "default_tools_dirs",
    "sandbox_switch",
]

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8765"
DATABASE_NAME = "credgate.db"
KEY_FILE_NAME = "master.key"
PENDING_KEY_FILE_NAME = "master.key.new"
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*(?:'(?:[^'\\]|\\.)+'|[^'\s])")  # a non-empty value


def default_home(env: Mapping[str, str]) -> Path:
    if env.get("CREDGATE_HOME"):
        return Path(env["CREDGATE_HOME"])
    xdg = env.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "credgate"


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where the upstreams' sandbox homes live: outside the data folder, so that no upstream is ever given a
    place in it, and kept across restarts (an upstream finds its cache again)."""
    if env.get("CREDGATE_STATE_DIR"):
        return Path(env["CREDGATE_STATE_DIR"]).expanduser()
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "credgate" / "upstreams"


def sandbox_switch(env: Mapping[str, str]) -> bool:
    """CREDGATE_SANDBOX: on (the default) or off, for every stdio upstream."""
    value = env.get("CREDGATE_SANDBOX", "").strip().lower()
    if value in ("", "on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise SandboxError(f"CREDGATE_SANDBOX must be on or off, not {env['CREDGATE_SANDBOX']!r}")


def default_tools_dirs(home: Path, env: Mapping[str, str], cwd: Path) -> tuple[Path, ...]:
    if env.get("CREDGATE_TOOLS_DIR"):
        return tuple(Path(p) for p in env["CREDGATE_TOOLS_DIR"].split(":") if p)
    local = cwd / "tools.d"
    return (local,) if local.is_dir() else (home / "tools.d",)


@dataclass(frozen=True)
class Settings:
    home: Path
    tools_dirs: tuple[Path, ...]
    public_url: str
    database_url: str | None = None  # PostgreSQL; None: the SQLite file in the data folder
    state_dir: Path = field(default_factory=lambda: default_state_dir(os.environ))
    sandbox: bool = True  # stdio upstreams run sandboxed (CREDGATE_SANDBOX=off, `serve --no-sandbox`: not)
    sso: SsoSettings | None = None  # the dashboard's sign-in through the organisation's OpenID provider
    audit_required: bool = False  # `serve --audit required`: refuse calls while audit rows cannot be written

    @property
    def database_path(self) -> Path:
        return self.home / DATABASE_NAME

    @property
    def key_path(self) -> Path:
        return self.home / KEY_FILE_NAME

    @property
    def pending_key_path(self) -> Path:
        return self.home / PENDING_KEY_FILE_NAME

    @property
    def protected_paths(self) -> dict[Path, str]:
        """What no upstream may ever see or be given (each with what it is, for messages)."""
        return {
            self.home: "the data folder",
            self.key_path: "the master key",
            self.state_dir: "the upstreams' homes",
        }

    @classmethod
    def resolve(
        cls,
        home: str | Path | None = None,
        tools_dirs: Sequence[str | Path] = (),
        public_url: str | None = None,
        env: Mapping[str, str] | None = None,
        database_url: str | None = None,
        cwd: Path | None = None,
        sandbox: bool | None = None,
    ) -> Settings:
        """Flags win over environment variables, which win over the defaults."""
        env = os.environ if env is None else env
        home_path = Path(home) if home else default_home(env)
        dirs = (
            tuple(Path(d) for d in tools_dirs) if tools_dirs else default_tools_dirs(home_path, env, cwd or Path.cwd())
        )
        url = public_url or env.get("CREDGATE_PUBLIC_URL") or DEFAULT_PUBLIC_URL
        database = database_url or env.get("CREDGATE_DATABASE_URL") or None
        if database is not None and not database.startswith(("postgresql://", "postgres://")):
            # Not echoed: a URL may hold a password.
            raise StoreError("CREDGATE_DATABASE_URL / --database-url must be a postgresql:// URL")
        return cls(
            home=home_path.expanduser(),
            tools_dirs=dirs,
            public_url=url.rstrip("/"),
            database_url=database,
            state_dir=default_state_dir(env),
            sandbox=sandbox_switch(env) if sandbox is None else sandbox,
        )


def database_url_has_password(value: str) -> bool:
    """Whether a PostgreSQL connection string carries a password: in a URL's user info (`user:PASSWORD@`,
    which ends at the first `/`, as libpq reads it) or its `password` parameter, or as the `password` keyword of
    a libpq `keyword=value` string. Only said, never shown: the value is a secret."""
    _, is_url, rest = value.partition("://")
    if not is_url:
        return _KEYWORD_PASSWORD.search(value) is not None
    user_info = rest.partition("/")[0].rpartition("@")[0]
    if user_info.partition(":")[2]:
        return True
    query = rest.partition("?")[2].partition("#")[0]
    return any(key == "password" and item for key, item in parse_qsl(query, keep_blank_values=True))
