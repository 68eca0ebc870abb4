"""The credgate side of the benchmark: an echo tool that needs (and receives) a credential."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


async def echo(args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    assert credential["api_key"]  # injected server-side on every call
    return str(args.get("text", ""))
