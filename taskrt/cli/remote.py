"""The commands against a running server (``--url``), without its database file.

``ServerJobs`` offers what the commands ask of a runtime (``jobs``, ``get``,
``attempts``, ``cancel``, ``retry``, ``run_now``, ``bulk``, ``stats``,
``owner_status``, ``schedules.list``) over the HTTP API, so a container's or
another machine's jobs are inspected and acted on as a local file's are. An
error answer becomes the error the runtime would have raised (``JobNotFound``,
``InvalidTransition`` ...) or a ``CommandError`` with the documented status.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import httpx

from ..errors import (
    InvalidTransition,
    JobNotFound,
    PoolNotFound,
    TaskNotFound,
    WorkflowNotFound,
)
from ..models import (
    AttemptInfo,
    BulkResult,
    JobInfo,
    JobStatus,
    OwnerStatus,
    Page,
    ScheduleInfo,
    Stats,
    WorkflowInfo,
)
from .support import NOT_FOUND, UNAVAILABLE, USAGE, CommandError, request_headers, server_url
from .support import opened as opened_locally

TIMEOUT = 30.0


class ServerJobs:
    """A running server's jobs, as the commands read and act on them."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        owner: OwnerStatus,
        nodes: list[dict[str, Any]] | None = None,
    ) -> None:
        self._client = client
        self._owner = owner
        self._nodes = nodes
        # As the server's /health says: it lists the nodes in mode "nodes".
        self.mode = "owner" if nodes is None else "nodes"
        self.schedules = _Schedules(self)

    async def call(self, method: str, path: str, *, json: Any = None, params: Any = None) -> Any:
        try:
            response = await self._client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise CommandError(f"{self._client.base_url}: {exc}", UNAVAILABLE) from None
        if response.is_success:
            return response.json()
        raise _error_of(response, path)

    # -- reads -------------------------------------------------------------------

    async def get(self, job_id: int) -> JobInfo:
        return JobInfo.from_dict(await self.call("GET", f"/jobs/{job_id}"))

    async def attempts(self, job_id: int) -> list[AttemptInfo]:
        data = await self.call("GET", f"/jobs/{job_id}/attempts")
        return [AttemptInfo.from_dict(a) for a in data["attempts"]]

    async def jobs(
        self,
        *,
        status: JobStatus | str | Sequence[JobStatus | str] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int = 50,
        cursor: str | None = None,
        scheduled: bool = False,
        older_than: float | timedelta | None = None,
    ) -> Page:
        params = _filter_params(status, pool, task, metadata, scheduled, older_than)
        params["limit"] = str(limit)
        if cursor:
            params["cursor"] = cursor
        data = await self.call("GET", "/jobs", params=params)
        return Page([JobInfo.from_dict(j) for j in data["jobs"]], data["cursor"])

    async def stats(self, since: float | None = None, until: float | None = None) -> Stats:
        params = {k: str(v) for k, v in (("since", since), ("until", until)) if v is not None}
        return Stats(**await self.call("GET", "/stats", params=params))

    def owner_status(self) -> OwnerStatus:
        return self._owner

    async def cluster_nodes(self) -> list[dict[str, Any]]:
        """The nodes alive as the server's ``/health`` listed them (mode "nodes")."""
        return list(self._nodes or [])

    # -- actions -----------------------------------------------------------------

    async def cancel(self, job_id: int) -> JobInfo:
        return JobInfo.from_dict(await self.call("POST", f"/jobs/{job_id}/cancel"))

    async def workflow(self, workflow_id: int) -> WorkflowInfo:
        return WorkflowInfo.from_dict(await self.call("GET", f"/workflows/{workflow_id}"))

    async def cancel_workflow(self, workflow_id: int) -> WorkflowInfo:
        data = await self.call("POST", f"/workflows/{workflow_id}/cancel")
        return WorkflowInfo.from_dict(data)

    async def retry(self, job_id: int) -> JobInfo:
        return JobInfo.from_dict(await self.call("POST", f"/jobs/{job_id}/retry"))

    async def run_now(self, job_id: int) -> JobInfo:
        return JobInfo.from_dict(await self.call("POST", f"/jobs/{job_id}/run"))

    async def bulk(
        self,
        action: str,
        *,
        ids: Sequence[int] | None = None,
        status: Sequence[JobStatus | str] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled: bool = False,
        older_than: float | None = None,
        dry_run: bool = False,
    ) -> BulkResult:
        body: dict[str, Any] = {"dry_run": dry_run}
        if ids is not None:
            body["ids"] = list(ids)
        if status:
            body["status"] = [str(getattr(s, "value", s)) for s in status]
        for name, value in (("pool", pool), ("task", task), ("older_than", older_than)):
            if value is not None:
                body[name] = value
        if metadata:
            body["metadata"] = dict(metadata)
        if scheduled:
            body["scheduled"] = True
        return BulkResult(**await self.call("POST", f"/jobs/{action}", json=body))


class _Schedules:
    def __init__(self, jobs: ServerJobs) -> None:
        self._jobs = jobs

    async def list(self) -> list[ScheduleInfo]:
        data = await self._jobs.call("GET", "/schedules")
        return [
            ScheduleInfo(**{**s, "args": tuple(s["args"])})  # the inverse of to_dict
            for s in data["schedules"]
        ]


@contextlib.asynccontextmanager
async def server_jobs(url: str, headers: Mapping[str, str]) -> AsyncIterator[ServerJobs]:
    """The server at ``url`` (its ``/health`` read first: it says who owns the jobs)."""
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"),
        headers=httpx.Headers(dict(headers), encoding="utf-8"),  # a non-ASCII token
        timeout=TIMEOUT,
    ) as client:
        try:
            health = await client.get("/health")
        except httpx.HTTPError as exc:
            raise CommandError(f"{url}: {exc}", UNAVAILABLE) from None
        ownership: dict[str, Any] = {}
        nodes: list[dict[str, Any]] | None = None
        with contextlib.suppress(ValueError, AttributeError):
            answer = health.json()
            ownership = answer.get("ownership") or {}
            if isinstance(answer.get("nodes"), list):
                nodes = answer["nodes"]
        owner = OwnerStatus(
            role=str(ownership.get("role", "?")),
            owner=ownership.get("owner"),
            reachable=bool(ownership.get("reachable", False)),
            since=ownership.get("since"),
            peers=int(ownership.get("peers", 0)),
        )
        yield ServerJobs(client, owner, nodes)


def _metadata_param(value: Any) -> str:
    """A metadata filter's value as the server reads it (JSON when it parses as
    JSON, else text): text that reads as JSON (``"42"``, ``"true"``) goes quoted, so
    it stays text, as with ``--db``; it went as it was and matched the number."""
    if not isinstance(value, str):
        return _json(value)
    try:
        json.loads(value)
    except (ValueError, RecursionError):
        return value
    return _json(value)


def _filter_params(
    status: JobStatus | str | Sequence[JobStatus | str] | None,
    pool: str | None,
    task: str | None,
    metadata: Mapping[str, Any] | None,
    scheduled: bool,
    older_than: float | timedelta | None,
) -> dict[str, str]:
    params: dict[str, str] = {}
    if status:
        items = [status] if isinstance(status, str | JobStatus) else list(status)
        params["status"] = ",".join(str(getattr(s, "value", s)) for s in items)
    if pool:
        params["pool"] = pool
    if task:
        params["task"] = task
    for key, value in (metadata or {}).items():
        params[f"metadata.{key}"] = _metadata_param(value)
    if scheduled:
        params["scheduled"] = "true"
    if older_than is not None:
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        params["older_than"] = repr(float(seconds))
    return params


def _json(value: Any) -> str:
    return json.dumps(value)


def _error_of(response: httpx.Response, path: str) -> Exception:
    """The error an answer means, as the runtime would raise it where it can."""
    try:
        error = response.json()["error"]
        code, message = str(error.get("code")), str(error.get("message"))
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "", response.text[:200] or response.reason_phrase
    if code == "job_not_found":
        exc: Exception = JobNotFound(int(path.split("/")[2]))
        return exc
    if code == "workflow_not_found":
        return WorkflowNotFound(int(path.split("/")[2]))
    if code == "invalid_transition":
        exc = InvalidTransition.__new__(InvalidTransition)
        exc.args = (message,)
        return exc
    if code == "pool_not_found":
        return PoolNotFound(str(error.get("pool", "?")))
    if code == "task_not_found":
        return TaskNotFound(str(error.get("task", "?")))
    status = response.status_code
    if status in (401, 403):
        hint = " (give --token, or -H 'Authorization: ...')" if status == 401 else ""
        return CommandError(f"{response.url}: {status} {message}{hint}", UNAVAILABLE)
    if status == 404:
        return CommandError(f"{response.url}: {message}", NOT_FOUND)
    if status in (503, 502, 504) or status >= 500:
        return CommandError(f"{response.url}: {status} {message}", UNAVAILABLE)
    return CommandError(message, USAGE)


@contextlib.asynccontextmanager
async def opened(args: Any) -> AsyncIterator[Any]:
    """The jobs a command works on: a running server's (``--url``), or a runtime's
    opened as a client (``--app``, ``--db``). Both answer the same calls."""
    url = server_url(args)
    if url:
        async with server_jobs(url, request_headers(args)) as jobs:
            yield jobs
        return
    async with opened_locally(args) as rt:
        yield rt


__all__ = ["ServerJobs", "opened", "server_jobs"]
