"""The example tools the repository ships in `tools.d/`: each one, called as an agent calls it, returns nothing
derived from a secret (not the value, nor its hash, prefix, length or masked form).

Every declaration in `tools.d/` is discovered and run through the gateway: python handlers as they are, http
ones against the local recording upstream instead of their service. Each runs twice, bound to canary
credentials of two different lengths; the agent's whole result (content and structuredContent) is scanned
for each canary in every encoding and digest, and a tool with a credential must answer the same both times:
an answer that depends on the secret in any way would differ.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mcp_credgate.declarations import CredentialField, CredentialSpec, HttpHandler, load_catalog
from mcp_credgate.errors import CredentialValueError
from tests.support.gateway import Transcript, Upstream, World, connect, derived_leaks, result_text
from tests.support.samples import REPO_TOOLS_DIR

pytestmark = pytest.mark.anyio

ROUNDS = {"first": 40, "second": 61}  # group → length of its canaries' random part (different on purpose)
RICH = '"q\\s/p+e=a?&z~'  # characters that URL, JSON and base64 encodings all change (where a format allows)
CANARY_PREFIXES = ("", "ghp_", "sk_test_")  # what makes a canary fit the formats of tools.d (GitHub, Stripe)
PLAIN_VALUES = {"username": "alice"}  # a required non-secret field: this by its kind, else `example-<name>`


def shipped_declarations(upstream: Upstream) -> dict[str, str]:
    """The text of every declaration in the repository's tools.d (by file name), each http handler's origin
    replaced by the upstream's (the path and query stay as shipped)."""
    shipped = load_catalog([REPO_TOOLS_DIR])
    assert not shipped.problems, shipped.problems
    assert not shipped.upstreams, "an upstream MCP example ships now: teach this test to run it"
    texts: dict[str, str] = {}
    for tool in shipped.tools.values():
        text = tool.source.read_text(encoding="utf-8")
        handler = tool.decl.handler
        if isinstance(handler, HttpHandler):
            scheme, _, rest = handler.url.partition("://")
            origin = f"{scheme}://{rest.split('/', 1)[0]}"
            line = f'url = "{handler.url}"'
            assert text.count(line) == 1, f"{tool.source.name}: write its url as {line}"
            text = text.replace(line, f'url = "{upstream.base}{handler.url[len(origin) :]}"')
        texts[tool.source.stem] = text
    return texts


def canary(field: CredentialField, size: int) -> str:
    """A unique value for a secret field, of about `size` characters, that its format accepts."""
    core = "cnry" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(size))
    for prefix in CANARY_PREFIXES:
        for value in (prefix + core + RICH, prefix + core):
            try:
                field.check_value(value)
            except CredentialValueError:
                continue
            return value
    pytest.fail(f"no canary fits field {field.name!r} ({field.pattern}): add its prefix to CANARY_PREFIXES")


def plain_value(field: CredentialField) -> str:
    value = PLAIN_VALUES.get(field.kind, f"example-{field.name}")
    field.check_value(value)
    return value


def credential_values(spec: CredentialSpec, size: int) -> dict[str, str]:
    """A canary in every secret field (optional ones too), a fixed text in every required non-secret field."""
    values: dict[str, str] = {}
    for field in spec.fields:
        if field.name in spec.managed_fields:
            continue
        if field.secret:
            values[field.name] = canary(field, size)
        elif field.required:
            values[field.name] = plain_value(field)
    return values


def sample_arguments(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A value for every property of an input schema: the first of an enum, a number's minimum, a text."""
    args: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if "enum" in prop:
            args[name] = prop["enum"][0]
        elif prop.get("type") == "string":
            args[name] = f"sample {name}"
        elif prop.get("type") in ("integer", "number"):
            args[name] = prop.get("minimum", 1)
        elif prop.get("type") == "boolean":
            args[name] = True
        else:
            pytest.fail(f"no sample argument for {name!r} ({prop}): teach sample_arguments its type")
    return args


@pytest.fixture
def world(tmp_path: Path, upstream: Upstream) -> Iterator[World]:
    """The shipped tools, all allowed in groups `first` and `second`, each bound there to a credential of
    canaries of that round (`<type>-first`, `<type>-second`)."""
    w = World.create(tmp_path, shipped_declarations(upstream))
    for group, size in ROUNDS.items():
        w.allow(group, *w.catalog.tools)
        for spec in w.catalog.types.values():
            w.add_credential(f"{spec.type}-{group}", spec.type, credential_values(spec, size))
        w.allow_and_bind(group, w.catalog.tools, {t: f"{t}-{group}" for t in w.catalog.types})
    yield w
    w.close()


def planted(world: World, group: str) -> list[tuple[str, str]]:
    """(credential.field, value) of every secret value the group's credentials hold."""
    found: list[tuple[str, str]] = []
    for spec in world.catalog.types.values():
        stored = world.store.read_credential(f"{spec.type}-{group}")
        found += [(f"{spec.type}.{name}", stored[name]) for name in sorted(spec.secret_fields) if name in stored]
    return found


async def answers(world: World, group: str) -> dict[str, str]:
    """Tool → everything the agent received from calling it once (the whole result, as JSON)."""
    received: dict[str, str] = {}
    async with world.gateway() as gw, connect(gw, group) as client:
        for name, tool in world.catalog.tools.items():
            transcript = Transcript()
            result = await transcript.call(client, name, sample_arguments(tool.decl.input_schema))
            assert not result.is_error, f"{name}: {result_text(result)}"
            received[name] = transcript.text()
    return received


def test_every_shipped_declaration_is_an_example_here(upstream: Upstream) -> None:
    files = sorted(p.stem for p in REPO_TOOLS_DIR.glob("*.toml"))

    assert sorted(shipped_declarations(upstream)) == files


async def test_no_example_returns_anything_derived_from_a_secret(world: World) -> None:
    for group in ROUNDS:
        secrets_of_group = planted(world, group)
        assert secrets_of_group, "no credential was planted"
        for tool, text in (await answers(world, group)).items():
            for where, value in secrets_of_group:
                found = derived_leaks(text, value)
                assert not found, f"{tool} returned {where} as {found}"


async def test_an_example_with_a_credential_answers_the_same_whatever_the_secret(world: World) -> None:
    first, second = [await answers(world, group) for group in ROUNDS]

    with_credential = [name for name, tool in world.catalog.tools.items() if tool.credential is not None]
    assert with_credential
    for name in with_credential:
        assert first[name] == second[name], f"{name} answers differently for another secret"
