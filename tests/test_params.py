"""Parameters: schemas derived from type hints, explicit JSON Schemas, and the errors users see."""

from __future__ import annotations

import dataclasses
import enum
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import pytest

from taskrt.definitions import make_spec
from taskrt.errors import InvalidOption, ValidationError
from taskrt.params import attach, check_schema, schema_for_type


class Address(TypedDict):
    city: str
    zip: NotRequired[int]


@dataclasses.dataclass
class Item:
    sku: str
    qty: int = 1


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def _error(spec: Any, *args: Any, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        spec.validate(args, kwargs)
    return caught.value


# -- schema_for_type -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (bool, {"type": "boolean"}),
        (None, {"type": "null"}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (set[str], {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
        (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
        (
            tuple[int, str],
            {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "string"}],
                "minItems": 2,
                "maxItems": 2,
            },
        ),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Literal["a", "b"], {"enum": ["a", "b"]}),
        (Color, {"enum": ["red", "blue"]}),
        (Annotated[int, {"minimum": 1}], {"type": "integer", "minimum": 1}),
        (Any, {}),
        (object, {}),
        (int | Any, {}),  # a union with an unknown member constrains nothing
    ],
)
def test_schema_for_type(hint: Any, schema: dict[str, Any]) -> None:
    assert schema_for_type(hint) == schema


def test_typeddict_and_dataclass_schemas() -> None:
    assert schema_for_type(Address) == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    assert schema_for_type(Item) == {
        "type": "object",
        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "default": 1}},
        "required": ["sku"],
        "additionalProperties": False,
    }


# -- derived from a handler ----------------------------------------------------------


async def send(job: Any, user_id: int, name: str, tags: list[str] | None = None) -> None: ...


def test_derived_schema_skips_the_job_parameter() -> None:
    spec = attach(make_spec(send))
    assert spec.parameters == {
        "type": "object",
        "properties": {
            "user_id": {"type": "integer"},
            "name": {"type": "string"},
            "tags": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "default": None,
            },
        },
        "required": ["user_id", "name"],
        "additionalProperties": False,
        "x-positional": ["user_id", "name", "tags"],
    }


def test_yao_style_first_parameter_is_the_job_id() -> None:
    def handler(task_id: int, *args: str) -> None: ...

    spec = attach(make_spec(handler, call="id"))
    assert spec.parameters is not None
    assert spec.parameters["properties"] == {"args": {"type": "array", "items": {"type": "string"}}}
    assert spec.parameters["x-var-positional"] == "args"
    spec.validate(("a", "b"), {})
    err = _error(spec, "a", 2)
    assert err.parameter == "args[1]"
    assert "2 is not of type 'string'" in str(err)


def test_plain_handlers_keep_their_first_parameter() -> None:
    def handler(count: int) -> None: ...

    spec = attach(make_spec(handler, call="plain"))
    assert spec.parameters is not None
    assert spec.parameters["required"] == ["count"]
    assert _error(spec, "x").parameter == "count"


def test_valid_arguments_pass_positionally_and_by_keyword() -> None:
    spec = attach(make_spec(send))
    spec.validate((1, "ann"), {})
    spec.validate((), {"user_id": 1, "name": "ann", "tags": ["a"]})
    spec.validate((1,), {"name": "ann", "tags": None})


@pytest.mark.parametrize(
    ("args", "kwargs", "parameter", "fragment"),
    [
        (("1", "ann"), {}, "user_id", "'1' is not of type 'integer'"),
        ((True, "ann"), {}, "user_id", "True is not of type 'integer'"),
        ((1,), {}, "name", "missing a required argument: 'name'"),
        ((1, "ann"), {"color": "red"}, "color", "unexpected keyword argument 'color'"),
        ((1, "ann"), {"tags": ["a", 2]}, "tags", "2 is not of type"),
        ((1, "ann", None, 4), {}, None, "too many positional arguments"),
        ((1,), {"user_id": 2, "name": "x"}, "user_id", "multiple values for argument 'user_id'"),
    ],
)
def test_errors_name_the_parameter(
    args: tuple[Any, ...], kwargs: dict[str, Any], parameter: str | None, fragment: str
) -> None:
    err = _error(attach(make_spec(send)), *args, **kwargs)
    assert err.task == "send"
    assert err.parameter == parameter
    assert fragment in str(err)


def test_nested_errors_say_where_inside_the_parameter() -> None:
    def order(job: Any, items: list[Item], address: Address) -> None: ...

    spec = attach(make_spec(order))
    err = _error(spec, [{"sku": "a", "qty": "2"}], {"city": "x"})
    assert err.parameter == "items"
    assert str(err) == ("task 'order' parameter 'items': at [0].qty: '2' is not of type 'integer'")
    err = _error(spec, [], {"zip": 1})
    assert err.parameter == "address"
    assert "'city' is a required property" in str(err)


def test_var_keyword_values_are_checked_by_key() -> None:
    def handler(job: Any, **scores: float) -> None: ...

    spec = attach(make_spec(handler))
    assert spec.parameters is not None
    assert spec.parameters["additionalProperties"] == {"type": "number"}
    spec.validate((), {"a": 1, "b": 2.5})
    assert _error(spec, a="high").parameter == "a"


def test_hints_that_do_not_resolve_constrain_nothing() -> None:
    def handler(job: Any, a: UnknownName, b: int) -> None:  # type: ignore[name-defined]  # noqa: F821
        ...

    spec = attach(make_spec(handler))
    assert spec.parameters is not None
    assert spec.parameters["properties"]["a"] == {}
    spec.validate((object(), 1), {})
    assert _error(spec, object(), "1").parameter == "b"


def test_attach_is_idempotent() -> None:
    spec = attach(make_spec(send))
    assert attach(spec) is spec


# -- explicit schemas (Anchor) -----------------------------------------------------------

SEND_EMAIL = {
    "type": "object",
    "required": ["userId", "templateId"],
    "properties": {
        "userId": {"type": "integer", "format": "int32"},
        "templateId": {"type": "string"},
        "variables": {"type": "object"},
        "priority": {"type": "string", "enum": ["low", "medium", "high"]},
        "date": {"type": "string", "format": "date"},
    },
    "additionalProperties": False,
}


def _anchor(schema: dict[str, Any] = SEND_EMAIL) -> Any:
    def execute(job: Any, *args: Any, **kwargs: Any) -> None: ...

    return attach(make_spec(execute, name="SendEmail", parameters=schema))


def test_explicit_schema_accepts_keywords_or_one_object() -> None:
    spec = _anchor()
    spec.validate((), {"userId": 1, "templateId": "welcome"})
    spec.validate(({"userId": 1, "templateId": "welcome", "variables": {"n": 1}},), {})


@pytest.mark.parametrize(
    ("args", "kwargs", "parameter", "fragment"),
    [
        ((), {"userId": 1}, "templateId", "'templateId' is a required property"),
        ((), {"userId": "1", "templateId": "w"}, "userId", "'1' is not of type 'integer'"),
        ((), {"userId": 2**31, "templateId": "w"}, "userId", "is not a 'int32'"),
        ((), {"userId": 1, "templateId": "w", "prio": 1}, "prio", "('prio' was unexpected)"),
        ((), {"userId": 1, "templateId": "w", "priority": "urgent"}, "priority", "is not one of"),
        ((), {"userId": 1, "templateId": "w", "date": "2024-13-45"}, "date", "is not a 'date'"),
        ((), {"userId": 1, "templateId": "w", "variables": [1]}, "variables", "not of type"),
        ((1, 2), {}, None, "takes keyword arguments (or one object)"),
    ],
)
def test_explicit_schema_errors(
    args: tuple[Any, ...], kwargs: dict[str, Any], parameter: str | None, fragment: str
) -> None:
    err = _anchor().validate
    with pytest.raises(ValidationError) as caught:
        err(args, kwargs)
    assert caught.value.parameter == parameter
    assert fragment in str(caught.value)


def test_explicit_schema_is_also_bound_to_a_fixed_signature() -> None:
    def handler(job: Any, userId: int) -> None: ...

    spec = attach(make_spec(handler, parameters={"type": "object"}))
    spec.validate((), {"userId": 1})
    with pytest.raises(ValidationError, match="unexpected keyword argument 'other'"):
        spec.validate((), {"userId": 1, "other": 2})


def test_array_and_single_value_schemas() -> None:
    def handler(*args: Any, **kwargs: Any) -> None: ...

    pair = attach(
        make_spec(handler, name="pair", call="plain", parameters={"type": "array", "maxItems": 2})
    )
    pair.validate((1, 2), {})
    with pytest.raises(ValidationError, match="too long"):
        pair.validate((1, 2, 3), {})
    with pytest.raises(ValidationError) as caught:
        pair.validate((), {"a": 1})
    assert caught.value.parameter == "a"

    one = attach(make_spec(handler, name="one", call="plain", parameters={"type": "string"}))
    one.validate(("x",), {})
    with pytest.raises(ValidationError, match="exactly one argument"):
        one.validate(("x", "y"), {})


def test_an_invalid_explicit_schema_is_refused_when_attached() -> None:
    with pytest.raises(InvalidOption) as caught:
        _anchor({"type": "object", "properties": {"a": {"type": "integr"}}})
    assert caught.value.field == "parameters"
    assert "properties.a.type" in str(caught.value)


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "object"}, None),
        ({"type": "nope"}, "at type"),
        ({"required": "a"}, "at required"),
        ({"$schema": "http://example.com/mine"}, "unknown $schema"),
        ([], "expected a JSON Schema object"),
        ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}, None),
    ],
)
def test_check_schema(schema: Any, fragment: str | None) -> None:
    problem = check_schema(schema)
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None and fragment in problem


@pytest.mark.parametrize("pattern", ["a{4294967296}", "a{99999999999999999999}", "(" * 1000])
def test_a_pattern_python_cannot_compile_is_not_a_regex(pattern: str) -> None:
    """jsonschema's own ``regex`` check took only ``re.error`` for a failure: a
    repeat count too large raised ``OverflowError`` (a 500 over HTTP), and deep
    nesting was reported as a schema that refers to itself without end."""

    async def rx(pattern: Annotated[str, {"format": "regex"}]) -> None:
        return None

    spec = attach(make_spec(rx, call="plain"))
    spec.validate(("a+b",), {})
    with pytest.raises(ValidationError) as refused:
        spec.validate((pattern,), {})
    assert refused.value.parameter == "pattern"
    assert "refers to itself" not in str(refused.value)


# -- a whole float where an integer is wanted (note 5) -----------------------------------


def _same(found: Any, expected: Any) -> bool:
    """Equal and of the same types all the way down (``3 == 3.0`` is not enough)."""
    if type(found) is not type(expected):
        return False
    if isinstance(expected, list | tuple):
        return len(found) == len(expected) and all(map(_same, found, expected))
    if isinstance(expected, dict):
        return found.keys() == expected.keys() and all(_same(found[k], expected[k]) for k in found)
    return bool(found == expected)


def test_a_whole_float_for_an_int_is_that_int_at_any_depth() -> None:
    """JSON Schema's ``integer`` takes ``3.0``, so a job stored it as it came and a
    handler of ``n: int`` got a float (``"ab" * 3.0`` is a TypeError): the
    arguments the job takes have the int, positional or keyword as given, in
    lists, objects and unions too; a float where a float fits stays one."""

    def handler(
        job: Any,
        n: int,
        ns: list[int],
        address: Address,
        maybe: int | None = None,
        either: int | float = 0,
        x: float = 0.0,
        anything: Any = None,
        *rest: int,
        **more: int,
    ) -> None: ...

    spec = attach(make_spec(handler))
    given_args = (3.0, [1.0, 2, 2.5e1], {"city": "x", "zip": 75001.0}, 4.0, 5.0, 6.0, 7.0, 8.0)
    given_kwargs = {"more": 9.0}
    args, kwargs = spec.validate(given_args, given_kwargs)
    assert _same(args, (3, [1, 2, 25], {"city": "x", "zip": 75001}, 4, 5.0, 6.0, 7.0, 8))
    assert _same(kwargs, {"more": 9})
    assert _same(given_args[1], [1.0, 2, 2.5e1])  # the caller's values are not changed
    args, kwargs = spec.validate((), {"n": 3.0, "ns": [], "address": {"city": "x"}})
    assert _same((args, kwargs), ((), {"n": 3, "ns": [], "address": {"city": "x"}}))
    plain = (1, [2], {"city": "x"})
    assert spec.validate(plain, {})[0] is plain  # nothing to change: the same values
    assert "3.5 is not of type 'integer'" in str(_error(spec, 3.5, [], {"city": "x"}))
    assert _error(spec, 1, [1.5], {"city": "x"}).parameter == "ns"


def test_a_whole_float_for_an_explicit_integer_is_that_int() -> None:
    spec = _anchor()
    args, kwargs = spec.validate((), {"userId": 7.0, "templateId": "w", "variables": {"n": 1.0}})
    assert _same(kwargs, {"userId": 7, "templateId": "w", "variables": {"n": 1.0}})
    args, kwargs = spec.validate(({"userId": 7.0, "templateId": "w"},), {})
    assert _same(args, ({"userId": 7, "templateId": "w"},))
    # As the integer it is, 2**31 is no int32: the check names it as such.
    assert "2147483648 is not a 'int32'" in str(_error(spec, userId=2.0**31, templateId="w"))

    def handler(*args: Any, **kwargs: Any) -> None: ...

    union = {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}
    spec = attach(make_spec(handler, name="u", call="plain", parameters=union))
    assert _same(spec.validate((1.0, "a", 2), {}), ((1, "a", 2), {}))
    number = {"anyOf": [{"type": "integer", "maximum": 0}, {"type": "number"}]}
    spec = attach(make_spec(handler, name="n", call="plain", parameters=number))
    assert _same(spec.validate((3.0,), {}), ((3.0,), {}))  # a number fits: stays a float
