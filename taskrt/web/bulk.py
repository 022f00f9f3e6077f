"""Many jobs at once, and one job's less common actions.

- ``GET /jobs/count``: how many jobs the listing's filters match.
- ``POST /jobs/cancel``, ``/jobs/retry``, ``/jobs/purge``: the action on every
  job a filter (or a list of ids) matches (``rt.bulk``), with ``dry_run`` for
  the count the dashboard shows before it asks for a confirmation. A body
  with no filter at all is refused: "every job" must be said (``"status":
  [...]``, ``"older_than": 0``).
- ``POST /jobs/{id}/purge`` (a finished job, and its attempts, deleted) and
  ``POST /jobs/{id}/run`` (a delayed or backing-off job starts as soon as a
  slot is free).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InvalidTransition
from .inputs import (
    field_of,
    invalid,
    job_id_of,
    job_ids_of,
    json_object,
    older_than,
    read_json,
    refuse_unknown,
)
from .jobs import FILTER_PARAMS, listing_filter
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import (
    integer,
    ref,
)

group = EndpointGroup("bulk", "Many jobs at once (count, cancel, retry, purge); run now.")

JOB_ID = Param("job_id", "path", integer(1), required=True)
NOT_FOUND = Reply("no such job", ref("Error"))
FILTER_FIELDS = frozenset(
    {"ids", "status", "pool", "task", "metadata", "older_than", "scheduled", "dry_run"}
)
STATUSES = ("WAITING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED")


def _filter(body: dict[str, Any]) -> dict[str, Any]:
    """The ``rt.bulk`` arguments of a body (422 for a bad field)."""
    refuse_unknown(body, FILTER_FIELDS)
    ids = job_ids_of(body, "ids")  # an id may be written 5.0, as everywhere
    status = body.get("status")
    if isinstance(status, str):
        status = [status]
    if status == []:
        status = None  # no status named: not a filter
    if status is not None and (
        not isinstance(status, list)
        or not all(isinstance(s, str) and s.upper() in STATUSES for s in status)
    ):
        raise invalid("status", f"expected one status or a list of them: {', '.join(STATUSES)}")
    metadata = field_of(body, "metadata", dict, "an object")  # its fields: the runtime's check
    scheduled = field_of(body, "scheduled", bool, "true or false") or False
    out = {
        "ids": ids,
        "status": status,
        "pool": field_of(body, "pool", str, "a pool's name"),
        "task": field_of(body, "task", str, "a task's name"),
        "metadata": metadata or None,  # {} names no field: not a filter
        "older_than": older_than(body.get("older_than")),
        "scheduled": scheduled,
        "dry_run": field_of(body, "dry_run", bool, "true or false") or False,
    }
    # ``is``, not ``in``: an age of 0 (every job) is a filter, and 0 == False.
    if all(out[k] is None or out[k] is False for k in FILTER_FIELDS - {"dry_run"}):
        raise invalid(
            "filter",
            "give ids or a filter (status, pool, task, metadata, older_than, scheduled); "
            'for every job say so, e.g. {"older_than": 0}',
        )
    return out


def _action(action: str) -> Any:
    async def endpoint(api: Api, request: Request) -> Response:
        body = json_object(await read_json(request, api.settings.max_body))
        result = await api.runtime.bulk(action, **_filter(body))
        return JSONResponse(result.to_dict())

    endpoint.__name__ = f"bulk_{action}"
    endpoint.__doc__ = (
        f"The `{action}` of every job the filter matches; jobs in a status it does not "
        "apply to are counted as `skipped`. At most 100,000 jobs a call."
    )
    return endpoint


_BULK_REPLIES = {
    200: Reply("what was matched, done and skipped", ref("BulkResult")),
    422: Reply("a bad filter, no filter at all, or more jobs than one call takes", ref("Error")),
}

for _name, _summary in (
    ("cancel", "Cancel every waiting or running job a filter matches"),
    ("retry", "Retry every failed or cancelled job a filter matches"),
    ("purge", "Delete every finished job a filter matches, and its attempts"),
):
    group.post(f"/jobs/{_name}", summary=_summary, body=ref("JobFilter"), replies=_BULK_REPLIES)(
        _action(_name)
    )


@group.get(
    "/jobs/count",
    summary="How many jobs the listing's filters match",
    params=list(FILTER_PARAMS),
    query_prefixes=["metadata."],
    replies={
        200: Reply("the count", {"type": "object", "properties": {"count": {"type": "integer"}}})
    },
)
async def count_jobs(api: Api, request: Request) -> Response:
    return JSONResponse({"count": await api.runtime.count(**listing_filter(request))})


@group.post(
    "/jobs/{job_id:int}/run",
    summary="Start a delayed or backing-off job as soon as a slot is free",
    params=[JOB_ID],
    replies={
        200: Reply("the job, due now", ref("Job")),
        404: NOT_FOUND,
        409: Reply("the job is not WAITING", ref("Error")),
    },
)
async def run_now(api: Api, request: Request) -> Response:
    return JSONResponse((await api.runtime.run_now(job_id_of(request))).to_dict())


@group.post(
    "/jobs/{job_id:int}/purge",
    summary="Delete a finished job and its attempts",
    params=[JOB_ID],
    replies={
        200: Reply("deleted", ref("BulkResult")),
        404: NOT_FOUND,
        409: Reply("the job has not finished", ref("Error")),
    },
)
async def purge_one(api: Api, request: Request) -> Response:
    job = await api.runtime.get(job_id_of(request))
    if not job.terminal:
        raise InvalidTransition(job.id, job.status.value, "purge")
    result = await api.runtime.bulk("purge", ids=[job.id])
    if result.done == 0:
        # Still there: a job that waits for it needs it, or would when another of its
        # parents is retried (retention keeps it too), or it changed meanwhile
        # (retried, say).
        now = await api.runtime.get(job.id)
        reason = "a dependent job needs its result" if now.terminal else None
        raise InvalidTransition(job.id, now.status.value, "purge", reason)
    return JSONResponse(result.to_dict())


__all__ = ["group"]
