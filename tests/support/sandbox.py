"""Helpers for the tests of the upstreams' sandbox.

- `folder_outside_tmp()`: a temporary folder that is not under /tmp. Every sandbox has a /tmp of its own, so
  whatever lies under the host's /tmp is hidden anyway; a data folder out there shows that the sandbox hides
  it on purpose.
- `is_running(name)`: whether a process of that name is alive.
- `host_pid(name)`: the pid, as the host sees it, of the process that named itself `name` (its comm). A
  sandboxed process has a pid namespace of its own: the pid it knows means nothing outside.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROC = Path("/proc")


@contextmanager
def folder_outside_tmp() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="credgate-test-", dir="/var/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def host_pid(name: str) -> int:
    """The pid of the live process whose comm is `name` (a fixture upstream's `pid` or `name` tool gives it)."""
    found = _named(name)
    assert len(found) == 1, f"{len(found)} processes named {name!r}"
    return found[0]


def is_running(name: str) -> bool:
    """Whether a process whose comm is `name` is alive."""
    return bool(_named(name))


def _named(name: str) -> list[int]:
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue  # gone meanwhile
            if comm == name:
                found.append(int(entry.name))
    return found
