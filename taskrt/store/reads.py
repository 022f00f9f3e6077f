"""The reads both stores make alike, written once (``taskrt.store`` notes 12, 13).

``SharedReads`` answers the read operations of ``JobStore`` whose statements
are the same in both dialects (``queries``); a store extends it and says how a
statement written with ``?`` placeholders runs (``query``): SQLite as is,
PostgreSQL with them numbered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..limits import INT64_MAX
from ..models import BLOCKED_AT, AttemptInfo, AttemptOutcome, JobInfo, JobStatus, ScheduleInfo
from .adds import count_by
from .deps import (
    SQL_BATCHES_WAITING,
    SQL_CANCELLED_BY,
    SQL_OPEN_PARENTS,
    SQL_WORKFLOW_EDGES,
)
from .protocol import OwnerRecord
from .queries import (
    JOB_COLUMNS,
    SQL_ATTEMPTS,
    SQL_COUNT_OF,
    SQL_COUNTS_LIVE,
    SQL_DEADLINES_PASSED,
    SQL_EXTERNAL,
    SQL_NEXT_DEADLINE,
    SQL_OWNER,
    SQL_PAUSED_POOLS,
    SQL_POOL_PAUSES,
    SQL_RUNNING_TASKS,
    SQL_SCHEDULE,
    SQL_SCHEDULES,
    SQL_SCHEDULES_VERSION,
    SQL_UNIQUE_HOLDER,
    SQL_UNIQUE_WINDOW,
)
from .rows import row_to_job, row_to_schedule
from .stats import stats
from .window import delayed_jobs, oldest_due, ready_jobs


class SharedReads:
    """The reads of ``JobStore`` both dialects write alike (see the module docstring)."""

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read of ``queries`` (``?`` placeholders); its rows, by position or name."""
        raise NotImplementedError

    async def window_query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A read of the waiting window (``ready_jobs``, ``delayed_jobs``); ``query``
        unless the backend reads it another way (SQLite: store note 18)."""
        return await self.query(sql, params)

    def metadata_match(self, key: str, value: Any) -> tuple[str, list[Any]]:
        """A condition (``?`` placeholders) that metadata member ``key`` equals ``value``
        as JSON: a number matches numbers only, a boolean booleans only."""
        raise NotImplementedError

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.query(sql, params)
        return rows[0] if rows else None

    async def owner_record(self) -> OwnerRecord | None:
        """Who owns the database (as recorded), where it listens, since when."""
        row = await self._one(SQL_OWNER)
        if row is None:
            return None
        return OwnerRecord(str(row["owner"]), row["address"], float(row["since"] or 0.0))

    async def paused_pools(self) -> set[str]:
        return {str(r["name"]) for r in await self.query(SQL_PAUSED_POOLS)}

    async def pool_pauses(self) -> dict[str, bool]:
        return {str(r["name"]): bool(r["paused"]) for r in await self.query(SQL_POOL_PAUSES)}

    async def batches_waiting(
        self, one: tuple[str, str] | None = None
    ) -> list[tuple[str, str, int, float, int]]:
        """(task, key, jobs, the oldest's created_at, the newest's id) of every batch that
        gathers (or of ``one``: (task, key))."""
        if one is None:
            rows = await self.query(SQL_BATCHES_WAITING.format(""))
        else:
            rows = await self.query(
                SQL_BATCHES_WAITING.format("AND task = ? AND batch_key = ? "), one
            )
        return [(str(t), str(k), int(n), float(at), int(last)) for t, k, n, at, last in rows]

    async def open_parents(self) -> list[int]:
        """The jobs some blocked job still waits for."""
        return [int(r[0]) for r in await self.query(SQL_OPEN_PARENTS)]

    async def cancelled_by(self, parent: int) -> list[int]:
        """The dependents of ``parent`` that a parent's failure or cancel cancelled (its
        own, or another's where both failed), still CANCELLED (not those cancelled by
        hand first), and the members of a batch it ran that ended as it did."""
        rows = await self.query(SQL_CANCELLED_BY, (parent, parent))
        return [int(r[0]) for r in rows]

    async def workflow(self, workflow_id: int) -> tuple[list[JobInfo], list[tuple[int, int]]]:
        """A workflow's jobs (by id) and its dependencies as (child, parent)."""
        rows = await self.query(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE workflow = ? ORDER BY id", (workflow_id,)
        )
        if not rows:
            return [], []
        edges = await self.query(SQL_WORKFLOW_EDGES, (workflow_id,))
        return [row_to_job(r) for r in rows], [(int(c), int(p)) for c, p in edges]

    async def get_job(self, job_id: int) -> JobInfo | None:
        if not 0 < job_id <= INT64_MAX:  # no row has it (a driver would fail to send it)
            return None
        row = await self._one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else row_to_job(row)

    async def list_jobs(
        self,
        *,
        status: Sequence[JobStatus] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: dict[str, Any] | None = None,
        before_id: int | None = None,
        limit: int = 50,
        run_after: float | None = None,
        created_before: float | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[JobInfo]:
        clause, params = self._where(
            status, pool, task, metadata, before_id, run_after, created_before, ids
        )
        rows = await self.query(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [row_to_job(r) for r in rows]

    async def count_jobs(
        self,
        *,
        status: Sequence[JobStatus] | None = None,
        pool: str | None = None,
        task: str | None = None,
        metadata: dict[str, Any] | None = None,
        run_after: float | None = None,
        created_before: float | None = None,
    ) -> int:
        if task is None and not metadata and run_after is None and created_before is None:
            # By status and pool only: the live counts answer at once (store note 12).
            return count_by(await self.live_counts(), status, pool)
        clause, params = self._where(
            status, pool, task, metadata, None, run_after, created_before, None
        )
        row = await self._one(f"SELECT count(*) FROM jobs {clause}", params)
        return int(row[0]) if row else 0

    def _where(
        self,
        status: Sequence[JobStatus] | None,
        pool: str | None,
        task: str | None,
        metadata: dict[str, Any] | None,
        before_id: int | None,
        run_after: float | None,
        created_before: float | None,
        ids: Sequence[int] | None,
    ) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})" if ids else "1 = 0")
            params.extend(ids)
        if run_after is not None:
            # Scheduled: waiting for a time still to come. Not a job that waits for
            # other jobs (its parents, its batch): its run_at is the placeholder
            # BLOCKED_AT, which bounds the range the index scan (jobs_waiting) reads.
            where.append("status = 'WAITING' AND run_at > ? AND run_at < ?")
            params.extend((run_after, BLOCKED_AT))
        if created_before is not None:
            where.append("created_at <= ?")
            params.append(created_before)
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
            condition, values = self.metadata_match(key, value)
            where.append(condition)
            params.extend(values)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        return (f"WHERE {' AND '.join(where)}" if where else ""), params

    async def attempts(self, job_id: int) -> list[AttemptInfo]:
        return [
            AttemptInfo(
                job_id=r["job_id"],
                number=r["number"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                outcome=AttemptOutcome(r["outcome"]),
                error=r["error"],
                traceback=r["traceback"],
                next=r["next"],
                next_at=r["next_at"],
            )
            for r in await self.query(SQL_ATTEMPTS, (job_id, job_id))
        ]

    async def stats(self, since: float | None, until: float | None) -> dict[str, Any]:
        """Counts by status, mean and p95 of successes, in constant time (``stats``)."""
        return await stats(self.query, since, until)

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name."""
        return [row_to_schedule(r) for r in await self.query(SQL_SCHEDULES)]

    async def schedule(self, name: str) -> ScheduleInfo | None:
        row = await self._one(SQL_SCHEDULE, (name,))
        return None if row is None else row_to_schedule(row)

    async def schedules_version(self) -> str | None:
        """Bumped by every change of a definition, by any process (scheduler note 5)."""
        row = await self._one(SQL_SCHEDULES_VERSION)
        return None if row is None else str(row[0])

    async def external_changes(self, limit: int = 1000) -> list[tuple[JobInfo, bool]]:
        """Jobs another process added or changed (``external = 1``), with their cancel flag."""
        rows = await self.query(SQL_EXTERNAL, (limit,))
        return [(row_to_job(r), bool(r["cancel_requested"])) for r in rows]

    # -- counts and the waiting window (notes 12, 13) ---------------------------------

    async def live_counts(self) -> dict[str, dict[JobStatus, int]]:
        """pool -> status -> jobs, read now from ``job_counts`` (no zeros)."""
        out: dict[str, dict[JobStatus, int]] = {}
        for row in await self.query(SQL_COUNTS_LIVE):
            out.setdefault(str(row[0]), {})[JobStatus(row[1])] = int(row[2])
        return out

    async def running_tasks(self) -> list[str]:
        """The tasks of the jobs the store holds RUNNING."""
        return [str(r[0]) for r in await self.query(SQL_RUNNING_TASKS)]

    async def count_waiting(self, pool: str) -> int:
        """WAITING jobs of ``pool``, from ``job_counts`` (a lookup, note 12)."""
        row = await self._one(SQL_COUNT_OF, (pool, JobStatus.WAITING.value))
        return int(row[0]) if row else 0

    async def ready_jobs(
        self, pool: str, now: float, limit: int, after: tuple[int, float, int] | None = None
    ) -> list[JobInfo]:
        """WAITING jobs of ``pool`` due at ``now``, in run order (``window``)."""
        return await ready_jobs(self.window_query, pool, now, limit, after)

    async def delayed_jobs(self, pool: str, after: tuple[float, int], limit: int) -> list[JobInfo]:
        """WAITING jobs of ``pool`` after ``(run_at, id)``, in that order (``window``)."""
        return await delayed_jobs(self.window_query, pool, after, limit)

    async def oldest_due(self, pool: str, now: float) -> float | None:
        """The earliest ``run_at`` of ``pool``'s WAITING jobs due at ``now`` (``window``)."""
        return await oldest_due(self.window_query, pool, now)

    async def deadlines_passed(self, now: float, limit: int) -> list[int]:
        """WAITING jobs whose deadline is ``now`` or before, earliest first (``jobs_deadline``)."""
        return [int(r[0]) for r in await self.query(SQL_DEADLINES_PASSED, (now, limit))]

    async def next_deadline(self, after: float) -> float | None:
        """The earliest deadline after ``after`` of a WAITING job, or None."""
        row = await self._one(SQL_NEXT_DEADLINE, (after,))
        return None if row is None or row[0] is None else float(row[0])

    async def unique_holder(self, key: str) -> int | None:
        """The WAITING or RUNNING job holding unique key ``key`` (index jobs_unique_live)."""
        row = await self._one(SQL_UNIQUE_HOLDER, (key,))
        return None if row is None else int(row[0])

    async def unique_window(self, key: str, at: float) -> int | None:
        """The job whose ``unique_for`` window holds ``key`` at ``at`` (its key, the
        primary key of ``unique_keys``)."""
        row = await self._one(SQL_UNIQUE_WINDOW, (key, at))
        return None if row is None else int(row[0])
