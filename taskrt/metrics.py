"""Prometheus metrics of one runtime, through the official ``prometheus-client``.

``RuntimeCollector(rt)`` is a custom collector: at each scrape it reads what
the runtime already keeps (``rt.counters``, ``pool.statistics()``,
``rt.broker``), so the hot path pays nothing for metrics. ``registry(rt)``
gives a ``CollectorRegistry`` of its own (never the global one: two runtimes
in one process, or two test runs, never mix); ``GET /metrics`` of the web app
serves it (``taskrt.web.metrics``).

Metrics (``taskrt_`` prefix; counters are totals since this process started
the runtime, as Prometheus expects):

==========================================  =========  =================  ==============================
name                                        type       labels             what
==========================================  =========  =================  ==============================
``jobs_added_total``                        counter    task               jobs added through this runtime
``jobs_finished_total``                     counter    task, outcome      jobs that reached success,
                                                                          failure or cancelled here
``attempt_duration_seconds``                histogram  task, outcome      every attempt run here
``job_retries_total``                       counter    task               attempts that failed and will
                                                                          run again
``job_timeouts_total``                      counter    task               attempts that hit their timeout
``pool_waiting`` / ``pool_running``         gauge      pool               jobs queued / running now
``pool_concurrency``                        gauge      pool               the pool's worker slots
``pool_paused``                             gauge      pool               1 while the pool is paused
``sse_streams_open``                        gauge                         event streams open now
``events_dropped_total``                    counter                       progress events conflated away
                                                                          for slow subscribers
``scheduler_fires_total``                   counter    schedule           jobs added for cron slots
``scheduler_misfires_total``                counter    schedule           times due slots were left
                                                                          unfired (reached late)
``runtime_started``                         gauge                         1 while the runtime is started
==========================================  =========  =================  ==============================

Pool gauges describe the process that runs the jobs (the owner): a standby
or a client queues nothing, so it exports no pool gauges; scrape every
process and sum, or read ``GET /pools`` (any process answers for the owner).
On PostgreSQL's nodes, ``pool_running`` and ``pool_concurrency`` are the
node's own (sum them) and ``pool_waiting`` the schema's, as of the node's last
look (every ``poll_interval``, at least a second): take one node's, or the max.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .counters import BUCKETS
from .runtime import Runtime

PREFIX = "taskrt"


class RuntimeCollector(Collector):
    """Reads one runtime's counters and statistics at every scrape.

    ``streams_open`` overrides where the open SSE streams are counted (the web
    app passes its own stream slots); by default ``rt.counters.sse_streams_open``.
    """

    def __init__(
        self,
        rt: Runtime,
        *,
        prefix: str = PREFIX,
        streams_open: Callable[[], int] | None = None,
    ) -> None:
        self.rt = rt
        self.prefix = prefix
        self._streams_open = streams_open

    def describe(self) -> list[Metric]:
        # Checking names at registration would mean a scrape; these names are fixed.
        return []

    def collect(self) -> Iterator[Metric]:
        p = self.prefix
        counters = self.rt.counters
        # ``list(d.items())`` copies under the GIL: a scrape from another thread
        # (``prometheus_client.start_http_server``) never sees a dict change size.

        added = CounterMetricFamily(
            f"{p}_jobs_added", "Jobs added through this runtime.", labels=["task"]
        )
        for task, n in sorted(list(counters.added.items())):
            added.add_metric([task], n)
        yield added

        finished = CounterMetricFamily(
            f"{p}_jobs_finished",
            "Jobs that reached a terminal status in this runtime, by outcome.",
            labels=["task", "outcome"],
        )
        for (task, status), n in sorted(list(counters.finished.items())):
            finished.add_metric([task, status.lower()], n)
        yield finished

        durations = HistogramMetricFamily(
            f"{p}_attempt_duration_seconds",
            "How long attempts ran, by outcome (success, error, timeout, cancelled, ...).",
            labels=["task", "outcome"],
            unit="seconds",
        )
        for (task, outcome), hist in sorted(list(counters.attempts.items())):
            counts = list(hist.counts)
            total_sum, n = hist.total, hist.n
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(BUCKETS, counts, strict=False):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            buckets.append(("+Inf", n))
            durations.add_metric([task, outcome], buckets, total_sum)
        yield durations

        retries = CounterMetricFamily(
            f"{p}_job_retries", "Failed attempts that will run again.", labels=["task"]
        )
        for task, n in sorted(list(counters.retries.items())):
            retries.add_metric([task], n)
        yield retries

        timeouts = CounterMetricFamily(
            f"{p}_job_timeouts", "Attempts cancelled at their timeout.", labels=["task"]
        )
        for task, n in sorted(list(counters.timeouts.items())):
            timeouts.add_metric([task], n)
        yield timeouts

        if self.rt.runs_jobs:
            yield from self._pools()

        streams = self._streams_open() if self._streams_open else counters.sse_streams_open
        yield GaugeMetricFamily(f"{p}_sse_streams_open", "Event streams open now.", value=streams)

        yield CounterMetricFamily(
            f"{p}_events_dropped",
            "Progress events conflated away because a subscriber was slow.",
            value=self.rt.broker.dropped,
        )

        fires = CounterMetricFamily(
            f"{p}_scheduler_fires", "Jobs added for cron slots.", labels=["schedule"]
        )
        for name, n in sorted(list(counters.scheduler_fires.items())):
            fires.add_metric([name], n)
        yield fires

        misfires = CounterMetricFamily(
            f"{p}_scheduler_misfires",
            "Times a schedule was reached late with due slots its misfire policy left unfired.",
            labels=["schedule"],
        )
        for name, n in sorted(list(counters.scheduler_misfires.items())):
            misfires.add_metric([name], n)
        yield misfires

        health = self.rt.health()
        owner = self.rt.owner_status()
        yield GaugeMetricFamily(
            f"{p}_owner",
            "1 in a process that runs the jobs of the database (the owner, or each node of "
            'mode "nodes"); 0 in a standby or a client.',
            value=1 if owner.role in ("owner", "node") else 0,
        )
        yield GaugeMetricFamily(
            f"{p}_owner_reachable",
            "1 while this process reaches the owner (always 1 in the owner itself).",
            value=1 if owner.reachable else 0,
        )
        yield GaugeMetricFamily(
            f"{p}_store_healthy",
            "1 while the database takes writes; 0 while state changes wait in memory.",
            value=1 if health.ok else 0,
        )
        yield GaugeMetricFamily(
            f"{p}_store_retained_writes",
            "State changes kept in memory until the database takes writes again.",
            value=health.retained,
        )
        yield CounterMetricFamily(
            f"{p}_store_failed_writes",
            "Write batches the database refused for now (each is tried again).",
            value=health.failed_writes,
        )
        stalls = self.rt.loop_watchdog.statistics()
        yield CounterMetricFamily(
            f"{p}_loop_stalls",
            "Times the event loop was blocked longer than the stall threshold.",
            value=stalls.stalls,
        )
        yield CounterMetricFamily(
            f"{p}_loop_stall_seconds",
            "Seconds the event loop spent blocked in stalls over the threshold.",
            value=stalls.total,
        )
        yield GaugeMetricFamily(
            f"{p}_runtime_started",
            "1 while the runtime is started.",
            value=1 if self.rt.started else 0,
        )

    def _pools(self) -> Iterator[Metric]:
        p = self.prefix
        waiting = GaugeMetricFamily(
            f"{p}_pool_waiting", "Jobs queued in the pool.", labels=["pool"]
        )
        running = GaugeMetricFamily(
            f"{p}_pool_running", "Jobs running in the pool.", labels=["pool"]
        )
        slots = GaugeMetricFamily(
            f"{p}_pool_concurrency", "Worker slots of the pool.", labels=["pool"]
        )
        paused = GaugeMetricFamily(
            f"{p}_pool_paused", "1 while the pool is paused.", labels=["pool"]
        )
        latency = GaugeMetricFamily(
            f"{p}_pool_latency_seconds",
            "How long the oldest runnable job has waited past its run_at.",
            labels=["pool"],
        )
        rate = GaugeMetricFamily(
            f"{p}_pool_rate_limit",
            "Starts per second the pool's rate limit allows (pools with one).",
            labels=["pool"],
        )
        for name, pool in sorted(self.rt.pools.items()):
            stats = pool.statistics()
            waiting.add_metric([name], stats.waiting)
            running.add_metric([name], stats.running)
            slots.add_metric([name], stats.concurrency)
            paused.add_metric([name], 1 if stats.paused else 0)
            latency.add_metric([name], stats.latency)
            if pool.rate is not None:
                rate.add_metric([name], pool.rate.per_second)
        yield from (waiting, running, slots, paused, latency, rate)


def _bound(value: float) -> str:
    return repr(float(value))


def registry(
    rt: Runtime, *, prefix: str = PREFIX, streams_open: Callable[[], int] | None = None
) -> CollectorRegistry:
    """A registry of its own holding ``RuntimeCollector(rt)``."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RuntimeCollector(rt, prefix=prefix, streams_open=streams_open))
    return reg


def exposition(reg: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The registry in the text format the ``Accept`` header asks for (Prometheus or
    OpenMetrics); returns the body and its content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(reg), content_type


__all__ = ["PREFIX", "RuntimeCollector", "exposition", "registry"]
