"""What finished, per minute, pool and task: the history that survives restarts.

``MinuteCounts`` adds up, in memory, the jobs that end (SUCCESS, FAILURE,
CANCELLED) and the attempts retried, by the minute they happened in, with the
successes' durations as a sum and a histogram (``counters.BUCKETS``). The
runtime hands what gathered to the store about once a second
(``JobStore.record_minutes``: one upsert per minute, pool and task, added to
what the row holds), so a crash loses at most that second of history, never a
job's state. ``points`` turns the stored minutes into ``HistoryPoint``s.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from .counters import BUCKETS, p95_bucket
from .models import HistoryPoint
from .store import MinuteRow

FLUSH_AFTER = 1.0
"""Seconds between a first count and its hand-over to the store."""

OUTCOMES = ("succeeded", "failed", "cancelled", "retried")


class MinuteCounts:
    """Counts by (minute, pool, task), waiting to be written."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, str, str], list[float]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(
        self, at: float, pool: str, task: str, outcome: str, duration: float | None = None
    ) -> None:
        key = (int(at // 60), pool, task)
        row = self._pending.get(key)
        if row is None:
            row = self._pending[key] = [0.0] * (5 + len(BUCKETS) + 1)
        row[OUTCOMES.index(outcome)] += 1
        if duration is not None:
            row[4] += duration
            row[5 + bisect.bisect_left(BUCKETS, duration)] += 1

    def drain(self) -> list[MinuteRow]:
        """What gathered, as store rows; then nothing is pending."""
        rows: list[MinuteRow] = [
            (minute, pool, task, *[int(v) for v in row[:4]], row[4], *[int(v) for v in row[5:]])
            for (minute, pool, task), row in self._pending.items()
        ]
        self._pending.clear()
        return rows


def points(rows: Sequence[MinuteRow], step: float) -> list[HistoryPoint]:
    """Store rows summed per step as ``HistoryPoint``s (the p95 from the buckets)."""
    out: list[HistoryPoint] = []
    for row in rows:
        minute, succeeded, failed, cancelled, retried = row[0], *row[3:7]
        total, buckets = float(row[7] or 0.0), [int(n or 0) for n in row[8:]]
        count = sum(buckets)
        out.append(
            HistoryPoint(
                at=float(minute) * 60,
                step=step,
                succeeded=int(succeeded or 0),
                failed=int(failed or 0),
                cancelled=int(cancelled or 0),
                retried=int(retried or 0),
                mean_duration=total / count if count else None,
                p95_duration=p95_bucket(buckets)[0],
            )
        )
    return out


__all__ = ["FLUSH_AFTER", "MinuteCounts", "points"]
