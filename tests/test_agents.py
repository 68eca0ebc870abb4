"""Agents of remote MCP clients: bearer tokens, `credgate agent add|list|revoke`, the token verifier (issue 4).

Everything is real: the CLI through click's CliRunner (and once as a process), a SQLite file under
`tmp_path`, the SDK's `AccessToken` returned by the verifier the HTTP server uses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime
from typing import Any

import pytest

from mcp_credgate.agents import AgentTokenVerifier, new_token, token_hash
from mcp_credgate.config import Settings
from mcp_credgate.store import AgentIdentity, Store
from tests.support.cli import CliRun, ProcRun, assert_refused, out
from tests.support.gateway import leaks
from tests.support.raw_db import raw_db

pytestmark = pytest.mark.anyio

TOKEN_SHAPE = re.compile(r"^cgt_[A-Za-z0-9_-]{43}$")


@pytest.fixture
def groups(store: Store, run_cli: CliRun) -> Store:
    """An initialised store with the agent groups `research` and `ops`."""
    for name in ("research", "ops"):
        assert run_cli("group", "add", name).exit_code == 0
    return store


def add_agent(run_cli: CliRun, group: str, name: str) -> str:
    """`credgate agent add GROUP NAME --json`; returns the printed token."""
    result = run_cli("agent", "add", group, name, "--json")
    assert result.exit_code == 0, out(result)
    data = json.loads(result.stdout)
    assert data["agent"] == name and data["group"] == group
    token: str = data["token"]
    return token


def list_agents(run_cli: CliRun) -> list[dict[str, Any]]:
    result = run_cli("agent", "list", "--json")
    assert result.exit_code == 0, out(result)
    agents: list[dict[str, Any]] = json.loads(result.stdout)
    return agents


def stored_bytes(settings: Settings) -> str:
    """Every file of the data folder (database, WAL, shared memory, key) as one latin-1 text, and every row of
    every table of the store (SQLite or PostgreSQL)."""
    files = [p.read_bytes().decode("latin-1") for p in sorted(settings.home.iterdir()) if p.is_file()]
    with raw_db(settings) as db:
        return "\n".join([*files, repr(db.dump())])


# -- the token -------------------------------------------------------------------------------------


def test_token_has_the_cgt_prefix_and_256_random_bits() -> None:
    tokens = {new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    for token in tokens:
        assert TOKEN_SHAPE.match(token), token
        assert len(base64.urlsafe_b64decode(token[4:] + "=")) == 32
    # every position of the random part varies: no fixed or counter-like parts after the prefix
    # (43 base64url characters carry 256 bits: the last one only 4 of its 6 bits, so 16 values)
    for position in range(4, 4 + 42):
        assert len({t[position] for t in tokens}) > 48, position
    assert len({t[-1] for t in tokens}) == 16


def test_agent_add_prints_the_token_once_in_text_and_json(groups: Store, run_cli: CliRun) -> None:
    text = run_cli("agent", "add", "research", "bot-text")
    assert text.exit_code == 0, out(text)
    printed = [line for line in text.stdout.splitlines() if line.startswith("cgt_")]
    assert len(printed) == 1 and TOKEN_SHAPE.match(printed[0])
    assert "bot-text" in text.stdout and "research" in text.stdout

    token = add_agent(run_cli, "research", "bot-json")
    assert TOKEN_SHAPE.match(token)
    assert token != printed[0]

    listing = run_cli("agent", "list")
    listing_json = run_cli("agent", "list", "--json")
    for result in (listing, listing_json):
        assert token not in out(result) and printed[0] not in out(result)
        assert not leaks(out(result), token[4:])


def test_only_the_sha256_of_a_token_is_stored(groups: Store, run_cli: CliRun, settings: Settings) -> None:
    tokens = [add_agent(run_cli, "research", f"bot{i}") for i in range(3)]
    groups.close()  # let SQLite checkpoint; the WAL and shm files are scanned too if they remain
    everything = stored_bytes(settings)
    for token in tokens:
        assert not leaks(everything, token), "the raw token is in the data folder"
        assert not leaks(everything, token[4:]), "the token's random part is in the data folder"
        assert hashlib.sha256(token.encode()).hexdigest() in everything
    reopened = Store.open(settings)
    try:
        found = reopened.agent_by_token_hash(token_hash(tokens[0]))
        assert found == AgentIdentity("bot0", "research", token_hash(tokens[0]))
    finally:
        reopened.close()


def test_agent_add_as_a_real_process_prints_a_working_token(groups: Store, run_credgate: ProcRun) -> None:
    result = run_credgate("agent", "add", "ops", "proc-bot", "--json")
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)["token"]
    assert TOKEN_SHAPE.match(token)
    assert groups.agent_by_token_hash(token_hash(token)) == AgentIdentity("proc-bot", "ops", token_hash(token))


# -- agent add / list / revoke ---------------------------------------------------------------------


def test_agent_list_shows_group_creation_and_last_use(groups: Store, run_cli: CliRun) -> None:
    empty = run_cli("agent", "list")
    assert empty.exit_code == 0 and "credgate agent add" in empty.stdout
    assert list_agents(run_cli) == []

    add_agent(run_cli, "research", "alpha")
    add_agent(run_cli, "ops", "beta")
    agents = {a["agent"]: a for a in list_agents(run_cli)}
    assert set(agents) == {"alpha", "beta"}
    assert agents["alpha"]["group"] == "research" and agents["beta"]["group"] == "ops"
    for entry in agents.values():
        assert datetime.fromisoformat(entry["created_at"]).tzinfo is not None
        assert entry["last_used_at"] is None and entry["revoked_at"] is None

    lines = {line.split()[0]: line for line in run_cli("agent", "list").stdout.splitlines()}
    assert "group research" in lines["alpha"] and "group ops" in lines["beta"]
    assert agents["alpha"]["created_at"] in lines["alpha"]
    assert "last used never" in lines["alpha"]


async def test_a_verified_request_records_the_last_use(groups: Store, run_cli: CliRun) -> None:
    token = add_agent(run_cli, "research", "alpha")
    add_agent(run_cli, "ops", "beta")
    verifier = AgentTokenVerifier(groups)
    assert await verifier.verify_token(token) is not None

    agents = {a["agent"]: a for a in list_agents(run_cli)}
    used = agents["alpha"]["last_used_at"]
    assert used is not None and used >= agents["alpha"]["created_at"]
    assert agents["beta"]["last_used_at"] is None
    line = next(line for line in run_cli("agent", "list").stdout.splitlines() if line.startswith("alpha "))
    assert f"last used {used}" in line


def test_duplicate_agent_name_is_refused(groups: Store, run_cli: CliRun) -> None:
    first = add_agent(run_cli, "research", "alpha")
    for group in ("research", "ops"):
        result = run_cli("agent", "add", group, "alpha")
        assert_refused(result, "alpha", "exists")
        assert "cgt_" not in out(result)
    assert [(a["agent"], a["group"]) for a in list_agents(run_cli)] == [("alpha", "research")]
    assert groups.agent_by_token_hash(token_hash(first)) is not None


def test_agent_add_to_an_unknown_group_is_refused(groups: Store, run_cli: CliRun) -> None:
    result = run_cli("agent", "add", "nosuchgroup", "alpha")
    assert_refused(result, "nosuchgroup")
    assert "cgt_" not in out(result)
    assert list_agents(run_cli) == []


@pytest.mark.parametrize("name", ["has space", "a/b", "x" * 65, ""])
def test_agent_add_with_a_bad_name_is_a_usage_error(groups: Store, run_cli: CliRun, name: str) -> None:
    result = run_cli("agent", "add", "research", name)
    assert result.exit_code == 2, out(result)
    assert "Traceback" not in out(result) and "cgt_" not in out(result)
    assert list_agents(run_cli) == []


async def test_revoke_marks_the_agent_and_its_token_stops_verifying(groups: Store, run_cli: CliRun) -> None:
    token = add_agent(run_cli, "research", "alpha")
    other = add_agent(run_cli, "research", "beta")
    verifier = AgentTokenVerifier(groups)
    assert await verifier.verify_token(token) is not None

    result = run_cli("agent", "revoke", "alpha", "--json")
    assert result.exit_code == 0, out(result)
    assert json.loads(result.stdout) == {"revoked": "alpha"}

    assert await verifier.verify_token(token) is None  # the very next check, same verifier
    assert await verifier.verify_token(other) is not None
    agents = {a["agent"]: a for a in list_agents(run_cli)}
    assert agents["alpha"]["revoked_at"] is not None and agents["beta"]["revoked_at"] is None
    line = next(line for line in run_cli("agent", "list").stdout.splitlines() if line.startswith("alpha "))
    assert "REVOKED" in line


def test_revoking_twice_is_refused(groups: Store, run_cli: CliRun) -> None:
    add_agent(run_cli, "research", "alpha")
    assert run_cli("agent", "revoke", "alpha").exit_code == 0
    revoked_at = list_agents(run_cli)[0]["revoked_at"]
    assert_refused(run_cli("agent", "revoke", "alpha"), "alpha", "already revoked")
    assert list_agents(run_cli)[0]["revoked_at"] == revoked_at


def test_revoking_an_unknown_agent_is_refused(groups: Store, run_cli: CliRun) -> None:
    assert_refused(run_cli("agent", "revoke", "ghost"), "ghost", "credgate agent list")


def test_a_revoked_name_cannot_be_reused(groups: Store, run_cli: CliRun) -> None:
    old = add_agent(run_cli, "research", "alpha")
    assert run_cli("agent", "revoke", "alpha").exit_code == 0
    assert_refused(run_cli("agent", "add", "research", "alpha"), "alpha")
    assert groups.agent_by_token_hash(token_hash(old)) is None


# -- the verifier ------------------------------------------------------------------------------------


async def test_verifier_answers_the_agent_and_group_of_a_live_token(groups: Store, run_cli: CliRun) -> None:
    research = add_agent(run_cli, "research", "alpha")
    ops = add_agent(run_cli, "ops", "beta")
    verifier = AgentTokenVerifier(groups)
    for token, agent, group in ((research, "alpha", "research"), (ops, "beta", "ops")):
        access = await verifier.verify_token(token)
        assert access is not None
        assert access.client_id == agent and access.subject == agent
        assert access.claims == {"group": group, "user": None}
        assert access.token != token  # the raw token is not kept in the request's auth context


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "cgt_",
        "Bearer cgt_abc",
        "cgt_" + "A" * 43,  # well formed, unknown
        "cgt_" + "A" * 200,  # overlong
        "xyz_" + "A" * 43,  # another prefix
    ],
)
async def test_verifier_refuses_malformed_and_unknown_tokens(groups: Store, run_cli: CliRun, bad: str) -> None:
    live = add_agent(run_cli, "research", "alpha")
    verifier = AgentTokenVerifier(groups)
    assert await verifier.verify_token(bad) is None
    assert await verifier.verify_token(live[:-1]) is None
    assert await verifier.verify_token(live + "x") is None
    assert await verifier.verify_token(token_hash(live)) is None  # the stored hash is not a token
    assert await verifier.verify_token(live) is not None
