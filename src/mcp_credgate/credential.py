"""The decrypted credential a handler receives, and how secret values are shown to people."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

__all__ = ["EMPTY_CREDENTIAL", "MASK", "Credential", "mask"]

MASK = "••••"


def mask(value: str) -> str:
    """`••••` plus at most the last 4 characters, and those only for values of 12 characters or more."""
    return MASK + value[-4:] if len(value) >= 12 else MASK


class Credential(Mapping[str, str]):
    """A read-only mapping field → value. Its repr and str mask the secret fields."""

    __slots__ = ("_secret", "_values", "name", "type", "uid")

    def __init__(
        self, name: str, type_: str, values: Mapping[str, str], secret_fields: frozenset[str], uid: str = ""
    ) -> None:
        self.name = name
        self.type = type_
        self.uid = uid  # the stored record's identity: a credential deleted and added again gets a new one
        self._values = dict(values)
        self._secret = secret_fields

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def is_secret(self, field: str) -> bool:
        return field in self._secret

    def secrets(self) -> dict[str, str]:
        """Field → value of the secret fields only (what redaction must hunt for)."""
        return {k: v for k, v in self._values.items() if k in self._secret and v}

    def public_values(self) -> list[str]:
        """The values of the fields that are not secret."""
        return [v for k, v in self._values.items() if k not in self._secret]

    def only(self, fields: frozenset[str]) -> Credential:
        """The same credential with just these fields (what a handler may see)."""
        kept = {k: v for k, v in self._values.items() if k in fields}
        if len(kept) == len(self._values):
            return self
        return Credential(self.name, self.type, kept, self._secret, self.uid)

    def masked(self) -> dict[str, str]:
        return {k: mask(v) if k in self._secret else v for k, v in self._values.items()}

    def __repr__(self) -> str:
        return f"Credential(name={self.name!r}, type={self.type!r}, values={self.masked()!r})"

    __str__ = __repr__


EMPTY_CREDENTIAL = Credential("", "", {}, frozenset())
