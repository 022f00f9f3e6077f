"""Small write batches commit on the event loop's thread, and nothing there waits (store note 15).

SQLite-specific by nature: which thread runs a commit is the SQLite store's affair.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from core_support import db_file, until

from taskrt import JobContext, JobStatus, Runtime
from taskrt.store import Store
from taskrt.store.sqlite.checkpoint import WRITER_CHECKPOINT_PAGES
from taskrt.store.sqlite.writer import INLINE_BYTES, INLINE_ROWS


def _runtime(tmp_path: Path, **options: object) -> Runtime:
    rt = Runtime(db_file(tmp_path), **options)  # type: ignore[arg-type]

    @rt.task
    async def echo(job: JobContext, value: str) -> int:
        return len(value)

    return rt


def _store(rt: Runtime) -> Store:
    assert isinstance(rt.store, Store)
    return rt.store


async def _inline_ready(rt: Runtime) -> None:
    """The checkpoint thread has looked at the log: small batches may commit inline."""
    await until(_store(rt)._inline_ok, timeout=5)


class Lag:
    """The longest the event loop went without running a 1 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    def __enter__(self) -> Lag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_small_batches_commit_inline_and_are_stored(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    async with rt:
        await _inline_ready(rt)
        before = _store(rt).inline_commits
        ids = [await rt.add("echo", "x" * n) for n in range(20)]
        for job_id in ids:
            await rt.wait(job_id)
        assert _store(rt).inline_commits > before
    # Committed, not only believed: read back by another connection after a restart.
    again = _runtime(tmp_path)
    async with again:
        for n, job_id in enumerate(ids):
            info = await again.get(job_id)
            assert info is not None
            assert (info.status, info.result) == (JobStatus.SUCCESS, n)


async def test_a_lock_held_by_another_process_is_waited_for_off_the_loop(
    tmp_path: Path,
) -> None:
    rt = _runtime(tmp_path, busy_timeout=5.0)
    async with rt:
        await _inline_ready(rt)
        other = sqlite3.connect(db_file(tmp_path), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with Lag() as lag:
                add = asyncio.create_task(rt.add("echo", "waits"))
                await asyncio.sleep(0.4)
                assert not add.done()  # the add waits for the lock...
            # ...in the connection's thread: the loop went on meanwhile.
            assert lag.worst < 0.2, f"the event loop stalled {lag.worst * 1000:.0f} ms"
        finally:
            other.execute("COMMIT")
            other.close()
        job_id = await add
        info = await rt.wait(job_id)
        assert (info.status, info.result) == (JobStatus.SUCCESS, 5)
        # The next small batch commits inline again.
        before = _store(rt).inline_commits
        await rt.wait(await rt.add("echo", "after"))
        assert _store(rt).inline_commits > before


async def test_large_batches_commit_in_the_connections_thread(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    pool = rt.pool("default")
    pool.pause()
    async with rt:
        await _inline_ready(rt)
        store = _store(rt)
        before = store.inline_commits
        many = await pool.add_many("echo", [("m",)] * (INLINE_ROWS + 1))
        assert store.inline_commits == before  # too many rows
        big = await rt.add("echo", "b" * (INLINE_BYTES + 1))
        assert store.inline_commits == before  # too many bytes
        await rt.add("echo", "small")
        assert store.inline_commits == before + 1
        pool.resume()
        for job_id in [*many, big]:
            await rt.wait(job_id)
        assert (await rt.get(big)).result == INLINE_BYTES + 1  # type: ignore[union-attr]


async def test_synchronous_full_never_commits_inline(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, synchronous="full")
    async with rt:
        await asyncio.sleep(0.3)  # past the checkpoint thread's first look
        ids = [await rt.add("echo", "f") for _ in range(5)]
        for job_id in ids:
            await rt.wait(job_id)
        assert _store(rt).inline_commits == 0


async def test_a_memory_database_never_commits_inline() -> None:
    rt = Runtime(":memory:")

    @rt.task
    async def noop(job: JobContext) -> None:
        return None

    async with rt:
        await rt.wait(await rt.add("noop"))
        assert _store(rt).inline_commits == 0


async def test_a_long_log_sends_batches_to_the_connections_thread(tmp_path: Path) -> None:
    # A commit past the writer's own checkpoint bound would copy pages on the loop's
    # thread: while the checkpoint thread last saw a log that long, none commits there.
    rt = _runtime(tmp_path)
    async with rt:
        await _inline_ready(rt)
        checkpoints = _store(rt)._checkpoints
        assert checkpoints is not None
        checkpoints._stop.set()  # no new reading replaces the one below
        await asyncio.to_thread(checkpoints.stop)
        checkpoints.log_pages = WRITER_CHECKPOINT_PAGES // 2
        before = _store(rt).inline_commits
        await rt.wait(await rt.add("echo", "long"))
        assert _store(rt).inline_commits == before
        checkpoints.log_pages = WRITER_CHECKPOINT_PAGES // 2 - 1
        await rt.wait(await rt.add("echo", "short"))
        assert _store(rt).inline_commits > before


async def test_a_cancelled_transaction_holds_the_writes_lock_until_its_thread_has_run_it(
    tmp_path: Path,
) -> None:
    """A transaction of its own (``_in_transaction``: the workflows' sweep, a cancel)
    whose caller is cancelled while the connection's thread runs it: the caller ends
    only once the thread has run it, and what follows it (its counts) is done, so no
    batch of the group commit commits beside it. (A workflows sweep cancelled at
    stop ran after the lock was let go, and released a chain's child added later.)"""
    async with _runtime(tmp_path) as rt:
        store = _store(rt)
        ran: list[str] = []

        def work(conn: sqlite3.Connection, counted: object) -> str:
            time.sleep(0.3)
            ran.append("work")
            return "done"

        task = asyncio.ensure_future(store._in_transaction(work))
        await asyncio.sleep(0.05)
        assert store._writes.lock.locked() and not ran
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ran == ["work"]  # run before its caller ended
        assert not store._writes.lock.locked()

        then: list[str] = []
        locked = asyncio.ensure_future(
            store._locked(lambda conn: time.sleep(0.2) or "done", then.append)
        )
        await asyncio.sleep(0.05)
        locked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await locked
        assert then == ["done"]
        # The store writes on as before.
        job = await rt.add("echo", "abc")
        assert (await rt.wait(job, timeout=10)).result == 3
