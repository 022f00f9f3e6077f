"""``Transaction``: the application's write transaction, with jobs added in it.

``async with rt.transaction() as tx:`` runs the application's own SQL and
``add(..., tx=tx)`` in one transaction of the store: both commit or neither
does, and workers see the jobs only after the commit. On PostgreSQL,
``add(..., tx=connection)`` also takes the application's own asyncpg
connection (or SQLAlchemy's ``AsyncConnection``) in its open transaction
(``JobStore.adopt_transaction``): the jobs exist if and only if it commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
