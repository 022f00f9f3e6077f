"""Prometheus metrics: read back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taskrt import FakeClock, JobContext, Runtime
from taskrt.counters import BUCKETS
from taskrt.metrics import registry
from taskrt.web import Unauthorized, create_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """``{(sample name, sorted labels): value}`` from the exposition text."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def scrape(rt: Runtime) -> Samples:
    return samples(generate_latest(registry(rt)).decode())


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


async def test_jobs_attempts_retries_and_timeouts_by_task_and_outcome(db_path: Path) -> None:
    rt = Runtime(str(db_path), abandon_after=0.05)

    @rt.task(pool="work")
    async def ok(job: JobContext) -> int:
        return 1

    @rt.task(pool="work", attempts=2)
    async def flaky(job: JobContext) -> None:
        raise ValueError("no")

    @rt.task(pool="work", timeout=0.02)
    async def slow(job: JobContext) -> None:
        await asyncio.sleep(5)

    async with rt:
        ids = [await rt.add(ok), await rt.add(ok), await rt.add(flaky), await rt.add(slow)]
        for job_id in ids:
            await rt.wait(job_id, timeout=5)
        got = scrape(rt)

    assert got["taskrt_jobs_added_total", (("task", "ok"),)] == 2
    assert got["taskrt_jobs_added_total", (("task", "flaky"),)] == 1
    assert got["taskrt_jobs_finished_total", (("outcome", "success"), ("task", "ok"))] == 2
    assert got["taskrt_jobs_finished_total", (("outcome", "failure"), ("task", "flaky"))] == 1
    assert got["taskrt_jobs_finished_total", (("outcome", "failure"), ("task", "slow"))] == 1
    assert got["taskrt_job_retries_total", (("task", "flaky"),)] == 1
    assert got["taskrt_job_timeouts_total", (("task", "slow"),)] == 1
    assert ("taskrt_job_timeouts_total", (("task", "ok"),)) not in got

    # Histograms: cumulative buckets, +Inf equal to the count.
    labels = (("outcome", "error"), ("task", "flaky"))
    assert got["taskrt_attempt_duration_seconds_count", labels] == 2
    buckets = [
        got["taskrt_attempt_duration_seconds_bucket", (("le", repr(b)), *labels)] for b in BUCKETS
    ]
    assert buckets == sorted(buckets)
    assert got["taskrt_attempt_duration_seconds_bucket", (("le", "+Inf"), *labels)] == 2
    timeout_labels = (("outcome", "timeout"), ("task", "slow"))
    assert got["taskrt_attempt_duration_seconds_count", timeout_labels] == 1
    assert got["taskrt_attempt_duration_seconds_sum", timeout_labels] >= 0.02
    # 0.02 s is above the 0.01 bucket, so the 0.01 bucket does not hold it.
    assert got["taskrt_attempt_duration_seconds_bucket", (("le", "0.01"), *timeout_labels)] == 0
    assert got["taskrt_runtime_started", ()] == 1


async def test_pool_gauges_follow_the_pools_statistics(db_path: Path) -> None:
    rt = Runtime(str(db_path))
    rt.pool("gated", concurrency=2)
    gate = asyncio.Event()

    @rt.task(pool="gated")
    async def wait_for_gate(job: JobContext) -> None:
        await gate.wait()

    async with rt:
        ids = [await rt.add(wait_for_gate) for _ in range(5)]
        pool = rt.pools["gated"]
        await until(lambda: pool.running == 2)
        got = scrape(rt)
        assert got["taskrt_pool_running", (("pool", "gated"),)] == 2
        assert got["taskrt_pool_waiting", (("pool", "gated"),)] == 3
        assert got["taskrt_pool_concurrency", (("pool", "gated"),)] == 2
        assert got["taskrt_pool_paused", (("pool", "gated"),)] == 0
        pool.pause()
        assert scrape(rt)["taskrt_pool_paused", (("pool", "gated"),)] == 1
        pool.resume()
        gate.set()
        for job_id in ids:
            await rt.wait(job_id, timeout=5)
        got = scrape(rt)
        assert got["taskrt_pool_running", (("pool", "gated"),)] == 0
        assert got["taskrt_pool_waiting", (("pool", "gated"),)] == 0
    assert scrape(rt)["taskrt_runtime_started", ()] == 0


async def test_a_client_runtime_exports_no_pool_gauges(db_path: Path) -> None:
    rt = Runtime(str(db_path), workers=False)
    rt.pool("p")
    async with rt:
        names = {name for name, _ in scrape(rt)}
    assert "taskrt_pool_waiting" not in names and "taskrt_jobs_added_total" not in names


async def test_the_owner_and_a_standby_say_which_they_are(db_path: Path) -> None:
    owner, standby = Runtime(str(db_path)), Runtime(str(db_path))
    async with owner, standby:
        await until(lambda: standby.owner_status().reachable)
        ours, theirs = scrape(owner), scrape(standby)
    assert (ours["taskrt_owner", ()], theirs["taskrt_owner", ()]) == (1, 0)
    assert (ours["taskrt_owner_reachable", ()], theirs["taskrt_owner_reachable", ()]) == (1, 1)


async def test_events_dropped_by_conflation_are_counted(db_path: Path) -> None:
    rt = Runtime(str(db_path))
    gate = asyncio.Event()
    reported = asyncio.Event()

    @rt.task
    async def chatty(job: JobContext) -> None:
        for i in range(50):
            await job.progress(i, 50)
        reported.set()
        await gate.wait()

    async with rt:
        job_id = await rt.add(chatty)
        stream = rt.subscribe(job_id, buffer=4)  # never read while the job reports
        await reported.wait()
        dropped = rt.broker.dropped
        assert dropped > 0
        assert scrape(rt)["taskrt_events_dropped_total", ()] == dropped
        gate.set()
        stream.close()
        await rt.wait(job_id, timeout=5)


async def test_scheduler_fires_and_misfires_per_schedule(db_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)

    def make() -> Runtime:
        rt = Runtime(str(db_path), clock=clock)

        @rt.task
        async def beat(job: JobContext) -> None:
            return None

        rt.schedule("beat", beat, "* * * * * *")  # every second; misfire="latest"
        return rt

    key = (("schedule", "beat"),)
    async with make() as rt:
        for _ in range(3):
            await clock.advance(1)
            await rt.schedules.wait_idle()
        got = scrape(rt)
    assert got["taskrt_scheduler_fires_total", key] == 3
    assert got["taskrt_scheduler_misfires_total", key] == 0
    await clock.advance(10)  # down while ten slots pass
    async with make() as rt:  # start fires the newest of them only
        got = scrape(rt)
    assert got["taskrt_scheduler_fires_total", key] == 1
    assert got["taskrt_scheduler_misfires_total", key] == 1


def test_each_runtime_has_its_own_registry(tmp_path: Path) -> None:
    a, b = Runtime(str(tmp_path / "a.db")), Runtime(str(tmp_path / "b.db"))
    a.counters.added["t"] += 1
    registry(a)
    registry(b)  # no "duplicated timeseries" error: neither touches the global registry
    assert scrape(b).get(("taskrt_jobs_added_total", (("task", "t"),))) is None
    global_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("taskrt_") for name in global_names)


async def test_the_metrics_route_serves_text_and_openmetrics_with_the_apps_streams(
    db_path: Path,
) -> None:
    rt = Runtime(str(db_path))

    @rt.task
    async def ok(job: JobContext) -> None:
        return None

    app = create_app(rt)
    transport = httpx.ASGITransport(app=app)
    async with rt, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await rt.wait(await rt.add(ok), timeout=5)
        release = app.state.taskrt.streams.acquire(1)  # as an open event stream does
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        got = samples(response.text)
        assert got["taskrt_jobs_added_total", (("task", "ok"),)] == 1
        assert got["taskrt_sse_streams_open", ()] == 1
        release()
        assert samples((await client.get("/metrics")).text)["taskrt_sse_streams_open", ()] == 0

        open_metrics = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.endswith("# EOF\n")


async def test_the_metrics_route_is_authenticated(db_path: Path) -> None:
    rt = Runtime(str(db_path))

    def auth(request: Any) -> str:
        if request.headers.get("authorization") != "Bearer s3cret":
            raise Unauthorized()
        return "prometheus"

    transport = httpx.ASGITransport(app=create_app(rt, auth=auth))
    async with rt, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/metrics")).status_code == 401
        ok = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "taskrt_runtime_started 1.0" in ok.text


async def test_queue_latency_is_the_wait_of_the_oldest_runnable_job(db_path: Path) -> None:
    clock = FakeClock()
    rt = Runtime(str(db_path), clock=clock)
    rt.pool("p", concurrency=1).pause()

    @rt.task(pool="p")
    async def noop(job: JobContext) -> None:
        return None

    async with rt:
        assert rt.pools["p"].statistics().latency == 0.0
        await rt.add(noop)
        await rt.pool("p").add(noop.options(delay=600))  # not runnable: no latency
        await clock.advance(30)
        assert rt.pools["p"].statistics().latency == 30.0
        assert scrape(rt)["taskrt_pool_latency_seconds", (("pool", "p"),)] == 30.0
        [pool] = [p for p in await rt.pool_statistics() if p.name == "p"]
        assert pool.to_dict()["latency"] == 30.0
