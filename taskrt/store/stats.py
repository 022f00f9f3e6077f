"""Statistics in constant time: counts from ``job_counts``, durations from ``job_minutes``.

Two statements, neither of which reads the jobs table: the live counts (a few
rows per pool) and the sums of the history's minutes in the window (a range
of its primary key, whose first column is the minute). The cost follows the
pools and the minutes kept (retention), not the number of jobs.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..counters import p95_bucket
from ..models import JobStatus
from .queries import SQL_COUNTS_BY_STATUS, SQL_MINUTE_TOTALS

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[sqlite3.Row]]]

_LIVE = (JobStatus.WAITING, JobStatus.RUNNING)
_FINISHED = (JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED)


_FAR = float(2**62)  # minutes beyond any time, and within SQLite's integers


def _minute(at: float, rounding: Callable[[float], int]) -> float | int:
    """``rounding(at / 60)``, kept within SQLite's integers (an infinity, 1e300);
    NaN stays NaN, which SQLite binds as NULL: it matches no minute."""
    minutes = at / 60
    if math.isnan(minutes):
        return minutes
    return rounding(max(-_FAR, min(_FAR, minutes)))


def _past(minutes: float) -> int:
    """The minute after the one ``minutes`` falls in."""
    return math.floor(minutes) + 1


def minute_window(since: float | None, until: float | None) -> tuple[str, list[Any]]:
    """The history's minutes a window covers: floor(since / 60) (inclusive) to
    floor(until / 60) + 1 (exclusive), so a minute partly inside counts, and so
    does the minute ``until`` falls in when it falls on its start (as in
    ``Runtime.history``; before, such an ``until`` left that minute out, and a
    millisecond later took it in); an open end is unbounded."""
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("minute >= ?")
        params.append(_minute(since, math.floor))
    if until is not None:
        where.append("minute < ?")
        params.append(_minute(until, _past))
    return (f"WHERE {' AND '.join(where)}" if where else ""), params


async def stats(fetch: Fetch, since: float | None, until: float | None) -> dict[str, Any]:
    """``{"counts": {status: n}, "mean": ..., "p95": ..., "p95_low": ...}``.

    - WAITING and RUNNING: the live counts now, whatever the window.
    - SUCCESS, FAILURE, CANCELLED: with no window, the stored jobs
      (``job_counts``); with one, what finished in its minutes (``job_minutes``,
      ``minute_window``: whole minutes, so up to a minute more at each end).
    - mean: duration sum / durations counted, of those minutes (every minute
      kept when there is no window); None without a duration. The durations
      are those of the successes that ran (their histogram, ``b0``-``b11``):
      the members of a batch succeed without one of their own, so dividing by
      the successes would spread the batch's duration over its members.
    - p95, p95_low: ``p95_bucket`` of their histogram; the true p95 of the
      successes lies in (p95_low, p95].

    Statuses with no job are left out of ``counts``.
    """
    by_status = {str(r[0]): int(r[1] or 0) for r in await fetch(SQL_COUNTS_BY_STATUS, ())}
    where, params = minute_window(since, until)
    rows = await fetch(SQL_MINUTE_TOTALS.format(where), params)
    totals = list(rows[0]) if rows else [0] * 17
    succeeded, failed, cancelled = (int(v) for v in totals[:3])
    duration_sum = float(totals[4])
    buckets = [int(v) for v in totals[5:]]
    timed = sum(buckets)  # the durations in duration_sum (not every success has one)
    counts = {s.value: by_status.get(s.value, 0) for s in _LIVE}
    if since is None and until is None:
        counts.update({s.value: by_status.get(s.value, 0) for s in _FINISHED})
    else:
        counts.update(
            {
                JobStatus.SUCCESS.value: succeeded,
                JobStatus.FAILURE.value: failed,
                JobStatus.CANCELLED.value: cancelled,
            }
        )
    p95, p95_low = p95_bucket(buckets)
    return {
        "counts": {status: n for status, n in counts.items() if n},
        "mean": duration_sum / timed if timed else None,
        "p95": p95,
        "p95_low": p95_low,
    }
