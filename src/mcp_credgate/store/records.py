"""What the store hands out: frozen records of credentials, groups, agents and audit rows, and a binding as
found at call time (its credential still sealed). Callers keep them as long as they like; they hold no
connection, and only `SealedCredential` holds ciphertext (and, once opened, its data key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..crypto import DataKey
from .database import Row

T = TypeVar("T")


@dataclass(frozen=True)
class CredentialInfo:
    """What may be shown about a credential without decrypting it."""

    name: str
    type: str
    fields: tuple[str, ...]
    secret_fields: frozenset[str]
    created_at: str
    updated_at: str
    bindings: tuple[tuple[str, str], ...] = ()  # (group, tool)
    uid: str = ""
    expires_at: str | None = None  # an OAuth2 token's expiry: clear metadata, not a secret
    owner: str | None = None  # the user a personal credential belongs to; None: shared (a group's)


@dataclass(frozen=True)
class GroupInfo:
    name: str
    description: str
    created_at: str
    tools: Mapping[str, str | None] = field(default_factory=dict)  # tool (or `UPSTREAM.*`) → bound credential
    upstreams: Mapping[str, str] = field(default_factory=dict)  # upstream MCP server → bound credential
    personal: frozenset[str] = frozenset()  # the allowed entries each member binds a credential of their own for
    approval: frozenset[str] = frozenset()  # the allowed entries whose every call a person approves first


@dataclass(eq=False)
class SealedCredential:
    """A credential's row and value ciphertexts, read but not decrypted. While the binding cache keeps it,
    it keeps its unwrapped data key too (key material, not a value: values are decrypted per call). A new
    one is read after any change to the store, so its identity stands for "this credential as it was read"
    (it compares and hashes by identity: a caller may key what it learnt of it on it, weakly)."""

    row: Row
    values: tuple[Row, ...]
    data_key: DataKey | None = None

    def __repr__(self) -> str:
        return f"SealedCredential({self.row['name']!r})"

    @property
    def type(self) -> str:
        return str(self.row["type"])

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(v["field"] for v in self.values)

    @property
    def expires_at(self) -> str | None:
        return self.row["expires_at"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Binding:
    """What a (group, tool) pair resolves to at call time, for a caller acting for a user or for nobody."""

    allowed: bool
    credential: str | None = None  # the bound credential's name; None when nothing is bound
    sealed: SealedCredential | None = None
    personal: bool = False  # each member binds their own: `credential` is the user's binding
    member: bool = True  # the user is a member of the group (True when acting for nobody)
    approval: bool = False  # the group requires a person's approval of each call (contract §7)


@dataclass(frozen=True)
class AuditRow:
    ts: str
    group: str
    agent: str | None
    tool: str
    credential: str | None
    outcome: str
    duration_ms: float
    ref: str | None = None
    user: str | None = None  # the user the agent acted for
    approval: str | None = None  # "approved": a person approved the call before it ran
    cost: int | None = None  # a call that ran: its declared cost, in micro-units of `currency`
    currency: str | None = None
    id: int | None = field(default=None, compare=False)  # set when read: the row's key in the log's pages


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, in the list's order, and the keys that lead on: `after` (the last item's key) when
    more items follow, `before` (the first item's key) when some come before; None at either end."""

    items: tuple[T, ...]
    after: str | None = None
    before: str | None = None


@dataclass(frozen=True)
class AgentInfo:
    name: str
    group: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    user: str | None = None  # the user the agent acts for
    kind: str = "static"  # 'static': a `cgt_` token; 'oauth': a client's sign-in (contract §6)
    client: str | None = None  # an OAuth grant's client_id


@dataclass(frozen=True)
class AgentIdentity:
    """A live agent found by its token: who it is, its group, the stored hash, and the user it acts for (a
    member of the group: an agent whose user left it is found no more)."""

    name: str
    group: str
    token_hash: str
    user: str | None = None


@dataclass(frozen=True)
class UserInfo:
    name: str
    admin: bool
    email: str | None
    created_at: str
    groups: tuple[str, ...] = ()  # the groups the user is a member of, by name
