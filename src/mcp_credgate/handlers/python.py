"""`python` handlers: `function(args, credential)`, async or sync (sync runs in a worker thread)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from ..credential import Credential
from ..deadlines import Deadlines
from ..declarations import PythonHandler
from . import ToolOutput


async def run_python(
    handler: PythonHandler,
    function: Callable[..., Any],
    args: Mapping[str, Any],
    credential: Credential,
    deadlines: Deadlines,
) -> ToolOutput:
    """Exceptions propagate to the caller, which turns them into a generic error with a reference id; a
    handler still running after its timeout is cancelled (TimeoutError)."""
    work = function(args, credential) if _is_async(function) else _in_worker_thread(function, args, credential)
    return ToolOutput.from_value(await deadlines.run(handler.timeout, work))


async def _in_worker_thread(function: Callable[..., Any], args: Mapping[str, Any], credential: Credential) -> Any:
    value = await anyio.to_thread.run_sync(function, args, credential, abandon_on_cancel=True)
    return await value if inspect.isawaitable(value) else value


@functools.cache
def _is_async(function: Callable[..., Any]) -> bool:
    """Asked on every call of the few entrypoints a catalog has: the answer is kept."""
    return inspect.iscoroutinefunction(function)
