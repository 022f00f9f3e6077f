"""The per-minute history (``rt.history``, and ``rt.stats`` read from it): counts by
outcome, durations, across restarts."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_support import make_rt, until

from taskrt import Batch, FakeClock, InvalidOption, JobContext, JobStatus, Runtime
from taskrt.runtime import MAX_POINTS
from taskrt.web import create_app


def app(tmp_path: Path, clock: FakeClock) -> Runtime:
    rt = make_rt(tmp_path, clock=clock)

    @rt.task(pool="p", attempts=2, retry=0)
    async def flaky(job: JobContext, fail: bool) -> str:
        if fail or job.attempt == 1:
            raise RuntimeError("no")
        return "ok"

    @rt.task(pool="q")
    async def slow(job: JobContext, seconds: float) -> None:
        await clock.advance(seconds)

    return rt


async def test_history_counts_outcomes_per_minute_across_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000.0)  # on a minute
    rt = app(tmp_path, clock)
    async with rt:
        ok = await rt.add("flaky", False)  # fails once (retried), then succeeds
        bad = await rt.add("flaky", True)  # fails twice: retried, then FAILURE
        for job_id in (ok, bad):
            await rt.wait(job_id, timeout=5)
        await clock.advance(60)
        quick = await rt.add("slow", 0.02)
        await rt.wait(quick, timeout=5)
        later = await rt.pool("p").add(rt.resolve("flaky").options(delay=3600), False)
        await rt.cancel(later)
    # A new process, and the jobs themselves purged: the history stays.
    again = app(tmp_path, clock)
    async with again:
        assert (await again.bulk("purge", older_than=0)).done == 4
        points = await again.history(since=1_800_000_000.0, until=clock.now() + 1)
        assert [(p.at, p.succeeded, p.failed, p.cancelled, p.retried) for p in points] == [
            (1_800_000_000.0, 1, 1, 0, 2),
            (1_800_000_060.0, 1, 0, 1, 0),
        ]
        [hour] = await again.history(since=1_800_000_000.0, until=clock.now() + 1, step=3600)
        assert (hour.succeeded, hour.failed, hour.cancelled, hour.retried) == (2, 1, 1, 2)
        [q] = await again.history(since=1_800_000_000.0, step=3600, pool="q", until=clock.now())
        assert q.succeeded == 1 and q.mean_duration == pytest.approx(0.02)
        assert q.p95_duration == 0.05  # the bucket holding it: at most 0.05 s
        with pytest.raises(InvalidOption):
            await again.history(step=90)  # not a multiple of a minute
        # Raw ValueError, TypeError, OverflowError, UnicodeEncodeError or StoreError
        # before, or taken ("1", True).
        refused: list[tuple[str, dict[str, Any]]] = [
            ("since", {"since": "abc"}),
            ("since", {"since": datetime.now()}),
            ("since", {"since": 10**400}),
            ("since", {"since": True}),
            ("until", {"until": "1"}),
            ("pool", {"pool": "\ud800"}),
            ("pool", {"pool": ["x"]}),
        ]
        for field, kwargs in refused:
            with pytest.raises(InvalidOption) as caught:
                await again.history(**kwargs)
            assert caught.value.field == field, kwargs
        for age in ("x", math.nan, 1e300):
            with pytest.raises(InvalidOption, match="older_than"):
                await again.prune_history(age)  # type: ignore[arg-type]
        # A window of more than 10,000 steps gives its latest 10,000.
        latest = await again.history(since=0, until=clock.now(), step=60)
        assert [p.at for p in latest] == [p.at for p in points]


async def test_the_default_window_is_the_last_60_steps_the_current_one_included(
    tmp_path: Path,
) -> None:
    """It was 60 steps back from now, which starts inside a 61st step when now is
    not on a step's boundary: 61 points."""
    clock = FakeClock(start=1_800_000_000.0)  # on a minute, and on an hour
    rt = app(tmp_path, clock)
    async with rt:
        for _ in range(62):
            await rt.wait(await rt.add("flaky", False), timeout=5)
            await clock.advance(60)
        await clock.advance(30)  # within the current minute
        await rt.wait(await rt.add("flaky", False), timeout=5)
        now_minute = (clock.now() // 60) * 60
        points = await rt.history()
        assert len(points) == 60
        assert (points[0].at, points[-1].at) == (now_minute - 59 * 60, now_minute)
        hours = await rt.history(step=3600)
        assert [p.at for p in hours] == [1_800_000_000.0, 1_800_003_600.0]


async def test_a_cancel_written_by_a_process_without_the_job_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client cancels waiting jobs in the database: one while no owner runs (an
    operator's ``taskrt cancel ID --db``), one while the owner holds it in memory
    but cannot be reached. Before, the first was never counted in the history
    (no process held it), and only the owner's poll counted the second. Now the
    process that writes the cancel counts it, and the owner that reads it does not."""
    clock = FakeClock(start=1_800_000_000.0)  # on a minute
    later = lambda rt: rt.resolve("flaky").options(delay=3600)  # noqa: E731
    async with app(tmp_path, clock) as rt:
        alone = await rt.pool("p").add(later(rt), False)
        held = await rt.pool("p").add(later(rt), False)
    client = make_rt(tmp_path, clock=clock, workers=False)
    async with client:
        assert (await client.cancel(alone)).status is JobStatus.CANCELLED
        async with app(tmp_path, clock) as owner:
            assert held in owner.live.states
            monkeypatch.setattr(client, "_forwarding", lambda: None)  # the owner unreachable
            assert (await client.cancel(held)).status is JobStatus.CANCELLED
            await until(lambda: held not in owner.live.states)  # its poll took the cancel in
            assert held not in owner.live.states
    async with app(tmp_path, clock) as again:
        [point] = await again.history(since=1_800_000_000.0, until=clock.now() + 1)
        assert (point.succeeded, point.failed, point.cancelled) == (0, 0, 2)


async def test_a_window_that_ends_on_a_minutes_start_takes_that_minute_in(
    tmp_path: Path,
) -> None:
    """``until`` counts to the end of the minute it falls in, in ``rt.stats`` as in
    ``rt.history``: an ``until`` on the minute's first instant left that minute out
    of the statistics (ceil of until / 60), a millisecond later took it in."""
    clock = FakeClock(start=1_800_000_000.0)  # on a minute
    async with app(tmp_path, clock) as rt:
        await clock.advance(30)
        done = await rt.add("slow", 0.001)
        await rt.wait(done, timeout=5)
        rt.transitions.flush_history()
        for until in (1_800_000_000.0, 1_800_000_000.001, 1_800_000_059.9):
            stats = await rt.stats(since=1_800_000_000.0, until=until)
            [point] = await rt.history(since=1_800_000_000.0, until=until)
            assert (stats.counts[JobStatus.SUCCESS], point.succeeded) == (1, 1), until
        stats = await rt.stats(since=1_800_000_000.0, until=1_799_999_999.9)
        assert stats.counts[JobStatus.SUCCESS] == 0


async def test_a_window_of_more_than_max_points_steps_keeps_its_steps_whole(
    tmp_path: Path,
) -> None:
    # Before: cut to its latest MAX_POINTS steps, the window began mid-step, so its
    # first point held only part of its step.
    clock = FakeClock(60 * 30_000_000.0)  # a minute the 2-minute steps begin at
    rt = make_rt(tmp_path, clock=clock)

    @rt.task
    async def ok(job: JobContext) -> None:
        return None

    async with rt:
        first = clock.now()
        await rt.wait(await rt.add("ok"), timeout=5)  # in this minute
        await clock.advance(60)
        await rt.wait(await rt.add("ok"), timeout=5)  # and the next: one step of 120 s
        await clock.advance(60 * 20_000 - 60)  # the window's end falls on an odd minute
        near = await rt.history(since=first, until=clock.now() - 120, step=120)
        far = await rt.history(since=first - 86_400 * 30, until=clock.now(), step=120)
    assert [(p.at, p.succeeded) for p in near if p.succeeded] == [(first, 2)]
    # The latest MAX_POINTS steps, whole: the step of the two successes is just
    # before them, not half in them (succeeded=1 at its second minute).
    assert len(far) <= MAX_POINTS
    assert all(p.at % 120 == 0 for p in far)
    assert [(p.at, p.succeeded) for p in far if p.succeeded] == []


async def test_the_mean_duration_of_batched_jobs_is_that_of_their_batches(
    target: tuple[str, dict[str, Any]],
) -> None:
    # Before: rt.stats() divided the durations by the successes, and a batch's
    # members succeed without a duration of their own: 8 jobs in batches of 4 that
    # each ran 0.2 s had a mean of 0.05 s (the history said 0.2 s).
    clock = FakeClock(start=1_800_000_000.0)
    db, options = target
    rt = Runtime(db, clock=clock, **options)

    @rt.task(pool="one", batch=Batch(max_size=4, max_wait=60))
    async def digest(items: list[int]) -> int:
        await clock.advance(0.2)
        return sum(items)

    async with rt:
        pool = rt.pool("one", concurrency=1)  # one batch at a time: 0.2 s of the clock each
        ids = [await pool.add(digest.options(batch_key="k"), n) for n in range(8)]
        for job_id in ids:
            assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        everything = await rt.stats()
        window = await rt.stats(since=clock.now() - 60, until=clock.now())
        [point] = await rt.history(since=clock.now() - 60, until=clock.now())
    assert point.succeeded == 8 and point.mean_duration == pytest.approx(0.2)
    for stats in (everything, window):
        assert stats.counts[JobStatus.SUCCESS] == 8
        assert stats.mean_duration == pytest.approx(0.2)
        assert stats.p95_duration == 0.5  # the bucket holding 0.2 s


async def test_the_stats_route_counts_and_documents_what_finished_in_its_window(
    tmp_path: Path,
) -> None:
    # Before: its OpenAPI document said ``since`` and ``until`` chose the jobs created
    # in the window; they choose what finished in it, in whole minutes.
    clock = FakeClock(start=1_800_000_000.0)  # on a minute
    rt = make_rt(tmp_path, clock=clock)

    @rt.task
    async def ok(job: JobContext) -> None:
        return None

    transport = httpx.ASGITransport(app=create_app(rt))
    async with rt, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        created = clock.now()
        job_id = await rt.pool("default").add(ok.options(delay=150))  # finishes 2.5 min on
        await clock.advance(150)
        assert (await rt.wait(job_id, timeout=5)).created_at == created

        async def succeeded(since: float, until: float) -> int:
            reply = await client.get("/stats", params={"since": since, "until": until})
            assert reply.status_code == 200
            return int(reply.json()["counts"]["SUCCESS"])

        assert await succeeded(created, created + 60) == 0  # created then, finished later
        assert await succeeded(created + 130, created + 140) == 1  # its minute, widened
        document = (await client.get("/openapi.json")).json()
    params = {p["name"]: p["description"] for p in document["paths"]["/stats"]["get"]["parameters"]}
    for bound in ("since", "until"):
        assert "finished" in params[bound] and "minute" in params[bound]
        assert "created" not in params[bound]
