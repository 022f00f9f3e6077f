"""Plain values: job statuses, job records, attempts, events and statistics.

Everything here is a frozen dataclass or an enum. A change returns a new value
(``dataclasses.replace``); nothing here does I/O.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal


class JobStatus(StrEnum):
    """A job's status. The wire names are Yao's."""

    WAITING = "WAITING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED}
)

# The one table of allowed transitions. RUNNING -> WAITING is a retry, a
# recovery after a crash or a shutdown; FAILURE/CANCELLED -> WAITING is a
# manual retry.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.WAITING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILURE}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.WAITING, JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCESS: frozenset(),
    JobStatus.FAILURE: frozenset({JobStatus.WAITING}),
    JobStatus.CANCELLED: frozenset({JobStatus.WAITING}),
}


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[old]


class EventType(StrEnum):
    """What happened to a job. ``snapshot`` is sent first to a new subscriber."""

    SNAPSHOT = "snapshot"
    ADDED = "added"
    STARTED = "started"
    PROGRESS = "progress"
    RETRYING = "retrying"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_EVENTS


TERMINAL_EVENTS: frozenset[EventType] = frozenset(
    {EventType.SUCCESS, EventType.FAILURE, EventType.CANCELLED}
)

STATUS_EVENT: dict[JobStatus, EventType] = {
    JobStatus.SUCCESS: EventType.SUCCESS,
    JobStatus.FAILURE: EventType.FAILURE,
    JobStatus.CANCELLED: EventType.CANCELLED,
}


WAITING_REASONS = (
    "scheduled",
    "paused",
    "rate_limited",
    "locked",
    "blocked",
    "batching",
    "batched",
)

BLOCKED_AT = 253402300799.0
"""The ``run_at`` a job waiting for its parents (``blocked``) is stored with: the last
second of year 9999, so that no refill, claim or timer takes it before its parents
release it (``taskrt.workflows`` note 1)."""

ON_PARENT_FAILURE = ("cancel", "run")
"""What a dependent job does when a parent ends in FAILURE or CANCELLED."""
"""Why a WAITING job waits, named once (``JobInfo.waiting_reason``): a ``run_at`` to
come, its pool paused, a rate limit, a lock another job holds, a dependency, its
batch filling up, its batch running (in another job: ``JobInfo.batch``)."""


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A snapshot of one job, as stored and as seen by callers."""

    id: int
    task: str
    pool: str
    status: JobStatus
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    max_attempts: int | None = 1
    current: float = 0
    total: float = 0
    message: str = ""
    result: Any = None
    error: str | None = None
    priority: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    unique_key: str | None = None
    created_at: float = 0.0
    run_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    timeout: float | None = None
    recoveries: int = 0
    seq: int = 0
    # A per-call retry policy (``options(retry=...)``) as given; None = the task's.
    retry_policy: Any = None
    # Not started after it (epoch seconds): FAILURE "deadline passed"; a running
    # attempt is cancelled at it (docs/flow-control.md).
    deadline: float | None = None
    # Named steps (``progress(..., step=...)``): the one reported last, and every
    # step seen, in the order first seen, as {"name", "current", "total"}.
    step: str | None = None
    steps: tuple[dict[str, Any], ...] = ()
    # At most one job of a lock key runs at a time (``options(lock=...)``).
    lock: str | None = None
    # Why a WAITING job waits (WAITING_REASONS), or None: next in line.
    waiting_reason: str | None = None
    # The node that runs it, or ran its last attempt (PostgreSQL, mode "nodes").
    node: str | None = None
    # The workflow it belongs to (``rt.chain``, ``rt.group``): the id of its first job.
    workflow: int | None = None
    # Batched handlers (``@rt.task(batch=Batch(...))``): the key its batch gathers by,
    # and the job that runs its batch (its first member) once the batch formed.
    batch_key: str | None = None
    batch: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape of the HTTP API's job object)."""
        data = asdict(self)
        data["status"] = self.status.value
        data["args"] = list(self.args)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobInfo:
        """The inverse of ``to_dict`` (a job that crossed between processes)."""
        return cls(
            **{
                **data,
                "status": JobStatus(data["status"]),
                "args": tuple(data["args"]),
                "steps": tuple(data.get("steps") or ()),
            }
        )

    def progress_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "current": self.current,
            "total": self.total,
            "message": self.message,
            "percent": percent(self.current, self.total),
            "step": self.step,
            "steps": [{**s, "percent": percent(s["current"], s["total"])} for s in self.steps],
        }


def percent(current: float, total: float) -> float | None:
    if not total:
        return None
    return max(0.0, min(100.0, 100.0 * current / total))


class AttemptOutcome(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    RETRY = "retry"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """The record of one execution of a job."""

    job_id: int
    number: int
    started_at: float
    finished_at: float | None = None
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    error: str | None = None
    traceback: str | None = None
    # What followed: "retry" (by policy, not before next_at), "retried" (asked
    # for by hand at next_at), or None (it ended the job, or it runs now).
    next: str | None = None
    next_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptInfo:
        return cls(**{**data, "outcome": AttemptOutcome(data["outcome"])})


@dataclass(frozen=True, slots=True)
class Event:
    """One transition or progress report of one job.

    ``seq`` increases by one for every event of the same job, across restarts,
    so a subscriber can tell whether it missed something.
    """

    job_id: int
    seq: int
    type: EventType
    task: str
    pool: str
    status: JobStatus
    at: float
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "seq": self.seq,
            "type": self.type.value,
            "task": self.task,
            "pool": self.pool,
            "status": self.status.value,
            "at": self.at,
            **self.data,
        }


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """Whether the database takes writes; ``rt.health()``, ``/health`` and the metrics read it.

    While ``ok`` is false, state changes are kept in memory (``retained`` of
    them) and written again with backoff; ``add`` is refused with
    ``StoreUnavailable``. ``outages`` counts the episodes so far and
    ``last_outage`` gives how long the last one that ended lasted, in seconds.
    """

    ok: bool
    error: str | None = None
    since: float | None = None
    retained: int = 0
    failed_writes: int = 0
    outages: int = 0
    last_outage: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class OwnerStatus:
    """A process's part in running a database's jobs (``rt.owner_status()``).

    ``role``: ``owner`` (runs the jobs), ``standby`` (serves the API, takes
    over when the owner dies), ``node`` (one of the processes that all run
    jobs, ``mode="nodes"``), ``client`` (``workers=False``) or ``stopped``.
    ``owner``: the owner's name (host:pid:random) when known, a node's own
    name; ``reachable``:
    whether calls reach it (else they fall back to the database); ``since``:
    when it became the owner (epoch seconds); ``peers``: for the owner, how
    many processes are connected to it.
    """

    role: str
    owner: str | None
    reachable: bool
    since: float | None = None
    peers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of one pool; the tests, the HTTP route and the metrics read it."""

    name: str
    concurrency: int
    capacity: int | None
    waiting: int
    running: int
    paused: bool = False
    processed: int = 0
    failed: int = 0
    latency: float = 0.0
    """Seconds the oldest runnable job has waited past its ``run_at`` (0: none waits)."""
    rate: str | None = None
    """At most so many starts per unit of time (``"10/s"``), or None."""
    next_slot: float = 0.0
    """Seconds until the rate limit lets the next job start (0: now, or no limit)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts by status and durations over finished jobs in a time window."""

    counts: dict[str, int]
    total: int
    success_rate: float | None
    mean_duration: float | None
    p95_duration: float | None
    since: float | None = None
    until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """What finished in one step of time (``rt.history``): from ``at`` for ``step`` seconds.

    ``mean_duration`` and ``p95_duration`` are of the successes; the p95 comes
    from the histogram's buckets (``taskrt.counters.BUCKETS``): it is the upper
    bound of the bucket holding the 95th percentile, so it is at most that
    bucket's width above the true value.
    """

    at: float
    step: float
    succeeded: int
    failed: int
    cancelled: int
    retried: int
    mean_duration: float | None
    p95_duration: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk action (``rt.bulk``) did: the jobs the filter matched, those it
    acted on, those it left (not in a status the action applies to)."""

    action: str
    matched: int
    done: int
    skipped: int
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job listing; pass ``cursor`` back to get the next one."""

    jobs: list[JobInfo]
    cursor: str | None


# -- schedules (taskrt.scheduler) ---------------------------------------------

Misfire = Literal["latest", "skip", "all"]
MISFIRE_POLICIES: tuple[Misfire, ...] = ("latest", "skip", "all")

_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_sorted_json = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
).encode


def _canonical_json(value: Any) -> str:
    """Compact JSON with every object's keys sorted: equal values, equal text,
    whatever order a dict was built in. Encoded once as it is first, so keys
    are JSON's (strings) before they are sorted: ``{1: 0, "a": 0}`` sorts too."""
    return _sorted_json(json.loads(_json(value)))


@dataclass(frozen=True, slots=True)
class ScheduleDefinition:
    """What a declaration says; build one with ``define`` (it validates)."""

    name: str
    task: str
    expression: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    pool: str | None = None
    tz: str = "UTC"
    misfire: Misfire = "latest"

    def canonical(self) -> tuple[Any, ...]:
        """The definition as a row stores it (arguments as compact JSON text, keys
        sorted), for comparison: two definitions are the same when these are equal.
        A row's definition is compared through this too (``ScheduleInfo.definition``),
        so a row stored with its keys in another order compares equal."""
        return (
            self.task,
            _canonical_json(list(self.args)),
            _canonical_json(self.kwargs),
            self.pool,
            self.expression,
            self.tz,
            self.misfire,
        )


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A snapshot of one schedule's row (``rt.schedules``, taskrt.scheduler).

    ``next_run_at`` is the next slot to fire (``None`` while paused);
    ``last_run_at`` the slot time of the last fire; ``fires`` counts jobs added
    for slots, ``failures`` jobs of the schedule that ended FAILURE (scheduler note 6);
    ``last_error`` why the last slot added no job, if it did not.
    """

    name: str
    task: str
    expression: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    pool: str | None = None
    tz: str = "UTC"
    misfire: Misfire = "latest"
    paused: bool = False
    next_run_at: float | None = None
    last_run_at: float | None = None
    last_job_id: int | None = None
    last_error: str | None = None
    fires: int = 0
    failures: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def definition(self) -> ScheduleDefinition:
        return ScheduleDefinition(
            self.name,
            self.task,
            self.expression,
            self.args,
            self.kwargs,
            self.pool,
            self.tz,
            self.misfire,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the HTTP API's schedule object)."""
        return {
            "name": self.name,
            "task": self.task,
            "expression": self.expression,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "pool": self.pool,
            "tz": self.tz,
            "misfire": self.misfire,
            "paused": self.paused,
            "next_run_at": self.next_run_at,
            "last_run_at": self.last_run_at,
            "last_job_id": self.last_job_id,
            "last_error": self.last_error,
            "fires": self.fires,
            "failures": self.failures,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """A workflow (``rt.chain``, ``rt.group``) as seen now: its jobs and how far it got.

    ``status``: RUNNING while any job is WAITING or RUNNING; then FAILURE if a job
    failed, CANCELLED if one was cancelled, else SUCCESS. ``progress`` (0 to 1):
    finished jobs, plus each running job's own fraction, over all jobs.
    ``edges``: (child, parent) for every dependency among its jobs.
    """

    id: int
    status: JobStatus
    jobs: tuple[JobInfo, ...]
    edges: tuple[tuple[int, int], ...]
    progress: float
    counts: dict[str, int]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(
        cls, workflow_id: int, jobs: list[JobInfo], edges: list[tuple[int, int]]
    ) -> WorkflowInfo:
        counts: dict[str, int] = {}
        done = 0.0
        for job in jobs:
            counts[job.status.value] = counts.get(job.status.value, 0) + 1
            if job.terminal:
                done += 1
            elif job.status is JobStatus.RUNNING and job.total:
                done += max(0.0, min(1.0, job.current / job.total))
        if any(not job.terminal for job in jobs):
            status = JobStatus.RUNNING
        elif counts.get(JobStatus.FAILURE.value):
            status = JobStatus.FAILURE
        elif counts.get(JobStatus.CANCELLED.value):
            status = JobStatus.CANCELLED
        else:
            status = JobStatus.SUCCESS
        return cls(
            workflow_id,
            status,
            tuple(jobs),
            tuple(edges),
            done / len(jobs) if jobs else 1.0,
            counts,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the HTTP API's workflow object)."""
        return {
            "id": self.id,
            "status": self.status.value,
            "progress": self.progress,
            "counts": dict(self.counts),
            "jobs": [job.to_dict() for job in self.jobs],
            "edges": [list(edge) for edge in self.edges],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowInfo:
        """The inverse of ``to_dict`` (a workflow that crossed between processes)."""
        return cls(
            int(data["id"]),
            JobStatus(data["status"]),
            tuple(JobInfo.from_dict(job) for job in data["jobs"]),
            tuple((int(c), int(p)) for c, p in data["edges"]),
            float(data["progress"]),
            dict(data["counts"]),
        )
