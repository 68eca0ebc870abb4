"""OAuth2 credentials at call time: the gateway refreshes an expiring access token before the call uses it.

Everything is real: the local OAuth2 provider (`tests/support/oauth_provider.py`) over HTTP on 127.0.0.1, a SQLite
store under `tmp_path`, the MCP SDK's client (in memory, or over stdio against real `credgate serve` processes).

* a fresh token is used as it is; an expired or expiring one is refreshed once, and the rotated refresh token,
  the new access token and its expiry are stored together (nothing lost, the old refresh token dead);
* 20 concurrent calls in one gateway, and 2 x 10 calls in two gateway processes, make one refresh;
* a refresh without rotation keeps the stored refresh token;
* `invalid_grant` gives the agent the `credential_expired` warning (contract §4), at once on later calls, marks the
  binding `expired` in `group show`, and a `cred update` with new tokens repairs it;
* a transient failure (HTTP 503, connection refused, timeout) is an error result and leaves the stored tokens as
  they were;
* a python handler never receives the refresh token or the client secret;
* no access token, refresh token or client secret reaches the agent, the logs, the audit rows or the data folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from datetime import timedelta
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from click.testing import CliRunner
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_credgate import admin, oauth, readiness
from mcp_credgate.cli import cli
from tests.support.gateway import (
    Transcript,
    World,
    assert_no_leak,
    assert_no_leak_at_rest,
    connect,
    make_canary,
    result_text,
    store_env,
)
from tests.support.oauth_provider import running_oauth_provider
from tests.support.oauth_world import (
    CRED,
    DOWN_CRED,
    GROUP,
    HANDLER_FIELDS,
    add_acme,
    ciphertexts,
    expired_warning,
    in_seconds,
    oauth_world,
    ok_answer,
    stored,
    whoami_ok,
)

pytestmark = pytest.mark.anyio


# -- 1, 2: fresh and expired tokens -----------------------------------------------------------------


async def test_a_fresh_token_is_used_without_a_refresh(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        values = add_acme(world, provider, expires_in=3600)
        before = ciphertexts(world)
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            whoami_ok(await client.call_tool("whoami", {}))
            whoami_ok(await client.call_tool("whoami", {}))

        assert provider.refresh_requests == 0 and provider.token_requests == []
        assert provider.api_calls == 2
        assert stored(world) == values
        assert ciphertexts(world) == before


async def test_an_expired_token_is_refreshed_transparently_and_the_rotation_is_stored(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        old = add_acme(world, provider, expires_in=-120)
        provider.expire_access_tokens()  # the old access token is refused by the API: only a refresh helps
        started = oauth.utc_now().replace(microsecond=0)
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            whoami_ok(await client.call_tool("whoami", {}))
            whoami_ok(await client.call_tool("whoami", {}))  # the new token is fresh now: no second refresh

        assert provider.refresh_requests == 1
        assert provider.api_calls == 2
        [request] = provider.token_requests
        assert request["grant_type"] == "refresh_token" and request["auth_method"] == "client_secret_basic"
        assert request["form"]["refresh_token"] == old["refresh_token"]

        new = stored(world)
        assert new["token"] == provider.current_access_token != old["token"]
        assert new["refresh_token"] == provider.current_refresh_token != old["refresh_token"]
        assert provider.is_valid_refresh_token(new["refresh_token"])  # nothing lost: the rotated one is kept
        assert not provider.is_valid_refresh_token(old["refresh_token"])  # and the old one is dead
        expires_at, refreshed_at = readiness.parse_time(new["expires_at"]), readiness.parse_time(new["refreshed_at"])
        assert expires_at is not None and refreshed_at is not None
        assert started <= refreshed_at <= oauth.utc_now()
        assert expires_at > oauth.utc_now() + timedelta(seconds=3500)  # access_ttl 3600 s
        assert new["scope"] == "read"
        assert new["client_id"] == old["client_id"] and new["client_secret"] == old["client_secret"]
        assert "refresh_error" not in new


# -- 3, 4: one refresh for many calls ------------------------------------------------------------------


async def test_20_concurrent_calls_on_an_expiring_token_make_one_refresh(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        old = add_acme(world, provider, expires_in=20)  # within the 60 s margin
        provider.expire_access_tokens()  # a call that used the old token would fail at the API
        provider.token_delay = 0.3  # the refresh is slow: every call arrives while it runs
        results: list[types.CallToolResult] = []
        async with world.gateway() as gw, connect(gw, GROUP) as client:

            async def call() -> None:
                results.append(await client.call_tool("whoami", {}))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(call)

        assert len(results) == 20
        for result in results:
            whoami_ok(result)
        assert provider.refresh_requests == 1
        assert provider.api_calls == 20
        new = stored(world)
        assert new["refresh_token"] == provider.current_refresh_token != old["refresh_token"]
        assert provider.is_valid_refresh_token(new["refresh_token"])


def serve_params(world: World, errlog_dir: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "mcp_credgate",
            "serve",
            "--group",
            GROUP,
            "--home",
            str(world.settings.home),
            "--tools-dir",
            str(world.tools_dir),
        ],
        env={"PYTHONUNBUFFERED": "1", **store_env(world.settings)},
        cwd=errlog_dir,
    )


async def test_two_gateway_processes_calling_at_once_make_one_refresh(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        old = add_acme(world, provider, expires_in=-5)
        provider.expire_access_tokens()
        provider.token_delay = 0.5
        results: list[types.CallToolResult] = []
        params = serve_params(world, tmp_path)
        with (
            (tmp_path / "stderr-1.txt").open("w") as err1,
            (tmp_path / "stderr-2.txt").open("w") as err2,
            anyio.fail_after(60),
        ):
            async with (
                Client(stdio_client(params, errlog=err1)) as one,
                Client(stdio_client(params, errlog=err2)) as two,
            ):
                for client in (one, two):  # both processes are up and serving before the first call
                    assert {t.name for t in (await client.list_tools()).tools} >= {"whoami"}
                assert provider.token_requests == []

                async def call(client: Client) -> None:
                    results.append(await client.call_tool("whoami", {}))

                async with anyio.create_task_group() as tg:
                    for _ in range(10):
                        tg.start_soon(call, one)
                        tg.start_soon(call, two)

        assert len(results) == 20
        for result in results:
            whoami_ok(result)
        assert provider.refresh_requests == 1, provider.token_requests
        assert provider.api_calls == 20
        new = stored(world)
        assert new["token"] == provider.current_access_token
        assert new["refresh_token"] == provider.current_refresh_token != old["refresh_token"]
        assert provider.is_valid_refresh_token(new["refresh_token"])
        stderr = (tmp_path / "stderr-1.txt").read_text() + (tmp_path / "stderr-2.txt").read_text()
        assert "Traceback" not in stderr
        assert_no_leak(stderr, old["token"], old["refresh_token"], new["token"], new["refresh_token"], "acme-secret")


# -- 5: no rotation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["rotate_refresh=False", "omit_refresh_token"])
async def test_a_refresh_without_rotation_keeps_the_stored_refresh_token(tmp_path: Path, how: str) -> None:
    rotate = how != "rotate_refresh=False"
    # access_ttl 30 s: every stored token is within the margin, so every call refreshes
    with (
        running_oauth_provider(client_secret="acme-secret", access_ttl=30, rotate_refresh=rotate) as provider,
        oauth_world(tmp_path, provider) as world,
    ):
        provider.omit_refresh_token = how == "omit_refresh_token"
        old = add_acme(world, provider, expires_in=-60)
        provider.expire_access_tokens()
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            whoami_ok(await client.call_tool("whoami", {}))
            first = stored(world)
            whoami_ok(await client.call_tool("whoami", {}))  # the kept refresh token works again

        assert provider.refresh_requests == 2
        assert [r["form"]["refresh_token"] for r in provider.token_requests] == [old["refresh_token"]] * 2
        new = stored(world)
        assert first["refresh_token"] == new["refresh_token"] == old["refresh_token"]
        assert provider.is_valid_refresh_token(old["refresh_token"])
        assert first["token"] != old["token"] and new["token"] == provider.current_access_token != first["token"]
        assert "refreshed_at" in new and "refresh_error" not in new


# -- 6: invalid_grant ------------------------------------------------------------------------------------


async def test_invalid_grant_gives_credential_expired_until_new_tokens_are_stored(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        old = add_acme(world, provider, expires_in=-60)
        provider.invalid_grant = True
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            first = await client.call_tool("whoami", {})
            assert provider.refresh_requests == 1
            second = await client.call_tool("whoami", {})
            assert provider.refresh_requests == 1 and len(provider.token_requests) == 1  # not asked again
            other_tool = await client.call_tool("report", {})  # the same credential through another tool

            for result, tool in ((first, "whoami"), (second, "whoami"), (other_tool, "report")):
                assert result.is_error
                assert result.structured_content == expired_warning(tool)
                assert f"credgate cred connect {CRED} --tool {tool}" in result_text(result)
            assert provider.api_calls == 0  # nothing was sent to the API
            assert len(provider.token_requests) == 1

            broken = stored(world)
            assert broken["refresh_error"].startswith("invalid_grant")
            assert {k: v for k, v in broken.items() if k != "refresh_error"} == old  # tokens kept as they were

            [status] = [s for s in admin.group_statuses(world.store, world.catalog, GROUP) if s.tool == "whoami"]
            assert (status.status, status.credential) == ("expired", CRED)
            shown = CliRunner().invoke(
                cli,
                [
                    "--home",
                    str(world.settings.home),
                    "--tools-dir",
                    str(world.tools_dir),
                    "group",
                    "show",
                    GROUP,
                    "--json",
                ],
                env={},
                catch_exceptions=False,
            )
            assert shown.exit_code == 0, shown.output
            by_tool = {t["tool"]: t for t in json.loads(shown.output)["tools"]}
            assert by_tool["whoami"]["status"] == "expired"
            assert by_tool["report"]["status"] == "expired"

            # `cred update` with tokens obtained again: the next call works at once, without a refresh
            provider.invalid_grant = False
            issued = provider.issue_tokens()
            admin.update_credential(
                world.store,
                world.catalog,
                CRED,
                {
                    "token": issued["access_token"],
                    "refresh_token": issued["refresh_token"],
                    "expires_at": in_seconds(3600),
                },
            )
            repaired = stored(world)
            assert "refresh_error" not in repaired and repaired["refresh_token"] == issued["refresh_token"]
            whoami_ok(await client.call_tool("whoami", {}))
            assert provider.refresh_requests == 1

        rows = [r for r in world.audit() if r.tool in ("whoami", "report")]
        assert sorted((r.tool, r.credential, r.outcome) for r in rows) == sorted(
            [("whoami", CRED, "error"), ("whoami", CRED, "error"), ("report", CRED, "error"), ("whoami", CRED, "ok")]
        )
        assert all(r.group == GROUP for r in rows)
        assert [s.status for s in admin.group_statuses(world.store, world.catalog, GROUP) if s.tool == "whoami"] == [
            "ready"
        ]


async def test_20_concurrent_calls_refused_with_invalid_grant_make_one_token_request(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        add_acme(world, provider, expires_in=-60)
        provider.invalid_grant = True
        provider.token_delay = 0.3
        results: list[types.CallToolResult] = []
        async with world.gateway() as gw, connect(gw, GROUP) as client:

            async def call() -> None:
                results.append(await client.call_tool("whoami", {}))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(call)

        assert len(results) == 20
        for result in results:
            assert result.is_error and result.structured_content == expired_warning()
        assert len(provider.token_requests) == 1 and provider.api_calls == 0


async def test_after_invalid_grant_later_calls_give_the_same_warning_while_the_old_token_still_runs(
    tmp_path: Path,
) -> None:
    """The access token expires within the margin but has not expired yet when the refresh is refused.

    Contract: "invalid_grant → credential_expired, and refresh_error recorded so later calls return the same
    warning without contacting the token endpoint". The first call gets the warning; the calls after it must
    agree with it (and with `group show`), not switch to using the old access token."""
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        add_acme(world, provider, expires_in=40)  # within the 60 s margin, still accepted by the API
        provider.invalid_grant = True
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            first = await client.call_tool("whoami", {})
            later = await client.call_tool("whoami", {})

        assert first.is_error and first.structured_content == expired_warning()
        assert len(provider.token_requests) == 1
        statuses = {s.tool: s.status for s in admin.group_statuses(world.store, world.catalog, GROUP)}
        assert later.is_error and later.structured_content == expired_warning(), result_text(later)
        assert statuses["whoami"] == "expired"


# -- 7: transient failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["http503", "refused", "timeout"])
async def test_a_transient_refresh_failure_is_an_error_and_leaves_the_stored_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        if failure == "refused":
            tool, name = "whoami_down", DOWN_CRED
            old = add_acme(world, provider, expires_in=-60, name=name, type_name="acme_down", tools=(tool,))
        else:
            tool, name = "whoami", CRED
            old = add_acme(world, provider, expires_in=-60)
        if failure == "http503":
            provider.fail_status = 503
        elif failure == "timeout":
            monkeypatch.setattr(oauth, "TOKEN_TIMEOUT", 0.5)
            provider.token_delay = 10.0  # longer than the test: the provider answers only when it stops
        before = ciphertexts(world, name)
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            with anyio.fail_after(10):
                failed = await client.call_tool(tool, {})
                again = await client.call_tool(tool, {})  # not remembered: tried again
            for result in (failed, again):
                assert result.is_error
                assert result.structured_content is None  # no credential_expired warning
                text = result_text(result)
                assert "could not be refreshed" in text and "unchanged" in text
                assert "credential_expired" not in text
            expected = {
                "http503": "answered HTTP 503",
                "refused": "cannot be reached",
                "timeout": "did not answer within 0.5 s",
            }[failure]
            assert expected in result_text(failed)
            assert stored(world, name) == old
            assert ciphertexts(world, name) == before
            assert provider.api_calls == 0
            assert provider.refresh_requests == (0 if failure == "refused" else 2)
            [status] = [s for s in admin.group_statuses(world.store, world.catalog, GROUP) if s.tool == tool]
            assert status.status == "ready"  # a transient failure does not mark the binding expired

            if failure == "http503":  # the provider is back: the stored refresh token still works
                provider.fail_status = None
                whoami_ok(await client.call_tool(tool, {}))
                assert stored(world)["refresh_token"] == provider.current_refresh_token != old["refresh_token"]

        rows = [r for r in world.audit() if r.tool == tool]
        outcomes = sorted(r.outcome for r in rows)
        assert outcomes == (["error", "error", "ok"] if failure == "http503" else ["error", "error"])
        assert all(r.credential == name and r.ref for r in rows)


# -- 8: no expiry, no refresh token ------------------------------------------------------------------------


async def test_a_token_without_expires_at_is_used_as_it_is(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        values = add_acme(world, provider, expires_in=None)
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            whoami_ok(await client.call_tool("whoami", {}))

        assert provider.token_requests == []
        assert stored(world) == values


async def test_an_expired_token_without_refresh_token_is_credential_expired_at_once(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        values = add_acme(world, provider, expires_in=-60, refresh=False)
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            results = [await client.call_tool("whoami", {}) for _ in range(2)]

        for result in results:
            assert result.is_error and result.structured_content == expired_warning()
        assert provider.token_requests == [] and provider.api_calls == 0
        assert stored(world) == values
        assert [s.status for s in admin.group_statuses(world.store, world.catalog, GROUP) if s.tool == "whoami"] == [
            "expired"
        ]


async def test_a_token_expiring_soon_without_refresh_token_is_still_used(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        add_acme(world, provider, expires_in=30, refresh=False)  # within the margin, but not expired yet
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            whoami_ok(await client.call_tool("whoami", {}))

        assert provider.token_requests == []


# -- 9: what a python handler sees ---------------------------------------------------------------------------


async def test_a_python_handler_gets_the_access_token_but_not_the_refresh_token_or_client_secret(
    tmp_path: Path,
) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        old = add_acme(world, provider, expires_in=3600)
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            fresh = ok_answer(await client.call_tool("report", {}))
            assert provider.refresh_requests == 0
            past = in_seconds(-1)
            admin.update_credential(world.store, world.catalog, CRED, {"expires_at": past})
            refreshed = ok_answer(await client.call_tool("report", {}))
            assert provider.refresh_requests == 1

        assert fresh["fields"] == ["client_id", "expires_at", "token"]
        assert fresh["token_sha256"] == hashlib.sha256(old["token"].encode()).hexdigest()
        assert fresh["client_id"] == provider.client_id and fresh["expires_at"] == old["expires_at"]

        new = stored(world)
        assert {"refresh_token", "client_secret"} <= set(new)  # they are stored, yet the handler never saw them
        assert refreshed["fields"] == HANDLER_FIELDS
        assert refreshed["token_sha256"] == hashlib.sha256(str(provider.current_access_token).encode()).hexdigest()
        assert refreshed["expires_at"] == new["expires_at"] != past


# -- 10: canaries ----------------------------------------------------------------------------------------------


async def test_no_token_or_client_secret_leaks_through_refresh_invalid_grant_or_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="credgate")
    prefix = make_canary("OT")  # every access and refresh token the provider issues starts with it
    client_secret = make_canary("OS", rich=True)
    transcript = Transcript()
    # access_ttl 30 s: every token is within the margin, so every call refreshes
    with (
        running_oauth_provider(client_secret=client_secret, token_prefix=prefix, access_ttl=30) as provider,
        oauth_world(tmp_path, provider) as world,
    ):
        old = add_acme(world, provider, expires_in=-60)
        provider.expire_access_tokens()
        async with world.gateway() as gw, connect(gw, GROUP) as client:
            await transcript.list_tools(client)
            whoami_ok(await transcript.call(client, "whoami", {}))  # refreshed
            careless = await transcript.call(client, "careless", {})  # refreshed again, returns its credential
            assert not careless.is_error and "[redacted" in result_text(careless)  # the scan would see a leak
            assert provider.refresh_requests == 2

            provider.fail_status = 503
            failed = await transcript.call(client, "whoami", {})
            assert failed.is_error and failed.structured_content is None
            assert provider.refresh_requests == 3

            provider.fail_status = None
            provider.invalid_grant = True
            warned = await transcript.call(client, "whoami", {})
            assert warned.structured_content == expired_warning()
            for tool in ("careless", "report", "whoami"):  # the answers after a refusal (see the test above)
                await transcript.call(client, tool, {})
            assert provider.refresh_requests == 4
            await transcript.call_refused(client, "nope", {})

        issued = [
            old["token"],
            old["refresh_token"],
            str(provider.current_access_token),
            str(provider.current_refresh_token),
        ]
        assert all(t.startswith(prefix) for t in issued)
        secrets_ = (prefix, client_secret, *issued)
        assert_no_leak(transcript.text(), *secrets_)
        logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
        assert "refresh of credential" in logged  # the failures were logged, by name only
        assert_no_leak(logged, *secrets_)
        rows = world.audit()
        assert len(rows) == 8
        assert_no_leak(repr(rows), *secrets_)
        assert_no_leak_at_rest(world.settings, *secrets_)
        assert_no_leak(repr(world.store.read_credential(CRED)), *secrets_)  # its repr masks the secret fields


# -- what a review found: lifetimes within the margin, cancellation, unfit answers ----------------------------


async def test_tokens_that_live_less_than_the_margin_still_make_one_refresh_for_20_calls(tmp_path: Path) -> None:
    with (
        running_oauth_provider(client_secret="acme-secret", access_ttl=30) as provider,
        oauth_world(tmp_path, provider) as world,
    ):
        add_acme(world, provider, expires_in=-1)  # every new token is "due" at once (30 s < the 60 s margin)
        provider.token_delay = 0.3
        results: list[types.CallToolResult] = []
        async with world.gateway() as gw, connect(gw, GROUP) as client:

            async def call() -> None:
                results.append(await client.call_tool("whoami", {}))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(call)

        assert [r.is_error for r in results] == [False] * 20
        assert provider.refresh_requests == 1  # the waiters see that the token changed while they waited


async def test_a_cancelled_call_still_stores_the_rotated_refresh_token(tmp_path: Path) -> None:
    with running_oauth_provider(client_secret="acme-secret") as provider, oauth_world(tmp_path, provider) as world:
        old = add_acme(world, provider, expires_in=-60)
        provider.token_delay = 0.6  # the provider rotates, then answers late
        async with world.gateway() as gw:
            spec = world.catalog.types["acme"]
            credential = world.store.read_credential(CRED)
            with anyio.move_on_after(0.2):  # the agent gives up while the refresh is on its way
                await gw.refresher.fresh(spec, credential)

        new = stored(world)
        assert provider.refresh_requests == 1
        assert new["refresh_token"] == provider.current_refresh_token != old["refresh_token"]
        assert provider.is_valid_refresh_token(new["refresh_token"])
