"""What the serving entry points share: SIGHUP re-reads the declarations, uvicorn runs an HTTP app."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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


async def run_uvicorn(app: Any, host: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with the handler it found: make
    # that one a plain exit, so a clean SIGTERM shutdown ends with status 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        await server.serve()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)
