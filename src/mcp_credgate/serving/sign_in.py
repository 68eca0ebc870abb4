"""The OAuth endpoints of `credgate serve --http` (contract §6), made of the SDK's handlers over our provider
(`authorization.AuthorizationServer`): RFC 8414 and RFC 9728 metadata, /authorize, /token, /register (unless
`--registration off`; rate-limited per client address) and /revoke.

Ours on top of the SDK's: the metadata says what this server does (public clients only, `iss` in the
authorization response, Client ID Metadata Documents); /token refuses a `resource` that is not this server's
(RFC 8707); request bodies are capped small; /authorize sends an error back by redirect only to a loopback
redirect URI, so that it is no open redirector (RFC 9700 §4.11.2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mcp.server.auth.handlers.authorize import AuthorizationHandler
from mcp.server.auth.handlers.metadata import MetadataHandler, ProtectedResourceMetadataHandler
from mcp.server.auth.handlers.register import RegistrationHandler
from mcp.server.auth.handlers.revoke import RevocationHandler
from mcp.server.auth.handlers.token import TokenErrorResponse, TokenHandler
from mcp.server.auth.middleware.client_auth import ClientAuthenticator
from mcp.server.auth.routes import build_metadata
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.transport_security import RequestBodyLimitMiddleware
from mcp.shared.auth import ProtectedResourceMetadata
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from starlette.datastructures import FormData
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..authorization import AuthorizationServer, is_loopback_redirect, same_resource
from ..guard import StoreFaultAnswer
from ..throttle import FailureWindow, address_key

MAX_FORM_BYTES = 64 * 1024
REGISTRATIONS_PER_MINUTE = 10
RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"
CROSS_ORIGIN_PATHS = frozenset(  # called by browser-based clients from their own origin (CORS): Host is still checked
    {
        "/.well-known/oauth-authorization-server",
        RESOURCE_METADATA_PATH,
        f"{RESOURCE_METADATA_PATH}/mcp",
        "/token",
        "/register",
        "/revoke",
    }
)


@dataclass
class NoOpenRedirectAuthorizationHandler(AuthorizationHandler):
    """The SDK's /authorize, which sends an error in the request (a wrong `resource`, no PKCE...) back to the
    client's redirect URI at once. Any site can be that URI (its own metadata document, `--registration open`),
    and a link to /authorize would then be a link to it with our URL as the bait (RFC 9700 §4.11.2): such an
    error is answered here (400), unless the redirect URI is loopback (the user's own machine)."""

    consent_url: str = ""

    async def handle(self, request: Request) -> Response:
        answer: Response = await super().handle(request)
        target = answer.headers.get("location", "")
        if target and not target.startswith(self.consent_url) and not is_loopback_redirect(target):
            query = parse_qs(urlsplit(target).query)
            error = {name: query[name][-1] for name in ("error", "error_description", "state") if name in query}
            answer = JSONResponse(error, status_code=400, headers={"Cache-Control": "no-store"})
        return answer


@dataclass
class ResourceBoundTokenHandler(TokenHandler):
    """The SDK's /token, refusing a `resource` (RFC 8707) other than this server's with `invalid_target`."""

    resource: str = ""

    async def handle(self, request: Request) -> Response:
        given = (await request.form()).get("resource")  # the form is read once: the SDK's handler gets it cached
        answer: Response
        if isinstance(given, str) and given and not same_resource(given, self.resource):
            refusal = TokenErrorResponse(error="invalid_target", error_description=f"resource is not {self.resource}")
            answer = self.response(refusal)
        else:
            answer = await super().handle(request)
        return answer


@dataclass
class PublicClientRevocationHandler(RevocationHandler):
    """The SDK's /revoke, for public clients too. Its request model requires a `client_secret` field, which a
    public client does not send (RFC 7009 §2.1: `client_id` alone); an empty one is put in the parsed form
    (Starlette keeps it on the request, where the SDK's handler reads it)."""

    async def handle(self, request: Request) -> Response:
        form = await request.form()
        if "client_secret" not in form:
            request._form = FormData([*form.multi_items(), ("client_secret", "")])
        answer: Response = await super().handle(request)
        return answer


class PerAddressLimit:
    """429 once a client address has made `window.limit` requests within the window (every POST counts)."""

    def __init__(self, app: ASGIApp, window: FailureWindow) -> None:
        self.app = app
        self.window = window

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            key = address_key((scope.get("client") or (None, 0))[0])
            wait = self.window.wait(key)
            if wait > 0:
                body = json.dumps({"error": "too_many_requests", "error_description": "too many registrations"})
                answer = Response(
                    body, status_code=429, media_type="application/json", headers={"Retry-After": str(int(wait) + 1)}
                )
                await answer(scope, receive, send)
                return
            self.window.fail(key)  # counted as one of its allowance, as a failure would be
        await self.app(scope, receive, send)


def _endpoint(
    handler: Any, methods: list[str], *, cross_origin: bool = True, limit: FailureWindow | None = None
) -> ASGIApp:
    # a store that cannot be used just now: 503 inside CORS, which a browser-based client can read
    app: ASGIApp = StoreFaultAnswer(RequestBodyLimitMiddleware(request_response(handler), MAX_FORM_BYTES))
    if limit is not None:
        app = PerAddressLimit(app, limit)
    if cross_origin:
        app = CORSMiddleware(
            app=app, allow_origins="*", allow_methods=methods, allow_headers=[MCP_PROTOCOL_VERSION_HEADER]
        )
    return app


def resource_metadata_url(server: AuthorizationServer) -> str:
    """Where a 401's `WWW-Authenticate` sends a client (contract §6)."""
    return server.issuer_url + RESOURCE_METADATA_PATH


def sign_in_routes(server: AuthorizationServer) -> list[Route]:
    urls = AuthSettings(  # the SDK's model keeps a path-less URL as given: no slash added to the issuer
        issuer_url=server.issuer_url,  # type: ignore[arg-type]  # validated by pydantic
        resource_server_url=server.resource,  # type: ignore[arg-type]
        validate_token_resource=False,
    )
    registration = ClientRegistrationOptions(enabled=server.registration != "off")
    metadata = build_metadata(urls.issuer_url, None, registration, RevocationOptions(enabled=True))
    metadata.token_endpoint_auth_methods_supported = ["none"]
    metadata.revocation_endpoint_auth_methods_supported = ["none"]
    metadata.client_id_metadata_document_supported = True
    metadata.authorization_response_iss_parameter_supported = True
    assert urls.resource_server_url is not None
    protected = ProtectedResourceMetadata(
        resource=urls.resource_server_url, authorization_servers=[urls.issuer_url], resource_name="credgate"
    )
    authenticator = ClientAuthenticator(server)
    token = ResourceBoundTokenHandler(server, authenticator, resource=server.resource)
    authorize = NoOpenRedirectAuthorizationHandler(server, consent_url=f"{server.consent_url}?")
    resource_handler = ProtectedResourceMetadataHandler(protected).handle
    routes = [
        Route(
            "/.well-known/oauth-authorization-server",
            _endpoint(MetadataHandler(metadata).handle, ["GET", "OPTIONS"]),
            methods=["GET", "OPTIONS"],
        ),
        Route(RESOURCE_METADATA_PATH, _endpoint(resource_handler, ["GET", "OPTIONS"]), methods=["GET", "OPTIONS"]),
        Route(
            f"{RESOURCE_METADATA_PATH}/mcp", _endpoint(resource_handler, ["GET", "OPTIONS"]), methods=["GET", "OPTIONS"]
        ),
        Route(
            "/authorize",
            _endpoint(authorize.handle, ["GET", "POST"], cross_origin=False),
            methods=["GET", "POST"],
        ),
        Route("/token", _endpoint(token.handle, ["POST", "OPTIONS"]), methods=["POST", "OPTIONS"]),
        Route(
            "/revoke",
            _endpoint(PublicClientRevocationHandler(server, authenticator).handle, ["POST", "OPTIONS"]),
            methods=["POST", "OPTIONS"],
        ),
    ]
    if registration.enabled:
        register = RegistrationHandler(server, options=registration).handle
        limit = FailureWindow(REGISTRATIONS_PER_MINUTE, 60.0)
        routes.append(
            Route("/register", _endpoint(register, ["POST", "OPTIONS"], limit=limit), methods=["POST", "OPTIONS"])
        )
    return routes
