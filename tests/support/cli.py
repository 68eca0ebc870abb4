"""The CLI as the tests drive it: the runner types of the `run_cli`/`run_credgate` fixtures and the checks of a
command's outcome (ok, refused in one line, usage error)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from click.testing import Result

CliRun = Callable[..., Result]
"""`run_cli(*args, input=..., env=...)`: `credgate --home HOME --tools-dir TOOLS ARGS...` in-process."""
ProcRun = Callable[..., subprocess.CompletedProcess[str]]
"""`run_credgate(*args, input=..., env=..., timeout=...)`: the same as a real `python -m mcp_credgate` process."""


def out(result: Result) -> str:
    """Everything the command printed, stdout then stderr."""
    return result.stdout + result.stderr


def assert_ok(result: Result) -> None:
    """Exit 0 and no traceback."""
    assert result.exit_code == 0, out(result)
    assert "Traceback" not in out(result)


def assert_refused(result: Result, *expected: str) -> str:
    """Exit 1, exactly one line on stderr holding each expected text, no traceback, no "internal error"; the line."""
    assert result.exit_code == 1, out(result)
    assert "Traceback" not in out(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "internal error" not in lines[0], lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def assert_usage_error(result: Result) -> None:
    """Exit 2 (click's usage error) and no traceback."""
    assert result.exit_code == 2, out(result)
    assert "Traceback" not in out(result)
