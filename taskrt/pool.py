"""Bounded worker pools: queues, slots, timeouts that really cancel.

Design notes:

1. **Wake, don't poll.** A pool has no worker loop. ``push`` and the end of an
   attempt call ``_dispatch``, which starts jobs while a slot is free: highest
   priority first, then earliest ``run_at``, then lowest id. Its waiting jobs
   are a bounded window in memory, the rest in the store (``taskrt.waiting``);
   one clock timer wakes the pool when the first delayed job comes due.
2. **Runners.** A free slot gets a runner task that runs ready jobs one after
   another and ends when none is left, so a busy pool creates no task per job.
   Cancelling a job (or its timeout) cancels the runner while it runs that job;
   the runner tells that cancellation from its own (``uncancel``), so it
   cancels exactly that job's coroutine and never the next one.
3. **Timeouts really cancel.** At the deadline the attempt's task is cancelled
   and the attempt is a timeout, even if the handler swallows the cancellation
   and returns. A handler that ignores cancellation for ``abandon_after``
   seconds more is abandoned: the job is marked at once, but the slot stays
   taken until the coroutine returns, so the pool never runs more than
   ``concurrency`` handlers. A cancel asked before the attempt ends wins over
   its timeout, whichever came first: the cancel stops the timeout's clock,
   and a cancel that finds the handler stopping after its timeout (awaiting in
   its cleanup) does not cut that cleanup short, but the attempt ends as
   cancelled, its timeout kept as its error (``_interrupted``), and the job is
   not retried. Before, the timeout won either way and the job ran again after
   its cancel was answered, or the cancel waited in vain for an end.
4. **Sync handlers** run in the pool's thread pool (``concurrency`` threads),
   or in worker processes in a process pool (note 7).
   A thread cannot be interrupted: at a timeout or cancel the job is marked at
   once and ``job.cancelled`` turns true so the handler may stop early; the
   slot stays taken until the thread returns (note 3), so no more threads run
   than the pool's concurrency.
5. **The attempt is charged before the handler runs.** Starting a job queues
   its RUNNING row (attempt number included) and the runner waits for that
   commit before it calls the handler, so a handler that kills the process on
   its first line still counts as an interrupted attempt, and recovery
   eventually fails it as orphaned instead of starting it forever. Jobs that
   start in the same moment share the commit (group commit), so this costs
   one commit of latency, not one per job. The timeout starts with the handler.
   A start the store could not make (another process had cancelled the job
   first: ``taskrt.store`` note 20) runs nothing: the runner takes the next job,
   and the host takes in what the store holds of that one.
6. **Deadlines.** A job taken after its ``deadline`` is not started: the host
   ends it (FAILURE, ``deadline passed``). A running attempt is cut at the
   deadline as by a timeout, whichever comes first; the host sees the attempt
   ended past the deadline and does not retry it.
7. **Process pools** (``processes=True``): sync handlers run in up to
   ``concurrency`` worker processes (``taskrt.processes``), one job at a time
   each, so CPU-bound handlers do not share one GIL; async handlers still run
   on the loop. This module only picks threads or processes in ``_call``. At
   a timeout or cancel the child sees ``job.cancelled``, is killed if it has
   not returned after a short grace, and the attempt ends once it is idle or
   dead: no slot is held as for a thread (note 4). An error in the child keeps
   the child's traceback (``processes.Crossed``).
8. **Rate limits and locks.** A pool with a ``rate`` starts at most that many
   jobs per unit of time (a token bucket, ``taskrt.rates``); the runtime's
   ``Gates`` hold back jobs whose task's rate is spent or whose lock key a
   running job holds. The pool looks past those for one that may start, in
   order, and sets one timer for the next token: never a busy loop. Where the
   store's claims pick the jobs (``Queue.gated`` false), they apply both.
9. **A job added to an idle pool starts in its add.** When the pool has a
   free slot, nothing would take it first (``Queue.ahead``) and no rate limit
   or lock is in use, the add keeps the slot (``keep``) and asks the store to
   write the job RUNNING, attempt 1 charged, in its own insert: the job then
   starts on the add's commit (``started_here``), one commit and a few loop
   turns sooner than through the queue, and the attempt is still charged
   before the handler runs (note 5). A slot kept is not free to any other
   job; one whose job was stored WAITING after all is given back
   (``release``). A job whose add committed after the pool paused or began
   to stop is written WAITING again, its attempt not charged (``PoolHost.give_back``).
10. **Latency counts the jobs outside memory.** A pool's latency is how long
   its oldest due job has waited past its ``run_at``. Where due jobs may wait
   in the store only (a window that holds part of the backlog, or claims that
   hold none of it: ``Queue.stored_due``), the runtime reads the earliest
   ``run_at`` of the pool's due jobs from the store (``stored_oldest``)
   before it reports statistics or metrics; ``statistics`` uses a reading
   for ``STORED_OLDEST_FOR`` seconds, and what memory holds otherwise.
11. **An instrumented attempt ends inside its instrumentation.** A result
   that cannot be stored (not JSON, too big, too deep) fails the attempt. The
   host finds that as it ends the attempt (``PoolHost.attempt_ended``), after
   the handler's call; where ``rt.instrumentation`` wraps that call (a
   tracing span), the pool encodes the result inside the wrapper, so that a
   refused result is the attempt's error there too (the span says error, not
   success). The outcome carries the JSON (``Outcome.result_json``): the host
   need not encode it again. Without instrumentation nothing changes: one
   encode, the host's.
12. **Whatever a handler returns or raises ends its attempt**, frees its slot
   and leaves the runtime running. A handler's SystemExit, KeyboardInterrupt
   or any other ``BaseException`` is its attempt's error, as in a worker process
   (note 7); a cancellation is what note 2 says. A sync handler's
   StopIteration, which no future may carry (asyncio refuses it, and the
   attempt would never end), becomes ``RuntimeError("the handler raised
   StopIteration")`` raised from it, as PEP 479 does for a generator (and so
   does its GeneratorExit, with which the task would close the runner). A result
   is never truth-tested here or in ``limits.encode`` (a numpy array's
   ``__bool__`` raises): one that cannot be stored is a ``SerializationError``.
   An error whose ``str()`` raises, even SystemExit, is described as one whose
   message could not be read (``errors.describe_error``); its traceback is
   formatted without raising. And should the host raise while it ends an
   attempt (the job has left ``_running`` by then), it fails the job naming
   what went wrong rather than leave it RUNNING (``Transitions.attempt_ended``);
   a runner that dies all the same is logged.

About 650 lines: the pool's contract with its host (``PoolHost``,
``Instrumentation``) is stated here, beside the code that relies on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from .clock import Alarm
from .context import CURRENT_ATTEMPT, JobContext, JobState
from .errors import InvalidOption, format_traceback, in_thread, is_error
from .gates import SCAN, Gates
from .limits import INT64_MAX, check_flag, encode, shown
from .models import JobStatus, PoolStatistics
from .processes import Crossed, Workers
from .rates import Bucket, Rate, parse_rate

if TYPE_CHECKING:
    from .alone import Alone
    from .clock import Clock
    from .definitions import TaskRef
    from .limits import Limits
    from .transaction import Transaction

Calls = list[tuple[tuple[Any, ...], dict[str, Any]]]
"""The (args, kwargs) of each job of one ``add`` or ``add_many``."""


class Instrumentation(Protocol):
    """Code around adds and attempts (``rt.instrumentation``; ``taskrt.tracing`` note 1)."""

    async def add(
        self,
        proceed: Callable[..., Awaitable[list[int]]],
        pool: Pool,
        task: TaskRef,
        calls: Calls,
        *,
        tx: Transaction | Any,
    ) -> list[int]:
        """Add the jobs: call ``proceed(pool, task, calls, tx=tx)`` (with changed options if
        need be) and return what it returns."""
        ...

    def attempt(self, state: JobState) -> contextlib.AbstractContextManager[Any]:
        """A context manager around one call of the job's handler and the check that
        its result can be stored: an attempt that fails either way raises through it
        (note 11)."""
        ...


class Queue(Protocol):
    """A pool's waiting jobs, as the pool sees them (``waiting.Waiting``, ``claims.Claims``)."""

    def __len__(self) -> int: ...

    async def load(self, now: float) -> None: ...

    def push(self, state: JobState) -> None: ...

    def push_many(self, states: list[JobState]) -> None:
        """``push`` of each, in order, for jobs just added (none of them a retry)."""
        ...

    def remove(self, state: JobState) -> bool: ...

    def holds(self, state: JobState) -> bool:
        """Whether ``state`` waits in this queue."""
        ...

    def take(self) -> JobState | None: ...

    def put_back(self, state: JobState) -> None:
        """A job just taken goes back to the head of the line (``taskrt.alone``)."""
        ...

    def give_back_taken(self) -> list[asyncio.Future[None]]:
        """Jobs taken from the store and not started go back to it (``taskrt.alone``
        note 3); the writes that say so (none where memory holds the waiting jobs)."""
        ...

    def take_first(self, eligible: Callable[[JobState], bool], scan: int) -> JobState | None:
        """The first of the next ``scan`` jobs in line that ``eligible`` admits (it stays
        in line otherwise); only where ``gated``."""
        ...

    gated: bool
    """Whether the pool applies rate limits and locks (False: the store's claims do)."""

    def next_slot(self, now: float) -> float:
        """Seconds until a rate limit the store applies lets a job start (ungated only)."""
        ...

    def poke(self, *, stored: bool = False) -> None: ...

    def next_due(self) -> float | None: ...

    def oldest_due(self, now: float) -> float | None:
        """The earliest ``run_at`` of the due jobs in memory, or None."""
        ...

    def stored_due(self, now: float) -> bool:
        """Whether due jobs may wait in the store only, not in memory (note 10)."""
        ...

    async def halt(self) -> None:
        """The runtime stops: nothing more is read from the store, nor being read."""
        ...

    def close(self) -> None: ...

    def ahead(self) -> int:
        """How many jobs would take a free slot before a job added now (note 9):
        0 when none is due, else at least 1."""
        ...


class PoolHost(Protocol):
    """What a pool asks of the runtime that holds it (and a handler's ``JobContext`` too)."""

    clock: Clock
    abandon_after: float
    limits: Limits

    @property
    def running(self) -> bool:
        """Whether jobs may start now (the runtime is started and owns the database)."""
        ...

    @property
    def instrumentation(self) -> Instrumentation | None: ...

    async def add_calls(
        self, pool: Pool, task: TaskRef, calls: Calls, *, tx: Transaction | Any
    ) -> list[int]:
        """Add jobs to ``pool``; their ids once durable (``taskrt.adding``)."""
        ...

    def started(self, state: JobState) -> asyncio.Future[None]:
        """The job starts: the future resolves once its attempt is charged (note 5)."""
        ...

    def attempt_ended(self, state: JobState, outcome: Outcome) -> None: ...

    def not_started(self, state: JobState) -> None:
        """A job whose start changed no row (note 5) was not run: memory takes in its row."""
        ...

    @property
    def gates(self) -> Gates:
        """The rate limits of tasks and the locks held (``taskrt.gates``)."""
        ...

    def mark(self, state: JobState, reason: str | None) -> None:
        """Why a waiting job waits (``taskrt.gates`` note 3)."""
        ...

    @property
    def alone(self) -> Alone:
        """Who runs alone in the process (``taskrt.alone``)."""
        ...

    def lock_released(self) -> None:
        """A lock was released: the pools with jobs waiting on one look again."""
        ...

    def hold_lock(self, state: JobState, held: bool) -> None:
        """An attempt with a lock key ended while its handler runs on (``held``), or
        that handler returned: where the store's claims apply locks, the key stays
        held there meanwhile (``taskrt.gates`` note 4)."""
        ...

    def deadline_passed(self, state: JobState) -> None:
        """A job taken to start after its deadline: it ends instead (note 6)."""
        ...

    def give_back(self, state: JobState) -> None:
        """A job its add started (note 9) that the pool will not run: WAITING again,
        its attempt not charged, queued where its pool's jobs wait."""
        ...

    def queue_for(self, pool: Pool) -> Queue:
        """The pool's waiting jobs: a window of them in memory (``taskrt.waiting``),
        or claims from the store where every node runs workers (``taskrt.claims``)."""
        ...

    def counted(self, pool: str) -> int:
        """The pool's WAITING jobs in the store, as of the last commit."""
        ...

    def report(
        self,
        state: JobState,
        current: float,
        total: float | None,
        message: str | None,
        step: str | None = None,
    ) -> None: ...


DEFAULT_CONCURRENCY = 10
_YIELD_EVERY = 0.002  # seconds a runner may go without yielding to the loop
STORED_OLDEST_FOR = 1.0
"""Seconds a reading of the store's oldest due job counts in ``statistics`` (note 10)."""

log = logging.getLogger("taskrt")

# Whether a handler is a coroutine function, asked once per handler (hot path).
_ASYNC: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


class Outcome:
    """How one attempt ended (internal)."""

    __slots__ = ("error", "kind", "result", "result_json", "tb")

    def __init__(
        self,
        kind: str,
        result: Any = None,
        error: BaseException | None = None,
        tb: str | None = None,
        result_json: str | None = None,
    ) -> None:
        self.kind = kind  # success | error | timeout | cancelled | shutdown
        self.result = result
        self.error = error
        self.tb = tb
        # The result encoded (``encode_result``) where the pool did (note 11); None for
        # a None result, or one not encoded yet.
        self.result_json = result_json


def encode_result(result: Any, limits: Limits) -> str | None:
    """What the store keeps of an attempt's result: its JSON, ``None`` for ``None``.
    Raises ``SerializationError`` when it cannot be stored (note 11)."""
    if result is None:
        return None
    return encode(
        result, "the result", max_bytes=limits.max_result_bytes, max_depth=limits.max_depth
    )


class Pool:
    """A named, bounded set of workers. Get one with ``rt.pool(name, ...)``."""

    def __init__(
        self,
        host: PoolHost,
        name: str,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        capacity: int | None = None,
        processes: bool = False,
        rate: Rate | str | None = None,
    ) -> None:
        _check_limits(concurrency, capacity)
        _check_processes(processes)
        self.rate = parse_rate(rate)  # at most so many starts per unit of time (note 8)
        self._host = host
        self.name = name
        self.concurrency = concurrency
        self.capacity = capacity
        self.paused = False
        self.queue = host.queue_for(self)
        self._running: dict[int, JobState] = {}
        self._starting: set[int] = set()  # jobs taken whose RUNNING row is not committed yet
        self._requeuing = 0  # jobs retried whose WAITING row is not committed yet
        self._held = 0  # slots kept by abandoned coroutines or busy threads (notes 3, 4)
        # Those threads' attempts (their locks too): a job's retry may be cut short
        # too while the thread of its attempt before runs on, each holding a slot.
        self._lingering: set[JobState] = set()
        self.pending = 0  # adds in flight, counted against capacity (taskrt.adding)
        self._kept = 0  # free slots kept for jobs starting in their add (note 9)
        self._timer = Alarm(host.clock, self._dispatch)  # the first delayed job comes due
        self._bucket = None if self.rate is None else Bucket(self.rate, host.clock.now())
        self._gate_timer = Alarm(host.clock, self._dispatch)  # a rate limit's next token
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_size = 0
        # (read at, the earliest run_at of the due jobs in the store): note 10.
        self.stored_oldest: tuple[float, float | None] | None = None
        self.processes = processes  # sync handlers in worker processes (note 7)
        self._workers: Workers | None = None  # made on first use
        self._stopping = False
        self.processed = 0
        self.failed = 0

    def __repr__(self) -> str:
        processes = " processes=True" if self.processes else ""
        return (
            f"<Pool {self.name!r} concurrency={self.concurrency} capacity={self.capacity}"
            f"{processes}>"
        )

    # -- the public face -------------------------------------------------------

    async def add(
        self,
        task: TaskRef,
        /,
        *args: Any,
        tx: Transaction | Any = None,
        **kwargs: Any,
    ) -> int:
        """Add one job; returns its id once the job is committed to disk."""
        ids = await self._host.add_calls(self, task, [(args, kwargs)], tx=tx)
        return ids[0]

    async def add_many(
        self,
        task: TaskRef,
        items: Iterable[Sequence[Any] | Mapping[str, Any]],
        /,
        *,
        tx: Transaction | Any = None,
    ) -> list[int]:
        """Add many jobs in one commit: each item is a tuple of args or a dict of kwargs."""
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for item in items:
            if type(item) is tuple:
                calls.append((item, {}))
            elif isinstance(item, Mapping):
                calls.append(((), dict(item)))
            elif isinstance(item, Sequence) and not isinstance(item, str | bytes):
                calls.append((tuple(item), {}))
            else:
                raise InvalidOption(
                    "items", f"expected tuples of args or dicts of kwargs, found {item!r}"
                )
        return await self._host.add_calls(self, task, calls, tx=tx)

    def statistics(self) -> PoolStatistics:
        now = self._host.clock.now()
        oldest = self.queue.oldest_due(now)
        read = self.stored_oldest
        if read is not None and now - read[0] <= STORED_OLDEST_FOR and read[1] is not None:
            if oldest is None or read[1] < oldest:
                oldest = read[1]  # note 10
        return PoolStatistics(
            latency=now - oldest if oldest is not None else 0.0,
            name=self.name,
            concurrency=self.concurrency,
            capacity=self.capacity,
            waiting=self.waiting,
            running=len(self._running),
            paused=self.paused,
            processed=self.processed,
            failed=self.failed,
            rate=None if self.rate is None else self.rate.text,
            next_slot=self.next_slot(now),
        )

    def next_slot(self, now: float) -> float:
        """Seconds until the pool's rate limit lets a job start (0: now, or no limit)."""
        if not self.queue.gated:
            return self.queue.next_slot(now)  # the bucket every node shares
        bucket = self._bucket
        return 0.0 if bucket is None else bucket.wait(now)

    def running_jobs(self) -> list[tuple[int, str]]:
        """(job id, task name) of the jobs running now; copies first, so another thread may call it."""
        return [(s.id, s.task) for s in list(self._running.values())]

    @property
    def waiting(self) -> int:
        """WAITING jobs of the pool, in memory or not: the store's count, less the
        jobs starting and plus those retried whose rows are not committed yet."""
        return max(0, self._host.counted(self.name) - len(self._starting) + self._requeuing)

    @property
    def running(self) -> int:
        return len(self._running)

    def set_concurrency(self, concurrency: int) -> None:
        _check_limits(concurrency, self.capacity)
        self.concurrency = concurrency
        if self._workers is not None and self.processes:
            self._workers.resize(concurrency)
        self._dispatch()

    def set_processes(self, processes: bool) -> None:
        """Run the sync handlers of jobs that start from now on in worker processes
        (True) or threads (False); running jobs finish where they are (note 7)."""
        _check_processes(processes)
        self.processes = processes
        if self._workers is not None:
            self._workers.resize(self.concurrency if processes else 0)

    def set_rate(self, rate: Rate | str | None) -> None:
        """At most so many starts per unit of time (``"10/s"``), or None: no limit."""
        self.rate = parse_rate(rate)
        if self.rate is None:
            self._bucket = None
        elif self._bucket is None:
            self._bucket = Bucket(self.rate, self._host.clock.now())
        else:
            self._bucket.change(self.rate)
        self._dispatch()

    def set_capacity(self, capacity: int | None) -> None:
        _check_limits(self.concurrency, capacity)
        self.capacity = capacity

    def pause(self) -> None:
        """Stop starting jobs (running ones go on); ``add`` still accepts."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._dispatch()

    # -- queueing (note 1) ------------------------------------------------------

    def push(self, state: JobState) -> None:
        """A job is waiting (added, retried, taken in): queue it, start it if a slot is free."""
        self._queue(state)
        self._dispatch()

    def push_all(self, states: list[JobState]) -> None:
        """Jobs just added (an ``add_many``): queue them all, then fill the free slots."""
        self.queue.push_many(states)
        self._dispatch()

    def _queue(self, state: JobState) -> None:
        written = state.written
        if written is not None and not written.done():
            # A retry: waiting already, though the store counts it once its row commits.
            self._requeuing += 1
            written.add_done_callback(self._requeued)
        self.queue.push(state)

    def _requeued(self, _: asyncio.Future[None]) -> None:
        self._requeuing -= 1

    def remove(self, state: JobState) -> bool:
        """Take a waiting job out of memory (cancel, run now); False if it was not there."""
        return self.queue.remove(state)

    def holds(self, state: JobState) -> bool:
        """Whether ``state`` waits in the pool's queue (in memory)."""
        return self.queue.holds(state)

    def poke(self, *, stored: bool = False) -> None:
        """Jobs of the pool may be due in the store (added by another process);
        ``stored``: this process stored some WAITING (``taskrt.claims`` note 4)."""
        self.queue.poke(stored=stored)

    def free_slots(self) -> int:
        """Jobs the pool could start now (0 while paused or stopping, or while a job
        runs alone in the process or waits to: ``taskrt.alone``)."""
        if self.paused or self._stopping or not self._host.running or self._host.alone.blocks():
            return 0
        return max(0, self.concurrency - len(self._running) - self._held - self._kept)

    def keep(self, n: int) -> int:
        """Keep up to ``n`` free slots for jobs being added that may start in their
        own add (note 9); how many were kept."""
        if self._gated():
            return 0  # the gates decide who starts: the queue's way
        kept = max(0, min(n, self.free_slots() - self.queue.ahead()))
        self._kept += kept
        return kept

    def release(self, n: int) -> None:
        """Slots kept by ``keep`` whose jobs were not stored started."""
        self._kept -= n
        if n:
            self._dispatch()

    def started_here(self, state: JobState) -> None:
        """A job whose add stored it RUNNING (note 9): it runs in the slot kept for
        it, or goes back to waiting if the pool stopped starting jobs meanwhile."""
        self._kept -= 1
        if self.free_slots() <= 0:  # paused or stopping (its slot was kept)
            self._host.give_back(state)
            return
        self._start(state)

    def _dispatch(self) -> None:
        """Start a runner for each free slot while jobs are ready (note 1)."""
        while (state := self._take()) is not None:
            self._start(state)
        self._arm()

    def _arm(self) -> None:
        """Dispatch again when the first delayed job comes due."""
        if self.paused or self._stopping or not self._host.running:
            return
        when = self.queue.next_due()
        # A job due already waits for a slot; the end of an attempt dispatches again.
        if when is not None and when > self._host.clock.now():
            self._timer.set(when)

    def _start(self, state: JobState) -> None:
        """A runner for ``state``, in a free slot."""
        charged = self._begin(state)
        task = asyncio.create_task(self._runner(state, charged), name=f"taskrt-{self.name}")
        task.add_done_callback(self._runner_ended)
        state.task_handle = task

    def _take(self) -> JobState | None:
        """The next ready job if a slot is free (``taskrt.waiting`` says which); a job
        whose deadline passed is not started but ends (note 6)."""
        if self.free_slots() == 0:
            return None
        if self._gated():
            return self._take_gated()
        while (state := self.queue.take()) is not None:
            if state.deadline is None or state.deadline > self._host.clock.now():
                if self._host.alone.may_start(state, self):
                    return state
                self.queue.put_back(state)  # it runs alone, once the process is empty
                return None
            self._host.deadline_passed(state)
        return None

    def give_back_taken(self) -> list[asyncio.Future[None]]:
        """Jobs taken from the store and not started go back (``taskrt.alone`` note 3)."""
        return self.queue.give_back_taken()

    def busy(self) -> bool:
        """Whether anything of this pool runs, or may start in an add (``taskrt.alone``)."""
        return bool(self._running) or self._held > 0 or self._kept > 0

    def _gated(self) -> bool:
        """Whether a rate limit or a lock may hold a job back here (note 8)."""
        return self.queue.gated and (self._bucket is not None or self._host.gates.in_use())

    def _take_gated(self) -> JobState | None:
        """``_take`` through the rate limits and locks (note 8, ``taskrt.gates``)."""
        clock = self._host.clock
        gates = self._host.gates
        now = clock.now()
        bucket = self._bucket
        if bucket is not None and not bucket.ready(now):
            # The pool's own limit: nothing starts; the next job in line says why.
            self.queue.take_first(self._rate_limited, 1)
            self._gate_timer.set(now + bucket.wait(now))
            return None
        retry_in: list[float] = []
        held_keys: set[str] = set()  # lock keys of jobs this scan passed over

        def admit(state: JobState) -> bool:
            if state.deadline is not None and state.deadline <= now:
                return True  # taken, to end (note 6)
            key = state.lock
            if key is not None and key in held_keys:
                # An earlier job of its key waits (a task's rate): in line (gates note 2).
                self._host.mark(state, "locked")
                return False
            wait = gates.admit(state, now)
            if wait is None:
                return self._host.alone.may_start(state, self)
            if key is not None:
                held_keys.add(key)
            if wait > 0:
                retry_in.append(wait)
            return False

        while (state := self.queue.take_first(admit, SCAN)) is not None:
            if state.deadline is not None and state.deadline <= now:
                self._host.deadline_passed(state)
                continue
            if bucket is not None:
                bucket.take(now)
            gates.started(state, now)
            return state
        if retry_in:
            self._gate_timer.set(now + min(retry_in))  # a task's next token
        return None

    def _rate_limited(self, state: JobState) -> bool:
        self._host.mark(state, "rate_limited")
        return False

    # -- running (notes 2-4) ------------------------------------------------------

    def _begin(self, state: JobState) -> asyncio.Future[None]:
        """Mark the job started; the future resolves once its attempt is charged on disk."""
        self._running[state.id] = state
        charged = self._host.started(state)
        job_id = state.id
        self._starting.add(job_id)
        charged.add_done_callback(lambda _: self._starting.discard(job_id))
        return charged

    async def _runner(self, state: JobState, charged: asyncio.Future[None]) -> None:
        """Run jobs one after another while there are any (note 2).

        A runner keeps its slot and takes the next ready job itself, so a busy
        pool does not create a task per job; it yields to the loop at least
        every ``_YIELD_EVERY`` seconds so that no-op jobs cannot starve it.
        """
        task = asyncio.current_task()
        assert task is not None
        last_yield = time.monotonic()
        while True:
            await self._execute(state, charged)
            if state.abandoned:
                return
            if task.cancelling():
                # A cancel or timeout aimed at the job that just ended must not
                # reach the next one: take back what is still pending.
                while task.uncancel():
                    pass
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0)
                while task.uncancel():
                    pass
                last_yield = time.monotonic()
            nxt = self._take()
            if nxt is None:
                # Its slot is free: a job that comes due later must wake the pool (the
                # alarm that rang while this runner was busy set nothing).
                self._arm()
                return
            state = nxt
            charged = self._begin(state)
            state.task_handle = task
            now = time.monotonic()
            if now - last_yield > _YIELD_EVERY:
                await asyncio.sleep(0)
                last_yield = now

    def _runner_ended(self, task: asyncio.Task[None]) -> None:
        """A runner that died holding a job (note 2) still ends that job's attempt.

        A cancel or timeout that reaches a runner before its first step (the
        loop had not run it yet) ends it without running any of its code.
        """
        error = None if task.cancelled() else task.exception()
        if not task.cancelled() and error is None:
            return
        if error is not None:  # a fault of taskrt's (note 12): never silent
            log.error("a runner of pool %r failed", self.name, exc_info=error)
        for state in [s for s in self._running.values() if s.task_handle is task]:
            if state.cancel_requested or state.timed_out or state.shutdown:
                outcome = self._interrupted(state)
            else:
                outcome = Outcome("error", error=error or asyncio.CancelledError())
            self._finish(state, outcome)
        self._dispatch()

    async def _execute(self, state: JobState, charged: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        timeout = state.timeout
        if state.deadline is not None:
            left = max(0.0, state.deadline - self._host.clock.now())
            if timeout is None or left < timeout:
                timeout = left  # the deadline cuts the attempt like a timeout (note 6)
        outcome: Outcome
        instrumentation = self._host.instrumentation
        result_json: str | None = None
        returned = False  # the handler returned; what raises now is the check (note 11)
        try:
            # The attempt is charged on disk before the handler runs (note 5). The
            # future is this start's own (``groupcommit.Batch.started``): awaited as it
            # is, it wakes the runner in the loop's turn after the commit (a shield
            # around a future the batch shared took a turn more, at every batch).
            await charged
            if self._host.alone.running is state:
                await self._host.alone.settled()  # alone note 3
            if state.unstarted:
                # Its start changed no row: another process changed the job first
                # (store note 20). Not run; the store's row is taken in instead.
                self._running.pop(state.id, None)
                state.task_handle = None
                self._release_lock(state)
                self._host.not_started(state)
                self._host.alone.ended(state)  # a lone job that did not start frees the rest
                return
            # Counted RUNNING now: no longer starting, even if the callback above has
            # not run yet (a commit on the loop's thread resolves before it runs).
            self._starting.discard(state.id)
            if timeout is not None:
                state.watchdog = loop.call_later(timeout, self._expire, state)
            if instrumentation is None:
                result = await self._call(state, loop)
            else:  # e.g. a tracing span around the attempt (taskrt.tracing)
                with instrumentation.attempt(state):
                    result = await self._call(state, loop)
                    returned = True
                    if not (state.timed_out or state.cancel_requested or state.shutdown):
                        result_json = encode_result(result, self._host.limits)  # note 11
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not (state.cancel_requested or state.timed_out or state.shutdown):
                raise
            if task is not None:
                task.uncancel()
            outcome = self._interrupted(state)
        except BaseException as exc:  # CancelledError is the clause above's
            # Whatever a handler raises fails its attempt, as in a worker process
            # (notes 7, 12): its SystemExit or KeyboardInterrupt must not stop the
            # runtime's event loop, nor its GeneratorExit end the runner.
            if state.timed_out or state.cancel_requested or state.shutdown:
                outcome = self._interrupted(state)
            else:
                # A result refused (note 11) has no traceback to keep: not the handler's.
                tb = None if returned else _format_tb(exc)
                outcome = Outcome("error", error=exc, tb=tb)
        else:
            if state.timed_out or state.cancel_requested or state.shutdown:
                # The handler swallowed the cancellation: it is still what we asked.
                outcome = self._interrupted(state)
            else:
                outcome = Outcome("success", result=result, result_json=result_json)
        finally:
            if state.watchdog is not None:
                state.watchdog.cancel()
                state.watchdog = None
        if state.abandoned:
            self._hold_lock(state, False)
            self._release_lock(state)  # its coroutine returned at last (gates note 4)
            self._release_held()
            return
        self._finish(state, outcome)

    def _interrupted(self, state: JobState) -> Outcome:
        """What an attempt the runtime stopped ended as: a cancel wins (note 3); a
        cancelled attempt that timed out first carries its timeout as its error."""
        timeout = None
        if state.timed_out:
            from .errors import JobTimeout

            timeout = JobTimeout(state.id, state.timeout or 0.0)
        if state.cancel_requested:
            return Outcome("cancelled", error=timeout)
        if timeout is not None:
            return Outcome("timeout", error=timeout)
        return Outcome("shutdown")

    def _finish(self, state: JobState, outcome: Outcome) -> None:
        """Record how the attempt ended; the runner (not this) takes the next job."""
        self._running.pop(state.id, None)
        state.task_handle = None
        if not state.abandoned and state not in self._lingering:
            self._release_lock(state)  # else when its coroutine or thread returns
        self._host.attempt_ended(state, outcome)
        # Counted as it ended: a result that could not be stored made it an error; a
        # cancelled attempt that timed out first (note 3) timed out.
        if outcome.kind == "success":
            self.processed += 1
        elif outcome.kind in ("error", "timeout") or outcome.error is not None:
            self.failed += 1

    async def _call(self, state: JobState, loop: asyncio.AbstractEventLoop) -> Any:
        spec = state.spec
        info = state
        is_async = _ASYNC.get(spec.handler)
        if is_async is None:
            is_async = _ASYNC[spec.handler] = spec.is_async
        if not is_async and self.processes:
            return await self._process_workers().run(state)  # note 7
        first: tuple[Any, ...]
        if spec.call == "context":
            first = (JobContext(self._host, state, loop),)
        elif spec.call == "id":
            first = (info.id,)
        else:
            first = ()
        if is_async:
            token = CURRENT_ATTEMPT.set(state)
            try:
                return await spec.handler(*first, *info.args, **info.kwargs)
            finally:
                CURRENT_ATTEMPT.reset(token)
        return await self._call_in_thread(state, loop, first)

    def _process_workers(self) -> Workers:
        if self._workers is None:
            host = self._host
            self._workers = Workers(
                self.name, self.concurrency, host.report, host.limits, host.abandon_after
            )
        return self._workers

    async def _call_in_thread(
        self, state: JobState, loop: asyncio.AbstractEventLoop, first: tuple[Any, ...]
    ) -> Any:
        info = state
        ctx = contextvars.copy_context()
        ctx.run(CURRENT_ATTEMPT.set, state)
        call = functools.partial(
            ctx.run, in_thread, "the handler", state.spec.handler, *first, *info.args, **info.kwargs
        )
        cfut = self._thread_pool().submit(call)
        try:
            result = await asyncio.wrap_future(cfut)
        except asyncio.CancelledError:
            if not cfut.done():
                # The thread runs on: its slot (and its lock) stay taken until it returns.
                self._held += 1
                self._lingering.add(state)
                self._hold_lock(state, True)  # before the attempt's end is queued
                cfut.add_done_callback(lambda _: _tell(loop, self._thread_returned, state))
            raise
        if inspect.isawaitable(result):
            return await result
        return result

    def _thread_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None or self._executor_size < self.concurrency:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            self._executor_size = self.concurrency
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=f"taskrt-{self.name}"
            )
        return self._executor

    def _release_held(self) -> None:
        self._held = max(0, self._held - 1)  # 0 after a close: that pool started afresh
        self._dispatch()

    def _thread_returned(self, state: JobState) -> None:
        """The thread of an attempt that was cut short returned (note 4); one of a
        run before the pool closed holds nothing of this run's."""
        if state not in self._lingering:
            return
        self._lingering.remove(state)
        self._hold_lock(state, False)
        self._release_lock(state)
        self._release_held()

    def _hold_lock(self, state: JobState, held: bool) -> None:
        """A handler runs on past its attempt's end, or returned at last: where the
        store's claims apply locks (``Queue.gated`` false), its key is held there
        meanwhile, as ``Gates`` holds it in memory (``taskrt.gates`` note 4)."""
        if state.lock is not None and not self.queue.gated:
            self._host.hold_lock(state, held)

    def _release_lock(self, state: JobState) -> None:
        """The attempt no longer runs: its lock key is free (``taskrt.gates`` note 4)."""
        if state.lock is not None and (not self.queue.gated or self._host.gates.ended(state)):
            self._host.lock_released()  # jobs waiting on it may start

    def _expire(self, state: JobState) -> None:
        state.watchdog = None
        state.timed_out = True
        self._interrupt(state)

    def cancel_running(self, state: JobState) -> None:
        told = state.timed_out or state.cancel_requested or state.shutdown
        state.cancel_requested = True
        if state.watchdog is not None:
            # The cancel came first: the attempt's timeout no longer applies (note 3).
            state.watchdog.cancel()
            state.watchdog = None
        if not told:  # else its handler is stopping already: its cleanup is not cut short
            self._interrupt(state)

    def _interrupt(self, state: JobState) -> None:
        task = state.task_handle
        if task is None or task.done():
            return
        task.cancel()
        loop = asyncio.get_running_loop()
        loop.call_later(self._host.abandon_after, self._abandon, state, task)

    def _abandon(self, state: JobState, task: asyncio.Task[None]) -> None:
        """The handler ignored cancellation: mark the job now, keep the slot (note 3)."""
        if task.done() or state.task_handle is not task:
            return
        state.abandoned = True
        self._held += 1
        self._hold_lock(state, True)  # before the attempt's end is queued
        self._finish(state, self._interrupted(state))

    # -- shutdown ----------------------------------------------------------------

    def stop_dispatching(self) -> None:
        self._stopping = True
        self._timer.cancel()

    def running_tasks(self) -> list[asyncio.Task[None]]:
        return [s.task_handle for s in self._running.values() if s.task_handle is not None]

    def interrupt_all_for_shutdown(self) -> None:
        for state in list(self._running.values()):
            state.shutdown = True
            task = state.task_handle
            if task is not None and not task.done():
                task.cancel()

    def abandon_stubborn(self) -> None:
        """After the shutdown's cancel and ``abandon_after`` seconds: a handler still
        running ignored it, and its job is written back now as a cut-short attempt
        (WAITING, not charged), its coroutine left to end on its own (note 3). Before,
        nothing ended it: the stop left it RUNNING on disk, the next start counted a
        crash, and a few clean restarts failed it as orphaned."""
        for state in list(self._running.values()):
            task = state.task_handle
            if task is not None and not task.done():
                self._abandon(state, task)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._workers is not None:
            self._workers.close()  # every child killed and reaped (processes note 8)
        self.queue.close()
        self._stopping = False
        # Threads of attempts cut short may run on past the close: a pool started
        # again has its slots (their return is ignored, ``_thread_returned``).
        self._held = 0
        self._lingering.clear()


def _tell(
    loop: asyncio.AbstractEventLoop, callback: Callable[[JobState], None], state: JobState
) -> None:
    """From a handler's thread: ``callback(state)`` on the loop, if it still runs (a
    thread may return after the runtime stopped and its loop closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, state)


def _check_limits(concurrency: Any, capacity: Any) -> None:
    # Up to a 64-bit integer, as the pool's stored settings and the HTTP API take them.
    if not _positive_int64(concurrency):
        raise InvalidOption(
            "concurrency", f"expected an integer from 1 to {INT64_MAX}, found {shown(concurrency)}"
        )
    if capacity is not None and not _positive_int64(capacity):
        raise InvalidOption(
            "capacity",
            f"expected an integer from 1 to {INT64_MAX} or None, found {shown(capacity)}",
        )


def _positive_int64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= INT64_MAX


def check_settings(
    concurrency: Any = None, capacity: Any = None, processes: Any = None, rate: Any = None
) -> None:
    """Refuse bad pool settings before any of them is applied (``None``: not given),
    so that a call refused for one leaves the pool as it was."""
    if concurrency is not None or capacity is not None:
        _check_limits(1 if concurrency is None else concurrency, capacity)
    if processes is not None:
        _check_processes(processes)
    if rate is not None:
        parse_rate(rate)


def _check_processes(processes: Any) -> None:
    check_flag(processes, "processes")


def _format_tb(exc: BaseException) -> str | None:
    """The traceback stored with an attempt's error; never raises (note 12)."""
    if is_error(exc, Crossed):
        return cast(Crossed, exc).remote_traceback  # the worker process's own (note 7)
    return format_traceback(exc)


__all__ = ["DEFAULT_CONCURRENCY", "JobStatus", "Outcome", "Pool", "check_settings"]
