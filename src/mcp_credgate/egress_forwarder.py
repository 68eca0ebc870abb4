"""The egress sandbox's pid 1 (issue 27): a TCP port on the sandbox's own loopback, copied to the egress proxy's
Unix socket, which is the sandbox's only way out; the upstream runs as its child.

    python -I -S egress_forwarder.py PORT SOCKET -- COMMAND ARGS...

- listens on 127.0.0.1:PORT before the command starts, so the command cannot take the port;
- starts the command with the same stdin, stdout and stderr (the MCP pipes go straight through: never read
  here) and this environment;
- copies each accepted connection to a new connection to SOCKET and back, half-closes included (an end of file
  from one side becomes a shutdown of writing on the other);
- passes SIGTERM, SIGINT and SIGHUP on to the command; reaps every child that ends (as a namespace's pid 1 it
  inherits the orphans); exits with the command's exit status (128 + the signal that killed it) once it ends.

One thread, asyncio: every connection is two copies awaiting each other's drain (backpressure without a
thread each: threads count against the sandbox's RLIMIT_NPROC), and signals, SIGCHLD included, arrive as
callbacks on the same loop. Standard library only: it runs with `-I -S`, without the gateway's packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence

__all__ = ["main", "run"]

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_CHUNK = 65536
_USAGE = "usage: egress_forwarder.py PORT SOCKET -- COMMAND [ARGS...]"


def main(argv: Sequence[str] | None = None) -> None:
    """Parses `PORT SOCKET -- COMMAND ARGS...` and exits with the command's status (2 on a wrong usage)."""
    words = list(sys.argv[1:] if argv is None else argv)
    if len(words) < 4 or words[2] != "--" or not words[0].isdigit() or not 0 < int(words[0]) < 65536:
        print(_USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(run(int(words[0]), words[1], words[3:])))


async def run(port: int, unix_path: str, command: Sequence[str]) -> int:
    """Listens on 127.0.0.1:`port`, runs `command`, forwards connections to `unix_path` until the command
    ends; returns its exit status (127: it could not be started)."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", port))  # an address, not a name: no resolver thread
    server = await asyncio.start_server(lambda r, w: _forward(r, w, unix_path), sock=listener)
    ended: asyncio.Future[int] = loop.create_future()
    child = 0

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == child and not ended.done():
                code = os.waitstatus_to_exitcode(status)
                ended.set_result(code if code >= 0 else 128 - code)

    def pass_on(signum: int) -> None:
        if child and not ended.done():  # never pid 0: that would be this whole process group
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    loop.add_signal_handler(signal.SIGCHLD, reap)  # before the child exists: its end cannot be missed
    for signum in _FORWARDED:
        loop.add_signal_handler(signum, pass_on, signum)
    try:
        # the handlers above reset to the default in the child; SIGPIPE and SIGXFSZ, which Python ignores,
        # reset by hand
        child = os.posix_spawnp(command[0], list(command), os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    except OSError as exc:
        print(f"egress forwarder: cannot start {command[0]}: {exc.strerror}", file=sys.stderr)
        server.close()
        return 127
    try:
        return await ended
    finally:
        server.close()  # not awaited: open connections end with the loop


async def _forward(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter, unix_path: str) -> None:
    """One connection: copied both ways to a new connection to the proxy's socket until both sides are done."""
    try:
        proxy_in, proxy_out = await asyncio.open_unix_connection(unix_path)
    except OSError:
        client_out.close()  # the proxy is gone: the client sees the connection closed
        return
    try:
        await asyncio.gather(_copy(client_in, proxy_out), _copy(proxy_in, client_out))
    except OSError:
        pass  # one side reset: both are closed below
    finally:
        for writer in (proxy_out, client_out):
            writer.close()


async def _copy(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    """Bytes from `source` to `target` until its end of file, which is passed on as a shutdown of writing."""
    while data := await source.read(_CHUNK):
        target.write(data)
        await target.drain()
    if target.can_write_eof():
        target.write_eof()


if __name__ == "__main__":
    main()
