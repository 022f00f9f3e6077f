"""``Transaction``: the application's write transaction, with jobs added in it.

``async with rt.transaction() as tx:`` runs the application's own SQL and
``add(..., tx=tx)`` in one transaction of the store: both commit or neither
does, and workers see the jobs only after the commit. On PostgreSQL,
``add(..., tx=connection)`` also takes the application's own asyncpg
connection (or SQLAlchemy's ``AsyncConnection``) in its open transaction
(``JobStore.adopt_transaction``): the jobs exist if and only if it commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from .context import JobState
from .store import StoreTransaction


class Transaction:
    """The application's write transaction: run SQL, and add jobs with ``tx=tx``.

    Both commit or neither does; workers see the jobs after the commit.
    """

    def __init__(self, conn: StoreTransaction, *, foreign: bool = False) -> None:
        self._conn = conn
        # Jobs added in this transaction: taken in (queued, announced) after the commit.
        self.added: list[JobState] = []
        # The application's own transaction (``add(..., tx=connection)``): taskrt
        # does not see it commit, so its jobs are the owner's to find (``external``).
        self.foreign = foreign

    @property
    def connection(self) -> StoreTransaction:
        """The store's handle on this transaction (taskrt's own services write through it)."""
        return self._conn

    @property
    def driver(self) -> Any:
        """The database driver's connection of this transaction: ``aiosqlite.Connection``
        on SQLite, ``asyncpg.Connection`` on PostgreSQL (SQL in its own dialect)."""
        return self._conn.driver

    async def execute(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._conn.execute(statement, params)

    async def executemany(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(statement, params)


class ThreadTransaction:
    """The ``Transaction`` a sync ``on_failed`` hook gets in its worker thread: each
    statement runs on the event loop, in the transaction, while the thread waits.

    Usable only while the hook runs: once it returned or ran out of time, a
    statement raises ``RuntimeError`` and touches nothing (``close``).
    """

    def __init__(self, tx: Transaction, loop: asyncio.AbstractEventLoop) -> None:
        self._tx = tx
        self._loop = loop
        self._closed = False
        self._running: set[asyncio.Task[Any]] = set()

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        result: list[Any] = self._call(lambda: self._tx.execute(statement, params))
        return result

    def executemany(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        rows = list(params)  # read in this thread, not on the loop
        self._call(lambda: self._tx.executemany(statement, rows))

    def _call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        if self._closed:
            raise RuntimeError("the on_failed hook's transaction has ended")

        async def run() -> Any:
            if self._closed:  # closed while this waited for the loop
                raise RuntimeError("the on_failed hook's transaction has ended")
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                return await make()
            finally:
                self._running.discard(task)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    async def close(self) -> None:
        """No statement after this; one under way ends first (the transaction's
        connection is then the caller's alone)."""
        self._closed = True
        if self._running:
            await asyncio.wait(list(self._running))
