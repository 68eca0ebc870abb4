"""Reading `tools.d/*.toml` into a catalog: every problem names its file and field, so that `credgate tools
--check` lists them all at once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import tomli as tomllib
from pydantic import ValidationError

from .catalog import Catalog, Tool, Upstream
from .checks import (
    http_problems,
    mcp_problems,
    oauth_problems,
    pydantic_problems,
    sandbox_problems,
    with_default_bearer,
)
from .entrypoints import resolve_entrypoint
from .models import (
    CredentialSpec,
    HttpHandler,
    McpHandler,
    PythonHandler,
    ToolDeclaration,
)


def _parse_file(
    path: Path, label: str, dirs: tuple[Path, ...], protected: Mapping[Path, str]
) -> tuple[Tool | None, list[str]]:
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
        return None, pydantic_problems(label, exc)
    except RecursionError:  # jsonschema's check of a deeply nested input_schema
        return None, [f"{label}: input_schema: nested too deeply"]
    problems = oauth_problems(label, decl)
    decl = with_default_bearer(decl)
    function = None
    handler = decl.handler
    if isinstance(handler, HttpHandler):
        problems += http_problems(label, decl, handler)
    elif isinstance(handler, PythonHandler):
        try:
            function = resolve_entrypoint(handler.entrypoint, dirs)
        except Exception as exc:  # any import failure is a declaration problem
            problems.append(
                f"{label}: handler.entrypoint: {handler.entrypoint!r} does not import ({exc.__class__.__name__}: {exc})"
            )
    else:
        problems += mcp_problems(label, decl, handler)
        problems += sandbox_problems(label, handler, protected)
    tool = Tool(decl=decl, source=path, function=function)
    return (None if problems else tool), problems


def load_catalog(dirs: Iterable[Path], protected: Mapping[Path, str] | None = None) -> Catalog:
    """Read every `*.toml` in the folders (missing folders are empty) and cross-check them. `protected`: the
    paths no upstream's sandbox may be given (path → what it is: `Settings.protected_paths`)."""
    dirs = tuple(dirs)
    tools: dict[str, Tool] = {}
    types: dict[str, tuple[CredentialSpec, str]] = {}
    problems: list[str] = []
    for d in dirs:
        try:
            if not d.is_dir():
                continue
            found = sorted(d.glob("*.toml"))
        except OSError as exc:  # a folder not ours to read: said, never a traceback
            problems.append(f"{d}: cannot read the declarations folder ({exc.strerror})")
            continue
        for path in found:
            label = str(path)
            tool, file_problems = _parse_file(path, label, dirs, protected or {})
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
    upstreams = {n: Upstream(t.decl, t.source) for n, t in tools.items() if isinstance(t.decl.handler, McpHandler)}
    return Catalog(
        tools={n: t for n, t in sorted(tools.items()) if n not in upstreams},
        types={k: v[0] for k, v in sorted(types.items())},
        problems=tuple(problems),
        upstreams=dict(sorted(upstreams.items())),
    )
