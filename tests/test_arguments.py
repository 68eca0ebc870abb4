"""The argument check: the quick acceptance test never accepts what jsonschema rejects, and accepts the valid
arguments of flat schemas; jsonschema decides (with its message) everything else."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mcp_credgate.arguments import PYTHON_TYPES, ArgumentCheck, quick_acceptance

pytestmark = pytest.mark.no_store  # never touches a store: runs once, not per backend

NAMES = ["a", "b", "c", "text", "n"]
type_names = st.sampled_from(sorted(PYTHON_TYPES))
numbers = st.one_of(st.integers(-5, 5), st.floats(-5, 5, allow_nan=False), st.integers(-(2**70), 2**70))
short_text = st.text(alphabet="ab\u00e9\U0001f600", max_size=4)


@st.composite
def value_schemas(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([True, {}]))
    schema: dict[str, Any] = {}
    if draw(st.booleans()):
        schema["type"] = draw(st.one_of(type_names, st.lists(type_names, min_size=1, max_size=3, unique=True)))
    if draw(st.integers(0, 3)) == 0:
        schema["enum"] = draw(st.lists(short_text, min_size=1, max_size=4, unique=True))
    for keyword in ("minLength", "maxLength"):
        if draw(st.integers(0, 3)) == 0:
            schema[keyword] = draw(st.integers(0, 4))
    for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if draw(st.integers(0, 3)) == 0:
            schema[keyword] = draw(numbers)
    if draw(st.integers(0, 3)) == 0:
        schema[draw(st.sampled_from(["description", "title", "format", "default"]))] = "x"
    return schema


@st.composite
def flat_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if draw(st.booleans()):
        schema["type"] = "object"
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4))
    if len(names) > 0 or draw(st.booleans()):
        schema["properties"] = {name: draw(value_schemas()) for name in names}
    if draw(st.booleans()):
        schema["required"] = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3))
    if draw(st.booleans()):
        schema["additionalProperties"] = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)  # as declarations are checked when loaded
    return schema


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.floats(), short_text),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
    max_leaves=6,
)


def near_the_limits(schema: Any) -> st.SearchStrategy[Any]:
    """Any JSON value, or one on or beside a limit of the schema: where a wrong comparison would show."""
    if not isinstance(schema, dict):
        return json_values
    limits = [schema[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema]
    near = [n + d for n in limits for d in (-1, -0.5, 0, 0.5, 1)] + [float(n) for n in limits]
    lengths = [schema[k] + d for k in ("minLength", "maxLength") if k in schema for d in (-1, 0, 1)]
    texts = ["é" * n for n in lengths if n >= 0] + list(schema.get("enum", []))
    edges = st.sampled_from([*near, *texts, None, True, 0, ""])
    return st.one_of(edges, edges, json_values)


@st.composite
def arguments_for(draw: st.DrawFn, schema: dict[str, Any]) -> dict[str, Any]:
    """Mostly the schema's properties (each with a value on or beside its limits), sometimes others."""
    properties = schema.get("properties", {})
    names = [name for name in properties if draw(st.integers(0, 4))]
    names += draw(st.lists(st.sampled_from([*NAMES, "other"]), unique=True, max_size=2))
    return {name: draw(near_the_limits(properties.get(name))) for name in names}


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_quick_test_accepts_only_arguments_that_jsonschema_accepts(data: st.DataObject) -> None:
    schema = data.draw(flat_schemas())
    args = data.draw(arguments_for(schema))
    quick = quick_acceptance(schema)
    assert quick is not None, schema  # every schema of the flat shape has one
    valid = jsonschema.Draft202012Validator(schema).is_valid(args)
    accepted = quick(args)
    event(f"valid={valid} quick={accepted}")
    assert valid or not accepted, (schema, args)
    assert (ArgumentCheck(schema).problem(args) is None) == valid


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_for_one_value_too_the_quick_test_accepts_only_what_jsonschema_accepts(data: st.DataObject) -> None:
    """One property at a time: every value drawn is on or beside that property's limits."""
    schema: dict[str, Any] = {"type": "object", "properties": {"a": data.draw(value_schemas())}}
    args = {"a": data.draw(near_the_limits(schema["properties"]["a"]))}
    quick = quick_acceptance(schema)
    assert quick is not None
    accepted = quick(args)
    event(f"accepted={accepted}")
    assert jsonschema.Draft202012Validator(schema).is_valid(args) or not accepted, (schema, args)


ECHO = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "description": "what"}}}
SEARCH = {
    "type": "object",
    "additionalProperties": False,
    "required": ["query"],
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 200},
        "limit": {"type": "integer", "minimum": 1, "maximum": 50},
        "units": {"type": "string", "enum": ["metric", "imperial"]},
        "score": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "flags": {"type": "array"},
        "anything": True,
    },
}


@pytest.mark.parametrize(
    ("schema", "args"),
    [
        (ECHO, {"text": "hello"}),
        (ECHO, {"text": "", "extra": [1, {"x": None}]}),
        (SEARCH, {"query": "q"}),
        (SEARCH, {"query": "q" * 200, "limit": 50, "units": "imperial", "score": 0.5, "flags": [], "anything": {}}),
        (SEARCH, {"query": "q", "limit": 1, "score": None, "anything": None}),
        ({}, {"whatever": 1}),
        ({"type": "object"}, {}),
    ],
)
def test_valid_arguments_of_flat_schemas_are_accepted_quickly(schema: dict[str, Any], args: Any) -> None:
    quick = quick_acceptance(schema)
    assert quick is not None and quick(args)
    assert ArgumentCheck(schema).problem(args) is None


@pytest.mark.parametrize(
    "args",
    [
        {"query": "q", "limit": 1.0},  # an integer to jsonschema: it decides
        {"query": "q", "limit": 2**80},  # too large for a float, and over the maximum
        {"query": "q", "score": float("nan")},
        {"query": "q", "limit": True},  # a boolean is not an integer
        {"query": ""},
        {"query": "q", "units": "kelvin"},
        {"query": "q", "unknown": 1},
        {"limit": 3},
    ],
)
def test_edge_values_are_left_to_jsonschema(args: dict[str, Any]) -> None:
    quick = quick_acceptance(SEARCH)
    assert quick is not None and not quick(args)
    valid = jsonschema.Draft202012Validator(SEARCH).is_valid(args)
    assert (ArgumentCheck(SEARCH).problem(args) is None) == valid


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"type": "string"}}},
        {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}},
        {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}},
        {"type": "object", "allOf": [{"required": ["a"]}]},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": ["object", "null"]},
        {"type": "object", "properties": {"a": {"enum": ["x", 1]}}},
        {"type": "object", "properties": {"a": {"const": "x"}}},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^a"}}},
        {"type": "object", "properties": {"a": False}},
        {"type": "object", "x-vendor": True},
    ],
)
def test_schemas_of_another_shape_are_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert quick_acceptance(schema) is None


def test_the_problem_names_the_first_argument_in_order_and_is_bounded() -> None:
    check = ArgumentCheck(SEARCH)
    assert check.problem({"query": "", "limit": 0}) == "argument 'limit': 0 is less than the minimum of 1"
    assert check.problem({}) == "arguments: 'query' is a required property"
    long = check.problem({"query": "q", "units": "x" * 1000})
    assert long is not None and len(long) == 300 and long.endswith("…")
