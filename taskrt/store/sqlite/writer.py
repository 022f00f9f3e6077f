"""Group commit: the one writer of a SQLite store (``taskrt.store`` notes 1, 3, 7, 9, 10, 12).

Writes are queued as operations; one task takes everything queued and applies
it in one transaction, in one trip to the connection's thread, while the next
batch gathers. A batch the database cannot take now is kept and written again;
one that fails for one bad part is written part by part. Each attempt at a
batch tallies the jobs it adds and moves and adds that to ``job_counts`` in its
own transaction; once it commits, ``counts`` holds the table as read there.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import aiosqlite

from ...errors import StoreError, StoreUnavailable
from ...models import StoreHealth
from ..protocol import InsertResult, NewJob
from .batch import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    Batch,
    in_savepoint,
    in_thread,
    insert_jobs,
    reason,
    rollback,
    run_statements,
    transient,
)
from .counts import STORED, Counted, CountMirror, Mismatch, Tally, write_one
from .sql import FLUSH, PROGRESS, Op

log = logging.getLogger("taskrt.store")


class GroupCommit:
    """Queues writes and commits them in batches on one connection (see the module notes)."""

    def __init__(self, path: str, *, progress_interval: float = 0.05) -> None:
        self.path = path
        self.progress_interval = progress_interval
        self._db: aiosqlite.Connection | None = None
        self._batch = Batch()
        self._progress: dict[int, tuple[float, float, str, int]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Held by every write on the connection: a batch, a transaction, a script.
        self.lock = asyncio.Lock()
        self._progress_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._close_deadline = 0.0
        self.batches = 0
        self.rows_written = 0
        # Health (note 9): the error of the outage in progress, and totals.
        self._failing: BaseException | None = None
        self._failing_since: float | None = None
        self._failing_at = 0.0
        self._unhealthy = asyncio.Event()
        self._retained = 0
        self.failed_writes = 0
        self.outages = 0
        self.last_outage: float | None = None
        # Told of an operation (its name) the database refused on its own (note 10).
        self.on_rejected: Callable[[int | None, str, BaseException], None] | None = None
        # Jobs by pool and status as of the latest committed write that changed them (note 12).
        self.counts = CountMirror()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    def start(self, db: aiosqlite.Connection) -> None:
        """Begin writing on ``db`` (the store's writer connection)."""
        self._db = db
        # asyncio primitives belong to one loop: made anew for each opening, so a
        # runtime can be started again under another event loop.
        self._wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self._batch = Batch()
        self._progress = {}
        self._progress_timer = None
        self._closing = False
        self._unhealthy = asyncio.Event()
        self._failing = None
        self._failing_since = None
        self._retained = 0
        self._task = asyncio.create_task(self._write_loop(), name="taskrt-store-writer")

    async def close(self, patience: float) -> None:
        """Write everything queued (trying for ``patience`` seconds while writes fail)."""
        self._closing = True
        self._close_deadline = time.monotonic() + patience
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._db = None

    # -- queued writes (note 1) ---------------------------------------------

    def insert(self, jobs: list[NewJob]) -> asyncio.Future[list[InsertResult | BaseException]]:
        """Queue jobs for the next batch; the future gives one result (or error) per job."""
        fut: asyncio.Future[list[InsertResult | BaseException]] = (
            asyncio.get_running_loop().create_future()
        )
        self._batch.inserts.append((jobs, fut))
        self._wake.set()
        return fut

    def queue(
        self, op: Op, params: tuple[Any, ...], job_id: int | None = None
    ) -> asyncio.Future[None]:
        """Queue one operation for the next batch; the future resolves when it is committed.

        ``job_id`` names the job a lifecycle operation is about, so that runs of
        the same operation can go through one ``executemany`` (note 7).
        """
        batch = self._batch
        batch.statements.append((op, params, job_id))
        self._wake.set()
        if batch.committed is None:
            batch.committed = asyncio.get_running_loop().create_future()
        return batch.committed

    def progress(self, job_id: int, current: float, total: float, message: str, seq: int) -> None:
        """Coalesced write-behind of a job's progress (note 3)."""
        self._progress[job_id] = (current, total, message, seq)
        if self._progress_timer is None:
            loop = asyncio.get_running_loop()
            self._progress_timer = loop.call_later(self.progress_interval, self._flush_progress)

    def _flush_progress(self) -> None:
        self._progress_timer = None
        self._wake.set()

    async def flush(self) -> None:
        """Return once everything queued so far is committed."""
        await self.queue(FLUSH, ())

    async def settle(self, fut: asyncio.Future[None] | None = None) -> None:
        """Wait for ``fut`` (default: everything queued so far) unless the database fails.

        For reads that overlay the in-memory truth of live jobs: during an
        outage they go on with what is committed instead of waiting (note 9).
        """
        if self._failing is not None:
            return
        if fut is None:
            fut = self.queue(FLUSH, ())
        if fut.done():
            return
        unhealthy: asyncio.Future[Any] = asyncio.ensure_future(self._unhealthy.wait())
        try:
            await asyncio.wait([fut, unhealthy], return_when=asyncio.FIRST_COMPLETED)
        finally:
            unhealthy.cancel()
        if fut.done() and not fut.cancelled() and fut.exception() is not None:
            raise fut.exception()  # type: ignore[misc]

    async def _write_loop(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._batch = self._batch, Batch()
            progress: dict[int, tuple[float, float, str, int]] = {}
            if self._progress and (
                self._progress_timer is None or batch.inserts or batch.statements or self._closing
            ):
                progress, self._progress = self._progress, {}
                if self._progress_timer is not None:
                    self._progress_timer.cancel()
                    self._progress_timer = None
            if batch.inserts or batch.statements or progress:
                if not await self._apply(batch, progress):
                    # Kept (note 9): first in the next batch, older progress under newer.
                    self._batch.retain(batch)
                    self._progress = {**progress, **self._progress}
                    if self._closing and time.monotonic() >= self._close_deadline:
                        self._give_up()
                        return
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    self._wake.set()
                    continue
                backoff = BACKOFF_FIRST
            if self._closing and not self._batch.inserts and not self._batch.statements:
                if self._progress:
                    self._wake.set()  # the last coalesced progress, in one more turn
                    continue
                return

    def _give_up(self) -> None:
        """Closing with the database still failing: what is kept is lost (logged)."""
        batch, self._batch = self._batch, Batch()
        error = StoreUnavailable(self.path, reason(self._failing or RuntimeError("closed")))
        log.error(
            "%d state change(s) were not written to %s before it closed (%s); "
            "the jobs they belong to run again after a restart",
            len(batch.statements) + len(self._progress),
            self.path,
            error.reason,
        )
        self._progress = {}
        for _, fut in batch.inserts:
            if not fut.done():
                fut.set_exception(error)
        batch.settle(error)

    async def _apply(
        self, batch: Batch, progress: dict[int, tuple[float, float, str, int]]
    ) -> bool:
        """Write one batch; False when the database takes no writes (kept, note 9)."""
        async with self.lock:
            rejected: list[tuple[int | None, str, BaseException]] = []
            failure: BaseException | None = None
            snapshot: Counted | None = None
            try:
                results, snapshot = await in_thread(self.db, self._apply_sync, batch, progress)
            except Exception as exc:
                failure = exc
            if failure is not None and not transient(failure):
                # One part of the batch is bad: write the parts one by one (note 10).
                log.warning("a write batch failed (%s); writing its parts apart", failure)
                try:
                    results, rejected, snapshot = await in_thread(
                        self.db, self._apply_isolated, batch, progress
                    )
                except Exception as exc:
                    failure = exc
                else:
                    failure = None
            if failure is not None:
                # Adds are not kept: their callers learn now that nothing was stored.
                error = StoreUnavailable(self.path, reason(failure))
                error.__cause__ = failure
                for _, fut in batch.inserts:
                    if not fut.done():
                        fut.set_exception(error)
                batch.inserts.clear()
                self._outage(failure, len(batch.statements) + len(self._batch.statements))
                return False
            if snapshot is not None:
                self.counts.replace(*snapshot)
            if self._failing is not None:
                await self._recovered()  # under the lock: its checkpoint needs no transaction open
        self.batches += 1
        inserted = results
        pos = 0
        for jobs, fut in batch.inserts:
            part = inserted[pos : pos + len(jobs)]
            pos += len(jobs)
            if not fut.done():
                fut.set_result(part)
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

    def _apply_sync(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        progress: dict[int, tuple[float, float, str, int]],
    ) -> tuple[list[InsertResult | BaseException], Counted | None]:
        """Runs in the connection's thread: the whole batch in one transaction.

        Returns the inserts' results and, if the batch changed counts, the
        counts table as this transaction left it (note 12). A job not where
        its write believed it was has the batch written again at once, its
        counted writes one by one (counts note 1).
        """
        try:
            return self._write_batch(conn, batch, progress, exact=False)
        except Mismatch:
            return self._write_batch(conn, batch, progress, exact=True)

    def _write_batch(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        progress: dict[int, tuple[float, float, str, int]],
        *,
        exact: bool,
    ) -> tuple[list[InsertResult | BaseException], Counted | None]:
        tally = Tally()  # this attempt's alone (counts note 2)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if progress:
                conn.executemany(
                    PROGRESS,
                    [(c, t, m, s, job_id) for job_id, (c, t, m, s) in progress.items()],
                )
            run_statements(conn, batch.statements, tally, exact=exact)
            # Inserts last: a terminal write queued before an add frees its
            # unique key for that add (statements only touch committed jobs).
            groups = [jobs for jobs, _ in batch.inserts]
            inserted = insert_jobs(conn, groups)
            tally.added(groups, inserted)
            snapshot = tally.commit(conn, self.counts)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        self.rows_written += len(inserted) + len(batch.statements) + len(progress)
        return inserted, snapshot

    def _apply_isolated(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        progress: dict[int, tuple[float, float, str, int]],
    ) -> tuple[
        list[InsertResult | BaseException],
        list[tuple[int | None, str, BaseException]],
        Counted | None,
    ]:
        """The batch again, each part under its own savepoint (note 10).

        A part the database refuses is rolled back alone: an add's caller gets
        the error, a refused statement is reported; the rest commits. Only the
        parts that commit are counted (note 12).
        """
        rejected: list[tuple[int | None, str, BaseException]] = []
        results: list[InsertResult | BaseException] = []
        tally = Tally()  # this attempt's alone (counts note 2)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for progress_id, (c, t, m, s) in progress.items():
                _, error = in_savepoint(conn, conn.execute, PROGRESS, (c, t, m, s, progress_id))
                if error is not None:
                    rejected.append((progress_id, "progress", error))
            for op, params, job_id in batch.statements:
                if op.status is not None:
                    # write_one counts a row only once its statement succeeded.
                    args: tuple[Any, ...] = (conn, op, STORED[op.status], params, tally)
                    _, error = in_savepoint(conn, write_one, *args)
                else:
                    _, error = in_savepoint(conn, conn.execute, op.sql, params)
                if error is not None:
                    rejected.append((job_id, op.name, error))
            for jobs, _ in batch.inserts:
                out, error = in_savepoint(conn, insert_jobs, conn, [jobs])
                if error is not None:
                    refused = StoreError(f"the database refused the job: {error}")
                    refused.__cause__ = error
                    out = [refused] * len(jobs)
                else:
                    tally.added([jobs], out)
                results.extend(out)
            snapshot = tally.commit(conn)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return results, rejected, snapshot

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
                self.path,
                reason(exc),
                retained,
            )
        self._failing = exc

    async def _recovered(self) -> None:
        self.last_outage = time.monotonic() - self._failing_at
        log.warning(
            "writes to %s resumed after %.2fs (%d state change(s) written)",
            self.path,
            self.last_outage,
            self._retained,
        )
        self._failing = None
        self._failing_since = None
        self._retained = 0
        self._unhealthy = asyncio.Event()
        # The WAL may have grown (or failed to checkpoint) while the disk was full.
        try:
            await self.db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("checkpointing %s after the outage failed: %s", self.path, exc)
