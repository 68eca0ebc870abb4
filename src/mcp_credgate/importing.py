"""Importing a file of credentials (`credgate cred import`): every record checked as `cred add` checks one, then
all of them written in one transaction, or none.

    count = import_credentials(store, spec, read, source="keys.jsonl")   # read() gives the file's records

Two passes over the file. The first checks everything without writing and without the store's write lock: each
name (its form, twice in the file, already in the store), each value against its field (the type's own rule,
`CredentialSpec.validate_values`), so a bad file is refused quickly, naming the line and the field, and never
holds up the gateways' writes. `dry_run` stops there. The second reads the file again and writes it in one
transaction, in batches (`Store.add_credentials`), each credential with its own data key; a name another process
took in between fails it, and the transaction leaves the store as it was. Progress goes to `progress`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from .credential_files import CredentialRecord
from .declarations import NAME_PATTERN, CredentialSpec
from .errors import CredentialValueError, NameTakenError
from .store import Store

__all__ = ["CHECK_PROGRESS_EVERY", "STORE_PROGRESS_FROM", "import_credentials"]

CHECK_PROGRESS_EVERY = 100_000  # lines checked between two progress lines of the first pass
STORE_PROGRESS_FROM = 10_000  # credentials from which the second pass tells its progress (every 10 %)
_LOOKUP_BATCH = 500  # names looked up in the store at once


def import_credentials(
    store: Store,
    spec: CredentialSpec,
    read: Callable[[], Iterator[CredentialRecord]],
    *,
    source: str,
    dry_run: bool = False,
    owner: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> int:
    """Check the records `read()` gives, then (unless `dry_run`) store them all in one transaction (`owner`: as
    that user's personal credentials). Returns how many there are. Raises CredentialValueError naming `source`,
    the line and the field on the first problem."""
    if owner is not None:
        store.require_user(owner)
    first_line: dict[str, int] = {}
    pending: list[CredentialRecord] = []
    for record in read():
        _checked(spec, record, source)
        if record.name in first_line:
            raise _problem(
                source, record.line, f"the name {record.name!r} is that of line {first_line[record.name]} already"
            )
        first_line[record.name] = record.line
        pending.append(record)
        if len(pending) == _LOOKUP_BATCH:
            _refuse_stored(store, pending, source)
        if len(first_line) % CHECK_PROGRESS_EVERY == 0:
            progress(f"checked {len(first_line)} credentials in {source}")
    _refuse_stored(store, pending, source)
    total = len(first_line)
    if total == 0:
        raise CredentialValueError(f"{source} holds no credential")
    if dry_run:
        return total

    reported = 0

    def stored(done: int) -> None:
        nonlocal reported
        tenth = done * 10 // total
        if total >= STORE_PROGRESS_FROM and tenth > reported:
            reported = tenth
            progress(f"stored {done} of {total} credentials ({tenth * 10}%)")

    checked = ((r.name, _checked(spec, r, source)) for r in read())
    try:
        return store.add_credentials(spec.type, checked, spec.secret_fields, owner=owner, progress=stored)
    except NameTakenError as exc:
        line = first_line.get(exc.name)
        where = f"{source}, line {line}" if line is not None else source
        raise CredentialValueError(
            f"{where}: a credential named {exc.name!r} exists already in the store (it was added meanwhile); "
            "nothing of the file was stored"
        ) from None


def _checked(spec: CredentialSpec, record: CredentialRecord, source: str) -> dict[str, str]:
    """The record's values as `cred add` would store them; CredentialValueError naming the line otherwise."""
    if not re.match(NAME_PATTERN, record.name):  # not echoed: a misplaced column may have put a value there
        raise _problem(source, record.line, "the name must be 1-64 letters, digits, _ or -")
    for name, value in record.values.items():
        field = spec.field(name)
        if field is not None and name not in spec.managed_fields:
            try:
                field.check_value(value)
            except CredentialValueError as exc:
                raise _problem(source, record.line_of(name), str(exc)) from None
    try:
        return spec.validate_values(record.values, complete=True)
    except CredentialValueError as exc:
        raise _problem(source, record.line if not record.lines else None, str(exc)) from None


def _refuse_stored(store: Store, pending: list[CredentialRecord], source: str) -> None:
    """Refuse the first of these records whose name the store has already; forget them."""
    taken = store.existing_credential_names(r.name for r in pending)
    for record in pending:
        if record.name in taken:
            raise _problem(
                source,
                record.line,
                f"a credential named {record.name!r} exists already in the store "
                f"(remove that line, or the credential with `credgate cred rm {record.name}`)",
            )
    pending.clear()


def _problem(source: str, line: int | None, text: str) -> CredentialValueError:
    return CredentialValueError(f"{source}, line {line}: {text}" if line is not None else f"{source}: {text}")
