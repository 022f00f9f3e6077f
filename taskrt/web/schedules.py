"""Schedule endpoints: list, create, read, change, delete, pause, resume, run now.

Front ends to ``rt.schedules`` (``taskrt.scheduler``); see docs/schedules.md.
A bad cron expression or time zone answers 422 with the ``field`` that is
wrong (``CronError``); an unknown schedule or task 404; creating a schedule
whose name is taken by a different definition 409.

An unknown task is 404 before the expression, time zone and arguments are
checked (422), as in ``POST /jobs``: those checks need the task, or cannot be
told by a JSON Schema (a cron expression's values, a time zone's name).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import TaskNotFound
from ..scheduler import MAX_NAME, MISFIRE_POLICIES, ScheduleInfo
from .inputs import field_of, invalid, json_object, read_json, refuse_unknown
from .jobs import DUPLICATE_ID, QUEUE_FULL, job_url
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import NOT_BLANK_PATTERN, SCHEDULE_NAME_PATTERN, Schema, array_of, nullable, ref

_NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
_NOT_BLANK = re.compile(NOT_BLANK_PATTERN)
# A URL path segment "." or ".." is a dot segment: clients remove it from a URL
# (RFC 3986, 5.2.4), so /schedules/.. could never reach a schedule of that name.
_DOT_SEGMENTS = (".", "..")
_NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME,
    "pattern": SCHEDULE_NAME_PATTERN,
    "not": {"enum": list(_DOT_SEGMENTS)},
    "description": "not only white space, not '.' or '..'; no '/' and no control character",
}
_TASK: Schema = {"type": "string", "minLength": 1, "description": "a registered task's name"}
_EXPRESSION: Schema = {
    "type": "string",
    "minLength": 1,
    "description": (
        "five fields (minute first), six with seconds first, an alias like "
        "@hourly, or '@every 30s'; a bad one is 422 naming the field"
    ),
    "examples": ["0 */5 * * * *", "30 2 * * 1-5", "@every 30s"],
}
_OPTIONAL: dict[str, Schema] = {
    "args": {"type": "array", "default": []},
    "kwargs": {"type": "object", "default": {}},
    "pool": nullable(
        {"type": "string", "minLength": 1, "description": "defaults to the task's pool"}
    ),
    "tz": {
        "type": "string",
        "minLength": 1,
        "default": "UTC",
        "description": "an IANA time zone name; an unknown one is 422",
        "examples": ["Europe/Berlin"],
    },
    "misfire": {
        "enum": list(MISFIRE_POLICIES),
        "default": "latest",
        "description": "after downtime: run the latest missed slot once, skip, or run all (max 100)",
    },
}
_DEFINITION: dict[str, Schema] = {"task": _TASK, "expression": _EXPRESSION, **_OPTIONAL}

COMPONENTS: dict[str, Schema] = {
    "Schedule": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            **_DEFINITION,
            "paused": {"type": "boolean"},
            "next_run_at": {**_NULLABLE_NUMBER, "description": "the next slot (epoch seconds)"},
            "last_run_at": {**_NULLABLE_NUMBER, "description": "the last slot fired"},
            "last_job_id": {"type": ["integer", "null"]},
            "last_error": {
                "type": ["string", "null"],
                "description": "why the last slot added no job",
            },
            "fires": {"type": "integer", "description": "jobs added for slots"},
            "failures": {"type": "integer", "description": "jobs of the schedule that failed"},
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
        },
    },
    "NewSchedule": {
        "type": "object",
        "required": ["name", "task", "expression"],
        "additionalProperties": False,
        "description": "An optional field given as null is the same as a field left out.",
        "properties": {
            "name": _NAME,
            "task": _TASK,
            "expression": _EXPRESSION,
            **{name: nullable(schema) for name, schema in _OPTIONAL.items()},
        },
    },
    "ScheduleChange": {
        "type": "object",
        "additionalProperties": False,
        "description": "Only the fields given change; null is the same as leaving a field out.",
        "properties": {name: nullable(schema) for name, schema in _DEFINITION.items()},
    },
}

group = EndpointGroup(
    "schedules",
    "Cron schedules: each slot adds one job, exactly once, across restarts.",
    components=COMPONENTS,
)

NAME = Param("name", "path", required=True, description="the schedule's name")
NOT_FOUND = Reply("no such schedule", ref("Error"))
CHANGE_FIELDS = frozenset(_DEFINITION)
NEW_FIELDS = CHANGE_FIELDS | {"name"}


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    return name


def _definition(body: dict[str, Any]) -> dict[str, Any]:
    """The given definition fields, type-checked (the runtime checks the values)."""
    out: dict[str, Any] = {
        "task": field_of(body, "task", str, "the name of a task"),
        "expression": field_of(body, "expression", str, "a cron expression"),
        "args": field_of(body, "args", list, "an array"),
        "kwargs": field_of(body, "kwargs", dict, "an object"),
        "pool": field_of(body, "pool", str, "a pool's name"),
        "tz": field_of(body, "tz", str, "an IANA time zone name"),
        "misfire": field_of(body, "misfire", str, " or ".join(MISFIRE_POLICIES)),
    }
    return {k: v for k, v in out.items() if v is not None}


def _reply(info: ScheduleInfo, status: int = 200) -> Response:
    return JSONResponse(info.to_dict(), status_code=status)


@group.get(
    "/schedules",
    summary="Every schedule, by name",
    replies={
        200: Reply(
            "the schedules", {"type": "object", "properties": {"schedules": array_of("Schedule")}}
        )
    },
)
async def list_schedules(api: Api, request: Request) -> Response:
    infos = await api.runtime.schedules.list()
    return JSONResponse({"schedules": [i.to_dict() for i in infos]})


@group.post(
    "/schedules",
    summary="Create a schedule",
    body=ref("NewSchedule"),
    replies={
        201: Reply("the new schedule", ref("Schedule")),
        200: Reply("an equal schedule existed; nothing changed", ref("Schedule")),
        404: Reply("no such task (before the expression and time zone are checked)", ref("Error")),
        409: Reply("a different schedule of that name exists; PUT it", ref("Error")),
    },
)
async def create_schedule(api: Api, request: Request) -> Response:
    """A bad expression or time zone answers 422 naming the `field` that is wrong."""
    body = json_object(await read_json(request, api.settings.max_body))
    refuse_unknown(body, NEW_FIELDS)
    name = body.get("name")
    if not isinstance(name, str) or not _NOT_BLANK.search(name) or len(name) > MAX_NAME:
        raise invalid("name", f"expected a string of 1 to {MAX_NAME} characters, not all blank")
    if name in _DOT_SEGMENTS:
        raise invalid("name", f"expected a name other than '.' and '..', found {name!r}")
    fields = _definition(body)
    for required in ("task", "expression"):
        if not fields.get(required):
            raise invalid(required, "expected a non-empty string")
    if fields["task"] not in api.runtime.tasks:  # module doc
        raise TaskNotFound(fields["task"])
    info, created = await api.runtime.schedules.create(
        name, fields.pop("task"), fields.pop("expression"), replace=False, **fields
    )
    response = _reply(info, 201 if created else 200)
    if created:
        root = request.scope.get("root_path", "")
        response.headers["Location"] = f"{root}/schedules/{quote(name, safe='')}"
    return response


@group.get(
    "/schedules/{name}",
    summary="One schedule",
    name="get_schedule",
    params=[NAME],
    replies={200: Reply("the schedule", ref("Schedule")), 404: NOT_FOUND},
)
async def get_schedule(api: Api, request: Request) -> Response:
    return _reply(await api.runtime.schedules.get(_name(request)))


@group.put(
    "/schedules/{name}",
    summary="Change a schedule's definition",
    params=[NAME],
    body=ref("ScheduleChange"),
    replies={
        200: Reply("the schedule after the change", ref("Schedule")),
        404: Reply("no such schedule, or no such task", ref("Error")),
    },
)
async def update_schedule(api: Api, request: Request) -> Response:
    """Only the fields given change. A new expression or time zone moves the next
    slot to the new rule's first one after now."""
    body = json_object(await read_json(request, api.settings.max_body))
    refuse_unknown(body, CHANGE_FIELDS)
    fields = _definition(body)
    return _reply(await api.runtime.schedules.update(_name(request), **fields))


@group.delete(
    "/schedules/{name}",
    summary="Delete a schedule",
    params=[NAME],
    replies={204: Reply("deleted", None), 404: NOT_FOUND},
)
async def delete_schedule(api: Api, request: Request) -> Response:
    """Jobs it added stay. A schedule declared in code comes back at the next start."""
    await api.runtime.schedules.delete(_name(request))
    return Response(status_code=204)


@group.post(
    "/schedules/{name}/pause",
    summary="Pause a schedule",
    params=[NAME],
    replies={200: Reply("the paused schedule", ref("Schedule")), 404: NOT_FOUND},
)
async def pause_schedule(api: Api, request: Request) -> Response:
    """Slots that pass while it is paused are not fired later."""
    return _reply(await api.runtime.schedules.pause(_name(request)))


@group.post(
    "/schedules/{name}/resume",
    summary="Resume a schedule",
    params=[NAME],
    replies={200: Reply("the schedule, with its next slot", ref("Schedule")), 404: NOT_FOUND},
)
async def resume_schedule(api: Api, request: Request) -> Response:
    return _reply(await api.runtime.schedules.resume(_name(request)))


@group.post(
    "/schedules/{name}/run",
    summary="Run a schedule's job now",
    params=[NAME],
    replies={
        201: Reply("the job added", ref("Job")),
        404: Reply("no such schedule, or its task is not registered", ref("Error")),
        409: DUPLICATE_ID,
        503: QUEUE_FULL,
    },
)
async def run_schedule(api: Api, request: Request) -> Response:
    """Adds the job at once, outside the schedule's slots; the slots are unchanged."""
    rt = api.runtime
    job = await rt.get(await rt.schedules.run_now(_name(request)))
    return JSONResponse(
        job.to_dict(), status_code=201, headers={"Location": job_url(request, job.id)}
    )


__all__ = ["COMPONENTS", "group"]
