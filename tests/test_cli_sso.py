"""The SSO options of `serve --http` and `dashboard` (contract §6): bad values are one line naming the option,
the client secret given on the command line is warned about (never shown), and they are for the dashboard only.
A server started with them is in tests/web/test_dashboard_browser_sso.py."""

from __future__ import annotations

import json

import pytest

from mcp_credgate.config import Settings
from mcp_credgate.store import Store
from tests.support.cli import CliRun, assert_ok, assert_refused, assert_usage_error
from tests.support.gateway import make_canary

SECRET = make_canary("OIDCSECRET")
ISSUER = "https://login.example.com"


@pytest.mark.no_store  # refused before the store is opened
@pytest.mark.parametrize("command", [("dashboard",), ("serve", "--http")])
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("--oidc-issuer", "http://login.example.com", "--oidc-client-id", "cg"), "--oidc-issuer"),
        (("--oidc-issuer", ISSUER), "--oidc-client-id"),
        (("--oidc-client-id", "cg"), "--oidc-issuer"),
    ],
    ids=["plain-http-issuer", "no-client-id", "no-issuer"],
)
def test_bad_sso_options_are_one_line_naming_the_option(
    run_cli: CliRun, command: tuple[str, ...], options: tuple[str, ...], expected: str
) -> None:
    assert_refused(run_cli(*command, *options), expected)


@pytest.mark.no_store
def test_bad_sso_settings_from_the_environment_are_refused_too(run_cli: CliRun) -> None:
    env = {"CREDGATE_OIDC_ISSUER": "ftp://login.example.com", "CREDGATE_OIDC_CLIENT_ID": "cg"}

    assert_refused(run_cli("dashboard", env=env), "CREDGATE_OIDC_ISSUER", "https://")


@pytest.mark.parametrize("command", [("dashboard",), ("serve", "--http")])
def test_a_default_group_that_does_not_exist_is_refused(run_cli: CliRun, command: tuple[str, ...]) -> None:
    run_cli("init")

    result = run_cli(*command, "--oidc-issuer", ISSUER, "--oidc-client-id", "cg", "--oidc-default-group", "staff")

    assert_refused(result, "--oidc-default-group", "no agent group named 'staff'", "credgate group add staff")


def test_the_client_secret_on_the_command_line_is_warned_about_and_never_shown(run_cli: CliRun) -> None:
    run_cli("init")
    options = ("--oidc-issuer", ISSUER, "--oidc-client-id", "cg", "--oidc-default-group", "nope")

    given = run_cli("dashboard", *options, "--oidc-client-secret", SECRET)
    from_env = run_cli("dashboard", *options, env={"CREDGATE_OIDC_CLIENT_SECRET": SECRET})

    warning = given.stderr.splitlines()[0]
    assert warning.startswith("warning: --oidc-client-secret") and "CREDGATE_OIDC_CLIENT_SECRET" in warning
    assert "process list" in warning
    assert "warning" not in from_env.stderr
    for result in (given, from_env):
        assert result.exit_code == 1  # the default group, checked after the warning
        assert SECRET not in result.stdout + result.stderr


@pytest.mark.no_store
def test_the_sso_options_are_for_the_dashboard_not_for_stdio(run_cli: CliRun) -> None:
    assert_usage_error(run_cli("serve", "--group", "team", "--oidc-issuer", ISSUER))


def test_user_unlink_forgets_the_users_sso_account(run_cli: CliRun, settings: Settings) -> None:
    run_cli("init")
    run_cli("user", "add", "alice", "--email", "alice@example.com")
    with Store.open(settings) as store:
        store.sso_sign_in(
            ISSUER, "sub-a", email="alice@example.com", email_verified=True, name_hint="a", default_group=None
        )

    first = run_cli("user", "unlink", "alice", "--json")
    again = run_cli("user", "unlink", "alice")

    assert_ok(first)
    assert json.loads(first.stdout) == {"user": "alice", "unlinked": True}
    assert_ok(again)
    assert again.stdout.strip() == "alice was not linked to an SSO account"
    with Store.open(settings) as store:
        assert store.sso_link("alice") is None
    assert_refused(run_cli("user", "unlink", "nobody"), "no user named 'nobody'")
