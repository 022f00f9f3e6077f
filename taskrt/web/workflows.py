"""Workflow endpoints: add a chain or a group, read one, cancel it, follow it live.

Front ends to ``rt.chain``, ``rt.group``, ``rt.workflow``, ``rt.cancel_workflow``
and ``rt.subscribe_workflow`` (``taskrt.workflows``); see docs/workflows.md.

Design notes (cited where they apply):

1. **Shape, then tasks, then options.** A new workflow's body is read in three
   passes: its shape (each step an object with a task's name, arrays and
   objects where they belong), then every step's task, then each step's
   options. So an unknown task is 404 before anything is checked against a
   task, as in ``POST /jobs``, and every 422 names the field from the top of
   the body (``chain[2].task``, ``group[0].options.delay``). The arguments are
   the runtime's to check when it adds the workflow: all of its jobs or none.
2. **Subscribe first, then read** (``streams`` note 1): the runtime's
   ``WorkflowStream`` does both when its first event (the snapshot) is taken,
   and it is taken before the response starts, so an unknown workflow answers
   404 and leaves no subscription behind.
3. **No resume.** A workflow's events come from several jobs, each numbered on
   its own, so no one ``Last-Event-ID`` says where a client stood. Frame ids
   are ``<job id>:<seq>`` (the snapshot's: ``<workflow id>:0``), and a
   reconnect gets a fresh snapshot. The frame after which the workflow is
   finished, and the snapshot of a finished workflow, have the id ``end``: a
   reconnect with it is answered 204, which makes browsers stop reconnecting
   (as for a finished job, ``streams`` note 3); a client that missed the end
   gets a snapshot of the final state.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..definitions import Signature, TaskCall
from ..errors import InvalidOption, JobNotFound
from ..models import TERMINAL, Event, EventType, JobStatus, WorkflowInfo
from ..workflows import MAX_STEPS, Flow
from .errors import ApiError
from .inputs import (
    MAX_INT64,
    field_of,
    invalid,
    json_object,
    read_json,
    refuse_unknown,
    within,
)
from .jobs import DUPLICATE_ID, OPTION_FIELDS, QUEUE_FULL, options_of
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import integer, ref
from .sse import RECONNECT_MS, EventStream, frame

group = EndpointGroup(
    "workflows",
    "Chains and groups of jobs that wait for each other: add, read, cancel, follow.",
)

WORKFLOW_ID = Param(
    "workflow_id", "path", integer(1), required=True, description="its first job's id"
)
NOT_FOUND = Reply("no such workflow (`workflow_not_found`)", ref("Error"))
BODY_FIELDS = frozenset({"chain", "group", "then"})
STEP_FIELDS = frozenset({"task", "args", "kwargs", "options"})
#: The id of the frame after which the workflow is finished (note 3).
END = "end"


def workflow_url(request: Request, workflow_id: int) -> str:
    """The workflow's path as the client sees it, mount prefix included."""
    return f"{request.scope.get('root_path', '')}/workflows/{workflow_id}"


def _workflow_id(request: Request) -> int:
    workflow_id: int = request.path_params["workflow_id"]
    if workflow_id > MAX_INT64:
        raise _not_found(workflow_id)
    return workflow_id


def _not_found(workflow_id: int) -> ApiError:
    return ApiError(
        404,
        "workflow_not_found",
        f"no workflow with id {workflow_id}",
        workflow_id=workflow_id,
    )


@contextlib.contextmanager
def _known(workflow_id: int) -> Iterator[None]:
    """The runtime's ``JobNotFound`` for the workflow's id, as ``workflow_not_found``
    (a plain job's id names no workflow either)."""
    try:
        yield
    except JobNotFound as exc:
        if exc.job_id != workflow_id:
            raise
        raise _not_found(workflow_id) from None


def _reply(info: WorkflowInfo) -> Response:
    return JSONResponse(info.to_dict())


# -- adding ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Step:
    """One step as the body gives it, its shape checked (note 1)."""

    at: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]


def _step(raw: Any, at: str) -> _Step:
    body = json_object(raw, "a step", field=at)
    with within(f"{at}."):
        refuse_unknown(body, STEP_FIELDS)
        task = body.get("task")
        if not isinstance(task, str) or not task:
            raise invalid("task", "expected the name of a task")
        args = field_of(body, "args", list, "an array") or []
        kwargs = field_of(body, "kwargs", dict, "an object") or {}
        options = field_of(body, "options", dict, "an object") or {}
        with within("options."):
            refuse_unknown(options, OPTION_FIELDS)
    return _Step(at, task, args, kwargs, options)


def _shape(body: dict[str, Any]) -> tuple[str, list[_Step], _Step | None]:
    """The kind of workflow (``chain`` or ``group``), its steps and a group's callback."""
    refuse_unknown(body, BODY_FIELDS)
    if ("chain" in body) == ("group" in body):
        field = "group" if "chain" in body else "chain"
        raise invalid(field, 'expected either "chain" or "group" (an array of steps)')
    kind = "chain" if "chain" in body else "group"
    if kind == "chain" and "then" in body:
        raise invalid("then", "only a group has a callback; a chain's last step runs last")
    if body[kind] is None:
        raise invalid(kind, "expected an array of steps, found null")
    listed: list[Any] = field_of(body, kind, list, "an array of steps")
    if not listed:
        raise invalid(kind, "expected at least one step")
    if len(listed) > MAX_STEPS:
        raise invalid(kind, f"expected at most {MAX_STEPS} steps, found {len(listed)}")
    steps = [_step(item, f"{kind}[{k}]") for k, item in enumerate(listed)]
    then = None if body.get("then") is None else _step(body["then"], "then")
    return kind, steps, then


@group.post(
    "/workflows",
    summary="Add a workflow: a chain, or a group with an optional callback",
    body=ref("NewWorkflow"),
    replies={
        201: Reply("the workflow's id, its jobs' ids and its URL", ref("NewWorkflowReply")),
        404: Reply(
            "no such task (before anything else is checked against it), pool, or "
            "job named in an `after`",
            ref("Error"),
        ),
        409: DUPLICATE_ID,
        503: QUEUE_FULL,
    },
)
async def add_workflow(api: Api, request: Request) -> Response:
    """Every job is added in one transaction, or none. A 422 names the field from
    the top of the body, such as `chain[2].task` or `group[0].options.delay`."""
    body = json_object(await read_json(request, api.settings.max_body))
    kind, steps, then = _shape(body)
    rt = api.runtime
    every = [*steps, *([then] if then is not None else [])]
    specs = [rt.resolve(step.task).spec for step in every]  # note 1
    signatures: list[Signature] = []
    keys: dict[str, str] = {}  # a unique key and the first step that has it
    for step, spec in zip(every, specs, strict=True):
        with within(f"{step.at}.options."):
            options = options_of(step.options)
            key = options.unique_key
            if key is not None:
                if key in keys:
                    raise InvalidOption(
                        "unique_key", f"{keys[key]} has the unique key {key!r} already"
                    )
                keys[key] = step.at
        signatures.append(Signature(TaskCall(spec, options), tuple(step.args), step.kwargs))
    flow: Flow
    if kind == "chain":
        flow = await rt.chain(*signatures)
    elif then is None:
        flow = await rt.group(signatures)
    else:
        flow = await rt.group(signatures[:-1]).then(signatures[-1])
    url = workflow_url(request, flow.id)
    return JSONResponse(
        {"id": flow.id, "jobs": list(flow.jobs), "url": url},
        status_code=201,
        headers={"Location": url},
    )


# -- reading and cancelling -------------------------------------------------------------


@group.get(
    "/workflows/{workflow_id:int}",
    summary="A workflow: its status, progress, jobs and dependencies",
    name="get_workflow",
    params=[WORKFLOW_ID],
    replies={200: Reply("the workflow", ref("Workflow")), 404: NOT_FOUND},
)
async def get_workflow(api: Api, request: Request) -> Response:
    workflow_id = _workflow_id(request)
    with _known(workflow_id):
        return _reply(await api.runtime.workflow(workflow_id))


@group.post(
    "/workflows/{workflow_id:int}/cancel",
    summary="Cancel every job of a workflow that has not finished",
    params=[WORKFLOW_ID],
    replies={200: Reply("the workflow after the cancel", ref("Workflow")), 404: NOT_FOUND},
)
async def cancel_workflow(api: Api, request: Request) -> Response:
    """Its last jobs first, so that none starts meanwhile; running jobs are told to
    stop. A finished workflow is answered as it is."""
    workflow_id = _workflow_id(request)
    with _known(workflow_id):
        return _reply(await api.runtime.cancel_workflow(workflow_id))


# -- the event stream ---------------------------------------------------------------------


def _unfinished(snapshot: Event) -> set[int]:
    """The jobs of a workflow snapshot that have not finished."""
    jobs = snapshot.data["workflow"]["jobs"]
    return {job["id"] for job in jobs if JobStatus(job["status"]) not in TERMINAL}


def _frame_id(event: Event, unfinished: set[int]) -> str:
    return f"{event.job_id}:{event.seq}" if unfinished else END  # note 3


async def _frames(first: Event, events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    try:
        unfinished = _unfinished(first)
        yield frame(first, _frame_id(first, unfinished), retry=RECONNECT_MS)
        # The stream ends once every job is terminal, or when the runtime stops.
        async for event in events:
            if event.type is EventType.SNAPSHOT:  # after a gap
                unfinished = _unfinished(event)
            elif event.terminal:
                unfinished.discard(event.job_id)
            yield frame(event, _frame_id(event, unfinished))
    finally:
        await _aclose(events)


async def _aclose(events: AsyncIterator[Event]) -> None:
    """Finalise the runtime's stream (an async generator) now, not at garbage collection."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


@group.get(
    "/workflows/{workflow_id:int}/events",
    summary="A workflow's live events: a snapshot, then every event of its jobs until all ended",
    name="workflow_events",
    params=[
        WORKFLOW_ID,
        Param(
            "Last-Event-ID",
            "header",
            {"type": "string"},
            "the id of the last event seen: `end` (and a finished workflow) is answered "
            "204; any other gets a fresh snapshot",
        ),
        Param(
            "last_event_id",
            description="the same, for clients that cannot set headers",
            allow_empty=True,
        ),
    ],
    replies={
        200: Reply(
            "`text/event-stream`: a `snapshot` (data `workflow`), then each job's events; "
            "ids are `<job id>:<seq>`, the last frame's `end`",
            ref("Event"),
            media="text/event-stream",
        ),
        204: Reply("the workflow has finished and the client has seen its end", None),
        404: NOT_FOUND,
        503: Reply(
            "too many open streams (`too_many_streams`; retry after `Retry-After` "
            "seconds), or the runtime is not started (`not_started`)",
            ref("Error"),
        ),
    },
)
async def workflow_events(api: Api, request: Request) -> Response:
    """No resume across jobs: a reconnect gets a fresh snapshot."""
    workflow_id = _workflow_id(request)
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    release = api.streams.acquire(api.settings.retry_after)
    stream = api.runtime.subscribe_workflow(workflow_id, buffer=api.settings.stream_buffer)
    events = aiter(stream)

    def close() -> None:
        stream.close()
        release()

    try:
        with _known(workflow_id):
            first = await anext(events)  # note 2
    except BaseException:
        close()
        raise
    if first.status in TERMINAL and last is not None and last.strip() == END:
        close()
        await _aclose(events)
        return Response(status_code=204)
    settings = api.settings
    return EventStream(
        _frames(first, events),
        heartbeat=settings.heartbeat,
        send_timeout=settings.send_timeout,
        on_close=close,
    )


__all__ = ["END", "group", "workflow_url"]
