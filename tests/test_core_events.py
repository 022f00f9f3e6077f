"""Events: snapshot first, per-job sequence, filters, bounded buffers for slow subscribers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from core_support import Gate, all_jobs, collect, committed_jobs, make_rt, until_committed

from taskrt import Event, EventType, JobContext, JobNotFound, JobStatus
from taskrt.events import Broker
from taskrt.store import JobStore


async def test_subscribe_gives_snapshot_then_live_events_then_ends(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("default")
    pool.pause()

    @rt.task
    async def steps(job: JobContext, n: int) -> dict[str, int]:
        for i in range(1, n + 1):
            await job.progress(i, n, f"step {i}")
        return {"steps": n}

    async with rt:
        job_id = await pool.add(steps, 3)
        stream = rt.subscribe(job_id)
        snapshot = await anext(stream)
        assert (snapshot.type, snapshot.status, snapshot.seq) == (
            EventType.SNAPSHOT,
            JobStatus.WAITING,
            1,
        )
        assert snapshot.data["job"]["id"] == job_id
        assert snapshot.data["job"]["status"] == "WAITING"
        pool.resume()
        events = await collect(stream)
        info = await rt.get(job_id)

    assert [e.type for e in events] == [
        EventType.STARTED,
        EventType.PROGRESS,
        EventType.PROGRESS,
        EventType.PROGRESS,
        EventType.SUCCESS,
    ]
    assert [e.seq for e in events] == [2, 3, 4, 5, 6]
    assert {e.job_id for e in events} == {job_id}
    assert [e.data["message"] for e in events if e.type is EventType.PROGRESS] == [
        "step 1",
        "step 2",
        "step 3",
    ]
    assert [(e.data["current"], e.data["total"]) for e in events[1:4]] == [(1, 3), (2, 3), (3, 3)]
    assert events[-1].data["result"] == {"steps": 3}
    assert events[-1].status is JobStatus.SUCCESS
    assert info.seq == 6
    assert [(j.seq, j.current, j.total, j.message) for j in await committed_jobs(tmp_path)] == [
        (6, 3, 3, "step 3")
    ]


async def test_subscribe_to_a_finished_job_gives_only_the_snapshot(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def quick(job: JobContext) -> int:
        return 5

    async with rt:
        job_id = await rt.pool("default").add(quick)
        await rt.wait(job_id, timeout=5)
        events = await collect(rt.subscribe(job_id))
    assert [(e.type, e.status) for e in events] == [(EventType.SNAPSHOT, JobStatus.SUCCESS)]
    assert events[0].data["job"]["result"] == 5


async def test_subscribe_to_an_unknown_job_raises(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    async with rt:
        with pytest.raises(JobNotFound):
            await collect(rt.subscribe(999))
        assert rt.broker.subscribers == 0


async def test_retries_and_failure_are_events(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    gate = Gate()

    @rt.task(attempts=2, retry=0)
    async def doomed(job: JobContext) -> None:
        await gate()
        raise RuntimeError(f"try {job.attempt}")

    async with rt:
        job_id = await rt.pool("default").add(doomed)
        await gate.wait_entered(1)
        stream = rt.subscribe(job_id)
        gate.open()
        events = await collect(stream)
    assert [e.type for e in events] == [
        EventType.SNAPSHOT,
        EventType.RETRYING,
        EventType.STARTED,
        EventType.FAILURE,
    ]
    assert events[1].data["error"] == "RuntimeError: try 1"
    assert events[2].data["attempt"] == 2
    assert events[3].data["error"] == "RuntimeError: try 2"
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 4))


async def test_many_job_subscriptions_filter_by_pool_and_task(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task(pool="a")
    async def t1(job: JobContext) -> str:
        return "one"

    @rt.task(pool="b")
    async def t2(job: JobContext) -> str:
        return "two"

    async with rt:
        by_pool = rt.subscribe(pool="a")
        by_task = rt.subscribe(task="t2")
        everything = rt.subscribe()
        a1 = await rt.pool("a").add(t1)
        b1 = await rt.pool("b").add(t2)
        a2 = await rt.pool("a").add(t1)
        for job_id in (a1, b1, a2):
            await rt.wait(job_id, timeout=5)
        for stream in (by_pool, by_task, everything):
            stream.close()  # a many-job stream does not end by itself
        got_pool = await collect(by_pool)
        got_task = await collect(by_task)
        got_all = await collect(everything)

    def per_job(events: list[Event]) -> dict[int, list[EventType]]:
        out: dict[int, list[EventType]] = {}
        for e in events:
            out.setdefault(e.job_id, []).append(e.type)
        return out

    lifecycle = [EventType.ADDED, EventType.STARTED, EventType.SUCCESS]
    assert per_job(got_pool) == {a1: lifecycle, a2: lifecycle}
    assert per_job(got_task) == {b1: lifecycle}
    assert per_job(got_all) == {a1: lifecycle, b1: lifecycle, a2: lifecycle}
    assert {e.pool for e in got_pool} == {"a"} and {e.task for e in got_task} == {"t2"}


async def test_slow_subscriber_is_bounded_conflated_and_gets_the_terminal_event(
    tmp_path: Path,
) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("default")
    pool.pause()

    @rt.task
    async def chatty(job: JobContext) -> str:
        for i in range(1, 2001):
            await job.progress(i, 2000)
        return "finished"

    async with rt:
        job_id = await pool.add(chatty)
        stream = rt.subscribe(job_id, buffer=4)
        assert (await anext(stream)).type is EventType.SNAPSHOT
        pool.resume()
        # The subscriber reads nothing while the job runs; the worker is not held up.
        info = await rt.wait(job_id, timeout=5)
        assert info.status is JobStatus.SUCCESS
        sub = stream.subscription
        assert len(sub) <= 4
        assert sub.dropped >= 2000 - 4
        events = await collect(stream)
    assert events[0].type is EventType.STARTED
    assert events[-1].type is EventType.SUCCESS
    assert events[-1].data["result"] == "finished"
    progress = [e for e in events if e.type is EventType.PROGRESS]
    assert progress and progress[-1].data["current"] == 2000
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == info.seq


def test_a_full_buffer_keeps_a_jobs_events_in_order_when_it_conflates_its_progress() -> None:
    """A full buffer holds an older progress of the job before its ``retrying`` and
    ``started``: the next progress replaced that one where it stood, before them,
    and a stream (which sends a job's events in sequence order) skipped both. The
    older progress now goes, and the new one joins the end."""
    broker = Broker()
    sub = broker.subscribe(1, maxsize=4)
    kinds = [EventType.PROGRESS] * 3 + [EventType.RETRYING, EventType.STARTED, EventType.PROGRESS]
    for seq, kind in enumerate(kinds, start=2):
        broker.publish(Event(1, seq, kind, "t", "p", JobStatus.RUNNING, 0.0, {}))
    held = []
    while (event := sub.get_nowait()) is not None:
        held.append((event.seq, event.type))
    assert held == [
        (3, EventType.PROGRESS),
        (5, EventType.RETRYING),
        (6, EventType.STARTED),
        (7, EventType.PROGRESS),
    ]
    assert sub.dropped == 2


async def test_wide_subscriber_that_never_reads_overflows_without_slowing_workers(
    tmp_path: Path,
) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def noop(job: JobContext, n: int) -> int:
        return n

    async with rt:
        idle = rt.subscribe(buffer=2)
        ids = await rt.pool("default").add_many(noop, [(n,) for n in range(30)])
        results = [(await rt.wait(i, timeout=5)).result for i in ids]
        assert results == list(range(30))
        sub = idle.subscription
        assert sub.overflowed and sub.closed
        assert len(sub) <= 4 * 2
        assert rt.broker.subscribers == 0


async def test_wait_times_out_on_a_job_that_does_not_end(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    gate = Gate()

    @rt.task
    async def held(job: JobContext) -> str:
        await gate()
        return "out"

    async with rt:
        job_id = await rt.pool("default").add(held)
        with pytest.raises(TimeoutError):
            await rt.wait(job_id, timeout=0.05)
        assert rt.broker.subscribers == 0
        gate.open()
        assert (await rt.wait(job_id, timeout=5)).result == "out"


async def test_concurrent_subscribers_see_the_same_sequence(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("default")
    pool.pause()

    @rt.task
    async def steps(job: JobContext) -> None:
        for i in range(50):
            await job.progress(i, 50)
            if i % 10 == 0:
                await asyncio.sleep(0)

    async with rt:
        job_id = await pool.add(steps)
        streams = [rt.subscribe(job_id) for _ in range(5)]
        for s in streams:
            await anext(s)
        pool.resume()
        got = await asyncio.gather(*(collect(s) for s in streams))
    seqs = [[e.seq for e in events] for events in got]
    assert all(s == seqs[0] for s in seqs)
    assert seqs[0] == list(range(2, 2 + 52))


async def test_progress_is_written_behind_and_read_from_memory(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, progress_interval=0.02)
    gate = Gate()

    async def caught_up(store: JobStore) -> bool:
        return [(j.current, j.message) for j in await all_jobs(store)] == [(1000, "item 1000")]

    @rt.task
    async def busy(job: JobContext) -> None:
        for i in range(1, 1001):
            await job.progress(i, 1000, f"item {i}")
        await gate()

    async with rt:
        job_id = await rt.pool("default").add(busy)
        await gate.wait_entered(1)
        # Readers in this process see the latest progress at once ...
        info = await rt.get(job_id)
        assert (info.current, info.total, info.message) == (1000, 1000, "item 1000")
        # ... and the database catches up shortly after, without a write per call.
        await until_committed(tmp_path, caught_up, timeout=2)
        assert rt.store.batches < 100
        gate.open()
        await rt.wait(job_id, timeout=5)
