"""Each public module's `__all__` lists exactly the names it defines for others (as httpx's test of the same name).

A module's public names are the classes, functions and constants it defines at the top level whose names do not
start with "_" (a package's `__init__` also those it imports from its own modules), except loggers and type
variables. Add a public name to `__all__`, or make it private with a leading "_".
"""

from __future__ import annotations

import ast
import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import pytest

pytestmark = pytest.mark.no_store

PUBLIC_MODULES = [
    "mcp_credgate",
    "mcp_credgate.addresses",
    "mcp_credgate.admin",
    "mcp_credgate.agents",
    "mcp_credgate.approvals",
    "mcp_credgate.budgets",
    "mcp_credgate.rounds",
    "mcp_credgate.authorization",
    "mcp_credgate.allow",
    "mcp_credgate.arguments",
    "mcp_credgate.audit",
    "mcp_credgate.client_documents",
    "mcp_credgate.config",
    "mcp_credgate.credential",
    "mcp_credgate.credential_files",
    "mcp_credgate.crypto",
    "mcp_credgate.deadlines",
    "mcp_credgate.discovery",
    "mcp_credgate.declarations",
    "mcp_credgate.egress_ca",
    "mcp_credgate.egress_forwarder",
    "mcp_credgate.egress_proxy",
    "mcp_credgate.egress_swap",
    "mcp_credgate.errors",
    "mcp_credgate.gate",
    "mcp_credgate.handlers",
    "mcp_credgate.handlers.egress",
    "mcp_credgate.handlers.keepalive",
    "mcp_credgate.handlers.parked",
    "mcp_credgate.importing",
    "mcp_credgate.isolation",
    "mcp_credgate.logs",
    "mcp_credgate.loopback",
    "mcp_credgate.oauth",
    "mcp_credgate.people",
    "mcp_credgate.placeholders",
    "mcp_credgate.probes",
    "mcp_credgate.readiness",
    "mcp_credgate.redact",
    "mcp_credgate.sandbox",
    "mcp_credgate.serving.events",
    "mcp_credgate.serving.pipes",
    "mcp_credgate.slots",
    "mcp_credgate.sso",
    "mcp_credgate.throttle",
    "mcp_credgate.sealing",
    "mcp_credgate.setup_links",
    "mcp_credgate.store",
    "mcp_credgate.store.faults",
    "mcp_credgate.visible",
    "mcp_credgate.token_refresh",
    "mcp_credgate.web.charts",
    "mcp_credgate.web.usage",
]
INCLUDED_PRIVATE_MEMBERS = {"__version__"}


def public_names(module: ModuleType) -> set[str]:
    assert module.__file__ is not None
    path = Path(module.__file__)
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and node.level > 0 and path.name == "__init__.py":
            names.update(alias.asname or alias.name for alias in node.names)
    return {
        name
        for name in names
        if (not name.startswith("_") or name in INCLUDED_PRIVATE_MEMBERS)
        and not isinstance(getattr(module, name), logging.Logger | TypeVar)
    }


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names_of_the_module(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)

    assert exported is not None, f"{name} has no __all__"
    assert sorted(exported) == sorted(public_names(module))
    assert len(set(exported)) == len(exported), "a name listed twice"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_name_in_all_can_be_imported(name: str) -> None:
    module = importlib.import_module(name)

    missing = [member for member in module.__all__ if not hasattr(module, member)]

    assert missing == []
