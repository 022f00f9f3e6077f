"""The queued operations of a store, the same for every backend (``taskrt.store`` notes 1, 3, 7).

``QueuedWrites`` is what both stores share of ``JobStore``: each lifecycle
write becomes an operation (``ops``) with its params, queued on the store's
``GroupCommit``, whose future resolves when its batch commits; nothing here
waits for it. A store extends it with how it opens, its batch writer, its
immediate operations and its reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

from ..models import AttemptOutcome, JobInfo, JobStatus, StoreHealth
from .groupcommit import GroupCommit
from .ops import (
    ATTEMPT,
    CANCEL,
    CLEAR_EXTERNAL,
    FAIL,
    MINUTES,
    REASON,
    REQUEUE,
    RETRIED,
    SCHEDULE_FAILED,
    START,
    SUCCEED,
    failure_params,
)
from .protocol import CancelledChild, InsertResult, MinuteRow, NewJob, Steps
from .rows import kept_orphans, recovered_ends


class QueuedWrites:
    """The queued half of ``JobStore``, on a ``GroupCommit`` (``_writes``)."""

    def __init__(self, name: str, *, progress_interval: float) -> None:
        self._writes = GroupCommit(name, progress_interval=progress_interval)
        # Told of the jobs a recovery (or a reap) ended, once committed (JobStore).
        self.on_recovered: Callable[[list[CancelledChild]], None] | None = None
        # The orphans a recovery leaves RUNNING for the runtime to fail (store note 22).
        self.failed_hooks: Callable[[], Collection[str]] = tuple
        self.on_orphans: Callable[[list[JobInfo]], None] | None = None

    def _recovered(self, rows: list[Any]) -> int:
        """Tell ``on_recovered`` of the jobs among ``rows`` a recovery ended, and
        ``on_orphans`` of those it left RUNNING (note 22); how many it left."""
        ends = recovered_ends(rows)
        if ends and self.on_recovered is not None:
            self.on_recovered(ends)
        kept = kept_orphans(rows)
        if kept and self.on_orphans is not None:
            self.on_orphans(kept)
        return len(kept)

    # -- the group commit (notes 1, 3, 9, 10) ---------------------------------------

    def lanes(self) -> tuple[GroupCommit, ...]:
        """The group commits writing for this store: the lifecycle's (``_writes``),
        and any other a backend adds (PostgreSQL's adds, its note 8)."""
        return (self._writes,)

    @property
    def batches(self) -> int:
        """Write batches committed so far."""
        return sum(lane.batches for lane in self.lanes())

    @property
    def rows_written(self) -> int:
        return sum(lane.rows_written for lane in self.lanes())

    @property
    def on_rejected(self) -> Callable[[int | None, str, BaseException], None] | None:
        """Told of an operation (its name) the database refused on its own (note 10)."""
        return self._writes.on_rejected

    @on_rejected.setter
    def on_rejected(
        self, callback: Callable[[int | None, str, BaseException], None] | None
    ) -> None:
        for lane in self.lanes():
            lane.on_rejected = callback

    def health(self) -> StoreHealth:
        """The health of the first lane that fails (else the lifecycle's), with the
        totals of every lane."""
        healths = [lane.health() for lane in self.lanes()]
        shown = next((h for h in healths if not h.ok), healths[0])
        return dataclasses.replace(
            shown,
            retained=sum(h.retained for h in healths),
            failed_writes=sum(h.failed_writes for h in healths),
            outages=sum(h.outages for h in healths),
        )

    @property
    def on_unstarted(self) -> Callable[[list[int]], None] | None:
        """Told of jobs whose start changed no row, before the start resolves (note 20)."""
        return self._writes.on_unstarted

    @on_unstarted.setter
    def on_unstarted(self, callback: Callable[[list[int]], None] | None) -> None:
        for lane in self.lanes():
            lane.on_unstarted = callback

    @property
    def failing(self) -> bool:
        return any(lane.failing for lane in self.lanes())

    def rolled_back(self, exc: BaseException) -> bool:
        """Whether ``exc``, or an error it was raised from, says the database rolled
        a transaction back on its own (a deadlock, a serialization failure): the
        same transaction, run again, may commit."""
        seen: BaseException | None = exc
        for _ in range(8):  # a chain of causes, not a cycle
            if seen is None:
                return False
            if self._writes.rolled_back(seen):
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    def insert(self, jobs: list[NewJob]) -> asyncio.Future[list[InsertResult | BaseException]]:
        """Queue jobs for the next batch; the future gives one result (or error) per job."""
        return self._writes.insert(jobs)

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
        """Coalesced write-behind of a job's progress (note 3)."""
        self._writes.progress(job_id, current, total, message, seq, steps)

    async def flush(self) -> None:
        """Return once everything queued so far is committed."""
        for lane in self.lanes():
            await lane.flush()

    async def settle(self, fut: asyncio.Future[None] | None = None) -> None:
        """Wait for ``fut`` (default: everything queued so far, in every lane) unless
        the database fails."""
        if fut is not None:
            await self._writes.settle(fut)
            return
        for lane in self.lanes():
            await lane.settle()

    def start(
        self, job_id: int, attempt: int, now: float, seq: int, *, pool: str
    ) -> asyncio.Future[None]:
        """RUNNING, attempt number ``attempt`` charged (from WAITING only)."""
        params = (attempt, now, seq, job_id, pool)
        return self._writes.queue(START, params, job_id)

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
        """The one record of an attempt, written when it ends (``retry_at``: it was
        retried by policy, the next attempt not before then)."""
        params = (
            job_id,
            number,
            started_at,
            finished_at,
            outcome.value,
            error,
            traceback,
            None if retry_at is None else "retry",
            retry_at,
        )
        return self._writes.queue(ATTEMPT, params, job_id)

    def record_minutes(self, rows: Sequence[MinuteRow]) -> asyncio.Future[None]:
        """Add finished counts to their minutes (history), with the next batch."""
        fut: asyncio.Future[None] | None = None
        for row in rows:
            fut = self._writes.queue(MINUTES, tuple(row))
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
        return fut

    def waiting_reason(self, job_id: int, reason: str | None) -> asyncio.Future[None]:
        """Why a waiting job waits (``models.WAITING_REASONS``), or None; its start clears it."""
        return self._writes.queue(REASON, (reason, job_id), job_id)

    def retried(self, job_id: int, at: float) -> asyncio.Future[None]:
        """A retry asked for by hand at ``at``: noted on the job's last attempt."""
        return self._writes.queue(RETRIED, (at, job_id, job_id), job_id)

    def succeed(
        self,
        job_id: int,
        result_json: str | None,
        finished_at: float,
        progress: tuple[float, float, str],
        seq: int,
        *,
        pool: str,
    ) -> asyncio.Future[None]:
        """SUCCESS with its result (JSON text) and last progress (from RUNNING only)."""
        current, total, message = progress
        params = (result_json, finished_at, current, total, message, seq, job_id, pool)
        return self._writes.queue(SUCCEED, params, job_id)

    def fail(
        self,
        job_id: int,
        error: str,
        finished_at: float,
        progress: tuple[float, float, str],
        seq: int,
        attempts: int,
        *,
        pool: str,
        was: JobStatus = JobStatus.RUNNING,
    ) -> asyncio.Future[None]:
        """FAILURE with its error and last progress (from WAITING or RUNNING)."""
        params = failure_params(job_id, error, finished_at, progress, seq, attempts, pool, was)
        return self._writes.queue(FAIL, params, job_id)

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
        params = (finished_at, seq, error, job_id, pool, was.value)
        return self._writes.queue(CANCEL, params, job_id)

    def requeue(
        self,
        job_id: int,
        run_at: float,
        error: str | None,
        seq: int,
        attempts: int,
        max_attempts: int | None,
        progress: tuple[float, float, str],
        *,
        pool: str,
        was: JobStatus = JobStatus.RUNNING,
    ) -> asyncio.Future[None]:
        """Back to WAITING until ``run_at`` (a retry, a manual retry, a shutdown),
        from RUNNING, FAILURE or CANCELLED (a WAITING job is left as it is)."""
        current, total, message = progress
        params = (
            run_at,
            error,
            seq,
            attempts,
            max_attempts,
            current,
            total,
            message,
            job_id,
            pool,
            was.value,
        )
        return self._writes.queue(REQUEUE, params, job_id)

    def schedule_failed(self, name: str) -> asyncio.Future[None]:
        """A job of schedule ``name`` ended FAILURE: count it (scheduler note 6)."""
        return self._writes.queue(SCHEDULE_FAILED, (name,))

    def clear_external(self, job_id: int, seq: int, cancel_requested: bool) -> asyncio.Future[None]:
        """The owner has taken in the change it read (the job at ``seq``, its cancel flag).

        A change made since stays marked, for the next ``external_changes``.
        """
        return self._writes.queue(CLEAR_EXTERNAL, (job_id, seq, int(cancel_requested)), job_id)
