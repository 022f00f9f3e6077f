"""What a handler sees of its job: ``JobContext``, and the live state behind it."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from .definitions import TaskSpec
from .limits import check_progress
from .models import JobInfo, JobStatus
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .limits import Limits


class Reporter(Protocol):
    """What a ``JobContext`` asks of the runtime: where progress goes."""

    limits: Limits

    def report(
        self,
        state: JobState,
        current: float,
        total: float | None,
        message: str | None,
        step: str | None = None,
    ) -> None: ...


_FIELDS = tuple(JobInfo.__dataclass_fields__)


class JobState:
    """The mutable, in-memory record of a job this process is responsible for.

    Lives from ``add`` (or recovery) until the job's terminal state is
    committed. It carries every ``JobInfo`` field as a plain attribute (the hot
    path changes a few of them per transition); ``info()`` gives the frozen
    snapshot, built only when somebody asks and cached until the next change.
    """

    __slots__ = (
        *_FIELDS,
        "snapshot",
        "abandoned",
        "cancel_requested",
        "ending",
        "error_before",
        "parents",
        "retry",
        "shutdown",
        "spec",
        "task_handle",
        "timed_out",
        "unstarted",
        "watchdog",
        "written",
    )

    # Declared for the type checker; set in __init__ from the JobInfo fields.
    id: int
    task: str
    pool: str
    status: JobStatus
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int
    max_attempts: int | None
    current: float
    total: float
    message: str
    result: Any
    error: str | None
    priority: int
    metadata: dict[str, Any]
    unique_key: str | None
    created_at: float
    run_at: float
    started_at: float | None
    finished_at: float | None
    timeout: float | None
    recoveries: int
    seq: int
    retry_policy: Any
    deadline: float | None
    step: str | None
    steps: tuple[dict[str, Any], ...]
    lock: str | None
    waiting_reason: str | None
    node: str | None
    workflow: int | None
    batch_key: str | None
    batch: int | None

    def __init__(self, info: JobInfo, spec: TaskSpec, retry: RetryPolicy) -> None:
        # Field by field rather than a loop over _FIELDS: a window's refill builds
        # thousands of these (1.5 µs each instead of 5).
        self.id = info.id
        self.task = info.task
        self.pool = info.pool
        self.status = info.status
        self.args = info.args
        self.kwargs = info.kwargs
        self.attempts = info.attempts
        self.max_attempts = info.max_attempts
        self.current = info.current
        self.total = info.total
        self.message = info.message
        self.result = info.result
        self.error = info.error
        self.priority = info.priority
        self.metadata = info.metadata
        self.unique_key = info.unique_key
        self.created_at = info.created_at
        self.run_at = info.run_at
        self.started_at = info.started_at
        self.finished_at = info.finished_at
        self.timeout = info.timeout
        self.recoveries = info.recoveries
        self.seq = info.seq
        self.retry_policy = info.retry_policy
        self.deadline = info.deadline
        self.step = info.step
        self.steps = info.steps
        self.lock = info.lock
        self.waiting_reason = info.waiting_reason
        self.node = info.node
        self.workflow = info.workflow
        self.batch_key = info.batch_key
        self.batch = info.batch
        self.snapshot: JobInfo | None = info
        self.spec = spec
        self.retry = retry
        self.task_handle: asyncio.Task[None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.cancel_requested = False
        self.ending = False  # its deadline ends it, under way (``Transitions.deadline_passed``)
        # The error it showed as its attempt started, which the start clears: the
        # one an attempt recorded last, kept by a retry without one (``Retry``).
        self.error_before: str | None = None
        self.timed_out = False
        self.shutdown = False
        self.abandoned = False
        # Its start changed no row: another process changed it first (store note 20).
        self.unstarted = False
        # The jobs it waits for, while it is being added (taskrt.workflows).
        self.parents: tuple[int, ...] = ()
        # The commit of its last queued WAITING row, if any (taskrt.waiting note 3).
        self.written: asyncio.Future[None] | None = None

    @classmethod
    def new(
        cls,
        spec: TaskSpec,
        retry: RetryPolicy,
        *,
        id: int,
        pool: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        max_attempts: int | None,
        priority: int,
        metadata: dict[str, Any],
        unique_key: str | None,
        created_at: float,
        run_at: float,
        timeout: float | None,
        retry_policy: Any = None,
        deadline: float | None = None,
        lock: str | None = None,
    ) -> JobState:
        """A freshly added job (WAITING, sequence 1), built without a JobInfo (hot path)."""
        state = cls.__new__(cls)
        state.id = id
        state.task = spec.name
        state.pool = pool
        state.status = JobStatus.WAITING
        state.args = args
        state.kwargs = kwargs
        state.attempts = 0
        state.max_attempts = max_attempts
        state.current = 0
        state.total = 0
        state.message = ""
        state.result = None
        state.error = None
        state.priority = priority
        state.metadata = metadata
        state.unique_key = unique_key
        state.created_at = created_at
        state.run_at = run_at
        state.started_at = None
        state.finished_at = None
        state.timeout = timeout
        state.recoveries = 0
        state.seq = 1
        state.retry_policy = retry_policy
        state.deadline = deadline
        state.step = None
        state.steps = ()
        state.lock = lock
        state.waiting_reason = None
        state.node = None
        state.workflow = None
        state.batch_key = None
        state.batch = None
        state.snapshot = None
        state.spec = spec
        state.retry = retry
        state.task_handle = None
        state.watchdog = None
        state.cancel_requested = False
        state.ending = False
        state.error_before = None
        state.parents = ()
        state.timed_out = False
        state.shutdown = False
        state.abandoned = False
        state.unstarted = False
        state.written = None
        return state

    def info(self) -> JobInfo:
        snap = self.snapshot
        if snap is None or snap.seq != self.seq or snap.current != self.current:
            snap = self.snapshot = JobInfo(**{name: getattr(self, name) for name in _FIELDS})
        return snap

    def update(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self, name, value)
        self.snapshot = None

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class _Done:
    """An awaitable that is already done: ``progress`` never waits (docs/guarantees.md)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


DONE = _Done()

CURRENT_ATTEMPT: contextvars.ContextVar[JobState | None] = contextvars.ContextVar(
    "taskrt_current_attempt", default=None
)
"""The attempt whose handler runs in this context (its thread, or its coroutine):
``rt.progress(job_id, ...)`` from it reports as that attempt, so a report of an
attempt that ended (a timed-out thread running on) never lands on the next one."""


class JobContext:
    """Passed as the first argument to ``"context"``-style handlers.

    ``await job.progress(current, total, message)`` reports progress; it never
    waits on the disk. Sync handlers (run in a worker thread) call it without
    ``await``; ``job.cancelled`` tells them to stop early.
    """

    __slots__ = ("_attempt", "_loop", "_reporter", "_state", "_thread")

    def __init__(
        self, reporter: Reporter, state: JobState, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._reporter = reporter
        self._state = state
        self._loop = loop
        self._thread = threading.get_ident()
        # This attempt's, read once: a stop that gives the attempt back lowers the
        # job's count while a sync handler may still run (it read 0 then).
        self._attempt = state.attempts

    @property
    def id(self) -> int:
        return self._state.id

    @property
    def task(self) -> str:
        return self._state.task

    @property
    def pool(self) -> str:
        return self._state.pool

    @property
    def attempt(self) -> int:
        """The 1-based number of this attempt (at-least-once: it may be > 1)."""
        return self._attempt

    @property
    def max_attempts(self) -> int | None:
        return self._state.max_attempts

    @property
    def args(self) -> tuple[Any, ...]:
        return self._state.args

    @property
    def kwargs(self) -> dict[str, Any]:
        return self._state.kwargs

    @property
    def metadata(self) -> dict[str, Any]:
        return self._state.metadata

    @property
    def info(self) -> JobInfo:
        return self._state.info()

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or timed out; sync handlers should return."""
        s = self._state
        return s.cancel_requested or s.timed_out or s.shutdown

    def progress(
        self,
        current: float,
        total: float | None = None,
        message: str | None = None,
        *,
        step: str | None = None,
    ) -> Awaitable[None]:
        """Report progress; returns at once (awaiting it is optional and free).

        ``step`` names the part of the work it is about: the job keeps every
        step seen with its own current/total (``JobInfo.steps``).
        A value that cannot be stored (not a finite number, text that is not
        UTF-8 or too long) raises ``InvalidOption`` here, in the caller.
        """
        limits = self._reporter.limits
        current, total, message, step = check_progress(current, total, message, limits, step)
        if threading.get_ident() == self._thread:
            self._reporter.report(self._state, current, total, message, step)
        else:
            # A thread may run on after the runtime stopped and its loop closed
            # (``RuntimeError``): the report is dropped, as one for an ended attempt is
            # (``taskrt.pool._tell``).
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(
                    self._reporter.report, self._state, current, total, message, step
                )
        return DONE
