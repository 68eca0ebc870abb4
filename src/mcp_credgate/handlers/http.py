"""`http` handlers: render the declared request, send it with one app-wide client, bound the answer.

Placeholders are rendered in one pass (a value that looks like a placeholder stays literal). The
declared origin is fixed text; credentials travel only to it. A redirect is followed only where the tool's
redirect policy (`redirects`) lets it go, checked at every hop: the declared origin (`same-origin`, the
default), any https origin but no private address from a public one (`https`), nowhere (`false`), or the
declared origin and the listed ones; never from https to http. Elsewhere than the declared origin it goes
without the credential-bearing headers and without Basic auth, and not at all when it would re-send a body
that carries the credential. A refused hop is an error naming the policy, never the redirect's target.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import ipaddress
import json
import logging
import re
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import anyio
import httpx2

from ..credential import Credential
from ..declarations import PLACEHOLDER, CredentialSpec, HttpHandler
from ..declarations.models import DEFAULT_PORTS
from ..redact import redactor_for
from . import ToolOutput

MAX_REDIRECTS = 5
MAX_ERROR_BODY = 2000
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# httpx2 logs every request URL at INFO; a credential in a query string must not reach the log.
logging.getLogger("httpx2").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)


class RequestRefused(Exception):
    """The arguments would change the request's shape (path traversal, header injection)."""


class RedirectRefused(Exception):
    """A redirect the tool's policy does not follow; the message names the policy, never the target."""


Origin = tuple[str, str, int | None]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _arg_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def render(template: str, args: Mapping[str, Any], credential: Mapping[str, str], *, path_segment: bool = False) -> str:
    """Substitute `{args.X}`/`{cred.F}` in one pass. In a URL path, values are percent-encoded whole."""

    def sub(m: re.Match[str]) -> str:
        scope, name = m.group(1), m.group(2)
        if scope == "args":
            text = _arg_text(args[name]) if name in args and args[name] is not None else ""
        elif scope == "cred":
            text = credential.get(name, "")
        else:
            return m.group(0)
        if path_segment:
            if text in (".", ".."):
                raise RequestRefused(f"argument {name!r} may not be '.' or '..' in a URL path")
            return quote(text, safe="")
        if "\r" in text or "\n" in text or "\x00" in text:
            raise RequestRefused(f"{'argument ' + repr(name) if scope == 'args' else 'a value'} contains CR, LF or NUL")
        return text

    return PLACEHOLDER.sub(sub, template)


def _only_absent_arg(template: str, args: Mapping[str, Any]) -> bool:
    m = PLACEHOLDER.fullmatch(template)
    return m is not None and m.group(1) == "args" and args.get(m.group(2)) is None


def render_json(value: Any, args: Mapping[str, Any], credential: Mapping[str, str]) -> Any:
    """A JSON body template: a string that is one `{args.X}` keeps the argument's JSON type."""
    if isinstance(value, str):
        m = PLACEHOLDER.fullmatch(value)
        if m is not None and m.group(1) == "args":
            return args.get(m.group(2))
        return render(value, args, credential)
    if isinstance(value, dict):
        return {
            k: render_json(v, args, credential)
            for k, v in value.items()
            if not (isinstance(v, str) and _only_absent_arg(v, args))
        }
    if isinstance(value, list):
        return [render_json(v, args, credential) for v in value]
    return value


def render_url(template: str, args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    scheme, sep, rest = template.partition("://")
    cut = re.search(r"[/?#]", rest)
    origin_end = len(scheme) + len(sep) + (cut.start() if cut else len(rest))
    return template[:origin_end] + render(template[origin_end:], args, credential, path_segment=True)


def _uses_basic_auth(spec: CredentialSpec | None, handler: HttpHandler) -> bool:
    if spec is None or any(k.lower() == "authorization" for k in handler.headers):
        return False
    kinds = {f.kind for f in spec.fields}
    return "username" in kinds and "password" in kinds


def _basic_auth(spec: CredentialSpec, credential: Credential) -> httpx2.BasicAuth:
    user = next(f.name for f in spec.fields if f.kind == "username")
    password = next(f.name for f in spec.fields if f.kind == "password")
    return httpx2.BasicAuth(credential.get(user, ""), credential.get(password, ""))


def _origin(url: httpx2.URL) -> Origin:
    """(scheme, host, port) written one way: the host in lower case (IDNA), an IPv6 address compressed."""
    host = url.raw_host.decode("ascii").lower()
    if ":" in host:
        with contextlib.suppress(ValueError):
            host = str(ipaddress.IPv6Address(host))
    return url.scheme, host, url.port or DEFAULT_PORTS.get(url.scheme)


# -- the redirect policy -----------------------------------------------------------------------------

DOWNGRADE = "redirect not followed: no redirect policy leads from https:// to http://"
TO_PRIVATE = (
    "redirect not followed: the tool's redirect policy is https, which never leads from a public address "
    "to a private, loopback or link-local one"
)
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")  # what inet_aton may read as an IPv4 address: 127.1, 0x7f000001…


def redirect_refusal(handler: HttpHandler, home: Origin, here: Origin, there: Origin) -> str | None:
    """Why a redirect from `here` to `there` is not followed under the handler's policy (None: it is).
    `home` is the declared URL's origin. The text names the policy, never `there`."""
    policy = handler.redirects
    if here[0] == "https" and there[0] != "https":
        return DOWNGRADE
    if policy is False:
        return "redirect not followed: the tool's redirect policy is false (no redirects)"
    if there == home:
        return None
    if policy == "same-origin":
        return "redirect not followed: the tool's redirect policy is same-origin"
    if policy == "https":
        if there[0] != "https":
            return "redirect not followed: the tool's redirect policy is https (https:// origins only)"
        if is_private_host(there[1]) and not is_private_host(home[1]):
            return TO_PRIVATE
        return None
    if there in handler.redirect_origins:
        return None
    return "redirect not followed: the tool's redirect policy is a list of origins, and this one is not on it"


def is_private_host(host: str) -> bool:
    """Whether a host, as written, is this machine or a network that is not the internet: `localhost` and
    `*.localhost`, and addresses that are private, loopback, link-local, unique-local, unspecified or
    otherwise not global, in any spelling a resolver takes (`127.1`, `2130706433`, `[::ffff:10.0.0.1]`).
    A name is not resolved here (see `_reached_private`)."""
    name = host.lower().strip("[]").rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _address(name)
    return address is not None and _is_private_address(address)


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _is_private_address(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and _is_private_address(embedded):
            return True
    return not address.is_global or address.is_multicast


def _reached_private(response: httpx2.Response) -> bool:
    """Whether the connection that carried `response` reached a private address: the address the socket is
    connected to, so a name that resolved to one (now or by a later answer of its DNS) is caught here, after
    the request was sent (without credentials) but before its answer is read."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False
    try:
        return _is_private_address(ipaddress.ip_address(peer[0]))
    except ValueError:
        return False


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """One client serves every group: a cookie set for one group must never ride along for another."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def make_client() -> httpx2.AsyncClient:
    jar = http.cookiejar.CookieJar(policy=_NoCookies())
    return httpx2.AsyncClient(follow_redirects=False, cookies=jar, trust_env=False)


async def run_http(
    client: httpx2.AsyncClient,
    handler: HttpHandler,
    spec: CredentialSpec | None,
    args: Mapping[str, Any],
    credential: Credential,
) -> ToolOutput:
    try:
        url = render_url(handler.url, args, credential)
        params = {k: render(v, args, credential) for k, v in handler.query.items() if not _only_absent_arg(v, args)}
        headers = {k: render(v, args, credential) for k, v in handler.headers.items() if not _only_absent_arg(v, args)}
        body = render_json(handler.json_body, args, credential) if handler.json_body is not None else None
        for name, value in headers.items():
            if not value.isascii():  # httpx2 would raise UnicodeEncodeError: a crash, not an answer
                raise RequestRefused(f"header {name!r} would carry non-ASCII text")
    except RequestRefused as exc:
        return ToolOutput.error(f"request refused: {exc}")
    secret_headers = {k for k, v in handler.headers.items() if "{cred." in v}
    secret_body = handler.json_body is not None and "{cred." in json.dumps(handler.json_body)
    auth = _basic_auth(spec, credential) if spec is not None and _uses_basic_auth(spec, handler) else None
    try:
        request = client.build_request(
            handler.method,
            url,
            params=params,
            headers=headers,
            json=body,
            timeout=httpx2.Timeout(handler.timeout),
        )
    except httpx2.InvalidURL:  # "URL too long" (an argument of 64 KiB in the path) and the like
        return ToolOutput.error("request refused: the arguments make the URL invalid (too long or malformed)")
    home = _origin(request.url)
    host = request.url.host
    checks_peer = handler.redirects == "https" and not is_private_host(home[1])
    try:
        # one deadline for the whole exchange: httpx2's timeout is per read, and a body that trickles in a
        # byte at a time would otherwise hold the call until the size cap, however long that takes
        with anyio.fail_after(handler.timeout):
            for _ in range(MAX_REDIRECTS + 1):
                here = _origin(request.url)
                response = await client.send(request, auth=auth if here == home else None, stream=True)
                try:
                    if here != home and checks_peer and _reached_private(response):
                        raise RedirectRefused(TO_PRIVATE)
                    if response.status_code in REDIRECT_CODES and "location" in response.headers:
                        request = _next_request(
                            client, request, response, handler, home, secret_headers, secret_body=secret_body
                        )
                        continue
                    data = await _read_capped(response, handler.max_response_bytes)
                finally:
                    await response.aclose()
                if data is None:
                    cap = handler.max_response_bytes
                    return ToolOutput.error(f"the response from {host} is larger than {cap} bytes")
                return _output(response, data, host, credential)
            return ToolOutput.error(f"{host} redirected more than {MAX_REDIRECTS} times")
    except RedirectRefused as exc:
        return ToolOutput.error(str(exc))
    except RequestRefused as exc:
        return ToolOutput.error(f"request refused: {exc}")
    except (httpx2.TimeoutException, TimeoutError):
        return ToolOutput.error(f"{host} did not answer within {handler.timeout:g} s")
    except httpx2.ConnectError:
        return ToolOutput.error(f"could not connect to {host}")
    except httpx2.HTTPError as exc:
        return ToolOutput.error(f"the request to {host} failed ({type(exc).__name__})")


def _next_request(
    client: httpx2.AsyncClient,
    request: httpx2.Request,
    response: httpx2.Response,
    handler: HttpHandler,
    home: Origin,
    secret_headers: set[str],
    *,
    secret_body: bool = False,
) -> httpx2.Request:
    """The request a redirect asks for, if the tool's policy follows it (RedirectRefused if not)."""
    try:
        url = request.url.join(response.headers["location"])
    except httpx2.InvalidURL:
        raise RedirectRefused("redirect not followed: its Location is not a valid URL") from None
    refusal = redirect_refusal(handler, home, _origin(request.url), _origin(url))
    if refusal is not None:
        raise RedirectRefused(refusal)
    method = request.method
    content: bytes | None = request.content
    if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
        method, content = "GET", None
    headers = dict(request.headers)
    headers.pop("host", None)
    if _origin(url) != home:
        if secret_body and content:
            # a 307/308 (or a 301/302 of a PUT…) would re-send the body, and the credential in it
            raise RequestRefused(
                f"{request.url.host} redirected to another origin; not followed: the body carries the credential"
            )
        lowered = {h.lower() for h in secret_headers} | {"authorization", "cookie"}
        headers = {k: v for k, v in headers.items() if k.lower() not in lowered}
    if content is None:
        headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "content-type")}
    timeout = httpx2.Timeout(handler.timeout)
    return client.build_request(method, url, headers=headers, content=content, timeout=timeout)


async def _read_capped(response: httpx2.Response, cap: int) -> bytes | None:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _output(response: httpx2.Response, data: bytes, host: str, credential: Credential) -> ToolOutput:
    text = data.decode(response.encoding or "utf-8", errors="replace")
    if response.status_code >= 400:
        # redact before cutting: a cut through a secret would leave a prefix no redactor recognises
        body = redactor_for(credential).text(text)
        body = body if len(body) <= MAX_ERROR_BODY else body[:MAX_ERROR_BODY] + "…"
        return ToolOutput.error(f"HTTP {response.status_code} from {host}: {body}")
    structured = None
    if "json" in response.headers.get("content-type", ""):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            structured = parsed
    return ToolOutput(text, structured)
