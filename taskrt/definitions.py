"""Task specifications, and the decorator front end that makes them.

A ``TaskSpec`` is the one description of a task the runtime understands. The
``@rt.task`` decorator, Yao JSON files and Anchor YAML files
(``taskrt.taskfiles``) are front ends that all produce a ``TaskSpec``.

Handler calling conventions (``TaskSpec.call``):

- ``"context"``: ``handler(job: JobContext, *args, **kwargs)``;
- ``"id"``: ``handler(job_id, *args, **kwargs)`` (Yao style: report progress with
  ``await rt.progress(job_id, ...)``);
- ``"plain"``: ``handler(*args, **kwargs)``.

``detect_call`` picks one from the handler's first parameter when the caller
does not say.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, Literal, ParamSpec, TypeVar

from .errors import InvalidOption, ValidationError
from .limits import (
    DEFAULT_LIMITS,
    INT64_MAX,
    INT64_MIN,
    check_int64,
    check_number,
    check_text,
    check_time,
    shown,
)
from .models import ON_PARENT_FAILURE
from .rates import Rate, parse_rate
from .retry import NO_DELAY, RetryPolicy, parse_attempts, parse_duration, parse_retry

CallStyle = Literal["context", "id", "plain"]
Arguments = tuple[tuple[Any, ...], dict[str, Any]]
"""A job's positional and keyword arguments."""
ArgsValidator = Callable[[tuple[Any, ...], dict[str, Any]], Arguments | None]
"""A task's check of a job's arguments: ``ValidationError`` when they do not fit,
else the arguments as the job takes them (``None``: as given)."""

DEFAULT_POOL = "default"  # the pool of every task that names none

P = ParamSpec("P")
R = TypeVar("R")

_CONTEXT_NAMES = {"job", "ctx", "context"}
_ID_NAMES = {"job_id", "task_id", "id"}


@dataclass(frozen=True, slots=True)
class Hooks:
    """Per-task callbacks. Each may be sync or async; one that raises is logged.

    - ``next_id()`` -> int: supplies the job's id (Yao ``event.next``);
    - ``on_add(id)`` (in the process that added it, once committed; not for a job
      added in the application's own connection, ``tx=connection``, whose commit
      taskrt does not see), ``on_success(id, result)``, ``on_error(id, error)`` (once,
      when the job finally fails), ``on_progress(id, current, total, message)``;
    - ``on_failed(job, tx)``: runs inside the transaction that writes FAILURE;
      what it writes through ``tx`` commits atomically with the failure.
    """

    next_id: Callable[[], Any] | None = None
    on_add: Callable[..., Any] | None = None
    on_success: Callable[..., Any] | None = None
    on_error: Callable[..., Any] | None = None
    on_progress: Callable[..., Any] | None = None
    on_failed: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        # Refused here, not when a job first calls it (a TypeError in the log).
        for name in Hooks.__dataclass_fields__:
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise InvalidOption(name, f"expected a callable or None, found {shown(hook)}")


@dataclass(frozen=True, slots=True)
class Batch:
    """How a batched task gathers its jobs (``@rt.task(batch=Batch(...))``): a batch
    runs once ``max_size`` jobs of one ``batch_key`` wait, or once the oldest has
    waited ``max_wait`` seconds; one handler call receives every member's item."""

    max_size: int = 100
    max_wait: float = 5.0

    def __post_init__(self) -> None:
        size = self.max_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH:
            raise InvalidOption(
                "batch.max_size", f"expected an integer from 1 to {MAX_BATCH}, found {shown(size)}"
            )
        wait = parse_duration(self.max_wait, field="batch.max_wait")
        if wait <= 0:
            raise InvalidOption("batch.max_wait", "expected a positive duration")
        object.__setattr__(self, "max_wait", wait)


MAX_BATCH = 10_000
"""The most jobs one batch holds."""


def parse_batch(value: Any, *, source: str | None = None) -> Batch | None:
    """A task's ``batch`` option: a ``Batch``, a mapping of its fields, or None."""
    if value is None or isinstance(value, Batch):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"max_size", "max_wait"})
        if unknown:
            raise InvalidOption(
                f"batch.{unknown[0]}", "unknown; expected max_size or max_wait", source=source
            )
        return Batch(**value)
    raise InvalidOption(
        "batch", f"expected a Batch or {{max_size, max_wait}}, found {shown(value)}", source=source
    )


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything the runtime needs to know about one task."""

    name: str
    handler: Callable[..., Any]
    pool: str = DEFAULT_POOL
    attempts: int | None = 1
    retry: RetryPolicy = NO_DELAY
    timeout: float | None = None
    priority: int = 0
    call: CallStyle = "context"
    hooks: Hooks = field(default_factory=Hooks)
    parameters: dict[str, Any] | None = None
    validator: ArgsValidator | None = None
    description: str = ""
    display_name: str = ""
    source: str | None = None
    # Pool settings a task file may carry (Yao: worker_nums, size); a task with them
    # has its pool as its own (``owns_pool``).
    pool_concurrency: int | None = None
    pool_capacity: int | None = None
    # Cron declared with the task (Anchor ``cronjob``); the scheduler reads it.
    cron: str | None = None
    cron_tz: str = "UTC"
    # At most this many of its jobs start per unit of time (``"100/m"``; taskrt.rates).
    rate: Rate | None = None
    # Its jobs gather into batches, one handler call each (``taskrt.batches``).
    batch: Batch | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    @property
    def owns_pool(self) -> bool:
        """Whether the task's pool is its own: the task sets its concurrency or capacity
        (a Yao task's ``worker_nums`` and ``size``, for the pool named after it)."""
        return self.pool_concurrency is not None or self.pool_capacity is not None

    def validate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments:
        """The arguments as a job of the task takes them; ``ValidationError`` when they
        do not fit. A whole float where the parameters want an integer is that
        integer (``taskrt.params`` note 5); anything else is returned as given."""
        if self.validator is not None:
            fitted = self.validator(args, kwargs)
            return (args, kwargs) if fitted is None else fitted
        _bind_check(self, args, kwargs)
        return args, kwargs


def pool_clash(
    spec: TaskSpec, tasks: Iterable[TaskSpec], declared: Container[str] = ()
) -> str | None:
    """Why ``spec`` may not run in its pool beside ``tasks`` (the other tasks; one named
    as ``spec`` is ``spec`` itself, registered again), or ``None``.

    A pool a task owns (``TaskSpec.owns_pool``) is that task's alone: registering the
    task sets the pool's limits, which would silently change them for any other task
    in it, or for a pool the application set up itself. So an owned pool may not be
    the default pool (every task that names none runs there), a pool another task runs
    in, or one of ``declared``, the pools whose limits the application set with
    ``rt.pool(name, ...)``; and no other task may run in it. The task registered again
    (a task file loaded again) still applies its changed limits: the pool is its own.
    """
    mine = f"task {spec.name!r} sets the limits of its pool {spec.pool!r}"
    alone = "expected a pool no other task runs in"
    others = [other for other in tasks if other.name != spec.name and other.pool == spec.pool]
    if spec.owns_pool:
        if spec.pool == DEFAULT_POOL:
            return f"{mine}, but that is the pool of every task that names none; {alone}"
        if others:
            return f"{mine}, but task {others[0].name!r}{_in(others[0])} runs in it too; {alone}"
        if spec.pool in declared:
            return (
                f"{mine}, but the application set that pool's limits with rt.pool(); "
                "expected a pool the application does not set up"
            )
        return None
    owner = next((other for other in others if other.owns_pool), None)
    if owner is not None:
        return (
            f"pool {spec.pool!r} belongs to task {owner.name!r}{_in(owner)}, which sets its "
            "limits; expected a pool that belongs to no task"
        )
    return None


def _in(spec: TaskSpec) -> str:
    return f" (in {spec.source})" if spec.source else ""


def is_async(function: Callable[..., Any]) -> bool:
    """Whether calling ``function`` gives a coroutine (a callable object's ``__call__``
    counts): such a hook or handler runs on the event loop, any other in a thread."""
    target: Any = function
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        call = inspect.getattr_static(type(target), "__call__", None)
        if call is not None:
            target = call
    return inspect.iscoroutinefunction(target)


def _bind_check(spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        sig = inspect.signature(spec.handler)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    if (
        spec.call != "plain"
        and params
        and params[0].kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    ):
        params = params[1:]
    try:
        sig.replace(parameters=params).bind(*args, **kwargs)
    except TypeError as exc:
        raise ValidationError(spec.name, str(exc)) from None


def detect_call(handler: Callable[..., Any]) -> CallStyle:
    """The calling convention of ``handler``, from its first parameter."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return "plain"
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return "plain"
    first = params[0]
    annotation = first.annotation
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if name.endswith("JobContext") or first.name in _CONTEXT_NAMES:
        return "context"
    if first.name in _ID_NAMES:
        return "id"
    return "plain"


@dataclass(frozen=True, slots=True)
class Options:
    """Per-call overrides (``task.options(...)``); ``None`` means the task's default."""

    delay: float | None = None
    run_at: float | None = None
    priority: int | None = None
    unique_key: str | None = None
    attempts: int | Literal["default"] | None = "default"
    retry: RetryPolicy | None = None
    timeout: float | None = None
    metadata: dict[str, Any] | None = None
    job_id: int | None = None
    unique_for: float | None = None
    on_conflict: Literal["return", "raise"] | None = None
    deadline: float | None = None
    lock: str | None = None
    # The jobs it waits for (``taskrt.workflows``), and what it does if one fails.
    after: tuple[int, ...] | None = None
    on_parent_failure: Literal["cancel", "run"] | None = None
    # The batch a job of a batched task joins (``taskrt.batches``).
    batch_key: str | None = None


def checked_options(overrides: dict[str, Any]) -> Options:
    """``make_options(**overrides)``, with an unknown name refused as ``InvalidOption``."""
    unknown = sorted(set(overrides) - set(Options.__dataclass_fields__))
    if unknown:
        raise InvalidOption(
            unknown[0],
            f"unknown option; expected one of {', '.join(Options.__dataclass_fields__)}",
        )
    return make_options(**overrides)


def make_options(
    *,
    delay: Any = None,
    run_at: Any = None,
    priority: Any = None,
    unique_key: Any = None,
    attempts: Any = "default",
    retry: Any = None,
    timeout: Any = None,
    metadata: Any = None,
    job_id: Any = None,
    unique_for: Any = None,
    on_conflict: Any = None,
    deadline: Any = None,
    lock: Any = None,
    after: Any = None,
    on_parent_failure: Any = None,
    batch_key: Any = None,
) -> Options:
    """Validated ``Options``; every bad value raises ``InvalidOption`` naming the field."""

    if delay is not None:
        delay = parse_duration(delay, field="delay")
    if run_at is not None:
        run_at = _epoch(run_at, "run_at")
        if delay is not None:  # two answers to one question: when it may run
            raise InvalidOption("delay", "give delay or run_at, not both")
    if deadline is not None:
        deadline = _epoch(deadline, "deadline")
    if priority is not None:
        priority = check_int64(priority, "priority")
    if unique_key is not None:
        if not isinstance(unique_key, str) or not unique_key:
            raise InvalidOption(
                "unique_key", f"expected a non-empty string, found {shown(unique_key)}"
            )
        check_text(unique_key, "unique_key", max_bytes=DEFAULT_LIMITS.max_key_bytes)
    if attempts != "default":
        attempts = parse_attempts(attempts)
    retry_policy = None if retry is None else parse_retry(retry)
    if timeout is not None:
        timeout = parse_duration(timeout, field="timeout")
        if timeout <= 0:
            raise InvalidOption("timeout", "expected a positive duration")
    if unique_for is not None:
        unique_for = parse_duration(unique_for, field="unique_for")
        if unique_for <= 0:
            raise InvalidOption("unique_for", "expected a positive duration")
        if unique_key is None:
            raise InvalidOption("unique_for", "a unique window needs a unique_key")
    if lock is not None:
        if not isinstance(lock, str) or not lock:
            raise InvalidOption("lock", f"expected a non-empty string, found {shown(lock)}")
        check_text(lock, "lock", max_bytes=DEFAULT_LIMITS.max_key_bytes)
    if on_conflict is not None and on_conflict not in ("return", "raise"):
        raise InvalidOption(
            "on_conflict", f"expected 'return' or 'raise', found {shown(on_conflict)}"
        )
    if after is not None:
        after = parse_after(after)
    if on_parent_failure is not None and on_parent_failure not in ON_PARENT_FAILURE:
        raise InvalidOption(
            "on_parent_failure", f"expected 'cancel' or 'run', found {shown(on_parent_failure)}"
        )
    if batch_key is not None:
        if not isinstance(batch_key, str):
            raise InvalidOption("batch_key", f"expected a string, found {shown(batch_key)}")
        check_text(batch_key, "batch_key", max_bytes=DEFAULT_LIMITS.max_key_bytes)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidOption("metadata", f"expected an object, found {type(metadata).__name__}")
    for key, value in (metadata or {}).items():
        # A name a filter can ask for (``_check_filter_values`` in taskrt.runtime):
        # an empty one, or one with a NUL, was stored and found by no filter. (A
        # number is stored as JSON names it, ``3`` as ``"3"``.)
        if isinstance(key, str):
            if not key:
                raise InvalidOption("metadata", "expected non-empty names, found ''")
            check_text(key, "metadata", max_bytes=DEFAULT_LIMITS.max_key_bytes)
        # A listing filters on a metadata field with 64-bit integers (both stores
        # compare them so): a larger one would be stored, and found by no filter.
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidOption(
                    f"metadata.{key}",
                    f"expected an integer from {INT64_MIN} to {INT64_MAX} (what a filter "
                    f"compares), found {shown(value)}",
                )
    if job_id is not None and (
        isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id <= INT64_MAX
    ):
        raise InvalidOption("job_id", f"expected a positive integer, found {shown(job_id)}")
    return Options(
        delay=delay,
        run_at=run_at,
        priority=priority,
        unique_key=unique_key,
        attempts=attempts,
        retry=retry_policy,
        timeout=timeout,
        metadata=None if metadata is None else dict(metadata),
        job_id=job_id,
        unique_for=unique_for,
        on_conflict=on_conflict,
        deadline=deadline,
        lock=lock,
        after=after,
        on_parent_failure=on_parent_failure,
        batch_key=batch_key,
    )


MAX_PARENTS = 10_000
"""The most jobs one job may wait for (``after``)."""


def parse_after(value: Any) -> tuple[int, ...]:
    """The ids a job waits for: a job id, or a list of them (repeats dropped)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise InvalidOption("after", f"expected a list of job ids, found {shown(value)}")
    if len(value) > MAX_PARENTS:
        raise InvalidOption("after", f"expected at most {MAX_PARENTS} job ids, found {len(value)}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= INT64_MAX:
            raise InvalidOption("after", f"expected positive job ids, found {shown(item)}")
    return tuple(dict.fromkeys(value))


def _epoch(value: Any, field: str) -> float:
    """A point in time given as a timezone-aware datetime or epoch seconds."""
    from datetime import datetime

    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidOption(field, "expected a timezone-aware datetime")
        value = value.timestamp()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOption(field, f"expected a datetime or epoch seconds, found {shown(value)}")
    return check_time(float(check_number(value, field)), field)


@dataclass(frozen=True, slots=True)
class TaskCall:
    """A task with per-call options, as made by ``task.options(...)``."""

    spec: TaskSpec
    opts: Options

    def options(self, **overrides: Any) -> TaskCall:
        """The same call with more overrides (later ones win; a ``delay`` replaces
        an earlier ``run_at`` and the other way round)."""
        # A field differing from its own default was given: ``attempts=None`` is
        # "unlimited", not "unset" (its default is "default").
        merged = {
            item.name: getattr(self.opts, item.name)
            for item in fields(Options)
            if getattr(self.opts, item.name) != item.default
        }
        if any(overrides.get(when) is not None for when in ("delay", "run_at")):
            merged.pop("delay", None)  # one "when": given together, refused
            merged.pop("run_at", None)
        merged.update(overrides)
        return TaskCall(self.spec, checked_options(merged))

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """This call with its arguments, to add later as part of a workflow."""
        return Signature(self, args, kwargs)


@dataclass(frozen=True, slots=True)
class Signature:
    """A task call with its arguments, not added yet: ``task.s(*args, **kwargs)``.

    Workflows are built from signatures (``rt.chain``, ``rt.group``);
    ``.options(...)`` gives the same signature with per-call options.
    """

    call: TaskCall
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def options(self, **overrides: Any) -> Signature:
        return Signature(self.call.options(**overrides), self.args, self.kwargs)

    def __repr__(self) -> str:
        return f"<Signature {self.call.spec.name}{self.args!r}>"


class Task(Generic[P, R]):
    """What ``@rt.task`` returns: still callable as the plain function.

    ``task.options(delay=5, priority=9)`` gives a ``TaskCall`` to pass to
    ``pool.add``; ``task.spec`` is the ``TaskSpec``.
    """

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.__wrapped__ = spec.handler
        self.__doc__ = spec.handler.__doc__
        self._call = TaskCall(spec, Options())  # its call without options (``s``)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.spec.handler(*args, **kwargs)
        return result

    def options(self, **overrides: Any) -> TaskCall:
        return TaskCall(self.spec, checked_options(overrides))

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: this task with its arguments, to add as part of a workflow
        (``rt.chain``, ``rt.group``)."""
        return Signature(self._call, args, kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.spec.name!r} pool={self.spec.pool!r}>"


TaskRef = Task[Any, Any] | TaskCall | str
"""What ``add`` takes for a task: the task, a call with options, or its name."""


_SPEC_EXTRAS = frozenset(TaskSpec.__dataclass_fields__)
"""What ``make_spec`` passes on to ``TaskSpec`` as it is (task files' pool settings, cron ...)."""


def make_spec(
    handler: Callable[..., Any],
    *,
    name: str | None = None,
    pool: str = "default",
    attempts: Any = 1,
    retry: Any = None,
    timeout: Any = None,
    priority: int = 0,
    call: CallStyle | None = None,
    hooks: Hooks | None = None,
    parameters: dict[str, Any] | None = None,
    description: str | None = None,
    source: str | None = None,
    rate: Any = None,
    batch: Any = None,
    **extra: Any,
) -> TaskSpec:
    """A validated ``TaskSpec`` from decorator-style arguments."""
    unknown = sorted(set(extra) - _SPEC_EXTRAS)
    if unknown:
        hooks_named = ", ".join(Hooks.__dataclass_fields__)
        raise InvalidOption(
            unknown[0],
            f"unknown task option; expected name, pool, attempts, retry, timeout, priority, "
            f"rate, call, parameters, description or a hook ({hooks_named})",
            source=source,
        )
    task_name = name or getattr(handler, "__name__", None)
    if not task_name or not isinstance(task_name, str):
        raise InvalidOption("name", "a task needs a name", source=source)
    if not callable(handler):
        raise InvalidOption(
            "handler", f"expected a callable, found {shown(handler)}", source=source
        )
    if not isinstance(pool, str) or not pool:
        raise InvalidOption(
            "pool", f"expected a non-empty string, found {shown(pool)}", source=source
        )
    timeout_s = None if timeout is None else parse_duration(timeout, field="timeout", source=source)
    if timeout_s is not None and timeout_s <= 0:
        raise InvalidOption("timeout", "expected a positive duration", source=source)
    if call is not None and call not in ("context", "id", "plain"):
        raise InvalidOption(
            "call", f"expected 'context', 'id' or 'plain', found {shown(call)}", source=source
        )
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidOption(
            "priority", f"expected an integer, found {shown(priority)}", source=source
        )
    check_int64(priority, "priority")
    return TaskSpec(
        name=task_name,
        handler=handler,
        pool=pool,
        attempts=parse_attempts(attempts, source=source),
        retry=parse_retry(retry, source=source),
        timeout=timeout_s,
        priority=priority,
        call=call or detect_call(handler),
        hooks=hooks or Hooks(),
        parameters=parameters,
        description=description if description is not None else (inspect.getdoc(handler) or ""),
        source=source,
        rate=parse_rate(rate, source=source),
        batch=parse_batch(batch, source=source),
        **extra,
    )


def with_validator(spec: TaskSpec, validator: ArgsValidator) -> TaskSpec:
    return replace(spec, validator=validator)
