"""`http` handlers against a real local upstream that records and echoes what it receives."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from mcp_credgate.handlers.http import MAX_ERROR_BODY
from tests.support.gateway import (
    ACCOUNT_FIELDS,
    Upstream,
    World,
    _Handler,
    assert_no_leak,
    closed_port,
    connect,
    http_tool,
    leaks,
    make_canary,
    result_text,
    running_upstream,
    secret_forms,
)

pytestmark = pytest.mark.anyio

TOKEN = make_canary("HT", rich=True)
PASSWORD = make_canary("PW")
ACCT = 'type = "acct"\n' + ACCOUNT_FIELDS
STR = '{ type = "string" }'


def declarations(up: Upstream, away: Upstream) -> dict[str, str]:
    bearer_and_key = '{ Authorization = "Bearer {cred.token}", X-Api-Key = "{cred.token}" }'
    to_away = f'redirects = ["{away.base}"]'  # the default policy would not follow it at all
    return {
        "whoami": http_tool(
            "whoami", up.url("/echo"), query='{ n = "{args.n}" }', properties='properties.n = { type = "integer" }'
        ),
        "forms": http_tool("forms", up.url("/forms"), headers='{ X-Token = "{cred.token}" }'),
        "html_error": http_tool("html_error", up.url("/html-error"), headers='{ X-Token = "{cred.token}" }'),
        "in_query": http_tool("in_query", up.url("/echo"), headers="{}", query='{ key = "{cred.token}" }'),
        "basic": http_tool("basic", up.url("/echo"), credential=ACCT, headers="{}"),
        "own_auth": http_tool(
            "own_auth", up.url("/echo"), credential=ACCT, headers='{ Authorization = "Token {cred.password}" }'
        ),
        "fail500": http_tool("fail500", up.url("/status/500")),
        "refused": http_tool("refused", f"http://127.0.0.1:{closed_port()}/x"),
        "slow": http_tool("slow", up.url("/slow"), extra="timeout = 0.5"),
        "big": http_tool("big", up.url("/big"), extra="max_response_bytes = 1000"),
        "hop_away": http_tool("hop_away", up.url("/hop-away"), headers=bearer_and_key, extra=to_away),
        "hop_home": http_tool("hop_home", up.url("/hop-home"), headers=bearer_and_key),
        "hop_relative": http_tool("hop_relative", up.url("/hop-relative"), headers=bearer_and_key),
        "hop_basic_away": http_tool(
            "hop_basic_away", up.url("/hop-away"), credential=ACCT, headers="{}", extra=to_away
        ),
        "items": http_tool(
            "items",
            up.url("/items/{args.item}"),
            method="POST",
            properties="\n".join(f"properties.{p} = {STR}" for p in ("item", "q", "note", "text")),
            query='{ q = "{args.q}" }',
            headers='{ Authorization = "Bearer {cred.token}", X-Note = "{args.note}" }',
            extra='json = { text = "{args.text}", fixed = "literal" }',
        ),
        "open": http_tool(
            "open",
            up.url("/open"),
            credential=None,
            headers="{}",
            query='{ q = "{args.q}" }',
            properties=f'required = ["q"]\nproperties.q = {STR}',
        ),
    }


@pytest.fixture
def away() -> Iterator[Upstream]:
    """A second upstream on another port: another origin."""
    with running_upstream() as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream, away: Upstream) -> Iterator[World]:
    upstream.redirects.update(
        {
            "/hop-away": away.url("/landed"),
            "/hop-home": upstream.url("/landed"),
            "/hop-relative": "/landed?from=relative",
        }
    )
    tools = declarations(upstream, away)
    w = World.create(tmp_path, tools)
    w.add_credential("svc-main", "svc", {"token": TOKEN})
    w.add_credential("acct-main", "acct", {"username": "alice", "password": PASSWORD})
    w.allow_and_bind("dev", tools, {"svc": "svc-main", "acct": "acct-main"})
    yield w
    w.close()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    async with world.gateway() as gw, connect(gw, "dev") as c:
        yield c


async def test_the_upstream_receives_the_token_and_its_echo_comes_back_redacted(
    client: Client, upstream: Upstream
) -> None:
    result = await client.call_tool("whoami", {"n": 7})

    [seen] = upstream.seen()
    assert seen.header("Authorization") == f"Bearer {TOKEN}"
    assert seen.query == {"n": "7"}
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["headers"]["authorization"] == "Bearer [redacted:token]"
    assert_no_leak(result.model_dump_json(), TOKEN)


async def test_every_encoding_of_the_echoed_secret_comes_back_redacted(client: Client, upstream: Upstream) -> None:
    result = await client.call_tool("forms", {})

    assert upstream.seen()[0].header("X-Token") == TOKEN
    lines = dict(line.split("=", 1) for line in result_text(result).splitlines())
    assert set(lines) == set(secret_forms(TOKEN))
    for name, value in lines.items():
        assert "[redacted:token]" in value, name
        assert leaks(value, TOKEN) == [], name
    assert_no_leak(result.model_dump_json(), TOKEN)


async def test_an_html_error_page_that_echoes_the_secret_escaped_reaches_the_agent_redacted(client: Client) -> None:
    result = await client.call_tool("html_error", {})

    assert result.is_error
    text = result_text(result)
    assert text.startswith("HTTP 500 from 127.0.0.1: <html><body><p>Bad key [redacted:token]</p>")
    assert text.count("[redacted:token]") == 3
    assert_no_leak(result.model_dump_json(), TOKEN)


async def test_a_secret_in_the_query_string_comes_back_redacted_in_url_encoded_form(
    client: Client, upstream: Upstream
) -> None:
    result = await client.call_tool("in_query", {})

    [seen] = upstream.seen()
    assert seen.query == {"key": TOKEN}
    assert result.structured_content is not None
    assert result.structured_content["query"] == {"key": "[redacted:token]"}
    assert result.structured_content["target"] == "/echo?key=[redacted:token]"
    assert_no_leak(result.model_dump_json(), TOKEN)


async def test_a_username_password_type_is_sent_as_basic_auth_and_redacted(client: Client, upstream: Upstream) -> None:
    result = await client.call_tool("basic", {})

    [seen] = upstream.seen()
    expected = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert seen.header("Authorization") == f"Basic {expected}"
    assert result.structured_content is not None
    assert result.structured_content["headers"]["authorization"] == "Basic [redacted:password]"
    assert_no_leak(result.model_dump_json(), PASSWORD)


async def test_a_declared_authorization_header_replaces_basic_auth(client: Client, upstream: Upstream) -> None:
    await client.call_tool("own_auth", {})

    assert upstream.seen()[0].header("Authorization") == f"Token {PASSWORD}"


async def test_an_upstream_error_status_is_an_error_result_with_a_redacted_body(
    client: Client, upstream: Upstream
) -> None:
    result = await client.call_tool("fail500", {})
    after = await client.call_tool("whoami", {"n": 1})

    assert result.is_error
    text = result_text(result)
    assert "HTTP 500" in text
    assert "Bearer [redacted:token]" in text
    assert_no_leak(result.model_dump_json(), TOKEN)
    assert not after.is_error


async def test_a_refused_connection_is_an_error_result_and_the_gateway_goes_on(client: Client) -> None:
    with anyio.fail_after(10):
        result = await client.call_tool("refused", {})
        after = await client.call_tool("whoami", {"n": 1})

    assert result.is_error
    assert "could not connect" in result_text(result)
    assert not after.is_error


async def test_an_upstream_slower_than_the_timeout_is_an_error_result_and_the_gateway_goes_on(
    client: Client, upstream: Upstream
) -> None:
    with anyio.fail_after(10):
        result = await client.call_tool("slow", {})
        after = await client.call_tool("whoami", {"n": 1})

    assert result.is_error
    assert "did not answer within 0.5 s" in result_text(result)
    assert not after.is_error
    assert [s.path for s in upstream.seen()] == ["/slow", "/echo"]


async def test_a_response_over_the_size_cap_is_an_error_result(client: Client) -> None:
    result = await client.call_tool("big", {})

    assert result.is_error
    assert "larger than 1000 bytes" in result_text(result)
    assert "xxxx" not in result_text(result)


async def test_a_redirect_to_another_origin_carries_no_credential(
    client: Client, upstream: Upstream, away: Upstream
) -> None:
    result = await client.call_tool("hop_away", {})

    [first] = upstream.seen()
    [landed] = away.seen()
    assert first.header("Authorization") == f"Bearer {TOKEN}"
    assert landed.path == "/landed"
    assert landed.header("Authorization") is None
    assert landed.header("X-Api-Key") is None
    assert_no_leak(landed.everything(), TOKEN)
    assert not result.is_error


async def test_a_redirect_to_another_origin_carries_no_basic_auth(
    client: Client, upstream: Upstream, away: Upstream
) -> None:
    await client.call_tool("hop_basic_away", {})

    [landed] = away.seen()
    assert upstream.seen()[0].header("Authorization") is not None
    assert landed.header("Authorization") is None
    assert_no_leak(landed.everything(), PASSWORD)


@pytest.mark.parametrize("tool", ["hop_home", "hop_relative"])
async def test_a_same_origin_redirect_keeps_the_credential(client: Client, upstream: Upstream, tool: str) -> None:
    result = await client.call_tool(tool, {})

    first, landed = upstream.seen()
    assert first.header("Authorization") == f"Bearer {TOKEN}"
    assert landed.path == "/landed"
    assert landed.header("Authorization") == f"Bearer {TOKEN}"
    assert landed.header("X-Api-Key") == TOKEN
    assert not result.is_error


async def test_arguments_that_look_like_placeholders_are_sent_literally(client: Client, upstream: Upstream) -> None:
    args = {"item": "{cred.token}", "q": "${HOME}", "note": "{cred.token}", "text": "{cred.token} ${X} {args.q}"}

    result = await client.call_tool("items", args)

    [seen] = upstream.seen()
    assert not result.is_error
    assert seen.path == "/items/%7Bcred.token%7D"
    assert seen.query == {"q": "${HOME}"}
    assert seen.header("X-Note") == "{cred.token}"
    assert json.loads(seen.body) == {"text": "{cred.token} ${X} {args.q}", "fixed": "literal"}
    without_auth = seen.everything().replace(f"Authorization: Bearer {TOKEN}", "")
    assert_no_leak(without_auth, TOKEN)


async def test_an_argument_in_the_url_path_is_percent_encoded_whole(client: Client, upstream: Upstream) -> None:
    await client.call_tool("items", {"item": "a/b?c#d@e%f g"})

    [seen] = upstream.seen()
    assert seen.target == "/items/a%2Fb%3Fc%23d%40e%25f%20g"


@pytest.mark.parametrize("item", [".", ".."])
async def test_a_dot_segment_argument_in_the_url_path_is_refused(client: Client, upstream: Upstream, item: str) -> None:
    result = await client.call_tool("items", {"item": item})

    assert result.is_error
    assert "'item'" in result_text(result)
    assert upstream.seen() == []


async def test_a_header_or_query_parameter_whose_argument_is_absent_is_left_out(
    client: Client, upstream: Upstream
) -> None:
    result = await client.call_tool("items", {"item": "x"})

    [seen] = upstream.seen()
    assert not result.is_error
    assert seen.header("X-Note") is None
    assert seen.query == {}
    assert json.loads(seen.body) == {"fixed": "literal"}


async def test_a_header_argument_with_a_line_break_is_refused(client: Client, upstream: Upstream) -> None:
    result = await client.call_tool("items", {"item": "x", "note": "hi\r\nX-Evil: 1"})

    assert result.is_error
    assert "'note'" in result_text(result)
    assert upstream.seen() == []


async def test_bad_arguments_are_rejected_naming_the_argument_and_nothing_is_sent(
    client: Client, upstream: Upstream
) -> None:
    wrong_type = await client.call_tool("whoami", {"n": "seven"})
    missing = await client.call_tool("open", {})

    assert wrong_type.is_error and "'n'" in result_text(wrong_type)
    assert missing.is_error and "'q'" in result_text(missing)
    assert upstream.seen() == []


async def test_a_missing_binding_sends_nothing_and_returns_the_warning(
    world: World, client: Client, upstream: Upstream
) -> None:
    world.store.unbind("dev", "whoami")

    result = await client.call_tool("whoami", {"n": 1})

    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["warning"] == "missing_credential"
    assert result.structured_content["missing_fields"] == ["token"]
    assert upstream.seen() == []


async def test_an_incomplete_credential_sends_nothing_and_returns_the_warning(
    world: World, client: Client, upstream: Upstream
) -> None:
    world.store.add_credential("half", "acct", {"username": "bob"}, frozenset({"password"}))  # skips validation
    world.bind("dev", "basic", "half")

    result = await client.call_tool("basic", {})

    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["warning"] == "missing_credential"
    assert result.structured_content["missing_fields"] == ["password"]
    assert "password" in result_text(result)
    assert upstream.seen() == []


async def test_a_tool_without_credential_sends_no_authorization(client: Client, upstream: Upstream) -> None:
    result = await client.call_tool("open", {"q": "rain"})

    [seen] = upstream.seen()
    assert not result.is_error
    assert seen.header("Authorization") is None
    assert seen.query == {"q": "rain"}


# -- found in a security review ------------------------------------------------------------------
# An error body cut before redaction kept part of the secret; a cross-origin redirect re-sent a body that carried
# the credential. A token of its own, plain: its position in an echoed JSON body is predictable.

PLAIN_TOKEN = make_canary("RV")


@pytest.fixture
def review_world(tmp_path: Path, upstream: Upstream, away: Upstream) -> Iterator[World]:
    upstream.redirects["/hop-away-put"] = away.url("/landed")
    tools = {
        "fail400": http_tool(
            "fail400", upstream.url("/status/400"), query='{ pad = "{args.pad}" }', properties=f"properties.pad = {STR}"
        ),
        "put_hop": http_tool(
            "put_hop",
            upstream.url("/hop-away-put"),
            method="PUT",
            headers="{}",
            extra=f'json = {{ key = "{{cred.token}}" }}\nredirects = ["{away.base}"]',
        ),
    }
    w = World.create(tmp_path, tools)
    w.add_credential("svc-main", "svc", {"token": PLAIN_TOKEN})
    w.allow_and_bind("dev", tools, {"svc": "svc-main"})
    yield w
    w.close()


@pytest.fixture
async def review_client(review_world: World) -> AsyncIterator[Client]:
    async with review_world.gateway() as gw, connect(gw, "dev") as c:
        yield c


async def test_an_error_body_cut_through_a_secret_leaks_no_part_of_it(
    review_client: Client, upstream: Upstream
) -> None:
    await review_client.call_tool("fail400", {"pad": ""})
    start = _Handler._echo(upstream.seen()[-1]).decode().index(PLAIN_TOKEN)
    # the pad appears twice in the echo (target and query) before the Authorization header
    cut_inside = MAX_ERROR_BODY - 12
    pad = (cut_inside - start) // 2
    upstream.clear()

    result = await review_client.call_tool("fail400", {"pad": "a" * pad})

    echoed = _Handler._echo(upstream.seen()[-1]).decode()
    position = echoed.index(PLAIN_TOKEN)
    assert position < MAX_ERROR_BODY < position + len(PLAIN_TOKEN)  # the cut really falls inside the secret
    assert result.is_error
    text = result.model_dump_json()
    assert PLAIN_TOKEN[: MAX_ERROR_BODY - position] not in text
    assert_no_leak(text, PLAIN_TOKEN)


async def test_a_redirect_to_another_origin_never_carries_a_credential_in_the_body(
    review_client: Client, upstream: Upstream, away: Upstream
) -> None:
    result = await review_client.call_tool("put_hop", {})

    assert PLAIN_TOKEN in upstream.seen()[0].body.decode()  # the declared origin got it
    for seen in away.seen():
        assert PLAIN_TOKEN not in seen.everything()
    assert_no_leak(result.model_dump_json(), PLAIN_TOKEN)
