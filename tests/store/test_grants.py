"""The store's OAuth grants on both backends: a code is redeemed once, a refresh token rotates once even when
two connections race for it (the loser revokes the grant), and a grant's tokens die with its agent, its user's
membership or its user."""

from __future__ import annotations

import threading
import time

import pytest

from mcp_credgate.config import Settings
from mcp_credgate.errors import ConflictError
from mcp_credgate.store import IssuedTokens, RefreshReused, Store


def _tokens(tag: str) -> IssuedTokens:
    at = time.time()
    return IssuedTokens(f"access-{tag}", at + 3600, f"refresh-{tag}", at + 86400)


def _grant(store: Store, code: str = "code-1", agent: str = "client-abc123") -> None:
    store.add_group("research")
    store.add_user("ann", "ann-secret-hash")
    store.add_members("research", ["ann"])
    store.save_oauth_client("client-1", "registered", "{}")
    store.add_oauth_code(
        code,
        client_id="client-1",
        user="ann",
        group="research",
        redirect_uri="http://127.0.0.1:9/cb",
        redirect_explicit=True,
        code_challenge="challenge",
        resource="http://127.0.0.1:8765/mcp",
        scopes=(),
        expires_at=time.time() + 300,
    )
    store.redeem_oauth_code(code, agent, _tokens("1"))


def test_a_redeemed_code_makes_an_oauth_agent_and_cannot_be_redeemed_again(store: Store) -> None:
    _grant(store)
    [agent] = store.list_agents()
    assert (agent.kind, agent.client, agent.user, agent.group) == ("oauth", "client-1", "ann", "research")
    assert store.oauth_code("code-1") is not None and store.oauth_code("code-1").redeemed  # type: ignore[union-attr]
    with pytest.raises(ConflictError, match="already used"):
        store.redeem_oauth_code("code-1", "client-other", _tokens("2"))
    assert store.oauth_token("access-2", "access") is None
    assert store.revoke_grant_of_code("code-1") == "client-abc123"
    assert store.oauth_token("access-1", "access") is None


def test_a_code_for_someone_not_in_the_group_is_never_made(store: Store) -> None:
    _grant(store)
    store.add_user("bob", "bob-secret-hash")
    with pytest.raises(ConflictError, match="not a member"):
        store.add_oauth_code(
            "code-2",
            client_id="client-1",
            user="bob",
            group="research",
            redirect_uri="http://127.0.0.1:9/cb",
            redirect_explicit=True,
            code_challenge="c",
            resource="r",
            scopes=(),
            expires_at=time.time() + 300,
        )


def test_two_connections_racing_for_one_refresh_token_rotate_it_once_and_the_loser_revokes_the_grant(
    store: Store, settings: Settings
) -> None:
    _grant(store)
    others = [Store.open(settings, env={}) for _ in range(2)]
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def rotate(connection: Store, tag: str) -> None:
        start.wait()
        try:
            connection.rotate_oauth_refresh("refresh-1", _tokens(tag))
            outcomes.append("rotated")
        except RefreshReused:
            outcomes.append("reused")

    try:
        threads = [threading.Thread(target=rotate, args=(c, t)) for c, t in zip(others, "ab", strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in others:
            c.close()
    assert sorted(outcomes) == ["reused", "rotated"]
    assert store.list_agents()[0].revoked_at is not None
    assert store.oauth_token("access-a", "access") is None and store.oauth_token("access-b", "access") is None


def test_a_grants_tokens_die_with_its_agent_its_membership_and_its_user(store: Store) -> None:
    _grant(store)
    assert store.oauth_token("access-1", "access") is not None
    store.remove_members("research", ["ann"])
    assert store.oauth_token("access-1", "access") is None
    store.add_members("research", ["ann"])
    assert store.oauth_token("access-1", "access") is not None
    store.revoke_agent("client-abc123")
    assert store.oauth_token("access-1", "access") is None
    assert store.oauth_token("refresh-1", "refresh") is None


def test_unused_registered_clients_are_forgotten_and_used_ones_kept(store: Store) -> None:
    _grant(store)  # client-1 was used
    store.save_oauth_client("client-2", "registered", "{}")
    assert store.unused_oauth_client_count() == 1
    assert store.forget_unused_oauth_clients("9999") == 1
    assert store.oauth_client("client-2") is None and store.oauth_client("client-1") is not None
