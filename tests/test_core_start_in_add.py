"""A job added to an idle pool starts in its add (``taskrt.pool`` note 9): its row is
written RUNNING, attempt 1 charged, by the insert itself; anything that would
take the slot first, or a pool that stopped starting jobs meanwhile, sends it
the usual way."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from core_support import Gate, collect, db_file, make_rt, sqlite_only_rows, until

from taskrt import AttemptOutcome, EventType, JobContext, JobStatus, Runtime


def _row(tmp_path: Path, job_id: int) -> tuple[str, int, float | None, float, int]:
    """(status, attempts, started_at, created_at, seq) as committed."""
    (row,) = sqlite_only_rows(
        db_file(tmp_path),
        "SELECT status, attempts, started_at, created_at, seq FROM jobs WHERE id = ?",
        (job_id,),
    )
    return row  # type: ignore[return-value]


def _held(tmp_path: Path, concurrency: int) -> tuple[Runtime, Gate]:
    """A runtime whose task ``work`` (any arguments) waits at the gate."""
    rt = make_rt(tmp_path)
    rt.pool("default", concurrency=concurrency)
    gate = Gate()

    @rt.task(name="work")
    async def work(job: JobContext, *args: object) -> None:
        await gate()

    return rt, gate


async def test_a_job_added_to_an_idle_pool_is_stored_running_by_its_add(tmp_path: Path) -> None:
    rt, gate = _held(tmp_path, concurrency=2)
    async with rt:
        job_id = await rt.add("work")
        # Read before this coroutine yields: no write but the add's has committed.
        status, attempts, started_at, created_at, seq = _row(tmp_path, job_id)
        assert (status, attempts, seq) == ("RUNNING", 1, 2)
        assert started_at == created_at
        assert rt.store.counted("default", JobStatus.RUNNING) == 1
        assert rt.store.counted("default", JobStatus.WAITING) == 0
        assert rt.pool("default").waiting == 0
        stream = rt.subscribe(job_id)
        await gate.wait_entered(1)
        gate.open()
        events = await collect(stream)
        assert (await rt.wait(job_id)).status is JobStatus.SUCCESS
        [attempt] = await rt.attempts(job_id)
        assert (attempt.number, attempt.outcome) == (1, AttemptOutcome.SUCCESS)
        assert attempt.started_at == created_at
    kinds = [(e.type, e.seq) for e in events]
    assert kinds[0][1] <= 2 and kinds[-1][0] is EventType.SUCCESS
    # The success is the job's row (store note 7): no attempt row of its own.
    attempts_rows = sqlite_only_rows(
        db_file(tmp_path), "SELECT number, outcome FROM attempts WHERE job_id = ?", (job_id,)
    )
    assert attempts_rows == []
    assert _row(tmp_path, job_id)[:2] == ("SUCCESS", 1)


async def test_add_many_starts_as_many_as_there_are_free_slots(tmp_path: Path) -> None:
    rt, gate = _held(tmp_path, concurrency=3)
    async with rt:
        ids = await rt.pool("default").add_many("work", [(i,) for i in range(5)])
        statuses = [_row(tmp_path, job_id)[0] for job_id in ids]
        assert statuses == ["RUNNING"] * 3 + ["WAITING"] * 2
        await gate.wait_entered(3)
        gate.open()
        for job_id in ids:
            assert (await rt.wait(job_id)).status is JobStatus.SUCCESS


async def test_a_busy_pool_queues_the_added_job(tmp_path: Path) -> None:
    rt, gate = _held(tmp_path, concurrency=1)
    async with rt:
        first = await rt.add("work")
        await gate.wait_entered(1)
        second = await rt.add("work")
        assert _row(tmp_path, second)[:2] == ("WAITING", 0)
        gate.open()
        for job_id in (first, second):
            assert (await rt.wait(job_id)).status is JobStatus.SUCCESS


async def test_a_due_job_waiting_goes_before_a_job_added_now(tmp_path: Path) -> None:
    """A delayed job that came due while the loop was busy is waiting for the free
    slot: a job added now does not take it first."""
    rt = make_rt(tmp_path)
    rt.pool("default", concurrency=1)
    order: list[str] = []

    @rt.task
    async def work(job: JobContext, name: str) -> None:
        order.append(name)

    async with rt:
        delayed = await rt.pool("default").add(work.options(delay=0.05), "delayed")
        time.sleep(0.1)  # its timer has not fired yet: the loop is blocked
        now = await rt.add(work, "now")
        for job_id in (delayed, now):
            assert (await rt.wait(job_id)).status is JobStatus.SUCCESS
    assert order == ["delayed", "now"]


async def test_a_pool_paused_while_the_add_commits_gets_the_job_back_waiting(
    tmp_path: Path,
) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("default", concurrency=1)
    ran: list[int] = []

    @rt.task
    async def work(job: JobContext) -> None:
        ran.append(job.attempt)

    async with rt:
        adding = asyncio.create_task(rt.add(work))
        await asyncio.sleep(0)  # the add kept the slot and waits for its commit
        assert pool.free_slots() == 0
        pool.pause()
        job_id = await adding
        await rt.store.flush()
        assert _row(tmp_path, job_id)[:2] == ("WAITING", 0)
        info = await rt.get(job_id)
        assert info is not None and (info.status, info.attempts) == (JobStatus.WAITING, 0)
        await asyncio.sleep(0.05)
        assert ran == []
        pool.resume()
        assert (await rt.wait(job_id)).status is JobStatus.SUCCESS
        await until(lambda: ran == [1])
    assert _row(tmp_path, job_id)[:2] == ("SUCCESS", 1)


async def test_an_add_still_committing_when_the_runtime_stops_leaves_its_job_waiting(
    tmp_path: Path,
) -> None:
    """Another connection holds the write lock, so the add's commit waits; the
    runtime stops meanwhile. The job its add started goes back to WAITING, attempt
    not charged, before the store closes: a restart runs it as attempt 1."""
    rt = make_rt(tmp_path, grace=5.0)
    pool = rt.pool("default", concurrency=1)
    ran: list[int] = []

    @rt.task
    async def work(job: JobContext) -> None:
        ran.append(job.attempt)

    blocker = sqlite3.connect(db_file(tmp_path), isolation_level=None)
    stop_dispatching = pool.stop_dispatching

    def and_the_commit_goes_on() -> None:
        # The stop has begun (the pool starts nothing more): the add may commit now,
        # however long the stop took to get here on a busy machine.
        stop_dispatching()
        blocker.execute("COMMIT")

    try:
        async with rt:
            blocker.execute("BEGIN IMMEDIATE")  # the runtime's writes wait for it
            adding = asyncio.create_task(rt.add(work))
            await asyncio.sleep(0)  # the add kept the slot and waits for its commit
            assert pool.free_slots() == 0
            pool.stop_dispatching = and_the_commit_goes_on  # type: ignore[method-assign]
        job_id = await adding
    finally:
        blocker.close()
    assert ran == []
    assert _row(tmp_path, job_id)[:2] == ("WAITING", 0)
    again = make_rt(tmp_path)

    @again.task(name="work")
    async def work_again(job: JobContext) -> None:
        ran.append(job.attempt)

    async with again:
        assert (await again.wait(job_id, timeout=5)).attempts == 1
    assert ran == [1]


async def test_jobs_a_transaction_adds_take_a_free_slot_by_priority(tmp_path: Path) -> None:
    # Jobs added in a transaction are queued when it commits, all together: the free
    # slot goes to the first in the queue's order, not to the first added.
    rt = make_rt(tmp_path)
    rt.pool("default", concurrency=1)
    gate = Gate()
    order: list[str] = []

    @rt.task(name="work")
    async def work(job: JobContext, name: str) -> None:
        order.append(name)
        await gate()

    async with rt:
        async with rt.transaction() as tx:
            low = await rt.add(work.options(priority=0), "low", tx=tx)
            high = await rt.add(work.options(priority=5), "high", tx=tx)
        await gate.wait_entered(1)
        assert order == ["high"]
        gate.open()
        for job_id in (low, high):
            assert (await rt.wait(job_id)).status is JobStatus.SUCCESS
    assert order == ["high", "low"]


async def test_add_many_announces_its_jobs_in_order_those_it_started_too(tmp_path: Path) -> None:
    rt, gate = _held(tmp_path, concurrency=2)
    async with rt:
        everything = rt.subscribe()
        ids = await rt.pool("default").add_many("work", [()] * 5)
        await gate.wait_entered(2)
        gate.open()
        for job_id in ids:
            await rt.wait(job_id, timeout=5)
        everything.close()  # a many-job stream does not end by itself
        events = await collect(everything)
    assert [e.job_id for e in events if e.type is EventType.ADDED] == ids
    # The first two started in their add, each after its own added event.
    first_started = [e.job_id for e in events if e.type is EventType.STARTED][:2]
    assert first_started == ids[:2]
    for job_id in ids:
        kinds = [e.type for e in events if e.job_id == job_id]
        assert kinds == [EventType.ADDED, EventType.STARTED, EventType.SUCCESS]
