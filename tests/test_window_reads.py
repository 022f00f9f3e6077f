"""How a pool's waiting window is read from a SQLite file (``taskrt.waiting`` note 6,
store note 18): a restart starts its first jobs before its whole first window is
read, and a read that cannot be made on the loop's thread is made in the reader's
thread instead, with the same jobs in the same order.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from core_support import until

from taskrt import JobContext, Runtime, StoreError, waiting
from taskrt.store import Store

CHUNK = 20  # rows a refill reads at a time in these tests
BACKLOG = 40 * CHUNK


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "READ_CHUNK", CHUNK)


async def backlog(path: Path, n: int) -> list[int]:
    """``n`` jobs of task ``work`` (pool "p"), added by a client that runs no jobs."""
    client = Runtime(str(path), workers=False)

    @client.task(pool="p")
    async def work(job: JobContext, i: int) -> None:
        raise AssertionError("a client runs no job")

    async with client:
        return await client.pool("p").add_many("work", [(i,) for i in range(n)])


async def test_a_restart_runs_jobs_before_its_whole_first_window_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.db"
    ids = await backlog(path, BACKLOG)
    read = Store.window_query

    async def slow_read(store: Store, sql: str, params: Any = ()) -> Any:
        await asyncio.sleep(0.01)  # the first window takes 40 reads or more: 0.4 s
        return await read(store, sql, params)

    monkeypatch.setattr(Store, "window_query", slow_read)
    rt = Runtime(str(path))
    held: list[int] = []  # jobs in memory when the first job started
    ran: list[int] = []

    @rt.task(pool="p")
    async def work(job: JobContext, i: int) -> None:
        if not held:
            held.append(len(rt.pool("p").queue))
        ran.append(job.id)

    rt.pool("p", concurrency=1)
    async with rt:
        await until(lambda: len(ran) == BACKLOG, timeout=20)
    # 40 chunks to read: the first job ran before the last came in (when a start read
    # its whole first window first, BACKLOG - 1 were held).
    assert held[0] < BACKLOG - CHUNK
    assert ran == ids  # in run order, each once


class _Refusing:
    """Stands for the window's connection: every read refused as a locked database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.tries = 0

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Any = ()) -> Any:
        self.tries += 1
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
        raise error


async def test_a_window_read_that_would_wait_goes_to_the_readers_thread(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    ids = await backlog(path, 3 * CHUNK)
    rt = Runtime(str(path), window=2 * CHUNK)
    ran: list[int] = []

    @rt.task(pool="p")
    async def work(job: JobContext, i: int) -> None:
        ran.append(job.id)

    rt.pool("p", concurrency=2).pause()
    async with rt:
        refusing = _Refusing(rt.store._window)  # type: ignore[attr-defined]
        rt.store._window = refusing  # type: ignore[attr-defined]
        rt.pool("p").resume()
        await until(lambda: len(ran) == len(ids))
    assert refusing.tries > 0  # it was asked first: the refills after the start
    assert sorted(ran) == ids


async def test_a_window_read_the_file_refuses_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    await backlog(path, 1)
    rt = Runtime(str(path))
    rt.pool("p").pause()
    async with rt:
        with pytest.raises(StoreError, match=r"read from .* failed: no such table"):
            await rt.store.window_query("SELECT * FROM no_such_table")  # type: ignore[attr-defined]


async def test_a_stop_while_the_first_window_is_read_waits_for_the_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, a stop closed the store under the refill still reading: the read
    failed ("Cannot operate on a closed database", a WARNING) or its task died with
    aiosqlite's ValueError, never retrieved."""
    path = tmp_path / "app.db"
    ids = await backlog(path, BACKLOG)
    unhandled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: unhandled.append(ctx))
    rt = Runtime(str(path))
    rt.pool("p", concurrency=1)

    @rt.task(pool="p")
    async def work(job: JobContext, i: int) -> None:
        pass

    caplog.set_level("WARNING", logger="taskrt")
    await rt.start()
    try:
        waiting_jobs = rt.pool("p").queue
        assert isinstance(waiting_jobs, waiting.Waiting) and waiting_jobs.refilling
    finally:
        await rt.stop()
    await asyncio.sleep(0.2)
    gc.collect()  # a task that died with an error nobody took says so when collected
    assert [r.getMessage() for r in caplog.records] == []
    assert unhandled == []
    async with Runtime(str(path), workers=False) as client:  # every job still there
        assert await client.count() == len(ids)
