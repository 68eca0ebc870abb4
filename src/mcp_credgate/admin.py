"""Admin operations that need both the declarations and the store: the CLI (and later the dashboard) call these.

The store keeps data; this module keeps the rules: values are validated against their type before
anything is written, a binding must match the tool's credential type, and a group's tools get a status.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import oauth
from .allow import AllowEntry, allows_upstream_tools
from .budgets import Limit, parse_calls, parse_spend
from .config import Settings
from .credential import mask
from .declarations import Catalog, CredentialSpec, Tool, Upstream
from .errors import CiphertextError, ConflictError, CredentialValueError, CredgateError, NotFoundError, StoreError
from .readiness import Status, Verdict, credential_verdict, verdict
from .sandbox import missing_bubblewrap, probe, sandbox_state
from .store import CredentialInfo, GroupInfo, Store, hint_path
from .store.faults import os_fault

__all__ = [
    "OAUTH_CLIENT_FIELDS",
    "STATUS_LABELS",
    "ToolStatus",
    "add_credential",
    "allow",
    "approval_required_by",
    "bind",
    "bindable",
    "budget_limit",
    "check_credential",
    "check_scope",
    "credential_status",
    "deny",
    "doctor",
    "folders",
    "group_statuses",
    "is_declared",
    "oauth_summary",
    "require_tool",
    "sandbox_problems",
    "sandbox_warnings",
    "save_connection",
    "scope_entries",
    "secret_holders",
    "serve_warnings",
    "shown_values",
    "spec_for",
    "stored_client",
    "target_of",
    "tools_folder_problem",
    "unbind",
    "update_credential",
    "upstream_of",
]

OAUTH_CLIENT_FIELDS = ("client_id", "client_secret")
STATUS_LABELS: dict[Status, str] = {
    "ready": "ready",
    "needs_credential": "needs credential",
    "incomplete": "incomplete",
    "invalid": "invalid",
    "expired": "expired",
    "no_credential_needed": "no credential needed",
    "undeclared": "not declared any more",
}


@dataclass(frozen=True)
class ToolStatus:
    tool: str
    status: Status
    credential: str | None
    credential_type: str | None
    missing_fields: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        """What to bind or set up for this entry: the tool, or the upstream an `UPSTREAM.*` entry allows."""
        return AllowEntry.parse(self.tool).name

    def as_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "status": self.status,
            "credential": self.credential,
            "credential_type": self.credential_type,
            "missing_fields": list(self.missing_fields),
        }


def require_tool(catalog: Catalog, name: str) -> Tool | Upstream:
    """A declared tool, or an upstream MCP server's declaration by its name (what a warning about its
    resources or prompts names)."""
    tool = catalog.tool(name) or catalog.upstreams.get(name)
    if tool is None:
        raise NotFoundError(f"no tool named {name!r} is declared (see `credgate tools`)")
    return tool


def spec_for(catalog: Catalog, type_name: str | None = None, tool_name: str | None = None) -> CredentialSpec:
    """The credential type named directly (--type) or through a tool (--tool)."""
    if tool_name is not None:
        tool = require_tool(catalog, tool_name)
        if tool.credential is None:
            raise ConflictError(f"tool {tool_name!r} needs no credential")
        return tool.credential
    assert type_name is not None
    spec = catalog.types.get(type_name)
    if spec is None:
        known = ", ".join(catalog.types) or "none declared"
        raise NotFoundError(f"no credential type named {type_name!r} is declared (known types: {known})")
    return spec


def add_credential(
    store: Store, spec: CredentialSpec, name: str, values: Mapping[str, Any], owner: str | None = None
) -> None:
    """Add a credential, shared or (`owner`) a user's personal one, its values checked against the type."""
    clean = spec.validate_values(values, complete=True)
    store.add_credential(name, spec.type, clean, spec.secret_fields, owner)


def update_credential(store: Store, catalog: Catalog, name: str, values: Mapping[str, Any]) -> None:
    info = store.credential_info(name)
    spec = catalog.types.get(info.type)
    if spec is None:
        raise NotFoundError(
            f"credential {name!r} has type {info.type!r}, which no tool declares any more; "
            "declare it again or remove the credential"
        )
    if not values:
        raise CredentialValueError("nothing to update: give --set FIELD=VALUE or --from-json")
    clean = spec.validate_values(values, complete=False)
    if spec.oauth is None:
        store.update_credential(name, clean, spec.secret_fields)
        return
    # New tokens by hand: not while a gateway refreshes the old ones, and a refusal noted earlier is moot.
    drop = ["refresh_error"] if {spec.oauth.field, "refresh_token"} & set(clean) else []
    with store.credential_lock(info.uid):
        store.update_credential(name, clean, spec.secret_fields, remove=drop, uid=info.uid)


def save_connection(
    store: Store,
    spec: CredentialSpec,
    name: str,
    given: Mapping[str, str],
    tokens: tuple[dict[str, str], list[str]],
    uid: str | None,
    owner: str | None = None,
) -> bool:
    """Store what an OAuth2 connection produced, with the fields given for it: a new credential (`uid` None:
    refused if the name was taken meanwhile), or new tokens for the credential that was there when the
    connection started (refused if it was replaced); a new one is `owner`'s when given. Returns True if the
    credential was created."""
    values, drop = tokens
    clean = spec.validate_values({**given, **values}, complete=uid is None, managed=True)
    if uid is None:
        store.add_credential(name, spec.type, clean, spec.secret_fields, owner)
        return True
    with store.credential_lock(uid):
        store.update_credential(name, clean, spec.secret_fields, remove=drop, uid=uid)
    return False


def stored_client(credential: Mapping[str, str] | None) -> dict[str, str]:
    """The OAuth2 client id and secret a stored credential holds, for connecting it again (the CLI and the
    dashboard both reuse them; values given anew win over them)."""
    return {k: credential[k] for k in OAUTH_CLIENT_FIELDS if credential is not None and k in credential}


def shown_values(
    spec: CredentialSpec | None, values: Mapping[str, str], stored_secret: frozenset[str]
) -> dict[str, str]:
    """A credential's values as people see them: secret ones masked (all of them when the type is no longer
    declared), in the declared field order."""
    secret = (spec.secret_fields if spec else frozenset(values)) | stored_secret
    order = [f.name for f in spec.fields] if spec else list(values)
    names = [n for n in order if n in values] + [n for n in values if n not in order]
    return {k: mask(values[k]) if k in secret else values[k] for k in names}


def oauth_summary(spec: CredentialSpec, credential: Mapping[str, str]) -> dict[str, Any] | None:
    """What `cred show` and the dashboard tell about an OAuth2 credential's tokens (never a token)."""
    if spec.oauth is None:
        return None
    state = oauth.condition(credential, oauth.utc_now())
    return {
        "expires_at": credential.get("expires_at"),
        "expired": state == "expired",
        "can_refresh": bool(credential.get("refresh_token")) and not credential.get("refresh_error"),
        "scope": credential.get("scope"),
        "refreshed_at": credential.get("refreshed_at"),
        "refresh_error": credential.get("refresh_error"),
    }


def credential_status(spec: CredentialSpec, info: CredentialInfo) -> Verdict:
    """The readiness of a stored credential for a credential type (`readiness.credential_verdict`)."""
    return credential_verdict(spec, info, oauth.utc_now())


def upstream_of(catalog: Catalog, name: str) -> str | None:
    """The upstream MCP server that NAME stands for: `NAME`, `NAME.*`, `NAME_*`, or one of its tools."""
    for candidate in AllowEntry.without_suffix(name):
        if candidate in catalog.upstreams:
            return candidate
    tool = catalog.tool(name)
    return tool.upstream if tool is not None else None


def _allow_entry(catalog: Catalog, name: str) -> AllowEntry:
    """What `group allow` stores: a declared tool, or all of an upstream's tools."""
    if AllowEntry.names_whole_upstream(name):
        upstream = upstream_of(catalog, name)
        if upstream is None:
            raise NotFoundError(f"no upstream MCP server named {name[:-2]!r} is declared (see `credgate tools`)")
        return AllowEntry.of_upstream(upstream)
    if name in catalog.upstreams:
        entry = AllowEntry.of_upstream(name)
        raise ConflictError(f"{name!r} is an upstream MCP server: allow its tools with `{entry}` or one by one")
    require_tool(catalog, name)
    return AllowEntry(name)


def target_of(catalog: Catalog, name: str) -> str:
    """What a tool's bindings are made for: the upstream MCP server of an upstream's tool or `NAME.*`, else
    the tool itself."""
    return upstream_of(catalog, name) or name


def bindable(catalog: Catalog, tool_name: str) -> Tool | Upstream:
    """The declaration a binding for `tool_name` is made for (an upstream's, for one of its tools)."""
    upstream = upstream_of(catalog, tool_name)
    tool = catalog.upstreams[upstream] if upstream else require_tool(catalog, tool_name)
    if tool.credential is None:
        raise ConflictError(f"tool {tool_name!r} needs no credential; nothing to bind")
    return tool


def scope_entries(store: Store, catalog: Catalog, group: str, tool_name: str) -> list[str]:
    """The group's allow entries that a binding for `tool_name` serves: the tool, or an upstream's entries."""
    target = target_of(catalog, tool_name)
    return [e for e in store.allowed_tools(group) if e == tool_name or target_of(catalog, e) == target]


def check_credential(store: Store, catalog: Catalog, tool_name: str, credential: str, *, owner: str | None) -> None:
    """Refuse to bind `credential` for `tool_name` unless it is of the tool's type and `owner`'s (None: shared,
    no one's): a personal credential is never a group's, nor another user's."""
    tool = bindable(catalog, tool_name)
    assert tool.credential is not None
    info = store.credential_info(credential)
    if info.owner != owner and owner is not None:
        raise ConflictError(
            f"credential {credential!r} is not {owner}'s: a personal binding takes a credential its user owns "
            f"(`credgate cred add NAME --tool {tool_name} --owner {owner}`)"
        )
    if info.owner is not None and owner is None:
        raise ConflictError(
            f"credential {credential!r} is {info.owner}'s own: a shared binding takes a shared credential "
            f"(a personal one is bound with `--user {info.owner}`, for a personal tool)"
        )
    if info.type != tool.credential.type:
        raise ConflictError(
            f"credential {credential!r} has type {info.type!r} but tool {tool_name!r} needs type "
            f"{tool.credential.type!r}"
        )


def check_scope(store: Store, catalog: Catalog, group: str, tool_name: str, *, personal: bool) -> None:
    """Refuse a shared binding for a personal tool, and a personal binding for a shared one."""
    entries = scope_entries(store, catalog, group, tool_name)
    if not entries:
        return  # not allowed: the store's own refusal names the fix
    is_personal = bool(set(entries) & store.personal_tools(group))
    if is_personal and not personal:
        raise ConflictError(
            f"tool {tool_name!r} is personal in group {group!r}: each member binds their own "
            f"(`credgate bind {group} {tool_name} CRED --user USER`)"
        )
    if personal and not is_personal:
        raise ConflictError(
            f"tool {tool_name!r} is shared in group {group!r}: bind it without --user, or make it personal "
            f"(`credgate group allow {group} {tool_name} --personal`)"
        )


def group_statuses(store: Store, catalog: Catalog, group: str) -> list[ToolStatus]:
    """Each entry the group allows, with its readiness (`readiness.verdict`, as `tools/list` and calls)."""
    info = store.group(group)
    creds = store.credentials_named(c for c in (*info.tools.values(), *info.upstreams.values()) if c)
    now = oauth.utc_now()
    out = []
    for entry, cred_name in info.tools.items():
        upstream = AllowEntry.parse(entry).upstream
        tool: Tool | Upstream | None = catalog.upstreams.get(upstream) if upstream else catalog.tool(entry)
        if isinstance(tool, Tool) and tool.upstream:
            upstream = tool.upstream
        if upstream is not None:
            cred_name = info.upstreams.get(upstream)
        found = verdict(tool, creds.get(cred_name) if cred_name else None, now)
        spec = tool.credential if tool is not None else None
        shown_cred = cred_name if found.status != "no_credential_needed" else None
        out.append(ToolStatus(entry, found.status, shown_cred, spec.type if spec else None, found.missing_fields))
    return out


def allow(
    store: Store,
    catalog: Catalog,
    group: str,
    tools: Iterable[str],
    *,
    personal: bool = False,
    force: bool = False,
    approval: bool = False,
) -> tuple[list[str], list[str]]:
    """Allow tools, shared or personal (contract §5), each call first approved by a person or not (§7; a
    declaration's `approval = true` holds either way). An upstream's entries in a group share one scope (the
    upstream has one binding per caller); `force` changes them all. Returns (the entries allowed, those whose
    bindings of the other scope `force` removed)."""
    entries = [str(_allow_entry(catalog, name)) for name in tools]
    if personal:
        for entry in entries:
            declared = catalog.upstreams.get(upstream_of(catalog, entry) or "") or catalog.tool(entry)
            if declared is not None and declared.credential is None:
                raise ConflictError(f"tool {entry!r} needs no credential: there is nothing personal to allow")
    allowed = store.allowed_tools(group) if store.group_exists(group) else {}
    personal_now = store.personal_tools(group) if allowed else frozenset()
    upstreams = {upstream_of(catalog, e) for e in entries} - {None}
    siblings = [e for e in allowed if e not in entries and upstream_of(catalog, e) in upstreams]
    differing = [e for e in siblings if (e in personal_now) != personal]
    if differing and not force:
        raise ConflictError(
            f"{', '.join(sorted(differing))} (of the same upstream) {'is' if len(differing) == 1 else 'are'} "
            f"{'shared' if personal else 'personal'} in group {group!r}: an upstream has one scope in a group; "
            "use --force to change them all"
        )
    entries += differing
    removed = store.allow(
        group,
        entries,
        personal=personal,
        force=force,
        targets={e: target_of(catalog, e) for e in entries},
        approval=approval,
    )
    return entries, removed


def approval_required_by(catalog: Catalog, group: GroupInfo, entry: str) -> str | None:
    """Who requires a person's approval of each call of an allowed entry: "declaration" (its tool's or its
    upstream's `approval = true`, which no group lifts), "group" (`group allow --approval`), or None."""
    declared = catalog.upstreams.get(upstream_of(catalog, entry) or "") or catalog.tool(entry)
    if declared is not None and declared.decl.approval:
        return "declaration"
    return "group" if entry in group.approval else None


def deny(store: Store, catalog: Catalog, group: str, tools: Iterable[str]) -> list[str]:
    entries = [
        str(AllowEntry.of_upstream(upstream))
        if AllowEntry.names_whole_upstream(name) and (upstream := upstream_of(catalog, name))
        else name
        for name in tools
    ]
    unbound = store.deny(group, entries)
    # An upstream none of whose tools the group still allows loses its binding too (else it would come back,
    # unannounced, with the next `allow`).
    allowed = store.allowed_tools(group)
    for upstream in store.upstream_bindings(group):
        if not allows_upstream_tools(allowed, upstream, catalog.upstream_tools(upstream)):
            store.unbind_upstream(group, upstream)
            unbound.append(upstream)
    for target in sorted({target for target, _ in store.personal_bindings(group)}):
        if target in catalog.upstreams and not allows_upstream_tools(allowed, target, catalog.upstream_tools(target)):
            store.remove_personal_bindings(group, target)
            unbound.append(target)
    return unbound


def bind(store: Store, catalog: Catalog, group: str, tool_name: str, credential: str) -> None:
    """Bind a credential to a tool, or to an upstream MCP server (for all its tools; naming one of them
    binds the upstream too: one upstream process serves one credential)."""
    upstream = upstream_of(catalog, tool_name)
    check_scope(store, catalog, group, tool_name, personal=False)
    check_credential(store, catalog, tool_name, credential, owner=None)
    if upstream is None:
        store.bind(group, tool_name, credential)
        return
    if not allows_upstream_tools(store.group(group).tools, upstream, catalog.upstream_tools(upstream)):
        raise ConflictError(
            f"group {group!r} allows no tool of {upstream!r}: run "
            f"`credgate group allow {group} {AllowEntry.of_upstream(upstream)}` first"
        )
    store.bind_upstream(group, upstream, credential)


def unbind(store: Store, catalog: Catalog, group: str, tool_name: str) -> None:
    upstream = upstream_of(catalog, tool_name)
    if upstream is None:
        store.unbind(group, tool_name)
    else:
        store.unbind_upstream(group, upstream)


def doctor(settings: Settings, catalog: Catalog) -> list[str]:
    """Every problem found, one line each with its fix: file modes, key and store, schema, integrity,
    declarations, and bindings that no longer match the declarations."""
    problems = [f"{p} (fix the file, then run `credgate tools --check`)" for p in catalog.problems]
    problems += _mode_problems(settings)
    problems += sandbox_problems(settings, catalog)
    try:
        store = Store.open(settings)
    except CredgateError as exc:
        return list(dict.fromkeys([*problems, str(exc)]))  # a fault under the folder is said once
    with store:
        try:
            problems += [f"{p} (restore a backup with `credgate restore PATH`)" for p in store.health()]
            types = {c.name: c.type for c in store.list_credentials()}
            for name in types:
                try:
                    store.read_credential(name)
                except CiphertextError as exc:
                    problems.append(str(exc))
            targets = store.bound_targets()
            folder = tools_folder_problem(settings, catalog, [target for _, target, _ in targets])
            if folder is not None:  # nothing the store names is declared: the folder is wrong, not the setup
                problems.append(folder)
                return problems
            for name, type_ in types.items():
                if type_ not in catalog.types:
                    problems.append(
                        f"credential {name}: no tool declares its type {type_!r} "
                        f"(declare it, or `credgate cred rm {name}`)"
                    )
            for group, target, cred in targets:
                problems += _binding_problems(catalog, group, target, cred, types.get(cred))
        except StoreError as exc:  # damage bad enough to stop the backend's own check itself
            problems.append(f"database integrity: {exc} (restore a backup with `credgate restore PATH`)")
    return problems


def is_declared(catalog: Catalog, entry: str) -> bool:
    """Does the catalog declare what an allow entry or binding target names (a tool, an upstream, or a tool of
    an upstream whose tools are not listed yet)?"""
    parsed = AllowEntry.parse(entry)
    if parsed.upstream is not None or entry in catalog.upstreams:
        return (parsed.upstream or entry) in catalog.upstreams
    return entry in catalog.tools or catalog.undiscovered_upstream(entry) is not None


def folders(settings: Settings) -> str:
    """The tools folders read, for a message (each marked when it does not exist)."""
    return ", ".join(f"{d}{'' if d.is_dir() else ' (missing)'}" for d in settings.tools_dirs)


def tools_folder_problem(settings: Settings, catalog: Catalog, named: Iterable[str]) -> str | None:
    """When none of what the store names (allowed tools, bound targets) is declared, the tools folder is the
    problem, not the setup: a client started credgate elsewhere, or the folder moved."""
    names = set(named)
    if not names or any(is_declared(catalog, name) for name in names):
        return None
    return (
        f"none of the {len(names)} tools the groups allow is declared in the tools folder(s) read: "
        f"{folders(settings)} (point --tools-dir or CREDGATE_TOOLS_DIR at the folder that declares them; "
        "the groups and bindings are fine as they are)"
    )


def serve_warnings(settings: Settings, catalog: Catalog, store: Store, groups: Iterable[str]) -> list[str]:
    """What `serve` says at start: allowed tools that no declaration names (agents would not see them)."""
    out = []
    for group in groups:
        missing = sorted(e for e in store.allowed_tools(group) if not is_declared(catalog, e))
        if missing:
            out.append(
                f"group {group} allows {', '.join(missing)}, which no declaration names in {folders(settings)}: "
                "agents will not see them (point --tools-dir or CREDGATE_TOOLS_DIR at the folder that declares them)"
            )
    return out


_UNSANDBOXED_RISK = "it can read everything this account can, the master key and every credential included"


def sandbox_warnings(settings: Settings, catalog: Catalog) -> list[str]:
    """One line per stdio upstream that runs without a sandbox, saying what turned it off (`serve` prints them
    at start, `doctor` as warnings)."""
    out = []
    for name, upstream in catalog.upstreams.items():
        state = sandbox_state(upstream.handler, settings.sandbox)
        if state is None or state == "on":
            continue
        why = "sandbox = false" if state == "off: declaration" else "CREDGATE_SANDBOX=off or --no-sandbox"
        out.append(f"upstream {name} ({upstream.source}) runs without a sandbox ({why}): {_UNSANDBOXED_RISK}")
    return out


def secret_holders(catalog: Catalog) -> dict[str, str]:
    """What each upstream that takes a credential holds, one line each by name: its credential's real values
    (`inject = "env"`), or placeholders whose real values its egress proxy puts on the wire toward its declared
    hosts only (`inject = "egress"`)."""
    out = {}
    for name, upstream in catalog.upstreams.items():
        if upstream.credential is None:
            continue
        egress = upstream.handler.egress
        if upstream.handler.inject == "egress" and egress is not None:
            out[name] = f"placeholders: the real values go on the wire toward {', '.join(egress.hosts)} only"
        else:
            out[name] = 'real secrets (inject = "env"): it can send them anywhere its sandbox lets it'
    return out


def sandbox_problems(settings: Settings, catalog: Catalog) -> list[str]:
    """The sandboxed stdio upstreams that cannot start here: bubblewrap missing or unable to make a sandbox."""
    egress_off = [
        f'upstream {n} will not start: inject = "egress" needs the sandbox, which CREDGATE_SANDBOX=off turns off'
        for n, u in catalog.upstreams.items()
        if u.handler.inject == "egress" and sandbox_state(u.handler, settings.sandbox) == "off: global"
    ]
    sandboxed = [n for n, u in catalog.upstreams.items() if sandbox_state(u.handler, settings.sandbox) == "on"]
    if not sandboxed:
        return egress_off
    names = f"upstream{'s' if len(sandboxed) > 1 else ''} {', '.join(sandboxed)}"
    why = probe()
    if why is None:
        return egress_off
    if why.startswith("bubblewrap (`bwrap`) is not on the PATH"):
        return [*egress_off, f"{names} will not start: {missing_bubblewrap(names)}"]
    return [*egress_off, f"{names} will not start: {why}"]


def _mode_problems(settings: Settings) -> list[str]:
    out: list[str] = []
    wanted = [(settings.home, 0o700)] + [
        (settings.home / name, 0o600)
        for name in (
            settings.database_path.name,
            f"{settings.database_path.name}-wal",
            f"{settings.database_path.name}-shm",
            hint_path(settings.database_path).name,
            settings.key_path.name,
            settings.pending_key_path.name,
        )
    ]
    for path, mode in wanted:
        try:
            found = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to look at: say whose it is, once
            return [*out, str(os_fault(path, exc))]
        if found & ~mode:
            out.append(f"{path} is mode {found:o}, readable by others (fix: chmod {mode:o} {path})")
    return out


def _binding_problems(catalog: Catalog, group: str, target: str, cred: str, cred_type: str | None) -> list[str]:
    if not cred:  # an allowed entry without binding
        upstream = catalog.undiscovered_upstream(target)
        if upstream is not None:
            return [
                f"group {group}: allows {target!r}, a tool of upstream {upstream}, whose tools are not listed yet "
                f"(fix: `credgate tools --refresh --discover-with CRED`; a gateway lists them at first use when "
                "a credential is bound)"
            ]
        if not is_declared(catalog, target):
            return [
                f"group {group}: allows {target!r}, which is not declared (fix: `credgate group deny {group} {target}`)"
            ]
        return []
    tool = catalog.upstreams.get(target) or catalog.tool(target)
    if tool is None:
        return [
            f"group {group}: credential {cred} is bound to {target!r}, which is not declared "
            f"(fix: `credgate unbind {group} {target}`)"
        ]
    if tool.credential is not None and cred_type != tool.credential.type:
        return [
            f"group {group}: credential {cred} (type {cred_type}) is bound to {target!r}, which needs type "
            f"{tool.credential.type} (fix: `credgate bind {group} {target} <a {tool.credential.type} credential>`)"
        ]
    return []


# -- budgets (contract §8) --------------------------------------------------------------------------------------


def budget_limit(
    store: Store,
    catalog: Catalog,
    group: str,
    *,
    tool: str | None,
    user: str | None,
    agent: str | None,
    calls: str | None,
    spend: str | None,
    option: str | None = None,
) -> Limit:
    """A limit from `budget set`'s options, checked: one of --calls / --spend, a known tool, one of --user /
    --agent, an existing agent; a spend limit's currency is that of the tools it covers, which must be one.
    `option`: what the amount was given as, to begin its refusal with (--calls or --spend by default)."""
    if (calls is None) == (spend is None):
        raise CredgateError("give one of --calls N/WINDOW or --spend X/PERIOD")
    if user is not None and agent is not None:
        raise CredgateError("give --user or --agent, not both: a limit is the group's, a member's or an agent's")
    store.group(group)  # NotFoundError for an unknown group
    if tool is not None and catalog.tool(tool) is None:
        raise NotFoundError(f"no tool named {tool!r} is declared (see `credgate tools`)")
    if agent is not None:
        store.agent(agent)  # NotFoundError for an unknown agent
    try:
        if calls is not None:
            amount, per = parse_calls(calls, option or "--calls")
        else:
            amount, per = parse_spend(spend or "", option or "--spend")
    except ValueError as exc:
        raise CredgateError(str(exc)) from None
    if calls is not None:
        return Limit(group, tool, user, agent, "calls", amount, per)
    covered = [tool] if tool is not None else list(store.allowed_tools(group))
    currencies = sorted({t.decl.currency for name in covered if (t := catalog.tool(name)) is not None})
    if len(currencies) > 1:
        raise CredgateError(
            f"the tools this spend limit covers cost in different currencies ({', '.join(currencies)}): "
            "set one per tool with --tool"
        )
    return Limit(group, tool, user, agent, "spend", amount, per, currencies[0] if currencies else "USD")
