"""``Connection``: a handle on one write transaction (``rt.transaction()``, schedules).

The job writes made through it (``mark_failed``, ``Store.insert_in``) change
``job_counts`` at once, in the transaction (note 12), so a savepoint or a
rollback undoes the count with the row; ``counts_changed`` tells the store to
read the table back before it commits.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import aiosqlite

from ...errors import StoreError, StoreUnavailable
from ...models import JobStatus
from ..groupcommit import reason
from ..ops import FAIL, failure_params
from ..schedules import ScheduleWrites
from .batch import in_thread, transient
from .counts import Tally, write_one
from .sql import SQL_STILL_AS_READ


class Connection(ScheduleWrites):
    """The application's handle on a write transaction (``rt.transaction()``)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self.jobs: list[Any] = []
        self.counts_changed = False
        self.issued = 0  # the highest job id handed out in it (store note 2)
        self.committed = False  # StoreTransaction.committed

    @property
    def driver(self) -> aiosqlite.Connection:
        """aiosqlite's connection, in the transaction."""
        return self._db

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A statement of ``queries``: SQLite's placeholders are ``?`` already."""
        return await self.execute(sql, params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one statement in the transaction; returns its rows (if any)."""
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            if transient(exc):
                raise StoreUnavailable("the database", reason(exc)) from exc
            raise StoreError(f"{exc} (in: {sql})") from exc

    async def mark_failed(
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
        as_read: bool = False,
    ) -> bool:
        """FAILURE, in this transaction (an ``on_failed`` hook commits with it);
        False when no row moved.

        ``pool`` and ``was``: the job's pool and the status the caller believes
        it is in; the count moves with the row (note 12). ``as_read``: only if
        the row is still WAITING as read (``JobStore.mark_failed``); the
        transaction holds the database's one write lock, so nothing changes it
        between this look and the write.
        """
        params = failure_params(job_id, error, finished_at, progress, seq, attempts, pool, was)

        def work(conn: sqlite3.Connection) -> bool:
            if as_read and not conn.execute(SQL_STILL_AS_READ, (job_id, seq)).fetchone():
                return False
            # The row and its count change together or not at all.
            conn.execute("SAVEPOINT taskrt_counted")
            try:
                tally = Tally()
                moved = write_one(conn, FAIL, JobStatus.FAILURE.value, params, tally)
                if moved:
                    tally.apply(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO taskrt_counted")
                    conn.execute("RELEASE taskrt_counted")
                raise
            conn.execute("RELEASE taskrt_counted")
            return moved

        try:
            moved: bool = await in_thread(self._db, work)
        except sqlite3.Error as exc:
            if transient(exc):
                raise StoreUnavailable("the database", reason(exc)) from exc
            raise StoreError(f"{exc} (in: mark_failed of job {job_id})") from exc
        self.counts_changed = True
        return moved

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested part of the transaction: if the block raises, only its writes are undone."""
        await self.execute("SAVEPOINT taskrt_part")
        try:
            yield
        except BaseException:
            await self.execute("ROLLBACK TO taskrt_part")
            await self.execute("RELEASE taskrt_part")
            raise
        await self.execute("RELEASE taskrt_part")

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        try:
            await self._db.executemany(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{exc} (in: {sql})") from exc
