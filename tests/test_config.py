"""Where things live (contract §1): flags over environment over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_credgate.config import DEFAULT_PUBLIC_URL, Settings, database_url_has_password
from mcp_credgate.errors import SandboxError, StoreError

pytestmark = pytest.mark.no_store  # never touches a store: runs once, not per backend


def test_defaults_follow_xdg_data_home(tmp_path: Path) -> None:
    s = Settings.resolve(env={"XDG_DATA_HOME": str(tmp_path / "xdg")}, cwd=tmp_path)

    assert s.home == tmp_path / "xdg" / "credgate"
    assert s.database_path == s.home / "credgate.db"
    assert s.key_path == s.home / "master.key"
    assert s.tools_dirs == (s.home / "tools.d",)
    assert s.public_url == DEFAULT_PUBLIC_URL == "http://127.0.0.1:8765"


def test_without_xdg_the_home_is_under_local_share(tmp_path: Path) -> None:
    s = Settings.resolve(env={}, cwd=tmp_path)

    assert s.home == Path.home() / ".local" / "share" / "credgate"


def test_local_tools_folder_is_preferred(tmp_path: Path) -> None:
    (tmp_path / "tools.d").mkdir()

    s = Settings.resolve(env={"CREDGATE_HOME": str(tmp_path / "h")}, cwd=tmp_path)

    assert s.tools_dirs == (tmp_path / "tools.d",)


def test_environment_overrides_defaults(tmp_path: Path) -> None:
    env = {
        "CREDGATE_HOME": str(tmp_path / "h"),
        "CREDGATE_TOOLS_DIR": f"{tmp_path / 'a'}:{tmp_path / 'b'}",
        "CREDGATE_PUBLIC_URL": "https://gate.example.com/",
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
    }

    s = Settings.resolve(env=env, cwd=tmp_path)

    assert s.home == tmp_path / "h"
    assert s.tools_dirs == (tmp_path / "a", tmp_path / "b")
    assert s.public_url == "https://gate.example.com"


def test_flags_override_environment(tmp_path: Path) -> None:
    env = {
        "CREDGATE_HOME": str(tmp_path / "h"),
        "CREDGATE_TOOLS_DIR": str(tmp_path / "a"),
        "CREDGATE_PUBLIC_URL": "https://env.example.com",
    }

    s = Settings.resolve(
        home=tmp_path / "flag", tools_dirs=[tmp_path / "t"], public_url="http://x:1", env=env, cwd=tmp_path
    )

    assert s.home == tmp_path / "flag"
    assert s.tools_dirs == (tmp_path / "t",)
    assert s.public_url == "http://x:1"


def test_the_database_url_comes_from_the_flag_over_the_environment(tmp_path: Path) -> None:
    env = {"CREDGATE_DATABASE_URL": "postgresql://env@127.0.0.1/a"}

    assert Settings.resolve(env={}, cwd=tmp_path).database_url is None  # SQLite in the data folder
    assert Settings.resolve(env=env, cwd=tmp_path).database_url == "postgresql://env@127.0.0.1/a"
    flagged = Settings.resolve(env=env, cwd=tmp_path, database_url="postgres://flag@127.0.0.1/b")
    assert flagged.database_url == "postgres://flag@127.0.0.1/b"


def test_a_database_url_that_is_not_postgresql_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        Settings.resolve(env={"CREDGATE_DATABASE_URL": "mysql://u:hunter2@db/x"}, cwd=tmp_path)

    assert "postgresql://" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        "postgresql://credgate:hunter2@db.internal:5432/credgate",
        "postgres://credgate:hunter2@db1,db2/credgate",
        "postgresql://credgate:hunter%402@db.internal/credgate",
        "postgresql://db.internal/credgate?user=credgate&password=hunter2",
        "postgresql:///credgate?host=/run/postgresql&password=hunter2",
        "host=db.internal user=credgate password=hunter2 dbname=credgate",
        "password = 'hunter 2' host=db.internal",
    ],
)
def test_a_password_in_a_database_url_or_keyword_string_is_noticed(value: str) -> None:
    assert database_url_has_password(value)


@pytest.mark.parametrize(
    "value",
    [
        "postgresql://credgate@db.internal:5432/credgate",
        "postgresql://credgate:@db.internal/credgate",  # an empty password hides nothing
        "postgresql://db.internal/credgate?passfile=/etc/credgate/pgpass",
        "postgresql:///credgate?options=-csearch_path%3Dcredgate",
        "host=db.internal user=credgate passfile=/etc/credgate/pgpass dbname=credgate",
        "host=db.internal dbname=password_reset",
    ],
)
def test_a_database_url_without_a_password_is_not_suspected(value: str) -> None:
    assert not database_url_has_password(value)


def test_the_upstreams_homes_follow_xdg_state_home_and_credgate_state_dir(tmp_path: Path) -> None:
    xdg = Settings.resolve(env={"XDG_STATE_HOME": str(tmp_path / "xs")}, cwd=tmp_path)
    plain = Settings.resolve(env={}, cwd=tmp_path)
    named = Settings.resolve(env={"CREDGATE_STATE_DIR": str(tmp_path / "st"), "XDG_STATE_HOME": "/x"}, cwd=tmp_path)

    assert xdg.state_dir == tmp_path / "xs" / "credgate" / "upstreams"
    assert plain.state_dir == Path.home() / ".local" / "state" / "credgate" / "upstreams"
    assert named.state_dir == tmp_path / "st"


def test_the_sandbox_is_on_unless_credgate_sandbox_is_off(tmp_path: Path) -> None:
    assert Settings.resolve(env={}, cwd=tmp_path).sandbox
    assert Settings.resolve(env={"CREDGATE_SANDBOX": "on"}, cwd=tmp_path).sandbox
    assert not Settings.resolve(env={"CREDGATE_SANDBOX": "off"}, cwd=tmp_path).sandbox
    assert not Settings.resolve(env={"CREDGATE_SANDBOX": "on"}, cwd=tmp_path, sandbox=False).sandbox  # --no-sandbox

    with pytest.raises(SandboxError) as refused:
        Settings.resolve(env={"CREDGATE_SANDBOX": "maybe"}, cwd=tmp_path)
    assert str(refused.value) == "CREDGATE_SANDBOX must be on or off, not 'maybe'"


def test_what_no_upstream_may_see_is_the_data_folder_its_key_and_the_upstreams_homes(tmp_path: Path) -> None:
    s = Settings.resolve(env={"CREDGATE_HOME": str(tmp_path / "h"), "CREDGATE_STATE_DIR": str(tmp_path / "st")})

    assert set(s.protected_paths) == {s.home, s.key_path, s.state_dir}
