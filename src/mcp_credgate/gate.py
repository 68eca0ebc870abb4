"""The core decision, free of MCP: may this group call this tool, with which credential?

`Gate.check` answers every call with one of: Unknown (not the group's tool), InvalidArguments,
CredentialWarning (missing, incomplete or unreadable credential: nothing is sent anywhere), or Ready
(the tool and its decrypted credential). Declarations and argument validators are prepared once;
bindings and values are read from the store on every call, so a rebind or a rotation needs no restart.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from .allow import AllowEntry
from .arguments import ArgumentCheck
from .credential import EMPTY_CREDENTIAL, Credential
from .declarations import Catalog, CredentialSpec, Tool, Upstream
from .errors import CiphertextError, CredentialValueError
from .oauth import utc_now
from .readiness import Verdict, credential_verdict, verdict
from .store import Binding, SealedCredential, Store

__all__ = [
    "CredentialWarning",
    "Decision",
    "Gate",
    "InvalidArguments",
    "ListedTool",
    "NotMember",
    "Ready",
    "Unknown",
]


@dataclass(frozen=True)
class Unknown:
    tool: str


@dataclass(frozen=True)
class InvalidArguments:
    tool: str
    message: str


@dataclass(frozen=True)
class NotMember:
    """The caller acts for a user who is not (or no longer) a member of its group: refused."""

    tool: str
    group: str
    user: str

    def text(self) -> str:
        return (
            f"User {self.user} is not a member of agent group {self.group}: nothing was called. An administrator "
            f"can add them with: credgate group member add {self.group} {self.user}"
        )


@dataclass(frozen=True)
class CredentialWarning:
    """A structured warning for the agent (contract §4, and §5 for personal tools); carries no secret by
    construction."""

    warning: str  # missing_credential | credential_invalid | credential_expired | user_required
    tool: str
    group: str
    credential_type: str
    missing_fields: tuple[str, ...]
    setup_url: str
    setup_command: str
    credential_name: str | None = None
    user: str | None = None  # a personal tool's: whose credential is missing
    personal: bool = False

    @property
    def outcome(self) -> str:
        return "missing_credential" if self.warning == "missing_credential" else "error"

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "warning": self.warning,
            "tool": self.tool,
            "group": self.group,
            "credential_type": self.credential_type,
            "missing_fields": list(self.missing_fields),
            "setup_url": self.setup_url,
            "setup_command": self.setup_command,
        }
        if self.personal:
            found["scope"] = "personal"
            found["user"] = self.user
        return found

    def text(self) -> str:
        whose = f"user {self.user} in agent group {self.group}" if self.user else f"agent group {self.group}"
        if self.warning == "user_required":
            return (
                f"Tool {self.tool} is personal in agent group {self.group}: each member uses a credential of their "
                "own, and this agent acts for no user. Nothing was sent. An administrator can give the agent a user "
                f"with: {self.setup_command} (over stdio: credgate serve --group {self.group} --user <user>)"
            )
        if self.warning == "missing_credential" and self.credential_name is None:
            problem = (
                f"Tool {self.tool} needs a credential of type {self.credential_type} and none is bound for {whose}."
            )
        elif self.warning == "missing_credential":
            problem = (
                f"The credential bound to tool {self.tool} for {whose} lacks the required "
                f"field(s) {', '.join(self.missing_fields)}."
            )
        elif self.warning == "credential_expired":
            problem = (
                f"The OAuth2 authorization of credential {self.credential_name} (tool {self.tool}, {whose}) "
                "has expired or was revoked and cannot be refreshed: it must be connected again."
            )
        else:
            problem = f"The credential bound to tool {self.tool} for {whose} can no longer be read."
        who = f"{self.user} (or an administrator)" if self.user else "An administrator"
        return f"{problem} Nothing was sent. {who} can set it up at {self.setup_url} or with: {self.setup_command}"


Declared = TypeVar("Declared", Tool, Upstream)


@dataclass(frozen=True)
class Ready(Generic[Declared]):
    """Go ahead: the tool (or the upstream, for its resources and prompts) and its decrypted credential."""

    tool: Declared
    credential: Credential
    credential_name: str | None
    user: str | None = None  # the owner of a personal credential (None: the group's shared one)
    approval: bool = False  # a person approves the call first (the declaration's or the group's requirement)


Decision = Unknown | InvalidArguments | NotMember | CredentialWarning | Ready[Tool]

# The warning a call gets for each status of `readiness.verdict` that is not ready.
_WARNINGS = {
    "needs_credential": "missing_credential",
    "incomplete": "missing_credential",
    "invalid": "credential_invalid",
    "expired": "credential_expired",
}


@dataclass(frozen=True)
class ListedTool:
    tool: Tool
    verdict: Verdict

    @property
    def ready(self) -> bool:
        return self.verdict.ready


class Gate:
    def __init__(
        self, store: Store, catalog: Catalog, public_url: str, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.public_url = public_url.rstrip("/")
        self.clock = clock  # what an OAuth2 token's expiry is compared with
        self._argument_checks = {name: ArgumentCheck(t.decl.input_schema) for name, t in catalog.tools.items()}
        # A sealed credential → the declaration its values were found complete and well-formed for. Kept as
        # long as the store keeps that sealed credential (its binding cache), which a change to the store ends.
        self._vetted: weakref.WeakKeyDictionary[SealedCredential, CredentialSpec] = weakref.WeakKeyDictionary()

    def group_exists(self, group: str) -> bool:
        return self.store.group_exists(group)

    def list_tools(self, group: str, user: str | None = None) -> list[ListedTool]:
        """The group's allowed, declared tools, each with its readiness (`readiness.verdict`): a personal tool's
        with the credential `user` bound for it (none for a caller acting for nobody)."""
        allowed = dict(self.store.allowed_tools(group))
        upstream_creds = self.store.upstream_bindings(group) if self.catalog.upstreams else {}
        personal = self.store.personal_tools(group)
        if personal:
            mine = self.store.personal_bindings(group, user) if user is not None else {}
            mine_by_target = {target: cred for (target, _), cred in mine.items()}
            for name in personal:
                upstream = AllowEntry.parse(name).upstream or self._upstream_of(name)
                if upstream is None:
                    allowed[name] = mine_by_target.get(name)
                elif (bound := mine_by_target.get(upstream)) is not None:
                    upstream_creds[upstream] = bound
                else:
                    upstream_creds.pop(upstream, None)
        names = {n for n in allowed if n in self.catalog.tools}
        for entry in map(AllowEntry.parse, allowed):
            if entry.upstream is not None:
                names.update(self.catalog.upstream_tools(entry.upstream))
        stored = self.store.credentials_named(c for c in (*allowed.values(), *upstream_creds.values()) if c)
        now = self.clock()
        listed = []
        for name in sorted(names):
            tool = self.catalog.tools[name]
            cred = upstream_creds.get(tool.upstream) if tool.upstream else allowed.get(name)
            listed.append(ListedTool(tool, verdict(tool, stored.get(cred) if cred else None, now)))
        return listed

    def _upstream_of(self, tool_name: str) -> str | None:
        tool = self.catalog.tools.get(tool_name)
        return tool.upstream if tool is not None else None

    def allows(self, group: str, tool_name: str) -> bool:
        tool = self.catalog.tool(tool_name)
        return tool is not None and self.store.binding(group, tool_name, tool.upstream).allowed

    def setup_url(self, group: str, tool: str, user: str | None = None) -> str:
        """The dashboard's setup page of a tool in a group; of a personal tool, the user's own (which opens for
        that user alone)."""
        path = f"groups/{quote(group, safe='')}/tools/{quote(tool, safe='')}/setup"
        if user is not None:
            path = f"users/{quote(user, safe='')}/{path}"
        return f"{self.public_url}/{path}"

    def _warning(
        self,
        kind: str,
        group: str,
        tool: Tool | Upstream,
        missing: tuple[str, ...],
        credential_name: str | None = None,
        binding: Binding | None = None,
        user: str | None = None,
    ) -> CredentialWarning:
        spec = tool.credential
        assert spec is not None
        personal = binding is not None and binding.personal
        owner = f" --owner {user}" if personal and user else ""
        if kind == "user_required":
            command = f"credgate agent add {group} <agent> --user <user>"
        elif credential_name is None:
            bind = f"credgate bind {group} {tool.name} <name>{f' --user {user}' if personal and user else ''}"
            command = f"credgate cred add <name> --tool {tool.name}{owner} && {bind}"
        elif kind == "credential_expired":
            command = f"credgate cred connect {credential_name} --tool {tool.name}{owner}"
        else:
            command = f"credgate cred update {credential_name} --from-json -"
        return CredentialWarning(
            warning=kind,
            tool=tool.name,
            group=group,
            credential_type=spec.type,
            missing_fields=missing,
            setup_url=self.setup_url(group, tool.name, user if personal else None),
            setup_command=command,
            credential_name=credential_name,
            user=user if personal else None,
            personal=personal,
        )

    def expired(
        self, group: str, tool: Tool | Upstream, credential_name: str, user: str | None = None
    ) -> CredentialWarning:
        """The warning for an OAuth2 credential whose token can no longer be refreshed (`user`: the owner of a
        personal one)."""
        return self._warning(
            "credential_expired", group, tool, (), credential_name, Binding(True, personal=user is not None), user
        )

    def check(self, group: str, tool_name: str, arguments: dict[str, Any], user: str | None = None) -> Decision:
        tool = self.catalog.tool(tool_name)
        if tool is None:
            return Unknown(tool_name)
        binding = self.store.binding(group, tool_name, tool.upstream, user)
        if not binding.allowed:
            return Unknown(tool_name)
        if user is not None and not binding.member:
            return NotMember(tool_name, group, user)
        problem = self._argument_checks[tool_name].problem(arguments)
        if problem is not None:
            return InvalidArguments(tool_name, problem)
        decision = self._resolve(group, tool, binding, user)
        if isinstance(decision, Ready) and (tool.decl.approval or binding.approval):
            return replace(decision, approval=True)
        return decision

    def allowed_upstreams(self, group: str) -> list[str]:
        """The upstream MCP servers the group allows as a whole (`NAME.*`): only their resources, prompts,
        completions and log lines are the group's."""
        allowed = self.store.allowed_tools(group)
        return [name for name in self.catalog.upstreams if str(AllowEntry.of_upstream(name)) in allowed]

    def check_upstream(
        self, group: str, upstream: str, entry: str | None = None, user: str | None = None
    ) -> Unknown | CredentialWarning | Ready[Upstream]:
        """May the group use the upstream as a whole (or through the allow `entry` of one of its tools), and with
        which credential (a personal upstream's: `user`'s)? A user who is not a member reaches nothing."""
        tool = self.catalog.upstreams.get(upstream)
        if tool is None:
            return Unknown(upstream)
        binding = self.store.binding(group, entry or str(AllowEntry.of_upstream(upstream)), upstream, user)
        if not binding.allowed or not binding.member:
            return Unknown(upstream)
        return self._resolve(group, tool, binding, user)

    def _resolve(
        self, group: str, tool: Declared, binding: Binding, user: str | None = None
    ) -> CredentialWarning | Ready[Declared]:
        spec = tool.credential
        if spec is None:
            return Ready(tool, EMPTY_CREDENTIAL, None)
        if binding.personal and user is None:
            return self._warning("user_required", group, tool, tuple(spec.missing_fields(())), None, binding)
        sealed = binding.sealed
        if sealed is None:
            return self._warning("missing_credential", group, tool, tuple(spec.missing_fields(())), None, binding, user)
        # Found complete and well-formed for this declaration before, the same verdict holds until the store
        # changes (a new SealedCredential is read then) or the declarations do (a new spec); only an OAuth2
        # token's expiry moves with the clock.
        if self._vetted.get(sealed) is not spec or spec.oauth is not None:
            found = credential_verdict(spec, sealed, self.clock())
            if not found.ready:
                return self._warning(
                    _WARNINGS[found.status], group, tool, found.missing_fields, binding.credential, binding, user
                )
        try:
            credential = self.store.open_sealed(sealed)
        except CiphertextError as exc:
            fields = (exc.field,) if exc.field else ()
            return self._warning("credential_invalid", group, tool, fields, exc.credential, binding, user)
        if self._vetted.get(sealed) is spec:
            return Ready(tool, credential, credential.name, user if binding.personal else None)
        decision = self._values_decision(group, tool, credential, binding, user)
        if isinstance(decision, Ready):
            self._vetted[sealed] = spec
        return decision

    def _values_decision(
        self, group: str, tool: Declared, credential: Credential, binding: Binding, user: str | None
    ) -> CredentialWarning | Ready[Declared]:
        """What only the decrypted values tell: each one still matches its field's declaration."""
        spec = tool.credential
        assert spec is not None
        for name, value in credential.items():
            field = spec.field(name)
            if field is not None:
                try:
                    field.check_value(value)
                except CredentialValueError:
                    return self._warning("credential_invalid", group, tool, (name,), credential.name, binding, user)
        return Ready(tool, credential, credential.name, user if binding.personal else None)
