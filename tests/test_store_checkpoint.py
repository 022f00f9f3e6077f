"""WAL checkpoints run in a thread of their own, not in the writer's commits (store note 14).

SQLite-specific by nature: the write-ahead log is a file of SQLite's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path

from core_support import new_job, until

from taskrt.store import NewJob, Store


def job(n: int) -> NewJob:
    return new_job(f"[{n}, {'x' * 200!r}]".replace("'", '"'))


async def test_the_wal_is_checkpointed_while_writes_go_on(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    store = Store(path)
    await store.open()
    wal = Path(path + "-wal")
    try:

        async def rounds(start: int, n: int) -> None:
            for r in range(start, start + n):
                await store.insert([job(r * 500 + i) for i in range(500)])
                await asyncio.sleep(0.02)

        await rounds(0, 1)
        one_round = wal.stat().st_size  # what a round adds to a log never restarted
        await rounds(1, 29)
        await until(lambda: store.checkpoints >= 1, timeout=5)
        await rounds(30, 60)
        await until(lambda: store.checkpoints >= 3, timeout=5)
        # The log is reused from its start after checkpoints instead of growing
        # with every page written: well under what 90 rounds would leave in it.
        # (How soon it starts over depends on when a checkpoint falls between two
        # commits, so the bound is not tighter than that.)
        assert wal.stat().st_size < 0.6 * 90 * one_round
        assert os.path.getsize(path) > 8_000_000  # the rows did reach the database
    finally:
        await store.close()


async def test_a_log_the_checkpoint_caught_up_with_is_started_over_by_the_thread(
    tmp_path: Path,
) -> None:
    """The first commit into a log that starts over syncs the log's header: the
    thread makes that commit itself (a row of ``meta``), not the writer's next
    batch. Then the log holds that commit's page alone, though the writer wrote
    hundreds since the last time it started over; the writer's next commit
    appends to it."""
    path = str(tmp_path / "app.db")
    store = Store(path)
    await store.open()
    try:
        for r in range(20):
            await store.insert([job(r * 100 + i) for i in range(100)])
        await store.flush()
        await until(lambda: store.logs_started_over >= 1, timeout=5)
        with contextlib.closing(sqlite3.connect(path)) as conn:
            busy, pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert busy == 0
            assert 0 < pages <= 3, pages  # the meta row's page (and its index's)
            (at,) = conn.execute("SELECT value FROM meta WHERE key = 'log.started_over'").fetchone()
            assert abs(float(at) - time.time()) < 60
        await store.insert([job(9_999)])
        await store.flush()
        assert await store.count_jobs() == 2_001
    finally:
        await store.close()


async def test_an_idle_store_does_not_checkpoint(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "app.db"))
    await store.open()
    try:
        await store.insert([job(1)])
        await until(lambda: store.checkpoints == 1, timeout=5)
        await asyncio.sleep(0.6)  # three turns of the thread with nothing committed
        assert store.checkpoints == 1
    finally:
        await store.close()


async def test_a_log_that_writes_never_leave_starts_over(tmp_path: Path) -> None:
    """Commits back to back (a drain: a few pages each) leave a PASSIVE checkpoint
    no moment to catch up in, so the log would grow to the writer's own checkpoint
    (10,000 pages) before starting over; once it passes 2,000 pages, the writer
    restarts it between two batches. How far past 2,000 pages it gets depends on
    how soon the checkpoint thread sees it (a look every 50 ms meanwhile) and on
    how fast commits come: 3,400 to 6,300 pages on the project's machines, both
    before and after add_many's rows went in from JSON; without the restart it
    would hold at least the writer's 10,000."""
    path = str(tmp_path / "app.db")
    store = Store(path)
    await store.open()
    frame = 4096 + 24
    try:
        for r in range(3_000):
            await store.insert([job(r * 10 + i) for i in range(10)])
        await store.flush()
        assert store.checkpoints >= 3
        assert os.path.getsize(path + "-wal") < 8_000 * frame
    finally:
        await store.close()
