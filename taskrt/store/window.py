"""A pool's WAITING jobs in run order, read by index: the runtime's waiting window (note 13).

The runtime keeps a bounded window of each pool's waiting jobs in memory and
refills it from here. Both reads walk ``jobs_waiting`` (schema version 5:
pool, priority, run_at, then the rowid, for WAITING rows only) one priority
level at a time: the next level down is one seek (``max(priority) ... AND
priority < ?``), and a level's rows come in (run_at, id) order, so a read
costs about its levels and its rows, never the jobs it skips: ten million
delayed rows cost a due-jobs read nothing.

Each statement is its own read (as every read of the store is): a job that
changes between two of them is read as it was at one or the other.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..models import JobInfo
from .queries import (
    SQL_DELAYED,
    SQL_LEVEL_BELOW,
    SQL_LEVEL_FIRST,
    SQL_LEVEL_TOP,
    SQL_READY,
    SQL_READY_AFTER,
)
from .rows import row_to_job

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[sqlite3.Row]]]


async def _level(fetch: Fetch, pool: str, below: int | None) -> int | None:
    """The highest priority of ``pool``'s WAITING jobs (below ``below``), or None."""
    if below is None:
        rows = await fetch(SQL_LEVEL_TOP, (pool,))
    else:
        rows = await fetch(SQL_LEVEL_BELOW, (pool, below))
    value = rows[0][0] if rows else None
    return None if value is None else int(value)


async def ready_jobs(
    fetch: Fetch, pool: str, now: float, limit: int, after: tuple[int, float, int] | None
) -> list[JobInfo]:
    """Up to ``limit`` WAITING jobs of ``pool`` with ``run_at <= now``, in run order.

    Run order: priority descending, then run_at, then id. ``after`` =
    (priority, run_at, id): only the jobs strictly after that one in this
    order (the key of the last job of the previous page).
    """
    out: list[JobInfo] = []
    if limit <= 0:
        return out
    key: tuple[float, int] | None = None
    if after is None:
        level = await _level(fetch, pool, None)
    else:
        level, key = int(after[0]), (float(after[1]), int(after[2]))
    while level is not None:
        want = limit - len(out)
        if key is None:
            rows = await fetch(SQL_READY, (pool, level, now, want))
        else:
            run_at, job_id = key
            rows = await fetch(SQL_READY_AFTER, (pool, level, now, run_at, run_at, job_id, want))
            key = None
        out.extend(row_to_job(row) for row in rows)
        if len(out) >= limit:
            break
        level = await _level(fetch, pool, level)
    return out


async def delayed_jobs(
    fetch: Fetch, pool: str, after: tuple[float, int], limit: int
) -> list[JobInfo]:
    """Up to ``limit`` WAITING jobs of ``pool`` strictly after ``after`` = (run_at, id),
    in (run_at, id) order whatever their priority.

    Each priority level gives its first ``limit`` rows after the key; the
    levels are merged and cut. ``after = (now, 2**63 - 1)``: every job due
    after ``now``.
    """
    if limit <= 0:
        return []
    run_at, job_id = float(after[0]), int(after[1])
    levels: list[list[sqlite3.Row]] = []
    level = await _level(fetch, pool, None)
    while level is not None:
        levels.append(await fetch(SQL_DELAYED, (pool, level, run_at, run_at, job_id, limit)))
        level = await _level(fetch, pool, level)
    merged = heapq.merge(*levels, key=lambda row: (row["run_at"], row["id"]))
    return [row_to_job(row) for row in itertools.islice(merged, limit)]


async def oldest_due(fetch: Fetch, pool: str, now: float) -> float | None:
    """The earliest ``run_at`` of ``pool``'s WAITING jobs due at ``now`` (``run_at <=
    now``), or None: two seeks a priority level, whatever the jobs."""
    oldest: float | None = None
    level = await _level(fetch, pool, None)
    while level is not None:
        rows = await fetch(SQL_LEVEL_FIRST, (pool, level))
        first = rows[0][0] if rows else None
        if first is not None and (oldest is None or float(first) < oldest):
            oldest = float(first)
        level = await _level(fetch, pool, level)
    return oldest if oldest is not None and oldest <= now else None
