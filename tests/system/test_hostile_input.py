"""Hostile input, property-based (issue 7): random and adversarial declarations, credential values, tool
arguments and upstream bodies. Always a clear error or a correct result; never a traceback, never a secret
in the output, never a request to a host other than the declared one.

Hypothesis runs derandomized (the same examples on every run, no example database), with a modest number of
examples per property; `HYPOTHESIS_SCALE=10` runs ten times as many locally.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

import anyio
import httpx2
import mcp_types as types
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError

from mcp_credgate.cli import cli
from mcp_credgate.config import Settings
from mcp_credgate.declarations import HttpHandler, load_catalog
from mcp_credgate.loopback import is_loopback_host
from mcp_credgate.store import Store
from tests.support.gateway import (
    Transcript,
    Upstream,
    World,
    assert_no_leak,
    connect,
    credgate_env,
    http_tool,
    make_canary,
    per_backend,
    running_upstream,
    store_env,
)

SCALE = float(os.environ.get("HYPOTHESIS_SCALE", "1"))

# derandomized: CI sees the same examples every run; `clean_credgate_env` (autouse) is harmless per example
CI = settings(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def examples(n: int) -> settings:
    return settings(CI, max_examples=max(1, int(n * SCALE)))


# -- strategies ------------------------------------------------------------------------------------

FRAGMENTS = [
    "{cred.token}",
    "{cred.password}",
    "{args.x}",
    "{args.}",
    "{cred}",
    "{{cred.token}}",
    "{a.b}",
    "{args.x",
    "${X}",
    "${HOME}",
    "$(id)",
    "`id`",
    "%s%n",
    "%2e%2e",
    "%2f",
    "%2F",
    "..%2f",
    "../",
    "..",
    ".",
    "/",
    "\\",
    "@evil.example",
    "http://evil.example/",
    "//evil.example",
    "127.0.0.2",
    "[::1]",
    "0x7f.1",
    "user:pw@",
    "\r\n",
    "\n",
    "\r",
    "\x00",
    "\t",
    "\x7f",
    "\x1b[31m",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\ufffd",
    "\U0001f600",
    "é",
    "ﬁ",
    "İ",
    "ǅ",
    "\u0301",
    "\ud800",
    "\udfff",
    "=",
    "?",
    "#",
    "&",
    "+",
    "%",
    "'",
    '"',
    "<script>",
    "\\u0000",
    "\\n",
    "NaN",
    "Infinity",
    "null",
    "[",
    "]",
    "{",
    "}",
    "[[x]]",
    "a = 1",
    '"""',
    "'''",
]

fragments = st.sampled_from(FRAGMENTS)
odd_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40)
composed = st.lists(st.one_of(fragments, st.text(max_size=6)), max_size=8).map("".join)
huge = st.tuples(
    st.sampled_from(["A", "é", "{cred.token}", "%2e", "\x00", "\U0001f600"]), st.integers(1000, 200_000)
).map(lambda t: t[0] * (t[1] // len(t[0])))
hostile_text = st.one_of(odd_text, composed, fragments, huge)


def _nest(value: Any, depth: int, kind: str) -> Any:
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def _json_strategies(text: st.SearchStrategy[str], max_depth: int) -> tuple[st.SearchStrategy[Any], ...]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    )
    values = st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=15
    )
    deep = st.builds(_nest, scalars, st.integers(50, max_depth), st.sampled_from(["list", "dict"]))
    return scalars, values, deep


json_scalars, json_values, deep_values = _json_strategies(hostile_text, 3000)
# What an MCP client can send at all: its JSON has no lone surrogate, and the SDK serialises at most ~250 levels.
sendable_text = hostile_text.map(lambda s: re.sub("[\ud800-\udfff]", "\ufffd", s))
_, sendable_values, sendable_deep = _json_strategies(sendable_text, 240)
any_argument = st.one_of(sendable_values, sendable_deep)


# -- a small TOML writer (valid TOML for any JSON-like value without None) ------------------------


def toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=True).replace("\x7f", "\\u007f")


class RawToml(str):
    """TOML text put in as is (deep nesting, written without recursion)."""


deep_toml_values = st.builds(
    lambda depth, kind: RawToml("[" * depth + "1" + "]" * depth if kind else "{a=" * depth + "1" + "}" * depth),
    st.integers(50, 3000),
    st.booleans(),
)


def toml_value(value: Any) -> str:
    if isinstance(value, RawToml):
        return str(value)
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_str(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{toml_str(k)} = {toml_value(v)}\n" for k, v in data.items())


URL_PARTS = [
    "https://",
    "http://",
    "ftp://",
    "127.0.0.1",
    "localhost",
    "api.example.com",
    ":8443",
    ":99999",
    ":x",
    "[::1]",
    "[::1",
    "@",
    "user:pw@",
    "/",
    "/v1",
    "?",
    "#",
    "{args.x}",
    "{cred.token}",
    "{bad.x}",
    "%2e%2e",
    "..",
    "\\",
    " ",
    "\u202e",
]
urls = st.lists(st.sampled_from(URL_PARTS), min_size=1, max_size=7).map("".join)


def base_declaration() -> dict[str, Any]:
    return {
        "name": "t",
        "description": "a tool",
        "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}},
        "credential": {"type": "svc", "fields": [{"name": "token", "kind": "token"}]},
        "handler": {
            "kind": "http",
            "method": "GET",
            "url": "https://api.example.com/v1/{args.x}",
            "query": {"q": "{args.x}"},
            "headers": {"Authorization": "Bearer {cred.token}"},
            "json": {"a": ["{args.x}", {"b": "{cred.token}"}]},
            "timeout": 5,
            "max_response_bytes": 1000,
        },
    }


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_declarations(draw: st.DrawFn) -> dict[str, Any]:
    """A valid declaration with a few random edits: a value replaced or removed, a key added."""
    data = base_declaration()
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "url", "kind"]))
        if action == "replace":
            parent[path[-1]] = draw(st.one_of(json_values, deep_toml_values))
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(hostile_text)] = draw(json_values)
        elif action == "url" and isinstance(data.get("handler"), dict):
            data["handler"]["url"] = draw(urls)
        elif action == "kind" and isinstance(data.get("handler"), dict):
            data["handler"]["kind"] = draw(st.sampled_from(["http", "python", "mcp", "HTTP", ""]))
    return data


deep_toml = st.builds(
    lambda depth, opener, closer: f"x = {opener * depth}1{closer * depth}\n",
    st.integers(100, 5000),
    st.just("["),
    st.just("]"),
) | st.builds(lambda depth: "x = " + "{a=" * depth + "1" + "}" * depth + "\n", st.integers(100, 5000))
declaration_bytes = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    composed.map(lambda s: s.encode("utf-8", "surrogatepass")),
    mutated_declarations().map(lambda d: toml_document(d).encode()),
    deep_toml.map(str.encode),
    huge.map(lambda s: f'name = "t"\ndescription = {toml_str(s)}\n'.encode()),
)


# -- tools.d ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-decls")


def _fresh_dir(root: Path) -> Path:
    n = len(list(root.iterdir()))
    d = root / f"d{n}"
    d.mkdir()
    return d


def check_catalog(folder: Path) -> None:
    catalog = load_catalog([folder])  # must not raise
    for problem in catalog.problems:
        assert isinstance(problem, str)
        assert problem.startswith(str(folder)), problem[:200]
    for tool in catalog.tools.values():  # what was accepted holds the origin rules
        handler = tool.decl.handler
        if isinstance(handler, HttpHandler):
            parts = urlsplit(handler.url)
            assert parts.scheme in ("http", "https") and parts.hostname
            assert "{" not in parts.netloc
            if tool.credential is not None and parts.scheme == "http":
                assert is_loopback_host(parts.hostname)


@examples(200)
@given(files=st.lists(declaration_bytes, min_size=1, max_size=3))
def test_random_declaration_files_give_problems_naming_the_file_never_an_exception(
    scratch: Path, files: list[bytes]
) -> None:
    folder = _fresh_dir(scratch)
    for i, data in enumerate(files):
        (folder / f"f{i}.toml").write_bytes(data)
    check_catalog(folder)


@examples(40)
@given(data=declaration_bytes)
def test_tools_check_exits_0_or_1_without_a_traceback(scratch: Path, data: bytes) -> None:
    folder = _fresh_dir(scratch)
    (folder / "f.toml").write_bytes(data)
    result = CliRunner().invoke(
        cli,
        ["--home", str(scratch / "no-home"), "--tools-dir", str(folder), "tools", "--check"],
        env={"CREDGATE_DEBUG": "1"},  # an unexpected exception is raised here, not hidden as "internal error"
        catch_exceptions=False,
    )
    assert result.exit_code in (0, 1)
    assert "Traceback" not in result.output
    if result.exit_code == 1:
        assert "problem: " + str(folder / "f.toml") in result.stderr


ADVERSARIAL_FILES: dict[str, bytes] = {
    "binary.toml": bytes(range(256)),
    "bom.toml": b"\xef\xbb\xbfname = 't'\n",
    "utf16.toml": 'name = "t"\n'.encode("utf-16"),
    "deep_array.toml": b"x = " + b"[" * 10_000 + b"]" * 10_000,
    "deep_table.toml": b"x = " + b"{a=" * 2_000 + b"1" + b"}" * 2_000,
    "deep_schema.toml": (
        'name = "t"\n[handler]\nkind = "http"\nurl = "https://h/"\n[input_schema]\ntype = "object"\nallOf = '
        + "[{allOf=" * 190
        + "[]"
        + "}]" * 190
    ).encode(),
    "bad_ipv6.toml": b'name = "t"\n[handler]\nkind = "http"\nurl = "https://[::1/x"\n',
    "bad_port.toml": b'name = "t"\n[handler]\nkind = "http"\nurl = "https://h:99999/x"\n',
    "mcp_bad_url.toml": b'name = "t2"\n[handler]\nkind = "mcp"\nurl = "http://[oops/"\n',
    "huge.toml": b'name = "t3"\ndescription = "' + b"x" * 3_000_000 + b'"\n',
    "template.toml": b'name = "{cred.token}"\n[handler]\nkind = "{args.x}"\n',
    "nul.toml": b'name = "t\x00"\n',
    "surrogate.toml": b'name = "\\ud800"\n',
}


def test_credgate_tools_check_in_a_real_process_lists_every_hostile_file_and_no_traceback(tmp_path: Path) -> None:
    folder = tmp_path / "tools.d"
    folder.mkdir()
    for name, data in ADVERSARIAL_FILES.items():
        (folder / name).write_bytes(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDGATE_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcp_credgate",
            "--home",
            str(tmp_path / "home"),
            "--tools-dir",
            str(folder),
            "tools",
            "--check",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "internal error" not in proc.stderr
    for name in ADVERSARIAL_FILES:
        assert f"problem: {folder / name}" in proc.stderr, name


# -- credential values -----------------------------------------------------------------------------

VALUE_TOOLS = {
    "svc": http_tool("svc", "https://api.example.com/x"),
    "pat": http_tool(
        "pat",
        "https://api.example.com/y",
        credential='type = "pat"\nfields = [ { name = "token", kind = "token", pattern = "^tk_[a-z0-9]{4,}$" } ]',
    ),
}


@pytest.fixture(scope="module")
def value_homes(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], World]]:
    def make(database_url: str | None) -> closing[World]:
        return closing(World.create(tmp_path_factory.mktemp("hostile-values"), VALUE_TOOLS, database_url=database_url))

    with per_backend(request.config, make) as get:
        yield get


@pytest.fixture
def value_home(value_homes: Callable[[str], World], backend: str) -> tuple[Settings, Store]:
    world = value_homes(backend)
    return world.settings, world.store


_counter = iter(range(10**9))


@examples(150)
@given(
    before=hostile_text,
    after=hostile_text,
    type_name=st.sampled_from(["svc", "pat"]),
    raw=st.booleans(),
    extra=st.one_of(st.none(), st.dictionaries(hostile_text, json_values, max_size=2)),
)
def test_random_credential_values_are_stored_exactly_or_refused_in_one_line_without_the_value(
    value_home: tuple[Settings, Store],
    before: str,
    after: str,
    type_name: str,
    raw: bool,
    extra: dict[str, Any] | None,
) -> None:
    settings_, store = value_home
    canary = make_canary("V")
    value = before + canary + after
    payload: dict[str, Any] = {"token": value, **(extra or {})}
    text = json.dumps(payload, ensure_ascii=not raw)
    name = f"c{next(_counter)}"
    result = CliRunner().invoke(
        cli,
        [
            "--home",
            str(settings_.home),
            "--tools-dir",
            str(settings_.tools_dirs[0]),
            "cred",
            "add",
            name,
            "--type",
            type_name,
            "--from-json",
            "-",
        ],
        input=text.encode("utf-8", "surrogatepass"),
        env={"CREDGATE_DEBUG": "1", **store_env(settings_)},
        catch_exceptions=False,
    )
    assert result.exit_code in (0, 1), result.output
    everything = result.output + result.stderr
    assert canary not in everything
    assert_no_leak(everything, canary)
    event(f"exit {result.exit_code}")
    if result.exit_code == 0:
        assert store.read_credential(name)["token"] == value
    else:
        lines = result.stderr.strip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[:500]


HOSTILE_STDIN: dict[str, bytes] = {
    "invalid_utf8": b'{"token": "abc\xff\xfeCANARY"}',
    "lone_surrogate": b'{"token": "abc\\ud800CANARY"}',
    "nul": b'{"token": "abc\\u0000CANARY"}',
    "crlf": b'{"token": "CANARY\\r\\nX-Evil: 1"}',
    "raw_newline": b'{"token": "CANARY\n"}',
    "huge": b'{"token": "CANARY' + b"x" * 70_000 + b'"}',
    "deep": b"[" * 100_000,
    "deep_value": b'{"token": ' + b"[" * 5_000 + b'"CANARY"' + b"]" * 5_000 + b"}",
    "not_object": b'"CANARY"',
    "number": b'{"token": 1e999999}',
    "duplicate_keys": b'{"token": "CANARY", "token": 1}',
    "unknown_field": b'{"token": "CANARY", "other": "CANARY"}',
    "bom": b'\xef\xbb\xbf{"token": "CANARY"}',
    "utf16": '{"token": "CANARY"}'.encode("utf-16"),
    "empty": b"",
    "truncated": b'{"token": "CANARY',
}


def credgate_bytes(root: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mcp_credgate",
            "--home",
            str(root / "home"),
            "--tools-dir",
            str(root / "tools.d"),
            *args,
        ],
        input=stdin,
        capture_output=True,
        env=credgate_env(),
        timeout=60,
        check=False,
    )


@pytest.fixture
def stdin_root(tmp_path: Path) -> Path:
    """An installation on this test's store (a store per test: on PostgreSQL a test's schema is its own)."""
    World.create(tmp_path, {"svc": VALUE_TOOLS["svc"]}).close()
    return tmp_path


@pytest.mark.parametrize("case", sorted(HOSTILE_STDIN))
def test_hostile_stdin_to_cred_add_in_a_real_process_is_one_line_without_the_value(stdin_root: Path, case: str) -> None:
    canary = make_canary("S")
    data = HOSTILE_STDIN[case].replace(b"CANARY", canary.encode())

    result = credgate_bytes(stdin_root, "cred", "add", f"c-{case}", "--type", "svc", "--from-json", "-", stdin=data)

    assert result.returncode in (0, 1)
    assert b"Traceback" not in result.stderr and b"internal error" not in result.stderr, result.stderr[-500:]
    assert canary.encode() not in result.stdout + result.stderr
    if result.returncode == 1:
        assert result.stderr.count(b"\n") == 1 and result.stderr.startswith(b"Error: "), result.stderr[:300]
    else:
        assert case in ("duplicate_keys", "bom", "raw_newline") or case.startswith("unknown"), result.stdout


# -- tool arguments against the recording upstream -------------------------------------------------

TOKEN = make_canary("HI", rich=True)
STR = '{ type = "string" }'


def argument_tools(up: Upstream) -> dict[str, str]:
    return {
        "items": http_tool(
            "items",
            up.url("/items/{args.item}"),
            method="POST",
            properties="\n".join(
                [*(f"properties.{p} = {STR}" for p in ("item", "q", "note", "text")), "properties.data = {}"]
            ),
            query='{ q = "{args.q}" }',
            headers='{ Authorization = "Bearer {cred.token}", X-Note = "{args.note}" }',
            extra='json = { text = "{args.text}", data = "{args.data}" }',
        ),
        "anything": http_tool(
            "anything",
            up.url("/any/{args.p}"),
            properties="properties.p = {}\nproperties.h = {}",
            headers='{ X-Api-Key = "{cred.token}", X-H = "{args.h}" }',
            query='{ p = "{args.p}" }',
        ),
    }


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def arg_worlds(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, module_upstream: Upstream
) -> Iterator[Callable[[str], World]]:
    @contextmanager
    def make(database_url: str | None) -> Iterator[World]:
        tools = argument_tools(module_upstream)
        world = World.create(tmp_path_factory.mktemp("hostile-args"), tools, database_url=database_url)
        world.add_credential("svc-main", "svc", {"token": TOKEN})
        world.allow_and_bind("dev", tools, {"svc": "svc-main"})
        yield world
        world.close()

    with per_backend(request.config, make) as get:
        yield get


@pytest.fixture
def arg_world(arg_worlds: Callable[[str], World], backend: str) -> World:
    return arg_worlds(backend)


class Outcome:
    def __init__(self) -> None:
        self.transcript = Transcript()
        self.sent: list[httpx2.URL] = []
        self.result: types.CallToolResult | None = None
        self.refused: MCPError | None = None


def call_through_gateway(world: World, tool: str, args: dict[str, Any]) -> Outcome:
    """One call through a fresh gateway (its HTTP client belongs to this event loop); every URL the gateway's
    client sent to is recorded, whatever host it named."""
    outcome = Outcome()

    async def record(request: httpx2.Request) -> None:
        outcome.sent.append(request.url)

    async def main() -> None:
        async with world.gateway() as gw, connect(gw, "dev") as client:
            gw.http.event_hooks["request"].append(record)
            with anyio.fail_after(30):
                try:
                    outcome.result = await outcome.transcript.call(client, tool, args)
                except MCPError as exc:
                    outcome.refused = exc
                    outcome.transcript.chunks.append(exc.error.model_dump_json())

    anyio.run(main)
    return outcome


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _expected_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def check_egress(outcome: Outcome, up: Upstream, prefix: str) -> None:
    for url in outcome.sent:
        assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", up.port), str(url)[:200]
        assert url.raw_path.startswith(prefix.encode()), str(url)[:200]
    for seen in up.seen():
        assert seen.header("Host") == f"127.0.0.1:{up.port}"
        assert seen.target.startswith(prefix), seen.target[:200]


def _arguments(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={k: any_argument for k in keys})


@examples(120)
@given(
    args=st.one_of(
        _arguments(["item", "q", "note", "text", "data"]),
        st.fixed_dictionaries(
            {
                "item": sendable_text,
                "q": sendable_text,
                "note": sendable_text,
                "text": sendable_text,
                "data": any_argument,
            }
        ),
        st.dictionaries(sendable_text, any_argument, max_size=3),
    )
)
def test_random_arguments_give_a_clear_error_or_the_right_request_and_never_the_secret(
    arg_world: World, module_upstream: Upstream, args: dict[str, Any]
) -> None:
    module_upstream.clear()
    outcome = call_through_gateway(arg_world, "items", args)

    assert outcome.refused is None
    assert outcome.result is not None
    assert_no_leak(outcome.transcript.text(), TOKEN)
    check_egress(outcome, module_upstream, "/items/")
    seen = module_upstream.seen()
    event("error result" if outcome.result.is_error else "correct result")
    if outcome.result.is_error:
        assert text_of(outcome.result).strip()
        assert "Traceback" not in text_of(outcome.result)
        return
    [request] = seen
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert unquote(request.path) == "/items/" + args.get("item", "")
    if args.get("q"):
        assert dict(parse_qsl(urlsplit(request.target).query, keep_blank_values=True)) == {"q": args["q"]}
    if args.get("note"):
        assert request.header("X-Note") == args["note"].strip(" \t")
    body = json.loads(request.body)
    assert body.get("text") == args.get("text")
    assert body.get("data") == args.get("data")


@examples(80)
@given(p=any_argument, h=any_argument)
def test_arguments_of_any_json_type_in_path_query_and_header_stay_on_the_declared_path(
    arg_world: World, module_upstream: Upstream, p: Any, h: Any
) -> None:
    module_upstream.clear()
    outcome = call_through_gateway(arg_world, "anything", {"p": p, "h": h})

    assert outcome.refused is None and outcome.result is not None
    assert_no_leak(outcome.transcript.text(), TOKEN)
    check_egress(outcome, module_upstream, "/any/")
    event("error result" if outcome.result.is_error else "correct result")
    if not outcome.result.is_error:
        [request] = module_upstream.seen()
        assert request.header("X-Api-Key") == TOKEN
        if p is not None:
            assert unquote(request.path) == "/any/" + _expected_text(p)


@examples(30)
@given(
    name=sendable_text.filter(lambda s: s not in ("items", "anything")),
    args=st.dictionaries(sendable_text, sendable_values, max_size=3),
)
def test_an_unknown_tool_name_is_the_documented_mcp_error_and_sends_nothing(
    arg_world: World, module_upstream: Upstream, name: str, args: dict[str, Any]
) -> None:
    module_upstream.clear()
    outcome = call_through_gateway(arg_world, name, args)

    assert outcome.refused is not None
    assert outcome.refused.error.code == types.INVALID_PARAMS
    assert outcome.sent == [] and module_upstream.seen() == []
    assert_no_leak(outcome.transcript.text(), TOKEN)


# -- upstream bodies echoing the secret ------------------------------------------------------------


def _b64_at(secret: bytes, lead: bytes, tail: bytes, urlsafe: bool, pad: bool) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(lead + secret + tail).decode()
    return text if pad else text.rstrip("=")


ENCODERS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "url": lambda s: quote(s, safe=""),
    "url_plus": lambda s: quote_plus(s, safe=""),
    "url_path": quote,
    "url_lower": lambda s: re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(s, safe="")),
    "json": lambda s: json.dumps(s)[1:-1],
    "json_slash": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "json_go": lambda s: json.dumps(s)[1:-1].replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"),
    "hex": lambda s: s.encode().hex(),
    "HEX": lambda s: s.encode().hex().upper(),
}


def _b64_encoder(lead: bytes, urlsafe: bool, pad: bool) -> Callable[[str], str]:
    return lambda s: _b64_at(s.encode(), lead, b"tail!", urlsafe, pad)


for _lead in (b"", b"x", b"ab"):
    for _urlsafe in (False, True):
        for _pad in (False, True):
            ENCODERS[f"b64{len(_lead)}{'url' if _urlsafe else ''}{'=' if _pad else ''}"] = _b64_encoder(
                _lead, _urlsafe, _pad
            )
ENCODERS["b64_bearer"] = lambda s: base64.b64encode(b"Bearer " + s.encode()).decode()

SEP = st.sampled_from([" ", "\n", "=", ":", '"', "&", ";", ",", "<br>", "\t"])
recipes = st.fixed_dictionaries(
    {
        "parts": st.lists(
            st.tuples(st.text(max_size=12), SEP, st.sampled_from(sorted(ENCODERS))), min_size=1, max_size=6
        ),
        "status": st.sampled_from([200, 200, 201, 400, 404, 500, 503]),
        "content_type": st.sampled_from(
            ["text/plain", "application/json", "text/html", "application/octet-stream", ""]
        ),
        "charset": st.sampled_from([None, "utf-8", "latin-1", "utf-16", "cp1252", "no-such-charset"]),
        "encoding": st.sampled_from([None, "gzip", "deflate"]),
        "as_json": st.booleans(),
    }
)


def build_body(recipe: dict[str, Any], secret: str) -> tuple[int, dict[str, str], bytes]:
    pieces = [junk + sep + ENCODERS[enc](secret) + sep for junk, sep, enc in recipe["parts"]]
    text = json.dumps({"echo": pieces, "joined": "".join(pieces)}) if recipe["as_json"] else "".join(pieces)
    # a body is encoded in the charset its Content-Type declares (an undeclared UTF-16 body is out of scope:
    # it reaches the agent as mojibake with the secret's letters NUL-separated, which no redactor reads)
    charset = recipe["charset"] if recipe["content_type"] else None
    try:
        data = text.encode(charset or "utf-8")
    except (LookupError, UnicodeEncodeError):
        data = text.encode("utf-8", "surrogatepass")
    headers = {}
    if recipe["content_type"]:
        headers["Content-Type"] = recipe["content_type"] + (f"; charset={charset}" if charset else "")
    if recipe["encoding"] == "gzip":
        data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
    elif recipe["encoding"] == "deflate":
        data, headers["Content-Encoding"] = zlib.compress(data), "deflate"
    return recipe["status"], headers, data


class _EchoSecret(BaseHTTPRequestHandler):
    """Answers with a body made of the X-Token header in the encodings the `recipe` query parameter names."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        recipe = json.loads(dict(parse_qsl(urlsplit(self.path).query))["recipe"])
        status, headers, body = build_body(recipe, self.headers.get("X-Token", ""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def echo_worlds(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], World]]:
    import threading

    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoSecret)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    port = server.server_address[1]
    tools = {
        "echo_secret": http_tool(
            "echo_secret",
            f"http://127.0.0.1:{port}/echo",
            headers='{ X-Token = "{cred.token}" }',
            query='{ recipe = "{args.recipe}" }',
            properties=f"properties.recipe = {STR}",
        )
    }

    @contextmanager
    def make(database_url: str | None) -> Iterator[World]:
        world = World.create(tmp_path_factory.mktemp("hostile-bodies"), tools, database_url=database_url)
        world.add_credential("svc-main", "svc", {"token": TOKEN})
        world.allow("dev", "echo_secret")
        world.bind("dev", "echo_secret", "svc-main")
        try:
            yield world
        finally:
            world.close()

    try:
        with per_backend(request.config, make) as get:
            yield get
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def echo_world(echo_worlds: Callable[[str], World], backend: str) -> World:
    return echo_worlds(backend)


@examples(120)
@given(recipe=recipes)
def test_an_upstream_body_echoing_the_secret_in_random_encodings_comes_back_redacted(
    echo_world: World, recipe: dict[str, Any]
) -> None:
    outcome = call_through_gateway(echo_world, "echo_secret", {"recipe": json.dumps(recipe)})

    assert outcome.result is not None
    text = outcome.transcript.text()
    assert_no_leak(text, TOKEN)
    assert "[redacted:token]" in text
    # the agent's own view of the text, where a body's JSON-in-JSON ("stringified" JSON) escapes the secret twice
    seen_by_agent = text_of(outcome.result)
    assert_no_leak(seen_by_agent, TOKEN)
    assert json.dumps(json.dumps(TOKEN)[1:-1])[1:-1] not in seen_by_agent
