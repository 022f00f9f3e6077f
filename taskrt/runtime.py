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
3. **One owner per database, any number of standbys.** The process that
   holds the ownership lock (``taskrt.ownership``) runs the pools, the
   scheduler and retention; every other runtime with ``workers=True`` is a
   standby that serves the whole API and takes over within a second when the
   owner dies. ``workers=False`` makes a client, which never takes over.
4. **Standbys and clients forward to the owner.** They connect to the
   owner's relay (``taskrt.relay``): adds, actions and reads of live jobs and
   pools go to the owner, which answers from memory; the events their
   subscribers follow come back the same way. With no owner reachable they
   fall back to the database: adds, cancels and retries are written there,
   marked ``external``, and the owner polls for such rows every
   ``poll_interval`` s; streams poll the job's row. A job they read from the
   database is told ``paused`` from the pauses the database records, read with
   it (``_recorded_pauses``): their pools do not follow the owner's pauses (on
   PostgreSQL's mode "nodes" every process applies each one, ``taskrt.nodes``).
5. **A start the database cannot record now is a standby's.** A process that
   takes the lock at start but cannot write its record (the disk is full, a
   lock is held past the busy timeout: ``StoreUnavailable``) lets the lock go
   and starts as a standby, which tries to take over every
   ``FOLLOW_INTERVAL`` until the database takes writes. A standby whose
   takeover failed lets the lock go the same way, so a process starting
   meanwhile finds it free: were that start fatal, a supervisor restarting a
   killed worker would stop with it (uvicorn stops every worker, the healthy
   standby too, when one fails to start). A process alone does the same (it
   cannot tell that it is): it serves reads, refuses adds with
   ``StoreUnavailable`` as an owner does during an outage, and owns once
   writes succeed, with no restart. What no wait mends (a read-only file, a
   damaged one, a newer schema) still stops the start. Its failed tries are
   logged as an outage is, not one by one: the first with its traceback,
   then a line every ``TAKE_OVER_TOLD_EVERY`` seconds at most while they
   keep failing, and the takeover that succeeds says how many failed.

The runtime composes its parts (docs/architecture.md): ``Adding`` (from
``add`` to a committed, queued job), ``Transitions`` (what happens while jobs
run; the pools call it through ``_PoolHost``), ``Adoption`` (recovery and the
poll for other processes' changes), ``LiveJobs``, ``Background``, the store,
the event bus and ``Ownership``. This module keeps the lifecycle and the
public API. It is longer than most modules because it *is* the public API
(declaring tasks, pools and schedules; adding; reading; acting): each method
is short and hands the work to a part.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Set,
)
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .adding import Adding, FlowStep
from .adoption import Adoption
from .alone import Alone
from .background import Background, JobLogAdapter, job_logger, woken
from .batches import Batcher
from .bulk import BULK_LIMIT, act_on_each, check_action, matching_ids
from .clock import Clock, SystemClock
from .context import CURRENT_ATTEMPT, DONE, JobState
from .counters import Counters
from .deadlines import Deadlines
from .definitions import (
    Hooks,
    Signature,
    Task,
    TaskCall,
    TaskRef,
    TaskSpec,
    make_spec,
    pool_clash,
)
from .errors import (
    InvalidOption,
    InvalidTransition,
    JobNotFound,
    OwnershipError,
    OwnerUnreachable,
    PoolExists,
    PoolNotFound,
    RuntimeNotStarted,
    StoreUnavailable,
    TaskrtError,
    WorkflowNotFound,
)
from .events import MAX_BUFFER, Broker, EventBus
from .gates import Gates
from .history import points as history_points
from .limits import (
    DEFAULT_LIMITS,
    FAR_TIME,
    INT64_MAX,
    INT64_MIN,
    MAX_DURATION,
    Limits,
    check_count,
    check_flag,
    check_job_id,
    check_number,
    check_progress,
    check_seconds,
    check_text,
    shown,
)
from .live import LiveJobs
from .models import (
    BLOCKED_AT,
    TERMINAL,
    AttemptInfo,
    BulkResult,
    Event,
    EventType,
    HistoryPoint,
    JobInfo,
    JobStatus,
    OwnerStatus,
    Page,
    PoolStatistics,
    Stats,
    StoreHealth,
    WorkflowInfo,
)
from .nodebus import NodeBus
from .nodes import DEFAULT_TTL, Nodes
from .ownership import (
    FileLockOwnership,
    HeldLock,
    Ownership,
    ServerLockOwnership,
    SoleOwnership,
    owner_name,
)
from .pool import DEFAULT_CONCURRENCY, Outcome, Pool
from .pool import check_settings as check_pool_settings
from .relay import (
    RelayClient,
    RelayServer,
    decode_event,
    encode_event,
    private_address,
    relay_address,
)
from .retention import DEFAULT_AGES
from .retry import parse_age
from .scheduler import ScheduleDefinition, Scheduler, define
from .store import JobStore, NewJob, Store, Synchronous, is_server_url
from .stream import JobStream, snapshot_event
from .transaction import Transaction, refuse_in_block
from .transitions import DEFAULT_HOOK_TIMEOUT, Transitions, retry_policy_of
from .waiting import DEFAULT_WINDOW, Waiting
from .watchdog import LoopWatchdog
from .workflows import (
    Flow,
    GroupBuilder,
    Workflows,
    WorkflowStream,
    chain_steps,
    group_steps,
)
from .workflows import read as read_workflow

if TYPE_CHECKING:
    from .pool import Instrumentation, Queue
    from .store.postgres import PgStore
    from .store.protocol import CancelledChild

log = logging.getLogger("taskrt")

F = TypeVar("F", bound=Callable[..., Any])

MAX_RECOVERIES = 3
MAX_POINTS = 10_000
"""Steps ``rt.history`` gives at most (the latest of a longer window)."""
FOLLOW_INTERVAL = 0.1
"""Seconds between a standby's looks at the ownership lock (it also looks at
once when its connection to the owner ends)."""
TAKE_OVER_TOLD_EVERY = 10.0
"""Seconds between two lines of a standby whose takeovers keep failing (note 5)."""


class _FailedTries:
    """Failed tries in a row, and which of them to log (note 5): the first, then
    one every ``every`` seconds at most. Time is an argument."""

    __slots__ = ("every", "since", "told_at", "tries")

    def __init__(self, every: float) -> None:
        self.every = every
        self.tries = 0
        self.since = 0.0  # when the first of them failed
        self.told_at = 0.0  # when one was last logged

    def failed(self, now: float) -> bool:
        """One more failed try, at ``now``: True when it is to be logged."""
        self.tries += 1
        if self.tries == 1:
            self.since = self.told_at = now
            return True
        if now - self.told_at >= self.every:
            self.told_at = now
            return True
        return False

    def ended(self, now: float) -> tuple[int, float] | None:
        """A try succeeded at ``now``: the failed tries before it and the seconds
        since the first of them (None: none failed); the count starts again."""
        if not self.tries:
            return None
        tries, self.tries = self.tries, 0
        return tries, now - self.since


_NEW_JOB = tuple(f.name for f in dataclasses.fields(NewJob))
_RELEASED = ("blocked", "batching", "batched")
"""Waiting reasons of a job that waits for others (its parents, its batch), never
told ``scheduled`` or ``paused`` (``Runtime._told``)."""


class _Unset:
    """The default of an argument whose ``None`` means something."""


UNSET = _Unset()


async def _on_the_loop(call: Callable[..., Awaitable[None]], *args: Any) -> None:
    """``await call(*args)`` as a coroutine another thread hands to the loop: ``call``
    itself runs there, when the loop takes the coroutine."""
    await call(*args)


class Runtime:
    """One per process: ``async with Runtime("app.db") as rt: ...``.

    The database: a SQLite file (``"app.db"``; ``":memory:"`` for tests), or a
    PostgreSQL server's URL (``"postgresql://app@db/app?schema=jobs"``, with
    the ``postgres`` extra; docs/postgres.md). Without one, ``$TASKRT_DATABASE``
    names it, else ``":memory:"``. A file is named by its path: a SQLite URI
    (``"file:app.db"``) or an empty name raises ``InvalidOption``
    (``taskrt.store.sqlite.files``).

    Options (all keyword-only; each is checked here, and one of the wrong type or
    out of its range raises ``InvalidOption`` naming it: seconds are finite and
    at most an hour, ``grace`` a day; counts are integers):

    - ``workers``: may run jobs here (the owner, or a standby that takes over),
      or only add and read (a client); see note 3.
    - ``synchronous``: ``"normal"`` survives a process crash, ``"full"`` a power loss
      (SQLite; on PostgreSQL durability is the server's ``synchronous_commit``).
    - ``clock``: time source (``FakeClock`` in tests); ``tasks``, ``root``,
      ``executor``: task files to load at start.
    - ``grace``: seconds running jobs get to finish at stop (and that queued
      writes get while the database fails); ``abandon_after``: seconds a
      handler may ignore its cancellation; ``hook_timeout``: seconds an
      ``on_failed`` hook may run inside the failure's transaction (on SQLite
      every other write waits for it meanwhile).
    - ``poll_interval``: how often the owner looks for what processes without
      a connection to it wrote (note 4).
    - ``progress_interval``: how long progress writes are coalesced.
    - ``subscriber_buffer``, ``replay``: event buffers per subscriber and job.
    - ``default_concurrency``: of pools declared without one.
    - ``tracing``: OpenTelemetry spans (``taskrt[otel]``).
    - ``limits``: what a job may carry (``taskrt.Limits``: depth, sizes).
    - ``max_recoveries``: restarts a job may be interrupted by before it fails
      as orphaned (its attempt is charged before the handler runs).
    - ``stall_threshold``: seconds the event loop may be blocked before the
      watchdog logs the running jobs (``taskrt.watchdog``).
    - ``busy_timeout``: seconds a write waits for another process's lock
      before the batch is kept and tried again (store note 9).
    - ``window``: waiting jobs each pool keeps in memory, of those due and of
      those delayed; the rest stay in the database until their turn comes
      near (``taskrt.waiting``), so a backlog of any size costs bounded memory.
    - ``mode``: ``"nodes"``, the default on PostgreSQL: every process with
      workers runs jobs, claiming them from the database (``taskrt.nodes``);
      or ``"owner"``, the only mode on SQLite: one process runs the jobs, the
      others stand by (note 3). Every process of a schema must use the same
      mode. ``node_ttl``: seconds without a heartbeat after which a node's
      running jobs are taken back.
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        workers: bool = True,
        synchronous: Synchronous = "normal",
        clock: Clock | None = None,
        tasks: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        executor: Any = None,
        grace: float = 10.0,
        abandon_after: float = 1.0,
        poll_interval: float = 0.05,
        progress_interval: float = 0.05,
        subscriber_buffer: int = 256,
        replay: int = 128,
        default_concurrency: int = DEFAULT_CONCURRENCY,
        tracing: bool = False,
        limits: Limits | None = None,
        max_recoveries: int = MAX_RECOVERIES,
        stall_threshold: float = 1.0,
        busy_timeout: float = 5.0,
        window: int = DEFAULT_WINDOW,
        mode: str | None = None,
        node_ttl: float = DEFAULT_TTL,
        hook_timeout: float = DEFAULT_HOOK_TIMEOUT,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise InvalidOption("window", f"expected an integer of 2 or more, found {window!r}")
        self.window = window
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidOption("limits", f"expected a taskrt.Limits, found {limits!r}")
        _check_settings(
            workers=workers,
            tracing=tracing,
            clock=clock,
            tasks=tasks,
            root=root,
            grace=grace,
            abandon_after=abandon_after,
            poll_interval=poll_interval,
            progress_interval=progress_interval,
            subscriber_buffer=subscriber_buffer,
            replay=replay,
            default_concurrency=default_concurrency,
            max_recoveries=max_recoveries,
            stall_threshold=stall_threshold,
            busy_timeout=busy_timeout,
        )
        if mode not in (None, "owner", "nodes"):
            raise InvalidOption("mode", f"expected 'owner' or 'nodes', found {mode!r}")
        if (
            isinstance(node_ttl, bool)
            or not isinstance(node_ttl, int | float)
            or not 0.5 <= node_ttl <= 3600
        ):
            raise InvalidOption(
                "node_ttl", f"expected seconds from 0.5 to 3600, found {node_ttl!r}"
            )
        if (
            isinstance(hook_timeout, bool)
            or not isinstance(hook_timeout, int | float)
            or not 0 < hook_timeout <= 3600
        ):
            raise InvalidOption(
                "hook_timeout", f"expected seconds above 0, up to 3600, found {hook_timeout!r}"
            )
        target = str(path) if path is not None else os.environ.get(DATABASE_ENV, ":memory:")
        if mode is None:
            mode = "nodes" if is_server_url(target) else "owner"
        self.mode = mode
        self.limits = limits or DEFAULT_LIMITS
        self.max_recoveries = max_recoveries
        self.workers = workers
        self.clock: Clock = clock or SystemClock()
        self.grace = grace
        self.abandon_after = abandon_after
        self.poll_interval = poll_interval
        self.default_concurrency = default_concurrency
        self._tasks_path = tasks
        self._root = root
        self._executor = executor
        # The database: a SQLite file (or :memory:), or a PostgreSQL server's URL.
        self._relay_at: str | None = None
        self._server_lock: HeldLock | None = None
        node = ""  # this process's name as a node (mode "nodes")
        self._pg: PgStore | None = None  # the PostgreSQL store, for what only it does
        self.store: JobStore
        if is_server_url(target):
            store = _postgres_store(target, progress_interval=progress_interval)
            self.path = store.path  # without its password: it names the database in logs
            self.store = self._pg = store
            if mode == "nodes":
                node = owner_name()
                store.join_as(node, ttl=float(node_ttl))
                self._server_lock = store.ownership_lock(shared=True)
            else:
                self._server_lock = store.ownership_lock()
                self._relay_at = private_address(f"{store.path}#{store.schema}")
        else:
            if mode == "nodes":
                raise InvalidOption(
                    "mode",
                    "every process runs workers only on a PostgreSQL database; "
                    "a SQLite file has one owner (mode='owner')",
                )
            self.path = target
            # The store first: it refuses a name SQLite would not open as the file
            # the lock and the relay are named after (store.sqlite.files).
            self.store = Store(
                self.path,
                synchronous=synchronous,
                progress_interval=progress_interval,
                busy_timeout=busy_timeout,
            )
            if target != ":memory:":
                self._relay_at = relay_address(target)
        # Logs (and counts) a handler that blocks the event loop (taskrt.watchdog).
        self.loop_watchdog = LoopWatchdog(stall_threshold, describe=self._running_jobs)
        self.broker: EventBus = Broker(buffer=subscriber_buffer, replay=replay)
        if self._pg is not None:
            # A pool's capacity holds across the processes adding at once, and the
            # application's own transactions: the database counts it, in each add's
            # transaction. (Where one owner runs the jobs, its memory misses what those
            # transactions committed until their notification arrives.)
            self._pg.capacity_of = self._capacity_of
        if self._pg is not None and mode == "nodes":
            # Every node's events reach every node (taskrt.nodebus).
            self.broker = NodeBus(
                node,
                send=self._pg.send_events,
                send_now=self._pg.send_events_now,
                failing=lambda: self.store.failing,
                read=self._pg.get_job,
                others=self._pg.other_listeners,
                buffer=subscriber_buffer,
                replay=replay,
            )
            self._pg.on_reaped = self.broker.reaped  # taskrt.nodebus note 7
        self.counters = Counters()
        self._pools: dict[str, Pool] = {}
        # The pools whose limits the application set (``pool()``), which no task may own.
        self._declared_pools: set[str] = set()
        self._changing_pools = asyncio.Lock()  # change_pool's check, write and change
        self.live = LiveJobs()
        self.background = Background()
        # What happens to a job while it runs (taskrt.transitions); the pools call it.
        self.transitions = Transitions(
            store=self.store,
            broker=self.broker,
            clock=self.clock,
            counters=self.counters,
            limits=self.limits,
            live=self.live,
            pools=self._pools,
            background=self.background,
            schedule_failed=lambda metadata: self.schedules.job_failed(metadata),
        )
        self.transitions.hook_timeout = float(hook_timeout)
        self.store.on_rejected = self.transitions.write_refused
        self.store.on_recovered = self._recovered
        self._tasks: dict[str, TaskSpec] = {}
        # From ``add`` to a committed, queued job (taskrt.adding).
        self.adding = Adding(
            store=self.store,
            broker=self.broker,
            clock=self.clock,
            counters=self.counters,
            limits=self.limits,
            live=self.live,
            background=self.background,
            tasks=self._tasks,
            pools=self._pools,
            owning=lambda: self.role == "owner",
            marks_external=lambda: self.mode == "owner" and self.role != "owner",
            forward=self._add_forwarder,
            instrumentation=lambda: self.instrumentation,
            require_started=self.require_started,
            dependents=lambda child, parents: self.workflows.dependents(child, parents),
            batching=lambda task, key, at, job_id: self.batches.added(task, key, at, job_id),
            node=self._starting_node,
            deadline_added=lambda deadline: self.deadlines.added(deadline),
        )
        self.transitions.take_in = self.adding.take_in
        # Jobs found in the database: after a crash, and those other processes add.
        self.adoption = Adoption(
            store=self.store,
            clock=self.clock,
            live=self.live,
            transitions=self.transitions,
            tasks=self._tasks,
            pools=self._pools,
            declare_pool=lambda name: self.pool(name),
            max_recoveries=max_recoveries,
            poll_interval=poll_interval,
        )
        self.store.on_unstarted = self.adoption.unstarted
        self.store.failed_hooks = self.adoption.failed_hooks  # store note 22
        self.store.on_orphans = self.adoption.orphans
        # Every process a node that runs jobs (taskrt.nodes), on PostgreSQL.
        self.nodes: Nodes | None = None
        if mode == "nodes":
            assert self._pg is not None
            self.nodes = Nodes(
                node=node,
                store=self._pg,
                clock=self.clock,
                live=self.live,
                transitions=self.transitions,
                tasks=self._tasks,
                pools=self._pools,
                apply_pauses=self.adoption.apply_pauses,
                max_recoveries=max_recoveries,
                ttl=float(node_ttl),
                poll_interval=poll_interval,
                workers=self._set_workers,
            )
            self._pg.registered = self._tasks.keys  # store note 22
        # Jobs waiting for other jobs, settled where jobs run (taskrt.workflows).
        self.workflows = Workflows(
            store=self.store,
            clock=self.clock,
            live=self.live,
            pools=self._pools,
            adoption=self.adoption,
            transitions=self.transitions,
            nodes=mode == "nodes",
        )
        if self.nodes is not None:
            self.nodes.on_ended = self.workflows.ended
        self.transitions.on_end = self.workflows.ended
        self.adoption.on_settle = self.workflows.sweep_now
        # Batched handlers' batches, formed where jobs run (taskrt.batches).
        self.batches = Batcher(
            store=self.store,
            clock=self.clock,
            tasks=self._tasks,
            workflows=self.workflows,
            poll=1.0 if mode == "nodes" else 5.0,
        )
        if isinstance(self.broker, NodeBus):
            self.broker.on_added = self._heard
            assert self._pg is not None
            self._pg.on_parent = self.workflows.parent
        # Rate limits of tasks and locks held, where this process runs the jobs.
        self.gates = Gates(self.clock, self._tasks, self.transitions.mark)
        self.alone = Alone(lambda: self._pools.values(), max_recoveries)
        # Waiting jobs whose deadline passed end (taskrt.deadlines): where jobs run.
        self.deadlines = Deadlines(self.store, self.clock, self._end_past_deadline)
        # Optional hooks around adds and attempts (taskrt.tracing.Instrumentation).
        self.instrumentation: Instrumentation | None = None
        if tracing:
            from .tracing import instrument

            instrument(self)
        self._started = False
        self._workers_on = False
        # Who runs this database's jobs (taskrt.ownership): an OS file lock.
        self.ownership: Ownership
        if self._server_lock is not None:
            self.ownership = ServerLockOwnership(self.store, self._server_lock)
        elif self.path == ":memory:":
            self.ownership = SoleOwnership(self.store)
        else:
            self.ownership = FileLockOwnership(self.store, self.path)
        # "owner", "standby" (may take over), "node" (mode "nodes"), "client"
        # (workers=False) or "stopped".
        self.role = "stopped"
        self.relay_server: RelayServer | None = None
        self.remote: RelayClient | None = None
        self._owning_since: float | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._follow_wake: asyncio.Event | None = None
        self._take_overs = _FailedTries(TAKE_OVER_TOLD_EVERY)  # a standby's (note 5)
        self._poll_task: asyncio.Task[None] | None = None
        self._keep_task: asyncio.Task[None] | None = None
        self._start_hooks: list[Callable[[Runtime], Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._stop_hooks: list[Callable[[Runtime], Any]] = []
        self._retrying: set[int] = set()  # jobs a retry is under way for (``retry``)
        # What the pools may ask of this runtime (pool.PoolHost).
        self._pool_host = _PoolHost(self)
        # Cron schedules (taskrt.scheduler): the first start hook, the first stop hook.
        self.schedules = Scheduler(self)
        self.schedules.hold_limit = float(node_ttl)
        self.on_start(self.schedules.start)
        self.on_stop(self.schedules.stop)

    def __repr__(self) -> str:
        return f"<Runtime {self.path!r} workers={self.workers} role={self.role}>"

    # -- declaring ---------------------------------------------------------------

    def pool(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        capacity: int | None = None,
        processes: bool | None = None,
        rate: str | None = None,
    ) -> Pool:
        """Declare a pool, or get it (changing its limits when given).

        ``processes=True``: its sync handlers run in worker processes, up to
        ``concurrency`` of them, instead of threads (``taskrt.processes``).
        ``rate="10/s"``: at most that many of its jobs start per second (also
        ``/m``, ``/h``; a token bucket holding one second of it, ``taskrt.rates``);
        ``pool.set_rate(None)`` lifts it.
        """
        _check_pool_name(name)
        check_pool_settings(concurrency, capacity, processes, rate)  # all, before any applies
        settings = (concurrency, capacity, processes, rate)
        if any(v is not None for v in settings) and not any(
            t.owns_pool and t.pool == name for t in self._tasks.values()
        ):
            self._declared_pools.add(name)  # set up by the application (``pool_clash``)
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = Pool(
                self._pool_host,
                name,
                concurrency=self.default_concurrency if concurrency is None else concurrency,
                capacity=capacity,
                processes=False if processes is None else processes,
                rate=rate,
            )
            return pool
        if processes is not None:
            pool.set_processes(processes)
        if rate is not None:
            pool.set_rate(rate)
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
        """Register a ``TaskSpec`` (from any front end); declares its pool (with the
        concurrency and capacity the spec gives it) and, for a spec with ``cron``
        (an Anchor ``cronjob``), the schedule named after it; registered again
        without one, that schedule is no longer declared.

        A name is one task's: another handler, or a definition from another file,
        under a registered name is refused (``InvalidOption``); the same one again
        replaces it (its options changed). Its JSON Schema parameters are checked
        here, before anything changes.

        A task that sets its pool's limits (a Yao task's ``worker_nums``, ``size``)
        owns that pool: another task in it, or a pool whose limits the application
        set with ``pool(name, ...)``, is refused (``definitions.pool_clash``)."""
        return self._install(*self._checked(spec, self._tasks))

    def _install(self, spec: TaskSpec, own: ScheduleDefinition | None) -> Task[Any, Any]:
        """Register ``spec`` as ``_checked`` returned it."""
        self.schedules.task_registered(spec, own)
        self._tasks[spec.name] = spec
        self.gates.tasks_changed()
        pool = self._pools.get(spec.pool)
        if pool is None:
            self.pool(spec.pool, concurrency=spec.pool_concurrency, capacity=spec.pool_capacity)
        else:
            if spec.pool_concurrency is not None:
                pool.set_concurrency(spec.pool_concurrency)
            if spec.pool_capacity is not None:
                pool.set_capacity(spec.pool_capacity)
        return Task(spec)

    def _checked(
        self, spec: TaskSpec, tasks: Mapping[str, TaskSpec]
    ) -> tuple[TaskSpec, ScheduleDefinition | None]:
        """``spec`` with its parameters attached, once nothing refuses it, and the
        schedule its ``cron`` declares (``Scheduler.check_task``); changes nothing.

        ``tasks`` are the tasks ``spec`` will run beside: those registered, or for a
        load those registered with the loaded ones in place."""
        from .params import attach

        known = self._tasks.get(spec.name)
        # Two definitions of one name are refused, never the last one taken silently; a
        # task registered again from where it came (its handler, its file: changed
        # options, a folder loaded again) replaces itself.
        if known is not None and not _same_definition(known, spec):
            where = f" (in {known.source})" if known.source else ""
            raise InvalidOption(
                "name",
                f"a task named {spec.name!r} is registered already{where}; "
                "expected a name used once",
                source=spec.source,
            )
        _check_task_texts(spec)
        # What ``register`` gives the task's pool, refused here: there it would fail
        # with the task registered already (and a load with the tasks before it).
        _check_pool_name(spec.pool)
        check_pool_settings(spec.pool_concurrency, spec.pool_capacity)
        clash = pool_clash(spec, tasks.values(), self._declared_pools)
        if clash is not None:
            raise InvalidOption("pool", clash, source=spec.source)
        spec = attach(spec)
        return spec, self.schedules.check_task(spec)  # a bad cron refuses the task

    def load(
        self,
        path: str | os.PathLike[str],
        *,
        executor: Any = None,
        root: str | os.PathLike[str] | None = None,
    ) -> list[Task[Any, Any]]:
        """Load task files (Yao JSON, Anchor YAML) from a folder or file: all of them,
        or none (a task the runtime refuses, say a name registered already, leaves
        every task and pool as it was)."""
        from .taskfiles import load_tasks

        specs = load_tasks(path, executor=executor, root=root)
        # Checked beside one another as they will be registered (a task that left a
        # pool in this version of a file no longer runs in it), then registered.
        after = {**self._tasks, **{spec.name: spec for spec in specs}}
        checked = [self._checked(spec, after) for spec in specs]
        return [self._install(spec, own) for spec, own in checked]

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
        history: float | str | timedelta | _Unset | None = UNSET,
    ) -> None:
        """Prune finished jobs older than ``ages`` on ``cron`` (the owner, from start).

        ``ages`` maps a status to an age (seconds, ``"12h"``, a timedelta; ``None``:
        keep forever) over the defaults: SUCCESS 7 days, FAILURE and CANCELLED 30
        days. ``rt.retention(None)`` turns retention off. ``history``: how long the
        per-minute history (``rt.history``) is kept (``None``: forever). See
        ``taskrt.retention``.
        """
        if isinstance(history, _Unset):  # 30 days, unless retention is off
            history = None if ages is None else "30d"
        self.schedules.retention.configure(ages, cron=cron, tz=tz, history=history)

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
            owning = False
            if self.nodes is not None:
                await self._join()
            elif self.workers:
                self.ownership.check()
                owning = await self.ownership.try_acquire()
            if owning:
                owning = await self._own_at_start()
        except BaseException:
            # Nothing of a failed start stays open (the store's threads would keep
            # the interpreter from ending), and its own error is the one raised.
            try:
                await self._let_ownership_go()
            finally:
                await self.store.close()
            raise
        self._started = True
        try:
            await self._begin(owning)
        except BaseException:
            await self.stop()  # nothing of a start that failed runs on (threads included)
            raise

    async def _begin(self, owning: bool) -> None:
        """The started runtime's part: its role's loops, then the start hooks."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.loop_watchdog.start(self._loop)
        if self.nodes is not None:
            self.role = "node" if self.workers else "client"
            bus = self.broker
            assert isinstance(bus, NodeBus) and self._pg is not None
            wake = self.nodes.wake if self.workers else self.nodes.wake_client
            await self._pg.listen(wake, bus.deliver, bus.lost, bus.listening)
            await bus.ready()  # the others that listen send to it (taskrt.nodebus note 5)
            if not self.workers:
                # What operators recorded (pauses, capacity, rate, concurrency) holds
                # in a client too: its adds check the capacity, its API shows them.
                await self.nodes.apply_pauses()
            if self.workers:
                self._owning_since = time.time()
                self._set_workers(True)
                self.deadlines.start()
                self.workflows.start()
                self.batches.start()
        elif owning:
            await self._serve_as_owner()
        else:
            self.role = "standby" if self.workers else "client"
            self._follow_wake = asyncio.Event()
            self._take_overs = _FailedTries(TAKE_OVER_TOLD_EVERY)
            await self._connect_to_owner()
            self._follow_task = asyncio.create_task(self._follow(), name="taskrt-follow")
        for hook in self._start_hooks:
            result = hook(self)
            if inspect.isawaitable(result):
                await result

    async def _join(self) -> None:
        """Every process runs workers (``taskrt.nodes``): join the others."""
        assert self.nodes is not None
        if not await self.ownership.try_acquire():
            raise OwnershipError(
                self.path,
                "a process of mode 'owner' runs this schema's jobs; every process of "
                "a schema must use the same mode",
            )
        if self.workers:
            await self.nodes.start()

    def _set_workers(self, on: bool) -> None:
        """Start jobs from now on, or not (a node that lost its heartbeat)."""
        self._workers_on = on
        if on:
            for pool in list(self._pools.values()):
                pool.poke()

    def _heard(self, event: Event) -> None:
        """Another node added a job (taskrt.nodebus): its parents, its batch."""
        self.workflows.heard(event)
        self.batches.heard(event)

    async def _end_past_deadline(self, job_id: int) -> None:
        """A waiting job whose deadline passed ends (``taskrt.deadlines`` note 3)."""
        if self.nodes is not None:
            # No node holds a waiting job, and any may claim it while it is read:
            # it ends only if its row is still WAITING as read (deadlines note 3).
            info = await self.store.get_job(job_id)
            spec = None if info is None else self._tasks.get(info.task)
            if info is None or spec is None or info.status is not JobStatus.WAITING:
                return  # gone, taken, or a task this node does not know: one that does
            if info.deadline is None or info.deadline > self.clock.now():
                return
            state = JobState(info, spec, retry_policy_of(info, spec))
            if await self.transitions.end_as_read(state):
                job_logger(state).warning(
                    "job %d failed: its deadline passed before it started", job_id
                )
            return
        pinned = await self.adoption.pin(job_id)
        if pinned is None or pinned.status is not JobStatus.WAITING or pinned.ending:
            return  # ended, started, or ending already (the pool took it: note 3)
        if pinned.deadline is None or pinned.deadline > self.clock.now():
            self.adoption.unpin(pinned)
            return
        self.pool(pinned.pool).remove(pinned)
        self.transitions.deadline_passed(pinned)

    async def _own(self) -> None:
        """Holding the lock: record it, recover what a dead owner left (note 3)."""
        await self.ownership.claim(self._relay_at)
        await self.adoption.recover(unclean=self.ownership.left_behind is not None)
        for name in await self.store.paused_pools():
            self.pool(name).pause()

    async def _let_ownership_go(self, *, quiet: bool = False) -> None:
        """After a start or a takeover that failed, or at a stop that still holds
        the lock: give the lock up. Removing the record writes, and a database that took no write may take none now: that
        failure is logged, never raised over the error that got here (the lock
        goes all the same, and the next owner recovers as after a crash).
        ``quiet``: logged at debug level (a takeover failing again, note 5)."""
        try:
            await self.ownership.release()
        except Exception as exc:
            level = logging.DEBUG if quiet else logging.ERROR
            log.log(level, "releasing the ownership of %s failed: %s", self.path, exc)

    async def _own_at_start(self) -> bool:
        """Holding the lock at start: own the database, or, when it takes no writes
        now, give the lock up and start as a standby that takes over later (note 5)."""
        try:
            await self._own()
        except StoreUnavailable as exc:
            log.warning(
                "this process cannot record itself as the owner of %s now (%s): it starts "
                "as a standby and takes over once the database takes writes",
                self.path,
                exc.reason,
            )
            await self._let_ownership_go()
            return False
        return True

    async def _keep_lock(self) -> None:
        """The owner's lock stays on the file the others try (ownership note 6)."""
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            try:
                self.ownership.keep()
            except Exception:  # a defect here must not end the looks after it
                log.exception("looking at the ownership lock of %s failed", self.path)

    async def _serve_as_owner(self) -> None:
        """Run the pools; then listen for the other processes (after recovery:
        they may forward adds from the first moment)."""
        self.role = "owner"
        self._owning_since = time.time()
        self._workers_on = True
        self._poll_task = asyncio.create_task(self.adoption.poll(), name="taskrt-poll")
        self._keep_task = asyncio.create_task(self._keep_lock(), name="taskrt-lock")
        self.deadlines.start()
        self.workflows.start()
        self.batches.start()
        # Other processes' commits for the owner wake the poll (PostgreSQL: NOTIFY).
        await self.store.listen(self.adoption.wake)
        for pool in self._pools.values():
            pool._dispatch()
        if self._relay_at is not None:
            since = self._owning_since if self._owning_since is not None else time.time()
            server = RelayServer(self.broker, self._answer, owner=self.ownership.owner, since=since)
            try:
                await server.start(self._relay_at)
            except OSError as exc:
                # Jobs still run; other processes fall back to the database (note 4).
                log.error("the relay of %s cannot listen: %s", self.path, exc)
            else:
                self.relay_server = server

    async def _follow(self) -> None:
        """A standby or a client: stay connected to the owner; a standby takes
        over when the lock is free (the owner ended, or was killed)."""
        wake = self._follow_wake
        assert wake is not None
        while True:
            if self.workers and await self.ownership.try_acquire() and await self._take_over():
                return
            if self.remote is None or not self.remote.connected:
                await self._connect_to_owner()
            wake.clear()
            await woken(wake, FOLLOW_INTERVAL)  # not wait_for: it may swallow stop's cancel

    async def _connect_to_owner(self) -> None:
        try:
            record = await self.store.owner_record()
        except TaskrtError:
            return
        if record is None or record.address is None:
            return
        client = RelayClient(self.broker, on_closed=self._owner_gone)
        try:
            await client.connect(record.address)
        except (OSError, TimeoutError):
            return
        self.remote = client
        self.broker.on_interest = client.interest

    def _owner_gone(self, client: RelayClient) -> None:
        if self.remote is client:
            self.broker.on_interest = None
        if self._follow_wake is not None:
            self._follow_wake.set()

    async def _take_over(self) -> bool:
        """The lock is this process's: become the owner (recovering the dead one's jobs)."""
        remote, self.remote = self.remote, None
        self.broker.on_interest = None
        if remote is not None:
            await remote.close()  # local streams start again (relay note 4)
        started = time.monotonic()
        previous = remote.owner if remote is not None else None
        try:
            await self._own()
        except Exception as exc:
            tries = self._take_overs
            told = tries.failed(started)  # note 5: not every 0.1 s while it fails
            if told and tries.tries == 1:
                log.exception(
                    "taking over %s failed; trying again (a line every %g s while it fails)",
                    self.path,
                    tries.every,
                )
            elif told:
                log.error(
                    "taking over %s still fails after %d tries in %.1f s: %s",
                    self.path,
                    tries.tries,
                    started - tries.since,
                    exc,
                )
            # Its release, if it fails too, is told with the first failure only.
            await self._let_ownership_go(quiet=tries.tries > 1)
            return False
        await self._serve_as_owner()
        await self.schedules.take_over()
        now = time.monotonic()
        failed = self._take_overs.ended(now)
        log.warning(
            "this process (%s) took over %s from %s in %.3f s%s",
            self.ownership.owner,
            self.path,
            previous or "an owner this process was not connected to",
            now - started,
            "" if failed is None else f", after {failed[0]} failed tries in {failed[1]:.1f} s",
        )
        return True

    async def stop(self) -> None:
        if not self._started:
            return
        refuse_in_block("rt.stop()")  # it writes what is queued: after the block
        for hook in self._stop_hooks:
            try:
                result = hook(self)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("a stop hook failed")
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
            self._follow_task = None
            # A take-over while the hooks ran started the scheduler again after its
            # own hook had stopped it: stopped again (a stopped one is left as it is).
            await self.schedules.stop(self)
        if self.remote is not None:
            self.broker.on_interest = None
            await self.remote.close()
            self.remote = None
        await self.store.unlisten()
        if isinstance(self.broker, NodeBus):
            await self.broker.stop()
        await self.deadlines.stop()
        await self.workflows.stop()
        await self.batches.stop()
        if self._keep_task is not None:
            self._keep_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keep_task
            self._keep_task = None
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        pools = list(self._pools.values())
        for pool in pools:
            pool.stop_dispatching()
            await pool.queue.halt()
        if self.nodes is not None:
            for pool in pools:
                pool.queue.close()  # claims not started go back (taskrt.claims)
        running = [t for p in pools for t in p.running_tasks()]
        if running:
            await asyncio.wait(running, timeout=self.grace)
        for pool in pools:
            pool.interrupt_all_for_shutdown()
        running = [t for p in pools for t in p.running_tasks()]
        if running:
            await asyncio.wait(running, timeout=self.abandon_after)
        for pool in pools:
            pool.abandon_stubborn()
        self._workers_on = False
        self.alone.reset()
        await self.background.wait(self.grace)
        self.transitions.flush_history()  # the last second of history, with the last writes
        try:
            if self.relay_server is not None:
                # Before the lock goes: what the others forwarded is done (or
                # refused, and then written to the database by them) before the
                # next owner reads what waits.
                await self.relay_server.close(patience=self.grace)
                self.relay_server = None
            await self.store.settle()
            if self.role == "owner":
                await self.ownership.release()
            if self.nodes is not None and self.role == "node":
                if await self.nodes.leave():
                    # The orphans it kept (store note 22) fail with their hooks, here.
                    await self.background.wait(self.grace)
        except TaskrtError as exc:
            # Not removing the record is safe: the next owner recovers as after a crash.
            log.error("releasing the ownership of %s failed: %s", self.path, exc)
        finally:
            try:
                if self.relay_server is not None:
                    await self.relay_server.close(patience=0)
                    self.relay_server = None
                if self.nodes is not None:
                    await self.nodes.stop()
                if self.ownership.held:  # not released above (a takeover cut short, an error)
                    await self._let_ownership_go()
                await self.ownership.close()
            finally:
                # Whatever happened above: the store's threads and connections
                # would keep the interpreter from ending.
                await self.store.close(patience=self.grace)
                for pool in pools:
                    pool.close()
                self.broker.close_all()
                self.live.states.clear()
                self.live.unique.clear()
                self.gates.clear()
                self._started = False
                self.role = "stopped"
                self.loop_watchdog.stop()

    @property
    def owning(self) -> bool:
        """Whether this process runs the jobs now (note 3)."""
        return self.role == "owner"

    @property
    def runs_jobs(self) -> bool:
        """Whether jobs run in this process: the owner's, or a node's (``taskrt.nodes``)."""
        return self.role in ("owner", "node")

    @property
    def relayed(self) -> bool:
        """Whether every event of the jobs reaches this process (the owner, or connected to it)."""
        if self.nodes is not None:
            return self._started  # every node's events reach every node (taskrt.nodebus)
        return self.role == "owner" or (self.remote is not None and self.remote.connected)

    def owner_status(self) -> OwnerStatus:
        """This process's role and the owner it knows of (``GET /health`` shows it)."""
        if self.role in ("owner", "node"):
            return OwnerStatus(
                role=self.role,
                owner=self.ownership.owner if self.nodes is None else self.nodes.node,
                reachable=True,
                since=self._owning_since,
                peers=self.relay_server.peers if self.relay_server is not None else 0,
            )
        if self.mode == "nodes":  # no owner to reach: the database is the meeting point
            return OwnerStatus(role=self.role, owner=None, reachable=True, since=None)
        # Who answered this process's connection (relay note 8), not the row.
        remote = self.remote
        connected = remote is not None and remote.connected
        return OwnerStatus(
            role=self.role,
            owner=remote.owner if remote is not None and connected else None,
            reachable=connected and remote is not None and not remote.stalled,
            since=remote.since if remote is not None and connected else None,
        )

    async def cluster_nodes(self) -> list[dict[str, Any]]:
        """The nodes of ``mode="nodes"`` alive (or not reaped yet): id, host, pid,
        since, ttl and heartbeat age; empty in ``mode="owner"``."""
        self.require_started("listing nodes")
        if self.mode != "nodes" or self._pg is None:
            return []
        return await self._pg.nodes()

    def _forwarding(self) -> RelayClient | None:
        """The owner's relay, when calls go there (note 4)."""
        remote = self.remote
        if self.role == "owner" or remote is None or not remote.connected or remote.stalled:
            return None  # stalled: the owner's loop is blocked; the database answers
        return remote

    def _capacity_of(self, name: str) -> int | None:
        """The capacity of pool ``name`` as this process knows it (None: none)."""
        pool = self._pools.get(name)
        return None if pool is None else pool.capacity

    def _starting_node(self) -> str | None:
        """This node's name while it runs jobs and may start those it adds in their own
        add (``taskrt.claims`` note 4): a node with workers whose heartbeat holds."""
        nodes = self.nodes
        if nodes is None or self.role != "node" or nodes.fenced:
            return None
        return nodes.node

    def _add_forwarder(self) -> Callable[[str, list[NewJob]], Awaitable[list[int]]] | None:
        remote = self._forwarding()
        if remote is None:
            return None

        async def forward(pool: str, jobs: list[NewJob]) -> list[int]:
            # Shallow (its fields are plain values): asdict's deep copy costs 10x.
            ids: list[int] = await remote.call(
                "add", pool=pool, jobs=[{f: getattr(job, f) for f in _NEW_JOB} for job in jobs]
            )
            return ids

        return forward

    async def _answer(self, method: str, args: dict[str, Any]) -> Any:
        """A call another process forwarded (relay): answer as for a local caller."""
        if method == "add":
            jobs = [NewJob(**job) for job in args["jobs"]]
            if not jobs:
                return []  # and no pool made for a name nothing was added to
            pool = self._pools.get(args["pool"]) or self.pool(args["pool"])
            for job in jobs:
                job.after = tuple(job.after)
                if job.pool not in self._pools:
                    self.pool(job.pool)  # a workflow's jobs may go to several pools
            return await self.adding.add_forwarded(pool, jobs)
        if method == "get":
            return (await self.get(int(args["job"]))).to_dict()
        if method == "cancel":
            return (await self.cancel(int(args["job"]))).to_dict()
        if method == "retry":
            return (await self.retry(int(args["job"]))).to_dict()
        if method == "attempts":
            return [a.to_dict() for a in await self.attempts(int(args["job"]))]
        if method == "jobs":
            page = await self.jobs(**args)
            return {"jobs": [j.to_dict() for j in page.jobs], "cursor": page.cursor}
        if method == "stats":
            return (await self.stats(args.get("since"), args.get("until"))).to_dict()
        if method == "history":
            return [p.to_dict() for p in await self.history(**args)]
        if method == "count":
            return await self.count(**args)
        if method == "bulk":
            return (await self.bulk(args.pop("action"), **args)).to_dict()
        if method == "run_now":
            return (await self.run_now(int(args["job"]))).to_dict()
        if method == "pools":
            return [s.to_dict() for s in await self.pool_statistics()]
        if method == "change_pool":
            return (await self.change_pool(**args)).to_dict()
        if method == "replay":
            events = self.broker.replay_after(int(args["job"]), int(args["seq"]))
            return None if events is None else [encode_event(e) for e in events]
        if method == "health":
            return self.health().to_dict()
        if method == "ping":  # a process whose call went unanswered: the loop runs again
            return None
        if method == "poke":  # another process wrote jobs or schedules: look now
            await self.adoption.poll_once()
            await self.schedules.look_for_changes()
            return None
        raise InvalidOption("method", f"no forwarded call named {method!r}")

    # -- adding --------------------------------------------------------------------------

    def require_started(self, what: str) -> None:
        if not self._started:
            raise RuntimeNotStarted(what)

    # -- adding (taskrt.adding) ---------------------------------------------------------

    def resolve(self, task: TaskRef) -> TaskCall:
        """The registered task (and per-call options) a task, a call or a name refers to.

        Raises ``TaskNotFound`` for a name no task has.
        """
        return self.adding.resolve(task)

    async def add(
        self, task: TaskRef, /, *args: Any, tx: Transaction | Any = None, **kwargs: Any
    ) -> int:
        """Add a job to its task's pool; returns the id once it is durable."""
        spec, _ = self.adding.resolve_parts(task)
        return await self.pool(spec.pool).add(task, *args, tx=tx, **kwargs)

    async def enqueue(
        self,
        task: TaskRef,
        /,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        pool: str | None = None,
        tx: Transaction | Any = None,
        **options: Any,
    ) -> int:
        """Add one job with its arguments given apart; returns the id once it is durable.

        ``add(task, *args, **kwargs)`` takes the job's own keyword arguments,
        so one named ``tx`` (or ``pool``) would be taken for ``add``'s. Front
        ends that pass arguments through (HTTP, the CLI, schedules) use this:
        ``args`` and ``kwargs`` are the job's, ``options`` are ``task.options``
        (``delay``, ``priority``, ``unique_key``, ...), ``pool`` a declared pool
        (default: the task's), ``tx`` an open ``rt.transaction()``.
        """
        # A string is a sequence and a dict iterates its keys: "cat.jpg" ran as
        # seven arguments, a dict as its keys; None or 5 was a bare TypeError.
        if isinstance(args, str | bytes | Mapping) or not isinstance(args, Sequence):
            raise InvalidOption("args", f"expected a list or tuple, found {shown(args)}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise InvalidOption("kwargs", f"expected a dict or None, found {shown(kwargs)}")
        call = self.adding.resolve(task)
        if options:
            call = call.options(**options)
        name = pool if pool is not None else call.spec.pool
        target = self._pools.get(name) if pool is not None else self.pool(name)
        if target is None:
            raise PoolNotFound(name)
        [job_id] = await self.adding.add_calls(
            target, call, [(tuple(args), dict(kwargs or {}))], tx=tx
        )
        return job_id

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction for the application's own SQL and ``add(..., tx=tx)``.

        Both commit or neither does; workers see the jobs after the commit (on
        a standby, the owner is told at once rather than at its next poll).
        One at a time in a task: inside the block, adds take ``tx=tx``, and a
        second ``transaction()`` raises; ``tx`` takes nothing once the block is
        over (``taskrt.transaction`` notes 1-4).
        """
        async with self.adding.transaction() as tx:
            yield tx
        if tx.added and not self.owning:
            await self.poke_owner()

    def _recovered(self, ends: list[CancelledChild]) -> None:
        """Jobs a recovery (or a reap of nodes gone) ended in the store: counted as
        any end; an orphan's ``on_error`` runs. An orphan of a task with an
        ``on_failed`` hook is not among them (``Adoption.orphans``), unless its task
        was registered here after the recovery read which tasks have one
        (``on_failed`` then runs in a transaction of its own, the failure
        committed already)."""
        for ended in ends:
            status = self.transitions.count_ended(ended)
            spec = self._tasks.get(ended.task)
            if status is not JobStatus.FAILURE or spec is None:
                continue
            hooks = spec.hooks
            if hooks.on_failed is not None:
                self.background.spawn(
                    self.transitions.failed_hook_after(hooks.on_failed, ended.job_id)
                )
            if hooks.on_error is not None:
                self.background.hook(hooks.on_error, ended.job_id, ended.error)

    # -- the public reads and actions -----------------------------------------------------

    async def get(self, job_id: int) -> JobInfo:
        """The job's current state (``JobNotFound`` when there is none)."""
        check_job_id(job_id, "job_id")
        state = self.live.states.get(job_id)
        if state is not None:
            return self._told(state.info())
        self.require_started("reading a job")
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                return JobInfo.from_dict(await remote.call("get", job=job_id))
        info = await self.store.get_job(job_id)
        if info is None:
            raise JobNotFound(job_id)
        return self._told(info, await self._recorded_pauses([info]))

    def _told(self, info: JobInfo, paused: Set[str] | None = None) -> JobInfo:
        """The job as a reader sees it: why it waits (``models.WAITING_REASONS``), with
        ``scheduled`` (a run_at to come) and ``paused`` told now, the others as found.
        ``paused``: the pools paused, where this process's pools do not know
        (``_recorded_pauses``)."""
        if info.status is not JobStatus.WAITING:
            reason = None
        elif info.waiting_reason in _RELEASED:
            return info  # its parents release it, or its batch (taskrt.workflows, batches)
        elif info.run_at > self.clock.now():
            reason = "scheduled"
        elif self._paused(info.pool, paused):
            reason = "paused"
        else:
            return info
        if info.waiting_reason == reason:
            return info
        return dataclasses.replace(info, waiting_reason=reason)

    def _paused(self, name: str, recorded: Set[str] | None) -> bool:
        if recorded is not None:
            return name in recorded
        pool = self._pools.get(name)
        return pool is not None and pool.paused

    async def _recorded_pauses(self, infos: Iterable[JobInfo] | None = None) -> Set[str] | None:
        """The pools paused as the database records them, to tell jobs read from it
        in a process whose pools do not follow the pauses (note 4): a standby or a
        client where one owner runs the jobs. None where they do (the owner; every
        process of mode "nodes"), or where no job of ``infos`` waits due in its pool
        (no query then: only a job that ``paused`` may be told of costs one)."""
        if self.owning or self.nodes is not None:
            return None
        if infos is not None:
            now = self.clock.now()
            if not any(
                i.status is JobStatus.WAITING
                and i.waiting_reason not in _RELEASED
                and i.run_at <= now
                for i in infos
            ):
                return None
        return await self.store.paused_pools()

    def progress(
        self,
        job_id: int,
        current: float,
        total: float | None = None,
        message: str | None = None,
        *,
        step: str | None = None,
    ) -> Awaitable[None]:
        """Report progress of a running job, from anywhere in this process.

        ``await rt.progress(...)`` from a coroutine; a sync handler running in a
        worker thread may call it without ``await`` (the report is handed to
        the event loop). Never waits on the disk for a running job. Raises
        ``InvalidTransition`` when the job is not running here (``JobNotFound``
        when there is none), ``InvalidOption`` for a value that cannot be
        stored; a worker thread's call raises them too, in that thread.
        """
        check_job_id(job_id, "job_id")  # here, in the caller's thread, not in the loop's
        current, total, message, step = check_progress(current, total, message, self.limits, step)
        sender = CURRENT_ATTEMPT.get()
        if sender is not None and sender.id != job_id:
            sender = None  # a report for another job than the one this handler runs
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            if sender is None and self._started:
                state = self.live.states.get(job_id)  # a dict read: safe from any thread
                if state is None or state.status is not JobStatus.RUNNING:
                    # Not running here (as far as this thread sees): the loop looks
                    # again and raises what the awaited call raises, in this thread.
                    checked = _on_the_loop(
                        self._report_if_running, job_id, current, total, message, step
                    )
                    _wait_on(loop, checked)
                    return DONE
            # A thread that outlived the runtime (grace elapsed): its loop is closed,
            # and the report is dropped, as one for an ended attempt is.
            with contextlib.suppress(RuntimeError):
                if sender is not None:  # as that attempt: dropped if it has ended
                    loop.call_soon_threadsafe(
                        self.transitions.report, sender, current, total, message, step
                    )
                else:  # a job that ends before the loop takes the report: logged
                    loop.call_soon_threadsafe(
                        self.transitions.report_by_id, job_id, current, total, message, step
                    )
            return DONE
        if sender is not None:
            self.transitions.report(sender, current, total, message, step)
            return DONE
        return self._report_if_running(job_id, current, total, message, step)

    def _report_if_running(
        self,
        job_id: int,
        current: float,
        total: float | None,
        message: str | None,
        step: str | None,
    ) -> Awaitable[None]:
        """On the loop: report for ``job_id`` if it runs here, else the awaitable that
        raises why not."""
        state = self.live.states.get(job_id)
        if state is None or state.status is not JobStatus.RUNNING:
            return self._not_running(job_id, "report progress for")
        self.transitions.report(state, current, total, message, step)
        return DONE

    async def _not_running(self, job_id: int, action: str) -> None:
        info = await self.get(job_id)
        raise InvalidTransition(job_id, info.status.value, action)

    def _running_jobs(self) -> list[tuple[int, str]]:
        """(id, task) of every running job; called from the watchdog's thread."""
        return [job for pool in list(self._pools.values()) for job in pool.running_jobs()]

    def health(self) -> StoreHealth:
        """Whether the database takes this process's writes (a snapshot; the metrics
        read it). A standby writes almost nothing itself: ``store_health`` asks the owner."""
        return self.store.health()

    async def store_health(self) -> StoreHealth:
        """Whether the database takes the writes of the process that runs the jobs
        (``GET /health``): the owner's, asked over its relay, in a standby or a
        client it serves; this process's own otherwise, and where the owner does
        not answer."""
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(TaskrtError):
                return StoreHealth(**await remote.call("health"))
        return self.health()

    async def attempts(self, job_id: int) -> list[AttemptInfo]:
        """The record of every attempt of the job (start, end, outcome, error, traceback)."""
        check_job_id(job_id, "job_id")
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                raw = await remote.call("attempts", job=job_id)
                return [AttemptInfo.from_dict(a) for a in raw]
        info = await self.get(job_id)
        await self.store.settle()
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
        job's live events; ends after the terminal one. Its sequence numbers
        only go up: after a gap (a slow consumer, the owner's death) it starts
        again from a fresh ``snapshot``. Without: every event of jobs matching
        ``pool`` / ``task``, until closed.
        """
        return JobStream(self, job_id, pool=pool, task=task, buffer=buffer)

    async def wait(self, job_id: int, timeout: float | None = None) -> JobInfo:  # noqa: ASYNC109
        """Wait until the job is terminal; returns its final ``JobInfo``."""
        check_job_id(job_id, "job_id")
        if timeout is not None:
            check_seconds(timeout, "timeout", most=MAX_DURATION)
        async with asyncio.timeout(timeout):
            async with self.subscribe(job_id) as stream:
                async for _ in stream:
                    pass
        return await self.get(job_id)

    async def cancel(self, job_id: int) -> JobInfo:
        """Cancel a waiting or running job; returns its state after the cancel (a running
        job's at its end: ``_stopped``)."""
        check_job_id(job_id, "job_id")
        self.require_started("cancel")
        refuse_in_block("rt.cancel()")
        remote = self._forwarding()
        if remote is not None:
            # The owner answers once the handler stopped (up to abandon_after + 5 s).
            longer = self.abandon_after + 5
            with contextlib.suppress(OwnerUnreachable):
                return JobInfo.from_dict(await remote.call("cancel", longer, job=job_id))
        state = await self.adoption.pin(job_id) if self.owning else None
        if self.nodes is not None:
            state = self.live.states.get(job_id)  # running here, or none (taskrt.nodes)
        if state is not None:
            if state.status is JobStatus.WAITING and state.batch_key is not None:
                return await self._cancel_member(state)
            if state.status is JobStatus.WAITING:
                self.pool(state.pool).remove(state)
                self.transitions.finalize(state, JobStatus.CANCELLED, {})
                await self.store.settle()
                return state.info()
            if state.status is JobStatus.RUNNING:
                self._pools[state.pool].cancel_running(state)
                return await self._stopped(job_id)
        info = await self.get(job_id)
        if info.terminal:
            raise InvalidTransition(job_id, info.status.value, "cancel")
        # Both in one transaction: the owner may start the job between our read
        # and our write, and whichever status the row has then, the cancel lands.
        seq = await self.store.cancel_external(job_id, self.clock.now())
        if seq is not None:
            # The waiting job ended here, in the store alone: this process counts it
            # in the history and tells its end (where every node claims, no node holds
            # a waiting job: nodes note 6). An owner that held it in memory ends it
            # as read, uncounted (``Adoption.poll_once``). Before, nobody counted the
            # cancel of a job no owner held (none running, or out of its window).
            self.transitions.ended_here(job_id, info.task, info.pool, JobStatus.CANCELLED, seq)
        self.workflows.ended(job_id)  # its dependents, if it has any and was waiting
        if self.nodes is not None and seq is None:
            # Not WAITING at the write, whatever the read said: started, here or on
            # another node, and marked (or ended meanwhile: the wait answers at once).
            # Its end is the cancel's answer (nodes note 9).
            return await self._cancel_started(self.nodes, job_id)
        return await self.get(job_id)

    async def _cancel_started(self, nodes: Nodes, job_id: int) -> JobInfo:
        """A job whose row ``cancel_external`` found started (nodes note 9): stopped here
        once the claim or add in flight that started it here answered, else by its node
        (told by the mark's notification); its state at its end, or after the wait for
        a running job's end if it outlives that."""
        await nodes.landed()
        state = self.live.states.get(job_id)
        if state is not None and state.status is JobStatus.RUNNING and not state.cancel_requested:
            self._pools[state.pool].cancel_running(state)
        return await self._stopped(job_id)

    async def _stopped(self, job_id: int) -> JobInfo:
        """A running job told to stop: its state at its end, or as it is if that end is
        not known within ``abandon_after`` + 5 s (an abandoned handler's job is marked
        at ``abandon_after``; a write the database has not taken yet may take longer).
        Never the wait's ``TimeoutError``, which a cancel's caller (the HTTP API: a
        500) would take for the cancel's failure: the cancel stands either way."""
        with contextlib.suppress(TimeoutError):
            return await self.wait(job_id, timeout=self.abandon_after + 5)
        return await self.get(job_id)

    async def _cancel_member(self, state: JobState) -> JobInfo:
        """A waiting member of a batch (or one gathering), cancelled where it is held:
        in one store transaction, as a process without it cancels it, then in memory.
        The store forms a batch and ends its members in transactions that read the
        rows, not memory, so a cancel queued from memory could land after either:
        the item ran in its batch though the cancel answered without one (formed
        meanwhile), or the member ended SUCCESS after its cancel was answered (its
        batch ended meanwhile). Now the cancel comes before the forming (the member
        leaves the batch) or after it (it stays cancelled, its item in the batch,
        and says so), and never ends a member that ended already."""
        job_id = state.id
        seq = await self.store.cancel_external(job_id, self.clock.now())
        if seq is None:  # ended with its batch, or started as its leader, meanwhile
            info = await self.get(job_id)
            if info.terminal:
                raise InvalidTransition(job_id, info.status.value, "cancel")
            running = self.live.states.get(job_id)  # its row marked: the poll acts too
            if running is not None and running.status is JobStatus.RUNNING:
                self._pools[running.pool].cancel_running(running)
                return await self._stopped(job_id)
            return info
        if self.live.states.get(job_id) is state and state.status is JobStatus.WAITING:
            self.pool(state.pool).remove(state)
            state.seq = seq - 1  # the event carries the row's sequence
            self.transitions.finalize(state, JobStatus.CANCELLED, {}, write=False)
        else:
            self.workflows.ended(job_id)
        await self.store.settle()
        return await self.get(job_id)

    async def retry(self, job_id: int) -> JobInfo:
        """Put a FAILURE or CANCELLED job back to WAITING, with its attempts renewed;
        refused once its deadline has passed.

        The dependents its end cancelled wait for it again (and theirs for them). A
        dependent that never ran (a parent failed, or it was cancelled while it
        waited) waits for its parents again and runs with their results; refused
        while one of them has failed or was cancelled (retry that one first).
        """
        check_job_id(job_id, "job_id")
        self.require_started("retry")
        refuse_in_block("rt.retry()")
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                return JobInfo.from_dict(await remote.call("retry", job=job_id))
        return await self._retry_resuming(job_id, set())

    async def _retry_resuming(self, job_id: int, resumed: set[int]) -> JobInfo:
        """``retry`` here; the dependents it put back too go into ``resumed``."""
        with self._retry_of(job_id):
            # Its end, if written here, committed first: a failure in its on_failed
            # hook's transaction (which runs beside the group commit on PostgreSQL),
            # then the group commit's writes.
            await self.transitions.failure_written(job_id)
            info = await self.get(job_id)
            if info.status not in (JobStatus.FAILURE, JobStatus.CANCELLED):
                raise InvalidTransition(job_id, info.status.value, "retry")
            if info.deadline is not None and info.deadline <= self.clock.now():
                # It would fail at once ("deadline passed"), never run (pool note 6).
                raise InvalidTransition(
                    job_id, info.status.value, "retry", "its deadline has passed"
                )
            await self.store.settle()
            self._forget_ended(job_id)
            retried = await self._retry(info, self.clock.now())
        resumed.update(await self._retry_dependents(job_id))
        return retried

    async def _attempt_budget(self, info: JobInfo) -> int | None:
        """The attempts a retry by hand gives the job again: its own budget, per call
        or its task's as it was added (None: unlimited), which is its ``max_attempts``
        less the attempts before its last retry by hand (the one marked ``retried``)."""
        if info.max_attempts is None:
            return None
        records = await self.store.attempts(info.id)
        before = max((a.number for a in records if a.next == "retried"), default=0)
        return max(1, info.max_attempts - before)

    @contextlib.contextmanager
    def _retry_of(self, job_id: int) -> Iterator[None]:
        """One retry of a job at a time in this process: a second, while the first
        waits for the store, would read the job as it was and queue it again."""
        if job_id in self._retrying:
            raise InvalidTransition(job_id, "being retried", "retry")
        self._retrying.add(job_id)
        try:
            yield
        finally:
            self._retrying.discard(job_id)

    async def _retry(self, info: JobInfo, now: float) -> JobInfo:
        job_id = info.id
        spec = self._tasks.get(info.task)
        budget = await self._attempt_budget(info)
        max_attempts = None if budget is None else info.attempts + budget
        await self._refuse_held_key(info)
        if info.attempts == 0 or info.batch not in (None, job_id):
            # Perhaps a dependent that never ran, or a batch's member: it waits again.
            again = await self._block_again(info, now, max_attempts)
            if again is not None:
                return again
        if not self.owning or spec is None:
            seq = await self.store.retry_external(job_id, now, max_attempts)
            if seq is None:
                now_info = await self.get(job_id)  # another retry came first
                raise InvalidTransition(job_id, now_info.status.value, "retry")
            if self.nodes is not None:  # no node holds it until one claims it (nodes note 6)
                self.transitions.announce(
                    job_id,
                    info.task,
                    info.pool,
                    EventType.RETRYING,
                    JobStatus.WAITING,
                    seq,
                    {"attempt": info.attempts, "manual": True, "run_at": now},
                )
            return await self.get(job_id)
        held = self.live.states.get(job_id)
        if held is not None and held.status not in TERMINAL:
            # Retried meanwhile by another process, and taken in (the poll): one state.
            raise InvalidTransition(job_id, held.status.value, "retry")
        state = JobState(info, spec, retry_policy_of(info, spec))
        state.update(
            status=JobStatus.WAITING,
            run_at=now,
            max_attempts=max_attempts,
            finished_at=None,
            started_at=None,
        )
        self.live.states[job_id] = state
        if info.unique_key is not None and self.live.holder(info.unique_key) is None:
            self.live.unique[info.unique_key] = job_id
        self.transitions.emit(
            state, EventType.RETRYING, {"attempt": info.attempts, "manual": True, "run_at": now}
        )
        self.store.retried(job_id, now)  # the job's history says so (same batch)
        await self.store.settle(self.transitions.write_waiting(state, was=info.status))
        if self.live.states.get(job_id) is state and state.status is JobStatus.WAITING:
            self.pool(info.pool).push(state)  # (else cancelled meanwhile: not queued)
        return state.info()

    async def _retry_dependents(self, parent: int) -> list[int]:
        """A retried job's dependents that its end cancelled wait for it again, and
        theirs for them; one that cannot (another parent failed too) stays CANCELLED.
        The members of a batch it ran wait for it again too. The ones put back."""
        todo = [parent]
        resumed: list[int] = []
        while todo:
            for child in await self.store.cancelled_by(todo.pop()):
                info = await self.store.get_job(child)
                if info is None or info.status not in (JobStatus.CANCELLED, JobStatus.FAILURE):
                    continue
                try:
                    with self._retry_of(child):
                        self._forget_ended(child)
                        await self._retry(info, self.clock.now())
                except InvalidTransition:
                    continue
                todo.append(child)
                resumed.append(child)
        return resumed

    def _forget_ended(self, job_id: int) -> None:
        """A job about to be retried in the store: the ended state memory may hold of
        it (until its end is written, which it is now) would hide what it becomes."""
        held = self.live.states.get(job_id)
        if held is not None and held.status in TERMINAL:
            self.adoption.shelve(held)

    async def _refuse_held_key(self, info: JobInfo) -> None:
        """A retry is refused before it writes while another job holds the job's unique
        key: the unique index would fail the write (here, the whole write batch)."""
        if info.unique_key is None:
            return
        holder = self.live.holder(info.unique_key)
        if holder is None:
            holder = await self.store.unique_holder(info.unique_key)
        if holder is not None and holder != info.id:
            raise InvalidTransition(
                info.id,
                info.status.value,
                "retry",
                f"job {holder} holds its unique key {info.unique_key!r}",
            )

    async def _block_again(
        self, info: JobInfo, now: float, max_attempts: int | None
    ) -> JobInfo | None:
        """A manual retry of a dependent that never ran, or of a batch's member: blocked
        on its parents (its batch's job) again (``JobStore.block_again``), then
        settled here like a new one; None when the job is not such a dependent."""
        again = await self.store.block_again(
            info.id, now, max_attempts, external=not self.runs_jobs
        )
        if again is None:
            return None
        if again.now is not None:
            raise InvalidTransition(info.id, again.now, "retry")  # retried meanwhile
        if again.refused is not None:
            raise InvalidTransition(info.id, info.status.value, "retry", again.refused)
        self.live.changed(info.id)
        self.transitions.blocked_again(info, again, now)
        if self.runs_jobs:  # else the sweep of whichever process runs jobs
            self.workflows.dependents(info.id, again.parents)
        return await self.get(info.id)

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
        """Jobs, newest first, filtered; pass ``page.cursor`` back for the next page.

        ``scheduled``: only jobs waiting for a time still to come (a delay, a
        retry's backoff), not for other jobs (their parents, their batch);
        ``older_than``: only jobs created that long ago or more.
        Each job is shown as it is now, and one whose status changed while the page
        was read is left out of a listing by status (the page then holds fewer
        than ``limit``; its cursor goes on where it ended).
        """
        self.require_started("listing jobs")
        # Checked here, in whichever process is asked: a value the relay cannot
        # carry must be the owner's error, not the relay's TypeError.
        statuses = _statuses(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidOption(
                "limit", f"expected an integer from 1 to 1000, found {shown(limit)}"
            )
        before: int | None = None
        if cursor is not None and cursor != "":  # "": the first page, as None
            # A page's cursor is the id it ends at, as ASCII digits (``Page.cursor``).
            if not (isinstance(cursor, str) and cursor.isascii() and cursor.isdigit()):
                raise InvalidOption(
                    "cursor", f"expected a cursor from a previous page, found {shown(cursor)}"
                )
            before = min(int(cursor), INT64_MAX) if len(cursor) <= 20 else INT64_MAX
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                raw = await remote.call(
                    "jobs",
                    **_filter_args(status, pool, task, metadata, scheduled, older_than),
                    limit=limit,
                    cursor=cursor,
                )
                return Page([JobInfo.from_dict(j) for j in raw["jobs"]], raw["cursor"])
        await self.store.settle()
        rows = await self.store.list_jobs(
            **self._job_filter(statuses, pool, task, metadata, scheduled, older_than),
            before_id=before,
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        live = self.live.states
        found = [live[r.id].info() if r.id in live else r for r in rows]
        paused = await self._recorded_pauses(found)
        jobs = [self._told(info, paused) for info in found]
        if statuses or scheduled:
            # The rows matched as committed; a job that moved on in memory since (it
            # started, ended, or its write waits out an outage) is left out rather
            # than listed under a status it no longer has.
            wanted = set(statuses or JobStatus)
            now = self.clock.now()
            jobs = [
                j
                for j in jobs
                if j.status in wanted
                and (
                    not scheduled or (j.status is JobStatus.WAITING and now < j.run_at < BLOCKED_AT)
                )
            ]
        return Page(jobs=jobs, cursor=str(rows[-1].id) if more and rows else None)

    def _job_filter(
        self,
        statuses: list[JobStatus] | None,
        pool: str | None,
        task: str | None,
        metadata: Mapping[str, Any] | None,
        scheduled: bool,
        older_than: float | timedelta | None,
    ) -> dict[str, Any]:
        """The store's filter arguments (``rt.jobs``, ``rt.count``, ``rt.bulk``)."""
        _check_filter_values(pool, task, metadata)
        check_flag(scheduled, "scheduled")
        now = self.clock.now()
        age = _seconds(older_than)
        return {
            "status": statuses or None,  # [] names no status: no filter, as for a listing
            "pool": pool,
            "task": task,
            "metadata": dict(metadata or {}),
            "run_after": now if scheduled else None,
            "created_before": None if age is None else now - age,
        }

    async def count(
        self,
        *,
        status: JobStatus | str | Sequence[JobStatus | str] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled: bool = False,
        older_than: float | timedelta | None = None,
    ) -> int:
        """How many jobs ``rt.jobs`` would list with these filters."""
        self.require_started("counting jobs")
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                counted: int = await remote.call(
                    "count",
                    **_filter_args(status, pool, task, metadata, scheduled, older_than),
                )
                return counted
        await self.store.settle()
        return await self.store.count_jobs(
            **self._job_filter(_statuses(status), pool, task, metadata, scheduled, older_than)
        )

    async def bulk(
        self,
        action: str,
        *,
        ids: Sequence[int] | None = None,
        status: JobStatus | str | Sequence[JobStatus | str] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled: bool = False,
        older_than: float | timedelta | None = None,
        dry_run: bool = False,
    ) -> BulkResult:
        """``cancel``, ``retry`` or ``purge`` every job ``ids`` and the filters match.

        Each job gets what ``rt.cancel`` / ``rt.retry`` would give it (a running
        one is told to stop, not waited for); ``purge`` deletes finished jobs
        and their attempts. Jobs in a status the action does not apply to are
        skipped. ``dry_run``: count only. At most ``taskrt.bulk.BULK_LIMIT`` jobs.
        """
        self.require_started("bulk actions")
        refuse_in_block("rt.bulk()")
        action = check_action(action)
        if ids is not None:
            ids = _ids_of(ids)
        check_flag(dry_run, "dry_run")
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                raw = await remote.call(
                    "bulk",
                    action=action,
                    ids=ids,
                    **_filter_args(status, pool, task, metadata, scheduled, older_than),
                    dry_run=dry_run,
                )
                return BulkResult(**raw)
        where = self._job_filter(_statuses(status), pool, task, metadata, scheduled, older_than)
        await self.store.settle()
        if ids is not None:
            # The same filter, in the store, on the ids given (no job can have an
            # id beyond SQLite's range).
            chosen = [i for i in dict.fromkeys(ids) if 1 <= i < 2**63]
            matched = []
            for start in range(0, len(chosen), 500):
                chunk = chosen[start : start + 500]
                rows = await self.store.list_jobs(**where, ids=chunk, limit=len(chunk))
                matched += [r.id for r in rows]
        else:
            matched = await matching_ids(
                lambda before, limit: self.store.list_jobs(**where, before_id=before, limit=limit),
                await self.store.count_jobs(**where),
            )
        if dry_run:
            return BulkResult(action, len(matched), 0, 0, True)
        if action == "purge":
            done = await self.store.purge(matched)
            for job_id in matched:
                state = self.live.states.get(job_id)
                if state is not None and state.status in TERMINAL:
                    del self.live.states[job_id]
            return BulkResult(action, len(matched), done, len(matched) - done, False)
        if action == "cancel":
            done, skipped = await act_on_each(matched, self._cancel_without_waiting)
            return BulkResult(action, len(matched), done, skipped, False)
        # Oldest first: a parent before its dependents (a dependent is always added
        # after its parents), so a dependent its parent's retry put back is done.
        resumed: set[int] = set()

        async def retry(job_id: int) -> None:
            if job_id in resumed:
                return
            await self._retry_resuming(job_id, resumed)

        done, skipped = await act_on_each(sorted(matched), retry)
        return BulkResult(action, len(matched), done, skipped, False)

    async def _cancel_without_waiting(self, job_id: int) -> None:
        """A cancel that tells a running job to stop and goes on (bulk)."""
        state = self.live.states.get(job_id)
        if state is not None and self.runs_jobs and state.status is JobStatus.RUNNING:
            self._pools[state.pool].cancel_running(state)
            return
        await self.cancel(job_id)

    async def run_now(self, job_id: int) -> JobInfo:
        """Start a waiting job as soon as a slot is free (its delay or backoff dropped)."""
        check_job_id(job_id, "job_id")
        self.require_started("run now")
        refuse_in_block("rt.run_now()")
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                return JobInfo.from_dict(await remote.call("run_now", job=job_id))
        now = self.clock.now()
        state = await self.adoption.pin(job_id) if self.owning else None
        if state is not None:
            try:
                formed = await self._run_now_gathered(state)
            except InvalidTransition:
                self.adoption.unpin(state)
                raise
            if formed:
                self.adoption.unpin(state)
                return state.info()
            pool = self.pool(state.pool)
            if state.run_at > now:
                pool.remove(state)
                state.update(run_at=now)  # and its snapshot (a row read back kept the old)
                try:
                    await self.store.reschedule(job_id, now)
                finally:
                    # Unless it left its wait meanwhile (started by a client's run now
                    # that the poll took in, cancelled): queued again, it would run twice.
                    if state.status is JobStatus.WAITING and self.live.states.get(job_id) is state:
                        pool.push(state)
            else:
                pool.push(state)  # read from the database: back in its queue
            return state.info()
        info = await self.get(job_id)
        if await self._run_now_gathered(info):
            return await self.get(job_id)
        if not await self.store.reschedule(job_id, now, external=not self.owning):
            raise InvalidTransition(job_id, (await self.get(job_id)).status.value, "run now")
        return await self.get(job_id)

    async def _run_now_gathered(self, job: JobState | JobInfo) -> bool:
        """Run now of a job that is not WAITING, or waits for other jobs: refused
        (``InvalidTransition``), or its batch forms now, where batches form
        (``taskrt.batches`` note 2); False for a job its new ``run_at`` starts."""
        if job.status is not JobStatus.WAITING:
            raise InvalidTransition(job.id, job.status.value, "run now")
        if job.waiting_reason in ("blocked", "batched"):
            why = "its parents" if job.waiting_reason == "blocked" else "its batch"
            raise InvalidTransition(job.id, "WAITING", "run now", f"it waits for {why}")
        if job.waiting_reason != "batching" or job.batch_key is None:
            return False
        if self.runs_jobs:
            self.batches.form_now(job.task, job.batch_key)
        elif self.nodes is not None:
            await self.batches.form_here(job.task, job.batch_key)
            await self.nodes.store.notify("changed")  # the nodes claim its leader now
        else:
            raise InvalidTransition(
                job.id,
                "WAITING",
                "run now",
                "its batch forms where jobs run, and that process cannot be reached",
            )
        return True

    # -- workflows (taskrt.workflows) ---------------------------------------------------

    async def chain(self, *signatures: Signature, tx: Transaction | Any = None) -> Flow:
        """Add a chain in one transaction: each job runs after the one before it
        succeeded, with that job's result as its first argument."""
        return await self._add_flow(chain_steps(list(signatures)), tx)

    def group(self, signatures: Sequence[Signature]) -> GroupBuilder:
        """A group: every job at once. ``await rt.group([...])`` adds it;
        ``await rt.group([...]).then(callback.s(...))`` adds it with a callback that
        runs once all succeeded, with the list of their results (in order) first."""
        return GroupBuilder(lambda then, tx: self._add_flow(group_steps(signatures, then), tx))

    async def _add_flow(self, steps: list[FlowStep], tx: Transaction | Any) -> Flow:
        for name in {step.signature.call.spec.pool for step in steps}:
            self.pool(name)  # declared, as an add would
        ids = await self.adding.add_flow(steps, tx=tx)
        return Flow(ids[0], tuple(ids))

    async def workflow(self, workflow_id: int) -> WorkflowInfo:
        """A workflow's jobs, status and progress (``WorkflowNotFound``, a
        ``JobNotFound``, if it has none)."""
        check_job_id(workflow_id, "workflow_id")
        if not 1 <= workflow_id <= INT64_MAX:
            raise WorkflowNotFound(workflow_id)  # no job has such an id
        self.require_started("reading a workflow")
        here = None if self.nodes is None else self.nodes.node
        paused = await self._recorded_pauses()
        return await read_workflow(
            self.store, self.live, workflow_id, lambda info: self._told(info, paused), here
        )

    def subscribe_workflow(self, workflow_id: int, *, buffer: int | None = None) -> WorkflowStream:
        """A snapshot of the workflow (``data["workflow"]``), then every event of its
        jobs, until all of them are terminal."""
        return WorkflowStream(
            self.broker,
            workflow_id,
            lambda: self.workflow(workflow_id),
            self.clock,
            buffer,
            relayed=lambda: self.relayed,
            poll_interval=self.poll_interval,
        )

    async def cancel_workflow(self, workflow_id: int) -> WorkflowInfo:
        """Cancel every job of a workflow that has not finished (its last jobs first,
        so that none starts meanwhile); running ones are told to stop."""
        refuse_in_block("rt.cancel_workflow()")
        info = await self.workflow(workflow_id)
        for job in sorted(info.jobs, key=lambda j: -j.id):
            if job.terminal:
                continue
            with contextlib.suppress(InvalidTransition, JobNotFound):
                await self._cancel_without_waiting(job.id)
        return await self.workflow(workflow_id)

    async def history(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        step: float = 60,
        pool: str | None = None,
        task: str | None = None,
    ) -> list[HistoryPoint]:
        """What finished per ``step`` seconds (a multiple of 60, at most 7 days), oldest
        first: counts by outcome and the successes' durations. It survives restarts
        and the pruning of the jobs themselves (``taskrt.history``; kept as long as
        ``rt.retention(history=...)`` says). Default window: the last 60 steps;
        at most the latest ``MAX_POINTS`` (10,000) steps of a longer one."""
        self.require_started("history")
        if (
            isinstance(step, bool)
            or not isinstance(step, int | float)
            or not (60 <= step <= 7 * 86400 and step % 60 == 0)
        ):
            raise InvalidOption(
                "step", f"expected a multiple of 60 seconds up to 7 days, found {step!r}"
            )
        for name, value in (("since", since), ("until", until)):
            if value is not None:
                check_number(value, name)  # a finite number: not a str, bool or datetime
        _check_filter_values(pool, task, None)
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                raw = await remote.call(
                    "history", since=since, until=until, step=step, pool=pool, task=task
                )
                return [HistoryPoint(**p) for p in raw]
        for name, value in (("since", since), ("until", until)):
            if value is not None and not -FAR_TIME <= float(value) <= FAR_TIME:
                raise InvalidOption(
                    name, f"expected epoch seconds within ±{FAR_TIME:.0e}, found {value!r}"
                )
        end = self.clock.now() if until is None else float(until)
        step_minutes = int(step // 60)
        if since is None:
            # The last 60 steps: the one holding `end` and the 59 before it (a window
            # of 60 steps back from `end` began inside a 61st when `end` is not on a
            # step's boundary).
            start = (int(end // 60) // step_minutes - 59) * step_minutes * 60.0
        else:
            start = float(since)
        if end < start:
            if until is None:
                raise InvalidOption("since", "expected a time before until (now)")
            raise InvalidOption("until", "expected a time after since")
        first = int(start // 60) // step_minutes * step_minutes
        last = int(end // 60) + 1  # the minute holding `until` included
        if (last - first) / step_minutes > MAX_POINTS:
            # The latest steps of the window, each whole (aligned as the others).
            first = -(-(last - MAX_POINTS * step_minutes) // step_minutes) * step_minutes
        if self.runs_jobs:
            await self.store.settle(self.transitions.flush_history())
        rows = await self.store.history(first, last, step_minutes, pool=pool, task=task)
        return history_points(rows, float(step))

    async def prune_history(self, older_than: float) -> int:
        """Forget the history of minutes older than ``older_than`` seconds (retention)."""
        age = check_seconds(older_than, "older_than", most=MAX_DURATION)
        refuse_in_block("rt.prune_history()")
        return await self.store.prune_history(int((self.clock.now() - age) // 60))

    async def stats(self, since: float | None = None, until: float | None = None) -> Stats:
        """Counts by status, success rate, mean and p95 duration (seconds).

        Constant time at any number of jobs: WAITING and RUNNING are the counts
        now. Without ``since``/``until`` the other counts are of the jobs
        stored, and the durations those of the successes in the history
        (``retention(history=...)``); with a window, what finished in it,
        widened to whole minutes. The p95 comes from the duration histogram
        (``taskrt.counters.BUCKETS``): the upper bound of the bucket holding it.
        """
        for name, moment in (("since", since), ("until", until)):
            if moment is not None:
                check_number(moment, name)  # finite; a time before 1970 finds nothing
        self.require_started("statistics")
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                return Stats(**await remote.call("stats", since=since, until=until))
        if self.runs_jobs:
            self.transitions.flush_history()
        await self.store.settle()
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

    async def pool_statistics(self) -> list[PoolStatistics]:
        """Every pool as the owner sees it (waiting and running jobs), by name. In
        ``mode="nodes"``: the schema's waiting and running jobs (every node's, read
        from the live counts), this node's concurrency and totals."""
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                return [PoolStatistics(**raw) for raw in await remote.call("pools")]
        await self.read_latencies()
        stats = [p.statistics() for p in sorted(self._pools.values(), key=lambda p: p.name)]
        if self.mode == "nodes" and self._started:
            counts = await self.store.live_counts()
            stats = [
                dataclasses.replace(
                    s,
                    waiting=counts.get(s.name, {}).get(JobStatus.WAITING, 0),
                    running=counts.get(s.name, {}).get(JobStatus.RUNNING, 0),
                )
                for s in stats
            ]
        return stats

    async def read_latencies(self) -> None:
        """Where a pool's due jobs may wait in the store only, read the earliest
        ``run_at`` among them, for ``pool.statistics()`` and the metrics
        (``taskrt.pool`` note 10). Where jobs run here only; a store that fails
        leaves the latency of what memory holds."""
        if not self._started or not (self.owning or self.nodes is not None):
            return
        now = self.clock.now()
        for pool in list(self._pools.values()):
            if pool.queue.stored_due(now):
                try:
                    oldest = await self.store.oldest_due(pool.name, now)
                except TaskrtError as exc:
                    log.warning("reading pool %r's oldest due job failed: %s", pool.name, exc)
                    return
                pool.stored_oldest = (now, oldest)

    async def change_pool(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        capacity: int | _Unset | None = UNSET,
        paused: bool | None = None,
        create: bool = False,
        rate: str | _Unset | None = UNSET,
        exists_ok: bool = True,
    ) -> PoolStatistics:
        """Change a pool where its jobs run (the owner), from any process.

        ``concurrency``, ``capacity`` and ``rate`` last while the owner runs; a pause
        (``paused``) is recorded in the database, so it outlives restarts and
        takeovers. In ``mode="nodes"`` all three are recorded and every node
        applies them, nodes that join later included (concurrency stays per
        node: 10 on 3 nodes runs up to 30 jobs). ``create``: declare the pool
        if there is none; ``exists_ok=False``: ``PoolExists`` if there is one.
        Where one owner runs the jobs, the owner says which pools exist, and its
        limits are the ones that change (another process keeps the code's, which
        it starts with if it takes over).
        """
        # Everything is refused before anything changes, here and at the owner.
        for flag, value in (("paused", paused), ("create", create), ("exists_ok", exists_ok)):
            if value is not None:
                check_flag(value, flag)
        check_pool_settings(
            concurrency,
            None if isinstance(capacity, _Unset) else capacity,
            rate=None if isinstance(rate, _Unset) else rate,
        )
        _check_pool_name(name)
        refuse_in_block("rt.change_pool()")
        remote = self._forwarding()
        if remote is not None:
            args: dict[str, Any] = {"name": name, "create": create}
            if not exists_ok:
                args["exists_ok"] = False
            if concurrency is not None:
                args["concurrency"] = concurrency
            if not isinstance(capacity, _Unset):
                args["capacity"] = capacity
            if paused is not None:
                args["paused"] = paused
            if not isinstance(rate, _Unset):
                args["rate"] = rate
            with contextlib.suppress(OwnerUnreachable):
                stats = PoolStatistics(**await remote.call("change_pool", **args))
                self.pool(name)  # every process knows its pools' names
                return stats
        # The write first, in one transaction, then the change here: a write that fails
        # changes nothing, not even a pool it would have created. One change at a time,
        # so that two creations of one pool cannot both pass the check before the write.
        async with self._changing_pools:
            if name in self._pools and not exists_ok:
                raise PoolExists(name)
            if name not in self._pools and not create:
                raise PoolNotFound(name)
            recorded = None if isinstance(capacity, _Unset) else (capacity,)
            rated = None if isinstance(rate, _Unset) else (rate,)
            changed = any(v is not None for v in (concurrency, recorded, rated))
            if self.mode == "nodes" and self._started and changed:
                # Every node applies it, and those that join later (taskrt.nodes note 4).
                assert self._pg is not None
                await self._pg.set_pool_limits(name, concurrency, recorded, rated, paused)
            elif paused is not None and self._started:
                await self.store.set_pool_paused(name, paused)
            local = self.pool(name)
            _apply_limits(local, concurrency, capacity, paused, rate)
            return local.statistics()

    async def replay_after(self, job_id: int, seq: int) -> list[Event] | None:
        """The owner's replay window of a job after ``seq`` (``None``: not all known)."""
        if self.owning or self.nodes is not None:
            return self.broker.replay_after(job_id, seq)
        remote = self._forwarding()
        if remote is None:
            return None
        try:
            raw = await remote.call("replay", job=job_id, seq=seq)
        except OwnerUnreachable:
            return None
        return None if raw is None else [decode_event(e) for e in raw]

    async def poke_owner(self) -> None:
        """Ask the owner to look for what this process wrote to the database now."""
        remote = self._forwarding()
        if remote is not None:
            with contextlib.suppress(OwnerUnreachable):
                await remote.call("poke")

    async def cleanup(
        self,
        older_than: float | timedelta = 7 * 86400,
        statuses: Iterable[JobStatus | str] = (
            JobStatus.SUCCESS,
            JobStatus.FAILURE,
            JobStatus.CANCELLED,
        ),
    ) -> int:
        """Delete finished jobs (and their attempts) older than ``older_than`` (seconds,
        a duration like ``"7d"``, or a ``timedelta``; 0 or more, of any length: an age no
        job reaches deletes none); ids are never reused."""
        self.require_started("cleanup")
        refuse_in_block("rt.cleanup()")
        seconds = parse_age(
            older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        )
        if statuses is None:
            raise InvalidOption("statuses", "expected finished statuses, found None")
        chosen = _statuses(statuses, "statuses") or []  # type: ignore[arg-type]
        if any(s not in TERMINAL for s in chosen):
            raise InvalidOption(
                "statuses", "only finished jobs (SUCCESS, FAILURE, CANCELLED) can be cleaned up"
            )
        if not chosen:
            return 0
        await self.store.flush()
        deleted = await self.store.cleanup(self.clock.now() - seconds, chosen)
        return deleted


def _wait_on(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` on ``loop`` and wait for it in this thread, another than the
    loop's: what it raises is raised here. A loop that is closed, or stops
    before it has run ``work``, drops it (as ``progress`` drops a report for an
    ended attempt) instead of leaving the thread waiting for ever."""
    try:
        future = asyncio.run_coroutine_threadsafe(work, loop)
    except RuntimeError:  # the loop is closed
        work.close()
        return
    while True:
        try:
            future.result(timeout=1.0)
            return
        except TimeoutError:
            if future.done():
                raise  # the work's own TimeoutError
            if not loop.is_running():
                future.cancel()
                return


def _apply_limits(
    pool: Pool,
    concurrency: int | None,
    capacity: int | _Unset | None,
    paused: bool | None,
    rate: str | _Unset | None = UNSET,
) -> None:
    if concurrency is not None:
        pool.set_concurrency(concurrency)
    if not isinstance(capacity, _Unset):
        pool.set_capacity(capacity)
    if not isinstance(rate, _Unset):
        pool.set_rate(rate)
    if paused is True:
        pool.pause()
    elif paused is False:
        pool.resume()


class _PoolHost:
    """What a runtime gives its pools (``pool.PoolHost``): its clock and limits, and
    the adding and transitions they call; nothing else of the runtime."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self.clock = rt.clock
        self.abandon_after = rt.abandon_after
        self.limits = rt.limits
        self.add_calls = rt.adding.add_calls
        self.started = rt.transitions.started
        self.alone = rt.alone
        self.deadline_passed = rt.transitions.deadline_passed
        self.gates = rt.gates
        self.mark = rt.transitions.mark
        self.report = rt.transitions.report

    def attempt_ended(self, state: JobState, outcome: Outcome) -> None:
        self._rt.transitions.attempt_ended(state, outcome)
        self.alone.ended(state)

    def not_started(self, state: JobState) -> None:
        self._rt.background.spawn(self._rt.adoption.not_started(state))

    def queue_for(self, pool: Pool) -> Queue:
        nodes = self._rt.nodes
        if nodes is not None:
            return nodes.queue_for(pool)  # claims (taskrt.claims)
        return Waiting(
            pool.name,
            self._rt.adoption,
            self.clock,
            self._rt.window,
            pool._dispatch,
            self._rt.gates.saw,
        )

    def give_back(self, state: JobState) -> None:
        nodes = self._rt.nodes
        if nodes is not None:
            nodes.give_back([state])  # any node may claim it (taskrt.claims note 4)
            return
        self._rt.transitions.unstart(state)
        self._rt._pools[state.pool].push(state)

    def lock_released(self) -> None:
        nodes = self._rt.nodes
        if nodes is not None:
            nodes.lock_released()  # every node looks again, once it is committed
            return
        for pool in list(self._rt._pools.values()):
            pool._dispatch()

    def hold_lock(self, state: JobState, held: bool) -> None:
        nodes = self._rt.nodes
        if nodes is not None:
            nodes.hold_lock(state, held)  # the claims of every node skip its key

    def counted(self, pool: str) -> int:
        nodes = self._rt.nodes
        if nodes is not None:  # every node's adds and claims: read at each look
            return nodes.waiting.get(pool, 0)
        return self._rt.store.counted(pool, JobStatus.WAITING)

    @property
    def running(self) -> bool:
        return self._rt._workers_on

    @property
    def instrumentation(self) -> Instrumentation | None:
        return self._rt.instrumentation


def _filter_args(
    status: JobStatus | str | Sequence[JobStatus | str] | None,
    pool: str | None,
    task: str | None,
    metadata: Mapping[str, Any] | None,
    scheduled: bool,
    older_than: float | timedelta | None,
) -> dict[str, Any]:
    """A listing's filter as a forwarded call carries it (relay: JSON values)."""
    _check_filter_values(pool, task, metadata)
    return {
        "status": [s.value for s in _statuses(status) or []] or None,
        "pool": pool,
        "task": task,
        "metadata": dict(metadata) if metadata is not None else None,
        "scheduled": scheduled,
        "older_than": _seconds(older_than),
    }


def _ids_of(ids: Any) -> list[int]:
    """A bulk action's ``ids``: a list (tuple, set) of job ids, at most ``BULK_LIMIT``.
    A string is no list of ids: ``"12"`` was read as jobs 1 and 2."""
    if not isinstance(ids, list | tuple | set | frozenset | range):
        raise InvalidOption("ids", f"expected a list of job ids, found {shown(ids)}")
    if len(ids) > BULK_LIMIT:
        raise InvalidOption("ids", f"at most {BULK_LIMIT} ids in one bulk action")
    for job_id in ids:
        check_job_id(job_id, "ids")
    return list(ids)


def _check_settings(
    *,
    workers: Any,
    tracing: Any,
    clock: Any,
    tasks: Any,
    root: Any,
    grace: Any,
    abandon_after: Any,
    poll_interval: Any,
    progress_interval: Any,
    subscriber_buffer: Any,
    replay: Any,
    default_concurrency: Any,
    max_recoveries: Any,
    stall_threshold: Any,
    busy_timeout: Any,
) -> None:
    """``Runtime``'s settings, each refused with ``InvalidOption`` when it is not what
    it must be: a wrong one would fail later, far from its cause (a ``grace`` of
    ``"5"`` failed at ``stop()``, whose threads then kept the process alive)."""
    check_flag(workers, "workers")
    check_flag(tracing, "tracing")
    if clock is not None and not (
        callable(getattr(clock, "now", None)) and callable(getattr(clock, "call_at", None))
    ):
        raise InvalidOption(
            "clock", f"expected a taskrt Clock (now, call_at), found {shown(clock)}"
        )
    for name, place in (("tasks", tasks), ("root", root)):
        if place is not None and not isinstance(place, str | os.PathLike):
            raise InvalidOption(name, f"expected a path, found {shown(place)}")
    check_seconds(grace, "grace", most=DAY)
    check_seconds(abandon_after, "abandon_after", most=HOUR)
    check_seconds(poll_interval, "poll_interval", most=HOUR, zero=False)
    check_seconds(progress_interval, "progress_interval", most=HOUR, zero=False)
    check_seconds(stall_threshold, "stall_threshold", most=HOUR, zero=False)
    check_seconds(busy_timeout, "busy_timeout", most=HOUR)
    check_count(subscriber_buffer, "subscriber_buffer", least=1, most=MAX_BUFFER)
    check_count(replay, "replay", least=0, most=MAX_BUFFER)
    check_count(default_concurrency, "default_concurrency", least=1, most=INT64_MAX)
    check_count(max_recoveries, "max_recoveries", least=0, most=INT64_MAX)


HOUR = 3600.0
DAY = 86400.0


def _same_definition(known: TaskSpec, spec: TaskSpec) -> bool:
    """Whether ``spec`` comes from where ``known`` came from, and so may replace it.

    A task in code is its handler: the same function registered again. A task
    from a file is its file, whatever path named it: its handler is made at each
    load (an Anchor task's wraps its process function or executor method), so
    the same file loaded again brings new handlers for the same tasks.
    """
    if known.source is None or spec.source is None:
        return known.source is spec.source and known.handler is spec.handler
    if known.source == spec.source:
        return True
    try:
        return os.path.samefile(known.source, spec.source)
    except (OSError, ValueError):  # gone, or no file name at all
        return False


def _check_task_texts(spec: TaskSpec) -> None:
    """A task's name is stored with each of its jobs: text the stores take (valid
    UTF-8, no NUL). Its description, display name and parameters' schema are served
    as JSON (``GET /tasks``): valid UTF-8. Refused here, at registration: before, a
    lone surrogate failed the add's write batch, and ``GET /tasks`` answered 500."""
    try:
        check_text(spec.name, "name", max_bytes=DEFAULT_LIMITS.max_metadata_bytes)
    except InvalidOption as exc:
        raise InvalidOption("name", str(exc).removeprefix("name: "), source=spec.source) from None
    for field, value in (
        ("description", spec.description),
        ("display_name", spec.display_name),
        ("parameters", spec.parameters),
    ):
        bad = _lone_surrogate(value)
        if bad is not None:
            raise InvalidOption(
                field,
                f"expected valid UTF-8 text, found a lone surrogate in {shown(bad)}",
                source=spec.source,
            )


def _lone_surrogate(value: Any) -> str | None:
    """The first string of ``value`` (keys included) that is not valid UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            bad = _lone_surrogate(key) or _lone_surrogate(item)
            if bad is not None:
                return bad
    elif isinstance(value, list | tuple):
        for item in value:
            bad = _lone_surrogate(item)
            if bad is not None:
                return bad
    return None


def _check_pool_name(name: Any) -> None:
    """A pool's name: non-empty text the store and the listing's filters take
    (valid UTF-8, no NUL)."""
    if not isinstance(name, str) or not name:
        raise InvalidOption("pool", f"expected a non-empty name, found {shown(name)}")
    check_text(name, "pool", max_bytes=DEFAULT_LIMITS.max_metadata_bytes)


MAX_METADATA_FILTERS = 64  # metadata keys one listing, count or bulk action may match


def _check_filter_values(
    pool: str | None, task: str | None, metadata: Mapping[str, Any] | None
) -> None:
    """A filter's names and metadata are values both stores can compare: text
    (valid UTF-8, no NUL character), finite numbers, booleans, or None."""
    for field, text in (("pool", pool), ("task", task)):
        if text is not None:
            check_text(text, field, max_bytes=DEFAULT_LIMITS.max_metadata_bytes)
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise InvalidOption("metadata", f"expected a mapping, found {type(metadata).__name__}")
    if len(metadata) > MAX_METADATA_FILTERS:
        # Each is a condition of the statement: some 500 pass SQLite's depth limit.
        raise InvalidOption(
            "metadata",
            f"expected at most {MAX_METADATA_FILTERS} keys to match, found {len(metadata)}",
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidOption("metadata", f"expected non-empty names, found {key!r}")
        check_text(key, "metadata", max_bytes=DEFAULT_LIMITS.max_key_bytes)
        if isinstance(value, str):
            check_text(value, f"metadata.{key}", max_bytes=DEFAULT_LIMITS.max_metadata_bytes)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidOption(f"metadata.{key}", f"expected a finite number, found {value!r}")
        elif isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidOption(f"metadata.{key}", f"expected a 64-bit integer, found {value}")
        elif value is not None and not isinstance(value, bool | float):
            raise InvalidOption(
                f"metadata.{key}",
                f"expected text, a number, a boolean or null, found {type(value).__name__}",
            )


def _seconds(value: float | timedelta | None) -> float | None:
    """A filter's ``older_than``: seconds or a ``timedelta``, 0 or more, of any length
    (``retry.parse_age``: an age no job reaches matches none, and is no error)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return parse_age(value.total_seconds())
    if isinstance(value, str):
        raise InvalidOption("older_than", f"expected seconds or a timedelta, found {shown(value)}")
    return parse_age(value)


def _statuses(
    value: JobStatus | str | Sequence[JobStatus | str] | None, field: str = "status"
) -> list[JobStatus] | None:
    if value is None:
        return None
    if isinstance(value, str | JobStatus):
        items: list[Any] = [value]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        raise InvalidOption(field, f"expected a status or a list of statuses, found {shown(value)}")
    out: list[JobStatus] = []
    for item in items:
        if not isinstance(item, str | JobStatus):
            raise InvalidOption(field, f"expected a status name, found {shown(item)}")
        try:
            out.append(JobStatus(item.upper()))
        except ValueError:
            raise InvalidOption(
                field,
                f"unknown status {item!r}; expected one of {', '.join(s.value for s in JobStatus)}",
            ) from None
    return out


__all__ = [
    "JobLogAdapter",
    "JobStream",
    "Runtime",
    "TaskRef",
    "Transaction",
    "job_logger",
    "snapshot_event",
]


DATABASE_ENV = "TASKRT_DATABASE"
"""The database a ``Runtime()`` given none opens (default ``:memory:``)."""


def _postgres_store(url: str, **options: Any) -> PgStore:
    """The PostgreSQL store for ``url``; a clear error where its driver is missing."""
    try:
        from .store.postgres import PgStore
    except ImportError as exc:
        raise InvalidOption(
            "database",
            f"a postgresql:// database needs the asyncpg driver ({exc}); "
            "install taskrt with its postgres extra: pip install 'taskrt[postgres]'",
        ) from exc
    return PgStore(url, **options)
