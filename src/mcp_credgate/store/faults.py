"""What went wrong under a SQLite store, said truthfully in one line with what to do: the disk full, a read-only
filesystem, a permission, an I/O error (issue 26). An operator told that an intact store "is not a store"
restores a backup over good data.

SQLite names most of these by its error code; a full disk often shows as an I/O error only (the `-shm` file
that cannot grow), so the disk's free space is looked at too. Only `stat`, `statvfs` and `access` are used: no
file of the database is opened here (see `sqlite`).
"""

from __future__ import annotations

import errno
import os
import pwd
import sqlite3
import stat
from pathlib import Path

from ..errors import StoreFaultError

__all__ = ["LOW_SPACE", "os_fault", "sqlite_fault"]

LOW_SPACE = 256 * 1024  # bytes free under which a write failure is taken for a full disk


def sqlite_fault(path: Path, exc: sqlite3.Error) -> StoreFaultError | None:
    """The fault behind SQLite's error on the database at `path`; None for an error that is not one of the
    disk, filesystem or permissions (a bad statement, a damaged file: said as SQLite says it)."""
    code = getattr(exc, "sqlite_errorname", "") or ""
    if code == "SQLITE_FULL" or (code.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) and _low_space(path.parent)):
        return _full(path.parent)
    if code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return _unwritable(path) or StoreFaultError(f"cannot open {path} ({code}): check the folder and its files")
    if code.startswith("SQLITE_IOERR"):
        return StoreFaultError(
            f"I/O error on {path} ({code}): the disk or its filesystem failed; check them (`dmesg`), then retry"
        )
    return None


def os_fault(path: Path, exc: OSError) -> StoreFaultError:
    """An operating system error on a file of the store (its folder, the database, the key file)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _full(path.parent)
    if exc.errno == errno.EROFS:
        return _read_only(path.parent)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _unwritable(path) or StoreFaultError(f"permission denied on {path}{_mode_and_owner(path)}")
    return StoreFaultError(f"cannot use {path}: {exc.strerror or exc}")


def _low_space(folder: Path) -> bool:
    try:
        found = os.statvfs(folder)
    except OSError:
        return False
    return found.f_bavail * found.f_frsize < LOW_SPACE


def _full(folder: Path) -> StoreFaultError:
    free = ""
    try:
        found = os.statvfs(folder)
        free = f" ({found.f_bavail * found.f_frsize // 1024} KiB free)"
    except OSError:
        pass
    return StoreFaultError(
        f"the disk holding {folder} is full{free}: free some space there, then retry (the disk failed, not the "
        "store: do not restore a backup for this)"
    )


def _read_only(folder: Path) -> StoreFaultError:
    return StoreFaultError(
        f"{folder} is on a read-only filesystem: remount it read-write to change anything (the filesystem refused, "
        "not the store: do not restore a backup for this)"
    )


def _unwritable(path: Path) -> StoreFaultError | None:
    """The first of the folder, the database and its `-wal`/`-shm` files this process may not read and write
    (a read-only filesystem, or the file's mode and owner); None when all of them may be."""
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return _read_only(folder)
    except OSError:
        pass
    candidates = [folder, path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    for candidate in candidates:
        if not os.path.lexists(candidate) and candidate != folder:
            continue
        wanted = os.R_OK | os.W_OK | (os.X_OK if candidate == folder else 0)
        if not os.access(candidate, wanted):
            user = _user_name(os.geteuid())
            return StoreFaultError(
                f"permission denied on {candidate}{_mode_and_owner(candidate)}; credgate runs as {user}: give it "
                "read and write access there (chown or chmod), then retry"
            )
    return None


def _mode_and_owner(path: Path) -> str:
    try:
        found = path.stat()
    except OSError:
        return ""
    return f" (mode {stat.S_IMODE(found.st_mode):04o}, owner {_user_name(found.st_uid)})"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
