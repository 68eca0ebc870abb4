"""A tool's arguments against its inputSchema: jsonschema decides, after a quick acceptance test for the flat
schemas most tools declare.

jsonschema builds a validator object for every nested schema it enters, on every call (`descend` → `evolve`): for a
small schema that is a third of the gateway's own work on a call. Most tools declare an object of typed, flat
properties; for such a schema `quick_acceptance` compiles the checks once. On a call it answers "valid" or "not
sure", and never "valid" for arguments jsonschema rejects (tests/test_arguments.py holds the two side by side).
"Not sure" (every invalid argument, every schema of another shape) goes to jsonschema, which rejects with its
message or accepts. Arguments arrive decoded from JSON; a value of any other Python type is "not sure".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema

__all__ = [
    "ANNOTATIONS",
    "ANY_JSON",
    "LIMITS",
    "MAX_ARGUMENT_ERROR",
    "PYTHON_TYPES",
    "TOP_KEYWORDS",
    "VALUE_KEYWORDS",
    "Acceptance",
    "ArgumentCheck",
    "ValueCheck",
    "quick_acceptance",
]

MAX_ARGUMENT_ERROR = 300

Acceptance = Callable[[Mapping[str, Any]], bool]  # True: valid; False: not sure
ValueCheck = Callable[[Any], bool]

# (`format` asserts nothing here: the validator has no format checker)
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly", "format"}
)
TOP_KEYWORDS = frozenset({*ANNOTATIONS, "$schema", "type", "properties", "required", "additionalProperties"})
LIMITS = frozenset({"minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
VALUE_KEYWORDS = frozenset({*ANNOTATIONS, *LIMITS, "type", "enum"})
# JSON Schema's types as the JSON decoder makes them; exact types only (bool is not an integer, and an integral
# float, an integer to jsonschema, is left to it)
PYTHON_TYPES: dict[str, frozenset[type]] = {
    "string": frozenset({str}),
    "integer": frozenset({int}),
    "number": frozenset({int, float}),
    "boolean": frozenset({bool}),
    "null": frozenset({type(None)}),
    "object": frozenset({dict}),
    "array": frozenset({list}),
}
ANY_JSON = frozenset().union(*PYTHON_TYPES.values())


def quick_acceptance(schema: Mapping[str, Any]) -> Acceptance | None:
    """The quick test for a schema of the flat shape (an object whose properties have a type, an enum of strings,
    length or range limits); None for any other schema."""
    if not isinstance(schema, Mapping) or not schema.keys() <= TOP_KEYWORDS or schema.get("type", "object") != "object":
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    open_ = schema.get("additionalProperties", True)  # others than the properties allowed
    if not isinstance(properties, Mapping) or not isinstance(required, list) or not isinstance(open_, bool):
        return None
    checks: dict[str, ValueCheck] = {}
    for name, subschema in properties.items():
        check = _value_check(subschema)
        if check is None:
            return None
        checks[name] = check
    needed = tuple(required)

    def accepts(args: Mapping[str, Any]) -> bool:
        for key, value in args.items():
            check = checks.get(key)
            if check is None:
                if open_ and _accept_json(value):
                    continue
                return False
            if not check(value):
                return False
        return all(name in args for name in needed)

    return accepts


def _accept_json(value: Any) -> bool:
    return type(value) in ANY_JSON


def _value_check(schema: Any) -> ValueCheck | None:
    if schema is True or schema == {}:
        return _accept_json
    if not isinstance(schema, Mapping) or not schema.keys() <= VALUE_KEYWORDS:
        return None
    declared = schema.get("type")
    names = [declared] if isinstance(declared, str) else declared
    if names is None:
        allowed = ANY_JSON
    elif isinstance(names, list) and names and all(n in PYTHON_TYPES for n in names):
        allowed = frozenset().union(*(PYTHON_TYPES[n] for n in names))
    else:
        return None
    enum = schema.get("enum")
    if enum is not None and not (isinstance(enum, list) and all(isinstance(e, str) for e in enum)):
        return None
    choices = frozenset(enum) if enum is not None else None
    limits = {keyword: schema[keyword] for keyword in LIMITS if keyword in schema}
    if not all(type(limit) in (int, float) for limit in limits.values()):
        return None
    shortest: float = limits.get("minLength", 0)
    longest: float = limits.get("maxLength", math.inf)
    low: float = limits.get("minimum", -math.inf)
    above: float = limits.get("exclusiveMinimum", -math.inf)
    high: float = limits.get("maximum", math.inf)
    below: float = limits.get("exclusiveMaximum", math.inf)

    def check(value: Any) -> bool:
        kind = type(value)
        if kind not in allowed:
            return False
        if choices is not None:
            return kind is str and value in choices and shortest <= len(value) <= longest
        if kind is str:
            return shortest <= len(value) <= longest
        if kind is int or kind is float:  # NaN and the infinities fail here (the exclusive bounds default to ±inf)
            number: float = value
            return low <= number <= high and above < number < below
        return True

    return check


class ArgumentCheck:
    """One tool's argument check, prepared once."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._validator = jsonschema.Draft202012Validator(schema)
        self._quick = quick_acceptance(schema)

    def problem(self, args: Mapping[str, Any]) -> str | None:
        """None for valid arguments; else what is wrong (the first argument in order), at most
        MAX_ARGUMENT_ERROR characters."""
        if self._quick is not None and self._quick(args):
            return None
        if self._validator.is_valid(args):
            return None
        errors = sorted(self._validator.iter_errors(args), key=lambda e: list(e.absolute_path))
        return _describe(errors[0])


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    where = f"argument {path!r}" if path else "arguments"
    text = f"{where}: {error.message}"
    return text if len(text) <= MAX_ARGUMENT_ERROR else text[: MAX_ARGUMENT_ERROR - 1] + "…"
