"""A node's claim connections: a few connections held open and lent at once.

A claim is one statement on a connection of the node's claims (store notes 9
and 10), and a drain is a chain of claims: the pool's slots wait for each
one. asyncpg's pool lends a connection through a task-safe acquire (with its
timeout) and takes it back through a release shielded in a task of its own,
so each claim paid a few turns of the event loop beyond its round trip: about
0.1 ms of a 0.25 ms ``SELECT 1`` where the loop is idle, more where it is busy
with the jobs' ends. Here an idle connection is lent by popping it from a
list and given back by pushing it there, in the same turn as the statement's
reply.

Design notes:

1. **At most ``size`` connections**, opened when a statement finds none idle
   (the first at ``open``, so a bad setting fails the store's open). A
   statement that finds them all lent waits for the first given back, in
   order.
2. **A connection that failed is not lent again.** A statement's own error
   (the server refused it, the session intact) leaves the connection as it
   was; anything else (the connection lost or ended by the server, the
   statement cancelled half way in this process) terminates it, and the next
   statement opens another. A statement is never retried here: the
   caller decides (a claim retries later, ``taskrt.claims``).
3. **Closing** closes the idle connections; one lent at that moment is
   terminated when it comes back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from .driver import DRIVER_ERRORS, connect

# The SQLSTATEs of a session the server ended or lost: a connection exception
# (class 08: asyncpg reports a connection that vanished as 08003), terminated by an
# administrator, a crash of another backend, a shutdown (57P01-57P03). A statement
# cancelled on the server (57014, statement_timeout) leaves its session usable.
_SESSION_ENDED = ("08", "57P01", "57P02", "57P03")


class HeldConnections:
    """Up to ``size`` connections opened with ``options`` (see the module notes)."""

    def __init__(self, dsn: str, options: dict[str, Any], size: int) -> None:
        self.dsn = dsn
        self.options = options
        self.size = size
        self._idle: list[asyncpg.Connection] = []
        self._count = 0  # open or opening (note 1)
        self._waiters: collections.deque[asyncio.Future[asyncpg.Connection | None]] = (
            collections.deque()
        )
        self._closed = False

    async def open(self) -> None:
        """Open the first connection (note 1)."""
        self._give(await self._take())

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one statement, on a connection lent for it (a claim's path:
        ``acquire``'s generator-based context costs more than this)."""
        conn = self._idle.pop() if self._idle else await self._take()
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        except BaseException as exc:
            self._after(conn, exc)
            raise
        self._give(conn)
        return rows

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection lent for the block (note 2 applies to what the block raises)."""
        conn = self._idle.pop() if self._idle else await self._take()
        try:
            yield conn
        except BaseException as exc:
            self._after(conn, exc)
            raise
        self._give(conn)

    async def close(self) -> None:
        """Close the idle connections; those lent end when given back (note 3)."""
        self._closed = True
        idle, self._idle = self._idle, []
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        for conn in idle:
            self._count -= 1
            try:
                await conn.close(timeout=5)
            except DRIVER_ERRORS:  # TimeoutError is an OSError
                conn.terminate()

    async def _take(self) -> asyncpg.Connection:
        """A connection to lend when none is idle: a new one, or the next given back."""
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the claim connections are closed")
            if self._idle:
                return self._idle.pop()
            if self._count < self.size:
                self._count += 1
                try:
                    conn: asyncpg.Connection = await connect(self.dsn, **self.options)
                except BaseException:
                    self._count -= 1
                    self._wake_one()  # a waiter may open one in its place
                    raise
                return conn
            waiter: asyncio.Future[asyncpg.Connection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()  # handed over as this one was cancelled
                    if handed is not None:
                        self._give(handed)
                    else:
                        self._wake_one()
                raise
            if handed is not None:
                return handed

    def _after(self, conn: asyncpg.Connection, exc: BaseException) -> None:
        """A connection back after ``exc`` (note 2): lendable again only after a
        statement the server refused, its session intact and outside a transaction."""
        if (
            isinstance(exc, asyncpg.PostgresError)
            and not (getattr(exc, "sqlstate", None) or "").startswith(_SESSION_ENDED)
            and not conn.is_closed()
            and not conn.is_in_transaction()
        ):
            self._give(conn)
        else:
            self._drop(conn)

    def _give(self, conn: asyncpg.Connection) -> None:
        """A connection back: to the first waiter, else idle (ended when closing)."""
        if self._closed or conn.is_closed():
            self._drop(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _drop(self, conn: asyncpg.Connection) -> None:
        """A connection not to lend again (note 2): terminated, its place free."""
        self._count -= 1
        conn.terminate()
        self._wake_one()

    def _wake_one(self) -> None:
        """Let the first waiter open a connection in the place just freed."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
