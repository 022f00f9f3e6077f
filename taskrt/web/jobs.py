"""Job endpoints: add, read, list, cancel, retry, and mint per-job tokens."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..definitions import Options, TaskCall, make_options
from ..errors import PoolNotFound
from ..models import JobInfo
from .auth import JobTokenPrincipal
from .inputs import (
    MAX_INT64,
    duration_of,
    field_of,
    invalid,
    job_id_of,
    job_ids_of,
    json_object,
    matching,
    older_than,
    parse_datetime,
    query_bool,
    query_int,
    query_scalar,
    read_json,
    refuse_unknown,
    to_int,
)
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import (
    CURSOR_PATTERN,
    DURATION_MAX_LENGTH,
    DURATION_PATTERN,
    STATUS_LIST_PATTERN,
    integer,
    ref,
)

group = EndpointGroup("jobs", "Add, inspect, cancel and retry jobs.")

JOB_ID = Param("job_id", "path", integer(1), required=True)
NOT_FOUND = Reply("no such job", ref("Error"))
QUEUE_FULL = Reply(
    "the pool is full (`queue_full`; retry after `Retry-After` seconds), "
    "or the runtime is not started (`not_started`)",
    ref("Error"),
)
DUPLICATE_ID = Reply(
    "the unique key is taken and `on_conflict` is `raise` (`duplicate_job`, with the "
    "`existing_id`), or the task's `next_id` hook gave an id that is taken (`duplicate_job_id`)",
    ref("Error"),
)
_STATUS_LIST = re.compile(STATUS_LIST_PATTERN)
#: The per-call options ``POST /jobs`` takes, and each step of ``POST /workflows``.
OPTION_FIELDS = frozenset(
    {
        "delay",
        "run_at",
        "priority",
        "unique_key",
        "attempts",
        "timeout",
        "metadata",
        "unique_for",
        "on_conflict",
        "deadline",
        "retry",
        "lock",
        "after",
        "on_parent_failure",
        "batch_key",
    }
)
NEW_JOB_FIELDS = frozenset({"task", "args", "kwargs", "pool"}) | OPTION_FIELDS


def job_url(request: Request, job_id: int) -> str:
    """The job's path as the client sees it, mount prefix included."""
    return f"{request.scope.get('root_path', '')}/jobs/{job_id}"


@group.post(
    "/jobs",
    summary="Add a job",
    body=ref("NewJob"),
    replies={
        201: Reply("the job, as stored", ref("Job")),
        404: Reply("no such task or pool, or no such job in `after`", ref("Error")),
        409: DUPLICATE_ID,
        503: QUEUE_FULL,
    },
)
async def add_job(api: Api, request: Request) -> Response:
    """Returns once the job is durable. A `unique_key` that matches a waiting or
    running job (or one added within its `unique_for` window) returns that job
    instead of adding another, or, with `on_conflict: "raise"`, answers 409."""
    body = json_object(await read_json(request, api.settings.max_body))
    refuse_unknown(body, NEW_JOB_FIELDS)
    name = body.get("task")
    if not isinstance(name, str) or not name:
        raise invalid("task", "expected the name of a task")
    rt = api.runtime
    spec = rt.resolve(name).spec
    args = field_of(body, "args", list, "an array")
    kwargs = field_of(body, "kwargs", dict, "an object")
    pool_name = field_of(body, "pool", str, "a pool's name") or spec.pool
    pool = rt.pools.get(pool_name)
    if pool is None:
        raise PoolNotFound(pool_name)
    options = options_of(body)
    # ``enqueue`` rather than ``pool.add``: a job keyword argument named ``tx``
    # must reach the handler, not be taken for ``add``'s own parameter.
    job_id = await rt.enqueue(
        TaskCall(spec, options), args=args or (), kwargs=kwargs or {}, pool=pool.name
    )
    job = await rt.get(job_id)
    return JSONResponse(
        job.to_dict(), status_code=201, headers={"Location": job_url(request, job.id)}
    )


def options_of(body: dict[str, Any]) -> Options:
    """The per-call options in ``body`` (``OPTION_FIELDS``; others are ignored here),
    type-checked here and checked by ``make_options``: 422 naming the field."""
    run_at = field_of(body, "run_at", (int, float, str), "epoch seconds or an ISO 8601 date-time")
    if isinstance(run_at, str):
        run_at = parse_datetime("run_at", run_at)
    deadline = field_of(
        body, "deadline", (int, float, str), "epoch seconds or an ISO 8601 date-time"
    )
    if isinstance(deadline, str):
        deadline = parse_datetime("deadline", deadline)
    attempts = field_of(body, "attempts", int, "a positive integer, or -1 for unlimited")
    # A duration is a finite number or at most 64 characters: always finite.
    return make_options(
        delay=duration_of(body, "delay"),
        run_at=run_at,
        priority=field_of(body, "priority", int, "an integer"),
        unique_key=field_of(body, "unique_key", str, "a string"),
        attempts="default" if attempts is None else attempts,
        timeout=duration_of(body, "timeout"),
        metadata=field_of(body, "metadata", dict, "an object"),
        unique_for=duration_of(body, "unique_for"),
        on_conflict=field_of(body, "on_conflict", str, "'return' or 'raise'"),
        deadline=deadline,
        retry=field_of(body, "retry", (int, float, str, list, dict), "a retry policy"),
        lock=field_of(body, "lock", str, "a lock key"),
        after=job_ids_of(body, "after"),
        on_parent_failure=field_of(body, "on_parent_failure", str, "'cancel' or 'run'"),
        batch_key=field_of(body, "batch_key", str, "a string"),
    )


#: The listing's filters: ``GET /jobs`` and ``GET /jobs/count`` take them alike.
FILTER_PARAMS = (
    Param(
        "status",
        schema={
            "type": "array",
            "items": {"type": "string", "pattern": STATUS_LIST_PATTERN},
        },
        description=(
            "one status or several, comma-separated (WAITING,RUNNING) or repeated "
            "(?status=WAITING&status=RUNNING); any case"
        ),
        allow_empty=True,
    ),
    Param("pool", allow_empty=True),
    Param("task", allow_empty=True),
    Param(
        "metadata.{key}",
        description=(
            "filter on a metadata field, e.g. `metadata.user=42`; the value is read "
            'as JSON when it is a JSON scalar (42, true, "42"), else as text'
        ),
    ),
    Param(
        "scheduled",
        schema={"type": "boolean"},
        description=(
            "true: only jobs waiting for a time still to come (a delay, a backoff), "
            "not for other jobs (parents, a batch)"
        ),
        allow_empty=True,
    ),
    Param(
        "older_than",
        schema={
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": DURATION_MAX_LENGTH,
        },
        description="only jobs created that long ago or more: seconds, or a duration (7d)",
        allow_empty=True,
    ),
)


def listing_filter(request: Request) -> dict[str, Any]:
    """The ``rt.jobs`` / ``rt.count`` filter arguments of a query (``FILTER_PARAMS``)."""
    query = request.query_params
    # Only status takes several values: a pool, task, metadata key, limit or cursor
    # given twice was read as its last value, silently.
    for key in dict.fromkeys(k for k, _ in query.multi_items()):
        if key != "status" and len(query.getlist(key)) > 1:
            raise invalid(key, "given more than once: expected it once (only status repeats)")
    what = "statuses separated by commas"
    raws = [matching("status", raw, _STATUS_LIST, what) for raw in query.getlist("status")]
    statuses = [s.strip() for raw in raws for s in raw.split(",") if s.strip()]
    metadata: dict[str, Any] = {}
    for key, value in query.multi_items():
        if key.startswith("metadata."):
            name = key.removeprefix("metadata.")
            if not name:
                raise invalid(key, "expected metadata.<key>=<value>")
            metadata[name] = query_scalar(value)  # checked by the runtime (its filter)
    return {
        "status": statuses or None,
        "pool": query.get("pool") or None,
        "task": query.get("task") or None,
        "metadata": metadata,
        "scheduled": query_bool(request, "scheduled"),
        "older_than": older_than(query.get("older_than") or None),
    }


@group.get(
    "/jobs",
    summary="List jobs, newest first",
    params=[
        *FILTER_PARAMS,
        Param(
            "limit",
            schema={"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
            allow_empty=True,
        ),
        Param(
            "cursor",
            schema={"type": "string", "pattern": CURSOR_PATTERN},
            description="the `cursor` of the previous page",
            allow_empty=True,
        ),
    ],
    query_prefixes=["metadata."],
    replies={200: Reply("one page of jobs", ref("JobPage"))},
)
async def list_jobs(api: Api, request: Request) -> Response:
    """Pages are stable: a job added meanwhile never shifts the next page."""
    cursor = request.query_params.get("cursor") or None
    if cursor is not None:
        before = to_int(cursor)
        if before is None or before > MAX_INT64:
            raise invalid("cursor", f"expected the cursor of a previous page, found {cursor!r}")
        cursor = str(before)
    page = await api.runtime.jobs(
        **listing_filter(request),
        limit=query_int(request, "limit", 50, 1, 1000),
        cursor=cursor,
    )
    return JSONResponse({"jobs": [j.to_dict() for j in page.jobs], "cursor": page.cursor})


@group.get(
    "/jobs/{job_id:int}",
    summary="A job: status, attempts, progress, result, error, timestamps",
    name="get_job",
    access="token",
    params=[JOB_ID],
    replies={200: Reply("the job", ref("Job")), 404: NOT_FOUND},
)
async def get_job(api: Api, request: Request) -> Response:
    job = await api.runtime.get(job_id_of(request))
    return JSONResponse(job.to_dict())


@group.get(
    "/jobs/{job_id:int}/progress",
    summary="A job's progress",
    access="token",
    params=[JOB_ID],
    replies={200: Reply("current, total, message and percent", ref("Progress")), 404: NOT_FOUND},
)
async def get_progress(api: Api, request: Request) -> Response:
    job = await api.runtime.get(job_id_of(request))
    return JSONResponse(job.progress_dict())


@group.get(
    "/jobs/{job_id:int}/result",
    summary="A job's result or error",
    access="token",
    params=[JOB_ID],
    replies={200: Reply("`result` is null until the job succeeds", ref("Result")), 404: NOT_FOUND},
)
async def get_result(api: Api, request: Request) -> Response:
    job = await api.runtime.get(job_id_of(request))
    return JSONResponse(result_dict(job))


def result_dict(job: JobInfo) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status.value,
        "result": job.result,
        "error": job.error,
        "finished_at": job.finished_at,
    }


@group.get(
    "/jobs/{job_id:int}/attempts",
    summary="The execution record of every attempt",
    access="token",
    params=[JOB_ID],
    replies={
        200: Reply(
            "attempts, oldest first",
            {
                "type": "object",
                "properties": {"attempts": {"type": "array", "items": ref("Attempt")}},
            },
        ),
        404: NOT_FOUND,
    },
)
async def get_attempts(api: Api, request: Request) -> Response:
    """Tracebacks are for operators: given to requests the app's `auth` let
    through, never to a per-job token; in an app without `auth`, only when it
    was made with `expose_tracebacks=True`. Otherwise they are null; the error
    message is always there."""
    attempts = await api.runtime.attempts(job_id_of(request))
    items = [a.to_dict() for a in attempts]
    if not may_see_tracebacks(api, request):
        for item in items:
            item["traceback"] = None
    return JSONResponse({"attempts": items})


def may_see_tracebacks(api: Api, request: Request) -> bool:
    """Whether this (authenticated) request may read handler tracebacks."""
    if isinstance(getattr(request.state, "principal", None), JobTokenPrincipal):
        return False
    return api.settings.auth is not None or api.settings.expose_tracebacks


_CANCEL_REPLIES = {
    200: Reply("the job after the cancel", ref("Job")),
    404: NOT_FOUND,
    409: Reply("the job has already finished", ref("Error")),
}


@group.post(
    "/jobs/{job_id:int}/cancel",
    summary="Cancel a waiting or running job (as DELETE /jobs/{id})",
    name="cancel_one",
    params=[JOB_ID],
    replies=_CANCEL_REPLIES,
)
@group.delete(
    "/jobs/{job_id:int}",
    summary="Cancel a waiting or running job",
    params=[JOB_ID],
    replies=_CANCEL_REPLIES,
)
async def cancel_job(api: Api, request: Request) -> Response:
    """A running job's handler is cancelled; the response comes once it has stopped."""
    job = await api.runtime.cancel(job_id_of(request))
    return JSONResponse(job.to_dict())


@group.post(
    "/jobs/{job_id:int}/retry",
    summary="Retry a failed or cancelled job",
    params=[JOB_ID],
    replies={
        200: Reply("the job, WAITING again", ref("Job")),
        404: NOT_FOUND,
        409: Reply("the job is not FAILURE or CANCELLED, or its deadline has passed", ref("Error")),
    },
)
async def retry_job(api: Api, request: Request) -> Response:
    job = await api.runtime.retry(job_id_of(request))
    return JSONResponse(job.to_dict())


@group.post(
    "/jobs/{job_id:int}/token",
    summary="Mint a short-lived token for one job's state and events",
    params=[JOB_ID],
    replies={201: Reply("the token; pass it as ?token=", ref("Token")), 404: NOT_FOUND},
)
async def mint_token(api: Api, request: Request) -> Response:
    """For browsers, which cannot set headers on `EventSource`: the token
    grants `GET /jobs/{id}`, `/progress`, `/result`, `/attempts` (without
    tracebacks) and `/events` of this one job, and nothing else, until
    `expires_at`."""
    job = await api.runtime.get(job_id_of(request))
    token, expires = api.tokens.mint(job.id)
    base = job_url(request, job.id)
    return JSONResponse(
        {
            "job_id": job.id,
            "token": token,
            "expires_at": expires,
            "events": f"{base}/events?token={token}",
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


__all__ = ["NEW_JOB_FIELDS", "OPTION_FIELDS", "group", "job_url", "options_of"]
