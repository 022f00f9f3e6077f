"""``PgStore``: jobs, attempts, schedules and the lease in a PostgreSQL schema (``taskrt.store.postgres``).

The same operations as the SQLite store (``JobStore``), in PostgreSQL's
dialect, through asyncpg's pool. The notes are the package's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import math
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

from ...errors import InvalidOption, StoreError, StoreUnavailable
from ...limits import check_count, shown
from ...models import JobInfo, JobStatus
from ..groupcommit import GroupCommit, reason
from ..ops import HOLD_LOCK, NOTIFY, UNHOLD_LOCK, failure_params
from ..protocol import BlockedAgain, InsertResult, MinuteRow, NewJob, Settled
from ..queries import MINUTE_COLUMNS, SQL_OWNER, SQL_TAKEN_IN
from ..queued import QueuedWrites
from ..reads import SharedReads
from ..rows import row_to_job
from ..schedules import ScheduleWrites
from ..shielded import to_the_end
from .conns import HeldConnections
from .deps import block_again, form_batch, settle
from .driver import DRIVER_ERRORS, STARTUP, apply_settings, connect
from .heartbeat import Heartbeat
from .lock import AdvisoryLock
from .planner import Analyzer
from .schema import migrate, version
from .sql import (
    APP_LANE,
    CANCEL_ASKED_WHERE,
    CANCEL_WAITING_EXTERNAL_WHERE,
    CLEANUP_WHERE,
    FAIL_PART,
    LOST,
    NOTIFY_PART,
    PURGE_WHERE,
    RETRY_EXTERNAL_WHERE,
    SCHEMA_VERSION,
    SQL_CANCEL_ASKED,
    SQL_CANCEL_WAITING_EXTERNAL,
    SQL_CANCELS,
    SQL_CLAIM,
    SQL_COUNTS,
    SQL_DELETE_ATTEMPTS,
    SQL_DELETE_DEPS,
    SQL_DELETE_LOCKED,
    SQL_DRAW_TOKENS,
    SQL_EVENT_LISTENERS,
    SQL_FREE_HELD_LOST,
    SQL_JOIN,
    SQL_LEAVE,
    SQL_LEFT_ORPHANS,
    SQL_LOCK_AS_READ,
    SQL_MARK_LOCKED,
    SQL_MARK_RATE_LIMITED,
    SQL_NEW_BUCKETS,
    SQL_NEXT_DUE,
    SQL_NODES,
    SQL_NOTIFY,
    SQL_NOTIFY_EACH,
    SQL_NOTIFY_POOLS,
    SQL_POOL_LIMITS,
    SQL_REAP,
    SQL_RELEASE,
    SQL_RELEASE_UNHELD,
    SQL_REQUEST_CANCEL,
    SQL_RESCHEDULE,
    SQL_RETRIED_ONE,
    SQL_RETRY_EXTERNAL,
    SQL_RUNNING_ON,
    SQL_SEQ_GAP,
    SQL_SEQ_GAP_LOST,
    SQL_SET_LIMITS,
    SQL_SET_PAUSED,
    SQL_SETTLE_TOKENS,
    SQL_TELL_REAPED,
    UNHELD_WHERE,
    claim_sql,
    locking,
    numbered,
    recovery,
    tally,
)
from .writer import (
    LaneCounts,
    PgBatches,
    Tally,
    added_payload,
    insert_jobs,
    rolled_back,
    run_pack,
    transient,
)

_T = TypeVar("_T")

IDLE_SETTING = "idle_in_transaction_session_timeout"
SQL_SET_IDLE = f"SELECT set_config('{IDLE_SETTING}', $1, true)"  # this transaction's
# The application's own transaction (``insert_in``): the store's schema ($1, quoted, a
# comma after it) first on its search_path, for this transaction only; the path it
# replaced (NULL, and nothing set, where the connection has no ``job_ids`` table $2 in
# that schema), and the transaction's isolation level (note 15).
SQL_ENTER_APP = (
    "SELECT CASE WHEN to_regclass($2) IS NOT NULL "
    "THEN set_config('search_path', $1 || current_setting('search_path'), true) END, "
    "current_setting('transaction_isolation')"
)
SQL_LEAVE_APP = "SELECT set_config('search_path', $1, true)"
SNAPSHOT_LEVELS = ("repeatable read", "serializable")  # one snapshot for the transaction

# Lanes of ``job_counts`` (note 12): each writer of a process adds to its own rows.
WRITES_LANE = 0  # the group commit of starts, ends and the rest
ADDS_LANE = 1  # the group commit of adds (note 8)
CLAIMS_LANE = 2  # a node's claims (note 9)
POOL_LANE = 3  # the pool's connections: the store's own transactions, the application's
CLAIM_CONNECTIONS = 4  # at most, held open (``conns``)
LANES_PER_NODE = 4
NODE_SPREAD = 8  # a node's lanes are one of this many sets, by its name
assert NODE_SPREAD * LANES_PER_NODE <= APP_LANE  # the application's own, apart

log = logging.getLogger("taskrt.store")
POOL_CLOSE_PATIENCE = 5.0  # seconds a closing pool waits for its connections to come back

SCHEMES = ("postgresql", "postgres")
"""URL schemes of a PostgreSQL database (``Runtime("postgresql://...")``)."""

DEFAULT_SCHEMA = "taskrt"
_NAME_BYTES = 63  # PostgreSQL's identifiers, channel names included


def _channel(schema: str, suffix: str) -> str:
    """``taskrt.<schema><suffix>``; past PostgreSQL's 63 bytes (a long schema name),
    the schema's name is replaced by a digest of it, so the name still fits."""
    name = f"taskrt.{schema}{suffix}"
    if len(name.encode()) <= _NAME_BYTES:
        return name
    return f"taskrt.{hashlib.sha256(schema.encode()).hexdigest()[:24]}{suffix}"


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Query parameters of the URL that are taskrt's, not the driver's.
_OWN_PARAMETERS = ("schema", "statement_cache_size")
_INTEGER = re.compile(r"-?[0-9]{1,20}")
#: The most prepared statements asyncpg caches per connection (docs/postgres.md).
MAX_STATEMENT_CACHE = 100_000


def url_options(query: str) -> dict[str, str]:
    """A URL's query parameters, each given once: ``InvalidOption`` names one given
    twice (``?schema=a&schema=b``), which would otherwise leave one of them unsaid.
    The values are not shown: one may be a password."""
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in options:
            raise InvalidOption(key, "given more than once in the URL; give it once")
        options[key] = value
    return options


def is_postgres_url(target: str) -> bool:
    return urlsplit(target).scheme in SCHEMES


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc))


PoolLimits = tuple[int | None, tuple[int | None] | None, tuple[str | None] | None]
"""A pool's recorded concurrency, capacity and rate (``None``: not recorded)."""


class PgStore(QueuedWrites, SharedReads):
    """PostgreSQL persistence with group commit (see the ``taskrt.store.postgres`` notes).

    ``url``: ``postgresql://user@host:port/database`` (or ``postgres://``),
    with optional query parameters of taskrt's: ``schema`` (where the tables
    live, default ``taskrt``; created if missing) and ``statement_cache_size``
    (``0``: none, on every connection it opens); the others go to the server.
    """

    def __init__(
        self,
        url: str,
        *,
        progress_interval: float = 0.05,
        schema: str | None = None,
        statement_cache_size: int | None = None,
        min_connections: int = 2,
        max_connections: int = 10,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise InvalidOption("database", f"expected a postgresql:// URL, found {url!r}")
        query = url_options(parts.query)
        # An empty one (``?schema=``) is refused below, never the default taken silently.
        chosen = schema if schema is not None else query.get("schema", DEFAULT_SCHEMA)
        if not isinstance(chosen, str) or not _IDENTIFIER.fullmatch(chosen):
            raise InvalidOption(
                "schema",
                f"expected a PostgreSQL identifier (letters, digits, _; at most 63), found {chosen!r}",
            )
        cache = statement_cache_size
        if cache is None and "statement_cache_size" in query:
            raw = query["statement_cache_size"]
            if not _INTEGER.fullmatch(raw):
                raise InvalidOption(
                    "statement_cache_size",
                    f"expected an integer from 0 to {MAX_STATEMENT_CACHE}, found {shown(raw)}",
                )
            cache = int(raw)
        if cache is not None:
            check_count(cache, "statement_cache_size", least=0, most=MAX_STATEMENT_CACHE)
        self.url = url
        self.path = redacted(url)  # how logs and errors name the database
        self.schema = chosen
        self.statement_cache_size = 100 if cache is None else cache
        self._dsn = urlunsplit(
            parts._replace(
                query=urlencode([(k, v) for k, v in query.items() if k not in _OWN_PARAMETERS])
            )
        )
        self._url_settings = {k for k in query if k not in _OWN_PARAMETERS}  # asyncpg's
        self._min = min_connections
        self._max = max_connections
        self._pool: asyncpg.Pool | None = None
        self._pool_settings: dict[str, str] = {}  # its connections' (driver.connect)
        self._claims: HeldConnections | None = None  # a node's claims (note 9)
        super().__init__(self.path, progress_interval=progress_interval)
        self._counts = LaneCounts()  # note 12
        self._claims_lane = 0  # the lane of this node's claims (note 12)
        self._wake: Callable[[str], None] | None = None
        self._events: Callable[[str], None] | None = None
        self._lost: Callable[[], None] | None = None
        self._listening: Callable[[], None] | None = None
        self._missed = False  # the listener was lost since it last listened
        # The capacity of a pool, where this process knows one: the adds to it are
        # counted in the database, so that it holds across processes and the
        # application's own transactions (writer ``_room``).
        self.capacity_of: Callable[[str], int | None] | None = None
        self._batches: PgBatches | None = None
        # Plain adds, group-committed on a connection of their own (note 8).
        self._adds = GroupCommit(self.path, progress_interval=progress_interval)
        self._add_batches: PgBatches | None = None
        self._listener: asyncpg.Connection | None = None
        self._relisten: asyncio.TimerHandle | None = None
        self._relistening: asyncio.Task[None] | None = None  # a reconnect under way
        self._now: list[str] = []  # events to send at once (``send_events_now``)
        self._now_task: asyncio.Task[None] | None = None
        self.node: str | None = None  # the node this process writes as (note 7)
        self._idle_limit: float | None = None  # note 14
        self._app_idle: str | None = None  # the server's own, for the application's (note 14)
        # Told of the jobs a reap here took back and their new sequences (nodebus note 7).
        self.on_reaped: Callable[[list[tuple[int, int]]], None] | None = None
        # The tasks the node registers: its reaps and its leave fail no orphan of
        # another task, which may have an on_failed hook elsewhere (store note 22).
        self.registered: Callable[[], Collection[str] | None] = lambda: None
        # Adds in flight that may start a job here (``insert``): once one answers, the
        # task that awaits it takes the started jobs into memory before it awaits again.
        self.starting_adds: set[asyncio.Future[Any]] = set()
        # Told of each job a claim starts that a blocked job waits for (taskrt.workflows).
        self.on_parent: Callable[[int], None] | None = None
        # The planner's picture of ``jobs``, kept current (note 13).
        self.analyzer = Analyzer(self.schema, lambda: self.pool.acquire(), self.live_counts)

    # -- lifecycle ---------------------------------------------------------

    def connect_options(self) -> dict[str, Any]:
        """What each of taskrt's connections is opened with (asyncpg's ``connect``)."""
        settings = {"search_path": f'"{self.schema}", public'}
        if "jit" not in self._url_settings:
            settings["jit"] = "off"  # note 9: taskrt's statements are short
        if self.node is not None:
            settings["taskrt.node"] = self.node  # what fences its writes (note 7)
        if self._idle_limit is not None and IDLE_SETTING not in self._url_settings:
            settings[IDLE_SETTING] = str(max(1, round(self._idle_limit * 1000)))  # note 14
        return {"statement_cache_size": self.statement_cache_size, "server_settings": settings}

    def generic_options(self) -> dict[str, Any]:
        """``connect_options`` of a connection whose statements take longer to plan
        than to run (the claims, the adds): planned once (note 9)."""
        options = self.connect_options()
        options["server_settings"]["plan_cache_mode"] = "force_generic_plan"
        return options

    @property
    def dsn(self) -> str:
        """The URL the driver connects with (taskrt's own parameters taken out)."""
        return self._dsn

    def ownership_lock(self, *, shared: bool = False) -> AdvisoryLock:
        """The lock that says which process runs this schema's jobs (``lock``);
        ``shared``: held by every node where every process runs jobs (note 7)."""
        return AdvisoryLock(self._dsn, self.schema, shared=shared)

    async def schema_version(self) -> int:
        """The schema's version as it is, without opening the store or creating
        anything (0: no taskrt tables, or no such schema)."""
        try:
            conn = await connect(self._dsn, statement_cache_size=self.statement_cache_size)
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot open database {self.path!r}: {exc}") from exc
        try:
            return await version(conn, self.schema)
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot read {self.path!r}: {exc}") from exc
        finally:
            await conn.close()

    async def migrate(self) -> tuple[int, int]:
        """Bring the schema to this release's version without opening the store:
        (the version found, the version now)."""
        try:
            conn = await connect(self._dsn, statement_cache_size=self.statement_cache_size)
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot open database {self.path!r}: {exc}") from exc
        try:
            found = await migrate(conn, self.schema, self.path)
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot migrate {self.path!r}: {exc}") from exc
        finally:
            await conn.close()
        return found, SCHEMA_VERSION

    async def open(self) -> None:
        try:
            admin = await connect(self._dsn, statement_cache_size=self.statement_cache_size)
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot open database {self.path!r}: {exc}") from exc
        try:
            await migrate(admin, self.schema, self.path)
            if self._idle_limit is not None and IDLE_SETTING not in self._url_settings:
                self._app_idle = str(await admin.fetchval(f"SHOW {IDLE_SETTING}"))
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot open database {self.path!r}: {exc}") from exc
        finally:
            await admin.close()
        options = self._writer_options(self.lane(POOL_LANE), generic=False)
        self._pool_settings = {
            name: value for name, value in options["server_settings"].items() if name not in STARTUP
        }
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min,
                max_size=self._max,
                # taskrt's own uses of a connection leave no session state behind,
                # so a released connection is not reset (a round trip each time);
                # the application's transactions reset theirs (``transaction``).
                reset=_keep_session,
                connect=connect,  # the settings set once open (driver)
                **options,
            )
            if self.node is not None:
                self._claims_lane = self.lane(CLAIMS_LANE)
                options = self._writer_options(self._claims_lane, generic=True)
                if "synchronous_commit" not in self._url_settings:
                    options["server_settings"]["synchronous_commit"] = "off"  # note 10
                self._claims = HeldConnections(self._dsn, options, CLAIM_CONNECTIONS)
                await self._claims.open()
            self._replace_counts(await self._pool.fetch(SQL_COUNTS))
        except DRIVER_ERRORS as exc:
            await self._close_pool()
            raise StoreError(f"cannot open database {self.path!r}: {exc}") from exc
        except BaseException:  # a cancel: nothing opened stays open
            await self._close_pool()
            raise
        self._batches = self._writer(WRITES_LANE, generic=False)
        self._writes.start(self._batches)
        self._add_batches = self._writer(ADDS_LANE, generic=True)
        self._adds.start(self._add_batches)
        self.analyzer.start()

    def _writer_options(self, lane: int, *, generic: bool) -> dict[str, Any]:
        """The connect options of a writer adding to ``lane`` (note 12); ``generic``:
        its statements are planned once (note 9)."""
        options = self.generic_options() if generic else self.connect_options()
        options["server_settings"]["taskrt.lane"] = str(lane)
        return options

    def _writer(self, writer: int, *, generic: bool) -> PgBatches:
        """A group commit's writer, on a connection of its own (notes 3, 8)."""
        lane = self.lane(writer)
        options = self._writer_options(lane, generic=generic)
        batches = PgBatches(
            self._dsn, options, self._counts, self.channel, lane=lane, announce=self.node
        )
        batches.capacity_of = self.capacity_of
        return batches

    def lane(self, writer: int) -> int:
        """The lane of ``job_counts`` a writer of this process adds to (note 12): by
        writer, and on a node by its name too (two nodes share a set one time in
        ``NODE_SPREAD``)."""
        spread = 0 if self.node is None else zlib.crc32(self.node.encode()) % NODE_SPREAD
        return spread * LANES_PER_NODE + writer

    async def close(self, patience: float = 10.0) -> None:
        """Write everything queued (trying ``patience`` seconds while writes fail), disconnect."""
        await self.analyzer.stop()
        task, self._now_task = self._now_task, None
        if task is not None:  # progress only: a second at most (a server out of reach)
            done, _ = await asyncio.wait([task], timeout=1.0)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pool is not None:
            await self._adds.close(patience)
            await self._writes.close(patience)
            for batches in (self._add_batches, self._batches):
                if batches is not None:
                    await batches.close()
            self._batches = self._add_batches = None
        await self._close_pool()

    # -- the two lanes of the group commit (note 8) ------------------------------------

    def lanes(self) -> tuple[GroupCommit, ...]:
        return (self._writes, self._adds)

    def insert(self, jobs: list[NewJob]) -> asyncio.Future[list[InsertResult | BaseException]]:
        """Plain adds in their own lane while the lifecycle lane has a batch in flight,
        else with the lifecycle writes, as adds with unique keys or ids of their own
        go (note 8). Plain adds to a pool with a capacity always go in their own
        lane: a batch of adds alone is one statement that counts them (writer
        ``_room``), planned once there; beside lifecycle writes it is a transaction
        of several."""
        capacity_of = self.capacity_of
        if all(job.unique_key is None and job.job_id is None for job in jobs) and (
            not self._writes.idle
            or (capacity_of is not None and any(capacity_of(j.pool) is not None for j in jobs))
        ):
            fut = self._adds.insert(jobs)
        else:
            fut = self._writes.insert(jobs)
        if self.node is not None and any(job.start for job in jobs):
            # It may start a job on this node (note 11): until its answer is in, a
            # RUNNING row of this node that memory does not hold may be its (nodes note 8).
            self.starting_adds.add(fut)
            fut.add_done_callback(self.starting_adds.discard)
        return fut

    async def _close_pool(self) -> None:
        for pool in (self._claims, self._pool):
            if pool is not None:
                try:
                    # A close waits for every connection to come back: one a task
                    # never gives back would hold the stop for ever (asyncpg only
                    # warns each minute). Past the patience, the rest are cut.
                    await asyncio.wait_for(pool.close(), POOL_CLOSE_PATIENCE)
                except TimeoutError:
                    log.warning(
                        "closing %s: a connection was not given back within %g s; "
                        "the pool's connections were cut",
                        self.path,
                        POOL_CLOSE_PATIENCE,
                    )
                    if isinstance(pool, asyncpg.Pool):  # the claims' own close is bounded
                        pool.terminate()
                except DRIVER_ERRORS as exc:
                    log.error("closing %s failed: %s", self.path, exc)
        self._pool = self._claims = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the store is not open")
        return self._pool

    def _merge_counts(self, changed: Iterable[Any], lane: int | None = None) -> None:
        """The new counts of the (pool, status) a committed write changed, in ``lane``
        (note 12; default: the pool's connections')."""
        self._counts.merge(changed, self.lane(POOL_LANE) if lane is None else lane)

    async def external_changes(self, limit: int = 1000) -> list[tuple[JobInfo, bool]]:
        """The jobs other processes added or changed (``SharedReads``); with any, the
        counts are read again too: an application's own transaction (``tx=conn``)
        adds to them where this process does not see it (note 12), and a paused or
        full pool writes nothing that would read them back."""
        found = await super().external_changes(limit)
        if found:
            self._replace_counts(await self.query(SQL_COUNTS))
        return found

    def _replace_counts(self, rows: Iterable[Any]) -> None:
        """The whole of ``job_counts``: (pool, status, lane, n) rows."""
        self._counts.replace(rows)

    # -- transactions ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTransaction]:
        """A transaction on a connection of its own (the group commit goes on meanwhile).

        A cancel leaves it committed or rolled back, and the connection back in
        the pool outside it (store note 24).
        """
        try:
            conn = await self.pool.acquire()
        except DRIVER_ERRORS as exc:
            raise _error(self.path, exc) from exc
        tx = conn.transaction()
        try:
            await to_the_end(self._begin(conn, tx))
            handle = PgTransaction(conn)
            yield handle
            await to_the_end(self._commit(conn, tx, handle))
        finally:
            await to_the_end(self._give_back(conn, tx))

    async def _begin(self, conn: asyncpg.Connection, tx: Transaction) -> None:
        try:
            await tx.start()
            if self._app_idle is not None:  # the application's may wait on it (note 14)
                await conn.execute(SQL_SET_IDLE, self._app_idle)
        except DRIVER_ERRORS as exc:
            raise _error(self.path, exc) from exc

    async def _commit(
        self, conn: asyncpg.Connection, tx: Transaction, handle: PgTransaction
    ) -> None:
        """Commit the application's transaction (``_give_back`` rolls back one that fails)."""
        try:
            rows = await conn.fetch(SQL_COUNTS) if handle.counts_changed else None
            if rows is None:
                # A statement that failed in it left it aborted, and its COMMIT
                # would roll it back without a word: this says so (StoreError).
                await conn.execute("SELECT 1")
            await tx.commit()
        except DRIVER_ERRORS as exc:
            raise _error(self.path, exc) from exc
        handle.committed = True
        if rows is not None:
            self._replace_counts(rows)

    async def _give_back(self, conn: asyncpg.Connection, tx: Transaction) -> None:
        """The connection of an application's transaction back to the pool: rolled
        back if still in it, and its session as taskrt opened it."""
        # What the application's SQL set for the session (SET, advisory locks)
        # must not outlive its transaction on a connection taskrt uses again;
        # reset outside the transaction, for a rollback would undo the reset.
        with contextlib.suppress(*DRIVER_ERRORS):
            if not conn.is_closed():
                if conn.is_in_transaction():
                    await tx.rollback()
                await conn.execute(conn.get_reset_query())
                # RESET ALL undid taskrt's own settings too, set once open (driver).
                await apply_settings(conn, self._pool_settings)
        await self.pool.release(conn)

    async def insert_in(self, tx: Any, jobs: Sequence[NewJob]) -> list[InsertResult]:
        """Insert jobs inside the open transaction ``tx`` (transactional enqueue).

        In the application's own transaction (``adopt_transaction``) the jobs are
        marked for the owner to find, and a notification, sent when that
        transaction commits, wakes the owner (``listen``).
        """
        if not isinstance(tx, PgTransaction):
            raise StoreError(f"expected a transaction of this store, found {tx!r}")
        if tx.foreign is not None and not tx.conn.is_in_transaction():
            # No transaction of the application's: the add is one of its own, at READ
            # COMMITTED whatever the session's default, so it has nothing to retry (note 15).
            async with tx.conn.transaction(isolation="read_committed"):
                return await self.insert_in(tx, jobs)
        counted = Tally()
        conn = tx.conn
        try:
            if tx.foreign is not None:
                schema = f'"{tx.foreign}"'
                path, level = await conn.fetchrow(SQL_ENTER_APP, f"{schema}, ", f"{schema}.job_ids")
                if path is None:
                    # A schema that is not on that database is skipped in a search_path
                    # without a word: unqualified, the statements would have found
                    # tables of the same names elsewhere (``public``), as another
                    # database's own "jobs" table, and failed on a missing column.
                    raise StoreError(
                        f"the connection given as tx= has no taskrt tables in schema "
                        f"{tx.foreign!r}: is it a connection to this runtime's database?"
                    )
                if level in SNAPSHOT_LEVELS and tx.sqlalchemy is not None:
                    await _take_ids_as(tx.sqlalchemy, tx.foreign)
            # kept: the last id moves the sequence too, which a rollback does not undo
            # (sql.SCHEMA_V12)
            results = await insert_jobs(
                conn, [list(jobs)], counted, kept=True, capacity_of=self.capacity_of
            )
            await counted.apply(conn)
            if tx.foreign is not None:
                await conn.execute("SELECT pg_notify($1, 'added')", self.channel)
            if self.node is not None:  # every node claims (note 7): sent at the commit
                pools = sorted({job.pool for job in jobs})
                notes = [(self.channel, added_payload(pool, None)) for pool in pools]
                await run_pack(conn, [(NOTIFY_PART, notes)])  # None: every node looks
            if tx.foreign is not None:
                # Put back after a success only: a failed statement aborted the
                # transaction, whose end undoes the local setting anyway, and a
                # statement now would hide the failure behind "transaction is aborted".
                await conn.execute(SQL_LEAVE_APP, path.removeprefix(f"{schema}, "))
        except DRIVER_ERRORS as exc:
            foreign = tx.foreign is not None
            if foreign and isinstance(exc, asyncpg.PostgresError) and rolled_back(exc):
                # The application's to retry, as its own statements' (note 15).
                exc.add_note(_retry_note(exc.sqlstate))
                raise
            raise _error(self.path, exc) from exc
        tx.counts_changed = True
        out: list[InsertResult] = []
        for res in results:
            if isinstance(res, BaseException):
                raise res
            out.append(res)
        return out

    async def adopt_transaction(self, connection: Any) -> PgTransaction | None:
        """The application's asyncpg connection (or SQLAlchemy's ``AsyncConnection``
        over asyncpg) in its open transaction, for ``add(..., tx=connection)``."""
        if isinstance(connection, asyncpg.Connection | PoolConnectionProxy):
            return PgTransaction(connection, foreign=self.schema)
        raw = getattr(connection, "get_raw_connection", None)
        if raw is None:
            return None
        # SQLAlchemy begins the driver's transaction at its first statement:
        # make it begin now, so the jobs are written in it.
        await connection.exec_driver_sql("SELECT 1")
        proxied = await raw()
        conn = getattr(proxied, "driver_connection", None)
        if not isinstance(conn, asyncpg.Connection | PoolConnectionProxy):
            return None
        return PgTransaction(conn, foreign=self.schema, sqlalchemy=connection)

    # -- what other processes commit for the owner (note 6) --------------------------

    @property
    def channel(self) -> str:
        """The notification channel of this schema's owner (or nodes)."""
        return _channel(self.schema, "")

    @property
    def events_channel(self) -> str:
        """Where nodes send each other their events (``taskrt.nodebus``)."""
        return _channel(self.schema, ".events")

    async def listen(
        self,
        wake: Callable[[str], None],
        events: Callable[[str], None] | None = None,
        lost: Callable[[], None] | None = None,
        listening: Callable[[], None] | None = None,
    ) -> None:
        """``wake()`` on each notification of the channel, ``events()`` on each of the
        events channel, on a connection of its own; a lost connection is opened
        again (the owner polls meanwhile); ``lost()`` is told when it drops and
        again when it listens anew (notifications in between are missed),
        ``listening()`` each time it listens, the first included."""
        self._wake = wake
        self._events = events
        self._lost = lost
        self._listening = listening
        await self._listen()

    async def other_listeners(self) -> int:
        """How many other connections listen to this schema's events (``taskrt.nodebus``
        note 5). Listeners of releases that named every listener ``taskrt listener``,
        whatever their schema and mode, are counted too: they may serve streams."""
        listener = self._listener
        pid = 0 if listener is None else listener.get_server_pid()
        row = await self.fetch_one(SQL_EVENT_LISTENERS, (self.events_channel, pid))
        return int(row[0])

    async def _listen(self) -> None:
        # A listener of events is named after their channel: the nodes count each other
        # by it (``taskrt.nodebus`` note 5; a schema's name is ASCII, so PostgreSQL keeps
        # it as it is).
        name = "taskrt owner listener" if self._events is None else self.events_channel
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect(
                self._dsn,
                statement_cache_size=self.statement_cache_size,
                server_settings={"application_name": name},
            )
            await conn.add_listener(self.channel, self._notified)
            if self._events is not None:
                await conn.add_listener(self.events_channel, self._events_notified)
        except BaseException as exc:
            if conn is not None:
                conn.terminate()  # not left listening half set up (a cancel: a stop)
            if not isinstance(exc, DRIVER_ERRORS):
                raise
            log.warning("cannot listen on %s (%s); the owner polls", self.path, exc)
            self._relisten_later()
            return
        if self._wake is None:
            # Stopped listening (``unlisten``) while this listener connected, as one
            # that reconnects after a drop may: nobody is left to tell.
            conn.terminate()
            return
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn
        if self._missed and self._lost is not None:
            # Listening again: what was sent while it did not is unknown here.
            self._lost()
        self._missed = False
        if self._listening is not None:
            self._listening()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if self._wake is not None:
            self._wake(payload)

    def _events_notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if self._events is not None:
            self._events(payload)

    def _listener_lost(self, _: Any) -> None:
        self._listener = None
        self._missed = True
        if self._lost is not None:
            self._lost()
        if self._wake is not None:
            self._wake("changed")  # what was sent meanwhile is found by the poll
            self._relisten_later()

    def _relisten_later(self) -> None:
        if self._wake is None:
            return
        self._relisten = asyncio.get_running_loop().call_later(1.0, self._relisten_now)

    def _relisten_now(self) -> None:
        self._relisten = None
        self._relistening = asyncio.get_running_loop().create_task(
            self._listen(), name="taskrt-relisten"
        )

    def send_events(self, payloads: list[str]) -> asyncio.Future[None] | None:
        """Notifications on the events channel, in order, sent by the commit of the
        writes queued before them (they ride the next batch, note 7); the future of
        the last one's commit."""
        committed = None
        for payload in payloads:
            committed = self._writes.queue(NOTIFY, (self.events_channel, payload))
        return committed

    def send_events_now(self, payloads: list[str]) -> None:
        """Notifications on the events channel, in order, sent at once on a connection
        of the node's claims, whose commits do not wait for the disk (note 10): what
        it may lose in a crash of the server is progress (``taskrt.nodebus`` note 6).
        One statement at a time; what comes meanwhile goes in the next."""
        if self._claims is None:
            self.send_events(payloads)
            return
        self._now.extend(payloads)
        if self._now_task is None or self._now_task.done():
            self._now_task = asyncio.get_running_loop().create_task(
                self._send_now(), name="taskrt-events-now"
            )

    async def _send_now(self) -> None:
        while self._now and self._claims is not None:
            payloads, self._now = self._now, []
            try:
                async with self._claims.acquire() as conn:
                    await conn.execute(SQL_NOTIFY_EACH, self.events_channel, payloads)
            except DRIVER_ERRORS as exc:
                # Progress only: the next report, or the job's end, carries its state.
                log.debug("progress events not sent: %s", exc)

    async def unlisten(self) -> None:
        self._wake = None
        self._events = None
        self._lost = None
        self._listening = None
        if self._relisten is not None:
            self._relisten.cancel()
            self._relisten = None
        task, self._relistening = self._relistening, None
        if task is not None and not task.done():
            task.cancel()  # a connection it made is terminated (``_listen``)
            await asyncio.wait([task])
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(*DRIVER_ERRORS):
                await conn.close(timeout=5)

    # -- immediate operations ------------------------------------------------------

    async def _script(
        self,
        steps: Sequence[tuple[Any, ...]],
        *,
        gate: bool = False,
        returned: list[Any] | None = None,
    ) -> list[int]:
        """Statements in one transaction, now; their row counts. A step of three (a
        ``tally``, its params, a status or None) counts the rows the next statement
        is about to change (locked) as moving there (note 3). ``gate``: the first
        statement changing no row ends the script there. The rows of statements
        with ``RETURNING`` go into ``returned``."""
        start = 0 if returned is None else len(returned)

        async def body(conn: asyncpg.Connection, counted: Tally) -> list[int]:
            rowcounts: list[int] = []
            if returned is not None:
                del returned[start:]  # what a rolled back run returned is gone with it
            for step in steps:
                if len(step) == 3:
                    sql, params, to = step
                    for pool, status, n in await conn.fetch(sql, *params):
                        counted.move(
                            str(pool), str(status), None if to is None else to.value, int(n)
                        )
                else:
                    if " RETURNING " in step[0]:
                        rows = await conn.fetch(step[0], *step[1])
                        rowcounts.append(len(rows))
                        if returned is not None:
                            returned.extend(rows)
                    else:
                        rowcounts.append(_rowcount(await conn.execute(step[0], *step[1])))
                    if gate and rowcounts == [0]:
                        break
            return rowcounts

        return await self._counted_transaction(body)

    async def claim_ownership(self, owner: str, address: str | None, now: float) -> str | None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(numbered(SQL_OWNER) + " FOR UPDATE")
                await conn.execute(SQL_CLAIM, owner, address, now)
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot record the owner of {self.path!r}: {exc}") from exc
        return None if row is None else str(row[0])

    async def release_lease(self, owner: str) -> None:
        await self._script([(SQL_RELEASE, (owner,))])

    async def set_pool_paused(self, name: str, paused: bool) -> None:
        await self._script(
            [(SQL_SET_PAUSED, (name, int(paused))), (SQL_NOTIFY_POOLS, (self.channel,))]
        )

    @contextlib.asynccontextmanager
    async def alone(self, what: str) -> AsyncIterator[bool]:
        """A session advisory lock named after the schema and ``what``, tried on a
        connection held for the block and released after it."""
        key = f"taskrt.{self.schema}.{what}"
        try:
            async with self.pool.acquire() as conn:
                mine = bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key))
                try:
                    yield mine
                finally:
                    if mine:
                        await conn.fetchval("SELECT pg_advisory_unlock(hashtext($1))", key)
        except DRIVER_ERRORS as exc:
            raise _error(self.path, exc) from exc

    async def set_pool_limits(
        self,
        name: str,
        concurrency: int | None,
        capacity: tuple[int | None] | None,
        rate: tuple[str | None] | None = None,
        paused: bool | None = None,
    ) -> None:
        """Record a pool's concurrency (``None``: unchanged), capacity and rate
        (``None``: unchanged, ``(None,)``: no limit), and its pause (``None``:
        unchanged), in one transaction, for every node of mode "nodes"; notify them."""
        given, value = (0, None) if capacity is None else (1, capacity[0])
        rate_given, rate_value = (0, None) if rate is None else (1, rate[0])
        steps: list[tuple[Any, ...]] = [
            (SQL_SET_LIMITS, (name, concurrency, given, value, rate_given, rate_value))
        ]
        if paused is not None:
            steps.append((SQL_SET_PAUSED, (name, int(paused))))
        await self._script([*steps, (SQL_NOTIFY_POOLS, (self.channel,))])

    async def pool_limits(self) -> dict[str, PoolLimits]:
        """The limits recorded by ``set_pool_limits``, by pool: (concurrency, capacity, rate)."""
        rows = await self.query(SQL_POOL_LIMITS)
        return {
            str(r["name"]): (
                r["concurrency"],
                (r["capacity"],) if r["capacity_set"] else None,
                (r["rate"],) if r["rate_set"] else None,
            )
            for r in rows
        }

    # -- nodes: every process runs workers (note 7) ------------------------------------

    def join_as(self, node: str, ttl: float | None = None) -> None:
        """Write as ``node`` (before ``open``): a write of a RUNNING job lands only
        if that job runs on this node (fenced, note 7). ``ttl``: the longest a
        transaction of taskrt's may sit idle (note 14)."""
        self.node = node
        self._idle_limit = ttl

    async def join(self, node: str, host: str, pid: int, started_at: float, ttl: float) -> None:
        """Record the node as alive (its heartbeat starts now)."""
        await self._script([(SQL_JOIN, (node, host, pid, started_at, ttl))])

    async def leave(self, node: str, now: float, max_recoveries: int) -> int:
        """The node stops: its row goes and, in the same transaction, any job still
        RUNNING on it (a claim cut short) is put back as by ``reap``. An orphan of a
        task with an ``on_failed`` hook stays RUNNING on the node, for its runtime to
        fail with the hook before it stops (``on_orphans``, note 22); a node that dies
        first leaves it to the next node that looks for jobs of no live node. Returns
        how many it kept."""
        steps: list[tuple[Any, ...]] = [(SQL_LEAVE, (node,))]
        steps += _recovery_steps(
            LOST,
            now,
            max_recoveries,
            node=node,
            hooked=self.failed_hooks(),
            known=self.registered(),
        )
        steps.append((SQL_FREE_HELD_LOST, ()))
        rows: list[Any] = []
        await self._script(steps, returned=rows)
        return self._recovered(rows)

    async def notify(self, payload: str) -> None:
        """A notification to every process listening on the schema's channel."""
        await self._script([("SELECT pg_notify($1, $2)", (self.channel, payload))])

    async def nodes(self) -> list[dict[str, Any]]:
        """The nodes alive or not reaped yet: id, host, pid, since, ttl, heartbeat age."""
        rows = await self.fetch_all(SQL_NODES)
        return [
            {
                "id": r[0],
                "host": r[1],
                "pid": int(r[2]),
                "since": float(r[3]),
                "ttl": float(r[4]),
                "heartbeat_age": max(0.0, float(r[6]) - float(r[5])),
            }
            for r in rows
        ]

    @property
    def counts_capacity(self) -> bool:
        return self.capacity_of is not None

    @property
    def starts_in_add(self) -> bool:
        """Where one owner runs every job (no node), its adds start what it says
        (``taskrt.pool`` note 9); a node's ``start`` is a request the add's statement
        grants or not (note 11)."""
        return self.node is None

    async def claim(
        self,
        pool: str,
        tasks: Sequence[str],
        limit: int,
        now: float,
        node: str,
        caps: dict[str, int] | None = None,
    ) -> list[JobInfo]:
        """Start up to ``limit`` due jobs of ``pool`` (of ``tasks``; at most ``caps[task]``
        of a task) on ``node``, in run order, in one statement; none when the node's
        heartbeat is stale."""
        caps = caps or {}
        conns: HeldConnections | asyncpg.Pool = self._claims or self.pool
        try:
            rows = await conns.fetch(
                claim_sql(limit),
                pool,
                now,
                list(tasks),
                limit,
                node,
                list(caps),
                list(caps.values()),
            )
        except DRIVER_ERRORS as exc:
            raise _error(self.path, exc) from exc
        if rows:
            last = rows[-1]
            self._merge_counts(
                [
                    (pool, JobStatus.WAITING.value, last[-2]),
                    (pool, JobStatus.RUNNING.value, last[-1]),
                ],
                self._claims_lane,
            )
        on_parent = self.on_parent
        if on_parent is not None:
            for r in rows:
                if r[-3]:
                    on_parent(int(r[0]))
        return [row_to_job(r) for r in rows]

    async def draw_tokens(
        self, draws: Sequence[tuple[str, float, float, float]], now: float
    ) -> dict[str, tuple[float, float]]:
        """Rate limits every node shares (``taskrt.rates`` note 2): for each (bucket,
        tokens wanted, rate per second, burst), refill it to ``now`` and take up to
        that many whole tokens; (taken, tokens left) by bucket."""
        names = [d[0] for d in draws]
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(SQL_NEW_BUCKETS, names, [d[3] for d in draws], now)
                rows = await conn.fetch(
                    SQL_DRAW_TOKENS,
                    names,
                    [d[1] for d in draws],
                    [d[2] for d in draws],
                    [d[3] for d in draws],
                    now,
                )
        except DRIVER_ERRORS as exc:
            raise _error(self.path, exc) from exc
        return {str(r[0]): (float(r[1]), float(r[2])) for r in rows}

    async def mark_waiting(
        self, pool: str, now: float, rate_limited: Sequence[str] | None = None
    ) -> None:
        """Record why due jobs of ``pool`` wait (mode "nodes"): the first of the tasks
        ``rate_limited`` a rate limit held back, else those a lock holds."""
        if rate_limited is not None:
            await self._script([(SQL_MARK_RATE_LIMITED, (pool, now, list(rate_limited)))])
        else:
            await self._script([(SQL_MARK_LOCKED, (pool, now))])

    async def settle_tokens(self, deltas: dict[str, float]) -> None:
        """Give back the tokens a claim drew and did not use (bucket -> how many)."""
        if deltas:
            await self._script([(SQL_SETTLE_TOKENS, (list(deltas), list(deltas.values())))])

    async def next_due(self, pool: str, tasks: Sequence[str], now: float) -> float | None:
        """When the first of ``pool``'s delayed jobs (of ``tasks``) comes due."""
        row = await self.fetch_one(SQL_NEXT_DUE, (pool, now, list(tasks)))
        return None if row is None or row[0] is None else float(row[0])

    async def cancels(self, node: str) -> list[int]:
        """The jobs running on ``node`` that a cancel was asked for elsewhere."""
        return [int(r[0]) for r in await self.fetch_all(SQL_CANCELS, (node,))]

    async def running_on(self, node: str) -> list[tuple[int, int]]:
        """The jobs RUNNING on ``node``, as the database has it: (id, seq) of each."""
        return [(int(r[0]), int(r[1])) for r in await self.fetch_all(SQL_RUNNING_ON, (node,))]

    async def release_unheld(self, node: str, jobs: list[tuple[int, int]]) -> int:
        """Put back to WAITING those of ``jobs`` (id, seq as ``running_on`` read them)
        still RUNNING on ``node`` as read, which its memory does not hold (a claim or
        an add whose answer was lost: no handler ran), their attempt given back; how
        many."""
        params = ([i for i, _ in jobs], node, [seq for _, seq in jobs])
        [moved] = await self._script(
            [
                (tally(UNHELD_WHERE), params, JobStatus.WAITING),
                (SQL_RELEASE_UNHELD, params),
            ]
        )
        if moved:
            await self.notify("changed")  # a node with a free slot claims them
        return moved

    async def cancel_asked(self, now: float) -> list[tuple[int, int, str, str]]:
        """Retries put back after a cancel was asked for while their attempt ran (store
        note 21), CANCELLED at ``now``: (id, seq, task, pool) of each."""
        rows: list[Any] = []
        await self._script(
            [
                (tally(CANCEL_ASKED_WHERE), (), JobStatus.CANCELLED),
                (SQL_CANCEL_ASKED, (now,)),
            ],
            returned=rows,
        )
        return [(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]

    def hold_lock(self, job_id: int, key: str) -> asyncio.Future[None]:
        """The attempt of ``job_id`` ends while its handler runs on here: its lock key
        stays held for every node's claims (queued before the attempt's end, so
        committed with it or before it) until ``unhold_lock`` or this node is gone."""
        return self._writes.queue(HOLD_LOCK, (job_id, key), job_id)

    def unhold_lock(self, job_id: int) -> asyncio.Future[None]:
        """The handler that held ``job_id``'s lock key on here returned."""
        return self._writes.queue(UNHOLD_LOCK, (job_id,), job_id)

    async def reap(
        self, now: float, *, max_recoveries: int, seq_gap: int, everything: bool = False
    ) -> tuple[int, int, int, int]:
        """Forget the nodes whose heartbeat is older than their TTL and, in the same
        transaction, put their RUNNING jobs back as recovery does (attempt recorded
        as interrupted; orphaned after ``max_recoveries``): (nodes, recovered,
        orphaned, left: the orphans of tasks not ``registered`` here, left RUNNING
        for a node that registers them, store note 22). Without a stale node nothing
        else runs, unless ``everything`` (a node starting: RUNNING jobs of no node
        alive, whoever left them). The jobs and their sequences past the gap are
        told on the events channel at the commit (``taskrt.nodebus`` note 7)."""
        known = self.registered()
        steps: list[tuple[Any, ...]] = [(SQL_REAP, ())]
        steps += _recovery_steps(
            LOST,
            now,
            max_recoveries,
            (SQL_SEQ_GAP_LOST, (seq_gap,)),
            node=self.node,
            hooked=self.failed_hooks(),
            known=known,
        )
        # Told before they move (nodebus note 7): their late events are stale everywhere.
        steps.insert(3, (SQL_TELL_REAPED, (self.events_channel, self.node or "")))
        if known is not None:
            steps.append((SQL_LEFT_ORPHANS, (sorted(known),)))
        steps.append((SQL_FREE_HELD_LOST, ()))  # after the counts read below
        rows: list[Any] = []
        counts = await self._script(steps, gate=not everything, returned=rows)
        if len(counts) == 1:  # no stale node: nothing else ran
            return counts[0], 0, 0, 0
        reaped = [(int(r["id"]), int(r["seq"])) for r in rows if "seq" in r]
        if reaped and self.on_reaped is not None:
            self.on_reaped(reaped)  # its own listener may not listen yet (a start's reap)
        self._recovered(rows)
        # Kept orphans (store note 22) are failed by this node's runtime, now.
        return counts[0], counts[6], counts[7] + counts[9], counts[10] if known is not None else 0

    def heartbeat(self, node: str, interval: float) -> Heartbeat:
        """A thread that keeps ``node`` alive on a connection of its own (``heartbeat``)."""
        return Heartbeat(self._dsn, self.schema, node, interval)

    async def recover(self, now: float, *, max_recoveries: int, seq_gap: int) -> tuple[int, int]:
        steps = _recovery_steps(
            "",
            now,
            max_recoveries,
            (SQL_SEQ_GAP, (seq_gap,)),
            node=self.node,
            hooked=self.failed_hooks(),
        )
        steps.append((SQL_TAKEN_IN, ()))
        rows: list[Any] = []
        _, _, _, _, recovered, kept, _, orphaned, _ = await self._script(steps, returned=rows)
        self._recovered(rows)
        return recovered, orphaned + kept

    async def cancel_external(self, job_id: int, now: float) -> int | None:
        seqs: list[Any] = []
        await self._script(
            [
                (tally(CANCEL_WAITING_EXTERNAL_WHERE), (job_id,), JobStatus.CANCELLED),
                (SQL_CANCEL_WAITING_EXTERNAL, (job_id, now)),
                (SQL_REQUEST_CANCEL, (job_id,)),
                (SQL_NOTIFY, (self.channel,)),
            ],
            returned=seqs,
        )
        return int(seqs[0][0]) if seqs else None

    async def retry_external(self, job_id: int, now: float, max_attempts: int | None) -> int | None:
        seqs: list[Any] = []
        await self._script(
            [
                (tally(RETRY_EXTERNAL_WHERE), (job_id,), JobStatus.WAITING),
                (SQL_RETRY_EXTERNAL, (job_id, now, max_attempts)),
                (SQL_RETRIED_ONE, (job_id, now)),  # only if it retried (gate)
                (SQL_NOTIFY, (self.channel,)),
            ],
            gate=True,
            returned=seqs,
        )
        return int(seqs[0][0]) if seqs else None

    async def cleanup(self, before: float, statuses: Sequence[JobStatus]) -> int:
        values = [s.value for s in statuses]
        return await self._delete(locking(CLEANUP_WHERE), (before, values))

    async def purge(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        return await self._delete(locking(PURGE_WHERE), (list(ids),))

    async def form_batch(
        self, task: str, key: str, limit: int, now: float, ripe_before: float | None = None
    ) -> tuple[int, str, list[int]] | None:
        """The oldest ``batching`` jobs of ``task`` and ``key`` form a batch (``store.deps``)."""

        async def body(conn: asyncpg.Connection, _: Tally) -> tuple[int, str, list[int]] | None:
            formed = await form_batch(conn, task, key, limit, now, ripe_before)
            if formed is not None:
                await self._wake_pools(conn, [formed[1]])
            return formed

        return await self._counted_transaction(body)

    async def _wake_pools(self, conn: asyncpg.Connection, pools: Iterable[str]) -> None:
        """Jobs of ``pools`` became due in this transaction (a dependent released, a
        batch formed): the other nodes' pools claim at its commit, as after an add
        (``taskrt.nodes`` note 4); where one owner runs the jobs, it knows already."""
        node = self.node
        if node is not None:
            payloads = [added_payload(pool, node) for pool in sorted(set(pools))]
            if payloads:
                await conn.execute(SQL_NOTIFY_EACH, self.channel, payloads)

    async def settle_deps(self, parents: Sequence[int] | None, now: float) -> Settled:
        """Close the open dependencies on finished jobs, release or cancel their
        dependents (``taskrt.store.deps``), in one transaction."""
        if parents is not None and not parents:
            return Settled()

        async def body(conn: asyncpg.Connection, counted: Tally) -> Settled:
            settled = await settle(conn, parents, now, counted)
            await self._wake_pools(conn, (pool for _, pool in settled.released))
            return settled

        return await self._counted_transaction(body)

    async def _counted_transaction(
        self, body: Callable[[asyncpg.Connection, Tally], Awaitable[_T]]
    ) -> _T:
        """``body`` in one counted transaction, run again (at most twice) when the
        server rolls it back on its own: a settle, a block again, a batch's forming
        and a retry of a chain lock jobs and their dependencies in orders that can
        meet, and so can an action by hand (a retry of a failed parent a settle holds)
        with both (a deadlock, which PostgreSQL ends by rolling one back; each is
        safe to repeat: nothing of it stayed)."""
        for attempt in range(3):
            counted = Tally()
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    result = await body(conn, counted)
                    changed = await counted.apply(conn)
            except DRIVER_ERRORS as exc:
                if attempt < 2 and isinstance(exc, asyncpg.PostgresError) and rolled_back(exc):
                    continue
                raise _error(self.path, exc) from exc
            self._merge_counts(changed)
            return result
        raise AssertionError("unreachable")

    async def block_again(
        self, job_id: int, run_at: float, max_attempts: int | None, *, external: bool = False
    ) -> BlockedAgain | None:
        """A dependent that never ran, blocked again on its parents (``store.deps``)."""

        async def body(conn: asyncpg.Connection, counted: Tally) -> BlockedAgain | None:
            return await block_again(conn, job_id, run_at, max_attempts, counted, external)

        return await self._counted_transaction(body)

    async def _delete(self, lock_sql: str, params: tuple[Any, ...]) -> int:
        """Delete jobs and their attempts in one transaction, counted (note 3).

        The rows are locked first, and only those are deleted, by a later statement
        that sees what an add of a dependent committed meanwhile (it held the
        parent until then): a parent it named stays. Counted by what the delete
        returns."""
        counted = Tally()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                locked = [int(r[0]) for r in await conn.fetch(lock_sql, *params)]
                rows = await conn.fetch(SQL_DELETE_LOCKED, locked) if locked else []
                deleted = [int(r[0]) for r in rows]
                for (pool, status), n in collections.Counter(
                    (str(r[1]), str(r[2])) for r in rows
                ).items():
                    counted.move(pool, status, None, n)
                if deleted:
                    await conn.execute(SQL_DELETE_ATTEMPTS, deleted)
                    for statement in SQL_DELETE_DEPS:
                        await conn.execute(statement, deleted)
                changed = await counted.apply(conn)
        except DRIVER_ERRORS as exc:
            raise _error(self.path, exc) from exc
        self._merge_counts(changed)
        return len(deleted)

    async def reschedule(self, job_id: int, run_at: float, *, external: bool = False) -> bool:
        steps: list[tuple[Any, ...]] = [(SQL_RESCHEDULE, (run_at, int(external), job_id))]
        if external:
            steps.append((SQL_NOTIFY, (self.channel,)))
        counts = await self._script(steps)
        return counts[0] == 1

    async def prune_history(self, before_minute: int) -> int:
        (deleted,) = await self._script(
            [("DELETE FROM job_minutes WHERE minute < $1", (before_minute,))]
        )
        return deleted

    async def prune_unique_keys(self, now: float) -> int:
        (deleted,) = await self._script(
            [("DELETE FROM unique_keys WHERE expires_at <= $1", (now,))]
        )
        return deleted

    # -- reads -------------------------------------------------------------------

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self.pool.fetch(sql, *params))
        except DRIVER_ERRORS as exc:
            raise StoreError(f"read from {self.path!r} failed: {exc}") from exc

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    def metadata_match(self, key: str, value: Any) -> tuple[str, list[Any]]:
        """JSON equality, which tells numbers, booleans and strings apart."""
        return "taskrt_json_member(metadata, ?) = ?::jsonb", [key, json.dumps(value)]

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A statement of ``queries`` (``?`` placeholders); NaN, which matches
        nothing, as NULL (which matches nothing either)."""
        values = [None if isinstance(p, float) and math.isnan(p) else p for p in params]
        return await self.fetch_all(numbered(sql), values)

    async def history(
        self,
        since_minute: int,
        until_minute: int,
        step_minutes: int,
        *,
        pool: str | None = None,
        task: str | None = None,
    ) -> list[MinuteRow]:
        where = ["minute >= $2", "minute < $3"]
        params: list[Any] = [step_minutes, since_minute, until_minute]
        if pool is not None:
            params.append(pool)
            where.append(f"pool = ${len(params)}")
        if task is not None:
            params.append(task)
            where.append(f"task = ${len(params)}")
        sums = ", ".join(
            f"sum({c})::float8" if c == "duration_sum" else f"sum({c})::bigint"
            for c in MINUTE_COLUMNS.split(", ")
        )
        rows = await self.fetch_all(
            f"SELECT (minute / $1) * $1 AS start, '', '', {sums} FROM job_minutes "
            f"WHERE {' AND '.join(where)} GROUP BY start ORDER BY start",
            params,
        )
        return [tuple(r) for r in rows]

    # -- counts and the waiting window -------------------------------------------------

    def counted(self, pool: str, status: JobStatus) -> int:
        """Jobs of ``pool`` in ``status``, the sum of its lanes as this process last saw
        each (note 12)."""
        return self._counts.total(pool, status.value)


class PgTransaction(ScheduleWrites):
    """The application's handle on a transaction (``rt.transaction()``): its SQL is
    PostgreSQL's (``$1`` placeholders); ``conn`` is asyncpg's connection.

    ``foreign``: the application's own connection and transaction
    (``adopt_transaction``), whose ``search_path`` is its own: taskrt's
    statements run with the store's schema first, and it is put back after.
    ``sqlalchemy``: the application's SQLAlchemy ``AsyncConnection``, where it
    gave one (``conn`` is the asyncpg connection under it; note 15).
    """

    ROW_LOCK = " FOR UPDATE"
    SKIP_LOCKED = " SKIP LOCKED"

    def __init__(
        self, conn: asyncpg.Connection, *, foreign: str | None = None, sqlalchemy: Any = None
    ) -> None:
        self.conn = conn
        self.counts_changed = False
        self.committed = False  # StoreTransaction.committed (never, where ``foreign``)
        self.foreign = foreign  # the store's schema, on the application's connection
        self.sqlalchemy = sqlalchemy

    @property
    def driver(self) -> asyncpg.Connection:
        """asyncpg's connection, in the transaction."""
        return self.conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self.conn.fetch(sql, *params))
        except DRIVER_ERRORS as exc:
            if transient(exc):
                raise StoreUnavailable("the database", reason(exc)) from exc
            raise StoreError(f"{exc} (in: {sql})") from exc

    async def bound_idle(self, seconds: float) -> None:
        # For this transaction only (``is_local``): the connection goes back to the
        # pool with its session's setting.
        await self.execute(SQL_SET_IDLE, (str(max(1, round(seconds * 1000))),))

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A statement of ``queries`` (``?`` placeholders), numbered."""
        return await self.execute(numbered(sql), params)

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        try:
            await self.conn.executemany(sql, params)
        except DRIVER_ERRORS as exc:
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
        """FAILURE in this transaction (an ``on_failed`` hook commits with it); the
        count moves with the row, in the transaction. False when no row moved (the
        job is no longer RUNNING on this node: note 7; ``as_read``: no longer WAITING
        as read, ``JobStore.mark_failed``)."""
        params = failure_params(job_id, error, finished_at, progress, seq, attempts, pool, was)
        try:
            async with self.conn.transaction():  # the row and its count, or neither
                if as_read:
                    # Locked until the commit: no claim takes it between this look
                    # and the write, whose belief of WAITING is then the truth.
                    row = await self.conn.fetchrow(SQL_LOCK_AS_READ, job_id, seq)
                    if row is None:
                        return False
                changed = await run_pack(self.conn, [(FAIL_PART, [params])])
        except DRIVER_ERRORS as exc:
            if transient(exc):
                raise StoreUnavailable("the database", reason(exc)) from exc
            raise StoreError(f"{exc} (in: mark_failed of job {job_id})") from exc
        self.counts_changed = True
        return any(pool is not None for pool, _, _ in changed)  # the counts it moved

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        async with self.conn.transaction():
            yield


def _recovery_steps(
    lost: str,
    now: float,
    max_recoveries: int,
    seq_gap: tuple[str, tuple[Any, ...]] | None = None,
    *,
    node: str | None = None,
    hooked: Collection[str] = (),
    known: Collection[str] | None = None,
) -> list[tuple[Any, ...]]:
    """``sql.recovery`` as steps of ``_script``; ``seq_gap`` runs once its first step
    has locked the jobs (in id order, note 3). Orphans of the ``hooked`` tasks stay
    RUNNING, moved to ``node`` (store note 22); with ``known`` (the tasks a node
    registers), so do those of the other tasks, where they are."""
    values = {
        "now": now,
        "max": max_recoveries,
        "node": node,
        "hooked": sorted(hooked),
        "failing": sorted(hooked) if known is None else sorted(set(known) - set(hooked)),
    }
    steps: list[tuple[Any, ...]] = []
    for sql, names, status in recovery(lost, known=known is not None):
        params = tuple(values[n] for n in names)
        steps.append((tally(sql), params, status) if status is not None else (sql, params))
    if seq_gap is not None:
        steps.insert(1, seq_gap)
    return steps


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection back in the pool: as it is (asyncpg rolls back an open transaction)."""


def _rowcount(status: str) -> int:
    """The row count of asyncpg's status line (``UPDATE 3``, ``INSERT 0 1``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _retry_note(sqlstate: str | None) -> str:
    """What an error that rolled the application's own transaction back tells it (note 15)."""
    if sqlstate == "40001":
        return (
            "taskrt: serialization failure in your transaction: retry it (a transaction "
            "at REPEATABLE READ or SERIALIZABLE conflicts with any add committed after "
            "its snapshot)"
        )
    return f"taskrt: the server rolled your transaction back (SQLSTATE {sqlstate}): retry it"


async def _take_ids_as(sqlalchemy: Any, schema: str) -> None:
    """Lock the last issued id (note 1) with a statement of the application's own
    SQLAlchemy connection: at REPEATABLE READ or SERIALIZABLE, an add committed after
    the transaction's snapshot makes it fail, and SQLAlchemy raises its own error for
    it, as for the application's statements (note 15). The add's own lock of that row
    then has nothing to wait for."""
    try:
        await sqlalchemy.exec_driver_sql(
            f'SELECT 1 FROM "{schema}".job_ids WHERE one = 1 FOR UPDATE'
        )
    except Exception as exc:
        sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith("40"):
            exc.add_note(_retry_note(sqlstate))
        raise


def _error(name: str, exc: BaseException) -> StoreError:
    if transient(exc):
        return StoreUnavailable(name, reason(exc))
    return StoreError(f"write to {name!r} failed: {exc}")
