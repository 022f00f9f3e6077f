"""Task parameters: one JSON Schema per task, and the validator that checks a job's arguments.

``attach(spec)`` gives a spec its ``parameters`` (a JSON Schema) and its
``validator(args, kwargs)``. The runtime calls it when a task is registered and
runs the validator in ``add``, before anything is stored.

Design notes (cited as "note N" where they apply):

1. **Two sources of a schema.** An explicit schema (Anchor's ``parameters``, or
   ``parameters=`` on the decorator) wins. Without one, the schema is derived
   from the handler's type hints, skipping the first parameter of ``"context"``
   and ``"id"`` handlers (the job context or id, not an argument).
2. **How arguments meet a schema.** A derived schema is checked the way Python
   calls the handler: the arguments are bound to the signature first (so
   arity errors read like Python's), then each parameter is validated against
   its own sub-schema, and the error names that parameter. An explicit schema of
   ``type: object`` describes *keyword* arguments: a job passes them as keywords
   or as one positional object (``add("SendEmail", {"userId": 1})``). An explicit
   ``type: array`` schema describes the positional arguments; any other explicit
   schema describes exactly one argument.
3. **Draft 2020-12,** unless the schema names another draft in ``$schema``.
   Every ``$ref`` (and ``$dynamicRef``) must resolve inside the schema itself
   (or to a draft's meta-schema): one that does not is refused with the schema,
   and nothing is ever fetched, neither a remote URL nor a ``file:`` one. An
   unresolvable reference met while validating is a ``ValidationError``.
   ``format`` is asserted for the formats that need no extra package (``date``,
   ``time``, ``email``, ``ipv4``, ``ipv6``, ``uuid``, ``regex``) and for the
   integer widths Anchor uses (``int32``, ``int64``); other formats annotate.
4. **Type hints understood:** ``int``, ``float``, ``str``, ``bool``, ``None``,
   ``list[X]``/``Sequence[X]``/``set[X]``/``tuple[...]``, ``dict[str, X]``/
   ``Mapping``, ``X | None``/``Optional``/``Union``, ``Literal``, ``Enum``,
   ``TypedDict``, dataclasses and ``Annotated[X, {...extra schema...}]``.
   Anything else (``Any``, a class, a hint that does not resolve) adds no
   constraint: the derived schema never rejects what the hint cannot describe.
5. **A whole float is an integer where the schema wants one.** JSON does not
   tell ``3`` from ``3.0``, and JSON Schema's ``integer`` takes both (from
   draft 6), but a handler of ``n: int`` fails on ``3.0``. So before a value is
   checked, each whole float the schema would refuse if ``integer`` meant an
   ``int`` (a failing ``type`` check that names ``integer``, found by checking
   the value that way, inside ``anyOf`` and the like too) becomes that ``int``,
   at any depth; the job stores it and the handler gets it. A whole float the
   schema takes anyway (a ``number``, ``int | float``, no constraint) stays a
   float. The value is copied where it changes, never changed in place.

The module is long because schema derivation from type hints (note 4) and
validation are one concept with one set of notes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from jsonschema import FormatChecker, TypeChecker, validators
from jsonschema.exceptions import ValidationError as SchemaViolation
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema_specifications import REGISTRY as _SPECIFICATIONS  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.exceptions import InvalidAnchor, NoSuchAnchor, PointerToNowhere, Unresolvable
from referencing.jsonschema import DRAFT202012

from .definitions import ArgsValidator, Arguments, TaskSpec
from .errors import InvalidOption, ValidationError

__all__ = [
    "FORMAT_CHECKER",
    "attach",
    "bind_check",
    "check_schema",
    "refusals",
    "schema_for_type",
    "schema_from_handler",
    "schema_problem",
    "schema_problems",
    "validator_for",
]

DRAFT = validators.Draft202012Validator
_MAX_MESSAGE = 300

FORMAT_CHECKER = FormatChecker()


@FORMAT_CHECKER.checks("regex", raises=(re.error, OverflowError, RecursionError, ValueError))
def _is_regex(instance: object) -> bool:
    """A pattern Python compiles. jsonschema's own check took only ``re.error`` for
    a failure: "a{4294967296}" (OverflowError) was a 500, deep nesting a "schema
    that refers to itself"."""
    if isinstance(instance, str):
        re.compile(instance)
    return True


@FORMAT_CHECKER.checks("int32")
def _is_int32(instance: object) -> bool:
    if isinstance(instance, bool) or not isinstance(instance, int):
        return True
    return -(2**31) <= instance < 2**31


@FORMAT_CHECKER.checks("int64")
def _is_int64(instance: object) -> bool:
    if isinstance(instance, bool) or not isinstance(instance, int):
        return True
    return -(2**63) <= instance < 2**63


def attach(spec: TaskSpec) -> TaskSpec:
    """``spec`` with ``parameters`` and ``validator`` filled in (note 1).

    A spec that already has both is returned unchanged, so attaching twice is
    harmless. An explicit schema that is not a valid JSON Schema raises
    ``InvalidOption`` naming the ``parameters`` field.
    """
    if spec.parameters is not None and spec.validator is not None:
        return spec
    if spec.parameters is None:
        schema, validator = _from_signature(spec)
        return replace(spec, parameters=schema, validator=spec.validator or validator)
    problem = check_schema(spec.parameters)
    if problem is None and not isinstance(spec.parameters, Mapping):
        problem = "expected a JSON Schema object"
    if problem is not None:
        raise InvalidOption("parameters", problem, source=spec.source)
    _check_no_loop(spec.parameters, source=spec.source)
    return replace(spec, validator=_explicit_validator(spec, spec.parameters))


def _check_no_loop(schema: Mapping[str, Any], *, source: str | None) -> None:
    """Refuse a schema that loops on any value of its shape: a ``$ref`` back to
    itself at the same place (``{"$ref": "#"}``) would otherwise fail every add
    with a ``RecursionError``. A loop reached only through a given property is
    the add's ``ValidationError`` instead (``_best_error``)."""
    compiled = validator_for(schema)
    probe: Any = {} if _shape(schema) == "object" else [] if _shape(schema) == "array" else None
    try:
        for _ in compiled.iter_errors(probe):
            pass
    except RecursionError:
        raise InvalidOption("parameters", f"the schema {_ENDLESS}", source=source) from None
    except Unresolvable:
        pass  # said when a job meets it (note 3)


def check_schema(schema: object) -> str | None:
    """``None`` when ``schema`` is a valid JSON Schema, else what is wrong with it."""
    found = schema_problem(schema)
    if found is None:
        return None
    path, message = found
    where = _render_path(path)
    return _clip(f"invalid JSON Schema{f' at {where}' if where else ''}: {message}")


SchemaProblem = tuple[list[str | int], str]
"""Where in a schema something is wrong (a path of keys and indexes), and what."""


def schema_problem(schema: object) -> SchemaProblem | None:
    """``None`` for a valid JSON Schema, else its first problem (see ``schema_problems``)."""
    found = schema_problems(schema)
    return found[0] if found else None


def schema_problems(schema: object) -> list[SchemaProblem]:
    """Every problem of ``schema`` against its draft's meta-schema, by path; ``[]`` if valid.

    Every ``$ref`` that does not resolve is one too (note 3), each at its own
    path, whatever else is wrong: a report lists all that is wrong at once.
    """
    if not isinstance(schema, Mapping):
        return [([], f"expected a JSON Schema object, found {type(schema).__name__}")]
    declared = schema.get("$schema")
    if declared is not None and (not isinstance(declared, str) or declared not in _KNOWN_DRAFTS):
        return [(["$schema"], _clip(f"unknown $schema {declared!r}; expected a JSON Schema draft"))]
    cls = validators.validator_for(schema, default=DRAFT)
    # What ``cls.check_schema`` does, but every error rather than the first.
    meta = validators.validator_for(cls.META_SCHEMA, default=cls)
    checker = meta(cls.META_SCHEMA, format_checker=meta.FORMAT_CHECKER)
    try:
        errors = list(checker.iter_errors(dict(schema)))
    except Exception as exc:  # a pathological schema the meta-schema check trips on
        return [([], _clip(f"{type(exc).__name__}: {exc}"))]
    references = _reference_problems(schema)
    at = {tuple(where) for where, _ in references}
    found = {(tuple(e.absolute_path), _clip(e.message)) for e in errors}
    found = {problem for problem in found if problem[0] not in at}
    found |= {(tuple(where), message) for where, message in references}
    return [(list(path), message) for path, message in sorted(found, key=_by_path)]


def _by_path(problem: tuple[tuple[str | int, ...], str]) -> tuple[Any, ...]:
    """Problems sorted by path (indexes as numbers), then by message: the same order each time."""
    path, message = problem
    return (tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path), message)


META_SCHEMAS: Registry[Any] = _SPECIFICATIONS
"""The drafts' own schemas, which jsonschema resolves without fetching them."""
_REFERENCES = ("$ref", "$dynamicRef")
_NOT_FETCHED = "a schema outside this one is never fetched; point inside it, like '#/$defs/name'"


def _reference_problems(schema: Mapping[str, Any]) -> list[SchemaProblem]:
    """Each ``$ref`` that does not resolve within ``schema`` (note 3), with its path.

    The subschemas are those the schema's draft says are schemas (so a ``const``
    or ``default`` value holding ``"$ref"`` is not one); each reference is
    looked up as the validator would, from the base URI in force where it is. A
    part the meta-schema refuses (``properties: 5``, an ``$id`` that is no
    string) is skipped: the meta-schema's check names it.
    """
    paths = _paths_of(schema)
    try:
        root = Resource.from_contents(schema, default_specification=DRAFT202012)
        stack = [(root, META_SCHEMAS.resolver_with_root(root))]
    except Exception:  # an unknown $schema, an $id that is no string: named by the meta-schema
        return []
    found: list[SchemaProblem] = []
    seen: set[int] = set()  # a schema that holds itself (a YAML alias) is walked once
    while stack:
        resource, resolver = stack.pop()
        contents = resource.contents
        if isinstance(contents, Mapping):
            if id(contents) in seen:
                continue
            seen.add(id(contents))
            for keyword in _REFERENCES:
                ref = contents.get(keyword)
                if not isinstance(ref, str):
                    continue
                try:
                    resolver.lookup(ref)
                except Unresolvable as exc:
                    where = [*paths.get(id(contents), []), keyword]
                    found.append((where, _clip(f"{keyword} {ref!r} does not resolve: {_why(exc)}")))
                except Exception:  # a base the meta-schema refuses: named there
                    continue
        try:
            subs = [(sub, resolver.in_subresource(sub)) for sub in resource.subresources()]
        except Exception:  # a keyword of the wrong shape: named by the meta-schema check
            continue
        stack.extend(subs)
    return found


def _why(exc: Unresolvable) -> str:
    if isinstance(exc, PointerToNowhere):
        return "this schema has nothing at that JSON pointer"
    if isinstance(exc, NoSuchAnchor):
        return f"this schema has no anchor named {exc.anchor!r}"
    if isinstance(exc, InvalidAnchor):
        return str(exc)
    return _NOT_FETCHED  # a schema the registry does not hold, and will not retrieve


def _paths_of(schema: Mapping[str, Any]) -> dict[int, list[str | int]]:
    """Where each object of ``schema`` sits, by identity (the first place, for a shared one)."""
    paths: dict[int, list[str | int]] = {}
    stack: list[tuple[Any, list[str | int]]] = [(schema, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            if id(value) in paths:
                continue
            paths[id(value)] = path
            stack.extend((item, [*path, str(key)]) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, [*path, index]) for index, item in enumerate(value))
    return paths


_KNOWN_DRAFTS = frozenset(
    uri
    for cls in (
        validators.Draft202012Validator,
        validators.Draft201909Validator,
        validators.Draft7Validator,
        validators.Draft6Validator,
        validators.Draft4Validator,
        validators.Draft3Validator,
    )
    for uri in (cls.META_SCHEMA["$schema"], cls.META_SCHEMA["$schema"].rstrip("#"))
)


def validator_for(schema: Mapping[str, Any] | bool) -> Validator:
    """A compiled validator for ``schema`` (note 3).

    Its registry retrieves nothing: a ``$ref`` outside the schema (a URL, a
    ``file:`` path) fails to resolve instead of being fetched.
    """
    cls = validators.validator_for(schema, default=DRAFT)
    return cls(schema, format_checker=FORMAT_CHECKER, registry=Registry())


def refusals(schema: Mapping[str, Any], instance: Any) -> list[str]:
    """Why ``instance`` does not fit ``schema``: every error's message, sorted; ``[]`` if it fits.

    For checks made before any job exists (a cron task's jobs have no
    parameters); a ``$ref`` that does not resolve is a message, not an error.
    """
    try:
        errors = list(validator_for(schema).iter_errors(instance))
    except Unresolvable as exc:
        ref = getattr(exc, "ref", "")
        return [_clip(f"the schema has a $ref {ref!r} that does not resolve")]
    return sorted({_message(e.message, list(e.absolute_path)) for e in errors})


def _best_error(task: str, compiled: Validator, instance: Any) -> SchemaViolation | None:
    """The error that best explains why ``instance`` fails, or ``None`` when it fits.

    A reference the schema cannot resolve (one that was not checked when the
    task was loaded, note 3) is the task's ``ValidationError``, never a raw
    ``referencing`` error.
    """
    try:
        found: SchemaViolation | None = best_match(compiled.iter_errors(instance))
    except Unresolvable as exc:
        ref = getattr(exc, "ref", "")
        raise ValidationError(
            task, _clip(f"the task's parameters schema has a $ref {ref!r} that does not resolve")
        ) from None
    except RecursionError:
        raise ValidationError(task, _LOOP) from None
    return found


_ENDLESS = "refers to itself without end (a $ref that leads back to itself, not into the value)"
_LOOP = f"the task's parameters schema {_ENDLESS}"


# -- explicit schemas (note 2) ------------------------------------------------


def _explicit_validator(spec: TaskSpec, schema: Mapping[str, Any]) -> ArgsValidator:
    compiled = validator_for(schema)
    shape = _shape(schema)
    task = spec.name
    bind = bind_check(spec)

    def validate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments | None:
        fitted: Arguments | None = None
        if shape == "object":
            if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
                instance: Any = dict(args[0])
                found = _check_object(task, compiled, instance)
                if found is not instance:
                    fitted = (found,), kwargs
            elif args:
                raise ValidationError(
                    task,
                    f"takes keyword arguments (or one object), found {len(args)} positional "
                    "argument(s)",
                )
            else:
                found = _check_object(task, compiled, kwargs)
                if found is not kwargs:
                    fitted = args, found
        elif shape == "array":
            if kwargs:
                name = sorted(kwargs)[0]
                raise ValidationError(task, "takes positional arguments only", parameter=name)
            given = list(args)
            items = _check_array(task, compiled, given)
            if items is not given:
                fitted = tuple(items), kwargs
        else:
            if kwargs or len(args) != 1:
                raise ValidationError(
                    task, f"takes exactly one argument, found {len(args) + len(kwargs)}"
                )
            found = _check_value(task, compiled, args[0], parameter=None)
            if found is not args[0]:
                fitted = (found,), kwargs
        if bind is not None:
            bind(args, kwargs)
        return fitted

    return validate


def _shape(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if kind == "object" or (kind is None and "properties" in schema):
        return "object"
    if kind == "array":
        return "array"
    return "value"


def _check_object(task: str, compiled: Validator, instance: dict[str, Any]) -> dict[str, Any]:
    """``instance`` as it fits (note 5), else ``ValidationError`` naming the property."""
    instance = _with_integers(compiled, instance)
    error = _best_error(task, compiled, instance)
    if error is None:
        return instance
    path = list(error.absolute_path)
    if path:
        raise ValidationError(task, _message(error.message, path[1:]), parameter=str(path[0]))
    parameter = _root_parameter(error.validator, error.validator_value, error.schema, instance)
    raise ValidationError(task, _clip(error.message), parameter=parameter)


def _check_array(task: str, compiled: Validator, instance: list[Any]) -> list[Any]:
    """``instance`` as it fits (note 5), else ``ValidationError`` naming the argument."""
    instance = _with_integers(compiled, instance)
    error = _best_error(task, compiled, instance)
    if error is None:
        return instance
    path = list(error.absolute_path)
    if path:
        raise ValidationError(
            task, _message(error.message, path[1:]), parameter=f"argument {path[0]}"
        )
    raise ValidationError(task, _clip(error.message))


def _check_value(task: str, compiled: Validator, value: Any, *, parameter: str | None) -> Any:
    """``value`` as it fits (note 5), else ``ValidationError`` naming ``parameter``."""
    value = _with_integers(compiled, value)
    error = _best_error(task, compiled, value)
    if error is not None:
        raise ValidationError(
            task, _message(error.message, list(error.absolute_path)), parameter=parameter
        )
    return value


def _strict_int(checker: TypeChecker, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def _strict(cls: type[Validator]) -> type[Validator]:
    """``cls`` where ``integer`` means an ``int`` (note 5)."""
    checker = cls.TYPE_CHECKER.redefine("integer", _strict_int)
    strict: type[Validator] = validators.extend(cls, type_checker=checker)  # type: ignore[no-untyped-call]
    return strict


def _with_integers(compiled: Validator, value: Any) -> Any:
    """``value`` with each whole float that ``compiled`` takes only as an integer made
    that ``int`` (note 5); ``value`` itself when there is none.

    Whatever else is wrong with ``value`` is left to the check that follows: a
    schema that cannot be followed (an endless or unresolvable ``$ref``) changes
    nothing here, and is reported there.
    """
    if not _has_whole_float(value):
        return value
    strict = _strict(type(compiled))(
        compiled.schema, format_checker=FORMAT_CHECKER, registry=Registry()
    )
    paths: set[tuple[str | int, ...]] = set()
    try:
        errors = list(strict.iter_errors(value))
    except (Unresolvable, RecursionError):
        return value
    while errors:
        error = errors.pop()
        errors.extend(error.context or ())
        if error.validator == "type" and _is_whole_float(error.instance):
            wanted = error.validator_value
            if wanted == "integer" or (isinstance(wanted, list) and "integer" in wanted):
                paths.add(tuple(error.absolute_path))
    return _ints_at(value, paths) if paths else value


def _is_whole_float(value: object) -> bool:
    return type(value) is float and value.is_integer()


def _has_whole_float(value: Any) -> bool:
    """Whether a whole float is anywhere in ``value`` (a walk, not a recursion: any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            if item.is_integer():
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


def _ints_at(value: Any, paths: set[tuple[str | int, ...]]) -> Any:
    """A copy of ``value`` with the whole float at each of ``paths`` an ``int``; the
    lists and objects on no path are shared, not copied."""
    if () in paths:
        return int(value) if _is_whole_float(value) else value
    below: dict[str | int, set[tuple[str | int, ...]]] = {}
    for path in paths:
        below.setdefault(path[0], set()).add(path[1:])
    copy: Any = list(value) if isinstance(value, list) else dict(value)
    for key, rest in below.items():
        copy[key] = _ints_at(value[key], rest)
    return copy


def _root_parameter(
    keyword: object, value: object, schema: object, instance: Mapping[str, Any]
) -> str | None:
    """The property a root-level error is about (a missing or an unexpected one)."""
    if keyword == "required" and isinstance(value, list):
        missing = [name for name in value if name not in instance]
        return str(missing[0]) if missing else None
    if keyword in ("additionalProperties", "unevaluatedProperties") and isinstance(schema, Mapping):
        known = set(schema.get("properties", {}) or {})
        patterns = list((schema.get("patternProperties") or {}).keys())
        extra = sorted(
            key
            for key in instance
            if key not in known and not any(_safe_search(p, key) for p in patterns)
        )
        return extra[0] if extra else None
    if keyword == "dependentRequired" and isinstance(value, Mapping):
        for trigger, needed in value.items():
            if trigger in instance and isinstance(needed, list):
                for name in needed:
                    if name not in instance:
                        return str(name)
    return None


def _safe_search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


# -- derived schemas (notes 2 and 4) ------------------------------------------


def schema_from_handler(handler: Callable[..., Any], *, skip_first: bool) -> dict[str, Any]:
    """The JSON Schema of ``handler``'s arguments, from its type hints."""
    return _derive(handler, skip_first=skip_first)[0]


def _signature_params(
    handler: Callable[..., Any], *, skip_first: bool
) -> tuple[inspect.Signature, list[inspect.Parameter]] | None:
    try:
        sig = inspect.signature(handler)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if (
        skip_first
        and params
        and params[0].kind
        in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ):
        params = params[1:]
    return sig.replace(parameters=params), params


def _derive(
    handler: Callable[..., Any], *, skip_first: bool
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], inspect.Signature | None]:
    found = _signature_params(handler, skip_first=skip_first)
    if found is None:
        return {}, {}, None
    sig, params = found
    hints = _hints(handler)
    properties: dict[str, Any] = {}
    required: list[str] = []
    order: list[str] = []
    extra: Any = False
    var_positional: str | None = None
    per_param: dict[str, dict[str, Any]] = {}
    for param in params:
        hint = hints.get(param.name, inspect.Parameter.empty)
        item = {} if hint is inspect.Parameter.empty else schema_for_type(hint)
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = item if item else True
            per_param[param.name] = item
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            per_param[param.name] = item
            properties[param.name] = {"type": "array", "items": item} if item else {"type": "array"}
            var_positional = param.name
            continue
        schema = dict(item)
        if param.default is not inspect.Parameter.empty:
            if _is_json(param.default):
                schema["default"] = param.default
        else:
            required.append(param.name)
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            order.append(param.name)
        properties[param.name] = schema
        per_param[param.name] = item
    result: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        result["required"] = required
    result["additionalProperties"] = extra
    if order:
        # Positional order, for clients that pass arguments as a list.
        result["x-positional"] = order
    if var_positional is not None:
        # ``*args``: the property of that name holds the extra positional arguments.
        result["x-var-positional"] = var_positional
    return result, per_param, sig


def _from_signature(spec: TaskSpec) -> tuple[dict[str, Any], ArgsValidator]:
    schema, per_param, sig = _derive(spec.handler, skip_first=spec.call != "plain")
    task = spec.name
    if sig is None:
        # No signature to bind (a builtin, say): accept anything.
        return schema, lambda args, kwargs: None
    compiled = {name: validator_for(item) for name, item in per_param.items() if item}
    quick = {name: _quick_check(item) for name, item in per_param.items() if item}
    kinds = {name: p.kind for name, p in sig.parameters.items()}
    # The common shape, all positional-or-keyword without defaults, binds
    # positional arguments by position without ``Signature.bind`` (hot path).
    plain_names = tuple(
        p.name
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        and p.default is inspect.Parameter.empty
    )
    simple = len(plain_names) == len(sig.parameters)

    def validate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments | None:
        if simple and not kwargs and len(args) == len(plain_names):
            if not compiled:
                return None  # bound, and nothing to check (no parameter is annotated)
            arguments: Mapping[str, Any] = dict(zip(plain_names, args, strict=True))
        else:
            arguments = _bind(task, sig, args, kwargs).arguments
        fitted: dict[str, Any] = {}
        for name, value in arguments.items():
            check = compiled.get(name)
            if check is None or value is LATER:
                continue
            fast = quick.get(name)
            if fast is not None and fast(value):
                continue
            kind = kinds[name]
            if kind is inspect.Parameter.VAR_POSITIONAL:
                found: Any = tuple(
                    _check_value(task, check, item, parameter=f"{name}[{index}]")
                    for index, item in enumerate(value)
                )
                changed = any(a is not b for a, b in zip(found, value, strict=True))
            elif kind is inspect.Parameter.VAR_KEYWORD:
                found = {
                    key: _check_value(task, check, item, parameter=key)
                    for key, item in value.items()
                }
                changed = any(found[key] is not item for key, item in value.items())
            else:
                found = _check_value(task, check, value, parameter=name)
                changed = found is not value
            if changed:
                fitted[name] = found
        return _put_back(sig, args, kwargs, fitted) if fitted else None

    return schema, validate


def _put_back(
    sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any], fitted: dict[str, Any]
) -> Arguments:
    """``args`` and ``kwargs`` with the values of ``fitted`` (bound arguments by
    parameter name) where they were given: each stays positional or keyword as it was."""
    positional: list[str] = []
    by_keyword: set[str] = set()
    rest_args = rest_kwargs = ""
    for param in sig.parameters.values():
        if param.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            positional.append(param.name)
        if param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            by_keyword.add(param.name)
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            rest_args = param.name
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            rest_kwargs = param.name
    new_args = list(args)
    for index in range(len(args)):
        if index < len(positional):
            if positional[index] in fitted:
                new_args[index] = fitted[positional[index]]
        elif rest_args in fitted:
            new_args[index] = fitted[rest_args][index - len(positional)]
    new_kwargs = dict(kwargs)
    for key in kwargs:
        if key in by_keyword:
            if key in fitted:
                new_kwargs[key] = fitted[key]
        elif rest_kwargs in fitted:
            new_kwargs[key] = fitted[rest_kwargs][key]
    return tuple(new_args), new_kwargs


class _Later:
    """The type of ``LATER``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


LATER = _Later()
"""An argument known only when the job runs (a workflow step's input, its parents'
results): its place is bound, its value not checked."""


_QUICK_TYPES: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}
_ANNOTATIONS = frozenset({"type", "title", "description", "default", "examples"})


def _quick_check(schema: Any) -> Callable[[Any], bool] | None:
    """A plain ``isinstance``-style check for a bare ``{"type": ...}`` schema.

    It only ever says "valid" early; anything it does not accept goes through
    jsonschema, which gives the error message (hot path of ``add``).
    """
    if not isinstance(schema, Mapping) or not set(schema) <= _ANNOTATIONS:
        return None
    kind = schema.get("type")
    return _QUICK_TYPES.get(kind) if isinstance(kind, str) else None


def bind_check(spec: TaskSpec) -> ArgsValidator | None:
    """A check that the arguments bind to ``spec.handler`` (``None`` when anything binds)."""
    found = _signature_params(spec.handler, skip_first=spec.call != "plain")
    if found is None:
        return None
    sig, params = found
    if any(
        p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) for p in params
    ):
        # Takes anything: binding cannot fail, and is skipped.
        return None
    task = spec.name

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        _bind(task, sig, args, kwargs)

    return bind


_QUOTED = re.compile(r"'([^']+)'")


def _bind(
    task: str, sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> inspect.BoundArguments:
    try:
        return sig.bind(*args, **kwargs)
    except TypeError as exc:
        text = str(exc)
        match = _QUOTED.search(text)
        raise ValidationError(task, text, parameter=match.group(1) if match else None) from None


def _hints(handler: Callable[..., Any]) -> dict[str, Any]:
    target: Any = handler
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        call = inspect.getattr_static(type(target), "__call__", None)
        if inspect.isfunction(call):
            target = call
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:
        pass
    # Some hint does not resolve: keep the ones that do, one by one.
    raw = getattr(target, "__annotations__", None)
    if not isinstance(raw, Mapping):
        return {}
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in raw.items():
        if not isinstance(annotation, str):
            hints[name] = annotation
            continue
        try:
            hints[name] = eval(annotation, dict(namespace))
        except Exception:
            continue
    return hints


_SCALARS: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    None: {"type": "null"},
}


def schema_for_type(hint: Any, _seen: frozenset[int] = frozenset()) -> dict[str, Any]:
    """The JSON Schema of one type hint; ``{}`` (no constraint) when unknown (note 4)."""
    if id(hint) in _seen or len(_seen) > 20:
        return {}  # recursive or absurdly deep: stop describing
    seen = _seen | {id(hint)}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is None:
        try:
            if hint in _SCALARS:
                return dict(_SCALARS[hint])
        except TypeError:  # an unhashable object used as a hint
            return {}
    if origin in (typing.Required, typing.NotRequired):
        # Their meaning is in the TypedDict's __required_keys__ already.
        return schema_for_type(args[0], seen)
    if origin is typing.Annotated:
        base = schema_for_type(args[0], seen)
        for extra in args[1:]:
            if isinstance(extra, Mapping) and _is_json(extra):
                base.update(extra)
        return base
    if origin is typing.Literal:
        values = [v.value if isinstance(v, enum.Enum) else v for v in args]
        return {"enum": values} if _is_json(values) else {}
    if origin is typing.Union or origin is types.UnionType:
        options = [schema_for_type(a, seen) for a in args]
        if any(not o for o in options):
            return {}
        return {"anyOf": options}
    if origin in (list, set, frozenset) or _is_abc(origin, "Sequence", "Set", "Iterable"):
        schema: dict[str, Any] = {"type": "array"}
        if args:
            item = schema_for_type(args[0], seen)
            if item:
                schema["items"] = item
        if origin in (set, frozenset) or _is_abc(origin, "Set"):
            schema["uniqueItems"] = True
        return schema
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = schema_for_type(args[0], seen)
            return {"type": "array", "items": item} if item else {"type": "array"}
        if args == ((),):
            return {"type": "array", "maxItems": 0}
        items = [schema_for_type(a, seen) for a in args]
        return {
            "type": "array",
            "prefixItems": items,
            "minItems": len(items),
            "maxItems": len(items),
        }
    if origin is dict or _is_abc(origin, "Mapping", "MutableMapping"):
        schema = {"type": "object"}
        if len(args) == 2:
            value = schema_for_type(args[1], seen)
            if value:
                schema["additionalProperties"] = value
        return schema
    if hint in (list, tuple, set, frozenset):
        return {"type": "array"}
    if hint is dict:
        return {"type": "object"}
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            values = [member.value for member in hint]
            return {"enum": values} if _is_json(values) else {}
        if typing.is_typeddict(hint):
            return _typeddict_schema(hint, seen)
        if dataclasses.is_dataclass(hint):
            return _dataclass_schema(hint, seen)
        if issubclass(hint, bool):
            return {"type": "boolean"}
        if issubclass(hint, int):
            return {"type": "integer"}
        if issubclass(hint, float):
            return {"type": "number"}
        if issubclass(hint, str):
            return {"type": "string"}
    return {}


def _is_abc(origin: Any, *names: str) -> bool:
    import collections.abc as abc

    return any(origin is getattr(abc, name) for name in names)


def _typeddict_schema(hint: type, seen: frozenset[int]) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(hint, include_extras=True)
    except Exception:
        hints = dict(getattr(hint, "__annotations__", {}))
    required_keys: frozenset[str] = getattr(hint, "__required_keys__", frozenset(hints))
    properties = {name: schema_for_type(h, seen) for name, h in hints.items()}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    # With string annotations (``from __future__ import annotations``) Python
    # 3.11 cannot see NotRequired[...] when it builds __required_keys__: look
    # at the resolved hints too.
    required = [
        name
        for name, h in hints.items()
        if typing.get_origin(h) is not typing.NotRequired
        and (name in required_keys or typing.get_origin(h) is typing.Required)
    ]
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    return schema


def _dataclass_schema(hint: type, seen: frozenset[int]) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(hint, include_extras=True)
    except Exception:
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for item in dataclasses.fields(hint):
        if not item.init:
            continue
        sub = schema_for_type(hints.get(item.name, Any), seen)
        if item.default is not dataclasses.MISSING:
            if _is_json(item.default):
                sub = {**sub, "default": item.default}
        elif item.default_factory is dataclasses.MISSING:
            required.append(item.name)
        properties[item.name] = sub
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    return schema


# -- small helpers -------------------------------------------------------------


def _is_json(value: Any, depth: int = 0) -> bool:
    if depth > 50:
        return False
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list | tuple):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False


def _render_path(path: list[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(message: str, rest: list[Any]) -> str:
    where = _render_path(rest)
    return _clip(f"at {where}: {message}" if where else message)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."
