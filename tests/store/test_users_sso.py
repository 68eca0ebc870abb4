"""Which user an account of the organisation's OpenID provider signs in (the store's side of issue 23), on both
backends: by its link (issuer, subject); by a verified email once, which links it; else a new member of the
default group; else nobody."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_credgate.errors import NotFoundError
from mcp_credgate.store import SsoMatch, Store

ISSUER = "https://login.example.com"


def sign_in(store: Store, subject: str, **given: Any) -> SsoMatch | None:
    options: dict[str, Any] = {"email": None, "email_verified": False, "name_hint": "new", "default_group": None}
    return store.sso_sign_in(ISSUER, subject, **(options | given))


def test_a_verified_email_links_the_one_user_who_has_it_then_the_subject_alone_signs_in(store: Store) -> None:
    store.add_user("alice", "h-alice", email="Alice@Example.com")

    assert sign_in(store, "sub-a", email="alice@example.com", email_verified=True) == SsoMatch("alice", "email")
    link = store.sso_link("alice")
    assert link is not None and (link.issuer, link.subject) == (ISSUER, "sub-a")
    assert sign_in(store, "sub-a", email="alice@elsewhere.example") == SsoMatch("alice", "subject")


def test_an_unverified_email_matches_nobody(store: Store) -> None:
    store.add_user("alice", "h-alice", email="alice@example.com")

    assert sign_in(store, "sub-a", email="alice@example.com", email_verified=False) is None
    assert store.sso_link("alice") is None


def test_an_email_two_users_share_matches_neither(store: Store) -> None:
    store.add_user("alice", "h-alice", email="desk@example.com")
    store.add_user("alice2", "h-alice2", email="desk@example.com")

    assert sign_in(store, "sub-a", email="desk@example.com", email_verified=True) is None


def test_a_user_linked_to_another_account_is_not_matched_by_email(store: Store) -> None:
    store.add_user("alice", "h-alice", email="alice@example.com")
    sign_in(store, "sub-a", email="alice@example.com", email_verified=True)

    assert sign_in(store, "sub-b", email="alice@example.com", email_verified=True) is None
    link = store.sso_link("alice")
    assert link is not None and (link.issuer, link.subject) == (ISSUER, "sub-a")


def test_with_a_default_group_an_unknown_account_becomes_a_member_who_is_not_an_admin(store: Store) -> None:
    store.add_group("staff")
    store.add_user("jane", "h-jane")  # the name is taken: the new user gets another

    made = sign_in(
        store, "sub-j", email="jane@example.com", email_verified=True, name_hint="jane", default_group="staff"
    )

    assert made == SsoMatch("jane-2", "created")
    info = store.user("jane-2")
    assert not info.admin and info.groups == ("staff",) and info.email == "jane@example.com"
    assert store.user_secret_hash("jane-2") is None  # no sign-in secret until `credgate user secret`
    assert sign_in(store, "sub-j", default_group="staff") == SsoMatch("jane-2", "subject")
    assert [u.name for u in store.iter_users()].count("jane-2") == 1


def test_a_new_user_keeps_an_unverified_email_out(store: Store) -> None:
    store.add_group("staff")

    made = sign_in(store, "sub-k", email="k@example.com", email_verified=False, name_hint="k", default_group="staff")

    assert made is not None and store.user(made.user).email is None


def test_a_default_group_that_does_not_exist_is_said(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no agent group named 'gone'"):
        sign_in(store, "sub-x", default_group="gone")


def test_unlinking_forgets_the_account_and_a_user_added_again_starts_unlinked(store: Store) -> None:
    store.add_user("alice", "h-alice", email="alice@example.com")
    sign_in(store, "sub-a", email="alice@example.com", email_verified=True)

    assert store.unlink_sso("alice") and not store.unlink_sso("alice")
    assert store.sso_link("alice") is None
    sign_in(store, "sub-a", email="alice@example.com", email_verified=True)
    before = store.sso_link("alice")
    store.remove_user("alice")
    store.add_user("alice", "h-alice-2", email="other@example.com")

    assert before is not None and store.sso_link("alice") is None
    assert sign_in(store, "sub-a") is None
