"""Group commit, whatever the database: one writer task per store (``taskrt.store`` notes 1, 3, 9, 10, 16, 19, 23).

Writes are queued as operations (``ops``); one task takes everything queued
and hands it to the backend's ``BatchWriter`` to apply in one transaction,
while the next batch gathers. A batch the database cannot take now is kept
and written again with backoff (note 9); one that fails for one bad part is
written part by part (note 10). The backend says which failures are the
database's for now (``BatchWriter.transient``) and keeps its own counts
(note 12) as its transactions commit. A batch the database rolled back on
its own (a deadlock, a serialization failure: ``BatchWriter.rolled_back``) is
written again after a short wait, up to ``ROLLBACK_RETRIES`` times, before it
counts as a failure: its adds then commit instead of failing. Where the backend says it pays, a
batch's job starts commit in a transaction of their own before the rest
(note 16). A flush with nothing queued returns at once (note 19).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import InvalidOption, StoreUnavailable
from ..models import StoreHealth
from .ops import ENDING, FLUSH, START, Op, Statement
from .protocol import InsertResult, NewJob, Steps
from .rows import dumps

log = logging.getLogger("taskrt.store")

BACKOFF_FIRST = 0.02
BACKOFF_MAX = 1.0
REST_TURNS = 2
ROLLBACK_RETRIES = 8
"""Times a batch the database rolled back on its own is written again, after
``ROLLBACK_WAIT`` doubled each time (about half a second in all)."""
ROLLBACK_WAIT = 0.002

ProgressRows = dict[int, tuple[float, float, str, int, Steps | None]]
"""job id -> (current, total, message, seq, steps): the coalesced progress of a batch
(note 3); steps None for a job that names none."""


def split_progress(
    progress: ProgressRows,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A batch's progress as statement rows: (id, current, total, message, seq) of
    the jobs that name no step, and the same plus (step, steps as JSON) of those
    that do; every backend writes the two with a statement each."""
    plain: list[tuple[Any, ...]] = []
    named: list[tuple[Any, ...]] = []
    for job_id, (c, t, m, s, steps) in progress.items():
        if steps is None:
            plain.append((job_id, c, t, m, s))
        else:
            named.append((job_id, c, t, m, s, steps[0], dumps(list(steps[1]))))
    return plain, named


Results = list[InsertResult | BaseException]
Rejected = list[tuple[int | None, str, BaseException]]
"""(job id, operation name, error) of the parts a batch written part by part refused."""


def reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@dataclass(slots=True)
class Batch:
    inserts: list[tuple[list[NewJob], asyncio.Future[Results]]] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)
    committed: asyncio.Future[None] | None = None
    # Futures of earlier batches whose writes failed and ride along with this one (note
    # 9), and of the starts that commit with this batch's other writes.
    earlier: list[asyncio.Future[None]] = field(default_factory=list)
    # Starts to commit first, in a transaction of their own (note 16), and a future
    # of each (its runner's alone: resolved at the commit, it wakes the runner in the
    # next turn of the loop, and a cancel of the runner cancels nothing else);
    # ``jobs``: the jobs with a write in ``statements`` (a start of one waits its turn
    # there); None: this batch keeps every write in ``statements``.
    starts: list[Statement] = field(default_factory=list)
    started: list[asyncio.Future[None]] = field(default_factory=list)
    jobs: set[int] | None = field(default_factory=set)
    # The rest of a batch whose starts committed first: nothing waits on it as on them,
    # so a backend may write it the way that leaves the event loop free (note 16).
    behind: bool = False
    # The jobs whose start the committed write found no row to make RUNNING (the
    # job had changed elsewhere, note 20): set by the writer for the attempt that committed.
    unstarted: list[int] = field(default_factory=list)

    def retain(self, failed: Batch) -> None:
        """Put ``failed``'s writes first, so every job's writes keep their order.

        This batch's starts lose their precedence: one may be of a job whose
        earlier write failed (a retry taken again at once), which must commit first.
        """
        self.statements[:0] = [*failed.starts, *failed.statements, *self.starts]
        futures = [*failed.earlier, *failed.started, failed.committed, *self.started]
        self.earlier[:0] = [fut for fut in futures if fut is not None]
        self.starts, self.started, self.jobs = [], [], None

    def join(self, rest: Batch) -> None:
        """Put ``rest`` (a batch whose starts committed apart) first, writes and adds,
        so that it commits with this one in one transaction, every write in order."""
        self.inserts[:0] = rest.inserts
        self.retain(rest)

    def first(self, apart: bool) -> Batch | None:
        """The starts as a batch of their own, to commit before the rest (note 16);
        None when they commit with the rest, in one (not ``apart``, or no rest)."""
        starts, started = self.starts, self.started
        if not starts:
            return None
        self.starts, self.started = [], []
        statements = self.statements
        if (
            apart
            and (self.inserts or any(op is not FLUSH for op, _, _ in statements))
            and not any(op in ENDING for op, _, _ in statements)
        ):
            return Batch(statements=starts, earlier=started)
        self.statements[:0] = starts
        self.earlier += started
        return None

    def settle(self, error: BaseException | None) -> None:
        futures = [*self.earlier, *self.started, self.committed]
        for fut in futures:
            if fut is not None and not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
                    fut.exception()  # logged by the store; nobody need await it


class BatchWriter(Protocol):
    """What a backend does with a batch (the writer task calls it under ``GroupCommit.lock``)."""

    async def write(self, batch: Batch, progress: ProgressRows) -> Results:
        """The whole batch in one transaction, committed; the inserts' results. Raises
        if it did not commit (nothing of it stays)."""
        ...

    async def write_parts(self, batch: Batch, progress: ProgressRows) -> tuple[Results, Rejected]:
        """The batch again, each part alone: what the database refuses is rolled back
        alone (note 10); the rest commits."""
        ...

    def transient(self, exc: BaseException) -> bool:
        """True when ``exc`` says the database takes no writes for now (note 9)."""
        ...

    def rolled_back(self, exc: BaseException) -> bool:
        """True when the database rolled the transaction back on its own (a deadlock
        between two transactions, a serialization failure): the same write, tried
        again, commits."""
        ...

    async def probe(self) -> None:
        """One small write, committed (a row of ``meta``): whether the database takes
        writes again after an outage that kept nothing (note 9). Raises if not."""
        ...

    async def resumed(self) -> None:
        """Writes commit again after an outage (a backend may tidy up)."""
        ...

    def starts_apart(self) -> bool:
        """True when a batch's job starts should commit first, in a transaction of
        their own (note 16): when that costs less than the handlers waiting for
        the rest."""
        ...


class GroupCommit:
    """Queues writes and has one task commit them in batches (see the module notes)."""

    def __init__(self, name: str, *, progress_interval: float = 0.05) -> None:
        self.name = name  # the database, as logs and errors name it
        self.progress_interval = progress_interval
        self._writer: BatchWriter | None = None
        self._batch = Batch()
        self._progress: ProgressRows = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._told_stopped = False  # the loss of a stopped writer is logged once
        # Held by every write of the writer's: a batch, and whatever the backend says.
        self.lock = asyncio.Lock()
        # The task whose application transaction holds ``lock`` (note 23).
        self.holder: asyncio.Task[Any] | None = None
        self._progress_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._close_deadline = 0.0
        # The writer task waits for writes with none in hand (note 19).
        self._parked = False
        self.batches = 0
        self.rows_written = 0
        # Health (note 9): the error of the outage in progress, and totals.
        self._failing: BaseException | None = None
        self._backing_off = False  # kept writes wait to be written again: adds are refused
        self._failing_since: float | None = None
        self._failing_at = 0.0
        self._unhealthy = asyncio.Event()
        self._retained = 0
        self._probing: asyncio.Task[None] | None = None  # an outage that kept nothing
        self.failed_writes = 0
        self.outages = 0
        self.last_outage: float | None = None
        # Told of an operation (its name) the database refused on its own (note 10).
        self.on_rejected: Callable[[int | None, str, BaseException], None] | None = None
        # Told, before their futures resolve, of jobs whose start changed no row (note 20).
        self.on_unstarted: Callable[[list[int]], None] | None = None

    def start(self, writer: BatchWriter) -> None:
        """Begin writing through ``writer``."""
        self._writer = writer
        # asyncio primitives belong to one loop: made anew for each opening, so a
        # runtime can be started again under another event loop.
        self._wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.holder = None
        self._batch = Batch()
        self._progress = {}
        self._progress_timer = None
        self._closing = False
        self._unhealthy = asyncio.Event()
        self._failing = None
        self._backing_off = False
        self._failing_since = None
        self._retained = 0
        self._probing = None
        self._told_stopped = False
        self._task = asyncio.create_task(self._write_loop(), name="taskrt-store-writer")

    async def close(self, patience: float) -> None:
        """Write everything queued (trying for ``patience`` seconds while writes fail)."""
        self._closing = True
        self._close_deadline = time.monotonic() + patience
        self._wake.set()
        probing, self._probing = self._probing, None
        if probing is not None:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
        task, self._task = self._task, None
        if task is not None and not self._stopped(task):
            await task
        self._writer = None

    def _stopped(self, task: asyncio.Task[None] | None = None) -> bool:
        """Whether the writer task ended without being closed: cancelled from outside
        (``asyncio.run`` cancels every task when its main one fails) or by a bug.
        Nothing will commit what is queued: waiting for it would never end."""
        task = task or self._task
        if task is None or not task.done():
            return False
        if not self._closing:
            lost = len(self._batch.inserts) + len(self._batch.statements) + len(self._batch.starts)
            if lost and not self._told_stopped:
                self._told_stopped = True
                log.error(
                    "the writer of %s stopped (%s) with %d write(s) queued; the jobs they "
                    "belong to run again after a restart",
                    self.name,
                    "cancelled" if task.cancelled() else task.exception(),
                    lost,
                )
        return True

    def rolled_back(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the database rolled a transaction back on its own
        (``BatchWriter.rolled_back``); False before a writer is attached."""
        return self._writer is not None and self._writer.rolled_back(exc)

    # -- queued writes (note 1) ---------------------------------------------

    def insert(self, jobs: list[NewJob]) -> asyncio.Future[Results]:
        """Queue jobs for the next batch; the future gives one result (or error) per job."""
        fut: asyncio.Future[Results] = asyncio.get_running_loop().create_future()
        if self._backing_off and self._failing is not None:
            # The kept writes wait out their backoff (note 9): queued, the add
            # would wait with them (up to BACKOFF_MAX) only to be refused.
            error = StoreUnavailable(self.name, reason(self._failing))
            error.__cause__ = self._failing
            fut.set_exception(error)
            return fut
        self._batch.inserts.append((jobs, fut))
        self._wake.set()
        return fut

    def queue(
        self, op: Op, params: tuple[Any, ...], job_id: int | None = None
    ) -> asyncio.Future[None]:
        """Queue one operation for the next batch; the future resolves when it is committed.

        A start's future is its own (its runner awaits it, ``Batch.started``); the
        others share the batch's.

        ``job_id`` names the job a lifecycle operation is about, so that runs of
        the same operation can be grouped (note 7).
        """
        batch = self._batch
        self._wake.set()
        jobs = batch.jobs
        if job_id is not None and jobs is not None:
            if op is START and job_id not in jobs:
                batch.starts.append((op, params, job_id))
                started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                batch.started.append(started)
                return started
            jobs.add(job_id)
        batch.statements.append((op, params, job_id))
        if op is START:
            # Its runner's own future here too (``Batch.started``), resolved with the batch.
            own: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            batch.earlier.append(own)
            return own
        if batch.committed is None:
            batch.committed = asyncio.get_running_loop().create_future()
        return batch.committed

    def progress(
        self,
        job_id: int,
        current: float,
        total: float,
        message: str,
        seq: int,
        steps: Steps | None = None,
    ) -> None:
        """Coalesced write-behind of a job's progress (note 3)."""
        self._progress[job_id] = (current, total, message, seq, steps)
        if self._progress_timer is None:
            loop = asyncio.get_running_loop()
            self._progress_timer = loop.call_later(self.progress_interval, self._flush_progress)

    def _flush_progress(self) -> None:
        self._progress_timer = None
        self._wake.set()

    async def flush(self) -> None:
        """Return once everything queued so far is committed."""
        if self._stopped():
            raise StoreUnavailable(self.name, "its writer has stopped")
        if not self._settled():
            self.refuse_held("a flush")
            await self.queue(FLUSH, ())

    @property
    def idle(self) -> bool:
        """No batch in flight: the writer waits for writes (a write queued now goes
        at once, with whatever else is queued), and the database takes writes."""
        return self._parked and self._failing is None and not self.lock.locked()

    def _settled(self) -> bool:
        """Everything queued so far is committed (note 19): the writer waits with no
        write in hand, none is queued, no coalesced progress waits for its turn, and
        nothing else writes (a transaction holds ``lock``)."""
        batch = self._batch
        return (
            self._parked
            and not (batch.inserts or batch.statements or batch.starts or self._progress)
            and not self.lock.locked()
        )

    async def settle(self, fut: asyncio.Future[None] | None = None) -> None:
        """Wait for ``fut`` (default: everything queued so far) unless the database fails.

        For reads that overlay the in-memory truth of live jobs: during an
        outage they go on with what is committed instead of waiting (note 9), and
        in the task whose transaction holds the writes they read what is committed
        (note 23).
        """
        if self._failing is not None or self._stopped():
            return
        if fut is None:
            if self._settled() or self._held_here():
                return
            fut = self.queue(FLUSH, ())
        if fut.done():
            return
        self.refuse_held("waiting for a write to commit")
        unhealthy: asyncio.Future[Any] = asyncio.ensure_future(self._unhealthy.wait())
        try:
            await asyncio.wait([fut, unhealthy], return_when=asyncio.FIRST_COMPLETED)
        finally:
            unhealthy.cancel()
        if fut.done() and not fut.cancelled() and fut.exception() is not None:
            raise fut.exception()  # type: ignore[misc]

    def _held_here(self) -> bool:
        """Whether this task's application transaction holds the writes (note 23)."""
        return self.holder is not None and self.holder is asyncio.current_task()

    def refuse_held(self, what: str) -> None:
        """Raise instead of waiting for the writes this task's transaction holds,
        which would wait for ever (note 23)."""
        if self._held_here():
            raise InvalidOption(
                "tx",
                f"{what} inside this task's rt.transaction() block would wait for the "
                "block to end, which this task does: do it after the block",
            )

    async def _write_loop(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            self._parked = True
            try:
                await self._wake.wait()
            finally:
                self._parked = False
            self._wake.clear()
            batch, self._batch = self._batch, Batch()
            progress: ProgressRows = {}
            if self._progress and (
                self._progress_timer is None or batch.inserts or batch.statements or self._closing
            ):
                progress, self._progress = self._progress, {}
                if self._progress_timer is not None:
                    self._progress_timer.cancel()
                    self._progress_timer = None
            written = True
            first = batch.first(self._writer is not None and self._writer.starts_apart())
            if first is not None:
                written = await self._apply(first, {})
                if written:
                    batch.behind = True  # their runners go on while the rest commits
                else:
                    # Nothing of the batch is written: its adds fail as the starts'
                    # write did, and the starts are kept first.
                    self._refuse_adds(batch, self._failing)
                    batch.retain(first)
            if (
                written
                and first is not None
                and (batch.inserts or batch.statements)
                and await self._runners_back()
            ):
                # Note 16: the handlers the starts released came back at once with
                # their ends and next starts; the rest goes first in their batch.
                self._batch.join(batch)
                self._progress = {**progress, **self._progress}
                self._wake.set()
                continue
            if written and (batch.inserts or batch.statements or progress):
                written = await self._apply(batch, progress)
            if not written and not (batch.inserts or batch.statements or progress):
                self._probe_later()  # it kept nothing: no write of its own would tell
            if batch.inserts or batch.statements or progress:
                if not written:
                    # Kept (note 9): first in the next batch, older progress under newer.
                    self._batch.retain(batch)
                    self._progress = {**progress, **self._progress}
                    if self._closing and time.monotonic() >= self._close_deadline:
                        self._give_up()
                        return
                    self._backing_off = True
                    try:
                        await asyncio.sleep(backoff)
                    finally:
                        self._backing_off = False
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    self._wake.set()
                    continue
                backoff = BACKOFF_FIRST
            gathered = self._batch
            if self._closing and not (gathered.inserts or gathered.statements or gathered.starts):
                if self._progress:
                    self._wake.set()  # the last coalesced progress, in one more turn
                    continue
                return

    async def _runners_back(self) -> bool:
        """True when writes were queued within ``REST_TURNS`` turns of the loop after
        a batch's starts committed (note 16)."""
        if self._closing:
            return False
        for _ in range(REST_TURNS):
            await asyncio.sleep(0)
            queued = self._batch
            if queued.inserts or queued.statements or queued.starts:
                return True
        return False

    def _probe_later(self) -> None:
        """Probe the database until it takes writes, while nothing else would (note 9)."""
        if self._failing is not None and not self._closing and self._probing is None:
            self._probing = asyncio.create_task(self._probe(), name="taskrt-store-probe")

    async def _probe(self) -> None:
        backoff = BACKOFF_FIRST
        try:
            while self._failing is not None and not self._closing:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                writer = self._writer
                if writer is None or self._failing is None or self._closing:
                    return
                async with self.lock:
                    if self._failing is None or self._retained:
                        return  # written since, or a kept write's own backoff tells
                    try:
                        await writer.probe()
                    except Exception as exc:
                        if not writer.transient(exc):
                            log.warning("probing %s failed: %s", self.name, exc)
                        self.failed_writes += 1
                        self._failing = exc
                        continue
                    self._recovered()
                    await writer.resumed()
                    return
        finally:
            if self._probing is asyncio.current_task():
                self._probing = None

    def _give_up(self) -> None:
        """Closing with the database still failing: what is kept is lost (logged)."""
        batch, self._batch = self._batch, Batch()
        error = StoreUnavailable(self.name, reason(self._failing or RuntimeError("closed")))
        log.error(
            "%d state change(s) were not written to %s before it closed (%s); "
            "the jobs they belong to run again after a restart",
            len(batch.starts) + len(batch.statements) + len(self._progress),
            self.name,
            error.reason,
        )
        self._progress = {}
        for _, fut in batch.inserts:
            if not fut.done():
                fut.set_exception(error)
        batch.settle(error)

    async def _apply(self, batch: Batch, progress: ProgressRows) -> bool:
        """Write one batch; False when the database takes no writes (kept, note 9)."""
        writer = self._writer
        if writer is None:
            raise StoreUnavailable(self.name, "the store is not open")
        async with self.lock:
            rejected: Rejected = []
            failure: BaseException | None = None
            results: Results = []
            for attempt in range(ROLLBACK_RETRIES + 1):
                try:
                    results = await writer.write(batch, progress)
                except Exception as exc:
                    failure = exc
                else:
                    failure = None
                    break
                if attempt == ROLLBACK_RETRIES or not writer.rolled_back(failure):
                    break
                # The parties, where the server names them (PostgreSQL's ``detail``).
                detail = getattr(failure, "detail", None)
                log.warning(
                    "a write batch was rolled back by the database (%s%s); written again",
                    failure,
                    f": {detail}" if detail else "",
                )
                # The other transaction ends meanwhile; a random share of the wait
                # keeps two writers that collided from colliding again in step.
                await asyncio.sleep(ROLLBACK_WAIT * 2**attempt * (0.5 + random.random()))
            if failure is not None and not writer.transient(failure):
                # One part of the batch is bad: write the parts one by one (note 10).
                log.warning("a write batch failed (%s); writing its parts apart", failure)
                try:
                    results, rejected = await writer.write_parts(batch, progress)
                except Exception as exc:
                    failure = exc
                else:
                    failure = None
            if failure is not None:
                self._refuse_adds(batch, failure)
                self._outage(failure, len(batch.statements) + len(self._batch.statements))
                return False
            if self._failing is not None:
                self._recovered()
                await writer.resumed()  # under the lock: nothing else writes meanwhile
        self.batches += 1
        self.rows_written += len(results) + len(batch.statements) + len(progress)
        pos = 0
        for jobs, fut in batch.inserts:
            part = results[pos : pos + len(jobs)]
            pos += len(jobs)
            if not fut.done():
                fut.set_result(part)
        if batch.unstarted and self.on_unstarted is not None:
            self.on_unstarted(batch.unstarted)  # before the starts' runners go on
        batch.settle(None)
        for job_id, operation, refusal in rejected:
            log.error(
                "the database refused a write of job %s (%s): %s",
                job_id,
                operation,
                refusal,
            )
            if self.on_rejected is not None:
                self.on_rejected(job_id, operation, refusal)
        return True

    def _refuse_adds(self, batch: Batch, failure: BaseException | None) -> None:
        """Adds are not kept: their callers learn now that nothing was stored (note 9)."""
        error = StoreUnavailable(self.name, reason(failure or RuntimeError("not written")))
        error.__cause__ = failure
        for _, fut in batch.inserts:
            if not fut.done():
                fut.set_exception(error)
        batch.inserts.clear()

    # -- health (note 9) ------------------------------------------------------

    def health(self) -> StoreHealth:
        failing = self._failing
        return StoreHealth(
            ok=failing is None,
            error=None if failing is None else reason(failing),
            since=self._failing_since,
            retained=self._retained,
            failed_writes=self.failed_writes,
            outages=self.outages,
            last_outage=self.last_outage,
        )

    @property
    def failing(self) -> bool:
        return self._failing is not None

    def _outage(self, exc: BaseException, retained: int) -> None:
        self.failed_writes += 1
        self._retained = retained
        if self._failing is None:
            self._failing_since = time.time()
            self._failing_at = time.monotonic()
            self.outages += 1
            self._unhealthy.set()
            log.error(
                "writes to %s fail: %s; %d state change(s) kept in memory and "
                "written again as soon as the database takes writes",
                self.name,
                reason(exc),
                retained,
            )
        self._failing = exc

    def _recovered(self) -> None:
        self.last_outage = time.monotonic() - self._failing_at
        log.warning(
            "writes to %s resumed after %.2fs (%d state change(s) written)",
            self.name,
            self.last_outage,
            self._retained,
        )
        self._failing = None
        self._failing_since = None
        self._retained = 0
        self._unhealthy = asyncio.Event()
