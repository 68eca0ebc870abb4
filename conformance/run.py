"""Run the official MCP conformance suite against our upstream fixture server directly and through credgate,
and print the results side by side.

    python conformance/run.py SUITE_JS       # SUITE_JS: the suite's dist/index.js (scripts/conformance)

Every target gets three legs: `--suite all --spec-version 2025-11-25` (the initialize handshake and sessions),
`--suite all --spec-version 2026-07-28` (stateless requests with per-request `_meta`), and the extension
scenarios (tasks, skills), which no `--spec-version` selects, one by one at the wire the suite gives them.

Targets, each a real process on 127.0.0.1:
- direct:        conformance/upstream_server.py over Streamable HTTP;
- via stdio:     `credgate serve --http` fronting that server started over stdio;
- via HTTP:      `credgate serve --http` fronting the running HTTP one;
- own tools:     `credgate serve --http` with a local tool only, on the scenarios that apply to a server
                 without the fixtures (initialize, ping, tools-list, DNS-rebinding protection, SSE streams).
The suite sends no Authorization header: each gateway has `conformance/bearer_proxy.py` in front, which adds
an agent token, and is started with the proxy's address as its public URL.

Through the gateway every scenario must end exactly as it does directly, check by check (each check's id and
status), in every leg, but for those in conformance/expected-failures.yml. Exit status 0 when that holds,
1 otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
CREDGATE = [PYTHON, "-m", "mcp_credgate"]
EXPECTED_FAILURES = HERE / "expected-failures.yml"
SPEC_VERSIONS = ("2025-11-25", "2026-07-28")
# The scenarios that apply to a server without the fixtures; each runs only at the versions it applies to.
OWN_SERVER_SCENARIOS = (
    "server-initialize",
    "ping",
    "tools-list",
    "dns-rebinding-protection",
    "server-sse-multiple-streams",
)
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def process(args: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """A server process, until it listens on `port`; stopped (and waited for) at the end."""
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{args[1:3]} exited with {proc.returncode}; see {log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{args[1:3]} did not listen within {START_TIMEOUT:g} s; see {log}") from None
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def upstream_http(port: int, logs: Path) -> AbstractContextManager[None]:
    return process([PYTHON, str(HERE / "upstream_server.py"), "--http", str(port)], port, logs / "upstream-http.log")


def declaration(kind: str, upstream_port: int) -> str:
    if kind == "stdio":
        server = json.dumps(str(HERE / "upstream_server.py"))
        handler = f'kind = "mcp"\ncommand = {json.dumps(PYTHON)}\nargs = [{server}]'
    elif kind == "http":
        handler = f'kind = "mcp"\nurl = "http://127.0.0.1:{upstream_port}/mcp"'
    else:
        return (
            'name = "echo"\ndescription = "Return the text it was given."\n'
            'input_schema = { type = "object", properties = { text = { type = "string" } } }\n'
            '[handler]\nkind = "python"\nentrypoint = "mcp_credgate.examples:echo"\n'
        )
    # prefix "": the suite calls the fixtures by their own names
    return f'name = "conf"\ndescription = "The conformance fixtures"\n[handler]\n{handler}\nprefix = ""\ntimeout = 60\n'


@contextmanager
def gateway(kind: str, upstream_port: int, root: Path) -> Iterator[str]:
    """A store allowing the fixtures (or the local tool) to group `conf`, its agent's token behind a proxy,
    and `credgate serve --http` behind that: yields the URL the suite talks to."""
    home, tools = root / kind / "home", root / kind / "tools.d"
    tools.mkdir(parents=True)
    (tools / "conf.toml").write_text(declaration(kind, upstream_port))
    env = {**os.environ, "CREDGATE_HOME": str(home), "CREDGATE_TOOLS_DIR": str(tools)}
    env.pop("CREDGATE_DATABASE_URL", None)
    env.pop("CREDGATE_MASTER_KEY", None)

    def admin(*args: str) -> str:
        done = subprocess.run([*CREDGATE, *args], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"credgate {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    admin("init")
    admin("tools", "--refresh")
    admin("group", "add", "conf")
    admin("group", "allow", "conf", "conf.*" if kind != "own" else "echo")
    token = json.loads(admin("agent", "add", "conf", "suite", "--json"))["token"]
    front, back = free_port(), free_port()
    public = f"http://127.0.0.1:{front}"
    serve = [*CREDGATE, "serve", "--http", "--port", str(back), "--public-url", public]
    proxy = [PYTHON, str(HERE / "bearer_proxy.py"), "--listen", str(front), "--to", f"http://127.0.0.1:{back}"]
    with ExitStack() as stack:
        stack.enter_context(process(serve, back, root / f"credgate-{kind}.log", env))
        stack.enter_context(process(proxy, front, root / f"proxy-{kind}.log", {**env, "CREDGATE_PROXY_TOKEN": token}))
        yield f"{public}/mcp"


Check = tuple[str, str]  # (check id, status)


@dataclass
class Run:
    title: str
    results: dict[str, Counter[Check]]  # scenario -> its checks (INFO entries left out)
    messages: dict[tuple[str, str], str]  # (scenario, check id) -> the suite's message, for the checks not passed
    exit_code: int


@dataclass(frozen=True)
class Leg:
    """One pass of the suite over a target: a spec version, or the extension scenarios."""

    name: str
    args: tuple[str, ...]  # what selects the scenarios: `--suite all --spec-version V`, or nothing
    scenarios: tuple[str, ...] = ()  # run one by one instead, when given


def legs(node: str, suite: Path) -> list[Leg]:
    """A leg per spec version, and one for the extension scenarios, read from the suite's own list."""
    listing = subprocess.run([node, str(suite), "list", "--server"], capture_output=True, text=True, check=True)
    extensions = tuple(re.findall(r"^\s*-\s*([\w-]+) \[extension\]", listing.stdout, flags=re.MULTILINE))
    return [
        *(Leg(version, ("--suite", "all", "--spec-version", version)) for version in SPEC_VERSIONS),
        Leg("extensions", (), extensions),
    ]


def run_suite(suite: Path, node: str, title: str, url: str, out: Path, leg: Leg, only: Sequence[str] = ()) -> Run:
    """The leg's scenarios (those of `only` alone, when given) against `url`; results in `out`."""
    base = [node, str(suite), "server", "--url", url, "-o", str(out)]
    baseline = out.parent / f"{out.name}-expected-failures.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    # the suite's own file format: one `server:` list (the entries for credgate only, for a gateway's run)
    entries = expected_failures(through_credgate=title != "direct")
    baseline.write_text("server:\n" + "".join(f"  - {entry}\n" for entry in sorted(entries)))
    base += ["--expected-failures", str(baseline)]
    if only:
        # run one by one at the leg's version; the suite skips those that do not apply there
        version = leg.args[-1:] if leg.args else ()
        runs = [[*base, "--scenario", s, *(("--spec-version", *version) if version else ())] for s in only]
    elif leg.scenarios:
        runs = [[*base, "--scenario", s] for s in leg.scenarios]
    else:
        runs = [[*base, *leg.args]]
    code = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}.log").open("w") as log:
        for args in runs:
            code |= subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, timeout=900, check=False).returncode
    results: dict[str, Counter[Check]] = {}
    messages: dict[tuple[str, str], str] = {}
    for checks in sorted(out.glob("*/checks.json")):
        scenario = re.sub(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$", "", checks.parent.name).removeprefix("server-")
        # INFO entries narrate the exchange (event ids, streams seen); the outcome is in the other statuses
        entries = [c for c in json.loads(checks.read_text()) if c.get("status") != "INFO"]
        results[scenario] = Counter((str(c.get("id")), str(c.get("status"))) for c in entries)
        for c in entries:
            if c.get("status") != "SUCCESS":
                messages[scenario, str(c.get("id"))] = str(c.get("errorMessage") or c.get("description") or "")
    return Run(title, results, messages, code)


def expected_failures(*, through_credgate: bool = True) -> set[str]:
    """The entries of conformance/expected-failures.yml (`- scenario` or `- scenario:check-id`): those under
    `server:`, and with `through_credgate` those under `through_credgate:` too (they pass directly)."""
    if not EXPECTED_FAILURES.exists():
        return set()
    sections = {"server"} | ({"through_credgate"} if through_credgate else set())
    entries, section = set(), None
    for line in EXPECTED_FAILURES.read_text().splitlines():
        if header := re.match(r"^(\w+):\s*$", line):
            section = header.group(1)
        elif (entry := re.match(r"^\s*-\s*([\w:.-]+)", line)) and section in sections:
            entries.add(entry.group(1))
    return entries


def statuses(checks: Counter[Check]) -> Counter[str]:
    counts = Counter[str]()
    for (_, status), n in checks.items():
        counts[status] += n
    return counts


def cell(checks: Counter[Check] | None) -> str:
    if checks is None:
        return "—"
    counts = statuses(checks)
    text = f"{counts['SUCCESS']}/{counts['SUCCESS'] + counts['FAILURE']}"
    return text + (f" {counts['WARNING']}w" if counts["WARNING"] else "")


def differences(scenario: str, direct: Run, through: Run, allowed: set[str]) -> list[str]:
    """The checks of `scenario` that end otherwise through the gateway (but for listed ones), with its messages."""
    mine, theirs = direct.results.get(scenario, Counter()), through.results.get(scenario, Counter())
    lines = []
    for check in sorted({c for c, _ in mine} | {c for c, _ in theirs}):
        if f"{scenario}:{check}" in allowed:
            continue
        was = sorted(s for (c, s), n in mine.items() if c == check for _ in range(n))
        now = sorted(s for (c, s), n in theirs.items() if c == check for _ in range(n))
        if was != now:
            why = through.messages.get((scenario, check), "")
            lines.append(
                f"{scenario}: {check}: direct {'/'.join(was) or 'absent'}, "
                f"{through.title} {'/'.join(now) or 'absent'}" + (f": {why}" if why else "")
            )
    return lines


def report(leg: str, runs: Sequence[Run], through: Sequence[Run]) -> list[str]:
    """Print the leg's table; return what differs from the direct run (and is not an expected failure)."""
    direct = runs[0]
    scenarios = sorted({s for run in runs for s in run.results})
    if not scenarios:
        return []
    width = max(len(s) for s in scenarios)
    print(f"\n{leg:<{width}}  " + "  ".join(f"{run.title:>16}" for run in runs))
    for scenario in scenarios:
        print(f"{scenario:<{width}}  " + "  ".join(f"{cell(run.results.get(scenario)):>16}" for run in runs))
    totals = [statuses(sum(run.results.values(), Counter[Check]())) for run in runs]
    row = (f"{t['SUCCESS']}/{t['SUCCESS'] + t['FAILURE']}" for t in totals)
    print(f"{'checks passed':<{width}}  " + "  ".join(f"{r:>16}" for r in row))
    allowed = expected_failures()
    problems = []
    for run in through:
        for scenario in sorted(set(direct.results) | set(run.results)):
            if scenario not in allowed:
                problems += [f"[{leg}] {line}" for line in differences(scenario, direct, run, allowed)]
    for run in runs:
        for scenario, checks in run.results.items():
            failed = [c for (c, s) in checks if s == "FAILURE" and f"{scenario}:{c}" not in allowed]
            if failed and scenario not in allowed:
                problems.append(f"[{leg}] {run.title}: {scenario} failed ({', '.join(failed)})")
        if run.exit_code:
            problems.append(f"[{leg}] {run.title}: the suite exited with status {run.exit_code}")
    return problems


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    suite = Path(argv[1]).resolve()
    node = shutil.which("node")
    assert node is not None, "node (22 or newer) must be on PATH"
    root = Path(tempfile.mkdtemp(prefix="credgate-conformance-"))
    upstream_port = free_port()
    started = time.monotonic()
    all_legs = legs(node, suite)
    runs: dict[str, list[Run]] = {leg.name: [] for leg in all_legs}

    def each_leg(title: str, url: str, out: Path, only: Sequence[str] = ()) -> None:
        for leg in all_legs:
            if only and not leg.args:
                continue  # the extension scenarios need the fixtures
            runs[leg.name].append(run_suite(suite, node, title, url, out / leg.name, leg, only))

    with upstream_http(upstream_port, root):
        each_leg("direct", f"http://127.0.0.1:{upstream_port}/mcp", root / "direct")
        for kind, title in (("stdio", "credgate→stdio"), ("http", "credgate→HTTP")):
            with gateway(kind, upstream_port, root) as url:
                each_leg(title, url, root / kind / "results")
        with gateway("own", upstream_port, root) as url:
            each_leg("credgate alone", url, root / "own" / "results", OWN_SERVER_SCENARIOS)
    problems = []
    for leg, leg_runs in runs.items():
        problems += report(leg, leg_runs, leg_runs[1:3])
    print(f"(checks passed/checked per scenario, w = warnings; {time.monotonic() - started:.0f} s)")
    for problem in problems:
        print(f"MISMATCH {problem}")
    if problems:
        print(f"logs and results: {root}")
        return 1
    print("conformance: every scenario ends through credgate as it does against the upstream directly")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
