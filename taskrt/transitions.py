"""Job transitions: start, progress, attempt end, retry, final state, hooks.

``Transitions`` is what the pools call while jobs run. Every transition changes
the in-memory ``JobState`` first, publishes its event (built only when someone
listens) and queues its write; terminal writes are never coalesced (runtime
note 2). What raises while an attempt is ended still ends its job: FAILURE,
naming what went wrong, never RUNNING for good (``taskrt.pool`` note 12).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .background import Background, hook_failed, job_logger
from .context import JobState
from .definitions import TaskSpec, is_async
from .errors import (
    Fatal,
    InvalidOption,
    Retry,
    SerializationError,
    StoreUnavailable,
    describe_error,
    format_traceback,
    in_thread,
)
from .history import FLUSH_AFTER, MinuteCounts
from .limits import MAX_STEPS, safe_text
from .live import LiveJobs
from .models import STATUS_EVENT, AttemptOutcome, Event, EventType, JobInfo, JobStatus
from .pool import Outcome, encode_result
from .retry import RetryPolicy, parse_retry
from .store.deps import orphan_error
from .store.groupcommit import ROLLBACK_RETRIES, ROLLBACK_WAIT
from .transaction import ThreadTransaction, Transaction, opened

if TYPE_CHECKING:
    from .clock import Clock
    from .counters import Counters
    from .events import EventBus
    from .limits import Limits
    from .pool import Pool
    from .store import JobStore
    from .store.protocol import BlockedAgain, CancelledChild

log = logging.getLogger("taskrt")

DEADLINE_PASSED = "deadline passed"
"""The error of a job that its deadline ended (``options(deadline=...)``)."""
_LATE = 0.005  # a timer may fire this much before the clock reads its time


class _RolledBack(Exception):
    """The database rolled an ``on_failed`` transaction back on its own (raised from
    the driver's error): it runs again, whole."""


DEFAULT_HOOK_TIMEOUT = 10.0
"""Seconds an ``on_failed`` hook may run (``Runtime(hook_timeout=...)``)."""


class _HookTimedOut(Exception):
    """An ``on_failed`` hook ran past ``hook_timeout``."""


class _HookRaised(Exception):
    """An ``on_failed`` hook raised what is no ``Exception`` (SystemExit, a CancelledError
    of its own...): its failure all the same (``background.hook_failed``), what it
    raised the cause."""


class _NotOurs(Exception):
    """An ``on_failed`` transaction's failure moved no row: the job is not where this
    process believed (another process ended it, or took it back from a node taken
    for dead). The transaction is rolled back: its hook does not run."""


class Transitions:
    """What happens to a job while it runs; the pools call it (see the module notes)."""

    def __init__(
        self,
        *,
        store: JobStore,
        broker: EventBus,
        clock: Clock,
        counters: Counters,
        limits: Limits,
        live: LiveJobs,
        pools: Mapping[str, Pool],
        background: Background,
        schedule_failed: Callable[[Mapping[str, Any]], None],
    ) -> None:
        self.store = store
        self.broker = broker
        self.clock = clock
        self.counters = counters
        self.limits = limits
        self.live = live
        self.pools = pools
        self.background = background
        self.schedule_failed = schedule_failed
        # Seconds an ``on_failed`` hook may run in the failure's transaction.
        self.hook_timeout = DEFAULT_HOOK_TIMEOUT
        # What finished, per minute (taskrt.history), handed to the store each second.
        self.history = MinuteCounts()
        self._history_timer: asyncio.TimerHandle | None = None
        # Told of each job that reached a terminal status here (taskrt.workflows).
        self.on_end: Callable[[int, JobStatus], None] | None = None
        # Takes in the jobs an ``on_failed`` hook added with ``tx=`` once they commit.
        self.take_in: Callable[[Transaction], None] = lambda tx: None
        # The failures under way here in a transaction of their own (an ``on_failed``
        # hook's), by job: done once it committed or gave up (``failure_written``).
        self._failing: dict[int, asyncio.Future[None]] = {}

    def emit(self, state: JobState, kind: EventType, data: dict[str, Any]) -> int:
        """Advance the job's sequence and publish (only built when someone listens)."""
        seq = state.next_seq()
        self._publish(state, kind, data, seq)
        return seq

    def _publish(self, state: JobState, kind: EventType, data: dict[str, Any], seq: int) -> None:
        self.announce(state.id, state.task, state.pool, kind, state.status, seq, data)

    def announce(
        self,
        job_id: int,
        task: str,
        pool: str,
        kind: EventType,
        status: JobStatus,
        seq: int,
        data: dict[str, Any],
    ) -> None:
        """Publish an event of a job at ``seq`` (built only when someone listens); also
        of a change the store made of a job no memory holds (``taskrt.nodes`` note 6)."""
        if self.broker.wants(job_id):
            self.broker.publish(
                Event(job_id, seq, kind, task, pool, status, self.clock.now(), data)
            )

    def ended_here(self, job_id: int, task: str, pool: str, status: JobStatus, seq: int) -> None:
        """A job this process ended in the store alone (no memory here holds it: a
        waiting job where every node claims, ``taskrt.nodes`` note 6, or one a
        process that does not own it cancelled): counted in the history and the
        metrics, as an end in memory is, and its event told."""
        self.counters.finished[task, status] += 1
        self._count(self.clock.now(), pool, task, _OUTCOME[status], None)
        self.announce(job_id, task, pool, STATUS_EVENT[status], status, seq, {})

    def started(self, state: JobState) -> asyncio.Future[None]:
        if state.status is JobStatus.RUNNING:
            # Claimed (taskrt.claims), or started by its add (taskrt.pool note 9): the
            # store has it RUNNING, attempt and sequence included; only the event is left.
            self._publish(state, EventType.STARTED, {"attempt": state.attempts}, state.seq)
            charged = asyncio.get_running_loop().create_future()
            charged.set_result(None)
            return charged
        now = self.clock.now()
        attempt = state.attempts + 1
        state.status = JobStatus.RUNNING
        state.attempts = attempt
        state.started_at = now
        state.finished_at = None
        state.error_before = state.error
        state.error = None  # as the start's row says: the last error is its attempt's
        state.waiting_reason = None
        state.snapshot = None
        seq = self.emit(state, EventType.STARTED, {"attempt": attempt})
        return self.store.start(state.id, attempt, now, seq, pool=state.pool)

    def report(
        self,
        state: JobState,
        current: float,
        total: float | None,
        message: str | None,
        step: str | None = None,
    ) -> None:
        """Progress: state in memory, an event, a coalesced write (never waits)."""
        if state.status is not JobStatus.RUNNING or state.abandoned:
            return
        if self.live.states.get(state.id) is not state:
            # An attempt cut short whose handler runs on, its job retried meanwhile (a
            # fresh state): its reports are the past's, and its numbers are not the job's.
            return
        if step is not None and not self._step(state, step, current, total):
            return  # past MAX_STEPS: the report is ignored, whole
        state.current = current
        if total is not None:
            state.total = total
        if message is not None:
            state.message = message
        info = state
        seq = state.seq = state.seq + 1
        if self.broker.wants(info.id):
            data = {"current": current, "total": state.total, "message": state.message}
            if state.steps:
                data["step"] = state.step
                data["steps"] = list(state.steps)
            self.broker.publish(
                Event(
                    info.id,
                    seq,
                    EventType.PROGRESS,
                    info.task,
                    info.pool,
                    JobStatus.RUNNING,
                    self.clock.now(),
                    data,
                )
            )
        self.store.progress(
            info.id,
            current,
            state.total,
            state.message,
            seq,
            steps=(state.step, state.steps) if state.steps else None,
        )
        hook = state.spec.hooks.on_progress
        if hook is not None:
            self.background.hook(hook, info.id, current, state.total, state.message, job=state)

    def _step(self, state: JobState, step: str, current: float, total: float | None) -> bool:
        """Record the step of a report; False (and a warning) past ``MAX_STEPS`` steps."""
        steps = list(state.steps)
        for i, seen in enumerate(steps):
            if seen["name"] == step:
                total = seen["total"] if total is None else total
                steps[i] = {"name": step, "current": current, "total": total}
                break
        else:
            if len(steps) >= MAX_STEPS:
                job_logger(state).warning(
                    "job %d reported more than %d steps; step %r ignored", state.id, MAX_STEPS, step
                )
                return False
            steps.append({"name": step, "current": current, "total": total or 0})
        state.step = step
        state.steps = tuple(steps)
        state.snapshot = None
        return True

    def report_by_id(
        self,
        job_id: int,
        current: float,
        total: float | None,
        message: str | None,
        step: str | None = None,
    ) -> None:
        """``report`` for a job known by id (a report handed over from another thread,
        which saw the job running: one that ended in between is logged and dropped)."""
        state = self.live.states.get(job_id)
        if state is not None and state.status is JobStatus.RUNNING:
            self.report(state, current, total, message, step)
        else:
            log.warning("progress for job %d ignored: it is not running here", job_id)

    def _record_attempt(
        self,
        state: JobState,
        outcome: AttemptOutcome,
        error: str | None = None,
        tb: str | None = None,
        *,
        retry_at: float | None = None,
    ) -> None:
        """The attempt counted, and its one row written when it ends (store note 7);
        a success has none: the job's SUCCESS row (its attempts, start and end) is
        its record, which the store's reads of attempts give."""
        now = self.clock.now()
        started = state.started_at or now
        self.counters.attempts[state.task, outcome.value].observe(now - started)
        if outcome is AttemptOutcome.TIMEOUT:
            self.counters.timeouts[state.task] += 1
        elif outcome is AttemptOutcome.SUCCESS:
            return
        self.store.record_attempt(
            state.id, state.attempts, started, now, outcome, error, tb, retry_at=retry_at
        )

    def attempt_ended(self, state: JobState, outcome: Outcome) -> None:
        """An attempt ended (its pool no longer counts it running): SUCCESS, a retry, or
        a final state. Whatever raises on the way still ends the job (``_end_anyway``):
        none is left RUNNING with no attempt under way, and the runtime goes on."""
        try:
            self._attempt_ended(state, outcome)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            self._end_anyway(state, outcome, exc)

    def _end_anyway(self, state: JobState, outcome: Outcome, exc: BaseException) -> None:
        """Ending an attempt raised ``exc``: a fault of taskrt's, or code of a handler's
        value that taskrt did not expect to raise. A job still RUNNING here fails,
        naming what went wrong (the pool counts it failed); one that reached its
        next status before ``exc`` keeps it (pool note 12)."""
        why = safe_text(
            f"the attempt could not be ended: {describe_error(exc)}", self.limits.max_error_bytes
        )
        job_log = job_logger(state)
        job_log.error("job %d: %s", state.id, why, exc_info=exc)
        if state.status is not JobStatus.RUNNING or self.live.states.get(state.id) is not state:
            return
        outcome.kind, outcome.error, outcome.result = "error", exc, None
        try:
            tb = safe_text(format_traceback(exc), self.limits.max_error_bytes)
            self._record_attempt(state, AttemptOutcome.ERROR, why, tb)
            self._fail(state, why)
        except (Exception, SystemExit, KeyboardInterrupt):
            job_log.exception(
                "job %d could not be failed either; it stays RUNNING until a restart recovers it",
                state.id,
            )

    def _attempt_ended(self, state: JobState, outcome: Outcome) -> None:
        attempt = state.attempts
        if outcome.kind == "success":
            try:
                result_json = outcome.result_json  # encoded by the pool (pool note 11)
                if result_json is None:
                    result_json = encode_result(outcome.result, self.limits)
            except SerializationError as exc:
                # The attempt failed after all: the caller's outcome says so too (the
                # pool counts it as failed, not processed).
                outcome.kind, outcome.error, outcome.result = "error", exc, None
            else:
                self._record_attempt(state, AttemptOutcome.SUCCESS)
                result = outcome.result
                if result_json is not None and type(result) not in _SCALARS:
                    result = json.loads(result_json)  # what a read from disk will give
                self.finalize(state, JobStatus.SUCCESS, {"result": result}, result_json=result_json)
                return
        if outcome.kind == "shutdown":
            # Not the job's fault: back to WAITING without charging the attempt.
            self._record_attempt(state, AttemptOutcome.INTERRUPTED, "the runtime stopped")
            self.unstart(state)
            self.live.states.pop(state.id, None)
            return
        if outcome.kind == "cancelled":
            if outcome.error is None:
                self._record_attempt(state, AttemptOutcome.CANCELLED, "cancelled")
            else:  # it timed out first, then its cancel came: no retry (pool note 3)
                timed_out = safe_text(describe_error(outcome.error), self.limits.max_error_bytes)
                self._record_attempt(state, AttemptOutcome.TIMEOUT, timed_out)
            self.finalize(state, JobStatus.CANCELLED, {})
            return
        failure = outcome.error
        assert failure is not None
        error = safe_text(describe_error(failure), self.limits.max_error_bytes)
        tb = None if outcome.tb is None else safe_text(outcome.tb, self.limits.max_error_bytes)
        record = not (isinstance(failure, Retry) and not failure.record_error)
        if outcome.kind == "timeout":
            kind = AttemptOutcome.TIMEOUT
        else:
            kind = AttemptOutcome.ERROR if record else AttemptOutcome.RETRY
        job_log = job_logger(state)
        deadline = state.deadline
        if (
            deadline is not None
            and outcome.kind == "timeout"
            and self.clock.now() >= deadline - _LATE
        ):
            # The deadline cut the attempt (pool note 6): no retry.
            self._record_attempt(state, kind, DEADLINE_PASSED)
            job_log.warning("job %d failed: %s", state.id, DEADLINE_PASSED)
            self._fail(state, DEADLINE_PASSED)
            return
        max_attempts = state.max_attempts
        spent = max_attempts is not None and attempt >= max_attempts
        # A retry asked for without an error (``Retry(record_error=False)``) keeps the
        # error an attempt recorded last as the job's, and so does the failure when
        # the attempts are spent, rather than the retry's own "retry requested".
        final = error if record else (state.error_before or error)
        if isinstance(failure, Fatal) or spent:
            self._record_attempt(state, kind, error if record else None, tb if record else None)
            job_log.warning("job %d failed: %s", state.id, final)
            self._fail(state, final)
            return
        if isinstance(failure, Retry) and failure.delay is not None:
            delay = failure.delay
        else:
            delay = state.retry.delay(attempt)
        if deadline is not None and self.clock.now() + delay >= deadline:
            # The next attempt would start after the deadline: it ends now instead.
            self._record_attempt(state, kind, error if record else None, tb if record else None)
            why = safe_text(
                f"{DEADLINE_PASSED} before the next attempt: {final}", self.limits.max_error_bytes
            )
            job_log.warning("job %d failed: %s", state.id, why)
            self._fail(state, why)
            return
        job_log.info(
            "job %d attempt %d failed, retrying in %.3gs: %s",
            state.id,
            attempt,
            delay,
            error,
        )
        self.counters.retries[state.task] += 1
        run_at = self.clock.now() + delay
        self._count(self.clock.now(), state.pool, state.task, "retried")
        self._record_attempt(
            state, kind, error if record else None, tb if record else None, retry_at=run_at
        )
        keep = error if record else state.error_before
        if state.timed_out:
            # The timed-out attempt may still run (abandoned, pool note 3): the next
            # attempt gets a fresh state so that none of this attempt's flags leak into it.
            state = self.live.states[state.id] = JobState(state.info(), state.spec, state.retry)
        state.update(status=JobStatus.WAITING, run_at=run_at, error=keep, started_at=None)
        self.emit(
            state,
            EventType.RETRYING,
            {"attempt": attempt, "error": error if record else None, "run_at": run_at},
        )
        self.write_waiting(state)
        self.pools[state.pool].push(state)

    def mark(self, state: JobState, reason: str | None) -> None:
        """Why a waiting job waits (``taskrt.gates`` note 3): in memory, and written
        once per change (its start clears it in the store)."""
        if state.waiting_reason != reason:
            state.waiting_reason = reason
            state.snapshot = None
            self.store.waiting_reason(state.id, reason)

    def deadline_passed(self, state: JobState) -> None:
        """A job taken to start after its deadline: FAILURE, never retried (pool note 6).
        Once: the pool and the sweeper may both find the same state (an ``on_failed``
        failure is still WAITING here until its transaction runs)."""
        if state.ending:
            return
        state.ending = True
        job_logger(state).warning("job %d failed: its deadline passed before it started", state.id)
        if state.status is JobStatus.RUNNING:
            # Claimed (taskrt.claims): the claim charged an attempt; it is recorded.
            self._record_attempt(state, AttemptOutcome.ERROR, DEADLINE_PASSED)
        self._fail(state, DEADLINE_PASSED)

    def _count(
        self, at: float, pool: str, task: str, outcome: str, duration: float | None = None
    ) -> None:
        """Into the minute's history; handed to the store within ``FLUSH_AFTER`` s."""
        self.history.add(at, pool, task, outcome, duration)
        if self._history_timer is None:
            loop = asyncio.get_running_loop()
            self._history_timer = loop.call_later(FLUSH_AFTER, self.flush_history)

    def flush_history(self) -> asyncio.Future[None]:
        """Hand what the history gathered to the store (queued with the next batch)."""
        if self._history_timer is not None:
            self._history_timer.cancel()
            self._history_timer = None
        return self.store.record_minutes(self.history.drain())

    def unstart(self, state: JobState) -> asyncio.Future[None]:
        """A started job WAITING again, its attempt not charged (a shutdown, a start
        its pool gives back); its row queued."""
        state.update(status=JobStatus.WAITING, attempts=state.attempts - 1, started_at=None)
        return self.write_waiting(state)

    def write_waiting(
        self, state: JobState, *, was: JobStatus = JobStatus.RUNNING
    ) -> asyncio.Future[None]:
        """Queue the job's WAITING row (``was``: its status in the database until then)."""
        fut = state.written = self.store.requeue(
            state.id,
            state.run_at,
            state.error,
            state.seq,
            state.attempts,
            state.max_attempts,
            (state.current, state.total, state.message),
            pool=state.pool,
            was=was,
        )
        return fut

    def fail_orphan(self, state: JobState) -> None:
        """A job a recovery left RUNNING after ``max_recoveries`` (store note 22):
        FAILURE as orphaned, its ``on_failed`` hook in the failure's transaction."""
        self._fail(state, orphan_error(state.recoveries + 1))

    async def end_as_read(self, state: JobState) -> bool:
        """A waiting job past its deadline that no node holds (mode "nodes"), read
        from the store into ``state``: FAILURE only if its row is still WAITING as
        read, its ``on_failed`` hook in that transaction; whether it landed. Only
        then is the end told (event, counts, hooks): a claim that took the job
        first ends it instead (``taskrt.deadlines`` note 3)."""
        state.ending = True
        return await self._fail_in_transaction(
            state, DEADLINE_PASSED, state.spec.hooks.on_failed, as_read=True
        )

    def _fail(self, state: JobState, error: str) -> None:
        hook = state.spec.hooks.on_failed
        if hook is None:
            self.finalize(state, JobStatus.FAILURE, {"error": error}, error=error)
            return
        self.background.spawn(self._fail_in_transaction(state, error, hook))

    async def failure_written(self, job_id: int) -> None:
        """Once the failure of ``job_id`` under way here in its own transaction (its
        ``on_failed`` hook's) has committed, or given up; at once if none is.

        Memory says FAILURE while that transaction runs, and the row is RUNNING
        until it commits. On SQLite the transaction holds the one writer, so any
        write queued meanwhile waits for it; on PostgreSQL it runs beside the
        group commit, and a retry must wait for it here (``Runtime.retry``)."""
        done = self._failing.get(job_id)
        if done is not None:
            await asyncio.shield(done)  # a cancelled caller leaves it to the others

    async def _fail_in_transaction(
        self,
        state: JobState,
        error: str,
        hook: Callable[..., Any] | None,
        *,
        as_read: bool = False,
    ) -> bool:
        """Write FAILURE and run ``on_failed(job, tx)`` in one transaction; whether
        it landed (``as_read``: only on the row as read, ``end_as_read``). Until it
        is done, ``failure_written`` waits for it."""
        done = self._failing[state.id] = asyncio.get_running_loop().create_future()
        try:
            return await self._write_failure(state, error, hook, as_read=as_read)
        finally:
            if self._failing.get(state.id) is done:
                del self._failing[state.id]
            done.set_result(None)

    async def _write_failure(
        self,
        state: JobState,
        error: str,
        hook: Callable[..., Any] | None,
        *,
        as_read: bool,
    ) -> bool:
        """``_fail_in_transaction``'s body."""
        await self.store.flush()  # earlier writes of this job first
        now = self.clock.now()
        was = state.status  # RUNNING, or WAITING (its deadline passed)
        state.update(status=JobStatus.FAILURE, error=error, finished_at=now)
        info = state.info()
        delay = 0.02
        rollbacks = 0
        while True:
            try:
                again = rollbacks < ROLLBACK_RETRIES
                await self._fail_with_hook(
                    state, error, now, info, hook, was, again=again, as_read=as_read
                )
                break
            except _RolledBack as exc:
                # Not the hook's fault: the failure and the hook run again, whole.
                rollbacks += 1
                job_logger(info).warning(
                    "the on_failed transaction of job %d was rolled back by the database "
                    "(%s); running it again",
                    info.id,
                    exc.__cause__,
                )
                await asyncio.sleep(ROLLBACK_WAIT * 2**rollbacks * (0.5 + random.random()))
            except _NotOurs:
                if as_read:  # claimed, ended or changed since it was read: not ours
                    return False
                job_logger(info).warning(
                    "the failure of job %d was not written: the job is no longer %s here "
                    "(another process has it); its on_failed hook did not run",
                    info.id,
                    was.value,
                )
                return False
            except StoreUnavailable:
                # Never drop a state (store note 9): the database will take it later.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception:  # StoreError, or a fault of taskrt's: the job ends all the same
                if as_read:
                    # Nothing landed, nothing is told: the next sweep looks again.
                    job_logger(info).exception("ending job %d past its deadline failed", info.id)
                    return False
                job_logger(info).exception(
                    "the on_failed transaction of job %d failed; stored without it",
                    info.id,
                )
                self.finalize(state, JobStatus.FAILURE, {"error": error}, error=error)
                return True
        self.finalize(state, JobStatus.FAILURE, {"error": error}, error=error, write=False)
        return True

    async def _fail_with_hook(
        self,
        state: JobState,
        error: str,
        now: float,
        info: JobInfo,
        hook: Callable[..., Any] | None,
        was: JobStatus,
        *,
        again: bool,
        as_read: bool = False,
    ) -> None:
        """One transaction of the failure and its hook; ``again``: a rollback of the
        database's own in the hook's SQL (a deadlock) raises ``_RolledBack``, so that
        the whole transaction runs again, rather than undoing only the hook's writes.
        The jobs a hook that returned added with ``tx=`` are taken in once it commits."""
        hooked: Transaction | None = None
        async with self.store.transaction() as conn:
            moved = await conn.mark_failed(
                state.id,
                error,
                now,
                (state.current, state.total, state.message),
                state.seq + 1,
                state.attempts,
                pool=state.pool,
                was=was,
                as_read=as_read,
            )
            if not moved:
                raise _NotOurs  # nothing of it commits, the hook's writes included
            if hook is None:
                return
            try:
                # What the hook wrote is undone if it raises; the failure stays.
                tx = Transaction(conn)
                try:
                    async with conn.savepoint():
                        await self._call_failed_hook(hook, info, tx)
                    hooked = tx
                finally:
                    tx.close()  # a tx the hook kept takes nothing after its transaction
            except _HookTimedOut:
                job_logger(info).error(
                    "the on_failed hook of job %d ran longer than %gs (hook_timeout): what "
                    "it wrote is undone; the failure is recorded",
                    info.id,
                    self.hook_timeout,
                )
            except Exception as exc:
                if again and self.store.rolled_back(exc):
                    raise _RolledBack from exc
                job_logger(info).exception("the on_failed hook of job %d raised", info.id)
        if hooked is not None:
            self.take_in(hooked)

    async def _call_failed_hook(
        self, hook: Callable[..., Any], info: JobInfo, tx: Transaction
    ) -> None:
        """Run an ``on_failed`` hook for at most ``hook_timeout`` seconds: the failure's
        transaction (on SQLite, every write of the database) waits for it. A sync
        hook runs in a worker thread, its statements on the loop (``ThreadTransaction``);
        a thread cannot be stopped, but after the time is up its statements are refused.
        The hook's task holds the transaction: a write of its own that would commit
        apart is refused there, as in an ``rt.transaction()`` block
        (``taskrt.transaction`` note 1)."""
        try:
            with opened(tx):
                async with asyncio.timeout(self.hook_timeout):
                    try:
                        await self._run_failed_hook(hook, info, tx)
                    except BaseException as exc:
                        # A SystemExit, say, is not the loop's to stop, nor the task's to
                        # end: the hook's failure, its writes undone, the failure recorded
                        # (background notes). A cancel of this task (the timeout's) goes on.
                        if isinstance(exc, Exception) or not hook_failed(exc):
                            raise
                        raise _HookRaised(describe_error(exc)) from exc
        except TimeoutError as exc:
            raise _HookTimedOut from exc

    async def _run_failed_hook(
        self, hook: Callable[..., Any], info: JobInfo, tx: Transaction
    ) -> None:
        if is_async(hook):
            await hook(info, tx)
            return
        bridge = ThreadTransaction(tx, asyncio.get_running_loop())
        try:
            result = await asyncio.to_thread(in_thread, "the on_failed hook", hook, info, bridge)
            if inspect.isawaitable(result):  # e.g. a lambda that returns a coroutine
                await result
        finally:
            await bridge.close()

    def finalize(
        self,
        state: JobState,
        status: JobStatus,
        data: dict[str, Any],
        *,
        result_json: str | None = None,
        error: str | None = None,
        write: bool = True,
        counted: bool = False,
    ) -> None:
        """Reach a terminal status: write (never coalesced), publish, run hooks.
        ``counted``: the process that ended it counted it in the history already
        (a cancel another process wrote, ``Runtime.cancel``)."""
        now = self.clock.now()
        info = state
        was = state.status
        if not counted:
            self.counters.finished[info.task, status] += 1
            took = now - state.started_at if state.started_at is not None else None
            self._count(
                now,
                info.pool,
                info.task,
                _OUTCOME[status],
                took if status is JobStatus.SUCCESS else None,
            )
        state.status = status
        state.finished_at = now
        if status is JobStatus.SUCCESS:
            state.result = data.get("result")
            state.error = None
        else:
            state.error = error
        state.snapshot = None
        seq = state.seq + 1
        fut: asyncio.Future[None] | None = None
        if write:
            progress = (state.current, state.total, state.message)
            if status is JobStatus.SUCCESS:
                fut = self.store.succeed(info.id, result_json, now, progress, seq, pool=info.pool)
            elif status is JobStatus.FAILURE:
                fut = self.store.fail(
                    info.id,
                    error or "",
                    now,
                    progress,
                    seq,
                    state.attempts,
                    pool=info.pool,
                    was=was,
                )
            else:
                fut = self.store.cancel(info.id, now, seq, error, pool=info.pool, was=was)
        if status is JobStatus.FAILURE and "schedule" in state.metadata:
            self.schedule_failed(state.metadata)  # counted (scheduler note 6)
        self.emit(state, STATUS_EVENT[status], data)
        if self.on_end is not None:
            self.on_end(info.id, status)
        self.live.release_key(state)
        hooks = state.spec.hooks
        if status is JobStatus.SUCCESS and hooks.on_success is not None:
            self.background.hook(hooks.on_success, info.id, data.get("result"), job=state)
        elif status is JobStatus.FAILURE and hooks.on_error is not None:
            self.background.hook(hooks.on_error, info.id, error, job=state)
        if fut is None:
            self.live.states.pop(info.id, None)
        else:
            # Reads come from memory until the terminal write is committed (note 2).
            self.live.forget_when_written(state, fut)

    def ended_in_store(self, ended: CancelledChild) -> None:
        """A job the store ended (``taskrt.workflows``: a dependent cancelled, a member
        of a batch that ended): counted, and its event published with the sequence
        the store wrote."""
        status = self.count_ended(ended)
        task, pool = ended.task, ended.pool
        if self.broker.wants(ended.job_id):
            if status is JobStatus.SUCCESS:
                data: dict[str, Any] = {
                    "result": None if ended.result is None else json.loads(ended.result)
                }
            else:
                data = {"error": ended.error}
            self.broker.publish(
                Event(
                    ended.job_id,
                    ended.seq,
                    STATUS_EVENT[status],
                    task,
                    pool,
                    status,
                    ended.finished_at,
                    data,
                )
            )

    def count_ended(self, ended: CancelledChild) -> JobStatus:
        """A job the store ended, counted in the history and the metrics; its status."""
        status = JobStatus(ended.status)
        self.counters.finished[ended.task, status] += 1
        self._count(ended.finished_at, ended.pool, ended.task, _OUTCOME[status], None)
        return status

    async def failed_hook_after(self, hook: Callable[..., Any], job_id: int) -> None:
        """The ``on_failed`` hook of a job a recovery failed (orphaned) in its own
        statements (its task registered after the recovery read the hooked ones;
        store note 22 keeps the rest for ``fail_orphan``): in a transaction of its
        own, the failure being committed already."""
        try:
            info = await self.store.get_job(job_id)
            if info is None or info.status is not JobStatus.FAILURE:
                return
            async with self.store.transaction() as conn:
                tx = Transaction(conn)
                await self._call_failed_hook(hook, info, tx)
            self.take_in(tx)
        except _HookTimedOut:
            log.error(
                "the on_failed hook of orphaned job %d ran longer than %gs (hook_timeout): "
                "what it wrote is undone",
                job_id,
                self.hook_timeout,
            )
        except Exception:
            log.exception("the on_failed hook of orphaned job %d raised", job_id)

    def blocked_again(self, info: JobInfo, again: BlockedAgain, now: float) -> None:
        """A dependent the store blocked again on its parents (a manual retry,
        ``JobStore.block_again``): its event, with the sequence the store wrote."""
        data = {"attempt": 0, "manual": True, "run_at": now, "after": list(again.parents)}
        self.announce(
            info.id, info.task, info.pool, EventType.RETRYING, JobStatus.WAITING, again.seq, data
        )

    def write_refused(self, job_id: int | None, operation: str, error: BaseException) -> None:
        """The database refused one write of a job (store note 10); the store logged it.

        A refused SUCCESS would leave the job RUNNING on disk and run it again
        after a restart: it is stored as a FAILURE that says why instead.
        """
        state = None if job_id is None else self.live.states.get(job_id)
        if state is None or operation != "succeed":
            return
        reason = safe_text(f"its result could not be stored: {error}", self.limits.max_error_bytes)
        state.update(status=JobStatus.FAILURE, error=reason, result=None)
        self.store.fail(
            state.id,
            reason,
            state.finished_at or self.clock.now(),
            (state.current, state.total, state.message),
            state.seq + 1,
            state.attempts,
            pool=state.pool,
        )


_SCALARS = frozenset({int, float, str, bool, type(None)})


def retry_policy_of(info: JobInfo, spec: TaskSpec) -> RetryPolicy:
    """The job's own retry policy if it was given one per call, else its task's."""
    if info.retry_policy is None:
        return spec.retry
    try:
        return parse_retry(info.retry_policy)
    except InvalidOption:
        log.warning("job %d has an unreadable retry policy; using its task's", info.id)
        return spec.retry


_OUTCOME = {
    JobStatus.SUCCESS: "succeeded",
    JobStatus.FAILURE: "failed",
    JobStatus.CANCELLED: "cancelled",
}
