"""Tool declarations: `tools.d/*.toml` read into frozen, validated models (contract §2).

- `models`: a tool, its credential type and fields, its handler (pydantic models, frozen);
- `checks`: what a declaration needs beyond its models (placeholders, origins, OAuth2 rules);
- `entrypoints`: importing a python handler's `module:function`;
- `loading`: reading the folders into a `Catalog` (`catalog`), every problem with its file and field.
"""

from .catalog import Catalog, Tool, Upstream
from .checks import protected_overlap, real_path
from .loading import load_catalog
from .models import (
    MICROS,
    NAME_PATTERN,
    PLACEHOLDER,
    CredentialField,
    CredentialSpec,
    EgressSpec,
    HttpHandler,
    McpHandler,
    OAuthProvider,
    PythonHandler,
    SandboxSpec,
    ToolDeclaration,
)

__all__ = [
    "MICROS",
    "NAME_PATTERN",
    "PLACEHOLDER",
    "Catalog",
    "CredentialField",
    "CredentialSpec",
    "EgressSpec",
    "HttpHandler",
    "McpHandler",
    "OAuthProvider",
    "PythonHandler",
    "SandboxSpec",
    "Tool",
    "ToolDeclaration",
    "Upstream",
    "load_catalog",
    "protected_overlap",
    "real_path",
]
