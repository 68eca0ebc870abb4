"""The upstreams' sandbox (issue 20): the bubblewrap command line a stdio upstream runs under, its home, its
limits, the refusals, and what `credgate tools`, `serve` and `doctor` say about upstreams that run without one.

The command lines are checked as data first, then run for real: `bwrap` (Debian's bubblewrap) runs a small
Python program that tries to reach what it must not. Folders that must be hidden on purpose are made outside
/tmp (`folder_outside_tmp`): every sandbox has a /tmp of its own, which hides the host's anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mcp_credgate.config import Settings
from mcp_credgate.declarations import SandboxSpec
from mcp_credgate.errors import SandboxError
from mcp_credgate.sandbox import SandboxPolicy
from tests.support.cli import CliRun
from tests.support.samples import write_tool
from tests.support.sandbox import folder_outside_tmp

pytestmark = pytest.mark.no_store  # never touches a store unless a test says so

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

# bwrap's options and how many arguments each takes (those the sandbox uses).
ARITY = {
    "--ro-bind": 2,
    "--bind": 2,
    "--tmpfs": 1,
    "--size": 1,
    "--proc": 1,
    "--dev": 1,
    "--remount-ro": 1,
    "--chdir": 1,
    "--dir": 1,
    "--hostname": 1,
}


def options(argv: list[str]) -> list[tuple[str, ...]]:
    """bwrap's options in order, each with its arguments, up to the `--` before the command."""
    out: list[tuple[str, ...]] = []
    i = 1
    while argv[i] != "--":
        n = ARITY.get(argv[i], 0)
        out.append(tuple(argv[i : i + 1 + n]))
        i += 1 + n
    return out


def command_after_bwrap(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1 :]


def where(opts: list[tuple[str, ...]], *option: str) -> int:
    assert option in opts, f"{option} not in {opts}"
    return opts.index(option)


class Machine:
    """A gateway's places outside /tmp: data folder (with its key), tools folder, working directory (a project
    with a virtual environment), the account's home, and the state folder of the upstreams' homes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.tools = root / "tools.d"
        self.cwd = root / "project"
        self.user_home = root / "account"
        self.state = root / "state"
        for folder in (self.data, self.tools, self.cwd, self.user_home):
            folder.mkdir()
        (self.data / "master.key").write_text("MASTER-KEY-CANARY\n")
        (self.data / "credgate.db").write_text("DATABASE-CANARY\n")
        (self.tools / "fix.toml").write_text("# DECLARATION-CANARY\n")
        (self.cwd / "notes.txt").write_text("WORKDIR-CANARY\n")
        (self.user_home / ".netrc").write_text("ACCOUNT-CANARY\n")
        self.venv = self.cwd / ".venv"
        (self.venv / "bin").mkdir(parents=True)
        (self.venv / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).resolve().parent}\n")
        (self.venv / "bin" / "python").symlink_to(Path(sys.executable).resolve())
        self.script = self.cwd / "server.py"
        self.script.write_text("print('server')\n")

    @property
    def settings(self) -> Settings:
        return Settings(
            home=self.data, tools_dirs=(self.tools,), public_url="http://127.0.0.1:8765", state_dir=self.state
        )

    def policy(self, **changes: object) -> SandboxPolicy:
        return SandboxPolicy.of(replace(self.settings, **changes), cwd=self.cwd, user_home=self.user_home)  # type: ignore[arg-type]


@pytest.fixture
def machine() -> Iterator[Machine]:
    with folder_outside_tmp() as root:
        yield Machine(root)


def wrap(machine: Machine, command: str, args: list[str], options_: SandboxSpec | None = None) -> list[str]:
    policy = machine.policy()
    home = policy.home("fix", "tok-a", "ga")
    return list(policy.wrap("fix", command, args, {"PATH": os.environ["PATH"]}, options_ or SandboxSpec(), home).argv)


# -- the upstream's home -------------------------------------------------------------------------------


def test_a_home_is_stable_per_server_credential_and_group_private_and_under_the_state_folder(
    machine: Machine,
) -> None:
    policy = machine.policy()

    home = policy.home("fix", "tok-a", "ga")

    assert home.parent == machine.state / "fix"
    assert home == policy.home("fix", "tok-a", "ga")  # a restarted upstream finds it again
    assert len({home, policy.home("fix", "tok-b", "ga"), policy.home("fix", "tok-a", "gb")}) == 3
    assert policy.home("other", "tok-a", "ga").parent == machine.state / "other"
    assert "tok-a" not in str(home) and "ga" not in home.name

    wrapped = policy.wrap("fix", sys.executable, [], {}, SandboxSpec(), home)

    assert home.is_dir() and stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(machine.state.stat().st_mode) == 0o700
    assert wrapped.env["HOME"] == str(home)


def test_a_home_fuller_than_its_limit_refuses_to_start_naming_the_folder_and_the_limit(machine: Machine) -> None:
    policy = machine.policy()
    home = policy.home("fix", "tok-a", "ga")
    home.mkdir(parents=True)
    (home / "cache.bin").write_bytes(os.urandom(2 * 1024 * 1024))

    with pytest.raises(SandboxError) as refused:
        policy.wrap("fix", sys.executable, [], {}, SandboxSpec(max_home_mb=1), home)

    assert str(home) in str(refused.value) and "sandbox.max_home_mb" in str(refused.value)
    assert "\n" not in str(refused.value)


# -- the command line ---------------------------------------------------------------------------------


def test_the_command_runs_in_new_namespaces_on_a_read_only_root_with_its_own_proc_dev_and_tmp(
    machine: Machine,
) -> None:
    argv = wrap(machine, sys.executable, ["-c", "pass"])
    opts = options(argv)

    assert Path(argv[0]).name == "bwrap"
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session"):
        assert (flag,) in opts
    assert ("--die-with-parent",) in opts and ("--disable-userns",) in opts
    assert ("--unshare-net",) not in opts  # network = true by default
    assert opts.index(("--ro-bind", "/", "/")) < where(opts, "--proc", "/proc") < where(opts, "--tmpfs", "/tmp")
    assert ("--dev", "/dev") in opts
    assert opts[where(opts, "--tmpfs", "/tmp") - 1][0] == "--size"  # a size-limited /tmp (memory, not disk)
    home = str(machine.policy().home("fix", "tok-a", "ga"))
    assert ("--bind", home, home) in opts and ("--chdir", home) in opts


def test_the_command_is_resolved_before_entering_and_runs_under_its_limits(machine: Machine) -> None:
    spec = SandboxSpec(max_memory_mb=300, max_processes=40, max_home_mb=50)

    argv = wrap(machine, "python3", ["-c", "pass"], spec)

    inner = command_after_bwrap(argv)
    assert Path(inner[0]).name == "prlimit"
    assert f"--data={300 * 1024 * 1024}" in inner and "--nproc=40" in inner
    assert f"--fsize={50 * 1024 * 1024}" in inner and "--core=0" in inner
    command = inner[inner.index("--") + 1 :]
    assert command == [shutil.which("python3"), "-c", "pass"]  # resolved on the declared PATH, absolute


def test_network_false_unshares_the_network(machine: Machine) -> None:
    assert ("--unshare-net",) in options(wrap(machine, sys.executable, [], SandboxSpec(network=False)))


def test_the_data_folder_tools_folder_working_directory_and_account_home_are_masked(machine: Machine) -> None:
    opts = options(wrap(machine, sys.executable, []))

    for folder in (machine.data, machine.tools, machine.cwd, machine.user_home, machine.state):
        masked = where(opts, "--tmpfs", str(folder))
        assert opts[masked - 1][0] == "--size"
        assert ("--remount-ro", str(folder)) in opts[masked:]  # not even a place to write to


def test_a_key_file_kept_outside_the_data_folder_is_masked_too(machine: Machine) -> None:
    key = machine.root / "keys" / "credgate.key"
    key.parent.mkdir()
    key.write_text("OTHER-KEY-CANARY\n")
    policy = machine.policy()
    policy = replace(policy, protected={**policy.protected, key: "the master key"})

    argv = policy.wrap("fix", sys.executable, [], {}, SandboxSpec(), policy.home("fix", "tok-a", "ga")).argv

    assert ("--ro-bind", "/dev/null", str(key)) in options(list(argv))


def test_a_virtual_environment_in_the_working_directory_is_bound_read_only_after_the_masks(machine: Machine) -> None:
    argv = wrap(machine, str(machine.venv / "bin" / "python"), [str(machine.script)])
    opts = options(argv)

    venv_bound = where(opts, "--ro-bind", str(machine.venv), str(machine.venv))
    assert where(opts, "--tmpfs", str(machine.cwd)) < venv_bound
    assert where(opts, "--ro-bind", str(machine.script), str(machine.script)) > where(opts, "--tmpfs", str(machine.cwd))
    assert ("--ro-bind", str(machine.cwd), str(machine.cwd)) not in opts  # the rest of the folder stays hidden
    assert command_after_bwrap(argv)[-2:] == [str(machine.venv / "bin" / "python"), str(machine.script)]


def test_a_scripts_shebang_interpreter_is_resolved_and_bound(machine: Machine) -> None:
    tools = machine.cwd / "node-ish"
    (tools / "bin").mkdir(parents=True)
    (tools / "lib" / "node_modules" / "srv").mkdir(parents=True)
    interpreter = tools / "bin" / "interp"
    interpreter.symlink_to(Path(sys.executable).resolve())
    script = tools / "lib" / "node_modules" / "srv" / "cli.js"
    script.write_text("#!/usr/bin/env interp\n")
    script.chmod(0o755)
    (tools / "bin" / "srv").symlink_to(script)
    path = f"{tools / 'bin'}:{os.environ['PATH']}"
    policy = machine.policy()

    argv = policy.wrap("fix", "srv", [], {"PATH": path}, SandboxSpec(), policy.home("fix", "tok-a", "ga")).argv

    opts = options(list(argv))
    assert ("--ro-bind", str(tools), str(tools)) in opts  # the installation both live in (its lib/node_modules)
    assert command_after_bwrap(list(argv))[-1] == str(tools / "bin" / "srv")


def test_declared_read_and_write_paths_are_bound_after_the_masks(machine: Machine) -> None:
    shared = machine.cwd / "shared"
    out = machine.root / "out"
    shared.mkdir()
    out.mkdir()

    opts = options(wrap(machine, sys.executable, [], SandboxSpec(read=(str(shared),), write=(str(out),))))

    assert where(opts, "--ro-bind", str(shared), str(shared)) > where(opts, "--tmpfs", str(machine.cwd))
    assert ("--bind", str(out), str(out)) in opts


@pytest.mark.parametrize("field", ["read", "write"])
def test_a_path_that_reaches_the_data_folder_or_another_upstreams_home_is_refused_at_start(
    machine: Machine, field: str
) -> None:
    for path in (machine.data, machine.data / "credgate.db", machine.root, machine.state / "other"):
        with pytest.raises(SandboxError) as refused:
            wrap(machine, sys.executable, [], SandboxSpec.model_validate({field: [str(path)]}))
        assert f"sandbox.{field}" in str(refused.value)


def test_without_bubblewrap_a_sandboxed_upstream_is_refused_with_one_line_naming_the_package_and_the_switches(
    machine: Machine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap there

    with pytest.raises(SandboxError) as refused:
        wrap(machine, sys.executable, [])

    message = str(refused.value)
    assert "\n" not in message
    for needed in ("bubblewrap", "sandbox = false", "CREDGATE_SANDBOX=off", "--no-sandbox", "master key"):
        assert needed in message, message


def test_a_missing_command_is_refused_before_entering(machine: Machine) -> None:
    with pytest.raises(SandboxError) as refused:
        wrap(machine, str(machine.root / "no-such-server"), [])

    assert "not found" in str(refused.value)


# -- for real: what a program inside sees ------------------------------------------------------------

PROBE = """
import json, os, sys
found = {}
paths = json.loads(os.environ["PROBE_PATHS"])  # not arguments: a file named in the arguments is bound
for path in paths:
    try:
        with open(path) as f:
            found[path] = "read: " + f.read()
    except OSError as exc:
        found[path] = type(exc).__name__
found["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
found["limits"] = [l for l in open("/proc/self/limits") if l.startswith(("Max processes", "Max data", "Max file size"))]
for target in ("home", "tmp", "cwd", "etc"):
    place = {"home": os.environ["HOME"], "tmp": "/tmp", "cwd": os.path.dirname(paths[0]), "etc": "/etc"}[target]
    try:
        open(os.path.join(place, "written"), "w").write("x")
        found["write " + target] = "ok"
    except OSError as exc:
        found["write " + target] = type(exc).__name__
print(json.dumps(found))
"""


@needs_bwrap
def test_inside_the_sandbox_the_gateways_files_and_processes_are_out_of_reach(machine: Machine) -> None:
    probe = machine.root / "probe.py"  # outside every hidden folder
    probe.write_text(PROBE)
    secret_files = [
        machine.cwd / "notes.txt",
        machine.data / "master.key",
        machine.data / "credgate.db",
        machine.tools / "fix.toml",
        machine.user_home / ".netrc",
        Path(f"/proc/{os.getpid()}/environ"),
    ]
    spec = SandboxSpec(max_memory_mb=256, max_processes=64)
    policy = machine.policy()

    env = {"PROBE_PATHS": json.dumps(list(map(str, secret_files)))}
    wrapped = policy.wrap("fix", sys.executable, [str(probe)], env, spec, policy.home("fix", "tok-a", "ga"))
    done = subprocess.run(wrapped.argv, env=wrapped.env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for path in secret_files:
        assert found[str(path)] in ("FileNotFoundError", "PermissionError"), (path, found[str(path)])
    assert "CANARY" not in done.stdout
    assert os.getpid() not in found["pids"] and len(found["pids"]) <= 3  # its own pid namespace
    assert found["write home"] == "ok" and found["write tmp"] == "ok"
    assert found["write cwd"] != "ok" and found["write etc"] != "ok"
    assert any("Max processes" in line and " 64 " in line for line in found["limits"])
    assert any("Max data size" in line and str(256 * 1024 * 1024) in line for line in found["limits"])


# -- the switches and what reports them ----------------------------------------------------------------


def test_the_global_switch_turns_every_sandbox_off(machine: Machine) -> None:
    assert machine.policy().enabled
    assert not machine.policy(sandbox=False).enabled


SANDBOX_OFF = """
    name = "loose"
    [handler]
    kind = "mcp"
    command = "loose-server"
    sandbox = false
"""
SANDBOXED = """
    name = "tight"
    [handler]
    kind = "mcp"
    command = "tight-server"
    sandbox.network = false
"""


def test_tools_reports_each_upstreams_sandbox(run_cli: CliRun, tools_dir: Path) -> None:
    write_tool(tools_dir, "loose.toml", SANDBOX_OFF)
    write_tool(tools_dir, "tight.toml", SANDBOXED)

    data = json.loads(run_cli("tools", "--json").stdout)
    off = json.loads(run_cli("tools", "--json", env={"CREDGATE_SANDBOX": "off"}).stdout)
    text = run_cli("tools").stdout

    assert {u["name"]: u["sandbox"] for u in data["upstreams"]} == {"loose": "off", "tight": "on"}
    assert {u["name"]: u["sandbox"] for u in off["upstreams"]} == {"loose": "off", "tight": "off"}
    assert "upstream loose  [stdio]  sandbox: off (sandbox = false)" in text
    assert "upstream tight  [stdio]  sandbox: on" in text


def test_a_command_found_through_bin_on_a_merged_usr_system_is_not_refused(machine: Machine) -> None:
    """/bin/sh on a system whose /lib holds node_modules: `/` is no installation to bind (it holds everything)."""
    policy = machine.policy()
    home = policy.home("fix", "tok-a", "ga")

    argv = policy.wrap("fix", "sh", [], {"PATH": "/bin:/usr/bin"}, SandboxSpec(), home).argv

    assert ("--ro-bind", "/", "/") in options(list(argv)) and command_after_bwrap(list(argv))[-1] == "/bin/sh"
