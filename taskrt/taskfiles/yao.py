"""Yao task files: one JSON object per file (``tasks/<id>.yao``), comments allowed.

Field by field (defaults are those of Yao's own engine):

========================  ==============================================  ==========
field                     meaning in taskrt                               default
========================  ==============================================  ==========
``name``                  display name                                    the task id
``worker_nums``           concurrency of the task's own pool              1
``attempts``              most runs of one job, the first included        1
``attempt_after``         milliseconds between attempts                   200
``timeout``               seconds one attempt may run                     300
``size``                  how many jobs may wait in the pool              1024
``process``               handler, ``process(job_id, *args)``             (required)
``event.next``            ``next()`` -> the new job's id
``event.add``             ``add(id)``
``event.success``         ``success(id, result)``
``event.error``           ``error(id, message)``, once, on final failure
``event.progress``        ``progress(id, current, total, message)``
``description``           a longer text (a taskrt addition)
========================  ==============================================  ==========

The task id is the file's path below the tasks folder without its extension,
with ``/`` as ``.`` (``tasks/test.yao`` -> ``test``, ``tasks/mail/send.yao`` ->
``mail.send``); each task gets its own pool, named after the id.
The sync ``event.*`` hooks but ``next`` run in one thread of the task's own, in
the order they are called (``adapters.off_the_loop``), not on the event loop.
A number field given as ``0`` takes its default, as in Yao. Numbers are bounded
as the decorator's and the HTTP API's are: a count (``worker_nums``, ``size``,
``attempts``) at most ``2**63 - 1``, a duration (``attempt_after``,
``timeout``) at most a hundred years (``limits``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..definitions import Hooks, TaskSpec
from ..limits import INT64_MAX, MAX_DURATION
from ..retry import RetryPolicy
from . import jsonc
from .adapters import off_the_loop
from .common import (
    MISSING,
    callable_at,
    integer_at,
    number_at,
    report_lone_surrogates,
    string_at,
)
from .problems import Report

__all__ = ["EVENT_FIELDS", "FIELDS", "load_yao"]

FIELDS = frozenset(
    {
        "name",
        "description",
        "worker_nums",
        "attempts",
        "attempt_after",
        "timeout",
        "size",
        "process",
        "event",
    }
)
EVENT_FIELDS = {
    "next": "next_id",
    "add": "on_add",
    "success": "on_success",
    "error": "on_error",
    "progress": "on_progress",
}

DEFAULT_WORKERS = 1
DEFAULT_ATTEMPT_AFTER_MS = 200
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_SIZE = 1024


def load_yao(text: str, *, task_id: str, report: Report, root: Path | None) -> TaskSpec | None:
    """The spec of one Yao file, or ``None`` with the problems in ``report``."""
    try:
        parsed = jsonc.parse(text)
    except jsonc.JsoncError as exc:
        report.add((), exc.message, found="text", expected="a JSON object", line=exc.line)
        return None
    report.lines = parsed.lines
    for path, line in parsed.duplicates:
        report.add(path, f"field {path[-1]!r} is given twice", found=str(path[-1]), line=line)
    data = parsed.value
    if report_lone_surrogates(report, data):
        return None
    if not isinstance(data, dict):
        report.wrong_type((), data, "a JSON object with the task's fields")
        return None
    before = len(report.problems)
    report.unknown_fields((), data, FIELDS)

    name = data.get("name", MISSING)
    display = task_id
    if name is not MISSING:
        display = string_at(report, ("name",), name) or task_id
    description = ""
    if "description" in data:
        description = string_at(report, ("description",), data["description"]) or ""

    workers = _count(report, data, "worker_nums", DEFAULT_WORKERS, "a positive number of workers")
    size = _count(report, data, "size", DEFAULT_SIZE, "a positive queue size")
    attempts = _count(report, data, "attempts", 1, "a number of attempts (0 or more)")

    # Durations are bounded as everywhere else (``limits.MAX_DURATION``, a hundred years).
    attempt_after = DEFAULT_ATTEMPT_AFTER_MS / 1000
    if "attempt_after" in data:
        ms = number_at(
            report,
            ("attempt_after",),
            data["attempt_after"],
            minimum=0,
            maximum=MAX_DURATION * 1000,
            expected="milliseconds",
        )
        if ms:
            attempt_after = ms / 1000
    timeout = DEFAULT_TIMEOUT_S
    if "timeout" in data:
        seconds = number_at(
            report,
            ("timeout",),
            data["timeout"],
            minimum=0,
            maximum=MAX_DURATION,
            expected="seconds",
        )
        if seconds:
            timeout = seconds

    handler = None
    if "process" not in data:
        report.add(
            ("process",),
            "missing field 'process': the handler, a dotted path like 'scripts.task.Send'",
            found="nothing",
            expected="a dotted path",
            line=1,
        )
    else:
        handler = callable_at(report, ("process",), data["process"], root)

    hooks: dict[str, Any] = {}
    event = data.get("event", MISSING)
    if event is not MISSING and event is not None:
        if not isinstance(event, dict):
            report.wrong_type(("event",), event, "an object of event handlers")
        else:
            report.unknown_fields(("event",), event, EVENT_FIELDS)
            for key, hook in EVENT_FIELDS.items():
                if key in event and event[key] not in (None, ""):
                    found = callable_at(report, ("event", key), event[key], root)
                    if found is not None:
                        hooks[hook] = found

    if handler is None or len(report.problems) > before:
        return None
    return TaskSpec(
        name=task_id,
        handler=handler,
        pool=task_id,
        attempts=attempts,
        retry=RetryPolicy(delays=(attempt_after,)),
        timeout=timeout,
        call="id",
        hooks=Hooks(**_events(hooks, task_id)),
        description=description,
        display_name=display,
        source=report.file,
        pool_concurrency=workers,
        pool_capacity=size,
    )


def _events(hooks: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The hooks, those called with a job's id off the event loop (``off_the_loop``);
    ``next_id`` as it is: the runtime needs its result, the id, at once."""
    events = off_the_loop({k: v for k, v in hooks.items() if k != "next_id"}, task_id)
    if "next_id" in hooks:
        events["next_id"] = hooks["next_id"]
    return events


def _count(report: Report, data: dict[str, Any], key: str, default: int, expected: str) -> int:
    """A count of at most ``INT64_MAX``, what a stored column (``attempts``) and the HTTP
    pool API (``concurrency``, ``capacity``) take."""
    if key not in data:
        return default
    value = integer_at(report, (key,), data[key], minimum=0, maximum=INT64_MAX, expected=expected)
    return value or default
