"""The SQLite side of the group commit (``taskrt.store`` notes 1, 7, 9, 10, 12, 15, 16).

``SqliteBatches`` is the ``groupcommit.BatchWriter`` of a SQLite store: a
whole batch in one transaction, in one trip to the connection's thread, or
with no trip at all when it is small and nothing can make it wait (note 15).
Each attempt at a batch tallies the jobs it adds and moves and adds that to
``job_counts`` in its own transaction; once it commits, ``counts`` holds the
table as read there.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import aiosqlite

from ...errors import StoreError
from ..groupcommit import Batch, ProgressRows, Rejected, Results, split_progress
from .batch import in_savepoint, in_thread, insert_jobs, rollback, run_statements, transient
from .counts import STORED, Counted, CountMirror, Mismatch, Tally, write_one
from .sql import PROGRESS, PROGRESS_STEPS, SQL_PROBE, STATEMENT

log = logging.getLogger("taskrt.store")

# A batch commits on the event loop's thread (note 15) only when it is this small:
INLINE_ROWS = 256  # inserted jobs, statements and progress rows
INLINE_BYTES = 256 << 10  # the text they carry (arguments, results, errors)


class SqliteBatches:
    """Writes group-commit batches on one SQLite connection (see the module notes)."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: str,
        counts: CountMirror,
        *,
        busy_timeout: float = 5.0,
        inline: Callable[[], bool] | None = None,
        restart: Callable[[sqlite3.Connection, int], None] | None = None,
    ) -> None:
        self.db = db
        self.path = path
        # Jobs by pool and status as of the latest committed write that changed them (note 12).
        self.counts = counts
        self._busy_ms = int(busy_timeout * 1000)
        # Whether a small batch may commit on the loop's thread now (note 15); None: never.
        self._inline = inline
        # Called in the connection's thread before a batch written there (note 14).
        self._restart = restart
        self.inline_batches = 0

    def starts_apart(self) -> bool:
        """Starts commit first, on their own (store note 16), while small batches commit
        on the loop's thread: the starts there, the rest in the connection's thread
        while their handlers run."""
        return self._inline is not None and self._inline()

    async def write(self, batch: Batch, progress: ProgressRows) -> Results:
        inline = not batch.behind and self._fits_inline(batch, progress)
        done = self._write_inline(batch, progress) if inline else None
        if done is None:
            done = await in_thread(self.db, self._apply_in_thread, batch, progress)
        results, snapshot = done
        if snapshot is not None:
            self.counts.replace(*snapshot)
        return results

    def _fits_inline(self, batch: Batch, progress: ProgressRows) -> bool:
        if self._inline is None or not self._inline():
            return False
        rows = len(batch.statements) + len(progress)
        for group, _ in batch.inserts:
            rows += len(group)
        if rows > INLINE_ROWS:
            return False  # counted, not listed: an add_many of 10,000 leaves at once
        carried = sum(
            len(job.args_json) + len(job.kwargs_json) for group, _ in batch.inserts for job in group
        )
        for _, params, _ in batch.statements:
            for value in params:
                if type(value) is str:
                    carried += len(value)
        for _, _, message, _, _ in progress.values():
            carried += len(message)
        return carried <= INLINE_BYTES

    def _write_inline(
        self, batch: Batch, progress: ProgressRows
    ) -> tuple[Results, Counted | None] | None:
        """The batch committed here, on the loop's thread, without waiting for a lock
        (note 15); None when another connection holds the write lock: the
        connection's thread then waits for it as for any batch."""
        conn: sqlite3.Connection = self.db._conn  # in_thread's pin on aiosqlite covers it
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            done = self._apply_sync(conn, batch, progress)
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None  # rolled back: nothing of it stays
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        self.inline_batches += 1
        return done

    async def write_parts(self, batch: Batch, progress: ProgressRows) -> tuple[Results, Rejected]:
        results, rejected, snapshot = await in_thread(
            self.db, self._apply_isolated, batch, progress
        )
        if snapshot is not None:
            self.counts.replace(*snapshot)
        return results, rejected

    def transient(self, exc: BaseException) -> bool:
        return transient(exc)

    def rolled_back(self, exc: BaseException) -> bool:
        return False  # one writer: no deadlock (a lock held elsewhere waits: busy_timeout)

    async def probe(self) -> None:
        await in_thread(self.db, _probe, time.time())

    async def resumed(self) -> None:
        # The WAL may have grown (or failed to checkpoint) while the disk was full.
        try:
            await self.db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("checkpointing %s after the outage failed: %s", self.path, exc)

    def _apply_in_thread(
        self, conn: sqlite3.Connection, batch: Batch, progress: ProgressRows
    ) -> tuple[Results, Counted | None]:
        """``_apply_sync`` in the connection's thread: first, if the checkpoint thread
        asks for it, the log starts over (note 14), between two transactions."""
        if self._restart is not None:
            self._restart(conn, self._busy_ms)
        return self._apply_sync(conn, batch, progress)

    def _apply_sync(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        progress: ProgressRows,
    ) -> tuple[Results, Counted | None]:
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
        progress: ProgressRows,
        *,
        exact: bool,
    ) -> tuple[Results, Counted | None]:
        tally = Tally()  # this attempt's alone (counts note 2)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if progress:
                plain, named = split_progress(progress)
                if plain:
                    conn.executemany(PROGRESS, plain)
                if named:
                    conn.executemany(PROGRESS_STEPS, named)
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
        batch.unstarted = tally.unstarted
        return inserted, snapshot

    def _apply_isolated(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        progress: ProgressRows,
    ) -> tuple[Results, Rejected, Counted | None]:
        """The batch again, each part under its own savepoint (note 10).

        A part the database refuses is rolled back alone: an add's caller gets
        the error, a refused statement is reported; the rest commits. Only the
        parts that commit are counted (note 12).
        """
        rejected: Rejected = []
        results: Results = []
        tally = Tally()  # this attempt's alone (counts note 2)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for progress_id, row in progress.items():
                plain, named = split_progress({progress_id: row})
                sql, params = (PROGRESS, plain[0]) if plain else (PROGRESS_STEPS, named[0])
                _, error = in_savepoint(conn, conn.execute, sql, params)
                if error is not None:
                    rejected.append((progress_id, "progress", error))
            for op, params, job_id in batch.statements:
                if op.status is not None:
                    # write_one counts a row only once its statement succeeded.
                    args: tuple[Any, ...] = (conn, op, STORED[op.status], params, tally)
                    _, error = in_savepoint(conn, write_one, *args)
                else:
                    _, error = in_savepoint(conn, conn.execute, STATEMENT[op], params)
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
        batch.unstarted = tally.unstarted
        return results, rejected, snapshot


def _probe(conn: sqlite3.Connection, now: float) -> None:
    """``BatchWriter.probe``: one row of ``meta`` written and committed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(SQL_PROBE, (repr(now),))
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
