"""Real parts for the gateway tests: a recording HTTP upstream, a credgate "world", an MCP client, leak scans.

Nothing here is a mock: the upstream is a `ThreadingHTTPServer` on 127.0.0.1, the store is a SQLite file
under `tmp_path` (or the test's PostgreSQL schema), the declarations are TOML files, and the client is the MCP
SDK's own `Client`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus, urlsplit

import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from mcp_credgate import admin
from mcp_credgate.caller import Caller
from mcp_credgate.config import Settings
from mcp_credgate.crypto import MasterKey
from mcp_credgate.declarations import Catalog, load_catalog
from mcp_credgate.gateway import Gateway
from mcp_credgate.server import build_server
from mcp_credgate.store import AuditRow, Store, store_exists
from tests.support.postgres import POSTGRES_URL, database_url_for, drop_schema
from tests.support.raw_db import raw_db

PUBLIC_URL = "http://127.0.0.1:8765"

# -- canaries and leak scanning ------------------------------------------------------------------


def make_canary(tag: str, *, rich: bool = False) -> str:
    """A unique secret value. `rich` adds characters that URL, JSON and base64 encodings all change."""
    core = f"cnry{tag}{secrets.token_hex(8)}"
    return core + '"q\\s/p+e=a?&z~' if rich else core


def secret_forms(secret: str) -> dict[str, str]:
    """The encodings of a secret an upstream may echo (what the upstream test route sends back)."""
    raw = secret.encode()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode()

    return {
        "raw": secret,
        "url": quote(secret, safe=""),
        "url_plus": quote_plus(secret, safe=""),
        "url_path": quote(secret),
        "url_lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(secret, safe="")),
        "json": json.dumps({"token": secret}),
        "json_slash": json.dumps({"token": secret}).replace("/", "\\/"),  # as PHP's json_encode writes it
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "b64": b64(raw),
        "b64_unpadded": b64(raw).rstrip("="),
        "b64url": b64url(raw),
        "b64url_unpadded": b64url(raw).rstrip("="),
        "b64_bearer": b64(b"Bearer " + raw),
        "b64_prefix1": b64(b"x" + raw + b"tail"),
        "b64_prefix2": b64(b"ab" + raw + b"t"),
        "b64url_prefix1_unpadded": b64url(b"x" + raw).rstrip("="),
    }


_B64_RUN = re.compile(r"[A-Za-z0-9+/_\-]{6,}={0,2}")
_JS_ESCAPE = re.compile(r"\\(?:[uU]([0-9a-fA-F]{4})|x([0-9a-fA-F]{2})|(.))", re.DOTALL)


def _base64_hides(text: str, needle: bytes) -> bool:
    """Does any base64-looking run of `text` (either alphabet, any alignment, line breaks ignored) decode to
    bytes containing needle?"""
    for run in _B64_RUN.findall(re.sub(r"\r?\n", "", text)):
        normal = run.rstrip("=").replace("-", "+").replace("_", "/")
        for start in range(4):
            chunk = normal[start:]
            if len(chunk) % 4 == 1:
                chunk = chunk[:-1]
            chunk += "=" * (-len(chunk) % 4)
            try:
                decoded = base64.b64decode(chunk)
            except ValueError:
                continue
            if needle in decoded:
                return True
    return False


def _unescape_js(text: str) -> str:
    """JSON and JavaScript string escapes, surrogate pairs joined."""

    def one(m: re.Match[str]) -> str:
        if m.group(1):
            return chr(int(m.group(1), 16))
        if m.group(2):
            return chr(int(m.group(2), 16))
        return {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}.get(m.group(3), m.group(3))

    decoded = _JS_ESCAPE.sub(one, text)
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16", errors="replace")


def _unquote_bytes(text: str) -> str:
    """Percent-decoding to bytes, read as Latin-1 where they are not UTF-8."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return unquote(text, encoding="latin-1")


_DECODINGS: dict[str, Callable[[str], str]] = {
    "url": _unquote_bytes,
    "url+": unquote_plus,
    "html": html.unescape,
    "js": _unescape_js,
}


def _decodings(text: str) -> dict[str, str]:
    """The text, each decoding of it and each decoding of those (compositions of two), by name."""
    found = {"": text}
    for name, decode in _DECODINGS.items():
        once = decode(text)
        found[name] = once
        for name2, decode2 in _DECODINGS.items():
            found[f"{name}+{name2}"] = decode2(once)
    return found


def leaks(text: str, secret: str) -> list[str]:
    """The forms in which `secret` can still be read from `text` (empty: no leak).

    Decodes instead of re-encoding (URL, JSON/JavaScript escapes, HTML references, twice over; base64 at any
    alignment and line wrapping; hex; the case of its letters for secrets of 8 characters or more), so it does
    not share the product's own list of patterns.
    """
    found = []
    needle = secret.encode()
    for how, decoded in _decodings(text).items():
        prefix = f"{how}: " if how else ""
        if secret in decoded:
            found.append(prefix + "raw")
        elif len(secret) >= 8 and secret.isascii() and secret.lower() in decoded.lower():
            found.append(prefix + "case changed")
        if len(secret) >= 4 and needle.hex() in decoded.lower():
            found.append(prefix + "hex")
        if len(secret) >= 4 and _base64_hides(decoded, needle):
            found.append(prefix + "base64")
    return found


DIGESTS = ("md5", "sha1", "sha256", "sha512")
DIGEST_PIECE = 6  # a "short hash" of fewer characters says too little to crack; this many is what people show


def derived_leaks(text: str, secret: str) -> list[str]:
    """`leaks`, and what a handler may have computed from `secret`: any DIGEST_PIECE characters of its MD5,
    SHA-1, SHA-256 or SHA-512 hex digest (a prefix, a suffix, the whole), or the first or last bytes of the
    digest in base64 (empty: none of them)."""
    found = leaks(text, secret)
    lowered = text.lower()
    for name in DIGESTS:
        digest = hashlib.new(name, secret.encode()).digest()
        hexed = digest.hex()
        if any(hexed[i : i + DIGEST_PIECE] in lowered for i in range(len(hexed) - DIGEST_PIECE + 1)):
            found.append(f"{name} hex")
        if _base64_hides(text, digest[:DIGEST_PIECE]) or _base64_hides(text, digest[-DIGEST_PIECE:]):
            found.append(f"{name} base64")
    return found


def assert_no_leak(text: str, *secret_values: str) -> None:
    for value in secret_values:
        found = leaks(text, value)
        assert not found, f"secret {value[:8]}… leaked as {found}"


def assert_no_leak_at_rest(settings: Settings, *secret_values: str) -> None:
    """The store at rest: every file in the data folder (database, -wal, -shm, backups and replaced stores
    kept there) byte for byte, and every row of every table of the store (SQLite or PostgreSQL), hold no
    secret in any form."""
    for path in sorted(settings.home.rglob("*")):
        if path.is_file():
            for value in secret_values:
                found = leaks(path.read_bytes().decode("latin-1"), value)
                assert not found, f"secret {value[:8]}… found in {path.name} as {found}"
    if store_exists(settings):
        with raw_db(settings) as db:
            for table, rows in db.dump().items():
                for value in secret_values:
                    found = leaks(repr(rows), value)
                    assert not found, f"secret {value[:8]}… found in the table {table} as {found}"


def store_env(settings: Settings | None = None) -> dict[str, str]:
    """What points a credgate child process at the same store: CREDGATE_DATABASE_URL of `settings` (by default
    this test's, which the `backend` fixture set) on PostgreSQL, nothing on SQLite."""
    url = settings.database_url if settings is not None else os.environ.get("CREDGATE_DATABASE_URL")
    return {"CREDGATE_DATABASE_URL": url} if url else {}


def credgate_env(settings: Settings | None = None) -> dict[str, str]:
    """The environment of a credgate child process: ours without CREDGATE_* settings, but on the same store
    (`store_env`)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CREDGATE_")}, **store_env(settings)}


def rotate_master_key(
    store: Store, settings: Settings, *, key_from_env: bool = False, env: Mapping[str, str] | None = None
) -> MasterKey:
    """What `credgate key rotate` does. A shared (PostgreSQL) store rotates only to a key made beforehand and
    given to every process that serves from it: unless a rotation is under way already (then it is finished),
    the key is made first (`credgate key new`), and the rotation runs on a store opened with it, as the next
    `credgate key rotate` process would (`env`: that process's environment). `store` sees the new key at its
    next read, as a replica does."""
    if settings.database_url is None:
        return store.rotate_master_key(settings, key_from_env=key_from_env)
    with raw_db(settings) as db:
        under_way = db.execute("SELECT 1 FROM master_keys WHERE state = 'pending'").fetchone() is not None
    if not under_way:
        store.stage_master_key(settings)
    with Store.open(settings, env={} if env is None else env) as admin_store:
        return admin_store.rotate_master_key(settings, key_from_env=key_from_env)


T = TypeVar("T")


@contextmanager
def per_backend(
    config: pytest.Config, make: Callable[[str | None], AbstractContextManager[T]]
) -> Iterator[Callable[[str], T]]:
    """For a module-scoped fixture: `get(backend)` gives the module's installation on a backend, made (by
    `make(database_url)`) for the first test on it and kept to the end. On PostgreSQL it gets a schema of the
    module's own (a test's schema lives only as long as the test), dropped after `make`'s context has ended;
    on SQLite `make` gets None."""
    made: dict[str, T] = {}
    with ExitStack() as stack:

        def get(backend: str) -> T:
            if backend not in made:
                database_url = None
                if backend == "postgresql":
                    server = config.stash[POSTGRES_URL]
                    assert server is not None
                    database_url, schema = database_url_for(server)
                    stack.callback(drop_schema, server, schema)
                made[backend] = stack.enter_context(make(database_url))
            return made[backend]

        yield get


# -- the recording upstream ----------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request as the upstream received it."""

    method: str
    target: str  # the raw request target: path and query exactly as sent
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def everything(self) -> str:
        """The whole request as text (for "the secret is nowhere in it")."""
        lines = [f"{self.method} {self.target}", *(f"{k}: {v}" for k, v in self.headers)]
        return "\n".join(lines) + "\n\n" + self.body.decode("latin-1")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive + a separate body write would wait for a delayed ACK
    server: _RecordingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # the test output stays quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, self.path, tuple(self.headers.items()), body)
        owner = self.server.owner
        owner.record(seen)
        path = seen.path
        if path in owner.redirects:
            self._send(302, b"", "text/plain", {"Location": owner.redirects[path]})
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), self._echo(seen), "application/json")
        elif path == "/slow":
            owner.stopping.wait(owner.slow_seconds)
            self._send(200, self._echo(seen), "application/json")
        elif path == "/big":
            self._send(200, b"x" * 100_000, "text/plain")
        elif path == "/html-error":
            token = seen.header("X-Token") or ""
            page = f"<html><body><p>Bad key {html.escape(token)}</p><a href='/?k={quote(token, safe='')}'>retry</a>"
            numeric = "".join(f"&#{ord(c)};" for c in token)
            self._send(500, f"{page}<pre>{numeric}</pre></body></html>".encode(), "text/html; charset=utf-8")
        elif path == "/forms":
            token = seen.header("X-Token") or ""
            text = "".join(f"{k}={v}\n" for k, v in secret_forms(token).items())
            self._send(200, text.encode(), "text/plain; charset=utf-8")
        else:
            self._send(200, self._echo(seen), "application/json")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    @staticmethod
    def _echo(seen: Seen) -> bytes:
        data = {
            "method": seen.method,
            "target": seen.target,
            "path": seen.path,
            "query": seen.query,
            "headers": {k.lower(): v for k, v in seen.headers},
            "body": seen.body.decode("utf-8", errors="replace"),
        }
        return json.dumps(data).encode()

    def _send(self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class _RecordingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # concurrent calls open many connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up (timeout, size cap)
            super().handle_error(request, client_address)

    owner: Upstream


class Upstream:
    """A local HTTP server that records every request and answers by path:

    /status/N  status N, echo body     /slow   waits `slow_seconds`, then echoes
    /big       100 kB of text          /forms  encodings of the X-Token header, one `name=value` a line
    /html-error  status 500, an HTML page showing the X-Token header escaped (named, numeric references, URL)
    a path in `redirects`  302 to it   anything else: 200 with a JSON echo of method, target, query,
                                       headers and body
    """

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.redirects: dict[str, str] = {}
        self.slow_seconds = 5.0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = _RecordingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self.requests)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self) -> Upstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def running_upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    try:
        yield server
    finally:
        server.stop()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- tool declarations ---------------------------------------------------------------------------

TOKEN_FIELDS = 'fields = [ { name = "token", kind = "token" } ]'
ACCOUNT_FIELDS = 'fields = [ { name = "username", kind = "username" }, { name = "password", kind = "password" } ]'


def http_tool(
    name: str,
    url: str,
    *,
    credential: str | None = 'type = "svc"\n' + TOKEN_FIELDS,
    headers: str = '{ Authorization = "Bearer {cred.token}" }',
    query: str = "{}",
    properties: str = "",
    method: str = "GET",
    extra: str = "",
) -> str:
    """The TOML of an http tool. `properties`: lines like `properties.x = { type = "string" }`."""
    cred = f"[credential]\n{credential}\n" if credential else ""
    return (
        f'name = "{name}"\ndescription = "Test tool {name}."\n'
        f'[input_schema]\ntype = "object"\n{properties}\n{cred}'
        f'[handler]\nkind = "http"\nmethod = "{method}"\nurl = "{url}"\n'
        f"headers = {headers}\nquery = {query}\n{extra}\n"
    )


def python_tool(
    name: str, entrypoint: str, *, credential: str | None = None, extra: str = "", properties: str = ""
) -> str:
    cred = f"[credential]\n{credential}\n" if credential else ""
    return (
        f'name = "{name}"\ndescription = "Test tool {name}."\n'
        f'[input_schema]\ntype = "object"\n{properties}\n{cred}'
        f'[handler]\nkind = "python"\nentrypoint = "{entrypoint}"\n{extra}\n'
    )


@contextmanager
def listening_process(
    args: Sequence[str], port: int, log: Path, *, env: Mapping[str, str] | None = None, start_timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process (its output in `log`), once it listens on 127.0.0.1:`port`; stopped at the end."""
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"{args[1:2]} did not start listening"
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- a credgate installation ---------------------------------------------------------------------


def teed_serve(world: World, stdout_copy: Path, env: Mapping[str, str], *options: str) -> StdioServerParameters:
    """`credgate serve OPTIONS` on the world, as a stdio server for a client: its stdout also goes to
    `stdout_copy` (every byte the client received, for the leak scans); it runs in stdout_copy's folder."""
    tee = Path(__file__).resolve().parent / "stdout_tee.py"  # beside this module
    return StdioServerParameters(
        command=sys.executable,
        args=[str(tee), str(stdout_copy), sys.executable, "-m", "mcp_credgate", "serve", *options, *world.cli_paths],
        env={"PYTHONUNBUFFERED": "1", **env},
        cwd=stdout_copy.parent,
    )


@dataclass
class World:
    """A data folder, its tools.d and an admin's own store connection (as the CLI would have)."""

    settings: Settings
    catalog: Catalog
    store: Store
    groups: set[str] = field(default_factory=set)

    @classmethod
    def create(
        cls, root: Path, tools: Mapping[str, str], files: Mapping[str, str] = {}, *, database_url: str | None = None
    ) -> World:
        """The store is SQLite in root/home, or on PostgreSQL the schema of `database_url` (by default this
        test's)."""
        tools_dir = root / "tools.d"
        tools_dir.mkdir(parents=True)
        for name, text in tools.items():
            (tools_dir / f"{name}.toml").write_text(text, encoding="utf-8")
        for filename, text in files.items():
            (tools_dir / filename).write_text(text, encoding="utf-8")
        settings = Settings(
            home=root / "home",
            tools_dirs=(tools_dir,),
            public_url=PUBLIC_URL,
            database_url=database_url or os.environ.get("CREDGATE_DATABASE_URL"),
        )
        catalog = load_catalog(settings.tools_dirs)
        assert not catalog.problems, catalog.problems
        store, _ = Store.initialise(settings, env={})
        return cls(settings, catalog, store)

    @property
    def cli_paths(self) -> list[str]:
        """The options that point a `credgate` command at this world's data folder and tools.d."""
        return ["--home", str(self.settings.home), "--tools-dir", str(self.tools_dir)]

    @property
    def tools_dir(self) -> Path:
        return self.settings.tools_dirs[0]

    def close(self) -> None:
        self.store.close()

    def add_credential(self, name: str, type_name: str, values: Mapping[str, str]) -> None:
        admin.add_credential(self.store, self.catalog.types[type_name], name, values)

    def allow(self, group: str, *tools: str) -> None:
        if group not in self.groups and not self.store.group_exists(group):
            self.store.add_group(group)
        self.groups.add(group)
        admin.allow(self.store, self.catalog, group, tools)

    def bind(self, group: str, tool: str, credential: str) -> None:
        admin.bind(self.store, self.catalog, group, tool, credential)

    def allow_and_bind(self, group: str, tools: Iterable[str], credentials: Mapping[str, str]) -> None:
        """Allow `tools` for `group` and bind each one that needs a credential to the one `credentials` names
        for its credential type (a type it does not name is an error)."""
        names = list(tools)
        self.allow(group, *names)
        for name in names:
            spec = self.catalog.tools[name].credential
            if spec is not None:
                self.bind(group, name, credentials[spec.type])

    def audit(self, limit: int = 10_000) -> list[AuditRow]:
        return self.store.read_audit(limit=limit)

    @asynccontextmanager
    async def gateway(self) -> AsyncIterator[Gateway]:
        """A Gateway as `credgate serve` opens it; closing it flushes the audit queue."""
        gw = Gateway.open(self.settings, self.catalog)
        try:
            yield gw
        finally:
            await gw.aclose()


@asynccontextmanager
async def connect(
    gateway: Gateway, group: str, *, agent: str | None = None, user: str | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    """The SDK's in-memory client against the gateway's MCP server, calling as `group` (acting for `user`)."""
    caller = Caller(group, agent, user)
    server = build_server(gateway, lambda ctx: caller)
    async with Client(server, mode=mode) as client:
        yield client


@dataclass
class Transcript:
    """Every byte the client received, as JSON (results, listings, error messages)."""

    chunks: list[str] = field(default_factory=list)

    async def call(self, client: Client, name: str, args: Mapping[str, Any] | None = None) -> types.CallToolResult:
        result = await client.call_tool(name, dict(args or {}))
        self.chunks.append(result.model_dump_json())
        return result

    async def call_refused(self, client: Client, name: str, args: Mapping[str, Any] | None = None) -> MCPError:
        """A call answered with a JSON-RPC error (raises AssertionError if it was answered with a result)."""
        try:
            result = await client.call_tool(name, dict(args or {}))
        except MCPError as exc:
            self.chunks.append(exc.error.model_dump_json())
            return exc
        raise AssertionError(f"expected a JSON-RPC error, got {result!r}")

    async def list_tools(self, client: Client) -> types.ListToolsResult:
        listing = await client.list_tools()
        self.chunks.append(listing.model_dump_json())
        return listing

    def text(self) -> str:
        return "\n".join(self.chunks)


def result_text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def load_json(result: types.CallToolResult) -> Any:
    return json.loads(result_text(result))
