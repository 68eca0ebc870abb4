"""Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document; MCP authorization 2025-11-25):
a client whose `client_id` is an https URL, whose metadata the authorization server fetches from that URL.

    if is_client_document_url(client_id):
        document = await fetch_client_document(client_id)   # ClientDocumentError: one line, safe to show
        cache.save(client_id, document.to_json())

The URL comes from whoever calls our authorization endpoint, so the fetch is a request to a place an attacker
chooses, and the answer is the attacker's text. Hence:

- Where we connect (SSRF). A refused literal address, or a `localhost` name, is refused before any look-up. A name
  is resolved when the connection is made, by the network backend given to httpcore2 (`_guarded_backend`):
  every address it resolves to must be globally routable (`address_refusal`), and the socket is opened to one
  of those very addresses. There is no second look-up, so a name that answers a public address first and a
  private one next (DNS rebinding) cannot slip through between a check and the fetch. TLS keeps the name: SNI
  and the certificate check are on the host of the URL, and so is the `Host` header.
- What we send: GET with a User-Agent naming credgate, `Accept: application/json`, no cookies, no credentials.
  httpcore2, the engine under httpx2, is used directly, since httpx2's transport takes no network backend; it
  never follows redirects, keeps no cookies and reads no proxy settings from the environment.
- What we read: 200 with a JSON content type only (a redirect is refused, never followed), at most `max_bytes`
  of body. The stream stops being read once the answer passes the cap (plus a small allowance for headers), so
  a huge answer costs us little; the whole fetch runs under one deadline.
- What we accept: the draft's rules (`client_id` equal to the URL; no client secret, since a document is
  public) and ours (only `token_endpoint_auth_method` `none`; the authorization-code grant with `code`; sane
  redirect URIs; names without control characters, at most 200 characters).

No message repeats the document's content or the server's headers: they name the host and the reason.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import anyio

from . import __version__
from .addresses import address_refusal, literal_address
from .errors import CredgateError
from .loopback import is_loopback_host

if TYPE_CHECKING:  # the network parts load with the first fetch, as in oauth.py
    import httpcore2

__all__ = [
    "FETCH_TIMEOUT",
    "MAX_DOCUMENT_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_URI_LENGTH",
    "USER_AGENT",
    "ClientDocument",
    "ClientDocumentError",
    "fetch_client_document",
    "is_client_document_url",
]

FETCH_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 5 * 1024  # the draft's example of a limit
MAX_NAME_LENGTH = 200
MAX_URI_LENGTH = 2000
USER_AGENT = f"credgate/{__version__} (client metadata document fetch)"

_HEADER_ALLOWANCE = 16 * 1024  # what the status line and headers may take beyond the body's cap
_SECRET_METHODS = frozenset({"client_secret_post", "client_secret_basic", "client_secret_jwt"})
_URL_CHARACTERS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: a URL as RFC 3986 writes it
_SHOWN_HOST = re.compile(r"[A-Za-z0-9._:\[\]-]{1,255}")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")  # RFC 6749 §3.3
_NAME = re.compile(r"[\x21-\x7e]{1,200}")  # a grant or response type


_Refuse = Callable[[str], "ClientDocumentError"]


class ClientDocumentError(CredgateError):
    """A client metadata document cannot be used. The message names the URL's host and the reason, never the
    document's content: it is safe to show, and to send back as an `error_description`."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"client metadata document at {host}: {reason}")


@dataclass(frozen=True)
class ClientDocument:
    """A fetched and checked document: what the authorization server needs of the client. The caller caches
    it (`to_json`/`from_json`) for as long as it likes; it holds nothing secret."""

    client_id: str
    client_name: str | None
    client_uri: str | None
    logo_uri: str | None
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    token_endpoint_auth_method: str
    scope: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ClientDocument:
        """A document as `to_json` wrote it. A stored text of another shape raises ClientDocumentError."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = None
        client_id = data.get("client_id") if isinstance(data, dict) else None
        host = _shown_host(client_id) if isinstance(client_id, str) else "?"
        if not isinstance(data, dict) or not isinstance(client_id, str) or set(data) != _FIELDS:
            raise ClientDocumentError(host, "the stored document is not one that to_json wrote")
        try:
            return cls(
                client_id=client_id,
                client_name=_optional_text(data["client_name"]),
                client_uri=_optional_text(data["client_uri"]),
                logo_uri=_optional_text(data["logo_uri"]),
                redirect_uris=_texts(data["redirect_uris"]),
                grant_types=_texts(data["grant_types"]),
                response_types=_texts(data["response_types"]),
                token_endpoint_auth_method=_text(data["token_endpoint_auth_method"]),
                scope=_optional_text(data["scope"]),
            )
        except TypeError:
            raise ClientDocumentError(host, "the stored document is not one that to_json wrote") from None


_FIELDS = frozenset(ClientDocument.__dataclass_fields__)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _texts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError
    return tuple(_text(item) for item in value)


# -- the URL ------------------------------------------------------------------------------------


def is_client_document_url(client_id: str, *, allow_loopback: bool = False) -> bool:
    """Whether a `client_id` is the URL of a client metadata document (draft §3): https, a host, a path other
    than `/`, no fragment, no user info, no `.` or `..` segment; a port and a query are allowed. With
    `allow_loopback`, also `http://` on a loopback host (tests, a gateway that only listens on loopback)."""
    return _url_problem(client_id, allow_loopback) is None


def _url_problem(url: str, allow_loopback: bool) -> str | None:
    if not _URL_CHARACTERS.fullmatch(url) or "\\" in url:
        return "the client_id is not a URL of printable ASCII characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the client_id is not a well-formed URL"
    scheme = url.split(":", 1)[0]  # as written: the client_id is compared as a string, so `HTTPS:` is not https
    host = parts.hostname or ""
    if scheme == "http" and not (allow_loopback and is_loopback_host(host)):
        return "the client_id is not an https URL"
    if scheme not in ("https", "http"):
        return "the client_id is not an https URL"
    if not host or port == 0:
        return "the client_id URL has no host (or port 0)"
    if "@" in parts.netloc:
        return "the client_id URL carries user info"
    if "#" in url:
        return "the client_id URL has a fragment"
    if parts.path in ("", "/"):
        return "the client_id URL has no path"
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        return "the client_id URL has a '.' or '..' path segment"
    return None


def _shown_host(url: str) -> str:
    """The host of a URL as a message may show it: attacker-chosen text, so only if it looks like a host."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    return host if _SHOWN_HOST.fullmatch(host) else "an unreadable host"


# -- where we may connect -----------------------------------------------------------------------


def _host_refusal(host: str, allow_loopback: bool) -> str | None:
    """Why a host is refused as written, before any look-up: a refused literal address, or `localhost`."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761 §6.3: always this machine
        return None if allow_loopback else "refused: localhost is this machine"
    address = literal_address(name)
    refusal = address_refusal(address, allow_loopback=allow_loopback) if address is not None else None
    return f"refused: {address} is {refusal}" if refusal else None


async def _resolve(host: str, port: int, shown: str) -> list[str]:
    try:
        answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ClientDocumentError(shown, "its host name does not resolve") from None
    addresses = list(dict.fromkeys(str(answer[4][0]) for answer in answers))
    if not addresses:
        raise ClientDocumentError(shown, "its host name does not resolve")
    return addresses


@dataclass
class _Budget:
    """What may still be read from the connection, shared by the plain stream and the TLS one over it."""

    left: int
    shown: str
    cap: int


def _guarded_backend(budget: _Budget, allow_loopback: bool) -> httpcore2.AsyncNetworkBackend:
    """httpcore2's network backend, but connecting only to addresses `address_refusal` lets through (resolved
    here, once, and connected to as resolved) and reading at most `budget`. Defined in a function so that
    httpcore2 loads with the first fetch."""
    import httpcore2

    class BoundedStream(httpcore2.AsyncNetworkStream):
        def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
            self._inner = inner

        async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            # one byte past the budget, so that an answer ending exactly at it still reads its end
            data = await self._inner.read(min(max_bytes, budget.left + 1), timeout)
            budget.left -= len(data)
            if budget.left < 0:
                raise ClientDocumentError(budget.shown, f"the answer is larger than {budget.cap} bytes")
            return data

        async def write(self, buffer: bytes, timeout: float | None = None) -> None:
            await self._inner.write(buffer, timeout)

        async def aclose(self) -> None:
            await self._inner.aclose()

        async def start_tls(
            self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
        ) -> httpcore2.AsyncNetworkStream:
            return BoundedStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

        def get_extra_info(self, info: str) -> Any:
            return self._inner.get_extra_info(info)

    class GuardedBackend(httpcore2.AsyncNetworkBackend):
        def __init__(self) -> None:
            self._inner = httpcore2.AnyIOBackend()

        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
        ) -> httpcore2.AsyncNetworkStream:
            addresses = await _resolve(host, port, budget.shown)
            for address in addresses:  # every one: the resolver's order is not ours to trust
                refusal = address_refusal(ipaddress.ip_address(address), allow_loopback=allow_loopback)
                if refusal is not None:
                    raise ClientDocumentError(budget.shown, f"refused: it resolves to {address}, {refusal}")
            failure: httpcore2.ConnectError | None = None
            for address in addresses:
                try:
                    stream = await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
                except httpcore2.ConnectError as exc:
                    failure = exc
                    continue
                return BoundedStream(stream)
            assert failure is not None
            raise failure

        async def connect_unix_socket(
            self,
            path: str,
            timeout: float | None = None,
            socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
        ) -> httpcore2.AsyncNetworkStream:
            raise ClientDocumentError(budget.shown, "refused: not a TCP connection")

        async def sleep(self, seconds: float) -> None:
            await anyio.sleep(seconds)

    return GuardedBackend()


# -- the fetch ----------------------------------------------------------------------------------


async def fetch_client_document(
    url: str,
    *,
    allow_loopback: bool = False,
    timeout: float = FETCH_TIMEOUT,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    verify: ssl.SSLContext | bool = True,
) -> ClientDocument:
    """Fetch and check the document at `url` (a client_id). `verify` is the TLS check: True for the system's
    authorities, or a context (tests); False turns it off and is for nothing but tests."""
    shown = _shown_host(url)
    problem = _url_problem(url, allow_loopback)
    if problem is not None:
        raise ClientDocumentError(shown, problem)
    refusal = _host_refusal(urlsplit(url).hostname or "", allow_loopback)
    if refusal is not None:
        raise ClientDocumentError(shown, refusal)
    body = await _download(url, shown, allow_loopback, timeout, max_bytes, verify)
    try:
        metadata = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ClientDocumentError(shown, "the document is not JSON") from None
    if not isinstance(metadata, dict):
        raise ClientDocumentError(shown, "the document is not a JSON object")
    return _checked(url, metadata, shown, allow_loopback)


async def _download(
    url: str, shown: str, allow_loopback: bool, timeout: float, max_bytes: int, verify: ssl.SSLContext | bool
) -> bytes:
    # lazy: httpcore2 and httpx2 (~90 ms) would otherwise load with every module that imports this one
    import httpcore2
    import httpx2

    context = httpx2.create_ssl_context(verify=verify, trust_env=False)
    budget = _Budget(max_bytes + _HEADER_ALLOWANCE, shown, max_bytes)
    backend = _guarded_backend(budget, allow_loopback)
    headers = [("User-Agent", USER_AGENT), ("Accept", "application/json"), ("Accept-Encoding", "identity")]
    body = bytearray()
    try:
        with anyio.fail_after(timeout):
            async with (
                httpcore2.AsyncConnectionPool(
                    ssl_context=context, network_backend=backend, max_connections=1, http1=True, http2=False
                ) as pool,
                pool.stream("GET", url, headers=headers) as response,
            ):
                _check_answer(response.status, response.headers, shown, max_bytes)
                async for chunk in response.aiter_stream():
                    body += chunk
                    if len(body) > max_bytes:
                        raise ClientDocumentError(shown, f"the answer is larger than {max_bytes} bytes")
    except TimeoutError:
        raise ClientDocumentError(shown, f"no answer within {timeout:g} s") from None
    except httpcore2.TimeoutException:
        raise ClientDocumentError(shown, f"no answer within {timeout:g} s") from None
    except httpcore2.ConnectError as exc:
        # httpcore2 wraps the ssl error (as args[0]); its pool drops the chain (`raise exc from None`)
        tls = next((e for e in (*exc.args[:1], exc.__cause__, exc.__context__) if isinstance(e, ssl.SSLError)), None)
        if tls is not None:
            raise ClientDocumentError(shown, f"the TLS handshake failed ({tls.__class__.__name__})") from None
        raise ClientDocumentError(shown, "it cannot be reached") from None
    except (httpcore2.NetworkError, httpcore2.ProtocolError, httpcore2.UnsupportedProtocol) as exc:
        raise ClientDocumentError(shown, f"the connection failed ({exc.__class__.__name__})") from None
    return bytes(body)


def _check_answer(status: int, headers: list[tuple[bytes, bytes]], shown: str, max_bytes: int) -> None:
    """Status and headers, before the body is read. Their values are the server's: none is repeated."""
    if 300 <= status < 400:
        raise ClientDocumentError(shown, f"it answered with a redirect (HTTP {status}), which is not followed")
    if status != 200:
        raise ClientDocumentError(shown, f"it answered HTTP {status}, not 200")
    types = [value for name, value in headers if name.lower() == b"content-type"]
    media = types[0].split(b";", 1)[0].strip().lower() if len(types) == 1 else b""
    if not (media == b"application/json" or re.fullmatch(rb"application/[a-z0-9.!#$&^_-]+\+json", media)):
        raise ClientDocumentError(shown, "its answer is not application/json")
    lengths = [value.strip() for name, value in headers if name.lower() == b"content-length"]
    if lengths and lengths[0].isdigit() and int(lengths[0]) > max_bytes:
        raise ClientDocumentError(shown, f"the answer is larger than {max_bytes} bytes")


# -- the document -------------------------------------------------------------------------------


def _checked(url: str, metadata: Mapping[str, Any], shown: str, allow_loopback: bool) -> ClientDocument:
    def refuse(reason: str) -> ClientDocumentError:
        return ClientDocumentError(shown, reason)

    if metadata.get("client_id") != url:
        raise refuse("the document's client_id is not exactly its URL")
    if "client_secret" in metadata or "client_secret_expires_at" in metadata:
        raise refuse("the document holds a client_secret, which a public metadata document must not")
    method = metadata.get("token_endpoint_auth_method", "none")
    if method in _SECRET_METHODS:
        raise refuse(f"token_endpoint_auth_method {method} needs a shared secret, which a public document cannot")
    if method == "private_key_jwt":
        raise refuse("token_endpoint_auth_method private_key_jwt is not supported (credgate cannot verify it)")
    if method != "none":
        raise refuse("token_endpoint_auth_method is not one credgate supports (only none)")
    grant_types = _names(metadata, "grant_types", ("authorization_code",), refuse)
    if "authorization_code" not in grant_types:
        raise refuse("grant_types does not include authorization_code")
    response_types = _names(metadata, "response_types", ("code",), refuse)
    if "code" not in response_types:
        raise refuse("response_types does not include code")
    redirect_uris = metadata.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris:
        raise refuse("redirect_uris is missing or empty")
    if not all(isinstance(uri, str) and _redirect_uri_ok(uri) for uri in redirect_uris):
        raise refuse("redirect_uris holds one that is not https, loopback http or an app's own scheme")
    scope = metadata.get("scope")
    if scope is not None and not (isinstance(scope, str) and len(scope) <= 1000 and _SCOPE.fullmatch(scope)):
        raise refuse("scope is not a list of scope names")
    return ClientDocument(
        client_id=url,
        client_name=_name(metadata.get("client_name"), refuse),
        client_uri=_web_uri(metadata, "client_uri", allow_loopback, refuse),
        logo_uri=_web_uri(metadata, "logo_uri", allow_loopback, refuse),
        redirect_uris=tuple(redirect_uris),
        grant_types=grant_types,
        response_types=response_types,
        token_endpoint_auth_method="none",
        scope=scope,
    )


def _names(metadata: Mapping[str, Any], field: str, default: tuple[str, ...], refuse: _Refuse) -> tuple[str, ...]:
    value = metadata.get(field)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.fullmatch(v) for v in value):
        raise refuse(f"{field} is not a list of names")
    return tuple(value)


def _name(value: object, refuse: _Refuse) -> str | None:
    """A name to show on a consent page: control and format characters (bidi overrides…) removed."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise refuse("client_name is not a string")
    cleaned = "".join(c for c in value if unicodedata.category(c)[0] != "C" and c not in "\u2028\u2029").strip()
    if len(cleaned) > MAX_NAME_LENGTH:
        raise refuse(f"client_name is longer than {MAX_NAME_LENGTH} characters")
    return cleaned or None


def _web_uri(metadata: Mapping[str, Any], field: str, allow_loopback: bool, refuse: _Refuse) -> str | None:
    value = metadata.get(field)
    if value is None:
        return None
    if not (isinstance(value, str) and _web_url_ok(value, allow_loopback)):
        raise refuse(f"{field} is not an https URL")
    return value


def _web_url_ok(url: str, allow_loopback: bool) -> bool:
    if len(url) > MAX_URI_LENGTH or not _URL_CHARACTERS.fullmatch(url) or "\\" in url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    host = parts.hostname or ""
    scheme_ok = parts.scheme == "https" or (parts.scheme == "http" and allow_loopback and is_loopback_host(host))
    return scheme_ok and bool(host) and "@" not in parts.netloc


def _redirect_uri_ok(uri: str) -> bool:
    """RFC 6749 §3.1.2 (absolute, no fragment) and RFC 8252 for native apps: https; http to a loopback host
    (§7.3); or a private-use scheme in reverse-domain form such as `com.example.app:/cb` (§7.1)."""
    if len(uri) > MAX_URI_LENGTH or not _URL_CHARACTERS.fullmatch(uri) or "\\" in uri or "#" in uri:
        return False
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    host = parts.hostname or ""
    if parts.scheme == "https":
        return bool(host) and "@" not in parts.netloc
    if parts.scheme == "http":
        return is_loopback_host(host) and "@" not in parts.netloc
    return bool(_SCHEME.fullmatch(parts.scheme)) and "." in parts.scheme
