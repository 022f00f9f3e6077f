"""The PostgreSQL side of the group commit: a batch in as few statements as it can.

``PgBatches`` is the ``groupcommit.BatchWriter`` of a PostgreSQL store. Each
queued operation of a batch is a ``sql.Part`` (arrays in, ``unnest``); the
parts that touch no row in common are one statement (``packs``), which also
adds what they moved to ``job_counts`` and returns the new counts. The usual
batch of a busy pool (starts, attempt records, ends, progress) is one
statement: its own transaction, one round trip. A batch with adds, or whose
writes touch a row twice, is one transaction of a statement per pack, then
the adds (notes 1, 3). What a failure means is ``transient`` (note 5).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import asyncpg

from ...errors import StoreError
from ...models import JobStatus
from ..adds import Moves, plan
from ..deps import (
    SQL_BATCHING,
    SQL_BLOCK,
    SQL_DEP,
    SQL_IN_WORKFLOW,
    SQL_WAIT,
    links,
    parents_named,
)
from ..groupcommit import Batch, ProgressRows, Rejected, Results, split_progress
from ..ops import MINUTES, NOTIFY, SCHEDULE_FAILED, segments
from ..protocol import InsertResult, NewJob
from .driver import DRIVER_ERRORS, LOST, connect
from .sql import (
    ADD_GATED_PART,
    ADD_PART,
    ANNOUNCE_PART,
    GATE_PART,
    MINUTES_PART,
    NOTIFY_PART,
    PARTS,
    PROGRESS_PART,
    PROGRESS_STEPS_PART,
    SCHEDULE_FAILED_PART,
    SQL_COUNTS_ADD,
    SQL_DROP_WINDOWS,
    SQL_HOLDERS,
    SQL_INSERT,
    SQL_LAST_ID,
    SQL_LOCK_SCHEDULES,
    SQL_NOTIFY,
    SQL_PARENTS_FOUND,
    SQL_PROBE,
    SQL_SET_LAST_ID,
    SQL_SET_LAST_ID_KEPT,
    SQL_TAKE_WINDOWS,
    SQL_WAITING_OF,
    SQL_WINDOW_HOLDERS,
    SQL_WINDOW_OF,
    UNSTARTED,
    Part,
    combined,
    numbered,
)

log = logging.getLogger("taskrt.store")


class LaneCounts:
    """This process's mirror of ``job_counts`` (store note 12): each (pool, status)
    by lane, each lane as of this process's last write to it or read of the table."""

    __slots__ = ("_lanes",)

    def __init__(self) -> None:
        self._lanes: dict[tuple[str, str], dict[int, int]] = {}

    def merge(self, changed: Iterable[Any], lane: int) -> None:
        """The new counts a committed write to ``lane`` returned, (pool, status, n) each;
        a row without a pool (an add's last id or started job) is not a count."""
        for pool, status, n in changed:
            if pool is not None:
                self._lanes.setdefault((str(pool), str(status)), {})[lane] = int(n)

    def replace(self, rows: Iterable[Any]) -> None:
        """The whole table: (pool, status, lane, n) rows."""
        self._lanes.clear()
        for pool, status, lane, n in rows:
            self._lanes.setdefault((str(pool), str(status)), {})[int(lane)] = int(n)

    def total(self, pool: str, status: str) -> int:
        lanes = self._lanes.get((pool, status))
        return sum(lanes.values()) if lanes else 0


WAITING = JobStatus.WAITING.value

# SQLSTATE classes that say the server takes no writes *now* (note 5): connection
# exceptions, insufficient resources (a full disk), operator intervention (a
# restart), system errors, and a transaction rolled back by the server itself
# (a deadlock, a serialization failure). Anything else is one write's fault.
_TRANSIENT_CLASSES = frozenset({"08", "53", "57", "58", "40", "55"})


def transient(exc: BaseException) -> bool:
    """True when ``exc`` says the database takes no writes for now (note 5)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in _TRANSIENT_CLASSES or state == "25006"  # read-only transaction
    return isinstance(exc, LOST)


def rolled_back(exc: asyncpg.PostgresError) -> bool:
    """The server rolled the transaction back on its own (SQLSTATE class 40: a
    deadlock, a serialization failure); tried again, it commits."""
    return (getattr(exc, "sqlstate", None) or "").startswith("40")


class Tally(Moves):
    """Jobs moved by one transaction, by pool and status (note 3)."""

    __slots__ = ()

    async def apply(self, conn: asyncpg.Connection) -> list[Any]:
        """Add the changes to ``job_counts`` (in key order: two writers take the rows'
        locks in the same order, so they never deadlock); the new count of each
        (pool, status) changed."""
        rows = sorted((key, n) for key, n in self.changes.items() if n)
        self.changes = {}
        if not rows:
            return []
        return list(
            await conn.fetch(
                SQL_COUNTS_ADD,
                [k[0] for k, _ in rows],
                [k[1] for k, _ in rows],
                [n for _, n in rows],
            )
        )


Group = tuple[Part, list[tuple[Any, ...]]]
"""One operation and its rows (params as queued)."""


def unstarted(changed: Iterable[Any]) -> list[int]:
    """The jobs whose start changed no row, from what ``sql.combined`` returned (store note 20)."""
    return [int(n) for pool, status, n in changed if pool is None and status == UNSTARTED]


def progress_groups(progress: ProgressRows) -> list[Group]:
    """The progress of a batch (``groupcommit.split_progress``): they touch different
    rows, so one statement may hold both groups."""
    plain, named = split_progress(progress)
    groups: list[Group] = []
    if plain:
        groups.append((PROGRESS_PART, plain))
    if named:
        groups.append((PROGRESS_STEPS_PART, named))
    return groups


def packs(batch: Batch, progress: ProgressRows) -> list[list[Group]]:
    """A batch's writes as statements: groups in their order (``ops.segments``), cut
    where a group touches a row an earlier group of the statement touches (note 3).

    Additive writes (minutes of history, failures of schedules) are summed into
    one group each, at the end: their order does not matter.
    """
    groups: list[Group] = []
    if progress:
        groups.extend(progress_groups(progress))
    minutes: list[tuple[Any, ...]] = []
    failed: list[tuple[Any, ...]] = []
    # Notifications go last, together: sent at the commit, after every write.
    notes = [params for op, params, _ in batch.statements if op is NOTIFY]
    writes = [s for s in batch.statements if s[0] is not NOTIFY] if notes else batch.statements
    for run in segments(writes):
        for op, rows in run:
            if op is MINUTES:
                minutes.extend(rows)
            elif op is SCHEDULE_FAILED:
                failed.extend(rows)
            elif op in PARTS:
                groups.append((PARTS[op], rows))
    if minutes:
        groups.append((MINUTES_PART, _summed_minutes(minutes)))
    if failed:
        groups.append((SCHEDULE_FAILED_PART, failed))
    if notes:
        groups.append((NOTIFY_PART, notes))
    out: list[list[Group]] = []
    current: list[Group] = []
    touched: set[tuple[str, Any]] = set()
    for part, rows in groups:
        key = part.key
        keys = set() if key is None else {(part.table, row[key]) for row in rows}
        if current and not keys.isdisjoint(touched):
            out.append(current)
            current, touched = [], set()
        current.append((part, rows))
        touched |= keys
    if current:
        out.append(current)
    return out


async def run_pack(
    conn: asyncpg.Connection, pack: Sequence[Group], moves: Moves | None = None
) -> list[Any]:
    """One statement for ``pack`` (``sql.combined``); the counts it changed. With
    ``moves``, the statement leaves ``job_counts`` alone and what it moved goes into
    ``moves``, for the transaction to add at its end (note 3); the rest of its rows
    are returned."""
    params: list[Any] = []
    for part, rows in pack:
        width = part.width
        params.extend(list(col) for col in zip(*(row[:width] for row in rows), strict=True))
    sql = combined(tuple(part for part, _ in pack), moves is None)
    rows = list(await conn.fetch(sql, *params))
    if moves is None:
        return rows
    out: list[Any] = []
    for row in rows:
        pool, status, n = row
        if pool is None:
            out.append(row)
        else:
            moves.move(str(pool), None, str(status), int(n))
    return out


def _summed_minutes(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows of one (minute, pool, task) added up: a statement may touch a row once."""
    out: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        key = tuple(row[:3])
        found = out.get(key)
        if found is None:
            out[key] = list(row)
        else:
            for i in range(3, len(row)):
                found[i] += row[i]
    return [tuple(v) for v in out.values()]


async def insert_jobs(
    conn: asyncpg.Connection,
    groups: list[list[NewJob]],
    tally: Tally,
    last: int | None = None,
    *,
    kept: bool = False,
    capacity_of: Callable[[str], int | None] | None = None,
) -> Results:
    """Assign ids and insert (notes 1, 4); each group is all or nothing.

    The last issued id is a row read ``FOR UPDATE`` (``last``, where the caller
    read it already): adds commit one at a time
    in id order, so ids increase in the order they become visible too. Unique
    keys are held by the database (``jobs_unique_live``): a key found live is
    answered with its holder's id; a key that became live in between (another
    node's add) is found by the insert's ``ON CONFLICT`` and answered the same.
    ``capacity_of(pool)``: the capacity the adds of a pool are held to (None: none),
    counted once the ids' row is locked (``_room``).
    """
    if not groups:
        return []
    set_last = SQL_SET_LAST_ID_KEPT if kept else SQL_SET_LAST_ID
    if last is None:
        last = int(await conn.fetchval(SQL_LAST_ID))
    keys = [job.unique_key for jobs in groups for job in jobs if job.unique_key is not None]
    holders: dict[str, int] = {}
    at = min(job.created_at for jobs in groups for job in jobs)
    if keys:
        windows = await conn.fetch(SQL_WINDOW_HOLDERS, keys, at)
        holders = {str(k): int(i) for k, i in windows}
        holders.update({str(k): int(i) for k, i in await conn.fetch(SQL_HOLDERS, keys)})
    named = parents_named(groups)
    existing = None
    if named:
        existing = {int(r[0]) for r in await conn.fetch(SQL_PARENTS_FOUND, named)}
    room = await _room(conn, groups, capacity_of) if capacity_of is not None else None
    planned = plan(groups, last, holders.get, existing, room)
    results, rows, last = planned.results, planned.rows, planned.last
    if planned.windows:
        rows = await _take_windows(conn, planned.windows, rows, results, at)
    if not rows:
        await conn.execute(set_last, last)
        return results
    columns = [list(col) for col in zip(*rows, strict=True)]
    made = {int(r[0]) for r in await conn.fetch(SQL_INSERT, *columns)}
    await conn.execute(set_last, last)
    pools = {row[0]: row[2] for row in rows}
    if len(made) < len(rows):
        # A key taken in between: the job is its holder's (found now, in this transaction).
        lost = {row[8]: row[0] for row in rows if row[0] not in made}
        found = {str(k): int(i) for k, i in await conn.fetch(SQL_HOLDERS, list(lost))}
        for i, result in enumerate(results):
            if isinstance(result, InsertResult) and result.created and result.job_id not in made:
                key = next(k for k, v in lost.items() if v == result.job_id)
                if key not in found:
                    raise StoreError(f"job {result.job_id} was not stored (unique key {key!r})")
                results[i] = InsertResult(found[key], False)
    unmade = [w[1] for w in planned.windows if w[1] not in made]
    if unmade:  # a live job held the key after all: its window is not this job's
        await conn.execute(SQL_DROP_WINDOWS, unmade)
    for job_id in made:
        tally.move(pools[job_id], None, WAITING)
    if any(
        job.after or job.workflow is not None or job.batch_key is not None
        for jobs in groups
        for job in jobs
    ):
        linked = links(groups, results)
        for sql, rows in (
            (_DEP, linked.deps),
            (_WAIT, linked.waits),
            (_BLOCK, linked.blocked),
            (_IN_WORKFLOW, linked.members),
            (_BATCHING, linked.batching),
        ):
            if rows:
                await conn.executemany(sql, rows)
    return results


async def _room(
    conn: asyncpg.Connection,
    groups: list[list[NewJob]],
    capacity_of: Callable[[str], int | None],
) -> dict[str, tuple[int, int]] | None:
    """(capacity, free room) of the pools with a capacity that ``groups`` add to.

    Processes that add to one pool at once each checked it against what was
    committed before their adds (``Adding._check_capacity``), and a burst of
    adds spread over three nodes filled a pool of 50 with 101 jobs. Every add
    holds the row of ``job_ids`` until it commits (note 1), so adds take turns:
    counted after that lock, in a statement of its own, the pool's waiting jobs
    include every add before this one. A batch of plain adds alone first tries
    one statement (``sql.GATE_PART``): its snapshot may be older than the lock
    it waits for, so it adds only if the last issued id is still the one it
    read; else nothing is written and the adds come here (``PgBatches._write``)."""
    capacities = {
        pool: capacity for pool in _per_pool(groups) if (capacity := capacity_of(pool)) is not None
    }
    if not capacities:
        return None
    waiting = {str(p): int(n) for p, n in await conn.fetch(SQL_WAITING_OF, list(capacities))}
    return {p: (c, max(0, c - waiting.get(p, 0))) for p, c in capacities.items()}


def _per_pool(groups: list[list[NewJob]]) -> Counter[str]:
    """How many jobs ``groups`` add to each pool."""
    return Counter(job.pool for jobs in groups for job in jobs)


def _gate_rows(
    groups: list[list[NewJob]], capacity_of: Callable[[str], int | None]
) -> list[tuple[str, int, int]]:
    """(pool, capacity, jobs added) for each pool with a capacity (``sql.GATE_PART``)."""
    return [
        (pool, capacity, n)
        for pool, n in sorted(_per_pool(groups).items())
        if (capacity := capacity_of(pool)) is not None
    ]


def _fits(groups: list[list[NewJob]], room: dict[str, tuple[int, int]]) -> bool:
    """Whether every job of ``groups`` fits in ``room`` (``_room``)."""
    return all(n <= room[pool][1] for pool, n in _per_pool(groups).items() if pool in room)


_DEP = numbered(SQL_DEP)
_WAIT = numbered(SQL_WAIT)
_BLOCK = numbered(SQL_BLOCK)
_IN_WORKFLOW = numbered(SQL_IN_WORKFLOW)
_BATCHING = numbered(SQL_BATCHING)


async def _take_windows(
    conn: asyncpg.Connection,
    windows: list[tuple[str, int, float]],
    rows: list[tuple[Any, ...]],
    results: Results,
    at: float,
) -> list[tuple[Any, ...]]:
    """Take the unique windows of new jobs before inserting them (note 4): a window
    another node's add opened meanwhile (its row is the lock) makes its job the
    holder's, and the row is not inserted. The rows left to insert."""
    keys, ids, ends = (list(col) for col in zip(*windows, strict=True))
    taken = {str(r[0]) for r in await conn.fetch(SQL_TAKE_WINDOWS, keys, ids, ends, at)}
    refused = {job_id: key for key, job_id, _ in windows if key not in taken}
    if not refused:
        return rows
    holder = {str(k): int(i) for k, i in await conn.fetch(SQL_WINDOW_OF, list(refused.values()))}
    for i, result in enumerate(results):
        if isinstance(result, InsertResult) and result.created and result.job_id in refused:
            results[i] = InsertResult(holder[refused[result.job_id]], False)
    return [row for row in rows if row[0] not in refused]


class PgBatches:
    """Writes group-commit batches with the pool's connections (notes 3, 5)."""

    def __init__(
        self,
        dsn: str,
        options: dict[str, Any],
        counts: LaneCounts,
        channel: str,
        *,
        lane: int = 0,
        announce: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.options = options  # asyncpg's connect options (the store's)
        self.channel = channel  # the owner's: adds of other processes wake it (note 6)
        # Every node claims (note 7): adds are announced by the statement that adds
        # them (``added_payload``), with this node's name: it ignores its own.
        self.announce = announce
        # Jobs by pool and status; this writer's connection adds to ``lane`` (its
        # ``taskrt.lane``, note 12).
        self.counts = counts
        self.lane = lane
        # The capacity of a pool, where this process knows one (``_room``).
        self.capacity_of: Callable[[str], int | None] | None = None
        # The writer's own connection: a batch goes straight to it (a pool's acquire
        # and release cost a round trip); opened again after it is lost (note 5).
        self._conn: asyncpg.Connection | None = None

    async def connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await connect(self.dsn, **self.options)
        return self._conn

    def drop(self) -> None:
        """Forget the writer's connection after it was lost or left unusable
        (``driver``): the next batch opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*DRIVER_ERRORS):
                await conn.close(timeout=5)

    def starts_apart(self) -> bool:
        """No (store note 16): a second transaction is a second round trip to the server."""
        return False

    async def write(self, batch: Batch, progress: ProgressRows) -> Results:
        """One statement when the batch touches each row once and its adds have no
        unique key and no chosen id, and come with no failure of a schedule (the
        usual batch: its own transaction, one round trip); else one transaction of
        a statement per pack, then the adds."""
        try:
            return await self._write(batch, progress)
        except LOST:
            self.drop()
            raise

    async def _write(self, batch: Batch, progress: ProgressRows) -> Results:
        planned = packs(batch, progress)
        groups = [jobs for jobs, _ in batch.inserts]
        capacity_of = self.capacity_of
        plain = all(
            j.unique_key is None
            and j.job_id is None
            and not j.after
            and j.workflow is None
            and j.batch_key is None
            for g in groups
            for j in g
        )
        # Plain adds to a pool with a capacity: counted first, once the ids' row is
        # locked (``_room``); when they all fit, added by the usual statement.
        counted = (
            plain
            and capacity_of is not None
            and any(capacity_of(j.pool) is not None for g in groups for j in g)
        )
        # A batch of such adds alone: one statement still, gated (``sql.GATE_PART``).
        gated = counted and not planned
        simple = plain and (not counted or gated)
        if groups and plain:
            added = [_add_row(job) for jobs in groups for job in jobs]
            pack: list[Group] = [(ADD_GATED_PART if gated else ADD_PART, added)]
            if gated:
                assert capacity_of is not None
                pack.insert(0, (GATE_PART, _gate_rows(groups, capacity_of)))
            notes = self._announcement(groups)
            if notes:  # for the pools whose new jobs did not all start here (note 11)
                pack.append((ANNOUNCE_PART, notes))
            if planned and simple:
                planned[-1].extend(pack)
            else:
                planned.append(pack)  # its own statement: left out if they do not fit
        changed: list[Any] = []
        results: Results = []
        apart = bool(groups) and not plain  # the adds go through ``insert_jobs``
        # Adds with failures of schedules: the schedules' rows first (note 1), so
        # never the one statement, which takes the ids first.
        schedules = _failed_schedules(batch) if groups else []
        conn = await self.connection()
        if len(planned) <= 1 and not apart and (not counted or gated) and not schedules:
            if planned:
                changed = await run_pack(conn, planned[0])
            if gated and not any(pool is None and status is None for pool, status, _ in changed):
                # Not let in (full, or another add committed since the statement's
                # snapshot): nothing was written; counted under the lock instead.
                apart = True
                async with conn.transaction():
                    locked = await _ids_first(conn)
                    tally = Tally()
                    results = await insert_jobs(
                        conn, groups, tally, locked, capacity_of=capacity_of
                    )
                    await self._announce(conn, groups)
                    changed.extend(await tally.apply(conn))
        else:
            async with conn.transaction():
                if schedules:
                    await conn.execute(SQL_LOCK_SCHEDULES, schedules)
                last = await _ids_first(conn) if apart or counted else None
                if counted:
                    assert capacity_of is not None
                    room = await _room(conn, groups, capacity_of)
                    if room is not None and not _fits(groups, room):
                        planned.pop()  # group by group, each all or nothing
                        apart = True
                tally = Tally()  # added to job_counts at the end (note 3)
                for pack in planned:
                    changed.extend(await run_pack(conn, pack, tally))
                if apart:
                    # Adds last: a terminal write queued before frees its unique key.
                    results = await insert_jobs(conn, groups, tally, last, capacity_of=capacity_of)
                    await self._announce(conn, groups)
                changed.extend(await tally.apply(conn))
        if any(job.external for jobs in groups for job in jobs):
            await conn.execute(SQL_NOTIFY, self.channel)  # after the commit: it is there
        if groups and not apart:
            last = next(int(n) for pool, status, n in changed if pool is None and status is None)
            first = last - sum(len(g) for g in groups) + 1
            # Started on this node by the add itself (note 11).
            ran = {int(n) for pool, status, n in changed if pool is None and status == "RUNNING"}
            results = [InsertResult(i, True, i in ran) for i in range(first, last + 1)]
        self._merge(changed)
        batch.unstarted = unstarted(changed)
        return results

    def _announcement(self, groups: list[list[NewJob]]) -> list[tuple[str, str, str]]:
        """The notifications of ``groups``' adds to the other nodes, (channel, payload,
        pool) for each pool, for the statement that adds them (note 7); none where one
        owner runs the jobs."""
        if self.announce is None or not groups:
            return []
        pools = sorted({job.pool for jobs in groups for job in jobs})
        return [(self.channel, added_payload(p, self.announce), p) for p in pools]

    async def _announce(self, conn: asyncpg.Connection, groups: list[list[NewJob]]) -> None:
        """Inside the transaction that adds ``groups``: tell every node (note 7)."""
        notes = self._announcement(groups)
        if notes:  # each pool has a new WAITING job: these adds start none here
            await run_pack(conn, [(NOTIFY_PART, notes)])

    async def write_parts(self, batch: Batch, progress: ProgressRows) -> tuple[Results, Rejected]:
        """The batch again, each part under its own savepoint (store note 10)."""
        try:
            return await self._write_parts(batch, progress)
        except LOST:
            self.drop()
            raise

    async def _write_parts(self, batch: Batch, progress: ProgressRows) -> tuple[Results, Rejected]:
        rejected: Rejected = []
        results: Results = []
        changed: list[Any] = []
        tally = Tally()  # what the parts that were written moved, added at the end (note 3)
        conn = await self.connection()
        async with conn.transaction():
            if batch.inserts:
                schedules = _failed_schedules(batch)
                if schedules:
                    await conn.execute(SQL_LOCK_SCHEDULES, schedules)
                await _ids_first(conn)  # held past the savepoints: theirs would not be
            for progress_id, row in progress.items():
                _, error = await _alone(conn, run_pack, conn, progress_groups({progress_id: row}))
                if error is not None:
                    rejected.append((progress_id, "progress", error))
            for op, params, job_id in batch.statements:
                if op not in PARTS:
                    continue
                part = Tally()
                rows, error = await _alone(conn, run_pack, conn, [(PARTS[op], [params])], part)
                if error is not None:
                    rejected.append((job_id, op.name, error))
                else:
                    changed.extend(rows)
                    tally.merge(part)
            for jobs, _ in batch.inserts:
                part = Tally()
                out, error = await _alone(conn, insert_jobs, conn, [jobs], part)
                if error is not None:
                    refused = StoreError(f"the database refused the job: {error}")
                    refused.__cause__ = error
                    out = [refused] * len(jobs)
                else:
                    tally.merge(part)
                results.extend(out)
            await self._announce(conn, [jobs for jobs, _ in batch.inserts])
            changed.extend(await tally.apply(conn))
        self._merge(changed)
        batch.unstarted = unstarted(changed)
        return results, rejected

    def _merge(self, changed: list[Any]) -> None:
        """The counts each statement changed, in the order they ran (the last is newest)."""
        self.counts.merge(changed, self.lane)

    def transient(self, exc: BaseException) -> bool:
        return transient(exc)

    def rolled_back(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncpg.PostgresError) and rolled_back(exc)

    async def probe(self) -> None:
        try:
            conn = await self.connection()
            await conn.execute(SQL_PROBE, repr(time.time()))
        except LOST:
            self.drop()
            raise

    async def resumed(self) -> None:
        return None


def added_payload(pool: str, node: str | None) -> str:
    """The notification of adds to ``pool`` by ``node`` (``None``: by no node, so
    every node looks): ``added:<pool>``, then a tab and the node's name."""
    return f"added:{pool}" if node is None else f"added:{pool}\t{node}"


def _add_row(job: NewJob) -> tuple[Any, ...]:
    return (
        job.task,
        job.pool,
        job.args_json,
        job.kwargs_json,
        job.max_attempts,
        job.priority,
        job.metadata_json,
        job.created_at,
        job.run_at,
        job.timeout,
        job.retry_json,
        1 if job.external else 0,
        job.deadline,
        job.lock_key,
        1 if job.start else 0,
    )


async def _ids_first(conn: asyncpg.Connection) -> int:
    """Take ``job_ids`` before the transaction adds to ``job_counts`` (note 1): the
    add's own statement takes them in that order, and a connection that took a
    count first and then waited for the ids, while an add held the ids and waited
    for that count (a shared lane, note 12), was a deadlock the server broke by
    rolling one back. The last issued id."""
    return int(await conn.fetchval(SQL_LAST_ID))


def _failed_schedules(batch: Batch) -> list[str]:
    """The schedules whose failures ``batch`` counts (scheduler note 6), by name.

    A transaction that also adds jobs locks their rows before ``job_ids`` (note 1),
    as a fire or a ``run_now`` locks its schedule's row before its add (scheduler
    note 7): a batch that took the ids and then waited for the row a fire held,
    while the fire waited for the ids, was a deadlock the server broke by rolling
    one back (the batch written again a second later, or the fire failed)."""
    return sorted({str(params[0]) for op, params, _ in batch.statements if op is SCHEDULE_FAILED})


async def _alone(conn: asyncpg.Connection, fn: Any, *args: Any) -> tuple[Any, BaseException | None]:
    """``await fn(*args)`` under a savepoint: (its result, None), or (None, its error)
    rolled back alone. A transient error is raised: it is the database's, not this part's.
    """
    try:
        async with conn.transaction():
            result = await fn(*args)
    except Exception as exc:
        if transient(exc):
            raise
        return None, exc
    return result, None
