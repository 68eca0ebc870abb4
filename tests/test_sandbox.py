"""The upstreams' sandbox (issue 20): the bubblewrap command line a stdio upstream runs under, its home, its
limits, the refusals, and what `credgate tools`, `serve` and `doctor` say about upstreams that run without one.

The command lines are checked as data first, then run for real: `bwrap` (Debian's bubblewrap) runs a small
Python program that tries to reach what it must not. Folders that must be hidden on purpose are made outside
/tmp (`folder_outside_tmp`): every sandbox has a /tmp of its own, which hides the host's anyway.

Egress injection (issue 27) last: a sandbox whose only way out is a proxy's Unix socket (a fixed-answer server
here), reached through the egress forwarder inside.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mcp_credgate import egress_forwarder
from mcp_credgate.config import Settings
from mcp_credgate.declarations import SandboxSpec
from mcp_credgate.errors import SandboxError
from mcp_credgate.sandbox import EGRESS_DIR, EGRESS_PORT, SandboxPolicy, Wrapped, egress_environment
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


# -- egress injection: the proxy as the only way out (issue 27) ----------------------------------------

FORWARDER = Path(egress_forwarder.__file__).resolve()


class FixedProxy:
    """A Unix socket server acting as the egress proxy: answers every HTTP request with one fixed body, and
    keeps the request lines it saw."""

    BODY = b"ANSWERED-BY-THE-PROXY"

    def __init__(self, path: Path) -> None:
        self.requests: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            with connection:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := connection.recv(4096)):
                    head += chunk
                self.requests.append(head.split(b"\r\n", 1)[0].decode())
                length = f"Content-Length: {len(self.BODY)}\r\n".encode()
                connection.sendall(b"HTTP/1.1 200 OK\r\n" + length + b"Connection: close\r\n\r\n" + self.BODY)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def egress(machine: Machine) -> Iterator[tuple[Path, FixedProxy]]:
    """The gateway's egress folder for one upstream: its proxy's socket (served by a FixedProxy) and CA files."""
    folder = machine.root / "egress"  # short: a Unix socket's path holds at most 107 bytes
    folder.mkdir()
    (folder / "ca.pem").write_text("EGRESS-CA-CERTIFICATE\n")
    (folder / "ca-bundle.pem").write_text("SYSTEM-CAS\nEGRESS-CA-CERTIFICATE\n")
    proxy = FixedProxy(folder / "proxy.sock")
    try:
        yield folder, proxy
    finally:
        proxy.close()


def wrap_egress(
    machine: Machine, folder: Path, args: list[str], env: dict[str, str] | None = None, **spec: object
) -> Wrapped:
    policy = machine.policy()
    home = policy.home("fix", "tok-a", "ga")
    return policy.wrap("fix", sys.executable, args, env or {}, SandboxSpec.model_validate(spec), home, egress=folder)


def test_egress_gives_the_sandbox_a_network_of_its_own_even_where_its_declaration_allows_the_network(
    machine: Machine, egress: tuple[Path, FixedProxy]
) -> None:
    argv = list(wrap_egress(machine, egress[0], [], network=True).argv)

    assert ("--unshare-net",) in options(argv)


def test_egress_binds_the_proxys_socket_writable_and_its_certificates_read_only_inside_the_run_mask(
    machine: Machine, egress: tuple[Path, FixedProxy]
) -> None:
    folder = egress[0]
    opts = options(list(wrap_egress(machine, folder, []).argv))

    socket_bound = where(opts, "--bind", str(folder / "proxy.sock"), str(EGRESS_DIR / "proxy.sock"))
    ca_bound = where(opts, "--ro-bind", str(folder / "ca.pem"), str(EGRESS_DIR / "ca.pem"))
    bundle_bound = where(opts, "--ro-bind", str(folder / "ca-bundle.pem"), str(EGRESS_DIR / "ca-bundle.pem"))
    run_masked = where(opts, "--tmpfs", "/run")
    assert run_masked < min(socket_bound, ca_bound, bundle_bound)
    assert max(socket_bound, ca_bound, bundle_bound) < where(opts, "--remount-ro", "/run")


def test_egress_runs_the_command_under_the_forwarder_with_the_gateways_python(
    machine: Machine, egress: tuple[Path, FixedProxy]
) -> None:
    argv = list(wrap_egress(machine, egress[0], ["-c", "pass"]).argv)

    inner = command_after_bwrap(argv)
    assert Path(inner[0]).name == "prlimit"
    command = inner[inner.index("--") + 1 :]
    forwarder = [sys.executable, "-I", "-S", str(FORWARDER), str(EGRESS_PORT), str(EGRESS_DIR / "proxy.sock")]
    assert command == [*forwarder, "--", sys.executable, "-c", "pass"]


def test_egress_binds_the_forwarder_even_inside_the_masked_working_directory(
    machine: Machine, egress: tuple[Path, FixedProxy]
) -> None:
    policy = SandboxPolicy.of(machine.settings, cwd=FORWARDER.parent, user_home=machine.user_home)
    home = policy.home("fix", "tok-a", "ga")

    opts = options(list(policy.wrap("fix", sys.executable, [], {}, SandboxSpec(), home, egress=egress[0]).argv))

    # hidden by a mask of its own, or, for a checkout under /tmp, by the sandbox's own /tmp
    hidden_by = "/tmp" if FORWARDER.is_relative_to("/tmp") else str(FORWARDER.parent)
    assert where(opts, "--tmpfs", hidden_by) < where(opts, "--ro-bind", str(FORWARDER), str(FORWARDER))


def test_egress_is_refused_when_the_forwarder_lies_in_a_protected_folder(
    machine: Machine, egress: tuple[Path, FixedProxy]
) -> None:
    policy = replace(machine.policy(), protected={FORWARDER.parent: "the data folder"})
    home = policy.home("fix", "tok-a", "ga")

    with pytest.raises(SandboxError) as refused:
        policy.wrap("fix", sys.executable, [], {}, SandboxSpec(), home, egress=egress[0])

    assert "egress forwarder" in str(refused.value) and "\n" not in str(refused.value)


def test_egress_points_every_proxy_and_ca_variable_at_the_forwarder_over_declared_values(
    machine: Machine, egress: tuple[Path, FixedProxy]
) -> None:
    declared = {"HTTPS_PROXY": "http://elsewhere:8080", "NO_PROXY": "*", "KEEP": "me"}

    env = wrap_egress(machine, egress[0], [], declared).env

    proxy = f"http://127.0.0.1:{EGRESS_PORT}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        assert env[name] == proxy, name
    assert env["NO_PROXY"] == env["no_proxy"] == ""  # nothing goes around it
    assert env["NODE_USE_ENV_PROXY"] == "1" and env["NODE_EXTRA_CA_CERTS"] == str(EGRESS_DIR / "ca.pem")
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert env[name] == str(EGRESS_DIR / "ca-bundle.pem"), name
    assert env["KEEP"] == "me" and env == {**declared, **egress_environment(), "HOME": env["HOME"]}


def test_without_egress_nothing_of_it_is_there(machine: Machine) -> None:
    wrapped = machine.policy().wrap("fix", sys.executable, [], {}, SandboxSpec(), machine.policy().home("f", "t", None))

    assert "HTTPS_PROXY" not in wrapped.env and str(FORWARDER) not in wrapped.argv
    assert not any(str(EGRESS_DIR) in arg for arg in wrapped.argv)


@pytest.mark.parametrize("missing", ["proxy.sock", "ca.pem", "ca-bundle.pem"])
def test_a_missing_file_in_the_egress_folder_is_refused_in_one_line_naming_it(
    machine: Machine, egress: tuple[Path, FixedProxy], missing: str
) -> None:
    (egress[0] / missing).unlink()

    with pytest.raises(SandboxError) as refused:
        wrap_egress(machine, egress[0], [])

    assert str(egress[0] / missing) in str(refused.value) and "\n" not in str(refused.value)


EGRESS_PROBE = """
import json, os, socket, sys, time, urllib.request
found = {"echo": sys.stdin.readline()}
found["proxied"] = urllib.request.urlopen("http://example.invalid/", timeout=20).read().decode()


def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__


found["host loopback"] = reach("127.0.0.1", int(os.environ["HOST_PORT"]))
found["outside"] = reach("192.0.2.1", 443)  # TEST-NET-1: no route, not even a default one
try:
    socket.getaddrinfo("example.com", 443)
    found["resolved"] = "yes"
except OSError as exc:
    found["resolved"] = type(exc).__name__
found["env"] = dict(os.environ)
found["ca"] = open("/run/credgate-egress/ca.pem").read()
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:  # leaves an orphan: the forwarder, pid 1, must reap it
    orphan = os.fork()
    if orphan == 0:
        os._exit(0)
    os.write(write_end, str(orphan).encode())
    os._exit(0)
os.waitpid(child, 0)
orphan = int(os.read(read_end, 32))


def zombies():
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                out.append(pid)
        except OSError:
            pass
    return out


deadline = time.monotonic() + 5
while os.path.exists(f"/proc/{orphan}") and time.monotonic() < deadline:  # it exits, then it is reaped
    time.sleep(0.05)
found["zombies"] = zombies()
found["pid"] = os.getpid()
print(json.dumps(found))
"""


@needs_bwrap
def test_inside_an_egress_sandbox_the_proxy_is_the_only_way_out_and_the_stdio_pipes_pass_through(
    machine: Machine, egress: tuple[Path, FixedProxy]
) -> None:
    folder, proxy = egress
    probe = machine.root / "egress_probe.py"  # outside every hidden folder
    probe.write_text(EGRESS_PROBE)
    with socket.create_server(("127.0.0.1", 0)) as host_service:  # listening on the host's loopback
        env = {"HOST_PORT": str(host_service.getsockname()[1]), "HTTP_PROXY": "http://elsewhere:1"}
        wrapped = wrap_egress(machine, folder, [str(probe)], env, network=True, max_processes=64)

        done = subprocess.run(
            wrapped.argv, env=wrapped.env, input="a line\n", capture_output=True, text=True, timeout=60
        )

    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["echo"] == "a line\n"  # stdin came through, stdout goes out
    assert found["proxied"] == FixedProxy.BODY.decode()
    assert proxy.requests == ["GET http://example.invalid/ HTTP/1.1"]
    assert found["host loopback"] == "ConnectionRefusedError"  # a loopback of its own
    assert found["outside"] != "connected" and found["resolved"] != "yes"
    assert {name: found["env"].get(name) for name in egress_environment()} == egress_environment()
    assert found["ca"] == "EGRESS-CA-CERTIFICATE\n"
    assert found["zombies"] == [] and found["pid"] != 1  # the forwarder is pid 1, and reaps the orphans


REACH_OTHER_PROXIES = """
import glob, json, os, socket
found = {}
for path in [os.environ["EGRESS_SOCKET"], *glob.glob("/tmp/*/proxy.sock"), *glob.glob("/tmp/*/*/proxy.sock")]:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"GET http://x/ HTTP/1.1\\r\\nhost: x\\r\\n\\r\\n")
            found[path] = s.recv(4096).decode(errors="replace")
    except OSError as exc:
        found[path] = type(exc).__name__
print(json.dumps(found))
"""


@needs_bwrap
def test_another_upstream_that_reads_tmp_cannot_reach_an_egress_upstreams_proxy(machine: Machine) -> None:
    policy = machine.policy()
    folder = policy.egress_folder()  # where the gateway makes each egress upstream's
    assert folder.parent == machine.state / ".egress" and stat.S_IMODE(folder.stat().st_mode) == 0o700
    proxy = FixedProxy(folder / "proxy.sock")
    try:
        probe = machine.root / "reach.py"
        probe.write_text(REACH_OTHER_PROXIES)
        spec = SandboxSpec(read=("/tmp",))
        env = {"EGRESS_SOCKET": str(folder / "proxy.sock")}
        wrapped = policy.wrap("other", sys.executable, [str(probe)], env, spec, policy.home("other", "tok-b", "gb"))
        done = subprocess.run(wrapped.argv, env=wrapped.env, capture_output=True, text=True, timeout=60)
    finally:
        proxy.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert FixedProxy.BODY.decode() not in done.stdout
    assert proxy.requests == []


def test_an_egress_folder_whose_socket_path_would_be_too_long_is_refused_in_one_line(machine: Machine) -> None:
    deep = machine.root / ("d" * 100)
    policy = replace(machine.policy(), state_dir=deep)

    with pytest.raises(SandboxError) as refused:
        policy.egress_folder()

    assert "too long for the egress proxy's socket" in str(refused.value) and "CREDGATE_STATE_DIR" in str(refused.value)
    assert "\n" not in str(refused.value) and not any((deep / ".egress").iterdir())
