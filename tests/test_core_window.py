"""A pool keeps a bounded window of its waiting jobs in memory (``taskrt.waiting``).

Each test uses a small window and several times as many jobs, so most of them
live only in the database, and checks that nothing a user sees depends on
that: run order (priority, then run_at, then id), delays, capacity, unique
keys, cancel / run now / retry of a job that is not in memory, and restarts.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from core_support import committed_jobs, make_rt, until

from taskrt import (
    DuplicateJob,
    FakeClock,
    InvalidOption,
    JobContext,
    JobStatus,
    QueueFull,
    Runtime,
    Task,
    waiting,
)

WINDOW = 10


@pytest.fixture(autouse=True, params=[None, 3], ids=["whole-reads", "reads-of-3"])
def read_chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test twice: refills read at once (the window is below ``READ_CHUNK``),
    and three rows at a time (``taskrt.waiting`` note 6)."""
    if request.param is not None:
        monkeypatch.setattr(waiting, "READ_CHUNK", request.param)


def in_memory(rt: Runtime, pool: str) -> int:
    """Jobs of ``pool`` the runtime holds in memory (its window), and all live states."""
    return len(rt.pool(pool).queue)


def recorder(rt: Runtime) -> tuple[Task[..., Any], list[int]]:
    """Task ``work`` of pool "p", and the ids of its jobs in the order they started."""
    ran: list[int] = []

    @rt.task(pool="p")
    async def work(job: JobContext) -> None:
        ran.append(job.id)

    return work, ran


def run_order_key(job: object) -> tuple[int, float, int]:
    return (-job.priority, job.run_at, job.id)  # type: ignore[attr-defined]


async def test_priorities_across_the_window_boundary(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, window=WINDOW)
    work, ran = recorder(rt)

    rng = random.Random(7)
    async with rt:
        pool = rt.pool("p", concurrency=1)
        pool.pause()
        ids = [await pool.add(work.options(priority=rng.randrange(4))) for _ in range(60)]
        # Added last, above the window: they must still run first.
        ids += [await pool.add(work.options(priority=9)) for _ in range(3)]
        assert pool.waiting == 63
        assert in_memory(rt, "p") <= WINDOW
        assert len(rt.live.states) <= WINDOW
        pool.resume()
        await until(lambda: len(ran) == 63, timeout=10)
    jobs = {j.id: j for j in await committed_jobs(tmp_path)}
    assert ran == sorted(ids, key=lambda i: run_order_key(jobs[i]))
    assert ran[:3] == ids[-3:]
    assert all(j.status is JobStatus.SUCCESS for j in jobs.values())


async def test_a_job_added_while_the_window_is_full_keeps_its_turn(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, window=WINDOW)
    ran: list[int] = []

    @rt.task(pool="p")
    async def work(job: JobContext) -> None:
        ran.append(job.id)
        if len(ran) == 5:
            # While the pool drains: a job of a higher priority than all but the first.
            late.append(await rt.pool("p").add(work.options(priority=1)))

    late: list[int] = []
    async with rt:
        pool = rt.pool("p", concurrency=1)
        pool.pause()
        first = await pool.add(work.options(priority=2))
        rest = await pool.add_many(work, [() for _ in range(40)])
        pool.resume()
        await until(lambda: len(ran) == 42, timeout=10)
    assert ran[0] == first
    assert ran[:5] == [first, *rest[:4]]
    assert ran[5] == late[0]  # next after the one running when it was added
    assert ran[6:] == rest[4:]


async def test_delayed_jobs_come_due_while_the_window_is_full(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, window=WINDOW, clock=clock)
    work, ran = recorder(rt)

    async with rt:
        pool = rt.pool("p", concurrency=1)
        pool.pause()
        now_ids = await pool.add_many(work, [() for _ in range(30)])
        later = [await pool.add(work.options(delay=float(d), priority=5)) for d in range(1, 31)]
        assert in_memory(rt, "p") <= 2 * WINDOW
        await clock.advance(15.5)  # 15 of the delayed jobs are due, most of them not in memory
        pool.resume()
        await until(lambda: len(ran) == 45, timeout=10)
        # Due, and of a higher priority: before every job that was due at once.
        assert ran[:15] == later[:15]
        assert ran[15:] == now_ids
        for step in range(16, 31):
            await clock.advance(1.0)
            await until(lambda step=step: len(ran) == 30 + step, timeout=5)  # type: ignore[misc]
        assert ran[45:] == later[15:]


async def test_capacity_counts_the_jobs_outside_memory(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, window=WINDOW)

    @rt.task(pool="p")
    async def work(job: JobContext) -> None:
        pass

    async with rt:
        pool = rt.pool("p", concurrency=1, capacity=30)
        pool.pause()
        ids = await pool.add_many(work, [() for _ in range(30)])
        assert in_memory(rt, "p") <= WINDOW
        with pytest.raises(QueueFull):
            await pool.add(work)
        assert pool.waiting == 30
        assert pool.statistics().waiting == 30
        assert ids[-1] not in rt.live.states  # it is in the database only
        cancelled = await rt.cancel(ids[-1])
        assert cancelled.status is JobStatus.CANCELLED
        assert pool.waiting == 29
        another = await pool.add(work)
        assert another > ids[-1]
        pool.resume()
        await until(lambda: pool.waiting == 0 and pool.running == 0, timeout=10)
    done = {j.id: j.status for j in await committed_jobs(tmp_path)}
    assert done[ids[-1]] is JobStatus.CANCELLED
    assert sum(s is JobStatus.SUCCESS for s in done.values()) == 30


async def test_unique_key_held_by_a_job_outside_memory(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, window=WINDOW)

    @rt.task(pool="p")
    async def work(job: JobContext, n: int) -> None:
        pass

    async with rt:
        pool = rt.pool("p", concurrency=1)
        pool.pause()
        await pool.add_many(work, [(i,) for i in range(25)])
        held = await pool.add(work.options(unique_key="report"), 99)
        assert held not in rt.live.states
        assert await pool.add(work.options(unique_key="report"), 100) == held
        pool.resume()
        await until(lambda: pool.waiting == 0 and pool.running == 0, timeout=10)
        again = await pool.add(work.options(unique_key="report"), 101)
        assert again != held
        await rt.wait(again, timeout=5)
    jobs = await committed_jobs(tmp_path)
    assert len(jobs) == 27
    assert all(j.status is JobStatus.SUCCESS for j in jobs)


async def test_a_full_pool_answers_a_key_held_outside_memory_with_its_holder(
    tmp_path: Path,
) -> None:
    """A pool at capacity, the key's holder beyond the window: the add gets the
    holder's id, as it does where the holder is in memory, not ``QueueFull``."""
    rt = make_rt(tmp_path, window=WINDOW)

    @rt.task(pool="p")
    async def work(job: JobContext, n: int) -> None:
        pass

    async with rt:
        pool = rt.pool("p", concurrency=1, capacity=30)
        pool.pause()
        await pool.add_many(work, [(i,) for i in range(29)])
        held = await pool.add(work.options(unique_key="report"), 99)  # the pool is full
        assert held not in rt.live.states
        assert await pool.add(work.options(unique_key="report"), 100) == held
        with pytest.raises(DuplicateJob):
            await pool.add(work.options(unique_key="report", on_conflict="raise"), 101)
        with pytest.raises(QueueFull):
            await pool.add(work.options(unique_key="another"), 102)
        assert pool.waiting == 30


async def test_cancel_run_now_and_retry_of_jobs_outside_memory(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, window=WINDOW, clock=clock)
    ran: list[int] = []

    @rt.task(pool="p", attempts=1)
    async def work(job: JobContext, n: int) -> None:
        ran.append(job.id)
        if n < 0:
            raise RuntimeError("no")

    async with rt:
        pool = rt.pool("p", concurrency=1)
        failed = await pool.add(work, -1)
        await rt.wait(failed, timeout=5)
        pool.pause()
        ready = await pool.add_many(work, [(i,) for i in range(30)])
        delayed = [await pool.add(work.options(delay=3600.0 + i), i) for i in range(30)]
        assert ready[-1] not in rt.live.states and delayed[-1] not in rt.live.states

        assert (await rt.cancel(ready[-1])).status is JobStatus.CANCELLED
        assert (await rt.run_now(delayed[-1])).status is JobStatus.WAITING
        retried = await rt.retry(failed)
        assert retried.status is JobStatus.WAITING
        assert (await rt.get(delayed[-2])).status is JobStatus.WAITING  # read from the database

        pool.resume()
        expected = 1 + 29 + 1 + 1  # the failure, the ready ones left, run now, the retry
        await until(lambda: len(ran) == expected, timeout=10)
        assert ready[-1] not in ran
        assert set(ran[1:]) == {*ready[:-1], delayed[-1], failed}
        assert pool.waiting == 29  # the delayed ones left
    statuses = {j.id: j.status for j in await committed_jobs(tmp_path)}
    assert statuses[ready[-1]] is JobStatus.CANCELLED
    assert statuses[delayed[-1]] is JobStatus.SUCCESS
    assert statuses[failed] is JobStatus.FAILURE  # it failed again: n is still -1
    assert [statuses[i] for i in delayed[:-1]] == [JobStatus.WAITING] * 29


async def test_restart_with_more_waiting_jobs_than_the_window(tmp_path: Path) -> None:
    first = make_rt(tmp_path, window=WINDOW)

    @first.task(pool="p")
    async def work(job: JobContext, n: int) -> None:
        pass

    async with first:
        pool = first.pool("p", concurrency=1)
        await first.change_pool("p", paused=True)  # recorded: the next start is paused too
        ids = await first.pool("p").add_many(work, [(i,) for i in range(50)])
        soon = await pool.add(work.options(delay=0.3, priority=1), -1)
        assert in_memory(first, "p") <= 2 * WINDOW

    second = make_rt(tmp_path, window=WINDOW)
    ran: list[int] = []

    @second.task(pool="p", name="work")
    async def work2(job: JobContext, n: int) -> None:
        ran.append(job.id)

    async with second:
        pool = second.pool("p", concurrency=1)
        assert pool.waiting == 51
        assert in_memory(second, "p") <= 2 * WINDOW
        await second.change_pool("p", paused=False)
        await until(lambda: len(ran) == 51, timeout=10)
    assert sorted(ran) == sorted([*ids, soon])
    assert len(set(ran)) == 51
    assert ran[: ran.index(soon)] == ids[: ran.index(soon)]


async def test_memory_stays_bounded_while_a_backlog_drains(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, window=WINDOW)
    most = 0

    @rt.task(pool="p")
    async def work(job: JobContext, n: int) -> None:
        nonlocal most
        most = max(most, len(rt.live.states))

    async with rt:
        pool = rt.pool("p", concurrency=4)
        pool.pause()
        for chunk in range(5):
            await pool.add_many(work, [(chunk * 100 + i,) for i in range(100)])
        pool.resume()
        await until(lambda: pool.waiting == 0 and pool.running == 0, timeout=20)
    # Ready and delayed windows, the running jobs, and finished ones not yet forgotten.
    assert most <= 2 * WINDOW + 4 + 20
    jobs = await committed_jobs(tmp_path)
    assert len(jobs) == 500 and all(j.status is JobStatus.SUCCESS for j in jobs)


async def test_a_job_a_refill_took_in_before_its_add_did_runs_once(tmp_path: Path) -> None:
    """Once an add commits, a refill may read the job before the add hands it over
    (their order under load): the add leaves the refill's copy in place, and the
    job runs once and ends as seen by ``wait``."""
    rt = make_rt(tmp_path, window=WINDOW)
    work, ran = recorder(rt)
    async with rt:
        pool = rt.pool("p")
        pool.pause()  # no start in the add (taskrt.pool note 9): it waits
        accept = rt.adding._accept

        def refill_first(states: list[Any], started: Any = frozenset()) -> None:
            for state in states:  # what a refill reads of the committed row
                held = rt.adoption.hold(state.info())
                assert held is not None
                pool.push(held)
            accept(states, started)

        rt.adding._accept = refill_first  # type: ignore[method-assign]
        job_id = await pool.add(work)
        rt.adding._accept = accept  # type: ignore[method-assign]
        pool.resume()
        assert (await rt.wait(job_id, timeout=5)).status is JobStatus.SUCCESS
        await until(lambda: job_id not in rt.live.states)
        assert ran == [job_id]


def test_window_must_be_a_number_of_jobs(tmp_path: Path) -> None:
    with pytest.raises(InvalidOption, match="window"):
        make_rt(tmp_path, window=1)
    with pytest.raises(InvalidOption, match="window"):
        make_rt(tmp_path, window="10")


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_adds_cancels_and_time_keep_the_order_a_whole_queue_would(
    tmp_path: Path, seed: int
) -> None:
    """Phases: while paused, random adds (priorities, delays, batches), cancels, run
    nows and clock steps; then a drain with the clock still. Each drain must run
    exactly the jobs due, in the order of a queue that held them all."""
    rng = random.Random(seed)
    clock = FakeClock()
    window = 4
    rt = make_rt(tmp_path, window=window, clock=clock)
    work, ran = recorder(rt)

    async with rt:
        pool = rt.pool("p", concurrency=1)
        for _phase in range(6):
            pool.pause()
            added: list[int] = []
            for _ in range(rng.randrange(10, 40)):
                roll = rng.random()
                options: dict[str, float] = {"priority": rng.randrange(3)}
                if rng.random() < 0.4:
                    options["delay"] = float(rng.randrange(1, 6))
                if roll < 0.15:
                    added += await pool.add_many(
                        work.options(**options), [()] * rng.randrange(2, 9)
                    )
                else:
                    added.append(await pool.add(work.options(**options)))
                if roll > 0.9 and added:
                    victim = rng.choice(added)
                    if (await rt.get(victim)).status is JobStatus.WAITING:
                        await rt.cancel(victim)
                if 0.85 < roll <= 0.9 and added:
                    victim = rng.choice(added)
                    if (await rt.get(victim)).status is JobStatus.WAITING:
                        await rt.run_now(victim)
                if rng.random() < 0.2:
                    await clock.advance(rng.choice([0.5, 1.0, 2.0]))
            await rt.store.flush()
            now = clock.now()
            waiting = [j for j in await committed_jobs(tmp_path) if j.status is JobStatus.WAITING]
            due = sorted((j for j in waiting if j.run_at <= now), key=run_order_key)
            before = len(ran)
            pool.resume()
            await until(lambda due=due, before=before: len(ran) == before + len(due), timeout=10)  # type: ignore[misc]
            await rt.store.flush()
            assert ran[before:] == [j.id for j in due]
            assert pool.waiting == len(waiting) - len(due)
            assert len(pool.queue) <= 2 * window + 2
        pool.pause()
    assert len(ran) == len(set(ran))


async def test_a_refill_reads_a_chunk_at_a_time_and_keeps_the_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(waiting, "READ_CHUNK", 4)
    rt = make_rt(tmp_path, window=WINDOW)
    work, ran = recorder(rt)
    limits: list[int] = []
    async with rt:
        pool = rt.pool("p", concurrency=1)
        pool.pause()
        ids = await pool.add_many(work, [()] * 60)
        backlog = pool.queue._backlog  # type: ignore[attr-defined]
        read = backlog.load_ready

        async def load_ready(name: str, now: float, limit: int, after: Any) -> Any:
            limits.append(limit)
            return await read(name, now, limit, after)

        monkeypatch.setattr(backlog, "load_ready", load_ready)
        pool.resume()
        await until(lambda: len(ran) == 60)
    assert ran == ids
    # Refills of the 10-job window, each read four rows at a time.
    assert len(limits) >= 10 and max(limits) == 4


async def test_a_job_taken_and_queued_again_with_the_same_key(tmp_path: Path) -> None:
    # A start that changed no row (store note 20) takes in the row instead: a new
    # state of the job, with the key it had, goes into the list it was taken
    # from, where its old entry may still lie behind the list's head.
    rt = make_rt(tmp_path, window=WINDOW)
    work, ran = recorder(rt)
    async with rt:
        pool = rt.pool("p", concurrency=1)
        pool.pause()
        job_id = await pool.add(work)
        state = pool.queue.take()
        assert state is not None and state.id == job_id and pool.queue.take() is None
        rt.adoption.shelve(state)
        info = await rt.get(job_id)
        assert rt.adoption.adopt(info, announce=False) is not state
        assert len(pool.queue) == 1
        pool.resume()
        await until(lambda: ran == [job_id])


@pytest.mark.parametrize("gate", ["lock", "rate"])
async def test_a_job_beyond_memory_passes_the_jobs_a_gate_holds_back(
    tmp_path: Path, gate: str
) -> None:
    # ``taskrt.gates`` note 2: the pool looks up to ``SCAN`` jobs past the first in
    # line for one that may start, whether those jobs are in memory or not.
    clock = FakeClock()
    rt = make_rt(tmp_path, window=WINDOW, clock=clock)
    release = asyncio.Event()
    ran: list[int] = []

    @rt.task(pool="p", rate="1/h" if gate == "rate" else None)
    async def held(job: JobContext) -> None:
        ran.append(job.id)
        await release.wait()

    @rt.task(pool="p")
    async def free(job: JobContext) -> None:
        ran.append(job.id)

    gated = held.options(lock="account:1") if gate == "lock" else held
    async with rt:
        pool = rt.pool("p", concurrency=2)
        first = await pool.add(gated)
        await until(lambda: ran == [first])
        pool.pause()
        blocked = [await pool.add(gated) for _ in range(4 * WINDOW)]
        passer = await pool.add(free)
        assert in_memory(rt, "p") <= WINDOW
        pool.resume()
        await until(lambda: ran == [first, passer], timeout=5)
        assert (await rt.get(blocked[-1])).status is JobStatus.WAITING
        assert in_memory(rt, "p") <= len(blocked)  # read on to the job that may start
        release.set()
        if gate == "lock":
            await until(lambda: len(ran) == 2 + len(blocked), timeout=10)
            assert ran[2:] == blocked  # one at a time, in line


async def test_latency_counts_a_due_job_outside_memory(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, window=WINDOW, clock=clock)
    work, _ = recorder(rt)
    async with rt:
        pool = rt.pool("p", concurrency=1)
        pool.pause()
        oldest = await pool.add(work.options(priority=-1))  # last in line: leaves memory
        await clock.advance(100)
        await pool.add_many(work.options(priority=1), [() for _ in range(4 * WINDOW)])
        assert oldest not in rt.live.states  # in the store only
        assert pool.statistics().latency < 1  # what memory holds: the jobs just added
        (stats,) = [s for s in await rt.pool_statistics() if s.name == "p"]
        assert stats.latency == pytest.approx(100, abs=0.5)
        assert pool.statistics().latency == pytest.approx(100, abs=0.5)  # the reading, for 1 s
        await clock.advance(2)
        assert pool.statistics().latency < 3  # too old a reading: memory's again


async def test_a_line_of_one_lock_keys_jobs_reads_each_job_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Note 7: the reach a gate's scan needs is read once and kept while the gates
    # are in use. Before, each start dropped memory back to the window, the jobs
    # left for the store, and the next scan read them again: 22 rows a job.
    rt = make_rt(tmp_path, window=WINDOW)
    work, ran = recorder(rt)
    read: list[int] = []
    async with rt:
        pool = rt.pool("p", concurrency=4)
        pool.pause()
        ids = await pool.add_many(work.options(lock="L"), [()] * 300)
        backlog = pool.queue._backlog  # type: ignore[attr-defined]
        load = backlog.load_ready

        async def load_ready(*args: Any) -> Any:
            out = await load(*args)
            read.append(out[1])
            return out

        monkeypatch.setattr(backlog, "load_ready", load_ready)
        pool.resume()
        await until(lambda: len(ran) == 300, timeout=20)
    assert ran == ids  # one at a time, in line
    assert sum(read) <= 300, sum(read)


@pytest.mark.parametrize("restart", [False, True])
async def test_run_now_of_a_job_read_from_the_store_answers_its_new_run_at(
    tmp_path: Path, restart: bool
) -> None:
    """A job whose state was built from its row (beyond the window, or after a
    restart) kept that row's snapshot: ``run_now`` and ``rt.get`` answered the old
    ``run_at`` and reason "scheduled", though the job did run now."""
    window = 4 if not restart else 10_000

    async def later() -> None:
        return None

    rt = make_rt(tmp_path, window=window)
    task = rt.task(later)
    rt.pool("default").pause()
    async with rt:
        ids = [await rt.add(task.options(delay=60)) for _ in range(30)]
    if restart:
        rt = make_rt(tmp_path, window=window)
        rt.task(later)
        rt.pool("default").pause()
    async with rt:
        job_id = ids[-2]
        now = rt.clock.now()
        answered = await rt.run_now(job_id)
        read = await rt.get(job_id)
        for info in (answered, read):
            assert info.run_at <= now + 1, info
            assert info.waiting_reason != "scheduled", info
        rt.pool("default").resume()
        assert (await rt.wait(job_id, timeout=5)).status is JobStatus.SUCCESS
