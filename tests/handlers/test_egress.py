"""Egress (issue 7): arguments crafted to move the request, upstream redirects across origins, and upstream
bodies that are huge, slow or compression bombs. Credentials reach only the declared origin; limits hold.

Two real local servers on 127.0.0.1: `home` (the declared origin, whose routes redirect, stall or inflate
as told) and `away` (another port: another origin). Every request the gateway's HTTP client sends, to any
host, is recorded through the client's own event hook, so a request to a host nobody listens on still counts.
"""

from __future__ import annotations

import base64
import functools
import gzip
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.support.gateway import (
    ACCOUNT_FIELDS,
    Seen,
    Transcript,
    Upstream,
    World,
    assert_no_leak,
    connect,
    http_tool,
    leaks,
    make_canary,
    per_backend,
    result_text,
    running_upstream,
)

pytestmark = pytest.mark.anyio

TOKEN = make_canary("EG", rich=True)
PASSWORD = make_canary("EP")
CAP = 100_000
STR = '{ type = "string" }'
BOTH = '{ Authorization = "Bearer {cred.token}", X-Api-Key = "{cred.token}" }'


def _stream_compress(compressor: Any, total: int) -> bytes:
    block = b"\0" * (1 << 20)
    out = [compressor.compress(block) for _ in range(total // len(block))]
    return b"".join([*out, compressor.flush()])


BOMB_SIZE = 200 * 1024 * 1024  # what the bombs inflate to: 2000 times the cap


@functools.cache
def bomb(kind: str) -> bytes:
    """About 200 kB that inflate to 200 MiB (`double`: 500 bytes, gzip of the gzip)."""
    if kind == "double":
        return gzip.compress(bomb("gzip"), 9)
    wbits = 31 if kind == "gzip" else 15
    return _stream_compress(zlib.compressobj(9, zlib.DEFLATED, wbits), BOMB_SIZE)


# -- the declared origin ---------------------------------------------------------------------------


class _Home(BaseHTTPRequestHandler):
    """Routes: /redirect/CODE?to=URL (CODE with Location URL), /chain/N?to=URL (N same-origin hops, then to URL),
    /huge (a body past the cap, with Content-Length), /endless (chunked, never ends), /slow (no answer for a
    while), /trickle (headers at once, then a byte every 50 ms), /bomb/gzip|deflate|double, anything else: 200."""

    protocol_version = "HTTP/1.1"
    server: _HomeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, self.path, tuple(self.headers.items()), body)
        self.server.record(seen)
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        route = [*parts.path.split("/")[1:], ""]
        try:
            if route[0] == "redirect":
                self._send(int(route[1]), b"", {"Location": query.get("to", "/")})
            elif route[0] == "chain":
                n = int(route[1])
                to = query.get("to", "/landed")
                self._send(302, b"", {"Location": f"/chain/{n - 1}?to={quote(to, safe='')}" if n > 0 else to})
            elif route[0] == "huge":
                self._send(200, b"h" * (CAP * 3))
            elif route[0] == "endless":
                self._endless()
            elif route[0] == "slow":
                self.server.stopping.wait(3)
                self._send(200, b"late")
            elif route[0] == "trickle":
                self._trickle()
            elif route[0] == "bomb":
                encoding = {"gzip": "gzip", "deflate": "deflate", "double": "gzip, gzip"}[route[1]]
                self._send(200, bomb(route[1]), {"Content-Encoding": encoding, "Content-Type": "text/plain"})
            else:
                self._send(200, b'{"ok": true}', {"Content-Type": "application/json"})
        except (ConnectionError, OSError):
            pass  # the gateway hung up (cap, timeout): that is the point

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"e" * 65536
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            self.wfile.write(frame)

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.server.stopping.wait(0.05):
            self.wfile.write(b"1\r\nt\r\n")
            self.wfile.flush()


class _HomeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Home)
        self.stopping = threading.Event()
        self.requests: list[Seen] = []
        self._lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self.requests)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def home_server() -> Iterator[_HomeServer]:
    server = _HomeServer()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def away_server() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


def declarations(home: _HomeServer, away: Upstream) -> dict[str, str]:
    acct = 'type = "acct"\n' + ACCOUNT_FIELDS
    redirect = {"query": '{ to = "{args.to}" }', "properties": f"properties.code = {STR}\nproperties.to = {STR}"}
    # the other origins these redirects may lead to (the default policy follows none of them)
    elsewhere = [
        away.base,
        f"http://localhost:{away.port}",
        f"http://[::ffff:127.0.0.1]:{away.port}",
        "http://evil.invalid",
        "https://evil.invalid",
        "http://127.0.0.2:1",
    ]
    policy = "redirects = [" + ", ".join(f'"{origin}"' for origin in elsewhere) + "]"
    return {
        "hop": http_tool("hop", home.url("/redirect/{args.code}"), headers=BOTH, extra=policy, **redirect),
        "hop_post": http_tool(
            "hop_post",
            home.url("/redirect/{args.code}"),
            method="POST",
            headers=BOTH,
            extra=f'json = {{ note = "plain" }}\n{policy}',
            **redirect,
        ),
        "hop_body": http_tool(
            "hop_body",
            home.url("/redirect/{args.code}"),
            method="POST",
            headers="{}",
            extra=f'json = {{ key = "{{cred.token}}" }}\n{policy}',
            **redirect,
        ),
        "hop_query": http_tool(
            "hop_query",
            home.url("/redirect/{args.code}"),
            headers="{}",
            query='{ to = "{args.to}", key = "{cred.token}" }',
            properties=redirect["properties"],
            extra=policy,
        ),
        "hop_basic": http_tool(
            "hop_basic", home.url("/redirect/{args.code}"), credential=acct, headers="{}", extra=policy, **redirect
        ),
        "chain": http_tool(
            "chain",
            home.url("/chain/{args.n}"),
            headers=BOTH,
            query='{ to = "{args.to}" }',
            properties=f"properties.n = {STR}\nproperties.to = {STR}",
            extra=policy,
        ),
        "items": http_tool(
            "items",
            home.url("/api/v1/items/{args.id}"),
            headers='{ X-Api-Key = "{cred.token}", X-Note = "{args.note}" }',
            query='{ q = "{args.q}" }',
            properties="\n".join(f"properties.{p} = {STR}" for p in ("id", "q", "note")),
        ),
        "twoseg": http_tool(
            "twoseg",
            home.url("/api/v1/{args.a}{args.b}/tail"),
            headers=BOTH,
            properties=f"properties.a = {STR}\nproperties.b = {STR}",
        ),
        "huge": http_tool("huge", home.url("/huge"), headers=BOTH, extra=f"max_response_bytes = {CAP}"),
        "endless": http_tool("endless", home.url("/endless"), headers=BOTH, extra=f"max_response_bytes = {CAP}"),
        "slow": http_tool("slow", home.url("/slow"), headers=BOTH, extra="timeout = 0.5"),
        "trickle": http_tool(
            "trickle", home.url("/trickle"), headers=BOTH, extra=f"timeout = 0.5\nmax_response_bytes = {CAP}"
        ),
        **{
            f"bomb_{kind}": http_tool(
                f"bomb_{kind}", home.url(f"/bomb/{kind}"), headers=BOTH, extra=f"max_response_bytes = {CAP}"
            )
            for kind in ("gzip", "deflate", "double")
        },
    }


@pytest.fixture(scope="module")
def worlds(
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    home_server: _HomeServer,
    away_server: Upstream,
) -> Iterator[Callable[[str], World]]:
    @contextmanager
    def make(database_url: str | None) -> Iterator[World]:
        tools = declarations(home_server, away_server)
        w = World.create(tmp_path_factory.mktemp("egress"), tools, database_url=database_url)
        w.add_credential("svc-main", "svc", {"token": TOKEN})
        w.add_credential("acct-main", "acct", {"username": "alice", "password": PASSWORD})
        assert all(w.catalog.tools[name].credential is not None for name in tools)
        w.allow_and_bind("dev", tools, {"svc": "svc-main", "acct": "acct-main"})
        yield w
        w.close()

    with per_backend(request.config, make) as get:
        yield get


@pytest.fixture
def world(worlds: Callable[[str], World], backend: str) -> World:
    return worlds(backend)


@dataclass(frozen=True)
class Sent:
    """A request as the gateway's client sent it, whatever the host."""

    url: httpx2.URL
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def origin(self) -> tuple[str, str, int | None]:
        return self.url.scheme, self.url.host, self.url.port

    def everything(self) -> str:
        head = "\n".join([str(self.url), *(f"{k}: {v}" for k, v in self.headers)])
        return head + "\n\n" + self.body.decode("latin-1")


@dataclass
class Egress:
    client: Client
    transcript: Transcript
    sent: list[Sent]
    home: _HomeServer
    away: Upstream

    async def call(self, tool: str, args: dict[str, Any] | None = None) -> types.CallToolResult:
        self.sent.clear()
        self.home.requests.clear()
        self.away.clear()
        with anyio.fail_after(20):
            return await self.transcript.call(self.client, tool, args or {})

    @property
    def home_origin(self) -> tuple[str, str, int]:
        return "http", "127.0.0.1", self.home.port

    def check_credentials_stayed_home(self, *secrets: str) -> None:
        """Nothing sent anywhere but the declared origin carries any form of a secret; nothing the agent got does."""
        for request in self.sent:
            if request.origin != self.home_origin:
                assert_no_leak(request.everything(), *secrets)
        for seen in self.away.seen():
            assert_no_leak(seen.everything(), *secrets)
        assert_no_leak(self.transcript.text(), *secrets)


@pytest.fixture
async def egress(world: World, home_server: _HomeServer, away_server: Upstream) -> AsyncIterator[Egress]:
    sent: list[Sent] = []

    async def record(request: httpx2.Request) -> None:
        sent.append(Sent(request.url, tuple(request.headers.items()), request.content))

    async with world.gateway() as gw, connect(gw, "dev") as client:
        gw.http.event_hooks["request"].append(record)
        yield Egress(client, Transcript(), sent, home_server, away_server)


# -- arguments crafted to move the request ---------------------------------------------------------

MOVERS = [
    "@evil.example",
    "user:pw@evil.example",
    "evil.example",
    "//evil.example/x",
    "http://evil.example/",
    "https://evil.example:443/x",
    "http://127.0.0.1:1/",
    "http://[::1]:1/",
    "http://2130706433/",
    "0x7f000001",
    "../",
    "../../",
    "..%2f..%2f",
    "..%2F",
    "%2e%2e/",
    "%2e%2e%2f",
    ".%2e/",
    "..\\..\\",
    "..;/",
    "/..",
    "a/../../b",
    "%2f%2fevil.example",
    "\\\\evil.example\\x",
    "#@evil.example",
    "?redirect=http://evil.example/",
    "x\r\nHost: evil.example",
    "x\r\nX-Evil: 1",
    "x\nX-Evil: 1",
    "x%0d%0aX-Evil:%201",
    "x\x00y",
    "\u2215\u2215evil.example",
    "\uff0e\uff0e\uff0f",
    "evil\u3002example",
    "{cred.token}",
    "%7Bcred.token%7D",
    "&key=stolen",
    "q=1&q=2",
    "x y",
    "\u202e",
    "http://evil.example@127.0.0.1/",
]


@pytest.mark.parametrize("position", ["id", "q", "note"])
async def test_arguments_cannot_move_the_request_off_the_declared_origin_and_path(
    egress: Egress, position: str
) -> None:
    outcomes = []
    for mover in MOVERS:
        result = await egress.call("items", {"id": "fixed", position: mover})
        outcomes.append((mover, result.is_error))

        for request in egress.sent:
            assert request.origin == egress.home_origin, (mover, str(request.url))
            assert request.url.raw_path.startswith(b"/api/v1/items/"), (mover, request.url.raw_path)
        for seen in egress.home.seen():
            assert seen.target.startswith("/api/v1/items/"), (mover, seen.target)
            assert seen.header("Host") == f"127.0.0.1:{egress.home.port}"
            assert seen.header("X-Evil") is None
            if position == "id":
                assert unquote(seen.path) == "/api/v1/items/" + mover
            if position == "q":
                assert dict(parse_qsl(urlsplit(seen.target).query, keep_blank_values=True)) == {"q": mover}
            if position == "note":
                assert seen.header("X-Note") == mover
        assert egress.away.seen() == []
        if result.is_error:
            assert "request refused" in result_text(result) or "failed" in result_text(result), result_text(result)
            assert egress.home.seen() == []
    egress.check_credentials_stayed_home(TOKEN)
    refused = {m for m, err in outcomes if err}
    line_breaks = {m for m in MOVERS if any(c in m for c in "\r\n\x00")}
    if position == "id":  # a path argument is percent-encoded whole: nothing to refuse
        assert refused == set()
    elif position == "q":  # a query value is encoded too, but CR/LF/NUL are refused anywhere outside the path
        assert refused == line_breaks
    else:  # a header value: CR/LF/NUL, and what HTTP headers cannot carry
        assert refused == line_breaks | {m for m in MOVERS if not m.isascii()}


@pytest.mark.parametrize(
    ("a", "b"), [(".", "."), ("..", "/"), ("", ".."), (".", ""), ("%2e", "%2e"), ("..", ".."), ("a", "/..")]
)
async def test_placeholders_side_by_side_cannot_form_a_dot_segment(egress: Egress, a: str, b: str) -> None:
    result = await egress.call("twoseg", {"a": a, "b": b})

    for request in egress.sent:
        assert request.origin == egress.home_origin
        assert request.url.raw_path.startswith(b"/api/v1/"), request.url.raw_path
        assert b"/tail" in request.url.raw_path, (result_text(result), request.url.raw_path)
    egress.check_credentials_stayed_home(TOKEN)


# -- redirects -------------------------------------------------------------------------------------

CODES = ["301", "302", "303", "307", "308"]


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("form", ["absolute", "scheme-relative", "userinfo", "localhost", "ipv6"])
async def test_a_redirect_to_another_origin_is_followed_without_any_credential(
    egress: Egress, code: str, form: str
) -> None:
    port = egress.away.port
    to = {
        "absolute": f"http://127.0.0.1:{port}/landed",
        "scheme-relative": f"//127.0.0.1:{port}/landed",
        "userinfo": f"http://127.0.0.1:{egress.home.port}@127.0.0.1:{port}/landed",
        "localhost": f"http://localhost:{port}/landed",
        "ipv6": f"http://[::ffff:127.0.0.1]:{port}/landed",
    }[form]

    for tool in ("hop", "hop_post", "hop_basic", "hop_query"):
        result = await egress.call(tool, {"code": code, "to": to})

        first = egress.home.seen()[0]
        secret = PASSWORD if tool == "hop_basic" else TOKEN
        assert leaks(first.everything(), secret)  # the declared origin did get it
        away_requests = [r for r in egress.sent if r.origin != egress.home_origin]
        assert len(away_requests) == 1, [str(r.url) for r in egress.sent]
        assert away_requests[0].url.path == "/landed"
        sent_headers = {k.lower(): v for k, v in away_requests[0].headers}
        assert not sent_headers.keys() & {"x-api-key", "cookie"}, tool
        if form == "userinfo":  # httpx2 makes Basic auth of the Location's own userinfo: no secret of ours
            userinfo = base64.b64encode(f"127.0.0.1:{egress.home.port}".encode()).decode()
            assert sent_headers.get("authorization") == f"Basic {userinfo}", tool
        else:
            assert "authorization" not in sent_headers, tool
        if form in ("absolute", "scheme-relative", "userinfo"):
            [landed] = egress.away.seen()
            assert landed.path == "/landed"
            assert not result.is_error, result_text(result)
        egress.check_credentials_stayed_home(TOKEN, PASSWORD)


@pytest.mark.parametrize("code", CODES)
async def test_a_redirect_that_would_resend_a_credential_bearing_body_elsewhere_is_not_followed(
    egress: Egress, code: str
) -> None:
    result = await egress.call("hop_body", {"code": code, "to": egress.away.url("/landed")})

    if code in ("307", "308"):
        assert result.is_error
        assert "not followed" in result_text(result)
        assert egress.away.seen() == []
    else:  # 301/302/303 of a POST become a GET without the body
        [landed] = egress.away.seen()
        assert landed.method == "GET" and landed.body == b""
    egress.check_credentials_stayed_home(TOKEN)


async def test_a_redirect_to_a_host_nobody_serves_sends_it_no_credential(egress: Egress) -> None:
    for to in ("http://evil.invalid/x", "https://evil.invalid/x", "//evil.invalid/x", "http://127.0.0.2:1/"):
        result = await egress.call("hop", {"code": "302", "to": to})

        assert result.is_error, to
        elsewhere = [r for r in egress.sent if r.origin != egress.home_origin]
        assert len(elsewhere) == 1
        assert elsewhere[0].url.host in ("evil.invalid", "127.0.0.2")
        egress.check_credentials_stayed_home(TOKEN)


async def test_a_same_origin_redirect_chain_keeps_the_credential_until_it_leaves(egress: Egress) -> None:
    result = await egress.call("chain", {"n": "3", "to": egress.away.url("/landed")})

    hops = egress.home.seen()
    assert [h.path for h in hops] == ["/chain/3", "/chain/2", "/chain/1", "/chain/0"]
    assert all(h.header("Authorization") == f"Bearer {TOKEN}" for h in hops)
    [landed] = egress.away.seen()
    assert landed.header("Authorization") is None and landed.header("X-Api-Key") is None
    assert not result.is_error
    egress.check_credentials_stayed_home(TOKEN)


async def test_a_chain_that_leaves_and_comes_back_does_not_get_the_headers_back(egress: Egress) -> None:
    back = egress.home.url("/landed-home")
    egress.away.redirects["/bounce"] = back
    try:
        result = await egress.call("hop", {"code": "307", "to": egress.away.url("/bounce")})
    finally:
        del egress.away.redirects["/bounce"]

    first, returned = egress.home.seen()
    assert first.header("Authorization") == f"Bearer {TOKEN}"
    assert returned.path == "/landed-home"
    assert returned.header("Authorization") is None and returned.header("X-Api-Key") is None
    assert not result.is_error
    egress.check_credentials_stayed_home(TOKEN)


async def test_a_redirect_chain_longer_than_the_limit_is_an_error(egress: Egress) -> None:
    result = await egress.call("chain", {"n": "20", "to": "/landed"})

    assert result.is_error
    assert "redirected more than" in result_text(result)
    assert len(egress.home.seen()) == 6
    egress.check_credentials_stayed_home(TOKEN)


async def test_a_redirect_loop_ends_with_an_error(egress: Egress) -> None:
    loop = "/redirect/307?to=" + quote("/redirect/307?to=/x", safe="")
    result = await egress.call("hop", {"code": "307", "to": loop})

    assert result.is_error or egress.home.seen()[-1].path == "/x"
    assert len(egress.home.seen()) <= 6


# -- bodies: huge, slow, bombs ---------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["huge", "endless"])
async def test_a_body_over_the_cap_is_an_error_and_the_connection_is_dropped(egress: Egress, tool: str) -> None:
    started = time.monotonic()
    result = await egress.call(tool)

    assert result.is_error
    assert f"larger than {CAP} bytes" in result_text(result)
    assert "hhhh" not in result_text(result) and "eeee" not in result_text(result)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("tool", ["slow", "trickle"])
async def test_an_upstream_slower_than_the_timeout_is_an_error_in_bounded_time(egress: Egress, tool: str) -> None:
    started = time.monotonic()
    result = await egress.call(tool)
    elapsed = time.monotonic() - started

    assert result.is_error
    assert "did not answer within 0.5 s" in result_text(result)
    assert elapsed < 3, elapsed
    after = await egress.call("items", {"id": "ok"})
    assert not after.is_error


@pytest.mark.parametrize("kind", ["gzip", "deflate", "double"])
async def test_a_compression_bomb_hits_the_size_cap_with_bounded_memory(egress: Egress, kind: str) -> None:
    assert len(bomb(kind)) < BOMB_SIZE / 500  # made before the clock starts
    tracemalloc.start()
    try:
        started = time.monotonic()
        result = await egress.call(f"bomb_{kind}")
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.is_error
    assert f"larger than {CAP} bytes" in result_text(result)
    assert peak < 16 * 1024 * 1024, peak  # the bomb inflates to 200 MiB
    assert elapsed < 5, elapsed


async def test_the_gateway_serves_on_after_every_limit(egress: Egress, tmp_path: Path) -> None:
    for tool in ("huge", "endless", "bomb_gzip", "slow"):
        assert (await egress.call(tool)).is_error
    result = await egress.call("items", {"id": "still-fine"})

    assert not result.is_error
    [seen] = egress.home.seen()
    assert seen.header("X-Api-Key") == TOKEN
    egress.check_credentials_stayed_home(TOKEN)
