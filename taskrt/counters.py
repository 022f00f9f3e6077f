"""Running totals the runtime keeps for metrics: plain counters, no I/O.

The Prometheus exporter (``taskrt.metrics``) and the statistics routes read
these; the hot path only increments dict entries.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

# Attempt duration buckets, seconds (upper bounds; +Inf is implied).
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)


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
