"""`http` handlers: render the declared request, send it with one app-wide client, bound the answer.

Placeholders are rendered in one pass (a value that looks like a placeholder stays literal). The
declared origin is fixed text; credentials travel only to it. A redirect is followed only where the tool's
redirect policy (`redirects`) lets it go, checked at every hop: the declared origin (`same-origin`, the
default), any https origin but no private address from a public one (`https`), nowhere (`false`), or the
declared origin and the listed ones; never from https to http. Elsewhere than the declared origin it goes
without the credential-bearing headers and without Basic auth, and not at all when it would re-send a body
that carries the credential. A refused hop is an error naming the policy, never the redirect's target.

Errors credgate raises itself say nothing of a secret: what the arguments alone make of the request is checked
first, with every credential empty, and named precisely (`request refused: …`); a failure once the credential
is in place is one text, `the request to HOST could not be sent (ref: …)`, whatever the secret, its cause
logged under the ref.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import ipaddress
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio
import httpx2

from ..addresses import address_refusal, literal_address
from ..credential import Credential
from ..declarations import PLACEHOLDER, CredentialSpec, HttpHandler
from ..declarations.models import DEFAULT_PORTS
from ..logs import new_ref, request_id
from ..redact import redactor_for
from . import ToolOutput

MAX_REDIRECTS = 5
MAX_ERROR_BODY = 2000
# What the arguments may make of the URL (measured with every credential empty), and what a credential may add
# to it: together within httpx2's own limit (65536), so that its "URL too long" never depends on a secret. A
# stored value may be 64 KiB (192 KiB percent-encoded): one that adds more is refused whatever the arguments.
MAX_ARGUMENTS_URL = 8192
MAX_CREDENTIAL_URL = 65536 - MAX_ARGUMENTS_URL
LONG_URL = f"the arguments make the URL longer than {MAX_ARGUMENTS_URL} characters"
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
logger = logging.getLogger("credgate.http")
# httpx2 logs every request URL at INFO; a credential in a query string must not reach the log.
logging.getLogger("httpx2").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)


class RequestRefused(Exception):
    """A value would change the request's shape (path traversal, header injection) or cannot go where it is
    placed. The message names the argument or credential field, never shows its value."""


class RedirectRefused(Exception):
    """A redirect the tool's policy does not follow; the message names the policy, never the target."""


Origin = tuple[str, str, int | None]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _arg_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what a header value cannot carry (a tab it can)


def render(
    template: str,
    args: Mapping[str, Any],
    credential: Mapping[str, str],
    *,
    path_segment: bool = False,
    header: bool = False,
) -> str:
    """Substitute `{args.X}`/`{cred.F}` in one pass. In a URL path, values are percent-encoded whole; elsewhere
    CR, LF and NUL are refused, and in a header every control character but the tab."""

    def sub(m: re.Match[str]) -> str:
        scope, name = m.group(1), m.group(2)
        if scope == "args":
            text = _arg_text(args[name]) if name in args and args[name] is not None else ""
        elif scope == "cred":
            text = credential.get(name, "")
        else:
            return m.group(0)
        what = f"argument {name!r}" if scope == "args" else f"credential field {name!r}"
        if path_segment:
            if text in (".", ".."):
                raise RequestRefused(f"{what} may not be '.' or '..' in a URL path")
            return quote(text, safe="")
        if "\r" in text or "\n" in text or "\x00" in text:
            raise RequestRefused(f"{what} contains CR, LF or NUL")
        if header and _HEADER_CONTROL.search(text):
            raise RequestRefused(f"{what} contains a control character, which a header cannot carry")
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
    address = literal_address(name)
    return address is not None and address_refusal(address) is not None


def _reached_private(response: httpx2.Response) -> bool:
    """Whether the connection that carried `response` reached a private address: the address the socket is
    connected to, so a name that resolved to one (now or by a later answer of its DNS) is caught here, after
    the request was sent (without credentials) but before its answer is read."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False
    try:
        return address_refusal(ipaddress.ip_address(peer[0])) is not None
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


@dataclass(frozen=True)
class _Rendered:
    """A request's parts with the placeholders filled in."""

    url: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any


def _render_request(handler: HttpHandler, args: Mapping[str, Any], credential: Mapping[str, str]) -> _Rendered:
    """Raises RequestRefused. A header value loses its outer blanks: HTTP ignores them, and h11 refuses them."""
    url = render_url(handler.url, args, credential)
    params = {k: render(v, args, credential) for k, v in handler.query.items() if not _only_absent_arg(v, args)}
    headers = {
        k: render(v, args, credential, header=True).strip(" \t")
        for k, v in handler.headers.items()
        if not _only_absent_arg(v, args)
    }
    body = render_json(handler.json_body, args, credential) if handler.json_body is not None else None
    for name, value in headers.items():
        if not value.isascii():  # httpx2 would raise UnicodeEncodeError: a crash, not an answer
            raise RequestRefused(f"header {name!r} would carry non-ASCII text")
    return _Rendered(url, params, headers, body)


def _build(client: httpx2.AsyncClient, handler: HttpHandler, rendered: _Rendered) -> httpx2.Request:
    return client.build_request(
        handler.method,
        rendered.url,
        params=rendered.params,
        headers=rendered.headers,
        json=rendered.body,
        timeout=httpx2.Timeout(handler.timeout),
    )


def _check_arguments(client: httpx2.AsyncClient, handler: HttpHandler, args: Mapping[str, Any]) -> httpx2.Request:
    """The request with every credential empty: what the arguments alone make of it. RequestRefused names
    what is wrong with them."""
    blank = _render_request(handler, args, {})
    at_least = len(blank.url) + sum(len(k) + len(v) + 2 for k, v in blank.params.items())  # before encoding
    if at_least > MAX_ARGUMENTS_URL:
        raise RequestRefused(LONG_URL)
    try:
        request = _build(client, handler, blank)
    except httpx2.InvalidURL:
        raise RequestRefused("the arguments make the URL invalid") from None
    except UnicodeError:  # a lone surrogate (`"\ud800"` in JSON) has no UTF-8
        raise RequestRefused("the arguments are not valid Unicode text") from None
    if len(str(request.url)) > MAX_ARGUMENTS_URL:
        raise RequestRefused(LONG_URL)
    return request


class _CredentialTooLong(Exception):
    """The credential alone makes the URL longer than MAX_CREDENTIAL_URL allows."""


def _not_sent(host: str, exc: BaseException) -> ToolOutput:
    """The one answer for a request that fails once the credential is in it: its text and length are the
    same whatever the secret; the cause goes to the log (never a value) under the call's ref."""
    ref = request_id.get() or new_ref()
    if isinstance(exc, RequestRefused):
        cause = str(exc)  # our own text: it names a field, never shows a value
    elif isinstance(exc, _CredentialTooLong):
        cause = f"the credential makes the URL longer than the {MAX_CREDENTIAL_URL} characters it may add"
    else:  # httpx2's texts may quote a character of the value: the type says enough
        cause = type(exc).__name__
    logger.warning("the request to %s could not be sent (ref: %s): %s", host, ref, cause)
    return ToolOutput.error(f"the request to {host} could not be sent (ref: {ref})")


async def run_http(
    client: httpx2.AsyncClient,
    handler: HttpHandler,
    spec: CredentialSpec | None,
    args: Mapping[str, Any],
    credential: Credential,
) -> ToolOutput:
    # First what depends on the arguments alone, named precisely; then, with the credential in place, any
    # failure is one text: an error that only some secrets cause would tell them apart (an argument grown a
    # character at a time would find a secret's length where httpx2 gives up on a long URL).
    try:
        probe = _check_arguments(client, handler, args)
    except RequestRefused as exc:
        return ToolOutput.error(f"request refused: {exc}")
    host = probe.url.host
    try:
        request = _build(client, handler, _render_request(handler, args, credential))
        if len(str(request.url)) - len(str(probe.url)) > MAX_CREDENTIAL_URL:
            raise _CredentialTooLong
        auth = _basic_auth(spec, credential) if spec is not None and _uses_basic_auth(spec, handler) else None
    except Exception as exc:
        return _not_sent(host, exc)
    secret_headers = {k for k, v in handler.headers.items() if "{cred." in v}
    secret_body = handler.json_body is not None and "{cred." in json.dumps(handler.json_body)
    home = _origin(request.url)
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
    except httpx2.LocalProtocolError as exc:  # what h11 refuses to send: the credential's doing, as above
        return _not_sent(host, exc)
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
    parsed = _json_of(response, text)
    if response.status_code >= 400:
        # redact before cutting: a cut through a secret would leave a prefix no redactor recognises; JSON as a
        # structure, so that a secret split over two of its values is found
        redactor = redactor_for(credential)
        if isinstance(parsed, (dict, list)):
            body = json.dumps(redactor.obj(parsed), ensure_ascii=False)
        else:
            body = redactor.text(text)
        body = body if len(body) <= MAX_ERROR_BODY else body[:MAX_ERROR_BODY] + "…"
        return ToolOutput.error(f"HTTP {response.status_code} from {host}: {body}")
    if isinstance(parsed, dict):
        return ToolOutput(text, parsed, mirrored=True)
    return ToolOutput(text)


def _json_of(response: httpx2.Response, text: str) -> Any:
    """The body as JSON when it says it is JSON and is, else None."""
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
