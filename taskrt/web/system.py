"""Health, statistics and the registered tasks."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import TaskrtError
from .errors import ApiError
from .inputs import invalid, query_int, query_time
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import ANY_TIME, WINDOW_TIME, array_of, ref

group = EndpointGroup("system", "Health, statistics and tasks.")


@group.get(
    "/health",
    summary="200 while the runtime is started and its database takes writes (no authentication)",
    access="public",
    replies={
        200: Reply(
            "the runtime is started and its database takes writes: "
            '`{"status": "ok" | "degraded", "ownership": {"role", "owner", "reachable", '
            '"since", "peers"}}` ("degraded": this process cannot reach the owner and '
            'serves from the database); on PostgreSQL\'s mode "nodes", also `"nodes"`: '
            "each node alive (id, host, pid, since, ttl, heartbeat_age)",
            {"type": "object"},
        ),
        503: Reply(
            "the runtime is not started (an Error), or its database takes no writes now: "
            '`{"status": "failing", "store": {...}}` (state changes wait in memory)',
            {"type": "object"},
        ),
    },
    needs_runtime=False,
)
async def health(api: Api, request: Request) -> Response:
    if not api.runtime.started:
        raise ApiError(503, "not_started", "the runtime is not started")
    store = await api.runtime.store_health()  # a standby asks the owner
    owner = api.runtime.owner_status().to_dict()
    if not store.ok:
        # No path in the answer: only the kind of failure and what waits.
        body = {
            "status": "failing",
            "store": {
                "ok": False,
                "error": store.error,
                "retained": store.retained,
                "since": store.since,
            },
            "ownership": owner,
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    # A process that cannot reach the owner still serves (adds go to the
    # database, streams poll) but says so: "degraded".
    status = "ok" if owner["reachable"] else "degraded"
    answer: dict[str, Any] = {"status": status, "ownership": owner}
    if api.runtime.mode == "nodes":
        try:
            answer["nodes"] = await api.runtime.cluster_nodes()
        except TaskrtError:
            answer["nodes"] = None  # the database did not answer this read: unknown
    return JSONResponse(answer)


@group.get(
    "/stats",
    summary="Counts by status, success rate, mean and p95 duration",
    params=[
        Param(
            "since",
            schema=ANY_TIME,
            description=(
                "the window's start: SUCCESS, FAILURE, CANCELLED and the durations are of "
                "what finished at or after it, from the start of its minute (default: no "
                "start; without since and until, the counts are of the jobs stored); "
                "WAITING and RUNNING are the counts now, whatever the window"
            ),
            allow_empty=True,
        ),
        Param(
            "until",
            schema=ANY_TIME,
            description=(
                "the window's end: what finished before it, to the end of its minute "
                "(default: no end); not before `since` (422)"
            ),
            allow_empty=True,
        ),
    ],
    replies={200: Reply("the statistics", ref("Stats"))},
)
async def stats(api: Api, request: Request) -> Response:
    since = query_time(request, "since")
    until = query_time(request, "until")
    if since is not None and until is not None and until < since:
        raise invalid("until", "must not be before since")
    result = await api.runtime.stats(since=since, until=until)
    return JSONResponse(result.to_dict())


@group.get(
    "/stats/history",
    summary="What finished per step of time: counts by outcome, durations (survives restarts)",
    params=[
        Param(
            "since",
            schema=WINDOW_TIME,
            description="from (default: 60 steps ago)",
            allow_empty=True,
        ),
        Param("until", schema=WINDOW_TIME, description="to (default: now)", allow_empty=True),
        Param(
            "step",
            schema={"type": "integer", "minimum": 60, "maximum": 604800, "multipleOf": 60},
            description="seconds a point covers: a multiple of 60 (default 60)",
            allow_empty=True,
        ),
        Param("pool", allow_empty=True),
        Param("task", allow_empty=True),
    ],
    replies={
        200: Reply(
            "the points, oldest first (steps where nothing finished are left out; at most "
            "the latest 10,000 steps of the window)",
            {"type": "object", "properties": {"points": array_of("HistoryPoint")}},
        ),
        422: Reply("a bad window or step", ref("Error")),
    },
)
async def history(api: Api, request: Request) -> Response:
    since = query_time(request, "since")
    until = query_time(request, "until")
    if since is not None and until is not None and until < since:
        raise invalid("until", "must not be before since")
    step = query_int(request, "step", 60, 60, 604800)
    if step % 60:
        raise invalid("step", f"expected a multiple of 60 seconds, found {step}")
    query = request.query_params
    points = await api.runtime.history(
        since=since,
        until=until,
        step=step,
        pool=query.get("pool") or None,
        task=query.get("task") or None,
    )
    return JSONResponse({"points": [p.to_dict() for p in points]})


@group.get(
    "/tasks",
    summary="The registered tasks and their parameters (JSON Schema)",
    replies={
        200: Reply("the tasks", {"type": "object", "properties": {"tasks": array_of("Task")}})
    },
    needs_runtime=False,
)
async def tasks(api: Api, request: Request) -> Response:
    return JSONResponse(
        {
            "tasks": [
                {
                    "name": spec.name,
                    "pool": spec.pool,
                    "description": spec.description,
                    "attempts": spec.attempts,
                    "timeout": spec.timeout,
                    "parameters": spec.parameters,
                }
                for spec in sorted(api.runtime.tasks.values(), key=lambda s: s.name)
            ]
        }
    )


__all__ = ["group"]
