"""The `credgate` command line. Nothing imports this module; it only calls the others.

Exit status: 0 done, 1 refused (one line on stderr), 2 usage error. No traceback for bad input.
"""

from __future__ import annotations

import json
import os
import re
import sys
import webbrowser
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import click
from click.core import ParameterSource

from . import __version__, admin, oauth, people
from .budgets import shown_spend
from .config import Settings, database_url_has_password
from .credential import Credential
from .credential_files import FORMATS, CredentialRecord, Format, format_of, read_records, text_lines
from .declarations import (
    NAME_PATTERN,
    Catalog,
    CredentialSpec,
    OAuthProvider,
    Upstream,
    load_catalog,
)
from .errors import ConflictError, CredentialValueError, CredgateError, NotFoundError
from .importing import import_credentials
from .logs import configure_logging
from .loopback import is_loopback_host
from .oauth_callback import LoopbackCallback
from .sandbox import SandboxPolicy, SandboxState, sandbox_state
from .sso import SsoSettings
from .store import (
    Store,
    UserInfo,
    read_staged_key,
    restore_store,
    rotate_master_key,
    stage_master_key,
    store_exists,
    store_location,
)
from .web.session import new_admin_secret

if TYPE_CHECKING:  # the SDK's auth, for the HTTP server only
    from .authorization import Registration

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
LIST_LIMIT = click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Only the first N (by default, all of them)."
)


def _first(items: Iterable[T], limit: int | None) -> Iterable[T]:
    return items if limit is None else islice(items, limit)


def _batch(limit: int | None) -> int:
    """How many rows a list reads at a time: a page of the store's (500), or fewer when fewer are wanted."""
    return min(limit or 500, 500)


# -- shared options: accepted before or after the sub-command ----------------------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value not in (None, (), False):
        ctx.meta[f"credgate.{param.name}"] = value


PASSWORD_IN_ARGV_WARNING = (
    "warning: the password in --database-url is visible to other local users in the process list; "
    "set CREDGATE_DATABASE_URL instead, or keep the password in ~/.pgpass (or the file PGPASSFILE names)"
)


def _remember_database_url(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """As `_remember`; a password in the flag's value is warned about (once, before anything connects)."""
    _remember(ctx, param, value)
    if value and database_url_has_password(value) and not ctx.meta.get("credgate.warned_of_password"):
        ctx.meta["credgate.warned_of_password"] = True
        click.echo(PASSWORD_IN_ARGV_WARNING, err=True)


def common_options(f: F) -> F:
    for opt in (
        click.option(
            "--home",
            type=click.Path(path_type=Path, readable=False),  # a folder not ours: the store says how (mode, owner)
            expose_value=False,
            callback=_remember,
            is_eager=True,
            help="Data folder (default: $CREDGATE_HOME or ~/.local/share/credgate).",
        ),
        click.option(
            "--tools-dir",
            "tools_dir",
            multiple=True,
            type=click.Path(path_type=Path),
            expose_value=False,
            callback=_remember,
            is_eager=True,
            help="Folder of tool declarations (repeatable; default ./tools.d or <home>/tools.d).",
        ),
        click.option(
            "--database-url",
            expose_value=False,
            callback=_remember_database_url,
            is_eager=True,
            help="PostgreSQL store shared by replicas (default: $CREDGATE_DATABASE_URL, else SQLite in the home); "
            "a password here shows in the process list: prefer CREDGATE_DATABASE_URL or ~/.pgpass.",
        ),
        click.option(
            "--public-url",
            expose_value=False,
            callback=_remember,
            is_eager=True,
            help="Base URL of setup links (default http://127.0.0.1:8765).",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            expose_value=False,
            callback=_remember,
            is_eager=True,
            help="Machine-readable output.",
        ),
    ):
        f = opt(f)
    return f


@dataclass
class App:
    """What a command needs, built lazily from the options."""

    meta: Mapping[str, Any]
    _store: Store | None = field(default=None, init=False)

    @cached_property
    def settings(self) -> Settings:
        return Settings.resolve(
            home=self.meta.get("credgate.home"),
            tools_dirs=self.meta.get("credgate.tools_dir", ()),
            public_url=self.meta.get("credgate.public_url"),
            database_url=self.meta.get("credgate.database_url"),
        )

    @property
    def as_json(self) -> bool:
        return bool(self.meta.get("credgate.as_json"))

    @cached_property
    def catalog(self) -> Catalog:
        """The declarations, with the upstream MCP servers' tools as last discovered (when a store exists)."""
        catalog = load_catalog(self.settings.tools_dirs, self.settings.protected_paths)
        if catalog.upstreams and store_exists(self.settings):
            catalog = catalog.with_discovered(self.store.discovered_tools())
        return catalog

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.settings, frozen_on_fault=True)  # reads work on a full disk
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def out(self, data: Any, text: str | Iterable[str]) -> None:
        """Print JSON with --json, else the human text."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            for line in [text] if isinstance(text, str) else text:
                click.echo(line)

    def out_list(self, items: Iterable[T], data: Callable[[T], Any], text: Callable[[T], str], empty: str) -> None:
        """Print a list as it is read, item by item, never all of it at once: with --json the JSON array `out`
        would print (the same bytes), else a line per item (`empty` when there is none)."""
        count = 0
        for item in items:
            if self.as_json:
                entry = json.dumps(data(item), indent=2, ensure_ascii=False).replace("\n", "\n  ")
                click.echo(("[\n  " if count == 0 else ",\n  ") + entry, nl=False)
            else:
                click.echo(text(item))
            count += 1
        if self.as_json:
            click.echo("\n]" if count else "[]")
        elif not count:
            click.echo(empty)


pass_app = click.make_pass_decorator(App)


def _app(ctx: click.Context) -> App:
    app = App(ctx.meta)
    ctx.obj = app
    ctx.call_on_close(app.close)
    return app


def _check_name(kind: str) -> Callable[[click.Context, click.Parameter, str], str]:
    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        if not re.match(NAME_PATTERN, value):
            raise click.BadParameter(f"a {kind} name is 1-64 letters, digits, _ or -")
        return value

    return check


def _check_optional_name(kind: str) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    check = _check_name(kind)

    def optional(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        return None if value is None else check(ctx, param, value)

    return optional


OWNER_OPTION = click.option(
    "--owner", callback=_check_optional_name("user"), help="The user whose personal credential(s) these are."
)
USER_OPTION = click.option("--user", callback=_check_optional_name("user"), help="The member this is for.")


class CredgateGroup(click.Group):
    """Turns every CredgateError into one line and exit 1; hides tracebacks of anything unexpected."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CredgateError as exc:
            raise click.ClickException(str(exc)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("CREDGATE_DEBUG"):
                raise
            raise click.ClickException(
                f"internal error ({type(exc).__name__}); rerun with CREDGATE_DEBUG=1 to see the traceback"
            ) from None


@click.group(cls=CredgateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="credgate")
@common_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """mcp-credgate: an MCP gateway that keeps your tools' secrets on the server."""
    _app(ctx)


# -- init and tools ----------------------------------------------------------------------------


@cli.command()
@common_options
@pass_app
def init(app: App) -> None:
    """Create the data folder, database and master key (idempotent)."""
    s = app.settings
    store, created = Store.initialise(s)
    with store:
        admin_secret = new_admin_secret(store) if store.admin_secret_hash() is None else None
    key_source = "CREDGATE_MASTER_KEY" if os.environ.get("CREDGATE_MASTER_KEY") else str(s.key_path)
    database = store_location(s) if s.database_url else s.database_path.name
    lines = [
        f"initialised credgate in {s.home} (database {database}, master key {key_source})"
        if created
        else f"credgate is already initialised in {s.home}; nothing changed"
    ]
    if admin_secret is not None:
        lines.append(f"dashboard admin secret (shown once; a new one: `credgate admin token`): {admin_secret}")
    data = {"home": str(s.home), "database": store_location(s), "master_key": key_source, "created": created}
    app.out(data | ({"admin_secret": admin_secret} if admin_secret else {}), lines)


@cli.group("admin")
def admin_cmd() -> None:
    """The dashboard's admin secret."""


@admin_cmd.command("token")
@common_options
@pass_app
def admin_token(app: App) -> None:
    """Create a new admin secret for the dashboard (the old one and its sessions stop working)."""
    secret = new_admin_secret(app.store)
    app.out({"admin_secret": secret}, [f"dashboard admin secret (shown once): {secret}"])


def _field_json(spec: CredentialSpec) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = []
    for f in spec.fields:
        fields.append(
            {
                "name": f.name,
                "kind": f.kind,
                "secret": f.secret,
                "required": f.required,
                "format": f.format,
                "description": f.description,
                "kept_by_credgate": f.name in spec.managed_fields,
            }
        )
        if f.kind == "oauth2":
            provider = f.provider
            fields[-1]["oauth2"] = {
                "authorize_url": provider.authorize_url,
                "token_url": provider.token_url,
                "scopes": list(provider.scopes),
                "pkce": provider.pkce,
            }
    return fields


@cli.command()
@click.option("--check", is_flag=True, help="Exit 1 on any problem in the declarations.")
@click.option("--refresh", is_flag=True, help="Ask every upstream MCP server for its tools again.")
@click.option("--discover-with", "discover_with", metavar="CRED", help="Start upstreams with this credential.")
@common_options
@pass_app
def tools(app: App, check: bool, refresh: bool, discover_with: str | None) -> None:
    """List the declared tools, their credential types and fields (upstream MCP servers' tools included)."""
    discovery_problems = _discover_upstreams(app, refresh, discover_with)
    cat = app.catalog
    cat = replace(cat, problems=(*cat.problems, *discovery_problems))
    holders = admin.secret_holders(cat)
    upstreams = [_upstream_json(name, u, app.settings.sandbox, holders.get(name)) for name, u in cat.upstreams.items()]
    data = {
        "tools": [
            {
                "name": t.name,
                "description": t.decl.description,
                "handler": t.decl.handler.kind,
                "source": str(t.source),
                "credential_type": t.credential.type if t.credential else None,
            }
            for t in cat.tools.values()
        ],
        "upstreams": upstreams,
        "credential_types": {
            name: {"fields": _field_json(spec), "tools": cat.tools_of_type(name)} for name, spec in cat.types.items()
        },
        "problems": list(cat.problems),
    }

    def text() -> Iterator[str]:
        if not cat.tools:
            yield f"no tools declared in {', '.join(map(str, app.settings.tools_dirs))}"
        for t in cat.tools.values():
            need = f"credential type {t.credential.type}" if t.credential else "no credential needed"
            yield f"{t.name}  [{t.decl.handler.kind}]  {need}"
            if t.decl.description:
                yield f"    {t.decl.description}"
        for upstream in upstreams:
            yield _upstream_line(upstream)
        for name, spec in cat.types.items():
            yield f"credential type {name}:"
            for f in spec.fields:
                flags = ", ".join(
                    [f.kind, "secret" if f.secret else "not secret", "required" if f.required else "optional"]
                )
                if f.kind == "oauth2":
                    provider = f.provider
                    scopes = " ".join(provider.scopes) or "-"
                    yield f"    {f.name}  ({flags})  OAuth2 access token from {provider.token_url}, scopes: {scopes}"
                elif f.name in spec.managed_fields:
                    yield f"    {f.name}  (kept by credgate)"
                else:
                    yield f"    {f.name}  ({flags})  format: {f.format}"

    app.out(data, text())
    if not app.as_json:
        for problem in cat.problems:
            click.echo(f"problem: {problem}", err=True)
    if check and cat.problems:
        raise click.exceptions.Exit(1)
    if check and not app.as_json:
        click.echo(f"ok: {len(cat.tools)} tools, {len(cat.types)} credential types", err=True)


SANDBOX_OFF_BY: dict[SandboxState, str] = {"off: declaration": "sandbox = false", "off: global": "CREDGATE_SANDBOX=off"}


def _upstream_json(name: str, upstream: Upstream, sandboxing: bool, holds: str | None) -> dict[str, Any]:
    """An upstream MCP server as `tools --json` lists it: how it is reached, whether it runs sandboxed
    ("sandbox": "on" | "off", with what turned it off; null for a remote one), how many of its processes
    may be alive at once ("max_processes", null: no limit), and what it holds of its credential ("inject":
    "env" | "egress", "holds": a line saying it; null without a credential)."""
    state = sandbox_state(upstream.handler, sandboxing)
    return {
        "name": name,
        "source": str(upstream.source),
        "transport": "stdio" if upstream.handler.command is not None else "http",
        "sandbox": None if state is None else state.partition(":")[0],
        "sandbox_off_by": SANDBOX_OFF_BY.get(state) if state is not None else None,
        "max_processes": upstream.handler.max_processes,
        "inject": upstream.handler.inject,
        "egress_hosts": list(upstream.handler.egress.hosts) if upstream.handler.egress is not None else None,
        "holds": holds,
    }


def _upstream_line(upstream: Mapping[str, Any]) -> str:
    line = f"upstream {upstream['name']}  [{upstream['transport']}]"
    if upstream["sandbox"] == "on":
        line += "  sandbox: on"
    elif upstream["sandbox"] == "off":
        line += f"  sandbox: off ({upstream['sandbox_off_by']})"
    if upstream["max_processes"] is not None:
        line += f"  max_processes: {upstream['max_processes']}"
    if upstream["holds"] is not None:
        line += f"\n    holds {upstream['holds']}"
    return line


def _discover_upstreams(app: App, refresh: bool, discover_with: str | None) -> list[str]:
    """Ask upstream MCP servers whose tools are not cached yet (or all, with --refresh) for their tools."""
    from .handlers.upstream import UpstreamError  # lazy: the MCP client costs every command ~0.5 s of start-up

    declared = load_catalog(app.settings.tools_dirs, app.settings.protected_paths)
    if not declared.upstreams or not store_exists(app.settings):
        return []
    cached = app.store.discovered_tools()
    todo = {n: t for n, t in declared.upstreams.items() if refresh or n not in cached}
    problems = []
    for name, upstream in todo.items():
        spec = upstream.credential
        credential = Credential("discovery", spec.type if spec else "", {}, frozenset())
        if discover_with and spec is not None:
            credential = app.store.read_credential(discover_with)
            if credential.type != spec.type:
                problems.append(f"{upstream.source}: --discover-with {discover_with}: not of type {spec.type!r}")
                continue
        try:
            anyio.run(_list_upstream_tools, app.settings, app.store, upstream, credential)
        except (UpstreamError, TimeoutError, OSError) as exc:
            why = str(exc) if isinstance(exc, UpstreamError) else f"{type(exc).__name__}"
            if spec is not None and not discover_with:
                why += "; if it needs its credential to start, add --discover-with CRED"
            problems.append(f"{upstream.source}: upstream {name}: its tools could not be listed ({why})")
            continue
        app.__dict__.pop("catalog", None)  # rebuilt with what was just discovered
    return problems


async def _list_upstream_tools(settings: Settings, store: Store, upstream: Upstream, credential: Credential) -> None:
    # lazy: the MCP client (~0.5 s) and httpx2 (~20 ms) would slow every command's start-up
    from .discovery import list_upstream_tools
    from .handlers.egress import PLACEHOLDER_KEY_PURPOSE, EgressKit
    from .handlers.http import make_client
    from .handlers.upstream import upstream_pool
    from .token_refresh import TokenRefresher

    fields = upstream.credential.fields if upstream.credential is not None else ()
    egress = EgressKit.new(store.derived_key(PLACEHOLDER_KEY_PURPOSE), lambda _: fields)
    async with make_client() as http, upstream_pool(sandbox=SandboxPolicy.of(settings), egress=egress) as pool:
        await list_upstream_tools(store, pool, TokenRefresher(store, lambda: http), upstream, credential)


# -- credentials -------------------------------------------------------------------------------


@cli.group()
def cred() -> None:
    """Credentials: add, import, update, list, show, rm (secret values are masked)."""


def _read_values(spec: CredentialSpec, sets: tuple[str, ...], from_json: str | None, prompt: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if from_json is not None:
        try:
            raw = sys.stdin.read() if from_json == "-" else _read_file(from_json)
        except UnicodeDecodeError:  # stdin decodes strictly unless the locale is C/POSIX
            raise CredentialValueError("--from-json: standard input is not valid UTF-8") from None
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CredentialValueError(f"--from-json: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:
            raise CredentialValueError("--from-json: not valid here (arrays or objects nested too deeply)") from None
        if not isinstance(loaded, dict):
            raise CredentialValueError("--from-json: expected a JSON object of field → string")
        for key, value in loaded.items():
            if not isinstance(value, str):
                raise CredentialValueError(f"field {key!r}: the value must be a string")
        values.update(loaded)
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep:
            # not echoed: without its `FIELD=`, the argument may well be the secret value itself
            raise click.UsageError("--set takes FIELD=VALUE (one --set was given without '=')")
        if spec.field(name) is None:
            # not echoed either: a value given without `FIELD=` splits at its own '=' (base64 padding…)
            known = ", ".join(f.name for f in spec.fields)
            raise CredentialValueError(f"--set names a field that type {spec.type!r} lacks (its fields: {known})")
        values[name] = value
    if from_json is None and not sets and prompt:
        if not sys.stdin.isatty():
            raise CredentialValueError("no values given: pipe a JSON object to --from-json -, or use --set FIELD=VALUE")
        for f in spec.fields:
            if f.name in spec.managed_fields:
                continue
            label = f"{f.name} ({f.kind}{', optional' if not f.required else ''})"
            value = click.prompt(label, hide_input=f.secret, default="" if not f.required else None, show_default=False)
            if value:
                values[f.name] = value
    return values


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialValueError(f"--from-json: cannot read {path} ({exc.__class__.__name__})") from None


_value_options = [
    click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="A field value (repeatable)."),
    click.option("--from-json", metavar="FILE|-", help="A JSON object of field values; - reads stdin."),
]


def value_options(f: F) -> F:
    for opt in reversed(_value_options):
        f = opt(f)
    return f


@cred.command("add")
@click.argument("name", callback=_check_name("credential"))
@click.option("--type", "type_name", help="Credential type.")
@click.option("--tool", "tool_name", help="Take the credential type of this tool.")
@value_options
@OWNER_OPTION
@common_options
@pass_app
def cred_add(
    app: App,
    name: str,
    type_name: str | None,
    tool_name: str | None,
    sets: tuple[str, ...],
    from_json: str | None,
    owner: str | None,
) -> None:
    """Add a credential NAME of a type (given directly or through a tool): shared, or with --owner a user's own."""
    if (type_name is None) == (tool_name is None):
        raise click.UsageError("give exactly one of --type TYPE or --tool TOOL")
    spec = admin.spec_for(app.catalog, type_name, tool_name)
    store = app.store
    if owner is not None:
        store.require_user(owner)
    values = _read_values(spec, sets, from_json, prompt=True)
    admin.add_credential(store, spec, name, values, owner)
    whose = f", {owner}'s own" if owner else ""
    app.out({"added": name, "type": spec.type, "owner": owner}, f"added credential {name} (type {spec.type}{whose})")


@cred.command("import")
@click.argument("file", metavar="FILE|-")
@click.option("--type", "type_name", help="Credential type of every credential in the file.")
@click.option("--tool", "tool_name", help="Take the credential type of this tool.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="jsonl, csv or env (default: from FILE's name).")
@click.option("--name", callback=_check_optional_name("credential"), help="The credential of a .env file.")
@click.option("--dry-run", is_flag=True, help="Check the whole file; store nothing.")
@OWNER_OPTION
@common_options
@pass_app
def cred_import(
    app: App,
    file: str,
    type_name: str | None,
    tool_name: str | None,
    fmt: Format | None,
    name: str | None,
    dry_run: bool,
    owner: str | None,
) -> None:
    """Add every credential of FILE, all or none: JSON lines (an object per line: "name" and field names), CSV (a
    header row: name and field names) or a .env file (one credential, --name; keys are field names, any case).
    Checked as `cred add` checks values, then stored in one transaction; - reads standard input (with --format)."""
    if (type_name is None) == (tool_name is None):
        raise click.UsageError("give exactly one of --type TYPE or --tool TOOL")
    fmt = fmt or (format_of(file) if file != "-" else None)
    if fmt is None:
        raise click.UsageError(
            f"cannot tell the format of {'standard input' if file == '-' else file} from its name: "
            "give --format jsonl, csv or env"
        )
    if fmt == "env" and name is None:
        raise click.UsageError("a .env file holds one credential: give its name with --name NAME")
    if fmt != "env" and name is not None:
        raise click.UsageError(f"--name is for .env files only (each record of a {fmt} file has its own name)")
    spec = admin.spec_for(app.catalog, type_name, tool_name)
    source = "standard input" if file == "-" else file
    data = sys.stdin.buffer.read().splitlines(keepends=True) if file == "-" else None  # read twice: kept

    def read() -> Iterator[CredentialRecord]:
        if data is not None:
            yield from read_records(text_lines(data), fmt, spec, source=source, name=name)
            return
        try:
            handle = open(file, "rb")  # noqa: SIM115 (closed below, once read)
        except OSError as exc:
            raise CredentialValueError(f"cannot read {file} ({exc.strerror or type(exc).__name__})") from None
        with handle:
            yield from read_records(text_lines(handle), fmt, spec, source=source, name=name)

    count = import_credentials(
        app.store,
        spec,
        read,
        source=source,
        dry_run=dry_run,
        owner=owner,
        progress=lambda line: click.echo(line, err=True),
    )
    credentials = f"{count} credential{'' if count == 1 else 's'} of type {spec.type}"
    app.out(
        {"file": file, "type": spec.type, "credentials": count, "dry_run": dry_run, "owner": owner},
        f"checked {credentials} in {source}: all valid, none stored (--dry-run)"
        if dry_run
        else f"imported {credentials} from {source}",
    )


@cred.command("update")
@click.argument("name")
@value_options
@common_options
@pass_app
def cred_update(app: App, name: str, sets: tuple[str, ...], from_json: str | None) -> None:
    """Change some fields of credential NAME (the others keep their values)."""
    store = app.store
    info = store.credential_info(name)
    spec = app.catalog.types.get(info.type)
    values = _read_values(spec, sets, from_json, prompt=True) if spec else {}
    admin.update_credential(store, app.catalog, name, values)
    app.out({"updated": name, "fields": sorted(values)}, f"updated credential {name} ({', '.join(sorted(values))})")


@cred.command("connect")
@click.argument("name", callback=_check_name("credential"))
@click.option("--type", "type_name", help="Credential type (one with an oauth2 field).")
@click.option("--tool", "tool_name", help="Take the credential type of this tool.")
@value_options
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port of the redirect on 127.0.0.1 (0: any).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, help="Seconds to wait for the browser.")
@click.option("--no-browser", is_flag=True, help="Only print the address; do not open a browser.")
@OWNER_OPTION
@common_options
@pass_app
def cred_connect(
    app: App,
    name: str,
    type_name: str | None,
    tool_name: str | None,
    sets: tuple[str, ...],
    from_json: str | None,
    port: int,
    timeout: float,
    no_browser: bool,
    owner: str | None,
) -> None:
    """Connect an OAuth2 credential NAME: authorize in a browser, store the tokens (new or reconnected).

    The client id (and secret) come from --set/--from-json, the prompt, or the existing credential."""
    if (type_name is None) == (tool_name is None):
        raise click.UsageError("give exactly one of --type TYPE or --tool TOOL")
    spec = admin.spec_for(app.catalog, type_name, tool_name)
    provider = spec.oauth
    if provider is None:
        raise ConflictError(f"type {spec.type!r} has no oauth2 field: add its values with `credgate cred add`")
    given = _read_values(spec, sets, from_json, prompt=False)
    if owner is not None:
        app.store.require_user(owner)
    client, uid = _client_values(app.store, spec, name, given)
    if uid is not None and owner is not None and app.store.credential_info(name).owner != owner:
        raise ConflictError(
            f"credential {name!r} exists and is not {owner}'s: connect it without --owner, or pick a new name"
        )
    with LoopbackCallback(port) as callback:
        request = oauth.start_authorization(provider, client["client_id"], callback.redirect_uri)
        click.echo(f"Open this address in a browser to connect {name}:\n\n    {request.url}\n", err=True)
        if not no_browser and _has_desktop():
            webbrowser.open(request.url)
        click.echo(f"Waiting for the redirect to {callback.redirect_uri} …", err=True)
        params = callback.wait(request.state, timeout, on_refused=_say_refused)
    code = oauth.code_from_callback(request, params)
    tokens = anyio.run(_exchange, provider, client, request, code)
    created = admin.save_connection(app.store, spec, name, given, tokens, uid=uid, owner=owner)
    summary = admin.oauth_summary(spec, app.store.read_credential(name)) or {}
    expiry = f", expires at {summary['expires_at']}" if summary.get("expires_at") else ""
    app.out(
        {"connected": name, "type": spec.type, "created": created, "oauth": summary},
        f"connected credential {name} (type {spec.type}){expiry}; scope: {summary.get('scope') or '-'}",
    )


def _client_values(
    store: Store, spec: CredentialSpec, name: str, given: dict[str, Any]
) -> tuple[dict[str, str], str | None]:
    """The client id and secret for a connection (what was given, else what the existing credential holds,
    else a prompt; prompted values join `given`), and the existing credential's uid (None: a new one)."""
    spec.validate_values(given, complete=False)
    try:
        existing = store.read_credential(name)
    except NotFoundError:
        existing = None
    if existing is not None and existing.type != spec.type:
        raise ConflictError(f"credential {name!r} has type {existing.type!r}, not {spec.type!r}")
    client = admin.stored_client(existing) | given
    if not client.get("client_id"):
        if not sys.stdin.isatty():
            raise CredentialValueError(
                "the OAuth2 client id is missing: give --set client_id=ID (and the client secret, if any, "
                "through --from-json -)"
            )
        given["client_id"] = click.prompt("client_id (OAuth2 client id)")
        secret = click.prompt(
            "client_secret (empty for a public client)", hide_input=True, default="", show_default=False
        )
        if secret:
            given["client_secret"] = secret
        spec.validate_values(given, complete=False)
        client |= given
    if existing is None:
        token_field = spec.oauth.field if spec.oauth else ""
        missing = [m for m in spec.missing_fields(client) if m != token_field]
        if missing:
            raise CredentialValueError(f"required field {missing[0]!r} of type {spec.type!r} is missing")
    return client, existing.uid if existing else None


def _say_refused() -> None:
    click.echo("refused a redirect whose state is not this connection's; still waiting", err=True)


async def _exchange(
    provider: OAuthProvider, client: dict[str, str], request: oauth.AuthorizationRequest, code: str
) -> tuple[dict[str, str], list[str]]:
    from .handlers.http import make_client  # lazy: httpx2 would add ~20 ms to every command's start-up

    async with make_client() as http:
        return await oauth.exchange_code(http, provider, client, request, code)


def _has_desktop() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@cred.command("list")
@LIST_LIMIT
@OWNER_OPTION
@common_options
@pass_app
def cred_list(app: App, limit: int | None, owner: str | None) -> None:
    """List credentials by name (types, fields, owners, bindings; no values), streamed as they are read."""
    if owner is not None:
        app.store.require_user(owner)
    app.out_list(
        _first(app.store.iter_credentials(owner=owner, batch=_batch(limit)), limit),
        lambda i: {
            "name": i.name,
            "type": i.type,
            "owner": i.owner,
            "fields": list(i.fields),
            "created_at": i.created_at,
            "updated_at": i.updated_at,
            "bindings": [{"group": g, "tool": t} for g, t in i.bindings],
        },
        lambda i: (
            f"{i.name}  type {i.type}{f'  owner {i.owner}' if i.owner else ''}  fields {', '.join(i.fields)}  "
            + ("bound: " + ", ".join(f"{g}/{t}" for g, t in i.bindings) if i.bindings else "not bound")
        ),
        f"no credentials of {owner}" if owner else "no credentials (add one with `credgate cred add NAME --tool TOOL`)",
    )


@cred.command("show")
@click.argument("name")
@common_options
@pass_app
def cred_show(app: App, name: str) -> None:
    """Show one credential; secret values are masked."""
    store = app.store
    info = store.credential_info(name)
    spec = app.catalog.types.get(info.type)
    values = store.read_credential(name)
    shown = admin.shown_values(spec, values, info.secret_fields)
    data = {
        "name": info.name,
        "type": info.type,
        "owner": info.owner,
        "values": shown,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "bindings": [{"group": g, "tool": t} for g, t in info.bindings],
    }
    lines = [f"{info.name}  (type {info.type}{f', owner {info.owner}' if info.owner else ''})"]
    lines += [f"    {k} = {v}" for k, v in shown.items()]
    if spec:
        lines += [f"    {m}: missing (required)" for m in spec.missing_fields(values)]
    lines.append("    bound: " + (", ".join(f"{g}/{t}" for g, t in info.bindings) or "nowhere"))
    summary = admin.oauth_summary(spec, values) if spec else None
    if summary is not None:
        data["oauth"] = summary
        lines.append("    oauth2: " + _oauth_text(summary))
    app.out(data, lines)


def _oauth_text(summary: Mapping[str, Any]) -> str:
    expiry = summary["expires_at"] or "no expiry given"
    if summary["expired"]:
        state = f"EXPIRED at {expiry}: reconnect with `credgate cred connect`"
    else:
        state = f"access token valid until {expiry}"
    if summary["refresh_error"]:
        state += f"; refresh refused: {summary['refresh_error']}"
    elif not summary["can_refresh"]:
        state += "; no refresh token"
    last = summary["refreshed_at"] or "never"
    return f"{state}; scope: {summary['scope'] or '-'}; last refresh: {last}"


@cred.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="Also remove the credential's bindings.")
@common_options
@pass_app
def cred_rm(app: App, name: str, force: bool) -> None:
    """Remove a credential (a bound one only with --force, which unbinds it)."""
    removed = app.store.remove_credential(name, force=force)
    app.out(
        {"removed": name, "unbound": [{"group": g, "tool": t} for g, t in removed]},
        f"removed credential {name}"
        + (f" and its bindings ({', '.join(f'{g}/{t}' for g, t in removed)})" if removed else ""),
    )


# -- groups and bindings -----------------------------------------------------------------------


@cli.group("group")
def group_cmd() -> None:
    """Agent groups: the tools an agent may use and their credentials."""


@group_cmd.command("add")
@click.argument("name", callback=_check_name("group"))
@click.option("--description", default="", help="What the group is for.")
@common_options
@pass_app
def group_add(app: App, name: str, description: str) -> None:
    """Create an agent group."""
    app.store.add_group(name, description)
    app.out({"added": name}, f"added agent group {name}")


@group_cmd.command("allow")
@click.argument("name")
@click.argument("tools", nargs=-1, required=True)
@click.option("--personal", is_flag=True, help="Each member binds a credential of their own for these tools.")
@click.option("--force", is_flag=True, help="Change the scope of tools that have bindings (which are removed).")
@click.option(
    "--approval",
    is_flag=True,
    help="A person approves each call first (asked through the agent's client); without it, allowing a tool again "
    "lifts the group's requirement (not a declaration's `approval = true`).",
)
@common_options
@pass_app
def group_allow(app: App, name: str, tools: tuple[str, ...], personal: bool, force: bool, approval: bool) -> None:
    """Allow TOOLS for the group: shared (the group's binding serves every agent), or --personal."""
    _, unbound = admin.allow(app.store, app.catalog, name, tools, personal=personal, force=force, approval=approval)
    scope = "personal" if personal else "shared"
    app.out(
        {"group": name, "allowed": list(tools), "scope": scope, "approval": approval, "unbound": unbound},
        f"group {name} now allows {', '.join(tools)} ({scope}{', each call approved first' if approval else ''})"
        + (f"; unbound: {', '.join(unbound)}" if unbound else ""),
    )


@group_cmd.command("deny")
@click.argument("name")
@click.argument("tools", nargs=-1, required=True)
@common_options
@pass_app
def group_deny(app: App, name: str, tools: tuple[str, ...]) -> None:
    """Remove TOOLS from the group (their bindings go too)."""
    unbound = admin.deny(app.store, app.catalog, name, tools)
    app.out(
        {"group": name, "denied": list(tools), "unbound": unbound},
        f"group {name} no longer allows {', '.join(tools)}" + (f" (unbound: {', '.join(unbound)})" if unbound else ""),
    )


# -- budgets (contract §8) ------------------------------------------------------------------------------------


@cli.group("budget")
def budget_cmd() -> None:
    """Limits on what a group, a member or an agent may call and spend."""


BUDGET_TOOL = click.option("--tool", help="One tool only (by default: all the group's tools).")
BUDGET_AGENT = click.option("--agent", callback=_check_optional_name("agent"), help="One agent of the group only.")


@budget_cmd.command("set")
@click.argument("group")
@BUDGET_TOOL
@USER_OPTION
@BUDGET_AGENT
@click.option("--calls", metavar="N/WINDOW", help="At most N calls per minute, hour or day (such as 100/minute).")
@click.option("--spend", metavar="X/PERIOD", help="At most X spent per day or month (such as 50.00/month).")
@common_options
@pass_app
def budget_set(
    app: App,
    group: str,
    tool: str | None,
    user: str | None,
    agent: str | None,
    calls: str | None,
    spend: str | None,
) -> None:
    """Set a limit of GROUP's; one of the same scope and kind is replaced."""
    limit = admin.budget_limit(
        app.store, app.catalog, group, tool=tool, user=user, agent=agent, calls=calls, spend=spend
    )
    app.store.set_budget(limit)
    app.out({"group": group, "limit": limit.as_json()}, f"group {group}: at most {limit.describe()}")


@budget_cmd.command("show")
@click.argument("group")
@common_options
@pass_app
def budget_show(app: App, group: str) -> None:
    """GROUP's limits, with what was used of each in its current window and when it resets."""
    store = app.store
    store.group(group)
    shown, lines = [], [f"{group}"]
    for limit in store.budgets(group):
        used, resets_at = store.used(limit)
        when = datetime.fromtimestamp(resets_at, UTC).isoformat().replace("+00:00", "Z")
        shown.append({**limit.as_json(), "used": limit.used_json(used), "resets_at": when})
        lines.append(f"    {limit.describe()}: {limit.used_json(used)} used, resets {when}")
    if not shown:
        lines.append(f"    no limits (`credgate budget set {group} --calls 100/day`)")
    app.out({"group": group, "limits": shown}, lines)


@budget_cmd.command("rm")
@click.argument("group")
@BUDGET_TOOL
@USER_OPTION
@BUDGET_AGENT
@click.option("--calls", "kind", flag_value="calls", help="Only the scope's limit on calls.")
@click.option("--spend", "kind", flag_value="spend", help="Only the scope's limit on spend.")
@common_options
@pass_app
def budget_rm(app: App, group: str, tool: str | None, user: str | None, agent: str | None, kind: str | None) -> None:
    """Remove the scope's limits of GROUP (both kinds, unless --calls or --spend)."""
    removed = app.store.remove_budget(group, tool, user, agent, kind)
    app.out({"group": group, "removed": removed}, f"removed {removed} limit(s) of group {group}")


STATUS_TEXT = {**admin.STATUS_LABELS, "expired": "expired (reconnect with `credgate cred connect`)"}


@group_cmd.command("list")
@LIST_LIMIT
@common_options
@pass_app
def group_list(app: App, limit: int | None) -> None:
    """List agent groups by name, streamed as they are read."""
    app.out_list(
        _first(app.store.iter_groups(batch=_batch(limit)), limit),
        lambda g: {"name": g.name, "description": g.description, "tools": sorted(g.tools)},
        lambda g: f"{g.name}  {len(g.tools)} tools  {g.description}".rstrip(),
        "no agent groups (add one with `credgate group add NAME`)",
    )


@group_cmd.command("show")
@click.argument("name")
@common_options
@pass_app
def group_show(app: App, name: str) -> None:
    """Show a group's tools, their bindings and status."""
    store = app.store
    info = store.group(name)
    statuses = admin.group_statuses(store, app.catalog, name)
    lines = [f"{info.name}  {info.description}".rstrip()]
    tools = []
    for st in statuses:
        approval = admin.approval_required_by(app.catalog, info, st.tool)
        asked = f"  approval: each call ({approval})" if approval else ""
        if st.tool in info.personal:
            each = people.personal_statuses(store, app.catalog, name, st.tool)
            lines.append(f"    {st.tool}  personal: each member binds their own{asked}")
            lines += [
                f"        {m.user}  {STATUS_TEXT[m.status]}" + (f"  credential {m.credential}" if m.credential else "")
                for m in each
            ]
            if not each:
                lines.append(f"        no members yet (`credgate group member add {name} USER`)")
            shown = {**st.as_json(), "status": None, "credential": None, "missing_fields": []}
            statuses_by_user = {m.user: m.status for m in each}
            tools.append({**shown, "scope": "personal", "members": statuses_by_user, "approval": approval})
            continue
        bound = f"  credential {st.credential}" if st.credential else ""
        missing = f"  missing: {', '.join(st.missing_fields)}" if st.status == "incomplete" else ""
        lines.append(f"    {st.tool}  {STATUS_TEXT[st.status]}{bound}{missing}{asked}")
        tools.append({**st.as_json(), "scope": "shared", "approval": approval})
    if not statuses:
        lines.append(f"    no tools allowed yet (`credgate group allow {name} TOOL`)")
    members = list(store.iter_members(name))
    lines.append(f"    members: {', '.join(members) if members else 'none'}")
    app.out(
        {
            "name": info.name,
            "description": info.description,
            "created_at": info.created_at,
            "tools": tools,
            "members": members,
        },
        lines,
    )


@group_cmd.group("member")
def group_member() -> None:
    """The users who belong to a group."""


@group_member.command("add")
@click.argument("group")
@click.argument("users", nargs=-1, required=True)
@common_options
@pass_app
def group_member_add(app: App, group: str, users: tuple[str, ...]) -> None:
    """Make USERS members of GROUP."""
    added = app.store.add_members(group, users)
    app.out(
        {"group": group, "added": added},
        f"group {group}: added {', '.join(added)}" if added else f"group {group}: already members",
    )


@group_member.command("rm")
@click.argument("group")
@click.argument("users", nargs=-1, required=True)
@common_options
@pass_app
def group_member_rm(app: App, group: str, users: tuple[str, ...]) -> None:
    """End the membership of USERS in GROUP: their agents of the group are refused from their next request."""
    app.store.remove_members(group, users)
    app.out({"group": group, "removed": list(users)}, f"group {group}: removed {', '.join(users)}")


@group_cmd.command("rm")
@click.argument("name")
@common_options
@pass_app
def group_rm(app: App, name: str) -> None:
    """Remove an agent group and its bindings."""
    app.store.remove_group(name)
    app.out({"removed": name}, f"removed agent group {name}")


@cli.command()
@click.argument("group")
@click.argument("tool")
@click.argument("credential")
@USER_OPTION
@common_options
@pass_app
def bind(app: App, group: str, tool: str, credential: str, user: str | None) -> None:
    """Bind CREDENTIAL to TOOL for GROUP; for a personal tool, --user USER binds USER's own credential."""
    if user is None:
        admin.bind(app.store, app.catalog, group, tool, credential)
    else:
        people.bind_personal(app.store, app.catalog, group, tool, credential, user)
    whose = f" for {user} in group {group}" if user else f" for group {group}"
    app.out(
        {"group": group, "tool": tool, "credential": credential, "user": user}, f"bound {credential} to {tool}{whose}"
    )


@cli.command()
@click.argument("group")
@click.argument("tool")
@USER_OPTION
@common_options
@pass_app
def unbind(app: App, group: str, tool: str, user: str | None) -> None:
    """Remove the credential bound to TOOL (or to an upstream MCP server) for GROUP (--user: USER's own)."""
    if user is None:
        admin.check_scope(app.store, app.catalog, group, tool, personal=False)
        admin.unbind(app.store, app.catalog, group, tool)
    else:
        people.unbind_personal(app.store, app.catalog, group, tool, user)
    whose = f" of {user}" if user else ""
    app.out({"group": group, "tool": tool, "user": user}, f"unbound {tool}{whose} for group {group}")


# -- users -------------------------------------------------------------------------------------


@cli.group()
def user() -> None:
    """Users: people who sign in to the dashboard, belong to groups and may own personal credentials."""


def _user_json(u: UserInfo) -> dict[str, Any]:
    return {"name": u.name, "admin": u.admin, "email": u.email, "created_at": u.created_at, "groups": list(u.groups)}


@user.command("add")
@click.argument("name", callback=_check_name("user"))
@click.option("--admin", "is_admin", is_flag=True, help="The user manages everything.")
@click.option("--email", help="The user's email address.")
@common_options
@pass_app
def user_add(app: App, name: str, is_admin: bool, email: str | None) -> None:
    """Add user NAME and print their sign-in secret (shown once)."""
    if email is not None and not re.fullmatch(people.EMAIL_PATTERN, email):
        raise click.BadParameter("an email address is NAME@DOMAIN, without spaces", param_hint="--email")
    secret = people.create_user(app.store, name, admin=is_admin, email=email)
    app.out(
        {"user": name, "admin": is_admin, "email": email, "secret": secret},
        [f"added {'admin ' if is_admin else ''}user {name}; their sign-in secret (shown only now):", secret],
    )


@user.command("list")
@LIST_LIMIT
@common_options
@pass_app
def user_list(app: App, limit: int | None) -> None:
    """List users by name with their groups, streamed as they are read."""
    app.out_list(
        _first(app.store.iter_users(batch=_batch(limit)), limit),
        _user_json,
        lambda u: f"{u.name}{'  admin' if u.admin else ''}  groups: {', '.join(u.groups) or 'none'}",
        "no users (add one with `credgate user add NAME`)",
    )


@user.command("show")
@click.argument("name")
@common_options
@pass_app
def user_show(app: App, name: str) -> None:
    """Show a user: admin or not, their groups, their credentials and agents (no values)."""
    store = app.store
    info = store.user(name)
    credentials = [c.name for c in store.iter_credentials(owner=name)]
    agents = [a.name for a in store.iter_agents() if a.user == name and a.revoked_at is None]
    app.out(
        {**_user_json(info), "credentials": credentials, "agents": agents},
        [
            f"{info.name}{'  (admin)' if info.admin else ''}{f'  <{info.email}>' if info.email else ''}",
            f"    groups: {', '.join(info.groups) or 'none'}",
            f"    credentials: {', '.join(credentials) or 'none'}",
            f"    agents: {', '.join(agents) or 'none'}",
        ],
    )


@user.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="Also delete the credentials the user owns.")
@common_options
@pass_app
def user_rm(app: App, name: str, force: bool) -> None:
    """Remove a user: their agents are revoked, their memberships and personal bindings removed."""
    removed = app.store.remove_user(name, force=force)
    parts = [
        f"revoked agents: {', '.join(removed.agents)}" if removed.agents else "",
        f"unbound: {', '.join(f'{g}/{t}' for g, t in removed.bindings)}" if removed.bindings else "",
        f"deleted credentials: {', '.join(removed.credentials)}" if removed.credentials else "",
    ]
    details = "; ".join(p for p in parts if p)
    app.out(
        {
            "removed": name,
            "revoked_agents": list(removed.agents),
            "unbound": [{"group": g, "tool": t} for g, t in removed.bindings],
            "deleted_credentials": list(removed.credentials),
        },
        f"removed user {name}" + (f" ({details})" if details else ""),
    )


@user.command("secret")
@click.argument("name")
@common_options
@pass_app
def user_secret(app: App, name: str) -> None:
    """Give user NAME a new sign-in secret (shown once): the old one and its sessions stop working."""
    secret = people.renew_user_secret(app.store, name)
    app.out({"user": name, "secret": secret}, [f"new sign-in secret of {name} (shown only now):", secret])


@user.command("unlink")
@click.argument("name")
@common_options
@pass_app
def user_unlink(app: App, name: str) -> None:
    """Forget which account of the organisation's OpenID provider signs in user NAME: their SSO sessions end,
    and that account signs in again only by a verified email (or the default group)."""
    unlinked = app.store.unlink_sso(name)
    app.out(
        {"user": name, "unlinked": unlinked},
        f"unlinked {name} from their SSO account; their SSO sessions have ended"
        if unlinked
        else f"{name} was not linked to an SSO account",
    )


# -- agents ------------------------------------------------------------------------------------


@cli.group()
def agent() -> None:
    """Agents of remote MCP clients and their bearer tokens."""


@agent.command("add")
@click.argument("group")
@click.argument("name", callback=_check_name("agent"))
@click.option("--user", callback=_check_optional_name("user"), help="The member the agent acts for.")
@common_options
@pass_app
def agent_add(app: App, group: str, name: str, user: str | None) -> None:
    """Create agent NAME in GROUP (acting for --user USER, a member) and print its bearer token (shown once)."""
    from .agents import create_agent  # lazy: it imports the MCP SDK's auth (~0.6 s at every command's start)

    token = create_agent(app.store, group, name, user)
    acting = f", acting for {user}" if user else ""
    app.out(
        {"agent": name, "group": group, "user": user, "token": token},
        [f"added agent {name} to group {group}{acting}; its bearer token (shown only now):", token],
    )


@agent.command("list")
@LIST_LIMIT
@common_options
@pass_app
def agent_list(app: App, limit: int | None) -> None:
    """List agents by name with their kind (static token, or an OAuth client's sign-in), group, user, creation,
    last use and revocation, streamed as they are read."""
    app.out_list(
        _first(app.store.iter_agents(batch=_batch(limit)), limit),
        lambda a: {
            "agent": a.name,
            "group": a.group,
            "user": a.user,
            "kind": a.kind,
            "client": a.client,
            "created_at": a.created_at,
            "last_used_at": a.last_used_at,
            "revoked_at": a.revoked_at,
        },
        lambda a: (
            f"{a.name}  {a.kind}{f' client {a.client}' if a.client else ''}  group {a.group}"
            f"{f'  user {a.user}' if a.user else ''}  created {a.created_at}"
            f"  last used {a.last_used_at or 'never'}" + (f"  REVOKED {a.revoked_at}" if a.revoked_at else "")
        ),
        "no agents (add one with `credgate agent add GROUP NAME`)",
    )


@agent.command("revoke")
@click.argument("name")
@common_options
@pass_app
def agent_revoke(app: App, name: str) -> None:
    """Revoke an agent's token; its next request is refused."""
    app.store.revoke_agent(name)
    app.out({"revoked": name}, f"revoked agent {name}")


# -- keys and audit ----------------------------------------------------------------------------


@cli.group()
def key() -> None:
    """The master key."""


@key.command("rotate")
@common_options
@pass_app
def key_rotate(app: App) -> None:
    """Re-wrap every credential under a new master key: the one `credgate key new` made (or given as
    CREDGATE_MASTER_KEY=OLD,NEW), else a fresh one (SQLite only). Safe to rerun after a crash."""
    from_env = bool(os.environ.get("CREDGATE_MASTER_KEY"))
    new_key = rotate_master_key(app.store, app.settings, key_from_env=from_env)
    staged = read_staged_key(app.settings)
    if not from_env:
        where: str | None = str(app.settings.key_path)
        note = ""
    elif staged is not None and staged.key_id == new_key.key_id:
        where = str(app.settings.pending_key_path)
        note = f"; put the content of {where} into CREDGATE_MASTER_KEY, then delete that file"
    else:
        where = None
        note = "; CREDGATE_MASTER_KEY can now hold the new key alone, on every replica"
    app.out(
        {"key_id": new_key.key_id, "key_file": where},
        f"rotated the master key (new key id {new_key.key_id}{f', in {where}' if where else ''}){note}",
    )


@key.command("new")
@common_options
@pass_app
def key_new(app: App) -> None:
    """Make the next master key (master.key.new) ahead of a rotation; the store is not changed."""
    _ = app.store  # as before: a next key only for a store that exists and opens with the current key
    key, made = stage_master_key(app.settings)
    path = app.settings.pending_key_path
    app.out(
        {"key_id": key.key_id, "key_file": str(path), "created": made},
        f"{'made' if made else 'kept'} the next master key in {path} (key id {key.key_id}): give it to every "
        "replica (copy the file into each data folder, or set CREDGATE_MASTER_KEY=OLD,NEW), "
        "then run `credgate key rotate`",
    )


@cli.command()
@click.option("--group", "group_name", help="Only calls of this group.")
@click.option("--tool", "tool_name", help="Only calls of this tool.")
@click.option("--user", "user_name", help="Only calls of agents acting for this user.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="The N latest calls.")
@common_options
@pass_app
def audit(app: App, group_name: str | None, tool_name: str | None, user_name: str | None, limit: int) -> None:
    """Recent tool calls, newest first, streamed as they are read."""
    app.out_list(
        app.store.iter_audit(group_name, tool_name, limit, batch=_batch(limit), user=user_name),
        lambda r: {
            "ts": r.ts,
            "group": r.group,
            "agent": r.agent,
            "user": r.user,
            "tool": r.tool,
            "credential": r.credential,
            "outcome": r.outcome,
            "duration_ms": r.duration_ms,
            "ref": r.ref,
            **({"approval": r.approval} if r.approval else {}),
        },
        lambda r: (
            f"{r.ts}  {r.group}  {r.agent or '-'}{f' ({r.user})' if r.user else ''}  {r.tool}  {r.credential or '-'}"
            f"  {r.outcome}{f' ({r.approval})' if r.approval else ''}  "
            f"{r.duration_ms:.1f} ms" + (f"  ref {r.ref}" if r.ref else "")
        ),
        "no calls recorded",
    )


USAGE_DAYS = 30


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC) - timedelta(days=USAGE_DAYS)
    try:
        since = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("give a date, such as 2026-12-01 (or a time, 2026-12-01T09:00)") from None
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)


@cli.command()
@click.argument("group")
@click.option("--since", callback=_since, help=f"From this date (UTC); the last {USAGE_DAYS} days by default.")
@click.option("--by", type=click.Choice(["tool", "user", "agent"]), default="tool", show_default=True)
@common_options
@pass_app
def usage(app: App, group: str, since: datetime, by: str) -> None:
    """What GROUP's agents used: the calls that ran and what they cost, by tool, user or agent."""
    app.store.group(group)
    found = app.store.usage(group, since.astimezone(UTC).isoformat(timespec="milliseconds"), by)
    start = since.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    rows: list[dict[str, Any]] = []
    lines = [f"{group} since {start}, by {by}"]
    for u in found:
        spent = {currency: shown_spend(micros) for currency, micros in sorted(u.spent.items())}
        rows.append({by: u.key, "calls": u.calls, "spent": spent})
        costs = ", ".join(f"{amount} {currency}" for currency, amount in spent.items())
        lines.append(f"    {u.key or '-'}  {u.calls} calls" + (f"  {costs}" if costs else ""))
    if not rows:
        lines.append("    no calls ran")
    app.out({"group": group, "since": start, "by": by, "usage": rows}, lines)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@common_options
@pass_app
def backup(app: App, path: Path) -> None:
    """Write a consistent copy of the store to PATH (safe while a gateway serves; the key is not in it)."""
    app.store.backup(path)
    app.out(
        {"backup": str(path)},
        f"backed up the store to {path}; keep the master key ({app.settings.key_path} or CREDGATE_MASTER_KEY) "
        "apart from it: the backup is useless without it",
    )


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@common_options
@pass_app
def restore(app: App, path: Path) -> None:
    """Replace the store with the backup at PATH (stop the gateway first); the old one is kept aside."""
    aside = restore_store(app.settings, path)
    kept = f"; the replaced store is kept as {aside}" if aside != app.settings.database_path else ""
    app.out({"restored": str(path), "replaced": str(aside) if kept else None}, f"restored the store from {path}{kept}")


@cli.command()
@common_options
@pass_app
def doctor(app: App) -> None:
    """Check file modes, key and store, schema, integrity, declarations, bindings and the upstreams' sandbox;
    exit 1 on a problem (upstreams run without a sandbox are warnings)."""
    catalog = load_catalog_with_discovered(app)
    problems = admin.doctor(app.settings, catalog)
    warnings = admin.sandbox_warnings(app.settings, catalog)
    holders = admin.secret_holders(catalog)
    try:
        problems += people.orphaned_bindings(app.store)
        warnings += people.missing_personal(app.store, catalog)
    except CredgateError:
        pass  # a store that does not open: the doctor said so already
    lines = [f"problem: {p}" for p in problems] or ["ok: no problem found"]
    lines += [f"warning: {w}" for w in warnings] + [f"upstream {n} holds {h}" for n, h in holders.items()]
    app.out({"problems": problems, "warnings": warnings, "upstreams_hold": holders}, lines)
    if problems:
        raise click.exceptions.Exit(1)


def load_catalog_with_discovered(app: App) -> Catalog:
    """Like `app.catalog`, but a store that does not open is left to the doctor to report."""
    try:
        return app.catalog
    except CredgateError:
        return load_catalog(app.settings.tools_dirs, app.settings.protected_paths)


CLIENT_SECRET_IN_ARGV_WARNING = (
    "warning: --oidc-client-secret is visible to other local users in the process list; "
    "set CREDGATE_OIDC_CLIENT_SECRET instead"
)
OIDC_OPTIONS = ("oidc_issuer", "oidc_client_id", "oidc_client_secret", "oidc_default_group")


def oidc_options(f: F) -> F:
    """The dashboard's sign-in through the organisation's OpenID provider (contract §6), each also an
    environment variable."""
    for opt in (
        click.option(
            "--oidc-default-group",
            envvar="CREDGATE_OIDC_DEFAULT_GROUP",
            help="Make an unknown account of the provider a new user, member of this group (or "
            "CREDGATE_OIDC_DEFAULT_GROUP); without it, unknown accounts are refused.",
        ),
        click.option(
            "--oidc-client-secret",
            envvar="CREDGATE_OIDC_CLIENT_SECRET",
            help="Our client secret at the provider: prefer CREDGATE_OIDC_CLIENT_SECRET (a value here shows in "
            "the process list).",
        ),
        click.option(
            "--oidc-client-id",
            envvar="CREDGATE_OIDC_CLIENT_ID",
            help="Our client id at the provider (or CREDGATE_OIDC_CLIENT_ID).",
        ),
        click.option(
            "--oidc-issuer",
            envvar="CREDGATE_OIDC_ISSUER",
            help="Sign in through this OpenID provider too (its issuer URL, https://; or CREDGATE_OIDC_ISSUER).",
        ),
    ):
        f = opt(f)
    return f


def _sso_settings(
    app: App, issuer: str | None, client_id: str | None, client_secret: str | None, default_group: str | None
) -> SsoSettings | None:
    """The SSO settings of `serve --http` or `dashboard`; one line on a bad value (never the secret's)."""
    ctx = click.get_current_context()
    if client_secret and ctx.get_parameter_source("oidc_client_secret") == ParameterSource.COMMANDLINE:
        click.echo(CLIENT_SECRET_IN_ARGV_WARNING, err=True)
    sso = SsoSettings.from_options(issuer, client_id, client_secret, default_group)
    if sso is not None and sso.default_group is not None and not app.store.group_exists(sso.default_group):
        raise click.ClickException(
            f"--oidc-default-group (CREDGATE_OIDC_DEFAULT_GROUP): no agent group named {sso.default_group!r} "
            f"(create it with `credgate group add {sso.default_group}`)"
        )
    return sso


@cli.command()
@click.option("--group", "group_name", envvar="CREDGATE_GROUP", help="The agent group, for stdio (or CREDGATE_GROUP).")
@click.option("--user", "user_name", envvar="CREDGATE_USER", help="Over stdio, act for this member (or CREDGATE_USER).")
@click.option("--http", "use_http", is_flag=True, help="Serve remote agents over HTTP (SSE and Streamable HTTP).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind with --http.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port with --http.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="CREDGATE_LOG_FORMAT",
    default="text",
    show_default=True,
    help="Logs on stderr as text or JSON lines (or CREDGATE_LOG_FORMAT).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    envvar="CREDGATE_LOG_LEVEL",
    default="info",
    show_default=True,
    help="debug logs every call (names only, never a value).",
)
@click.option(
    "--no-sandbox",
    "no_sandbox",
    is_flag=True,
    help="Run stdio upstreams without their sandbox (as CREDGATE_SANDBOX=off): each can read all this account can.",
)
@click.option(
    "--audit",
    "audit_policy",
    type=click.Choice(["best-effort", "required"]),
    envvar="CREDGATE_AUDIT",
    default="best-effort",
    show_default=True,
    help="While audit rows cannot be written (a full disk...): keep serving, the rows waiting in memory "
    "(best-effort), or refuse calls until they can be (required).",
)
@click.option(
    "--registration",
    type=click.Choice(["loopback", "open", "off"]),
    envvar="CREDGATE_REGISTRATION",
    default="loopback",
    show_default=True,
    help="With --http, which OAuth clients may register themselves (RFC 7591): those whose redirect URIs are "
    "loopback, any, or none (clients with a metadata document still sign in).",
)
@oidc_options
@common_options
@pass_app
def serve(
    app: App,
    group_name: str | None,
    user_name: str | None,
    use_http: bool,
    host: str,
    port: int,
    log_format: str,
    log_level: str,
    no_sandbox: bool,
    audit_policy: str,
    registration: str,
    oidc_issuer: str | None,
    oidc_client_id: str | None,
    oidc_client_secret: str | None,
    oidc_default_group: str | None,
) -> None:
    """Serve MCP: over stdio for one group, or with --http for every agent with a token."""
    catalog = app.catalog
    catalog.raise_problems()
    if no_sandbox:
        app.settings = replace(app.settings, sandbox=False)
    app.settings = replace(app.settings, audit_required=audit_policy == "required")
    if use_http and user_name:
        raise click.UsageError("--user is for stdio: over HTTP, each agent acts for the user it was added for")
    ctx = click.get_current_context()
    if not use_http and any(ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE for n in OIDC_OPTIONS):
        raise click.UsageError("the --oidc-* options are for the dashboard: use them with --http (or `dashboard`)")
    if use_http:
        # lazy: the HTTP app (the MCP server, Starlette, Jinja2, uvicorn) takes ~0.7 s to import; only this needs it
        from .guard import allowed_hosts_and_origins
        from .serving.http import serve_http

        settings = replace(
            _served_at(app, host, port),
            sso=_sso_settings(app, oidc_issuer, oidc_client_id, oidc_client_secret, oidc_default_group),
        )
        if not is_loopback_host(host):
            if not app.store.has_live_agent() and not app.store.has_members():
                raise click.ClickException(
                    "refusing to listen beyond loopback with no agent and no member of a group to sign in: create "
                    "one with `credgate agent add GROUP NAME`, or `credgate group member add GROUP USER`"
                )
            hosts, origins = allowed_hosts_and_origins(host, port, settings.public_url)
            click.echo(f"binding {host}:{port}; allowed hosts: {', '.join(hosts)}", err=True)
            click.echo(f"allowed origins: {', '.join(origins)}", err=True)
        _warn_at_start(app, (g.name for g in app.store.iter_groups()))
        configure_logging(log_format, log_level)
        anyio.run(serve_http, settings, catalog, host, port, cast("Registration", registration))
        return
    if not group_name:
        raise click.ClickException(
            "serve needs --group GROUP (or CREDGATE_GROUP), or --http; there is no all-tools default"
        )
    if not app.store.group_exists(group_name):
        raise click.ClickException(
            f"no agent group named {group_name!r} (create it with `credgate group add {group_name}`)"
        )
    if user_name is not None:
        people.require_member(app.store, group_name, user_name)
    from .serving.stdio import serve_stdio  # lazy: the MCP server (~0.6 s), for this only

    _warn_at_start(app, [group_name])
    configure_logging(log_format, log_level)
    # setup links open at the gateway's own page server, unless a public URL names a dashboard that serves them
    anyio.run(serve_stdio, app.settings, catalog, group_name, user_name, not _public_url_given(app))


def _warn_at_start(app: App, groups: Iterable[str]) -> None:
    """On stderr (a desktop client's MCP log): what would otherwise fail silently, a wrong tools folder above all;
    upstreams that run without a sandbox, or whose sandbox cannot be made here."""
    for line in admin.serve_warnings(app.settings, app.catalog, app.store, groups):
        click.echo(f"warning: {line}", err=True)
    settings, catalog = app.settings, app.catalog
    for line in [*admin.sandbox_warnings(settings, catalog), *admin.sandbox_problems(settings, catalog)]:
        click.echo(f"warning: {line}", err=True)
    for name, upstream in catalog.upstreams.items():
        if not catalog.upstream_tools(name):
            click.echo(
                f"note: the tools of upstream {name} ({upstream.source}) are not listed yet: a group's first "
                "tools/list lists them with its bound credential (or run `credgate tools --discover-with CRED`)",
                err=True,
            )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True, help="Port to listen on.")
@oidc_options
@common_options
@pass_app
def dashboard(
    app: App,
    host: str,
    port: int,
    oidc_issuer: str | None,
    oidc_client_id: str | None,
    oidc_client_secret: str | None,
    oidc_default_group: str | None,
) -> None:
    """Serve the web dashboard alone (for admins whose agents run over stdio)."""
    from .serving.http import serve_dashboard  # lazy: Starlette, Jinja2 and the MCP SDK (~0.7 s), for this only

    settings = replace(
        _served_at(app, host, port),
        sso=_sso_settings(app, oidc_issuer, oidc_client_id, oidc_client_secret, oidc_default_group),
    )
    if app.store.admin_secret_hash() is None:
        raise click.ClickException("no admin secret yet: create one with `credgate admin token`")
    if not is_loopback_host(host):
        click.echo(f"binding {host}:{port}: put TLS in front of it (the admin session is a cookie)", err=True)
    configure_logging("text", "info")
    via = f", or through {settings.sso.issuer_host}" if settings.sso else ""
    click.echo(f"dashboard: {settings.public_url}/ (sign in with the admin secret{via})", err=True)
    anyio.run(serve_dashboard, settings, app.catalog, host, port)


def _served_at(app: App, host: str, port: int) -> Settings:
    """The settings of a server listening on host:port: its own address is the public URL (of setup links and
    the dashboard's origin checks) unless --public-url or CREDGATE_PUBLIC_URL names another."""
    if _public_url_given(app):
        return app.settings
    return replace(app.settings, public_url=f"http://{f'[{host}]' if ':' in host else host}:{port}")


def _public_url_given(app: App) -> bool:
    return bool(app.meta.get("credgate.public_url") or os.environ.get("CREDGATE_PUBLIC_URL"))


def main() -> None:
    cli.main(prog_name="credgate")
