"""Queries: job listings with filters and cursors, statistics, pool snapshots, cleanup."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from core_support import Gate, committed, make_rt, until

from taskrt import (
    FakeClock,
    InvalidOption,
    JobContext,
    JobNotFound,
    JobStatus,
    PoolStatistics,
    Runtime,
)
from taskrt.clock import sleep as clock_sleep
from taskrt.store import JobStore


async def test_jobs_filters_by_status_pool_task_and_metadata(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    gate = Gate()

    @rt.task(pool="mail")
    async def send(job: JobContext, to: str) -> str:
        if to == "held":
            await gate()
        if to == "bad":
            raise RuntimeError("bounce")
        return to

    @rt.task(pool="img")
    async def resize(job: JobContext, w: int) -> int:
        return w

    async with rt:
        mail, img = rt.pool("mail"), rt.pool("img")
        a = await mail.add(send.options(metadata={"user": 1, "project": "x"}), "ok")
        b = await mail.add(send.options(metadata={"user": 2, "project": "x"}), "bad")
        c = await mail.add(send.options(metadata={"user": 1, "vip": True}), "held")
        d = await img.add(resize.options(metadata={"user": 1, "project": "y"}), 64)
        for job_id in (a, b, d):
            await rt.wait(job_id, timeout=5)
        await gate.wait_entered(1)

        async def ids(**filters: object) -> list[int]:
            return [j.id for j in (await rt.jobs(**filters)).jobs]  # type: ignore[arg-type]

        assert await ids() == [d, c, b, a]  # newest first
        assert await ids(status="SUCCESS") == [d, a]
        assert await ids(status=[JobStatus.FAILURE, JobStatus.RUNNING]) == [c, b]
        assert await ids(status="running") == [c]
        assert await ids(pool="mail") == [c, b, a]
        assert await ids(task="resize") == [d]
        assert await ids(metadata={"user": 1}) == [d, c, a]
        assert await ids(metadata={"user": 1, "project": "x"}) == [a]
        assert await ids(metadata={"vip": True}) == [c]
        assert await ids(metadata={"user": 3}) == []
        assert await ids(pool="mail", status="SUCCESS", metadata={"project": "x"}) == [a]
        running = (await rt.jobs(status="RUNNING")).jobs[0]
        assert (running.status, running.metadata) == (JobStatus.RUNNING, {"user": 1, "vip": True})
        with pytest.raises(InvalidOption):
            await rt.jobs(status="DONE")
        with pytest.raises(InvalidOption):
            await rt.jobs(limit=0)
        with pytest.raises(InvalidOption):
            await rt.jobs(cursor="not-a-cursor")
        gate.open()


async def test_cursor_pagination_is_stable_while_jobs_arrive(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    rt.pool("default").pause()

    @rt.task
    async def item(job: JobContext, n: int) -> None:
        return None

    async with rt:
        pool = rt.pool("default")
        first_ids = await pool.add_many(item, [(n,) for n in range(25)])
        seen: list[int] = []
        page = await rt.jobs(limit=10)
        seen += [j.id for j in page.jobs]
        await pool.add_many(item, [(n,) for n in range(5)])  # newer jobs arrive meanwhile
        while page.cursor is not None:
            page = await rt.jobs(limit=10, cursor=page.cursor)
            seen += [j.id for j in page.jobs]
        assert seen == sorted(first_ids, reverse=True)
        assert [len((await rt.jobs(limit=30)).jobs), (await rt.jobs(limit=30)).cursor] == [30, None]
        last = await rt.jobs(limit=29)
        assert last.cursor is not None and len(last.jobs) == 29


async def test_stats_counts_success_rate_mean_and_p95(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)
    rt.pool("one", concurrency=1)

    started: list[int] = []

    @rt.task(pool="one", attempts=1)
    async def timed(job: JobContext, seconds: float, fail: bool) -> None:
        started.append(job.id)  # the clock timer below is armed before anyone else runs
        await clock_sleep(clock, seconds)
        if fail:
            raise RuntimeError("failed on purpose")

    async with rt:
        pool = rt.pool("one")
        t0 = clock.now()
        # Twenty successes lasting 1..20 s, two failures, one cancelled, one waiting.
        for seconds in range(1, 21):
            job_id = await pool.add(timed, seconds, False)
            await until(lambda job_id=job_id: started[-1:] == [job_id])
            await clock.advance(seconds)
            await rt.wait(job_id, timeout=5)
        for _ in range(2):
            job_id = await pool.add(timed, 1, True)
            await until(lambda job_id=job_id: started[-1:] == [job_id])
            await clock.advance(1)
            await rt.wait(job_id, timeout=5)
        await rt.cancel(await pool.add(timed.options(delay=1000), 1, False))
        await pool.add(timed.options(delay=1000), 1, False)
        stats = await rt.stats()
        assert stats.counts == {
            "WAITING": 1,
            "RUNNING": 0,
            "SUCCESS": 20,
            "FAILURE": 2,
            "CANCELLED": 1,
        }
        assert stats.total == 24
        assert stats.success_rate == pytest.approx(20 / 22)
        assert stats.mean_duration == pytest.approx(10.5)
        # From the histogram: the 19th of 20 durations (19 s) is in the (5, 30] bucket.
        assert stats.p95_duration == 30.0
        # A window, widened to whole minutes: what finished in the first minute
        # (the jobs of 1..10 s were done by t0 + 55); WAITING is the count now.
        early = await rt.stats(since=t0, until=t0 + 10.5)
        assert early.counts == {
            "WAITING": 1,
            "RUNNING": 0,
            "SUCCESS": 10,
            "FAILURE": 0,
            "CANCELLED": 0,
        }
        assert early.mean_duration == pytest.approx(5.5)
        assert early.p95_duration == 30.0
        late = await rt.stats(since=t0 + 180)  # the jobs of 19 and 20 s ended at t0 + 190, 210
        assert (late.counts["SUCCESS"], late.counts["FAILURE"], late.counts["CANCELLED"]) == (
            2,
            2,
            1,
        )
        empty = await rt.stats(since=t0 + 10_000)
        assert (empty.total, empty.success_rate, empty.mean_duration, empty.p95_duration) == (
            1,
            None,
            None,
            None,
        )


@pytest.mark.parametrize(
    ("durations", "p95"),
    [
        ([0.5] * 19 + [10.0], 0.5),  # the 19th of 20 is 0.5 s: bucket (0.1, 0.5]
        ([0.5] * 18 + [10.0] * 2, 30.0),  # the 19th is 10 s: bucket (5, 30]
        ([0.002], 0.005),
        ([700.0], None),  # above the last bound: no upper bound to give
    ],
)
async def test_p95_is_the_bucket_of_the_nearest_rank(
    tmp_path: Path, durations: list[float], p95: float | None
) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)
    started: list[int] = []

    @rt.task(pool="one")
    async def timed(job: JobContext, seconds: float) -> None:
        started.append(job.id)
        await clock_sleep(clock, seconds)

    async with rt:
        rt.pool("one", concurrency=1)
        for seconds in durations:
            job_id = await rt.pool("one").add(timed, seconds)
            await until(lambda job_id=job_id: started[-1:] == [job_id])
            await clock.advance(seconds)
            await rt.wait(job_id, timeout=5)
        stats = await rt.stats()
    assert stats.counts["SUCCESS"] == len(durations)
    assert stats.mean_duration == pytest.approx(sum(durations) / len(durations), abs=1e-6)
    assert stats.p95_duration == p95


async def test_pool_statistics_is_a_snapshot(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("p", concurrency=2, capacity=50)
    gate = Gate()

    @rt.task(pool="p", attempts=1)
    async def held(job: JobContext, fail: bool) -> None:
        await gate()
        if fail:
            raise RuntimeError("x")

    async with rt:
        assert pool.statistics() == PoolStatistics(
            name="p", concurrency=2, capacity=50, waiting=0, running=0
        )
        ids = await pool.add_many(held, [(False,), (True,), (False,), (False,), (False,)])
        await gate.wait_entered(2)
        before = pool.statistics()
        assert (before.running, before.waiting, before.processed, before.failed) == (2, 3, 0, 0)
        gate.open()
        for job_id in ids:
            await rt.wait(job_id, timeout=5)
        after = pool.statistics()
        assert (after.running, after.waiting, after.processed, after.failed) == (0, 0, 4, 1)
        # The earlier snapshot did not change.
        assert (before.running, before.waiting) == (2, 3)
        assert after.to_dict()["concurrency"] == 2


async def attempts_of_every_id(store: JobStore, last_id: int) -> list[int]:
    """The job id of every committed attempt of jobs 1..``last_id`` (every id given so far)."""
    return [a.job_id for job_id in range(1, last_id + 1) for a in await store.attempts(job_id)]


async def test_cleanup_deletes_old_finished_jobs_and_their_attempts(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)
    rt.retention(None)  # the built-in hourly prune would race this test's own cleanups

    @rt.task(attempts=2, retry=0)
    async def work(job: JobContext, fail: bool) -> str:
        if fail:
            raise RuntimeError("no")
        return "ok"

    async with rt:
        pool = rt.pool("default")
        old_ok = await pool.add(work, False)
        old_bad = await pool.add(work, True)
        for job_id in (old_ok, old_bad):
            await rt.wait(job_id, timeout=5)
        waiting = await pool.add(work.options(delay=30 * 86400), False)
        await clock.advance(8 * 86400)
        recent = await pool.add(work, False)
        await rt.wait(recent, timeout=5)
        await rt.attempts(recent)  # what is queued is written first
        async with committed(tmp_path) as store:
            assert len(await attempts_of_every_id(store, recent)) == 4

        assert await rt.cleanup(older_than=timedelta(days=7), statuses=["FAILURE"]) == 1
        assert await rt.cleanup(older_than=7 * 86400) == 1
        assert await rt.cleanup(older_than=7 * 86400) == 0
        for job_id in (old_ok, old_bad):
            with pytest.raises(JobNotFound):
                await rt.get(job_id)
        assert (await rt.get(waiting)).status is JobStatus.WAITING
        assert (await rt.get(recent)).status is JobStatus.SUCCESS
        async with committed(tmp_path) as store:
            assert await attempts_of_every_id(store, recent) == [recent]
        # An age that is no age is refused, naming it, and deletes nothing (before, a
        # negative one deleted every finished job, and NaN every one on PostgreSQL).
        for bad in (-1, timedelta(days=-1), float("nan"), float("inf"), "soon", None):
            with pytest.raises(InvalidOption) as caught:
                await rt.cleanup(older_than=bad)  # type: ignore[arg-type]
            assert caught.value.field == "older_than"
        assert (await rt.get(recent)).status is JobStatus.SUCCESS
        assert await rt.cleanup(older_than="1h") == 0
        with pytest.raises(InvalidOption):
            await rt.cleanup(statuses=["RUNNING"])
        # Ids keep increasing after deletes, even of the newest rows.
        await clock.advance(1)
        assert await rt.cleanup(older_than=0) == 1
        newer = await pool.add(work, False)
        assert newer == recent + 1


async def test_an_id_no_64_bit_column_holds_is_no_job(tmp_path: Path) -> None:
    # Before, the driver failed to send it: OverflowError from every call by id.
    rt = make_rt(tmp_path)
    async with rt:
        for job_id in (2**64, 2**63, -(2**64)):
            calls = (
                rt.get(job_id),
                rt.cancel(job_id),
                rt.retry(job_id),
                rt.wait(job_id, timeout=1),
                rt.attempts(job_id),
                rt.progress(job_id, 1, 2),
            )
            for call in calls:
                with pytest.raises(JobNotFound):
                    await call


async def test_an_empty_status_list_is_no_filter_for_count_list_and_bulk(
    tmp_path: Path,
) -> None:
    # Before, count(status=[]) said 0 while jobs(status=[]) listed every job, and a
    # bulk action with it skipped its limit check (it counted 0 first).
    rt = make_rt(tmp_path)
    rt.pool("default").pause()

    @rt.task
    async def idle(job: JobContext) -> None: ...

    async with rt:
        for _ in range(3):
            await rt.add(idle)
        listed = (await rt.jobs(status=[])).jobs
        assert len(listed) == 3
        assert await rt.count(status=[]) == 3 == await rt.count()
        assert (await rt.bulk("cancel", status=[], dry_run=True)).matched == 3


async def test_a_listing_by_status_never_shows_a_job_of_another_status(tmp_path: Path) -> None:
    """Jobs start and end while pages are read. Before, a job whose row matched the
    filter when it was read, and which then moved on in memory, was listed under its
    new status: about one ``status=RUNNING`` page in four held SUCCESS jobs."""
    rt = make_rt(tmp_path)
    rt.pool("p", concurrency=20)

    @rt.task(pool="p")
    async def short(job: JobContext) -> None:
        await asyncio.sleep(0.001)

    async with rt:
        pool = rt.pool("p")
        await pool.add_many(short, [() for _ in range(1000)])
        listed = 0
        for _ in range(60):
            await pool.add_many(short, [() for _ in range(20)])
            for status in (JobStatus.RUNNING, JobStatus.WAITING):
                page = await rt.jobs(status=status, limit=1000)
                assert {j.status for j in page.jobs} <= {status}
                listed += len(page.jobs)
            scheduled = await rt.jobs(scheduled=True)
            assert scheduled.jobs == []  # none waits for a time to come
        assert listed > 1000  # the pages were not empty


async def test_a_metadata_filter_names_exactly_its_key_whatever_its_characters(
    target: tuple[str, dict[str, Any]],
) -> None:
    """On SQLite a filter's key went into a JSON path, whose quoted label SQLite
    compares with the key as stored, escapes included: the key ``a\\`` matched the
    job whose key was ``a\\\\``, a key with a quote matched nothing, and a bulk
    purge by such a filter deleted another job than the one named."""
    db, options = target
    rt = Runtime(db, **options)

    @rt.task
    async def echo() -> None:
        return None

    keys = ["a\\", "a\\\\", 'say "hi"', "é", "a.b", "tab\there", "plain", "[0]"]
    async with rt:
        pool = rt.pool("default")
        pool.pause()  # the jobs wait: cancel finds them all
        ids = {key: await pool.add(echo.options(metadata={key: "x", "n": 1})) for key in keys}
        for key in keys:
            found = [job.id for job in (await rt.jobs(metadata={key: "x"})).jobs]
            assert found == [ids[key]], key
            assert await rt.count(metadata={key: "x", "n": 1}) == 1, key
            assert await rt.count(metadata={key: 1}) == 0, key  # a string is no number
        done = await rt.bulk("cancel", metadata={"a\\\\": "x"})
        assert done.matched == 1
        assert (await rt.get(ids["a\\\\"])).status is JobStatus.CANCELLED
        assert (await rt.get(ids["a\\"])).status is JobStatus.WAITING
