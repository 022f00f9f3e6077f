"""Anchor task files: a YAML document with a ``tasks:`` list.

Each task's arguments are one object described by its ``parameters`` JSON
Schema; a job passes them as keyword arguments (or as one positional object).

Where the handler comes from, first match wins:

1. ``process: pkg.module.function`` -- called as ``function(**params)``, after
   the job context or id when its first parameter asks for one (the same
   rule as decorated tasks, ``definitions.detect_call``).
2. the *executor* object given to the loader: a method
   ``execute_<snake_name>`` or ``execute_<Name>`` (``SendEmail`` ->
   ``execute_send_email`` or ``execute_SendEmail``), called as
   ``method(params)``, plus ``job=<JobContext>`` when it has a ``job``
   parameter. ``params`` is a dict, or an instance of the class the method's
   first parameter is annotated with when that class has ``from_dict`` (as
   the classes ``taskrt generate`` writes do) or is a dataclass.

With ``events: [onFailed]`` the failure hook is ``hooks.onFailed`` (a dotted
path) or the executor's ``on_<snake_name>_failed`` / ``on_<Name>_failed``,
called as ``hook(job_id, params, tx)`` inside the transaction that records
the failure.

The module is long because it is one file format, every field of it, each
checked with the file, the line and what was expected. The YAML itself is read
by ``yamldoc`` (its bounds, the line of every key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import params as parameters_module
from ..definitions import CallStyle, Hooks, TaskSpec, detect_call
from ..errors import InvalidOption, TaskrtError, ValidationError
from ..limits import DEFAULT_LIMITS, INT64_MAX, INT64_MIN, check_int64, check_text
from ..retry import NO_DELAY, RetryPolicy, parse_attempts, parse_retry
from . import yamldoc
from .adapters import (
    converter,
    executor_handler,
    executor_names,
    failed_hook,
    find_method,
    identity,
    process_handler,
    snake_case,
    stand_in,
    with_bind_check,
)
from .common import (
    MISSING,
    callable_at,
    duration_at,
    report_lone_surrogates,
    string_at,
)
from .problems import FieldPath, Report, describe, suggest

__all__ = [
    "CRON_FIELDS",
    "EVENTS",
    "FIELDS",
    "RETRY_FIELDS",
    "executor_names",
    "load_anchor",
    "snake_case",
]

FIELDS = frozenset(
    {
        "name",
        "description",
        "parameters",
        "retryPolicy",
        "cronjob",
        "events",
        "timeout",
        "process",
        "hooks",
        "pool",
        "priority",
    }
)
TOP_FIELDS = frozenset({"tasks"})
RETRY_FIELDS = frozenset({"interval", "maxAttempts"})
CRON_FIELDS = frozenset({"cronExpression", "timezone"})
EVENTS = frozenset({"onFailed"})
HOOK_FIELDS = frozenset({"onFailed"})
DEFAULT_TIMEOUT_S = 3600.0
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Located = tuple[TaskSpec, int | None]


def load_anchor(
    text: str,
    *,
    report: Report,
    root: Path | None,
    executor: object | None,
    require_handlers: bool = True,
    declared: list[tuple[str, int | None]] | None = None,
) -> list[Located]:
    """The specs of one Anchor file with the line of each task's name.

    Tasks with problems are left out; their problems are in ``report``. Every
    task name the file declares, valid or not, is appended to ``declared``. With
    ``require_handlers=False`` a task that relies on an executor none was given
    for gets a stand-in handler (and hook) that raise ``NotImplementedError``:
    for checking files and generating code without the application.
    """
    data = yamldoc.read(text, report)
    if data is MISSING or report_lone_surrogates(report, data):
        return []
    if not isinstance(data, Mapping):
        report.wrong_type((), data, "a mapping with a 'tasks:' list")
        return []
    report.unknown_fields((), data, TOP_FIELDS)
    tasks = data.get("tasks", MISSING)
    if tasks is MISSING:
        report.add(("tasks",), "missing field 'tasks': a list of task definitions", line=1)
        return []
    if not isinstance(tasks, list):
        report.wrong_type(("tasks",), tasks, "a list of task definitions")
        return []
    out: list[Located] = []
    snakes: dict[str, str] = {}
    names: dict[str, int | None] = {}
    for index, item in enumerate(tasks):
        path: FieldPath = ("tasks", index)
        if not isinstance(item, Mapping):
            report.wrong_type(path, item, "a task definition (a mapping with 'name:')")
            continue
        name = item.get("name")
        if isinstance(name, str):
            line = report.line_of((*path, "name"))
            if name in names:
                earlier = names[name]
                report.add(
                    (*path, "name"),
                    f"duplicate task id {name!r}: also defined"
                    + (f" on line {earlier}" if earlier is not None else " above"),
                    found=name,
                    expected="a task id used once",
                )
                continue
            names[name] = line
            if declared is not None:
                declared.append((name, line))
            other = snakes.setdefault(snake_case(name), name)
            if other != name:
                report.add(
                    (*path, "name"),
                    f"task {name!r} and task {other!r} have the same snake_case name "
                    f"{snake_case(name)!r}: their executor methods would clash",
                    found=name,
                    expected="task names that differ in more than case and underscores",
                )
        before = len(report.problems)
        spec = _task(
            item,
            path,
            report=report,
            root=root,
            executor=executor,
            require_handlers=require_handlers,
        )
        if spec is not None and len(report.problems) == before:
            out.append((spec, report.line_of((*path, "name"))))
    return out


# -- one task ------------------------------------------------------------------


def _task(
    item: Mapping[Any, Any],
    path: FieldPath,
    *,
    report: Report,
    root: Path | None,
    executor: object | None,
    require_handlers: bool,
) -> TaskSpec | None:
    report.unknown_fields(path, item, FIELDS)
    name = item.get("name", MISSING)
    if name is MISSING:
        report.add((*path, "name"), "missing field 'name'", expected="a task name")
        return None
    if not isinstance(name, str) or not NAME.fullmatch(name):
        expected = "a name made of letters, digits and '_' (e.g. SendEmail)"
        report.add(
            (*path, "name"),
            f"bad task name {describe(name)}: expected {expected}",
            found=name,
            expected=expected,
        )
        return None

    description = ""
    if "description" in item and item["description"] is not None:
        description = string_at(report, (*path, "description"), item["description"]) or ""

    schema = _parameters(item.get("parameters", MISSING), (*path, "parameters"), report)
    attempts, retry = _retry(item.get("retryPolicy", MISSING), (*path, "retryPolicy"), report)
    cron, cron_tz = _cron(item.get("cronjob", MISSING), (*path, "cronjob"), report)
    cron_fits = cron is not None and schema is not None
    if cron is not None and schema is not None:
        cron_fits = _cron_parameters(schema, (*path, "cronjob"), report)
    wants_failed = _events(item.get("events", MISSING), (*path, "events"), report)

    timeout = DEFAULT_TIMEOUT_S
    if "timeout" in item:
        found = duration_at(report, (*path, "timeout"), item["timeout"])
        if found is not None and found <= 0:
            report.add((*path, "timeout"), "expected a positive duration", found=item["timeout"])
        elif found is not None:
            timeout = found

    pool = "default"
    if "pool" in item:
        expected_pool = "a non-empty pool name"
        found_pool = string_at(report, (*path, "pool"), item["pool"], expected=expected_pool)
        if found_pool == "":
            report.wrong_type((*path, "pool"), found_pool, expected_pool)
        elif found_pool is not None:
            try:
                # As the runtime checks a pool's name, which would refuse it when the
                # task is registered, after the tasks before it.
                pool = check_text(found_pool, "pool", max_bytes=DEFAULT_LIMITS.max_metadata_bytes)
            except InvalidOption as exc:
                report.add(
                    (*path, "pool"),
                    str(exc).removeprefix("pool: "),
                    found=found_pool,
                    expected=expected_pool,
                )
    priority = 0
    if "priority" in item:
        value = item["priority"]
        try:
            # As the decorator's ``make_spec``: an integer a 64-bit column holds.
            priority = check_int64(value, "priority")
        except TaskrtError:
            report.wrong_type(
                (*path, "priority"), value, f"an integer from {INT64_MIN} to {INT64_MAX}"
            )

    handler, call, hook, target = _handler(
        item,
        path,
        name,
        wants_failed,
        report=report,
        root=root,
        executor=executor,
        require_handlers=require_handlers,
    )
    if handler is None or schema is None:
        return None
    spec = TaskSpec(
        name=name,
        handler=handler,
        pool=pool,
        attempts=attempts,
        retry=retry,
        timeout=timeout,
        priority=priority,
        call=call,
        hooks=Hooks(on_failed=hook),
        parameters=schema,
        description=description,
        display_name=name,
        source=report.file,
        cron=cron,
        cron_tz=cron_tz,
    )
    spec = parameters_module.attach(spec)
    if target is not None:
        spec = with_bind_check(spec, target, detect_call(target))
        if cron_fits and not _cron_calls(spec, item["process"], (*path, "cronjob"), report):
            return None
    return spec


def _parameters(value: Any, path: FieldPath, report: Report) -> dict[str, Any] | None:
    if value is MISSING or value is None:
        return {"type": "object", "properties": {}}
    if not isinstance(value, Mapping):
        report.wrong_type(path, value, "a JSON Schema (a mapping with type: object)")
        return None
    bad = _not_json(value, path)
    if bad is not None:
        where, found = bad
        report.add(
            where,
            f"{describe(found)} is not a JSON value (quote it to make it a string)",
            found=found,
            expected="JSON values only",
        )
        return None
    problems = parameters_module.schema_problems(value)  # every one, each in its place
    for inside, message in problems:
        report.add(
            (*path, *inside),
            f"invalid JSON Schema: {message}",
            found="a schema",
            expected="a valid JSON Schema (draft 2020-12)",
        )
    if problems:
        return None
    if value.get("type") != "object":
        report.add(
            (*path, "type"),
            f"expected type: object (a task's parameters are one object), "
            f"found {describe(value.get('type'))}",
            found=value.get("type"),
            expected="object",
        )
        return None
    return dict(value)


def _by_path(path: FieldPath) -> tuple[tuple[int, int, str], ...]:
    """Problems in the order of their paths, indexes as numbers (as ``params`` sorts them)."""
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path)


def _not_json(value: Any, path: FieldPath) -> tuple[FieldPath, Any] | None:
    """The first place holding something JSON cannot carry (a date, a non-string key)."""
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return None if value == value and abs(value) != float("inf") else (path, value)
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _not_json(item, (*path, index))
            if found is not None:
                return found
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return ((*path, str(key)), key)
            found = _not_json(item, (*path, key))
            if found is not None:
                return found
        return None
    return (path, value)


def _retry(value: Any, path: FieldPath, report: Report) -> tuple[int | None, RetryPolicy]:
    if value is MISSING or value is None:
        return 1, NO_DELAY
    if not isinstance(value, Mapping):
        report.wrong_type(path, value, "a mapping with interval and maxAttempts")
        return 1, NO_DELAY
    report.unknown_fields(path, value, RETRY_FIELDS)
    attempts: int | None = 1
    retry = NO_DELAY
    expected_interval = "a duration like '30s' or a list like '1m,2m,4m'"
    if "interval" not in value:
        report.add((*path, "interval"), f"missing field 'interval': {expected_interval}")
    else:
        # ``parse_retry`` reads null as "no delay", and ``parse_attempts`` reads null
        # (and -1.0, equal to -1) as "unlimited": in a file, a field given empty is a
        # mistake, and a number of attempts is an integer, -1 for unlimited.
        interval = value["interval"]
        try:
            if interval is None:
                raise InvalidOption("interval", "no value")
            retry = parse_retry(interval, field="interval")
        except TaskrtError:
            report.add(
                (*path, "interval"),
                f"bad interval {describe(interval)}: expected {expected_interval}",
                found=interval,
                expected=expected_interval,
            )
    expected_max = "a positive integer, or -1 for unlimited"
    if "maxAttempts" not in value:
        report.add((*path, "maxAttempts"), f"missing field 'maxAttempts': {expected_max}")
    else:
        found = value["maxAttempts"]
        try:
            if isinstance(found, bool) or not isinstance(found, int):
                raise InvalidOption("maxAttempts", "not an integer")
            attempts = parse_attempts(found, field="maxAttempts")
        except TaskrtError:
            report.wrong_type((*path, "maxAttempts"), found, expected_max)
    return attempts, retry


def _cron(value: Any, path: FieldPath, report: Report) -> tuple[str | None, str]:
    if value is MISSING or value is None:
        return None, "UTC"
    if not isinstance(value, Mapping):
        report.wrong_type(path, value, "a mapping with cronExpression")
        return None, "UTC"
    report.unknown_fields(path, value, CRON_FIELDS)
    tz = "UTC"
    expected_zone = "an IANA time zone name, like 'Europe/Berlin' or 'UTC'"
    if "timezone" in value:
        zone = string_at(report, (*path, "timezone"), value["timezone"], expected=expected_zone)
        if zone is None:
            return None, "UTC"
        tz = zone
    expression = value.get("cronExpression", MISSING)
    if expression is MISSING:
        report.add(
            (*path, "cronExpression"),
            "missing field 'cronExpression' (six fields, seconds first, e.g. '0 0 2 * * *')",
        )
        return None, tz
    if not isinstance(expression, str):
        report.wrong_type((*path, "cronExpression"), expression, "a cron expression string")
        return None, tz
    from ..schedule import parse_cron  # the scheduler's module owns cron

    try:
        parse_cron(expression, tz)
    except TaskrtError as exc:
        if getattr(exc, "field", "") in ("tz", "timezone", "zone"):
            # The zone is what is wrong, not the expression it was checked with.
            report.add(
                (*path, "timezone"),
                str(exc).removeprefix(f"cron expression {expression!r}: "),
                found=tz,
                expected=expected_zone,
            )
            return None, tz
        report.add(
            (*path, "cronExpression"),
            str(exc),
            found=expression,
            expected="six fields, seconds first: second minute hour day month weekday",
        )
        return None, tz
    except Exception as exc:
        report.add((*path, "cronExpression"), f"bad cron expression {expression!r}: {exc}")
        return None, tz
    return expression, tz


def _cron_parameters(schema: Mapping[str, Any], path: FieldPath, report: Report) -> bool:
    """A cron slot adds its job without parameters: ``schema`` must accept ``{}``.

    Otherwise every slot would be refused when it fires, long after loading.
    """
    reasons = parameters_module.refusals(schema, {})
    if reasons:
        report.add(
            path,
            "a cron job is added without parameters, but the parameters schema refuses "
            f"that: {'; '.join(reasons)}",
            found="; ".join(reasons),
            expected="a parameters schema a job without parameters satisfies",
        )
    return not reasons


def _cron_calls(spec: TaskSpec, process: str, path: FieldPath, report: Report) -> bool:
    """The job a cron slot adds without parameters must bind to the process function too.

    The schema accepts it (``_cron_parameters``), but a function parameter without a
    default that the schema does not require would refuse it: the runtime checks a
    task's schedules against the task when it registers them, and would refuse the
    task there, at start, with no file to name.
    """
    try:
        spec.validate((), {})
    except ValidationError as exc:
        where = f" parameter {exc.parameter!r}" if exc.parameter else ""
        reason = str(exc).removeprefix(f"task {exc.task!r}{where}: ")
        report.add(
            path,
            f"a cron job is added without parameters, but {process} cannot be called "
            f"without them: {reason}",
            found=reason,
            expected="a process function whose parameters all have defaults",
        )
        return False
    return True


def _events(value: Any, path: FieldPath, report: Report) -> bool:
    if value is MISSING or value is None:
        return False
    if not isinstance(value, list):
        report.wrong_type(path, value, "a list of events, e.g. [onFailed]")
        return False
    wanted = False
    for index, event in enumerate(value):
        if isinstance(event, str) and event in EVENTS:
            wanted = True
            continue
        hint = suggest(event, EVENTS) if isinstance(event, str) else None
        report.add(
            (*path, index),
            f"unknown event {describe(event)}"
            + (f"; did you mean {hint!r}?" if hint else "; expected onFailed"),
            found=event,
            expected="onFailed",
        )
    return wanted


# -- handlers and hooks ----------------------------------------------------------


def _handler(
    item: Mapping[Any, Any],
    path: FieldPath,
    name: str,
    wants_failed: bool,
    *,
    report: Report,
    root: Path | None,
    executor: object | None,
    require_handlers: bool,
) -> tuple[
    Callable[..., Any] | None,
    CallStyle,
    Callable[..., Any] | None,
    Callable[..., Any] | None,
]:
    """(handler, call style, on_failed hook, the process function when there is one)."""
    hooks_value = item.get("hooks", MISSING)
    hook_path: Any = MISSING
    if hooks_value is not MISSING and hooks_value is not None:
        if not isinstance(hooks_value, Mapping):
            report.wrong_type(
                (*path, "hooks"), hooks_value, "a mapping like {onFailed: pkg.mod.func}"
            )
        else:
            report.unknown_fields((*path, "hooks"), hooks_value, HOOK_FIELDS)
            hook_path = hooks_value.get("onFailed", MISSING)

    hook: Callable[..., Any] | None = None
    if hook_path is not MISSING:
        found = callable_at(report, (*path, "hooks", "onFailed"), hook_path, root)
        if found is not None:
            hook = failed_hook(found, identity)
        if not wants_failed:
            report.add(
                (*path, "hooks", "onFailed"),
                "an onFailed hook is given but events does not list onFailed",
                expected="events: [onFailed]",
            )

    if "process" in item:
        target = callable_at(report, (*path, "process"), item["process"], root)
        if target is None:
            return None, "context", None, None
        call = detect_call(target)
        if wants_failed and hook is None:
            hook = _executor_hook(name, executor, path, report, require_handlers)
        return process_handler(target, call), call, hook, target

    if executor is None and not require_handlers:
        handler = stand_in(name, "execute")
        if wants_failed and hook is None:
            hook = stand_in(name, "failed")
        return handler, "context", hook, None
    if executor is None:
        tried = " or ".join(executor_names(name, "execute"))
        report.add(
            (*path, "name"),
            f"task {name!r} has no handler: give 'process:' or load with an executor "
            f"that has {tried}",
            found="no process and no executor",
            expected="process: or an executor",
        )
        return None, "context", None, None
    method = find_method(executor, executor_names(name, "execute"))
    if method is None:
        tried = " or ".join(executor_names(name, "execute"))
        report.add(
            (*path, "name"),
            f"the executor {type(executor).__name__} has no method {tried} for task {name!r}",
            found=type(executor).__name__,
            expected=tried,
        )
        return None, "context", None, None
    convert = converter(method, 0)
    if wants_failed and hook is None:
        hook = _executor_hook(name, executor, path, report, require_handlers)
    return executor_handler(method, convert), "context", hook, None


def _executor_hook(
    name: str, executor: object | None, path: FieldPath, report: Report, required: bool
) -> Callable[..., Any] | None:
    names = executor_names(name, "failed")
    if executor is None and not required:
        return stand_in(name, "failed")
    method = None if executor is None else find_method(executor, names)
    if method is None:
        tried = " or ".join(names)
        if executor is None:
            lack = f"no executor was given to provide {tried}"
        else:
            lack = f"the executor {type(executor).__name__} has no {tried}"
        report.add(
            (*path, "events"),
            f"events lists onFailed but {lack} (or give hooks: {{onFailed: pkg.module.function}})",
            found="onFailed",
            expected=tried,
        )
        return None
    # on_<name>_failed(job_id, params, tx): the parameters come second.
    return failed_hook(method, converter(method, 1))
