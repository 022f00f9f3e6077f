"""The per-minute history (``rt.history``): counts by outcome, durations, across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
from core_support import make_rt

from taskrt import FakeClock, InvalidOption, JobContext, Runtime
from taskrt.runtime import MAX_POINTS


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
        # A window of more than 10,000 steps gives its latest 10,000.
        latest = await again.history(since=0, until=clock.now(), step=60)
        assert [p.at for p in latest] == [p.at for p in points]


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
