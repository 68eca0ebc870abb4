"""The one-shot listener on 127.0.0.1 that receives the browser's redirect at the end of `cred connect`
(the loopback redirect of RFC 8252 §7.3). It answers the first request to /callback and stops; any other
path gets 404 and the wait goes on.
"""

from __future__ import annotations

import hmac
import html
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .oauth import OAuthError

CALLBACK_PATH = "/callback"
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>credgate</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; padding: 0 1rem">
<h1>{title}</h1><p>{text}</p></body></html>"""


class _Handler(BaseHTTPRequestHandler):
    server: _CallbackServer
    timeout = 10  # a connection that sends nothing does not hold up the wait

    def log_message(self, format: str, *args: Any) -> None:  # the query holds the code: never logged
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH:
            self._page(404, "Not found", "This address only receives credgate's OAuth2 redirect.")
            return
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if not hmac.compare_digest(params.get("state", "").encode(), self.server.state.encode()):
            # not the answer to our request (another page or process): refused, and the wait goes on
            self.server.refused += 1
            self._page(400, "Refused", "This answer does not belong to the connection credgate started.")
            return
        self.server.received = params
        if "error" in params:
            self._page(400, "Not connected", "The provider did not grant access. See the terminal.")
        else:
            self._page(200, "Received", "credgate received the authorization: you can close this tab.")

    def _page(self, status: int, title: str, text: str) -> None:
        body = PAGE.format(title=html.escape(title), text=html.escape(text)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)


class _CallbackServer(HTTPServer):
    state = ""
    received: dict[str, str] | None = None
    refused = 0  # redirects whose state was not ours


class LoopbackCallback:
    """`with LoopbackCallback(port) as cb:` binds 127.0.0.1:port (0: any free port); `cb.redirect_uri` goes
    into the authorization request; `cb.wait(state, timeout)` returns the redirect's query parameters."""

    def __init__(self, port: int = 0) -> None:
        try:
            self._server = _CallbackServer(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise OAuthError(f"cannot listen on 127.0.0.1:{port} for the redirect ({exc.strerror})") from None

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{CALLBACK_PATH}"

    def wait(self, state: str, timeout: float, on_refused: Callable[[], None] = lambda: None) -> dict[str, str]:
        """The query of the first redirect carrying our `state`; others get 400 (and `on_refused` is called)."""
        self._server.state = state
        deadline = time.monotonic() + timeout
        while self._server.received is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                foreign = self._server.refused
                refused = f" ({foreign} redirect(s) with a foreign state refused)" if foreign else ""
                raise OAuthError(f"no answer from the browser within {timeout:g} s{refused}; nothing stored")
            refused_before = self._server.refused
            self._server.timeout = remaining
            self._server.handle_request()
            if self._server.refused > refused_before:
                on_refused()
        return self._server.received

    def close(self) -> None:
        self._server.server_close()

    def __enter__(self) -> LoopbackCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
