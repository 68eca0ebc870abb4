"""A newcomer's setup, as the README's Claude Desktop snippet used to make it: `credgate serve` started by a client
in a folder without `tools.d`, over a store whose groups are set up correctly.

`serve` must say on stderr that the group's tools are not declared, naming the folders it read; `doctor` must
tell a wrong or missing tools folder apart from removed declarations and never advise deleting the setup for
it; a declaration really removed is still reported with its fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_credgate import admin
from mcp_credgate.config import Settings
from mcp_credgate.declarations import load_catalog
from mcp_credgate.store import Store
from tests.support.cli import CliRun
from tests.support.gateway import credgate_env
from tests.support.samples import SAMPLE_TOOLS, write_tool

CRED = '{"api_key": "wk_abcdefgh12345"}'


@pytest.fixture
def team(run_cli: CliRun) -> CliRun:
    """Group `team` allows echo and weather, weather bound: a correct setup."""
    for args in (("init",), ("group", "add", "team"), ("group", "allow", "team", "echo", "weather")):
        assert run_cli(*args).exit_code == 0
    assert run_cli("cred", "add", "wk", "--tool", "weather", "--from-json", "-", input=CRED).exit_code == 0
    assert run_cli("bind", "team", "weather", "wk").exit_code == 0
    return run_cli


def serve_from(
    folder: Path, home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`credgate serve` as a desktop client starts it: in a folder of its own, no --tools-dir, stdin at its end."""
    env = {**credgate_env(), "CREDGATE_HOME": str(home), **(env or {})}
    env.pop("CREDGATE_TOOLS_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "mcp_credgate", "serve", *args],
        input="",
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=60,
    )


def doctor(home: Path, tools_dirs: tuple[Path, ...]) -> list[str]:
    settings = Settings(
        home=home,
        tools_dirs=tools_dirs,
        public_url="http://127.0.0.1:8765",
        database_url=os.environ.get("CREDGATE_DATABASE_URL"),
    )
    return admin.doctor(settings, load_catalog(tools_dirs))


def test_serve_started_where_no_tools_are_declared_says_so_naming_the_folder(
    team: CliRun, home: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "client-cwd"
    elsewhere.mkdir()

    served = serve_from(elsewhere, home, "--group", "team")

    warning = next((line for line in served.stderr.splitlines() if line.startswith("warning: group team")), None)
    assert warning is not None, served.stderr
    assert "echo, weather" in warning
    assert str(home / "tools.d") in warning and "(missing)" in warning
    assert "CREDGATE_TOOLS_DIR" in warning
    assert "Traceback" not in served.stderr


def test_serve_with_the_right_tools_folder_warns_of_nothing(
    team: CliRun, home: Path, tools_dir: Path, tmp_path: Path
) -> None:
    served = serve_from(tools_dir.parent, home, "--group", "team")  # ./tools.d is the declaring folder
    assert "warning" not in served.stderr


@pytest.mark.parametrize("folder", ["missing", "empty", "other"])
def test_doctor_names_a_wrong_tools_folder_and_advises_no_deletion(
    team: CliRun, home: Path, tmp_path: Path, folder: str
) -> None:
    wrong = tmp_path / "wrong-tools.d"
    if folder != "missing":
        wrong.mkdir()
    if folder == "other":
        write_tool(wrong, "clock.toml", SAMPLE_TOOLS["echo.toml"].replace('name = "echo"', 'name = "clock"'))

    problems = doctor(home, (wrong,))

    assert len(problems) == 1, problems
    assert str(wrong) in problems[0] and "--tools-dir" in problems[0]
    assert ("(missing)" in problems[0]) == (folder == "missing")
    for deleting in ("deny", "unbind", "rm"):
        assert f"credgate group {deleting}" not in problems[0] and f"`credgate {deleting}" not in problems[0]


def test_doctor_still_reports_a_declaration_that_was_removed(team: CliRun, home: Path, tools_dir: Path) -> None:
    (tools_dir / "echo.toml").unlink()

    problems = doctor(home, (tools_dir,))

    assert problems == ["group team: allows 'echo', which is not declared (fix: `credgate group deny team echo`)"]


def test_serve_warnings_name_each_group_with_undeclared_tools(team: CliRun, home: Path, tools_dir: Path) -> None:
    settings = Settings(
        home=home,
        tools_dirs=(tools_dir,),
        public_url="http://127.0.0.1:8765",
        database_url=os.environ.get("CREDGATE_DATABASE_URL"),
    )
    (tools_dir / "echo.toml").unlink()
    with Store.open(settings) as store:
        warnings = admin.serve_warnings(settings, load_catalog((tools_dir,)), store, ["team"])
    assert len(warnings) == 1
    assert warnings[0].startswith(f"group team allows echo, which no declaration names in {tools_dir}:")


# -- upstreams without a sandbox (issue 20) ----------------------------------------------------------

LOOSE = 'name = "loose"\n[handler]\nkind = "mcp"\ncommand = "loose-server"\nsandbox = false\n'
TIGHT = 'name = "tight"\n[handler]\nkind = "mcp"\ncommand = "tight-server"\n'


@pytest.mark.parametrize("switch", ["declaration", "--no-sandbox", "CREDGATE_SANDBOX=off"])
def test_serve_warns_at_start_once_per_upstream_that_runs_without_a_sandbox(
    team: CliRun, home: Path, tools_dir: Path, switch: str
) -> None:
    write_tool(tools_dir, "loose.toml", LOOSE)
    write_tool(tools_dir, "tight.toml", TIGHT)
    flags = ["--no-sandbox"] if switch == "--no-sandbox" else []
    env = {"CREDGATE_SANDBOX": "off"} if switch.startswith("CREDGATE") else {}

    served = serve_from(tools_dir.parent, home, "--group", "team", *flags, env=env)

    warned = [line for line in served.stderr.splitlines() if "without a sandbox" in line]
    expected = ["loose"] if switch == "declaration" else ["loose", "tight"]
    assert [line.split()[2] for line in warned] == expected, served.stderr
    for line in warned:
        assert line.startswith("warning: upstream ") and "master key" in line
    assert "(sandbox = false)" in warned[0]  # its own declaration's, whatever the switch
    if switch != "declaration":
        assert "(CREDGATE_SANDBOX=off or --no-sandbox)" in warned[1]


def test_doctor_warns_of_upstreams_without_a_sandbox_and_a_missing_bubblewrap_is_a_problem(
    team: CliRun, tools_dir: Path, tmp_path: Path
) -> None:
    write_tool(tools_dir, "loose.toml", LOOSE)
    write_tool(tools_dir, "tight.toml", TIGHT)

    fine = team("doctor", "--json")
    without_bwrap = team("doctor", "--json", env={"PATH": str(tmp_path)})
    text = team("doctor")

    assert fine.exit_code == 0, fine.output
    report = json.loads(fine.stdout)
    assert report["problems"] == []
    assert len(report["warnings"]) == 1 and report["warnings"][0].startswith("upstream loose ")
    assert "without a sandbox (sandbox = false)" in report["warnings"][0]
    assert f"warning: {report['warnings'][0]}" in text.stdout and "ok: no problem found" in text.stdout
    assert without_bwrap.exit_code == 1
    missing = json.loads(without_bwrap.stdout)["problems"]
    assert len(missing) == 1 and "bubblewrap" in missing[0] and "tight" in missing[0], missing


def holding(name: str, injected: str = "") -> str:
    """A stdio upstream declaration whose credential's token goes in its environment, then `injected`."""
    return (
        f'name = "{name}"\n[credential]\ntype = "{name}token"\nfields = [{{ name = "token", kind = "token" }}]\n'
        f'[handler]\nkind = "mcp"\ncommand = "{name}-server"\nenv = {{ TOKEN = "{{cred.token}}" }}\n{injected}'
    )


HOLDS_REAL = holding("real")
HOLDS_PLACEHOLDERS = holding(
    "stand", 'inject = "egress"\n[handler.egress]\nhosts = ["api.example.com", "http://billing.internal:8080"]\n'
)


def test_tools_and_doctor_say_which_upstreams_hold_real_secrets_and_which_placeholders(
    team: CliRun, tools_dir: Path
) -> None:
    write_tool(tools_dir, "real.toml", HOLDS_REAL)
    write_tool(tools_dir, "stand.toml", HOLDS_PLACEHOLDERS)
    write_tool(tools_dir, "tight.toml", TIGHT)  # no credential: holds nothing

    listed = {u["name"]: u for u in json.loads(team("tools", "--json").stdout)["upstreams"]}
    tools_text = team("tools").stdout
    report = json.loads(team("doctor", "--json").stdout)
    doctor_text = team("doctor").stdout
    off = json.loads(team("doctor", "--json", env={"CREDGATE_SANDBOX": "off"}).stdout)

    assert (listed["real"]["inject"], listed["stand"]["inject"]) == ("env", "egress")
    assert listed["stand"]["egress_hosts"] == ["api.example.com", "http://billing.internal:8080"]
    assert listed["tight"]["holds"] is None and listed["real"]["holds"].startswith("real secrets")
    assert listed["stand"]["holds"].startswith("placeholders") and "api.example.com" in listed["stand"]["holds"]
    assert "    holds placeholders: the real values go on the wire toward api.example.com" in tools_text
    assert set(report["upstreams_hold"]) == {"real", "stand"}
    assert 'upstream real holds real secrets (inject = "env")' in doctor_text
    assert "upstream stand holds placeholders" in doctor_text
    assert any(
        p.startswith('upstream stand will not start: inject = "egress" needs the sandbox') for p in off["problems"]
    )
