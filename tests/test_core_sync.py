"""Sync handlers in worker threads (bounded by the pool), Yao-style and plain handlers."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from core_support import collect, make_rt, until

from taskrt import EventType, InvalidTransition, JobContext, JobStatus


class ThreadCounter:
    """Counts handler threads running at the same time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.threads: set[str] = set()

    def enter(self) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.current_thread().name)

    def leave(self) -> None:
        with self.lock:
            self.active -= 1


async def test_sync_handler_runs_in_a_thread_and_reports_progress(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    main = threading.get_ident()
    where: list[int] = []
    pool = rt.pool("default")
    pool.pause()

    @rt.task
    def crunch(job: JobContext, n: int) -> int:
        where.append(threading.get_ident())
        for i in range(1, n + 1):
            job.progress(i, n, f"chunk {i}")
        return n * n

    async with rt:
        job_id = await pool.add(crunch, 4)
        stream = rt.subscribe(job_id)
        await anext(stream)
        pool.resume()
        events = await collect(stream)
        info = await rt.get(job_id)
    assert where and where[0] != main
    assert (info.status, info.result, info.current, info.total, info.message) == (
        JobStatus.SUCCESS,
        16,
        4,
        4,
        "chunk 4",
    )
    assert [e.data["current"] for e in events if e.type is EventType.PROGRESS] == [1, 2, 3, 4]
    assert events[-1].type is EventType.SUCCESS


async def test_never_more_threads_than_concurrency(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("cpu", concurrency=3)
    counter = ThreadCounter()
    release = threading.Event()

    @rt.task(pool="cpu")
    def blocking(job: JobContext, n: int) -> int:
        counter.enter()
        try:
            release.wait(10)
            return n
        finally:
            counter.leave()

    async with rt:
        try:
            ids = await pool.add_many(blocking, [(n,) for n in range(12)])
            await until(lambda: counter.active == 3)
            stats = pool.statistics()
            assert (stats.running, stats.waiting) == (3, 9)
        finally:
            release.set()
        results = [(await rt.wait(i, timeout=5)).result for i in ids]
    assert results == list(range(12))
    assert counter.max_active == 3
    assert 1 <= len(counter.threads) <= 3
    assert all(name.startswith("taskrt-") for name in counter.threads)


async def test_sync_timeout_marks_the_job_and_keeps_the_thread_slot(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("one", concurrency=1)
    counter = ThreadCounter()
    release = threading.Event()
    saw_cancelled: list[bool] = []

    @rt.task(pool="one", timeout=0.05)
    def stuck(job: JobContext) -> str:
        counter.enter()
        try:
            deadline = time.monotonic() + 5
            while not job.cancelled and time.monotonic() < deadline:
                time.sleep(0.002)
            saw_cancelled.append(job.cancelled)
            release.wait(10)  # the thread goes on after the timeout
            return "too late"
        finally:
            counter.leave()

    @rt.task(pool="one")
    def after(job: JobContext) -> str:
        counter.enter()
        counter.leave()
        return "after"

    async with rt:
        try:
            first = await pool.add(stuck)
            second = await pool.add(after)
            started = time.perf_counter()
            info = await rt.wait(first, timeout=5)
            assert time.perf_counter() - started < 1.0
            assert (info.status, info.result) == (JobStatus.FAILURE, None)
            assert info.error == f"job {first} timed out after 0.05s"
            await until(lambda: saw_cancelled == [True])
            # The thread still runs, so the only slot is still taken.
            assert (await rt.get(second)).status is JobStatus.WAITING
            assert counter.active == 1
        finally:
            release.set()
        done = await rt.wait(second, timeout=5)
    assert (done.status, done.result) == (JobStatus.SUCCESS, "after")
    assert counter.max_active == 1


async def test_each_timed_out_attempts_thread_gives_its_slot_back_when_it_returns(
    tmp_path: Path,
) -> None:
    """Pool note 4: a sync handler that ignores its timeout keeps its slot until its
    thread returns. The retry of a job timed out too while the thread of its attempt
    before ran on: the pool kept the threads by job id, the second took the first's
    place, and the first thread's return gave no slot back, for good (a pool of
    concurrency 3 ran one job at a time after such a job)."""
    rt = make_rt(tmp_path)
    pool = rt.pool("p", concurrency=3)
    release = threading.Event()

    @rt.task(pool="p", timeout=0.05, attempts=3, retry=0)
    def stuck(job: JobContext) -> None:
        release.wait(10)  # never looks at job.cancelled

    async with rt:
        try:
            job_id = await pool.add(stuck)
            info = await rt.wait(job_id, timeout=5)
            assert (info.status, info.attempts) == (JobStatus.FAILURE, 3)
            assert pool.free_slots() == 0  # three threads run on
        finally:
            release.set()
        await until(lambda: pool.free_slots() == 3)


async def test_cancel_a_running_sync_job(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    entered = threading.Event()

    @rt.task
    def polite(job: JobContext) -> str:
        entered.set()
        deadline = time.monotonic() + 5
        while not job.cancelled and time.monotonic() < deadline:
            time.sleep(0.002)
        return "stopped early"

    async with rt:
        job_id = await rt.pool("default").add(polite)
        await until(entered.is_set)
        started = time.perf_counter()
        info = await rt.cancel(job_id)
        assert time.perf_counter() - started < 0.5
    assert (info.status, info.result) == (JobStatus.CANCELLED, None)


async def test_sync_handler_error_is_retried_then_fails(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task(attempts=2, retry=0)
    def broken(job: JobContext) -> None:
        raise KeyError(f"missing {job.attempt}")

    async with rt:
        info = await rt.wait(await rt.pool("default").add(broken), timeout=5)
    assert (info.status, info.attempts, info.error) == (
        JobStatus.FAILURE,
        2,
        "KeyError: 'missing 2'",
    )


# -- Yao-style and plain handlers -----------------------------------------------------------------


async def test_yao_style_handler_reports_with_rt_progress(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("default")
    pool.pause()

    @rt.task
    async def add_numbers(job_id: int, a: int, b: int) -> int:
        await rt.progress(job_id, 1, 2, "adding")
        await rt.progress(job_id, 2, 2, "added")
        return a + b

    async with rt:
        job_id = await pool.add(add_numbers, 2, 3)
        stream = rt.subscribe(job_id)
        await anext(stream)
        pool.resume()
        events = await collect(stream)
        info = await rt.get(job_id)
    assert [(e.type, e.data.get("message")) for e in events] == [
        (EventType.STARTED, None),
        (EventType.PROGRESS, "adding"),
        (EventType.PROGRESS, "added"),
        (EventType.SUCCESS, None),
    ]
    assert (info.result, info.current, info.total, info.message) == (5, 2, 2, "added")


async def test_rt_progress_works_from_outside_the_handler(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    started = asyncio.Event()
    finish = asyncio.Event()

    @rt.task
    async def long(task_id: int) -> str:
        started.set()
        await finish.wait()
        return "done"

    async with rt:
        job_id = await rt.pool("default").add(long)
        await started.wait()
        # Another coroutine of the app reports on the job's behalf.
        await rt.progress(job_id, 40, 100, "from outside")
        info = await rt.get(job_id)
        assert (info.status, info.current, info.total, info.message) == (
            JobStatus.RUNNING,
            40,
            100,
            "from outside",
        )
        finish.set()
        await rt.wait(job_id, timeout=5)
        with pytest.raises(InvalidTransition) as err:
            await rt.progress(job_id, 50, 100)
        assert err.value.status == "SUCCESS"


async def test_sync_yao_style_handler_gets_the_id(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("default")
    pool.pause()

    @rt.task
    def legacy(task_id: int, name: str) -> str:
        rt.progress(task_id, 1, 1, name)  # from the worker thread, without await
        return f"{task_id}:{name}"

    async with rt:
        job_id = await pool.add(legacy, "x")
        stream = rt.subscribe(job_id)
        await anext(stream)
        pool.resume()
        events = await collect(stream)
        info = await rt.get(job_id)
    assert (info.result, info.message) == (f"{job_id}:x", "x")
    assert [e.type for e in events] == [EventType.STARTED, EventType.PROGRESS, EventType.SUCCESS]


async def test_plain_handler_gets_only_its_arguments(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def multiply(x: int, y: int = 2) -> int:
        return x * y

    async with rt:
        a = await rt.pool("default").add(multiply, 21)
        b = await rt.pool("default").add(multiply, 3, y=5)
        assert (await rt.wait(a, timeout=5)).result == 42
        assert (await rt.wait(b, timeout=5)).result == 15


async def test_a_report_by_id_from_a_timed_out_attempts_thread_never_lands_on_the_retry(
    tmp_path: Path,
) -> None:
    # Before: rt.progress(job_id, ...) from the first attempt's thread, still running
    # after its timeout, was stored as the retry's progress (and told as its event).
    rt = make_rt(tmp_path, abandon_after=0.05)
    retry_running = threading.Event()
    stale_sent = threading.Event()
    calls: list[int] = []

    @rt.task(call="id", timeout=0.2, attempts=2, retry="0s")
    def slow(job_id: int) -> None:
        calls.append(job_id)
        if len(calls) == 1:  # the first attempt: it runs past its timeout
            retry_running.wait(5)
            rt.progress(job_id, 99, 100, "stale, from attempt 1")
            stale_sent.set()
            return
        retry_running.set()
        stale_sent.wait(5)
        time.sleep(0.1)  # the stale report reached the loop meanwhile
        rt.progress(job_id, 1, 10, "attempt 2")

    async with rt:
        job_id = await rt.pool("default").add(slow)
        async with rt.subscribe(job_id) as stream:
            events = await collect(stream)
        info = await rt.wait(job_id, timeout=5)
    assert info.status is JobStatus.SUCCESS and info.attempts == 2
    assert (info.current, info.total, info.message) == (1, 10, "attempt 2")
    messages = [e.data.get("message") for e in events if e.type is EventType.PROGRESS]
    assert "stale, from attempt 1" not in messages
    assert messages[-1] == "attempt 2"
