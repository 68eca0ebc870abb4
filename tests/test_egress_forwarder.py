"""The egress sandbox's pid 1 (issue 27), run alone, without a sandbox: `python -I -S egress_forwarder.py PORT
SOCKET -- COMMAND...` exits as its command does, passes signals on, listens before the command starts and
copies TCP connections to a Unix socket and back.

Each test runs the forwarder's file as the sandbox does (the venv's Python, `-I -S`: no site-packages), with a
free port of the host's loopback and a Unix socket under a short temporary folder.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_credgate import egress_forwarder

pytestmark = pytest.mark.no_store

FORWARDER = Path(egress_forwarder.__file__)
TIMEOUT = 30


def forwarder(port: int, unix_path: Path | str, *command: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-I", "-S", str(FORWARDER), str(port), str(unix_path), "--", *command]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


WAIT_FOR_TERM = python(
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def short_folder() -> Iterator[Path]:
    """A folder whose socket paths stay under the 108 bytes a Unix socket's address may hold."""
    with tempfile.TemporaryDirectory(prefix="fwd-") as folder:
        yield Path(folder)


class ReversingServer:
    """A Unix socket server that reads a whole request, up to its end of file, and answers it reversed: only a
    forwarder that passes the client's half-close on gets an answer."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.thread = threading.Thread(target=self._serve_one, daemon=True)
        self.thread.start()

    def _serve_one(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            request = b""
            while chunk := connection.recv(65536):
                request += chunk
            connection.sendall(request[::-1])

    def close(self) -> None:
        self.listener.close()


def test_it_exits_with_its_commands_exit_status(short_folder: Path) -> None:
    done = forwarder(free_port(), short_folder / "none.sock", "sh", "-c", "exit 7")

    assert done.wait(TIMEOUT) == 7


def test_a_command_killed_by_a_signal_makes_it_exit_with_128_plus_the_signal(short_folder: Path) -> None:
    done = forwarder(free_port(), short_folder / "none.sock", "sh", "-c", "kill -KILL $$")

    assert done.wait(TIMEOUT) == 128 + signal.SIGKILL


def test_the_commands_stdin_and_stdout_are_its_own_passed_through_untouched(short_folder: Path) -> None:
    process = forwarder(free_port(), short_folder / "none.sock", "sh", "-c", "read line; echo got:$line")

    out, _ = process.communicate("a line\n", timeout=TIMEOUT)

    assert out == "got:a line\n" and process.returncode == 0


def test_sigterm_to_the_forwarder_reaches_the_command(short_folder: Path) -> None:
    process = forwarder(free_port(), short_folder / "none.sock", *WAIT_FOR_TERM)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"

    process.send_signal(signal.SIGTERM)

    assert process.wait(TIMEOUT) == 42  # the command's own handler ran: not the forwarder killed


def test_the_port_is_listened_on_before_the_command_starts(short_folder: Path) -> None:
    port = free_port()
    take_the_port = python(
        "import socket, sys\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "try:\n"
        f"    s.bind(('127.0.0.1', {port}))\n"
        "except OSError as exc:\n"
        "    print(exc.errno == __import__('errno').EADDRINUSE)\n"
        "else:\n"
        "    print('bound')\n"
    )

    out, _ = forwarder(port, short_folder / "none.sock", *take_the_port).communicate(timeout=TIMEOUT)

    assert out == "True\n"


def test_a_tcp_connection_is_copied_to_the_unix_socket_and_back_half_close_included(short_folder: Path) -> None:
    path = short_folder / "proxy.sock"
    server = ReversingServer(path)
    port = free_port()
    process = forwarder(port, path, *WAIT_FOR_TERM)
    request = bytes(range(256)) * 1024  # more than one read and one socket buffer
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"  # listening since before
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)  # the server answers only once it reads the end
            reply = b""
            while chunk := client.recv(65536):
                reply += chunk
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(TIMEOUT)
        server.close()

    assert reply == request[::-1]
    assert process.returncode == 42


def test_a_connection_while_the_proxy_is_gone_is_closed_and_the_forwarder_keeps_serving(short_folder: Path) -> None:
    port = free_port()
    process = forwarder(port, short_folder / "none.sock", *WAIT_FOR_TERM)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
                assert client.recv(1) == b""
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(TIMEOUT)


def test_a_wrong_usage_is_one_line_and_exit_status_2() -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(FORWARDER), "3128", "/x.sock", "sh"], capture_output=True, text=True
    )

    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "usage" in done.stderr


def test_a_command_that_cannot_start_exits_127_in_one_line(short_folder: Path) -> None:
    process = forwarder(free_port(), short_folder / "none.sock", str(short_folder / "no-such-command"))

    _, err = process.communicate(timeout=TIMEOUT)

    assert process.returncode == 127 and err.count("\n") == 1
