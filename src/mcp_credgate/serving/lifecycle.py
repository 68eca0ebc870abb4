"""What the serving entry points share: SIGHUP re-reads the declarations while they serve."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from ..gateway import Gateway


@asynccontextmanager
async def reload_on_sighup(gateway: Gateway) -> AsyncIterator[None]:
    """While the body runs, SIGHUP re-reads tools.d (see `Gateway.reload`)."""

    async def listen() -> None:
        try:
            receiver = anyio.open_signal_receiver(signal.SIGHUP)
            with receiver as signals:
                async for _ in signals:
                    gateway.reload()
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no SIGHUP here
            logging.getLogger("credgate").debug("no SIGHUP reload in this thread")

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
