"""Load and validate `tools.d/*.toml` into frozen models (contract §2).

Every problem names the file and the field, so `credgate tools --check` can list them all at once.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import jsonschema
import tomli as tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import CredentialValueError, DeclarationError

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
FIELD_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_VALUE_BYTES = 64 * 1024
NON_SECRET_KINDS = frozenset({"username", "text"})

FieldKind = Literal["api_key", "token", "username", "password", "oauth2", "text"]

# `{args.x}` / `{cred.y}`; anything else that looks like `{word.word}` is reported as unknown.
PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\.([A-Za-z0-9_-]+)\}")

ISO_UTC_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
OAUTH_PROVIDER_KEYS = ("authorize_url", "token_url", "scopes", "pkce", "token_auth", "authorize_params")
# The values an `oauth2` field brings with it (the field itself holds the access token). Every one is a field
# of the credential like any other: validated, encrypted, masked when secret.
OAUTH_COMPANIONS: tuple[dict[str, Any], ...] = (
    {"name": "client_id", "kind": "text", "description": "OAuth2 client id"},
    {
        "name": "client_secret",
        "kind": "password",
        "required": False,
        "description": "OAuth2 client secret (none for a public client)",
    },
    {"name": "refresh_token", "kind": "token", "required": False, "description": "OAuth2 refresh token"},
    {
        "name": "expires_at",
        "kind": "text",
        "required": False,
        "pattern": ISO_UTC_PATTERN,
        "description": "When the access token expires (ISO 8601, UTC)",
    },
    {"name": "scope", "kind": "text", "required": False, "description": "Scopes granted"},
    {
        "name": "refreshed_at",
        "kind": "text",
        "required": False,
        "pattern": ISO_UTC_PATTERN,
        "description": "Last refresh (kept by credgate)",
    },
    {
        "name": "refresh_error",
        "kind": "text",
        "required": False,
        "description": "Why the last refresh was refused (kept by credgate)",
    },
)
OAUTH_MANAGED_FIELDS = frozenset({"refreshed_at", "refresh_error"})  # written by credgate only
OAUTH_PRIVATE_FIELDS = frozenset({"client_secret", "refresh_token"})  # for refreshing: never given to a handler


@dataclass(frozen=True)
class OAuthProvider:
    """Where an `oauth2` field gets and refreshes its tokens (RFC 6749, PKCE per RFC 7636)."""

    field: str
    authorize_url: str
    token_url: str
    scopes: tuple[str, ...]
    pkce: bool
    token_auth: str  # client_secret_basic | client_secret_post
    authorize_params: Mapping[str, str]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CredentialField(_Model):
    name: Annotated[str, Field(pattern=FIELD_NAME_PATTERN)]
    kind: FieldKind
    secret: bool  # filled from `kind` when the file omits it
    required: bool = True
    pattern: str | None = None
    description: str = ""
    # kind = "oauth2" only: the provider
    authorize_url: str | None = None
    token_url: str | None = None
    scopes: tuple[str, ...] = ()
    pkce: bool = True
    token_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    authorize_params: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _default_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("secret") is None:
            kind = data.get("kind")  # may be any TOML value here: `kind = []` must not raise TypeError
            data = {**data, "secret": not (isinstance(kind, str) and kind in NON_SECRET_KINDS)}
        return data

    @model_validator(mode="after")
    def _pattern_compiles(self) -> CredentialField:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
        return self

    @model_validator(mode="after")
    def _provider_only_for_oauth2(self) -> CredentialField:
        given = [k for k in OAUTH_PROVIDER_KEYS if k in self.model_fields_set]
        if self.kind != "oauth2" and given:
            raise ValueError(f"{given[0]} is only for fields of kind oauth2")
        if self.kind == "oauth2":
            for key in ("authorize_url", "token_url"):
                if getattr(self, key) is None:
                    raise ValueError(f"a field of kind oauth2 needs {key}")
        return self

    @property
    def provider(self) -> OAuthProvider:
        assert self.kind == "oauth2" and self.authorize_url is not None and self.token_url is not None
        return OAuthProvider(
            self.name,
            self.authorize_url,
            self.token_url,
            self.scopes,
            self.pkce,
            self.token_auth,
            self.authorize_params,
        )

    @property
    def format(self) -> str:
        return self.pattern or self.kind

    def check_value(self, value: str) -> None:
        """Raise CredentialValueError naming the field (never the value) if the value is unfit."""
        if not isinstance(value, str):
            raise CredentialValueError(f"field {self.name!r}: the value must be a string")
        if any(c in value for c in "\x00\r\n"):
            raise CredentialValueError(f"field {self.name!r}: the value contains a NUL, CR or LF character")
        try:
            size = len(value.encode())
        except UnicodeEncodeError:  # a lone surrogate (`"\ud800"` in JSON, undecodable bytes on stdin)
            raise CredentialValueError(f"field {self.name!r}: the value is not valid Unicode text") from None
        if size > MAX_VALUE_BYTES:
            raise CredentialValueError(f"field {self.name!r}: the value is longer than 64 KiB")
        if value == "" and self.required:
            raise CredentialValueError(f"field {self.name!r} is required and may not be empty")
        if self.pattern is not None and value != "" and re.search(self.pattern, value) is None:
            raise CredentialValueError(f"field {self.name!r}: the value does not match the format {self.pattern}")
        if self.pattern == ISO_UTC_PATTERN and value != "":
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise CredentialValueError(f"field {self.name!r}: the value is not a valid date and time") from None


class CredentialSpec(_Model):
    type: Annotated[str, Field(pattern=NAME_PATTERN)]
    fields: Annotated[tuple[CredentialField, ...], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _add_oauth_companions(cls, data: Any) -> Any:
        """An `oauth2` field brings its client id, refresh token, expiry… as fields of their own."""
        if not isinstance(data, dict) or not isinstance(data.get("fields"), list | tuple):
            return data
        fields = list(data["fields"])
        oauth = [f for f in fields if isinstance(f, dict) and f.get("kind") == "oauth2"]
        if not oauth:
            return data
        if len(oauth) > 1:
            names = ", ".join(repr(f.get("name")) for f in oauth)
            raise ValueError(f"a credential type may have one field of kind oauth2, not {len(oauth)} ({names})")
        declared = {f.get("name") for f in fields if isinstance(f, dict)}
        for companion in OAUTH_COMPANIONS:
            if companion["name"] in declared:
                raise ValueError(
                    f"field name {companion['name']!r} is taken by the oauth2 field {oauth[0].get('name')!r}, "
                    "which keeps its own value there"
                )
        return {**data, "fields": [*fields, *OAUTH_COMPANIONS]}

    @model_validator(mode="after")
    def _unique_field_names(self) -> CredentialSpec:
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"field names must be unique: {', '.join(dupes)}")
        return self

    def field(self, name: str) -> CredentialField | None:
        return next((f for f in self.fields if f.name == name), None)

    @cached_property
    def secret_fields(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields if f.secret)

    @cached_property
    def oauth(self) -> OAuthProvider | None:
        """The provider of the type's `oauth2` field, if it has one."""
        return next((f.provider for f in self.fields if f.kind == "oauth2"), None)

    @cached_property
    def managed_fields(self) -> frozenset[str]:
        """Fields only credgate writes (the state of OAuth2 refreshes)."""
        return OAUTH_MANAGED_FIELDS if self.oauth is not None else frozenset()

    @cached_property
    def handler_fields(self) -> frozenset[str]:
        """What a handler may see: everything but what only the refresh needs."""
        names = frozenset(f.name for f in self.fields)
        return names - OAUTH_PRIVATE_FIELDS if self.oauth is not None else names

    def missing_fields(self, present: Iterable[str]) -> list[str]:
        have = set(present)
        return [f.name for f in self.fields if f.required and f.name not in have]

    def validate_values(
        self, values: Mapping[str, Any], *, complete: bool = True, managed: bool = False
    ) -> dict[str, str]:
        """Check a whole record (complete=True) or an update (complete=False) before anything is stored.
        Fields that only credgate writes are refused unless `managed`."""
        if not isinstance(values, Mapping):
            raise CredentialValueError("credential values must be a JSON object of field → string")
        unknown = sorted(set(values) - {f.name for f in self.fields})
        if unknown:
            known = ", ".join(f.name for f in self.fields if f.name not in self.managed_fields)
            raise CredentialValueError(f"type {self.type!r} has no field {unknown[0]!r} (its fields: {known})")
        kept = sorted(set(values) & self.managed_fields)
        if kept and not managed:
            raise CredentialValueError(f"field {kept[0]!r} is kept by credgate and cannot be set")
        for name, value in values.items():
            spec = self.field(name)
            assert spec is not None
            spec.check_value(value)
        if complete:
            missing = self.missing_fields(k for k, v in values.items() if v != "")
            if missing:
                raise CredentialValueError(f"required field {missing[0]!r} of type {self.type!r} is missing")
        return {k: v for k, v in values.items() if v != ""}

    def same_fields_as(self, other: CredentialSpec) -> bool:
        return self.fields == other.fields


class HttpHandler(_Model):
    kind: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    json_body: dict[str, Any] | None = Field(default=None, alias="json")
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    max_response_bytes: Annotated[int, Field(gt=0, le=64 * 1024 * 1024)] = 1024 * 1024


class PythonHandler(_Model):
    kind: Literal["python"]
    entrypoint: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0


class McpHandler(_Model):
    """An upstream MCP server: a command run over stdio, or a remote Streamable HTTP `url`."""

    kind: Literal["mcp"]
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    url: str | None = None
    headers: dict[str, str] = {}
    tools: tuple[str, ...] | None = None  # allow-list of upstream tool names
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{0,48}$")] | None = None
    timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0  # one call
    start_timeout: Annotated[float, Field(gt=0, le=600)] = 20.0  # start and handshake
    idle_timeout: Annotated[float, Field(gt=0)] = 300.0  # stop an unused upstream after this long

    @model_validator(mode="after")
    def _one_transport(self) -> McpHandler:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (a stdio upstream) or url (a remote one)")
        return self

    def tool_name(self, declaration_name: str, upstream_tool: str) -> str:
        prefix = declaration_name if self.prefix is None else self.prefix
        return f"{prefix}_{upstream_tool}" if prefix else upstream_tool


Handler = Annotated[HttpHandler | PythonHandler | McpHandler, Field(discriminator="kind")]


class ToolDeclaration(_Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    input_schema: dict[str, Any] = {"type": "object", "properties": {}}
    credential: CredentialSpec | None = None
    handler: Handler

    @model_validator(mode="after")
    def _schema_is_an_object_schema(self) -> ToolDeclaration:
        if self.input_schema.get("type") != "object":
            raise ValueError('input_schema: type must be "object"')
        try:
            jsonschema.Draft202012Validator.check_schema(self.input_schema)
        except jsonschema.SchemaError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise ValueError(f"input_schema{'.' + path if path else ''}: {exc.message}") from None
        return self


@dataclass(frozen=True)
class Tool:
    """A declared tool and the file it came from. A tool of an upstream MCP server also names the upstream
    (its declaration's name) and its name there."""

    decl: ToolDeclaration
    source: Path
    function: Callable[..., Any] | None = field(default=None, compare=False)
    upstream: str | None = None
    upstream_tool: str | None = None

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def credential(self) -> CredentialSpec | None:
        return self.decl.credential


@dataclass(frozen=True)
class Catalog:
    """Every valid tool, by name, and every credential type, by name. Upstream MCP servers are kept apart
    (`upstreams`); their tools join `tools` once discovered (`with_discovered`)."""

    tools: Mapping[str, Tool]
    types: Mapping[str, CredentialSpec]
    problems: tuple[str, ...] = ()
    upstreams: Mapping[str, Tool] = field(default_factory=dict)

    def upstream_tools(self, upstream: str) -> list[str]:
        return sorted(n for n, t in self.tools.items() if t.upstream == upstream)

    def with_discovered(self, discovered: Mapping[str, Sequence[Mapping[str, Any]]]) -> Catalog:
        """Add the upstreams' tools as discovered (name, description, inputSchema), after their allow-lists."""
        tools = dict(self.tools)
        problems = list(self.problems)
        for name, upstream in self.upstreams.items():
            handler = upstream.decl.handler
            assert isinstance(handler, McpHandler)
            for listed in discovered.get(name, ()):
                remote = str(listed.get("name", ""))
                if handler.tools is not None and remote not in handler.tools:
                    continue
                label = f"{upstream.source}: upstream tool {remote!r}"
                try:
                    decl = ToolDeclaration.model_validate(
                        {
                            "name": handler.tool_name(name, remote),
                            "description": listed.get("description") or "",
                            "input_schema": listed.get("inputSchema") or {"type": "object"},
                            "credential": upstream.decl.credential,
                            "handler": handler,
                        }
                    )
                except ValidationError as exc:
                    problems += _pydantic_problems(label, exc)
                    continue
                if decl.name in tools:
                    problems.append(f"{label}: its name {decl.name!r} is taken by {tools[decl.name].source}")
                    continue
                tools[decl.name] = Tool(decl=decl, source=upstream.source, upstream=name, upstream_tool=remote)
        return replace(self, tools=dict(sorted(tools.items())), problems=tuple(problems))

    def tool(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def tools_of_type(self, type_name: str) -> list[str]:
        return sorted(n for n, t in self.tools.items() if t.credential is not None and t.credential.type == type_name)

    def raise_problems(self) -> None:
        if self.problems:
            raise DeclarationError(list(self.problems))


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("http", "python", "mcp") and out == "handler":
            continue  # the discriminator's tag adds nothing for the reader
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _pydantic_problems(label: str, exc: ValidationError) -> list[str]:
    problems = []
    errors = exc.errors(include_input=False, include_url=False)
    for err in errors:
        if err["type"] == "too_short" and any(
            len(other["loc"]) > len(err["loc"]) and other["loc"][: len(err["loc"])] == err["loc"] for other in errors
        ):
            continue  # pydantic counts only the valid items of a tuple: a bad item is not a missing one
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        problems.append(f"{label}: {_loc(tuple(err['loc']))}: {msg}")
    return problems


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _template_problems(label: str, where: str, text: str, tool: ToolDeclaration) -> list[str]:
    problems = []
    props = tool.input_schema.get("properties", {}) or {}
    for m in PLACEHOLDER.finditer(text):
        scope, name = m.group(1), m.group(2)
        if scope == "cred":
            if tool.credential is None:
                problems.append(f"{label}: {where}: {m.group(0)} but the tool declares no credential")
            elif tool.credential.field(name) is None:
                problems.append(
                    f"{label}: {where}: {m.group(0)} names a field that type {tool.credential.type!r} lacks"
                )
            elif name not in tool.credential.handler_fields:
                problems.append(
                    f"{label}: {where}: {m.group(0)} is kept by credgate to refresh the OAuth2 token "
                    "and is never sent to a tool"
                )
        elif scope == "args":
            if name not in props:
                problems.append(f"{label}: {where}: {m.group(0)} names an argument input_schema lacks")
        else:
            problems.append(f"{label}: {where}: unknown placeholder {m.group(0)} (use args.* or cred.*)")
    return problems


def _http_problems(label: str, tool: ToolDeclaration, handler: HttpHandler) -> list[str]:
    problems = _origin_problems(label, "handler.url", handler.url, tool)
    problems += _template_problems(label, "handler.url", handler.url, tool)
    for key, value in handler.query.items():
        problems += _template_problems(label, f"handler.query.{key}", value, tool)
    for key, value in handler.headers.items():
        problems += _template_problems(label, f"handler.headers.{key}", value, tool)
    if handler.json_body is not None:
        for path, value in _strings(handler.json_body, "handler.json"):
            problems += _template_problems(label, path, value, tool)
    return problems


def _origin_problems(label: str, where: str, url: str, tool: ToolDeclaration) -> list[str]:
    """The scheme, host and port are fixed text; a credential travels only over https or to loopback."""
    scheme, sep, rest = url.partition("://")
    origin = scheme + sep + re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "{" in origin or "}" in origin:
        return [f"{label}: {where}: a placeholder in the scheme, host or port is not allowed"]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in 0-65535)
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535"…
        return [f"{label}: {where}: not a valid URL ({exc})"]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"{label}: {where}: must be an absolute http:// or https:// URL"]
    if parts.scheme == "http" and tool.credential is not None and not is_loopback_host(parts.hostname):
        return [
            f"{label}: {where}: a credential may be sent only over https:// "
            f"(or http:// to a loopback host), not to http://{parts.hostname}"
        ]
    return []


def _mcp_problems(label: str, tool: ToolDeclaration, handler: McpHandler) -> list[str]:
    problems = _origin_problems(label, "handler.url", handler.url, tool) if handler.url is not None else []
    templates = [("handler.command", handler.command or ""), ("handler.url", handler.url or "")]
    templates += [(f"handler.args[{i}]", a) for i, a in enumerate(handler.args)]
    templates += [(f"handler.env.{k}", v) for k, v in handler.env.items()]
    templates += [(f"handler.headers.{k}", v) for k, v in handler.headers.items()]
    for where, text in templates:
        problems += _template_problems(label, where, text, tool)
        if "{args." in text:
            problems.append(
                f"{label}: {where}: an upstream server is started per credential, not per call: "
                "{args.*} cannot be used here"
            )
    return problems


def _oauth_problems(label: str, tool: ToolDeclaration) -> list[str]:
    problems: list[str] = []
    if tool.credential is None or tool.credential.oauth is None:
        return problems
    index = next(i for i, f in enumerate(tool.credential.fields) if f.kind == "oauth2")
    provider = tool.credential.oauth
    for key in ("authorize_url", "token_url"):
        url = getattr(provider, key)
        where = f"credential.fields[{index}].{key}"
        if PLACEHOLDER.search(url):
            problems.append(f"{label}: {where}: placeholders are not allowed here")
        problems += _origin_problems(label, where, url, tool)
    return problems


def _with_default_bearer(tool: ToolDeclaration) -> ToolDeclaration:
    """An OAuth2 access token goes as `Authorization: Bearer …` to an http handler or a remote upstream whose
    declaration places it nowhere itself."""
    provider = tool.credential.oauth if tool.credential is not None else None
    handler = tool.handler
    if provider is None or isinstance(handler, PythonHandler) or (isinstance(handler, McpHandler) and not handler.url):
        return tool
    placeholder = f"{{cred.{provider.field}}}"
    texts = [s for _, s in _strings(handler.model_dump(by_alias=True), "handler")]
    if any(placeholder in t for t in texts) or any(k.lower() == "authorization" for k in handler.headers):
        return tool
    headers = {**handler.headers, "Authorization": f"Bearer {placeholder}"}
    return tool.model_copy(update={"handler": handler.model_copy(update={"headers": headers})})


def _strings(value: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def resolve_entrypoint(entrypoint: str, search_dirs: Iterable[Path] = ()) -> Callable[..., Any]:
    """Import `module:function`; the tools.d folders are on the import path for local modules."""
    for d in search_dirs:
        if str(d) not in sys.path:
            sys.path.append(str(d))
    module_name, _, attr = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{attr} is not callable")
    return fn  # type: ignore[no-any-return]


def _parse_file(path: Path, label: str, dirs: tuple[Path, ...]) -> tuple[Tool | None, list[str]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        return None, [f"{label}: TOML syntax error: {exc}"]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{label}: cannot read: {exc.__class__.__name__}"]
    except RecursionError:  # tomli refuses inline tables/arrays nested over 400 levels this way
        return None, [f"{label}: TOML syntax error: tables or arrays are nested too deeply"]
    try:
        decl = ToolDeclaration.model_validate(data)
    except ValidationError as exc:
        return None, _pydantic_problems(label, exc)
    except RecursionError:  # jsonschema's check of a deeply nested input_schema
        return None, [f"{label}: input_schema: nested too deeply"]
    problems = _oauth_problems(label, decl)
    decl = _with_default_bearer(decl)
    function = None
    handler = decl.handler
    if isinstance(handler, HttpHandler):
        problems += _http_problems(label, decl, handler)
    elif isinstance(handler, PythonHandler):
        try:
            function = resolve_entrypoint(handler.entrypoint, dirs)
        except Exception as exc:  # any import failure is a declaration problem
            problems.append(
                f"{label}: handler.entrypoint: {handler.entrypoint!r} does not import ({exc.__class__.__name__}: {exc})"
            )
    else:
        problems += _mcp_problems(label, decl, handler)
    tool = Tool(decl=decl, source=path, function=function)
    return (None if problems else tool), problems


def load_catalog(dirs: Iterable[Path]) -> Catalog:
    """Read every `*.toml` in the folders (missing folders are empty) and cross-check them."""
    dirs = tuple(dirs)
    tools: dict[str, Tool] = {}
    types: dict[str, tuple[CredentialSpec, str]] = {}
    problems: list[str] = []
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.toml")):
            label = str(path)
            tool, file_problems = _parse_file(path, label, dirs)
            problems += file_problems
            if tool is None:
                continue
            if tool.name in tools:
                problems.append(f"{label}: name: tool {tool.name!r} is already declared in {tools[tool.name].source}")
                continue
            spec = tool.credential
            if spec is not None:
                if spec.type in types and not types[spec.type][0].same_fields_as(spec):
                    problems.append(
                        f"{label}: credential.fields: type {spec.type!r} is declared with other fields "
                        f"in {types[spec.type][1]}; tools that share a type must declare the same fields"
                    )
                    continue
                types.setdefault(spec.type, (spec, label))
            tools[tool.name] = tool
    upstreams = {n: t for n, t in tools.items() if isinstance(t.decl.handler, McpHandler)}
    return Catalog(
        tools={n: t for n, t in sorted(tools.items()) if n not in upstreams},
        types={k: v[0] for k, v in sorted(types.items())},
        problems=tuple(problems),
        upstreams=dict(sorted(upstreams.items())),
    )
