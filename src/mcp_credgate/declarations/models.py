"""The declaration models: a tool, its credential type and fields, its handler (contract §2), frozen and
validated by pydantic. A value's own rules (format, size, characters) live on its field."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..errors import CredentialValueError
from ..isolation import Isolation

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
FIELD_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_VALUE_BYTES = 64 * 1024
MAX_PROCESSES_LIMIT = 100_000  # the highest `max_processes` of an upstream's declaration
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


# Where an http handler's redirects may lead: the declared origin only, any https origin, nowhere, or the
# declared origin and the listed ones. Never from https to http, whatever the policy.
RedirectPolicy = Literal["same-origin", "https", False] | tuple[str, ...]
REDIRECT_POLICIES = (
    'must be "same-origin" (the default), "https", false, or a list of origins like ["https://api.example.com"]'
)
DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]

_ORIGIN = re.compile(
    r"(?P<scheme>https?)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::(?P<port>[0-9]{1,5}))?",
    re.IGNORECASE | re.ASCII,
)


def parse_origin(text: str) -> Origin | None:
    """`scheme://host[:port]` and nothing else (http or https; a host name, an IPv4 address or an IPv6 one in
    brackets) as (scheme, host, port) in the form compared at run time: lower case, an IPv6 address in its
    compressed form without brackets, the scheme's default port when none is given. None: not an origin."""
    written = _written_origin(text)
    return written[0] if written is not None else None


def _written_origin(text: str) -> tuple[Origin, str] | None:
    """The origin, and its text as a list keeps it: lower case, a port only if one was given."""
    m = _ORIGIN.fullmatch(text)
    if m is None:
        return None
    scheme, host, port_text = m.group("scheme").lower(), m.group("host").lower(), m.group("port")
    if host.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            return None
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        return None
    shown = f"[{host}]" if ":" in host else host
    return (scheme, host, port), f"{scheme}://{shown}" + (f":{port}" if port_text else "")


class HttpHandler(_Model):
    kind: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    json_body: dict[str, Any] | None = Field(default=None, alias="json")
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    max_response_bytes: Annotated[int, Field(gt=0, le=64 * 1024 * 1024)] = 1024 * 1024
    redirects: RedirectPolicy = "same-origin"

    @field_validator("redirects", mode="before")
    @classmethod
    def _redirect_policy(cls, value: Any) -> Any:
        """One of the policies, a list's origins each checked and written one way (lower case)."""
        if value is False or (isinstance(value, str) and value in ("same-origin", "https")):
            return value
        if not isinstance(value, list | tuple):
            raise ValueError(REDIRECT_POLICIES)
        origins = []
        for i, entry in enumerate(value):
            written = _written_origin(entry) if isinstance(entry, str) else None
            if written is None:
                raise ValueError(
                    f"item [{i}], {entry!r}, is not an origin: write scheme://host[:port] (http or https), "
                    "with no path, query, user or trailing slash"
                )
            origins.append(written[1])
        return tuple(origins)

    @cached_property
    def redirect_origins(self) -> frozenset[Origin]:
        """The origins a list policy names (empty for the other policies)."""
        if not isinstance(self.redirects, tuple):
            return frozenset()
        return frozenset(o for o in map(parse_origin, self.redirects) if o is not None)


class PythonHandler(_Model):
    kind: Literal["python"]
    entrypoint: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0


def _sandbox_path(value: str) -> str:
    if not (value.startswith("/") or value.startswith("~/")) or "\x00" in value:
        raise ValueError("must be an absolute path (or start with ~/)")
    if value.rstrip("/") == "":
        raise ValueError("/ is the whole machine: name the folders the upstream needs")
    return value


SandboxPath = Annotated[str, AfterValidator(_sandbox_path)]


class SandboxSpec(_Model):
    """A stdio upstream's sandbox (`sandbox.*` in its handler; `sandbox = false` opts out): extra paths it
    may read or write, whether it has the network, and its limits."""

    read: tuple[SandboxPath, ...] = ()
    write: tuple[SandboxPath, ...] = ()
    network: bool = True  # true: the host's network, loopback services included
    max_memory_mb: Annotated[int, Field(ge=64, le=1024 * 1024)] = 2048  # per process (RLIMIT_DATA)
    # processes and threads inside this one sandbox (RLIMIT_NPROC); how many sandboxed upstreams run at once
    # is the handler's own max_processes
    max_processes: Annotated[int, Field(ge=8, le=1024 * 1024)] = 512
    max_home_mb: Annotated[int, Field(ge=1, le=1024 * 1024)] = 1024  # at start; and per file (RLIMIT_FSIZE)


_EGRESS_HOST = re.compile(
    r"^(?:(http)://)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*)(?::(\d{1,5}))?$"
)


def _egress_host(value: str) -> str:
    """`api.example.com` (https, any port), `api.example.com:8443` (https, that port only) or
    `http://api.internal:8080` (plain http, which sends the real value in clear: only with its port)."""
    if not isinstance(value, str):
        raise ValueError("a host is a string")
    found = _EGRESS_HOST.match(value.lower())
    if found is None or len(found[2]) > 253:  # a DNS name's limit
        raise ValueError(
            f"{value!r} is not a host name: give api.example.com, api.example.com:8443 or http://host:port "
            "(no path, no wildcard, no address range)"
        )
    scheme, port = found[1], found[3]
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be 1-65535")
    if scheme == "http" and port is None:
        raise ValueError(f"{value!r}: plain http sends the real value in clear: give its port too (http://host:port)")
    return value.lower()


EgressHost = Annotated[str, AfterValidator(_egress_host)]


class EgressSpec(_Model):
    """Where an upstream under `inject = "egress"` may send its credential (`handler.egress`): the proxy puts the
    real values in place of the placeholders toward `hosts` only, in headers, the query and the JSON body fields
    named in `body_fields`; `other` says what becomes of traffic to any other host (a placeholder there is
    always blocked)."""

    hosts: Annotated[tuple[EgressHost, ...], Field(min_length=1, max_length=64)]
    other: Literal["deny", "tunnel"] = "deny"
    body_fields: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], ...] = ()

    @property
    def https_hosts(self) -> frozenset[str]:
        return frozenset(h for h in self.hosts if not h.startswith("http://"))

    @property
    def plain_hosts(self) -> frozenset[str]:
        return frozenset(h.removeprefix("http://") for h in self.hosts if h.startswith("http://"))


Inject = Literal["env", "egress"]


class McpHandler(_Model):
    """An upstream MCP server: a command run over stdio, or a remote Streamable HTTP `url`. A stdio one runs
    in a sandbox (`sandbox`; None when its declaration says `sandbox = false`)."""

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
    isolation: Isolation = "group"  # one upstream per (credential, group), or per (credential, group, agent)
    # Upstream processes of this declaration alive at once, over all its scopes (None: no limit). Not
    # sandbox.max_processes, which bounds the processes and threads inside one sandbox (RLIMIT_NPROC).
    max_processes: int | None = None
    slot_timeout: Annotated[float, Field(gt=0, le=3600)] | None = None  # a call's wait for one; None: `timeout`
    sandbox: SandboxSpec | None = SandboxSpec()
    # "env": the upstream holds its credential's values where {cred.FIELD} puts them; "egress": it holds
    # placeholders there, and the gateway's proxy, its only way out, puts the real values on the wire
    inject: Inject = "env"
    egress: EgressSpec | None = None

    @field_validator("max_processes", mode="before")
    @classmethod
    def _process_count(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PROCESSES_LIMIT:
            raise ValueError(
                f"must be a whole number of processes, at least 1 and at most {MAX_PROCESSES_LIMIT} (leave it "
                "out for no limit); the processes inside one sandbox are sandbox.max_processes"
            )
        return value

    @field_validator("sandbox", mode="before")
    @classmethod
    def _sandbox_switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        if not isinstance(value, dict | SandboxSpec):
            raise ValueError(
                "give false, or a table of read, write, network, max_memory_mb, max_processes, max_home_mb"
            )
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpHandler:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (a stdio upstream) or url (a remote one)")
        return self

    @model_validator(mode="after")
    def _egress_declared(self) -> McpHandler:
        if self.inject == "env":
            if self.egress is not None:
                raise ValueError('egress: only with inject = "egress" (an upstream given the real values needs none)')
            return self
        if self.command is None:
            raise ValueError('inject = "egress" is for a stdio upstream (command): a remote one runs elsewhere')
        if self.egress is None:
            raise ValueError('inject = "egress" needs [handler.egress] with hosts = [...]: where the values may go')
        if self.sandbox is None:
            raise ValueError(
                'inject = "egress" needs the sandbox (remove sandbox = false): only a sandbox makes the proxy the '
                "upstream's only way out"
            )
        if "network" in self.sandbox.model_fields_set:
            raise ValueError(
                'sandbox.network: leave it out with inject = "egress": the upstream gets a network of its own '
                "whose only way out is the proxy"
            )
        return self

    @property
    def sandboxed(self) -> bool:
        """Whether its declaration wants a sandbox: a stdio upstream that did not opt out."""
        return self.command is not None and self.sandbox is not None

    @property
    def slot_wait(self) -> float:
        """How long a call waits for one of the `max_processes` to come free: `slot_timeout`, else one call's
        `timeout` (by then every call in flight when it began has ended or timed out, its process idle)."""
        return self.slot_timeout if self.slot_timeout is not None else self.timeout

    def tool_name(self, declaration_name: str, upstream_tool: str) -> str:
        prefix = declaration_name if self.prefix is None else self.prefix
        return f"{prefix}_{upstream_tool}" if prefix else upstream_tool


Handler = Annotated[HttpHandler | PythonHandler | McpHandler, Field(discriminator="kind")]


MICROS = 1_000_000  # costs are kept exactly, in millionths of the currency (contract §8)


def _micros(value: Any) -> int:
    """A cost as a whole number of micro-units: a finite decimal, at least 0, with at most 6 decimal places."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError("must be a number, such as 0.002")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError("must be a number, such as 0.002") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a finite number of at least 0")
    micros = amount * MICROS
    if micros != micros.to_integral_value() or micros > 10**18:
        raise ValueError("must have at most 6 decimal places (and be below a trillion)")
    return int(micros)


Micros = Annotated[int, BeforeValidator(_micros)]


class ToolDeclaration(_Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    input_schema: dict[str, Any] = {"type": "object", "properties": {}}
    credential: CredentialSpec | None = None
    handler: Handler
    approval: bool = False  # a person approves each call first (contract §7); a group cannot lift it
    # what one call costs, in micro-units of `currency` (contract §8; none: 0); an upstream's declaration sets
    # each of its tools' by the upstream's own name in `costs`
    cost: Micros = 0
    costs: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-/]{1,128}$")], Micros] = {}
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"

    @model_validator(mode="after")
    def _costs_per_upstream_tool(self) -> ToolDeclaration:
        if self.costs and not isinstance(self.handler, McpHandler):
            raise ValueError("costs: per upstream tool, for an upstream MCP server; give this tool's as cost")
        return self

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
