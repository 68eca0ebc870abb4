"""The stdio upstreams' sandbox: a declared command turned into the bubblewrap (`bwrap`) command line that runs
it, with no view of the gateway's secrets.

    policy = SandboxPolicy.of(settings)                  # app lifetime: what to hide, where the homes live
    home = policy.home(server, credential_name, group)   # stable: a restarted upstream finds its cache
    wrapped = policy.wrap(server, command, args, env, handler.sandbox, home)
    # run wrapped.argv with wrapped.env (raises SandboxError: no bubblewrap, a path it may not see, a full home)

Inside, the upstream has:
- new user, PID, IPC, UTS (and cgroup) namespaces, no further user namespaces, its own /proc: no process of the
  gateway to read, signal or trace. It is the namespace's pid 1 itself (no bubblewrap process above it, whose
  command line would name the folders it hides; an upstream that leaves orphans reaps them or keeps zombies
  until it exits); a new session (no terminal to type into); killed with its parent;
- the root filesystem read-only, with masked (empty, read-only) in place of: the data folder, the key file,
  the upstreams' homes, the tool declarations, the gateway's working directory, the account's home and /run;
  its own /tmp and /dev/shm (memory, size-limited);
- what it needs to start bound read-only again, even inside a masked folder: its command as resolved on the
  declared PATH before entering (symbolic links followed, a script's `#!` interpreter too), the Python virtual
  environment or Node installation they belong to, and script files named in its arguments; then the
  declaration's `sandbox.read` (read-only) and `sandbox.write` (writable);
- a home of its own, writable, under the state folder, keyed by (server, credential, group): `HOME` and its
  working directory; refused at start when it holds more than `sandbox.max_home_mb`;
- limits set by `prlimit` (util-linux) inside: memory per process (RLIMIT_DATA, what a process writes to, not
  the address space it reserves: V8's WebAssembly reserves 10 GB), processes and threads (RLIMIT_NPROC,
  counted in its own user namespace; the kernel does not apply it to root), the size of a file (RLIMIT_FSIZE,
  as `sandbox.max_home_mb`), no core dumps;
- with egress injection (`wrap(..., egress=folder)`, issue 27): a network namespace of its own (its own loopback,
  no other interface) whose only way out is the gateway's proxy for it. The proxy's Unix socket and CA files are
  bound at EGRESS_DIR; the egress forwarder (`egress_forwarder.py`, run by the gateway's own Python) is pid 1,
  listens on 127.0.0.1:EGRESS_PORT, copies each connection to that socket and runs the command as its child;
  the proxy variables point there (`egress_environment`).

Nothing here imports MCP: the `mcp` handler runs what `wrap` returns.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .config import Settings
from .declarations import McpHandler, SandboxSpec, protected_overlap, real_path
from .errors import SandboxError

__all__ = [
    "BWRAP_PACKAGE",
    "EGRESS_DIR",
    "EGRESS_FILES",
    "EGRESS_PORT",
    "SHM_MB",
    "TMP_MB",
    "SandboxPolicy",
    "SandboxState",
    "Wrapped",
    "egress_environment",
    "missing_bubblewrap",
    "probe",
    "sandbox_state",
]

BWRAP_PACKAGE = "bubblewrap"
TMP_MB = 256  # the sandbox's /tmp: memory
SHM_MB = 64  # its /dev/shm: memory
_MASK_BYTES = 64 * 1024  # an empty folder put over a hidden one (read-only once the binds inside are made)
_ALWAYS_HIDDEN = (Path("/run"),)  # sockets: D-Bus, Docker, the PostgreSQL server's, the session's agents
# Folders that are the system itself: a working directory or account home equal to or above one of these is not
# masked (a client started from `/` must still find /usr).
_SYSTEM = frozenset(
    Path(p) for p in ("/", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/var")
)
_PSEUDO = ("/proc/", "/sys/", "/dev/")  # the kernel's own files: the sandbox has its own (or none) of these
_SHEBANG_DEPTH = 4  # a script whose interpreter is a script whose interpreter is…
_MIB = 1024 * 1024
_SOCKET_PATH_BYTES = 107  # a Unix socket's path (sun_path holds 108 bytes with its NUL)
# Egress injection (issue 27): a sandbox whose only way out is the gateway's proxy for it.
EGRESS_PORT = 3128  # the forwarder's port on the sandbox's own 127.0.0.1
EGRESS_DIR = Path("/run/credgate-egress")  # inside the sandbox (under the /run mask): the files below
EGRESS_FILES = ("proxy.sock", "ca.pem", "ca-bundle.pem")  # the proxy's socket, its CA, the system's CAs + it
_FORWARDER = Path(__file__).with_name("egress_forwarder.py")  # run as a file, not imported: stdlib only

SandboxState = Literal["on", "off: declaration", "off: global"]


def sandbox_state(handler: McpHandler, enabled: bool) -> SandboxState | None:
    """Whether a stdio upstream runs sandboxed, and what turned its sandbox off; None for a remote upstream."""
    if handler.command is None:
        return None
    if handler.sandbox is None:
        return "off: declaration"
    return "on" if enabled else "off: global"


def missing_bubblewrap(servers: str) -> str:
    """The one line a sandboxed upstream is refused with where bubblewrap cannot be found (`servers`: the
    upstream's name, or several)."""
    return (
        f"the sandbox needs bubblewrap (`bwrap`), which is not on the PATH (Debian and Ubuntu: "
        f"apt install {BWRAP_PACKAGE}; macOS and Windows have none); without a sandbox, {servers} can read "
        "everything this account can, the master key and every credential included: to accept that risk, set "
        "`sandbox = false` in its declaration, or CREDGATE_SANDBOX=off (or `credgate serve --no-sandbox`) for "
        "every upstream"
    )


def probe(timeout: float = 10.0) -> str | None:
    """Whether bubblewrap makes a sandbox here (namespaces allowed, bwrap found): None if it does, else why,
    one line."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (`bwrap`) is not on the PATH"
    flags = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--disable-userns", "--as-pid-1"]
    argv = [bwrap, *flags, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be run ({type(exc).__name__})"
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        return f"bubblewrap cannot make a sandbox here ({said}): unprivileged user namespaces must be allowed"
    return None


@dataclass(frozen=True)
class Wrapped:
    """What to run: bwrap's command line (the upstream's own at its end) and its environment."""

    argv: tuple[str, ...]
    env: dict[str, str]
    home: Path


@dataclass(frozen=True)
class _Mount:
    kind: Literal["mask", "ro", "rw"]
    path: Path


@dataclass
class _View:
    """The sandbox's filesystem, as the mounts made so far show it: the host's root, read-only, under them."""

    mounts: list[_Mount] = field(default_factory=list)

    def visible(self, path: Path) -> bool:
        """Whether the host's `path` shows at the same place: the deepest mount above it is not a mask."""
        above = [m for m in self.mounts if path == m.path or path.is_relative_to(m.path)]
        return not above or max(above, key=lambda m: len(m.path.parts)).kind != "mask"


@dataclass(frozen=True)
class SandboxPolicy:
    """Lives as long as the app: whether stdio upstreams are sandboxed at all, where their homes are, what
    none may see (`protected`: path → what it is; refused in any declared path) and what is hidden unless
    needed (`hidden`). Each start asks for a `wrap`."""

    enabled: bool
    state_dir: Path
    protected: Mapping[Path, str]
    hidden: tuple[Path, ...]

    @classmethod
    def of(cls, settings: Settings, *, cwd: Path | None = None, user_home: Path | None = None) -> SandboxPolicy:
        """The policy of a gateway with these settings, started in `cwd`, run by the account whose home is
        `user_home` (by default this process's)."""
        here = cwd if cwd is not None else Path.cwd()
        account = user_home if user_home is not None else Path.home()
        hidden = (*settings.tools_dirs, here, account, *_ALWAYS_HIDDEN)
        return cls(settings.sandbox, settings.state_dir, settings.protected_paths, tuple(hidden))

    def home(self, server: str, credential: str, group: str | None, agent: str | None = None) -> Path:
        """The home of the upstream `server` run with `credential` for `group` (None: discovery's, for no
        group) and, with isolation = "agent", for `agent`: `<state>/<server>/<hash>`, the same at every start."""
        key = f"{credential}\0{group or ''}" + (f"\0{agent}" if agent is not None else "")
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.state_dir / server / digest

    def egress_folder(self) -> Path:
        """A new folder (0700) for one upstream's egress proxy: its socket, the certificates given to the
        upstream, and the proxy's own leaf keys. It lies under the state folder, which every sandbox has masked
        and no declaration may bind (in /tmp, a sandbox declaring `sandbox.read = ["/tmp"]` would reach every
        egress upstream's proxy). SandboxError when the state folder's path is too long for a Unix socket's."""
        root = self.state_dir / ".egress"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=root))
        if len(os.fsencode(folder / "proxy.sock")) > _SOCKET_PATH_BYTES:
            shutil.rmtree(folder, ignore_errors=True)
            raise SandboxError(
                f"the state folder's path ({self.state_dir}) is too long for the egress proxy's socket "
                f"(at most {_SOCKET_PATH_BYTES} bytes in all): set CREDGATE_STATE_DIR to a shorter one"
            )
        return folder

    def wrap(
        self,
        server: str,
        command: str,
        args: Sequence[str],
        env: Mapping[str, str],
        options: SandboxSpec,
        home: Path,
        *,
        egress: Path | None = None,
    ) -> Wrapped:
        """bwrap's command line for running `command args` (as rendered) with `env`, in the sandbox `options`
        describe, `home` as its home. Creates the home (0700). Raises SandboxError, one line.

        With `egress` (a host folder holding EGRESS_FILES, made by the gateway), the sandbox has a network of
        its own whatever `options.network` says, and its only way out is that folder's proxy socket: the
        command runs under the egress forwarder (pid 1), which listens on 127.0.0.1:EGRESS_PORT inside, and
        its environment points every usual proxy and CA variable there (`egress_environment`)."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxError(missing_bubblewrap(f"upstream {server}"))
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            raise SandboxError("its sandbox needs prlimit (Debian package util-linux), which is not on the PATH")
        declared: list[tuple[str, str]] = [("read", p) for p in options.read] + [("write", p) for p in options.write]
        for field_name, declared_path in declared:
            why = protected_overlap(declared_path, self.protected)
            if why is not None:
                raise SandboxError(f"sandbox.{field_name}: {why}")
        search = env.get("PATH", os.environ.get("PATH", os.defpath))
        executable = _resolve(command, search)
        if executable is None:
            raise SandboxError(f"its command {command!r} was not found (on its PATH, before entering its sandbox)")
        needed = _needed(executable, search) | _resolver()
        for path in sorted(needed):
            if protected_overlap(path, self.protected) is not None:
                raise SandboxError(f"what it runs ({path}) lies in a folder no upstream may see: move it elsewhere")
        # a file named in its arguments is bound, unless no upstream may see it: then it stays hidden
        needed |= {p for p in _script_args(args) if protected_overlap(p, self.protected) is None}
        egress_binds: list[str] = []
        if egress is not None:
            needed |= self._forwarder_needs(search)
            egress_binds = _egress_binds(egress)
        _make_home(self.state_dir, home)
        home = real_path(home)  # where the masks put it (a state folder reached through a link)
        _check_home_size(home, options.max_home_mb)
        namespaces = self._namespaces(options, isolated=egress is not None)
        argv = [bwrap, *namespaces, *self._mounts(needed, options, home, egress_binds), "--chdir", str(home)]
        argv += [
            "--",
            prlimit,
            f"--data={options.max_memory_mb * _MIB}",
            f"--nproc={options.max_processes}",
            f"--fsize={options.max_home_mb * _MIB}",
            "--core=0",
            "--",
        ]
        if egress is not None:
            socket_path = str(EGRESS_DIR / "proxy.sock")
            argv += [sys.executable, "-I", "-S", str(_FORWARDER), str(EGRESS_PORT), socket_path, "--"]
        argv += [executable, *args]
        extra = egress_environment() if egress is not None else {}
        return Wrapped(tuple(argv), {**env, **extra, "HOME": str(home)}, home)

    def _forwarder_needs(self, search: str) -> set[Path]:
        """What running the egress forwarder reads: this Python (its installation, its standard library) and
        the forwarder's file; none may lie in a protected folder."""
        prefixes = {Path(os.path.realpath(p)) for p in (sys.base_prefix, sys.base_exec_prefix)} - _SYSTEM
        needed = _needed(sys.executable, search) | prefixes | set(_links(_FORWARDER))
        for path in sorted(needed):
            if protected_overlap(path, self.protected) is not None:
                raise SandboxError(f"the egress forwarder ({path}) lies in a folder no upstream may see")
        return needed

    def _namespaces(self, options: SandboxSpec, *, isolated: bool = False) -> list[str]:
        """`isolated`: a network namespace of its own (bwrap brings its loopback up) whatever `options` say."""
        flags = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if isolated or not options.network:
            flags.append("--unshare-net")
        # --as-pid-1: no bubblewrap reaper above it, whose command line would show the paths it hides
        return [*flags, "--disable-userns", "--as-pid-1", "--new-session", "--die-with-parent"]

    def _mounts(self, needed: Iterable[Path], options: SandboxSpec, home: Path, extra: Sequence[str] = ()) -> list[str]:
        """`extra`: binds made last, inside the masks, before they are made read-only (the egress files)."""
        view = _View()
        out = ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        out += ["--size", str(SHM_MB * _MIB), "--tmpfs", "/dev/shm", "--size", str(TMP_MB * _MIB), "--tmpfs", "/tmp"]
        view.mounts += [_Mount("mask", Path(p)) for p in ("/proc", "/dev", "/tmp")]
        masks: list[Path] = []
        hidden = [*self.protected, *(p for p in self.hidden if not any(p == s or s.is_relative_to(p) for s in _SYSTEM))]
        for path in sorted({real_path(p) for p in hidden}, key=lambda p: len(p.parts)):
            if not path.exists() or not view.visible(path):
                continue  # nothing to hide, or hidden already (under the sandbox's /tmp, or a mask above it)
            if path.is_dir():
                out += ["--size", str(_MASK_BYTES), "--tmpfs", str(path)]
                masks.append(path)
            else:
                out += ["--ro-bind", "/dev/null", str(path)]
            view.mounts.append(_Mount("mask", path))
        binds = [_Mount("ro", p) for p in needed]
        binds += [_Mount("ro", real_path(p)) for p in options.read]
        binds += [_Mount("rw", real_path(p)) for p in options.write]
        for mount in sorted(set(binds), key=lambda m: (len(m.path.parts), m.kind == "rw", str(m.path))):
            if not mount.path.exists() or (mount.kind == "ro" and view.visible(mount.path)):
                continue  # a read-only root shows it already, or a bind above it does
            out += ["--ro-bind" if mount.kind == "ro" else "--bind", str(mount.path), str(mount.path)]
            view.mounts.append(mount)
        if extra and view.visible(EGRESS_DIR):  # bwrap could not make the mount points on the read-only root
            raise SandboxError(f"its egress files go under {EGRESS_DIR.parent}, which this system does not have")
        out += ["--bind", str(home), str(home), *extra]
        for path in masks:
            out += ["--remount-ro", str(path)]
        return out


def egress_environment() -> dict[str, str]:
    """What an egress sandbox's command finds in its environment, over any declared value of the same names:
    every usual proxy variable pointing at the forwarder, nothing exempt, and the proxy's CA trusted (Node on
    top of its own CAs; OpenSSL, Python's requests, curl and Go through a bundle of the system's CAs and it)."""
    proxy = f"http://127.0.0.1:{EGRESS_PORT}"
    out = {name: proxy for base in ("http_proxy", "https_proxy", "all_proxy") for name in (base.upper(), base)}
    out |= {"NO_PROXY": "", "no_proxy": "", "NODE_USE_ENV_PROXY": "1"}
    out["NODE_EXTRA_CA_CERTS"] = str(EGRESS_DIR / "ca.pem")
    out |= {
        name: str(EGRESS_DIR / "ca-bundle.pem") for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    }
    return out


def _egress_binds(folder: Path) -> list[str]:
    """bwrap's binds of the egress folder's files at EGRESS_DIR: the socket writable, the certificates
    read-only. Raises SandboxError, one line, for a missing one."""
    out: list[str] = []
    for name in EGRESS_FILES:
        path = folder / name
        if not path.exists():
            raise SandboxError(f"its egress proxy is not ready: {path} is missing")
        out += ["--bind" if name == "proxy.sock" else "--ro-bind", str(path), str(EGRESS_DIR / name)]
    return out


def _resolve(command: str, search: str) -> str | None:
    """The command as the kernel would run it: looked up on `search` unless it names a path; absolute."""
    found = shutil.which(command, path=search)
    return os.path.abspath(found) if found is not None else None


def _needed(executable: str, search: str, depth: int = 0) -> set[Path]:
    """What running `executable` reads: the file, every link on the way to it, its `#!` interpreter (the
    same, recursively), and the installations they belong to."""
    chain = _links(Path(executable))
    out = set(chain)
    for path in chain:
        out |= _installation(path)
    interpreter = _shebang(chain[-1], search)
    if interpreter is not None and depth < _SHEBANG_DEPTH:
        out |= _needed(interpreter, search, depth + 1)
    return out


def _links(path: Path) -> list[Path]:
    """The path, each symbolic link it goes through one hop at a time, and where it ends."""
    chain = [path]
    current = path
    for _ in range(40):  # the kernel's own limit on links followed
        if not current.is_symlink():
            break
        current = Path(os.path.normpath(current.parent / os.readlink(current)))
        chain.append(current)
    real = Path(os.path.realpath(path))
    return chain if chain[-1] == real else [*chain, real]


def _installation(path: Path) -> set[Path]:
    """The installation an executable belongs to and needs whole: a Python virtual environment (`bin/` beside
    its pyvenv.cfg) with the Python it was made from, or a Node installation (`bin/` or `lib/node_modules/`
    under the same prefix)."""
    out: set[Path] = set()
    if path.parent.name == "bin" and (path.parent.parent / "pyvenv.cfg").is_file():
        venv = path.parent.parent
        out.add(venv)
        for line in (venv / "pyvenv.cfg").read_text(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "home" and value.strip():
                out.add(Path(os.path.realpath(value.strip())).parent)  # the base installation's prefix
    for prefix in path.parents:
        modules = prefix / "lib" / "node_modules"
        if (path.is_relative_to(prefix / "bin") or path.is_relative_to(modules)) and modules.is_dir():
            out.add(prefix)
            break
    return out - _SYSTEM  # the system's own folders are always there (and `/` would hold everything)


def _shebang(path: Path, search: str) -> str | None:
    """A script's interpreter as resolved (`#!/usr/bin/env NAME` looked up on `search`), or None."""
    try:
        with path.open("rb") as f:
            first = f.read(256).split(b"\n", 1)[0]
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    if Path(words[0]).name != "env":
        return words[0]
    for word in words[1:]:  # `env [-S] [-i] [VAR=value]... NAME`
        if not word.startswith("-") and "=" not in word:
            return _resolve(word, search)
    return None


def _script_args(args: Sequence[str]) -> set[Path]:
    """Files named by absolute path in the arguments (`python /srv/server.py`): bound, each alone."""
    out: set[Path] = set()
    for arg in args:
        if arg.startswith("/") and not arg.startswith(_PSEUDO) and os.path.isfile(arg):
            out |= set(_links(Path(arg)))
    return out


def _resolver() -> set[Path]:
    """The folder of the DNS resolver's configuration when /etc/resolv.conf leads into a hidden one (systemd's
    /run/systemd/resolve)."""
    real = Path(os.path.realpath("/etc/resolv.conf"))
    return {real.parent} if real.exists() and real.parent != Path("/etc") else set()


def _make_home(state_dir: Path, home: Path) -> None:
    """The home and the folders above it up to the state folder: created 0700 (whatever the umask)."""
    missing = [p for p in (home, *home.parents) if p == state_dir or p.is_relative_to(state_dir)]
    for folder in reversed(missing):
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
    home.chmod(0o700)


def _check_home_size(home: Path, max_mb: int) -> None:
    """Refuses to start an upstream whose home holds more than its limit (disk blocks used)."""
    used = 0
    for folder, dirs, files in os.walk(home):
        for name in (*dirs, *files):
            try:
                used += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                continue
    if used > max_mb * _MIB:
        raise SandboxError(
            f"its home {home} holds {used // _MIB} MiB, more than sandbox.max_home_mb = {max_mb}: "
            "empty it (it is a cache) or raise the limit in its declaration"
        )
