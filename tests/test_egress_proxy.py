"""The egress proxy with real TLS: clients that hold only a placeholder call a local HTTPS API (its own host name,
its own CA) through the proxy, and the API sees the real token; a placeholder toward any other host is blocked."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import ssl
import stat
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import httpx2
import pytest

from mcp_credgate.egress_ca import Authority
from mcp_credgate.egress_proxy import MAX_BODY, MAX_CONNECTIONS, MAX_IN_FLIGHT, EgressEvent, EgressProxy
from mcp_credgate.egress_swap import EgressRules
from tests.support.egress_api import Api, https_api
from tests.support.egress_api import plain_api as plain_api_serving

pytestmark = [pytest.mark.no_store, pytest.mark.anyio]

API = "api.example.test"
OTHER = "elsewhere.example.test"
REAL = "real-token-9f8e7d6c5b4a"
PLACEHOLDER = "cgph_PLACEHOLDERPLACEHOLDER234567"
USER_REAL = "real-user-pass-0a1b2c"
USER_PLACEHOLDER = "cgph_USERPLACEHOLDERUSERPLACEHO"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with https_api(tmp_path_factory.mktemp("api"), [API, OTHER], REAL, USER_REAL) as serving:
        yield serving


@pytest.fixture(scope="module")
def plain_api() -> Iterator[Api]:
    with plain_api_serving(REAL, USER_REAL) as serving:
        yield serving


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.new("test")


@dataclass
class Running:
    proxy: EgressProxy
    events: list[EgressEvent]
    trust: ssl.SSLContext
    trust_file: Path


def _rules(other: Literal["deny", "tunnel"] = "deny", body_fields: frozenset[str] = frozenset()) -> EgressRules:
    return EgressRules(
        swaps={PLACEHOLDER: REAL, USER_PLACEHOLDER: USER_REAL},
        hosts=frozenset({API}),
        other=other,
        body_fields=body_fields,
    )


async def _running(
    rules: EgressRules, authority: Authority, api: Api, plain_api: Api, tmp_path: Path
) -> AsyncIterator[Running]:
    events: list[EgressEvent] = []
    trust_file = tmp_path / "egress-ca.pem"
    trust_file.write_bytes(authority.certificate_pem())
    trust = ssl.create_default_context(cafile=trust_file)
    resolve = {API: ("127.0.0.1", api.port), OTHER: ("127.0.0.1", api.port)}
    plain = {f"plain.{API}": ("127.0.0.1", plain_api.port), f"plain.{OTHER}": ("127.0.0.1", plain_api.port)}
    async with EgressProxy(
        rules, authority, on_event=events.append, upstream_ca=api.ca_file, resolve={**resolve, **plain}
    ) as proxy:
        yield Running(proxy, events, trust, trust_file)


@pytest.fixture
async def running(authority: Authority, api: Api, plain_api: Api, tmp_path: Path) -> AsyncIterator[Running]:
    rules = EgressRules(
        swaps={PLACEHOLDER: REAL, USER_PLACEHOLDER: USER_REAL},
        hosts=frozenset({API}),
        body_fields=frozenset({"token"}),
        plain_hosts=frozenset({f"plain.{API}:8080"}),
    )
    async for value in _running(rules, authority, api, plain_api, tmp_path):
        yield value


@pytest.fixture
async def tunnelling(authority: Authority, api: Api, plain_api: Api, tmp_path: Path) -> AsyncIterator[Running]:
    async for value in _running(_rules("tunnel"), authority, api, plain_api, tmp_path):
        yield value


def _client(running: Running) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(proxy=running.proxy.url, verify=running.trust, timeout=20)


async def test_a_bearer_placeholder_reaches_the_declared_api_as_the_real_token(running: Running, api: Api) -> None:
    async with _client(running) as client:
        response = await client.get(f"https://{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})
    assert response.status_code == 200
    assert api.received[-1]["headers"]["authorization"] == f"Bearer {REAL}"


async def test_the_echoed_token_comes_back_to_the_client_as_the_placeholder(running: Running) -> None:
    async with _client(running) as client:
        response = await client.get(f"https://{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})
    assert REAL not in response.text
    assert response.json()["token"] == PLACEHOLDER
    assert response.json()["received"]["headers"]["authorization"] == f"Bearer {PLACEHOLDER}"
    assert response.headers["x-echo-token"] == PLACEHOLDER
    assert int(response.headers["content-length"]) == len(response.content)


async def test_basic_authorization_is_decoded_swapped_and_encoded_again(running: Running, api: Api) -> None:
    async with _client(running) as client:
        response = await client.get(f"https://{API}/v1/me", auth=("me", USER_PLACEHOLDER))
    assert response.status_code == 200
    sent = api.received[-1]["headers"]["authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")).decode() == f"me:{USER_REAL}"


async def test_an_echoed_basic_authorization_comes_back_with_the_placeholder(running: Running) -> None:
    async with _client(running) as client:
        response = await client.get(f"https://{API}/v1/me", auth=("me", USER_PLACEHOLDER))
    echoed = response.json()["received"]["headers"]["authorization"]
    assert base64.b64decode(echoed.removeprefix("Basic ")).decode() == f"me:{USER_PLACEHOLDER}"


async def test_an_answer_holding_the_real_value_where_no_placeholder_fits_is_refused(running: Running) -> None:
    async with _client(running) as client:
        response = await client.get(f"https://{API}/v1/encoded", headers={"authorization": f"Bearer {PLACEHOLDER}"})
    assert response.status_code == 502
    assert base64.b64encode(REAL.encode()).decode()[:8] not in response.text


async def test_a_placeholder_in_the_query_string_is_swapped(running: Running, api: Api) -> None:
    async with _client(running) as client:
        response = await client.get(f"https://{API}/v1/search", params={"q": "a b", "token": PLACEHOLDER})
    assert response.status_code == 200
    assert api.received[-1]["path"] == f"/v1/search?q=a+b&token={REAL}"


async def test_only_the_named_json_body_field_is_swapped(running: Running, api: Api) -> None:
    async with _client(running) as client:
        response = await client.post(f"https://{API}/v1/login", json={"token": PLACEHOLDER, "note": PLACEHOLDER})
    assert response.status_code == 200
    assert json.loads(api.received[-1]["body"]) == {"token": REAL, "note": PLACEHOLDER}


async def test_a_plain_http_request_to_a_declared_host_is_swapped(running: Running, plain_api: Api) -> None:
    async with _client(running) as client:
        response = await client.get(
            f"http://plain.{API}:8080/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"}
        )
    assert response.status_code == 200
    assert plain_api.received[-1]["headers"]["authorization"] == f"Bearer {REAL}"
    assert response.json()["token"] == PLACEHOLDER


async def test_urllib_through_the_proxy_is_swapped_too(running: Running, api: Api) -> None:
    def call() -> tuple[int, bytes]:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": running.proxy.url}),
            urllib.request.HTTPSHandler(context=running.trust),
        )
        request = urllib.request.Request(f"https://{API}/v1/me", headers={"Authorization": f"Bearer {PLACEHOLDER}"})
        with opener.open(request, timeout=20) as response:
            return response.status, response.read()

    status, body = await anyio.to_thread.run_sync(call)
    assert status == 200
    assert api.received[-1]["headers"]["authorization"] == f"Bearer {REAL}"
    assert REAL.encode() not in body


async def test_a_placeholder_sent_through_connect_to_an_undeclared_host_is_blocked(running: Running) -> None:
    for target in (f"{OTHER}:443", f"{PLACEHOLDER}.{OTHER}:443"):
        status = await _raw_connect(running.proxy.url, target, f"x-token: {PLACEHOLDER}\r\n")
        assert status == 403
    assert running.events == [
        EgressEvent("blocked_placeholder", OTHER, "header x-token"),
        EgressEvent("blocked_placeholder", f"[placeholder].{OTHER}", "connect target"),
    ]
    assert all(REAL not in repr(event) and PLACEHOLDER not in repr(event) for event in running.events)


async def test_a_placeholder_in_a_plain_request_to_an_undeclared_host_is_blocked(
    running: Running, plain_api: Api
) -> None:
    before = len(plain_api.received)
    async with _client(running) as client:
        in_body = await client.post(f"http://plain.{OTHER}/upload", content=f"stolen={PLACEHOLDER}")
        in_query = await client.get(f"http://plain.{OTHER}/upload", params={"x": PLACEHOLDER})
    assert (in_body.status_code, in_query.status_code) == (403, 403)
    assert len(plain_api.received) == before
    assert [(event.kind, event.field) for event in running.events] == [
        ("blocked_placeholder", "body"),
        ("blocked_placeholder", "request target"),
    ]


async def test_a_placeholder_in_plain_http_to_a_host_declared_for_tls_only_is_blocked(
    running: Running, plain_api: Api
) -> None:
    before = len(plain_api.received)
    async with _client(running) as client:
        response = await client.get(f"http://plain.{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})
    assert response.status_code == 403  # declared for http:// on port 8080 only: port 80 would carry it in clear
    assert len(plain_api.received) == before
    assert running.events == [EgressEvent("blocked_placeholder", f"plain.{API}", "header authorization")]


async def test_the_proxy_listens_on_a_unix_socket_when_given_one(
    authority: Authority, api: Api, plain_api: Api, tmp_path: Path
) -> None:
    rules = EgressRules(swaps={PLACEHOLDER: REAL}, hosts=frozenset(), plain_hosts=frozenset({f"plain.{API}:8080"}))
    where = tmp_path / "proxy.sock"
    resolve = {f"plain.{API}": ("127.0.0.1", plain_api.port)}
    async with EgressProxy(rules, authority, resolve=resolve, unix_socket=where):
        assert stat.S_IMODE(where.stat().st_mode) == 0o600
        stream = await anyio.connect_unix(where)
        async with stream:
            await stream.send(
                f"GET http://plain.{API}:8080/v1/me HTTP/1.1\r\nHost: plain.{API}:8080\r\n"
                f"Authorization: Bearer {PLACEHOLDER}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            with anyio.move_on_after(20):
                while chunk := await stream.receive():
                    answer += chunk
                    if b"}" in chunk:
                        break
    assert answer.startswith(b"HTTP/1.1 200")
    assert plain_api.received[-1]["headers"]["authorization"] == f"Bearer {REAL}"
    assert REAL.encode() not in answer
    assert not where.exists()  # removed on close


async def test_other_deny_refuses_a_connect_to_an_undeclared_host(running: Running) -> None:
    async with _client(running) as client:
        with pytest.raises(httpx2.ProxyError):
            await client.get(f"https://{OTHER}/")
    assert running.events == [EgressEvent("denied", OTHER)]


async def test_other_tunnel_passes_a_connect_to_an_undeclared_host_unseen(tunnelling: Running, api: Api) -> None:
    api_trust = ssl.create_default_context(cafile=api.ca_file)  # the tunnel ends at the API itself, not at us
    async with httpx2.AsyncClient(proxy=tunnelling.proxy.url, verify=api_trust, timeout=20) as client:
        response = await client.get(f"https://{OTHER}/", headers={"authorization": f"Bearer {REAL}"})
    assert response.status_code == 200
    assert tunnelling.events == []


async def test_nothing_logged_holds_the_real_value(
    running: Running, plain_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with _client(running) as client:
        await client.get(f"https://{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})
        await client.get(f"http://plain.{OTHER}/", params={"x": PLACEHOLDER})
    assert any("blocked" in record.getMessage() for record in caplog.records)
    assert REAL not in caplog.text
    ours = [record.getMessage() for record in caplog.records if record.name.startswith("mcp_credgate")]
    assert ours and not any(PLACEHOLDER in message for message in ours)  # the client's own log may show it


def test_the_rules_repr_shows_no_value() -> None:
    rules = _rules()
    assert REAL not in repr(rules) and PLACEHOLDER not in repr(rules)
    assert "2 placeholders" in repr(rules)


async def _raw_connect(proxy_url: str, target: str, extra_headers: str) -> int:
    host, port = proxy_url.removeprefix("http://").split(":")

    def call() -> int:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n{extra_headers}\r\n".encode())
            return int(sock.recv(4096).split(b" ", 2)[1])

    return await anyio.to_thread.run_sync(call)


async def test_an_api_whose_certificate_does_not_verify_never_sees_the_token(
    authority: Authority, api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = len(api.received)
    trust_file = tmp_path / "egress-ca.pem"
    trust_file.write_bytes(authority.certificate_pem())
    # the system's trust: the API's own test CA is not in it
    async with (
        EgressProxy(_rules(), authority, resolve={API: ("127.0.0.1", api.port)}) as proxy,
        httpx2.AsyncClient(proxy=proxy.url, verify=ssl.create_default_context(cafile=trust_file)) as client,
    ):
        response = await client.get(f"https://{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})
    assert response.status_code == 502
    assert len(api.received) == before
    assert f"{API} did not prove its identity" in caplog.text


async def test_several_requests_inside_one_connect_are_each_swapped(running: Running, api: Api) -> None:
    async with _client(running) as client:
        for _ in range(3):
            response = await client.get(f"https://{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})
            assert response.status_code == 200
    assert [seen["headers"]["authorization"] for seen in api.received[-3:]] == [f"Bearer {REAL}"] * 3


async def test_other_tunnel_forwards_a_plain_request_without_a_placeholder_unchanged(
    tunnelling: Running, plain_api: Api
) -> None:
    async with _client(tunnelling) as client:
        response = await client.get(f"http://plain.{OTHER}/news", headers={"x-note": "hello"})
    assert response.status_code == 401  # the API's own answer: no token was given
    assert plain_api.received[-1]["headers"]["x-note"] == "hello"
    assert tunnelling.events == []


async def test_the_leaf_keys_pass_through_a_private_folder_removed_on_close(
    authority: Authority, api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    trust = tmp_path / "egress-ca.pem"
    trust.write_bytes(authority.certificate_pem())
    proxy = EgressProxy(_rules(), authority, upstream_ca=api.ca_file, resolve={API: ("127.0.0.1", api.port)})
    async with proxy, httpx2.AsyncClient(proxy=proxy.url, verify=ssl.create_default_context(cafile=trust)) as client:
        response = await client.get(f"https://{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})
        assert response.status_code == 200
        (folder,) = tmp_path.glob("credgate-egress-*")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert list(folder.iterdir()) == []  # each file is removed once loaded
    assert not folder.exists()


async def test_curl_sending_a_large_json_body_with_expect_100_continue_is_swapped(
    running: Running, api: Api, tmp_path: Path
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"token": PLACEHOLDER, "padding": "x" * 2_000_000}))  # over 1 MB: curl expects 100
    command = [curl, "--silent", "--show-error", "--verbose", "--proxy", running.proxy.url]
    command += ["--cacert", str(running.trust_file), "--header", "content-type: application/json"]
    command += ["--data-binary", f"@{body}", f"https://{API}/v1/login"]
    result = await anyio.run_process(
        command,
        env={"PATH": "/usr/bin:/bin", "NO_PROXY": ""},
    )
    assert b"> Expect: 100-continue" in result.stderr and b"< HTTP/1.1 100" in result.stderr
    assert json.loads(result.stdout)["token"] == PLACEHOLDER
    assert json.loads(api.received[-1]["body"])["token"] == REAL


async def test_a_request_body_over_the_cap_is_refused(running: Running, api: Api) -> None:
    before = len(api.received)
    async with _client(running) as client:
        response = await client.post(f"https://{API}/v1/login", content=b"x" * (MAX_BODY + 1))
    assert response.status_code == 413
    assert len(api.received) == before


# -- connections to the API, kept and reused ------------------------------------------------------------------


async def test_requests_to_the_same_api_share_one_connection_to_it(running: Running, api: Api) -> None:
    before = len(api.received)
    async with _client(running) as client:
        for _ in range(3):
            assert (
                await client.get(f"https://{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})
            ).status_code == 200

    assert len({seen["connection"] for seen in api.received[before:]}) == 1


async def test_an_answer_saying_connection_close_is_not_kept(running: Running, api: Api) -> None:
    before = len(api.received)
    async with _client(running) as client:
        for _ in range(2):
            await client.get(f"https://{API}/v1/close", headers={"authorization": f"Bearer {PLACEHOLDER}"})

    assert len({seen["connection"] for seen in api.received[before:]}) == 2


async def test_a_kept_connection_the_api_closed_meanwhile_is_replaced_and_the_request_still_answered(
    authority: Authority, tmp_path: Path
) -> None:
    rules = EgressRules(swaps={PLACEHOLDER: REAL}, hosts=frozenset({API}))
    with https_api(tmp_path, [API], REAL, idle_timeout=0.2) as impatient:
        trust = tmp_path / "egress-ca.pem"
        trust.write_bytes(authority.certificate_pem())
        resolve = {API: ("127.0.0.1", impatient.port)}
        async with EgressProxy(rules, authority, upstream_ca=impatient.ca_file, resolve=resolve) as proxy:
            context = ssl.create_default_context(cafile=trust)
            async with httpx2.AsyncClient(proxy=proxy.url, verify=context, timeout=20) as client:
                first = await client.get(f"https://{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})
                await anyio.sleep(0.6)  # the API closes the idle connection the proxy kept
                second = await client.get(f"https://{API}/v1/me", headers={"authorization": f"Bearer {PLACEHOLDER}"})

    assert (first.status_code, second.status_code) == (200, 200)
    assert len({seen["connection"] for seen in impatient.received}) == 2


# -- what a hostile upstream or API tries -----------------------------------------------------------------------


async def test_an_answer_echoing_the_real_value_in_a_header_name_is_refused(running: Running) -> None:
    async with _client(running) as client:
        response = await client.get(f"https://{API}/v1/header-name", headers={"authorization": f"Bearer {PLACEHOLDER}"})
    assert response.status_code == 502
    assert not any(REAL in name for name in response.headers)


def _inside_connect(running: Running, request: bytes) -> bytes:
    """`request` sent as it is inside a CONNECT to the declared API (TLS ended by the proxy); its answer's head."""
    host, port = running.proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"CONNECT {API}:443 HTTP/1.1\r\nhost: {API}:443\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        with running.trust.wrap_socket(sock, server_hostname=API) as tls:
            tls.sendall(request)
            return tls.recv(4096)


async def test_a_host_header_naming_another_host_does_not_take_the_real_value_there(
    running: Running, api: Api, plain_api: Api
) -> None:
    # the declared API's front (a CDN, a shared load balancer) would route by the Host header: domain fronting
    request = (
        f"GET /v1/me HTTP/1.1\r\nhost: {OTHER}\r\nauthorization: Bearer {PLACEHOLDER}\r\nconnection: close\r\n\r\n"
    )
    await anyio.to_thread.run_sync(_inside_connect, running, request.encode())
    assert api.received[-1]["headers"]["host"] == API
    async with _client(running) as client:
        await client.get(
            f"http://plain.{API}:8080/v1/me",
            headers={"host": f"plain.{OTHER}", "authorization": f"Bearer {PLACEHOLDER}"},
        )
    assert plain_api.received[-1]["headers"]["host"] == f"plain.{API}:8080"


async def test_an_absolute_target_naming_another_host_inside_a_connect_is_refused(running: Running, api: Api) -> None:
    before = len(api.received)
    request = f"GET https://{OTHER}/v1/me HTTP/1.1\r\nhost: {API}\r\nauthorization: Bearer {PLACEHOLDER}\r\n\r\n"
    head = await anyio.to_thread.run_sync(_inside_connect, running, request.encode())
    assert head.startswith(b"HTTP/1.1 400")
    assert len(api.received) == before


async def _post_and_longest_stall(running: Running, url: str, **content: Any) -> tuple[int, float]:
    """The status of a POST through the proxy, and the longest the event loop it shares stalled meanwhile (the
    proxy runs in the gateway's loop: while it stalls, no other group's call moves)."""
    gaps: list[float] = []

    async def tick() -> None:
        while True:
            before = anyio.current_time()
            await anyio.sleep(0.01)
            gaps.append(anyio.current_time() - before)

    async with anyio.create_task_group() as group, _client(running) as client:
        group.start_soon(tick)
        response = await client.post(url, **content)
        group.cancel_scope.cancel()
    return response.status_code, max(gaps)


async def test_checking_a_large_answer_does_not_stall_the_gateways_event_loop(running: Running) -> None:
    # a large answer full of escapes (here the API's echo of the upstream's own body) takes the redactor seconds
    body = {"token": PLACEHOLDER, "x": "&amp;%41" * 400_000}
    status, stall = await _post_and_longest_stall(running, f"https://{API}/v1/login", json=body)
    assert status == 200
    assert stall < 0.5


async def test_looking_for_a_placeholder_in_a_large_request_does_not_stall_the_gateways_event_loop(
    running: Running,
) -> None:
    # a plain request toward a host not declared is searched for a placeholder, percent-decoded too: over 15 MB
    # of escapes that took the loop nearly two seconds
    status, stall = await _post_and_longest_stall(running, f"http://plain.{OTHER}/upload", content=b"%41&" * 3_900_000)
    assert status == 403  # not declared, and no placeholder found in it
    assert stall < 0.5


async def test_spellings_of_a_declared_host_share_one_tls_context(running: Running) -> None:
    # each case and final-dot variant of a name made a TLS context of its own, kept for the proxy's life
    for spelling in (API, API.upper(), f"{API}.", "Api.Example.Test"):
        assert await _raw_connect(running.proxy.url, f"{spelling}:443", "") == 200
    assert len(running.proxy._contexts) == 1


async def test_an_upstream_opening_connections_without_end_is_held_to_its_share(running: Running) -> None:
    # each held connection is a file descriptor of the gateway's: without a cap one upstream could use up the
    # gateway's own (agents, the store, other upstreams)
    host, port = running.proxy.url.removeprefix("http://").split(":")
    opened = [await anyio.connect_tcp(host, int(port)) for _ in range(MAX_CONNECTIONS + 20)]
    closed_by_the_proxy = 0

    async def watch(stream: anyio.abc.SocketStream) -> None:
        nonlocal closed_by_the_proxy
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            closed_by_the_proxy += 1

    with anyio.move_on_after(1):
        async with anyio.create_task_group() as group:
            for stream in opened:
                group.start_soon(watch, stream)
    for stream in opened:
        await stream.aclose()
    assert closed_by_the_proxy == 20


async def test_an_upstream_sending_many_requests_at_once_has_at_most_max_in_flight_of_them_held(
    running: Running, plain_api: Api
) -> None:
    # each request's body and answer are held whole (up to MAX_BODY each): with a turn per request and no more
    # than MAX_IN_FLIGHT turns, one upstream holds at most that many in the gateway, however many connections
    async def one(client: httpx2.AsyncClient) -> int:
        headers = {"authorization": f"Bearer {PLACEHOLDER}"}
        return (await client.post(f"http://plain.{API}:8080/v1/slow", headers=headers, content=b"x")).status_code

    limits = httpx2.Limits(max_connections=MAX_IN_FLIGHT + 6)
    client = httpx2.AsyncClient(proxy=running.proxy.url, timeout=30, limits=limits)
    async with client, anyio.create_task_group() as group:
        for _ in range(MAX_IN_FLIGHT + 6):
            group.start_soon(one, client)

    slow = [seen for seen in plain_api.received if "most at once" in seen]
    assert len(slow) == MAX_IN_FLIGHT + 6
    assert max(seen["most at once"] for seen in slow) == MAX_IN_FLIGHT
