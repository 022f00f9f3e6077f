"""The error tree. Everything taskrt raises on purpose is a ``TaskrtError``.

``Fatal`` and ``Retry`` are the two exceptions a *handler* raises to steer the
runtime; they are not errors of taskrt's own.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any


class TaskrtError(Exception):
    """Base class of every error taskrt raises on purpose."""

    code = "taskrt_error"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": str(self)}


class InvalidOption(TaskrtError, ValueError):
    """An option or definition field has a value that is not allowed."""

    code = "invalid_option"

    def __init__(self, field: str, message: str, *, source: str | None = None) -> None:
        self.field = field
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "field": self.field}


class ValidationError(TaskrtError, ValueError):
    """The arguments of a job do not fit its task's parameters."""

    code = "validation_error"

    def __init__(self, task: str, message: str, *, parameter: str | None = None) -> None:
        self.task = task
        self.parameter = parameter
        where = f" parameter {parameter!r}" if parameter else ""
        super().__init__(f"task {task!r}{where}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "task": self.task, "parameter": self.parameter}


class SerializationError(TaskrtError, ValueError):
    """A value (arguments, metadata, a result) cannot be stored as JSON."""

    code = "not_serializable"

    def __init__(self, what: str, detail: str, field: str | None = None) -> None:
        self.what = what
        self.field = field  # the option or body field that holds it, where there is one
        super().__init__(f"{what} is not JSON-serialisable: {detail}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.field is not None:
            out["field"] = self.field
        return out


class TaskNotFound(TaskrtError, LookupError):
    code = "task_not_found"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no task named {name!r}")


class PoolNotFound(TaskrtError, LookupError):
    code = "pool_not_found"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no pool named {name!r}")


class PoolExists(TaskrtError):
    """A pool of that name exists where a new one was asked for (``POST /pools``)."""

    code = "pool_exists"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a pool named {name!r} exists; change it instead")


class JobNotFound(TaskrtError, LookupError):
    code = "job_not_found"

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id}")


class WorkflowNotFound(JobNotFound):
    """No workflow has that id: no job, or a job that is in no workflow. A
    ``JobNotFound`` too (the id names no workflow's first job)."""

    code = "workflow_not_found"

    def __init__(self, workflow_id: int) -> None:
        super().__init__(workflow_id)
        self.workflow_id = workflow_id
        self.args = (f"no workflow with id {workflow_id}",)


class DuplicateJob(TaskrtError):
    """An add with ``on_conflict="raise"`` found its unique key taken; nothing was stored.

    ``existing_id`` is the job that holds the key: a waiting or running job, or
    any job added with that key within its ``unique_for`` window.
    """

    code = "duplicate_job"

    def __init__(self, unique_key: str, existing_id: int) -> None:
        self.unique_key = unique_key
        self.existing_id = existing_id
        super().__init__(f"unique key {unique_key!r} is held by job {existing_id}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "unique_key": self.unique_key, "existing_id": self.existing_id}


class DuplicateJobId(TaskrtError):
    """A ``next_id`` hook returned an id that exists or is not above the last one."""

    code = "duplicate_job_id"

    def __init__(self, job_id: int, last_id: int) -> None:
        self.job_id = job_id
        self.last_id = last_id
        super().__init__(
            f"job id {job_id} is already used or not above the last id {last_id}; "
            "ids strictly increase and are never reused"
        )


class InvalidTransition(TaskrtError):
    """The job's status does not allow what was asked (e.g. retrying a running job)."""

    code = "invalid_transition"

    def __init__(self, job_id: int, status: str, action: str, reason: str | None = None) -> None:
        self.job_id = job_id
        self.status = status
        self.action = action
        self.reason = reason  # why, where the status alone does not say
        why = "" if reason is None else f" and {reason}"
        super().__init__(f"cannot {action} job {job_id}: it is {status}{why}")

    def to_dict(self) -> dict[str, Any]:
        out = {**super().to_dict(), "job_id": self.job_id, "status": self.status}
        reason = getattr(self, "reason", None)  # rebuilt from another process: maybe unset
        return out if reason is None else {**out, "reason": reason}


class QueueFull(TaskrtError):
    """The pool's waiting capacity is reached; nothing was stored."""

    code = "queue_full"

    def __init__(self, pool: str, capacity: int) -> None:
        self.pool = pool
        self.capacity = capacity
        super().__init__(f"pool {pool!r} is full: {capacity} jobs are waiting")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "pool": self.pool, "capacity": self.capacity}


class StoreError(TaskrtError):
    """The database failed; the original error is the ``__cause__``."""

    code = "store_error"


class SchemaTooNew(StoreError):
    """The database was written by a newer release of taskrt; nothing was changed."""

    code = "schema_too_new"

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"{path} has schema version {found}, written by a newer taskrt; this one reads "
            f"versions up to {supported}: upgrade taskrt to open it"
        )


class StoreUnavailable(StoreError):
    """The database takes no writes now (disk full, locked, I/O error); nothing was stored.

    Transient: state changes already accepted are kept and written once the
    database recovers; an ``add`` refused with this may be tried again.
    """

    code = "store_unavailable"

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"the database {path!r} cannot be written now: {reason}")

    def to_dict(self) -> dict[str, Any]:
        # No path: it is the server's business (the log has it).
        message = f"the database cannot be written now: {self.reason}"
        return {"code": self.code, "message": message, "reason": self.reason}


class OwnershipError(TaskrtError):
    """Which process runs this database's jobs cannot be decided safely here.

    Raised at start for a database on a network file system, where a file lock
    cannot tell which process (on which machine) is alive: two owners would
    run the same jobs.
    """

    code = "ownership_unsafe"

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class OwnerUnreachable(TaskrtError):
    """A forwarded call could not reach the owner process (relay).

    ``sent``: the call had left this process, so the owner may have done it
    (an add may have been made); otherwise the caller falls back to the database.
    """

    code = "owner_unreachable"

    def __init__(self, reason: str, *, sent: bool = False) -> None:
        self.reason = reason
        self.sent = sent
        done = " (the owner may have done it before it ended)" if sent else ""
        super().__init__(f"the owner process cannot be reached: {reason}{done}")


class RuntimeNotStarted(TaskrtError):
    code = "not_started"

    def __init__(self, what: str = "this") -> None:
        super().__init__(f"{what} needs a started runtime: use `async with runtime:`")


class JobTimeout(TaskrtError, TimeoutError):
    """An attempt ran past its timeout and was cancelled."""

    code = "timeout"

    def __init__(self, job_id: int, timeout: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        super().__init__(f"job {job_id} timed out after {timeout:g}s")


class Fatal(Exception):
    """Raised by a handler: fail the job now, with no further attempt."""


class Retry(Exception):
    """Raised by a handler: try again after ``delay`` seconds.

    With ``record_error=False`` the attempt is not recorded as an error and the
    error hook does not fire (Anchor's retry without an error event). The retry
    still counts as an attempt.
    """

    def __init__(
        self,
        message: str = "retry requested",
        *,
        delay: float | None = None,
        record_error: bool = True,
    ) -> None:
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not 0 <= delay <= 3_155_760_000  # a hundred years; NaN fails too
        ):
            raise InvalidOption("delay", f"expected 0 to 3155760000 seconds, found {delay!r}")
        super().__init__(message)
        self.delay = delay
        self.record_error = record_error


# -- a handler's error, described without raising (``taskrt.pool`` note 12) ----------


def message_of(exc: BaseException) -> str:
    """``str(exc)``, never raising: an error whose ``__str__`` raises, even
    SystemExit, is a handler's error to record, never a signal to obey."""
    try:
        return str(exc)
    except BaseException:
        return "(its message could not be read: str() raised)"


def is_error(exc: BaseException, kinds: Any) -> bool:
    """``isinstance``, False where the exception's own ``__class__`` raises."""
    try:
        return isinstance(exc, kinds)
    except BaseException:
        return False


def describe_error(exc: BaseException) -> str:
    """An attempt's error as it is stored: ``"ValueError: bad input"``, and a taskrt
    error, ``Fatal`` or ``Retry`` as its message alone. Never raises."""
    name = type(exc).__name__
    text = message_of(exc)
    if is_error(exc, TaskrtError | Fatal | Retry):
        return text or name
    return f"{name}: {text}" if text else name


def format_traceback(exc: BaseException, tb: TracebackType | None = None) -> str:
    """``exc``'s traceback as text (from ``tb``, by default its own), or what can be
    said of it where even that raises."""
    try:
        return "".join(
            traceback.format_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)
        )
    except BaseException:
        return f"{type(exc).__name__} (its traceback could not be formatted)"


def in_thread(role: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``, user code, in a worker thread whose result a future carries.

    A StopIteration it raises, which no asyncio future may carry (``set_exception``
    refuses it, and the future would never be done), or a GeneratorExit, with
    which the awaiting task would close its coroutine, becomes
    ``RuntimeError(f"{role} raised StopIteration")`` raised from it, as PEP 479
    does for a generator (``taskrt.pool`` note 12)."""
    try:
        return fn(*args, **kwargs)
    except (StopIteration, GeneratorExit) as exc:
        raise RuntimeError(f"{role} raised {type(exc).__name__}") from exc
