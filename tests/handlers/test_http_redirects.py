"""An `http` handler's redirect policy (`redirects` in `[handler]`): which hops are followed, on every hop.

Two kinds of test: through the gateway against real local upstreams on 127.0.0.1 (plain http: the declared
origin, another origin, a third one), and `run_http` itself over httpx2's `MockTransport` for what needs
https origins and addresses no test may reach (a private network, a name that resolves to one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client

from mcp_credgate.credential import Credential
from mcp_credgate.declarations import CredentialSpec, HttpHandler
from mcp_credgate.handlers import ToolOutput
from mcp_credgate.handlers.http import is_private_host, run_http
from tests.support.gateway import (
    Upstream,
    World,
    assert_no_leak,
    connect,
    http_tool,
    make_canary,
    result_text,
    running_upstream,
)

pytestmark = pytest.mark.anyio

TOKEN = make_canary("RD")
LOCATION_SECRET = make_canary("LS")  # carried by a Location the gateway must not repeat
BOTH = '{ Authorization = "Bearer {cred.token}", X-Api-Key = "{cred.token}" }'


@pytest.fixture
def away() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


@pytest.fixture
def third() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


def policy_tools(up: Upstream, away: Upstream, third: Upstream) -> dict[str, str]:
    def tool(name: str, path: str, policy: str | None) -> str:
        extra = "" if policy is None else f"redirects = {policy}"
        return http_tool(name, up.url(path), headers=BOTH, extra=extra)

    return {
        "default_away": tool("default_away", "/hop-away", None),
        "default_home": tool("default_home", "/hop-home", None),
        "default_secret": tool("default_secret", "/hop-secret", None),
        "never_home": tool("never_home", "/hop-home", "false"),
        "never_away": tool("never_away", "/hop-away", "false"),
        "listed_away": tool("listed_away", "/hop-away", f'["{away.base}"]'),
        "listed_home": tool("listed_home", "/hop-home", f'["{away.base}"]'),
        "listed_other": tool("listed_other", "/hop-away", f'["{third.base}"]'),
        "listed_bounce": tool("listed_bounce", "/hop-bounce", f'["{away.base}"]'),
        "https_away": tool("https_away", "/hop-away", '"https"'),
    }


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream, away: Upstream, third: Upstream) -> Iterator[World]:
    upstream.redirects.update(
        {
            "/hop-away": away.url("/landed"),
            "/hop-home": upstream.url("/landed"),
            "/hop-secret": away.url(f"/landed?sig={LOCATION_SECRET}"),
            "/hop-bounce": away.url("/bounce"),
        }
    )
    away.redirects["/bounce"] = third.url("/landed")
    tools = policy_tools(upstream, away, third)
    w = World.create(tmp_path, tools)
    w.add_credential("svc-main", "svc", {"token": TOKEN})
    w.allow_and_bind("dev", tools, {"svc": "svc-main"})
    yield w
    w.close()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    async with world.gateway() as gw, connect(gw, "dev") as c:
        yield c


# -- same-origin, the default ------------------------------------------------------------------------


async def test_by_default_a_redirect_to_another_origin_is_not_followed(
    client: Client, upstream: Upstream, away: Upstream
) -> None:
    result = await client.call_tool("default_away", {})

    assert result.is_error
    assert result_text(result) == "redirect not followed: the tool's redirect policy is same-origin"
    assert [s.path for s in upstream.seen()] == ["/hop-away"]
    assert away.seen() == []


async def test_by_default_a_redirect_within_the_declared_origin_is_followed_with_the_credential(
    client: Client, upstream: Upstream
) -> None:
    result = await client.call_tool("default_home", {})

    assert not result.is_error, result_text(result)
    _, landed = upstream.seen()
    assert landed.path == "/landed"
    assert landed.header("Authorization") == f"Bearer {TOKEN}"


async def test_a_refused_redirect_names_neither_its_location_nor_its_target(client: Client, away: Upstream) -> None:
    result = await client.call_tool("default_secret", {})

    text = result.model_dump_json()
    assert result.is_error
    assert LOCATION_SECRET not in text
    assert "sig" not in text and str(away.port) not in text and "landed" not in text
    assert away.seen() == []


# -- false: no redirect at all -----------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["never_home", "never_away"])
async def test_with_redirects_false_not_even_a_same_origin_redirect_is_followed(
    client: Client, upstream: Upstream, away: Upstream, tool: str
) -> None:
    result = await client.call_tool(tool, {})

    assert result.is_error
    assert "redirect not followed: the tool's redirect policy is false" in result_text(result)
    assert len(upstream.seen()) == 1
    assert away.seen() == []


# -- a list of origins ---------------------------------------------------------------------------------


async def test_a_listed_origin_is_followed_without_the_credential(
    client: Client, upstream: Upstream, away: Upstream
) -> None:
    result = await client.call_tool("listed_away", {})

    assert not result.is_error, result_text(result)
    [landed] = away.seen()
    assert landed.path == "/landed"
    assert landed.header("Authorization") is None and landed.header("X-Api-Key") is None
    assert_no_leak(landed.everything(), TOKEN)
    assert_no_leak(result.model_dump_json(), TOKEN)


async def test_a_list_of_origins_still_allows_the_declared_origin(client: Client, upstream: Upstream) -> None:
    result = await client.call_tool("listed_home", {})

    assert not result.is_error, result_text(result)
    assert [s.path for s in upstream.seen()] == ["/hop-home", "/landed"]


async def test_an_origin_the_list_lacks_is_not_followed(client: Client, away: Upstream, third: Upstream) -> None:
    result = await client.call_tool("listed_other", {})

    assert result.is_error
    assert result_text(result).startswith("redirect not followed: the tool's redirect policy")
    assert "list" in result_text(result)
    assert away.seen() == [] and third.seen() == []


async def test_the_policy_applies_to_every_hop_of_a_chain(
    client: Client, upstream: Upstream, away: Upstream, third: Upstream
) -> None:
    result = await client.call_tool("listed_bounce", {})

    assert result.is_error
    assert result_text(result).startswith("redirect not followed: the tool's redirect policy")
    assert [s.path for s in away.seen()] == ["/bounce"]
    assert third.seen() == []


# -- https: any https origin -----------------------------------------------------------------------------


async def test_the_https_policy_does_not_follow_a_redirect_to_plain_http(client: Client, away: Upstream) -> None:
    result = await client.call_tool("https_away", {})

    assert result.is_error
    assert result_text(result).startswith("redirect not followed: the tool's redirect policy is https")
    assert away.seen() == []


# -- run_http itself, over a mock transport: https origins and private addresses --------------------------

PUBLIC_HOME = "https://api.example.com/v1/items"
MOCK_TOKEN = make_canary("MK")
SPEC = CredentialSpec.model_validate({"type": "svc", "fields": [{"name": "token", "kind": "token"}]})
CREDENTIAL = Credential("svc-main", "svc", {"token": MOCK_TOKEN}, frozenset({"token"}))
INTERNAL_BODY = "the internal service's own page"


class _Peer:
    """What a network stream says about its far end (`server_addr`), as httpcore2's streams do."""

    def __init__(self, address: str) -> None:
        self.address = address

    def get_extra_info(self, info: str) -> Any:
        return (self.address, 443) if info == "server_addr" else None


class Mock:
    """A transport that answers the declared URL with a redirect to `location` and anything else with a page;
    `resolves_to` gives the address a host's connection reached."""

    def __init__(self, location: str, resolves_to: dict[str, str] | None = None) -> None:
        self.location = location
        self.resolves_to = resolves_to or {}
        self.seen: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(request)
        if len(self.seen) == 1:
            return httpx2.Response(302, headers={"Location": self.location}, text="moved")
        address = self.resolves_to.get(request.url.host)
        extensions = {"network_stream": _Peer(address)} if address else {}
        return httpx2.Response(200, text=INTERNAL_BODY, extensions=extensions)

    def hosts(self) -> list[str]:
        return [r.url.host for r in self.seen]


def handler(policy: Any, url: str = PUBLIC_HOME) -> HttpHandler:
    headers = {"Authorization": "Bearer {cred.token}"}
    return HttpHandler.model_validate({"kind": "http", "url": url, "headers": headers, "redirects": policy})


async def hop(
    policy: Any, location: str, *, url: str = PUBLIC_HOME, resolves_to: dict[str, str] | None = None
) -> tuple[ToolOutput, Mock]:
    """Run the tool whose declared URL answers with a redirect to `location`."""
    mock = Mock(location, resolves_to)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(mock), follow_redirects=False) as client:
        output = await run_http(client, handler(policy, url), SPEC, {}, CREDENTIAL)
    return output, mock


@pytest.mark.parametrize(
    "policy", ["same-origin", "https", False, ("https://api.example.com", "http://api.example.com")]
)
@pytest.mark.parametrize("location", ["http://api.example.com/v1/other", "http://cdn.example.com/x"])
async def test_no_policy_follows_a_redirect_from_https_to_http(policy: Any, location: str) -> None:
    output, mock = await hop(policy, location)

    assert output.is_error
    assert output.text.startswith("redirect not followed")
    assert mock.hosts() == ["api.example.com"]


PRIVATE_TARGETS = [
    "https://10.0.0.5/x",
    "https://172.16.1.1/x",
    "https://192.168.1.10/x",
    "https://127.0.0.1/x",
    "https://127.1/x",
    "https://2130706433/x",
    "https://0x7f000001/x",
    "https://0.0.0.0/x",
    "https://169.254.169.254/latest/meta-data/",
    "https://100.64.0.1/x",
    "https://[::1]/x",
    "https://[::]/x",
    "https://[fe80::1]/x",
    "https://[fd00::1]/x",
    "https://[::ffff:10.0.0.1]/x",
    "https://[64:ff9b::a00:1]/x",
    "https://[2002:a00:1::]/x",
    "https://localhost/x",
    "https://LOCALHOST./x",
    "https://admin.localhost/x",
]


@pytest.mark.parametrize("location", PRIVATE_TARGETS)
async def test_the_https_policy_never_leads_from_a_public_origin_to_a_private_address(location: str) -> None:
    output, mock = await hop("https", location)

    assert output.is_error
    assert output.text.startswith("redirect not followed: the tool's redirect policy is https")
    assert "private" in output.text
    assert mock.hosts() == ["api.example.com"]


@pytest.mark.parametrize(
    "host", ["8.8.8.8", "[2001:4860:4860::8888]", "[64:ff9b::808:808]", "api.example.com", "localhost.example.com"]
)
def test_a_public_address_or_a_name_is_not_taken_for_a_private_one(host: str) -> None:
    assert not is_private_host(host)


async def test_the_https_policy_follows_a_private_address_when_the_declared_host_is_one() -> None:
    output, mock = await hop("https", "https://10.0.0.5/x", url="https://10.1.2.3/api")

    assert not output.is_error, output.text
    assert mock.hosts() == ["10.1.2.3", "10.0.0.5"]


async def test_the_https_policy_follows_another_public_https_origin_without_the_credential() -> None:
    output, mock = await hop("https", "https://cdn.example.net/file")

    assert not output.is_error, output.text
    assert output.text == INTERNAL_BODY
    first, landed = mock.seen
    assert first.headers["Authorization"] == f"Bearer {MOCK_TOKEN}"
    assert "authorization" not in landed.headers


async def test_the_https_policy_never_returns_the_answer_of_a_name_that_reached_a_private_address() -> None:
    resolved = {"rebound.example.net": "10.0.0.7"}
    output, mock = await hop("https", "https://rebound.example.net/x", resolves_to=resolved)

    assert mock.hosts() == ["api.example.com", "rebound.example.net"]  # sent without the credential, but
    assert "authorization" not in mock.seen[1].headers
    assert output.is_error  # its answer never reaches the agent
    assert output.text.startswith("redirect not followed: the tool's redirect policy is https")
    assert INTERNAL_BODY not in output.text and "rebound" not in output.text


async def test_a_refused_hop_returns_neither_the_redirect_body_nor_the_location() -> None:
    output, _ = await hop("same-origin", f"https://cdn.example.net/x?sig={LOCATION_SECRET}")

    assert output.is_error
    assert "moved" not in output.text
    assert LOCATION_SECRET not in output.text and "cdn" not in output.text
