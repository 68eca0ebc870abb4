"""The forward proxy of egress injection (issue 27): an upstream holds placeholders, and the real secrets go on the
wire here, toward the hosts its declaration names and nowhere else.

`EgressProxy(rules, authority)` listens on 127.0.0.1 (an ephemeral port, `proxy.url`), or on a Unix socket
(`unix_socket`: what a sandbox's forwarder reaches, `sandbox.EGRESS_DIR`), and speaks HTTP/1.1 (h11):

- `CONNECT host:port` to a declared host: answered 200, then the proxy ends the client's TLS itself with a leaf the
  gateway's `Authority` signs for that host, reads the HTTP/1.1 requests inside (origin-form targets only: a URL
  naming a host of its own is refused with 400), swaps placeholders for real values
  (`egress_swap`: headers, query, named JSON body fields), sends each to the real `https://host:port` with a normally
  verifying TLS client, and passes the response back with every real value replaced by its placeholder again
  (an echoed Basic token included); an answer that still holds a real value in a form redaction finds but no
  placeholder fits (inside a base64 blob, in a header's name) is refused with 502 rather than passed on;
- `GET http://host:port/...` (absolute form) to a host:port declared for plain http (`rules.plain_hosts`): the same
  swaps, over plain HTTP; a placeholder in a plain request to a host declared for TLS only is refused like one
  toward an undeclared host (it would cross the network in clear);
- toward any other host, a request or a CONNECT that holds a placeholder anywhere the proxy can see (the CONNECT
  target and headers; a plain request's target, headers and body) is refused with 403 and reported as a
  `blocked_placeholder` event (naming the place, never the value); anything else follows `rules.other`: `deny`
  (403, a `denied` event) or `tunnel` — a plain request forwarded as it came, a CONNECT relayed as raw TCP.
  **The proxy cannot see inside a tunnel**: a placeholder sent through one is not found (the sandbox that makes
  the proxy an upstream's only way out, and `other = "deny"`, are what close that door).

Every request forwarded says `Host:` the host it is sent to, whatever the client's said (a shared front, a CDN,
would route by it).

Bodies are read whole, up to `MAX_BODY` (16 MB) each way, so that the swaps see all of them and Content-Length
is right after them; a larger body is answered 413 (request) or 502 (response). The proxy asks upstream APIs
for `Accept-Encoding: identity`, and answers 502 to a response that comes compressed anyway: the real value could
not be found in it. Connections to the APIs are kept alive and reused (at most `KEPT_PER_HOST` idle ones per host,
for `KEPT_SECONDS`); a request on a kept connection that the API had closed meanwhile is sent once more on a new
one, as HTTP clients do (nothing of it was read).

One proxy holds at most `MAX_CONNECTIONS` client connections at once (each is a file descriptor of the gateway's
process); one more is closed as soon as it is accepted. It reads and answers at most `MAX_IN_FLIGHT` requests at
once (a request's body is read only in its turn): what one upstream can make the gateway hold is bounded by
`MAX_IN_FLIGHT` times 2 times `MAX_BODY` (256 MB), not by its connections.

Nothing secret is logged, raised or shown in a repr: failures are logged by their kind only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import h11

from .egress_ca import Authority
from .egress_swap import EgressRules, placeholder_field, restore, swap_body, swap_header, swap_target
from .redact import Redactor

__all__ = [
    "KEPT_PER_HOST",
    "KEPT_SECONDS",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_IN_FLIGHT",
    "EgressEvent",
    "EgressProxy",
]

logger = logging.getLogger(__name__)

MAX_BODY = 16 * 1024 * 1024  # a request or response body read whole for the swaps, at most this
MAX_CONNECTIONS = 128  # client connections one proxy (one upstream) holds at once; more are closed at once
MAX_IN_FLIGHT = 8  # requests one proxy reads and answers at once (each body up to MAX_BODY, each way)
_READ = 65536
_TIMEOUT = 60.0  # connecting to an upstream API and reading its whole answer
_T = TypeVar("_T")
_CHECKED_IN_LOOP = 16384  # a body larger than this is parsed or checked in a thread (worst case 8 ms here)
KEPT_PER_HOST = 8  # idle connections kept per (host, port, tls)
KEPT_SECONDS = 30.0  # an idle connection older than this is closed rather than reused
# headers of one hop, never passed on (RFC 9110 §7.6.1), with those the proxy sets itself
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)


@dataclass(frozen=True)
class EgressEvent:
    """What the proxy refused: `blocked_placeholder` (a placeholder toward a host not declared; `field` says where:
    `connect target`, `request target`, `header <name>`, `body`) or `denied` (a host not declared, with
    `other = "deny"`). Never holds a value; a placeholder in the host name is shown as `[placeholder]`."""

    kind: Literal["blocked_placeholder", "denied"]
    host: str
    field: str | None = None


_Reply = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body


@dataclass
class _Kept:
    """A connection to an API, kept for the next request to it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


class _ClosedEarly(Exception):
    """The API's side of a connection ended before any answer came."""


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class EgressProxy:
    """The forward proxy of one upstream (see the module). `async with EgressProxy(...) as proxy:` listens until
    the block ends; `proxy.url` is what the upstream's `HTTPS_PROXY` is set to.

    `upstream_ca`: a CA bundle the real APIs' certificates are verified with (tests); the system's trust if None.
    `resolve`: host → (address, port) to connect to instead of the host's own (tests: a local API under its own
    host name); the TLS name checked is still the host's."""

    def __init__(
        self,
        rules: EgressRules,
        authority: Authority,
        *,
        on_event: Callable[[EgressEvent], None] | None = None,
        upstream_ca: str | os.PathLike[str] | None = None,
        resolve: Mapping[str, tuple[str, int]] | None = None,
        unix_socket: Path | None = None,
        private_dir: Path | None = None,
    ) -> None:
        self._rules = rules
        # the last check of an answer: a real value still in it, in any form redaction knows (base64 at any
        # alignment, escapes...), that the placeholder could not be put back in
        self._redactor = Redactor({f"egress {n}": real for n, real in enumerate(rules.swaps.values())})
        self._authority = authority
        self._on_event = on_event
        self._resolve = dict(resolve or {})
        self._client_context = ssl.create_default_context(cafile=upstream_ca)
        self._client_context.set_alpn_protocols(["http/1.1"])
        self._contexts: dict[str, tuple[bytes, ssl.SSLContext]] = {}
        self._files = itertools.count()
        self._folder: Path | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._port = 0
        self._kept: dict[tuple[str, int, bool], list[_Kept]] = {}
        self._unix_socket = unix_socket
        self._private_dir = private_dir  # where the leaves' keys folder is made (None: the system's temporary one)
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    def __repr__(self) -> str:
        return f"EgressProxy(url={self.url!r}, rules={self._rules!r})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def __aenter__(self) -> EgressProxy:
        # the leaves' keys pass through files (ssl's load_cert_chain reads nothing else): a folder only we can
        # read (mkdtemp: 0700), each file 0600 and removed as soon as it is loaded, the folder removed on close
        self._folder = Path(tempfile.mkdtemp(prefix="credgate-egress-", dir=self._private_dir))
        if self._unix_socket is not None:
            self._server = await asyncio.start_unix_server(self._accept, self._unix_socket)
            self._unix_socket.chmod(0o600)  # the gateway's account (and the sandbox mapped onto it) only
            return self
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for kept in self._kept.values():
            for connection in kept:
                connection.close()
        self._kept.clear()
        if self._server is not None:
            await self._server.wait_closed()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        if self._unix_socket is not None:
            self._unix_socket.unlink(missing_ok=True)

    # -- one client connection ------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:  # each is a descriptor of the gateway's: one upstream's share
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._connection(reader, writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception as error:  # never its message: it could quote a request
            logger.warning("egress proxy: a client connection failed (%s)", type(error).__name__)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)

        async def answer(request: h11.Request, body: bytes) -> _Reply | None:
            if request.method == b"CONNECT":
                await self._connect(conn, reader, writer, request)
                return None  # the CONNECT has the connection from here on
            return await self._plain(request, body)

        await _requests(conn, reader, writer, answer, self._in_flight)

    async def _plain(self, request: h11.Request, body: bytes) -> _Reply:
        url = urlsplit(request.target.decode("latin-1"))
        if url.scheme != "http" or not url.hostname:
            raise _Refused(400, "a proxy takes absolute http:// targets and CONNECT")
        host, port = url.hostname, url.port or 80
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        if self._rules.declares_plain(host, port):
            return await self._forward(host, port, tls=False, request=request, target=target.encode(), body=body)
        where = await _off_the_loop_if_large(
            len(body), placeholder_field, self._rules, request.target, request.headers, body
        )
        self._refuse_undeclared(host, where)
        return await self._forward(
            host, port, tls=False, request=request, target=target.encode(), body=body, swap=False
        )

    async def _connect(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: h11.Request
    ) -> None:
        authority = request.target.decode("latin-1")
        host, _, port_text = authority.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port_text.isdigit():
            raise _Refused(400, "CONNECT takes host:port")
        port = int(port_text)
        if not self._rules.declares(host, port):
            where = placeholder_field(self._rules, request.target, request.headers, b"")
            self._refuse_undeclared(host, "connect target" if where == "request target" else where)
            await self._tunnel(conn, reader, writer, host, port)
            return
        context = self._server_context(host)
        await _send(conn, writer, 200, [], b"")
        leftover, _ = conn.trailing_data
        if leftover:  # the client spoke TLS before our answer: not something a client does
            return
        await writer.start_tls(context)

        async def forward(inside: h11.Request, body: bytes) -> _Reply:
            if not inside.target.startswith(b"/") and inside.target != b"*":
                # an absolute target names a host of its own, which the API's server would go by
                raise _Refused(400, "a request inside a CONNECT takes a path, not a URL")
            return await self._forward(host, port, tls=True, request=inside, target=inside.target, body=body)

        await _requests(h11.Connection(h11.SERVER), reader, writer, forward, self._in_flight)

    async def _tunnel(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        address, to_port = self._resolve.get(host.lower(), (host, port))
        try:
            far_reader, far_writer = await asyncio.wait_for(asyncio.open_connection(address, to_port), _TIMEOUT)
        except (OSError, TimeoutError):
            await _answer(conn, writer, 502, "the host could not be reached")
            return
        try:
            await _send(conn, writer, 200, [], b"")
            leftover, _ = conn.trailing_data
            if leftover:
                far_writer.write(leftover)
            pipes = [asyncio.ensure_future(_pipe(reader, far_writer)), asyncio.ensure_future(_pipe(far_reader, writer))]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            far_writer.close()

    # -- toward the real API --------------------------------------------------------------------------------

    async def _forward(
        self,
        host: str,
        port: int,
        *,
        tls: bool,
        request: h11.Request,
        target: bytes,
        body: bytes,
        swap: bool = True,
    ) -> _Reply:
        rules = self._rules
        headers: list[tuple[bytes, bytes]] = []
        content_type = b""
        sent: list[tuple[bytes, bytes]] = []  # (what we sent, what the client sent) where base64 hides the swap
        for name, value in request.headers:
            if name in _HOP or name in (b"accept-encoding", b"host"):
                continue
            if name == b"content-type":
                content_type = value
            swapped = swap_header(rules, name, value) if swap else value
            if swapped != value and swapped.startswith(b"Basic ") and len(value.split()) == 2:
                sent.append((swapped.split()[1], value.split()[1]))
            headers.append((name, swapped))
        if swap:
            target = swap_target(rules, target)
            body = await _off_the_loop_if_large(len(body), swap_body, rules, content_type, body)
        # the host the connection goes to, whatever the client said: a front shared by many sites (a CDN) would
        # route by the Host header, taking the real value to another of them
        headers.insert(0, (b"host", host.encode("idna") if port in (80, 443) else f"{host}:{port}".encode()))
        headers.append((b"accept-encoding", b"identity"))
        if body or request.method in (b"POST", b"PUT", b"PATCH"):
            headers.append((b"content-length", str(len(body)).encode()))
        outgoing = h11.Request(method=request.method, target=target, headers=headers)
        try:
            async with asyncio.timeout(_TIMEOUT):
                response, answer = await self._exchange(host, port, tls, outgoing, body)
        except ssl.SSLError as error:
            logger.warning("egress proxy: %s did not prove its identity (%s)", host, type(error).__name__)
            raise _Refused(502, "the host's certificate did not verify") from None
        except (OSError, TimeoutError, h11.ProtocolError) as error:
            logger.warning("egress proxy: %s could not be reached or answered badly (%s)", host, type(error).__name__)
            raise _Refused(502, "the host could not be reached or answered badly") from None
        encoding = dict(response.headers).get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"identity", b""):
            raise _Refused(502, "the host answered compressed: the proxy could not check the answer")
        back: list[tuple[bytes, bytes]] = []
        for name, value in response.headers:
            if name in _HOP:
                continue
            back.append((name, restore(rules, value, sent) if swap else value))
        answer = restore(rules, answer, sent) if swap else answer
        if swap and await self._holds_real([answer, *(part for header in back for part in header)]):
            logger.warning("egress proxy: an answer of %s held a real value in a form not restored: refused", host)
            raise _Refused(502, "the answer held a secret the proxy could not replace with its placeholder")
        if request.method != b"HEAD" and response.status_code not in (204, 304):
            back.append((b"content-length", str(len(answer)).encode()))
        return response.status_code, back, answer

    async def _exchange(
        self, host: str, port: int, tls: bool, request: h11.Request, body: bytes
    ) -> tuple[h11.Response, bytes]:
        """One request to the API and its whole answer, on a kept connection when there is one. A kept one the
        API closed meanwhile (it ends before any answer, or resets) is dropped and the request sent once more
        on a new one; a new one failing so is a failure."""
        key = (host.lower(), port, tls)
        while True:
            kept = self._take(key)
            connection = kept or await self._open(host, port, tls)
            try:
                data = connection.conn.send(request) or b""
                if body:
                    data += connection.conn.send(h11.Data(data=body)) or b""
                connection.writer.write(data + (connection.conn.send(h11.EndOfMessage()) or b""))
                await connection.writer.drain()
                response, answer = await _read_response(connection.conn, connection.reader)
            except (_ClosedEarly, ConnectionError) as error:
                connection.close()
                if kept is not None:
                    continue  # stale: its API closed it while it waited
                raise h11.RemoteProtocolError("the connection ended before an answer") from error
            except BaseException:
                connection.close()
                raise
            self._keep(key, connection)
            return response, answer

    def _take(self, key: tuple[str, int, bool]) -> _Kept | None:
        kept = self._kept.get(key, [])
        now = time.monotonic()
        while kept:
            connection = kept.pop()
            if now - connection.idle_since < KEPT_SECONDS and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    async def _open(self, host: str, port: int, tls: bool) -> _Kept:
        address, to_port = self._resolve.get(host.lower(), (host, port))
        reader, writer = await asyncio.open_connection(
            address, to_port, ssl=self._client_context if tls else None, server_hostname=host if tls else None
        )
        return _Kept(reader, writer, h11.Connection(h11.CLIENT))

    def _keep(self, key: tuple[str, int, bool], connection: _Kept) -> None:
        """Back to the kept ones, if both sides are done and neither said `Connection: close`."""
        conn = connection.conn
        kept = self._kept.setdefault(key, [])
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE or len(kept) >= KEPT_PER_HOST:
            connection.close()
            return
        conn.start_next_cycle()
        connection.idle_since = time.monotonic()
        kept.append(connection)

    async def _holds_real(self, parts: list[bytes]) -> bool:
        """Whether any of `parts` still holds a real value; a large answer is looked at in a thread, off the
        gateway's event loop (redaction takes seconds over megabytes full of escapes)."""

        def holds() -> bool:
            texts = (data.decode("latin-1") for data in parts)  # UTF-8 read as Latin-1: a form redaction knows
            return any(self._redactor.text(text) != text for text in texts)

        return await _off_the_loop_if_large(sum(map(len, parts)), holds)

    # -- refusals -------------------------------------------------------------------------------------------

    def _refuse_undeclared(self, host: str, where: str | None) -> None:
        """Toward a host not declared: a placeholder seen `where` is refused (403, a `blocked_placeholder` event);
        without one, `other = "deny"` refuses (403, a `denied` event) and `tunnel` lets it pass."""
        if where is not None:
            self._report(EgressEvent("blocked_placeholder", self._shown(host), where))
            raise _Refused(403, "a placeholder may go only to a declared host")
        if self._rules.other == "deny":
            self._report(EgressEvent("denied", self._shown(host)))
            raise _Refused(403, "this host is not declared")

    def _shown(self, host: str) -> str:
        for placeholder in self._rules.swaps:
            host = host.replace(placeholder, "[placeholder]")
        return host

    def _report(self, event: EgressEvent) -> None:
        if event.kind == "blocked_placeholder":
            logger.warning("egress proxy: a placeholder sent toward %s (%s) was blocked", event.host, event.field)
        else:
            logger.info("egress proxy: %s is not declared: refused", event.host)
        if self._on_event is not None:
            self._on_event(event)

    def _server_context(self, host: str) -> ssl.SSLContext:
        host = host.lower().removesuffix(".")  # one per name, not per spelling of it (as the leaves are)
        chain, key = self._authority.leaf_for(host)
        known = self._contexts.get(host)
        if known is not None and known[0] == chain:
            return known[1]
        assert self._folder is not None
        number = next(self._files)
        chain_path, key_path = self._folder / f"{number}.chain.pem", self._folder / f"{number}.key.pem"
        try:
            for path, data in ((chain_path, chain), (key_path, key)):
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "wb") as file:
                    file.write(data)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.set_alpn_protocols(["http/1.1"])
            context.load_cert_chain(chain_path, key_path)
        finally:
            chain_path.unlink(missing_ok=True)
            key_path.unlink(missing_ok=True)
        self._contexts[host] = (chain, context)
        return context


# -- HTTP/1.1 with h11 ------------------------------------------------------------------------------------------


async def _off_the_loop_if_large(size: int, work: Callable[..., _T], *args: object) -> _T:
    """`work(*args)` here for up to `_CHECKED_IN_LOOP` bytes, else in a thread: parsing or checking megabytes
    (a JSON body, redaction over escapes) would hold the gateway's event loop, and every group's calls, for
    seconds."""
    if size <= _CHECKED_IN_LOOP:
        return work(*args)
    return await asyncio.to_thread(work, *args)


async def _requests(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    answer: Callable[[h11.Request, bytes], Awaitable[_Reply | None]],
    in_flight: asyncio.Semaphore,
) -> None:
    """Each request on `conn` answered by `answer`, until the client ends the connection or a refusal does
    (said in a response, `_Refused`); a CONNECT's `answer` takes the connection over. A request's body is read,
    and its answer held, only within one of the proxy's `in_flight` turns."""
    while True:
        try:
            request = await _read_head(conn, reader, writer)
            if request is None:
                return
            if request.method == b"CONNECT":  # no body: the requests inside it take turns of their own
                await answer(request, b"")
                return
            async with in_flight:
                body = await _read_body(conn, reader)
                if body is None:
                    return
                reply = await answer(request, body)
                assert reply is not None  # only a CONNECT's answer takes the connection over
                await _send(conn, writer, *reply)
        except _Refused as refused:
            await _answer(conn, writer, refused.status, refused.reason)
            return
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    """The next h11 event (an Event, or PAUSED after a CONNECT), reading as much as it takes."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ))
            continue
        return event


async def _read_head(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> h11.Request | None:
    """The next request's head, or None when the client is done."""
    try:
        event = await _next_event(conn, reader)
    except h11.RemoteProtocolError:
        raise _Refused(400, "not HTTP/1.1") from None
    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
        return None
    if not isinstance(event, h11.Request):
        raise _Refused(400, "not HTTP/1.1")
    if conn.they_are_waiting_for_100_continue:
        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
    return event


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader) -> bytes | None:
    """The request's whole body, or None when the client went away before its end."""
    body = bytearray()
    while True:
        try:
            part = await _next_event(conn, reader)
        except h11.RemoteProtocolError:
            raise _Refused(400, "not HTTP/1.1") from None
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_BODY:
                raise _Refused(413, "the request body is larger than the proxy reads")
        elif isinstance(part, h11.EndOfMessage):
            return bytes(body)
        else:
            return None


async def _read_response(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Response, bytes]:
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Response):
            break
        if isinstance(event, h11.ConnectionClosed):
            raise _ClosedEarly
        if not isinstance(event, h11.InformationalResponse):
            raise h11.RemoteProtocolError("no response")
    body = bytearray()
    while True:
        part = await _next_event(conn, reader)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_BODY:
                raise _Refused(502, "the answer is larger than the proxy reads")
        elif isinstance(part, h11.EndOfMessage):
            return event, bytes(body)
        else:
            raise h11.RemoteProtocolError("the answer ended early")


async def _send(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    if conn.our_state is h11.SEND_BODY:
        data += conn.send(h11.EndOfMessage()) or b""
    writer.write(data)
    await writer.drain()


async def _answer(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    """A short plain-text answer of the proxy's own (its reason never quotes the request)."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = (reason + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    with contextlib.suppress(h11.LocalProtocolError):
        await _send(conn, writer, status, headers, body)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_READ):
        writer.write(data)
        await writer.drain()
