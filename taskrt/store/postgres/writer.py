"""The PostgreSQL side of the group commit: a batch in one transaction, few statements.

``PgBatches`` is the ``groupcommit.BatchWriter`` of a PostgreSQL store. A
batch is one transaction on a connection of the pool: the coalesced progress
in one statement, each run of lifecycle writes in one statement per
operation (arrays in, ``unnest``), the adds in one, and the counts in one
(notes 1, 3). What a failure means is ``transient`` (note 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg

from ...errors import StoreError
from ...models import JobStatus
from ..adds import Moves, plan
from ..groupcommit import Batch, ProgressRows, Rejected, Results
from ..ops import MINUTES, Op, segments
from ..protocol import InsertResult, NewJob
from .sql import (
    SQL_COUNTS,
    SQL_COUNTS_ADD,
    SQL_HOLDERS,
    SQL_INSERT,
    SQL_LAST_ID,
    SQL_PROGRESS,
    SQL_SET_LAST_ID,
    STATEMENT,
)

log = logging.getLogger("taskrt.store")

Key = tuple[str, str]
Snapshot = dict[Key, int]
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
    return isinstance(
        exc, OSError | asyncpg.InterfaceError | asyncio.TimeoutError | ConnectionError
    )


class Tally(Moves):
    """Jobs moved by one transaction, by pool and status (note 3)."""

    __slots__ = ()

    async def apply(self, conn: asyncpg.Connection) -> bool:
        """Add the changes to ``job_counts`` (in key order: two writers take the rows'
        locks in the same order, so they never deadlock); False when there were none."""
        rows = sorted((key, n) for key, n in self.changes.items() if n)
        self.changes = {}
        if not rows:
            return False
        await conn.execute(
            SQL_COUNTS_ADD, [k[0] for k, _ in rows], [k[1] for k, _ in rows], [n for _, n in rows]
        )
        return True

    async def commit(self, conn: asyncpg.Connection) -> Snapshot | None:
        """``apply``, then the whole table as this transaction sees it (None: nothing changed)."""
        if not await self.apply(conn):
            return None
        return {(r[0], r[1]): int(r[2]) for r in await conn.fetch(SQL_COUNTS)}


async def run_group(
    conn: asyncpg.Connection, op: Op, rows: list[tuple[Any, ...]], tally: Tally
) -> None:
    """One operation for a group of jobs, in one statement (note 3)."""
    sql, width = STATEMENT[op]
    if op is MINUTES:
        rows = _summed_minutes(rows)
    columns = [list(col) for col in zip(*(row[:width] for row in rows), strict=True)]
    if op.status is None:
        await conn.execute(sql, *columns)
        return
    to = op.status.value
    moved: dict[Key, int] = defaultdict(int)
    for pool, was in await conn.fetch(sql, *columns):
        moved[pool, was] += 1
    for (pool, was), n in moved.items():
        tally.move(pool, was, to, n)


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
    conn: asyncpg.Connection, groups: list[list[NewJob]], tally: Tally
) -> Results:
    """Assign ids and insert (notes 1, 4); each group is all or nothing.

    The last issued id is a row read ``FOR UPDATE``: adds commit one at a time
    in id order, so ids increase in the order they become visible too. Unique
    keys are held by the database (``jobs_unique_live``): a key found live is
    answered with its holder's id; a key that became live in between (another
    node's add) is found by the insert's ``ON CONFLICT`` and answered the same.
    """
    if not groups:
        return []
    last = int(await conn.fetchval(SQL_LAST_ID))
    keys = [job.unique_key for jobs in groups for job in jobs if job.unique_key is not None]
    holders: dict[str, int] = {}
    if keys:
        holders = {str(k): int(i) for k, i in await conn.fetch(SQL_HOLDERS, keys)}
    planned = plan(groups, last, holders.get)
    results, rows, last = planned.results, planned.rows, planned.last
    if not rows:
        return results
    columns = [list(col) for col in zip(*rows, strict=True)]
    made = {int(r[0]) for r in await conn.fetch(SQL_INSERT, *columns)}
    await conn.execute(SQL_SET_LAST_ID, last)
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
    for job_id in made:
        tally.move(pools[job_id], None, WAITING)
    return results


class PgBatches:
    """Writes group-commit batches in transactions of the pool's connections."""

    def __init__(self, pool: asyncpg.Pool, counts: dict[Key, int]) -> None:
        self.pool = pool
        # Jobs by pool and status as of the latest committed write that changed them.
        self.counts = counts

    async def _statements(self, conn: asyncpg.Connection, batch: Batch, tally: Tally) -> None:
        for run in segments(batch.statements):
            for op, rows in run:
                if op in STATEMENT:
                    await run_group(conn, op, rows, tally)

    async def write(self, batch: Batch, progress: ProgressRows) -> Results:
        tally = Tally()
        async with self.pool.acquire() as conn, conn.transaction():
            if progress:
                await conn.execute(SQL_PROGRESS, *_progress_columns(progress))
            await self._statements(conn, batch, tally)
            # Inserts last: a terminal write queued before an add frees its unique key.
            results = await insert_jobs(conn, [jobs for jobs, _ in batch.inserts], tally)
            snapshot = await tally.commit(conn)
        if snapshot is not None:
            self._replace(snapshot)
        return results

    async def write_parts(self, batch: Batch, progress: ProgressRows) -> tuple[Results, Rejected]:
        """The batch again, each part under its own savepoint (store note 10)."""
        rejected: Rejected = []
        results: Results = []
        tally = Tally()
        async with self.pool.acquire() as conn, conn.transaction():
            for progress_id, row in progress.items():
                _, error = await _alone(
                    conn, conn.execute, SQL_PROGRESS, *_progress_columns({progress_id: row})
                )
                if error is not None:
                    rejected.append((progress_id, "progress", error))
            for op, params, job_id in batch.statements:
                if op not in STATEMENT:
                    continue
                part = Tally()
                _, error = await _alone(conn, run_group, conn, op, [params], part)
                if error is not None:
                    rejected.append((job_id, op.name, error))
                else:
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
            snapshot = await tally.commit(conn)
        if snapshot is not None:
            self._replace(snapshot)
        return results, rejected

    def _replace(self, snapshot: Snapshot) -> None:
        self.counts.clear()
        self.counts.update(snapshot)

    def transient(self, exc: BaseException) -> bool:
        return transient(exc)

    async def resumed(self) -> None:
        return None


def _progress_columns(progress: ProgressRows) -> list[list[Any]]:
    ids = list(progress)
    rows = [progress[i] for i in ids]
    return [
        ids,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
    ]


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
