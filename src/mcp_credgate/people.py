"""People (contract §5): users and their sign-in secrets, memberships, personal tools and personal bindings,
with the rules that need both the declarations and the store (the CLI, and the dashboard, call these).

A user's sign-in secret is `cgu_` + 256 random bits, printed once; only its SHA-256 is stored (as for agent
tokens: a secret of this entropy needs no password stretching).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from . import oauth
from .admin import check_credential, check_scope, scope_entries, target_of
from .allow import AllowEntry
from .declarations import Catalog, Tool, Upstream
from .errors import ConflictError, CredentialValueError
from .readiness import Status, verdict
from .sso import Identity, SsoSettings, user_name_hint
from .store import SsoMatch, Store

__all__ = [
    "EMAIL_PATTERN",
    "USER_SECRET_PREFIX",
    "MemberStatus",
    "bind_personal",
    "create_user",
    "missing_personal",
    "orphaned_bindings",
    "personal_statuses",
    "renew_user_secret",
    "require_member",
    "sso_user",
    "unbind_personal",
    "user_secret_hash",
]

USER_SECRET_PREFIX = "cgu_"


def _new_secret() -> str:
    return USER_SECRET_PREFIX + secrets.token_urlsafe(32)


def user_secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


EMAIL_PATTERN = r"[^@\s]{1,64}@[^@\s]{1,255}"


def create_user(store: Store, name: str, *, admin: bool = False, email: str | None = None) -> str:
    """Add a user; returns their sign-in secret, which is never stored nor shown again."""
    if email is not None and not re.fullmatch(EMAIL_PATTERN, email):
        raise CredentialValueError("an email address is NAME@DOMAIN, without spaces")
    secret = _new_secret()
    store.add_user(name, user_secret_hash(secret), admin=admin, email=email)
    return secret


def renew_user_secret(store: Store, name: str) -> str:
    """A new sign-in secret for a user: the old one, and the sessions signed in with it, stop working."""
    secret = _new_secret()
    store.set_user_secret_hash(name, user_secret_hash(secret))
    return secret


def bind_personal(store: Store, catalog: Catalog, group: str, tool_name: str, credential: str, user: str) -> None:
    """A member's personal binding: a credential of the tool's type that the member owns."""
    store.require_user(user)
    check_credential(store, catalog, tool_name, credential, owner=user)
    if not scope_entries(store, catalog, group, tool_name):
        raise ConflictError(
            f"group {group!r} does not allow tool {tool_name!r}: run "
            f"`credgate group allow {group} {tool_name} --personal` first"
        )
    check_scope(store, catalog, group, tool_name, personal=True)
    store.bind_personal(group, target_of(catalog, tool_name), user, credential)


def unbind_personal(store: Store, catalog: Catalog, group: str, tool_name: str, user: str) -> None:
    store.unbind_personal(group, target_of(catalog, tool_name), user)


@dataclass(frozen=True)
class MemberStatus:
    user: str
    status: Status
    credential: str | None


def personal_statuses(store: Store, catalog: Catalog, group: str, entry: str) -> list[MemberStatus]:
    """Each member's readiness for a personal entry of the group (a tool, or `UPSTREAM.*`)."""
    upstream = AllowEntry.parse(entry).upstream
    tool: Tool | Upstream | None = catalog.upstreams.get(upstream) if upstream else catalog.tool(entry)
    target = target_of(catalog, entry)
    bound = {user: cred for (t, user), cred in store.personal_bindings(group).items() if t == target}
    creds = store.credentials_named(bound.values())
    now = oauth.utc_now()
    out = []
    for user in store.iter_members(group):
        cred = bound.get(user)
        found = verdict(tool, creds.get(cred) if cred else None, now)
        out.append(MemberStatus(user, found.status, cred if found.status != "no_credential_needed" else None))
    return out


def orphaned_bindings(store: Store) -> list[str]:
    """`doctor`'s problems about people: personal bindings whose user is no longer a member of the group."""
    problems = []
    for info in store.iter_groups():
        members = set(store.iter_members(info.name))
        for (target, user), cred in sorted(store.personal_bindings(info.name).items()):
            if user not in members:
                problems.append(
                    f"group {info.name}: {user}'s personal credential {cred} is bound to {target!r}, but {user} is "
                    f"no longer a member (fix: `credgate unbind {info.name} {target} --user {user}`, or "
                    f"`credgate group member add {info.name} {user}`)"
                )
    return problems


def missing_personal(store: Store, catalog: Catalog) -> list[str]:
    """`doctor`'s warnings about people: members without a usable personal credential for a personal tool of
    their group (their agents get the setup warning when they call it)."""
    lines = []
    for info in store.iter_groups():
        for entry in sorted(info.personal):
            for member in personal_statuses(store, catalog, info.name, entry):
                if member.status in ("needs_credential", "incomplete", "invalid", "expired"):
                    name = AllowEntry.parse(entry).name
                    lines.append(
                        f"group {info.name}: member {member.user} has no usable personal credential for {entry!r}"
                        f" ({member.status}; fix: `credgate cred add NAME --tool {name} --owner {member.user}` and"
                        f" `credgate bind {info.name} {name} NAME --user {member.user}`)"
                    )
    return lines


def require_member(store: Store, group: str, user: str) -> None:
    """Refuse a user who does not exist or is not a member of the group (`serve --user`)."""
    store.require_user(user)
    if not store.is_member(group, user):
        raise ConflictError(
            f"user {user!r} is not a member of group {group!r}: run `credgate group member add {group} {user}`"
        )


def sso_user(store: Store, settings: SsoSettings, identity: Identity) -> SsoMatch | None:
    """The user a verified sign-in through the organisation's provider signs in (issue 23): the one linked to
    the account; else the one user with its email, when the provider verified that email; else, with a default
    group, a new member of it (never an admin); else None."""
    return store.sso_sign_in(
        identity.issuer,
        identity.subject,
        email=identity.email,
        email_verified=identity.email_verified,
        name_hint=user_name_hint(identity),
        default_group=settings.default_group,
    )
