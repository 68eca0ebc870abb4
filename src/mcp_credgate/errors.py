"""Every error credgate raises on purpose.

    CredgateError                 one line for the user; never carries a secret value
    ├── DeclarationError          a tools.d file is malformed (names file and field)
    ├── CredentialValueError      a credential value fails its type's fields (names the field)
    ├── NotFoundError             a credential, group, tool or binding does not exist
    ├── ConflictError             the change clashes with what is stored (duplicate, bound, wrong type)
    │   └── NameTakenError        a credential of that name exists already (names it, for a file's line)
    ├── StoreError                the store cannot be used as asked
    │   ├── NotInitialisedError   no store yet: run `credgate init`
    │   ├── MasterKeyError        the master key is missing, malformed or does not open the store
    │   ├── StoreBusyError        another process holds the write lock past the busy timeout
    │   └── CiphertextError       a stored value no longer opens (tampered, moved or corrupt)
    ├── GatewayError              the gateway refuses to start (no group, unknown group)
    ├── SandboxError              an upstream's sandbox cannot be set up (no bubblewrap, a path it may not
    │                             see, a full home, CREDGATE_SANDBOX neither on nor off)
    └── PlaceholderError          no placeholder can be made for a field (its pattern is too narrow for
                                  placeholders that cannot collide, or uses what cannot be drawn from)

The CLI prints `str(error)` as one line on stderr and exits 1.
"""

from __future__ import annotations

__all__ = [
    "CiphertextError",
    "ConflictError",
    "CredentialValueError",
    "CredgateError",
    "DeclarationError",
    "GatewayError",
    "MasterKeyError",
    "NameTakenError",
    "NotFoundError",
    "NotInitialisedError",
    "PlaceholderError",
    "SandboxError",
    "StoreBusyError",
    "StoreError",
    "StoreFaultError",
]


class CredgateError(Exception):
    """Root of credgate's errors. The message is shown to the user as is."""


class DeclarationError(CredgateError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems) if problems else "invalid tool declarations")


class CredentialValueError(CredgateError):
    pass


class NotFoundError(CredgateError):
    pass


class ConflictError(CredgateError):
    pass


class NameTakenError(ConflictError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a credential named {name!r} exists already (use `credgate cred update {name}`)")


class StoreError(CredgateError):
    pass


class StoreFaultError(StoreError):
    """What is under the store failed it (a disk full, a read-only filesystem, permissions; a PostgreSQL server
    that does not answer): the store itself is not in question. The message names the fault and what to do."""


class NotInitialisedError(StoreError):
    pass


class MasterKeyError(StoreError):
    pass


class StoreBusyError(StoreError):
    pass


class CiphertextError(StoreError):
    def __init__(self, credential: str, field: str | None = None) -> None:
        self.credential = credential
        self.field = field
        where = f"field {field!r} of " if field else ""
        super().__init__(
            f"{where}credential {credential!r} does not open: its stored ciphertext was altered, moved or "
            f"corrupted; set it again with `credgate cred update {credential}`"
            + ("" if field else " giving every field")
        )


class GatewayError(CredgateError):
    pass


class SandboxError(CredgateError):
    pass


class PlaceholderError(CredgateError):
    """A field's pattern admits no placeholder credgate can stand behind. The message names the field and the
    pattern (declaration text) and says why; it never holds a value."""
