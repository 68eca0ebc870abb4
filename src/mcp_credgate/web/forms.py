"""What the dashboard's forms carry: a credential type's inputs, the values filled in, the problems to show
next to each input (never a value)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..declarations import NAME_PATTERN, CredentialField, CredentialSpec
from ..errors import CredentialValueError


def name_errors(name: str) -> dict[str, str]:
    if not re.fullmatch(NAME_PATTERN, name):
        return {"name": "name: 1 to 64 letters, digits, '_' or '-'"}
    return {}


def fields_of(spec: CredentialSpec) -> list[CredentialField]:
    """The fields a person fills in (not those only credgate writes)."""
    return [f for f in spec.fields if f.name not in spec.managed_fields]


def form_values(spec: CredentialSpec, form: Mapping[str, Any]) -> dict[str, str]:
    """The fields the form filled in. An empty input is no value: for a secret, the stored one stays."""
    values = {}
    for f in fields_of(spec):
        raw = form.get(f"field_{f.name}")
        if isinstance(raw, str) and raw != "":
            values[f.name] = raw
    return values


def plain(spec: CredentialSpec, values: Mapping[str, str]) -> dict[str, str]:
    """What a form may show again after an error: the values of fields that are not secret."""
    return {k: v for k, v in values.items() if k not in spec.secret_fields}


def value_errors(
    spec: CredentialSpec, values: Mapping[str, str], *, complete: bool, connect: bool = False
) -> dict[str, str]:
    """Each field's problem, to show next to its input (never the value). The rule is the type's own,
    `CredentialSpec.validate_values`, asked field by field so that each error lands beside its field; a
    required field left empty reads "required" ("required to connect" when the provider is to bring the
    tokens: connecting needs the client, not the tokens)."""
    errors = {}
    for name, value in values.items():
        try:
            spec.validate_values({name: value}, complete=False)
        except CredentialValueError as exc:
            errors[name] = str(exc)
    if complete or connect:
        token_field = spec.oauth.field if connect and spec.oauth else None
        missing = "required to connect" if connect else "required"
        for name in spec.missing_fields(values):
            if name != token_field:
                errors.setdefault(name, missing)
    return errors
