"""What the engine asks of a store: domain operations, never SQL (``taskrt.store`` notes).

``JobStore`` is the seam a backend plugs into: the runtime, the pools'
transitions, the scheduler and the front ends call only these operations,
receive taskrt's own values (``JobInfo``, ``ScheduleInfo``, ``StoreHealth``)
and see only ``StoreError`` and its subclasses. The SQLite store
(``taskrt.store.sqlite.Store``) is one implementation; mypy checks that it
is one wherever the runtime holds it as a ``JobStore``.

Writes come in two kinds. *Queued* operations (``start``, ``succeed``,
``progress``...) return at once with the future of the batch that will commit
them (group commit: note 1); nothing waits on them unless it must.
*Immediate* operations (``take_lease``, ``recover``, ``cleanup``...) run in a
transaction of their own and return when it is committed.

Counts by pool and status are the store's to keep exact (``taskrt.store``
note 12): every write that adds, deletes or moves a job changes them in its
own transaction. That is why the writes that move a job name its ``pool`` and,
where more than one status may precede the new one, ``was``: the status the
caller believes the job is in. A belief that does not hold costs time, never
exactness: the store then reads the row and counts what it really was. The
job moves exactly as the transition table allows, whatever ``was`` says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..models import (
    AttemptInfo,
    AttemptOutcome,
    JobInfo,
    JobStatus,
    ScheduleDefinition,
    ScheduleInfo,
    StoreHealth,
)


@dataclass(slots=True)
class NewJob:
    """A job to insert; ``job_id`` is set only when a ``next_id`` hook chose it."""

    task: str
    pool: str
    args_json: str
    kwargs_json: str
    max_attempts: int | None
    priority: int
    metadata_json: str
    unique_key: str | None
    created_at: float
    run_at: float
    timeout: float | None
    retry_json: str | None
    job_id: int | None = None
    external: bool = False
    # How long the unique key stays taken after the add, finished or not (seconds).
    unique_for: float | None = None
    on_conflict: str | None = None  # "raise": DuplicateJob instead of the holder's id
    deadline: float | None = None
    lock_key: str | None = None
    # The jobs it waits for (``options(after=...)``, workflows): ids, or -k for the
    # k-th job (1-based) of the same insert. Such a job is stored ``blocked``.
    after: tuple[int, ...] = ()
    # What its parents' results give it as a first argument: None (nothing),
    # "result" (its one parent's, a chain), "results" (the list of all, in order),
    # "results:n" (of the first n: a group's callback whose own ``after`` adds
    # parents outside the workflow, which give it nothing).
    inputs: str | None = None
    on_parent_failure: str = "cancel"  # or "run" (``models.ON_PARENT_FAILURE``)
    # Its workflow: an id, or -k for the k-th job of the same insert.
    workflow: int | None = None
    # A job of a batched task: the key of the batch it joins (stored ``batching``).
    batch_key: str | None = None
    # Start it in its own add (``taskrt.pool`` note 9; a slot is kept for it): where
    # the store says so (``JobStore.starts_in_add``), or where every node runs
    # workers, if no waiting job comes first (PostgreSQL store note 11).
    start: bool = False


@dataclass(frozen=True, slots=True)
class Settled:
    """What ``JobStore.settle_deps`` did: dependents released (their parents all ended,
    so they run now) and dependents cancelled (a parent failed or was cancelled)."""

    released: tuple[tuple[int, str], ...] = ()
    """(job id, pool) of each job released."""
    cancelled: tuple[CancelledChild, ...] = ()
    """Dependents cancelled, and members of a batch that ended with it (any status)."""


@dataclass(frozen=True, slots=True)
class BlockedAgain:
    """What ``JobStore.block_again`` did with a dependent that never ran: blocked it
    again on ``parents`` (``seq``: its sequence now), or left it as it was because
    of ``refused`` (a parent that failed, was cancelled, or is gone), or because it
    is in status ``now`` (retried meanwhile: no longer FAILURE or CANCELLED)."""

    pool: str = ""
    seq: int = 0
    was: str = ""
    parents: tuple[int, ...] = ()
    refused: str | None = None
    now: str | None = None


@dataclass(frozen=True, slots=True)
class CancelledChild:
    """A job ``settle_deps`` ended: a dependent it cancelled, or a member of a batch
    that ended as its batch did; as its event tells it."""

    job_id: int
    task: str
    pool: str
    seq: int
    finished_at: float
    error: str | None
    status: str = "CANCELLED"
    result: str | None = None  # JSON text (a batch's result)


Steps = tuple[str | None, tuple[dict[str, Any], ...]]
"""A job's named steps: the one reported last, and every step seen (``JobInfo.steps``)."""


@dataclass(slots=True)
class InsertResult:
    """The id an insert got, whether it made a row (False: a live job held its unique
    key), and whether it started on this node as it was added (``NewJob.start``)."""

    job_id: int
    created: bool
    started: bool = False


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    """The lease row: who owns the database, where its relay listens, since when.

    A record, not the authority: on SQLite the ownership lock decides
    (``taskrt.ownership``); the row is for ``GET /health``, the dashboard, the
    CLI, and for the other processes to find the owner's relay.
    """

    owner: str
    address: str | None
    since: float


MinuteRow = tuple[Any, ...]
"""One minute (or step) of history: (minute, pool, task, succeeded, failed,
cancelled, retried, duration_sum, then the 12 bucket counts of durations)."""

Progress = tuple[float, float, str]
"""``(current, total, message)`` as a final write stores them."""


class StoreTransaction(Protocol):
    """One open write transaction: the application's SQL, and taskrt's own writes in it."""

    committed: bool
    """True once the store committed it: a caller cancelled as its COMMIT was on its
    way gets the cancel all the same, and tells by this that its writes are in
    (``taskrt.store`` note 24)."""

    @property
    def driver(self) -> Any:
        """The driver's connection the transaction is open on (``aiosqlite.Connection``,
        ``asyncpg.Connection``): for SQL of the backend's own dialect and API."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The application's own statement (``rt.transaction()``); its rows."""
        ...

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None: ...

    async def mark_failed(
        self,
        job_id: int,
        error: str,
        finished_at: float,
        progress: Progress,
        seq: int,
        attempts: int,
        *,
        pool: str,
        was: JobStatus = JobStatus.RUNNING,
        as_read: bool = False,
    ) -> bool:
        """FAILURE in this transaction (``on_failed`` hooks commit with it), from
        WAITING or RUNNING; the count moves with it, in the transaction. False when
        no row moved: the job is not where the caller believed (another process
        ended it, or took it back from a node that was taken for dead).

        ``as_read``: ``was`` is WAITING and ``seq - 1`` the sequence the caller read;
        the row moves only if it is still that, locked first (a compare-and-set: a
        job no process holds, which any node may claim meanwhile,
        ``taskrt.deadlines`` note 3). Without it a belief is a guess for the counts."""
        ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested part: if its block raises, only its writes are undone."""
        ...

    async def bound_idle(self, seconds: float) -> None:
        """Ended by the server once idle ``seconds`` between two statements (where
        rows are locked one by one); nothing on SQLite."""
        ...

    async def schedule(
        self, name: str, *, lock: bool = False, skip_locked: bool = False
    ) -> ScheduleInfo | None: ...

    async def insert_schedule(
        self, definition: ScheduleDefinition, next_run_at: float | None, now: float
    ) -> bool:
        """False when one of that name exists (declared by another process meanwhile)."""
        ...

    async def define_schedule(
        self, definition: ScheduleDefinition, next_run_at: float | None, now: float
    ) -> None: ...

    async def pause_schedule(self, name: str, now: float) -> None: ...

    async def resume_schedule(self, name: str, next_run_at: float, now: float) -> None: ...

    async def delete_schedule(self, name: str) -> None: ...

    async def declared_schedule(self, name: str) -> None:
        """The schedule is declared in code (scheduler note 4)."""
        ...

    async def schedules_of_code(self) -> list[str]:
        """The names of the schedules declared in code."""
        ...

    async def schedule_fired(
        self,
        name: str,
        *,
        next_run_at: float | None,
        last_run_at: float | None,
        last_job_id: int | None,
        error: str | None,
        added: int,
    ) -> None: ...

    async def schedule_ran(self, name: str, job_id: int) -> None: ...

    async def bump_schedules(self) -> int:
        """Say that schedule definitions changed; the new version."""
        ...


class JobStore(Protocol):
    """The operations of a store (see the module docstring)."""

    on_rejected: Callable[[int | None, str, BaseException], None] | None
    """Told of an operation (its name) the database refused on its own (note 10)."""
    on_unstarted: Callable[[list[int]], None] | None
    """Told of jobs whose queued start changed no row, before the start's future
    resolves (note 20): another process changed the job first."""
    on_recovered: Callable[[list[CancelledChild]], None] | None
    """Told of the jobs a recovery (``recover``, a reap of nodes gone) ended, once
    committed: orphaned (FAILURE), or CANCELLED as a cancel asked while they ran."""
    failed_hooks: Callable[[], Collection[str]]
    """The tasks whose orphans a recovery leaves RUNNING for ``on_orphans`` (note 22):
    those with an ``on_failed`` hook here."""
    on_orphans: Callable[[list[JobInfo]], None] | None
    """Told of the orphans a recovery left RUNNING (note 22), once committed, before
    the recovery returns: the runtime fails them, each hook in its failure's transaction."""

    @property
    def starts_in_add(self) -> bool:
        """True: a job its owner's add marks ``start`` (``NewJob.start``) is stored
        RUNNING, attempt 1 charged, as the owner decided (it holds every waiting job
        of the pool; ``taskrt.pool`` note 9). False: ``start`` is a node's request,
        which the store grants by its own rule (PostgreSQL store note 11)."""
        ...

    @property
    def counts_capacity(self) -> bool:
        """True: an add to a pool with a capacity (``capacity_of``) is counted against
        it in the add's own transaction, and refused there with ``QueueFull``, so the
        capacity holds across processes that add at once (PostgreSQL writer
        ``_room``). False: the runtime's check before the add is all there is."""
        ...

    # -- lifecycle and health
    async def open(self) -> None:
        """Connect, bring the schema to this release's version (or refuse a newer one)."""
        ...

    async def migrate(self) -> tuple[int, int]:
        """Bring the schema to this release's version without opening the store
        (``taskrt migrate``): (the version found, the version now)."""
        ...

    async def close(self, patience: float = 10.0) -> None:
        """Write what is queued (trying ``patience`` seconds while writes fail), disconnect."""
        ...

    def health(self) -> StoreHealth: ...

    @property
    def failing(self) -> bool: ...

    def rolled_back(self, exc: BaseException) -> bool:
        """Whether ``exc``, or an error it was raised from, says the database rolled a
        transaction back on its own (a deadlock, a serialization failure): the same
        transaction, run again, may commit. Never on SQLite (one writer)."""
        ...

    @property
    def batches(self) -> int: ...

    async def flush(self) -> None:
        """Return once everything queued so far is committed."""
        ...

    async def settle(self, fut: asyncio.Future[None] | None = None) -> None:
        """Like ``flush`` (or wait for ``fut``), but not while writes fail (note 9)."""
        ...

    # -- adding
    def insert(self, jobs: list[NewJob]) -> asyncio.Future[list[InsertResult | BaseException]]:
        """Queue one ``add`` (all or nothing); one result or error per job."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction]: ...

    async def insert_in(
        self, tx: StoreTransaction, jobs: Sequence[NewJob]
    ) -> list[InsertResult]: ...

    async def adopt_transaction(self, connection: Any) -> StoreTransaction | None:
        """The application's own open transaction, on a connection of this store's
        driver (PostgreSQL: an asyncpg connection, or SQLAlchemy's ``AsyncConnection``
        over asyncpg), as a transaction jobs can be added in; None when this store
        cannot write in it. Jobs added there are the owner's to find (``external``)."""
        ...

    async def listen(self, wake: Callable[[str], None]) -> None:
        """Call ``wake(what)`` soon after another process commits something for the
        owner to take in: ``"changed"`` (``external_changes``), ``"pools"``
        (``pool_pauses``); a store that cannot tell returns at once (the owner polls)."""
        ...

    async def unlisten(self) -> None: ...

    # -- a job's lifecycle (queued; ``pool``/``was``: see the module docstring)
    def start(
        self, job_id: int, attempt: int, now: float, seq: int, *, pool: str
    ) -> asyncio.Future[None]:
        """RUNNING (from WAITING only), attempt number ``attempt`` charged."""
        ...

    def progress(
        self,
        job_id: int,
        current: float,
        total: float,
        message: str,
        seq: int,
        *,
        steps: Steps | None = None,
    ) -> None:
        """Progress (coalesced); ``steps``: (the step, every step) of a job that names
        steps (``progress(..., step=...)``), written with it."""
        ...

    def waiting_reason(self, job_id: int, reason: str | None) -> asyncio.Future[None]:
        """Why a waiting job waits (rate_limited, locked), or None; its start clears it."""
        ...

    def record_attempt(
        self,
        job_id: int,
        number: int,
        started_at: float,
        finished_at: float,
        outcome: AttemptOutcome,
        error: str | None,
        traceback: str | None,
        retry_at: float | None = None,
    ) -> asyncio.Future[None]:
        """An attempt's record; ``retry_at``: it is retried by policy, not before then."""
        ...

    def record_minutes(self, rows: Sequence[MinuteRow]) -> asyncio.Future[None]:
        """Add finished counts to their minutes (history), with the next batch."""
        ...

    async def history(
        self,
        since_minute: int,
        until_minute: int,
        step_minutes: int,
        *,
        pool: str | None = None,
        task: str | None = None,
    ) -> list[MinuteRow]:
        """The minutes in [since, until), summed per step of ``step_minutes``, oldest
        first; a row's minute is its step's first, its pool and task are ``""``."""
        ...

    async def prune_history(self, before_minute: int) -> int:
        """Forget the minutes before ``before_minute``; returns how many rows went."""
        ...

    async def prune_unique_keys(self, now: float) -> int:
        """Forget the unique windows (``unique_for``) that ended by ``now``."""
        ...

    def retried(self, job_id: int, at: float) -> asyncio.Future[None]:
        """A retry asked for by hand at ``at`` (said on the job's last attempt)."""
        ...

    def succeed(
        self,
        job_id: int,
        result_json: str | None,
        finished_at: float,
        progress: Progress,
        seq: int,
        *,
        pool: str,
    ) -> asyncio.Future[None]:
        """SUCCESS (from RUNNING only) with its result and last progress."""
        ...

    def fail(
        self,
        job_id: int,
        error: str,
        finished_at: float,
        progress: Progress,
        seq: int,
        attempts: int,
        *,
        pool: str,
        was: JobStatus = JobStatus.RUNNING,
    ) -> asyncio.Future[None]:
        """FAILURE (from WAITING or RUNNING) with its error and last progress."""
        ...

    def cancel(
        self,
        job_id: int,
        finished_at: float,
        seq: int,
        error: str | None,
        *,
        pool: str,
        was: JobStatus,
    ) -> asyncio.Future[None]:
        """CANCELLED (from WAITING or RUNNING)."""
        ...

    def requeue(
        self,
        job_id: int,
        run_at: float,
        error: str | None,
        seq: int,
        attempts: int,
        max_attempts: int | None,
        progress: Progress,
        *,
        pool: str,
        was: JobStatus = JobStatus.RUNNING,
    ) -> asyncio.Future[None]:
        """WAITING until ``run_at``, from RUNNING, FAILURE or CANCELLED (a retry, a
        manual retry, a shutdown); a job already WAITING is left as it is."""
        ...

    def schedule_failed(self, name: str) -> asyncio.Future[None]: ...

    def clear_external(self, job_id: int, seq: int, cancel_requested: bool) -> asyncio.Future[None]:
        """The owner took in what it read of another process's change (a later one stays)."""
        ...

    # -- ownership, recovery, other processes' actions, retention (immediate)
    async def claim_ownership(self, owner: str, address: str | None, now: float) -> str | None:
        """Record the new owner; returns the owner a row was left behind by (a crash).

        ``StoreUnavailable`` when the database takes no writes now (the runtime
        tries again), ``StoreError`` when no wait mends it."""
        ...

    async def owner_record(self) -> OwnerRecord | None: ...

    async def release_lease(self, owner: str) -> None:
        """Remove the row if ``owner`` still holds it (a clean stop)."""
        ...

    async def paused_pools(self) -> set[str]:
        """Pools an operator paused (the pause outlives the process that was told)."""
        ...

    async def set_pool_paused(self, name: str, paused: bool) -> None:
        """Record an operator's pause or resume (on PostgreSQL the owner is told)."""
        ...

    def alone(self, what: str) -> AbstractAsyncContextManager[bool]:
        """Whether this process alone does ``what`` while the block runs (retention:
        on PostgreSQL's nodes each would prune; one does). Never waits: ``False``
        when another process does it now. SQLite's one owner is always alone."""
        ...

    async def pool_pauses(self) -> dict[str, bool]:
        """Every pool an operator paused or resumed, and whether it is paused."""
        ...

    async def recover(self, now: float, *, max_recoveries: int, seq_gap: int) -> tuple[int, int]:
        """Jobs a dead process left RUNNING: WAITING again (recoveries + 1), FAILURE as
        orphaned after ``max_recoveries``, CANCELLED if a cancel was requested;
        their attempts recorded as interrupted. WAITING jobs lose their ``external``
        mark: the new owner reads them all into its windows. Returns (recovered,
        orphaned)."""
        ...

    async def cancel_external(self, job_id: int, now: float) -> int | None:
        """Not the owner: a WAITING job CANCELLED at once, a RUNNING one asked to stop.
        The job's new ``seq`` when it was CANCELLED here (its event is the caller's
        to publish where nobody owns the jobs), else None."""
        ...

    async def retry_external(self, job_id: int, now: float, max_attempts: int | None) -> int | None:
        """Not the owner: a FAILURE or CANCELLED job WAITING again, for the owner to take
        in; its new ``seq``, or None when it was in neither status (another retry
        came first)."""
        ...

    async def cleanup(self, before: float, statuses: Sequence[JobStatus]) -> int:
        """Delete the jobs in ``statuses`` finished before ``before``, and their attempts."""
        ...

    # -- reads
    async def get_job(self, job_id: int) -> JobInfo | None: ...

    async def list_jobs(
        self,
        *,
        status: Sequence[JobStatus] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: dict[str, Any] | None = None,
        before_id: int | None = None,
        limit: int = 50,
        run_after: float | None = None,
        created_before: float | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[JobInfo]:
        """Newest first. ``run_after``: only WAITING jobs due after it (scheduled), not
        those held at ``models.BLOCKED_AT`` for other jobs (their parents, their batch);
        ``created_before``: only jobs created at or before it; ``ids``: only these."""
        ...

    async def count_jobs(
        self,
        *,
        status: Sequence[JobStatus] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: dict[str, Any] | None = None,
        run_after: float | None = None,
        created_before: float | None = None,
    ) -> int:
        """How many jobs ``list_jobs`` would give with these filters and no limit."""
        ...

    async def purge(self, ids: Sequence[int]) -> int:
        """Delete the finished jobs among ``ids`` and their attempts; returns how many."""
        ...

    async def reschedule(self, job_id: int, run_at: float, *, external: bool = False) -> bool:
        """Move a WAITING job's ``run_at`` (run now); False when it is not WAITING, or
        waits for its parents or its batch (``blocked``, ``batching``, ``batched``:
        they release it). ``external``: not the owner (it picks the change up with
        its poll)."""
        ...

    async def attempts(self, job_id: int) -> list[AttemptInfo]: ...

    async def stats(self, since: float | None, until: float | None) -> dict[str, Any]:
        """``{"counts": {status value: n}, "mean", "p95", "p95_low"}``, in constant time.

        WAITING and RUNNING: the live counts, whatever the window. SUCCESS,
        FAILURE, CANCELLED: without ``since``/``until``, the stored jobs; with
        them, what finished in the history's minutes from floor(since / 60) to
        ceil(until / 60) (exclusive; an open end is unbounded). ``mean``: the
        successes' duration sum / their number in those minutes (all minutes
        without a window), None without a success. ``p95``/``p95_low``: the
        bounds of the histogram bucket (``taskrt.counters.BUCKETS``) holding the
        nearest-rank 95th percentile of the successes' durations: the true p95
        lies in (p95_low, p95]; above the last bound both are that bound ("at
        least"); None without durations. Statuses with no job are left out.
        """
        ...

    async def external_changes(self, limit: int = 1000) -> list[tuple[JobInfo, bool]]: ...

    # -- counts by pool and status, and the waiting window (constant-ish time)
    def counted(self, pool: str, status: JobStatus) -> int:
        """Jobs of ``pool`` in ``status`` as of this store's latest committed write
        that changed counts (or its opening), without I/O. Another process's
        writes show only from this store's next such write on."""
        ...

    async def running_tasks(self) -> list[str]:
        """The tasks of the jobs the store holds RUNNING (a recovery's candidates)."""
        ...

    async def live_counts(self) -> dict[str, dict[JobStatus, int]]:
        """pool -> status -> number of jobs, read now (pools and statuses with none left out)."""
        ...

    async def count_waiting(self, pool: str) -> int:
        """WAITING jobs of ``pool``, read now (constant time)."""
        ...

    async def ready_jobs(
        self, pool: str, now: float, limit: int, after: tuple[int, float, int] | None = None
    ) -> list[JobInfo]:
        """Up to ``limit`` WAITING jobs of ``pool`` due (``run_at <= now``), in run
        order: priority descending, then run_at, then id. ``after`` = (priority,
        run_at, id) of the last job of the previous page: only jobs after it."""
        ...

    async def delayed_jobs(self, pool: str, after: tuple[float, int], limit: int) -> list[JobInfo]:
        """Up to ``limit`` WAITING jobs of ``pool`` strictly after ``after`` = (run_at,
        id) in (run_at, id) order, whatever their priority; ``(now, 2**63 - 1)``:
        the jobs due after ``now``."""
        ...

    async def oldest_due(self, pool: str, now: float) -> float | None:
        """The earliest ``run_at`` of ``pool``'s WAITING jobs due at ``now`` (``run_at
        <= now``), or None when none is due (a pool's queue latency; constant time
        in the jobs, a few seeks per priority level)."""
        ...

    async def unique_holder(self, key: str) -> int | None:
        """The id of the WAITING or RUNNING job holding unique key ``key``, if any."""
        ...

    async def unique_window(self, key: str, at: float) -> int | None:
        """The id of the job whose ``unique_for`` window holds ``key`` at ``at``, if any."""
        ...

    async def deadlines_passed(self, now: float, limit: int) -> list[int]:
        """Up to ``limit`` WAITING jobs whose deadline is ``now`` or before, earliest first."""
        ...

    async def next_deadline(self, after: float) -> float | None:
        """The earliest deadline after ``after`` of a WAITING job, or None (one
        passed is the sweep's: its end may not be committed yet)."""
        ...

    async def schedules(self) -> list[ScheduleInfo]: ...

    async def schedule(self, name: str) -> ScheduleInfo | None: ...

    # -- dependencies and workflows (``taskrt.workflows``)
    async def settle_deps(self, parents: Sequence[int] | None, now: float) -> Settled:
        """In one transaction: every open dependency on a finished job among
        ``parents`` (None: on any finished job) is closed; a blocked dependent whose
        parents all ended is released (``run_at`` its own or ``now``, its parents'
        results put first in its arguments as it asked), and one with a parent in
        FAILURE or CANCELLED is CANCELLED unless it said ``on_parent_failure="run"``.
        Safe to repeat, and to run on several processes at once."""
        ...

    async def block_again(
        self, job_id: int, run_at: float, max_attempts: int | None, *, external: bool = False
    ) -> BlockedAgain | None:
        """In one transaction, a manual retry of a dependent that ended without ever
        being released (a parent failed, or it was cancelled while it waited):
        WAITING and blocked again, every parent's dependency open again (a settle
        closes those that ended and releases it with their results, at ``run_at``
        or later), its attempts renewed to ``max_attempts``. Refused (nothing
        written) when a parent is gone, or failed or was cancelled and the job does
        not run after a parent's failure. A batch's member (``form_batch``) is
        such a dependent too: it waits for its batch's job again (``batched``),
        refused while that job is FAILURE or CANCELLED. None when the job is not
        such a dependent (a plain retry applies). ``external``: made by a process that
        runs no jobs: the row is marked for the owner's poll (``external_changes``),
        which has the dependencies settled at once."""
        ...

    async def form_batch(
        self, task: str, key: str, limit: int, now: float, ripe_before: float | None = None
    ) -> tuple[int, str, list[int]] | None:
        """In one transaction: up to ``limit`` of the oldest ``batching`` jobs of
        ``task`` and ``key`` form a batch. The first (the leader) is released to run
        it, its arguments the list of every member's item; the others wait
        (``batched``) and end as it ends. (leader, its pool, the other members), or
        None when no job of that key waits (another process formed it), or when
        ``ripe_before`` is given and the jobs found neither fill ``limit`` nor were
        the oldest added at or before it (another process formed the batch the
        caller counted; ``None``: formed whatever its size)."""
        ...

    async def batches_waiting(
        self, one: tuple[str, str] | None = None
    ) -> list[tuple[str, str, int, float, int]]:
        """(task, key, jobs, the oldest's created_at, the newest's id) of every batch that
        gathers (or of ``one``: (task, key))."""
        ...

    async def open_parents(self) -> list[int]:
        """The jobs some blocked job still waits for."""
        ...

    async def cancelled_by(self, parent: int) -> list[int]:
        """The dependents of ``parent`` that a parent's failure or cancel cancelled (its
        own, or another's where both failed), still CANCELLED (not those cancelled by
        hand first), and the members of a batch it ran that ended as it did (FAILURE
        or CANCELLED), by id."""
        ...

    async def workflow(self, workflow_id: int) -> tuple[list[JobInfo], list[tuple[int, int]]]:
        """A workflow's jobs (by id) and its dependencies as (child, parent)."""
        ...

    async def schedules_version(self) -> str | None: ...
