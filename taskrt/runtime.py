"""The Runtime: owns the store, the pools and the event broker; one per process.

``Runtime(path)`` stores its arguments and does nothing else. ``async with rt:``
opens the database, takes the ownership lease (with workers), recovers jobs a
dead process left RUNNING, loads waiting jobs and starts the pools. Leaving the
block stops taking jobs, lets running ones finish within ``grace`` seconds,
puts the rest back to WAITING (no attempt charged) and writes everything out.

Design notes:

1. **Durable before acknowledged.** ``add`` returns after the job's row is
   committed (group commit, see ``store``); only then is the job queued.
2. **The in-memory state is the truth for live jobs.** A job this process is
   responsible for (waiting or running here) has a ``JobState``; reads of such
   a job come from memory, other jobs from the database. Transitions publish an
   event at once and queue their write; terminal writes are never coalesced.
3. **One owner per database.** Workers need the ownership lease (a row with an
   expiry, renewed every ``lease_ttl / 3`` s). ``workers=False`` makes a client:
   it adds, reads and cancels through the database, marking what it changed
   (``external``); the owner polls for such rows every ``poll_interval`` s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import store as sql
from .clock import Clock, SystemClock
from .context import DONE, JobState
from .counters import Counters
from .definitions import Hooks, Options, Task, TaskCall, TaskSpec, make_spec
from .errors import (
    Fatal,
    InvalidOption,
    InvalidTransition,
    JobNotFound,
    OwnershipError,
    QueueFull,
    Retry,
    RuntimeNotStarted,
    SerializationError,
    TaskNotFound,
    TaskrtError,
)
from .events import Broker, Subscription
from .models import (
    TERMINAL,
    AttemptInfo,
    AttemptOutcome,
    Event,
    EventType,
    JobInfo,
    JobStatus,
    Page,
    Stats,
)
from .pool import DEFAULT_CONCURRENCY, Outcome, Pool
from .retention import DEFAULT_AGES
from .retry import RetryPolicy, parse_retry
from .scheduler import ScheduleDefinition, Scheduler, define
from .store import NewJob, Store, Synchronous, dumps

if TYPE_CHECKING:
    from .tracing import Instrumentation

log = logging.getLogger("taskrt")

F = TypeVar("F", bound=Callable[..., Any])

TaskRef = Task[Any, Any] | TaskCall | str
_NO_OPTIONS = Options()
MAX_RECOVERIES = 3
SEQ_GAP_AFTER_CRASH = 1_000_000


class Transaction:
    """The application's write transaction: run SQL, and add jobs with ``tx=tx``.

    Both commit or neither does; workers see the jobs after the commit.
    """

    def __init__(self, conn: sql.Connection) -> None:
        self._conn = conn
        self._states: list[JobState] = []

    async def execute(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._conn.execute(statement, params)

    async def executemany(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(statement, params)


class JobLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts job id, task and attempt on every record (``record.job_id`` ...)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


def job_logger(info: JobInfo | JobState) -> JobLogAdapter:
    return JobLogAdapter(
        log, {"job_id": info.id, "task": info.task, "pool": info.pool, "attempt": info.attempts}
    )


class Runtime:
    """One per process: ``async with Runtime("app.db") as rt: ...``."""

    def __init__(
        self,
        path: str = ":memory:",
        *,
        workers: bool = True,
        synchronous: Synchronous = "normal",
        clock: Clock | None = None,
        tasks: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        executor: Any = None,
        grace: float = 10.0,
        abandon_after: float = 1.0,
        lease_ttl: float = 10.0,
        poll_interval: float = 0.05,
        progress_interval: float = 0.05,
        subscriber_buffer: int = 256,
        replay: int = 128,
        default_concurrency: int = DEFAULT_CONCURRENCY,
        tracing: bool = False,
    ) -> None:
        self.path = str(path)
        self.workers = workers
        self.clock: Clock = clock or SystemClock()
        self.grace = grace
        self.abandon_after = abandon_after
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self.default_concurrency = default_concurrency
        self._tasks_path = tasks
        self._root = root
        self._executor = executor
        self.store = Store(self.path, synchronous=synchronous, progress_interval=progress_interval)
        self.broker = Broker(buffer=subscriber_buffer, replay=replay)
        self.counters = Counters()
        # Optional hooks around adds and attempts (taskrt.tracing.Instrumentation).
        self.instrumentation: Instrumentation | None = None
        if tracing:
            from .tracing import instrument

            instrument(self)
        self._tasks: dict[str, TaskSpec] = {}
        self._pools: dict[str, Pool] = {}
        self._live: dict[int, JobState] = {}
        self._unique: dict[str, int] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._workers_on = False
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._start_hooks: list[Callable[[Runtime], Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unclean = False
        self._loop_thread = 0
        self._stop_hooks: list[Callable[[Runtime], Any]] = []
        # Cron schedules (taskrt.scheduler): the first start hook, the first stop hook.
        self.schedules = Scheduler(self)
        self.on_start(self.schedules._start)
        self.on_stop(self.schedules._stop)

    def __repr__(self) -> str:
        return f"<Runtime {self.path!r} workers={self.workers} started={self._started}>"

    # -- declaring ---------------------------------------------------------------

    def pool(
        self, name: str, *, concurrency: int | None = None, capacity: int | None = None
    ) -> Pool:
        """Declare a pool, or get it (changing its limits when given)."""
        if not isinstance(name, str) or not name:
            raise InvalidOption("pool", f"expected a non-empty name, found {name!r}")
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = Pool(
                self,
                name,
                concurrency=self.default_concurrency if concurrency is None else concurrency,
                capacity=capacity,
            )
            return pool
        if concurrency is not None:
            pool.set_concurrency(concurrency)
        if capacity is not None:
            pool.set_capacity(capacity)
        return pool

    @property
    def pools(self) -> dict[str, Pool]:
        return dict(self._pools)

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return dict(self._tasks)

    @overload
    def task(self, fn: F, /) -> Task[Any, Any]: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[F], Task[Any, Any]]: ...

    def task(self, fn: Any = None, /, **options: Any) -> Any:
        """Decorator: register a handler as a task.

        Options: ``name``, ``pool``, ``attempts`` (-1/None unlimited), ``retry``,
        ``timeout``, ``priority``, ``call``, ``parameters`` (JSON Schema) and the
        hooks ``next_id``, ``on_add``, ``on_success``, ``on_error``,
        ``on_progress``, ``on_failed``.
        """
        hook_names = set(Hooks.__dataclass_fields__)
        hooks = Hooks(**{k: options.pop(k) for k in list(options) if k in hook_names})

        def decorate(handler: F) -> Task[Any, Any]:
            return self.register(make_spec(handler, hooks=hooks, **options))

        return decorate if fn is None else decorate(fn)

    def register(self, spec: TaskSpec) -> Task[Any, Any]:
        """Register a ``TaskSpec`` (from any front end); declares its pool."""
        from .params import attach

        spec = attach(spec)
        self.schedules._task_registered(spec)  # a bad cron refuses the task
        self._tasks[spec.name] = spec
        pool = self._pools.get(spec.pool)
        if pool is None:
            self.pool(spec.pool, concurrency=spec.pool_concurrency, capacity=spec.pool_capacity)
        else:
            if spec.pool_concurrency is not None:
                pool.set_concurrency(spec.pool_concurrency)
            if spec.pool_capacity is not None:
                pool.set_capacity(spec.pool_capacity)
        return Task(spec)

    def load(
        self,
        path: str | os.PathLike[str],
        *,
        executor: Any = None,
        root: str | os.PathLike[str] | None = None,
    ) -> list[Task[Any, Any]]:
        """Load task files (Yao JSON, Anchor YAML) from a folder or file."""
        from .taskfiles import load_tasks

        specs = load_tasks(path, executor=executor, root=root)
        return [self.register(s) for s in specs]

    def on_start(self, hook: Callable[[Runtime], Any]) -> None:
        """Run ``hook(rt)`` (sync or async) when the runtime has started."""
        self._start_hooks.append(hook)

    def on_stop(self, hook: Callable[[Runtime], Any]) -> None:
        """Run ``hook(rt)`` first thing when the runtime stops."""
        self._stop_hooks.append(hook)

    def schedule(
        self,
        name: str,
        task: Task[Any, Any] | str,
        cron: str,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        pool: str | None = None,
        tz: str = "UTC",
        misfire: str = "latest",
    ) -> ScheduleDefinition:
        """Declare a cron schedule (docs/schedules.md); a bad expression raises ``CronError``.

        Stored at start, or at once when started. Declaring an equal schedule
        changes nothing; a changed one is updated. ``misfire``: ``latest``,
        ``skip`` or ``all``.
        """
        return self.schedules.declare(
            define(name, task, cron, args=args, kwargs=kwargs, pool=pool, tz=tz, misfire=misfire)
        )

    def cron(
        self,
        expression: str,
        *,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        pool: str | None = None,
        tz: str = "UTC",
        misfire: str = "latest",
    ) -> Callable[[Any], Task[Any, Any]]:
        """Decorator: run a task on a cron schedule (named after the task by default).

        Put it above ``@rt.task(...)``, or on a plain function to register it too.
        """
        from .schedule import parse_cron

        parse_cron(expression, tz)  # refused at decoration time

        def decorate(fn: Any) -> Task[Any, Any]:
            task = fn if isinstance(fn, Task) else self.task(fn)
            self.schedule(
                name or task.name,
                task,
                expression,
                args=args,
                kwargs=kwargs,
                pool=pool,
                tz=tz,
                misfire=misfire,
            )
            return task

        return decorate

    def retention(
        self,
        ages: Mapping[Any, Any] | None = DEFAULT_AGES,
        *,
        cron: str = "@hourly",
        tz: str = "UTC",
    ) -> None:
        """Prune finished jobs older than ``ages`` on ``cron`` (the owner, from start).

        ``ages`` maps a status to an age (seconds, ``"12h"``, a timedelta; ``None``:
        keep forever) over the defaults: SUCCESS 7 days, FAILURE and CANCELLED 30
        days. ``rt.retention(None)`` turns retention off. See ``taskrt.retention``.
        """
        self.schedules.retention.configure(ages, cron=cron, tz=tz)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            return
        if self._tasks_path is not None:
            self.load(self._tasks_path, executor=self._executor, root=self._root)
        await self.store.open()
        try:
            if self.workers:
                await self._take_lease()
                await self._recover()
        except BaseException:
            await self.store.close()
            raise
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.workers:
            self._workers_on = True
            self._lease_task = asyncio.create_task(self._lease_loop(), name="taskrt-lease")
            self._poll_task = asyncio.create_task(self._poll_loop(), name="taskrt-poll")
            for pool in self._pools.values():
                pool._dispatch()
        for hook in self._start_hooks:
            result = hook(self)
            if inspect.isawaitable(result):
                await result

    async def stop(self) -> None:
        if not self._started:
            return
        for hook in self._stop_hooks:
            try:
                result = hook(self)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("taskrt: a stop hook failed")
        for task in (self._lease_task, self._poll_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._lease_task = self._poll_task = None
        pools = list(self._pools.values())
        for pool in pools:
            pool.stop_dispatching()
        running = [t for p in pools for t in p.running_tasks()]
        if running:
            await asyncio.wait(running, timeout=self.grace)
        for pool in pools:
            pool.interrupt_all_for_shutdown()
        running = [t for p in pools for t in p.running_tasks()]
        if running:
            await asyncio.wait(running, timeout=self.abandon_after)
        self._workers_on = False
        if self._background:
            await asyncio.wait(list(self._background), timeout=self.grace)
        try:
            await self.store.flush()
            if self.workers:
                await sql.release_lease(self.store, self._owner)
        finally:
            await self.store.close()
            for pool in pools:
                pool.close()
            self.broker.close_all()
            self._live.clear()
            self._unique.clear()
            self._started = False

    async def _take_lease(self) -> None:
        # A lease row left behind means its owner died without stopping cleanly.
        self._unclean = (
            await self.store.fetch_one("SELECT owner FROM lease WHERE id = 1") is not None
        )
        taken, owner, expires = await sql.take_lease(
            self.store, self._owner, time.time(), self.lease_ttl
        )
        if not taken:
            raise OwnershipError(self.path, owner, expires)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                taken, owner, _ = await sql.take_lease(
                    self.store, self._owner, time.time(), self.lease_ttl
                )
                if not taken:
                    # Another runtime owns the database now: two owners would run
                    # the same jobs, so this one stops starting any.
                    log.error(
                        "taskrt: lost the ownership lease of %s to %s; no more jobs start here",
                        self.path,
                        owner,
                    )
                    self._workers_on = False
                    return
            except TaskrtError:
                log.exception("taskrt: renewing the ownership lease failed")

    async def _recover(self) -> None:
        """Jobs a dead process left RUNNING go back to WAITING, or fail as orphaned."""
        now = self.clock.now()
        # After a crash, events published but not yet written (coalesced
        # progress, a retry) had sequence numbers above the stored ones; a gap
        # keeps every later event above anything a client may have seen, so a
        # stream resuming with Last-Event-ID gets a snapshot, never a hole.
        gap = SEQ_GAP_AFTER_CRASH if self._unclean else 0
        _, _, recovered, _, orphaned = await sql.run_script(
            self.store,
            [
                (sql.SQL_SEQ_GAP, (gap, gap)),
                (sql.SQL_INTERRUPT_ATTEMPTS, (now, now)),
                (sql.SQL_RECOVER, (MAX_RECOVERIES,)),
                (sql.SQL_SCHEDULE_ORPHANS, ()),  # failures of their schedules (scheduler note 6)
                (sql.SQL_ORPHAN, (now,)),
            ],
        )
        if recovered or orphaned:
            log.warning(
                "taskrt: recovered %d interrupted job(s), failed %d orphaned", recovered, orphaned
            )
        for info in await self.store.waiting_jobs():
            self._adopt(info, announce=False)

    def _adopt(self, info: JobInfo, *, announce: bool) -> JobState | None:
        """Take responsibility for a WAITING job found in the database."""
        spec = self._tasks.get(info.task)
        if spec is None:
            job_logger(info).warning(
                "taskrt: job %d has unknown task %r; left waiting", info.id, info.task
            )
            return None
        state = JobState(info, spec, _policy(info, spec))
        self._live[info.id] = state
        if info.unique_key is not None:
            self._unique[info.unique_key] = info.id
        if announce:
            self._emit(state, EventType.ADDED, {"run_at": info.run_at, "priority": info.priority})
        self.pool(info.pool).push(state)
        return state

    async def _poll_loop(self) -> None:
        """Pick up what client processes wrote (note 3)."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._poll_once()
            except TaskrtError:
                log.exception("taskrt: polling for external jobs failed")

    async def _poll_once(self) -> None:
        changed = await self.store.external_changes()
        for info, cancel_requested in changed:
            state = self._live.get(info.id)
            if info.status is JobStatus.WAITING and state is None:
                self._adopt(info, announce=True)
            elif info.status is JobStatus.CANCELLED and state is not None:
                if state.status is JobStatus.WAITING:
                    self._pools[state.pool].remove(state)
                    state.seq = max(state.seq, info.seq)
                    self._finalize(state, JobStatus.CANCELLED, {}, write=False)
                elif state.status is JobStatus.RUNNING:
                    self._pools[state.pool].cancel_running(state)
            elif cancel_requested and state is not None and state.status is JobStatus.RUNNING:
                self._pools[state.pool].cancel_running(state)
            self.store.write(sql.SQL_CLEAR_EXTERNAL, (info.id,))

    # -- adding --------------------------------------------------------------------------

    def _require_started(self, what: str) -> None:
        if not self._started:
            raise RuntimeNotStarted(what)

    def _resolve(self, task: TaskRef) -> tuple[TaskSpec, Options]:
        if isinstance(task, TaskCall):
            return task.spec, task.opts
        if isinstance(task, Task):
            spec = self._tasks.get(task.spec.name)
            return (spec or task.spec), _NO_OPTIONS
        if isinstance(task, str):
            spec = self._tasks.get(task)
            if spec is None:
                raise TaskNotFound(task)
            return spec, _NO_OPTIONS
        raise InvalidOption("task", f"expected a task, a task call or a task name, found {task!r}")

    async def add(
        self, task: TaskRef, /, *args: Any, tx: Transaction | None = None, **kwargs: Any
    ) -> int:
        """Add a job to its task's pool; returns the id once it is durable."""
        spec, _ = self._resolve(task)
        return await self.pool(spec.pool).add(task, *args, tx=tx, **kwargs)

    async def _add(
        self,
        pool: Pool,
        task: TaskRef,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        tx: Transaction | None,
    ) -> list[int]:
        if self.instrumentation is not None:
            return await self.instrumentation.add(self._add_jobs, pool, task, calls, tx=tx)
        return await self._add_jobs(pool, task, calls, tx=tx)

    async def _add_jobs(
        self,
        pool: Pool,
        task: TaskRef,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        tx: Transaction | None,
    ) -> list[int]:
        self._require_started("adding a job")
        spec, opts = self._resolve(task)
        now = self.clock.now()
        run_at = opts.run_at if opts.run_at is not None else now + (opts.delay or 0.0)
        priority = opts.priority if opts.priority is not None else spec.priority
        max_attempts = spec.attempts if opts.attempts == "default" else opts.attempts
        timeout = opts.timeout if opts.timeout is not None else spec.timeout
        retry = opts.retry or spec.retry
        retry_described = None if opts.retry is None else opts.retry.describe()
        retry_json = None if retry_described is None else dumps(retry_described)
        try:
            metadata_json = dumps(opts.metadata or {})
        except (TypeError, ValueError) as exc:
            raise SerializationError("metadata", str(exc)) from None
        if len(calls) > 1 and opts.unique_key is not None:
            raise InvalidOption("unique_key", "a unique key applies to one job, not to add_many")
        jobs: list[NewJob] = []
        for args, kwargs in calls:
            spec.validate(args, kwargs)
            try:
                args_json = dumps(list(args))
                kwargs_json = dumps(kwargs)
            except (TypeError, ValueError) as exc:
                raise SerializationError(f"the arguments of task {spec.name!r}", str(exc)) from None
            jobs.append(
                NewJob(
                    task=spec.name,
                    pool=pool.name,
                    args_json=args_json,
                    kwargs_json=kwargs_json,
                    max_attempts=max_attempts,
                    priority=priority,
                    metadata_json=metadata_json,
                    unique_key=opts.unique_key,
                    created_at=now,
                    run_at=run_at,
                    timeout=timeout,
                    retry_json=retry_json,
                    job_id=opts.job_id,
                    external=not self.workers,
                )
            )
        if opts.unique_key is not None and self.workers:
            existing = self._unique.get(opts.unique_key)
            if existing is not None:
                return [existing]
        # Jobs added earlier in an open transaction are not queued yet, but will be.
        in_tx = 0 if tx is None else sum(1 for s in tx._states if s.pool == pool.name)
        await self._check_capacity(pool, len(jobs) + in_tx)
        if spec.hooks.next_id is not None and opts.job_id is None:
            for job in jobs:
                job.job_id = await self._next_id(spec)
        metadata = dict(opts.metadata or {})

        def new_state(job: NewJob, args: tuple[Any, ...], kwargs: dict[str, Any]) -> JobState:
            return JobState.new(
                spec,
                retry,
                id=0,  # set once the store has assigned it
                pool=pool.name,
                # What a restart would read back: JSON's view of the arguments.
                args=tuple(args) if _plain(args) else tuple(json.loads(job.args_json)),
                kwargs=kwargs if _plain_kw(kwargs) else json.loads(job.kwargs_json),
                max_attempts=max_attempts,
                priority=priority,
                metadata=metadata,
                unique_key=opts.unique_key,
                created_at=now,
                run_at=run_at,
                timeout=timeout,
                retry_policy=retry_described,
            )

        pool._pending += len(jobs)
        results: list[sql.InsertResult | BaseException]
        states: list[JobState] | None = None
        try:
            if tx is not None:
                results = list(await self.store.insert_in(tx._conn, jobs))
            else:
                committed = self.store.insert(jobs)
                if len(jobs) > 8:
                    # Let the writer hand the batch to its thread, then build the
                    # in-memory states while SQLite works (add_many's hot path).
                    await asyncio.sleep(0)
                    states = [new_state(j, a, k) for j, (a, k) in zip(jobs, calls, strict=True)]
                results = await committed
        finally:
            pool._pending -= len(jobs)
        ids: list[int] = []
        failure: BaseException | None = None
        for i, (job, (args, kwargs), res) in enumerate(zip(jobs, calls, results, strict=True)):
            if isinstance(res, BaseException):
                failure = failure or res
                continue
            ids.append(res.job_id)
            if not res.created:
                continue
            state = states[i] if states is not None else new_state(job, args, kwargs)
            state.id = res.job_id
            if tx is not None:
                tx._states.append(state)
            else:
                self._accept(state)
        if failure is not None:
            raise failure
        return ids

    def _accept(self, state: JobState) -> None:
        """A committed job: take it in (owner) and tell the world."""
        info = state
        self.counters.added[info.task] += 1
        if self.workers:
            self._live[info.id] = state
            if info.unique_key is not None:
                self._unique[info.unique_key] = info.id
        if self.broker.wants(info.id):
            self.broker.publish(
                Event(
                    info.id,
                    1,
                    EventType.ADDED,
                    info.task,
                    info.pool,
                    JobStatus.WAITING,
                    info.created_at,
                    {"run_at": info.run_at, "priority": info.priority},
                )
            )
        if state.spec.hooks.on_add is not None:
            self._hook(state.spec.hooks.on_add, info.id, job=state)
        if self.workers:
            self._pools[info.pool].push(state)

    async def _check_capacity(self, pool: Pool, n: int) -> None:
        if pool.capacity is None:
            return
        waiting = pool.waiting if self.workers else await self.store.count_waiting(pool.name)
        if waiting + pool._pending + n > pool.capacity:
            raise QueueFull(pool.name, pool.capacity)

    async def _next_id(self, spec: TaskSpec) -> int:
        assert spec.hooks.next_id is not None
        try:
            value = spec.hooks.next_id()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise InvalidOption(
                "next_id", f"the next_id hook of {spec.name!r} failed: {exc}"
            ) from exc
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidOption(
                "next_id",
                f"the next_id hook of {spec.name!r} returned {value!r}, not a positive int",
            )
        return value

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction for the application's own SQL and ``add(..., tx=tx)``."""
        self._require_started("a transaction")
        async with self.store.transaction() as conn:
            tx = Transaction(conn)
            yield tx
        for state in tx._states:
            self._accept(state)

    # -- running: transitions called by the pools --------------------------------------------

    def _emit(self, state: JobState, kind: EventType, data: dict[str, Any]) -> int:
        """Advance the job's sequence and publish (only built when someone listens)."""
        seq = state.next_seq()
        if self.broker.wants(state.id):
            self.broker.publish(
                Event(
                    state.id,
                    seq,
                    kind,
                    state.task,
                    state.pool,
                    state.status,
                    self.clock.now(),
                    data,
                )
            )
        return seq

    def _on_start(self, state: JobState) -> None:
        now = self.clock.now()
        attempt = state.attempts + 1
        state.update(status=JobStatus.RUNNING, attempts=attempt, started_at=now, finished_at=None)
        seq = self._emit(state, EventType.STARTED, {"attempt": attempt})
        self.store.write(sql.SQL_START, (attempt, now, seq, state.id), job_id=state.id)

    def _report(
        self, state: JobState, current: float, total: float | None, message: str | None
    ) -> None:
        """Progress: state in memory, an event, a coalesced write (never waits)."""
        if state.status is not JobStatus.RUNNING or state.abandoned:
            return
        state.current = current
        if total is not None:
            state.total = total
        if message is not None:
            state.message = message
        info = state
        seq = state.seq = state.seq + 1
        if self.broker.wants(info.id):
            self.broker.publish(
                Event(
                    info.id,
                    seq,
                    EventType.PROGRESS,
                    info.task,
                    info.pool,
                    JobStatus.RUNNING,
                    self.clock.now(),
                    {"current": current, "total": state.total, "message": state.message},
                )
            )
        self.store.progress(info.id, current, state.total, state.message, seq)
        hook = state.spec.hooks.on_progress
        if hook is not None:
            self._hook(hook, info.id, current, state.total, state.message, job=state)

    def progress(
        self, job_id: int, current: float, total: float | None = None, message: str | None = None
    ) -> Awaitable[None]:
        """Report progress of a running job, from anywhere in this process.

        ``await rt.progress(...)`` from a coroutine; a sync handler running in a
        worker thread may call it without ``await`` (the report is handed to
        the event loop). Never waits on the disk. Raises ``InvalidTransition``
        when the job is not running here (``JobNotFound`` when there is none).
        """
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._report_by_id, job_id, current, total, message)
            return DONE
        state = self._live.get(job_id)
        if state is None or state.status is not JobStatus.RUNNING:
            return self._not_running(job_id, "report progress for")
        self._report(state, current, total, message)
        return DONE

    def _report_by_id(
        self, job_id: int, current: float, total: float | None, message: str | None
    ) -> None:
        state = self._live.get(job_id)
        if state is not None and state.status is JobStatus.RUNNING:
            self._report(state, current, total, message)
        else:
            log.warning("taskrt: progress for job %d ignored: it is not running here", job_id)

    async def _not_running(self, job_id: int, action: str) -> None:
        info = await self.get(job_id)
        raise InvalidTransition(job_id, info.status.value, action)

    def _record_attempt(
        self,
        state: JobState,
        outcome: AttemptOutcome,
        error: str | None = None,
        tb: str | None = None,
    ) -> None:
        """The attempt's one row, written when it ends (store note 7)."""
        now = self.clock.now()
        started = state.started_at or now
        self.counters.attempts[state.task, outcome.value].observe(now - started)
        if outcome is AttemptOutcome.TIMEOUT:
            self.counters.timeouts[state.task] += 1
        self.store.write(
            sql.SQL_ATTEMPT,
            (
                state.id,
                state.attempts,
                started,
                now,
                outcome.value,
                error,
                tb,
            ),
            job_id=state.id,
        )

    def _on_attempt_end(self, state: JobState, outcome: Outcome) -> None:
        attempt = state.attempts
        if outcome.kind == "success":
            try:
                result_json = None if outcome.result is None else dumps(outcome.result)
            except (TypeError, ValueError) as exc:
                outcome = Outcome("error", error=SerializationError("the result", str(exc)))
            else:
                self._record_attempt(state, AttemptOutcome.SUCCESS)
                self._finalize(
                    state, JobStatus.SUCCESS, {"result": outcome.result}, result_json=result_json
                )
                return
        if outcome.kind == "shutdown":
            # Not the job's fault: back to WAITING without charging the attempt.
            self._record_attempt(state, AttemptOutcome.INTERRUPTED, "the runtime stopped")
            state.update(status=JobStatus.WAITING, attempts=attempt - 1, started_at=None)
            self._write_waiting(state)
            self._live.pop(state.id, None)
            return
        if outcome.kind == "cancelled":
            self._record_attempt(state, AttemptOutcome.CANCELLED, "cancelled")
            self._finalize(state, JobStatus.CANCELLED, {})
            return
        failure = outcome.error
        assert failure is not None
        error = _describe(failure)
        record = not (isinstance(failure, Retry) and not failure.record_error)
        if outcome.kind == "timeout":
            kind = AttemptOutcome.TIMEOUT
        else:
            kind = AttemptOutcome.ERROR if record else AttemptOutcome.RETRY
        self._record_attempt(state, kind, error if record else None, outcome.tb if record else None)
        job_log = job_logger(state)
        max_attempts = state.max_attempts
        spent = max_attempts is not None and attempt >= max_attempts
        if isinstance(failure, Fatal) or spent:
            job_log.warning("taskrt: job %d failed: %s", state.id, error)
            self._fail(state, error)
            return
        if isinstance(failure, Retry) and failure.delay is not None:
            delay = failure.delay
        else:
            delay = state.retry.delay(attempt)
        job_log.info(
            "taskrt: job %d attempt %d failed, retrying in %.3gs: %s",
            state.id,
            attempt,
            delay,
            error,
        )
        self.counters.retries[state.task] += 1
        run_at = self.clock.now() + delay
        keep = error if record else state.error
        if state.timed_out:
            # The timed-out attempt may still run (abandoned, pool note 3): the next
            # attempt gets a fresh state so that none of this attempt's flags leak into it.
            state = self._live[state.id] = JobState(state.info(), state.spec, state.retry)
        state.update(status=JobStatus.WAITING, run_at=run_at, error=keep, started_at=None)
        self._emit(
            state,
            EventType.RETRYING,
            {"attempt": attempt, "error": error if record else None, "run_at": run_at},
        )
        self._write_waiting(state)
        self._pools[state.pool].push(state)

    def _write_waiting(self, state: JobState) -> asyncio.Future[None]:
        return self.store.write(
            sql.SQL_WAITING,
            (
                state.run_at,
                state.error,
                state.seq,
                state.attempts,
                state.max_attempts,
                state.current,
                state.total,
                state.message,
                state.id,
            ),
            job_id=state.id,
        )

    def _fail(self, state: JobState, error: str) -> None:
        hook = state.spec.hooks.on_failed
        if hook is None:
            self._finalize(state, JobStatus.FAILURE, {"error": error}, error=error)
            return
        self._spawn(self._fail_in_transaction(state, error, hook))

    async def _fail_in_transaction(
        self, state: JobState, error: str, hook: Callable[..., Any]
    ) -> None:
        """Write FAILURE and run ``on_failed(job, tx)`` in one transaction."""
        await self.store.flush()  # earlier writes of this job first
        now = self.clock.now()
        state.update(status=JobStatus.FAILURE, error=error, finished_at=now)
        info = state.info()
        async with self.store.transaction() as conn:
            await conn.execute(sql.SQL_FAILURE, self._failure_params(state, error, now))
            await conn.execute("SAVEPOINT taskrt_on_failed")
            try:
                result = hook(info, Transaction(conn))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                job_logger(info).exception("taskrt: the on_failed hook of job %d raised", info.id)
                await conn.execute("ROLLBACK TO taskrt_on_failed")
            await conn.execute("RELEASE taskrt_on_failed")
        self._finalize(state, JobStatus.FAILURE, {"error": error}, error=error, write=False)

    def _failure_params(self, state: JobState, error: str, now: float) -> tuple[Any, ...]:
        return (
            error,
            now,
            state.current,
            state.total,
            state.message,
            state.seq + 1,
            state.attempts,
            state.id,
        )

    def _finalize(
        self,
        state: JobState,
        status: JobStatus,
        data: dict[str, Any],
        *,
        result_json: str | None = None,
        error: str | None = None,
        write: bool = True,
    ) -> None:
        """Reach a terminal status: write (never coalesced), publish, run hooks."""
        now = self.clock.now()
        info = state
        self.counters.finished[info.task, status.value] += 1
        if status is JobStatus.SUCCESS:
            state.update(status=status, result=data.get("result"), finished_at=now, error=None)
        else:
            state.update(status=status, error=error, finished_at=now)
        seq = state.seq + 1
        fut: asyncio.Future[None] | None = None
        if write:
            if status is JobStatus.SUCCESS:
                params: tuple[Any, ...] = (
                    result_json,
                    now,
                    state.current,
                    state.total,
                    state.message,
                    seq,
                    info.id,
                )
                fut = self.store.write(sql.SQL_SUCCESS, params, job_id=info.id)
            elif status is JobStatus.FAILURE:
                fut = self.store.write(
                    sql.SQL_FAILURE, self._failure_params(state, error or "", now), job_id=info.id
                )
            else:
                fut = self.store.write(
                    sql.SQL_CANCELLED, (now, seq, error, info.id), job_id=info.id
                )
        if status is JobStatus.FAILURE and "schedule" in state.metadata:
            self.schedules._job_failed(state.metadata)  # counted (scheduler note 6)
        self._emit(state, _TERMINAL_EVENT[status], data)
        if info.unique_key is not None and self._unique.get(info.unique_key) == info.id:
            del self._unique[info.unique_key]
        hooks = state.spec.hooks
        if status is JobStatus.SUCCESS and hooks.on_success is not None:
            self._hook(hooks.on_success, info.id, data.get("result"), job=state)
        elif status is JobStatus.FAILURE and hooks.on_error is not None:
            self._hook(hooks.on_error, info.id, error, job=state)
        if fut is None:
            self._live.pop(info.id, None)
        else:
            # Reads come from memory until the terminal write is committed (note 2).
            fut.add_done_callback(functools.partial(self._forget, state))

    def _forget(self, state: JobState, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            job_logger(state).error(
                "taskrt: the final state of job %d was not written: %s", state.id, fut.exception()
            )
        if self._live.get(state.id) is state and state.status in TERMINAL:
            del self._live[state.id]

    # -- hooks and background work ---------------------------------------------------------

    def _hook(self, hook: Callable[..., Any], *args: Any, job: JobState | None = None) -> None:
        """Run a user hook; one that raises is logged (with ``job``'s fields) and changes nothing."""
        logger = log if job is None else job_logger(job)
        try:
            result = hook(*args)
        except Exception:
            logger.exception("taskrt: hook %s raised", getattr(hook, "__qualname__", hook))
            return
        if inspect.isawaitable(result):
            self._spawn(_guard(result, hook, logger))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the public reads and actions -----------------------------------------------------

    async def get(self, job_id: int) -> JobInfo:
        """The job's current state (``JobNotFound`` when there is none)."""
        state = self._live.get(job_id)
        if state is not None:
            return state.info()
        self._require_started("reading a job")
        info = await self.store.get_job(job_id)
        if info is None:
            raise JobNotFound(job_id)
        return info

    async def attempts(self, job_id: int) -> list[AttemptInfo]:
        """The record of every attempt of the job (start, end, outcome, error, traceback)."""
        info = await self.get(job_id)
        await self.store.flush()
        records = await self.store.attempts(job_id)
        if info.status is JobStatus.RUNNING and info.started_at is not None:
            # The running attempt is written when it ends (store note 7).
            records = [r for r in records if r.number != info.attempts]
            records.append(AttemptInfo(job_id, info.attempts, info.started_at))
        return records

    def subscribe(
        self,
        job_id: int | None = None,
        *,
        pool: str | None = None,
        task: str | None = None,
        buffer: int | None = None,
    ) -> JobStream:
        """Events as they happen.

        With a ``job_id``: first a ``snapshot`` event (``data["job"]``), then the
        job's live events; ends after the terminal one. Without: every event of
        jobs matching ``pool`` / ``task``, until closed.
        """
        return JobStream(self, job_id, pool=pool, task=task, buffer=buffer)

    async def wait(self, job_id: int, timeout: float | None = None) -> JobInfo:  # noqa: ASYNC109
        """Wait until the job is terminal; returns its final ``JobInfo``."""
        async with asyncio.timeout(timeout):
            async with self.subscribe(job_id) as stream:
                async for _ in stream:
                    pass
        return await self.get(job_id)

    async def cancel(self, job_id: int) -> JobInfo:
        """Cancel a waiting or running job; returns its state after the cancel."""
        self._require_started("cancel")
        state = self._live.get(job_id)
        if state is not None and self.workers:
            if state.status is JobStatus.WAITING:
                self._pools[state.pool].remove(state)
                self._finalize(state, JobStatus.CANCELLED, {})
                await self.store.flush()
                return state.info()
            if state.status is JobStatus.RUNNING:
                self._pools[state.pool].cancel_running(state)
                return await self.wait(job_id, timeout=self.abandon_after + 5)
        info = await self.get(job_id)
        if info.terminal:
            raise InvalidTransition(job_id, info.status.value, "cancel")
        # Both in one transaction: the owner may start the job between our read
        # and our write, and whichever status the row has then, the cancel lands.
        await sql.run_script(
            self.store,
            [
                (sql.SQL_CANCEL_WAITING_EXTERNAL, (self.clock.now(), job_id)),
                (sql.SQL_REQUEST_CANCEL, (job_id,)),
            ],
        )
        return await self.get(job_id)

    async def retry(self, job_id: int) -> JobInfo:
        """Put a FAILURE or CANCELLED job back to WAITING, with its attempts renewed."""
        self._require_started("retry")
        info = await self.get(job_id)
        if info.status not in (JobStatus.FAILURE, JobStatus.CANCELLED):
            raise InvalidTransition(job_id, info.status.value, "retry")
        spec = self._tasks.get(info.task)
        base = spec.attempts if spec is not None else 1
        max_attempts = None if base is None or info.max_attempts is None else info.attempts + base
        now = self.clock.now()
        if not self.workers or spec is None:
            await sql.run_script(
                self.store, [(sql.SQL_RETRY_EXTERNAL, (now, max_attempts, job_id))]
            )
            return await self.get(job_id)
        await self.store.flush()
        holder = None if info.unique_key is None else self._unique.get(info.unique_key)
        if holder is not None and holder != job_id:
            # Refused before writing: the unique index would fail the whole write batch.
            raise InvalidTransition(
                job_id,
                info.status.value,
                f"retry (job {holder} holds its unique key {info.unique_key!r})",
            )
        state = JobState(info, spec, _policy(info, spec))
        state.update(
            status=JobStatus.WAITING,
            run_at=now,
            max_attempts=max_attempts,
            finished_at=None,
            started_at=None,
        )
        self._live[job_id] = state
        if info.unique_key is not None:
            self._unique.setdefault(info.unique_key, job_id)
        self._emit(
            state, EventType.RETRYING, {"attempt": info.attempts, "manual": True, "run_at": now}
        )
        await self._write_waiting(state)
        self.pool(info.pool).push(state)
        return state.info()

    async def jobs(
        self,
        *,
        status: JobStatus | str | Sequence[JobStatus | str] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Jobs, newest first, filtered; pass ``page.cursor`` back for the next page."""
        self._require_started("listing jobs")
        statuses = _statuses(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidOption("limit", f"expected an integer from 1 to 1000, found {limit!r}")
        before: int | None = None
        if cursor:
            try:
                before = int(cursor)
            except ValueError:
                raise InvalidOption(
                    "cursor", f"expected a cursor from a previous page, found {cursor!r}"
                ) from None
        await self.store.flush()
        rows = await self.store.list_jobs(
            status=statuses,
            pool=pool,
            task=task,
            metadata=dict(metadata or {}),
            before_id=before,
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        jobs = [self._live[r.id].info() if r.id in self._live else r for r in rows]
        return Page(jobs=jobs, cursor=str(rows[-1].id) if more and rows else None)

    async def stats(self, since: float | None = None, until: float | None = None) -> Stats:
        """Counts by status, success rate, mean and p95 duration (seconds)."""
        self._require_started("statistics")
        await self.store.flush()
        raw = await self.store.stats(since, until)
        counts = {s.value: int(raw["counts"].get(s.value, 0)) for s in JobStatus}
        done = counts["SUCCESS"] + counts["FAILURE"]
        return Stats(
            counts=counts,
            total=sum(counts.values()),
            success_rate=(counts["SUCCESS"] / done) if done else None,
            mean_duration=raw["mean"],
            p95_duration=raw["p95"],
            since=since,
            until=until,
        )

    async def cleanup(
        self,
        older_than: float | timedelta = 7 * 86400,
        statuses: Iterable[JobStatus | str] = (
            JobStatus.SUCCESS,
            JobStatus.FAILURE,
            JobStatus.CANCELLED,
        ),
    ) -> int:
        """Delete finished jobs (and their attempts) older than ``older_than``; ids are never reused."""
        self._require_started("cleanup")
        seconds = (
            older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
        )
        chosen = _statuses(list(statuses)) or []
        if any(s not in TERMINAL for s in chosen):
            raise InvalidOption(
                "statuses", "only finished jobs (SUCCESS, FAILURE, CANCELLED) can be cleaned up"
            )
        if not chosen:
            return 0
        await self.store.flush()
        marks = ",".join("?" * len(chosen))
        deleted, _ = await sql.run_script(
            self.store,
            [
                (
                    sql.SQL_CLEANUP.format(marks),
                    (self.clock.now() - seconds, *[s.value for s in chosen]),
                ),
                (sql.SQL_CLEANUP_ATTEMPTS, ()),
            ],
        )
        return deleted


class JobStream:
    """``rt.subscribe(...)``: an async iterator of events; also an async context manager."""

    def __init__(
        self,
        rt: Runtime,
        job_id: int | None,
        *,
        pool: str | None,
        task: str | None,
        buffer: int | None,
    ) -> None:
        self._rt = rt
        self.job_id = job_id
        matches = None
        if pool is not None or task is not None:

            def matches(ev: Event) -> bool:
                return (pool is None or ev.pool == pool) and (task is None or ev.task == task)

        self._sub: Subscription = rt.broker.subscribe(job_id, matches=matches, maxsize=buffer)
        self._snapshot_sent = job_id is None
        self._last_seq = 0
        self._done = False

    @property
    def subscription(self) -> Subscription:
        return self._sub

    def __aiter__(self) -> JobStream:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        if not self._snapshot_sent:
            self._snapshot_sent = True
            assert self.job_id is not None
            try:
                info = await self._rt.get(self.job_id)
            except BaseException:
                self.close()
                raise
            self._last_seq = info.seq
            if info.terminal:
                self._done = True
                self.close()
            elif not self._rt.workers and self.job_id not in self._rt._live:
                self._sub.close()
                self._poll_info = info
            return snapshot_event(info, self._rt.clock.now())
        if self.job_id is not None and not self._rt.workers and self.job_id not in self._rt._live:
            return await self._poll_next()
        while True:
            ev = await self._sub.get()
            if ev is None:
                self._done = True
                raise StopAsyncIteration
            if ev.seq <= self._last_seq and self.job_id is not None:
                continue
            self._last_seq = ev.seq
            if ev.terminal and self.job_id is not None:
                self._done = True
                self.close()
            return ev

    async def _poll_next(self) -> Event:
        """Client runtimes see other processes' jobs by reading the database."""
        assert self.job_id is not None
        while True:
            await asyncio.sleep(self._rt.poll_interval)
            info = await self._rt.get(self.job_id)
            if info.seq == self._last_seq and info.status == self._poll_info.status:
                continue
            prev, self._poll_info, self._last_seq = self._poll_info, info, info.seq
            if info.terminal:
                self._done = True
                kind = _TERMINAL_EVENT[info.status]
            elif info.status != prev.status:
                kind = EventType.STARTED if info.status is JobStatus.RUNNING else EventType.RETRYING
            else:
                kind = EventType.PROGRESS
            data = {"current": info.current, "total": info.total, "message": info.message}
            if info.status is JobStatus.SUCCESS:
                data["result"] = info.result
            if info.error:
                data["error"] = info.error
            return Event(
                info.id,
                info.seq,
                kind,
                info.task,
                info.pool,
                info.status,
                self._rt.clock.now(),
                data,
            )

    def close(self) -> None:
        self._sub.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> JobStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def snapshot_event(info: JobInfo, now: float) -> Event:
    return Event(
        info.id,
        info.seq,
        EventType.SNAPSHOT,
        info.task,
        info.pool,
        info.status,
        now,
        {"job": info.to_dict()},
    )


_TERMINAL_EVENT = {
    JobStatus.SUCCESS: EventType.SUCCESS,
    JobStatus.FAILURE: EventType.FAILURE,
    JobStatus.CANCELLED: EventType.CANCELLED,
}


async def _guard(awaitable: Any, hook: Any, logger: logging.Logger | JobLogAdapter = log) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("taskrt: hook %s raised", getattr(hook, "__qualname__", hook))


def _policy(info: JobInfo, spec: TaskSpec) -> RetryPolicy:
    """The job's own retry policy if it was given one per call, else its task's."""
    if info.retry_policy is None:
        return spec.retry
    try:
        return parse_retry(info.retry_policy)
    except InvalidOption:
        log.warning("taskrt: job %d has an unreadable retry policy; using its task's", info.id)
        return spec.retry


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TaskrtError | Fatal | Retry):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _plain(args: tuple[Any, ...]) -> bool:
    return all(type(a) in _SCALARS for a in args)


def _plain_kw(kwargs: dict[str, Any]) -> bool:
    return all(type(v) in _SCALARS for v in kwargs.values())


_SCALARS = frozenset({int, float, str, bool, type(None)})


def _statuses(value: JobStatus | str | Sequence[JobStatus | str] | None) -> list[JobStatus] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str | JobStatus) else list(value)
    out: list[JobStatus] = []
    for item in items:
        try:
            out.append(JobStatus(str(item).upper()))
        except ValueError:
            raise InvalidOption(
                "status",
                f"unknown status {item!r}; expected one of {', '.join(s.value for s in JobStatus)}",
            ) from None
    return out


__all__ = ["JobStream", "Runtime", "Transaction", "snapshot_event"]
