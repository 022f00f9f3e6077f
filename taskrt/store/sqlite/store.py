"""``Store``: jobs, attempts, schedules and the lease in one SQLite file (``taskrt.store``).

The store's public face: opening (and migrating) the file, the operations the
runtime calls (each a queued write for the group commit of ``writer``, or a
transaction of its own), and the reads. The notes are the package's.

Every operation of ``JobStore`` is here, each short; the waiting window's
reads (``window``), the statistics (``stats``) and the counts (``counts``)
have modules of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal, TypeVar

import aiosqlite

from ...errors import InvalidOption, StoreError
from ...models import (
    JobStatus,
)
from ..protocol import (
    BlockedAgain,
    InsertResult,
    MinuteRow,
    NewJob,
    Settled,
    StoreTransaction,
)
from ..queries import MINUTE_COLUMNS, SQL_TAKEN_IN
from ..queued import QueuedWrites
from ..reads import SharedReads
from ..rows import dumps, json_path
from ..shielded import to_the_end
from .batch import (
    damaged,
    in_thread,
    insert_jobs,
    read_only,
    rollback,
    store_error,
    transient,
)
from .checkpoint import WRITER_CHECKPOINT_PAGES, Checkpointer
from .connection import Connection
from .counts import STORED, Counted, CountMirror, Snapshot, Tally, read_counts
from .deps import block_again, form_batch, settle
from .files import check_path
from .schema import SCHEMA_VERSION, migrate
from .sql import (
    CANCEL_WAITING_EXTERNAL_WHERE,
    CLEANUP_WHERE,
    ORPHAN_WHERE,
    PURGE_WHERE,
    RECOVER_CANCELLED_WHERE,
    RECOVER_WHERE,
    RETRY_EXTERNAL_WHERE,
    SQL_CANCEL_WAITING_EXTERNAL,
    SQL_CLEANUP,
    SQL_CLEANUP_ATTEMPTS,
    SQL_CLEANUP_DEPS,
    SQL_INTERRUPT_ATTEMPTS,
    SQL_KEEP_ORPHANS,
    SQL_ORPHAN,
    SQL_PURGE,
    SQL_PURGE_ATTEMPTS,
    SQL_RECOVER,
    SQL_RECOVER_CANCELLED,
    SQL_REQUEST_CANCEL,
    SQL_RETRIED_IF_CHANGED,
    SQL_RETRY_EXTERNAL,
    SQL_SCHEDULE_ORPHANS,
    SQL_SEQ_GAP,
    SQL_SEQUENCE_PAST,
    SQL_SEQUENCE_ROW,
    tally,
)
from .writer import SqliteBatches

log = logging.getLogger("taskrt.store")
T = TypeVar("T")

Synchronous = Literal["normal", "full", "off"]

Step = tuple[str, Sequence[Any]] | tuple[str, Sequence[Any], JobStatus | None]
"""A step of ``_script``: a statement and its params, or a tally (``sql.tally``),
its params and where the rows it counts go (None: deleted) for the next statement."""


def _begin(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


class Store(QueuedWrites, SharedReads):
    """SQLite persistence with group commit (see the ``taskrt.store`` notes)."""

    # Only the owner starts jobs: its adds may start what they add (taskrt.pool note 9).
    starts_in_add = True
    counts_capacity = False  # one owner adds (the others forward): its check holds

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
        check_path(path)  # a path SQLite opens as the file it names (``files``)
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # The waiting window's reads, on the event loop's thread (note 18); None: in memory.
        self._window: sqlite3.Connection | None = None
        super().__init__(path, progress_interval=progress_interval)
        self._counts = CountMirror()
        self._open_tx: Connection | None = None
        self._checkpoints: Checkpointer | None = None
        self._batches: SqliteBatches | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def checkpoints(self) -> int:
        """WAL checkpoints the checkpoint thread has run since the store opened (note 14)."""
        return 0 if self._checkpoints is None else self._checkpoints.checkpoints

    @property
    def logs_started_over(self) -> int:
        """Caught-up logs the checkpoint thread started over with a commit of its own,
        so that no commit of the writer's pays for it (``checkpoint``'s docstring)."""
        return 0 if self._checkpoints is None else self._checkpoints.started_over

    @property
    def inline_commits(self) -> int:
        """Write batches committed on the event loop's thread since the store opened (note 15)."""
        writer = self._batches
        return 0 if writer is None else writer.inline_batches

    @property
    def memory(self) -> bool:
        return self.path == ":memory:"

    async def open(self) -> None:
        try:
            self._db = await self._connect()
            await in_thread(self._db, migrate, self.path)
            self._counts.replace(await in_thread(self._db, read_counts))
            self._reader = self._db if self.memory else await self._connect()
            if not self.memory:
                self._window = self._window_connection()
                # Checkpoints run in a thread of their own, not in the writer's
                # commits (note 14).
                await self._db.execute_fetchall(
                    f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}"
                )
                self._checkpoints = Checkpointer(self.path, lambda: self._writes.batches)
                self._checkpoints.start()
        except sqlite3.Error as exc:
            await self._close_connections()
            raise StoreError(
                f"cannot open database {self.path!r}: {exc}{damaged(self.path, exc)}"
                f"{read_only(exc)}"
            ) from exc
        except BaseException:  # a StoreError, or a cancel: nothing opened stays open
            await self._close_connections()
            raise
        self._batches = SqliteBatches(
            self._db,
            self.path,
            self._counts,
            busy_timeout=self.busy_timeout,
            inline=self._inline_ok if self.synchronous != "full" else None,
            restart=None if self._checkpoints is None else self._checkpoints.restart,
        )
        self._writes.start(self._batches)

    def _inline_ok(self) -> bool:
        """A small batch may commit on the loop's thread now (note 15)."""
        checkpoints = self._checkpoints
        return checkpoints is not None and checkpoints.keeping_up()

    def _window_connection(self) -> sqlite3.Connection:
        """The connection of the window's reads (note 18): read only, and never waiting
        for a lock, since it would wait on the event loop's thread."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA query_only = ON")
        return conn

    async def migrate(self) -> tuple[int, int]:
        """Bring the file to this release's version without opening the store:
        (the version found, the version now)."""

        def work() -> int:
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                # The version read under the write lock: of processes migrating a
                # file at once, only the one that upgraded it reports an upgrade.
                return migrate(conn, self.path)
            finally:
                conn.close()

        try:
            found = await asyncio.to_thread(work)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot migrate {self.path!r}: {exc}{damaged(self.path, exc)}{read_only(exc)}"
            ) from exc
        return found, SCHEMA_VERSION

    async def _connect(self) -> aiosqlite.Connection:
        # Not tied to aiosqlite's thread: the writer commits small batches on the
        # loop's thread too (note 15), never both at once (the writes lock).
        db = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            # execute_fetchall, not execute: a PRAGMA that returns a row and is left
            # unread keeps a read transaction open, pinning this connection's view
            # of the database to that moment.
            await db.execute_fetchall(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not self.memory:
                await db.execute_fetchall("PRAGMA journal_mode = WAL")
            await db.execute_fetchall(f"PRAGMA synchronous = {self.synchronous.upper()}")
            await db.execute_fetchall("PRAGMA foreign_keys = ON")
        except BaseException:
            # A file that is not a database fails here. The connection's thread is
            # not a daemon: left open, the process could never exit.
            with contextlib.suppress(Exception):
                await db.close()
            raise
        return db

    async def close(self, patience: float = 10.0) -> None:
        """Write everything queued, then close the connections.

        While the database takes no writes, queued state changes are tried
        again for up to ``patience`` seconds, then given up (and logged): a
        restart runs those jobs again (at-least-once).
        """
        if self._db is not None:
            await self._writes.close(patience)
        if self._checkpoints is not None:
            checkpoints, self._checkpoints = self._checkpoints, None
            await asyncio.to_thread(checkpoints.stop)
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._window is not None:
            window, self._window = self._window, None
            try:
                window.close()
            except sqlite3.Error as exc:
                log.error("closing %s failed: %s", self.path, exc)
        for conn in {id(c): c for c in (self._reader, self._db) if c is not None}.values():
            try:
                await conn.close()
            except sqlite3.Error as exc:
                log.error("closing %s failed: %s", self.path, exc)
        self._reader = None
        self._db = None

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

    # -- the group commit (notes 1, 3, 9, 10) ---------------------------------------

    # -- a job's lifecycle: queued writes, in the next batch (notes 1, 4, 7) -----------
    # Each returns the future of its batch's commit; none waits for it.

    # A counted write (note 12) names the job's pool and the status the caller
    # believes it is in (``was``); the count moves from what the row really was.

    async def history(
        self,
        since_minute: int,
        until_minute: int,
        step_minutes: int,
        *,
        pool: str | None = None,
        task: str | None = None,
    ) -> list[MinuteRow]:
        """Counts summed per step (``minute`` = the step's first minute), oldest first."""
        where = ["minute >= ?", "minute < ?"]
        params: list[Any] = [since_minute, until_minute]
        if pool is not None:
            where.append("pool = ?")
            params.append(pool)
        if task is not None:
            where.append("task = ?")
            params.append(task)
        sums = ", ".join(f"sum({c})" for c in MINUTE_COLUMNS.split(", "))
        rows = await self.fetch_all(
            f"SELECT (minute / ?) * ? AS start, '', '', {sums} FROM job_minutes "
            f"WHERE {' AND '.join(where)} GROUP BY start ORDER BY start",
            [step_minutes, step_minutes, *params],
        )
        return [tuple(r) for r in rows]

    async def prune_history(self, before_minute: int) -> int:
        """Forget the minutes before ``before_minute`` (retention)."""
        (deleted,) = await self._script(
            [("DELETE FROM job_minutes WHERE minute < ?", (before_minute,))]
        )
        return deleted

    async def prune_unique_keys(self, now: float) -> int:
        """Forget the unique windows that ended by ``now`` (retention)."""
        (deleted,) = await self._script([("DELETE FROM unique_keys WHERE expires_at <= ?", (now,))])
        return deleted

    # -- transactions --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """An exclusive write transaction on the writer connection.

        The group-commit writer waits while it is open; keep it short. A
        cancel leaves it committed or rolled back, never open (note 24).
        """
        self._writes.refuse_held("a second transaction")
        async with self._writes.lock:
            db = self.db
            try:
                await to_the_end(in_thread(db, _begin))
            except sqlite3.Error as exc:
                raise store_error(self.path, exc) from exc
            except asyncio.CancelledError:
                # The BEGIN ran all the same, in the connection's thread (note 24).
                await to_the_end(in_thread(db, rollback))
                raise
            conn = self._open_tx = Connection(db)
            self._writes.holder = asyncio.current_task()  # note 23
            try:
                yield conn
            except BaseException:
                await to_the_end(self._roll_back(conn.issued))
                raise
            else:
                await to_the_end(self._commit(conn))
            finally:
                self._open_tx = None
                self._writes.holder = None

    async def _commit(self, tx: Connection) -> None:
        """Commit ``tx`` in one trip to the connection's thread; rolled back if that fails."""
        issued = tx.issued
        counted = tx.counts_changed

        def work(conn: sqlite3.Connection) -> Snapshot | None:
            try:
                if issued > 0:
                    # A ``ROLLBACK TO`` in the block undid the sequence's advance
                    # with the rows it undid (the sequence's row too, for the
                    # database's first add): the ids it handed out stay used.
                    conn.execute(SQL_SEQUENCE_ROW)
                    conn.execute(SQL_SEQUENCE_PAST, (issued,))
                # read back in the transaction (note 12)
                snapshot = read_counts(conn) if counted else None
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
            return snapshot

        try:
            snapshot: Snapshot | None = await in_thread(self.db, work)
        except sqlite3.Error as exc:
            await self._keep_issued(issued)
            raise store_error(self.path, exc) from exc
        tx.committed = True
        if snapshot is not None:
            self._counts.replace(snapshot)

    async def _roll_back(self, issued: int) -> None:
        """Roll back the open transaction; the ids it handed out stay used (note 2)."""
        await in_thread(self.db, rollback)
        await self._keep_issued(issued)

    async def _keep_issued(self, last: int) -> None:
        """After a rollback: the ids the transaction handed out stay used (note 2).

        The rollback undid the sequence's advance with the rows; the application
        may have kept an id (logged it, shown it), and the next add would be
        given it again, for another job. The sequence is moved past them in a
        transaction of its own (the writer still waits: the lock is held).
        """
        if last <= 0:
            return

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(SQL_SEQUENCE_ROW)
                conn.execute(SQL_SEQUENCE_PAST, (last,))
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise

        try:
            await in_thread(self.db, work)
        except sqlite3.Error as exc:
            log.error(
                "keeping job ids up to %d used after a rolled-back transaction failed: %s",
                last,
                exc,
            )

    async def insert_in(self, tx: StoreTransaction, jobs: Sequence[NewJob]) -> list[InsertResult]:
        """Insert jobs inside the open transaction ``tx`` (transactional enqueue).

        The transaction is the writer connection's, which holds the write lock
        while it is open: the insert runs on that connection, and counts the
        rows it makes in the transaction (note 12).
        """
        groups = [list(jobs)]
        issued = 0 if self._open_tx is None else self._open_tx.issued

        def work(conn: sqlite3.Connection) -> list[InsertResult | BaseException]:
            results = insert_jobs(conn, groups, issued)
            counted = Tally()
            counted.added(groups, results)
            counted.apply(conn)
            return results

        try:
            results = await in_thread(self.db, work)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc
        if self._open_tx is not None:
            self._open_tx.counts_changed = True
            made = [r.job_id for r in results if isinstance(r, InsertResult) and r.created]
            self._open_tx.issued = max(self._open_tx.issued, *made, 0)
        out: list[InsertResult] = []
        for res in results:
            if isinstance(res, BaseException):
                raise res
            out.append(res)
        return out

    async def adopt_transaction(self, connection: Any) -> StoreTransaction | None:
        """None: a SQLite transaction is ``rt.transaction()``'s, on the writer connection."""
        return None

    async def listen(self, wake: Callable[[str], None]) -> None:
        """Nothing to listen to: the owner polls for other processes' writes."""

    async def unlisten(self) -> None:
        pass

    # -- ownership, recovery and actions of other processes -----------------------

    async def _script(
        self, steps: Sequence[Step], *, returned: list[Any] | None = None
    ) -> list[int]:
        """Run statements in one transaction, now; their row counts.

        A step of three (a tally, its params, a status) counts the rows the
        next statement is about to change, by pool and status, as moving to
        that status (None: deleted); job_counts changes in the same
        transaction (note 12). The rows of a ``SELECT``, and of statements with
        ``RETURNING``, go into ``returned`` (their count is their row count).
        """

        def work(conn: sqlite3.Connection, counted: Tally) -> list[int]:
            rowcounts: list[int] = []
            for step in steps:
                if len(step) == 3:
                    to = step[2]
                    counted.before(conn, step[0], step[1], None if to is None else STORED[to])
                elif " RETURNING " in step[0] or step[0].startswith("SELECT "):
                    rows = conn.execute(step[0], step[1]).fetchall()
                    rowcounts.append(len(rows))
                    if returned is not None:
                        returned.extend(rows)
                else:
                    rowcounts.append(conn.execute(step[0], step[1]).rowcount)
            return rowcounts

        rowcounts: list[int] = await self._in_transaction(work)
        return rowcounts

    async def _in_transaction(self, fn: Callable[[sqlite3.Connection, Tally], Any]) -> Any:
        """``fn(connection, tally)`` in one write transaction of its own, now, in the
        connection's thread; the jobs it moves (``tally``) counted in it (note 12)."""

        def work(conn: sqlite3.Connection) -> tuple[Any, Counted | None]:
            counted = Tally()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, counted)
                snapshot = counted.commit(conn)
                conn.execute("COMMIT")
                return result, snapshot
            except BaseException:
                rollback(conn)
                raise

        def counted(done: tuple[Any, Counted | None]) -> None:
            if done[1] is not None:
                self._counts.replace(*done[1])

        try:
            done: tuple[Any, Counted | None] = await self._locked(work, counted)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc
        return done[0]

    async def _locked(
        self, work: Callable[[sqlite3.Connection], T], then: Callable[[T], None] | None = None
    ) -> T:
        """``work`` in the connection's thread, the writes' lock held until it has run,
        then ``then`` of its result. A caller cancelled meanwhile waits for it all the
        same (note 24): the thread runs what it was given, and the group commit must
        not write beside a transaction still queued there (nor its counts go unread)."""
        self._writes.refuse_held("a write")

        async def run() -> T:
            done: T = await in_thread(self.db, work)
            if then is not None:
                then(done)
            return done

        async with self._writes.lock:
            return await to_the_end(run())

    async def claim_ownership(self, owner: str, address: str | None, now: float) -> str | None:
        """Record ``owner`` (which holds the ownership lock) and where it listens.

        Returns the owner a row was left behind by (it died without releasing),
        or ``None`` after a clean stop or on a new file. Raises ``StoreUnavailable``
        when the database takes no writes now (full, locked: the runtime tries
        again), ``StoreError`` when no wait mends it (a read-only file).
        """

        def work(conn: sqlite3.Connection) -> str | None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT owner FROM lease WHERE id = 1").fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO lease (id, owner, expires_at, address, since)"
                    " VALUES (1, ?, 0, ?, ?)",
                    (owner, address, now),
                )
                conn.execute("COMMIT")
                return None if row is None else str(row[0])
            except BaseException:
                rollback(conn)
                raise

        try:
            result: str | None = await self._locked(work)
        except sqlite3.Error as exc:
            if transient(exc) and not read_only(exc):
                raise store_error(self.path, exc) from exc  # StoreUnavailable
            raise StoreError(
                f"cannot record the owner of {self.path!r}: {exc}{read_only(exc)}"
            ) from exc
        return result

    @contextlib.asynccontextmanager
    async def alone(self, what: str) -> AsyncIterator[bool]:
        yield True  # one process writes the file's jobs: its owner

    async def set_pool_paused(self, name: str, paused: bool) -> None:
        await self._script(
            [
                (
                    "INSERT INTO pool_settings (name, paused) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused",
                    (name, int(paused)),
                )
            ]
        )

    async def release_lease(self, owner: str) -> None:
        async with self._writes.lock:
            try:
                await self.db.execute_fetchall(
                    "DELETE FROM lease WHERE id = 1 AND owner = ?", (owner,)
                )
            except sqlite3.Error as exc:
                raise store_error(self.path, exc) from exc

    async def recover(self, now: float, *, max_recoveries: int, seq_gap: int) -> tuple[int, int]:
        """Jobs left RUNNING by a dead process: back to WAITING, or FAILURE (orphaned).

        Records their interrupted attempts, cancels those whose cancel was
        requested while they ran, counts orphans as failures of their
        schedules, moves every live job's sequence up by ``seq_gap``, and
        clears the ``external`` mark of WAITING jobs (``queries.SQL_TAKEN_IN``).
        Orphans of the tasks ``failed_hooks`` names stay RUNNING and go to
        ``on_orphans`` (store note 22). Returns (recovered, orphaned).
        """
        rows: list[Any] = []
        hooked = dumps(sorted(self.failed_hooks()))
        _, _, _, recovered, kept, _, orphaned, _ = await self._script(
            [
                (SQL_SEQ_GAP, (seq_gap, seq_gap)),
                (SQL_INTERRUPT_ATTEMPTS, (now, now)),
                (tally(RECOVER_CANCELLED_WHERE), (), JobStatus.CANCELLED),
                (SQL_RECOVER_CANCELLED, (now,)),
                (tally(RECOVER_WHERE), (max_recoveries,), JobStatus.WAITING),
                (SQL_RECOVER, (max_recoveries,)),
                (SQL_KEEP_ORPHANS, (hooked,)),
                (SQL_SCHEDULE_ORPHANS, (hooked, hooked)),
                (tally(ORPHAN_WHERE), (hooked,), JobStatus.FAILURE),
                (SQL_ORPHAN, (now, hooked)),
                (SQL_TAKEN_IN, ()),
            ],
            returned=rows,
        )
        self._recovered(rows)
        return recovered, orphaned + kept

    async def cancel_external(self, job_id: int, now: float) -> int | None:
        """A process that does not own the job cancels it: a WAITING row at once,
        a RUNNING one by asking its owner; in one transaction, whichever it is then."""
        seqs: list[Any] = []
        await self._script(
            [
                (tally(CANCEL_WAITING_EXTERNAL_WHERE), (job_id,), JobStatus.CANCELLED),
                (SQL_CANCEL_WAITING_EXTERNAL, (now, job_id)),
                (SQL_REQUEST_CANCEL, (job_id,)),
            ],
            returned=seqs,
        )
        return int(seqs[0][0]) if seqs else None

    async def retry_external(self, job_id: int, now: float, max_attempts: int | None) -> int | None:
        """A finished job back to WAITING, for its owner to take in."""
        seqs: list[Any] = []
        await self._script(
            [
                (tally(RETRY_EXTERNAL_WHERE), (job_id,), JobStatus.WAITING),
                (SQL_RETRY_EXTERNAL, (now, max_attempts, job_id)),
                (SQL_RETRIED_IF_CHANGED, (now, job_id, job_id)),
            ],
            returned=seqs,
        )
        return int(seqs[0][0]) if seqs else None

    async def cleanup(self, before: float, statuses: Sequence[JobStatus]) -> int:
        """Delete jobs in ``statuses`` finished before ``before``, and their attempts
        (never a job a blocked job waits for)."""
        marks = ",".join("?" * len(statuses))
        params = (before, *[s.value for s in statuses])
        deleted, *_ = await self._script(
            [
                (tally(CLEANUP_WHERE.format(marks)), params, None),
                (SQL_CLEANUP.format(marks), params),
                (SQL_CLEANUP_ATTEMPTS, ()),
                *((sql, ()) for sql in SQL_CLEANUP_DEPS),
            ]
        )
        return deleted

    async def form_batch(
        self, task: str, key: str, limit: int, now: float, ripe_before: float | None = None
    ) -> tuple[int, str, list[int]] | None:
        """The oldest ``batching`` jobs of ``task`` and ``key`` form a batch (``store.deps``)."""
        formed: tuple[int, str, list[int]] | None = await self._in_transaction(
            lambda conn, _: form_batch(conn, task, key, limit, now, ripe_before)
        )
        return formed

    async def settle_deps(self, parents: Sequence[int] | None, now: float) -> Settled:
        """Close the open dependencies on finished jobs, release or cancel their
        dependents (``taskrt.store.deps``), in one transaction."""
        if parents is not None and not parents:
            return Settled()
        settled: Settled = await self._in_transaction(
            lambda conn, counted: settle(conn, parents, now, counted)
        )
        return settled

    async def block_again(
        self, job_id: int, run_at: float, max_attempts: int | None, *, external: bool = False
    ) -> BlockedAgain | None:
        """A dependent that never ran, blocked again on its parents (``store.deps``)."""
        again: BlockedAgain | None = await self._in_transaction(
            lambda conn, counted: block_again(conn, job_id, run_at, max_attempts, counted, external)
        )
        return again

    # -- reads ---------------------------------------------------------------

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            rows = await self.reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(
                f"read from {self.path!r} failed: {exc}{damaged(self.path, exc)}"
            ) from exc
        return list(rows)

    def metadata_match(self, key: str, value: Any) -> tuple[str, list[Any]]:
        if not _PLAIN_KEY.fullmatch(key):
            return _member_match(key, value)
        path = json_path(key)
        # A JSON true reads back from json_extract as 1: compare booleans and
        # numbers by their JSON type too, so a filter matches only its kind.
        if isinstance(value, bool):
            return "json_type(metadata, ?) = ?", [path, "true" if value else "false"]
        if isinstance(value, int | float):
            return (
                "json_extract(metadata, ?) = ? AND json_type(metadata, ?) IN ('integer', 'real')",
                [path, value, path],
            )
        if value is None:  # a JSON null (json_extract gives SQL NULL, which equals nothing)
            return "json_type(metadata, ?) = 'null'", [path]
        # Text only: json_extract gives an object or an array as its JSON text, which
        # a text filter ('{"a":1}') matched.
        return "json_extract(metadata, ?) = ? AND json_type(metadata, ?) = 'text'", [
            path,
            value,
            path,
        ]

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A read of ``queries``: SQLite's placeholders are ``?`` already."""
        return await self.fetch_all(sql, params)

    async def window_query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One read of the waiting window on the event loop's thread (note 18); where it would
        have to wait (a lock, a full disk), or the store is in memory, the reader's
        thread reads it as any other read."""
        conn = self._window
        if conn is not None:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                if not transient(exc):
                    raise StoreError(
                        f"read from {self.path!r} failed: {exc}{damaged(self.path, exc)}"
                    ) from exc
        return await self.fetch_all(sql, params)

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def purge(self, ids: Sequence[int]) -> int:
        """Delete the finished jobs among ``ids`` (and their attempts); the others stay."""
        if not ids:
            return 0
        deleted = 0
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            counts = await self._script(
                [
                    (tally(PURGE_WHERE.format(marks)), chunk, None),
                    (SQL_PURGE.format(marks), chunk),
                    (SQL_PURGE_ATTEMPTS.format(marks), chunk),
                    *((sql, ()) for sql in SQL_CLEANUP_DEPS),
                ]
            )
            deleted += counts[0]
        return deleted

    async def reschedule(self, job_id: int, run_at: float, *, external: bool = False) -> bool:
        """A WAITING job's next start moved to ``run_at`` ("run now"); False if not
        WAITING, or waiting for its parents or its batch (which release it).
        ``external``: another process than the owner moved it (it polls)."""
        counts = await self._script(
            [
                (
                    "UPDATE jobs SET run_at = ?, external = external OR ? "
                    "WHERE id = ? AND status = 'WAITING' "
                    "AND coalesce(waiting_reason, '') NOT IN ('blocked', 'batching', 'batched')",
                    (run_at, int(external), job_id),
                )
            ]
        )
        return counts[0] == 1

    # -- counts and the waiting window (notes 12, 13) ---------------------------------

    def counted(self, pool: str, status: JobStatus) -> int:
        """Jobs of ``pool`` in ``status`` as of this store's latest committed write
        that changed counts, or its opening; no I/O. Another process's writes
        show from this store's next such write on (it reads the table back)."""
        return self._counts.get(pool, status)

    async def last_id(self) -> int:
        row = await self.fetch_one("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'")
        return int(row["seq"]) if row else 0


# A key a JSON path names as it is. SQLite compares a path's quoted label with
# the key's text as stored, escapes and all, and has no way to write a quote in
# one: a key with a backslash, a quote, a control or a non-ASCII character named
# another key (a backslash matched the key with two), and a bulk action by that
# filter cancelled or purged the wrong jobs. Such keys are looked up by
# ``json_each``, which decodes the stored keys.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_ .:/@+-]+")


def _member_match(key: str, value: Any) -> tuple[str, list[Any]]:
    """``metadata_match`` for any key: the member of that decoded name, compared as
    ``metadata_match`` compares (a number with numbers, a boolean with booleans)."""
    found = "EXISTS (SELECT 1 FROM json_each(metadata) AS m WHERE m.key = ? AND "
    if isinstance(value, bool):
        return found + "m.type = ?)", [key, "true" if value else "false"]
    if isinstance(value, int | float):
        return found + "m.value = ? AND m.type IN ('integer', 'real'))", [key, value]
    if value is None:
        return found + "m.type = 'null')", [key]
    return found + "m.value = ? AND m.type = 'text')", [key, value]
