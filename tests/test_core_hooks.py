"""Per-task hooks, on_failed inside the failure transaction, and transactional enqueue."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from core_support import (
    Gate,
    committed_job,
    committed_jobs,
    committed_now,
    db_file,
    make_rt,
    sqlite_only_rows,
    until,
)

from taskrt import (
    EventType,
    InvalidOption,
    JobContext,
    JobInfo,
    JobNotFound,
    JobStatus,
    QueueFull,
    Runtime,
    Transaction,
)
from taskrt.background import Background


async def test_hooks_fire_with_their_arguments(tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    rt = make_rt(tmp_path)

    def on_add(job_id: int) -> None:
        # The job is durable when on_add runs (read from this sync hook, at once).
        stored = committed_now(tmp_path, lambda store: store.get_job(job_id))
        calls.append(("add", job_id, stored is not None and stored.id == job_id))

    async def on_success(job_id: int, result: Any) -> None:
        await asyncio.sleep(0)
        calls.append(("success", job_id, result))

    @rt.task(
        attempts=3,
        retry=0,
        on_add=on_add,
        on_success=on_success,
        on_error=lambda i, e: calls.append(("error", i, e)),
        on_progress=lambda i, c, t, m: calls.append(("progress", i, c, t, m)),
    )
    async def resize(job: JobContext, fail_first: bool) -> dict[str, int]:
        await job.progress(1, 3, "loading")
        if fail_first and job.attempt == 1:
            raise RuntimeError("flaky")
        await job.progress(3, 3, "saved")
        return {"width": 640}

    async with rt:
        job_id = await rt.pool("default").add(resize, True)
        await rt.wait(job_id, timeout=5)
        await until(lambda: any(c[0] == "success" for c in calls))
    assert calls == [
        ("add", job_id, True),
        ("progress", job_id, 1, 3, "loading"),
        ("progress", job_id, 1, 3, "loading"),
        ("progress", job_id, 3, 3, "saved"),
        ("success", job_id, {"width": 640}),
    ]


async def test_hook_that_raises_is_logged_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = make_rt(tmp_path)

    def explode(*args: Any) -> None:
        raise RuntimeError("hook bug")

    async def explode_later(*args: Any) -> None:
        raise RuntimeError("async hook bug")

    @rt.task(on_add=explode, on_progress=explode, on_success=explode_later)
    async def fine(job: JobContext, n: int) -> int:
        await job.progress(1, 1)
        return n

    def failures(text: str) -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.exc_info and r.exc_info[1] is not None and str(r.exc_info[1]) == text
        ]

    with caplog.at_level(logging.ERROR, logger="taskrt"):
        async with rt:
            ids = [await rt.pool("default").add(fine, n) for n in range(3)]
            results = [(await rt.wait(i, timeout=5)).result for i in ids]
            await until(lambda: len(failures("async hook bug")) == 3)
    assert results == [0, 1, 2]
    assert len(failures("hook bug")) == 6  # on_add and on_progress, three jobs each
    assert [j.status for j in await committed_jobs(tmp_path)] == [JobStatus.SUCCESS] * 3


def _raise(kind: str) -> None:
    """Raise what a hook of the tests below raises, by name."""
    if kind == "SystemExit":
        raise SystemExit(2)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt("in a hook")
    if kind == "GeneratorExit":
        raise GeneratorExit
    if kind == "CancelledError":
        raise asyncio.CancelledError
    raise StopIteration


async def test_a_hook_that_raises_what_is_no_exception_is_logged_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """on_add, on_progress, on_success and on_error, async or sync, raising SystemExit,
    KeyboardInterrupt, GeneratorExit or a CancelledError of their own: logged, the
    jobs end as their handlers say, the runtime goes on. Before, an async hook's
    KeyboardInterrupt or SystemExit stopped the process; a sync on_progress's failed
    the attempt, and a sync on_success's or on_error's was logged as a fault in
    ending the attempt, the job's end cut short."""
    rt = make_rt(tmp_path)
    kinds = ["CancelledError", "GeneratorExit", "KeyboardInterrupt", "SystemExit"]
    tasks = []
    for kind, sync in [(k, s) for k in kinds for s in (False, True)]:

        def hook(*args: Any, kind: str = kind) -> None:
            _raise(kind)

        async def hook_async(*args: Any, kind: str = kind) -> None:
            await asyncio.sleep(0)
            _raise(kind)

        async def handler(job: JobContext, fail: bool) -> str:
            await job.progress(1, 1)
            if fail:
                raise RuntimeError("no luck")
            return "ok"

        each = hook if sync else hook_async
        name = f"{kind}_{'sync' if sync else 'async'}"
        hooks = {"on_add": each, "on_progress": each, "on_success": each, "on_error": each}
        tasks.append(rt.task(name=name, attempts=1, **hooks)(handler))

    def raised() -> list[str]:
        return [
            type(r.exc_info[1]).__name__
            for r in caplog.records
            if r.getMessage().startswith("hook ") and r.exc_info and r.exc_info[1] is not None
        ]

    with caplog.at_level(logging.ERROR, logger="taskrt"):
        async with rt:
            pool = rt.pool("default")
            ids = [(await pool.add(task, False), await pool.add(task, True)) for task in tasks]
            ended = [
                ((await rt.wait(ok, timeout=5)).status, (await rt.wait(bad, timeout=5)).status)
                for ok, bad in ids
            ]
            await until(lambda: len(raised()) == 3 * 2 * len(tasks))  # add, progress, end
            assert (await rt.wait(await pool.add(tasks[0], False), timeout=5)).result == "ok"
    assert ended == [(JobStatus.SUCCESS, JobStatus.FAILURE)] * len(tasks)
    assert sorted(set(raised())) == sorted(kinds)
    assert "could not be ended" not in caplog.text


async def test_a_cancel_of_a_hooks_task_is_no_failure_of_the_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook's own CancelledError is its failure (above); a cancel of the task it runs
    in (the tasks cancelled once the loop ends) goes on, the hook not said to raise."""
    background = Background()
    entered = asyncio.Event()

    async def on_success(job_id: int, result: Any) -> None:
        entered.set()
        await asyncio.sleep(30)

    with caplog.at_level(logging.ERROR, logger="taskrt"):
        background.hook(on_success, 1, None)
        [task] = background.tasks
        await entered.wait()
        task.cancel()
        await asyncio.wait([task])
    assert task.cancelled()
    assert "raised" not in caplog.text


def _doomed_and_fine(rt: Any, on_failed: Any) -> tuple[Any, Any]:
    """A task that fails for good with ``on_failed``, and one that succeeds."""

    @rt.task(attempts=1, on_failed=on_failed)
    async def doomed(job: JobContext) -> None:
        raise RuntimeError("no luck")

    @rt.task
    async def fine(job: JobContext) -> str:
        return "ok"

    return doomed, fine


async def _make_audit(rt: Any) -> None:
    async with rt.transaction() as tx:
        await tx.execute("CREATE TABLE audit (job_id INTEGER, note TEXT)")


async def test_on_failed_writes_commit_atomically_with_the_failure(tmp_path: Path) -> None:
    path = db_file(tmp_path)
    rt = make_rt(tmp_path)
    seen: list[JobInfo] = []

    async def on_failed(job: JobInfo, tx: Transaction) -> None:
        seen.append(job)
        # Not yet committed: another connection sees neither the failure nor the row.
        stored = await committed_job(tmp_path, job.id)
        assert stored is not None and stored.status is JobStatus.RUNNING
        await tx.execute("INSERT INTO audit VALUES (?, ?)", (job.id, f"failed: {job.error}"))
        # SQLite-specific: the application's own table.
        assert sqlite_only_rows(path, "SELECT count(*) FROM audit") == [(0,)]

    @rt.task(attempts=1, on_failed=on_failed)
    async def doomed(job: JobContext) -> None:
        raise RuntimeError("no luck")

    async with rt:
        await _make_audit(rt)
        job_id = await rt.pool("default").add(doomed)
        async with rt.subscribe(job_id) as stream:
            async for event in stream:
                if event.type is EventType.FAILURE:
                    # When the failure is announced, both are committed.
                    stored = await committed_job(tmp_path, job_id)
                    assert stored is not None and stored.status is JobStatus.FAILURE
                    # SQLite-specific: the application's own table.
                    assert sqlite_only_rows(path, "SELECT * FROM audit") == [
                        (job_id, "failed: RuntimeError: no luck")
                    ]
        info = await rt.get(job_id)
    assert [(j.id, j.status, j.error) for j in seen] == [
        (job_id, JobStatus.FAILURE, "RuntimeError: no luck")
    ]
    assert info.status is JobStatus.FAILURE


async def test_on_failed_that_raises_rolls_back_its_writes_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = db_file(tmp_path)
    rt = make_rt(tmp_path)

    async def on_failed(job: JobInfo, tx: Transaction) -> None:
        await tx.execute("INSERT INTO audit VALUES (?, 'half-written')", (job.id,))
        raise RuntimeError("hook crashed")

    doomed, fine = _doomed_and_fine(rt, on_failed)

    with caplog.at_level(logging.ERROR, logger="taskrt"):
        async with rt:
            await _make_audit(rt)
            job_id = await rt.pool("default").add(doomed)
            info = await rt.wait(job_id, timeout=5)
            assert (info.status, info.error) == (JobStatus.FAILURE, "RuntimeError: no luck")
            # The runtime goes on.
            assert (await rt.wait(await rt.pool("default").add(fine), timeout=5)).result == "ok"
    assert "hook crashed" in caplog.text
    # SQLite-specific: the application's own table.
    assert sqlite_only_rows(path, "SELECT count(*) FROM audit") == [(0,)]
    stored = await committed_job(tmp_path, job_id)
    assert stored is not None
    assert (stored.status, stored.error) == (JobStatus.FAILURE, "RuntimeError: no luck")


async def test_an_on_failed_hook_that_raises_what_is_no_exception_still_records_the_failure(
    target: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever an on_failed hook raises, its writes are undone and the failure is
    recorded. Before, a CancelledError or a GeneratorExit (async or sync) left the
    row RUNNING (on PostgreSQL nodes, WAITING after the stop: the job ran again)
    while reads said FAILURE; a sync hook's GeneratorExit closed the transaction's
    coroutines under it, and a KeyboardInterrupt or SystemExit stopped the process."""
    db, options = target
    rt = Runtime(db, **options)
    rt.pool("default", concurrency=1)
    kinds = ["CancelledError", "GeneratorExit", "KeyboardInterrupt", "SystemExit"]
    cases = [(k, False) for k in kinds] + [(k, True) for k in [*kinds, "StopIteration"]]
    tasks = []
    for kind, sync in cases:

        def on_failed(job: JobInfo, tx: Any, kind: str = kind) -> None:
            tx.execute("INSERT INTO audit VALUES (1, 'half-written')")
            _raise(kind)

        async def on_failed_async(job: JobInfo, tx: Transaction, kind: str = kind) -> None:
            await tx.execute("INSERT INTO audit VALUES (1, 'half-written')")
            _raise(kind)

        async def doomed(job: JobContext) -> None:
            raise RuntimeError("no luck")

        name = f"{kind}_{'sync' if sync else 'async'}"
        hook = on_failed if sync else on_failed_async
        tasks.append(rt.task(name=name, attempts=1, on_failed=hook)(doomed))

    @rt.task
    async def fine(job: JobContext) -> str:
        return "ok"

    with caplog.at_level(logging.ERROR, logger="taskrt"):
        async with rt:
            await _make_audit(rt)
            ids = [await rt.pool("default").add(task) for task in tasks]
            for job_id in ids:
                info = await rt.wait(job_id, timeout=5)
                assert (info.status, info.error) == (JobStatus.FAILURE, "RuntimeError: no luck")
            assert (await rt.wait(await rt.pool("default").add(fine), timeout=5)).result == "ok"
    raised = {r.getMessage() for r in caplog.records if "on_failed hook" in r.getMessage()}
    assert raised == {f"the on_failed hook of job {i} raised" for i in ids}
    async with Runtime(db, **options) as again:  # what is stored, after the stop
        stored = [await again.get(i) for i in ids]
        async with again.transaction() as tx:
            audit = await tx.execute("SELECT count(*) FROM audit")
    assert {(j.status, j.error) for j in stored} == {(JobStatus.FAILURE, "RuntimeError: no luck")}
    assert [tuple(row) for row in audit] == [(0,)]


async def test_a_retry_while_the_on_failed_hook_runs_waits_for_the_failure_to_commit(
    target: tuple[str, dict[str, Any]],
) -> None:
    """Reads say FAILURE while the hook runs in the failure's transaction, so a retry
    then is taken: it waits for that transaction to commit, then the job runs again.
    Before, on PostgreSQL the retry was refused (a node: "it is RUNNING", the row
    as it was until that commit), or put the job back WAITING in memory only (an
    owner: it never ran again)."""
    db, options = target
    rt = Runtime(db, **options)
    in_hook, release = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    async def on_failed(job: JobInfo, tx: Transaction) -> None:
        await tx.execute("INSERT INTO audit VALUES (1, 'failed')")
        in_hook.set()
        await release.wait()

    @rt.task(attempts=1, on_failed=on_failed)
    async def flaky(job: JobContext) -> str:
        runs.append(job.id)
        if len(runs) == 1:
            raise RuntimeError("no luck")
        return "ok"

    async with rt:
        await _make_audit(rt)
        job_id = await rt.add(flaky)
        await in_hook.wait()
        assert (await rt.get(job_id)).status is JobStatus.FAILURE
        retry = asyncio.create_task(rt.retry(job_id))
        await asyncio.wait([retry], timeout=0.2)
        assert not retry.done()  # it waits for the failure's commit
        release.set()
        assert (await retry).status in (JobStatus.WAITING, JobStatus.RUNNING)
        done = await rt.wait(job_id, timeout=10)
        assert (done.status, done.result, done.attempts) == (JobStatus.SUCCESS, "ok", 2)
        assert runs == [job_id, job_id]
        async with rt.transaction() as tx:
            audit = await tx.execute("SELECT count(*) FROM audit")
        assert [tuple(row) for row in audit] == [(1,)]  # the hook's write, committed once


async def test_on_failed_adds_a_job_with_the_failed_jobs_unique_key(tmp_path: Path) -> None:
    """The key is held only while its job is WAITING or RUNNING: the hook, in the
    failure's transaction, may add the job's replacement under the same key. The
    key stayed in memory until the hook's transaction committed, so the add was
    answered with the failed job's own id (or ``DuplicateJob``), and nothing stored."""
    rt = make_rt(tmp_path)
    replaced: list[int] = []

    async def on_failed(job: JobInfo, tx: Transaction) -> None:
        again = retry_once.options(unique_key="report:7", on_conflict="raise")
        replaced.append(await rt.pool("default").add(again, tx=tx))

    @rt.task(attempts=1, on_failed=on_failed)
    async def retry_once(job: JobContext) -> str:
        if not replaced:
            raise RuntimeError("first try")
        return "second"

    async with rt:
        job_id = await rt.pool("default").add(retry_once.options(unique_key="report:7"))
        assert (await rt.wait(job_id, timeout=5)).status is JobStatus.FAILURE
        await until(lambda: bool(replaced))
        assert replaced[0] != job_id
        info = await rt.wait(replaced[0], timeout=5)
        assert (info.status, info.result, info.unique_key) == (
            JobStatus.SUCCESS,
            "second",
            "report:7",
        )
    stored = await committed_jobs(tmp_path)
    assert sorted(j.id for j in stored) == sorted([job_id, replaced[0]])


async def test_on_failed_runs_once_after_the_last_attempt(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    failed: list[int] = []

    def on_failed(job: JobInfo, tx: Transaction) -> None:
        failed.append(job.attempts)

    @rt.task(attempts=3, retry=0, on_failed=on_failed)
    async def doomed(job: JobContext) -> None:
        raise RuntimeError("again")

    async with rt:
        info = await rt.wait(await rt.pool("default").add(doomed), timeout=5)
    assert (info.status, info.attempts) == (JobStatus.FAILURE, 3)
    assert failed == [3]


# -- transactional enqueue ---------------------------------------------------------------------


async def test_transactional_enqueue_commits_both(tmp_path: Path) -> None:
    path = db_file(tmp_path)
    rt = make_rt(tmp_path)
    ran: list[int] = []
    added: list[int] = []

    @rt.task(on_add=added.append)
    async def welcome(job: JobContext, user_id: int) -> int:
        ran.append(user_id)
        return user_id

    async with rt:
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        pool = rt.pool("default")
        async with rt.transaction() as tx:
            await tx.execute("INSERT INTO users VALUES (42, 'ada')")
            job_id = await pool.add(welcome, 42, tx=tx)
            # The transaction itself sees its job.
            assert [tuple(r) for r in await tx.execute("SELECT id FROM jobs")] == [(job_id,)]
            for _ in range(20):
                await asyncio.sleep(0)
            # Not committed: no worker has it, no other connection sees it.
            assert ran == [] and added == []
            assert pool.statistics().waiting == 0 and pool.statistics().running == 0
            assert await committed_jobs(tmp_path) == []
            # SQLite-specific: the application's own table.
            assert sqlite_only_rows(path, "SELECT count(*) FROM users") == [(0,)]
        assert sqlite_only_rows(path, "SELECT id FROM users") == [(42,)]
        assert [(j.id, j.task) for j in await committed_jobs(tmp_path)] == [(job_id, "welcome")]
        info = await rt.wait(job_id, timeout=5)
    assert (info.status, info.result) == (JobStatus.SUCCESS, 42)
    assert ran == [42] and added == [job_id]


async def test_transactional_enqueue_rolls_back_both(tmp_path: Path) -> None:
    path = db_file(tmp_path)
    rt = make_rt(tmp_path)
    ran: list[int] = []

    @rt.task
    async def welcome(job: JobContext, user_id: int) -> None:
        ran.append(user_id)

    async with rt:
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        pool = rt.pool("default")
        with pytest.raises(RuntimeError, match="signup failed"):
            async with rt.transaction() as tx:
                await tx.execute("INSERT INTO users VALUES (7, 'bob')")
                job_ids = await pool.add_many(welcome, [(7,), (8,)], tx=tx)
                raise RuntimeError("signup failed")
        for job_id in job_ids:
            with pytest.raises(JobNotFound):
                await rt.get(job_id)
        # SQLite-specific: the application's own table.
        assert sqlite_only_rows(path, "SELECT count(*) FROM users") == [(0,)]
        assert await committed_jobs(tmp_path) == []
        assert pool.statistics().waiting == 0
        # The runtime goes on: plain adds still work and nothing from the
        # rolled-back transaction ever runs.
        other = await pool.add(welcome, 9)
        await rt.wait(other, timeout=5)
    assert ran == [9]


async def test_a_transaction_cancelled_anywhere_leaves_the_runtime_writing(
    target: tuple[str, dict[str, Any]],
) -> None:
    """An ``rt.transaction()`` block cancelled at any point (a timeout, a client that
    went away, a stop) raises the cancel and leaves no transaction open: the jobs
    added after it run, and so does a job added in a block cancelled as its COMMIT
    was on its way (committed all the same: store note 24). Before, on SQLite, a
    BEGIN that ran after its caller was cancelled stayed open: every later write
    failed ("cannot start a transaction within a transaction"), and the stop gave
    up on the jobs' final states; a COMMIT under way went through, and its jobs
    were never taken in."""
    db, options = target
    rt = Runtime(db, **options)
    rt.pool("default", concurrency=2)

    @rt.task
    async def echo(job: JobContext, n: int) -> int:
        return n

    async def block(n: int, inside: asyncio.Event, added: list[int]) -> None:
        async with rt.transaction() as tx:
            added.append(await rt.pool("default").add(echo, n, tx=tx))
            inside.set()

    async with rt:
        handed: list[int] = []
        turns = 0
        while True:  # the first cancels reach its BEGIN on its way, the later ones further on
            task = asyncio.create_task(block(turns, asyncio.Event(), handed))
            for _ in range(turns):
                await asyncio.sleep(0)
            if not task.cancel():
                break
            with pytest.raises(asyncio.CancelledError):
                await task
            turns += 1
            assert turns < 1000, "the transaction never ended"
        inside, at_commit = asyncio.Event(), []
        task = asyncio.create_task(block(-1, inside, at_commit))
        await inside.wait()
        assert task.cancel()  # its block is over: its COMMIT is on its way
        with pytest.raises(asyncio.CancelledError):
            await task
        later = await rt.pool("default").add(echo, 1000)
        assert (await rt.wait(later, timeout=5)).result == 1000
        [committed] = at_commit
        assert (await rt.wait(committed, timeout=5)).result == -1
        for job_id in handed:  # each one that committed runs
            try:
                info = await rt.wait(job_id, timeout=5)
            except JobNotFound:
                continue
            assert info.status is JobStatus.SUCCESS
    async with Runtime(db, **options) as again:  # the stop wrote every end
        assert (await again.get(later)).status is JobStatus.SUCCESS
        assert (await again.get(committed)).status is JobStatus.SUCCESS


async def test_jobs_added_in_a_transaction_respect_the_pool(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("two", concurrency=2)
    gate = Gate()

    @rt.task(pool="two")
    async def held(job: JobContext) -> None:
        await gate()

    async with rt:
        async with rt.transaction() as tx:
            ids = await pool.add_many(held, [()] * 5, tx=tx)
        await gate.wait_entered(2)
        assert (pool.statistics().running, pool.statistics().waiting) == (2, 3)
        gate.open()
        assert [(await rt.wait(i, timeout=5)).status for i in ids] == [JobStatus.SUCCESS] * 5


async def test_capacity_counts_jobs_added_in_the_open_transaction(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("small", capacity=2)
    pool.pause()

    @rt.task(pool="small")
    async def noop(job: JobContext) -> None:
        return None

    async with rt:
        with pytest.raises(QueueFull):
            async with rt.transaction() as tx:
                await pool.add(noop, tx=tx)
                await pool.add(noop, tx=tx)
                await pool.add(noop, tx=tx)
        assert await committed_jobs(tmp_path) == []
        async with rt.transaction() as tx:
            await pool.add_many(noop, [(), ()], tx=tx)
        assert pool.statistics().waiting == 2
        with pytest.raises(QueueFull):
            await pool.add(noop)


async def test_an_on_failed_hook_that_hangs_is_cut_at_hook_timeout_and_its_writes_undone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the failure's transaction waited for the hook for ever; on SQLite every
    # other write (an add) waited with it, and the runtime's stop never returned.
    path = db_file(tmp_path)
    rt = make_rt(tmp_path, hook_timeout=0.3)

    async def on_failed(job: JobInfo, tx: Transaction) -> None:
        await tx.execute("INSERT INTO audit VALUES (?, 'hanging')", (job.id,))
        await asyncio.sleep(1000)  # a call to a service that never answers

    doomed, fine = _doomed_and_fine(rt, on_failed)

    with caplog.at_level(logging.ERROR, logger="taskrt"):
        async with rt:
            await _make_audit(rt)
            job_id = await rt.pool("default").add(doomed)
            await until(lambda: rt.pool("default").failed == 1)
            begun = time.monotonic()
            other = await rt.pool("default").add(fine)  # waits for the hook at most
            assert (await rt.wait(other, timeout=5)).result == "ok"
            assert (await rt.wait(job_id, timeout=5)).status is JobStatus.FAILURE
            assert time.monotonic() - begun < 2
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 2
    assert "hook_timeout" in caplog.text
    assert sqlite_only_rows(path, "SELECT count(*) FROM audit") == [(0,)]
    stored = await committed_job(tmp_path, job_id)
    assert stored is not None and stored.status is JobStatus.FAILURE


async def test_a_sync_on_failed_hook_runs_in_a_thread_and_writes_with_the_failure(
    tmp_path: Path,
) -> None:
    # Before: a sync hook ran on the event loop's thread and its tx.execute returned a
    # coroutine never awaited, so nothing was written.
    path = db_file(tmp_path)
    rt = make_rt(tmp_path)
    threads: list[bool] = []

    def on_failed(job: JobInfo, tx: Any) -> None:
        threads.append(threading.current_thread() is threading.main_thread())
        tx.execute("INSERT INTO audit VALUES (?, ?)", (job.id, f"failed: {job.error}"))
        tx.executemany("INSERT INTO audit VALUES (?, ?)", [(job.id + 100, "more")])

    @rt.task(attempts=1, on_failed=on_failed)
    async def doomed(job: JobContext) -> None:
        raise RuntimeError("no luck")

    async with rt:
        await _make_audit(rt)
        job_id = await rt.pool("default").add(doomed)
        assert (await rt.wait(job_id, timeout=5)).status is JobStatus.FAILURE
        await rt.store.flush()
    assert threads == [False]
    assert sqlite_only_rows(path, "SELECT * FROM audit ORDER BY job_id") == [
        (job_id, "failed: RuntimeError: no luck"),
        (job_id + 100, "more"),
    ]


async def test_a_sync_on_failed_hook_past_its_time_can_write_nothing_more(
    tmp_path: Path,
) -> None:
    path = db_file(tmp_path)
    rt = make_rt(tmp_path, hook_timeout=0.2)
    late: list[BaseException] = []
    returned = threading.Event()

    def on_failed(job: JobInfo, tx: Any) -> None:
        tx.execute("INSERT INTO audit VALUES (?, 'in time')", (job.id,))
        time.sleep(0.5)  # a thread cannot be stopped: it runs past its time
        try:
            tx.execute("INSERT INTO audit VALUES (?, 'late')", (job.id + 1,))
        except RuntimeError as exc:
            late.append(exc)
        returned.set()

    @rt.task(attempts=1, on_failed=on_failed)
    async def doomed(job: JobContext) -> None:
        raise RuntimeError("no luck")

    async with rt:
        await _make_audit(rt)
        job_id = await rt.pool("default").add(doomed)
        assert (await rt.wait(job_id, timeout=5)).status is JobStatus.FAILURE
        await asyncio.to_thread(returned.wait, 5)
    assert [str(e) for e in late] == ["the on_failed hook's transaction has ended"]
    assert sqlite_only_rows(path, "SELECT count(*) FROM audit") == [(0,)]


def test_hook_timeout_is_checked() -> None:
    for bad in (0, -1, float("nan"), "10", True, 7200):
        with pytest.raises(InvalidOption) as caught:
            Runtime(":memory:", hook_timeout=bad)  # type: ignore[arg-type]
        assert caught.value.field == "hook_timeout"
