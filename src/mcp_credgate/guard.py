"""The guard in front of every HTTP app (MCP for remote agents, the dashboard): a foreign Host or Origin gets
403 (DNS-rebinding protection), a token in the query string 401, a declared body over the cap 413 — all before
authentication and before the body is read. Behind it, `StoreFaultAnswer` turns a store that cannot be used just
now into 503 with a ref."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import StoreError
from .logs import new_ref
from .loopback import is_loopback_host

logger = logging.getLogger("credgate.http")

MAX_BODY_BYTES = 4 * 1024 * 1024
TOKEN_QUERY_NAMES = frozenset({"access_token", "token", "auth", "authorization", "bearer"})
PROBE_PATHS = frozenset({"/healthz", "/readyz"})  # `probes`: no Host/Origin check, no authentication
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def allowed_hosts_and_origins(host: str, port: int, public_url: str | None) -> tuple[list[str], list[str]]:
    """The Host headers and Origins this server answers: its own address (all loopback names when bound
    to loopback) and the public URL's."""
    names = list(LOOPBACK_NAMES) if is_loopback_host(host) else [f"[{host}]" if ":" in host else host]
    hosts = [f"{n}:{port}" for n in names]
    origins = [f"http://{h}" for h in hosts]
    if public_url:
        parts = urlsplit(public_url)
        if parts.netloc:
            default_port = {"http": 80, "https": 443}.get(parts.scheme)
            netloc = parts.netloc.lower()
            hosts.append(netloc)
            origins.append(f"{parts.scheme}://{netloc}")
            if parts.port is None and default_port:
                hosts.append(f"{netloc}:{default_port}")
    return sorted(set(hosts)), sorted(set(origins))


class RequestGuard:
    """Refuses foreign hosts/origins (403), query-string tokens (401) and oversized bodies (413) up front."""

    def __init__(
        self,
        app: ASGIApp,
        hosts: list[str],
        origins: list[str],
        max_body: int = MAX_BODY_BYTES,
        cross_origin_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        self.origins = {o.lower() for o in origins}
        self.max_body = max_body
        self.cross_origin_paths = cross_origin_paths  # called by other sites' pages (CORS): any Origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] in PROBE_PATHS and scope["method"] in ("GET", "HEAD")):
            await self.app(scope, receive, send)  # probes send the pod's address as Host (`probes`)
            return
        response = self._refusal(scope)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        host = (headers.get("host") or "").lower()
        if host not in self.hosts:
            return PlainTextResponse("Forbidden: unknown Host", status_code=403)
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins and scope["path"] not in self.cross_origin_paths:
            return PlainTextResponse("Forbidden: foreign Origin", status_code=403)
        query = scope.get("query_string", b"").decode("latin-1")
        if any(name.lower() in TOKEN_QUERY_NAMES for name, _ in parse_qsl(query, keep_blank_values=True)):
            return PlainTextResponse(
                "Unauthorized: send the token in an Authorization: Bearer header, never in the URL",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
            )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return PlainTextResponse("Request body too large", status_code=413)
        return None


class StoreFaultAnswer:
    """A request that found the store unusable before its answer began (PostgreSQL away, a disk that fails:
    checking a bearer token, reading a page) gets 503 with Retry-After and a ref, not a 500 and a traceback; the
    cause is logged with the ref, never sent (it may name the store's paths or server). Once the answer has
    begun, the app's own handling is all there is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = False

        async def watched(message: Message) -> None:
            nonlocal began
            began = began or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except StoreError as exc:
            if began:
                raise
            ref = new_ref()
            logger.error(
                "%s %s not served: the store cannot be used (ref: %s): %s", scope["method"], _logged(scope), ref, exc
            )
            answer = PlainTextResponse(
                f"Service Unavailable: the gateway cannot use its store just now; retry later (ref: {ref})",
                status_code=503,
                headers={"Retry-After": "5"},
            )
            await answer(scope, receive, send)


def _logged(scope: Scope) -> str:
    """The path, as a log line may hold it: a setup link's token (`/setup/<token>`, the key to its page) left
    out."""
    head, setup, _ = str(scope["path"]).partition("/setup/")
    return f"{head}{setup}…" if setup else head
