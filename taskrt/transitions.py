"""Job transitions: start, progress, attempt end, retry, final state, hooks.

The part of ``Runtime`` the pools call while jobs run. Every transition changes
the in-memory ``JobState`` first, publishes its event (built only when someone
listens) and queues its write; terminal writes are never coalesced (runtime
note 2).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .adding import Transaction
from .context import DONE, JobState
from .definitions import TaskSpec
from .errors import (
    Fatal,
    InvalidOption,
    InvalidTransition,
    Retry,
    SerializationError,
    StoreError,
    StoreUnavailable,
    TaskrtError,
)
from .limits import check_progress, encode, safe_text
from .models import STATUS_EVENT, TERMINAL, AttemptOutcome, Event, EventType, JobInfo, JobStatus
from .parts import RuntimeParts
from .pool import Outcome
from .retry import RetryPolicy, parse_retry

if TYPE_CHECKING:
    pass

log = logging.getLogger("taskrt")


class JobLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts job id, task and attempt on every record (``record.job_id`` ...)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


def job_logger(info: JobInfo | JobState) -> JobLogAdapter:
    return JobLogAdapter(
        log, {"job_id": info.id, "task": info.task, "pool": info.pool, "attempt": info.attempts}
    )


class JobTransitions(RuntimeParts):
    """Runtime's running half (a mixin of ``Runtime``)."""

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

    def _on_start(self, state: JobState) -> asyncio.Future[None]:
        now = self.clock.now()
        attempt = state.attempts + 1
        state.status = JobStatus.RUNNING
        state.attempts = attempt
        state.started_at = now
        state.finished_at = None
        state._snapshot = None
        seq = self._emit(state, EventType.STARTED, {"attempt": attempt})
        return self.store.start(state.id, attempt, now, seq)

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
        when the job is not running here (``JobNotFound`` when there is none),
        ``InvalidOption`` for a value that cannot be stored.
        """
        current, total, message = check_progress(current, total, message, self.limits)
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
        self.store.record_attempt(state.id, state.attempts, started, now, outcome, error, tb)

    def _on_attempt_end(self, state: JobState, outcome: Outcome) -> None:
        attempt = state.attempts
        if outcome.kind == "success":
            limits = self.limits
            try:
                result_json = (
                    None
                    if outcome.result is None
                    else encode(
                        outcome.result,
                        "the result",
                        max_bytes=limits.max_result_bytes,
                        max_depth=limits.max_depth,
                    )
                )
            except SerializationError as exc:
                outcome = Outcome("error", error=exc)
            else:
                self._record_attempt(state, AttemptOutcome.SUCCESS)
                result = outcome.result
                if result_json is not None and type(result) not in _SCALARS:
                    result = json.loads(result_json)  # what a read from disk will give
                self._finalize(
                    state, JobStatus.SUCCESS, {"result": result}, result_json=result_json
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
        error = safe_text(_describe(failure), self.limits.max_error_bytes)
        tb = None if outcome.tb is None else safe_text(outcome.tb, self.limits.max_error_bytes)
        record = not (isinstance(failure, Retry) and not failure.record_error)
        if outcome.kind == "timeout":
            kind = AttemptOutcome.TIMEOUT
        else:
            kind = AttemptOutcome.ERROR if record else AttemptOutcome.RETRY
        self._record_attempt(state, kind, error if record else None, tb if record else None)
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
        return self.store.requeue(
            state.id,
            state.run_at,
            state.error,
            state.seq,
            state.attempts,
            state.max_attempts,
            (state.current, state.total, state.message),
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
        delay = 0.02
        while True:
            try:
                await self._fail_with_hook(state, error, now, info, hook)
                break
            except StoreUnavailable:
                # Never drop a state (store note 9): the database will take it later.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except StoreError:
                job_logger(info).exception(
                    "taskrt: the on_failed transaction of job %d failed; stored without it",
                    info.id,
                )
                self._finalize(state, JobStatus.FAILURE, {"error": error}, error=error)
                return
        self._finalize(state, JobStatus.FAILURE, {"error": error}, error=error, write=False)

    async def _fail_with_hook(
        self, state: JobState, error: str, now: float, info: JobInfo, hook: Callable[..., Any]
    ) -> None:
        async with self.store.transaction() as conn:
            await conn.mark_failed(
                state.id,
                error,
                now,
                (state.current, state.total, state.message),
                state.seq + 1,
                state.attempts,
            )
            try:
                # What the hook wrote is undone if it raises; the failure stays.
                async with conn.savepoint():
                    result = hook(info, Transaction(conn))
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                job_logger(info).exception("taskrt: the on_failed hook of job %d raised", info.id)

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
        self.counters.finished[info.task, status] += 1
        state.status = status
        state.finished_at = now
        if status is JobStatus.SUCCESS:
            state.result = data.get("result")
            state.error = None
        else:
            state.error = error
        state._snapshot = None
        seq = state.seq + 1
        fut: asyncio.Future[None] | None = None
        if write:
            progress = (state.current, state.total, state.message)
            if status is JobStatus.SUCCESS:
                fut = self.store.succeed(info.id, result_json, now, progress, seq)
            elif status is JobStatus.FAILURE:
                fut = self.store.fail(info.id, error or "", now, progress, seq, state.attempts)
            else:
                fut = self.store.cancel(info.id, now, seq, error)
        if status is JobStatus.FAILURE and "schedule" in state.metadata:
            self.schedules._job_failed(state.metadata)  # counted (scheduler note 6)
        self._emit(state, STATUS_EVENT[status], data)
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
            # Reads come from memory until the terminal write is committed
            # (note 2); one callback per write batch forgets all of its jobs.
            waiting = self._forgetting.get(fut)
            if waiting is None:
                waiting = self._forgetting[fut] = []
                fut.add_done_callback(self._forget)
            waiting.append(state)

    def _write_refused(self, job_id: int | None, operation: str, error: BaseException) -> None:
        """The database refused one write of a job (store note 10); the store logged it.

        A refused SUCCESS would leave the job RUNNING on disk and run it again
        after a restart: it is stored as a FAILURE that says why instead.
        """
        state = None if job_id is None else self._live.get(job_id)
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
        )

    def _forget(self, fut: asyncio.Future[None]) -> None:
        states = self._forgetting.pop(fut, [])
        failed = not fut.cancelled() and fut.exception() is not None
        for state in states:
            if failed:
                job_logger(state).error(
                    "taskrt: the final state of job %d was not written: %s",
                    state.id,
                    fut.exception(),
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


async def _guard(awaitable: Any, hook: Any, logger: logging.Logger | JobLogAdapter = log) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("taskrt: hook %s raised", getattr(hook, "__qualname__", hook))


_SCALARS = frozenset({int, float, str, bool, type(None)})


def retry_policy_of(info: JobInfo, spec: TaskSpec) -> RetryPolicy:
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
