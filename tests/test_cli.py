"""The `credgate` admin commands, through click's CliRunner and as real processes (contract §3)."""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from psycopg.conninfo import conninfo_to_dict

from mcp_credgate.config import Settings
from mcp_credgate.crypto import MasterKey
from mcp_credgate.store import AuditRow, Store, store_exists, store_location
from tests.support.cli import CliRun, ProcRun, assert_ok, assert_refused, assert_usage_error, out
from tests.support.gateway import closed_port, credgate_env
from tests.support.raw_db import data_folder_files, raw_db, store_contents
from tests.support.samples import ACCOUNT, WEATHER_KEY, database_url, write_tool

MISMATCH = "master key does not match this store"
MISSING = "no master key for this store"
LONG_PASSWORD = ACCOUNT["password"]  # 28 characters: shows as ••••aple
SHORT_SECRET = "tiny-secret"  # 11 characters: shows as •••• only


def as_json(result: Result) -> Any:
    assert_ok(result)
    return json.loads(result.stdout)


def settings_of(home: Path, tools_dir: Path) -> Settings:
    return Settings(
        home=home,
        tools_dirs=(tools_dir,),
        public_url="http://127.0.0.1:8765",
        database_url=os.environ.get("CREDGATE_DATABASE_URL"),
    )


@pytest.fixture
def cli(run_cli: CliRun) -> CliRun:
    """run_cli on an initialised home."""
    assert_ok(run_cli("init"))
    return run_cli


@pytest.fixture
def team(cli: CliRun) -> CliRun:
    """Credentials `wk` (weatherkey) and `acct` (account); group `team` allows echo, weather, login."""
    assert_ok(cli("cred", "add", "wk", "--type", "weatherkey", "--set", f"api_key={WEATHER_KEY}"))
    assert_ok(cli("cred", "add", "acct", "--tool", "login", "--from-json", "-", input=json.dumps(ACCOUNT)))
    assert_ok(cli("group", "add", "team", "--description", "the team"))
    assert_ok(cli("group", "allow", "team", "echo", "weather", "login"))
    assert_ok(cli("bind", "team", "weather", "wk"))
    return cli


def statuses(cli: CliRun, group: str = "team") -> dict[str, dict[str, object]]:
    data = as_json(cli("group", "show", group, "--json"))
    assert isinstance(data, dict)
    return {t["tool"]: t for t in data["tools"]}


# -- init and tools --------------------------------------------------------------------------


def test_init_creates_the_store_and_a_second_init_changes_nothing(run_cli: CliRun, home: Path, tools_dir: Path) -> None:
    settings = settings_of(home, tools_dir)
    first = run_cli("init")
    assert_ok(first)
    assert "initialised" in first.stdout
    assert store_exists(settings)
    assert sorted(p.name for p in home.iterdir()) == data_folder_files(settings)
    before, rows_before = {p.name: p.read_bytes() for p in home.iterdir()}, store_contents(settings)

    second = run_cli("init")

    assert_ok(second)
    assert "already initialised" in second.stdout
    assert "nothing changed" in second.stdout
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before
    assert store_contents(settings) == rows_before
    data = as_json(run_cli("init", "--json"))
    assert data == {
        "home": str(home),
        "database": store_location(settings),
        "master_key": str(home / "master.key"),
        "created": False,
    }


def test_commands_before_init_are_refused(run_cli: CliRun, home: Path) -> None:
    assert_refused(run_cli("cred", "list"), "credgate init")
    assert not home.exists()


def test_tools_lists_tools_types_and_fields(run_cli: CliRun) -> None:
    result = run_cli("tools")

    assert_ok(result)
    assert "echo  [python]  no credential needed" in result.stdout
    assert "weather  [http]  credential type weatherkey" in result.stdout
    assert "api_key  (api_key, secret, required)  format: ^wk_[A-Za-z0-9]{8,}$" in result.stdout
    assert "username  (username, not secret, required)" in result.stdout
    assert "note  (text, not secret, optional)" in result.stdout


def test_tools_json(run_cli: CliRun) -> None:
    data = as_json(run_cli("tools", "--json"))

    assert isinstance(data, dict)
    assert {t["name"] for t in data["tools"]} == {"echo", "weather", "forecast", "login"}
    account = data["credential_types"]["account"]
    assert account["tools"] == ["login"]
    assert account["fields"][1] == {
        "name": "password",
        "kind": "password",
        "secret": True,
        "required": True,
        "format": "password",
        "description": "",
        "kept_by_credgate": False,
    }
    assert data["credential_types"]["weatherkey"]["tools"] == ["forecast", "weather"]
    assert data["problems"] == []


def test_tools_check_passes_on_good_declarations(run_cli: CliRun) -> None:
    result = run_cli("tools", "--check")

    assert_ok(result)
    assert "ok: 4 tools, 2 credential types" in result.stderr


def test_tools_check_fails_naming_file_and_field(run_cli: CliRun, tools_dir: Path) -> None:
    unknown_key = write_tool(
        tools_dir,
        "zz_unknown.toml",
        """
        name = "zz_unknown"
        colour = "red"
        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
    """,
    )
    plain_http = write_tool(
        tools_dir,
        "zz_plain.toml",
        """
        name = "zz_plain"
        [credential]
        type = "weatherkey"
        fields = [{ name = "api_key", kind = "api_key", required = true, pattern = '^wk_[A-Za-z0-9]{8,}$' }]
        [handler]
        kind = "http"
        url = "http://weather.example.com/v1"
        headers = { "X-Api-Key" = "{cred.api_key}" }
    """,
    )

    result = run_cli("tools", "--check")

    assert result.exit_code == 1
    assert "Traceback" not in out(result)
    assert f"{unknown_key}: colour: unknown key" in result.stderr
    assert f"{plain_http}: handler.url" in result.stderr
    assert "echo" in result.stdout  # the good tools are still listed
    assert_ok(run_cli("tools"))  # without --check, problems are reported but do not fail


# -- credentials -----------------------------------------------------------------------------


def test_cred_add_from_json_on_stdin(cli: CliRun) -> None:
    result = cli("cred", "add", "acct", "--type", "account", "--from-json", "-", input=json.dumps(ACCOUNT))

    assert_ok(result)
    assert "added credential acct (type account)" in result.stdout
    assert LONG_PASSWORD not in out(result)
    shown = as_json(cli("cred", "show", "acct", "--json"))
    assert isinstance(shown, dict)
    assert shown["values"] == {"username": "alice", "password": "••••aple"}


def test_cred_add_from_a_json_file(cli: CliRun, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"api_key": WEATHER_KEY}))

    assert_ok(cli("cred", "add", "wk", "--tool", "weather", "--from-json", str(values)))

    shown = as_json(cli("cred", "show", "wk", "--json"))
    assert isinstance(shown, dict)
    assert shown["type"] == "weatherkey"
    assert shown["values"] == {"api_key": "••••cdef"}


def test_cred_add_with_set(cli: CliRun) -> None:
    result = cli("cred", "add", "acct", "--tool", "login", "--set", "username=bob", "--set", "password=pw")

    assert_ok(result)
    shown = cli("cred", "show", "acct")
    assert_ok(shown)
    assert "username = bob" in shown.stdout
    assert "password = ••••" in shown.stdout
    assert "pw" not in shown.stdout.replace("password", "")


def test_cred_add_without_values_and_without_a_terminal_is_refused(cli: CliRun) -> None:
    result = cli("cred", "add", "wk", "--type", "weatherkey")

    assert_refused(result, "no values given", "--from-json -")
    assert as_json(cli("cred", "list", "--json")) == []


def test_cred_add_with_an_empty_json_object_names_the_missing_field(cli: CliRun) -> None:
    result = cli("cred", "add", "wk", "--type", "weatherkey", "--from-json", "-", input="{}")

    assert_refused(result, "required field 'api_key'")
    assert as_json(cli("cred", "list", "--json")) == []


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"api_key": "wk_bad!value-Zq9"}, "api_key"),  # does not match the pattern
        ({"api_key": WEATHER_KEY + "\u0000"}, "api_key"),
        ({"api_key": WEATHER_KEY + "\r\n"}, "api_key"),
        ({"api_key": "wk_" + "Zq9" * 30000}, "api_key"),  # over 64 KiB
        ({"api_key": WEATHER_KEY, "colour": "wk_Zq9secretish"}, "colour"),  # a field the type lacks
        ({"api_key": ""}, "api_key"),  # required field empty
        ({"api_key": 1234567890123}, "api_key"),  # not a string
    ],
)
def test_bad_values_are_refused_without_echoing_them(cli: CliRun, values: dict[str, object], field: str) -> None:
    result = cli("cred", "add", "wk", "--type", "weatherkey", "--from-json", "-", input=json.dumps(values))

    line = assert_refused(result, f"'{field}'")
    for value in values.values():
        text = str(value).strip("\x00\r\n")
        if text:
            assert text[:12] not in out(result)
            assert text[-8:] not in out(result)
    assert "Zq9" not in out(result)
    assert "1234567890123" not in line
    assert as_json(cli("cred", "list", "--json")) == []


def test_bad_value_given_with_set_is_not_echoed(cli: CliRun) -> None:
    result = cli("cred", "add", "wk", "--type", "weatherkey", "--set", "api_key=NOT-A-KEY-Zq9xy")

    assert_refused(result, "'api_key'")
    assert "Zq9xy" not in out(result)


def test_set_without_equals_sign_is_a_usage_error_that_does_not_echo_the_value(cli: CliRun) -> None:
    result = cli("cred", "add", "wk", "--type", "weatherkey", "--set", WEATHER_KEY)

    assert_usage_error(result)
    assert "FIELD=VALUE" in out(result)
    assert WEATHER_KEY[:12] not in out(result)
    assert WEATHER_KEY[-6:] not in out(result)


def test_invalid_json_is_refused(cli: CliRun) -> None:
    assert_refused(
        cli("cred", "add", "wk", "--type", "weatherkey", "--from-json", "-", input="{not json"), "--from-json"
    )
    assert_refused(cli("cred", "add", "wk", "--type", "weatherkey", "--from-json", "-", input='["x"]'), "JSON object")
    assert_refused(cli("cred", "add", "wk", "--type", "weatherkey", "--from-json", "/no/such/file.json"), "cannot read")


def test_cred_add_refusals(team: CliRun) -> None:
    assert_refused(
        team("cred", "add", "wk", "--type", "weatherkey", "--set", f"api_key={WEATHER_KEY}"), "exists already"
    )
    assert_refused(team("cred", "add", "x", "--type", "nosuchtype", "--set", "a=b"), "nosuchtype")
    assert_refused(team("cred", "add", "x", "--tool", "nosuchtool", "--set", "a=b"), "nosuchtool")
    assert_refused(team("cred", "add", "x", "--tool", "echo", "--set", "a=b"), "needs no credential")


def test_cred_list_shows_no_values(team: CliRun) -> None:
    result = team("cred", "list")
    data = as_json(team("cred", "list", "--json"))

    assert_ok(result)
    assert "acct  type account  fields username, password  not bound" in result.stdout
    assert "wk  type weatherkey  fields api_key  bound: team/weather" in result.stdout
    assert isinstance(data, list)
    assert [c["name"] for c in data] == ["acct", "wk"]
    assert data[1]["bindings"] == [{"group": "team", "tool": "weather"}]
    for text in (result.stdout, json.dumps(data)):
        assert WEATHER_KEY not in text
        assert LONG_PASSWORD not in text


def test_cred_show_masks_secret_values(team: CliRun) -> None:
    assert_ok(team("cred", "update", "acct", "--set", "note=a visible note"))
    assert_ok(
        team(
            "cred",
            "add",
            "short",
            "--tool",
            "login",
            "--from-json",
            "-",
            input=json.dumps({"username": "carol", "password": SHORT_SECRET}),
        )
    )

    shown = team("cred", "show", "acct")
    short = team("cred", "show", "short")
    shown_json = as_json(team("cred", "show", "acct", "--json"))
    short_json = as_json(team("cred", "show", "short", "--json"))
    wk_json = as_json(team("cred", "show", "wk", "--json"))

    assert_ok(shown)
    assert "username = alice" in shown.stdout
    assert "password = ••••aple" in shown.stdout
    assert "note = a visible note" in shown.stdout
    assert "password = ••••\n" in short.stdout
    assert isinstance(shown_json, dict) and isinstance(short_json, dict) and isinstance(wk_json, dict)
    assert shown_json["values"] == {"username": "alice", "password": "••••aple", "note": "a visible note"}
    assert short_json["values"]["password"] == "••••"
    assert wk_json["values"] == {"api_key": "••••cdef"}
    assert wk_json["bindings"] == [{"group": "team", "tool": "weather"}]
    everything = shown.stdout + short.stdout + json.dumps([shown_json, short_json, wk_json])
    for secret in (LONG_PASSWORD, SHORT_SECRET, WEATHER_KEY, LONG_PASSWORD[:-4], WEATHER_KEY[:-4]):
        assert secret not in everything


def test_cred_update_changes_only_the_given_fields(team: CliRun, home: Path, tools_dir: Path) -> None:
    result = team("cred", "update", "acct", "--from-json", "-", input='{"password": "a brand new password"}')

    assert_ok(result)
    assert "a brand new password" not in out(result)
    with Store.open(settings_of(home, tools_dir), env={}) as store:
        assert dict(store.read_credential("acct")) == {"username": "alice", "password": "a brand new password"}


def test_cred_update_with_a_bad_value_keeps_the_old_one(team: CliRun, home: Path, tools_dir: Path) -> None:
    result = team("cred", "update", "wk", "--set", "api_key=wk_bad-Zq9-value")

    assert_refused(result, "'api_key'")
    assert "Zq9" not in out(result)
    with Store.open(settings_of(home, tools_dir), env={}) as store:
        assert store.read_credential("wk")["api_key"] == WEATHER_KEY
    assert_refused(team("cred", "update", "ghost", "--set", "api_key=x"), "ghost")


def test_cred_rm_of_a_bound_credential_needs_force(team: CliRun) -> None:
    refused = team("cred", "rm", "wk")
    assert_refused(refused, "bound", "team/weather", "--force")
    assert statuses(team)["weather"]["status"] == "ready"

    forced = team("cred", "rm", "wk", "--force")

    assert_ok(forced)
    assert "team/weather" in forced.stdout
    assert statuses(team)["weather"]["status"] == "needs_credential"
    assert_ok(team("cred", "rm", "acct"))  # not bound: no --force needed
    assert as_json(team("cred", "list", "--json")) == []
    assert_refused(team("cred", "rm", "acct"), "acct")


def test_a_moved_ciphertext_is_reported_in_one_line(team: CliRun, home: Path, tools_dir: Path) -> None:
    with raw_db(settings_of(home, tools_dir)) as db:
        db.execute(
            "UPDATE credential_values SET ciphertext = (SELECT ciphertext FROM credential_values"
            " WHERE field = 'password') WHERE field = 'api_key'"
        )

    line = assert_refused(team("cred", "show", "wk"), "'wk'", "cred update wk")

    assert LONG_PASSWORD not in line
    assert_ok(team("cred", "show", "acct"))
    assert_ok(team("cred", "update", "wk", "--set", f"api_key={WEATHER_KEY}"))
    assert_ok(team("cred", "show", "wk"))


# -- groups and bindings ---------------------------------------------------------------------


def test_group_show_gives_each_tool_a_status(team: CliRun) -> None:
    by_tool = statuses(team)

    assert by_tool["echo"] == {
        "tool": "echo",
        "status": "no_credential_needed",
        "credential": None,
        "credential_type": None,
        "missing_fields": [],
        "scope": "shared",
        "approval": None,
    }
    assert by_tool["weather"]["status"] == "ready"
    assert by_tool["weather"]["credential"] == "wk"
    assert by_tool["login"]["status"] == "needs_credential"
    assert by_tool["login"]["credential_type"] == "account"
    text = team("group", "show", "team")
    assert_ok(text)
    assert "echo  no credential needed" in text.stdout
    assert "weather  ready  credential wk" in text.stdout
    assert "login  needs credential" in text.stdout


def test_group_show_says_incomplete_when_the_type_gains_a_required_field(team: CliRun, tools_dir: Path) -> None:
    for tool in ("weather", "forecast"):
        path = tools_dir / f"{tool}.toml"
        path.write_text(
            path.read_text().replace(
                "pattern = '^wk_[A-Za-z0-9]{8,}$' },",
                'pattern = \'^wk_[A-Za-z0-9]{8,}$\' },\n  { name = "region", kind = "text" },',
            )
        )
    assert_ok(team("tools", "--check"))

    weather = statuses(team)["weather"]

    assert weather["status"] == "incomplete"
    assert weather["credential"] == "wk"
    assert weather["missing_fields"] == ["region"]
    text = team("group", "show", "team")
    assert "weather  incomplete  credential wk  missing: region" in text.stdout
    assert "region: missing (required)" in team("cred", "show", "wk").stdout

    assert_ok(team("cred", "update", "wk", "--set", "region=eu"))
    assert statuses(team)["weather"]["status"] == "ready"


def test_group_list_allow_deny_and_rm(team: CliRun) -> None:
    assert_ok(team("group", "add", "ops"))
    listed = as_json(team("group", "list", "--json"))
    assert listed == [
        {"name": "ops", "description": "", "tools": []},
        {"name": "team", "description": "the team", "tools": ["echo", "login", "weather"]},
    ]
    assert "team  3 tools  the team" in team("group", "list").stdout

    denied = team("group", "deny", "team", "weather", "echo")
    assert_ok(denied)
    assert "unbound: weather" in denied.stdout
    assert set(statuses(team)) == {"login"}
    assert as_json(team("cred", "show", "wk", "--json"))["bindings"] == []

    assert_ok(team("group", "rm", "ops"))
    assert [g["name"] for g in as_json(team("group", "list", "--json"))] == ["team"]


def test_group_allow_with_approval_is_shown_and_allowing_again_without_it_lifts_it(team: CliRun) -> None:
    allowed = team("group", "allow", "team", "weather", "--approval")
    assert_ok(allowed)
    assert "group team now allows weather (shared, each call approved first)" in allowed.stdout
    assert statuses(team)["weather"]["approval"] == "group"
    assert "weather  ready  credential wk  approval: each call (group)" in team("group", "show", "team").stdout

    assert_ok(team("group", "allow", "team", "weather"))
    assert statuses(team)["weather"]["approval"] is None
    assert statuses(team)["weather"]["credential"] == "wk"  # the binding stays


def test_group_refusals(team: CliRun) -> None:
    assert_refused(team("group", "add", "team"), "exists already")
    assert_refused(team("group", "allow", "team", "nosuchtool"), "nosuchtool")
    assert_refused(team("group", "allow", "ghost", "echo"), "ghost")
    assert_refused(team("group", "show", "ghost"), "ghost")
    assert_refused(team("group", "rm", "ghost"), "ghost")
    assert_usage_error(team("group", "add", "bad name!"))


def test_bind_refuses_another_type_and_a_tool_not_allowed(team: CliRun) -> None:
    assert_refused(team("bind", "team", "login", "wk"), "'weatherkey'", "'account'")
    assert_refused(team("bind", "team", "forecast", "wk"), "does not allow", "group allow team forecast")
    assert_refused(team("bind", "team", "echo", "wk"), "needs no credential")
    assert_refused(team("bind", "team", "nosuchtool", "wk"), "nosuchtool")
    assert_refused(team("bind", "team", "login", "ghost"), "ghost")
    assert_refused(team("bind", "ghost", "login", "acct"), "ghost")
    assert statuses(team)["login"]["status"] == "needs_credential"

    assert_ok(team("bind", "team", "login", "acct"))
    assert statuses(team)["login"]["status"] == "ready"


def test_unbind(team: CliRun) -> None:
    assert_ok(team("unbind", "team", "weather"))

    assert statuses(team)["weather"]["status"] == "needs_credential"
    assert_refused(team("unbind", "team", "weather"), "weather")
    assert_ok(team("cred", "rm", "wk"))  # no longer bound


# -- keys ------------------------------------------------------------------------------------


def test_key_rotate_keeps_credentials_and_retires_the_old_key(team: CliRun, home: Path) -> None:
    old_key = (home / "master.key").read_text().strip()
    if database_url():  # a shared store rotates only to a key made (and handed to every replica) first
        assert_ok(team("key", "new"))

    rotated = team("key", "rotate")

    assert_ok(rotated)
    assert "rotated the master key" in rotated.stdout
    assert (home / "master.key").read_text().strip() != old_key
    assert old_key not in out(rotated)
    assert as_json(team("cred", "show", "wk", "--json"))["values"] == {"api_key": "••••cdef"}
    with_old = team("cred", "list", env={"CREDGATE_MASTER_KEY": old_key})
    assert_refused(with_old, MISMATCH)
    assert old_key not in out(with_old)


@pytest.mark.parametrize(
    "args",
    [
        ("cred", "list"),
        ("cred", "show", "wk"),
        ("cred", "add", "new", "--type", "weatherkey", "--set", f"api_key={WEATHER_KEY}"),
        ("cred", "rm", "acct"),
        ("group", "add", "other"),
        ("group", "show", "team"),
        ("bind", "team", "login", "acct"),
        ("key", "rotate"),
        ("audit",),
        ("init",),
    ],
)
def test_wrong_key_is_refused_before_anything_changes(
    team: CliRun, home: Path, tools_dir: Path, args: tuple[str, ...]
) -> None:
    settings = settings_of(home, tools_dir)
    before = store_contents(settings)
    wrong = MasterKey.generate().to_text()

    result = team(*args, env={"CREDGATE_MASTER_KEY": wrong})

    assert_refused(result, MISMATCH)
    assert store_contents(settings) == before
    assert sorted(p.name for p in home.iterdir()) == data_folder_files(settings)


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage"])
def test_damaged_key_file_is_refused_with_one_line(team: CliRun, home: Path, tools_dir: Path, damage: str) -> None:
    settings = settings_of(home, tools_dir)
    key_file = home / "master.key"
    text = key_file.read_text().strip()
    if damage == "missing":
        key_file.unlink()
    else:
        key_file.write_text(text[:20] + "\n" if damage == "truncated" else "garbage\n")
    before = store_contents(settings)

    said = MISSING if damage == "missing" else MISMATCH
    line = assert_refused(team("cred", "list"), said)

    assert text[:20] not in line
    assert store_contents(settings) == before
    assert damage != "missing" or not key_file.exists()  # never a new key over an existing store
    assert_refused(team("init"), said)


# -- usage errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("nosuchcommand",),
        ("cred",),
        ("cred", "add"),
        ("cred", "add", "x"),  # neither --type nor --tool
        ("cred", "add", "x", "--type", "weatherkey", "--tool", "weather"),
        ("cred", "add", "bad/name", "--type", "weatherkey"),
        ("group", "allow", "team"),
        ("bind", "team", "weather"),
        ("audit", "--limit", "0"),
        ("audit", "--limit", "many"),
        ("tools", "--no-such-flag"),
    ],
)
def test_usage_errors_exit_2(cli: CliRun, args: tuple[str, ...]) -> None:
    assert_usage_error(cli(*args))


def test_common_options_work_after_the_subcommand(cli: CliRun, home: Path) -> None:
    result = cli("group", "add", "late-opts", "--home", str(home), "--json")

    assert json.loads(result.stdout) == {"added": "late-opts"}


# -- audit -----------------------------------------------------------------------------------


def test_audit_reads_rows_newest_first_with_filters(cli: CliRun, home: Path, tools_dir: Path) -> None:
    assert_ok(cli("audit"))
    assert "no calls recorded" in cli("audit").stdout
    rows = [
        AuditRow("2024-05-01T10:00:00.000+00:00", "team", "bot", "weather", "wk", "ok", 12.5),
        AuditRow("2024-05-01T10:00:01.000+00:00", "team", None, "echo", None, "ok", 0.4),
        AuditRow("2024-05-01T10:00:02.000+00:00", "ops", "bot2", "weather", None, "missing_credential", 1.0, "ref-abc"),
    ]
    with Store.open(settings_of(home, tools_dir), env={}) as store:
        store.write_audit(rows)

    text = cli("audit")
    everything = as_json(cli("audit", "--json"))
    team_only = as_json(cli("audit", "--group", "team", "--json"))
    weather = as_json(cli("audit", "--tool", "weather", "--limit", "1", "--json"))

    assert_ok(text)
    lines = text.stdout.strip().splitlines()
    assert lines[0] == "2024-05-01T10:00:02.000+00:00  ops  bot2  weather  -  missing_credential  1.0 ms  ref ref-abc"
    assert lines[2] == "2024-05-01T10:00:00.000+00:00  team  bot  weather  wk  ok  12.5 ms"
    assert isinstance(everything, list) and isinstance(team_only, list) and isinstance(weather, list)
    assert [r["tool"] for r in everything] == ["weather", "echo", "weather"]
    assert everything[0] == {
        "ts": "2024-05-01T10:00:02.000+00:00",
        "group": "ops",
        "agent": "bot2",
        "user": None,
        "tool": "weather",
        "credential": None,
        "outcome": "missing_credential",
        "duration_ms": 1.0,
        "ref": "ref-abc",
    }
    assert [r["tool"] for r in team_only] == ["echo", "weather"]
    assert [(r["group"], r["tool"]) for r in weather] == [("ops", "weather")]


# -- lists: streamed, a page at a time, with --limit ------------------------------------------


@pytest.fixture
def crowd(cli: CliRun, home: Path, tools_dir: Path) -> Settings:
    """1,100 credentials, 1,100 groups (each with an agent) and 1,100 audit rows: more than two of the store's
    pages (500) of each."""
    settings = settings_of(home, tools_dir)
    with Store.open(settings, env={}) as store:
        store.add_credentials(
            "weatherkey", [(f"k{i:04d}", {"api_key": f"wk_{i:010d}"}) for i in range(1100)], frozenset({"api_key"})
        )
        for i in range(1100):
            store.add_group(f"g{i:04d}")
            store.add_agent(f"g{i:04d}", f"bot{i:04d}", f"hash{i}")
        store.write_audit(
            [
                AuditRow(f"2024-05-01T10:00:00.{i:03d}+00:00", "g0001", None, "echo", None, "ok", 1.0)
                for i in range(1100)
            ]
        )
    return settings


LISTS = {  # command → (the store's page method it reads through, the first key printed)
    ("cred", "list"): ("credentials_page", "k0000"),
    ("group", "list"): ("groups_page", "g0000"),
    ("agent", "list"): ("agents_page", "bot0000"),
    ("audit", "--limit", "1100"): ("audit_page", "1100"),
}


@pytest.mark.parametrize("command", list(LISTS), ids=" ".join)
def test_a_list_is_printed_a_page_at_a_time(
    crowd: Settings, cli: CliRun, command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    method, _ = LISTS[command]
    real = getattr(Store, method)
    printed_before_each_read: list[int] = []

    def reading(self: Store, **how: Any) -> Any:
        sys.stdout.flush()
        printed_before_each_read.append(len(sys.stdout.buffer.getvalue()))  # type: ignore[union-attr]
        return real(self, **how)

    monkeypatch.setattr(Store, method, reading)
    for as_json_too in ((), ("--json",)):
        printed_before_each_read.clear()
        result = cli(*command, *as_json_too)
        assert_ok(result)
        assert len(printed_before_each_read) >= 3
        assert 0 < printed_before_each_read[1] < printed_before_each_read[2] < len(result.stdout_bytes)


@pytest.mark.parametrize("command", list(LISTS), ids=" ".join)
def test_a_streamed_json_list_is_the_json_array_it_always_was(
    crowd: Settings, cli: CliRun, command: tuple[str, ...]
) -> None:
    result = cli(*command, "--json")
    items = as_json(result)
    assert isinstance(items, list) and len(items) == 1100
    assert result.stdout == json.dumps(items, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize(
    "command, first",
    [(("cred", "list"), "k0000 "), (("group", "list"), "g0000 "), (("agent", "list"), "bot0000 "), (("audit",), "")],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_limit_keeps_the_first_n_of_a_list(crowd: Settings, cli: CliRun, command: tuple[str, ...], first: str) -> None:
    for n in (1, 3, 777):
        assert len(as_json(cli(*command, "--limit", str(n), "--json"))) == n
        text = cli(*command, "--limit", str(n)).stdout.splitlines()
        assert len(text) == n and text[0].startswith(first)
    assert_usage_error(cli(*command, "--limit", "0"))


def test_audit_shows_its_50_latest_calls_unless_told_otherwise(crowd: Settings, cli: CliRun) -> None:
    assert len(as_json(cli("audit", "--json"))) == 50
    assert len(as_json(cli("audit", "--limit", "5000", "--json"))) == 1100
    assert len(as_json(cli("audit", "--group", "g0001", "--tool", "echo", "--limit", "1001", "--json"))) == 1001


def test_an_empty_list_says_how_to_fill_it_and_its_json_is_an_empty_array(cli: CliRun) -> None:
    for command, hint in (
        (("cred", "list"), "credgate cred add"),
        (("group", "list"), "credgate group add"),
        (("agent", "list"), "credgate agent add"),
        (("audit",), "no calls recorded"),
    ):
        assert hint in cli(*command).stdout
        result = cli(*command, "--json")
        assert_ok(result)
        assert result.stdout == "[]\n"


# -- a password on the command line ----------------------------------------------------------

PASSWORD = "hunter2-on-the-command-line"


def database_url_at_a_closed_port() -> str:
    return f"postgresql://credgate:{PASSWORD}@127.0.0.1:{closed_port()}/credgate"


def assert_warned_about_the_password(stderr: str, url: str) -> None:
    """The first line on stderr says where the password shows and what to use instead, without either."""
    first = stderr.splitlines()[0]
    assert first.startswith("warning: ")
    for text in ("--database-url", "other local users", "process list", "CREDGATE_DATABASE_URL", "PGPASSFILE"):
        assert text in first, first
    assert PASSWORD not in stderr and url not in stderr and "127.0.0.1" not in first
    assert [line for line in stderr.splitlines() if line == first] == [first]  # said once


@pytest.mark.no_store  # the flag's store is never reached
@pytest.mark.parametrize(
    "command",
    [
        ("serve", "--group", "team"),
        ("serve", "--http", "--port", "0"),
        ("dashboard", "--port", "1"),
        ("init",),
        ("cred", "list"),
        ("doctor",),
    ],
)
def test_a_database_url_with_a_password_on_the_command_line_is_warned_about_first(
    run_cli: CliRun, command: tuple[str, ...]
) -> None:
    url = database_url_at_a_closed_port()
    result = run_cli(*command, "--database-url", url)

    assert_warned_about_the_password(result.stderr, url)
    assert PASSWORD not in result.stdout


@pytest.mark.no_store
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://127.0.0.1:{port}/credgate?user=credgate&password={password}",
        "host=127.0.0.1 port={port} user=credgate password={password} dbname=credgate",
    ],
)
def test_a_password_in_the_query_or_a_keyword_string_is_warned_about_too(run_cli: CliRun, template: str) -> None:
    url = template.format(port=closed_port(), password=PASSWORD)
    result = run_cli("serve", "--group", "team", "--database-url", url)

    assert result.exit_code == 1
    assert_warned_about_the_password(result.stderr, url)


@pytest.mark.no_store
def test_the_flag_given_before_and_after_the_command_is_warned_about_once(run_cli: CliRun) -> None:
    url = database_url_at_a_closed_port()
    result = run_cli("--database-url", url, "serve", "--group", "team", "--database-url", url)

    assert_warned_about_the_password(result.stderr, url)


@pytest.mark.postgresql_only
def test_a_reachable_store_named_on_the_command_line_still_works_after_the_warning(run_cli: CliRun) -> None:
    url = database_url()
    assert url is not None
    password = conninfo_to_dict(url).get("password")
    assert isinstance(password, str) and password

    for result in (run_cli("init", "--database-url", url), run_cli("group", "list", "--database-url", url)):
        assert_ok(result)
        assert result.stderr.splitlines()[0].startswith("warning: the password in --database-url")
        assert password not in out(result) and url not in out(result)


@pytest.mark.no_store
def test_no_warning_for_a_password_in_the_environment_or_a_url_without_one(run_cli: CliRun) -> None:
    from_env = run_cli("serve", "--group", "team", env={"CREDGATE_DATABASE_URL": database_url_at_a_closed_port()})
    without = run_cli(
        "serve", "--group", "team", "--database-url", f"postgresql://credgate@127.0.0.1:{closed_port()}/x"
    )

    for result in (from_env, without):
        assert_refused(result, "is not answering (Connection refused)")
        assert "warning" not in result.stderr


# -- real processes --------------------------------------------------------------------------


def assert_proc_refused(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


def test_real_process_end_to_end(run_credgate: ProcRun, home: Path) -> None:
    init = run_credgate("init")
    assert init.returncode == 0, init.stderr
    assert "initialised" in init.stdout
    assert (home / "master.key").stat().st_mode & 0o777 == 0o600
    assert home.stat().st_mode & 0o777 == 0o700

    tools = run_credgate("tools", "--check")
    assert tools.returncode == 0, tools.stderr
    assert "weather  [http]  credential type weatherkey" in tools.stdout

    added = run_credgate("cred", "add", "acct", "--tool", "login", "--from-json", "-", input=json.dumps(ACCOUNT))
    assert added.returncode == 0, added.stderr

    no_values = run_credgate("cred", "add", "wk", "--type", "weatherkey", input="")
    assert_proc_refused(no_values, "no values given")

    bad = run_credgate(
        "cred", "add", "wk", "--type", "weatherkey", "--from-json", "-", input=json.dumps({"api_key": "Zq9-not-a-key"})
    )
    assert_proc_refused(bad, "'api_key'")
    assert "Zq9" not in bad.stdout + bad.stderr

    shown = run_credgate("cred", "show", "acct", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["values"] == {"username": "alice", "password": "••••aple"}
    assert LONG_PASSWORD not in shown.stdout

    old_key = (home / "master.key").read_text().strip()
    if database_url():  # a shared store rotates only to a key made (and handed to every replica) first
        assert run_credgate("key", "new").returncode == 0
    rotated = run_credgate("key", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    refused = run_credgate("cred", "list", env={"CREDGATE_MASTER_KEY": old_key})
    assert_proc_refused(refused, MISMATCH)

    usage = run_credgate("cred", "add", "x")
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr


def test_real_process_tools_check_names_file_and_field(run_credgate: ProcRun, tools_dir: Path) -> None:
    broken = write_tool(tools_dir, "broken.toml", 'name = "broken"\n[handler\nkind = "python"\n')
    dupe = write_tool(tools_dir, "zz_echo_again.toml", (tools_dir / "echo.toml").read_text())

    proc = run_credgate("tools", "--check")

    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"{broken}: TOML syntax error" in proc.stderr
    assert "line 2" in proc.stderr
    assert f"{dupe}: name: tool 'echo' is already declared in {tools_dir / 'echo.toml'}" in proc.stderr


def test_hidden_prompt_on_a_terminal(home: Path, tools_dir: Path, run_credgate: ProcRun) -> None:
    pty = pytest.importorskip("pty")
    assert run_credgate("init").returncode == 0
    secret = "wk_PromptedSecret123"
    env = credgate_env()
    argv = [
        sys.executable,
        "-m",
        "mcp_credgate",
        "--home",
        str(home),
        "--tools-dir",
        str(tools_dir),
        "cred",
        "add",
        "typed",
        "--type",
        "weatherkey",
    ]

    pid, fd = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        try:
            os.execve(sys.executable, argv, env)
        finally:
            os._exit(127)
    transcript = b""
    answered = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        transcript += chunk
        if not answered and b"api_key" in transcript:
            os.write(fd, secret.encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)

    assert answered, transcript
    assert os.waitstatus_to_exitcode(status) == 0, transcript
    assert b"added credential typed" in transcript
    assert secret.encode() not in transcript  # the terminal did not echo it
    with Store.open(settings_of(home, tools_dir), env={}) as store:
        assert store.read_credential("typed")["api_key"] == secret


def test_two_processes_writing_at_once(run_credgate: ProcRun, home: Path, tools_dir: Path) -> None:
    assert run_credgate("init").returncode == 0
    results: dict[str, tuple[int, str, dict[str, str]]] = {}

    def writer(prefix: str) -> None:
        for i in range(30):
            name = f"{prefix}{i}"
            values = {"username": name, "password": base64.b64encode(os.urandom(18)).decode()}
            proc = run_credgate(
                "cred", "add", name, "--type", "account", "--from-json", "-", input=json.dumps(values), timeout=120
            )
            results[name] = (proc.returncode, proc.stdout + proc.stderr, values)

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(results) == 60
    acknowledged = {}
    for name, (code, output, values) in results.items():
        assert "Traceback" not in output
        assert code in (0, 1), output
        if code == 0:
            acknowledged[name] = values
        else:
            assert "busy" in output, output
    assert acknowledged  # at least some writes went through
    with Store.open(settings_of(home, tools_dir), env={}) as store:
        stored = {info.name for info in store.list_credentials()}
        assert stored == set(acknowledged)  # no half-written or phantom records
        for name, values in acknowledged.items():
            assert dict(store.read_credential(name)) == values
    with raw_db(settings_of(home, tools_dir)) as db:
        assert db.integrity_problems() == []
        assert db.execute("SELECT COUNT(*) FROM credential_values").fetchone()[0] == 2 * len(acknowledged)


# found in a security review: `--set` without FIELD= echoed the start of the value
def test_a_set_without_a_field_name_does_not_echo_the_value(run_cli: CliRun) -> None:
    run_cli("init")
    value = "d2tfc2VjcmV0dmFsdWVfMTIz=="  # a base64 secret given without `api_key=`

    result = run_cli("cred", "add", "w", "--tool", "weather", "--set", value)

    assert result.exit_code == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert value.rstrip("=") not in result.stdout + result.stderr


@pytest.mark.no_store
def test_real_process_serve_warns_about_a_password_in_its_command_line(run_credgate: ProcRun) -> None:
    url = database_url_at_a_closed_port()
    proc = run_credgate("serve", "--group", "team", "--database-url", url)

    assert proc.returncode == 1
    assert_warned_about_the_password(proc.stderr, url)
    assert "is not answering (Connection refused)" in proc.stderr.splitlines()[1]
