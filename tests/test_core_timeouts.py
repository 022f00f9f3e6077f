"""Timeouts that really cancel, and cancelling waiting and running jobs."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from core_support import Gate, collect, committed_jobs, make_rt, until

from taskrt import (
    AttemptOutcome,
    EventType,
    FakeClock,
    InvalidTransition,
    JobContext,
    JobNotFound,
    JobStatus,
    Runtime,
)

# -- timeouts -----------------------------------------------------------------------------------


async def test_timeout_really_cancels_the_coroutine(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    seen: list[str] = []

    @rt.task(timeout=0.05)
    async def slow(job: JobContext) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "late"

    async with rt:
        started = time.perf_counter()
        job_id = await rt.pool("default").add(slow)
        info = await rt.wait(job_id, timeout=5)
        elapsed = time.perf_counter() - started
        attempts = await rt.attempts(job_id)
    assert seen == ["cancelled"]
    assert elapsed < 1.0
    assert (info.status, info.result) == (JobStatus.FAILURE, None)
    assert info.error == f"job {job_id} timed out after 0.05s"
    assert [(a.outcome, a.error) for a in attempts] == [(AttemptOutcome.TIMEOUT, info.error)]


async def test_handler_that_swallows_the_cancellation_is_still_timed_out(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    returned: list[str] = []

    @rt.task(timeout=0.05)
    async def sneaky(job: JobContext) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        returned.append("returned")
        return "pretend success"

    async with rt:
        job_id = await rt.pool("default").add(sneaky)
        info = await rt.wait(job_id, timeout=5)
    assert returned == ["returned"]
    assert (info.status, info.result) == (JobStatus.FAILURE, None)
    assert info.error is not None and "timed out" in info.error
    assert [(j.status, j.result) for j in await committed_jobs(tmp_path)] == [
        (JobStatus.FAILURE, None)
    ]


async def test_timed_out_attempt_is_retried_and_can_succeed(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task(attempts=3, retry=0, timeout=0.1)
    async def first_slow(job: JobContext) -> int:
        if job.attempt == 1:
            await asyncio.sleep(30)
        return job.attempt

    async with rt:
        job_id = await rt.pool("default").add(first_slow)
        info = await rt.wait(job_id, timeout=5)
        attempts = await rt.attempts(job_id)
    assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, 2, 2)
    assert [a.outcome for a in attempts] == [AttemptOutcome.TIMEOUT, AttemptOutcome.SUCCESS]


async def test_handler_ignoring_cancellation_is_marked_and_keeps_its_slot(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, abandon_after=0.05)
    pool = rt.pool("one", concurrency=1)
    release = asyncio.Event()
    ran: list[str] = []

    @rt.task(pool="one", timeout=0.05)
    async def deaf(job: JobContext) -> None:
        while True:
            try:
                await release.wait()
                return
            except asyncio.CancelledError:
                continue  # ignores every cancellation

    @rt.task(pool="one")
    async def next_in_line(job: JobContext) -> str:
        ran.append("next")
        return "ran"

    async with rt:
        try:
            stuck = await pool.add(deaf)
            queued = await pool.add(next_in_line)
            info = await rt.wait(stuck, timeout=5)
            assert info.status is JobStatus.FAILURE
            assert info.error is not None and "timed out" in info.error
            # The coroutine still runs: its slot is not given to the next job.
            assert (await rt.get(queued)).status is JobStatus.WAITING
            assert ran == []
            assert pool.statistics().waiting == 1
        finally:
            release.set()  # even when an assertion failed: the loop must be able to close
        done = await rt.wait(queued, timeout=5)
        assert (done.status, done.result) == (JobStatus.SUCCESS, "ran")
    assert [(j.id, j.status) for j in await committed_jobs(tmp_path)] == [
        (stuck, JobStatus.FAILURE),
        (queued, JobStatus.SUCCESS),
    ]


async def test_abandoned_attempt_does_not_break_the_retry(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, abandon_after=0.05)
    pool = rt.pool("two", concurrency=2)
    release = asyncio.Event()

    @rt.task(pool="two", attempts=2, retry=0, timeout=0.05)
    async def deaf_once(job: JobContext) -> int:
        if job.attempt == 1:
            while True:
                try:
                    await release.wait()
                    return -1
                except asyncio.CancelledError:
                    continue
        return job.attempt

    async with rt:
        try:
            job_id = await pool.add(deaf_once)
            info = await rt.wait(job_id, timeout=5)
            assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, 2, 2)
        finally:
            release.set()
        # The abandoned coroutine's return changes nothing and frees its slot.
        await until(lambda: pool.statistics().running == 0)
        assert (await rt.get(job_id)).result == 2
        gate = Gate()

        @rt.task(pool="two")
        async def held(job: JobContext) -> None:
            await gate()

        ids = await pool.add_many(held, [(), ()])
        await gate.wait_entered(2)
        gate.open()
        assert [(await rt.wait(i, timeout=5)).status for i in ids] == [JobStatus.SUCCESS] * 2


async def test_retry_after_a_timeout_is_not_abandoned_by_the_old_attempt(tmp_path: Path) -> None:
    # The first attempt times out and stops at once; the second one runs longer
    # than ``abandon_after`` (but within its timeout) and must simply succeed.
    rt = make_rt(tmp_path, abandon_after=0.05)
    rt.pool("one", concurrency=1)

    @rt.task(pool="one", attempts=2, retry=0, timeout=0.3)
    async def slow_then_fine(job: JobContext) -> int:
        await asyncio.sleep(30 if job.attempt == 1 else 0.15)
        return job.attempt

    async with rt:
        job_id = await rt.pool("one").add(slow_then_fine)
        info = await rt.wait(job_id, timeout=5)
    assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, 2, 2)


async def test_timeout_per_call_option(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task(timeout=30)
    async def nap(job: JobContext, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "rested"

    async with rt:
        pool = rt.pool("default")
        short = await pool.add(nap.options(timeout=0.05), 10)
        fine = await pool.add(nap, 0.01)
        assert (await rt.wait(short, timeout=5)).status is JobStatus.FAILURE
        assert (await rt.wait(fine, timeout=5)).result == "rested"
        assert (await rt.get(short)).timeout == 0.05


# -- cancel --------------------------------------------------------------------------------------


async def test_cancel_waiting_job_never_runs(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)
    ran: list[int] = []

    @rt.task
    async def later(job: JobContext) -> None:
        ran.append(job.id)

    async with rt:
        pool = rt.pool("default")
        job_id = await pool.add(later.options(delay=10))
        stream = rt.subscribe(job_id)
        snapshot = await anext(stream)
        assert snapshot.status is JobStatus.WAITING
        info = await rt.cancel(job_id)
        assert info.status is JobStatus.CANCELLED and info.finished_at == clock.now()
        events = await collect(stream)
        assert [e.type for e in events] == [EventType.CANCELLED]
        assert pool.statistics().waiting == 0
        await clock.advance(20)
        assert ran == []
        assert (await rt.get(job_id)).status is JobStatus.CANCELLED
    assert [j.status for j in await committed_jobs(tmp_path)] == [JobStatus.CANCELLED]


async def test_cancel_running_job_within_milliseconds(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    errors: list[str] = []
    gate = Gate()
    seen: list[str] = []

    @rt.task(attempts=5, on_error=lambda i, e: errors.append(e))
    async def long(job: JobContext) -> None:
        try:
            await gate()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async with rt:
        job_id = await rt.pool("default").add(long)
        await gate.wait_entered(1)
        started = time.perf_counter()
        info = await rt.cancel(job_id)
        elapsed = time.perf_counter() - started
        attempts = await rt.attempts(job_id)
        assert rt.pool("default").statistics().running == 0
    assert elapsed < 1.0  # at once (a few ms): not after the handler's own end, which never comes
    assert seen == ["cancelled"]
    assert (info.status, info.attempts) == (JobStatus.CANCELLED, 1)
    assert [a.outcome for a in attempts] == [AttemptOutcome.CANCELLED]
    assert errors == []
    assert [j.status for j in await committed_jobs(tmp_path)] == [JobStatus.CANCELLED]


async def test_cancel_a_handler_that_swallows_it(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    gate = Gate()

    @rt.task
    async def stubborn(job: JobContext) -> str:
        try:
            await gate()
        except asyncio.CancelledError:
            return "ignored you"
        return "finished"

    async with rt:
        job_id = await rt.pool("default").add(stubborn)
        await gate.wait_entered(1)
        info = await rt.cancel(job_id)
    assert (info.status, info.result) == (JobStatus.CANCELLED, None)


async def test_a_cancel_during_the_cleanup_after_a_timeout_ends_the_job(
    target: tuple[str, dict[str, Any]],
) -> None:
    """Its attempt timed out and its handler is still cleaning up when the cancel comes:
    the job ends CANCELLED, not retried, the cleanup not cut short, and the attempt
    recorded as what it was, a timeout (pool note 3). It was retried, and rt.cancel
    raised TimeoutError after waiting for an end that never came."""
    db, options = target
    rt = Runtime(db, **options, abandon_after=2)
    cleaning, cancelled = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    @rt.task(timeout=0.05, attempts=10, retry=0.05)
    async def slow(job: JobContext) -> None:
        seen.append(f"attempt {job.attempt}")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cleaning.set()
            await cancelled.wait()  # the cleanup goes on past the cancel
            seen.append("cleaned up")
            raise

    async with rt:
        job_id = await rt.pool("default").add(slow)
        async with asyncio.timeout(5):
            await cleaning.wait()
        asking = asyncio.ensure_future(rt.cancel(job_id))
        await until(lambda: rt.live.states[job_id].cancel_requested)
        cancelled.set()
        async with asyncio.timeout(5):
            info = await asking
        stats = rt.pool("default").statistics()
    assert (info.status, info.attempts) == (JobStatus.CANCELLED, 1)
    assert seen == ["attempt 1", "cleaned up"]
    assert (stats.processed, stats.failed) == (0, 1)
    async with Runtime(db, **options) as again:  # what is stored
        stored = await again.get(job_id)
        attempts = await again.attempts(job_id)
    assert (stored.status, stored.attempts) == (JobStatus.CANCELLED, 1)
    timed_out = f"job {job_id} timed out after 0.05s"
    assert [(a.outcome, a.error, a.next) for a in attempts] == [
        (AttemptOutcome.TIMEOUT, timed_out, None)
    ]


async def test_a_timeout_during_the_cleanup_after_a_cancel_changes_nothing(
    target: tuple[str, dict[str, Any]],
) -> None:
    """The cancel came first; the attempt's timeout passes while the handler cleans up:
    the job ends CANCELLED, its attempt recorded cancelled. The timeout won: the job
    failed "timed out", or was retried after its cancel."""
    db, options = target
    rt = Runtime(db, **options)
    gate = Gate()
    timeout = 0.5
    seen: list[str] = []

    @rt.task(timeout=timeout, attempts=3, retry=0.05)
    async def slow(job: JobContext) -> None:
        seen.append(f"attempt {job.attempt}")
        try:
            await gate()
        except asyncio.CancelledError:
            await asyncio.sleep(timeout + 0.2)  # past the attempt's timeout
            seen.append("cleaned up")
            raise

    async with rt:
        job_id = await rt.pool("default").add(slow)
        await gate.wait_entered(1)
        info = await rt.cancel(job_id)
        attempts = await rt.attempts(job_id)
    assert (info.status, info.attempts, info.error) == (JobStatus.CANCELLED, 1, None)
    assert seen == ["attempt 1", "cleaned up"]
    assert [(a.outcome, a.error) for a in attempts] == [(AttemptOutcome.CANCELLED, "cancelled")]


async def test_a_cancel_whose_end_is_not_known_in_time_answers_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rt.cancel never raises the TimeoutError of its wait for a running job's end (the
    HTTP API answered it 500 internal_error): it answers the job as it is then."""
    rt = make_rt(tmp_path)
    gate = Gate()

    @rt.task
    async def held(job: JobContext) -> None:
        await gate()

    async def late(job_id: int, timeout: float | None = None) -> Any:
        raise TimeoutError

    async with rt:
        job_id = await rt.pool("default").add(held)
        await gate.wait_entered(1)
        monkeypatch.setattr(rt, "wait", late)
        info = await rt.cancel(job_id)
    assert info.id == job_id
    assert info.status in (JobStatus.RUNNING, JobStatus.CANCELLED)


async def test_cancel_errors(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def quick(job: JobContext) -> int:
        return 1

    async with rt:
        job_id = await rt.pool("default").add(quick)
        await rt.wait(job_id, timeout=5)
        with pytest.raises(InvalidTransition) as err:
            await rt.cancel(job_id)
        assert (err.value.status, err.value.action) == ("SUCCESS", "cancel")
        with pytest.raises(JobNotFound):
            await rt.cancel(job_id + 100)
        assert (await rt.get(job_id)).status is JobStatus.SUCCESS


async def test_cancelled_slot_goes_to_the_next_job(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("one", concurrency=1)
    gate = Gate()

    @rt.task(pool="one")
    async def held(job: JobContext, n: int) -> int:
        if n == 0:
            await gate()
        return n

    async with rt:
        first = await pool.add(held, 0)
        second = await pool.add(held, 1)
        await gate.wait_entered(1)
        assert pool.statistics().waiting == 1
        await rt.cancel(first)
        assert (await rt.wait(second, timeout=5)).result == 1


async def test_a_cut_attempts_thread_reporting_on_reaches_no_stream_of_the_retry(
    tmp_path: Path,
) -> None:
    """A sync handler timed out runs on in its thread and keeps reporting progress
    while its job waits for the retry. Before, each report published a RUNNING
    progress event numbered past the job's own sequence, so the job's real next
    event (its cancel) came with a number already seen and its stream never ended."""
    rt = make_rt(tmp_path)

    @rt.task(timeout=0.2, attempts=2, retry="30s")
    def slow(job: JobContext) -> None:
        for i in range(8):
            time.sleep(0.1)
            job.progress(i, 8, f"attempt {job.attempt}")

    async with rt:
        job_id = await rt.add(slow)
        stream = rt.subscribe(job_id)
        seen = asyncio.create_task(collect(stream))
        await until(lambda: rt.live.states[job_id].status is JobStatus.WAITING)
        await asyncio.sleep(0.5)  # the old attempt's thread reports meanwhile
        waiting = await rt.get(job_id)
        await rt.cancel(job_id)
        events = await asyncio.wait_for(seen, 5)  # ends at the terminal event
    assert waiting.status is JobStatus.WAITING
    types = [e.type for e in events]
    assert types[-2:] == [EventType.RETRYING, EventType.CANCELLED], types
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))


async def test_a_stop_writes_back_a_handler_that_ignores_its_cancel(
    target: tuple[str, dict[str, Any]],
) -> None:
    """A handler that swallows the stop's cancel, still running ``abandon_after``
    after it. Before, the stop left its job RUNNING on disk (on PostgreSQL's nodes,
    the leave charged it): each start counted a crash, and four clean restarts failed
    it as orphaned. Now each stop writes it back WAITING, its attempt not charged."""
    db, options = target
    finish = asyncio.Event()

    def make(**more: Any) -> Runtime:
        rt = Runtime(db, **{**options, "grace": 0.2, "abandon_after": 0.1, **more})

        @rt.task(attempts=5)
        async def stubborn(job: JobContext) -> str:
            while not finish.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await finish.wait()
            return "done"

        return rt

    for stop in range(4):
        rt = make()
        async with asyncio.timeout(20):
            async with rt:
                if stop == 0:
                    job_id = await rt.add("stubborn")
                pool = rt.pool("default")
                await until(pool.busy)
            async with make(workers=False) as reader:
                info = await reader.get(job_id)
        assert (info.status, info.attempts, info.recoveries) == (JobStatus.WAITING, 0, 0), info
    finish.set()
    async with make() as rt:
        done = await rt.wait(job_id, timeout=10)
    assert (done.status, done.result, done.attempts, done.recoveries) == (
        JobStatus.SUCCESS,
        "done",
        1,
        0,
    )


async def test_a_sync_handler_cut_short_by_a_stop_still_reads_its_attempt(
    tmp_path: Path,
) -> None:
    """A stop gives a running attempt back (WAITING, not charged) while the thread of
    a sync handler runs on. Before, the handler then read ``job.attempt == 0``: the
    job's count, lowered by the give-back, not its own attempt's number."""
    rt = Runtime(str(tmp_path / "app.db"), grace=0.05, abandon_after=0.05)
    started, release = threading.Event(), threading.Event()
    seen: list[int] = []

    @rt.task
    def slow(job: JobContext) -> None:
        started.set()
        release.wait(5)
        seen.append(job.attempt)

    async with rt:
        job_id = await rt.add(slow)
        assert await asyncio.to_thread(started.wait, 5)
    release.set()
    async with asyncio.timeout(5):
        while not seen:
            await asyncio.sleep(0.01)
    assert seen == [1]
    async with Runtime(str(tmp_path / "app.db"), workers=False) as reader:
        info = await reader.get(job_id)
    assert (info.status, info.attempts) == (JobStatus.WAITING, 0)
