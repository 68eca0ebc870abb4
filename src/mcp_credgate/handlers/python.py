"""`python` handlers: `function(args, credential)`, async or sync (sync runs in a worker thread)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from ..credential import Credential
from ..declarations import PythonHandler
from . import ToolOutput


async def run_python(
    handler: PythonHandler, function: Callable[..., Any], args: Mapping[str, Any], credential: Credential
) -> ToolOutput:
    """Exceptions propagate to the caller, which turns them into a generic error with a reference id; a
    handler still running after its timeout is cancelled (TimeoutError)."""
    # The gateway runs on asyncio, whose own timeout costs a call half of anyio.fail_after's; it composes
    # with anyio's cancel scopes (an agent's cancel still cancels the call).
    async with asyncio.timeout(handler.timeout):
        if _is_async(function):
            value = await function(args, credential)
        else:
            value = await anyio.to_thread.run_sync(function, args, credential, abandon_on_cancel=True)
            if inspect.isawaitable(value):
                value = await value
    return ToolOutput.from_value(value)


@functools.cache
def _is_async(function: Callable[..., Any]) -> bool:
    """Asked on every call of the few entrypoints a catalog has: the answer is kept."""
    return inspect.iscoroutinefunction(function)
