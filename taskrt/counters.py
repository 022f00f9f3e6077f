"""Running totals the runtime keeps for metrics: plain counters, no I/O.

The Prometheus exporter (``taskrt.metrics``) and the statistics routes read
these; the hot path only increments dict entries.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

# Attempt duration buckets, seconds (upper bounds; +Inf is implied).
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)


def p95_bucket(buckets: Sequence[int]) -> tuple[float | None, float | None]:
    """(p95, p95_low): the bounds of the histogram bucket holding the 95th percentile.

    Nearest rank: the ceil(0.95 n)-th smallest duration. Bucket i holds the
    durations in (BUCKETS[i - 1], BUCKETS[i]] (the first from 0), so the true
    p95 lies in (p95_low, p95]. The last bucket (above BUCKETS[-1]) has no
    upper bound: (None, BUCKETS[-1]). (None, None) with no durations.
    """
    n = sum(buckets)
    if n <= 0:
        return None, None
    rank = -(-95 * n // 100)
    seen = 0
    for i, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            if i >= len(BUCKETS):
                return None, BUCKETS[-1]
            return BUCKETS[i], BUCKETS[i - 1] if i else 0.0
    return None, BUCKETS[-1]  # unreachable: seen reaches n >= rank


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.n += 1


@dataclass(slots=True)
class Counters:
    """Totals since the runtime was created, by task (and outcome)."""

    added: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    finished: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    retries: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    timeouts: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    attempts: defaultdict[tuple[str, str], Histogram] = field(
        default_factory=lambda: defaultdict(Histogram)
    )
    scheduler_fires: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    scheduler_misfires: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    sse_streams_open: int = 0
