"""The checks a declaration gets beyond its models: placeholders, origins, OAuth2 rules, and problem lines
that name the file and the field."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from ..loopback import is_loopback_host
from .models import (
    PLACEHOLDER,
    HttpHandler,
    McpHandler,
    PythonHandler,
    ToolDeclaration,
)


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


def pydantic_problems(label: str, exc: ValidationError) -> list[str]:
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


def http_problems(label: str, tool: ToolDeclaration, handler: HttpHandler) -> list[str]:
    problems = _origin_problems(label, "handler.url", handler.url, tool)
    problems += _template_problems(label, "handler.url", handler.url, tool)
    for key, value in handler.query.items():
        problems += _template_problems(label, f"handler.query.{key}", value, tool)
    for key, value in handler.headers.items():
        problems += _template_problems(label, f"handler.headers.{key}", value, tool)
    if handler.json_body is not None:
        for path, value in _strings(handler.json_body, "handler.json"):
            problems += _template_problems(label, path, value, tool)
    return problems + _redirect_problems(label, handler)


def _redirect_problems(label: str, handler: HttpHandler) -> list[str]:
    """A listed http:// origin that an https:// URL can never reach (no redirect goes from https to http)."""
    if not isinstance(handler.redirects, tuple) or not handler.url.lower().startswith("https://"):
        return []
    return [
        f"{label}: handler.redirects[{i}]: {origin} can never be reached from the https:// URL: "
        "a redirect is never followed from https:// to http://"
        for i, origin in enumerate(handler.redirects)
        if origin.startswith("http://")
    ]


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


def mcp_problems(label: str, tool: ToolDeclaration, handler: McpHandler) -> list[str]:
    problems = _origin_problems(label, "handler.url", handler.url, tool) if handler.url is not None else []
    templates = [("handler.command", handler.command or ""), ("handler.url", handler.url or "")]
    templates += [(f"handler.args[{i}]", a) for i, a in enumerate(handler.args)]
    templates += [(f"handler.env.{k}", v) for k, v in handler.env.items()]
    templates += [(f"handler.headers.{k}", v) for k, v in handler.headers.items()]
    if handler.url is not None and handler.max_processes is not None:
        problems.append(
            f"{label}: handler.max_processes: a remote upstream (url) runs no process here: there is nothing to cap"
        )
    if handler.slot_timeout is not None and handler.max_processes is None:
        problems.append(f"{label}: handler.slot_timeout: there is no slot to wait for without max_processes")
    if tool.cost:
        problems.append(f"{label}: cost: an upstream's tools cost each their own: give them in costs, by their names")
    for where, text in templates:
        problems += _template_problems(label, where, text, tool)
        if "{args." in text:
            problems.append(
                f"{label}: {where}: an upstream server is started per credential, not per call: "
                "{args.*} cannot be used here"
            )
    return problems


def real_path(path: str | Path) -> Path:
    """A path as the kernel will find it: `~/` expanded, symbolic links followed (as far as they exist)."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def protected_overlap(path: str | Path, protected: Mapping[Path, str]) -> str | None:
    """Why `path` may not be shown to an upstream: it is, lies in or holds one of the `protected` paths
    (path → what it is); None when it may."""
    wanted = real_path(path)
    for place, what in protected.items():
        real = real_path(place)
        if wanted == real or wanted.is_relative_to(real):
            return f"{path} is in {what} ({place}), which no upstream may see"
        if real.is_relative_to(wanted):
            return f"{path} holds {what} ({place}), which no upstream may see"
    return None


def sandbox_problems(label: str, handler: McpHandler, protected: Mapping[Path, str]) -> list[str]:
    """A remote upstream has no sandbox to set; a stdio one's extra paths keep clear of what no upstream may
    see (the data folder, the key, the upstreams' homes)."""
    if handler.url is not None and "sandbox" in handler.model_fields_set:
        return [f"{label}: handler.sandbox: a remote upstream (url) runs elsewhere: there is no sandbox to set"]
    if handler.sandbox is None:
        return []
    problems = []
    for field in ("read", "write"):
        for i, path in enumerate(getattr(handler.sandbox, field)):
            why = protected_overlap(path, protected)
            if why is not None:
                problems.append(f"{label}: handler.sandbox.{field}[{i}]: {why}")
    return problems


def oauth_problems(label: str, tool: ToolDeclaration) -> list[str]:
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


def with_default_bearer(tool: ToolDeclaration) -> ToolDeclaration:
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
