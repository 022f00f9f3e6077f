"""Durability: crash recovery (a real SIGKILL), orphans, delayed jobs across restarts,
ownership, client runtimes, and shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from core_support import (
    Gate,
    all_jobs,
    committed,
    committed_jobs,
    db_file,
    make_rt,
    sqlite_only_rows,
    sqlite_only_write,
    until,
    until_committed,
)

from taskrt import (
    AttemptOutcome,
    FakeClock,
    InvalidTransition,
    JobContext,
    JobInfo,
    JobStatus,
    Runtime,
    SystemClock,
    Transaction,
)
from taskrt import clock as clock_module
from taskrt.store import JobStore

REPO = Path(__file__).resolve().parents[1]

# -- recovery -------------------------------------------------------------------------------------


async def test_job_left_running_by_a_dead_process_runs_again(tmp_path: Path) -> None:
    path = db_file(tmp_path)
    first = make_rt(tmp_path)
    first.pool("default").pause()

    @first.task(attempts=3)
    async def work(job: JobContext, n: int) -> int:
        return n

    async with first:
        job_id = await first.pool("default").add(work, 5)
    # What a process that died during attempt 1 leaves behind (SQLite-specific write).
    sqlite_only_write(
        path,
        "UPDATE jobs SET status = 'RUNNING', attempts = 1, started_at = 1 WHERE id = ?",
        (job_id,),
    )

    seen: list[int] = []
    second = make_rt(tmp_path)

    @second.task(attempts=3)
    async def work(job: JobContext, n: int) -> int:
        seen.append(job.attempt)
        return n * 10

    async with second:
        info = await second.wait(job_id, timeout=5)
        attempts = await second.attempts(job_id)
    assert seen == [2]  # the interrupted attempt counts
    assert (info.status, info.result, info.attempts, info.recoveries) == (
        JobStatus.SUCCESS,
        50,
        2,
        1,
    )
    assert [(a.number, a.outcome) for a in attempts] == [
        (1, AttemptOutcome.INTERRUPTED),
        (2, AttemptOutcome.SUCCESS),
    ]


async def test_after_three_recoveries_the_job_fails_as_orphaned(tmp_path: Path) -> None:
    path = db_file(tmp_path)

    def runtime() -> Runtime:
        rt = make_rt(tmp_path)
        rt.pool("default").pause()  # keep the recovered job waiting

        @rt.task(attempts=-1)
        async def crashy(job: JobContext) -> None:
            return None

        return rt

    rt = runtime()
    async with rt:
        job_id = await rt.pool("default").add("crashy")
    for crash in range(1, 5):
        # A process that died while running it (SQLite-specific write).
        sqlite_only_write(
            path,
            "UPDATE jobs SET status = 'RUNNING', attempts = attempts + 1 WHERE id = ?",
            (job_id,),
        )
        rt = runtime()
        async with rt:
            info = await rt.get(job_id)
            if crash <= 3:
                assert (info.status, info.recoveries, info.attempts) == (
                    JobStatus.WAITING,
                    crash,
                    crash,
                )
    assert info.status is JobStatus.FAILURE
    assert info.error is not None and "orphaned" in info.error
    assert info.finished_at is not None
    assert [(j.status, j.recoveries) for j in await committed_jobs(tmp_path)] == [
        (JobStatus.FAILURE, 3)
    ]


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from taskrt import JobContext, Runtime

    rt = Runtime(sys.argv[1])
    rt.pool("work", concurrency=2)

    @rt.task(pool="work", attempts=3)
    async def step(job: JobContext, n: int) -> int:
        await asyncio.sleep(0.001)
        return n

    @rt.task(pool="long", attempts=3)
    async def long(job: JobContext) -> str:
        print("started", job.id, job.attempt, flush=True)
        await asyncio.sleep(3600)
        return "never"

    async def producer(k: int) -> None:
        n = k
        while True:
            job_id = await rt.pool("work").add(step, n)
            print("added", job_id, n, flush=True)
            n += 4

    async def main() -> None:
        async with rt:
            job_id = await rt.pool("long").add(long)
            print("added", job_id, -1, flush=True)
            await asyncio.gather(*(producer(k) for k in range(4)))

    asyncio.run(main())
    """
)


async def test_sigkill_mid_work_loses_no_acknowledged_job(tmp_path: Path) -> None:
    path = db_file(tmp_path)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        path,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    acknowledged: dict[int, int] = {}
    long_id = None
    try:
        async with asyncio.timeout(20):
            while long_id is None or len(acknowledged) < 300:
                line = await proc.stdout.readline()
                assert line, "the child exited early"
                kind, *values = line.decode().split()
                if kind == "added":
                    acknowledged[int(values[0])] = int(values[1])
                elif kind == "started":
                    assert values[1] == "1"
                    long_id = int(values[0])
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Lines the child wrote before it died (complete ones only) are acknowledged too.
    rest = await proc.stdout.read()
    for line in rest.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "added":
            acknowledged[int(parts[1])] = int(parts[2])

    attempts_seen: dict[int, int] = {}
    rt = make_rt(tmp_path)

    @rt.task(pool="work", attempts=3)
    async def step(job: JobContext, n: int) -> int:
        return n

    @rt.task(pool="long", attempts=3)
    async def long(job: JobContext) -> str:
        attempts_seen[job.id] = job.attempt
        return "recovered"

    # The kernel released the dead child's lock: a restart owns at once.
    await rt.start()
    try:
        assert rt.role == "owner"
        assert long_id is not None
        info = await rt.wait(long_id, timeout=5)
        assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, "recovered", 2)
        assert attempts_seen == {long_id: 2}
        for job_id, n in acknowledged.items():
            if n >= 0:
                done = await rt.wait(job_id, timeout=5)
                assert (done.status, done.result) == (JobStatus.SUCCESS, n), job_id
    finally:
        await rt.stop()
    jobs = await committed_jobs(tmp_path)
    assert set(acknowledged) <= {j.id for j in jobs}
    assert [j.id for j in jobs if j.status is not JobStatus.SUCCESS] == []


async def test_delayed_job_keeps_its_time_across_a_restart(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    ran: list[float] = []

    def runtime(clock: FakeClock) -> tuple[Runtime, Any]:
        rt = make_rt(tmp_path, clock=clock)

        @rt.task
        async def reminder(job: JobContext) -> None:
            ran.append(clock.now())

        return rt, reminder

    rt, reminder = runtime(FakeClock(start=t0))
    async with rt:
        job_id = await rt.pool("default").add(reminder.options(delay=100))
    assert [(j.status, j.run_at) for j in await committed_jobs(tmp_path)] == [
        (JobStatus.WAITING, t0 + 100)
    ]

    clock = FakeClock(start=t0 + 50)
    rt, _ = runtime(clock)
    async with rt:
        info = await rt.get(job_id)
        assert (info.status, info.run_at) == (JobStatus.WAITING, t0 + 100)
        await clock.advance(49.9)
        assert ran == [] and rt.pool("default").statistics().waiting == 1
        await clock.advance(0.1)
        await rt.wait(job_id, timeout=5)
    assert ran == [t0 + 100]


async def test_shutdown_lets_running_jobs_finish_within_the_grace_period(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, grace=5)
    gate = Gate()

    @rt.task
    async def short(job: JobContext) -> str:
        await gate()
        await asyncio.sleep(0.05)
        return "finished"

    async with rt:
        job_id = await rt.pool("default").add(short)
        await gate.wait_entered(1)
        gate.open()
    assert [(j.status, j.result, j.attempts) for j in await committed_jobs(tmp_path)] == [
        (JobStatus.SUCCESS, "finished", 1)
    ]
    assert job_id == 1


async def test_shutdown_puts_the_rest_back_to_waiting_without_charging(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, grace=0.05)
    rt.pool("one", concurrency=1)
    gate = Gate()

    @rt.task(pool="one", attempts=1)
    async def forever(job: JobContext) -> None:
        await gate()

    async with rt:
        running = await rt.pool("one").add(forever)
        waiting = await rt.pool("one").add(forever)
        await gate.wait_entered(1)
        started = time.perf_counter()
    assert time.perf_counter() - started < 2
    assert [
        (j.id, j.status, j.attempts, j.finished_at) for j in await committed_jobs(tmp_path)
    ] == [
        (running, JobStatus.WAITING, 0, None),
        (waiting, JobStatus.WAITING, 0, None),
    ]

    seen: list[tuple[int, int]] = []
    again = make_rt(tmp_path)
    again.pool("one", concurrency=1)

    @again.task(pool="one", attempts=1)
    async def forever(job: JobContext) -> None:
        seen.append((job.id, job.attempt))

    async with again:
        for job_id in (running, waiting):
            assert (await again.wait(job_id, timeout=5)).status is JobStatus.SUCCESS
    assert seen == [(running, 1), (waiting, 1)]


# -- one owner per database (standbys: tests/test_core_standby.py) -------------------------------


async def test_client_adds_and_the_owner_picks_up_within_100ms(tmp_path: Path) -> None:
    started_at: dict[int, float] = {}
    owner = make_rt(tmp_path)

    @owner.task
    async def hello(job: JobContext, name: str) -> str:
        started_at[job.id] = time.perf_counter()
        return f"hello {name}"

    client = make_rt(tmp_path, workers=False)

    @client.task
    async def hello(job: JobContext, name: str) -> str:  # noqa: F811 - the client's declaration
        raise AssertionError("a client never runs handlers")

    async with owner, client:
        for name in ("ada", "bob", "cy"):
            added = time.perf_counter()
            job_id = await client.pool("default").add(hello, name)
            await until(lambda job_id=job_id: job_id in started_at, timeout=2)
            assert started_at[job_id] - added < 0.1
            info = await client.wait(job_id, timeout=5)
            assert (info.status, info.result) == (JobStatus.SUCCESS, f"hello {name}")
        page = await client.jobs()
        assert [j.id for j in page.jobs] == [3, 2, 1]


async def test_client_cancel_reaches_the_owner(tmp_path: Path) -> None:
    owner = make_rt(tmp_path)
    gate = Gate()
    cancelled: list[int] = []

    @owner.task
    async def long(job: JobContext) -> None:
        try:
            await gate()
        except asyncio.CancelledError:
            cancelled.append(job.id)
            raise

    client = make_rt(tmp_path, workers=False)
    async with owner, client:
        job_id = await owner.pool("default").add(long)
        await gate.wait_entered(1)
        await client.cancel(job_id)
        info = await owner.wait(job_id, timeout=5)
        assert info.status is JobStatus.CANCELLED
        assert cancelled == [job_id]
        assert (await client.wait(job_id, timeout=5)).status is JobStatus.CANCELLED
    assert [j.status for j in await committed_jobs(tmp_path)] == [JobStatus.CANCELLED]


async def test_client_cancel_lands_when_the_job_starts_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client reads the job as WAITING, then the owner starts it before the
    # client writes its cancel: the cancel must still reach the owner.
    owner = make_rt(tmp_path)
    gate = Gate()

    @owner.task
    async def long(job: JobContext) -> None:
        await gate()

    client = make_rt(tmp_path, workers=False)
    real_get = client.get

    async def stale_get(job_id: int) -> Any:
        info = await real_get(job_id)
        monkeypatch.setattr(client, "get", real_get)
        return dataclasses.replace(info, status=JobStatus.WAITING)

    async def started(store: JobStore) -> bool:
        return [j.status for j in await all_jobs(store)] == [JobStatus.RUNNING]

    async with owner, client:
        job_id = await owner.pool("default").add(long)
        await gate.wait_entered(1)
        await until_committed(tmp_path, started)
        monkeypatch.setattr(client, "get", stale_get)
        await client.cancel(job_id)
        info = await owner.wait(job_id, timeout=5)
        assert info.status is JobStatus.CANCELLED


def one_database(backend: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A SQLite file, or a fresh PostgreSQL schema where one owner runs the jobs."""
    if backend == "sqlite":
        return str(tmp_path / "app.db"), {}
    import pg_server

    return f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}", {"mode": "owner"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_job_cancelled_where_the_owner_was_not_reached_is_not_run(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process that cannot reach the owner cancels in the store alone; the owner
    # starts its queued copy before its poll reads the cancel. The start changes no
    # row, so the handler must not run, and the job ends CANCELLED here too. (Where
    # every node claims its jobs from the store, no copy waits in memory.)
    db, options = one_database(backend, tmp_path)
    rt = Runtime(db, **options)
    ran: list[int] = []

    @rt.task
    async def work(job: JobContext) -> None:
        ran.append(job.id)

    async def late_poll() -> None:
        return None

    monkeypatch.setattr(rt.adoption, "poll_once", late_poll)
    async with rt:
        pool = rt.pool("default")
        pool.pause()
        job_id = await pool.add(work)
        other = await pool.add(work)
        await rt.store.settle()
        seen: list[str] = []

        async def watch() -> None:
            async for event in rt.subscribe(job_id):
                seen.append(event.type.value)
                if event.status.terminal:
                    return

        watcher = asyncio.create_task(watch())
        await until(lambda: seen != [], timeout=2)
        await rt.store.cancel_external(job_id, rt.clock.now())
        pool.resume()
        assert (await rt.wait(other, timeout=5)).status is JobStatus.SUCCESS
        info = await rt.wait(job_id, timeout=5)
        assert info.status is JobStatus.CANCELLED
        assert ran == [other]
        await asyncio.wait_for(watcher, 5)
        assert seen[-1] == "cancelled" and "success" not in seen, seen
        assert (await rt.store.get_job(job_id)).status is JobStatus.CANCELLED  # type: ignore[union-attr]
        assert (await rt.get(job_id)).status is JobStatus.CANCELLED
        assert rt.pool("default").statistics().running == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_workflow_changes_from_a_client_that_cannot_reach_the_owner_settle_at_its_poll(
    backend: str, tmp_path: Path
) -> None:
    # The client's adds, cancel and retry go to the store alone; the owner's poll
    # takes them in and settles the dependents at once, not at its sweep (5 s).
    owner, client = owner_and_unreachable_client(backend, tmp_path)
    gate = Gate()

    for rt in (owner, client):

        @rt.task
        async def slow(n: int) -> int:
            await gate()
            return n

        @rt.task
        async def then(n: int) -> int:
            return n + 1

    async with owner, client:
        assert client.role == "client"
        pool = client.pool("default")
        parent = await pool.add(slow, 1)
        child = await pool.add(then.options(after=[parent]), 10)
        await gate.wait_entered(1)
        t = time.monotonic()
        await client.cancel(parent)
        assert (await owner.wait(child, timeout=3)).status is JobStatus.CANCELLED
        assert time.monotonic() - t < 2

        gate.open()
        done = await pool.add(slow, 2)
        waiter = await pool.add(then.options(after=[done]), 20)
        await client.cancel(waiter)  # cancelled by hand while it waits for its parent
        assert (await owner.wait(done, timeout=3)).status is JobStatus.SUCCESS
        t = time.monotonic()
        await client.retry(waiter)  # blocked again, on a parent that has succeeded
        info = await owner.wait(waiter, timeout=3)
        assert (info.status, info.result) == (JobStatus.SUCCESS, 21)
        assert time.monotonic() - t < 2


def owner_and_unreachable_client(
    backend: str, tmp_path: Path, **owner_options: Any
) -> tuple[Runtime, Runtime]:
    """An owner and a client (``workers=False``) that cannot reach it: the client's
    actions go to the store alone, for the owner's poll."""
    db, options = one_database(backend, tmp_path)
    owner = Runtime(db, **options, **owner_options)
    client = Runtime(db, **options, workers=False)
    client._forwarding = lambda: None  # type: ignore[method-assign]
    return owner, client


def polls_by_hand(owner: Runtime) -> None:
    """The owner polls only when the test calls ``owner.adoption.poll_once()``."""
    assert owner._poll_task is not None
    owner._poll_task.cancel()


def returns_its_id(owner: Runtime, client: Runtime) -> tuple[Any, list[int]]:
    """Task ``once`` on both runtimes (the owner's returned): it returns its job's
    id; and the ids of its runs, in order."""
    runs: list[int] = []
    for rt in (client, owner):

        @rt.task
        async def once(job: JobContext) -> int:
            runs.append(job.id)
            return job.id

    return once, runs


async def a_poll_held_after_its_read(
    owner: Runtime, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A poll whose read of the store came back and is held until the event is set
    (what it read grows older meanwhile); later polls read as usual."""
    go_on = asyncio.Event()
    read_back = asyncio.Event()
    external_changes = owner.store.external_changes

    async def held_once() -> Any:
        monkeypatch.setattr(owner.store, "external_changes", external_changes)
        changes = await external_changes()
        read_back.set()
        await go_on.wait()
        return changes

    monkeypatch.setattr(owner.store, "external_changes", held_once)
    poll = asyncio.create_task(owner.adoption.poll_once())
    await read_back.wait()
    return poll, go_on


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_poll_read_before_a_job_ran_and_left_memory_does_not_bring_it_back(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The owner's poll reads a client's job while it waits; before the read comes
    # back, the owner runs the job (run now), its first attempt fails, and its
    # retry leaves memory (the delayed window is full). The row the poll read is
    # older than that: taken in, the job would run its first attempt again.
    owner, client = owner_and_unreachable_client(backend, tmp_path, window=2)
    runs: list[int] = []

    for rt in (owner, client):

        @rt.task(attempts=2, retry="4s")
        async def flaky(job: JobContext) -> str:
            runs.append(job.attempt)
            if job.attempt == 1:
                raise RuntimeError("the first attempt fails")
            return "done"

        @rt.task
        async def later() -> None:
            pass

    async with owner, client:
        polls_by_hand(owner)
        pool = owner.pool("default")
        for _ in range(2):  # due before the retry
            await pool.add(later.options(delay=3))  # not due yet at the check, under load too
        job_id = await client.pool("default").add(flaky)

        poll, go_on = await a_poll_held_after_its_read(owner, monkeypatch)
        await owner.run_now(job_id)
        await until(lambda: runs == [1] and owner.live.states[job_id].status is JobStatus.WAITING)
        await owner.store.settle()  # the retry is committed: it may leave memory
        await pool.add(later.options(delay=2.5))  # the window overflows: the retry leaves
        assert job_id not in owner.live.states
        stored = await owner.get(job_id)
        assert (stored.status, stored.attempts) == (JobStatus.WAITING, 1)
        go_on.set()
        await poll
        info = await owner.wait(job_id, timeout=10)
        assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, "done", 2)
        assert runs == [1, 2]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_retry_that_another_process_retried_first_is_refused(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The owner's retry reads the job CANCELLED; before it writes, a client that
    # cannot reach the owner retries it in the store, and the owner's poll takes
    # that in. The owner's retry must not put a second state of the job in memory
    # (the one the pool holds would run; the other would wait for ever).
    owner, client = owner_and_unreachable_client(backend, tmp_path)
    once, runs = returns_its_id(owner, client)
    async with owner, client:
        polls_by_hand(owner)
        job_id = await owner.pool("default").add(once.options(delay=60))
        await owner.cancel(job_id)
        block_again = owner.store.block_again

        async def meanwhile(*args: Any, **kwargs: Any) -> Any:
            again = await block_again(*args, **kwargs)
            await client.retry(job_id)
            await owner.adoption.poll_once()
            return again

        monkeypatch.setattr(owner.store, "block_again", meanwhile)
        with pytest.raises(InvalidTransition, match=f"cannot retry job {job_id}: it is "):
            await owner.retry(job_id)
        info = await owner.wait(job_id, timeout=5)
        assert (info.status, info.result, runs) == (JobStatus.SUCCESS, job_id, [job_id])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_cancel_read_before_a_retry_does_not_undo_it(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that cannot reach the owner cancels a job that is not in the
    # owner's memory; the owner's poll reads that cancel, and before it acts on
    # it, the owner retries the job. The cancel it read is older than the retry:
    # acted on, it would drop the retried job from memory while its row waits.
    owner, client = owner_and_unreachable_client(backend, tmp_path)
    once, runs = returns_its_id(owner, client)
    async with owner, client:
        polls_by_hand(owner)
        job_id = await owner.pool("default").add(once.options(delay=60))
        owner.adoption.forget(owner.live.states[job_id])  # out of the window
        await client.cancel(job_id)

        poll, go_on = await a_poll_held_after_its_read(owner, monkeypatch)
        write_waiting = owner.transitions.write_waiting

        def and_the_poll_goes_on(*args: Any, **kwargs: Any) -> Any:
            go_on.set()
            return write_waiting(*args, **kwargs)

        monkeypatch.setattr(owner.transitions, "write_waiting", and_the_poll_goes_on)
        await owner.retry(job_id)
        await poll
        await owner.adoption.poll_once()
        info = await owner.wait(job_id, timeout=5)
        assert (info.status, info.result, runs) == (JobStatus.SUCCESS, job_id, [job_id])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("where", ["in memory", "out of the window"])
async def test_a_cancel_asked_for_while_an_attempt_ran_ends_its_retry(
    backend: str, where: str, tmp_path: Path
) -> None:
    # A client that cannot reach the owner asks a running job to stop; the attempt
    # fails before the owner's poll reads that, and the job waits for its retry (in
    # memory, or out of the window). The cancel was for the job: the poll ends it
    # CANCELLED, and the retry never runs.
    owner, client = owner_and_unreachable_client(backend, tmp_path, window=2)
    fail_now = asyncio.Event()
    runs: list[int] = []
    for rt in (owner, client):

        @rt.task(attempts=3, retry="30s")
        async def flaky(job: JobContext) -> None:
            runs.append(job.attempt)
            await fail_now.wait()
            raise RuntimeError("this attempt fails")

        @rt.task
        async def later() -> None:
            pass

    async with owner, client:
        polls_by_hand(owner)
        pool = owner.pool("default")
        job_id = await pool.add(flaky)
        child = await pool.add(later.options(after=[job_id]))
        await until(lambda: runs == [1])
        await client.cancel(job_id)  # RUNNING: the row is marked for the owner
        fail_now.set()
        await until(lambda: owner.live.states[job_id].status is JobStatus.WAITING)
        await owner.store.settle()
        if where == "out of the window":
            for _ in range(2):  # due before the retry: the retry leaves the window
                await pool.add(later.options(delay=1))
            assert job_id not in owner.live.states
        stored = await owner.get(job_id)
        assert (stored.status, stored.attempts) == (JobStatus.WAITING, 1)
        await owner.adoption.poll_once()
        info = await owner.wait(job_id, timeout=5)
        assert (info.status, runs) == (JobStatus.CANCELLED, [1])
        await owner.store.settle()
        assert (await client.get(job_id)).status is JobStatus.CANCELLED
        # Its dependent is settled by its end, not at the workflows' sweep (5 s).
        assert (await owner.wait(child, timeout=3)).status is JobStatus.CANCELLED


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("by", ["owner", "client"])
async def test_a_retry_by_hand_after_a_cancel_that_came_too_late_runs(
    backend: str, by: str, tmp_path: Path
) -> None:
    # A client that cannot reach the owner asks a running job to stop, but its last
    # attempt fails before the owner's poll reads that; then the job is retried by
    # hand. That retry is a request made after the cancel: the poll leaves it alone.
    owner, client = owner_and_unreachable_client(backend, tmp_path)
    fail_now = asyncio.Event()
    second_ends = asyncio.Event()
    runs: list[int] = []
    for rt in (owner, client):

        @rt.task
        async def once_more(job: JobContext) -> str:
            runs.append(job.id)
            if len(runs) == 1:
                await fail_now.wait()
                raise RuntimeError("the first run fails")
            await second_ends.wait()
            return "done"

    async with owner, client:
        polls_by_hand(owner)
        job_id = await owner.pool("default").add(once_more)
        await until(lambda: len(runs) == 1)
        await client.cancel(job_id)  # RUNNING: the row is marked for the owner
        fail_now.set()
        assert (await owner.wait(job_id, timeout=5)).status is JobStatus.FAILURE
        await owner.store.settle()
        await (owner if by == "owner" else client).retry(job_id)
        if by == "client":
            await owner.adoption.poll_once()  # takes the retry in
        await until(lambda: len(runs) == 2)
        await owner.adoption.poll_once()
        second_ends.set()
        info = await owner.wait(job_id, timeout=5)
        assert (info.status, info.result) == (JobStatus.SUCCESS, "done")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_cancel_read_before_the_owners_retry_committed_leaves_the_retry(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client and the owner cancel a waiting job at once (the client's lands; the
    # row is marked for the owner's poll); the poll reads that row, and before the
    # read comes back the owner retries the job and the retry's write commits.
    # Before, the poll ended the retried job in memory from the older row, and its
    # row, WAITING, was run by nothing (a soak found it: a client that cannot reach
    # the owner, on PostgreSQL, seed 9).
    owner, client = owner_and_unreachable_client(backend, tmp_path)
    once, runs = returns_its_id(owner, client)
    async with owner, client:
        polls_by_hand(owner)
        pool = owner.pool("default")
        pool.pause()  # in memory only: the job waits
        job_id = await pool.add(once)
        await client.cancel(job_id)
        await owner.cancel(job_id)
        poll, go_on = await a_poll_held_after_its_read(owner, monkeypatch)
        retried = await owner.retry(job_id)
        await owner.store.flush()
        go_on.set()
        await poll
        assert owner.live.states[job_id].status is JobStatus.WAITING
        await owner.adoption.poll_once()  # the row as it is now: nothing to do
        pool.resume()
        info = await owner.wait(job_id, timeout=5)
        assert retried.status is JobStatus.WAITING
        assert (info.status, runs) == (JobStatus.SUCCESS, [job_id])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("where", ["in memory", "out of the window"])
async def test_a_run_now_from_a_client_during_the_owners_run_now_runs_the_job_once(
    backend: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The owner's "run now" takes a delayed job out of its queue and writes the new
    # time; meanwhile its poll takes in a client's "run now" of the same job (the
    # client cannot reach the owner) and the job starts. The owner's run now must
    # not queue the running job a second time.
    owner, client = owner_and_unreachable_client(backend, tmp_path)
    once, runs = returns_its_id(owner, client)
    async with owner, client:
        polls_by_hand(owner)
        job_id = await owner.pool("default").add(once.options(delay=60))
        if where == "out of the window":
            owner.adoption.forget(owner.live.states[job_id])
        reschedule = owner.store.reschedule

        async def meanwhile(*args: Any, **kwargs: Any) -> Any:
            done = await reschedule(*args, **kwargs)
            await client.run_now(job_id)
            await owner.adoption.poll_once()
            await asyncio.sleep(0.05)  # long enough for a job the poll queued to start
            return done

        monkeypatch.setattr(owner.store, "reschedule", meanwhile)
        await owner.run_now(job_id)
        info = await owner.wait(job_id, timeout=5)
        await asyncio.sleep(0.1)  # a second run would have begun by now
        assert (info.status, info.attempts, runs) == (JobStatus.SUCCESS, 1, [job_id])


async def test_the_poll_goes_on_after_a_poll_that_failed_unexpectedly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    owner = make_rt(tmp_path)
    client = make_rt(tmp_path, workers=False)
    client._forwarding = lambda: None  # type: ignore[method-assign]
    for rt in (owner, client):

        @rt.task
        async def echo(n: int) -> int:
            return n

    async with owner, client:
        external_changes = owner.store.external_changes
        failed: list[bool] = []

        async def once_broken() -> Any:
            if not failed:
                failed.append(True)
                raise RuntimeError("a defect in one poll")
            return await external_changes()

        monkeypatch.setattr(owner.store, "external_changes", once_broken)
        job_id = await client.pool("default").add(echo, 7)
        assert (await owner.wait(job_id, timeout=3)).result == 7
        assert failed == [True]
        assert "polling for external jobs failed" in caplog.text


async def test_client_cancels_a_waiting_job(tmp_path: Path) -> None:
    clock = FakeClock()
    owner = make_rt(tmp_path, clock=clock)
    ran: list[int] = []

    @owner.task
    async def later(job: JobContext) -> None:
        ran.append(job.id)

    client = make_rt(tmp_path, workers=False)
    async with owner, client:
        job_id = await owner.pool("default").add(later.options(delay=60))
        info = await client.cancel(job_id)
        assert info.status is JobStatus.CANCELLED
        await until(lambda: owner.pool("default").statistics().waiting == 0, timeout=2)
        await clock.advance(120)
        assert ran == []
        assert (await owner.get(job_id)).status is JobStatus.CANCELLED


async def test_the_same_runtime_can_be_started_again(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)
    ran: list[int] = []

    @rt.task
    async def later(job: JobContext, n: int) -> int:
        ran.append(n)
        return n

    async with rt:
        first = await rt.pool("default").add(later, 1)
        await rt.wait(first, timeout=5)
        delayed = await rt.pool("default").add(later.options(delay=10), 2)
    assert not rt.started
    async with rt:
        assert rt.started
        assert (await rt.get(delayed)).status is JobStatus.WAITING
        await clock.advance(10)
        assert (await rt.wait(delayed, timeout=5)).result == 2
        third = await rt.pool("default").add(later, 3)
        assert third == delayed + 1
        assert (await rt.wait(third, timeout=5)).result == 3
    assert ran == [1, 2, 3]


async def test_client_retry_reaches_the_owner(tmp_path: Path) -> None:
    owner = make_rt(tmp_path)
    fixed = False

    @owner.task(attempts=1)
    async def fragile(job: JobContext) -> int:
        if not fixed:
            raise RuntimeError("broken")
        return job.attempt

    client = make_rt(tmp_path, workers=False)
    client.register(fragile.spec)  # a client knows the tasks it adds

    async with owner, client:
        job_id = await client.pool("default").add("fragile")
        assert (await client.wait(job_id, timeout=5)).status is JobStatus.FAILURE
        fixed = True
        await client.retry(job_id)
        info = await client.wait(job_id, timeout=5)
        assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, 2, 2)


async def test_sequence_jumps_after_a_crash_so_resumed_streams_never_miss_events(
    tmp_path: Path,
) -> None:
    """Events published but not written before a crash had higher numbers than
    the stored ones; after the crash every live job's sequence jumps above them."""
    path = db_file(tmp_path)

    async def idle(job: JobContext) -> None:
        return None

    rt = make_rt(tmp_path)
    rt.task(idle)
    rt.pool("default").pause()
    async with rt:
        job_id = await rt.pool("default").add("idle")
    assert [j.seq for j in await committed_jobs(tmp_path)] == [1]
    # A clean stop leaves no lease: no jump.
    rt2 = make_rt(tmp_path)
    rt2.task(idle)
    rt2.pool("default").pause()
    async with rt2:
        assert (await rt2.get(job_id)).seq == 1
    # A lease left behind (its owner was killed) means a crash: the sequence jumps.
    sqlite_only_write(path, "INSERT INTO lease (id, owner, expires_at) VALUES (1, 'dead:1', 0)")
    rt3 = make_rt(tmp_path)
    rt3.task(idle)
    rt3.pool("default").pause()
    async with rt3:
        assert (await rt3.get(job_id)).seq == 1 + 1_000_000


CANCELLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from taskrt import JobContext, Runtime

    rt = Runtime(sys.argv[1])

    @rt.task
    async def noop(job: JobContext) -> None: ...

    async def main() -> None:
        started = asyncio.Event()

        async def serve() -> None:  # as an ASGI server's lifespan runs the runtime
            async with rt:
                started.set()
                await asyncio.sleep(3600)

        asyncio.create_task(serve())
        await started.wait()
        await rt.add(noop)
        raise RuntimeError("the application failed")  # asyncio.run cancels every task

    try:
        asyncio.run(main())
    except RuntimeError as exc:
        print("ended:", exc, flush=True)
    """
)


async def test_a_runtime_stopped_after_its_writer_was_cancelled_ends(tmp_path: Path) -> None:
    # When asyncio.run's main task fails, every task is cancelled, the store's writer
    # among them; the runtime's stop then waited for a flush nobody would write, and
    # the process hung (taskrt serve with a port it could not bind stayed up for good).
    returncode, out, _ = await run_child(tmp_path, CANCELLED_WRITER, 15)
    assert out.strip() == "ended: the application failed"
    assert returncode == 0


async def run_child(tmp_path: Path, text: str, timeout: float) -> tuple[int | None, str, str]:
    """``text`` run as a script on this test's database: its exit code, out and err
    (killed after ``timeout`` seconds)."""
    script = tmp_path / "child.py"
    script.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        db_file(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


RESTARTED_AFTER_A_THREAD = textwrap.dedent(
    """
    import asyncio, sys, time
    from taskrt import JobContext, Runtime

    rt = Runtime(sys.argv[1], abandon_after=0.2, grace=0.5)
    rt.pool("p", concurrency=1)

    @rt.task(pool="p", timeout=0.2, attempts=1)
    def slow(job: JobContext) -> None:
        time.sleep(1.0)  # runs on past its timeout, and past the runtime's stop

    @rt.task(pool="p")
    async def ok(job: JobContext) -> str:
        return "ok"

    async def first() -> None:
        async with rt:
            job_id = await rt.pool("p").add(slow)
            print("first", (await rt.wait(job_id, timeout=5)).status.value, flush=True)

    async def second() -> None:
        async with rt:
            job_id = await rt.pool("p").add(ok)
            print("second", (await rt.wait(job_id, timeout=5)).status.value, flush=True)

    asyncio.run(first())
    time.sleep(1.2)  # the thread returns: its loop is closed
    asyncio.run(second())
    """
)


async def test_a_runtime_started_again_after_a_thread_outlived_it_has_its_slots(
    tmp_path: Path,
) -> None:
    # Before: the thread's return called into the closed loop ("Event loop is
    # closed" from a future's callback), and the pool, started again on a new loop,
    # still counted the thread's slot as held: concurrency 1 never ran a job again.
    _, out, err = await run_child(tmp_path, RESTARTED_AFTER_A_THREAD, 30)
    assert out.split() == ["first", "FAILURE", "second", "SUCCESS"], err
    assert "Event loop is closed" not in err


async def _audit(job: JobInfo, tx: Transaction) -> None:
    await tx.execute("INSERT INTO audit VALUES (?, ?)", (job.id, job.error))


def audited_runtime(tmp_path: Path, **hooks: Any) -> Runtime:
    """A runtime whose jobs (task ``crashy``, a paused pool) fail as orphaned at the
    first recovery, each failure audited by its ``on_failed`` hook."""
    rt = make_rt(tmp_path, max_recoveries=0)
    rt.pool("default").pause()

    @rt.task(on_failed=_audit, **hooks)
    async def crashy(job: JobContext) -> None:
        return None

    return rt


async def added_audited(rt: Runtime, n: int) -> list[int]:
    """``n`` jobs added by ``rt`` (then stopped), with the audit table they write."""
    async with rt:
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE audit (job_id INTEGER, error TEXT)")
        return [await rt.pool("default").add("crashy") for _ in range(n)]


async def test_a_job_orphaned_at_recovery_runs_its_failure_hooks_and_counts(
    tmp_path: Path,
) -> None:
    # Before: a job failed as orphaned (or cancelled as asked) by a recovery was
    # missing from the history (rt.stats(since=...)) and the metrics, and its
    # on_error and on_failed hooks never ran.
    path = db_file(tmp_path)
    errors: list[tuple[int, str]] = []

    def runtime() -> Runtime:
        return audited_runtime(tmp_path, on_error=lambda i, e: errors.append((i, e)))

    orphan, asked = await added_audited(runtime(), 2)
    since = time.time() - 1
    # A process that died while running both; a cancel was asked of the second.
    sqlite_only_write(path, "UPDATE jobs SET status = 'RUNNING', attempts = 1")
    sqlite_only_write(path, "UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (asked,))
    rt = runtime()
    async with rt:
        assert (await rt.get(orphan)).status is JobStatus.FAILURE
        assert (await rt.get(asked)).status is JobStatus.CANCELLED
        await until(lambda: len(errors) == 1)
        stats = await rt.stats(since=since)
        await rt.background.wait(5)
        finished = dict(rt.counters.finished)
    assert (stats.counts["FAILURE"], stats.counts["CANCELLED"]) == (1, 1)
    assert finished[("crashy", JobStatus.FAILURE)] == 1
    assert [i for i, _ in errors] == [orphan] and "orphaned" in errors[0][1]
    audit = sqlite_only_rows(path, "SELECT job_id, error FROM audit")
    assert [r[0] for r in audit] == [orphan] and "orphaned" in audit[0][1]


async def test_an_orphan_of_a_task_not_registered_waits_for_a_process_that_has_it(
    tmp_path: Path,
) -> None:
    """The owner restarted without the task (its code changed): the orphan was failed
    in the recovery's SQL, its on_failed hook never run (found by a crash-restart
    hunt). It stays RUNNING now, and fails with its hook once the task is back."""
    path = db_file(tmp_path)
    (orphan,) = await added_audited(audited_runtime(tmp_path), 1)
    sqlite_only_write(path, "UPDATE jobs SET status = 'RUNNING', attempts = 1")
    without = make_rt(tmp_path, max_recoveries=0)  # no task 'crashy'
    async with without:
        assert (await without.get(orphan)).status is JobStatus.RUNNING
    assert sqlite_only_rows(path, "SELECT job_id FROM audit") == []
    rt = audited_runtime(tmp_path)
    async with rt:
        info = await rt.wait(orphan, timeout=5)
        assert info.status is JobStatus.FAILURE and "orphaned" in (info.error or "")
    assert [r[0] for r in sqlite_only_rows(path, "SELECT job_id FROM audit")] == [orphan]


KILLED_IN_AN_ORPHANS_HOOK = textwrap.dedent(
    """
    import asyncio, sys
    from taskrt import JobContext, Runtime

    rt = Runtime(sys.argv[1], max_recoveries=0, hook_timeout=60)

    async def on_failed(job, tx) -> None:
        await tx.execute("INSERT INTO audit VALUES (?, ?)", (job.id, job.error))
        print("in the hook", flush=True)
        await asyncio.sleep(3600)  # killed here, its transaction open

    @rt.task(on_failed=on_failed)
    async def crashy(job: JobContext) -> None:
        return None

    async def main() -> None:
        async with rt:
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_an_orphans_failure_commits_with_its_on_failed_hook_or_not_at_all(
    tmp_path: Path,
) -> None:
    # Before: the recovery committed the orphan's FAILURE, then ran on_failed in a
    # transaction of its own; a process killed in between left a failure whose hook
    # never ran (the audit row below was missing for good). Now the job stays
    # RUNNING until the failure and its hook commit together (store note 22).
    path = db_file(tmp_path)
    [job_id] = await added_audited(audited_runtime(tmp_path), 1)
    sqlite_only_write(path, "UPDATE jobs SET status = 'RUNNING', attempts = 1")  # it died
    script = tmp_path / "child.py"
    script.write_text(KILLED_IN_AN_ORPHANS_HOOK)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        path,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            assert (await proc.stdout.readline()).decode().strip() == "in the hook"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert sqlite_only_rows(path, "SELECT status FROM jobs") == [("RUNNING",)]
    assert sqlite_only_rows(path, "SELECT * FROM audit") == []
    rt = audited_runtime(tmp_path)
    async with rt:
        info = await rt.wait(job_id, timeout=5)
        await rt.background.wait(5)
    assert info.status is JobStatus.FAILURE and info.recoveries == 0
    assert info.error == "orphaned: the job was running when its process died 1 times"
    assert sqlite_only_rows(path, "SELECT * FROM audit") == [(job_id, info.error)]
    async with committed(tmp_path) as store:
        assert [a.outcome for a in await store.attempts(job_id)] == [AttemptOutcome.INTERRUPTED]


# -- the wall clock ------------------------------------------------------------------------------


class JumpingClock(SystemClock):
    """The wall clock plus ``ahead`` seconds, the event loop's timers as they are:
    a machine that slept (or whose clock was stepped) while its timers did not run."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def now(self) -> float:
        return time.time() + self.ahead


async def test_a_timer_set_far_off_rings_when_the_wall_clock_gets_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: a loop timer for the whole delay, which follows the monotonic clock: a
    # machine suspended for an hour rang an hour late (a job delayed by a day, the
    # retention schedule). Now it reads the wall clock every MAX_TIMER seconds.
    monkeypatch.setattr(clock_module, "MAX_TIMER", 0.05)
    clock = JumpingClock()
    rang: list[str] = []
    clock.call_at(clock.now() + 3600, lambda: rang.append("far"))
    clock.call_at(clock.now() + 3600, lambda: rang.append("cancelled")).cancel()
    clock.call_at(clock.now() + 0.01, lambda: rang.append("near"))
    await asyncio.sleep(0.2)
    assert rang == ["near"]
    clock.ahead = 3600  # the machine slept an hour
    await until(lambda: rang == ["near", "far"], timeout=2)
    await asyncio.sleep(0.2)
    assert rang == ["near", "far"]


async def test_a_delayed_job_starts_when_its_time_comes_though_the_machine_slept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clock_module, "MAX_TIMER", 0.05)
    clock = JumpingClock()
    rt = make_rt(tmp_path, clock=clock)

    @rt.task
    async def later(job: JobContext) -> str:
        return "ran"

    async with rt:
        job_id = await rt.pool("default").add(later.options(delay=3600))
        await asyncio.sleep(0.2)
        assert (await rt.get(job_id)).status is JobStatus.WAITING
        clock.ahead = 3601
        info = await rt.wait(job_id, timeout=3)
    assert info.result == "ran"


POISON_PILL = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from taskrt import JobContext, Runtime

    rt = Runtime(sys.argv[1], grace=0.3, max_recoveries=3)
    rt.pool("p", concurrency=1)

    @rt.task(pool="p")
    async def harmless(job: JobContext) -> str:
        await asyncio.sleep(0.05)
        print("harmless ended", job.attempt, flush=True)
        return "ok"

    @rt.task(pool="p")
    async def pill(job: JobContext) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    async def main() -> None:
        async with rt:
            if not (await rt.jobs()).jobs:
                await rt.pool("p").add(harmless)
                await rt.pool("p").add(pill)
            await asyncio.sleep(5)

    asyncio.run(main())
    """
)


async def test_a_poison_pill_started_in_a_freed_slot_takes_only_itself_down(
    tmp_path: Path,
) -> None:
    """A job ends, the pill starts in its slot and kills the process at once. Before,
    the pill's start committed before the end of the job that freed the slot (store
    note 16): each restart ran the harmless job again, and after ``max_recoveries``
    both failed as orphaned, a job whose handler had succeeded four times included."""
    for run in range(1, 6):
        code, out, err = await run_child(tmp_path, POISON_PILL, timeout=30)
        if run == 1:
            assert code == -signal.SIGKILL, err
            assert out.splitlines() == ["harmless ended 1"]
            [harmless, pill] = await committed_jobs(tmp_path)
            assert (harmless.status, harmless.result, harmless.recoveries) == (
                JobStatus.SUCCESS,
                "ok",
                0,
            )
            continue
        assert "harmless ended" not in out  # it never runs again
        if code != -signal.SIGKILL:
            break  # the pill failed as orphaned: this run was a clean one
    [harmless, pill] = await committed_jobs(tmp_path)
    assert (harmless.status, harmless.attempts) == (JobStatus.SUCCESS, 1)
    assert pill.status is JobStatus.FAILURE and "orphaned" in (pill.error or "")


PILL_BESIDE_A_NEIGHBOUR = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from taskrt import JobContext, Runtime

    rt = Runtime(sys.argv[1], grace=0.3, max_recoveries=3)
    rt.pool("p", concurrency=2)
    rt.pool("q", concurrency=1)

    @rt.task(pool="q")
    async def neighbour(job: JobContext) -> str:
        print("neighbour started", job.attempt, flush=True)
        await asyncio.sleep(0.3)
        return "ok"

    @rt.task(pool="p")
    async def pill(job: JobContext) -> None:
        await asyncio.sleep(0.1)  # the neighbour has started: it runs beside the pill
        os.kill(os.getpid(), signal.SIGKILL)

    async def main() -> None:
        async with rt:
            if not (await rt.jobs()).jobs:
                await rt.pool("q").add(neighbour)
                await rt.pool("p").add(pill)
            await asyncio.sleep(3)

    asyncio.run(main())
    """
)


async def test_a_job_at_its_last_recovery_runs_alone_so_only_the_pill_is_orphaned(
    tmp_path: Path,
) -> None:
    """A pill kills its process while a harmless job of another pool runs beside it;
    after each restart both start together again. Before, both reached
    ``max_recoveries`` and both failed as orphaned, the harmless one included. A job
    whose next interruption would fail it runs alone in its process, nothing else
    starting beside it: the neighbour ends SUCCESS, the pill alone is orphaned."""
    for _ in range(8):
        code, _out, err = await run_child(tmp_path, PILL_BESIDE_A_NEIGHBOUR, timeout=30)
        if code != -signal.SIGKILL:
            break
    assert code == 0, err
    [neighbour, pill] = await committed_jobs(tmp_path)
    assert (neighbour.status, neighbour.result) == (JobStatus.SUCCESS, "ok"), neighbour
    assert neighbour.recoveries == 3  # it ran beside the pill until its last chance
    assert pill.status is JobStatus.FAILURE and "orphaned" in (pill.error or ""), pill


async def test_a_lone_job_whose_start_changes_no_row_lets_the_others_start(
    tmp_path: Path,
) -> None:
    """A job at its last recovery is taken to run alone, and a client's cancel (a
    process that cannot reach the owner writes the database) commits before its
    start, which then changes no row. Before, nothing ended its turn to run alone:
    no job of the process started again until a stop."""
    path = str(tmp_path / "app.db")

    def make() -> Runtime:
        rt = Runtime(path, max_recoveries=1, poll_interval=5.0)

        @rt.task
        async def work() -> str:
            return "ran"

        return rt

    async with make() as rt:
        rt.pool("default").pause()
        lone = await rt.add("work")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE jobs SET recoveries = 1 WHERE id = ?", (lone,))  # its last chance
    db.close()
    holding, release = threading.Event(), threading.Event()

    def cancel_from_a_client() -> None:
        con = sqlite3.connect(path, timeout=10, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "UPDATE jobs SET status = 'CANCELLED', finished_at = ?, seq = seq + 1, "
            "external = 1 WHERE id = ? AND status = 'WAITING'",
            (time.time(), lone),
        )
        con.execute("UPDATE job_counts SET n = n - 1 WHERE pool = 'default' AND status = 'WAITING'")
        con.execute(
            "INSERT INTO job_counts (pool, status, n) VALUES ('default', 'CANCELLED', 1) "
            "ON CONFLICT (pool, status) DO UPDATE SET n = n + 1"
        )
        holding.set()
        release.wait(5)
        con.execute("COMMIT")
        con.close()

    rt = make()
    rt.pool("default").pause()  # nothing starts until the client holds the lock
    async with rt:
        client = threading.Thread(target=cancel_from_a_client)
        client.start()
        assert await asyncio.to_thread(holding.wait, 5)
        rt.pool("default").resume()  # the lone job is taken; its start waits for the lock
        await until(lambda: rt.alone.running is not None)
        release.set()
        await asyncio.to_thread(client.join)
        after = await rt.add("work")
        assert (await rt.wait(after, timeout=5)).result == "ran"
        assert rt.alone.running is None
