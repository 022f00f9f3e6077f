"""``Transaction``: the application's write transaction, with jobs added in it.

``async with rt.transaction() as tx:`` runs the application's own SQL and
``add(..., tx=tx)`` in one transaction of the store: both commit or neither
does, and workers see the jobs only after the commit. On PostgreSQL,
``add(..., tx=connection)`` also takes the application's own asyncpg
connection (or SQLAlchemy's ``AsyncConnection``) in its open transaction
(``JobStore.adopt_transaction``): the jobs exist if and only if it commits.

Misuse is refused at the call that misuses, never a hang or a job stored
that never runs (``docs/guarantees.md``):

1. One transaction at a time in an asyncio task (``opened``, a context
   variable holding the task that opened the block). On SQLite the block
   holds the database's writes: a second ``rt.transaction()``, or an
   ``add`` without ``tx=`` (it commits through the group commit, which
   waits for the block), would wait in the task that has to end the block,
   for ever, and every write of the application with it. On PostgreSQL
   both wait the same way once the block has added a job (an add locks the
   row of the last issued id), and the inner one would not be a part of the
   outer one anyway. So both are refused on both backends (``InvalidOption``
   naming ``tx``: the open ``tx`` is what the call should use), and so is
   every other call that commits on its own (``refuse_in_block``: a cancel,
   a retry, a schedule's change, ``rt.stop()``, ...) before it changes
   anything; reads answer with what is committed (``taskrt.store`` note
   23). An ``on_failed`` hook's task holds the failure's transaction the
   same way, and is refused the same calls. Other tasks are not refused:
   their writes wait their turn (the context variable is copied into a
   task started in the block, but names its opener).
2. Transaction control is taskrt's: it commits at the block's end and rolls
   back when the block raises. A ``BEGIN``, ``COMMIT``, ``END``,
   ``ROLLBACK``, ``ABORT`` or ``PREPARE TRANSACTION`` through ``execute``
   is refused (``InvalidOption`` naming ``statement``): a ``COMMIT``
   would commit the jobs added so far before taskrt takes them in (they
   would wait unstarted until the next start), a ``ROLLBACK`` would turn
   the statements after it into commits of their own. ``SAVEPOINT``,
   ``RELEASE`` and ``ROLLBACK TO`` are the application's; after a
   ``ROLLBACK TO`` the jobs it undid are forgotten (``_forget_undone``),
   so that taskrt does not queue jobs that do not exist.
3. A transaction takes nothing once it has ended: its block is over
   (``close``), or the database is no longer in it (a statement through
   ``tx.driver``, or an error that rolls the whole transaction back, such
   as SQLite's ``INSERT OR ROLLBACK``). A statement then raises
   ``StoreError``, as a statement the database refuses does; ``add(...,
   tx=tx)`` raises ``InvalidOption`` naming ``tx``; a block whose
   transaction ended inside it raises ``StoreError`` at its end and takes
   in none of its jobs.
4. What a statement is given is checked before it runs: a statement that
   is not a ``str``, parameters that are not a list or tuple (a mapping
   too: asyncpg has no named parameters, it would bind the keys) are
   ``InvalidOption`` naming ``statement`` or ``params``. A value the driver cannot bind (an int beyond 64 bits, a
   lone surrogate) is the store's ``StoreError``, as SQLite's own binding
   errors are (``sqlite3.ProgrammingError``): never a raw ``TypeError``,
   ``OverflowError`` or ``UnicodeEncodeError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from .context import JobState
from .errors import InvalidOption, StoreError, TaskrtError
from .limits import shown
from .store import StoreTransaction
from .store.queries import controls_transaction, existing_ids, undoes_to_savepoint

# What a driver cannot bind raises (note 4): sqlite3's OverflowError for an int
# beyond 64 bits, UnicodeEncodeError (a ValueError) for a lone surrogate, ...
_BIND_ERRORS = (TypeError, ValueError, OverflowError)


class Transaction:
    """The application's write transaction: run SQL, and add jobs with ``tx=tx``.

    Both commit or neither does; workers see the jobs after the commit. Usable
    while its block is open, in the task that opened it (module notes).
    """

    def __init__(self, conn: StoreTransaction, *, foreign: bool = False) -> None:
        self._conn = conn
        # Jobs added in this transaction: taken in (queued, announced) after the commit.
        self.added: list[JobState] = []
        # The application's own transaction (``add(..., tx=connection)``): taskrt
        # does not see it commit, so its jobs are the owner's to find (``external``).
        self.foreign = foreign
        self._ended: str | None = None  # why it takes nothing more (note 3)
        self._closed = False

    @property
    def connection(self) -> StoreTransaction:
        """The store's handle on this transaction (taskrt's own services write through it)."""
        return self._conn

    @property
    def driver(self) -> Any:
        """The database driver's connection of this transaction: ``aiosqlite.Connection``
        on SQLite, ``asyncpg.Connection`` on PostgreSQL (SQL in its own dialect).
        ``StoreError`` once the transaction has ended (note 3)."""
        self._require_open()
        return self._conn.driver

    @property
    def closed(self) -> bool:
        """Its block is over (``close``)."""
        return self._closed

    @property
    def ended(self) -> str | None:
        """Why this transaction takes nothing more, or None while it is open (note 3)."""
        if self._ended is None and not self.foreign and not _in_transaction(self._conn.driver):
            self._ended = (
                "the database is no longer in it: a commit or rollback through tx.driver, "
                "or an error that rolls the whole transaction back, ended it"
            )
        return self._ended

    def close(self) -> None:
        """Its block is over: nothing more runs in it (note 3)."""
        self._closed = True
        if self._ended is None:
            self._ended = "its block is over; open a new rt.transaction()"

    async def execute(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement of the application's in the transaction; its rows."""
        self._check(statement)
        values = _values(params, "params")
        try:
            rows = await self._conn.execute(statement, values)
        except TaskrtError:
            _ = self.ended  # an error that rolled it all back ends it (note 3)
            raise
        except _BIND_ERRORS as exc:
            raise StoreError(f"{exc} (in: {statement})") from exc
        self._after(statement)
        if self.added and undoes_to_savepoint(statement):
            await self._forget_undone()
        return rows

    async def executemany(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        """Run one statement of the application's for each row of ``params``."""
        self._check(statement)
        rows = _rows(params)
        try:
            await self._conn.executemany(statement, rows)
        except TaskrtError:
            _ = self.ended
            raise
        except _BIND_ERRORS as exc:
            raise StoreError(f"{exc} (in: {statement})") from exc
        self._after(statement)

    def _require_open(self) -> None:
        why = self.ended
        if why is not None:
            raise StoreError(f"this transaction has ended: {why}")

    def _check(self, statement: object) -> None:
        """Refuse what cannot run in the transaction (notes 2 to 4)."""
        self._require_open()
        if not isinstance(statement, str):
            raise InvalidOption("statement", f"expected an SQL string, found {shown(statement)}")
        if controls_transaction(statement):
            raise InvalidOption(
                "statement",
                f"{statement.strip()[:40]!r}: the transaction is taskrt's to begin and "
                "end (it commits at the end of the block, and rolls back when the block "
                "raises); savepoint, release and rollback to are yours",
            )

    def _after(self, statement: str) -> None:
        """A statement that took the database out of the transaction ends it (note 3)."""
        if self._ended is None and self.ended is not None:
            raise StoreError(f"{self._ended} (after: {statement})")

    async def _forget_undone(self) -> None:
        """After a ``ROLLBACK TO``: the jobs it undid are not this transaction's (note 2)."""
        rows = await self._conn.execute(existing_ids(state.id for state in self.added))
        kept = {int(row[0]) for row in rows}
        self.added = [state for state in self.added if state.id in kept]


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
        rows = _rows(params)  # read (and checked) in this thread, not on the loop
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


_OPEN: ContextVar[tuple[asyncio.Task[Any] | None, Transaction] | None] = ContextVar(
    "taskrt_transaction", default=None
)


@contextlib.contextmanager
def opened(tx: Transaction) -> Iterator[None]:
    """The block of ``tx`` in this task (note 1); ``tx`` is closed at its end."""
    token = _OPEN.set((asyncio.current_task(), tx))
    try:
        yield
    finally:
        tx.close()
        # A block abandoned and closed from another context cannot reset it; what
        # stays names a closed transaction, which ``open_in_this_task`` ignores.
        with contextlib.suppress(ValueError):
            _OPEN.reset(token)


def open_in_this_task() -> Transaction | None:
    """The ``rt.transaction()`` whose block this asyncio task is in, if any (note 1)."""
    held = _OPEN.get()
    if held is None:
        return None
    task, tx = held
    if tx.closed or task is not asyncio.current_task():
        return None  # over, or opened by the task that started this one
    return tx


def refuse_in_block(call: str) -> None:
    """Refuse ``call``, which commits on its own, in the task whose
    ``rt.transaction()`` block is open (note 1)."""
    if open_in_this_task() is not None:
        raise InvalidOption(
            "tx",
            f"{call} inside this task's transaction (an rt.transaction() block, or an "
            "on_failed hook's): it commits on its own, and on SQLite that commit waits "
            "for the transaction to end, which this task does. Call it after the block",
        )


def _in_transaction(driver: Any) -> bool:
    """Whether the driver's connection is in a transaction: asyncpg's
    ``is_in_transaction()``, aiosqlite's (and sqlite3's) ``in_transaction``.
    A connection that cannot say (released to its pool, closed) is not."""
    try:
        probe = getattr(driver, "is_in_transaction", None)
        if callable(probe):
            return bool(probe())
        return bool(getattr(driver, "in_transaction", True))
    except Exception:
        return False


def _values(params: object, field: str) -> Sequence[Any]:
    """One statement's parameters: a list or tuple, as both drivers take them (note 4)."""
    if isinstance(params, str | bytes | bytearray) or not isinstance(params, Sequence):
        raise InvalidOption(
            field, f"expected a list or tuple of the statement's values, found {shown(params)}"
        )
    return params


def _rows(params: object) -> list[Sequence[Any]]:
    """``executemany``'s rows, each checked as ``_values`` checks one statement's."""
    if isinstance(params, str | bytes | bytearray | Mapping) or not isinstance(params, Iterable):
        raise InvalidOption(
            "params", f"expected an iterable of rows (lists or tuples), found {shown(params)}"
        )
    return [_values(row, f"params[{i}]") for i, row in enumerate(params)]
