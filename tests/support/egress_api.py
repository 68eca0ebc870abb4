"""Real APIs on 127.0.0.1 for the egress tests: an HTTPS one under host names of its own, with a CA of its own
(not the egress CA: the proxy must verify it for real), and a plain HTTP one. Each answers 401 unless it is given
the real token (Bearer, Basic `me:USER`, `?token=`, or in the body), and echoes what it received with the token in
its answer and an `x-echo-token` header; `/v1/encoded` answers the token inside a base64 blob, `/v1/close` with
`Connection: close`, `/v1/header-name` with the token in a header's name. Each request it received is kept with
the port it came from (`connection`)."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mcp_credgate.egress_ca import Authority


@dataclass
class Api:
    port: int
    ca_file: Path | None = None  # an HTTPS API's CA certificate
    received: list[dict[str, Any]] = field(default_factory=list)


def _handler(
    received: list[dict[str, Any]], real: str, user_real: str, idle_timeout: float | None = None
) -> type[BaseHTTPRequestHandler]:
    basic = "Basic " + base64.b64encode(f"me:{user_real}".encode()).decode()
    busy = {"now": 0, "most": 0}  # requests being answered at once (`/v1/slow`), and the most ever
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout  # a connection idle this long is closed by the API (None: kept)
        disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms wait for a delayed ACK

        def _any(self) -> None:
            if self.path.startswith("/v1/slow"):
                with lock:
                    busy["now"] += 1
                    busy["most"] = max(busy["most"], busy["now"])
                time.sleep(0.6)
                with lock:
                    busy["now"] -= 1
                received.append({"path": self.path, "most at once": busy["most"]})
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            seen: dict[str, Any] = {"method": self.command, "path": self.path, "headers": dict(self.headers)}
            seen["body"] = body
            seen["connection"] = self.client_address[1]  # the port it came from: one per connection
            received.append(seen)
            authorization = self.headers.get("authorization")
            authorized = authorization in (f"Bearer {real}", basic) or f"token={real}" in self.path or real in body
            answer = json.dumps({"received": seen, "token": real} if authorized else {"error": "no"}).encode()
            if self.path.startswith("/v1/encoded"):  # the token inside a base64 blob: no placeholder fits there
                answer = json.dumps({"blob": base64.b64encode(f"xy{real}z".encode()).decode()}).encode()
            self.send_response(200 if authorized else 401)
            self.send_header("content-type", "application/json")
            self.send_header("x-echo-token", real)
            if self.path.startswith("/v1/header-name"):  # a header whose name is the token: no value to restore
                self.send_header(f"x-{real}", "seen")
            self.send_header("content-length", str(len(answer)))
            if self.path.startswith("/v1/close"):
                self.send_header("connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # many connections at once (the default backlog, 5, holds the sixth a second)


@contextmanager
def _serving(server: ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def https_api(
    folder: Path, hosts: Sequence[str], real: str, user_real: str = "", *, idle_timeout: float | None = None
) -> Iterator[Api]:
    """An HTTPS API answering as each of `hosts` (by SNI), its CA certificate in `folder`; it closes a connection
    idle for `idle_timeout` seconds (None: never)."""
    api_ca = Authority.new("the API's own CA")
    (folder / "ca.pem").write_bytes(api_ca.certificate_pem())
    contexts = {}
    for host in hosts:
        chain, key = api_ca.leaf_for(host)
        (folder / f"{host}.pem").write_bytes(chain)
        (folder / f"{host}.key").write_bytes(key)
        contexts[host] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        contexts[host].load_cert_chain(folder / f"{host}.pem", folder / f"{host}.key")
    first = contexts[hosts[0]]
    first.sni_callback = lambda tls, name, _: setattr(tls, "context", contexts[name]) if name in contexts else None
    received: list[dict[str, Any]] = []
    server = _Server(("127.0.0.1", 0), _handler(received, real, user_real, idle_timeout))
    server.socket = first.wrap_socket(server.socket, server_side=True)
    with _serving(server):
        yield Api(server.server_address[1], folder / "ca.pem", received)


@contextmanager
def plain_api(real: str, user_real: str = "") -> Iterator[Api]:
    received: list[dict[str, Any]] = []
    server = _Server(("127.0.0.1", 0), _handler(received, real, user_real))
    with _serving(server):
        yield Api(server.server_address[1], None, received)
