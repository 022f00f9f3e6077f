"""Schedule endpoints: list, create, read, change, delete, pause, resume, run now.

Front ends to ``rt.schedules`` (``taskrt.scheduler``); see docs/schedules.md.
A bad cron expression or time zone answers 422 with the ``field`` that is
wrong (``CronError``); an unknown schedule or task 404; creating a schedule
whose name is taken by a different definition 409.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..scheduler import MISFIRE_POLICIES, ScheduleInfo
from .inputs import field_of, invalid, json_object, read_json, refuse_unknown
from .jobs import job_url
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import Schema, array_of, ref

_NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
_DEFINITION: dict[str, Schema] = {
    "task": {"type": "string", "description": "a registered task's name"},
    "expression": {
        "type": "string",
        "description": (
            "five fields (minute first), six with seconds first, an alias like "
            "@hourly, or '@every 30s'"
        ),
        "examples": ["0 */5 * * * *", "30 2 * * 1-5", "@every 30s"],
    },
    "args": {"type": "array", "default": []},
    "kwargs": {"type": "object", "default": {}},
    "pool": {"type": ["string", "null"], "description": "defaults to the task's pool"},
    "tz": {"type": "string", "default": "UTC", "examples": ["Europe/Berlin"]},
    "misfire": {
        "enum": list(MISFIRE_POLICIES),
        "default": "latest",
        "description": "after downtime: run the latest missed slot once, skip, or run all (max 100)",
    },
}

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
        "properties": {"name": {"type": "string"}, **_DEFINITION},
    },
    "ScheduleChange": {
        "type": "object",
        "additionalProperties": False,
        "properties": _DEFINITION,
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
        404: Reply("no such task", ref("Error")),
        409: Reply("a different schedule of that name exists; PUT it", ref("Error")),
    },
)
async def create_schedule(api: Api, request: Request) -> Response:
    """A bad expression or time zone answers 422 naming the `field` that is wrong."""
    body = json_object(await read_json(request, api.settings.max_body))
    refuse_unknown(body, NEW_FIELDS)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise invalid("name", "expected a non-empty string")
    fields = _definition(body)
    for required in ("task", "expression"):
        if required not in fields:
            raise invalid(required, "this field is required")
    info, created = await api.runtime.schedules.create(
        name, fields.pop("task"), fields.pop("expression"), replace=False, **fields
    )
    response = _reply(info, 201 if created else 200)
    if created:
        root = request.scope.get("root_path", "")
        response.headers["Location"] = f"{root}/schedules/{name}"
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
    replies={200: Reply("the schedule after the change", ref("Schedule")), 404: NOT_FOUND},
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
        404: NOT_FOUND,
        503: Reply("the pool is full; retry after `Retry-After` seconds", ref("Error")),
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
