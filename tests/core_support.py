"""Helpers shared by the core behaviour tests (``tests/test_core_*.py``).

Not fixtures: plain functions, imported explicitly, so that ``conftest.py``
stays generic.

**The backend is chosen here, once.** A test builds its runtime with
``make_rt(tmp_path)`` and checks what is committed with
``async with committed(tmp_path) as store:``, a second store on the same
database (what another process sees), read only through the ``JobStore``
operations, as tests/test_store_conformance.py does. ``ENGINE_REGISTRY`` says
how each backend does both; ``ENGINE_BACKEND`` picks the one the tests run on.

What the store does not expose (the lease row, the id sequence, a PRAGMA, the
application's own tables) and what simulates another process, a crash or a
damaged row by writing behind the runtime's back is SQLite-specific by nature:
those go through ``sqlite_only_rows`` / ``sqlite_only_write``, so a second
backend knows exactly which checks it must port or skip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from taskrt import Event, JobInfo, Runtime
from taskrt.store import JobStore, NewJob, Store

T = TypeVar("T")


# -- the backend ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _opened(store: JobStore) -> AsyncIterator[JobStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@dataclass(frozen=True, slots=True)
class EngineBackend:
    """How the engine's tests reach one backend, for a test's ``tmp_path``.

    - ``runtime(where, options)``: a ``Runtime`` (not started) on the backend's
      database for ``where``;
    - ``committed(where)``: a separate, opened ``JobStore`` on that same
      database, closed on exit.

    A backend the ``Runtime`` cannot be built on yet (today it takes a SQLite
    path) needs that first; then it is one more entry of ``ENGINE_REGISTRY``.
    """

    name: str
    runtime: Callable[[Path, dict[str, Any]], Runtime]
    committed: Callable[[Path], AbstractAsyncContextManager[JobStore]]


def new_job(args_json: str = "[]", **fields: Any) -> NewJob:
    """A row to insert straight into a store: task "t" of pool "p", due at 1.0, unless
    ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "task": "t",
        "pool": "p",
        "args_json": args_json,
        "kwargs_json": "{}",
        "max_attempts": 1,
        "priority": 0,
        "metadata_json": "{}",
        "unique_key": None,
        "created_at": 1.0,
        "run_at": 1.0,
        "timeout": None,
        "retry_json": None,
    }
    return NewJob(**(values | fields))


def db_file(tmp_path: Path) -> str:
    """The SQLite file of the test's runtime (SQLite-specific: a path for ``sqlite3``)."""
    return str(tmp_path / "app.db")


ENGINE_REGISTRY: dict[str, EngineBackend] = {
    "sqlite": EngineBackend(
        "sqlite",
        lambda where, options: Runtime(db_file(where), **options),
        lambda where: _opened(Store(db_file(where))),
    ),
}

ENGINE_BACKEND = "sqlite"
"""The backend the engine's behaviour tests run on (a name of ``ENGINE_REGISTRY``)."""


def make_rt(tmp_path: Path, **options: Any) -> Runtime:
    """A runtime on the test's database (today: a real SQLite file under ``tmp_path``)."""
    return ENGINE_REGISTRY[ENGINE_BACKEND].runtime(tmp_path, options)


def committed(tmp_path: Path) -> AbstractAsyncContextManager[JobStore]:
    """``async with committed(tmp_path) as store:`` what is committed, as another process sees it.

    A second store on the runtime's database, opened for the block and closed
    after; read it only through the ``JobStore`` operations.
    """
    return ENGINE_REGISTRY[ENGINE_BACKEND].committed(tmp_path)


def committed_now(tmp_path: Path, read: Callable[[JobStore], Awaitable[T]]) -> T:
    """``read`` what is committed *now*, from synchronous code (a sync hook).

    The read runs on an event loop of its own in another thread and this call
    waits for it, so it sees the database at the moment the caller runs.
    """

    async def go() -> T:
        async with committed(tmp_path) as store:
            return await read(store)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result(timeout=10)


async def all_jobs(store: JobStore) -> list[JobInfo]:
    """Every job the store holds, by id (``list_jobs`` page by page)."""
    out: list[JobInfo] = []
    before: int | None = None
    while page := await store.list_jobs(before_id=before, limit=500):
        out.extend(page)
        before = page[-1].id
    return sorted(out, key=lambda info: info.id)


async def committed_jobs(tmp_path: Path) -> list[JobInfo]:
    """Every committed job, by id, read through a separate store."""
    async with committed(tmp_path) as store:
        return await all_jobs(store)


async def committed_job(tmp_path: Path, job_id: int) -> JobInfo | None:
    """One committed job (``None``: no such row), read through a separate store."""
    async with committed(tmp_path) as store:
        return await store.get_job(job_id)


async def until_committed(
    tmp_path: Path, predicate: Callable[[JobStore], Awaitable[bool]], timeout: float = 5.0
) -> None:
    """Wait until ``predicate(store)`` holds for what is committed; fail after ``timeout``."""
    async with committed(tmp_path) as store, asyncio.timeout(timeout):
        while not await predicate(store):
            await asyncio.sleep(0.001)


# -- SQLite-specific reads and writes ----------------------------------------------------------


def sqlite_only_rows(path: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """SQLite-specific: read the file with a plain sqlite3 connection (what is committed).

    Only for what no ``JobStore`` operation reads: the lease row, the id
    sequence, a PRAGMA, the application's own tables.
    """
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def sqlite_only_write(path: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    """SQLite-specific: change the file behind the runtime's back (another process, a crash)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


# The names tests/test_scheduler.py and tests/test_store_migrations.py import.
rows = sqlite_only_rows
write = sqlite_only_write


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (checked on every loop turn); fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


async def collect(stream: Any, timeout: float = 5.0) -> list[Event]:
    """Every event of a stream that ends (a one-job subscription)."""
    out: list[Event] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            out.append(event)
    return out


class Gate:
    """Counts handlers inside it and holds them until ``open()``."""

    def __init__(self) -> None:
        self.inside = 0
        self.entered = 0
        self.max_inside = 0
        self._open = asyncio.Event()
        self._changed = asyncio.Event()

    async def __call__(self) -> None:
        self.inside += 1
        self.entered += 1
        self.max_inside = max(self.max_inside, self.inside)
        self._changed.set()
        try:
            await self._open.wait()
        finally:
            self.inside -= 1

    async def wait_entered(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.entered < n:
                self._changed.clear()
                await self._changed.wait()

    def open(self) -> None:
        self._open.set()


def reads_of(rt: Runtime, method: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids ``rt.<method>`` (``get``, ``workflow``) read from now on, each once its
    read returned: a test opens a job's gate once a stream's snapshot holds it
    running. Opened sooner, the job may end before the read, and the stream rightly
    ends with the snapshot of a finished job."""
    reads: list[int] = []
    original = getattr(rt, method)

    async def read(ident: int) -> Any:
        info = await original(ident)
        reads.append(ident)
        return info

    monkeypatch.setattr(rt, method, read)
    return reads
