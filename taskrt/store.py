"""Persistence of jobs, attempts and the ownership lease in SQLite.

This is the only module that imports aiosqlite and holds every SQL statement.

Design notes:

1. **Group commit.** Writes are queued as operations; one writer task takes
   everything queued and applies it in one transaction, in one trip to
   aiosqlite's connection thread (``Connection._execute`` runs a function there;
   aiosqlite is pinned below its next minor for that reason). While one batch
   is being written, the next one gathers, so many concurrent ``add`` calls
   share one commit.
2. **Ids.** Job ids come from SQLite's AUTOINCREMENT sequence, read and advanced
   inside the write transaction, so ids strictly increase across processes and
   are never reused, even after rows are deleted. An explicit id (a task's
   ``next_id`` hook) must be above the sequence.
3. **Progress is state.** Progress updates are coalesced per job in memory and
   written with the next batch (at most ``progress_interval`` later); terminal
   writes are never coalesced, and progress writes only touch RUNNING rows so a
   late flush cannot undo a final state.
4. **Transitions.** Every status update names the statuses it may come from
   (``models.TRANSITIONS``) in its WHERE clause; the store refuses any other.
5. **Durability.** WAL journal. ``synchronous="normal"`` survives a process
   crash (a power loss may lose the last commits); ``"full"`` survives power loss.
7. **Few statements, grouped.** An attempt's record is written once, when it
   ends (a running attempt is known from memory, and recovery records the
   attempts a crash interrupted). Lifecycle statements of many jobs are grouped
   into ``executemany`` calls (``_run_statements``).
8. **Indexes** are the write rate's main cost: there is one on status (the
   queue, recovery, status filters), partial ones for what is rare (live
   unique keys, finished rows for cleanup and statistics, rows other
   processes changed), and none on pool or task; a listing filtered by those
   scans newest-first by id, which stays fast for 100,000 jobs (see
   tests/test_dashboard.py).
6. **Reads** use a second connection (WAL readers never block the writer), except
   for ``:memory:`` databases, which exist per connection.
9. **A failed write is kept, never dropped.** When the database takes no
   writes for now (disk full, locked past the busy timeout, an I/O error:
   ``_TRANSIENT_CODES``), the batch's state changes stay queued, first in the
   next batch, and are written again with backoff (20 ms doubling to 1 s)
   until they commit; their futures resolve only then. Adds in that batch are
   refused at once with ``StoreUnavailable`` (nothing acknowledged is lost, and
   the caller may try again). ``health()`` says so meanwhile; the first commit
   after the outage logs its length and checkpoints the WAL. Terminal writes
   are idempotent (note 4), so writing one again is safe. Closing keeps trying
   for ``patience`` seconds, then logs what it gives up.
10. **One bad write fails alone.** Any other failure of a batch is the fault of
    one of its parts: the batch is written again with each part (an add, a
    statement, a progress row) under its own savepoint. A refused add fails
    its own caller; a refused statement is logged and handed to
    ``on_rejected``; everything else commits. Values are checked before they
    are queued (``taskrt.limits``), so this is the last line, not the first.
11. **The schema has a version.** ``PRAGMA user_version`` records it; opening
    a file runs the migrations from its version to ``SCHEMA_VERSION`` in one
    transaction (``_migrate``; a file of the first release has version 0) and
    refuses a file of a newer release with ``SchemaTooNew``, touching nothing.
    A change of the tables is a new entry in ``MIGRATIONS``, never an edit of
    an old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiosqlite

from .errors import DuplicateJobId, InvalidOption, SchemaTooNew, StoreError, StoreUnavailable
from .models import (
    TRANSITIONS,
    AttemptInfo,
    AttemptOutcome,
    JobInfo,
    JobStatus,
    ScheduleDefinition,
    ScheduleInfo,
    StoreHealth,
)

log = logging.getLogger("taskrt.store")

Synchronous = Literal["normal", "full", "off"]

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    pool TEXT NOT NULL,
    status TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '[]',
    kwargs TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    current REAL NOT NULL DEFAULT 0,
    total REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    result TEXT,
    error TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    unique_key TEXT,
    created_at REAL NOT NULL,
    run_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    timeout REAL,
    retry TEXT,
    recoveries INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0,
    external INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_live ON jobs(unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('WAITING', 'RUNNING');
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, id);
-- No index on pool or task: each costs every insert and status change about a
-- fifth of the store's write rate, and a listing filtered by them walks the
-- id index newest first until a page is full (store note 8).
DROP INDEX IF EXISTS jobs_pool;
DROP INDEX IF EXISTS jobs_task;
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_external ON jobs(id) WHERE external = 1;
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL,
    error TEXT,
    traceback TEXT,
    PRIMARY KEY (job_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '[]',
    kwargs TEXT NOT NULL DEFAULT '{}',
    pool TEXT,
    expression TEXT NOT NULL,
    tz TEXT NOT NULL DEFAULT 'UTC',
    misfire TEXT NOT NULL DEFAULT 'latest',
    paused INTEGER NOT NULL DEFAULT 0,
    next_run_at REAL,
    last_run_at REAL,
    last_job_id INTEGER,
    last_error TEXT,
    fires INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
-- An early build counted schedule failures with this trigger; any UPDATE
-- trigger on jobs costs about a third of the job throughput (scheduler note 6).
DROP TRIGGER IF EXISTS schedules_failures;
"""

SCHEMA_VERSION = 1
"""The version of the tables this code reads and writes (``PRAGMA user_version``, note 11)."""


def _statements(script: str) -> tuple[str, ...]:
    """The statements of a script (no ``;`` inside a statement, ``--`` comments dropped)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return tuple(part.strip() for part in "\n".join(lines).split(";") if part.strip())


# MIGRATIONS[n - 1] takes a file of version n - 1 to version n. Version 0 is a
# file of the first release (no version recorded) or a new, empty file; the
# first migration is written to be safe on both (IF NOT EXISTS everywhere).
MIGRATIONS: tuple[tuple[str, ...], ...] = (_statements(_SCHEMA_V1),)


JOB_COLUMNS = (
    "id, task, pool, status, args, kwargs, attempts, max_attempts, current, total, message, "
    "result, error, priority, metadata, unique_key, created_at, run_at, started_at, "
    "finished_at, timeout, retry, recoveries, seq"
)

_INSERT_JOB = (
    "INSERT INTO jobs (id, task, pool, status, args, kwargs, max_attempts, priority, metadata, "
    "unique_key, created_at, run_at, timeout, retry, seq, external) "
    "VALUES (?, ?, ?, 'WAITING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)"
)

_PROGRESS = (
    "UPDATE jobs SET current = ?, total = ?, message = ?, seq = MAX(seq, ?) "
    "WHERE id = ? AND status = 'RUNNING'"
)


def _from(*statuses: JobStatus) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


def _sources(target: JobStatus) -> str:
    """SQL list of the statuses ``target`` may be reached from (note 4)."""
    return _from(*(s for s, nexts in TRANSITIONS.items() if target in nexts))


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


async def _in_thread(db: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in the connection's own thread, in one trip (note 1)."""
    return await db._execute(fn, *args)  # type: ignore[no-untyped-call]


def dumps(value: Any) -> str:
    """Compact JSON; raises TypeError/ValueError for what JSON cannot hold."""
    if not value and (value == () or value == [] or value == {}):
        return "{}" if isinstance(value, dict) else "[]"
    return _encode(value)


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


@dataclass(slots=True)
class InsertResult:
    job_id: int
    created: bool


@dataclass(slots=True)
class _Batch:
    inserts: list[tuple[list[NewJob], asyncio.Future[list[InsertResult | BaseException]]]] = field(
        default_factory=list
    )
    statements: list[tuple[_Op, tuple[Any, ...], int | None]] = field(default_factory=list)
    committed: asyncio.Future[None] | None = None
    # Futures of earlier batches whose writes failed and ride along with this one (note 9).
    earlier: list[asyncio.Future[None]] = field(default_factory=list)

    def retain(self, failed: _Batch) -> None:
        """Put ``failed``'s statements first, so every job's writes keep their order."""
        self.statements[:0] = failed.statements
        self.earlier[:0] = failed.earlier
        if failed.committed is not None:
            self.earlier.insert(len(failed.earlier), failed.committed)

    def settle(self, error: BaseException | None) -> None:
        futures = [*self.earlier, self.committed] if self.committed else self.earlier
        for fut in futures:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
                    fut.exception()  # logged by the store; nobody need await it


class Store:
    """SQLite persistence with group commit (see the module notes)."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: Synchronous = "normal",
        progress_interval: float = 0.05,
        busy_timeout: float = 5.0,
    ) -> None:
        if synchronous not in ("normal", "full", "off"):
            raise InvalidOption(
                "synchronous", f"expected 'normal', 'full' or 'off', found {synchronous!r}"
            )
        self.path = path
        self.synchronous = synchronous
        self.progress_interval = progress_interval
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._batch = _Batch()
        self._progress: dict[int, tuple[float, float, str, int]] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
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

    # -- lifecycle ---------------------------------------------------------

    @property
    def memory(self) -> bool:
        return self.path == ":memory:" or self.path.startswith("file::memory:")

    async def open(self) -> None:
        try:
            self._db = await self._connect()
            await _in_thread(self._db, _migrate, self._db._conn, self.path)
            self._reader = self._db if self.memory else await self._connect()
        except sqlite3.Error as exc:
            await self._close_connections()
            raise StoreError(f"cannot open database {self.path!r}: {exc}") from exc
        except StoreError:
            await self._close_connections()
            raise
        # asyncio primitives belong to one loop: made anew for each opening, so a
        # runtime can be started again under another event loop.
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._batch = _Batch()
        self._progress = {}
        self._progress_timer = None
        self._closing = False
        self._unhealthy = asyncio.Event()
        self._failing = None
        self._failing_since = None
        self._retained = 0
        self._writer = asyncio.create_task(self._write_loop(), name="taskrt-store-writer")

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        # execute_fetchall, not execute: a PRAGMA that returns a row and is left
        # unread keeps a read transaction open, pinning this connection's view
        # of the database to that moment.
        await db.execute_fetchall(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        if not self.memory:
            await db.execute_fetchall("PRAGMA journal_mode = WAL")
        await db.execute_fetchall(f"PRAGMA synchronous = {self.synchronous.upper()}")
        await db.execute_fetchall("PRAGMA foreign_keys = ON")
        return db

    async def close(self, patience: float = 10.0) -> None:
        """Write everything queued, then close the connections.

        While the database takes no writes, queued state changes are tried
        again for up to ``patience`` seconds, then given up (and logged): a
        restart runs those jobs again (at-least-once).
        """
        self._closing = True
        self._close_deadline = time.monotonic() + patience
        self._wake.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in {id(c): c for c in (self._reader, self._db) if c is not None}.values():
            try:
                await conn.close()
            except sqlite3.Error as exc:
                log.error("taskrt: closing %s failed: %s", self.path, exc)
        self._reader = None
        self._db = None

    # -- health (note 9) ------------------------------------------------------

    def health(self) -> StoreHealth:
        failing = self._failing
        return StoreHealth(
            ok=failing is None,
            error=None if failing is None else _reason(failing),
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
                "taskrt: writes to %s fail: %s; %d state change(s) kept in memory and "
                "written again as soon as the database takes writes",
                self.path,
                _reason(exc),
                retained,
            )
        self._failing = exc

    async def _recovered(self) -> None:
        self.last_outage = time.monotonic() - self._failing_at
        log.warning(
            "taskrt: writes to %s resumed after %.2fs (%d state change(s) written)",
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
            log.warning("taskrt: checkpointing %s after the outage failed: %s", self.path, exc)

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the store is not open")
        return self._reader

    # -- queued writes (note 1) ---------------------------------------------

    def insert(self, jobs: list[NewJob]) -> asyncio.Future[list[InsertResult | BaseException]]:
        """Queue jobs for the next batch; the future gives one result (or error) per job."""
        fut: asyncio.Future[list[InsertResult | BaseException]] = (
            asyncio.get_running_loop().create_future()
        )
        self._batch.inserts.append((jobs, fut))
        self._wake.set()
        return fut

    def _queue(
        self, op: _Op, params: tuple[Any, ...], job_id: int | None = None
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

    # -- a job's lifecycle: queued writes, in the next batch (notes 1, 4, 7) -----------
    # Each returns the future of its batch's commit; none waits for it.

    def start(self, job_id: int, attempt: int, now: float, seq: int) -> asyncio.Future[None]:
        """RUNNING, attempt number ``attempt`` charged (from WAITING only)."""
        return self._queue(_START, (attempt, now, seq, job_id), job_id)

    def record_attempt(
        self,
        job_id: int,
        number: int,
        started_at: float,
        finished_at: float,
        outcome: AttemptOutcome,
        error: str | None,
        traceback: str | None,
    ) -> asyncio.Future[None]:
        """The one record of an attempt, written when it ends."""
        params = (job_id, number, started_at, finished_at, outcome.value, error, traceback)
        return self._queue(_ATTEMPT, params, job_id)

    def succeed(
        self,
        job_id: int,
        result_json: str | None,
        finished_at: float,
        progress: tuple[float, float, str],
        seq: int,
    ) -> asyncio.Future[None]:
        """SUCCESS with its result (JSON text) and last progress."""
        current, total, message = progress
        params = (result_json, finished_at, current, total, message, seq, job_id)
        return self._queue(_SUCCESS, params, job_id)

    def fail(
        self,
        job_id: int,
        error: str,
        finished_at: float,
        progress: tuple[float, float, str],
        seq: int,
        attempts: int,
    ) -> asyncio.Future[None]:
        """FAILURE with its error and last progress."""
        return self._queue(
            _FAILURE, _failure_params(job_id, error, finished_at, progress, seq, attempts), job_id
        )

    def cancel(
        self, job_id: int, finished_at: float, seq: int, error: str | None
    ) -> asyncio.Future[None]:
        """CANCELLED (from WAITING or RUNNING)."""
        return self._queue(_CANCELLED, (finished_at, seq, error, job_id), job_id)

    def requeue(
        self,
        job_id: int,
        run_at: float,
        error: str | None,
        seq: int,
        attempts: int,
        max_attempts: int | None,
        progress: tuple[float, float, str],
    ) -> asyncio.Future[None]:
        """Back to WAITING until ``run_at`` (a retry, a manual retry, a shutdown)."""
        current, total, message = progress
        params = (run_at, error, seq, attempts, max_attempts, current, total, message, job_id)
        return self._queue(_WAITING, params, job_id)

    def schedule_failed(self, name: str) -> asyncio.Future[None]:
        """A job of schedule ``name`` ended FAILURE: count it (scheduler note 6)."""
        return self._queue(_SCHEDULE_FAILED, (name,))

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
        await self._queue(_FLUSH, ())

    async def settle(self, fut: asyncio.Future[None] | None = None) -> None:
        """Wait for ``fut`` (default: everything queued so far) unless the database fails.

        For reads that overlay the in-memory truth of live jobs: during an
        outage they go on with what is committed instead of waiting (note 9).
        """
        if self._failing is not None:
            return
        if fut is None:
            fut = self._queue(_FLUSH, ())
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
        backoff = _BACKOFF_FIRST
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._batch = self._batch, _Batch()
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
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    self._wake.set()
                    continue
                backoff = _BACKOFF_FIRST
            if self._closing and not self._batch.inserts and not self._batch.statements:
                if self._progress:
                    self._wake.set()  # the last coalesced progress, in one more turn
                    continue
                return

    def _give_up(self) -> None:
        """Closing with the database still failing: what is kept is lost (logged)."""
        batch, self._batch = self._batch, _Batch()
        error = StoreUnavailable(self.path, _reason(self._failing or RuntimeError("closed")))
        log.error(
            "taskrt: %d state change(s) were not written to %s before it closed (%s); "
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
        self, batch: _Batch, progress: dict[int, tuple[float, float, str, int]]
    ) -> bool:
        """Write one batch; False when the database takes no writes (kept, note 9)."""
        async with self._write_lock:
            rejected: list[tuple[int | None, str, BaseException]] = []
            failure: BaseException | None = None
            try:
                results = await _in_thread(self.db, self._apply_sync, batch, progress)
            except Exception as exc:
                failure = exc
            if failure is not None and not _transient(failure):
                # One part of the batch is bad: write the parts one by one (note 10).
                log.warning("taskrt: a write batch failed (%s); writing its parts apart", failure)
                try:
                    results, rejected = await _in_thread(
                        self.db, self._apply_isolated, batch, progress
                    )
                except Exception as exc:
                    failure = exc
                else:
                    failure = None
            if failure is not None:
                # Adds are not kept: their callers learn now that nothing was stored.
                error = StoreUnavailable(self.path, _reason(failure))
                error.__cause__ = failure
                for _, fut in batch.inserts:
                    if not fut.done():
                        fut.set_exception(error)
                batch.inserts.clear()
                self._outage(failure, len(batch.statements) + len(self._batch.statements))
                return False
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
                "taskrt: the database refused a write of job %s (%s): %s",
                job_id,
                operation,
                refusal,
            )
            if self.on_rejected is not None:
                self.on_rejected(job_id, operation, refusal)
        return True

    def _apply_sync(
        self, batch: _Batch, progress: dict[int, tuple[float, float, str, int]]
    ) -> list[InsertResult | BaseException]:
        """Runs in the connection's thread: the whole batch in one transaction."""
        conn = self.db._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if progress:
                conn.executemany(
                    _PROGRESS,
                    [(c, t, m, s, job_id) for job_id, (c, t, m, s) in progress.items()],
                )
            _run_statements(conn, batch.statements)
            # Inserts last: a terminal write queued before an add frees its
            # unique key for that add (statements only touch committed jobs).
            inserted = _insert_jobs(conn, [jobs for jobs, _ in batch.inserts])
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.rows_written += len(inserted) + len(batch.statements) + len(progress)
        return inserted

    def _apply_isolated(
        self, batch: _Batch, progress: dict[int, tuple[float, float, str, int]]
    ) -> tuple[list[InsertResult | BaseException], list[tuple[int | None, str, BaseException]]]:
        """The batch again, each part under its own savepoint (note 10).

        A part the database refuses is rolled back alone: an add's caller gets
        the error, a refused statement is reported; the rest commits.
        """
        conn = self.db._conn
        rejected: list[tuple[int | None, str, BaseException]] = []
        results: list[InsertResult | BaseException] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for progress_id, (c, t, m, s) in progress.items():
                _, error = _in_savepoint(conn, conn.execute, _PROGRESS, (c, t, m, s, progress_id))
                if error is not None:
                    rejected.append((progress_id, "progress", error))
            for op, params, job_id in batch.statements:
                _, error = _in_savepoint(conn, conn.execute, op.sql, params)
                if error is not None:
                    rejected.append((job_id, op.name, error))
            for jobs, _ in batch.inserts:
                out, error = _in_savepoint(conn, _insert_jobs, conn, [jobs])
                if error is not None:
                    refused = StoreError(f"the database refused the job: {error}")
                    refused.__cause__ = error
                    out = [refused] * len(jobs)
                results.extend(out)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return results, rejected

    # -- transactions --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """An exclusive write transaction on the writer connection.

        The group-commit writer waits while it is open; keep it short.
        """
        async with self._write_lock:
            db = self.db
            try:
                await db.execute_fetchall("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc
            conn = Connection(db)
            try:
                yield conn
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
            else:
                try:
                    await db.execute("COMMIT")
                except sqlite3.Error as exc:
                    await _in_thread(db, _rollback, db._conn)
                    raise _store_error(self.path, exc) from exc

    async def insert_in(self, conn: Connection, jobs: Sequence[NewJob]) -> list[InsertResult]:
        """Insert jobs inside an open transaction (transactional enqueue)."""
        try:
            results = await _in_thread(self.db, _insert_jobs, self.db._conn, [list(jobs)])
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from exc
        out: list[InsertResult] = []
        for res in results:
            if isinstance(res, BaseException):
                raise res
            out.append(res)
        return out

    # -- ownership, recovery and actions of other processes -----------------------

    async def _script(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run statements in one transaction, now; their row counts."""

        def work(conn: sqlite3.Connection) -> list[int]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                counts = [conn.execute(sql, params).rowcount for sql, params in statements]
                conn.execute("COMMIT")
                return counts
            except BaseException:
                _rollback(conn)
                raise

        async with self._write_lock:
            try:
                result: list[int] = await _in_thread(self.db, work, self.db._conn)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc
        return result

    async def lease_left_behind(self) -> bool:
        """Whether a lease row is there: its owner died without stopping cleanly."""
        return await self.fetch_one("SELECT owner FROM lease WHERE id = 1") is not None

    async def take_lease(self, owner: str, now: float, ttl: float) -> tuple[bool, str, float]:
        """Take or renew the ownership lease; returns (taken, current owner, expiry)."""

        def work(conn: sqlite3.Connection) -> tuple[bool, str, float]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT owner, expires_at FROM lease WHERE id = 1").fetchone()
                if row is not None and row[0] != owner and row[1] > now:
                    conn.execute("COMMIT")
                    return False, str(row[0]), float(row[1])
                conn.execute(
                    "INSERT OR REPLACE INTO lease (id, owner, expires_at) VALUES (1, ?, ?)",
                    (owner, now + ttl),
                )
                conn.execute("COMMIT")
                return True, owner, now + ttl
            except BaseException:
                _rollback(conn)
                raise

        async with self._write_lock:
            try:
                result: tuple[bool, str, float] = await _in_thread(self.db, work, self.db._conn)
            except sqlite3.Error as exc:
                raise StoreError(
                    f"cannot take the ownership lease of {self.path!r}: {exc}"
                ) from exc
        return result

    async def release_lease(self, owner: str) -> None:
        async with self._write_lock:
            try:
                await self.db.execute_fetchall(
                    "DELETE FROM lease WHERE id = 1 AND owner = ?", (owner,)
                )
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

    async def recover(self, now: float, *, max_recoveries: int, seq_gap: int) -> tuple[int, int]:
        """Jobs left RUNNING by a dead process: back to WAITING, or FAILURE (orphaned).

        Records their interrupted attempts, counts orphans as failures of their
        schedules, and moves every live job's sequence up by ``seq_gap``.
        Returns (recovered, orphaned).
        """
        _, _, recovered, _, orphaned = await self._script(
            [
                (SQL_SEQ_GAP, (seq_gap, seq_gap)),
                (SQL_INTERRUPT_ATTEMPTS, (now, now)),
                (SQL_RECOVER, (max_recoveries,)),
                (SQL_SCHEDULE_ORPHANS, ()),
                (SQL_ORPHAN, (now,)),
            ]
        )
        return recovered, orphaned

    def clear_external(self, job_id: int) -> asyncio.Future[None]:
        """The owner has taken in what another process changed of this job."""
        return self._queue(_CLEAR_EXTERNAL, (job_id,))

    async def cancel_external(self, job_id: int, now: float) -> None:
        """A process that does not own the job cancels it: a WAITING row at once,
        a RUNNING one by asking its owner; in one transaction, whichever it is then."""
        await self._script(
            [
                (SQL_CANCEL_WAITING_EXTERNAL, (now, job_id)),
                (SQL_REQUEST_CANCEL, (job_id,)),
            ]
        )

    async def retry_external(self, job_id: int, now: float, max_attempts: int | None) -> None:
        """A finished job back to WAITING, for its owner to take in."""
        await self._script([(SQL_RETRY_EXTERNAL, (now, max_attempts, job_id))])

    async def cleanup(self, before: float, statuses: Sequence[JobStatus]) -> int:
        """Delete jobs in ``statuses`` finished before ``before``, and their attempts."""
        marks = ",".join("?" * len(statuses))
        deleted, _ = await self._script(
            [
                (SQL_CLEANUP.format(marks), (before, *[s.value for s in statuses])),
                (SQL_CLEANUP_ATTEMPTS, ()),
            ]
        )
        return deleted

    # -- reads ---------------------------------------------------------------

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            rows = await self.reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"read from {self.path!r} failed: {exc}") from exc
        return list(rows)

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def get_job(self, job_id: int) -> JobInfo | None:
        row = await self.fetch_one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else row_to_job(row)

    async def get_jobs(self, ids: Iterable[int]) -> list[JobInfo]:
        ids = list(ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = await self.fetch_all(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({marks})", ids)
        return [row_to_job(r) for r in rows]

    async def waiting_jobs(self) -> list[JobInfo]:
        rows = await self.fetch_all(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'WAITING' ORDER BY id"
        )
        return [row_to_job(r) for r in rows]

    async def list_jobs(
        self,
        *,
        status: Sequence[JobStatus] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: dict[str, Any] | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[JobInfo]:
        where: list[str] = []
        params: list[Any] = []
        if status:
            where.append(f"status IN ({','.join('?' * len(status))})")
            params.extend(s.value for s in status)
        if pool is not None:
            where.append("pool = ?")
            params.append(pool)
        if task is not None:
            where.append("task = ?")
            params.append(task)
        for key, value in (metadata or {}).items():
            where.append("json_extract(metadata, ?) = ?")
            params.append(_json_path(key))
            params.append(value if not isinstance(value, bool) else int(value))
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self.fetch_all(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [row_to_job(r) for r in rows]

    async def attempts(self, job_id: int) -> list[AttemptInfo]:
        rows = await self.fetch_all(
            "SELECT job_id, number, started_at, finished_at, outcome, error, traceback "
            "FROM attempts WHERE job_id = ? ORDER BY number",
            (job_id,),
        )
        return [
            AttemptInfo(
                job_id=r["job_id"],
                number=r["number"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                outcome=AttemptOutcome(r["outcome"]),
                error=r["error"],
                traceback=r["traceback"],
            )
            for r in rows
        ]

    async def stats(self, since: float | None, until: float | None) -> dict[str, Any]:
        where, params = _window("created_at", since, until)
        counts = {
            r["status"]: r["n"]
            for r in await self.fetch_all(
                f"SELECT status, count(*) AS n FROM jobs {where} GROUP BY status", params
            )
        }
        fwhere, fparams = _window("finished_at", since, until)
        cond = "status = 'SUCCESS' AND started_at IS NOT NULL AND finished_at IS NOT NULL"
        fclause = f"{fwhere} AND {cond}" if fwhere else f"WHERE {cond}"
        agg = await self.fetch_one(
            f"SELECT count(*) AS n, avg(finished_at - started_at) AS mean FROM jobs {fclause}",
            fparams,
        )
        n = agg["n"] if agg else 0
        p95 = None
        if n:
            # Nearest rank: the ceil(0.95 n)-th smallest (round() would go half-to-even).
            offset = max(0, min(n - 1, -(-95 * n // 100) - 1))
            row = await self.fetch_one(
                f"SELECT finished_at - started_at AS d FROM jobs {fclause} "
                "ORDER BY d LIMIT 1 OFFSET ?",
                [*fparams, offset],
            )
            p95 = row["d"] if row else None
        return {"counts": counts, "mean": agg["mean"] if agg else None, "p95": p95}

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name."""
        return [row_to_schedule(r) for r in await self.fetch_all(SQL_SCHEDULES)]

    async def schedule(self, name: str) -> ScheduleInfo | None:
        row = await self.fetch_one(SQL_SCHEDULE_GET, (name,))
        return None if row is None else row_to_schedule(row)

    async def schedules_version(self) -> str | None:
        """Bumped by every change of a definition, by any process (scheduler note 5)."""
        row = await self.fetch_one(SQL_SCHEDULES_VERSION)
        return None if row is None else str(row[0])

    async def external_changes(self, limit: int = 1000) -> list[tuple[JobInfo, bool]]:
        """Jobs another process added or changed (``external = 1``), with their cancel flag."""
        rows = await self.fetch_all(
            f"SELECT {JOB_COLUMNS}, cancel_requested FROM jobs WHERE external = 1 ORDER BY id LIMIT ?",
            (limit,),
        )
        return [(row_to_job(r), bool(r["cancel_requested"])) for r in rows]

    async def count_waiting(self, pool: str) -> int:
        row = await self.fetch_one(
            "SELECT count(*) AS n FROM jobs WHERE pool = ? AND status = 'WAITING'", (pool,)
        )
        return int(row["n"]) if row else 0

    async def last_id(self) -> int:
        row = await self.fetch_one("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'")
        return int(row["seq"]) if row else 0


class Connection:
    """The application's handle on a write transaction (``rt.transaction()``)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self.jobs: list[Any] = []

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one statement in the transaction; returns its rows (if any)."""
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            if _transient(exc):
                raise StoreUnavailable("the database", _reason(exc)) from exc
            raise StoreError(f"{exc} (in: {sql})") from exc

    async def mark_failed(
        self,
        job_id: int,
        error: str,
        finished_at: float,
        progress: tuple[float, float, str],
        seq: int,
        attempts: int,
    ) -> None:
        """FAILURE, in this transaction (an ``on_failed`` hook commits with it)."""
        await self.execute(
            SQL_FAILURE, _failure_params(job_id, error, finished_at, progress, seq, attempts)
        )

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

    # Schedules, in the caller's transaction (taskrt.scheduler: a slot's job and
    # the row's advance commit together).

    async def schedule(self, name: str) -> ScheduleInfo | None:
        rows = await self.execute(SQL_SCHEDULE_GET, (name,))
        return row_to_schedule(rows[0]) if rows else None

    async def insert_schedule(
        self, definition: ScheduleDefinition, next_run_at: float | None, now: float
    ) -> None:
        await self.execute(
            SQL_SCHEDULE_INSERT,
            (definition.name, *definition.canonical(), 0, next_run_at, now, now),
        )

    async def define_schedule(
        self, definition: ScheduleDefinition, next_run_at: float | None, now: float
    ) -> None:
        """A changed definition of an existing schedule."""
        await self.execute(
            SQL_SCHEDULE_DEFINE, (*definition.canonical(), next_run_at, now, definition.name)
        )

    async def pause_schedule(self, name: str, now: float) -> None:
        await self.execute(SQL_SCHEDULE_PAUSE, (now, name))

    async def resume_schedule(self, name: str, next_run_at: float, now: float) -> None:
        await self.execute(SQL_SCHEDULE_RESUME, (next_run_at, now, name))

    async def delete_schedule(self, name: str) -> None:
        await self.execute(SQL_SCHEDULE_DELETE, (name,))

    async def schedule_fired(
        self,
        name: str,
        *,
        next_run_at: float | None,
        last_run_at: float | None,
        last_job_id: int | None,
        error: str | None,
        added: int,
    ) -> None:
        """The row after firing slots: the next slot (``None``: stopped), what was added."""
        await self.execute(
            SQL_SCHEDULE_FIRED, (next_run_at, last_run_at, last_job_id, error, added, name)
        )

    async def schedule_ran(self, name: str, job_id: int) -> None:
        """A job added by ``run_now``, outside the slots."""
        await self.execute(SQL_SCHEDULE_RAN, (job_id, name))

    async def bump_schedules(self) -> int:
        """Say that definitions changed (the owner reloads them); the new version."""
        rows = await self.execute(SQL_SCHEDULES_BUMP)
        return int(rows[0][0])

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        try:
            await self._db.executemany(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{exc} (in: {sql})") from exc


def _run_statements(
    conn: sqlite3.Connection, statements: list[tuple[_Op, tuple[Any, ...], int | None]]
) -> None:
    """Run queued operations, grouping them into ``executemany`` calls (note 7).

    Lifecycle operations have a rank (start < attempt record < final or waiting
    state). Within a segment they run grouped by operation in rank order; a
    segment ends when a job would go back to an earlier or the same rank (it
    retried within the batch) or at any operation without a rank, so each job's
    statements keep their order.
    """
    segment: dict[_Op, list[tuple[Any, ...]]] = {}
    last: dict[int, int] = {}

    def flush() -> None:
        for op in sorted(segment, key=_rank):
            rows = segment[op]
            if len(rows) == 1:
                conn.execute(op.sql, rows[0])
            else:
                conn.executemany(op.sql, rows)
        segment.clear()
        last.clear()

    for op, params, job_id in statements:
        rank = op.rank
        if rank is None or job_id is None:
            flush()
            conn.execute(op.sql, params)
            continue
        prev = last.get(job_id)
        if prev is not None and rank <= prev:
            flush()
        rows = segment.get(op)
        if rows is None:
            rows = segment[op] = []
        rows.append(params)
        last[job_id] = rank
    flush()  # the last segment


def _insert_jobs(
    conn: sqlite3.Connection, groups: list[list[NewJob]]
) -> list[InsertResult | BaseException]:
    """Assign ids from the AUTOINCREMENT sequence and insert (note 2).

    Each group (one ``add`` or ``add_many`` call) is all or nothing: if one of
    its jobs has an id that is not above the sequence, none of them is stored
    and every result of the group is that error.
    """
    if not groups:
        return []
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
    last = int(row[0]) if row else 0
    results: list[InsertResult | BaseException] = []
    rows: list[tuple[Any, ...]] = []
    keys: dict[str, int] = {}
    for jobs in groups:
        group_results: list[InsertResult] = []
        group_rows: list[tuple[Any, ...]] = []
        group_keys: dict[str, int] = {}
        group_last = last
        error: BaseException | None = None
        for job in jobs:
            if job.unique_key is not None:
                existing = keys.get(job.unique_key) or group_keys.get(job.unique_key)
                if existing is None:
                    found = conn.execute(
                        "SELECT id FROM jobs WHERE unique_key = ? "
                        "AND status IN ('WAITING', 'RUNNING')",
                        (job.unique_key,),
                    ).fetchone()
                    existing = None if found is None else int(found[0])
                if existing is not None:
                    group_results.append(InsertResult(existing, False))
                    continue
            if job.job_id is not None:
                if job.job_id <= group_last:
                    error = DuplicateJobId(job.job_id, group_last)
                    break
                job_id = job.job_id
            else:
                job_id = group_last + 1
            group_last = job_id
            if job.unique_key is not None:
                group_keys[job.unique_key] = job_id
            group_rows.append(
                (
                    job_id,
                    job.task,
                    job.pool,
                    job.args_json,
                    job.kwargs_json,
                    job.max_attempts,
                    job.priority,
                    job.metadata_json,
                    job.unique_key,
                    job.created_at,
                    job.run_at,
                    job.timeout,
                    job.retry_json,
                    1 if job.external else 0,
                )
            )
            group_results.append(InsertResult(job_id, True))
        if error is not None:
            results.extend([error] * len(jobs))
            continue
        last = group_last
        keys.update(group_keys)
        rows.extend(group_rows)
        results.extend(group_results)
    conn.executemany(_INSERT_JOB, rows)
    return results


# -- the schema's version (note 11) ---------------------------------------------


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the file to ``SCHEMA_VERSION`` in one transaction; refuse a newer one.

    Several processes may start at once: the version is read again once the
    write lock is held, so each migration runs exactly once.
    """
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(path, found, SCHEMA_VERSION)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    if found:
        log.info("taskrt: upgraded %s from schema version %d to %d", path, found, SCHEMA_VERSION)


# -- failures (notes 9, 10) ----------------------------------------------------

_BACKOFF_FIRST = 0.02
_BACKOFF_MAX = 1.0
# Primary result codes that say the database cannot take writes *now*; anything
# else (a constraint, a value SQLite cannot bind) is the fault of one write.
_TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def _transient(exc: BaseException) -> bool:
    """True when ``exc`` says the database takes no writes for now (note 9)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and (
        code is None or (code & 0xFF) in _TRANSIENT_CODES
    )


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _store_error(path: str, exc: BaseException) -> StoreError:
    """``StoreUnavailable`` when the database takes no writes now, else ``StoreError``."""
    if _transient(exc):
        return StoreUnavailable(path, _reason(exc))
    return StoreError(f"write to {path!r} failed: {exc}")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if SQLite has not already (a full disk ends the transaction itself)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the first error is the one worth raising
            log.warning("taskrt: rollback failed: %s", exc)


def _in_savepoint(
    conn: sqlite3.Connection, fn: Callable[..., Any], *args: Any
) -> tuple[Any, BaseException | None]:
    """``fn(*args)`` under a savepoint: (its result, None), or (None, the error) rolled back.

    A transient error is raised: it is the database's, not this part's.
    """
    conn.execute("SAVEPOINT taskrt_part")
    try:
        result = fn(*args)
    except Exception as exc:
        if _transient(exc) or not conn.in_transaction:
            raise
        conn.execute("ROLLBACK TO taskrt_part")
        conn.execute("RELEASE taskrt_part")
        return None, exc
    conn.execute("RELEASE taskrt_part")
    return result, None


def _json_path(key: str) -> str:
    return "$." + '"' + key.replace('"', '\\"') + '"'


def _window(column: str, since: float | None, until: float | None) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        where.append(f"{column} < ?")
        params.append(until)
    return (f"WHERE {' AND '.join(where)}" if where else ""), params


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def row_to_job(row: sqlite3.Row) -> JobInfo:
    return JobInfo(
        id=row["id"],
        task=row["task"],
        pool=row["pool"],
        status=JobStatus(row["status"]),
        args=tuple(json.loads(row["args"])),
        kwargs=json.loads(row["kwargs"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        current=row["current"],
        total=row["total"],
        message=row["message"],
        result=_loads(row["result"]),
        error=row["error"],
        priority=row["priority"],
        metadata=json.loads(row["metadata"]),
        unique_key=row["unique_key"],
        created_at=row["created_at"],
        run_at=row["run_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        timeout=row["timeout"],
        recoveries=row["recoveries"],
        seq=row["seq"],
        retry_policy=_loads(row["retry"]),
    )


def row_to_schedule(row: sqlite3.Row) -> ScheduleInfo:
    return ScheduleInfo(
        name=row["name"],
        task=row["task"],
        expression=row["expression"],
        args=tuple(json.loads(row["args"])),
        kwargs=json.loads(row["kwargs"]),
        pool=row["pool"],
        tz=row["tz"],
        misfire=row["misfire"],
        paused=bool(row["paused"]),
        next_run_at=row["next_run_at"],
        last_run_at=row["last_run_at"],
        last_job_id=row["last_job_id"],
        last_error=row["last_error"],
        fires=row["fires"],
        failures=row["failures"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# -- statements used by the runtime (note 4: each names its source statuses) --

SQL_START = (
    "UPDATE jobs SET status = 'RUNNING', attempts = ?, started_at = ?, seq = ?, error = NULL "
    f"WHERE id = ? AND status IN {_sources(JobStatus.RUNNING)}"
)
SQL_ATTEMPT = (
    "INSERT OR REPLACE INTO attempts (job_id, number, started_at, finished_at, outcome, error, "
    "traceback) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SQL_SUCCESS = (
    "UPDATE jobs SET status = 'SUCCESS', result = ?, finished_at = ?, current = ?, total = ?, "
    f"message = ?, seq = ?, error = NULL WHERE id = ? AND status IN {_sources(JobStatus.SUCCESS)}"
)
SQL_FAILURE = (
    "UPDATE jobs SET status = 'FAILURE', error = ?, finished_at = ?, current = ?, total = ?, "
    f"message = ?, seq = ?, attempts = ? WHERE id = ? AND status IN {_sources(JobStatus.FAILURE)}"
)
SQL_CANCELLED = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = ?, seq = ?, cancel_requested = 0, "
    f"error = ? WHERE id = ? AND status IN {_sources(JobStatus.CANCELLED)}"
)
SQL_WAITING = (
    "UPDATE jobs SET status = 'WAITING', run_at = ?, error = ?, seq = ?, attempts = ?, "
    "max_attempts = ?, finished_at = NULL, started_at = NULL, current = ?, total = ?, message = ? "
    f"WHERE id = ? AND status IN {_sources(JobStatus.WAITING)}"
)
SQL_CLEAR_EXTERNAL = "UPDATE jobs SET external = 0, cancel_requested = 0 WHERE id = ?"
SQL_CLEAR_EXTERNAL_KEEP_CANCEL = "UPDATE jobs SET external = 0 WHERE id = ?"
SQL_REQUEST_CANCEL = (
    "UPDATE jobs SET cancel_requested = 1, external = 1 WHERE id = ? AND status = 'RUNNING'"
)
SQL_CANCEL_WAITING_EXTERNAL = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = ?, seq = seq + 1, external = 1 "
    "WHERE id = ? AND status = 'WAITING'"
)
SQL_RETRY_EXTERNAL = (
    "UPDATE jobs SET status = 'WAITING', run_at = ?, max_attempts = ?, finished_at = NULL, "
    "started_at = NULL, seq = seq + 1, external = 1 "
    f"WHERE id = ? AND status IN {_sources(JobStatus.WAITING)} AND status != 'RUNNING'"
)
SQL_SEQ_GAP = "UPDATE jobs SET seq = seq + ? WHERE ? > 0 AND status IN ('WAITING', 'RUNNING')"
SQL_RECOVER = (
    "UPDATE jobs SET status = 'WAITING', recoveries = recoveries + 1, seq = seq + 1 "
    "WHERE status = 'RUNNING' AND recoveries < ?"
)
SQL_ORPHAN = (
    "UPDATE jobs SET status = 'FAILURE', finished_at = ?, seq = seq + 1, "
    "error = 'orphaned: the job was running when its process died ' || (recoveries + 1) || ' times' "
    "WHERE status = 'RUNNING'"
)
SQL_INTERRUPT_ATTEMPTS = (
    "INSERT OR REPLACE INTO attempts (job_id, number, started_at, finished_at, outcome, error) "
    "SELECT id, attempts, COALESCE(started_at, ?), ?, 'interrupted', "
    "'the process stopped during this attempt' FROM jobs WHERE status = 'RUNNING' AND attempts > 0"
)
SQL_CLEANUP = "DELETE FROM jobs WHERE finished_at < ? AND status IN ({})"
SQL_CLEANUP_ATTEMPTS = "DELETE FROM attempts WHERE job_id NOT IN (SELECT id FROM jobs)"


@dataclass(frozen=True, slots=True, eq=False)
class _Op:
    """A queued write: a name for logs, its statement, its lifecycle rank (note 7)."""

    name: str
    sql: str
    rank: int | None = None


def _rank(op: _Op) -> int:
    return op.rank or 0


_FLUSH = _Op("flush", "SELECT 1")
_START = _Op("start", SQL_START, 1)
_ATTEMPT = _Op("attempt", SQL_ATTEMPT, 2)
_SUCCESS = _Op("succeed", SQL_SUCCESS, 3)
_FAILURE = _Op("fail", SQL_FAILURE, 3)
_CANCELLED = _Op("cancel", SQL_CANCELLED, 3)
_WAITING = _Op("requeue", SQL_WAITING, 3)
_CLEAR_EXTERNAL = _Op("clear_external", SQL_CLEAR_EXTERNAL)


def _failure_params(
    job_id: int,
    error: str,
    finished_at: float,
    progress: tuple[float, float, str],
    seq: int,
    attempts: int,
) -> tuple[Any, ...]:
    current, total, message = progress
    return (error, finished_at, current, total, message, seq, attempts, job_id)


# -- schedules (taskrt.scheduler) --------------------------------------------
# One row per schedule. ``next_run_at`` is the next slot not yet fired (NULL
# while paused); a slot's job insert and the row's advance commit together.

SCHEDULE_COLUMNS = (
    "name, task, args, kwargs, pool, expression, tz, misfire, paused, next_run_at, "
    "last_run_at, last_job_id, last_error, fires, failures, created_at, updated_at"
)
SQL_SCHEDULES = f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"
SQL_SCHEDULE_GET = f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?"
SQL_SCHEDULE_INSERT = (
    "INSERT INTO schedules (name, task, args, kwargs, pool, expression, tz, misfire, paused, "
    "next_run_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SQL_SCHEDULE_DEFINE = (
    "UPDATE schedules SET task = ?, args = ?, kwargs = ?, pool = ?, expression = ?, tz = ?, "
    "misfire = ?, next_run_at = ?, updated_at = ? WHERE name = ?"
)
SQL_SCHEDULE_PAUSE = (
    "UPDATE schedules SET paused = 1, next_run_at = NULL, updated_at = ? WHERE name = ?"
)
SQL_SCHEDULE_RESUME = (
    "UPDATE schedules SET paused = 0, next_run_at = ?, updated_at = ? WHERE name = ?"
)
SQL_SCHEDULE_FIRED = (
    "UPDATE schedules SET next_run_at = ?, last_run_at = COALESCE(?, last_run_at), "
    "last_job_id = COALESCE(?, last_job_id), last_error = ?, fires = fires + ? WHERE name = ?"
)
SQL_SCHEDULE_RAN = "UPDATE schedules SET last_job_id = ?, last_error = NULL WHERE name = ?"
# A job of the schedule (``metadata.schedule``) ended FAILURE; queued with that write.
SQL_SCHEDULE_FAILED = "UPDATE schedules SET failures = failures + 1 WHERE name = ?"
_SCHEDULE_FAILED = _Op("schedule_failed", SQL_SCHEDULE_FAILED)
# At recovery, before SQL_ORPHAN fails them: orphaned jobs are failures of their schedules.
# (CASE keeps json_extract away from metadata that is not JSON: it would raise.)
_RUNNING_OF_SCHEDULE = (
    "FROM jobs WHERE status = 'RUNNING' AND CASE WHEN json_valid(jobs.metadata) "
    "THEN json_extract(jobs.metadata, '$.schedule') END = schedules.name"
)
SQL_SCHEDULE_ORPHANS = (
    f"UPDATE schedules SET failures = failures + (SELECT count(*) {_RUNNING_OF_SCHEDULE}) "
    f"WHERE EXISTS (SELECT 1 {_RUNNING_OF_SCHEDULE})"
)
SQL_SCHEDULE_DELETE = "DELETE FROM schedules WHERE name = ?"
# Every change of a definition (by any process) bumps this; the owner watches it.
SQL_SCHEDULES_BUMP = (
    "INSERT INTO meta (key, value) VALUES ('schedules.version', '1') "
    "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value"
)
SQL_SCHEDULES_VERSION = "SELECT value FROM meta WHERE key = 'schedules.version'"
