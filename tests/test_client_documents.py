"""Client ID Metadata Documents: the URL rule, the address classifier, and fetch_client_document against real
HTTP and HTTPS servers on 127.0.0.1 (threads, free ports, a self-signed certificate made here).

Nothing is mocked but the system's resolver, in the tests about names: `anyio.getaddrinfo` answers what the
test says, so that a name can point at a private address or at the local server without a DNS of our own.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mcp_credgate.client_documents import (
    MAX_DOCUMENT_BYTES,
    USER_AGENT,
    ClientDocument,
    ClientDocumentError,
    fetch_client_document,
    is_client_document_url,
)
from tests.support.gateway import make_canary

pytestmark = pytest.mark.no_store

CANARY = make_canary("cimd")  # in every document served: no message may repeat it
TEN_MB = 10 * 1024 * 1024

Route = Callable[[BaseHTTPRequestHandler], None]


# -- servers on 127.0.0.1 ---------------------------------------------------------------------------


@dataclass
class Site:
    """A tiny HTTP(S) server: `routes` maps a path to what it answers; `seen` keeps each request's path and
    headers."""

    scheme: str
    host: str
    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)  # lets a slow route end

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            route = site.routes.get(self.path)
            if route is None:
                self.send_error(404)
            else:
                route(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def serve() -> Iterator[Callable[..., Site]]:
    """Start a site: `serve()` plain http, `serve(tls=context, host=name)` https. All stop at the test's end."""
    servers: list[tuple[ThreadingHTTPServer, Site]] = []

    def start(tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> Site:
        site = Site("https" if tls else "http", host, 0)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
        server.daemon_threads = True
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        site.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append((server, site))
        return site

    yield start
    for server, site in servers:
        site.release.set()
        server.shutdown()
        server.server_close()


def document_for(url: str, **fields: Any) -> dict[str, Any]:
    """A good document for `url`, changed by `fields` (None removes one)."""
    document: dict[str, Any] = {
        "client_id": url,
        "client_name": "Example Agent",
        "client_uri": "https://agent.example.com",
        "redirect_uris": ["http://127.0.0.1:8976/callback", "https://agent.example.com/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "x_marker": CANARY,
    }
    document.update(fields)
    return {key: value for key, value in document.items() if value is not None}


def answer(body: bytes | str | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Route:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    named = {"Content-Type": "application/json"} | (headers or {})

    def route(request: BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        for name, value in named.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(raw)))
        request.end_headers()
        request.wfile.write(raw)

    return route


def site_with(serve: Callable[..., Site], path: str, make: Callable[[str], Route]) -> tuple[Site, str]:
    site = serve()
    url = site.url(path)
    site.routes[path] = make(url)
    return site, url


async def refusal(url: str, **options: Any) -> str:
    """The message fetch_client_document refuses `url` with: one line, naming the host, never the canary."""
    with anyio.fail_after(10), pytest.raises(ClientDocumentError) as caught:
        await fetch_client_document(url, **options)
    message = str(caught.value)
    assert "\n" not in message
    assert CANARY not in message
    assert message.startswith(f"client metadata document at {caught.value.host}: ")
    return message


# -- a self-signed certificate ----------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    server: ssl.SSLContext  # serves the certificate
    client: ssl.SSLContext  # trusts it, and nothing else


def make_certificate(tmp_path: Path, *names: str) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return Certificate(server, ssl.create_default_context(cadata=pem.decode()))


# -- the URL ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://agent.example.com/client.json",
        "https://agent.example.com:8443/oauth/client-metadata.json",
        "https://agent.example.com/client?version=2",  # a query: allowed by the draft (though discouraged)
        "https://203.0.113.9/client.json",  # an address is a host too; the fetch judges where it points
    ],
)
def test_an_https_url_with_a_host_and_a_path_is_a_client_document_url(url: str) -> None:
    assert is_client_document_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "agent-client",  # an ordinary client_id
        "http://agent.example.com/client.json",  # not https
        "HTTPS://agent.example.com/client.json",  # the client_id is compared as written: not https
        "ftp://agent.example.com/client.json",
        "https://agent.example.com",  # no path
        "https://agent.example.com/",  # the root path
        "https:///client.json",  # no host
        "https://agent.example.com/client.json#top",  # a fragment
        "https://agent.example.com/client.json#",  # an empty fragment
        "https://user:pass@agent.example.com/client.json",  # user info
        "https://user@agent.example.com/client.json",
        "https://agent.example.com/a/../client.json",  # dot segments, plain or percent-encoded
        "https://agent.example.com/./client.json",
        "https://agent.example.com/a/%2e%2E/client.json",
        "https://agent.example.com/a/..",
        "https://agent.example.com/client json",  # not a URL's characters
        "https://agent.example.com\\@evil.example/client.json",
        "https://agent.example.com:0/client.json",
        "https://agent.example.com:99999/client.json",
        "https://[::1/client.json",
    ],
)
def test_other_client_ids_are_not_client_document_urls(url: str) -> None:
    assert not is_client_document_url(url)
    assert not is_client_document_url(url, allow_loopback=True)


def test_plain_http_is_a_client_document_url_only_on_a_loopback_host_and_only_when_allowed() -> None:
    for url in ("http://127.0.0.1:8000/client.json", "http://localhost/client.json", "http://[::1]:80/c.json"):
        assert not is_client_document_url(url)
        assert is_client_document_url(url, allow_loopback=True)
    assert not is_client_document_url("http://10.0.0.1/client.json", allow_loopback=True)
    assert not is_client_document_url("http://agent.example.com/client.json", allow_loopback=True)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://10.0.0.1/x", "10.0.0.1 is a private address"),
        ("https://169.254.169.254/latest", "169.254.169.254 is a link-local address"),
        ("https://[::ffff:10.0.0.1]/x", "a private address"),
        ("https://[::1]/x", "a loopback address"),
        ("https://localhost/x", "localhost is this machine"),
        ("https://api.localhost/x", "localhost is this machine"),
        ("https://LOCALHOST./x", "localhost is this machine"),
        ("https://127.1/x", "127.0.0.1 is a loopback address"),  # spellings the resolver reads as addresses
        ("https://2130706433/x", "127.0.0.1 is a loopback address"),
        ("https://0x7f.1/x", "127.0.0.1 is a loopback address"),
        ("https://100.64.0.1/x", "carrier-grade NAT"),
        ("https://0.0.0.0/x", "unspecified"),
        ("https://[fe80::1]/x", "link-local"),
    ],
)
async def test_a_url_naming_this_machine_or_a_private_network_is_refused_before_any_lookup(
    url: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_lookup(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("looked up")

    monkeypatch.setattr(anyio, "getaddrinfo", no_lookup)

    assert reason in await refusal(url)


@pytest.mark.anyio
async def test_plain_http_to_loopback_is_refused_without_allow_loopback(serve: Callable[..., Site]) -> None:
    site, url = site_with(serve, "/client.json", lambda url: answer(document_for(url)))

    assert "not an https URL" in await refusal(url)
    assert site.seen == []


@dataclass
class Resolver:
    """Stands in for the system's resolver: each call pops the next answer for any name."""

    answers: list[list[str]]
    calls: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        addresses = self.answers[min(len(self.calls), len(self.answers)) - 1]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("addresses", "reason"),
    [
        (["10.0.0.7"], "it resolves to 10.0.0.7, a private address"),
        (["169.254.169.254"], "it resolves to 169.254.169.254, a link-local address"),
        (["8.8.8.8", "192.168.1.1"], "it resolves to 192.168.1.1, a private address"),  # any one refuses all
        (["2606:4700:4700::1111", "::ffff:10.1.2.3"], "a private address"),
        (["127.0.0.1"], "it resolves to 127.0.0.1, a loopback address"),
    ],
)
async def test_a_name_that_resolves_to_a_refused_address_is_refused_when_connecting(
    addresses: list[str], reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = Resolver([addresses])
    monkeypatch.setattr(anyio, "getaddrinfo", resolver)

    assert reason in await refusal("https://agent.example.com/client.json")
    assert resolver.calls == ["agent.example.com"]


@pytest.mark.anyio
async def test_a_name_that_does_not_resolve_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fails(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(anyio, "getaddrinfo", fails)

    message = await refusal("https://agent.example.com/client.json")

    assert message == "client metadata document at agent.example.com: its host name does not resolve"


@pytest.mark.anyio
async def test_the_name_is_resolved_once_and_the_connection_goes_to_the_address_checked(
    serve: Callable[..., Site], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a second look-up would answer a private address; there is none. The socket goes to the
    address checked, while TLS (SNI, the certificate) and the Host header stay on the name."""
    certificate = make_certificate(tmp_path, "client.test")  # the name only: no IP address in the certificate
    site = serve(tls=certificate.server, host="client.test")
    url = site.url("/client.json")
    site.routes["/client.json"] = answer(document_for(url))
    resolver = Resolver([["127.0.0.1"], ["10.0.0.1"]])
    monkeypatch.setattr(anyio, "getaddrinfo", resolver)

    with anyio.fail_after(10):
        document = await fetch_client_document(url, allow_loopback=True, verify=certificate.client)

    assert document.client_id == url
    assert resolver.calls == ["client.test"]
    assert site.seen[0][1]["host"] == f"client.test:{site.port}"


# -- fetching ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_good_document_is_fetched_and_checked(serve: Callable[..., Site]) -> None:
    site, url = site_with(serve, "/client.json", lambda url: answer(document_for(url, scope="mcp:tools read")))

    with anyio.fail_after(10):
        document = await fetch_client_document(url, allow_loopback=True)

    assert document == ClientDocument(
        client_id=url,
        client_name="Example Agent",
        client_uri="https://agent.example.com",
        logo_uri=None,
        redirect_uris=("http://127.0.0.1:8976/callback", "https://agent.example.com/callback"),
        grant_types=("authorization_code", "refresh_token"),
        response_types=("code",),
        token_endpoint_auth_method="none",
        scope="mcp:tools read",
    )
    [(path, headers)] = site.seen
    assert path == "/client.json"
    assert headers["user-agent"] == USER_AGENT
    assert "credgate" in headers["user-agent"]
    assert headers["accept"] == "application/json"
    assert "cookie" not in headers
    assert "authorization" not in headers


@pytest.mark.anyio
async def test_absent_grant_response_types_and_auth_method_take_their_defaults(serve: Callable[..., Site]) -> None:
    def make(url: str) -> Route:
        return answer({"client_id": url, "redirect_uris": ["https://agent.example.com/cb"]})

    _, url = site_with(serve, "/c.json", make)

    with anyio.fail_after(10):
        document = await fetch_client_document(url, allow_loopback=True)

    assert (document.grant_types, document.response_types) == (("authorization_code",), ("code",))
    assert document.token_endpoint_auth_method == "none"
    assert document.client_name is None


@pytest.mark.anyio
async def test_a_document_is_fetched_over_https_with_its_certificate_checked(
    serve: Callable[..., Site], tmp_path: Path
) -> None:
    certificate = make_certificate(tmp_path, "localhost")
    site = serve(tls=certificate.server, host="localhost")
    url = site.url("/client.json")
    site.routes["/client.json"] = answer(document_for(url))

    with anyio.fail_after(10):
        document = await fetch_client_document(url, allow_loopback=True, verify=certificate.client)

    assert document.client_id == url


@pytest.mark.anyio
async def test_a_certificate_that_is_not_trusted_is_refused(serve: Callable[..., Site], tmp_path: Path) -> None:
    certificate = make_certificate(tmp_path, "localhost")
    site = serve(tls=certificate.server, host="localhost")
    url = site.url("/client.json")
    site.routes["/client.json"] = answer(document_for(url))

    assert "the TLS handshake failed" in await refusal(url, allow_loopback=True)  # the system's authorities
    assert site.seen == []


@pytest.mark.anyio
async def test_a_document_naming_another_client_id_is_refused(serve: Callable[..., Site]) -> None:
    _, url = site_with(serve, "/c.json", lambda url: answer(document_for(url, client_id=f"{url}?{CANARY}")))

    assert "client_id is not exactly its URL" in await refusal(url, allow_loopback=True)


@pytest.mark.anyio
async def test_a_ten_megabyte_answer_is_refused_after_reading_about_the_cap_and_quickly(
    serve: Callable[..., Site],
) -> None:
    """No Content-Length: the cap is found by reading. The client stops and closes; the server, still
    writing, finds the connection gone long before 10 MB."""
    written: list[int] = []
    stopped = threading.Event()

    def huge(request: BaseHTTPRequestHandler) -> None:
        request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.end_headers()
        sent, chunk = 0, b'{"client_name": "' + b"x" * (64 * 1024)
        try:
            while sent < TEN_MB:
                sent += request.connection.send(chunk[: TEN_MB - sent])
        except OSError:
            pass
        written.append(sent)
        stopped.set()

    site = serve()
    site.routes["/huge.json"] = huge
    started = time.monotonic()

    message = await refusal(site.url("/huge.json"), allow_loopback=True)

    assert time.monotonic() - started < 2
    assert f"larger than {MAX_DOCUMENT_BYTES} bytes" in message
    assert stopped.wait(5)
    assert written[0] < TEN_MB // 4


@pytest.mark.anyio
async def test_an_answer_announcing_more_than_the_cap_is_refused_before_its_body_is_read(
    serve: Callable[..., Site],
) -> None:
    _, url = site_with(serve, "/c.json", lambda url: answer(b"{" + b" " * (MAX_DOCUMENT_BYTES + 1) + b"}"))

    assert f"larger than {MAX_DOCUMENT_BYTES} bytes" in await refusal(url, allow_loopback=True)


@pytest.mark.anyio
async def test_an_answer_whose_headers_alone_pass_the_cap_is_refused(serve: Callable[..., Site]) -> None:
    """What is read from the connection is bounded too, headers included: 32 KiB of them is refused."""
    padding = {f"X-Padding-{i}": "p" * 1000 for i in range(32)}
    _, url = site_with(serve, "/c.json", lambda url: answer(document_for(url), headers=padding))

    assert f"larger than {MAX_DOCUMENT_BYTES} bytes" in await refusal(url, allow_loopback=True)


@pytest.mark.anyio
async def test_a_smaller_cap_is_kept(serve: Callable[..., Site]) -> None:
    _, url = site_with(serve, "/c.json", lambda url: answer(document_for(url)))

    assert "larger than 100 bytes" in await refusal(url, allow_loopback=True, max_bytes=100)


@pytest.mark.anyio
async def test_a_server_that_does_not_answer_in_time_is_refused_at_the_deadline(serve: Callable[..., Site]) -> None:
    site = serve()

    def slow(request: BaseHTTPRequestHandler) -> None:
        site.release.wait(10)  # until the test ends
        request.close_connection = True

    site.routes["/slow.json"] = slow
    started = time.monotonic()

    message = await refusal(site.url("/slow.json"), allow_loopback=True, timeout=0.3)

    assert message.endswith("no answer within 0.3 s")
    assert time.monotonic() - started < 2


@pytest.mark.anyio
async def test_a_redirect_is_refused_and_never_followed(serve: Callable[..., Site]) -> None:
    site, url = site_with(serve, "/moved.json", lambda url: answer("", 302, {"Location": "/client.json"}))
    site.routes["/client.json"] = answer(document_for(url))

    assert "a redirect (HTTP 302), which is not followed" in await refusal(url, allow_loopback=True)
    assert site.paths() == ["/moved.json"]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [201, 204, 304, 404, 500])
async def test_an_answer_other_than_200_is_refused(status: int, serve: Callable[..., Site]) -> None:
    _, url = site_with(serve, "/c.json", lambda url: answer(document_for(url), status))

    message = await refusal(url, allow_loopback=True)

    assert f"HTTP {status}" in message


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (f"<html>{CANARY}</html>", "text/html", "not application/json"),
        ("{}", "text/plain", "not application/json"),
        ("{}", "application/jsonx", "not application/json"),
        (f"not json {CANARY}", "application/json", "not JSON"),
        (f'["{CANARY}"]', "application/json", "not a JSON object"),
        (b'{"a": "\xff\xfe"}', "application/json", "not JSON"),  # not UTF-8
    ],
)
async def test_an_answer_that_is_not_a_json_object_is_refused(
    body: str | bytes, content_type: str, reason: str, serve: Callable[..., Site]
) -> None:
    _, url = site_with(serve, "/c.json", lambda url: answer(body, headers={"Content-Type": content_type}))

    assert reason in await refusal(url, allow_loopback=True)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/oauth-client+json"]
)
async def test_json_content_types_with_parameters_or_a_json_suffix_are_accepted(
    content_type: str, serve: Callable[..., Site]
) -> None:
    _, url = site_with(serve, "/c.json", lambda url: answer(document_for(url), headers={"Content-Type": content_type}))

    with anyio.fail_after(10):
        assert (await fetch_client_document(url, allow_loopback=True)).client_id == url


# -- the document's content -------------------------------------------------------------------------


async def refusal_of(serve: Callable[..., Site], **fields: Any) -> str:
    _, url = site_with(serve, "/c.json", lambda url: answer(document_for(url, **fields)))
    return await refusal(url, allow_loopback=True)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "fields",
    [
        {"client_secret": CANARY},
        {"client_secret": CANARY, "token_endpoint_auth_method": "client_secret_post"},
        {"client_secret_expires_at": 0},
    ],
)
async def test_a_document_holding_a_client_secret_is_refused(
    fields: dict[str, Any], serve: Callable[..., Site]
) -> None:
    assert "holds a client_secret" in await refusal_of(serve, **fields)


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic", "client_secret_jwt"])
async def test_a_document_asking_for_a_secret_based_auth_method_is_refused(
    method: str, serve: Callable[..., Site]
) -> None:
    message = await refusal_of(serve, token_endpoint_auth_method=method)

    assert f"token_endpoint_auth_method {method} needs a shared secret" in message


@pytest.mark.anyio
async def test_a_document_asking_for_private_key_jwt_is_refused_with_the_reason(serve: Callable[..., Site]) -> None:
    message = await refusal_of(serve, token_endpoint_auth_method="private_key_jwt", jwks_uri="https://a.example/j")

    assert "private_key_jwt is not supported (credgate cannot verify it)" in message


@pytest.mark.anyio
@pytest.mark.parametrize("method", [CANARY, "tls_client_auth", 7])
async def test_a_document_asking_for_another_auth_method_is_refused_without_repeating_it(
    method: object, serve: Callable[..., Site]
) -> None:
    assert "is not one credgate supports (only none)" in await refusal_of(serve, token_endpoint_auth_method=method)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "redirect_uris",
    [
        "absent",
        [],
        "https://agent.example.com/cb",  # a string, not a list
        [7],
        ["javascript:alert(1)"],
        ["data:text/html,hi"],
        ["http://agent.example.com/cb"],  # plain http off loopback
        ["https://agent.example.com/cb#fragment"],
        ["https:///cb"],
        ["https://user@agent.example.com/cb"],
        ["/relative/cb"],
        ["https://agent.example.com/c b"],
    ],
)
async def test_a_document_without_valid_redirect_uris_is_refused(
    redirect_uris: object, serve: Callable[..., Site]
) -> None:
    message = await refusal_of(serve, redirect_uris=None if redirect_uris == "absent" else redirect_uris)

    assert "redirect_uris" in message


@pytest.mark.anyio
async def test_native_app_redirect_uris_are_accepted(serve: Callable[..., Site]) -> None:
    uris = ["com.example.agent:/oauth/cb", "http://[::1]:7000/cb", "http://localhost/cb"]
    _, url = site_with(serve, "/c.json", lambda url: answer(document_for(url, redirect_uris=uris)))

    with anyio.fail_after(10):
        assert (await fetch_client_document(url, allow_loopback=True)).redirect_uris == tuple(uris)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"grant_types": ["client_credentials"]}, "grant_types does not include authorization_code"),
        ({"grant_types": "authorization_code"}, "grant_types is not a list of names"),
        ({"response_types": ["token"]}, "response_types does not include code"),
        ({"response_types": [None]}, "response_types is not a list of names"),
        ({"scope": "read\nwrite"}, "scope is not a list of scope names"),
        ({"client_uri": "javascript:alert(1)"}, "client_uri is not an https URL"),
        ({"logo_uri": "http://agent.example.com/logo.png"}, "logo_uri is not an https URL"),
        ({"client_name": ["Agent"]}, "client_name is not a string"),
    ],
)
async def test_a_document_with_unusable_fields_is_refused(
    fields: dict[str, Any], reason: str, serve: Callable[..., Site]
) -> None:
    assert reason in await refusal_of(serve, **fields)


@pytest.mark.anyio
async def test_a_client_name_loses_its_control_characters(serve: Callable[..., Site]) -> None:
    name = "\u202eTrusted\x1b[2J Agent\u200b\n"
    _, url = site_with(serve, "/c.json", lambda url: answer(document_for(url, client_name=name)))

    with anyio.fail_after(10):
        assert (await fetch_client_document(url, allow_loopback=True)).client_name == "Trusted[2J Agent"


@pytest.mark.anyio
async def test_an_over_long_client_name_is_refused(serve: Callable[..., Site]) -> None:
    assert "client_name is longer than 200 characters" in await refusal_of(serve, client_name=CANARY + "x" * 200)


# -- the cache --------------------------------------------------------------------------------------


def test_a_document_comes_back_whole_from_its_json() -> None:
    document = ClientDocument(
        client_id="https://agent.example.com/client.json",
        client_name="Example Agent",
        client_uri=None,
        logo_uri="https://agent.example.com/logo.png",
        redirect_uris=("https://agent.example.com/cb",),
        grant_types=("authorization_code",),
        response_types=("code",),
        token_endpoint_auth_method="none",
        scope=None,
    )

    assert ClientDocument.from_json(document.to_json()) == document


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"client_id": "https://agent.example.com/client.json"}',
        ClientDocument("https://a.example/c", None, None, None, (), (), (), "none", None)
        .to_json()
        .replace('"redirect_uris":[]', '"redirect_uris":"https://a.example/cb"'),
    ],
)
def test_stored_json_of_another_shape_is_refused(text: str) -> None:
    with pytest.raises(ClientDocumentError, match="not one that to_json wrote"):
        ClientDocument.from_json(text)
